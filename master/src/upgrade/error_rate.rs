//! Canary arithmetic, shared by the master (which judges the canary of a rolling upgrade, see
//! [`super::canary`]) and `zentinel-ctl` (which prints its live comparison).
//!
//! An error is a 5xx answer or an upstream failure (a failed connect, a reset or a timeout on
//! the way to or from the upstream); rates are per request, so a canary that got a smaller
//! share of the traffic is judged fairly.

use std::fmt;

use zentinel_protocol::control::CanaryPolicy;
use zentinel_protocol::messages::WorkerCounters;

/// Errors and requests of one or more workers over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorRate {
    pub errors: u64,
    pub requests: u64,
}

impl ErrorRate {
    /// Between two counter snapshots of one worker (counters only grow; a smaller value would
    /// be another process and counts as nothing).
    pub fn between(before: &WorkerCounters, after: &WorkerCounters) -> ErrorRate {
        let delta = |a: u64, b: u64| b.saturating_sub(a);
        ErrorRate {
            errors: delta(before.responses_5xx, after.responses_5xx)
                + delta(before.upstream_errors, after.upstream_errors),
            requests: delta(before.requests_total, after.requests_total),
        }
    }

    /// Percent of requests that failed (0 without requests). A 502 for a failed upstream is
    /// both a 5xx and an upstream error, so this can exceed 100; both sides are counted alike.
    pub fn percent(self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 * 100.0 / self.requests as f64
        }
    }
}

impl std::ops::Add for ErrorRate {
    type Output = ErrorRate;

    fn add(self, other: ErrorRate) -> ErrorRate {
        ErrorRate {
            errors: self.errors + other.errors,
            requests: self.requests + other.requests,
        }
    }
}

impl fmt::Display for ErrorRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.2}% errors ({} of {} requests)",
            self.percent(),
            self.errors,
            self.requests
        )
    }
}

/// The outcome of a canary window.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Pass,
    /// No request reached the canary: nothing says it is bad, nothing says it is good.
    NoTraffic,
    /// The canary's rate exceeds the old workers' by `excess_points` percentage points.
    Fail {
        excess_points: f64,
    },
}

pub fn verdict(canary: ErrorRate, old: ErrorRate, policy: &CanaryPolicy) -> Verdict {
    if canary.requests == 0 {
        return Verdict::NoTraffic;
    }
    let excess_points = canary.percent() - old.percent();
    if excess_points * 100.0 > f64::from(policy.max_excess_basis_points) {
        Verdict::Fail { excess_points }
    } else {
        Verdict::Pass
    }
}

/// `1.00` points for 100 basis points.
pub fn points(basis_points: u32) -> String {
    format!("{:.2}", f64::from(basis_points) / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(requests: u64, r5xx: u64, upstream: u64) -> WorkerCounters {
        WorkerCounters {
            requests_total: requests,
            responses_5xx: r5xx,
            upstream_errors: upstream,
            ..WorkerCounters::default()
        }
    }

    fn policy(basis_points: u32) -> CanaryPolicy {
        CanaryPolicy {
            duration_ms: 10_000,
            max_excess_basis_points: basis_points,
        }
    }

    #[test]
    fn rates_are_per_request_over_the_window() {
        let rate = ErrorRate::between(&counters(100, 3, 1), &counters(1100, 13, 1));
        assert_eq!(
            rate,
            ErrorRate {
                errors: 10,
                requests: 1000
            }
        );
        assert_eq!(format!("{rate}"), "1.00% errors (10 of 1000 requests)");
        // Another process's smaller counters count as nothing, not as a huge wrap-around.
        assert_eq!(
            ErrorRate::between(&counters(500, 50, 5), &counters(10, 0, 0)),
            ErrorRate::default()
        );
    }

    #[test]
    fn verdict_compares_rates_not_counts() {
        let canary = ErrorRate {
            errors: 20,
            requests: 1000,
        };
        // The old workers had more errors, but over far more requests: 0.5% vs 2%.
        let old = ErrorRate {
            errors: 50,
            requests: 10_000,
        };
        assert_eq!(verdict(canary, old, &policy(200)), Verdict::Pass);
        match verdict(canary, old, &policy(100)) {
            Verdict::Fail { excess_points } => assert!((excess_points - 1.5).abs() < 1e-9),
            other => panic!("{other:?}"),
        }
        // Exactly at the limit passes.
        assert_eq!(verdict(canary, old, &policy(150)), Verdict::Pass);
    }

    #[test]
    fn a_canary_no_worse_than_old_workers_passes_even_when_both_fail() {
        let bad = ErrorRate {
            errors: 500,
            requests: 1000,
        };
        assert_eq!(verdict(bad, bad, &policy(100)), Verdict::Pass);
        let all_500 = ErrorRate {
            errors: 1000,
            requests: 1000,
        };
        assert!(matches!(
            verdict(all_500, ErrorRate::default(), &policy(100)),
            Verdict::Fail { .. }
        ));
        assert_eq!(
            verdict(ErrorRate::default(), bad, &policy(0)),
            Verdict::NoTraffic
        );
    }

    #[test]
    fn limits_read_as_points() {
        assert_eq!(points(100), "1.00");
        assert_eq!(points(25), "0.25");
    }
}
