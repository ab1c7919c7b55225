//! The rolling replacement of workers after a master hand-over, as a state machine:
//! [`RollingUpgrade::handle`] takes an event and returns commands; the supervisor carries the
//! commands out and feeds back what happened. No I/O here, so every event can be driven in
//! every state by unit tests (`rolling_tests.rs`; the table is in `docs/design/lifecycle.md`).
//!
//! One slot at a time: spawn its successor from the new binary; once ready it takes the slot
//! and the old worker is told to drain; after the old worker acknowledged (or did not within
//! [`ACK_TIMEOUT`]) the new one must keep running for [`SETTLE`] before the next slot. With a
//! canary, the first replaced slot is watched ([`super::canary`]) before the others. Any
//! failure (a successor that cannot start or dies before ready, a replaced worker that dies
//! after, a failed canary) rolls the replaced slots back, last first, from the previous
//! binary; a failure during the rollback gives that slot up and goes on.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use mio::Token;
use tracing::{error, info};
use zentinel_protocol::control::{CanaryPolicy, ControlResponse};

use super::canary::{CanaryCommand, CanaryEvent, CanarySubject, CanaryWatch};
pub use super::rolling_events::{
    Outcome, Replaced, RollingCommand, RollingEvent, RollingPlan, WorkerBinary,
};

/// Longest wait for a replaced worker's `Draining` acknowledgement before moving on.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a new worker must keep running after it took over before the rolling upgrade
/// moves on: a binary that dies right after readiness is rolled back instead of replacing
/// every worker with something that crashes.
pub const SETTLE: Duration = Duration::from_secs(1);

#[derive(Debug)]
enum Step {
    /// Nothing under way (between slots).
    Idle,
    /// A `Spawn` for `worker_id` is being carried out.
    Spawning {
        worker_id: u32,
    },
    /// The successor of `worker_id` is starting.
    Starting {
        worker_id: u32,
        successor: Token,
    },
    /// The successor serves; the old worker was told to drain.
    AwaitingAck {
        replacement: Replacement,
        deadline: Instant,
    },
    /// The old worker drains; the new one must stay up until `deadline`.
    Settling {
        replacement: Replacement,
        deadline: Instant,
    },
    /// The first new worker is on probation before the others are replaced.
    Canary(Box<CanaryWatch>),
    Finished,
}

/// One slot's replacement once its successor is ready.
#[derive(Debug, Clone)]
struct Replacement {
    worker_id: u32,
    successor: Token,
    /// The worker it replaced, until that one is gone.
    old: Option<Token>,
    /// The other slots' current workers when it became ready (a canary compares with them).
    peers: Vec<Token>,
    report: StepReport,
}

/// What the client hears once a slot is done.
#[derive(Debug, Clone, Copy)]
struct StepReport {
    old_pid: u32,
    new_pid: u32,
    ready_ms: u64,
    old_active: u64,
}

/// The rollback under way: why, and how many slots were put back so far.
#[derive(Debug)]
struct Rollback {
    reason: String,
    restored: u32,
}

/// Carrying out what the events make of the upgrade.
#[derive(Debug)]
pub struct RollingUpgrade {
    drain: Duration,
    ready_timeout: Duration,
    total: u32,
    /// Worker ids still to replace (or to roll back).
    queue: VecDeque<u32>,
    done: u32,
    /// Worker ids replaced so far, in order.
    replaced: Vec<u32>,
    step: Step,
    rollback: Option<Rollback>,
    /// Gate the other workers on the first one (taken once its watch starts).
    canary: Option<CanaryPolicy>,
    /// The client still listens.
    client: bool,
    /// Commands of the event being handled.
    out: Vec<RollingCommand>,
}

impl RollingUpgrade {
    /// Start replacing: returns the machine and its first commands.
    pub fn start(plan: RollingPlan) -> (Self, Vec<RollingCommand>) {
        let total = u32::try_from(plan.worker_ids.len()).unwrap_or(u32::MAX);
        let mut machine = RollingUpgrade {
            drain: plan.drain,
            ready_timeout: plan.ready_timeout,
            total,
            queue: plan.worker_ids.into(),
            done: 0,
            replaced: Vec::new(),
            step: Step::Idle,
            rollback: None,
            canary: plan.canary,
            client: plan.client,
            out: Vec::new(),
        };
        info!(workers = total, "upgrade: replacing workers one at a time");
        machine.next();
        let commands = std::mem::take(&mut machine.out);
        (machine, commands)
    }

