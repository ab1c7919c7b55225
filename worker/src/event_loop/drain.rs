//! Draining: stop accepting, then carry out the drain schedule (`crate::drain_schedule`):
//! idle keep-alive connections half-closed and tunnels closed spread over a window before the
//! deadline (so a racing request sees EOF, not a reset, and clients do not all reconnect at
//! once), what is left closed (TLS with close_notify) at the deadline, then exit.

use super::*;
use crate::drain_schedule::{Command, Event};

impl Worker {
    pub(super) fn start_drain(&mut self, timeout: Duration, now: Instant) {
        if self.drain.is_none() {
            self.accept_queued(now);
        }
        let active = self.sessions.len() as u64;
        self.send(&WorkerMessage::Draining {
            active_connections: active,
        });
        if self.drain.is_some() {
            // A second drain can only bring the deadline forward; it never closes anything
            // by itself, so the loop goes on.
            let _ = self.drain_event(Event::Drain { now, timeout }, now);
            return;
        }
        let schedule = DrainSchedule::start(now, timeout, self.drain_settings.close_spread, LINGER);
        info!(
            active,
            timeout_ms = crate::timers::millis(timeout),
            close_spread_ms = crate::timers::millis(schedule.spread()),
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
        self.drain = Some(DrainState {
            schedule,
            timer: None,
        });
        self.arm_drain_timer();
        self.goaway_h2_connections(now, H2Goaway::Busy);
    }

    /// The master's `FinishDrain`: too many generations drain, and this one is the oldest.
    pub(super) fn finish_drain(&mut self, now: Instant) {
        let Some(d) = &self.drain else {
            warn!("FinishDrain while not draining: ignored");
            return;
        };
        let again = d.schedule.finishing();
        let left = d.schedule.drain_deadline().saturating_duration_since(now);
        let idle = self
            .spread_candidates()
            .iter()
            .filter(|(_, kind)| *kind == SpreadKind::Idle)
            .count();
        info!(
            idle,
            active = self.sessions.len(),
            again,
            drain_left_ms = crate::timers::millis(left),
            "asked to finish the drain now: closing idle connections; requests in flight and \
             tunnels keep the deadline"
        );
        let _ = self.drain_event(Event::FinishNow, now);
    }

    /// Feed the drain schedule an event and carry out what it says. `Exit` once the deadline
    /// closed everything.
    pub(super) fn drain_event(&mut self, event: Event, now: Instant) -> Control {
        let Some(d) = &mut self.drain else {
            return Control::Continue;
        };
        let mut commands: std::collections::VecDeque<Command> = d.schedule.handle(event).into();
        while let Some(command) = commands.pop_front() {
            match command {
                Command::ListSessions => {
                    // HTTP/2 connections that took streams since the drain began get their
                    // GOAWAY now; idle ones get a slot like idle keep-alive connections.
                    self.goaway_h2_connections(now, H2Goaway::Busy);
                    let sessions = self.spread_candidates();
                    let Some(d) = &mut self.drain else { break };
                    debug!(
                        sessions = sessions.len(),
                        spread_ms = crate::timers::millis(d.schedule.spread()),
                        "drain: spreading the closes of idle connections and tunnels"
                    );
                    commands.extend(d.schedule.handle(Event::Sessions { now, sessions }));
                }
                Command::Close { key, kind } => self.close_scheduled(key, kind, now),
                Command::CloseIdle => self.close_idle_sessions(now),
                Command::CloseAll => {
                    warn!(
                        active = self.sessions.len(),
                        "drain deadline reached: closing remaining connections"
                    );
                    self.close_all_sessions(now);
                    return Control::Exit;
                }
            }
        }
        self.arm_drain_timer();
        Control::Continue
    }

    fn arm_drain_timer(&mut self) {
        if let Some(d) = &mut self.drain {
            let at = d.schedule.deadline();
            self.shared.timers.set(&mut d.timer, at, TimerKey::Drain);
        }
    }

    /// The sessions whose close the drain spreads, in slab order, and what each is: the hook
    /// for every kind of session (see [`spread_kind`]).
    fn spread_candidates(&self) -> Vec<(usize, SpreadKind)> {
        self.sessions
            .iter()
            .filter_map(|(key, entry)| spread_kind(entry).map(|kind| (key, kind)))
            .collect()
    }

    /// Session `key`'s slot in the spread came: close it as `kind` says, if it still is one.
    /// An idle connection that took a request meanwhile is left to end with it
    /// (`Connection: close`), or at the deadline.
    fn close_scheduled(&mut self, key: usize, kind: SpreadKind, now: Instant) {
        let Some(entry) = self.sessions.get(key) else {
            return;
        };
        if matches!(entry, Entry::H2(_)) {
            // Idle or not by now, an HTTP/2 connection's slot is its GOAWAY: streams opened
            // since it was listed finish, new ones go elsewhere.
            self.goaway_h2(key, now);
            return;
        }
        if spread_kind(entry) != Some(kind) {
            return;
        }
        match kind {
            SpreadKind::Idle => self.close_idle_session(key, now),
            // Closed as at the deadline: a TLS side gets its close_notify first.
            SpreadKind::Tunnel => self.remove_session(key, now),
        }
    }

    /// The two-step GOAWAY to HTTP/2 connections: their clients' next requests open a
    /// connection to another worker while the streams in flight finish here. `Busy`: those
    /// with streams open (their clients are sending now: they move at once); `All`: every one.
    fn goaway_h2_connections(&mut self, now: Instant, which: H2Goaway) {
        let keys: Vec<usize> = self
            .sessions
            .iter()
            .filter(|(_, e)| match e {
                Entry::H2(h) => which == H2Goaway::All || !h.is_idle(),
                _ => false,
            })
            .map(|(k, _)| k)
            .collect();
        for key in keys {
            self.goaway_h2(key, now);
        }
    }

    fn goaway_h2(&mut self, key: usize, now: Instant) {
        let registry = self.poll.registry();
        let mut ctx = self.shared.ctx(registry, now);
        let out = match self.sessions.get_mut(key) {
            Some(Entry::H2(h)) => h.start_drain(&mut ctx),
            _ => return,
        };
        self.handle_outcome(key, out, now);
    }

    /// Idle keep-alive connections half-closed, every HTTP/2 connection told GOAWAY (near the
    /// deadline, or `FinishDrain`).
    pub(super) fn close_idle_sessions(&mut self, now: Instant) {
        self.goaway_h2_connections(now, H2Goaway::All);
        let keys: Vec<usize> = self
            .sessions
            .iter()
            .filter(|(_, e)| matches!(e, Entry::Http(h) if h.is_idle()))
            .map(|(k, _)| k)
            .collect();
        for key in keys {
            self.close_idle_session(key, now);
        }
    }

    /// Half-close an idle keep-alive connection and let it linger (a request racing with the
    /// close sees EOF, not a reset).
    fn close_idle_session(&mut self, key: usize, now: Instant) {
        let registry = self.poll.registry();
        let mut ctx = self.shared.ctx(registry, now);
        let out = match self.sessions.get_mut(key) {
            Some(Entry::Http(h)) => h.close_idle(&mut ctx),
            _ => return,
        };
        self.handle_outcome(key, out, now);
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

/// What a session is to the close spread: an HTTP connection between two requests (or an
/// HTTP/2 one without a stream), a tunnel, or neither (an exchange in flight, which ends on its
/// own or at the deadline).
///
/// An HTTP/2 connection with streams gets its two-step GOAWAY when the drain starts (its
/// client is sending: it moves at once), or when the spread is planned if it took streams
/// since; an idle one gets it at its slot, so that idle clients reconnect spread out too.
fn spread_kind(entry: &Entry) -> Option<SpreadKind> {
    match entry {
        Entry::Http(h) if h.is_idle() => Some(SpreadKind::Idle),
        Entry::H2(h) if h.is_idle() => Some(SpreadKind::Idle),
        Entry::Http(_) | Entry::H2(_) | Entry::Converting => None,
        Entry::Tcp(_) => Some(SpreadKind::Tunnel),
    }
}

/// Which HTTP/2 connections get their GOAWAY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum H2Goaway {
    Busy,
    All,
}
