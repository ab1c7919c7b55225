//! The GCRA script (`gcra.lua`) and how one connection runs a batch of checks: every call of
//! the batch is written at once (pipelined) as `EVALSHA`, and the replies read in order. A
//! server that lost the script (restarted, `SCRIPT FLUSH`, a failover to a replica) answers
//! `NOSCRIPT`: those calls are sent again as `EVAL` with the script's text, which loads it
//! for the next batches.

use std::time::Duration;

use redis::{Connection, ServerErrorKind, Value};

/// The script's text.
pub const GCRA: &str = include_str!("gcra.lua");

/// One check: the key and the limit's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub key: String,
    /// Microseconds between two requests at the limit (`1e6 / max-rps`).
    pub interval_us: f64,
    /// Requests admitted at once from an idle key.
    pub burst: u32,
    /// A refused request admitted late instead when its wait is at most this (0: never).
    pub max_delay_us: u64,
}

/// The script's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub allowed: bool,
    /// Requests still admitted at once after this one.
    pub remaining: u64,
    /// Refused: microseconds until this request would be admitted.
    pub retry_after_us: u64,
    /// Microseconds until the key is idle again.
    pub reset_us: u64,
    /// Admitted late: microseconds to hold the request first (0: at once).
    pub delay_us: u64,
}

impl Reply {
    /// Read the script's `{allowed, remaining, retry, reset, delay}` array.
    pub fn parse(v: &Value) -> Result<Reply, String> {
        let Value::Array(items) = v else {
            return Err(format!("unexpected script reply {v:?}"));
        };
        let mut n = [0u64; 5];
        if items.len() != n.len() {
            return Err(format!("script reply has {} fields, not 5", items.len()));
        }
        for (slot, item) in n.iter_mut().zip(items) {
            *slot = match item {
                Value::Int(i) => u64::try_from(*i).unwrap_or(0),
                other => return Err(format!("unexpected script reply field {other:?}")),
            };
        }
        Ok(Reply {
            allowed: n[0] == 1,
            remaining: n[1],
            retry_after_us: n[2],
            reset_us: n[3],
            delay_us: n[4],
        })
    }
}

/// A connection with the script's SHA1 (learnt from `SCRIPT LOAD` when it connected).
pub struct Scripted {
    pub con: Connection,
    sha: String,
}

impl Scripted {
    /// Connect to `client`'s server within `timeout` (also the read and write timeout of
    /// each batch), and load the script.
    pub fn connect(client: &redis::Client, timeout: Duration) -> redis::RedisResult<Scripted> {
        let mut con = client.get_connection_with_timeout(timeout)?;
        con.set_read_timeout(Some(timeout))?;
        con.set_write_timeout(Some(timeout))?;
        let sha: String = redis::cmd("SCRIPT").arg("LOAD").arg(GCRA).query(&mut con)?;
        Ok(Scripted { con, sha })
    }

    /// Run `calls` in one round trip. `Err`: the connection failed (nothing can be said of
    /// any call); otherwise one result per call, an error reply as `Err` text.
    pub fn run(&mut self, calls: &[Call]) -> redis::RedisResult<Vec<Result<Reply, String>>> {
        let mut out = self.round_trip(calls, false)?;
        let lost: Vec<usize> = out
            .iter()
            .enumerate()
            .filter_map(|(i, r)| matches!(r, Err(Lost::NoScript)).then_some(i))
            .collect();
        if !lost.is_empty() {
            let again: Vec<Call> = lost.iter().map(|&i| calls[i].clone()).collect();
            let answers = self.round_trip(&again, true)?;
            for (i, a) in lost.into_iter().zip(answers) {
                out[i] = a;
            }
        }
        Ok(out
            .into_iter()
            .map(|r| {
                r.map_err(|e| match e {
                    Lost::NoScript => "NOSCRIPT after EVAL".to_owned(),
                    Lost::Error(text) => text,
                })
            })
            .collect())
    }

    fn round_trip(
        &mut self,
        calls: &[Call],
        full_text: bool,
    ) -> redis::RedisResult<Vec<Result<Reply, Lost>>> {
        let mut packed = Vec::with_capacity(calls.len() * 128);
        for c in calls {
            let mut cmd = if full_text {
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(GCRA);
                cmd
            } else {
                let mut cmd = redis::cmd("EVALSHA");
                cmd.arg(&self.sha);
                cmd
            };
            cmd.arg(1)
                .arg(&c.key)
                .arg(c.interval_us.to_string())
                .arg(c.burst)
                .arg(c.max_delay_us);
            cmd.write_packed_command(&mut packed);
        }
        self.con.send_packed_command(&packed)?;
        let mut out = Vec::with_capacity(calls.len());
        for _ in calls {
            out.push(match self.con.recv_response()? {
                Value::ServerError(e) if e.kind() == Some(ServerErrorKind::NoScript) => {
                    Err(Lost::NoScript)
                }
                Value::ServerError(e) => Err(Lost::Error(e.to_string())),
                v => Reply::parse(&v).map_err(Lost::Error),
            });
        }
        Ok(out)
    }
}

/// Why one call of a batch has no answer.
enum Lost {
    NoScript,
    Error(String),
}