    /// When the machine wants a `Tick` at the latest.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.step {
            Step::AwaitingAck { deadline, .. } | Step::Settling { deadline, .. } => Some(*deadline),
            Step::Canary(watch) => watch.deadline(),
            _ => None,
        }
    }

    /// The death of `worker_id`'s current worker `pid` is the upgrade's: the new binary failed
    /// after readiness. False with no rollback under way only for a slot not replaced yet.
    pub fn claims_death(&self, worker_id: u32, pid: u32) -> bool {
        if self.rollback.is_some() || matches!(self.step, Step::Finished) {
            return false;
        }
        self.in_current_step(worker_id, pid) || self.replaced.contains(&worker_id)
    }

    fn in_current_step(&self, worker_id: u32, pid: u32) -> bool {
        matches!(
            &self.step,
            Step::AwaitingAck { replacement, .. } | Step::Settling { replacement, .. }
                if replacement.worker_id == worker_id && replacement.report.new_pid == pid
        )
    }

    /// A rollback is under way (the spawned successors run the previous binary).
    pub fn rolling_back(&self) -> bool {
        self.rollback.is_some()
    }

    /// Take one event; returns what to do, in order.
    pub fn handle(&mut self, event: RollingEvent, now: Instant) -> Vec<RollingCommand> {
        if matches!(self.step, Step::Finished) {
            return Vec::new();
        }
        match event {
            RollingEvent::Tick => self.tick(now),
            RollingEvent::Spawned {
                worker_id,
                successor,
            } => {
                if matches!(self.step, Step::Spawning { worker_id: w } if w == worker_id) {
                    self.step = Step::Starting {
                        worker_id,
                        successor,
                    };
                }
            }
            RollingEvent::SpawnFailed { worker_id, reason } => {
                if matches!(self.step, Step::Spawning { worker_id: w } if w == worker_id) {
                    self.step = Step::Idle;
                    self.fail(format!(
                        "worker {worker_id}: cannot start a new worker: {reason}"
                    ));
                }
            }
            RollingEvent::SuccessorReady {
                successor,
                pid,
                ready_ms,
                replaced,
                peers,
            } => self.successor_ready(successor, pid, ready_ms, replaced, peers, now),
            RollingEvent::SuccessorFailed { successor, reason } => {
                if matches!(self.step, Step::Starting { successor: s, .. } if s == successor) {
                    self.step = Step::Idle;
                    self.fail(reason);
                }
            }
            RollingEvent::Draining {
                worker,
                active_connections,
            } => self.old_draining(worker, active_connections, now),
            RollingEvent::CurrentDied {
                worker_id,
                pid,
                status,
            } => self.current_died(worker_id, pid, &status),
            RollingEvent::StatusAsked { worker, request_id } => {
                self.forward_to_canary(CanaryEvent::StatusAsked { worker, request_id }, now);
            }
            RollingEvent::StatusAnswered {
                worker,
                request_id,
                counters,
            } => {
                let event = CanaryEvent::StatusAnswered {
                    worker,
                    request_id,
                    counters,
                };
                self.forward_to_canary(event, now);
            }
            RollingEvent::WorkerSilenced { worker } => {
                self.forward_to_canary(CanaryEvent::WorkerSilenced { worker }, now);
            }
            RollingEvent::WorkerExited { worker } => self.worker_exited(worker, now),
            RollingEvent::ClientGone => self.client = false,
            RollingEvent::Abort { reason } => {
                let message = format!("upgrade abandoned: {reason}");
                self.respond(ControlResponse::Failed { message }, true);
                self.finish(Outcome::Abandoned { reason });
            }
        }
        std::mem::take(&mut self.out)
    }

    fn respond(&mut self, response: ControlResponse, last: bool) {
        if self.client {
            self.out.push(RollingCommand::Respond { response, last });
        }
    }

    fn finish(&mut self, outcome: Outcome) {
        self.step = Step::Finished;
        self.out.push(RollingCommand::Finished(outcome));
    }

    /// Start the next replacement (or rollback), or finish.
    fn next(&mut self) {
        if !matches!(self.step, Step::Idle) {
            return;
        }
        let Some(worker_id) = self.queue.pop_front() else {
            let outcome = match self.rollback.take() {
                None => Outcome::Completed { total: self.total },
                Some(Rollback { reason, restored }) => Outcome::RolledBack { reason, restored },
            };
            return self.finish(outcome);
        };
        let binary = if self.rollback.is_some() {
            WorkerBinary::Previous
        } else {
            WorkerBinary::New
        };
        self.step = Step::Spawning { worker_id };
        self.out.push(RollingCommand::Spawn {
            worker_id,
            binary,
            ready_timeout: self.ready_timeout,
        });
    }

    fn successor_ready(
        &mut self,
        successor: Token,
        pid: u32,
        ready_ms: u64,
        replaced: Option<Replaced>,
        peers: Vec<Token>,
        now: Instant,
    ) {
        let Step::Starting {
            worker_id,
            successor: expected,
        } = self.step
        else {
            return;
        };
        if expected != successor {
            return;
        }
        self.out.push(RollingCommand::Promote {
            worker_id,
            successor,
        });
        let replaced = replaced.filter(|old| old.worker != successor);
        let replacement = Replacement {
            worker_id,
            successor,
            old: replaced.as_ref().map(|old| old.worker),
            peers,
            report: StepReport {
                old_pid: replaced.as_ref().map_or(0, |old| old.pid),
                new_pid: pid,
                ready_ms,
                old_active: replaced.as_ref().map_or(0, |old| old.active_connections),
            },
        };
        let Some(old) = replaced else {
            self.step = Step::Idle;
            return self.step_done(replacement, now);
        };
        info!(
            worker_id,
            old_pid = old.pid,
            new_pid = pid,
            ready_ms,
            "upgrade: worker replaced; draining the old one"
        );
        self.out.push(RollingCommand::Retire {
            worker: old.worker,
            drain: self.drain,
        });
        self.step = Step::AwaitingAck {
            replacement,
            deadline: now + ACK_TIMEOUT,
        };
    }

    /// The replaced worker acknowledged its drain (or will not): settle, or during a
    /// rollback move on at once.
    fn old_draining(&mut self, worker: Token, active: Option<u64>, now: Instant) {
        let Step::AwaitingAck { replacement, .. } = &mut self.step else {
            return;
        };
        if replacement.old != Some(worker) {
            return;
        }
        if let Some(active) = active {
            replacement.report.old_active = active;
        }
        let replacement = replacement.clone();
        if self.rollback.is_some() {
            self.step = Step::Idle;
            return self.step_done(replacement, now);
        }
        self.step = Step::Settling {
            replacement,
            deadline: now + SETTLE,
        };
    }

    fn tick(&mut self, now: Instant) {
        match &self.step {
            Step::AwaitingAck {
                replacement,
                deadline,
            } if *deadline <= now => {
                if let Some(old) = replacement.old {
                    self.old_draining(old, None, now);
                }
            }
            Step::Settling {
                replacement,
                deadline,
            } if *deadline <= now => {
                let replacement = replacement.clone();
                self.step = Step::Idle;
                self.step_done(replacement, now);
            }
            Step::Canary(_) => self.forward_to_canary(CanaryEvent::Tick, now),
            _ => {}
        }
    }

    /// A slot is done: report it, start the canary after the first, or go on.
    fn step_done(&mut self, replacement: Replacement, now: Instant) {
        let Replacement {
            worker_id,
            successor,
            old,
            peers,
            report,
        } = replacement;
        let response = match self.rollback.as_mut() {
            None => {
                self.done += 1;
                self.replaced.push(worker_id);
                ControlResponse::WorkerReplaced {
                    index: self.done,
                    total: self.total,
                    worker_id,
                    old_pid: report.old_pid,
                    new_pid: report.new_pid,
                    ready_ms: report.ready_ms,
                    old_active_connections: report.old_active,
                }
            }
            Some(rollback) => {
                rollback.restored += 1;
                ControlResponse::WorkerRolledBack {
                    worker_id,
                    failed_pid: report.old_pid,
                    restored_pid: report.new_pid,
                }
            }
        };
        self.respond(response, false);
        let first_replaced = self.rollback.is_none() && self.done == 1;
        if let Some(policy) = self.canary.take().filter(|_| first_replaced) {
            let subject = CanarySubject {
                worker_id,
                canary: successor,
                canary_pid: report.new_pid,
                old,
                old_pid: report.old_pid,
                peers,
            };
            self.step = Step::Canary(Box::new(CanaryWatch::new(policy, subject, now)));
            return self.forward_to_canary(CanaryEvent::Tick, now);
        }
        self.next();
    }

    /// Hand an event to the canary (if one watches) and carry out its verdict.
    fn forward_to_canary(&mut self, event: CanaryEvent, now: Instant) {
        let Step::Canary(watch) = &mut self.step else {
            return;
        };
        let worker_id = watch.worker_id();
        for command in watch.handle(event, now) {
            match command {
                CanaryCommand::AskStatus(workers) => {
                    self.out.push(RollingCommand::AskStatus(workers));
                }
                CanaryCommand::Report(message) => {
                    info!(worker_id, "{message}");
                    self.respond(ControlResponse::Progress { message }, false);
                }
                CanaryCommand::Live {
                    elapsed,
                    window,
                    canary,
                    old,
                } => {
                    let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
                    info!(
                        worker_id,
                        elapsed_ms = millis(elapsed),
                        new_errors = canary.errors,
                        new_requests = canary.requests,
                        old_errors = old.errors,
                        old_requests = old.requests,
                        "canary comparison"
                    );
                    let comparison = ControlResponse::CanaryComparison {
                        worker_id,
                        elapsed_ms: millis(elapsed),
                        window_ms: millis(window),
                        new_errors: canary.errors,
                        new_requests: canary.requests,
                        old_errors: old.errors,
                        old_requests: old.requests,
                    };
                    self.respond(comparison, false);
                }
                CanaryCommand::Pass(message) => {
                    info!(worker_id, "{message}");
                    self.respond(ControlResponse::Progress { message }, false);
                    self.step = Step::Idle;
                    self.next();
                }
                CanaryCommand::Fail(reason) => {
                    error!(worker_id, "{reason}");
                    self.step = Step::Idle;
                    self.fail(reason);
                }
            }
        }
    }

    /// A worker's process is gone: a replaced worker that never acknowledged its drain
    /// counts as drained; the canary forgets it.
    fn worker_exited(&mut self, worker: Token, now: Instant) {
        if matches!(&self.step, Step::AwaitingAck { replacement, .. } if replacement.old == Some(worker))
        {
            self.old_draining(worker, None, now);
        }
        if let Step::AwaitingAck { replacement, .. } | Step::Settling { replacement, .. } =
            &mut self.step
        {
            if replacement.old == Some(worker) {
                replacement.old = None;
            }
            replacement.peers.retain(|peer| *peer != worker);
        }
        self.forward_to_canary(CanaryEvent::WorkerExited { worker }, now);
    }

    /// A slot's current worker died after readiness (the caller checked `claims_death`).
    fn current_died(&mut self, worker_id: u32, pid: u32, status: &str) {
        if !self.claims_death(worker_id, pid) {
            return;
        }
        let during = if matches!(self.step, Step::Canary(_)) {
            " during the canary"
        } else {
            ""
        };
        if self.in_current_step(worker_id, pid) {
            // Its old worker drains on; its slot must be restored like the replaced ones.
            self.replaced.push(worker_id);
        }
        self.fail(format!(
            "worker {worker_id}: new worker pid {pid} died after it was ready{during} ({status})"
        ));
    }

    /// Stop replacing; put the replaced slots back on the previous binary, last first.
    fn fail(&mut self, reason: String) {
        if let Step::Starting { successor, .. } = self.step {
            // Not ready yet and no longer wanted: it must not serve beside the slot's worker.
            self.out.push(RollingCommand::Retire {
                worker: successor,
                drain: self.drain,
            });
        }
        match self.rollback.as_mut() {
            Some(rollback) => {
                // A rollback worker failed too: give up on that slot, keep going.
                rollback.reason.push_str(&format!("; rollback: {reason}"));
            }
            None => {
                error!(reason = %reason, replaced = self.replaced.len(), "upgrade failed; rolling back");
                self.queue = self.replaced.iter().rev().copied().collect();
                self.rollback = Some(Rollback {
                    reason,
                    restored: 0,
                });
            }
        }
        self.step = Step::Idle;
        self.next();
    }
}

#[cfg(test)]
#[path = "rolling_tests.rs"]
mod tests;
