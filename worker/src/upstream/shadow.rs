//! Mirrored ("shadow") exchanges: a copy of a request sent to another upstream, its answer
//! read and thrown away. They never touch the client's exchange: no session owns them, a
//! failure is only logged at debug level and counts against no target's health, and when
//! [`MAX_SHADOWS`] are open in this worker a new one is dropped rather than queued.

use super::connections::{close_sock, open};
use super::*;
use crate::ctx::Ready;
use crate::sock::Buf;

/// Mirrored exchanges one worker keeps open at once.
pub const MAX_SHADOWS: usize = 64;

#[derive(Debug)]
pub(super) struct Shadow {
    /// Plain or TLS, like the pool's other connections.
    sock: UpSock,
    /// Key in `Upstreams::conns` (its token).
    conn: usize,
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

/// Send `request` (a complete request head, no body) to a target of `pool`. Returns whether
/// it was started; it is dropped when the worker is draining, at its cap, or the pool has no
/// usable target.
pub fn start_shadow(
    ctx: &mut Ctx<'_>,
    pool: usize,
    request: Vec<u8>,
    timeout: Duration,
    req: &PickRequest<'_>,
) -> bool {
    let ups = &mut *ctx.upstreams;
    if ups.no_pooling || ups.shadows.len() >= MAX_SHADOWS {
        return false;
    }
    let Pick::Target(target) = ups.pick(pool, &[], ctx.now, req) else {
        return false;
    };
    let conn = ups.conns.vacant_key();
    let key = ups.shadows.vacant_key();
    let sock = match open(&ups.pools, pool, target, conn, ctx.registry) {
        Ok((s, _)) => s,
        Err(e) => {
            debug!(upstream = ups.pools[pool].name, error = %e, "shadow request not sent");
            return false;
        }
    };
    ups.conns.insert(ConnEntry {
        owner: Owner::Shadow(key),
        timer: None,
        idle_since: ctx.now,
        created: ctx.now,
    });
    let timer = Some(ctx.timers.insert(ctx.now + timeout, TimerKey::Shadow(key)));
    let mut out = Buf::new();
    out.extend(&request);
    ups.shadows.insert(Shadow {
        sock,
        conn,
        out,
        connected: false,
        timer,
    });
    true
}

impl Upstreams {
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
            self.forget_conn(s.conn, timers);
            close_sock(&mut s.sock, registry);
        }
    }
}
