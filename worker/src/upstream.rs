//! Upstream pools: target selection (smooth weighted round-robin, least connections), a
//! per-target pool of idle keep-alive connections, and target health (passive marking and
//! active probes, see [`health`]): targets out of rotation are skipped while any other is up.

#[path = "health.rs"]
mod health;

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
    ConnectionPool, HealthCheck, LoadBalancing, PassiveHealth, UpstreamConfig, UpstreamTimeouts,
};

use self::health::{Probe, ProbeStatus, TargetHealth, Transition};

use crate::ctx::Ctx;
use crate::timers::{TimerId, TimerKey, Timers};
use crate::tokens;

/// Target selection, independent of sockets.
#[derive(Debug, Clone)]
pub struct Balancer {
    lb: LoadBalancing,
    weights: Vec<i64>,
    /// Smooth weighted round-robin state (nginx's algorithm): each pick adds every weight to
    /// its current value, takes the largest and subtracts the total from it. Spreads picks
    /// evenly (weights 5,1,1 give a a b a c a a, not a a a a a b c).
    current: Vec<i64>,
    /// Least-connections tie breaker, so equal targets share load instead of the first one
    /// taking every request on an idle pool.
    cursor: usize,
}

impl Balancer {
    pub fn new(lb: LoadBalancing, weights: &[u32]) -> Self {
        let weights: Vec<i64> = weights.iter().map(|&w| i64::from(w.max(1))).collect();
        Balancer {
            lb,
            current: vec![0; weights.len()],
            weights,
            cursor: 0,
        }
    }

    /// Pick a target not in `excluded` (targets that already failed for this request); None
    /// when every target is excluded. `active[i]` is the number of connections in use to
    /// target `i`.
    pub fn pick(&mut self, active: &[u32], excluded: &[usize]) -> Option<usize> {
        let n = self.weights.len();
        let eligible = |i: &usize| !excluded.contains(i);
        match self.lb {
            LoadBalancing::RoundRobin => {
                // nginx skips tried peers the same way: only eligible targets take part in the
                // round, and the winner gives back the total of those, so the state stays
                // balanced over the targets that are actually used.
                let mut best: Option<usize> = None;
                let mut total = 0;
                for i in (0..n).filter(eligible) {
                    self.current[i] += self.weights[i];
                    total += self.weights[i];
                    if best.is_none_or(|b| self.current[i] > self.current[b]) {
                        best = Some(i);
                    }
                }
                let best = best?;
                self.current[best] -= total;
                Some(best)
            }
            LoadBalancing::LeastConnections => {
                if n == 0 {
                    return None;
                }
                let mut best: Option<usize> = None;
                for i in (0..n).map(|off| (self.cursor + off) % n).filter(eligible) {
                    let a = i64::from(active.get(i).copied().unwrap_or(0));
                    best = match best {
                        None => Some(i),
                        Some(b) => {
                            let ab = i64::from(active.get(b).copied().unwrap_or(0));
                            // a/w_i < ab/w_b without division.
                            if a * self.weights[b] < ab * self.weights[i] {
                                Some(i)
                            } else {
                                Some(b)
                            }
                        }
                    };
                }
                self.cursor = (self.cursor + 1) % n;
                best
            }
        }
    }
}

#[derive(Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub active: u32,
    /// Idle connection keys (into `Upstreams::idle`), oldest first.
    idle: VecDeque<usize>,
    health: TargetHealth,
}

