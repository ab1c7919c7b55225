//! Upstream pools: target selection (smooth weighted round-robin, least connections), a
//! per-target pool of idle keep-alive connections, and target health (passive marking and
//! active probes, see [`health`]): targets out of rotation are skipped while any other is up.

mod balancer;
mod connections;
mod failover;
mod health;
mod probes;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use slab::Slab;
use tracing::{debug, info, warn};
use zentinel_protocol::config::{
    ConnectionPool, HealthCheck, PassiveHealth, UpstreamConfig, UpstreamTimeouts,
};

use self::health::{Probe, ProbeStatus, TargetHealth, Transition};

use crate::ctx::Ctx;
use crate::timers::{TimerId, TimerKey, Timers};
use crate::tokens;

pub use self::balancer::Balancer;
pub use self::failover::{
    blames_target, connect_failed, connect_next, note_failure, note_target_failure,
};

#[derive(Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub active: u32,
    /// Idle connection keys (into `Upstreams::idle`), oldest first.
    idle: VecDeque<usize>,
    health: TargetHealth,
}

#[derive(Debug)]
pub struct Pool {
    pub name: String,
    pub targets: Vec<Target>,
    balancer: Balancer,
    pub pool: ConnectionPool,
    pub timeouts: UpstreamTimeouts,
    health_check: Option<HealthCheck>,
    passive: PassiveHealth,
    /// What the pool was built from: a reload keeps a pool whose configuration is unchanged.
    config: UpstreamConfig,
}

impl Pool {
    /// Parse and check one upstream's configuration (no socket is touched).
    pub fn from_config(c: &UpstreamConfig) -> Result<Pool, UpstreamConfigError> {
        if c.targets.is_empty() {
            return Err(UpstreamConfigError::NoTargets(c.name.clone()));
        }
        let mut targets = Vec::with_capacity(c.targets.len());
        for t in &c.targets {
            let addr = t
                .address
                .parse()
                .map_err(|err| UpstreamConfigError::BadAddress {
                    pool: c.name.clone(),
                    address: t.address.clone(),
                    err,
                })?;
            targets.push(Target {
                addr,
                active: 0,
                idle: VecDeque::new(),
                health: TargetHealth::default(),
            });
        }
        let weights: Vec<u32> = c.targets.iter().map(|t| t.weight).collect();
        Ok(Pool {
            name: c.name.clone(),
            targets,
            balancer: Balancer::new(c.load_balancing, &weights),
            pool: c.pool.clone(),
            timeouts: c.timeouts.clone(),
            health_check: c.health_check.clone(),
            passive: c.passive_health.clone(),
            config: c.clone(),
        })
    }

    /// Connections to this pool's targets are checked out right now.
    fn in_use(&self) -> bool {
        self.targets.iter().any(|t| t.active > 0)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.timeouts.connect_secs.max(1))
    }
    pub fn read_timeout(&self) -> Duration {
        Duration::from_secs(self.timeouts.read_secs.max(1))
    }
}

#[derive(Debug)]
struct IdleConn {
    /// Key in `Upstreams::conns` (and of the connection's token).
    id: usize,
    stream: TcpStream,
    pool: usize,
    target: usize,
}

/// A connection checked out of a pool by a session. Must be given back with
/// [`Upstreams::release`] so the active count stays right.
#[derive(Debug)]
pub struct UpConn {
    /// Key in the connection table; the socket is registered as [`tokens::upstream`]`(id)`.
    pub id: usize,
    pub stream: TcpStream,
    pub pool: usize,
    pub target: usize,
    pub addr: SocketAddr,
    /// Came from the idle pool: it may have been closed by the upstream meanwhile.
    pub reused: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamConfigError {
    #[error("upstream `{pool}`: target address `{address}` is not a socket address: {err}")]
    BadAddress {
        pool: String,
        address: String,
        err: std::net::AddrParseError,
    },
    #[error("upstream `{0}` has no targets")]
    NoTargets(String),
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
    /// Set while draining: connections are closed instead of pooled.
    no_pooling: bool,
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
            let Some(old) = same_name else {
                let key = self.pools.insert(pool);
                self.schedule_probes(key, now, timers);
                keys.push(key);
                continue;
            };
            let old_cfg = &self.pools[old].config;
            if *old_cfg == pool.config {
                keys.push(old);
                continue;
            }
            let same_targets = old_cfg.targets == pool.config.targets;
            if same_targets {
                // Same peers: what was learnt about them still holds.
                let checked = pool.health_check.is_some();
                for (t, o) in pool.targets.iter_mut().zip(&self.pools[old].targets) {
                    t.health.carry_marks_from(&o.health, checked);
                }
            }
            let key = self.pools.insert(pool);
            if same_targets {
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

    /// Idle pooled connections: file descriptors held that no session uses.
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

    /// Choose a target of `pool` for a new exchange, skipping `failed` (targets that already
    /// failed for it) and, while any other is left, targets out of rotation. None when none
    /// is left (or the pool is unknown).
    pub fn pick(&mut self, pool: usize, failed: &[usize], now: Instant) -> Option<usize> {
        let p = self.pools.get_mut(pool)?;
        let mut any_down = false;
        for t in &mut p.targets {
            if t.health.expire(now) {
                info!(upstream = p.name, target = %t.addr, reason = "fail timeout elapsed", "upstream target back in rotation");
            }
            any_down |= t.health.is_down(now);
        }
        // Small pools (the usual case) need no allocation for the active counts.
        let mut small = [0u32; 16];
        let active: std::borrow::Cow<'_, [u32]> = if p.targets.len() <= small.len() {
            for (a, t) in small.iter_mut().zip(&p.targets) {
                *a = t.active;
            }
            std::borrow::Cow::Borrowed(&small[..p.targets.len()])
        } else {
            std::borrow::Cow::Owned(p.targets.iter().map(|t| t.active).collect())
        };
        if !any_down {
            return p.balancer.pick(&active, failed);
        }
        let mut skip = failed.to_vec();
        skip.extend(
            (0..p.targets.len())
                .filter(|&i| !failed.contains(&i) && p.targets[i].health.is_down(now)),
        );
        // Every target left is down: a real attempt (and a real 502) beats refusing outright,
        // and it is how a target nobody probes gets a chance to come back.
        p.balancer
            .pick(&active, &skip)
            .or_else(|| p.balancer.pick(&active, failed))
    }

    /// A request to `target` failed in a way that blames the target (see
    /// [`TargetHealth::traffic_failure`]): may take it out of rotation.
    pub fn report_failure(
        &mut self,
        pool: usize,
        target: usize,
        now: Instant,
        reason: &dyn fmt::Display,
    ) {
        let Some(p) = self.pools.get_mut(pool) else {
            return;
        };
        let checked = p.health_check.is_some();
        let Some(t) = p.targets.get_mut(target) else {
            return;
        };
        if t.health.traffic_failure(&p.passive, checked, now) == Some(Transition::Down) {
            info!(
                upstream = p.name,
                target = %t.addr,
                reason = %reason,
                max_fails = p.passive.max_fails,
                until = if checked { "health checks pass" } else { "fail timeout elapses" },
                "upstream target out of rotation (passive)"
            );
        }
    }

    /// `target` answered a request.
    pub fn report_success(&mut self, pool: usize, target: usize) {
        if let Some(t) = self
            .pools
            .get_mut(pool)
            .and_then(|p| p.targets.get_mut(target))
        {
            t.health.traffic_success();
        }
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
