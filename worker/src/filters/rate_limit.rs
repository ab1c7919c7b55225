//! The `rate-limit` filter: a token bucket per key (client IP, path, route, client IP and
//! path, or a header's value), keyed per route as upstream keys them. `on-limit "reject"`
//! answers `status-code` with `Retry-After`, the `X-RateLimit-*` fields and `limit-message`;
//! `"delay"` holds the request until a token is due, when that is within `max-delay-ms`
//! (rejected otherwise); `"log-only"` lets it through with a log line.
//!
//! Buckets are this worker's own here (one `Limiter` per filter). With `backend "redis"` the
//! limit is the fleet's, kept in Redis (`redis_limit`); these buckets are then its local
//! fallback.

use std::cell::RefCell;
use std::time::Duration;

use tracing::{debug, info};
use zentinel_protocol::config::{RateLimit, RateLimitAction, RateLimitBackend, RateLimitFilter};

use super::redis_limit::{Pending, RedisLimit};
use super::{Filter, FilterCounters, RequestFacts, Verdict};
use crate::http::codec;
use crate::rate_limit::{Decision, Limiter};

#[derive(Debug)]
pub struct RateLimiter {
    config: RateLimitFilter,
    buckets: RefCell<Limiter>,
    /// `backend "redis"`.
    redis: Option<Box<RedisLimit>>,
}

impl RateLimiter {
    pub fn new(_name: &str, config: &RateLimitFilter) -> Self {
        let buckets = Limiter::new(&RateLimit {
            requests_per_second: config.max_rps,
            burst: config.burst,
            key: config.key.clone(),
        });
        let redis = match &config.backend {
            RateLimitBackend::Redis(r) => Some(Box::new(RedisLimit::new(r, config))),
            RateLimitBackend::Local => None,
        };
        RateLimiter {
            config: config.clone(),
            buckets: RefCell::new(buckets),
            redis,
        }
    }

    pub(super) fn config(&self) -> &RateLimitFilter {
        &self.config
    }

    /// Check one request; `rate` receives the decision for the response's headers.
    /// `pending`: a Redis check in flight (see `redis_limit`).
    pub(super) fn check(
        &self,
        filter: &Filter,
        route: &str,
        facts: &RequestFacts<'_>,
        rate: &mut Option<Decision>,
        pending: &mut Option<Pending>,
    ) -> Verdict {
        if let Some(redis) = &self.redis {
            return redis.check(self, filter, route, facts, rate, pending);
        }
        self.check_local(filter, route, facts, rate)
    }

    /// Check one request against this instance's own buckets.
    pub(super) fn check_local(
        &self,
        filter: &Filter,
        route: &str,
        facts: &RequestFacts<'_>,
        rate: &mut Option<Decision>,
    ) -> Verdict {
        let d = {
            let mut buckets = self.buckets.borrow_mut();
            crate::http::rate_check_keyed(&mut buckets, route, facts.peer, facts.req, facts.now)
        };
        self.act(filter, route, facts, d, rate)
    }

    /// What `on-limit` makes of decision `d`.
    pub(super) fn act(
        &self,
        filter: &Filter,
        route: &str,
        facts: &RequestFacts<'_>,
        d: Decision,
        rate: &mut Option<Decision>,
    ) -> Verdict {
        *rate = Some(d);
        if d.allowed {
            return Verdict::Continue;
        }
        let counters = &filter.counters;
        match self.config.on_limit {
            RateLimitAction::LogOnly => {
                FilterCounters::add(&counters.logged_only, 1);
                info!(filter = %filter.name, route, client = %facts.peer, "rate limit exceeded (log-only)");
                Verdict::Continue
            }
            RateLimitAction::Delay
                if d.retry_after_secs.saturating_mul(1000) <= self.config.max_delay_ms =>
            {
                FilterCounters::add(&counters.delayed, 1);
                Verdict::Hold {
                    until: facts.now + Duration::from_secs(d.retry_after_secs),
                }
            }
            RateLimitAction::Reject | RateLimitAction::Delay => {
                FilterCounters::add(&counters.limited, 1);
                debug!(filter = %filter.name, route, client = %facts.peer, "rate limit exceeded");
                let status = self.config.status_code;
                let body = self
                    .config
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

/// The refusal: `status`, the rate fields and `Retry-After`, `body` as plain text.
pub(super) fn refusal(d: &Decision, status: u16, body: &str, head_only: bool) -> Vec<u8> {
    let [limit, remaining, reset] = crate::http::rate_headers(d);
    let retry = d.retry_after_secs.to_string();
    let extra = [
        (limit.0, limit.1.as_str()),
        (remaining.0, remaining.1.as_str()),
        (reset.0, reset.1.as_str()),
        ("Retry-After", retry.as_str()),
    ];
    codec::local_response_with(
        status,
        Some("text/plain; charset=utf-8"),
        &extra,
        body.as_bytes(),
        true,
        head_only,
    )
}
