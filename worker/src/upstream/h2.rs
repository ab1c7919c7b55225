//! HTTP/2 connections to the targets of pools that speak it (`http-version "2"`, or `"auto"`
//! once ALPN chose `h2`): each carries many exchanges at once, one stream each. An exchange
//! checked out of such a pool gets a pipe (`sock::pipe`) as its upstream socket; the other
//! end is a stream on a connection to the chosen target that has room (fewer streams than
//! `max-h2-streams` and the target's SETTINGS_MAX_CONCURRENT_STREAMS), or on a new one.
//!
//! The pool's accounting is the HTTP/1 one per exchange: `active` counts exchanges (so least
//! connections balances in-flight requests), `max-connections` caps connections, each carrying
//! up to `max-h2-streams` (past the cap, the least loaded connection takes one more stream and
//! h2 queues it until the target's limit lets it open). A connection with no stream closes
//! after the pool's idle timeout, one older than `max-lifetime` takes no new stream.

use std::cell::RefCell;
use std::rc::Rc;

use super::connections::{close_sock, open, Alpn};
use super::*;
use crate::http2::{H2Upstream, UpRun, UpstreamSide};
use crate::sock::pipe::{Connect, PipeEnd, PipeState, SharedPipe};
use crate::wakeups::{self, Wake};

/// A stream handed out: its pipe, the connection's table key, whether it is established.
pub(super) struct H2Stream {
    pub pipe: SharedPipe,
    pub conn_id: usize,
    pub open: bool,
}

impl Upstreams {
    /// Whether exchanges to `target` of `pool` go to HTTP/2 streams.
    pub(super) fn speaks_h2(&self, pool: usize, target: usize) -> bool {
        self.pools.get(pool).is_some_and(|p| p.speaks_h2(target))
    }

    /// [`Upstreams::checkout`] for a target spoken to over HTTP/2: a stream, on a new
    /// connection when `fresh`.
    pub(super) fn h2_checkout(
        &mut self,
        pool: usize,
        target: usize,
        registry: &Registry,
        token: Token,
        fresh: bool,
    ) -> io::Result<UpConn> {
        let waiter = match tokens::decode(token) {
            tokens::Decoded::Session(key, _) => Wake::Session(key),
            _ => return Err(io::Error::other("an HTTP/2 stream needs a session")),
        };
        let s = self.h2_stream(pool, target, registry, waiter, fresh, Instant::now())?;
        let t = self
            .pools
            .get_mut(pool)
            .and_then(|p| p.targets.get_mut(target))
            .ok_or_else(|| io::Error::other("unknown upstream target"))?;
        t.active += 1;
        let addr = t
            .addr
            .ok_or_else(|| io::Error::other("upstream target has no address"))?;
        Ok(UpConn {
            id: s.conn_id,
            sock: UpSock::Pipe(PipeEnd { shared: s.pipe }),
            pool,
            target,
            addr,
            reused: s.open,
        })
    }

    /// A new stream for `waiter` (whoever writes the request) to `target` of `pool`.
    pub(super) fn h2_stream(
        &mut self,
        pool: usize,
        target: usize,
        registry: &Registry,
        waiter: Wake,
        fresh: bool,
        now: Instant,
    ) -> io::Result<H2Stream> {
        let p = self
            .pools
            .get(pool)
            .ok_or_else(|| io::Error::other("unknown upstream pool"))?;
        let t = p
            .targets
            .get(target)
            .ok_or_else(|| io::Error::other("unknown upstream target"))?;
        let max_lifetime = p.pool.max_lifetime_secs.map(Duration::from_secs);
        let at_cap = p
            .pool
            .max_connections
            .is_some_and(|max| t.h2.len() >= max as usize);
        let mut chosen = None;
        let mut least: Option<(usize, usize)> = None;
        for &k in &t.h2 {
            let Some(c) = self.h2.get_mut(k) else {
                continue;
            };
            if max_lifetime.is_some_and(|l| now.saturating_duration_since(c.created) >= l) {
                c.going_away = true;
            }
            if c.going_away || c.is_closed() {
                continue;
            }
            if !fresh && c.has_room() {
                chosen = Some(k);
                break;
            }
            if least.is_none_or(|(_, n)| c.stream_count() < n) {
                least = Some((k, c.stream_count()));
            }
        }
        let key = match (chosen, least) {
            (Some(k), _) => k,
            // At `max-connections`: one more stream on the least loaded connection.
            (None, Some((k, _))) if at_cap => k,
            _ => self.open_h2(pool, target, registry, now)?,
        };
        let c = self
            .h2
            .get_mut(key)
            .ok_or_else(|| io::Error::other("HTTP/2 connection vanished"))?;
        let pipe = Rc::new(RefCell::new(PipeState::upstream(
            Wake::H2Upstream(key),
            waiter,
            Connect::Pending,
        )));
        c.add_stream(Rc::clone(&pipe));
        Ok(H2Stream {
            pipe,
            conn_id: c.side.conn_id,
            open: c.is_open(),
        })
    }

