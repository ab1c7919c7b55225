//! Binary upgrades, inside the supervision loop (design note, sections 4-6).
//!
//! Old master: the hand-over to a successor master (`handover.rs` here, its state machine in
//! `crate::upgrade::handover`). New master: the adoption of the previous master's workers
//! (`adoption.rs` here, `crate::upgrade::adoption`), then with `--rolling` the replacement of
//! the workers one at a time from its own executable, rolling the replaced ones back to the
//! previous executable on failure (this file).

use std::collections::VecDeque;
use std::os::unix::net::UnixStream;

use zentinel_protocol::control::CanaryPolicy;
use zentinel_protocol::state::{PendingUpgrade, WorkerRecord};

use super::canary::{CanaryNext, CanaryWatch};
use super::*;

/// Longest wait for a replaced worker's `Draining` acknowledgement before moving on.
const UPGRADE_ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a new worker must keep running after it took over before the rolling upgrade
/// moves on: a binary that dies right after readiness is rolled back instead of replacing
/// every worker with something that crashes.
const UPGRADE_SETTLE: Duration = Duration::from_secs(1);

/// What a successor master took over, validated by `main` (every fd checked and CLOEXEC).
#[derive(Debug)]
pub struct Inherited {
    pub previous_master_pid: u32,
    pub previous_executable: Executable,
    /// Each worker's record and its channel.
    pub workers: Vec<(WorkerRecord, OwnedFd)>,
    pub upgrade: Option<PendingUpgrade>,
    /// The control client waiting for the upgrade's progress.
    pub client: Option<UnixStream>,
    /// Where readiness is confirmed.
    pub ready_fd: OwnedFd,
    /// The claim every adopted resource carries (the control socket too): tentative until
    /// readiness is confirmed.
    pub ownership: crate::ownership::Ownership,
}

#[derive(Debug)]
pub(super) enum UpgradeOp {
    Handover(super::handover::Handover),
    Rolling(Rolling),
}

#[derive(Debug)]
enum Step {
    /// The successor of `worker_id` is starting.
    Starting { successor: Token },
    /// The successor serves; the old worker was told to drain.
    AwaitingAck {
        old: Token,
        old_pid: u32,
        new_pid: u32,
        ready_ms: u64,
        deadline: Instant,
    },
    /// The old worker drains; the new one must stay up until `deadline`.
    Settling {
        worker_id: u32,
        old_pid: u32,
        new_pid: u32,
        ready_ms: u64,
        old_active: u64,
        deadline: Instant,
    },
    /// The first new worker is on probation before the others are replaced.
    Canary(Box<CanaryWatch>),
}

/// New master: replacing the workers one at a time.
#[derive(Debug)]
pub(super) struct Rolling {
    client: Option<Token>,
    drain: Duration,
    ready_timeout: Duration,
    total: u32,
    /// Worker ids still to replace (or to roll back).
    queue: VecDeque<u32>,
    done: u32,
    /// Worker ids replaced so far, in order.
    replaced: Vec<u32>,
    step: Option<Step>,
    /// Set once replacing failed: the reason, and the workers put back so far.
    rollback: Option<(String, u32)>,
    /// Gate the other workers on the first one (cleared once it passed).
    canary: Option<CanaryPolicy>,
}

impl Supervisor {
    pub(super) fn handing_over(&self) -> bool {
        matches!(self.upgrade, Some(UpgradeOp::Handover(_)))
    }

    /// Tell an upgrade's client something (progress or the final answer).
    pub(super) fn upgrade_respond(
        &mut self,
        client: Option<Token>,
        response: ControlResponse,
        last: bool,
    ) {
        let (Some(client), Some(control)) = (client, self.control.as_mut()) else {
            return;
        };
        if last {
            control.finish(self.poll.registry(), client, &response);
        } else {
            control.respond(self.poll.registry(), client, &response);
        }
    }

    pub(super) fn begin_rolling(&mut self, client: Option<Token>, pending: &PendingUpgrade) {
        let queue: VecDeque<u32> = self.slots.iter().map(|slot| slot.worker_id).collect();
        let total = u32::try_from(queue.len()).unwrap_or(u32::MAX);
        info!(workers = total, "upgrade: replacing workers one at a time");
        self.upgrade = Some(UpgradeOp::Rolling(Rolling {
            client,
            drain: Duration::from_millis(pending.drain_timeout_ms),
            ready_timeout: Duration::from_millis(pending.ready_timeout_ms),
            total,
            queue,
            done: 0,
            replaced: Vec::new(),
            step: None,
            rollback: None,
            canary: pending.canary,
        }));
        self.rolling_next();
    }

