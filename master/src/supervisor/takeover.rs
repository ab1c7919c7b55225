//! New-master side of a binary upgrade: what may happen while the takeover is tentative, and
//! the confirmation that makes the adopted resources ours (`crate::ownership`).
//!
//! While tentative the successor master reads its adopted workers' status answers and nothing
//! else: it accepts on no inherited socket, starts no worker, signals none, and a stop request
//! abandons the takeover (the previous master, still in charge, handles its own stop).

use std::os::unix::net::UnixStream;

use super::*;

impl Supervisor {
    /// A successor master that has not confirmed readiness yet.
    pub(super) fn tentative(&self) -> bool {
        self.takeover
            .as_ref()
            .is_some_and(|claim| !claim.is_confirmed())
    }

    /// Give up before confirming: `run` returns the error, and dropping everything leaves the
    /// previous master as it was.
    pub(super) fn abandon_takeover(&mut self, reason: String) {
        error!(reason = %reason, "abandoning the takeover; the previous master keeps running");
        if self.takeover_failed.is_none() {
            self.takeover_failed = Some(reason);
        }
    }

    /// Test-only faults at the last step before confirming, with every fd adopted and
    /// registered (`zentinel_worker::fault_injection`). `true`: the takeover was abandoned.
    #[cfg(feature = "fault-injection")]
    pub(super) fn takeover_fault(&mut self) -> bool {
        use zentinel_worker::fault_injection::{armed, Fault};
        match armed() {
            Some(Fault::MasterExitBeforeReady) => {
                error!("fault injection: master-exit-before-ready");
                std::process::exit(70);
            }
            Some(Fault::TakeoverFail) => {
                self.abandon_takeover("fault injection: takeover-fail".to_owned());
                true
            }
            Some(Fault::TakeoverPanic) => panic!("fault injection: takeover-panic"),
            _ => false,
        }
    }

    /// No faults in this build.
    #[cfg(not(feature = "fault-injection"))]
    pub(super) fn takeover_fault(&mut self) -> bool {
        false
    }

    /// Test-only fault right after the adopted workers were asked for their status, before
    /// any answer is read: the takeover is abandoned with the answers left on the channels.
    #[cfg(feature = "fault-injection")]
    pub(super) fn asked_fault(&mut self) {
        use zentinel_worker::fault_injection::{armed, Fault};
        if self.tentative() && armed() == Some(Fault::TakeoverFailUnanswered) {
            self.abandon_takeover("fault injection: takeover-fail-unanswered".to_owned());
        }
    }

    /// No faults in this build.
    #[cfg(not(feature = "fault-injection"))]
    pub(super) fn asked_fault(&mut self) {}

    /// Everything confirming needs that can fail, done before `READY` is written so that a
    /// failure still leaves the previous master in charge: register the inherited control and
    /// metrics sockets for accepts and the upgrade's client connection. Registering accepts
    /// nothing by itself; the loop polls them only after the confirmation. Returns the client's
    /// token.
    pub(super) fn prepare_confirmation(
        &mut self,
        client: Option<UnixStream>,
    ) -> Result<Option<Token>, String> {
        let registry = self.poll.registry();
        if let Some(control) = self.control.as_ref() {
            control.start_accepting(registry).map_err(|err| {
                format!(
                    "cannot poll the control socket {}: {err}",
                    control.path().display()
                )
            })?;
        }
        if let Some(server) = self.metrics.as_mut() {
            let token = Self::alloc_token(&mut self.next_token);
            server.register(registry, token).map_err(|err| {
                format!(
                    "cannot poll the metrics endpoint {}: {err}",
                    server.local_address()
                )
            })?;
        }
        let Some(stream) = client else {
            return Ok(None);
        };
        let token = Self::alloc_token(&mut self.next_token);
        match self.control.as_mut() {
            Some(control) => match control.adopt_client(registry, token, stream) {
                Ok(()) => Ok(Some(token)),
                Err(err) => {
                    // The client only loses its progress lines; not worth failing for.
                    warn!(error = %err, "cannot adopt the upgrade's control client");
                    Ok(None)
                }
            },
            None => Ok(None),
        }
    }

    /// `READY` was written: everything adopted is ours now, and what was put off happens.
    pub(super) fn confirm_takeover(&mut self) {
        let Some(claim) = self.takeover.as_ref() else {
            return;
        };
        claim.confirm();
        let deferred: Vec<Token> = self
            .processes
            .iter()
            .filter(|(_, process)| process.kill_deferred())
            .map(|(&token, _)| token)
            .collect();
        for token in deferred {
            if let Some(process) = self.processes.get_mut(&token) {
                warn!(
                    worker_id = process.worker_id(),
                    pid = process.pid().as_raw(),
                    "takeover confirmed: killing the adopted worker it decided to kill before"
                );
                kill_process(process);
            }
        }
        // Deadlines put off while tentative (restarts, status, drain and EOF kills, the key
        // rotation) count from now on: run_timers picks up the ones already due on this turn.
        // The adopted workers get this master's keys: the ones they have if the predecessor
        // handed them on, fresh ones otherwise (then new workers and old agree from now on).
        self.send_ticket_keys("takeover confirmed");
        // The adopted draining generations count against max-draining-generations from now.
        self.draining_adopted();
    }
}
