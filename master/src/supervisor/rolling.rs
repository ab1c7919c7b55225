//! The supervisor's side of a rolling upgrade: carries out the commands of
//! [`RollingUpgrade`](crate::upgrade::rolling::RollingUpgrade) (spawn, promote, retire, ask
//! status, answer the client) and feeds it the events the loop sees. The decisions are the
//! state machine's; nothing here decides what comes next.

use std::collections::VecDeque;

use zentinel_protocol::state::PendingUpgrade;

use super::upgrade::UpgradeOp;
use super::*;
use crate::upgrade::rolling::{
    Outcome, Replaced, RollingCommand, RollingEvent, RollingPlan, RollingUpgrade, WorkerBinary,
};

/// A rolling upgrade in progress and the client that follows it.
#[derive(Debug)]
pub(super) struct RollingOp {
    client: Option<Token>,
    machine: RollingUpgrade,
}

impl Supervisor {
    /// New master, readiness confirmed: replace the workers one at a time.
    pub(super) fn begin_rolling(&mut self, client: Option<Token>, pending: &PendingUpgrade) {
        let plan = RollingPlan {
            worker_ids: self.slots.iter().map(|slot| slot.worker_id).collect(),
            drain: Duration::from_millis(pending.drain_timeout_ms),
            ready_timeout: Duration::from_millis(pending.ready_timeout_ms),
            canary: pending.canary,
            client: client.is_some(),
        };
        let (machine, commands) = RollingUpgrade::start(plan);
        self.upgrade = Some(UpgradeOp::Rolling(RollingOp { client, machine }));
        self.rolling_run(commands);
    }

    fn rolling_machine(&mut self) -> Option<&mut RollingUpgrade> {
        match self.upgrade.as_mut() {
            Some(UpgradeOp::Rolling(op)) => Some(&mut op.machine),
            _ => None,
        }
    }

    /// Hand an event to the rolling upgrade, if one runs, and carry out what it decides.
    pub(super) fn rolling_event(&mut self, event: RollingEvent) {
        let Some(machine) = self.rolling_machine() else {
            return;
        };
        let commands = machine.handle(event, Instant::now());
        self.rolling_run(commands);
    }

    /// Carry the commands out in order; what they report back goes to the machine, whose
    /// answers run after the commands already decided.
    fn rolling_run(&mut self, commands: Vec<RollingCommand>) {
        let mut queue = VecDeque::from(commands);
        while let Some(command) = queue.pop_front() {
            for event in self.rolling_execute(command) {
                let Some(machine) = self.rolling_machine() else {
                    return;
                };
                queue.extend(machine.handle(event, Instant::now()));
            }
        }
    }

    fn rolling_execute(&mut self, command: RollingCommand) -> Vec<RollingEvent> {
        match command {
            RollingCommand::Spawn {
                worker_id,
                binary,
                ready_timeout,
            } => {
                let role = Role::Successor {
                    client: None,
                    upgrade: true,
                };
                let previous = binary == WorkerBinary::Previous;
                match self.spawn_process_from(worker_id, role, previous, ready_timeout) {
                    Ok(successor) => vec![RollingEvent::Spawned {
                        worker_id,
                        successor,
                    }],
                    Err(reason) => vec![RollingEvent::SpawnFailed { worker_id, reason }],
                }
            }
            RollingCommand::Promote {
                worker_id,
                successor,
            } => {
                if let Some(process) = self.processes.get_mut(&successor) {
                    process.set_role(Role::Current);
                }
                if let Some(index) = self.slot_index(worker_id) {
                    self.slots[index].backoff = Backoff::default();
                    self.slots[index].current = Some(successor);
                }
                Vec::new()
            }
            RollingCommand::Retire { worker, drain } => {
                if self.retire(worker, drain) {
                    Vec::new()
                } else {
                    vec![RollingEvent::Draining {
                        worker,
                        active_connections: None,
                    }]
                }
            }
            RollingCommand::AskStatus(workers) => workers
                .into_iter()
                .map(|worker| match self.ask_status(worker) {
                    Some(request_id) => RollingEvent::StatusAsked { worker, request_id },
                    None => RollingEvent::WorkerSilenced { worker },
                })
                .collect(),
            RollingCommand::Respond { response, last } => {
                let client = match self.upgrade.as_ref() {
                    Some(UpgradeOp::Rolling(op)) => op.client,
                    _ => None,
                };
                self.upgrade_respond(client, response, last);
                Vec::new()
            }
            RollingCommand::Finished(outcome) => {
                self.rolling_finished(outcome);
                Vec::new()
            }
        }
    }

