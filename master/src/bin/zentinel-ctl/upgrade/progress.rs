//! The upgrade's progress: one line (or JSON object) per step as the master reports it,
//! until the final answer.

use std::io::{self, Write as _};
use std::time::{Duration, Instant};

use zentinel_master::canary::ErrorRate;
use zentinel_master::upgrade::format_duration;
use zentinel_protocol::control::{ControlRequest, ControlResponse};
use zentinel_protocol::ProtocolError;

use crate::client::{response_kind, Connection};
use crate::CtlResult;

impl Connection {
    /// Send an upgrade and print each step as it comes, until `Done` or `Failed`. The
    /// connection survives the master's replacement (the new master inherits it), so `wait`
    /// bounds the silence between two steps, not the whole upgrade.
    pub(super) fn upgrade(&mut self, request: &ControlRequest, wait: Duration, json: bool) -> CtlResult<()> {
        self.send(request)
            .map_err(|e| self.io_error("the upgrade request", &e))?;
        let mut stdout = io::stdout().lock();
        let mut deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "no progress from the master at {} for {wait:?}; the upgrade may still be \
                     in progress (check `zentinel-ctl status`)",
                    self.socket.display()
                ));
            }
            let response = match self.recv(left) {
                Ok(response) => response,
                Err(ProtocolError::Io(e)) if e.kind() == io::ErrorKind::TimedOut => continue,
                Err(e) if e.is_closed() => {
                    return Err(format!(
                        "the master at {} closed the connection before the upgrade finished \
                         (check its log and `zentinel-ctl status`); the outcome is unknown",
                        self.socket.display()
                    ))
                }
                Err(e) => return Err(self.io_error("the upgrade request", &e)),
            };
            deadline = Instant::now() + wait;
            let (line, outcome) = upgrade_line(&response, json);
            if let Some(line) = line {
                let _ = writeln!(stdout, "{line}");
                let _ = stdout.flush();
            }
            match outcome {
                Some(Ok(())) => return Ok(()),
                Some(Err(reason)) => return Err(reason),
                None => {}
            }
        }
    }
}