    /// Start the next replacement (or rollback), or finish.
    fn rolling_next(&mut self) {
        let Some(UpgradeOp::Rolling(op)) = self.upgrade.as_mut() else {
            return;
        };
        if op.step.is_some() {
            return;
        }
        let ready_timeout = op.ready_timeout;
        let previous = op.rollback.is_some();
        let Some(worker_id) = op.queue.pop_front() else {
            return self.rolling_finished();
        };
        match self.spawn_process_from(
            worker_id,
            Role::Successor {
                client: None,
                upgrade: true,
            },
            previous,
            ready_timeout,
        ) {
            Ok(successor) => {
                if let Some(UpgradeOp::Rolling(op)) = self.upgrade.as_mut() {
                    op.step = Some(Step::Starting { successor });
                }
            }
            Err(reason) => {
                let message = format!("worker {worker_id}: cannot start a new worker: {reason}");
                self.rolling_failed(message);
            }
        }
    }

    /// The successor is ready: it takes the slot, the old worker drains.
    pub(super) fn rolling_promoted(&mut self, token: Token) {
        let Some(UpgradeOp::Rolling(op)) = self.upgrade.as_mut() else {
            return;
        };
        let drain = op.drain;
        let Some(Step::Starting { successor, .. }) = op.step else {
            return;
        };
        if successor != token {
            return;
        }
        let Some(process) = self.processes.get_mut(&token) else {
            return;
        };
        process.role = Role::Current;
        let worker_id = process.worker_id;
        let new_pid = process.pid.as_raw().unsigned_abs();
        let ready_ms = u64::try_from(process.spawned_at.elapsed().as_millis()).unwrap_or(0);
        let old = self.slot_index(worker_id).and_then(|index| {
            self.slots[index].backoff = Backoff::default();
            self.slots[index].current.replace(token)
        });
        let old = old.filter(|old| *old != token && self.processes.contains_key(old));
        let Some(old) = old else {
            if let Some(UpgradeOp::Rolling(op)) = self.upgrade.as_mut() {
                op.step = None;
            }
            return self.rolling_step_done(worker_id, 0, new_pid, ready_ms, 0);
        };
        let old_pid = self
            .processes
            .get(&old)
            .map_or(0, |p| p.pid.as_raw().unsigned_abs());
        info!(
            worker_id,
            old_pid, new_pid, ready_ms, "upgrade: worker replaced; draining the old one"
        );
        let told = self.retire(old, drain);
        if let Some(process) = self.processes.get_mut(&old) {
            process.upgrade_ack = told;
        }
        if let Some(UpgradeOp::Rolling(op)) = self.upgrade.as_mut() {
            op.step = Some(Step::AwaitingAck {
                old,
                old_pid,
                new_pid,
                ready_ms,
                deadline: Instant::now() + UPGRADE_ACK_TIMEOUT,
            });
        }
        if !told {
            self.rolling_old_draining(old, None);
        }
    }

    /// The replaced worker acknowledged its drain (or will not): report and move on.
    pub(super) fn rolling_old_draining(&mut self, old_token: Token, active: Option<u64>) {
        let Some(UpgradeOp::Rolling(op)) = self.upgrade.as_mut() else {
            return;
        };
        let Some(Step::AwaitingAck {
            old,
            old_pid,
            new_pid,
            ready_ms,
            ..
        }) = op.step
        else {
            return;
        };
        if old != old_token {
            return;
        }
        op.step = None;
        let active = active.unwrap_or_else(|| {
            self.processes
                .get(&old)
                .and_then(|p| p.counters.as_ref())
                .map_or(0, |c| c.active_connections)
        });
        let worker_id = self.processes.get(&old).map_or(0, |p| p.worker_id);
        if let Some(process) = self.processes.get_mut(&old) {
            process.upgrade_ack = false;
        }
        let Some(UpgradeOp::Rolling(op)) = self.upgrade.as_mut() else {
            return;
        };
        if op.rollback.is_some() {
            return self.rolling_step_done(worker_id, old_pid, new_pid, ready_ms, active);
        }
        op.step = Some(Step::Settling {
            worker_id,
            old_pid,
            new_pid,
            ready_ms,
            old_active: active,
            deadline: Instant::now() + UPGRADE_SETTLE,
        });
    }

