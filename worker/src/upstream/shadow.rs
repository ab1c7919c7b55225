//! Mirrored ("shadow") exchanges: a copy of a request sent to another upstream, its answer
//! read and thrown away. They never touch the client's exchange: no session owns them, a
//! failure is only logged at debug level and counts against no target's health, and when
//! [`MAX_SHADOWS`] are open in this worker a new one is dropped rather than queued.

use std::io::Write;

use super::*;

/// Mirrored exchanges one worker keeps open at once.
pub const MAX_SHADOWS: usize = 64;

#[derive(Debug)]
pub(super) struct Shadow {
    stream: TcpStream,
    /// Key in `Upstreams::conns` (its token).
    conn: usize,
    out: Vec<u8>,
    written: usize,
    connected: bool,
    timer: Option<TimerId>,
}

impl Shadow {
    /// Write what is left, then read and discard. Ok(true): the exchange is over.
    fn advance(&mut self) -> io::Result<bool> {
        if !self.connected {
            if let Some(e) = self.stream.take_error()? {
                return Err(e);
            }
            match self.stream.peer_addr() {
                Ok(_) => self.connected = true,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        while self.written < self.out.len() {
            match self.stream.write(&self.out[self.written..]) {
                Ok(0) => return Ok(true),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let mut sink = [0u8; 4096];
        loop {
            match self.stream.read(&mut sink) {
                // The request asked for `Connection: close`: EOF ends the answer.
                Ok(0) => return Ok(true),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
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
    let Some(addr) = ups.pools[pool].targets[target].addr else {
        return false;
    };
    let conn = ups.conns.vacant_key();
    let key = ups.shadows.vacant_key();
    let started = TcpStream::connect(addr).and_then(|mut stream| {
        ctx.registry.register(
            &mut stream,
            tokens::upstream(conn),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        Ok(stream)
    });
    let stream = match started {
        Ok(s) => s,
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
    ups.shadows.insert(Shadow {
        stream,
        conn,
        out: request,
        written: 0,
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
            let _ = registry.deregister(&mut s.stream);
        }
    }
}