/// The printed line of one upgrade response, and the outcome if it is the last one.
fn upgrade_line(response: &ControlResponse, json: bool) -> (Option<String>, Option<CtlResult<()>>) {
    let value = |v: serde_json::Value| Some(v.to_string());
    match response {
        ControlResponse::Progress { message } => (
            if json {
                value(serde_json::json!({"event": "progress", "message": message}))
            } else {
                Some(message.clone())
            },
            None,
        ),
        ControlResponse::MasterReplaced {
            old_pid,
            new_pid,
            ready_ms,
            generation,
            binary,
        } => (
            if json {
                value(serde_json::json!({
                    "event": "master_replaced", "old_pid": old_pid, "new_pid": new_pid,
                    "ready_ms": ready_ms, "generation": generation, "binary": binary,
                }))
            } else {
                Some(format!(
                    "master: pid {old_pid} -> pid {new_pid} ready in {ready_ms} ms (generation \
                     {generation}, binary {binary})"
                ))
            },
            None,
        ),
        ControlResponse::WorkerReplaced {
            index,
            total,
            worker_id,
            old_pid,
            new_pid,
            ready_ms,
            old_active_connections,
        } => {
            (
                if json {
                    value(serde_json::json!({
                        "event": "worker_replaced", "index": index, "total": total,
                        "worker_id": worker_id, "old_pid": old_pid, "new_pid": new_pid,
                        "ready_ms": ready_ms, "old_active_connections": old_active_connections,
                    }))
                } else {
                    Some(format!(
                    "worker {index}/{total}: pid {old_pid} -> pid {new_pid} ready in {ready_ms} \
                     ms, old draining ({old_active_connections} connection{})",
                    if *old_active_connections == 1 { "" } else { "s" }
                ))
                },
                None,
            )
        }
        ControlResponse::WorkerRolledBack {
            worker_id,
            failed_pid,
            restored_pid,
        } => (
            if json {
                value(serde_json::json!({
                    "event": "worker_rolled_back", "worker_id": worker_id,
                    "failed_pid": failed_pid, "restored_pid": restored_pid,
                }))
            } else {
                Some(format!(
                    "rollback: worker {worker_id}: pid {failed_pid} (new binary) -> pid \
                     {restored_pid} (previous binary)"
                ))
            },
            None,
        ),
        ControlResponse::CanaryComparison {
            worker_id,
            elapsed_ms,
            window_ms,
            new_errors,
            new_requests,
            old_errors,
            old_requests,
        } => (
            if json {
                value(serde_json::json!({
                    "event": "canary", "worker_id": worker_id, "elapsed_ms": elapsed_ms,
                    "window_ms": window_ms,
                    "new": {"errors": new_errors, "requests": new_requests},
                    "old": {"errors": old_errors, "requests": old_requests},
                }))
            } else {
                let rate = |errors: u64, requests: u64| ErrorRate { errors, requests };
                Some(format!(
                    "canary: {:.1}s/{}: new {}, old {}",
                    Duration::from_millis(*elapsed_ms).as_secs_f64(),
                    format_duration(Duration::from_millis(*window_ms)),
                    rate(*new_errors, *new_requests),
                    rate(*old_errors, *old_requests)
                ))
            },
            None,
        ),
        ControlResponse::Done { message } => (
            if json {
                value(serde_json::json!({"event": "done", "message": message}))
            } else {
                Some(message.clone())
            },
            Some(Ok(())),
        ),
        ControlResponse::Failed { message } => (
            json.then(|| serde_json::json!({"event": "failed", "message": message}).to_string()),
            Some(Err(format!("upgrade failed: {message}"))),
        ),
        other => (
            None,
            Some(Err(format!(
                "the master answered the upgrade with {}",
                response_kind(other)
            ))),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_lines() {
        let (line, outcome) = upgrade_line(
            &ControlResponse::MasterReplaced {
                old_pid: 1,
                new_pid: 2,
                ready_ms: 30,
                generation: 2,
                binary: "/opt/z".into(),
            },
            false,
        );
        assert_eq!(
            line.unwrap(),
            "master: pid 1 -> pid 2 ready in 30 ms (generation 2, binary /opt/z)"
        );
        assert!(outcome.is_none());
        let replaced = ControlResponse::WorkerReplaced {
            index: 1,
            total: 4,
            worker_id: 0,
            old_pid: 123,
            new_pid: 456,
            ready_ms: 38,
            old_active_connections: 12,
        };
        assert_eq!(
            upgrade_line(&replaced, false).0.unwrap(),
            "worker 1/4: pid 123 -> pid 456 ready in 38 ms, old draining (12 connections)"
        );
        let json: serde_json::Value =
            serde_json::from_str(&upgrade_line(&replaced, true).0.unwrap()).unwrap();
        assert_eq!(json["event"], "worker_replaced");
        assert_eq!(json["new_pid"], 456);
        let comparison = ControlResponse::CanaryComparison {
            worker_id: 0,
            elapsed_ms: 2_000,
            window_ms: 10_000,
            new_errors: 3,
            new_requests: 400,
            old_errors: 1,
            old_requests: 1_000,
        };
        let (line, outcome) = upgrade_line(&comparison, false);
        assert_eq!(
            line.unwrap(),
            "canary: 2.0s/10s: new 0.75% errors (3 of 400 requests), old 0.10% errors (1 of 1000 \
             requests)"
        );
        assert!(outcome.is_none());
        let json: serde_json::Value =
            serde_json::from_str(&upgrade_line(&comparison, true).0.unwrap()).unwrap();
        assert_eq!(json["event"], "canary");
        assert_eq!(json["new"]["requests"], 400);
        assert_eq!(json["old"]["errors"], 1);
        let (line, outcome) = upgrade_line(
            &ControlResponse::Failed {
                message: "x".into(),
            },
            false,
        );
        assert!(line.is_none());
        assert_eq!(outcome.unwrap().unwrap_err(), "upgrade failed: x");
        let (_, outcome) = upgrade_line(
            &ControlResponse::Done {
                message: "ok".into(),
            },
            true,
        );
        assert!(outcome.unwrap().is_ok());
    }
}
