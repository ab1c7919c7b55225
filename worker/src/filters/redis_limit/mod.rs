//! `rate-limit` with `backend "redis"`: one limit for a fleet of instances, kept in Redis by
//! an atomic GCRA script (`gcra.lua`) on the Redis server's clock.
//!
//! The event loop never waits on Redis: a check is queued for the worker's Redis threads
//! (`client`) and the session holds the request ([`Verdict::Hold`] until `redis-timeout-ms`);
//! the answer wakes it, and the chain runs this filter again, which reads the answer. No
//! answer in time, a full queue, a lost connection or an error reply is a Redis failure, and
//! `failure-mode` decides: the instance's own limit (`redis-fallback #true`, the default),
//! let through (`open`), or refused with the filter's status (`closed`).
//!
//! With `on-limit "delay"` the script itself reserves the request's slot when its wait is
//! within `max-delay-ms`, so instances never hand out the same slot twice; the session then
//! holds the request for that wait.
//!
//! Keys: `redis-prefix`, the route's name, the key kind and its value, escaped (see
//! [`key`]), so one filter on two routes limits each apart, as the local limiter does.

use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tracing::debug;
use zentinel_protocol::config::{
    RateLimitAction, RateLimitFilter, RateLimitKey, RedisBackend, RedisFailureMode,
};

use super::rate_limit::{refusal, RateLimiter};
use super::{Filter, FilterCounters, RequestFacts, Verdict};
use crate::rate_limit::Decision;

mod client;
mod script;
#[cfg(test)]
mod tests;

pub use client::wake_answered;
use client::{Backend, BackendKey, NotSent, Slot};
use script::{Call, Reply};

/// Escaped key values longer than this are replaced by their SHA-256.
const MAX_KEY_VALUE: usize = 200;

/// A rate limit's Redis side.
#[derive(Debug)]
pub struct RedisLimit {
    backend_key: BackendKey,
    /// Started at the first check (a configuration that is only validated starts nothing).
    backend: std::cell::OnceCell<Rc<Backend>>,
    prefix: String,
    failure_mode: RedisFailureMode,
    timeout: Duration,
    max_rps: u32,
    interval_us: f64,
    burst: u32,
    /// Microseconds a request may be held (`on-limit "delay"`; 0 otherwise).
    max_delay_us: u64,
}

/// A check sent to Redis, waited for by the session.
#[derive(Debug)]
pub struct Pending {
    slot: Arc<Slot>,
}

impl Pending {
    /// The answer came.
    pub fn answered(&self) -> bool {
        self.slot.get().is_some()
    }
}

impl RedisLimit {
    pub fn new(redis: &RedisBackend, config: &RateLimitFilter) -> Self {
        let max_rps = config.max_rps.max(1);
        RedisLimit {
            backend_key: BackendKey {
                url: redis.url.clone(),
                pool_size: redis.pool_size,
                timeout_ms: redis.timeout_ms,
            },
            backend: std::cell::OnceCell::new(),
            prefix: redis.key_prefix.clone(),
            failure_mode: redis.failure_mode,
            timeout: Duration::from_millis(redis.timeout_ms.max(1)),
            max_rps,
            interval_us: 1e6 / f64::from(max_rps),
            burst: config.burst.max(1),
            max_delay_us: match config.on_limit {
                RateLimitAction::Delay => config.max_delay_ms.saturating_mul(1000),
                RateLimitAction::Reject | RateLimitAction::LogOnly => 0,
            },
        }
    }

    /// Check one request (see the module comment). `pending` is this request's check in
    /// flight: `None` the first time (a check is sent, and the request held), `Some` when the
    /// session runs this filter again (the answer, or its absence at the deadline).
    pub(in crate::filters) fn check(
        &self,
        limiter: &RateLimiter,
        filter: &Filter,
        route: &str,
        facts: &RequestFacts<'_>,
        rate: &mut Option<Decision>,
        pending: &mut Option<Pending>,
    ) -> Verdict {
        let counters = &filter.counters;
        let answer = match pending.take() {
            Some(p) => match p.slot.get() {
                Some(answer) => answer.clone(),
                None => Err(format!(
                    "no answer within redis-timeout-ms ({} ms)",
                    self.timeout.as_millis()
                )),
            },
            None => {
                let backend = self.backend.get_or_init(|| Backend::get(&self.backend_key));
                let call = Call {
                    key: key(&self.prefix, route, &limiter.config().key, facts),
                    interval_us: self.interval_us,
                    burst: self.burst,
                    max_delay_us: self.max_delay_us,
                };
                let until = facts.now + self.timeout;
                match backend.send(call, until, facts.session) {
                    Ok(slot) => {
                        *pending = Some(Pending { slot });
                        return Verdict::Hold { until };
                    }
                    // Down: the outage was logged and counted once; this request just falls back.
                    Err(NotSent::Down) => return self.fail(limiter, filter, route, facts, rate),
                    Err(NotSent::QueueFull) => Err("the Redis queue is full".to_owned()),
                }
            }
        };
        match answer {
            Ok(reply) => {
                let d = decision(&reply, self.max_rps);
                if reply.delay_us > 0 {
                    *rate = Some(d);
                    FilterCounters::add(&counters.delayed, 1);
                    return Verdict::Hold {
                        until: facts.now + Duration::from_micros(reply.delay_us),
                    };
                }
                limiter.act(filter, route, facts, d, rate)
            }
            Err(why) => {
                FilterCounters::add(&counters.backend_errors, 1);
                let url = self.backend.get().map_or("", |b| b.url());
                debug!(filter = %filter.name, route, redis = url, error = %why, "Redis rate-limit check failed");
                self.fail(limiter, filter, route, facts, rate)
            }
        }
    }

