//! Fetched OCSP responses (`crate::ocsp_fetch`) kept fresh: when one is half through its
//! validity (or a failed fetch is due again), the loop asks its responder, and when a response
//! file changed, sends every worker the running configuration again, through the reload's
//! machinery (`reload::Purpose::OcspRefresh`): each worker loads the new file as it would at a
//! reload, a worker that refuses is rolled back, and the operator sees no reload.
//!
//! The fetch runs here, on the loop, and blocks it for at most
//! `ocsp_fetch::FETCH_TIMEOUT` (3 s), once per certificate's half-validity (days, for public
//! CAs) or retry (minutes). That is acceptable: the workers serve on without the master; what
//! the loop handles waits, it is not lost (signals stay queued in the signalfd, worker and
//! control messages in their sockets); its deadlines are Instants, met late rather than
//! missed, and all are longer than that (worker handshakes 10 s, reload answers 5 s); and a
//! hand-over already blocks the loop as long to ask the new binary its version. Only a
//! responder that does not answer costs the whole bound.
//!
//! No refresh runs while a reload, an upgrade or a stop is under way, while a worker is
//! starting, while the channels are not this master's to write (handing over, or a successor
//! not yet confirmed), or while workers of an older binary (which read another configuration
//! layout) run: it is put off, and tried again [`BUSY_RETRY`] later.

use super::*;

/// How long a refresh that could not be sent waits before it is tried again.
const BUSY_RETRY: Duration = Duration::from_secs(5);

impl Supervisor {
    /// When the loop must wake to refresh a response.
    pub(super) fn ocsp_deadline(&self) -> Option<Instant> {
        self.ocsp_allowed()
            .then(|| self.ocsp.next_refresh())
            .flatten()
    }

    fn ocsp_allowed(&self) -> bool {
        matches!(self.phase, Phase::Running) && !self.handing_over() && !self.tentative()
    }

    /// Fetches the responses due, and sends the workers the files that changed.
    pub(super) fn ocsp_timers(&mut self, now: Instant) {
        if !self.ocsp_allowed() || self.ocsp.next_refresh().is_none_or(|at| at > now) {
            return;
        }
        if let Some(reason) = self.reconfigure_blocked() {
            debug!(%reason, "OCSP refresh put off");
            return self.ocsp.postpone(now + BUSY_RETRY);
        }
        let mut config = self.config.clone();
        // Blocks the loop for at most FETCH_TIMEOUT: see the module's comment.
        let outcome = self.ocsp.refresh_due(&mut config, now);
        if !outcome.changed && config == self.config {
            return;
        }
        let metrics = self.metrics.as_ref().map(|m| m.config().clone());
        let (name, source) = (self.config_name.clone(), self.config_source.clone());
        self.switch_config(
            None,
            reload::Purpose::OcspRefresh,
            (config, metrics, name, source),
        );
    }
}
