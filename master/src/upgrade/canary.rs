//! Canary gating of a rolling upgrade (`zentinel-ctl upgrade --rolling --canary DUR`), as a
//! state machine: [`CanaryWatch::handle`] takes an event and returns commands; it does no I/O.
//!
//! Once the first new worker took over its slot and the worker it replaced has drained, the
//! rolling upgrade holds the other workers for the canary window and compares error rates
//! over it: the canary's against the old workers' (the slots not yet replaced), each taken
//! from fresh status answers at the start and at the end of the window. Rates are per request
//! (see [`super::error_rate`]), so a canary that got a smaller share of the traffic is judged
//! fairly. Rolled back when its rate exceeds the old workers' by more than the allowed
//! percentage points; a canary that dies is rolled back by the rolling upgrade's own rule (a
//! replaced worker died). Each second the client gets the live comparison.
//!
//! | phase | event | next phase, commands |
//! |---|---|---|
//! | waiting for drain | replaced worker exited | baseline; ask canary + peers for status |
//! | waiting for drain | tick past the report time | same; report "waiting for pid N to drain" |
//! | baseline | every asked worker answered or gone, or the deadline | observing; report the window; fail if the canary stayed silent |
//! | observing | tick past the report time | same; ask for fresh counters |
//! | observing | those answered (or half a report interval passed) | same; live comparison |
//! | observing | tick past the window's end | concluding; ask for fresh counters |
//! | concluding | every asked worker answered or gone, or the deadline | pass or fail by the verdict; fail if the canary stayed silent |
//!
//! Status answers are matched by request id: an answer to a request this watch did not send
//! (a periodic status round, a late answer from a wait that already timed out) updates the
//! worker's latest counters but completes no wait.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use mio::Token;
use zentinel_protocol::control::CanaryPolicy;
use zentinel_protocol::messages::WorkerCounters;

use super::error_rate::{points, verdict, ErrorRate, Verdict};
use super::format_duration;

/// How often the live comparison is refreshed and reported.
pub const CANARY_REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// How long to wait for the workers' answers at the start and the end of the window.
pub const CANARY_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the client hears that the canary still waits for the replaced worker's drain.
pub const CANARY_DRAIN_REPORT_INTERVAL: Duration = Duration::from_secs(5);

/// What happened, as far as the canary is concerned.
#[derive(Debug, Clone, PartialEq)]
pub enum CanaryEvent {
    /// Time passed (the watch's deadline, or any other wake-up).
    Tick,
    /// The status request this watch asked for went out under `request_id`.
    StatusAsked { worker: Token, request_id: u64 },
    /// A worker answered a status request.
    StatusAnswered {
        worker: Token,
        request_id: u64,
        counters: WorkerCounters,
    },
    /// A worker can no longer answer (its channel closed, or it was killed).
    WorkerSilenced { worker: Token },
    /// A worker's process is gone.
    WorkerExited { worker: Token },
}

/// What the canary asks the rolling upgrade to do.
#[derive(Debug, Clone, PartialEq)]
pub enum CanaryCommand {
    /// Ask these workers for their counters; each request sent comes back as
    /// [`CanaryEvent::StatusAsked`], each that could not be sent as
    /// [`CanaryEvent::WorkerSilenced`].
    AskStatus(Vec<Token>),
    /// Tell the client.
    Report(String),
    /// The live comparison since the window started.
    Live {
        elapsed: Duration,
        window: Duration,
        canary: ErrorRate,
        old: ErrorRate,
    },
    /// The canary passed (or could not be judged): replace the other workers.
    Pass(String),
    /// Roll the canary back, for this reason.
    Fail(String),
}

/// The canary step of a rolling upgrade.
#[derive(Debug)]
pub struct CanaryWatch {
    policy: CanaryPolicy,
    worker_id: u32,
    canary: Token,
    canary_pid: u32,
    /// The current workers of the other slots (not replaced yet, so on the previous binary).
    peers: Vec<Token>,
    /// The latest counters each watched worker reported, from any status answer.
    latest: BTreeMap<Token, WorkerCounters>,
    /// Watched workers whose process is gone.
    exited: BTreeSet<Token>,
    phase: Phase,
    /// Set once the watch passed or failed; it takes no more events.
    concluded: bool,
}

