//! Canary gating of a rolling upgrade (`zentinel-ctl upgrade --rolling --canary DUR`).
//!
//! Once the first new worker took over its slot and the worker it replaced has drained, the
//! rolling upgrade holds the other workers for the canary window and compares error rates
//! over it: the canary's against the old workers' (the slots not yet replaced), each taken
//! from fresh status answers at the start and at the end of the window. An error is a 5xx
//! answer or an upstream failure (a failed connect, a reset or a timeout on the way to or from
//! the upstream); rates are per request, so a canary that got a smaller share of the traffic
//! is judged fairly. Rolled back when its rate exceeds the old workers' by more than the
//! allowed percentage points; a canary that dies is rolled back by the rolling upgrade's own
//! rule (a replaced worker died). Each second the client gets the live comparison.

use std::fmt;

use zentinel_protocol::control::CanaryPolicy;

use super::*;
use crate::upgrade::format_duration;

/// How often the live comparison is refreshed and reported.
const CANARY_REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// How long to wait for the workers' answers at the start and the end of the window.
const CANARY_ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the client hears that the canary still waits for the replaced worker's drain.
const CANARY_DRAIN_REPORT_INTERVAL: Duration = Duration::from_secs(5);

/// Errors and requests of one or more workers over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct ErrorRate {
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

    fn add(self, other: ErrorRate) -> ErrorRate {
        ErrorRate {
            errors: self.errors + other.errors,
            requests: self.requests + other.requests,
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
pub(super) enum Verdict {
    Pass,
    /// No request reached the canary: nothing says it is bad, nothing says it is good.
    NoTraffic,
    /// The canary's rate exceeds the old workers' by `excess_points` percentage points.
    Fail {
        excess_points: f64,
    },
}

pub(super) fn verdict(canary: ErrorRate, old: ErrorRate, policy: &CanaryPolicy) -> Verdict {
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
pub(super) fn points(basis_points: u32) -> String {
    format!("{:.2}", f64::from(basis_points) / 100.0)
}

/// The canary step of a rolling upgrade.
#[derive(Debug)]
pub(super) struct CanaryWatch {
    policy: CanaryPolicy,
    worker_id: u32,
    canary: Token,
    canary_pid: u32,
    phase: CanaryPhase,
}

#[derive(Debug)]
enum CanaryPhase {
    /// The worker the canary replaced still drains; the window starts once it exited.
    WaitingForDrain { old_pid: u32, next_report: Instant },
    /// Fresh counters for the window's start are on their way.
    Baseline {
        waits: Vec<(Token, u64)>,
        deadline: Instant,
    },
    Observing {
        baseline: Vec<(Token, WorkerCounters)>,
        started: Instant,
        ends: Instant,
        next_report: Instant,
        /// The fresh counters of the next report, on their way (with a deadline).
        asked: Option<(Vec<(Token, u64)>, Instant)>,
    },
    /// Fresh counters for the window's end are on their way.
    Concluding {
        baseline: Vec<(Token, WorkerCounters)>,
        started: Instant,
        waits: Vec<(Token, u64)>,
        deadline: Instant,
    },
}

impl CanaryWatch {
    /// Watch `canary` (pid `canary_pid`, slot `worker_id`) once `old_pid`, the worker it
    /// replaced, has exited.
    pub fn new(
        policy: CanaryPolicy,
        worker_id: u32,
        canary: Token,
        canary_pid: u32,
        old_pid: u32,
    ) -> Self {
        CanaryWatch {
            policy,
            worker_id,
            canary,
            canary_pid,
            phase: CanaryPhase::WaitingForDrain {
                old_pid,
                next_report: Instant::now(),
            },
        }
    }

    pub fn worker_id(&self) -> u32 {
        self.worker_id
    }

    pub fn deadline(&self) -> Instant {
        match &self.phase {
            CanaryPhase::WaitingForDrain { next_report, .. } => *next_report,
            CanaryPhase::Baseline { deadline, .. } | CanaryPhase::Concluding { deadline, .. } => {
                *deadline
            }
            CanaryPhase::Observing {
                ends,
                next_report,
                asked,
                ..
            } => {
                let next = (*ends).min(*next_report);
                asked
                    .as_ref()
                    .map_or(next, |(_, deadline)| next.min(*deadline))
            }
        }
    }
}

/// What the rolling upgrade must do after a canary check.
pub(super) enum CanaryNext {
    /// Nothing yet.
    Wait,
    /// Tell the client (the live comparison, or that the drain still runs).
    Report(String),
    /// Replace the other workers.
    Pass(String),
    /// Roll the canary back, for this reason.
    Fail(String),
}

impl Supervisor {
    /// The tokens of the workers the canary is compared with: the current workers of the other
    /// slots (not replaced yet, so still on the previous binary).
    fn canary_peers(&self, worker_id: u32) -> Vec<Token> {
        self.slots
            .iter()
            .filter(|slot| slot.worker_id != worker_id)
            .filter_map(|slot| slot.current)
            .collect()
    }

    fn canary_ask(&mut self, tokens: &[Token]) -> Vec<(Token, u64)> {
        tokens
            .iter()
            .filter_map(|&token| self.ask_status(token).map(|seq| (token, seq)))
            .collect()
    }

    fn canary_answered(&self, waits: &[(Token, u64)]) -> bool {
        waits.iter().all(|&(token, seq)| {
            self.processes
                .get(&token)
                .is_none_or(|p| p.status_received >= seq || p.channel.is_none() || p.killed)
        })
    }

    fn canary_snapshot(&self, tokens: &[Token]) -> Vec<(Token, WorkerCounters)> {
        tokens
            .iter()
            .filter_map(|token| {
                let counters = self.processes.get(token)?.counters.clone()?;
                Some((*token, counters))
            })
            .collect()
    }

    /// The canary's and the old workers' rates since `baseline` (workers gone since are left
    /// out: their last counters died with them).
    fn canary_rates(
        &self,
        canary: Token,
        baseline: &[(Token, WorkerCounters)],
    ) -> (ErrorRate, ErrorRate, usize) {
        let mut canary_rate = ErrorRate::default();
        let mut old_rate = ErrorRate::default();
        let mut old_workers = 0;
        for (token, before) in baseline {
            let Some(now) = self.processes.get(token).and_then(|p| p.counters.as_ref()) else {
                continue;
            };
            let rate = ErrorRate::between(before, now);
            if *token == canary {
                canary_rate = rate;
            } else {
                old_rate = old_rate.add(rate);
                old_workers += 1;
            }
        }
        (canary_rate, old_rate, old_workers)
    }

    /// One check of the canary step: what to do next.
    pub(super) fn canary_advance(&mut self, watch: &mut CanaryWatch, now: Instant) -> CanaryNext {
        let (worker_id, canary, canary_pid) = (watch.worker_id, watch.canary, watch.canary_pid);
        let window = Duration::from_millis(watch.policy.duration_ms);
        match &mut watch.phase {
            CanaryPhase::WaitingForDrain {
                old_pid,
                next_report,
            } => {
                let old = self
                    .processes
                    .values()
                    .find(|p| p.pid.as_raw().unsigned_abs() == *old_pid);
                if let Some(old) = old {
                    if now < *next_report {
                        return CanaryNext::Wait;
                    }
                    *next_report = now + CANARY_DRAIN_REPORT_INTERVAL;
                    let active = old.counters.as_ref().map_or(0, |c| c.active_connections);
                    return CanaryNext::Report(format!(
                        "canary: worker {worker_id} (pid {canary_pid}) serves; waiting for the \
                         replaced worker pid {old_pid} to drain ({active} connection{})",
                        if active == 1 { "" } else { "s" }
                    ));
                }
                let mut tokens = self.canary_peers(worker_id);
                tokens.push(canary);
                let waits = self.canary_ask(&tokens);
                watch.phase = CanaryPhase::Baseline {
                    waits,
                    deadline: now + CANARY_ANSWER_TIMEOUT,
                };
                self.canary_advance(watch, now)
            }
            CanaryPhase::Baseline { waits, deadline } => {
                if !self.canary_answered(waits) && now < *deadline {
                    return CanaryNext::Wait;
                }
                let mut tokens = self.canary_peers(worker_id);
                tokens.push(canary);
                let baseline = self.canary_snapshot(&tokens);
                let old_workers = baseline.len().saturating_sub(1);
                watch.phase = CanaryPhase::Observing {
                    baseline,
                    started: now,
                    ends: now + window,
                    next_report: now + CANARY_REPORT_INTERVAL,
                    asked: None,
                };
                CanaryNext::Report(format!(
                    "canary: worker {worker_id} (pid {canary_pid}) on the new binary for {}, \
                     compared with {old_workers} old worker{} (limit: {} points above them)",
                    format_duration(window),
                    if old_workers == 1 { "" } else { "s" },
                    points(watch.policy.max_excess_basis_points)
                ))
            }
            CanaryPhase::Observing {
                baseline,
                started,
                ends,
                next_report,
                asked,
            } => {
                if now >= *ends {
                    let tokens: Vec<Token> = baseline.iter().map(|(token, _)| *token).collect();
                    let waits = self.canary_ask(&tokens);
                    watch.phase = CanaryPhase::Concluding {
                        baseline: std::mem::take(baseline),
                        started: *started,
                        waits,
                        deadline: now + CANARY_ANSWER_TIMEOUT,
                    };
                    return self.canary_advance(watch, now);
                }
                if let Some((waits, deadline)) = asked {
                    if !self.canary_answered(waits) && now < *deadline {
                        return CanaryNext::Wait;
                    }
                    *asked = None;
                    let (canary_rate, old_rate, _) = self.canary_rates(canary, baseline);
                    return CanaryNext::Report(format!(
                        "canary: {}/{}: new {canary_rate}, old {old_rate}",
                        format_duration(now.duration_since(*started)),
                        format_duration(window)
                    ));
                }
                if now < *next_report {
                    return CanaryNext::Wait;
                }
                *next_report = now + CANARY_REPORT_INTERVAL;
                let tokens: Vec<Token> = baseline.iter().map(|(token, _)| *token).collect();
                let waits = self.canary_ask(&tokens);
                // Reported once answered, so the figures are this moment's, not a second old.
                *asked = Some((waits, now + CANARY_REPORT_INTERVAL / 2));
                CanaryNext::Wait
            }
            CanaryPhase::Concluding {
                baseline,
                started,
                waits,
                deadline,
            } => {
                if !self.canary_answered(waits) && now < *deadline {
                    return CanaryNext::Wait;
                }
                let (canary_rate, old_rate, old_workers) = self.canary_rates(canary, baseline);
                let observed = format_duration(now.duration_since(*started));
                let compared = if old_workers == 0 {
                    "no old worker left to compare with".to_owned()
                } else {
                    format!("old workers {old_rate}")
                };
                let limit = points(watch.policy.max_excess_basis_points);
                match verdict(canary_rate, old_rate, &watch.policy) {
                    Verdict::Pass => CanaryNext::Pass(format!(
                        "canary passed after {observed}: new worker {worker_id} (pid \
                         {canary_pid}) {canary_rate}, {compared} (limit {limit} points above); \
                         replacing the other workers"
                    )),
                    Verdict::NoTraffic => CanaryNext::Pass(format!(
                        "canary: no request reached the new worker {worker_id} (pid \
                         {canary_pid}) in {observed}, so it could not be judged; replacing the \
                         other workers"
                    )),
                    Verdict::Fail { excess_points } => CanaryNext::Fail(format!(
                        "canary failed after {observed}: new worker {worker_id} (pid \
                         {canary_pid}) {canary_rate}, {compared}: {excess_points:.2} points \
                         above them, more than the {limit} allowed"
                    )),
                }
            }
        }
    }
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
