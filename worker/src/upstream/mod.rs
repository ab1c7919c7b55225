//! Upstream pools: target selection (smooth weighted round-robin, least connections), a
//! per-target pool of idle keep-alive connections, HTTP/2 connections shared by many exchanges
//! (see [`h2`]), and target health (passive marking and active probes, see [`health`]):
//! targets out of rotation are skipped while any other is up.

mod balancer;
pub(crate) use balancer::Rng;
mod circuit_breaker;
mod connections;
mod h2;
mod health;
mod pool;
mod probes;
mod resolution;
mod shadow;
#[cfg(test)]
mod tests;
pub mod tls;

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use slab::Slab;
use tracing::{debug, info, warn};
use zentinel_protocol::config::{
    CircuitBreakerConfig, ConnectionPool, HealthCheck, PassiveHealth, UpstreamConfig,
    UpstreamTimeouts,
};

use self::health::{Probe, ProbeStatus, TargetHealth, Transition};

use crate::sock::UpSock;
use crate::timers::{TimerId, TimerKey, Timers};
use crate::tokens;

pub use self::balancer::Balancer;
pub use self::circuit_breaker::CircuitBreaker;
pub use self::connections::blames_target;
pub use self::pool::{Pick, PickRequest, Pool};
pub use self::resolution::{Resolver, RESOLVE_AT_START};
pub use self::shadow::ShadowRequest;

#[derive(Debug)]
struct IdleConn {
    /// Key in `Upstreams::conns` (and of the connection's token).
    id: usize,
    sock: UpSock,
    pool: usize,
    target: usize,
}

/// A connection checked out of a pool by a session. Must be given back with
/// [`Upstreams::release`] so the active count stays right.
#[derive(Debug)]
pub struct UpConn {
    /// Key in the connection table; the socket is registered as [`tokens::upstream`]`(id)`.
    pub id: usize,
    /// Plain or TLS; a new connection's connect (and handshake) is still to be driven with
    /// `poll_connect`, a reused one is ready.
    pub sock: UpSock,
    pub pool: usize,
    pub target: usize,
    pub addr: SocketAddr,
    /// Came from the idle pool: it may have been closed by the upstream meanwhile.
    pub reused: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamConfigError {
    #[error("upstream `{pool}`: invalid target address `{address}`: {why}")]
    BadAddress {
        pool: String,
        address: String,
        why: &'static str,
    },
    #[error("upstream `{0}` has no targets")]
    NoTargets(String),
    #[error("upstream `{pool}`: {error}")]
    Tls {
        pool: String,
        error: tls::UpstreamTlsError,
    },
}

/// Every pool in use, keyed by a slab index that stays valid while any configuration
/// generation (or checked-out connection) still refers to it: a reload adds and retires pools
/// without renumbering the others.
/// Who an upstream connection's readiness events go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// Checked out: the session's upstream-side token.
    Session(Token),
    /// Pooled: key in `Upstreams::idle`.
    Idle(usize),
    /// An active health probe: key in `Upstreams::probes`.
    Probe(usize),
    /// A mirrored request: key in `Upstreams::shadows`.
    Shadow(usize),
    /// An HTTP/2 connection shared by exchanges: key in `Upstreams::h2`.
    H2(usize),
}

/// One open upstream connection in the table.
#[derive(Debug)]
struct ConnEntry {
    owner: Owner,
    /// The idle-timeout timer. Armed when the connection is first pooled and left armed while
    /// a session uses it: on firing, the real deadline (`idle_since` + the pool's idle
    /// timeout) is checked and the timer armed again if the connection is idle but not for
    /// long enough. Saves two ordered-map updates per request on a busy connection.
    timer: Option<TimerId>,
    /// When it was last pooled.
    idle_since: Instant,
    /// When it was opened (`max-lifetime`).
    created: Instant,
}

#[derive(Debug, Default)]
pub struct Upstreams {
    pools: Slab<Pool>,
    idle: Slab<IdleConn>,
    /// Every open upstream connection (pooled or checked out), by the key its token carries.
    /// Registered once at connect, READABLE | WRITABLE edge-triggered: handing a connection
    /// between the pool and sessions only changes this entry, never the epoll registration.
    conns: Slab<ConnEntry>,
    /// Active health probes in flight (their sockets are in `conns` too, for the token).
    probes: Slab<Probe>,
    /// Mirrored requests in flight (their sockets are in `conns` too, for the token).
    shadows: Slab<shadow::Shadow>,
    /// HTTP/2 connections, each carrying many exchanges (their sockets are in `conns` too,
    /// for the token). See `h2`.
    h2: Slab<crate::http2::H2Upstream>,
    /// Set while draining: connections are closed instead of pooled.
    no_pooling: bool,
    /// Looks host names up off the event loop; `None` in unit tests (names stay unresolved).
    resolver: Option<Resolver>,
    /// Sessions to give an event to: a pool they wait on has news.
    wakeups: Vec<Token>,
}

impl Upstreams {
    pub fn new() -> Self {
        Upstreams::default()
    }