    /// Start a connection to `target` of `pool` for HTTP/2.
    fn open_h2(
        &mut self,
        pool: usize,
        target: usize,
        registry: &Registry,
        now: Instant,
    ) -> io::Result<usize> {
        let entry = self.conns.vacant_entry();
        let conn_id = entry.key();
        let (sock, _) = open(&self.pools, pool, target, conn_id, registry, Alpn::Pool)?;
        let key = self.h2.vacant_key();
        entry.insert(ConnEntry {
            owner: Owner::H2(key),
            timer: None,
            idle_since: now,
            created: now,
        });
        self.insert_h2(pool, target, conn_id, sock, now);
        Ok(key)
    }

    fn insert_h2(
        &mut self,
        pool: usize,
        target: usize,
        conn_id: usize,
        sock: UpSock,
        now: Instant,
    ) -> usize {
        let key = self.h2.vacant_key();
        let side = UpstreamSide {
            key,
            conn_id,
            pool,
            target,
        };
        let (authority, http) = match self.pools.get_mut(pool) {
            Some(p) => {
                let label = p.targets.get(target).map(|t| t.label.clone());
                if let Some(t) = p.targets.get_mut(target) {
                    t.h2.push(key);
                }
                (label.unwrap_or_default(), p.config.http.clone())
            }
            None => (String::new(), Default::default()),
        };
        self.h2.insert(H2Upstream::connecting(
            side,
            sock,
            authority,
            http.max_h2_streams,
            Duration::from_secs(http.h2_ping_interval_secs),
            now,
        ))
    }

    /// `http-version "auto"`: a connection checked out for HTTP/1 whose TLS handshake chose
    /// `h2`. It becomes the target's HTTP/2 connection (later exchanges go straight to its
    /// streams), and the exchange gets its first stream instead of the socket.
    pub fn adopt_h2(&mut self, conn: UpConn, token: Token, now: Instant) -> io::Result<UpConn> {
        let waiter = match tokens::decode(token) {
            tokens::Decoded::Session(key, _) => Wake::Session(key),
            _ => return Err(io::Error::other("an HTTP/2 stream needs a session")),
        };
        let UpConn {
            id,
            sock,
            pool,
            target,
            addr,
            ..
        } = conn;
        let key = self.insert_h2(pool, target, id, sock, now);
        if let Some(e) = self.conns.get_mut(id) {
            e.owner = Owner::H2(key);
        }
        if let Some(t) = self
            .pools
            .get_mut(pool)
            .and_then(|p| p.targets.get_mut(target))
        {
            t.alpn_h2 = true;
        }
        let pipe = Rc::new(RefCell::new(PipeState::upstream(
            Wake::H2Upstream(key),
            waiter,
            Connect::Pending,
        )));
        if let Some(c) = self.h2.get_mut(key) {
            c.add_stream(Rc::clone(&pipe));
        }
        // Its preface goes out now: the socket raises no new event for a handshake done.
        wakeups::wake(Wake::H2Upstream(key));
        Ok(UpConn {
            id,
            sock: UpSock::Pipe(PipeEnd { shared: pipe }),
            pool,
            target,
            addr,
            // Established: the exchange writes at once (the handshake was its connect).
            reused: true,
        })
    }

    /// Readiness on an HTTP/2 connection's socket.
    pub fn on_h2_event(
        &mut self,
        key: usize,
        r: crate::sock::Ready,
        now: Instant,
        registry: &Registry,
        timers: &mut Timers<TimerKey>,
    ) {
        let Some(c) = self.h2.get_mut(key) else {
            return;
        };
        let out = c.on_ready(r, now);
        self.after_h2_run(key, out, registry, timers);
    }