    /// Redis could not decide: the failure mode does.
    fn fail(
        &self,
        limiter: &RateLimiter,
        filter: &Filter,
        route: &str,
        facts: &RequestFacts<'_>,
        rate: &mut Option<Decision>,
    ) -> Verdict {
        FilterCounters::add(&filter.counters.fallbacks, 1);
        match self.failure_mode {
            RedisFailureMode::FallbackLocal => limiter.check_local(filter, route, facts, rate),
            RedisFailureMode::Open => Verdict::Continue,
            RedisFailureMode::Closed => {
                let d = Decision {
                    allowed: false,
                    limit: self.max_rps,
                    remaining: 0,
                    reset_secs: 1,
                    retry_after_secs: 1,
                };
                *rate = Some(d);
                let config = limiter.config();
                let status = config.status_code;
                let body = config
                    .limit_message
                    .as_deref()
                    .unwrap_or("Rate limit exceeded");
                let bytes = refusal(&d, status, body, facts.req.is_head());
                Verdict::Respond {
                    status,
                    bytes,
                    close: true,
                }
            }
        }
    }
}

/// The script's answer as the `X-RateLimit-*` and `Retry-After` fields say it.
fn decision(r: &Reply, max_rps: u32) -> Decision {
    Decision {
        allowed: r.allowed,
        limit: max_rps,
        remaining: u32::try_from(r.remaining).unwrap_or(u32::MAX),
        reset_secs: r.reset_us.div_ceil(1_000_000),
        retry_after_secs: r.retry_after_us.div_ceil(1_000_000).max(1),
    }
}

/// The Redis key of a request: `prefix`, the route, the key kind and its value(s), each part
/// escaped (bytes other than letters, digits and `-._~/` as `%XX`, so `:` only separates
/// parts), a value longer than [`MAX_KEY_VALUE`] escaped replaced by `#` and its SHA-256.
/// Every instance builds the same key for the same request.
pub fn key(prefix: &str, route: &str, kind: &RateLimitKey, facts: &RequestFacts<'_>) -> String {
    let mut k = String::with_capacity(prefix.len() + route.len() + 64);
    k.push_str(prefix);
    push_escaped(&mut k, route.as_bytes());
    let path = facts.req.path().as_bytes();
    match kind {
        RateLimitKey::ClientIp => {
            k.push_str(":ip:");
            push_escaped(&mut k, client_ip(facts.peer).as_bytes());
        }
        RateLimitKey::Path => {
            k.push_str(":path:");
            push_escaped(&mut k, path);
        }
        RateLimitKey::Route => k.push_str(":route"),
        RateLimitKey::ClientIpAndPath => {
            k.push_str(":ip-path:");
            push_escaped(&mut k, client_ip(facts.peer).as_bytes());
            k.push(':');
            push_escaped(&mut k, path);
        }
        RateLimitKey::Header(name) => {
            // Requests without the header share one key (as the local limiter).
            let value = super::header_value(facts.req, name).unwrap_or("");
            k.push_str(":header:");
            push_escaped(&mut k, name.to_ascii_lowercase().as_bytes());
            k.push(':');
            push_escaped(&mut k, value.as_bytes());
        }
    }
    k
}

/// IPv4 and IPv4-mapped IPv6 are one client, written as IPv4.
fn client_ip(peer: IpAddr) -> String {
    peer.to_canonical().to_string()
}

fn push_escaped(out: &mut String, bytes: &[u8]) {
    let escaped_len: usize = bytes.iter().map(|&b| if plain(b) { 1 } else { 3 }).sum();
    if escaped_len > MAX_KEY_VALUE {
        let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
        out.push('#');
        for b in digest.as_ref() {
            out.push_str(&format!("{b:02x}"));
        }
        return;
    }
    for &b in bytes {
        if plain(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/')
}
