//! TCP proxying (and HTTP tunnels after a 101): bytes both ways through bounded buffers,
//! half-close carried across (EOF from one side becomes `shutdown(Write)` on the other); the
//! session ends when both directions are done or either side fails.
//!
//! Either end may be TLS: a tunnel keeps the client's TLS session when the upgrade came over
//! an https listener, and the upstream's when its pool speaks TLS. Over TLS an EOF is a
//! close_notify (or a bare TCP FIN), and it is carried across as close_notify then FIN.

use std::fmt;
use std::net::SocketAddr;
use std::time::Instant;

use tracing::{debug, warn};

use crate::ctx::{Ctx, Outcome};
use crate::failover;
use crate::sock::{Buf, ClientSock, Ready, Sock, UpSock, BUF_CAP};
use lane::Lane;

mod lane;
use crate::timers::{TimerId, TimerKey};
use crate::tokens::{self, Side};
use crate::upstream::{PickRequest, UpConn};

/// Identity of a checked-out upstream connection, kept beside its socket.
#[derive(Debug, Clone, Copy)]
pub struct UpMeta {
    pub id: usize,
    pub pool: usize,
    pub target: usize,
    pub addr: SocketAddr,
    pub reused: bool,
}

impl UpMeta {
    pub fn split(c: UpConn) -> (UpSock, UpMeta) {
        (
            c.sock,
            UpMeta {
                id: c.id,
                pool: c.pool,
                target: c.target,
                addr: c.addr,
                reused: c.reused,
            },
        )
    }
    pub fn join(self, sock: UpSock) -> UpConn {
        UpConn {
            id: self.id,
            sock,
            pool: self.pool,
            target: self.target,
            addr: self.addr,
            reused: self.reused,
        }
    }
}

pub struct TcpSession {
    key: usize,
    peer: SocketAddr,
    client: ClientSock,
    /// Plain, or TLS when the pool speaks TLS to its targets.
    upstream: Option<(UpSock, UpMeta)>,
    connecting: Option<Instant>,
    /// Targets whose connect failed for this connection: failover skips them.
    failed: Vec<usize>,
    c2u: Lane,
    u2c: Lane,
    timer: Option<TimerId>,
}

impl TcpSession {
    /// A new TCP-listener connection: connect to a target of `pool`, failing over to the
    /// others. None when every target failed at once (each failure is logged and counted).
    pub fn connect(
        key: usize,
        peer: SocketAddr,
        client: mio::net::TcpStream,
        pool: usize,
        ctx: &mut Ctx<'_>,
    ) -> Option<Self> {
        let mut failed = Vec::new();
        let token = tokens::session(key, Side::Upstream);
        // TCP has no request to hold: a pool at its connection cap refuses the connection.
        let pick = PickRequest {
            client_ip: Some(peer.ip()),
            cookie: None,
        };
        let conn = failover::connect_next(ctx, pool, &mut failed, token, peer, &pick).ok()?;
        let mut s = TcpSession {
            key,
            peer,
            client: ClientSock::Plain(Sock::new(client, true)),
            upstream: None,
            connecting: None,
            failed,
            c2u: Lane::new(Buf::new()),
            u2c: Lane::new(Buf::new()),
            timer: None,
        };
        s.attach(conn, ctx.now);
        s.update_timer(ctx);
        Some(s)
    }

    fn attach(&mut self, conn: UpConn, now: Instant) {
        let (sock, meta) = UpMeta::split(conn);
        self.connecting = (!meta.reused).then_some(now);
        self.upstream = Some((sock, meta));
    }

    /// The pending connect failed; nothing was sent to it (client bytes wait in `c2u`), so
    /// the balancer's next untried target may take the connection. False when none is left.
    fn failover(&mut self, error: &dyn fmt::Display, ctx: &mut Ctx<'_>) -> bool {
        let Some((up, meta)) = self.upstream.take() else {
            return false;
        };
        self.connecting = None;
        failover::connect_failed(ctx, meta.join(up), &mut self.failed, self.peer, error);
        let token = tokens::session(self.key, Side::Upstream);
        let pick = PickRequest {
            client_ip: Some(self.peer.ip()),
            cookie: None,
        };
        match failover::connect_next(ctx, meta.pool, &mut self.failed, token, self.peer, &pick) {
            Ok(conn) => {
                self.attach(conn, ctx.now);
                true
            }
            Err(_) => {
                warn!(peer = %self.peer, tried = self.failed.len(), "tcp: no upstream target could be connected");
                false
            }
        }
    }

