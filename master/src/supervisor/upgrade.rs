//! Binary upgrades, inside the supervision loop (design note, sections 4-6).
//!
//! Old master: the hand-over to a successor master (`handover.rs` here, its state machine in
//! `crate::upgrade::handover`). New master: the adoption of the previous master's workers
//! (`adoption.rs` here, `crate::upgrade::adoption`), then with `--rolling` the replacement of
//! the workers one at a time (`rolling.rs` here, `crate::upgrade::rolling`).

use std::os::unix::net::UnixStream;

use zentinel_protocol::state::{PendingUpgrade, WorkerRecord};

use super::rolling::RollingOp;
use super::*;

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
    Rolling(RollingOp),
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

    pub(super) fn abort_upgrade(&mut self, reason: &str) {
        match self.upgrade.take() {
            Some(rolling @ UpgradeOp::Rolling(_)) => {
                self.upgrade = Some(rolling);
                self.rolling_event(RollingEvent::Abort {
                    reason: reason.to_owned(),
                });
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
        match &self.upgrade {
            Some(UpgradeOp::Handover(_)) => self.handover_poll(now),
            Some(UpgradeOp::Rolling(_)) => self.rolling_timers(now),
            None => {}
        }
    }

    pub(super) fn upgrade_deadline(&self) -> Option<Instant> {
        if let Some(deadline) = self.adoption_deadline() {
            return Some(deadline);
        }
        match &self.upgrade {
            Some(UpgradeOp::Handover(handover)) => handover.deadline(),
            Some(UpgradeOp::Rolling(_)) => self.rolling_deadline(),
            None => None,
        }
    }
}
