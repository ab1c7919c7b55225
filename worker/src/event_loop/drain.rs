//! Draining: stop accepting, close idle connections shortly before the deadline (so a racing
//! request sees EOF, not a reset), close what is left (TLS with close_notify) and exit at the
//! deadline.

use super::*;

impl Worker {
    pub(super) fn start_drain(&mut self, timeout: Duration, now: Instant) {
        if self.drain.is_none() {
            self.accept_queued(now);
        }
        let deadline = now + timeout;
        let active = self.sessions.len() as u64;
        self.send(&WorkerMessage::Draining {
            active_connections: active,
        });
        if let Some(d) = &mut self.drain {
            if deadline < d.deadline {
                d.deadline = deadline;
                let at = drain_timer_at(deadline, d.idle_closed, now);
                self.shared
                    .timers
                    .set(&mut d.timer, Some(at), TimerKey::Drain);
            }
            return;
        }
        info!(
            active,
            timeout_ms = crate::timers::millis(timeout),
            "draining"
        );
        if let Some(set) = self.listeners.take() {
            if let Err(e) = set.deregister(self.poll.registry()) {
                warn!(error = %e, "cannot deregister the listener set");
            }
            // Dropping the set closes only our duplicates: the kernel sockets and their
            // accept queues stay with the other workers.
            drop(set);
        }
        self.accept_pending = false;
        if let Some(id) = self.accept_backoff.take() {
            self.shared.timers.cancel(id);
        }
        self.shared
            .upstreams
            .close_all_idle(self.poll.registry(), &mut self.shared.timers);
        self.shared.draining = true;
        let mut timer = None;
        self.shared.timers.set(
            &mut timer,
            Some(drain_timer_at(deadline, false, now)),
            TimerKey::Drain,
        );
        self.drain = Some(DrainState {
            deadline,
            timer,
            idle_closed: false,
        });
        self.goaway_h2_connections(now);
    }

    /// HTTP/2 clients learn at once that this connection takes no new stream (the two-step
    /// GOAWAY): their next requests open a connection to another worker while the streams
    /// in flight finish here.
    fn goaway_h2_connections(&mut self, now: Instant) {
        let keys: Vec<usize> = self
            .sessions
            .iter()
            .filter(|(_, e)| matches!(e, Entry::H2(_)))
            .map(|(k, _)| k)
            .collect();
        for key in keys {
            let registry = self.poll.registry();
            let mut ctx = self.shared.ctx(registry, now);
            let out = match self.sessions.get_mut(key) {
                Some(Entry::H2(h)) => h.start_drain(&mut ctx),
                _ => continue,
            };
            self.handle_outcome(key, out, now);
        }
    }

    pub(super) fn close_idle_sessions(&mut self, now: Instant) {
        let keys: Vec<usize> = self
            .sessions
            .iter()
            .filter(|(_, e)| matches!(e, Entry::Http(h) if h.is_idle()))
            .map(|(k, _)| k)
            .collect();
        for key in keys {
            let registry = self.poll.registry();
            let mut ctx = self.shared.ctx(registry, now);
            let out = match self.sessions.get_mut(key) {
                Some(Entry::Http(h)) => h.close_idle(&mut ctx),
                _ => continue,
            };
            self.handle_outcome(key, out, now);
        }
    }

    /// The drain deadline: every session left is closed as it would be on its own end, so a
    /// TLS connection (a client, a tunnel's either side) gets its close_notify before the FIN,
    /// as a plain one gets its FIN, rather than whatever the process exit leaves.
    pub(super) fn close_all_sessions(&mut self, now: Instant) {
        let keys: Vec<usize> = self.sessions.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.remove_session(key, now);
        }
    }
}

/// When the drain timer should fire: a linger before the deadline to half-close idle
/// connections (unless done already or the drain is shorter than that), then the deadline.
fn drain_timer_at(deadline: Instant, idle_closed: bool, now: Instant) -> Instant {
    if idle_closed {
        return deadline;
    }
    match deadline.checked_sub(LINGER) {
        Some(t) if t > now => t,
        _ => deadline,
    }
}