    /// An HTTP connection after `101 Switching Protocols`: both sockets stay registered under
    /// the same tokens, each plain or TLS as it was; bytes already read on either side are
    /// carried over.
    pub fn tunnel(
        key: usize,
        peer: SocketAddr,
        mut client: ClientSock,
        mut upstream: UpSock,
        meta: UpMeta,
        c2u: Buf,
        u2c: Buf,
    ) -> Self {
        // Edge-triggered readiness may have been consumed by the HTTP session without
        // reaching WouldBlock; trying once more is harmless.
        let both = Ready {
            readable: true,
            writable: true,
            read_closed: false,
        };
        client.on_ready(both);
        upstream.on_ready(both);
        TcpSession {
            key,
            peer,
            client,
            upstream: Some((upstream, meta)),
            connecting: None,
            failed: Vec::new(),
            c2u: Lane::new(c2u),
            u2c: Lane::new(u2c),
            timer: None,
        }
    }

    pub fn on_ready(&mut self, side: Side, r: Ready, ctx: &mut Ctx<'_>) -> Outcome {
        let sock = match side {
            Side::Client => Some(&mut self.client),
            Side::Upstream => self.upstream.as_mut().map(|(s, _)| s),
        };
        if let Some(s) = sock {
            s.on_ready(r);
        }
        let out = self.pump(ctx);
        self.update_timer(ctx);
        out
    }

    pub fn on_timer(&mut self, id: TimerId, ctx: &mut Ctx<'_>) -> Outcome {
        if self.timer != Some(id) {
            return Outcome::Continue;
        }
        self.timer = None;
        if self.connecting.is_some() {
            if !self.failover(&"connect timed out", ctx) {
                return Outcome::Done;
            }
            let out = self.pump(ctx);
            self.update_timer(ctx);
            return out;
        }
        Outcome::Continue
    }

    fn update_timer(&mut self, ctx: &mut Ctx<'_>) {
        let want = match (self.connecting, &self.upstream) {
            (Some(t), Some((_, m))) => ctx.upstreams.pool(m.pool).map(|p| t + p.connect_timeout()),
            _ => None,
        };
        ctx.timers
            .set(&mut self.timer, want, TimerKey::Session(self.key));
    }

    /// Drive a pending connect (failing over on errors). Some(outcome): not relaying yet.
    fn poll_connect(&mut self, ctx: &mut Ctx<'_>) -> Option<Outcome> {
        while self.connecting.is_some() {
            let (up, _) = self.upstream.as_mut()?;
            match up.poll_connect() {
                Ok(true) => self.connecting = None,
                Ok(false) => {
                    // Still connecting (or in the TLS handshake); buffer what the client
                    // already sends.
                    return Some(match self.client.fill(self.c2u.buf_mut(), BUF_CAP) {
                        Ok(r) => {
                            ctx.counters.c.bytes_in += r.bytes as u64;
                            Outcome::Continue
                        }
                        Err(_) => Outcome::Done,
                    });
                }
                Err(e) => {
                    if !self.failover(&e, ctx) {
                        return Some(Outcome::Done);
                    }
                }
            }
        }
        None
    }

    fn pump(&mut self, ctx: &mut Ctx<'_>) -> Outcome {
        if let Some(out) = self.poll_connect(ctx) {
            return out;
        }
        let Some((up, meta)) = self.upstream.as_mut() else {
            return Outcome::Done;
        };
        loop {
            let a = self.c2u.relay(&mut self.client, up);
            let b = self.u2c.relay(up, &mut self.client);
            match (a, b) {
                (Ok((ar, aw)), Ok((br, bw))) => {
                    ctx.counters.c.bytes_in += ar as u64;
                    ctx.counters.c.bytes_out += bw as u64;
                    if self.client.read_eof()
                        && up.read_eof()
                        && self.c2u.is_empty()
                        && self.u2c.is_empty()
                        && !self.client.write_pending()
                        && !up.write_pending()
                    {
                        return Outcome::Done;
                    }
                    if ar + aw + br + bw == 0 {
                        return Outcome::Continue;
                    }
                }
                (Err(e), _) | (_, Err(e)) => {
                    debug!(peer = %self.peer, upstream = %meta.addr, error = %e, "tcp: connection error, closing both sides");
                    return Outcome::Done;
                }
            }
        }
    }

    /// Release everything (the upstream connection is never pooled).
    pub fn close(mut self, ctx: &mut Ctx<'_>) {
        if let Some(id) = self.timer.take() {
            ctx.timers.cancel(id);
        }
        // TLS: a last attempt at close_notify (a tunnel cut at the drain deadline, or after
        // the other side failed), as the upstream connection gets when it is discarded.
        self.client.close();
        // Not deregistered: dropping the session closes the socket, which takes it out of
        // the epoll set (a worker never duplicates a client's fd).
        if let Some((up, meta)) = self.upstream.take() {
            ctx.discard_upstream(meta.join(up));
        }
    }
}