impl Target {
    /// This worker's health marks for the target (read-only: for status endpoints).
    pub fn health(&self) -> &TargetHealth {
        &self.health
    }
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
    /// The configuration the pool was built from.
    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

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
    fn schedule_probes(&mut self, pool: usize, now: Instant, timers: &mut Timers<TimerKey>) {
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
    fn move_idle(
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
    pub fn idle_count(&self) -> usize {
        self.idle.len()
    }

    /// Close the idle connection pooled longest ago, to free its file descriptor for a client.
    /// Returns false when nothing is pooled.
    pub fn close_oldest_idle(
        &mut self,
        registry: &Registry,
        timers: &mut Timers<TimerKey>,
    ) -> bool {
        let oldest = self
            .idle
            .iter()
            .min_by_key(|(_, c)| self.conns.get(c.id).map(|e| e.idle_since))
            .map(|(key, c)| (key, c.pool, c.target));
        let Some((key, pool, target)) = oldest else {
            return false;
        };
        if let Some(t) = self
            .pools
            .get_mut(pool)
            .and_then(|p| p.targets.get_mut(target))
        {
            t.idle.retain(|k| *k != key);
        }
        self.drop_idle_conn(key, registry, timers);
        true
    }

    /// Close one idle connection that its pool already forgot.
    fn drop_idle_conn(&mut self, key: usize, registry: &Registry, timers: &mut Timers<TimerKey>) {
        if let Some(mut c) = self.idle.try_remove(key) {
            self.forget_conn(c.id, timers);
            let _ = registry.deregister(&mut c.stream);
        }
    }

    /// Remove a connection that is being closed from the table, with its timer.
    fn forget_conn(&mut self, id: usize, timers: &mut Timers<TimerKey>) {
        if let Some(e) = self.conns.try_remove(id) {
            if let Some(t) = e.timer {
                timers.cancel(t);
            }
        }
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

    /// The health timer of a target fired: start a probe, or time out the running one.
    pub fn on_health_timer(
        &mut self,
        pool: usize,
        target: usize,
        id: TimerId,
        now: Instant,
        registry: &Registry,
        timers: &mut Timers<TimerKey>,
    ) {
        let Some(p) = self.pools.get_mut(pool) else {
            return;
        };
        let Some(check) = p.health_check.clone() else {
            return;
        };
        let Some(t) = p.targets.get_mut(target) else {
            return;
        };
        if t.health.timer != Some(id) {
            return;
        }
        t.health.timer = None;
        if let Some(probe) = t.health.probe {
            let timeout = Duration::from_secs(check.timeout_secs.max(1));
            self.finish_probe(
                probe,
                Err(format!("no answer within {}s", timeout.as_secs())),
                now,
                registry,
                timers,
            );
            return;
        }
        if self.no_pooling {
            // Draining: this worker sends no new traffic, so it needs no fresh health view.
            return;
        }
        let addr = t.addr;
        t.health.probe_started = Some(now);
        // Both keys are taken before anything is inserted: the probe knows its connection's
        // key (its token) and the connection entry names the probe.
        let conn = self.conns.vacant_key();
        let probe_key = self.probes.vacant_key();
        let started = Probe::start(addr, &check, conn, pool, target).and_then(|mut probe| {
            registry.register(
                &mut probe.stream,
                tokens::upstream(conn),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(probe)
        });
        match started {
            Ok(probe) => {
                self.conns.insert(ConnEntry {
                    owner: Owner::Probe(probe_key),
                    timer: None,
                    idle_since: now,
                });
                self.probes.insert(probe);
                let timeout = Duration::from_secs(check.timeout_secs.max(1));
                let t = &mut self.pools[pool].targets[target];
                t.health.probe = Some(probe_key);
                t.health.timer = Some(timers.insert(now + timeout, TimerKey::Health(pool, target)));
            }
            Err(e) if !blames_target(&e) => {
                // Not the target's fault: try again at the next interval, verdict unchanged.
                warn!(upstream = self.pools[pool].name, target = %addr, error = %e, "cannot start a health check: this worker is out of local resources");
                let next = now + Duration::from_secs(check.interval_secs.max(1));
                let t = &mut self.pools[pool].targets[target];
                t.health.probe_started = None;
                t.health.timer = Some(timers.insert(next, TimerKey::Health(pool, target)));
            }
            Err(e) => {
                self.probe_done(
                    pool,
                    target,
                    &check,
                    Err(format!("connect: {e}")),
                    now,
                    timers,
                );
            }
        }
    }

    /// Readiness on a probe's socket.
    pub fn on_probe_event(
        &mut self,
        key: usize,
        now: Instant,
        registry: &Registry,
        timers: &mut Timers<TimerKey>,
    ) {
        let Some(probe) = self.probes.get_mut(key) else {
            return;
        };
        match probe.advance() {
            ProbeStatus::Pending => {}
            ProbeStatus::Healthy => self.finish_probe(key, Ok(()), now, registry, timers),
            ProbeStatus::Unhealthy(why) => self.finish_probe(key, Err(why), now, registry, timers),
        }
    }

    /// Close a probe and apply its result.
    fn finish_probe(
        &mut self,
        key: usize,
        result: Result<(), String>,
        now: Instant,
        registry: &Registry,
        timers: &mut Timers<TimerKey>,
    ) {
        let Some(probe) = self.probes.get(key) else {
            return;
        };
        let (pool, target) = (probe.pool, probe.target);
        self.drop_probe(key, registry, timers);
        let Some(p) = self.pools.get_mut(pool) else {
            return;
        };
        let Some(check) = p.health_check.clone() else {
            return;
        };
        if let Some(t) = p.targets.get_mut(target) {
            t.health.probe = None;
            if let Some(id) = t.health.timer.take() {
                timers.cancel(id);
            }
        }
        self.probe_done(pool, target, &check, result, now, timers);
    }

    /// Apply a probe result and arm the next probe, one interval after this one started.
    fn probe_done(
        &mut self,
        pool: usize,
        target: usize,
        check: &HealthCheck,
        result: Result<(), String>,
        now: Instant,
        timers: &mut Timers<TimerKey>,
    ) {
        let Some(p) = self.pools.get_mut(pool) else {
            return;
        };
        let Some(t) = p.targets.get_mut(target) else {
            return;
        };
        match t.health.probe_result(result.is_ok(), check) {
            Some(Transition::Down) => info!(
                upstream = p.name,
                target = %t.addr,
                reason = result.as_ref().err().map_or("", String::as_str),
                failures = check.unhealthy_threshold,
                "upstream target out of rotation (health check)"
            ),
            Some(Transition::Up) => info!(
                upstream = p.name,
                target = %t.addr,
                reason = "health check passed",
                successes = check.healthy_threshold,
                "upstream target back in rotation"
            ),
            None => {
                if let Err(why) = &result {
                    debug!(upstream = p.name, target = %t.addr, reason = why, "health check failed");
                }
            }
        }
        let started = t.health.probe_started.take().unwrap_or(now);
        let next = (started + Duration::from_secs(check.interval_secs.max(1))).max(now);
        t.health.timer = Some(timers.insert(next, TimerKey::Health(pool, target)));
    }

    /// Close a probe's socket and forget it (its target's state is the caller's business).
    fn drop_probe(&mut self, key: usize, registry: &Registry, timers: &mut Timers<TimerKey>) {
        if let Some(mut probe) = self.probes.try_remove(key) {
            self.forget_conn(probe.conn, timers);
            let _ = registry.deregister(&mut probe.stream);
        }
    }

    /// Check out a connection to `target` of `pool`: the most recently pooled idle one, or a
    /// new non-blocking connect (writable once connected). Its events go to `token` until it
    /// is released.
    pub fn checkout(
        &mut self,
        pool: usize,
        target: usize,
        registry: &Registry,
        token: Token,
    ) -> io::Result<UpConn> {
        let p = self
            .pools
            .get_mut(pool)
            .ok_or_else(|| io::Error::other("unknown upstream pool"))?;
        let t = p
            .targets
            .get_mut(target)
            .ok_or_else(|| io::Error::other("unknown upstream target"))?;
        while let Some(key) = t.idle.pop_back() {
            let Some(idle) = self.idle.try_remove(key) else {
                continue;
            };
            // Its idle timer stays armed (see `ConnEntry::timer`).
            let Some(entry) = self.conns.get_mut(idle.id) else {
                continue;
            };
            entry.owner = Owner::Session(token);
            t.active += 1;
            return Ok(UpConn {
                id: idle.id,
                stream: idle.stream,
                pool,
                target,
                addr: t.addr,
                reused: true,
            });
        }
        self.connect(pool, target, registry, token)
    }

    /// A fresh connection to a given target (used to retry on a dead pooled connection).
    pub fn connect(
        &mut self,
        pool: usize,
        target: usize,
        registry: &Registry,
        token: Token,
    ) -> io::Result<UpConn> {
        let t = self
            .pools
            .get_mut(pool)
            .and_then(|p| p.targets.get_mut(target))
            .ok_or_else(|| io::Error::other("unknown upstream target"))?;
        let mut stream = TcpStream::connect(t.addr)?;
        let _ = stream.set_nodelay(true);
        let entry = self.conns.vacant_entry();
        let id = entry.key();
        registry.register(
            &mut stream,
            tokens::upstream(id),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        entry.insert(ConnEntry {
            owner: Owner::Session(token),
            timer: None,
            idle_since: Instant::now(),
        });
        t.active += 1;
        Ok(UpConn {
            id,
            stream,
            pool,
            target,
            addr: t.addr,
            reused: false,
        })
    }

    /// Give a connection back: pooled when `reusable` (a clean, complete exchange with a
    /// keep-alive upstream), closed otherwise.
    pub fn release(
        &mut self,
        mut conn: UpConn,
        reusable: bool,
        registry: &Registry,
        timers: &mut Timers<TimerKey>,
        now: Instant,
    ) {
        let Some(p) = self.pools.get_mut(conn.pool) else {
            return;
        };
        let Some(t) = p.targets.get_mut(conn.target) else {
            return;
        };
        t.active = t.active.saturating_sub(1);
        let max_idle = p.pool.max_idle as usize;
        let idle_timeout = Duration::from_secs(p.pool.idle_timeout_secs.max(1));
        if !reusable || self.no_pooling || max_idle == 0 {
            if let Some(e) = self.conns.try_remove(conn.id) {
                if let Some(t) = e.timer {
                    timers.cancel(t);
                }
            }
            let _ = registry.deregister(&mut conn.stream);
            return;
        }
        while t.idle.len() >= max_idle {
            if let Some(old) = t.idle.pop_front() {
                if let Some(mut c) = self.idle.try_remove(old) {
                    if let Some(e) = self.conns.try_remove(c.id) {
                        if let Some(t) = e.timer {
                            timers.cancel(t);
                        }
                    }
                    let _ = registry.deregister(&mut c.stream);
                }
            }
        }
        let Some(entry) = self.conns.get_mut(conn.id) else {
            // Not in the table (cannot happen for a connection made here): close it.
            let _ = registry.deregister(&mut conn.stream);
            return;
        };
        let slot = self.idle.vacant_entry();
        let key = slot.key();
        // From now on its events reach `on_idle_event`: an idle upstream that sends anything
        // (its close, a stray byte) makes the connection unusable and is dropped then.
        entry.owner = Owner::Idle(key);
        entry.idle_since = now;
        if entry.timer.is_none() {
            entry.timer = Some(timers.insert(now + idle_timeout, TimerKey::IdleUpstream(conn.id)));
        }
        slot.insert(IdleConn {
            id: conn.id,
            stream: conn.stream,
            pool: conn.pool,
            target: conn.target,
        });
        t.idle.push_back(key);
    }

    /// Readiness on an idle connection: the upstream closed it or sent unsolicited bytes.
    pub fn on_idle_event(
        &mut self,
        key: usize,
        registry: &Registry,
        timers: &mut Timers<TimerKey>,
    ) {
        let Some(c) = self.idle.get_mut(key) else {
            return;
        };
        let mut buf = [0u8; 256];
        match c.stream.read(&mut buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            _ => self.remove_idle(key, registry, timers),
        }
    }

    /// The idle timer of upstream connection `conn` fired: close it if it has been idle for
    /// its pool's whole idle timeout, else arm the timer for when it will have been.
    pub fn on_idle_timer(
        &mut self,
        conn: usize,
        id: TimerId,
        now: Instant,
        registry: &Registry,
        timers: &mut Timers<TimerKey>,
    ) {
        let Some(e) = self.conns.get_mut(conn) else {
            return;
        };
        if e.timer != Some(id) {
            return;
        }
        e.timer = None;
        // In use by a session: `release` arms the timer again.
        let Owner::Idle(key) = e.owner else {
            return;
        };
        let timeout = self
            .idle
            .get(key)
            .and_then(|c| self.pools.get(c.pool))
            .map_or(Duration::from_secs(1), |p| {
                Duration::from_secs(p.pool.idle_timeout_secs.max(1))
            });
        let due = e.idle_since + timeout;
        if now >= due {
            self.remove_idle(key, registry, timers);
        } else {
            e.timer = Some(timers.insert(due, TimerKey::IdleUpstream(conn)));
        }
    }

    fn remove_idle(&mut self, key: usize, registry: &Registry, timers: &mut Timers<TimerKey>) {
        if let Some(mut c) = self.idle.try_remove(key) {
            if let Some(t) = self
                .pools
                .get_mut(c.pool)
                .and_then(|p| p.targets.get_mut(c.target))
            {
                t.idle.retain(|&k| k != key);
            }
            self.forget_conn(c.id, timers);
            let _ = registry.deregister(&mut c.stream);
        }
    }

    /// Draining: close every idle connection and pool no more.
    pub fn close_all_idle(&mut self, registry: &Registry, timers: &mut Timers<TimerKey>) {
        self.no_pooling = true;
        let keys: Vec<usize> = self.idle.iter().map(|(k, _)| k).collect();
        for k in keys {
            self.remove_idle(k, registry, timers);
        }
    }
}

/// Connect to a target of `pool` for one exchange, failing over: targets in `failed` are
/// skipped, and a target whose connect fails at once is reported (see [`note_failure`]),
/// added to `failed`, and the balancer's next choice is tried. None once every target of the
/// pool has failed for this exchange.
///
/// Only for attempts where no request byte has been sent: then any method may go elsewhere.
pub fn connect_next(
    ctx: &mut Ctx<'_>,
    pool: usize,
    failed: &mut Vec<usize>,
    token: Token,
    peer: SocketAddr,
) -> Option<UpConn> {
    while let Some(target) = ctx.upstreams.pick(pool, failed, ctx.now) {
        match ctx.upstreams.checkout(pool, target, ctx.registry, token) {
            Ok(c) => return Some(c),
            Err(e) => note_failure(ctx, pool, target, failed, peer, &e),
        }
    }
    None
}

/// A connect that had started failed (refused, reset, timed out) before any request byte was
/// sent: close it and report it (see [`note_failure`]), so [`connect_next`] can go elsewhere.
pub fn connect_failed(
    ctx: &mut Ctx<'_>,
    conn: UpConn,
    failed: &mut Vec<usize>,
    peer: SocketAddr,
    error: &dyn fmt::Display,
) {
    let (pool, target) = (conn.pool, conn.target);
    ctx.discard_upstream(conn);
    note_target_failure(
        ctx,
        pool,
        target,
        failed,
        peer,
        error,
        "upstream connect failed",
    );
}

/// One failed connect attempt: its target is excluded for the rest of the exchange, the
/// failure is logged with the pool and target, counted once, and reported to passive health.
pub fn note_failure(
    ctx: &mut Ctx<'_>,
    pool: usize,
    target: usize,
    failed: &mut Vec<usize>,
    peer: SocketAddr,
    error: &io::Error,
) {
    if blames_target(error) {
        note_target_failure(
            ctx,
            pool,
            target,
            failed,
            peer,
            error,
            "upstream connect failed",
        );
        return;
    }
    if !failed.contains(&target) {
        failed.push(target);
    }
    ctx.counters.c.upstream_errors += 1;
    warn!(%peer, pool, target, error = %error, "cannot open an upstream connection: this worker is out of local resources (not held against the target)");
}

/// Whether a failed connect says something about the target rather than about this worker
/// running out of descriptors, memory or local ports: only the former count against the
/// target's health, or a worker short of fds would take every healthy target out of rotation.
pub fn blames_target(error: &io::Error) -> bool {
    !matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL)
    )
}

/// [`note_failure`] for any failure that blames the target (`what` is the log message).
pub fn note_target_failure(
    ctx: &mut Ctx<'_>,
    pool: usize,
    target: usize,
    failed: &mut Vec<usize>,
    peer: SocketAddr,
    error: &dyn fmt::Display,
    what: &'static str,
) {
    if !failed.contains(&target) {
        failed.push(target);
    }
    ctx.counters.c.upstream_errors += 1;
    ctx.upstreams.report_failure(pool, target, ctx.now, error);
    let p = ctx.upstreams.pool(pool);
    let name = p.map_or("?", |p| p.name.as_str());
    match p.and_then(|p| p.targets.get(target)) {
        Some(t) => warn!(%peer, upstream = name, target = %t.addr, error = %error, "{what}"),
        None => warn!(%peer, upstream = name, target, error = %error, "{what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn only_failures_of_the_target_count_against_it() {
        let os = io::Error::from_raw_os_error;
        assert!(blames_target(&os(libc::ECONNREFUSED)));
        assert!(blames_target(&os(libc::ENETUNREACH)));
        assert!(blames_target(&io::Error::from(io::ErrorKind::TimedOut)));
        for local in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOBUFS,
            libc::ENOMEM,
            libc::EADDRNOTAVAIL,
        ] {
            assert!(!blames_target(&os(local)), "errno {local}");
        }
    }

    fn picks(b: &mut Balancer, n: usize) -> Vec<usize> {
        (0..n).map(|_| b.pick(&[0, 0, 0], &[]).unwrap()).collect()
    }

    #[test]
    fn smooth_weighted_round_robin() {
        let mut b = Balancer::new(LoadBalancing::RoundRobin, &[5, 1, 1]);
        // nginx's documented sequence for weights 5,1,1.
        assert_eq!(picks(&mut b, 7), vec![0, 0, 1, 0, 2, 0, 0]);
        // And it repeats with the same distribution.
        let next = picks(&mut b, 7);
        assert_eq!(next.iter().filter(|&&i| i == 0).count(), 5);
        assert_eq!(next.iter().filter(|&&i| i == 1).count(), 1);
    }

    #[test]
    fn equal_weights_alternate() {
        let mut b = Balancer::new(LoadBalancing::RoundRobin, &[1, 1]);
        let p: Vec<usize> = (0..4).map(|_| b.pick(&[0, 0], &[]).unwrap()).collect();
        assert_eq!(p, vec![0, 1, 0, 1]);
    }

    #[test]
    fn zero_weight_treated_as_one() {
        let mut b = Balancer::new(LoadBalancing::RoundRobin, &[0, 1]);
        let p: Vec<usize> = (0..4).map(|_| b.pick(&[0, 0], &[]).unwrap()).collect();
        assert_eq!(p.iter().filter(|&&i| i == 0).count(), 2);
    }

    #[test]
    fn least_connections_prefers_fewest() {
        let mut b = Balancer::new(LoadBalancing::LeastConnections, &[1, 1, 1]);
        assert_eq!(b.pick(&[3, 1, 2], &[]), Some(1));
        assert_eq!(b.pick(&[0, 5, 5], &[]), Some(0));
        assert_eq!(b.pick(&[5, 5, 0], &[]), Some(2));
    }

    #[test]
    fn least_connections_weighted_and_ties_rotate() {
        // Target 1 has weight 3: 3 active there equals 1 active on weight-1 target 0.
        let mut b = Balancer::new(LoadBalancing::LeastConnections, &[1, 3]);
        assert_eq!(b.pick(&[1, 2], &[]), Some(1));
        assert_eq!(b.pick(&[1, 4], &[]), Some(0));
        let mut b = Balancer::new(LoadBalancing::LeastConnections, &[1, 1]);
        let a = b.pick(&[0, 0], &[]).unwrap();
        let c = b.pick(&[0, 0], &[]).unwrap();
        assert_ne!(a, c, "ties must not always go to the same target");
    }

    #[test]
    fn excluded_targets_are_skipped_until_none_is_left() {
        for lb in [LoadBalancing::RoundRobin, LoadBalancing::LeastConnections] {
            let mut b = Balancer::new(lb, &[1, 1, 1]);
            let mut failed = Vec::new();
            while let Some(t) = b.pick(&[0, 0, 0], &failed) {
                assert!(!failed.contains(&t), "{lb:?} picked {t} again: {failed:?}");
                failed.push(t);
            }
            failed.sort_unstable();
            assert_eq!(failed, vec![0, 1, 2], "{lb:?} must try every target once");
        }
    }

    #[test]
    fn round_robin_stays_balanced_around_an_excluded_target() {
        // Target 0 always fails and is excluded after its turn: the others still share the
        // load evenly (the exclusion does not skew the smooth weighted state).
        let mut b = Balancer::new(LoadBalancing::RoundRobin, &[1, 1, 1]);
        let mut served = [0u32; 3];
        for _ in 0..300 {
            let mut t = b.pick(&[0, 0, 0], &[]).unwrap();
            if t == 0 {
                t = b.pick(&[0, 0, 0], &[0]).unwrap();
            }
            served[t] += 1;
        }
        assert_eq!(served[0], 0);
        assert!(served[1].abs_diff(served[2]) <= 1, "{served:?}");
    }

    fn pool_config(name: &str, addr: &str, max_idle: u32) -> UpstreamConfig {
        UpstreamConfig {
            name: name.into(),
            targets: vec![zentinel_protocol::config::UpstreamTarget {
                address: addr.into(),
                weight: 1,
            }],
            load_balancing: LoadBalancing::RoundRobin,
            pool: ConnectionPool {
                max_idle,
                ..ConnectionPool::default()
            },
            timeouts: UpstreamTimeouts::default(),
            health_check: None,
            passive_health: PassiveHealth::default(),
        }
    }

    fn pools(cfgs: &[UpstreamConfig]) -> Vec<Pool> {
        cfgs.iter().map(|c| Pool::from_config(c).unwrap()).collect()
    }

    #[test]
    fn reload_keeps_unchanged_pools_moves_idle_connections_and_retires_unused_pools() {
        let poll = mio::Poll::new().unwrap();
        let reg = poll.registry();
        let mut timers = Timers::new();
        let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = backend.local_addr().unwrap().to_string();
        let (a, b) = (pool_config("a", &addr, 4), pool_config("b", &addr, 4));
        let mut u = Upstreams::new();
        let gen1 = u.install(pools(&[a.clone(), b.clone()]), &[], reg, &mut timers);
        let c = u.connect(gen1[0], 0, reg, Token(99)).unwrap();
        u.release(c, true, reg, &mut timers, Instant::now());
        assert_eq!(u.pools[gen1[0]].targets[0].idle.len(), 1);

        // `a` unchanged: same pool, idle connection kept. `b` changed (not its targets): a
        // new pool. `c` new.
        let b2 = pool_config("b", &addr, 8);
        let c = pool_config("c", &addr, 4);
        let gen2 = u.install(pools(&[a.clone(), b2, c]), &gen1, reg, &mut timers);
        assert_eq!(gen2[0], gen1[0]);
        assert_ne!(gen2[1], gen1[1]);
        assert_eq!(u.pools[gen2[0]].targets[0].idle.len(), 1);
        assert_eq!(u.retire_unused(|k| gen2.contains(&k), reg, &mut timers), 0);
        assert_eq!(u.pool_count(), 3, "the old `b` is gone");

        // `a` with other settings, same targets: its idle connection moves to the new pool.
        let mut a2 = a.clone();
        a2.timeouts.read_secs += 1;
        let gen3 = u.install(pools(&[a2]), &gen2, reg, &mut timers);
        assert_ne!(gen3[0], gen2[0]);
        assert_eq!(u.pools[gen2[0]].targets[0].idle.len(), 0);
        assert_eq!(u.pools[gen3[0]].targets[0].idle.len(), 1);
        let reused = u.checkout(gen3[0], 0, reg, Token(100)).unwrap();
        assert!(reused.reused, "the moved idle connection is handed out");

        // A pool with a checked-out connection outlives its configuration until released.
        assert_eq!(u.retire_unused(|_| false, reg, &mut timers), 1);
        assert_eq!(u.pool_count(), 1);
        u.release(reused, true, reg, &mut timers, Instant::now());
        assert_eq!(u.retire_unused(|_| false, reg, &mut timers), 0);
        assert_eq!(u.pool_count(), 0);
        assert!(
            u.idle.is_empty(),
            "idle connections of removed pools are closed"
        );
    }

    #[test]
    fn down_targets_are_skipped_unless_every_target_is_down() {
        let poll = mio::Poll::new().unwrap();
        let mut timers = Timers::new();
        let mut cfg = pool_config("p", "127.0.0.1:1", 4);
        cfg.targets.push(zentinel_protocol::config::UpstreamTarget {
            address: "127.0.0.1:2".into(),
            weight: 1,
        });
        cfg.passive_health = PassiveHealth {
            max_fails: 2,
            fail_timeout_secs: 10,
        };
        let mut u = Upstreams::new();
        let key = u.install(pools(&[cfg]), &[], poll.registry(), &mut timers)[0];
        let t0 = Instant::now();
        u.report_failure(key, 0, t0, &"refused");
        assert!(u.is_up(key, 0, t0), "one failure of two allowed");
        u.report_failure(key, 0, t0, &"refused");
        assert!(!u.is_up(key, 0, t0));
        for _ in 0..6 {
            assert_eq!(u.pick(key, &[], t0), Some(1));
        }
        // Every target down: they are still tried (and a real attempt decides).
        u.report_failure(key, 1, t0, &"refused");
        u.report_failure(key, 1, t0, &"refused");
        assert!(!u.is_up(key, 1, t0));
        let picked: BTreeSet<usize> = (0..4).filter_map(|_| u.pick(key, &[], t0)).collect();
        assert_eq!(picked, BTreeSet::from([0, 1]));
        assert_eq!(
            u.pick(key, &[0], t0),
            Some(1),
            "failed targets stay excluded"
        );
        assert_eq!(u.pick(key, &[0, 1], t0), None);
        // The fail timeout over, both are back.
        let later = t0 + Duration::from_secs(11);
        assert!(u.is_up(key, 0, later));
        let picked: BTreeSet<usize> = (0..4).filter_map(|_| u.pick(key, &[], later)).collect();
        assert_eq!(picked, BTreeSet::from([0, 1]));
    }

    #[test]
    fn reload_carries_health_marks_but_not_probe_marks_without_checks() {
        let poll = mio::Poll::new().unwrap();
        let reg = poll.registry();
        let mut timers = Timers::new();
        let mut checked = pool_config("p", "127.0.0.1:1", 4);
        checked.health_check = Some(HealthCheck {
            kind: zentinel_protocol::config::HealthCheckKind::Tcp,
            interval_secs: 5,
            timeout_secs: 1,
            healthy_threshold: 1,
            unhealthy_threshold: 1,
        });
        let mut u = Upstreams::new();
        let gen1 = u.install(pools(&[checked.clone()]), &[], reg, &mut timers);
        let now = Instant::now();
        // A passive mark on a checked pool waits for the probes.
        u.report_failure(gen1[0], 0, now, &"refused");
        assert!(!u.is_up(gen1[0], 0, now));
        // Other settings, same targets, still checked: the mark stays.
        let mut slower = checked.clone();
        slower.timeouts.read_secs += 1;
        let gen2 = u.install(pools(&[slower.clone()]), &gen1, reg, &mut timers);
        assert_ne!(gen2[0], gen1[0]);
        assert!(!u.is_up(gen2[0], 0, now));
        // Checks removed: nothing could lift the mark any more, so it goes.
        let mut unchecked = slower;
        unchecked.health_check = None;
        let gen3 = u.install(pools(&[unchecked]), &gen2, reg, &mut timers);
        assert!(u.is_up(gen3[0], 0, now));
        assert_eq!(u.retire_unused(|k| gen3.contains(&k), reg, &mut timers), 0);
    }

    #[test]
    fn empty_pool_picks_none() {
        let mut b = Balancer::new(LoadBalancing::RoundRobin, &[]);
        assert_eq!(b.pick(&[], &[]), None);
    }
}