    fn rolling_step_done(
        &mut self,
        worker_id: u32,
        old_pid: u32,
        new_pid: u32,
        ready_ms: u64,
        active: u64,
    ) {
        let Some(UpgradeOp::Rolling(op)) = self.upgrade.as_mut() else {
            return;
        };
        let client = op.client;
        let response = match op.rollback.as_mut() {
            None => {
                op.done += 1;
                op.replaced.push(worker_id);
                ControlResponse::WorkerReplaced {
                    index: op.done,
                    total: op.total,
                    worker_id,
                    old_pid,
                    new_pid,
                    ready_ms,
                    old_active_connections: active,
                }
            }
            Some((_, restored)) => {
                *restored += 1;
                ControlResponse::WorkerRolledBack {
                    worker_id,
                    failed_pid: old_pid,
                    restored_pid: new_pid,
                }
            }
        };
        self.upgrade_respond(client, response, false);
        if let Some(watch) = self.canary_for(worker_id, old_pid, new_pid) {
            if let Some(UpgradeOp::Rolling(op)) = self.upgrade.as_mut() {
                op.step = Some(Step::Canary(Box::new(watch)));
            }
            return self.canary_check();
        }
        self.rolling_next();
    }

    /// Advance the canary step (after a status answer, a worker exit or its deadline).
    pub(super) fn canary_check(&mut self) {
        let Some(UpgradeOp::Rolling(op)) = self.upgrade.as_mut() else {
            return;
        };
        if !matches!(op.step, Some(Step::Canary(_))) {
            return;
        }
        let Some(Step::Canary(mut watch)) = op.step.take() else {
            return;
        };
        let client = op.client;
        let worker_id = watch.worker_id();
        let next = self.canary_advance(&mut watch, Instant::now());
        let Some(UpgradeOp::Rolling(op)) = self.upgrade.as_mut() else {
            return;
        };
        match next {
            CanaryNext::Wait => op.step = Some(Step::Canary(watch)),
            CanaryNext::Report(message) => {
                op.step = Some(Step::Canary(watch));
                info!(worker_id, "{message}");
                self.upgrade_respond(client, ControlResponse::Progress { message }, false);
            }
            CanaryNext::Live {
                elapsed,
                window,
                canary,
                old,
            } => {
                op.step = Some(Step::Canary(watch));
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
                self.upgrade_respond(client, comparison, false);
            }
            CanaryNext::Pass(message) => {
                info!(worker_id, "{message}");
                self.upgrade_respond(client, ControlResponse::Progress { message }, false);
                self.rolling_next();
            }
            CanaryNext::Fail(reason) => {
                error!(worker_id, "{reason}");
                self.rolling_failed(reason);
            }
        }
    }

    /// The canary watch to start after `worker_id` was replaced, if this upgrade has one and
    /// that was its first worker.
    fn canary_for(&mut self, worker_id: u32, old_pid: u32, new_pid: u32) -> Option<CanaryWatch> {
        let Some(UpgradeOp::Rolling(op)) = self.upgrade.as_mut() else {
            return None;
        };
        if op.rollback.is_some() || op.done != 1 {
            return None;
        }
        let policy = op.canary.take()?;
        let token = self
            .slot_index(worker_id)
            .and_then(|index| self.slots[index].current)?;
        Some(CanaryWatch::new(policy, worker_id, token, new_pid, old_pid))
    }

    /// A new worker of the upgrade failed (it is dead, killed by the usual paths).
    pub(super) fn rolling_successor_failed(&mut self, token: Token, reason: String) {
        let Some(UpgradeOp::Rolling(op)) = self.upgrade.as_mut() else {
            return;
        };
        match op.step {
            Some(Step::Starting { successor, .. }) if successor == token => {}
            _ => return,
        }
        op.step = None;
        self.rolling_failed(reason);
    }

    /// A worker that already took over its slot in this rolling upgrade died: the new binary
    /// fails after readiness. Fail the upgrade and roll back (that slot included, from the
    /// previous binary) instead of restarting the new binary. False if the upgrade does not
    /// own this death (no rolling upgrade, a rollback under way, or a worker not replaced).
    pub(super) fn rolling_replacement_died(
        &mut self,
        worker_id: u32,
        pid: i32,
        status: &str,
    ) -> bool {
        let Some(UpgradeOp::Rolling(op)) = self.upgrade.as_mut() else {
            return false;
        };
        if op.rollback.is_some() {
            return false;
        }
        let pid = pid.unsigned_abs();
        let in_current_step = matches!(
            op.step,
            Some(Step::AwaitingAck { new_pid, .. } | Step::Settling { new_pid, .. }) if new_pid == pid
        );
        let during = if matches!(op.step, Some(Step::Canary(_))) {
            " during the canary"
        } else {
            ""
        };
        if !in_current_step && !op.replaced.contains(&worker_id) {
            return false;
        }
        if in_current_step {
            // Its old worker drains on; its slot must be restored like the replaced ones.
            op.step = None;
            op.replaced.push(worker_id);
        }
        self.rolling_failed(format!(
            "worker {worker_id}: new worker pid {pid} died after it was ready{during} ({status})"
        ));
        true
    }

