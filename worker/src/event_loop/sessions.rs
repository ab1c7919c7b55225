//! Sessions in the slab: events and timers handed to them, what they ask for afterwards
//! (done, upgraded to a tunnel), new sessions for accepted connections.

use super::*;
use crate::sock::pipe::PipeEnd;
use crate::wakeups::Wake;

impl Worker {
    /// Give an event to every session a pool woke (a connection under its cap was released,
    /// or a host name resolved): each tries to connect again.
    pub(super) fn wake_waiting_sessions(&mut self, now: Instant) {
        // A woken session may release a connection and wake others: bounded rounds, in case.
        for _ in 0..64 {
            let woken = self.shared.upstreams.take_wakeups();
            if woken.is_empty() {
                return;
            }
            for token in woken {
                if let Decoded::Session(key, side) = tokens::decode(token) {
                    self.on_session_event(key, side, Ready::default(), now);
                }
            }
        }
    }

    /// Run the upstream-side work woken through pipes (see `wakeups`): HTTP/2 upstream
    /// connections whose streams' sessions moved bytes, probes and mirrored requests whose
    /// streams did.
    pub(super) fn run_woken(&mut self, now: Instant) {
        let mut woken = std::mem::take(&mut self.shared.woken);
        woken.sort_unstable();
        woken.dedup();
        let registry = self.poll.registry();
        let up = &mut self.shared.upstreams;
        let timers = &mut self.shared.timers;
        for who in woken {
            match who {
                Wake::H2Upstream(k) => up.run_h2(k, now, registry, timers),
                Wake::Probe(k) => up.on_probe_event(k, now, registry, timers),
                Wake::Shadow(k) => up.on_shadow_event(k, registry, timers),
                // Sessions are queued apart (`Shared::yielded`).
                Wake::Session(_) => {}
            }
        }
    }

    /// Run again the sessions that yielded their turn (see [`Ctx::yield_turn`]). A key whose
    /// session ended meanwhile is skipped, or gets a harmless spurious run if reused.
    pub(super) fn resume_yielded(&mut self, keys: &mut Vec<usize>, now: Instant) {
        keys.sort_unstable();
        keys.dedup();
        for key in keys.drain(..) {
            self.on_session_event(key, Side::Client, Ready::default(), now);
        }
    }

    pub(super) fn on_session_event(&mut self, key: usize, side: Side, r: Ready, now: Instant) {
        let registry = self.poll.registry();
        let mut ctx = self.shared.ctx(registry, now);
        let out = match self.sessions.get_mut(key) {
            Some(Entry::Http(h)) => h.on_ready(side, r, &mut ctx),
            Some(Entry::Tcp(t)) => t.on_ready(side, r, &mut ctx),
            Some(Entry::H2(h)) => h.on_ready(r, &mut ctx),
            _ => return,
        };
        self.handle_outcome(key, out, now);
    }

    pub(super) fn on_session_timer(&mut self, key: usize, id: TimerId, now: Instant) {
        let registry = self.poll.registry();
        let mut ctx = self.shared.ctx(registry, now);
        let out = match self.sessions.get_mut(key) {
            Some(Entry::Http(h)) => h.on_timer(id, &mut ctx),
            Some(Entry::Tcp(t)) => t.on_timer(id, &mut ctx),
            Some(Entry::H2(h)) => h.on_timer(id, &mut ctx),
            _ => return,
        };
        self.handle_outcome(key, out, now);
    }

    pub(super) fn handle_outcome(&mut self, key: usize, out: Outcome, now: Instant) {
        match out {
            Outcome::Continue => self.spawn_stream_sessions(key, now),
            Outcome::Done => self.remove_session(key, now),
            Outcome::Http2 => {
                let Some(slot) = self.sessions.get_mut(key) else {
                    return;
                };
                let Entry::Http(h) = std::mem::replace(slot, Entry::Converting) else {
                    return;
                };
                let draining = self.shared.draining;
                let registry = self.poll.registry();
                let mut ctx = self.shared.ctx(registry, now);
                let mut conn = Box::new(h.into_h2(&mut ctx));
                debug!(key, "HTTP/2 connection");
                // Became HTTP/2 while this worker drains (accepted before, spoke after): the
                // GOAWAY goes out at once, as it went to the connections open at drain start.
                let out = if draining {
                    conn.start_drain(&mut ctx)
                } else {
                    conn.on_ready(Ready::default(), &mut ctx)
                };
                self.sessions[key] = Entry::H2(conn);
                self.handle_outcome(key, out, now);
            }
            Outcome::Upgrade => {
                let Some(slot) = self.sessions.get_mut(key) else {
                    return;
                };
                let entry = std::mem::replace(slot, Entry::Converting);
                let registry = self.poll.registry();
                let mut ctx = self.shared.ctx(registry, now);
                let tunnel = match entry {
                    Entry::Http(h) => h.into_tunnel(&mut ctx),
                    _ => None,
                };
                match tunnel {
                    Some(mut t) => {
                        debug!(key, "connection upgraded: tunnelling");
                        let out = t.on_ready(Side::Client, Ready::default(), &mut ctx);
                        self.sessions[key] = Entry::Tcp(t);
                        if out != Outcome::Continue {
                            self.remove_session(key, now);
                        }
                    }
                    None => self.remove_session(key, now),
                }
            }
        }
    }

