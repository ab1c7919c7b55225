//! The `rate-limit` filter: GCRA per key (client IP, path, route, client IP and path, or a
//! header's value), keyed per route as upstream keys them, in a table every worker of the
//! instance shares ([`super::shared`]): a client spreading its connections over the workers
//! meets one limit, `max-rps` with `burst` at once.
//!
//! `on-limit "reject"` answers `status-code` with `Retry-After` (the exact wait, rounded up to
//! whole seconds, at least 1), the `X-RateLimit-*` fields and `limit-message`; `"delay"`
//! reserves the request's place when its turn comes within `max-delay-ms` and holds it until
//! then (it is not checked again after the wait: its place is taken), rejecting it otherwise;
//! `"log-only"` lets it through with a log line and takes no place.
//!
//! With `backend "redis"` the limit is the fleet's, kept in Redis (`redis_limit`); this
//! instance's shared table is then its fallback while Redis fails.

use std::rc::Rc;
use std::time::Duration;

use tracing::{debug, info};
use zentinel_protocol::config::{RateLimitAction, RateLimitBackend, RateLimitFilter};

use super::redis_limit::{Pending, RedisLimit};
use super::shared::{monotonic_ns, FilterShm, Gcra};
use super::{Filter, FilterCounters, RequestFacts, Verdict};
pub(super) use crate::http::rate_refusal as refusal;
use crate::rate_limit::Decision;

const NS_PER_S: u64 = 1_000_000_000;

#[derive(Debug)]
pub struct RateLimiter {
    config: RateLimitFilter,
    gcra: Gcra,
    table: Rc<FilterShm>,
    /// `backend "redis"`.
    redis: Option<Box<RedisLimit>>,
}

impl RateLimiter {
    /// The limiter of filter `_name`, its keys in `table` (the master's segment for it, or
    /// one of this worker's own).
    pub fn new(_name: &str, config: &RateLimitFilter, table: Rc<FilterShm>) -> Self {
        RateLimiter {
            config: config.clone(),
            gcra: Gcra::new(config.max_rps, config.burst),
            table,
            redis: match &config.backend {
                RateLimitBackend::Redis(r) => Some(Box::new(RedisLimit::new(r, config))),
                RateLimitBackend::Local => None,
            },
        }
    }

    pub(super) fn config(&self) -> &RateLimitFilter {
        &self.config
    }

    /// Check one request; `rate` receives the decision for the response's headers, `pending`
    /// the Redis check the request waits for (Redis backend).
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

    /// Check one request against this instance's shared table.
    pub(super) fn check_local(
        &self,
        filter: &Filter,
        route: &str,
        facts: &RequestFacts<'_>,
        rate: &mut Option<Decision>,
    ) -> Verdict {
        let hash =
            crate::http::with_rate_key(&self.config.key, route, facts.peer, facts.req, |p| {
                self.table.key_hash(p)
            });
        let now = monotonic_ns();
        let max_wait_ns = match self.config.on_limit {
            RateLimitAction::Delay => self.config.max_delay_ms.saturating_mul(1_000_000),
            RateLimitAction::Reject | RateLimitAction::LogOnly => 0,
        };
        let take = self.table.take(hash, now, self.gcra, max_wait_ns);
        let d = self.decision(
            take.admitted && take.wait_ns == 0,
            take.tat,
            take.wait_ns,
            now,
        );
        *rate = Some(d);
        let counters = &filter.counters;
        if take.admitted {
            if take.wait_ns == 0 {
                return Verdict::Continue;
            }
            FilterCounters::add(&counters.delayed, 1);
            debug!(filter = %filter.name, route, client = %facts.peer, wait_ms = take.wait_ns / 1_000_000, "rate limit: request delayed");
            return Verdict::Hold {
                until: facts.now + Duration::from_nanos(take.wait_ns),
            };
        }
        self.act(filter, route, facts, d, rate)
    }

    /// What `on-limit` makes of a refusal `d` (a delay was already reserved, by the table or
    /// by Redis's script, when one fitted within `max-delay-ms`): log-only lets it through,
    /// the others refuse.
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
        if self.config.on_limit == RateLimitAction::LogOnly {
            FilterCounters::add(&counters.logged_only, 1);
            info!(filter = %filter.name, route, client = %facts.peer, "rate limit exceeded (log-only)");
            return Verdict::Continue;
        }
        FilterCounters::add(&counters.limited, 1);
        debug!(filter = %filter.name, route, client = %facts.peer, retry_after_s = d.retry_after_secs, "rate limit exceeded");
        let status = self.config.status_code;
        let body = self
            .config
            .limit_message
            .as_deref()
            .unwrap_or("Rate limit exceeded");
        Verdict::Respond {
            status,
            bytes: refusal(&d, status, body, facts.req.is_head()),
            close: true,
        }
    }

    /// What the `X-RateLimit-*` fields and `Retry-After` say: requests left at once after
    /// this one, seconds until the key is as new (`tat`), seconds until it may go (`wait_ns`).
    fn decision(&self, allowed: bool, tat: u64, wait_ns: u64, now: u64) -> Decision {
        let ahead = tat.saturating_sub(now);
        let remaining = if allowed {
            self.gcra.tolerance_ns.saturating_sub(ahead) / self.gcra.interval_ns.max(1)
        } else {
            0
        };
        Decision {
            allowed,
            limit: self.config.max_rps,
            remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
            reset_secs: ahead.div_ceil(NS_PER_S),
            retry_after_secs: wait_ns.div_ceil(NS_PER_S).max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zentinel_protocol::config::{FilterConfig, FilterKind};

    fn limiter(max_rps: u32, burst: u32) -> RateLimiter {
        let config = RateLimitFilter {
            max_rps,
            burst,
            ..RateLimitFilter::default()
        };
        let filter = FilterConfig {
            name: "rl".to_owned(),
            kind: FilterKind::RateLimit(config.clone()),
        };
        let table = FilterShm::private(&filter).unwrap().unwrap();
        RateLimiter::new("rl", &config, Rc::new(table))
    }

    #[test]
    fn the_rate_fields_follow_the_table() {
        let l = limiter(2, 4);
        let now = 1_000 * NS_PER_S;
        // Admitted with the key one interval ahead: 3 more at once, full again in 1 s.
        let d = l.decision(true, now + NS_PER_S / 2, 0, now);
        assert_eq!(
            (d.allowed, d.limit, d.remaining, d.reset_secs),
            (true, 2, 3, 1)
        );
        // Refused: nothing left, Retry-After the wait rounded up, at least a second.
        let d = l.decision(false, now + 2 * NS_PER_S, 1_200_000_000, now);
        assert_eq!((d.remaining, d.reset_secs, d.retry_after_secs), (0, 2, 2));
        assert_eq!(l.decision(false, now, 1, now).retry_after_secs, 1);
    }
}
