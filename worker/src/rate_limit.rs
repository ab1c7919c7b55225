//! A route's `policies { rate-limit { ... } }`: one token bucket per key, in this worker only.
//!
//! Buckets are per worker process (no shared memory between workers): with W workers a key
//! can be admitted up to W times the configured rate in the worst case, when its connections
//! spread over every worker. A keep-alive connection stays on one worker, so a single client
//! usually meets exactly the configured limit.
//!
//! Memory is bounded: keys are stored as 64-bit keyed hashes (SipHash with a per-process random
//! key, so clients cannot aim collisions), a bucket that has refilled completely is dropped
//! (it is indistinguishable from a new one), and past [`MAX_KEYS`] live buckets new keys share
//! one overflow bucket until a sweep frees room.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use zentinel_protocol::config::{RateLimit, RateLimitKey};

/// Live buckets kept per route and worker (about 40 bytes each).
pub const MAX_KEYS: usize = 65_536;
/// Full buckets are swept at most this often (a sweep walks every bucket).
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// The bucket keys share when the table is full.
const OVERFLOW: u64 = 0;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// The outcome of one request against its bucket, with what the `X-RateLimit-*` headers say.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    /// `X-RateLimit-Limit`: the configured requests per second (as upstream).
    pub limit: u32,
    /// `X-RateLimit-Remaining`: whole tokens left after this request.
    pub remaining: u32,
    /// Seconds until the bucket is full again (`X-RateLimit-Reset` is now plus this).
    pub reset_secs: u64,
    /// Seconds until the next token (`Retry-After` of a refusal; at least 1).
    pub retry_after_secs: u64,
}

#[derive(Debug, Clone)]
pub struct Limiter {
    rate: f64,
    burst: f64,
    limit: u32,
    pub key: RateLimitKey,
    hasher: RandomState,
    buckets: HashMap<u64, Bucket>,
    last_sweep: Option<Instant>,
}

impl Limiter {
    pub fn new(cfg: &RateLimit) -> Self {
        Limiter {
            rate: f64::from(cfg.requests_per_second.max(1)),
            burst: f64::from(cfg.burst.max(1)),
            limit: cfg.requests_per_second,
            key: cfg.key.clone(),
            hasher: RandomState::new(),
            buckets: HashMap::new(),
            last_sweep: None,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Take one token from the bucket of `key` (its parts are hashed in order).
    pub fn check(&mut self, key: &[&[u8]], now: Instant) -> Decision {
        let mut h = self.hasher.hash_one(key);
        if h == OVERFLOW {
            h = 1;
        }
        // Time-based, so a flood of new keys at the cap does not walk the table per request.
        if self
            .last_sweep
            .is_none_or(|t| now.saturating_duration_since(t) >= SWEEP_EVERY)
        {
            self.sweep(now);
        }
        if self.buckets.len() >= MAX_KEYS && !self.buckets.contains_key(&h) {
            h = OVERFLOW;
        }
        let (rate, burst) = (self.rate, self.burst);
        let bucket = self.buckets.entry(h).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.updated = now;
        let allowed = bucket.tokens >= 1.0;
        if allowed {
            bucket.tokens -= 1.0;
        }
        let tokens = bucket.tokens;
        // Float-to-integer `as` saturates (NaN gives 0): what a header value wants.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Decision {
            allowed,
            limit: self.limit,
            remaining: tokens.floor() as u32,
            reset_secs: ((burst - tokens) / rate).ceil() as u64,
            retry_after_secs: (((1.0 - tokens) / rate).ceil() as u64).max(1),
        }
    }

    /// Drop the buckets that have refilled completely: a new bucket starts full anyway.
    fn sweep(&mut self, now: Instant) {
        self.last_sweep = Some(now);
        let (rate, burst) = (self.rate, self.burst);
        self.buckets.retain(|_, b| {
            let elapsed = now.saturating_duration_since(b.updated).as_secs_f64();
            b.tokens + elapsed * rate < burst
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rps: u32, burst: u32) -> Limiter {
        Limiter::new(&RateLimit {
            requests_per_second: rps,
            burst,
            key: RateLimitKey::ClientIp,
        })
    }

    #[test]
    fn burst_then_refusal_then_refill() {
        let mut l = limiter(2, 3);
        let t0 = Instant::now();
        for left in [2, 1, 0] {
            let d = l.check(&[b"a"], t0);
            assert!(d.allowed);
            assert_eq!((d.limit, d.remaining), (2, left));
        }
        let d = l.check(&[b"a"], t0);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_secs, 1);
        assert_eq!(d.reset_secs, 2);
        // Half a second at 2/s brings one token back.
        assert!(l.check(&[b"a"], t0 + Duration::from_millis(500)).allowed);
        assert!(!l.check(&[b"a"], t0 + Duration::from_millis(500)).allowed);
        // Refill never exceeds the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(l.check(&[b"a"], later).allowed);
        }
        assert!(!l.check(&[b"a"], later).allowed);
    }

    #[test]
    fn keys_are_independent() {
        let mut l = limiter(1, 1);
        let t0 = Instant::now();
        assert!(l.check(&[b"a"], t0).allowed);
        assert!(!l.check(&[b"a"], t0).allowed);
        assert!(l.check(&[b"b"], t0).allowed);
        // Parts are hashed as a sequence: ("ab", "") is not ("a", "b").
        assert!(l.check(&[b"a", b"b"], t0).allowed);
        assert!(l.check(&[b"ab", b""], t0).allowed);
    }

    #[test]
    fn memory_is_bounded_and_full_buckets_are_dropped() {
        let mut l = limiter(1, 5);
        let t0 = Instant::now();
        for i in 0..(MAX_KEYS + 100) as u64 {
            l.check(&[&i.to_le_bytes()], t0);
        }
        // The extra keys shared the overflow bucket.
        assert!(l.len() <= MAX_KEYS + 1, "{}", l.len());
        // Five seconds later every bucket is full again: the next sweep forgets them all.
        let later = t0 + Duration::from_secs(5);
        l.check(&[b"x"], later);
        assert_eq!(l.len(), 1);
    }
}