    fn rolling_finished(&mut self, outcome: Outcome) {
        let Some(UpgradeOp::Rolling(op)) = self.upgrade.take() else {
            return;
        };
        let binary = self.executable.path().display().to_string();
        self.metrics_upgrade_finished(matches!(outcome, Outcome::Completed { .. }));
        match outcome {
            Outcome::Completed { total } => {
                let message = format!(
                    "upgrade complete: {total} workers on {binary}, generation {}",
                    self.generation
                );
                info!("{message}");
                crate::systemd::status(&message);
                self.upgrade_respond(op.client, ControlResponse::Done { message }, true);
            }
            Outcome::RolledBack { reason, restored } => {
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
            // The machine answered the client already.
            Outcome::Abandoned { reason } => warn!("upgrade abandoned: {reason}"),
        }
    }

    /// An upgrade's successor is ready: tell the machine who it replaces and who the other
    /// slots' workers are.
    pub(super) fn rolling_successor_ready(&mut self, successor: Token) {
        let Some(process) = self.processes.get(&successor) else {
            return;
        };
        let worker_id = process.worker_id();
        let pid = process.pid().as_raw().unsigned_abs();
        let ready_ms = u64::try_from(process.spawned_at().elapsed().as_millis()).unwrap_or(0);
        let replaced = self
            .slot_index(worker_id)
            .and_then(|index| self.slots[index].current)
            .filter(|old| *old != successor)
            .and_then(|old| {
                let process = self.processes.get(&old)?;
                Some(Replaced {
                    worker: old,
                    pid: process.pid().as_raw().unsigned_abs(),
                    active_connections: process
                        .counters()
                        .as_ref()
                        .map_or(0, |c| c.active_connections),
                })
            });
        let peers = self
            .slots
            .iter()
            .filter(|slot| slot.worker_id != worker_id)
            .filter_map(|slot| slot.current)
            .collect();
        self.rolling_event(RollingEvent::SuccessorReady {
            successor,
            pid,
            ready_ms,
            replaced,
            peers,
        });
    }

    /// `worker_id`'s current worker `pid` died: true if the rolling upgrade takes it (it rolls
    /// back instead of the slot restarting with backoff).
    pub(super) fn rolling_claims_death(&mut self, worker_id: u32, pid: i32, status: &str) -> bool {
        let pid = pid.unsigned_abs();
        let claimed = self
            .rolling_machine()
            .is_some_and(|machine| machine.claims_death(worker_id, pid));
        if claimed {
            self.rolling_event(RollingEvent::CurrentDied {
                worker_id,
                pid,
                status: status.to_owned(),
            });
        }
        claimed
    }

    /// After a control client's event: if it was the upgrade's client and it went away, the
    /// upgrade goes on and answers nobody.
    pub(super) fn rolling_client_check(&mut self, token: Token) {
        let gone = match (self.upgrade.as_mut(), self.control.as_ref()) {
            (Some(UpgradeOp::Rolling(op)), Some(control)) if op.client == Some(token) => {
                !control.has_client(token)
            }
            _ => false,
        };
        if gone {
            if let Some(UpgradeOp::Rolling(op)) = self.upgrade.as_mut() {
                op.client = None;
            }
            info!("upgrade: the client went away; the rolling upgrade goes on");
            self.rolling_event(RollingEvent::ClientGone);
        }
    }

    pub(super) fn rolling_deadline(&self) -> Option<Instant> {
        match self.upgrade.as_ref() {
            Some(UpgradeOp::Rolling(op)) => op.machine.deadline(),
            _ => None,
        }
    }

    pub(super) fn rolling_timers(&mut self, now: Instant) {
        if self.rolling_deadline().is_some_and(|at| at <= now) {
            self.rolling_event(RollingEvent::Tick);
        }
    }
}