    /// Install the pools of a new configuration, in its order, and return their keys.
    ///
    /// A pool among `current` (the keys of the running configuration) with the same
    /// configuration is kept as it is: its idle connections, balancer state and active counts
    /// carry over. One with the same name and targets but other settings is replaced by a
    /// new pool that adopts its idle connections (same peers, so they are still good). Pools
    /// no longer named are left for [`Upstreams::retire_unused`].
    pub fn install(
        &mut self,
        new: Vec<Pool>,
        current: &[usize],
        registry: &Registry,
        timers: &mut Timers<TimerKey>,
    ) -> Vec<usize> {
        let now = Instant::now();
        let mut keys = Vec::with_capacity(new.len());
        for mut pool in new {
            let same_name = current
                .iter()
                .copied()
                .find(|&k| self.pools.get(k).is_some_and(|p| p.name == pool.name));
            if let Some(old) = same_name.and_then(|k| self.pools.get(k)) {
                // Names the running pool already resolved need no wait.
                for t in pool.targets.iter_mut().filter(|t| t.addr.is_none()) {
                    if let Some(o) = old.targets.iter().find(|o| o.label == t.label) {
                        t.addr = o.addr;
                        t.resolving = o.resolving;
                    }
                }
            }
            let Some(old) = same_name else {
                let key = self.pools.insert(pool);
                self.schedule_probes(key, now, timers);
                keys.push(key);
                continue;
            };
            let old_cfg = &self.pools[old].config;
            if *old_cfg == pool.config {
                // The files were just read again: a reload picks up a replaced CA or client
                // certificate (connections already open keep the session they have).
                self.pools[old].tls = pool.tls.take();
                keys.push(old);
                continue;
            }
            let same_targets = old_cfg.targets == pool.config.targets;
            // Idle connections carry the TLS session (or its absence) of the old settings.
            let same_peers = same_targets && old_cfg.tls == pool.config.tls;
            if same_targets {
                // Same peers: what was learnt about them still holds.
                let checked = pool.health_check.is_some();
                for (t, o) in pool.targets.iter_mut().zip(&self.pools[old].targets) {
                    t.health.carry_marks_from(&o.health, checked);
                }
            }
            let key = self.pools.insert(pool);
            if same_peers {
                self.move_idle(old, key, registry, timers);
            }
            self.schedule_probes(key, now, timers);
            keys.push(key);
        }
        keys
    }

    /// Arm the first probe of every target of a new pool that has active checks. Right away:
    /// a target down at startup should not wait a whole interval to be found out.
    pub(super) fn schedule_probes(
        &mut self,
        pool: usize,
        now: Instant,
        timers: &mut Timers<TimerKey>,
    ) {
        let Some(p) = self.pools.get_mut(pool) else {
            return;
        };
        if p.health_check.is_none() {
            return;
        }
        for (i, t) in p.targets.iter_mut().enumerate() {
            t.health.timer = Some(timers.insert(now, TimerKey::Health(pool, i)));
        }
    }

    /// Hand the idle connections of pool `from` to pool `to` (same targets, in the same
    /// order), keeping at most `to`'s `max_idle` per target (the most recent ones).
    pub(super) fn move_idle(
        &mut self,
        from: usize,
        to: usize,
        registry: &Registry,
        timers: &mut Timers<TimerKey>,
    ) {
        let Some(old) = self.pools.get_mut(from) else {
            return;
        };
        let moved: Vec<VecDeque<usize>> = old
            .targets
            .iter_mut()
            .map(|t| std::mem::take(&mut t.idle))
            .collect();
        let max_idle = self.pools.get(to).map_or(0, |p| p.pool.max_idle as usize);
        for (target, mut keys) in moved.into_iter().enumerate() {
            while keys.len() > max_idle {
                if let Some(k) = keys.pop_front() {
                    self.drop_idle_conn(k, registry, timers);
                }
            }
            for &k in &keys {
                if let Some(c) = self.idle.get_mut(k) {
                    c.pool = to;
                }
            }
            match self
                .pools
                .get_mut(to)
                .and_then(|p| p.targets.get_mut(target))
            {
                Some(t) => t.idle = keys,
                None => {
                    for k in keys {
                        self.drop_idle_conn(k, registry, timers);
                    }
                }
            }
        }
    }

    /// Remove the pools `keep` says no configuration refers to any more and that have no
    /// connection checked out, closing their idle connections. Returns how many such pools
    /// are left because connections to them are still in use.
    pub fn retire_unused(
        &mut self,
        keep: impl Fn(usize) -> bool,
        registry: &Registry,
        timers: &mut Timers<TimerKey>,
    ) -> usize {
        let unreferenced: Vec<usize> = self
            .pools
            .iter()
            .filter(|(k, _)| !keep(*k))
            .map(|(k, _)| k)
            .collect();
        let mut busy = 0;
        for k in unreferenced {
            if self.pools[k].in_use() {
                busy += 1;
                continue;
            }
            self.remove_pool_h2(k, registry, timers);
            let pool = self.pools.remove(k);
            for t in pool.targets {
                for idle in t.idle {
                    self.drop_idle_conn(idle, registry, timers);
                }
                if let Some(id) = t.health.timer {
                    timers.cancel(id);
                }
                if let Some(probe) = t.health.probe {
                    self.drop_probe(probe, registry, timers);
                }
            }
            debug!(upstream = pool.name, "upstream pool removed by a reload");
        }
        busy
    }

    /// Where readiness of upstream connection `id` goes (None: closed meanwhile).
    pub fn owner(&self, id: usize) -> Option<Owner> {
        self.conns.get(id).map(|e| e.owner)
    }

    /// How many pools exist (current and retired but still in use).
    #[cfg(test)]
    pub fn pool_count(&self) -> usize {
        self.pools.len()
    }

    pub fn pool(&self, idx: usize) -> Option<&Pool> {
        self.pools.get(idx)
    }

    /// Whether `target` of `pool` is in rotation now (for tests and status).
    #[cfg(test)]
    pub fn is_up(&self, pool: usize, target: usize, now: Instant) -> bool {
        self.pools
            .get(pool)
            .and_then(|p| p.targets.get(target))
            .is_some_and(|t| !t.health.is_down(now))
    }
}
