//! Mirrored ("shadow") exchanges: a copy of a request sent to another upstream, its answer
//! read and thrown away. They never touch the client's exchange: no session owns them, a
//! failure is only logged at debug level and counts against no target's health, and when
//! [`MAX_SHADOWS`] are open in this worker a new one is dropped rather than queued.

use zentinel_protocol::config::UpstreamHttpVersion;

use super::connections::{close_sock, open, Alpn};
use super::*;
use crate::sock::pipe::PipeEnd;
use crate::sock::{Buf, Ready};
use crate::wakeups::Wake;

/// Mirrored exchanges one worker keeps open at once.
pub const MAX_SHADOWS: usize = 64;

#[derive(Debug)]
pub(super) struct Shadow {
    /// Plain or TLS, like the pool's other connections; a stream's pipe for an HTTP/2 pool.
    sock: UpSock,
    /// Key in `Upstreams::conns` (its token); `None` for a stream.
    conn: Option<usize>,
    out: Buf,
    connected: bool,
    timer: Option<TimerId>,
}

impl Shadow {
    /// Connect (and handshake), write what is left, then read and discard. Ok(true): the
    /// exchange is over.
    fn advance(&mut self) -> io::Result<bool> {
        // Events are not told apart here: trying both directions is harmless.
        self.sock.on_ready(Ready {
            readable: true,
            writable: true,
            read_closed: false,
        });
        if !self.connected {
            if !self.sock.poll_connect()? {
                return Ok(false);
            }
            self.connected = true;
        }
        if !self.out.is_empty() {
            self.sock.flush(&mut self.out)?;
            if !self.out.is_empty() {
                return Ok(false);
            }
        }
        // The request asked for `Connection: close`: EOF ends the answer.
        self.sock.discard()
    }
}

/// A mirrored request to start (see [`Upstreams::start_shadow`]).
pub struct ShadowRequest<'a> {
    pub pool: usize,
    /// A complete request head, no body.
    pub head: Vec<u8>,
    /// How long its answer is waited for.
    pub timeout: Duration,
    /// What the balancer may look at to choose the target.
    pub pick: &'a PickRequest<'a>,
}

impl Upstreams {
    /// Send `req.head` to a target of `req.pool`. Returns whether it was started; it is
    /// dropped when the worker is draining, at its cap, or the pool has no usable target.
    pub fn start_shadow(
        &mut self,
        req: ShadowRequest<'_>,
        registry: &Registry,
        timers: &mut Timers<TimerKey>,
        now: Instant,
    ) -> bool {
        if self.no_pooling || self.shadows.len() >= MAX_SHADOWS {
            return false;
        }
        let Pick::Target(target) = self.pick(req.pool, &[], now, req.pick) else {
            return false;
        };
        let conn = self.conns.vacant_key();
        let key = self.shadows.vacant_key();
        let version = self.pools.get(req.pool).map(|p| p.config.http.version);
        let opened = if version == Some(UpstreamHttpVersion::Http2) {
            self.h2_stream(req.pool, target, registry, Wake::Shadow(key), false, now)
                .map(|s| (UpSock::Pipe(PipeEnd { shared: s.pipe }), None))
        } else {
            // `"auto"` pools: the copy goes over HTTP/1.1 on its own connection.
            open(&self.pools, req.pool, target, conn, registry, Alpn::Http1)
                .map(|(s, _)| (s, Some(conn)))
        };
        let (sock, conn) = match opened {
            Ok(o) => o,
            Err(e) => {
                debug!(upstream = self.pools[req.pool].name, error = %e, "shadow request not sent");
                return false;
            }
        };
        if conn.is_none() {
            // A stream raises no socket event: the copy is written at once.
            crate::wakeups::wake(Wake::Shadow(key));
        }
        if conn.is_some() {
            self.conns.insert(ConnEntry {
                owner: Owner::Shadow(key),
                timer: None,
                idle_since: now,
                created: now,
            });
        }
        let timer = Some(timers.insert(now + req.timeout, TimerKey::Shadow(key)));
        let mut out = Buf::new();
        out.extend(&req.head);
        self.shadows.insert(Shadow {
            sock,
            conn,
            out,
            connected: false,
            timer,
        });
        true
    }

    /// Readiness on a shadow connection.
    pub fn on_shadow_event(
        &mut self,
        key: usize,
        registry: &Registry,
        timers: &mut Timers<TimerKey>,
    ) {
        let Some(s) = self.shadows.get_mut(key) else {
            return;
        };
        match s.advance() {
            Ok(false) => {}
            Ok(true) => self.drop_shadow(key, registry, timers),
            Err(e) => {
                debug!(error = %e, "shadow request failed");
                self.drop_shadow(key, registry, timers);
            }
        }
    }

    /// The shadow's timeout fired: give up on its answer.
    pub fn on_shadow_timer(
        &mut self,
        key: usize,
        registry: &Registry,
        timers: &mut Timers<TimerKey>,
    ) {
        if let Some(s) = self.shadows.get_mut(key) {
            // Fired, so no longer in the timer map.
            s.timer = None;
            debug!("shadow request timed out");
        }
        self.drop_shadow(key, registry, timers);
    }

    fn drop_shadow(&mut self, key: usize, registry: &Registry, timers: &mut Timers<TimerKey>) {
        if let Some(mut s) = self.shadows.try_remove(key) {
            if let Some(t) = s.timer.take() {
                timers.cancel(t);
            }
            if let Some(conn) = s.conn {
                self.forget_conn(conn, timers);
            }
            close_sock(&mut s.sock, registry);
        }
    }
}