    /// A stream's pipe moved (see `wakeups`).
    pub fn run_h2(
        &mut self,
        key: usize,
        now: Instant,
        registry: &Registry,
        timers: &mut Timers<TimerKey>,
    ) {
        let Some(c) = self.h2.get_mut(key) else {
            return;
        };
        let out = c.run(now);
        self.after_h2_run(key, out, registry, timers);
    }

    /// The connection's timer: the idle timeout, or the PING schedule.
    pub fn on_h2_timer(
        &mut self,
        key: usize,
        id: TimerId,
        now: Instant,
        registry: &Registry,
        timers: &mut Timers<TimerKey>,
    ) {
        let idle_timeout = self.h2_idle_timeout(key);
        let Some(c) = self.h2.get_mut(key) else {
            return;
        };
        if c.timer != Some(id) {
            return;
        }
        c.timer = None;
        if c.idle_since
            .is_some_and(|at| now >= at + idle_timeout && c.stream_count() == 0)
        {
            debug!(
                upstream = c.side.pool,
                target = c.side.target,
                "idle HTTP/2 upstream connection closed"
            );
            self.remove_h2(key, registry, timers);
            return;
        }
        let out = c.on_ping_timer(now);
        self.after_h2_run(key, out, registry, timers);
    }

    fn h2_idle_timeout(&self, key: usize) -> Duration {
        self.h2
            .get(key)
            .and_then(|c| self.pools.get(c.side.pool))
            .map_or(Duration::from_secs(60), |p| {
                Duration::from_secs(p.pool.idle_timeout_secs.max(1))
            })
    }

    /// After a run: remove a connection that ended (or that nothing will use again), arm the
    /// timer of the others.
    fn after_h2_run(
        &mut self,
        key: usize,
        out: UpRun,
        registry: &Registry,
        timers: &mut Timers<TimerKey>,
    ) {
        let idle_timeout = self.h2_idle_timeout(key);
        let retired = self
            .h2
            .get(key)
            .is_some_and(|c| self.pools.get(c.side.pool).is_none());
        let Some(c) = self.h2.get_mut(key) else {
            return;
        };
        let unused = c.stream_count() == 0 && (self.no_pooling || c.going_away || retired);
        if out == UpRun::Closed || c.is_closed() || unused {
            self.remove_h2(key, registry, timers);
            return;
        }
        let idle = c.idle_since.map(|at| at + idle_timeout);
        let want = match (idle, c.ping_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // A deadline already past fires at the next turn of the loop.
        timers.set(&mut c.timer, want, TimerKey::H2Upstream(key));
    }

    /// Close an HTTP/2 connection and forget it.
    pub(super) fn remove_h2(
        &mut self,
        key: usize,
        registry: &Registry,
        timers: &mut Timers<TimerKey>,
    ) {
        let Some(mut c) = self.h2.try_remove(key) else {
            return;
        };
        if let Some(t) = c.timer.take() {
            timers.cancel(t);
        }
        let refused_alpn = c.alpn_refused;
        if let Some(t) = self
            .pools
            .get_mut(c.side.pool)
            .and_then(|p| p.targets.get_mut(c.side.target))
        {
            t.h2.retain(|&k| k != key);
            if refused_alpn {
                // "auto": the target speaks HTTP/1.1 now; the next exchange goes that way.
                t.alpn_h2 = false;
            }
        }
        self.forget_conn(c.side.conn_id, timers);
        if let Some(mut sock) = c.close() {
            close_sock(&mut sock, registry);
        }
    }

    /// Close the HTTP/2 connections of a pool that is going away.
    pub(super) fn remove_pool_h2(
        &mut self,
        pool: usize,
        registry: &Registry,
        timers: &mut Timers<TimerKey>,
    ) {
        let keys: Vec<usize> = self
            .h2
            .iter()
            .filter(|(_, c)| c.side.pool == pool)
            .map(|(k, _)| k)
            .collect();
        for k in keys {
            self.remove_h2(k, registry, timers);
        }
    }

    /// Draining: connections without a stream close now, the others once their streams end.
    pub(super) fn drain_h2(&mut self, registry: &Registry, timers: &mut Timers<TimerKey>) {
        let keys: Vec<usize> = self.h2.iter().map(|(k, _)| k).collect();
        for k in keys {
            match self.h2.get_mut(k) {
                Some(c) if c.stream_count() == 0 => self.remove_h2(k, registry, timers),
                Some(c) => c.going_away = true,
                None => {}
            }
        }
    }
}