    /// After an HTTP/2 connection ran: an HTTP/1 session over a pipe for each stream it
    /// accepted, run at once so the request starts in this turn.
    fn spawn_stream_sessions(&mut self, key: usize, now: Instant) {
        let Some(Entry::H2(conn)) = self.sessions.get_mut(key) else {
            return;
        };
        let pipes = conn.take_new_streams();
        if pipes.is_empty() {
            return;
        }
        let (generation, listener) = (Rc::clone(&conn.generation), conn.listener);
        let peer = conn.peer();
        for pipe in pipes {
            let entry = self.sessions.vacant_entry();
            let stream_key = entry.key();
            let end = PipeEnd {
                shared: Rc::clone(&pipe),
            };
            let Some(session) = HttpSession::over_pipe(
                stream_key,
                peer,
                end,
                Rc::clone(&generation),
                listener,
                now,
            ) else {
                continue;
            };
            entry.insert(Entry::Http(session));
            pipe.borrow_mut().session = Some(Wake::Session(stream_key));
            self.on_session_event(stream_key, Side::Client, Ready::default(), now);
        }
        self.shared.counters.c.active_connections = self.sessions.len() as u64;
    }

    pub(super) fn remove_session(&mut self, key: usize, now: Instant) {
        let Some(entry) = self.sessions.try_remove(key) else {
            return;
        };
        self.clients.release(key);
        let registry = self.poll.registry();
        let mut ctx = self.shared.ctx(registry, now);
        match entry {
            Entry::Http(h) => h.close(&mut ctx),
            Entry::Tcp(t) => t.close(&mut ctx),
            Entry::H2(h) => h.close(&mut ctx),
            Entry::Converting => {}
        }
        self.shared.counters.c.active_connections = self.sessions.len() as u64;
        if self.at_capacity_logged {
            // A slot freed up: queued connections can be taken again.
            self.accept_pending = true;
        }
    }

    pub(super) fn new_session(
        &mut self,
        stream: std::net::TcpStream,
        peer: SocketAddr,
        listener: usize,
        now: Instant,
    ) {
        self.shared.counters.c.accepted_total += 1;
        // Non-blocking and TCP_NODELAY already: accepted with SOCK_NONBLOCK
        // (sys::accept_nonblocking) from a listener with TCP_NODELAY (accept::adopt_listener).
        let mut stream = mio::net::TcpStream::from_std(stream);
        let generation = Rc::clone(&self.shared.current);
        let Some(entry) = generation.listeners.get(listener) else {
            return;
        };
        let (lctx, proto) = (entry.ctx, entry.protocol);
        let entry = self.sessions.vacant_entry();
        let key = entry.key();
        let per_client = generation.limits.max_connections_per_client;
        if !self.clients.admit(key, peer.ip(), per_client) {
            // Dropping the stream closes it: the client's other connections go on.
            self.shared.counters.c.client_errors += 1;
            debug!(peer = %peer, limit = per_client, "max-connections-per-client reached: connection closed");
            return;
        }
        let registry = self.poll.registry();
        if let Err(e) = registry.register(
            &mut stream,
            tokens::session(key, Side::Client),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!(peer = %peer, error = %e, "cannot register an accepted socket");
            self.clients.release(key);
            return;
        }
        let mut ctx = self.shared.ctx(registry, now);
        match proto {
            ListenerProtocol::Http => {
                let Some(mut s) =
                    HttpSession::new(key, peer, stream, Rc::clone(&generation), listener, now)
                else {
                    self.clients.release(key);
                    return;
                };
                let out = s.on_ready(Side::Client, Ready::default(), &mut ctx);
                entry.insert(Entry::Http(s));
                self.handle_outcome(key, out, now);
            }
            ListenerProtocol::Tcp => {
                let Some(pool) = lctx.upstream else {
                    let _ = registry.deregister(&mut stream);
                    self.clients.release(key);
                    return;
                };
                match TcpSession::connect(key, peer, stream, pool, &mut ctx) {
                    Some(mut s) => {
                        let out = s.on_ready(Side::Client, Ready::default(), &mut ctx);
                        entry.insert(Entry::Tcp(s));
                        self.handle_outcome(key, out, now);
                    }
                    None => {
                        // Every target's failure was logged and counted. The client stream
                        // was moved into the attempt and is closed with it.
                        warn!(peer = %peer, "tcp: no upstream target could be connected");
                        self.clients.release(key);
                    }
                }
            }
        }
        self.shared.counters.c.active_connections = self.sessions.len() as u64;
    }
}