    /// Stop replacing; put the already-replaced workers back on the previous executable.
    fn rolling_failed(&mut self, reason: String) {
        let Some(UpgradeOp::Rolling(op)) = self.upgrade.as_mut() else {
            return;
        };
        match op.rollback.as_mut() {
            Some((first, _)) => {
                // A rollback worker failed too: give up on that slot, keep going.
                first.push_str(&format!("; rollback: {reason}"));
            }
            None => {
                error!(reason = %reason, replaced = op.replaced.len(), "upgrade failed; rolling back");
                op.queue = op.replaced.iter().rev().copied().collect();
                op.rollback = Some((reason, 0));
            }
        }
        op.step = None;
        self.rolling_next();
    }

    fn rolling_finished(&mut self) {
        let Some(UpgradeOp::Rolling(op)) = self.upgrade.take() else {
            return;
        };
        let binary = self.executable.path().display().to_string();
        self.metrics_upgrade_finished(op.rollback.is_none());
        match op.rollback {
            None => {
                let message = format!(
                    "upgrade complete: {} workers on {binary}, generation {}",
                    op.total, self.generation
                );
                info!("{message}");
                crate::systemd::status(&message);
                self.upgrade_respond(op.client, ControlResponse::Done { message }, true);
            }
            Some((reason, restored)) => {
                self.workers_on_previous = self.previous_executable.is_some();
                let previous = self.worker_executable().path().display().to_string();
                let message = format!(
                    "rolling upgrade to {binary} failed: {reason}; {restored} replaced worker(s) \
                     rolled back to {previous}; the other workers kept running (workers started \
                     from now on run {previous} too)"
                );
                error!("{message}");
                crate::systemd::status(&message);
                self.upgrade_respond(op.client, ControlResponse::Failed { message }, true);
            }
        }
    }

    pub(super) fn abort_upgrade(&mut self, reason: &str) {
        match self.upgrade.take() {
            Some(UpgradeOp::Rolling(op)) => {
                self.metrics_upgrade_finished(false);
                let message = format!("upgrade abandoned: {reason}");
                warn!("{message}");
                self.upgrade_respond(op.client, ControlResponse::Failed { message }, true);
            }
            Some(handover @ UpgradeOp::Handover(_)) => {
                self.upgrade = Some(handover);
                self.handover_stop();
            }
            None => {}
        }
    }

    pub(super) fn upgrade_timers(&mut self, now: Instant) {
        self.adoption_timers(now);
        if self.handing_over() {
            return self.handover_poll(now);
        }
        match &self.upgrade {
            Some(UpgradeOp::Rolling(Rolling {
                step: Some(Step::AwaitingAck { old, deadline, .. }),
                ..
            })) if *deadline <= now => {
                let old = *old;
                self.rolling_old_draining(old, None);
            }
            Some(UpgradeOp::Rolling(Rolling {
                step:
                    Some(Step::Settling {
                        worker_id,
                        old_pid,
                        new_pid,
                        ready_ms,
                        old_active,
                        deadline,
                    }),
                ..
            })) if *deadline <= now => {
                let (worker_id, old_pid, new_pid, ready_ms, old_active) =
                    (*worker_id, *old_pid, *new_pid, *ready_ms, *old_active);
                if let Some(UpgradeOp::Rolling(op)) = self.upgrade.as_mut() {
                    op.step = None;
                }
                self.rolling_step_done(worker_id, old_pid, new_pid, ready_ms, old_active);
            }
            Some(UpgradeOp::Rolling(Rolling {
                step: Some(Step::Canary(watch)),
                ..
            })) if watch.deadline() <= now => self.canary_check(),
            _ => {}
        }
    }

    pub(super) fn upgrade_deadline(&self) -> Option<Instant> {
        if let Some(deadline) = self.adoption_deadline() {
            return Some(deadline);
        }
        match &self.upgrade {
            Some(UpgradeOp::Handover(handover)) => handover.deadline(),
            Some(UpgradeOp::Rolling(Rolling {
                step: Some(Step::AwaitingAck { deadline, .. } | Step::Settling { deadline, .. }),
                ..
            })) => Some(*deadline),
            Some(UpgradeOp::Rolling(Rolling {
                step: Some(Step::Canary(watch)),
                ..
            })) => Some(watch.deadline()),
            _ => None,
        }
    }
}
