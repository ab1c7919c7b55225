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

use zentinel_protocol::control::CanaryPolicy;

use super::*;
use crate::canary::{points, verdict, ErrorRate, Verdict};
use crate::upgrade::format_duration;

/// How often the live comparison is refreshed and reported.
const CANARY_REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// How long to wait for the workers' answers at the start and the end of the window.
const CANARY_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the client hears that the canary still waits for the replaced worker's drain.
const CANARY_DRAIN_REPORT_INTERVAL: Duration = Duration::from_secs(5);

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
    /// Tell the client (the window starts, or the drain still runs).
    Report(String),
    /// The live comparison, since the window started.
    Live {
        elapsed: Duration,
        window: Duration,
        canary: ErrorRate,
        old: ErrorRate,
    },
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

    /// The canary has not answered its status request of `waits` (it is alive, with a channel):
    /// a worker that cannot answer the master is not judged healthy for lack of figures.
    fn canary_silent(&self, waits: &[(Token, u64)], canary: Token) -> bool {
        waits.iter().any(|&(token, seq)| {
            token == canary
                && self
                    .processes
                    .get(&token)
                    .is_some_and(|p| p.status_received < seq && p.channel.is_some() && !p.killed)
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
                old_rate = old_rate + rate;
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
                if !self.all_answered(waits) && now < *deadline {
                    return CanaryNext::Wait;
                }
                if self.canary_silent(waits, canary) {
                    return CanaryNext::Fail(format!(
                        "canary failed: new worker {worker_id} (pid {canary_pid}) did not answer \
                         the master's status request within {}",
                        format_duration(CANARY_ANSWER_TIMEOUT)
                    ));
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
                    if !self.all_answered(waits) && now < *deadline {
                        return CanaryNext::Wait;
                    }
                    *asked = None;
                    let (canary_rate, old_rate, _) = self.canary_rates(canary, baseline);
                    return CanaryNext::Live {
                        elapsed: now.duration_since(*started),
                        window,
                        canary: canary_rate,
                        old: old_rate,
                    };
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
                if !self.all_answered(waits) && now < *deadline {
                    return CanaryNext::Wait;
                }
                if self.canary_silent(waits, canary) {
                    return CanaryNext::Fail(format!(
                        "canary failed: new worker {worker_id} (pid {canary_pid}) did not answer \
                         the master's status request at the end of the window within {}",
                        format_duration(CANARY_ANSWER_TIMEOUT)
                    ));
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
