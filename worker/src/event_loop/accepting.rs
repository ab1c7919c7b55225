//! Accepting connections: a small budget per turn (it is how connections spread over the
//! workers), the connection and open-file limits, and backing off when the kernel is short.

use super::*;

impl Worker {
    pub(super) fn accept_loop(&mut self, now: Instant) {
        let mut took_from = Vec::new();
        self.accept_some(now, &mut took_from);
        // Step to the back of each listener's queue of exclusive waiters, so the next
        // connection wakes another idle worker (see `ListenerSet::requeue`).
        let Some(set) = &self.listeners else {
            return;
        };
        let mut failed = None;
        for idx in took_from {
            if let Err(e) = set.requeue(self.poll.registry(), idx) {
                failed = Some(e);
            }
        }
        if let Some(e) = failed {
            error!(error = %e, "cannot re-register a listener: retrying after a back-off");
            self.listeners_lost = true;
            self.back_off_accept(now);
        }
    }

    /// Before the listeners are deregistered for a drain: accept every connection already
    /// queued. `EPOLLEXCLUSIVE` (edge-triggered) woke one worker per arrival; when that worker
    /// is this one and it drains instead of accepting, nothing wakes another worker for the
    /// queued connection until the next one arrives, and a lone client waits for nothing.
    /// Taken here, each is served (its first request answered with `Connection: close`) like
    /// the drain's other sessions. A connection arriving after this wakes a worker still in
    /// `epoll_wait`: this one is busy until it has deregistered.
    pub(super) fn accept_queued(&mut self, now: Instant) {
        loop {
            let mut took_from = Vec::new();
            self.accept_some(now, &mut took_from);
            if took_from.is_empty() {
                return;
            }
        }
    }

    /// Accept up to the iteration's budget of connections (see `accept_budget`); `took_from`
    /// gets the listeners that gave one.
    pub(super) fn accept_some(&mut self, now: Instant, took_from: &mut Vec<usize>) {
        let ready = match self.listeners.as_mut().map(|s| s.ready()) {
            None => {
                self.accept_pending = false;
                return;
            }
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                error!(error = %e, "epoll_wait on the listener set failed");
                self.back_off_accept(now);
                return;
            }
        };
        let mut budget = self.accept_budget;
        for idx in ready {
            loop {
                if let Some(limit) = self.at_capacity() {
                    if !self.at_capacity_logged {
                        match limit {
                            Capacity::MaxConnections => warn!(
                                max_connections = self.max_connections,
                                "connection limit reached: not accepting until a connection closes"
                            ),
                            Capacity::FileDescriptors => warn!(
                                sessions = self.sessions.len(),
                                descriptors = self.fd_budget.available(),
                                "open-file limit reached: not accepting until a connection closes"
                            ),
                        }
                        self.at_capacity_logged = true;
                    }
                    self.accept_pending = false;
                    return;
                }
                self.at_capacity_logged = false;
                if budget == 0 {
                    self.accept_pending = true;
                    return;
                }
                budget -= 1;
                let res = match &self.listeners {
                    Some(set) => set.accept(idx),
                    None => return,
                };
                match res {
                    Accepted::Conn {
                        stream,
                        peer,
                        listener,
                    } => {
                        if !took_from.contains(&idx) {
                            took_from.push(idx);
                        }
                        self.new_session(stream, peer, listener, now)
                    }
                    Accepted::Empty => break,
                    Accepted::Transient(e) => {
                        self.shared.counters.c.accept_errors += 1;
                        debug!(error = %e, "accept: transient error");
                    }
                    Accepted::Exhausted(e) => {
                        self.shared.counters.c.accept_errors += 1;
                        warn!(error = %e, backoff_ms = crate::timers::millis(ACCEPT_BACKOFF), "accept failed: backing off");
                        self.back_off_accept(now);
                        return;
                    }
                }
            }
        }
        self.accept_pending = false;
    }

    /// A listener's registration was lost (a failed re-register): add back what is missing.
    pub(super) fn reregister_listeners(&mut self, now: Instant) {
        let Some(set) = &self.listeners else {
            self.listeners_lost = false;
            return;
        };
        match set.register_missing(self.poll.registry()) {
            Ok(()) => {
                info!("listeners registered again");
                self.listeners_lost = false;
            }
            Err(e) => {
                error!(error = %e, "cannot re-register the listeners: retrying after a back-off");
                self.back_off_accept(now);
            }
        }
    }

    /// Which limit stops another accept, if any. Idle pooled upstream connections are closed
    /// first when they are all that stands in the way: a client beats a spare connection.
    pub(super) fn at_capacity(&mut self) -> Option<Capacity> {
        if self.sessions.len() >= self.max_connections {
            return Some(Capacity::MaxConnections);
        }
        let registry = self.poll.registry();
        let shared = &mut self.shared;
        while !self
            .fd_budget
            .allows_one_more(self.sessions.len(), held_descriptors(shared))
        {
            if !shared
                .upstreams
                .close_oldest_idle(registry, &mut shared.timers)
            {
                return Some(Capacity::FileDescriptors);
            }
        }
        None
    }

    pub(super) fn back_off_accept(&mut self, now: Instant) {
        let mut t = None;
        self.shared
            .timers
            .set(&mut t, Some(now + ACCEPT_BACKOFF), TimerKey::AcceptBackoff);
        self.accept_backoff = t;
        self.accept_pending = true;
    }
}

/// Descriptors held beside the sessions' own: idle pooled upstream connections and the
/// tunnels' splice pipes.
fn held_descriptors(shared: &Shared) -> usize {
    shared.upstreams.idle_count() + crate::sock::splice::descriptors_open()
}
