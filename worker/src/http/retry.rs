//! When a proxied request is attempted again (`retry-policy { ... }` of its route), and how
//! long to wait first. Pure decisions: the session (`session.rs`) does the I/O and the timers.
//!
//! The rule, in full:
//! - Only idempotent methods (GET, HEAD, OPTIONS, TRACE, PUT, DELETE; RFC 9110 9.2.2) whose
//!   whole body so far is still held in the session's replay buffer (bounded: a larger body
//!   disables retries for that request) may go again, and only while no response byte was
//!   sent to the client: retries are invisible to it.
//! - Attempts in total (the first included) are bounded by `max-attempts`. Without a policy a
//!   route keeps the old behaviour: one more attempt, after a fresh connection failed before
//!   any response byte.
//! - A retry is triggered by a response whose status is in `retryable-status-codes` (that
//!   response is discarded), by a fresh connection failing before any response byte, or by an
//!   attempt not answering within `timeout-ms`. Connect failures before any request byte are
//!   not attempts: they fail over to the next target whatever the method, as before.
//! - Before retry n (0 for the first) the session waits `backoff-base-ms * 2^n`, at most
//!   `backoff-max-ms`, on the worker's timers (never blocking the loop). Only with a policy:
//!   without one the single retry goes at once, as before.
//! - The final attempt's response is passed on whatever its status: when every attempt gets a
//!   retryable status the client sees the last upstream response. If the last attempt fails
//!   without a response (or no target can be connected after the wait), the client gets 502.

use std::time::Duration;

use zentinel_protocol::config::RetryPolicy;

/// A route's retry policy, in the form the session uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryRule {
    pub max_attempts: u32,
    /// Bound on each attempt, from its connection to its response head.
    pub attempt_timeout: Option<Duration>,
    base: Duration,
    cap: Duration,
    statuses: Vec<u16>,
}

/// Attempts allowed without a policy: the original one and one retry after a failed fresh
/// connection.
const DEFAULT_ATTEMPTS: u32 = 2;

impl RetryRule {
    pub fn new(p: &RetryPolicy) -> Self {
        RetryRule {
            max_attempts: p.max_attempts.max(1),
            attempt_timeout: p.timeout_ms.map(Duration::from_millis),
            base: Duration::from_millis(p.backoff_base_ms),
            cap: Duration::from_millis(p.backoff_max_ms.max(p.backoff_base_ms)),
            statuses: p.retryable_status_codes.clone(),
        }
    }

    /// The wait before retry `n` (0 for the first): base * 2^n, capped.
    pub fn backoff(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }
}

pub fn is_idempotent(method: &str) -> bool {
    ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"]
        .iter()
        .any(|m| m.eq_ignore_ascii_case(method))
}

/// Whether another attempt is allowed after `attempts` were made.
pub fn attempts_left(rule: Option<&RetryRule>, attempts: u32) -> bool {
    attempts < rule.map_or(DEFAULT_ATTEMPTS, |r| r.max_attempts)
}

/// A final response head with `status` arrived on attempt number `attempts`: whether to
/// discard it and try again instead of passing it on. `replayable`: idempotent method and the
/// body still held; `resp_started`: some byte (an interim response) already went out.
pub fn retry_on_status(
    rule: Option<&RetryRule>,
    status: u16,
    attempts: u32,
    replayable: bool,
    resp_started: bool,
) -> bool {
    let Some(r) = rule else {
        return false;
    };
    replayable && !resp_started && r.statuses.contains(&status) && attempts_left(rule, attempts)
}

/// The wait before the next attempt, after `attempts` were made (`None`: go at once, the
/// behaviour without a policy).
pub fn delay(rule: Option<&RetryRule>, attempts: u32) -> Option<Duration> {
    rule.map(|r| r.backoff(attempts.saturating_sub(1)))
        .filter(|d| !d.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(max: u32, base: u64, cap: u64, statuses: &[u16]) -> RetryRule {
        RetryRule::new(&RetryPolicy {
            max_attempts: max,
            timeout_ms: Some(250),
            backoff_base_ms: base,
            backoff_max_ms: cap,
            retryable_status_codes: statuses.to_vec(),
        })
    }

    #[test]
    fn idempotent_methods() {
        for m in ["GET", "head", "OPTIONS", "TRACE", "PUT", "DELETE"] {
            assert!(is_idempotent(m), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT", "PROPFIND"] {
            assert!(!is_idempotent(m), "{m}");
        }
    }

    #[test]
    fn status_retries_only_listed_statuses_within_max_attempts() {
        let r = rule(3, 100, 1000, &[502, 503]);
        assert!(retry_on_status(Some(&r), 503, 1, true, false));
        assert!(retry_on_status(Some(&r), 502, 2, true, false));
        assert!(
            !retry_on_status(Some(&r), 503, 3, true, false),
            "last attempt is passed on"
        );
        assert!(
            !retry_on_status(Some(&r), 504, 1, true, false),
            "not listed"
        );
        assert!(!retry_on_status(Some(&r), 200, 1, true, false));
        assert!(
            !retry_on_status(Some(&r), 503, 1, false, false),
            "not replayable"
        );
        assert!(
            !retry_on_status(Some(&r), 503, 1, true, true),
            "a byte already went out"
        );
        assert!(
            !retry_on_status(None, 503, 1, true, false),
            "no policy, no status retry"
        );
        let one = rule(1, 100, 1000, &[503]);
        assert!(!retry_on_status(Some(&one), 503, 1, true, false));
    }

    #[test]
    fn failure_retries_are_bounded_by_attempts() {
        assert!(attempts_left(None, 1), "without a policy: one retry");
        assert!(!attempts_left(None, 2));
        let r = rule(4, 0, 0, &[]);
        assert!(attempts_left(Some(&r), 3));
        assert!(!attempts_left(Some(&r), 4));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let r = rule(10, 100, 1000, &[]);
        let ms = |n| r.backoff(n).as_millis();
        assert_eq!(
            (ms(0), ms(1), ms(2), ms(3), ms(4)),
            (100, 200, 400, 800, 1000)
        );
        assert_eq!(ms(40), 1000, "no overflow");
        assert_eq!(delay(Some(&r), 1), Some(Duration::from_millis(100)));
        assert_eq!(delay(Some(&r), 2), Some(Duration::from_millis(200)));
        assert_eq!(delay(None, 1), None, "without a policy: at once");
        assert_eq!(delay(Some(&rule(3, 0, 0, &[])), 1), None, "base 0: at once");
        assert_eq!(r.attempt_timeout, Some(Duration::from_millis(250)));
    }
}
