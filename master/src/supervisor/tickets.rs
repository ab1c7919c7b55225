//! The TLS session-ticket keys (`crate::ticket_keys`; `docs/design/session-tickets.md`): their
//! rotation in the loop, the `TicketKeys` message every worker that reads it gets, and the keys
//! a successor master is handed, with the shared TLS session cache
//! (`docs/design/session-cache.md`).
//!
//! Every worker gets the keys in its `Start` (and again in each `Reconfigure`); a rotation
//! reaches the running ones as `TicketKeys`. No rotation happens while the channels are not
//! this master's to write (handing over) or not yet (a successor that has not confirmed): a
//! failed hand-over or takeover must leave the workers with the keys the master in charge
//! has. A rotation put off this way happens as soon as it is allowed again, or in the
//! successor, which keeps the keys' age.

use std::path::Path;

use zentinel_protocol::state::{
    SessionCacheFd, SESSION_CACHE_STATE_FORMAT, TICKET_KEYS_STATE_FORMAT,
};
use zentinel_protocol::ticket_keys::{hex, TicketKeys};

use super::*;

/// The first master-worker protocol whose workers read the keys (`Start::ticket_keys`,
/// `TicketKeys`). Older adopted workers keep their own per-process sessions until replaced.
const FIRST_PROTOCOL_WITH_TICKET_KEYS: u32 = 4;

/// Longest wait for `NEW_BINARY --version --json` at a hand-over, asked to learn whether the
/// new binary reads the state format that carries the keys. It answers in milliseconds (the
/// pre-flight ran it moments before); a binary that does not answer in time just gets no keys.
const SUCCESSOR_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

impl Supervisor {
    /// The workers' channels are this master's to write.
    fn rotation_allowed(&self) -> bool {
        !self.handing_over() && !self.tentative()
    }

    /// When the loop must wake to rotate.
    pub(super) fn ticket_key_deadline(&self) -> Option<Instant> {
        self.rotation_allowed()
            .then(|| self.ticket_keys.next_rotation())
    }

    /// Rotate when due, and send the new keys to every worker.
    pub(super) fn ticket_key_timers(&mut self, now: Instant) {
        if !self.rotation_allowed() {
            return;
        }
        match self.ticket_keys.rotate_if_due(now) {
            Ok(false) => {}
            Ok(true) => {
                self.log_ticket_keys();
                self.send_ticket_keys("rotated");
            }
            Err(err) => error!(
                error = %err,
                "cannot make a new TLS session-ticket key; the keys in use stay, retrying in a minute"
            ),
        }
    }

    /// The key names (never the secrets): a ticket starts with the name of the key that
    /// sealed it.
    pub(super) fn log_ticket_keys(&self) {
        let keys = self.ticket_keys.keys();
        let names: Vec<String> = keys.keys.iter().map(|k| hex(&k.name)).collect();
        info!(
            keys = %names.join(","),
            lifetime_s = keys.lifetime_s,
            rotation_s = self.ticket_keys.rotation().as_secs(),
            "TLS session-ticket keys (newest first)"
        );
    }

    /// Send the keys to every worker that reads them and has had its `Start` (a worker still
    /// in its handshake gets them in the `Start` to come).
    pub(super) fn send_ticket_keys(&mut self, why: &str) {
        let message = MasterMessage::TicketKeys(self.ticket_keys.keys().clone());
        let registry = self.poll.registry();
        let mut sent = 0;
        let mut failed = Vec::new();
        for (&token, process) in self.processes.iter_mut() {
            if process.channel().is_none()
                || process.killed()
                || process.protocol_version() < FIRST_PROTOCOL_WITH_TICKET_KEYS
                || process.state() == WorkerState::AwaitingHello
            {
                continue;
            }
            match send(registry, process, &message, &[]) {
                Ok(()) => sent += 1,
                Err(err) => failed.push((token, err)),
            }
        }
        info!(
            workers = sent,
            why, "TLS session-ticket keys sent to the workers"
        );
        for (token, err) in failed {
            self.channel_failed(token, err);
        }
    }

    /// What the state file of a hand-over to `binary` carries for session resumption: the
    /// ticket keys, and the shared session cache (its fd, which the new master inherits).
    /// They travel only when they have a use (a TLS listener resumes sessions) and the new
    /// binary says it reads the state format that holds them: to any other, the master writes
    /// the older format it reads, without them (its workers make their own keys, or an empty
    /// cache; a client's session from before the upgrade costs it one full handshake, nothing
    /// else). Learning that means running the new binary once (`--version --json`, bounded).
    pub(super) fn resumption_for_successor(
        &self,
        binary: &str,
    ) -> (TicketKeys, Option<SessionCacheFd>) {
        if !crate::session_cache::wanted(&self.config) {
            debug!("upgrade: no TLS listener resumes sessions: no session-ticket keys or session cache to hand on");
            return (TicketKeys::default(), None);
        }
        let info = match crate::preflight::query_version(Path::new(binary), SUCCESSOR_PROBE_TIMEOUT)
        {
            Ok(info) => info,
            Err(reason) => {
                warn!(
                    %reason,
                    "upgrade: cannot learn which state formats the new binary reads: the TLS \
                     session-ticket keys and session cache stay here, and no session from \
                     before the upgrade resumes on its workers"
                );
                return (TicketKeys::default(), None);
            }
        };
        if !info.reads_state_format(TICKET_KEYS_STATE_FORMAT) {
            warn!(
                new_version = %info.version,
                formats = %info.readable_formats_text(),
                "upgrade: the new binary does not read the state format that carries the \
                 TLS session-ticket keys: its workers make their own, and no session from \
                 before the upgrade resumes on them"
            );
            return (TicketKeys::default(), None);
        }
        info!(
            format = TICKET_KEYS_STATE_FORMAT,
            "upgrade: the TLS session-ticket keys go to the new master"
        );
        let cache = match &self.session_cache {
            Some(cache) if info.reads_state_format(SESSION_CACHE_STATE_FORMAT) => {
                info!(
                    format = SESSION_CACHE_STATE_FORMAT,
                    "upgrade: the shared TLS session cache goes to the new master"
                );
                Some(cache.record())
            }
            Some(_) => {
                warn!(
                    new_version = %info.version,
                    formats = %info.readable_formats_text(),
                    "upgrade: the new binary does not read the state format that carries the \
                     shared TLS session cache: its workers start with an empty one, and a \
                     session resumed by id from before the upgrade pays a full handshake"
                );
                None
            }
            None => None,
        };
        (self.ticket_keys.keys().clone(), cache)
    }
}
