//! A route's `fallback` upstreams for one request: which pool to start with (the health
//! trigger) and which to go to next when every target of the current one failed to connect
//! (the connection trigger). Both happen before any request byte was sent, so every method
//! may go. Responses from a fallback are passed on as they are; the choice is logged.

use std::sync::Arc;
use std::time::Instant;

use tracing::warn;

use crate::routing::Fallback;
use crate::upstream::Upstreams;

/// Where one request is in its route's fallback list.
pub struct FallbackState {
    cfg: Arc<Fallback>,
    /// Next entry of `cfg.pools` to consider.
    next: usize,
    /// Fallback upstreams used so far (bounded by `max_attempts`).
    used: u32,
}

impl FallbackState {
    pub fn new(cfg: Arc<Fallback>) -> Self {
        FallbackState {
            cfg,
            next: 0,
            used: 0,
        }
    }

    /// The pool to start with: `primary`, unless the health trigger is on and it has no target
    /// in rotation while a fallback has one.
    pub fn initial(&mut self, primary: usize, pools: &Upstreams, now: Instant) -> usize {
        let up = |p: usize| pools.pool(p).is_some_and(|p| p.any_up(now));
        if !self.cfg.on_health_failure || up(primary) {
            return primary;
        }
        match self.advance(pools, now, true) {
            Some(p) => {
                log(pools, primary, p, "health");
                p
            }
            None => primary,
        }
    }

    /// The pool to try after every target of `current` failed to connect, if any is left.
    pub fn after_connect_failure(
        &mut self,
        current: usize,
        pools: &Upstreams,
        now: Instant,
    ) -> Option<usize> {
        if !self.cfg.on_connection_error {
            return None;
        }
        let next = self.advance(pools, now, false)?;
        log(pools, current, next, "connection-error");
        Some(next)
    }

    /// The next fallback pool, within `max_attempts`. With `need_up`, only one with a target in
    /// rotation; otherwise `skip-if-unhealthy` entries are passed over while they have none.
    fn advance(&mut self, pools: &Upstreams, now: Instant, need_up: bool) -> Option<usize> {
        while self.used < self.cfg.max_attempts {
            let &(pool, skip_if_unhealthy) = self.cfg.pools.get(self.next)?;
            self.next += 1;
            let up = pools.pool(pool).is_some_and(|p| p.any_up(now));
            if up || !(need_up || skip_if_unhealthy) {
                self.used += 1;
                return Some(pool);
            }
        }
        None
    }
}

fn log(pools: &Upstreams, from: usize, to: usize, reason: &'static str) {
    let name = |p: usize| pools.pool(p).map_or("?", |p| p.name.as_str()).to_owned();
    warn!(
        original_upstream = %name(from),
        fallback_upstream = %name(to),
        reason,
        "request sent to a fallback upstream"
    );
}