/// Requests this watch sent and waits for: worker -> request id, until answered.
#[derive(Debug, Default)]
struct Waits {
    /// Workers asked whose request went out; the id comes with [`CanaryEvent::StatusAsked`].
    pending: BTreeMap<Token, Option<u64>>,
    /// Workers that can no longer answer.
    silent: BTreeSet<Token>,
}

impl Waits {
    fn for_workers(workers: &[Token]) -> Self {
        Waits {
            pending: workers.iter().map(|&worker| (worker, None)).collect(),
            silent: BTreeSet::new(),
        }
    }

    fn asked(&mut self, worker: Token, request_id: u64) {
        if let Some(slot) = self.pending.get_mut(&worker) {
            *slot = Some(request_id);
        }
    }

    /// True if this answered one of our requests.
    fn answered(&mut self, worker: Token, request_id: u64) -> bool {
        if self.pending.get(&worker) == Some(&Some(request_id)) {
            self.pending.remove(&worker);
            return true;
        }
        false
    }

    fn silenced(&mut self, worker: Token) {
        if self.pending.remove(&worker).is_some() {
            self.silent.insert(worker);
        }
    }

    fn complete(&self) -> bool {
        self.pending.is_empty()
    }

    /// `worker` never answered this round (it is silent or still pending).
    fn unanswered(&self, worker: Token) -> bool {
        self.pending.contains_key(&worker) || self.silent.contains(&worker)
    }
}

#[derive(Debug)]
enum Phase {
    /// The worker the canary replaced still drains; the window starts once it exited.
    WaitingForDrain {
        old: Option<Token>,
        old_pid: u32,
        next_report: Instant,
    },
    /// Fresh counters for the window's start are on their way.
    Baseline { waits: Waits, deadline: Instant },
    Observing {
        baseline: Vec<(Token, WorkerCounters)>,
        started: Instant,
        ends: Instant,
        next_report: Instant,
        /// The fresh counters of the next live report, on their way (with a deadline).
        asked: Option<(Waits, Instant)>,
    },
    /// Fresh counters for the window's end are on their way.
    Concluding {
        baseline: Vec<(Token, WorkerCounters)>,
        started: Instant,
        waits: Waits,
        deadline: Instant,
    },
}

/// Who the canary is, who it replaced and whom it is compared with.
#[derive(Debug, Clone)]
pub struct CanarySubject {
    pub worker_id: u32,
    pub canary: Token,
    pub canary_pid: u32,
    /// The worker it replaced (`None`: there was none, or it is gone already).
    pub old: Option<Token>,
    pub old_pid: u32,
    /// The current workers of the other slots.
    pub peers: Vec<Token>,
}

impl CanaryWatch {
    /// Watch `subject.canary` once the worker it replaced has exited.
    pub fn new(policy: CanaryPolicy, subject: CanarySubject, now: Instant) -> Self {
        CanaryWatch {
            policy,
            worker_id: subject.worker_id,
            canary: subject.canary,
            canary_pid: subject.canary_pid,
            peers: subject.peers,
            latest: BTreeMap::new(),
            exited: BTreeSet::new(),
            phase: Phase::WaitingForDrain {
                old: subject.old,
                old_pid: subject.old_pid,
                next_report: now,
            },
            concluded: false,
        }
    }

    pub fn worker_id(&self) -> u32 {
        self.worker_id
    }

    /// When the watch wants a [`CanaryEvent::Tick`] at the latest.
    pub fn deadline(&self) -> Option<Instant> {
        if self.concluded {
            return None;
        }
        Some(match &self.phase {
            Phase::WaitingForDrain { next_report, .. } => *next_report,
            Phase::Baseline { deadline, .. } | Phase::Concluding { deadline, .. } => *deadline,
            Phase::Observing {
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
        })
    }

    /// Take one event; returns what to do. A concluded watch ignores everything.
    pub fn handle(&mut self, event: CanaryEvent, now: Instant) -> Vec<CanaryCommand> {
        if self.concluded {
            return Vec::new();
        }
        match event {
            CanaryEvent::Tick => {}
            CanaryEvent::StatusAsked { worker, request_id } => {
                if let Some(waits) = self.waits_mut() {
                    waits.asked(worker, request_id);
                }
            }
            CanaryEvent::StatusAnswered {
                worker,
                request_id,
                counters,
            } => {
                if worker == self.canary || self.peers.contains(&worker) || self.is_old(worker) {
                    self.latest.insert(worker, counters);
                }
                if let Some(waits) = self.waits_mut() {
                    waits.answered(worker, request_id);
                }
            }
            CanaryEvent::WorkerSilenced { worker } => {
                if let Some(waits) = self.waits_mut() {
                    waits.silenced(worker);
                }
            }
            CanaryEvent::WorkerExited { worker } => {
                self.exited.insert(worker);
                if let Some(waits) = self.waits_mut() {
                    waits.silenced(worker);
                }
                if let Phase::WaitingForDrain { old, .. } = &mut self.phase {
                    if *old == Some(worker) {
                        *old = None;
                    }
                }
            }
        }
        let commands = self.advance(now);
        if commands
            .iter()
            .any(|c| matches!(c, CanaryCommand::Pass(_) | CanaryCommand::Fail(_)))
        {
            self.concluded = true;
        }
        commands
    }

    fn is_old(&self, worker: Token) -> bool {
        matches!(self.phase, Phase::WaitingForDrain { old: Some(old), .. } if old == worker)
    }

    fn waits_mut(&mut self) -> Option<&mut Waits> {
        match &mut self.phase {
            Phase::Baseline { waits, .. } | Phase::Concluding { waits, .. } => Some(waits),
            Phase::Observing {
                asked: Some((waits, _)),
                ..
            } => Some(waits),
            _ => None,
        }
    }

    /// The canary and its peers still running.
    fn watched(&self) -> Vec<Token> {
        self.peers
            .iter()
            .copied()
            .chain(std::iter::once(self.canary))
            .filter(|worker| !self.exited.contains(worker))
            .collect()
    }

    /// The canary's and the old workers' rates since `baseline` (workers gone since are left
    /// out: their last counters died with them).
    fn rates(&self, baseline: &[(Token, WorkerCounters)]) -> (ErrorRate, ErrorRate, usize) {
        let mut canary_rate = ErrorRate::default();
        let mut old_rate = ErrorRate::default();
        let mut old_workers = 0;
        for (worker, before) in baseline {
            if self.exited.contains(worker) {
                continue;
            }
            let Some(now) = self.latest.get(worker) else {
                continue;
            };
            let rate = ErrorRate::between(before, now);
            if *worker == self.canary {
                canary_rate = rate;
            } else {
                old_rate = old_rate + rate;
                old_workers += 1;
            }
        }
        (canary_rate, old_rate, old_workers)
    }

    fn silent_canary(&self, waits: &Waits, when: &str) -> Option<CanaryCommand> {
        if !waits.unanswered(self.canary) || self.exited.contains(&self.canary) {
            return None;
        }
        Some(CanaryCommand::Fail(format!(
            "canary failed: new worker {} (pid {}) did not answer the master's status \
             request{when} within {}",
            self.worker_id,
            self.canary_pid,
            format_duration(CANARY_ANSWER_TIMEOUT)
        )))
    }

    /// Move on as far as the state allows.
    fn advance(&mut self, now: Instant) -> Vec<CanaryCommand> {
        let window = Duration::from_millis(self.policy.duration_ms);
        let (worker_id, canary_pid) = (self.worker_id, self.canary_pid);
        match &mut self.phase {
            Phase::WaitingForDrain {
                old: Some(old),
                old_pid,
                next_report,
            } => {
                if now < *next_report {
                    return Vec::new();
                }
                *next_report = now + CANARY_DRAIN_REPORT_INTERVAL;
                let active = self.latest.get(old).map_or(0, |c| c.active_connections);
                vec![CanaryCommand::Report(format!(
                    "canary: worker {worker_id} (pid {canary_pid}) serves; waiting for the \
                     replaced worker pid {old_pid} to drain ({active} connection{})",
                    if active == 1 { "" } else { "s" }
                ))]
            }
            Phase::WaitingForDrain { old: None, .. } => {
                let watched = self.watched();
                self.phase = Phase::Baseline {
                    waits: Waits::for_workers(&watched),
                    deadline: now + CANARY_ANSWER_TIMEOUT,
                };
                vec![CanaryCommand::AskStatus(watched)]
            }
            Phase::Baseline { waits, deadline } => {
                if !waits.complete() && now < *deadline {
                    return Vec::new();
                }
                let waits = std::mem::take(waits);
                if let Some(fail) = self.silent_canary(&waits, "") {
                    return vec![fail];
                }
                let baseline: Vec<(Token, WorkerCounters)> = self
                    .watched()
                    .into_iter()
                    .filter_map(|worker| Some((worker, self.latest.get(&worker)?.clone())))
                    .collect();
                let old_workers = baseline.iter().filter(|(w, _)| *w != self.canary).count();
                self.phase = Phase::Observing {
                    baseline,
                    started: now,
                    ends: now + window,
                    next_report: now + CANARY_REPORT_INTERVAL,
                    asked: None,
                };
                vec![CanaryCommand::Report(format!(
                    "canary: worker {worker_id} (pid {canary_pid}) on the new binary for {}, \
                     compared with {old_workers} old worker{} (limit: {} points above them)",
                    format_duration(window),
                    if old_workers == 1 { "" } else { "s" },
                    points(self.policy.max_excess_basis_points)
                ))]
            }
            Phase::Observing {
                baseline,
                started,
                ends,
                next_report,
                asked,
            } => {
                if now >= *ends {
                    let watched: Vec<Token> = baseline
                        .iter()
                        .map(|(worker, _)| *worker)
                        .filter(|worker| !self.exited.contains(worker))
                        .collect();
                    self.phase = Phase::Concluding {
                        baseline: std::mem::take(baseline),
                        started: *started,
                        waits: Waits::for_workers(&watched),
                        deadline: now + CANARY_ANSWER_TIMEOUT,
                    };
                    return vec![CanaryCommand::AskStatus(watched)];
                }
                if let Some((waits, deadline)) = asked {
                    if !waits.complete() && now < *deadline {
                        return Vec::new();
                    }
                    *asked = None;
                    let started = *started;
                    let baseline = baseline.clone();
                    let (canary, old, _) = self.rates(&baseline);
                    return vec![CanaryCommand::Live {
                        elapsed: now.duration_since(started),
                        window,
                        canary,
                        old,
                    }];
                }
                if now < *next_report {
                    return Vec::new();
                }
                *next_report = now + CANARY_REPORT_INTERVAL;
                let watched: Vec<Token> = baseline
                    .iter()
                    .map(|(worker, _)| *worker)
                    .filter(|worker| !self.exited.contains(worker))
                    .collect();
                // Reported once answered, so the figures are this moment's, not a second old.
                *asked = Some((
                    Waits::for_workers(&watched),
                    now + CANARY_REPORT_INTERVAL / 2,
                ));
                vec![CanaryCommand::AskStatus(watched)]
            }
            Phase::Concluding {
                baseline,
                started,
                waits,
                deadline,
            } => {
                if !waits.complete() && now < *deadline {
                    return Vec::new();
                }
                let waits = std::mem::take(waits);
                let baseline = std::mem::take(baseline);
                let observed = format_duration(now.duration_since(*started));
                if let Some(fail) = self.silent_canary(&waits, " at the end of the window") {
                    return vec![fail];
                }
                let (canary_rate, old_rate, old_workers) = self.rates(&baseline);
                vec![self.conclude(canary_rate, old_rate, old_workers, &observed)]
            }
        }
    }

    fn conclude(
        &self,
        canary_rate: ErrorRate,
        old_rate: ErrorRate,
        old_workers: usize,
        observed: &str,
    ) -> CanaryCommand {
        let (worker_id, canary_pid) = (self.worker_id, self.canary_pid);
        let compared = if old_workers == 0 {
            "no old worker left to compare with".to_owned()
        } else {
            format!("old workers {old_rate}")
        };
        let limit = points(self.policy.max_excess_basis_points);
        match verdict(canary_rate, old_rate, &self.policy) {
            Verdict::Pass => CanaryCommand::Pass(format!(
                "canary passed after {observed}: new worker {worker_id} (pid {canary_pid}) \
                 {canary_rate}, {compared} (limit {limit} points above); replacing the other \
                 workers"
            )),
            Verdict::NoTraffic => CanaryCommand::Pass(format!(
                "canary: no request reached the new worker {worker_id} (pid {canary_pid}) in \
                 {observed}, so it could not be judged; replacing the other workers"
            )),
            Verdict::Fail { excess_points } => CanaryCommand::Fail(format!(
                "canary failed after {observed}: new worker {worker_id} (pid {canary_pid}) \
                 {canary_rate}, {compared}: {excess_points:.2} points above them, more than \
                 the {limit} allowed"
            )),
        }
    }
}

#[cfg(test)]
#[path = "canary_tests.rs"]
mod tests;
