//! A pool (one configured upstream) and its targets, and choosing the target of an exchange:
//! the sticky cookie first, then the balancer over the targets that can take it.

use std::net::IpAddr;

use zentinel_protocol::config::{
    parse_target_address, LoadBalancing, SameSite, StickySession, TargetAddress,
    UpstreamHttpVersion,
};

use super::balancer::{hash64, PickKey};
use super::tls::{client_config, server_name, PoolTls, SystemRoots, UpstreamTlsError};
use super::*;

/// The TLS configuration of a pool and the server name of each of its targets.
fn pool_tls(
    t: &zentinel_protocol::config::UpstreamTls,
    version: UpstreamHttpVersion,
    targets: &[Target],
    roots: &mut SystemRoots,
) -> Result<PoolTls, UpstreamTlsError> {
    let names = targets
        .iter()
        .map(|target| {
            server_name(
                t.sni.as_deref(),
                target.host.as_ref().map(|(h, _)| h.as_str()),
                target.addr.map(|a| a.ip()),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PoolTls::new(client_config(t, roots)?, version, names))
}

#[derive(Debug)]
pub struct Target {
    /// The address as configured (`10.0.0.1:80`, `backend:80`): what logs name.
    pub label: String,
    /// Host name and port to resolve; `None` for an IP literal.
    pub host: Option<(String, u16)>,
    /// Where connections go. `None` while a host name has no address (not yet resolved or
    /// never resolvable): the target is skipped.
    pub addr: Option<SocketAddr>,
    /// Waiting for the first answer about its name: exchanges may wait for it.
    pub resolving: bool,
    /// A lookup of its name is in flight.
    pub(super) lookup_pending: bool,
    /// The last lookup failed (logged once, not at every refresh).
    pub(super) dns_failing: bool,
    pub active: u32,
    /// Idle connection keys (into `Upstreams::idle`), oldest first.
    pub(super) idle: VecDeque<usize>,
    /// Its HTTP/2 connections (keys into `Upstreams::h2`).
    pub(super) h2: Vec<usize>,
    /// `http-version "auto"`: ALPN chose `h2` last time, so exchanges go to HTTP/2 streams.
    pub(super) alpn_h2: bool,
    pub(super) health: TargetHealth,
    /// Used only when the pool has a `circuit-breaker`.
    pub(super) breaker: CircuitBreaker,
    /// The sticky cookie value naming this target (see [`cookie_id`]).
    cookie: String,
}

impl Target {
    /// This worker's health marks for the target (read-only: for status endpoints).
    pub fn health(&self) -> &TargetHealth {
        &self.health
    }

    /// The target's circuit breaker (meaningful when the pool has one).
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }
}

#[derive(Debug)]
pub struct Pool {
    pub name: String,
    pub targets: Vec<Target>,
    pub(super) balancer: Balancer,
    pub pool: ConnectionPool,
    pub timeouts: UpstreamTimeouts,
    pub(super) health_check: Option<HealthCheck>,
    pub(super) passive: PassiveHealth,
    /// One breaker per target (in `Target::breaker`) when set.
    pub(super) breaker: Option<CircuitBreakerConfig>,
    pub sticky: Option<StickySession>,
    /// Sessions waiting for a connection (every eligible target at its cap or still being
    /// resolved): woken when one is released or a name resolves.
    pub(super) waiters: Vec<Token>,
    /// What the pool was built from: a reload keeps a pool whose configuration is unchanged.
    pub(super) config: UpstreamConfig,
    /// `tls { ... }`: connections speak TLS to every target.
    pub(super) tls: Option<PoolTls>,
    /// Scratch for `choose` (each target's active count), reused: no allocation per pick.
    active_scratch: Vec<u32>,
}

/// The outcome of choosing a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    Target(usize),
    /// No target can take a connection now, but one will: every target left is at its
    /// connection cap or waiting for its first DNS answer.
    Wait,
    /// Every target failed for this exchange, or cannot be connected (unresolvable).
    None,
    /// Every target not excluded otherwise has an open circuit breaker.
    CircuitOpen,
}

/// What a request offers for choosing a target.
#[derive(Debug, Clone, Copy)]
pub struct PickRequest<'a> {
    pub client_ip: Option<IpAddr>,
    /// The value of the pool's sticky cookie, when the request carries one.
    pub cookie: Option<&'a str>,
}

/// The sticky cookie value for a target: 16 hex digits of a fixed hash of the pool name and
/// the target's address. The same in every worker and across reloads and upgrades (a target
/// keeps its cookie while it stays configured), and it only ever matches configured targets:
/// a forged value cannot name anything else. It is not signed: like HAProxy's `cookie SRV
/// insert`, a client may pick among the pool's targets by copying another one's value.
pub fn cookie_id(pool: &str, address: &str) -> String {
    format!(
        "{:016x}",
        hash64(format!("{pool}\u{0}{address}").as_bytes())
    )
}

impl Pool {
    /// The configuration the pool was built from.
    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    /// Check one upstream's configuration and build its pool (no socket is touched, no name
    /// resolved: see `resolution`). TLS files are read here.
    #[cfg(test)]
    pub fn from_config(c: &UpstreamConfig) -> Result<Pool, UpstreamConfigError> {
        Self::from_config_with(c, &mut SystemRoots::default())
    }

    /// [`Pool::from_config`], the system trust store read at most once for all the pools built
    /// with the same `roots`.
    pub fn from_config_with(
        c: &UpstreamConfig,
        roots: &mut SystemRoots,
    ) -> Result<Pool, UpstreamConfigError> {
        if c.targets.is_empty() {
            return Err(UpstreamConfigError::NoTargets(c.name.clone()));
        }
        let mut targets = Vec::with_capacity(c.targets.len());
        for t in &c.targets {
            let (addr, host) = match parse_target_address(&t.address) {
                Ok(TargetAddress::Ip(a)) => (Some(a), None),
                Ok(TargetAddress::Name(h, port)) => (None, Some((h.to_owned(), port))),
                Err(why) => {
                    return Err(UpstreamConfigError::BadAddress {
                        pool: c.name.clone(),
                        address: t.address.clone(),
                        why,
                    })
                }
            };
            targets.push(Target {
                label: t.address.clone(),
                resolving: host.is_some(),
                lookup_pending: false,
                dns_failing: false,
                host,
                addr,
                active: 0,
                idle: VecDeque::new(),
                h2: Vec::new(),
                alpn_h2: false,
                health: TargetHealth::default(),
                breaker: CircuitBreaker::default(),
                cookie: cookie_id(&c.name, &t.address),
            });
        }
        let weighted: Vec<(&str, u32)> = c
            .targets
            .iter()
            .map(|t| (t.address.as_str(), t.weight))
            .collect();
        let tls = match &c.tls {
            None => None,
            Some(t) => Some(
                pool_tls(t, c.http.version, &targets, roots).map_err(|error| {
                    UpstreamConfigError::Tls {
                        pool: c.name.clone(),
                        error,
                    }
                })?,
            ),
        };
        let lb = match (&c.sticky, c.load_balancing) {
            (Some(s), LoadBalancing::Sticky) => s.fallback,
            (_, lb) => lb,
        };
        Ok(Pool {
            name: c.name.clone(),
            targets,
            balancer: Balancer::new(lb, &weighted),
            pool: c.pool.clone(),
            timeouts: c.timeouts.clone(),
            health_check: c.health_check.clone(),
            passive: c.passive_health.clone(),
            breaker: c.circuit_breaker.clone(),
            sticky: (c.load_balancing == LoadBalancing::Sticky)
                .then(|| c.sticky.clone().unwrap_or_default()),
            waiters: Vec::new(),
            config: c.clone(),
            tls,
            active_scratch: Vec::new(),
        })
    }

    /// A TLS session to target `target` when the pool speaks TLS; `http1`: offering ALPN
    /// `http/1.1` alone, whatever the pool's version.
    pub(super) fn tls_session(
        &self,
        target: usize,
        http1: bool,
    ) -> io::Result<Option<rustls::ClientConnection>> {
        self.tls
            .as_ref()
            .map(|t| t.session(target, http1))
            .transpose()
            .map_err(io::Error::other)
    }

    /// Connections to this pool's targets are checked out right now.
    pub(super) fn in_use(&self) -> bool {
        self.targets.iter().any(|t| t.active > 0)
    }

    /// Whether some target is in rotation (resolved and not marked down) at `now`.
    pub fn any_up(&self, now: Instant) -> bool {
        self.targets
            .iter()
            .any(|t| t.addr.is_some() && !t.health.is_down(now))
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.timeouts.connect_secs.max(1))
    }
    pub fn read_timeout(&self) -> Duration {
        Duration::from_secs(self.timeouts.read_secs.max(1))
    }
    pub fn write_timeout(&self) -> Option<Duration> {
        self.timeouts
            .write_secs
            .map(|s| Duration::from_secs(s.max(1)))
    }
    pub fn request_timeout(&self) -> Option<Duration> {
        self.timeouts
            .request_secs
            .map(|s| Duration::from_secs(s.max(1)))
    }

    /// Target `i` is at the pool's per-target connection cap. Over HTTP/2 the cap counts
    /// connections, each carrying up to `max-h2-streams` exchanges.
    fn at_cap(&self, i: usize) -> bool {
        let per_connection = if self.speaks_h2(i) {
            self.config.http.max_h2_streams.max(1)
        } else {
            1
        };
        self.pool
            .max_connections
            .is_some_and(|max| self.targets[i].active >= max.saturating_mul(per_connection))
    }

    /// Whether exchanges to target `i` go to HTTP/2 streams: `http-version "2"`, or `"auto"`
    /// over TLS once the target chose `h2` by ALPN.
    pub(super) fn speaks_h2(&self, i: usize) -> bool {
        match self.config.http.version {
            UpstreamHttpVersion::Http1 => false,
            UpstreamHttpVersion::Http2 => true,
            UpstreamHttpVersion::Auto => {
                self.tls.is_some() && self.targets.get(i).is_some_and(|t| t.alpn_h2)
            }
        }
    }

    /// The `Set-Cookie` value that pins a client to `target`, when this pool is sticky and
    /// the request did not already carry it.
    pub fn set_cookie(&self, target: usize, sent: Option<&str>) -> Option<String> {
        let sticky = self.sticky.as_ref()?;
        let t = self.targets.get(target)?;
        if sent == Some(t.cookie.as_str()) {
            return None;
        }
        let mut v = format!(
            "{}={}; Path={}; Max-Age={}",
            sticky.cookie_name, t.cookie, sticky.cookie_path, sticky.cookie_ttl_secs
        );
        if sticky.cookie_secure {
            v.push_str("; HttpOnly; Secure");
        }
        v.push_str(match sticky.same_site {
            SameSite::Lax => "; SameSite=Lax",
            SameSite::Strict => "; SameSite=Strict",
            SameSite::None => "; SameSite=None",
        });
        Some(v)
    }

    /// Choose a target for a new exchange (see [`Upstreams::pick`]).
    fn choose(&mut self, failed: &[usize], req: &PickRequest<'_>, now: Instant) -> Pick {
        for t in &mut self.targets {
            if t.health.expire(now) {
                info!(upstream = self.name, target = %t.label, reason = "fail timeout elapsed", "upstream target back in rotation");
            }
        }
        let n = self.targets.len();
        // Never usable for this exchange: failed already, no address, at the cap.
        let mut hard: Vec<usize> = failed.to_vec();
        let mut waitable = false;
        let mut open = false;
        for i in 0..n {
            if hard.contains(&i) {
                continue;
            }
            let t = &self.targets[i];
            if t.addr.is_none() || self.at_cap(i) {
                waitable |= t.resolving || t.addr.is_some();
                hard.push(i);
            } else if self
                .breaker
                .as_ref()
                .is_some_and(|c| !t.breaker.allows(c, now))
            {
                // Unlike a target out of rotation, an open breaker is never tried as a last
                // resort: refusing fast is its whole point.
                open = true;
                hard.push(i);
            }
        }
        let down: Vec<usize> = (0..n)
            .filter(|&i| !hard.contains(&i) && self.targets[i].health.is_down(now))
            .collect();
        if let (true, Some(cookie)) = (self.sticky.is_some(), req.cookie) {
            if let Some(i) = self.targets.iter().position(|t| t.cookie == cookie) {
                if !hard.contains(&i) && !down.contains(&i) {
                    self.admit(i, now);
                    return Pick::Target(i);
                }
            }
        }
        // The balancer's view of each target's load, in a vector kept from pick to pick.
        let mut active = std::mem::take(&mut self.active_scratch);
        active.clear();
        active.extend(self.targets.iter().map(|t| t.active));
        let key = PickKey {
            client_ip: req.client_ip,
        };
        let mut skip = hard.clone();
        skip.extend(&down);
        // Every target left is down: a real attempt (and a real 502) beats refusing outright,
        // and it is how a target nobody probes gets a chance to come back.
        let picked = if down.is_empty() {
            self.balancer.pick(&active, &hard, &key)
        } else {
            self.balancer
                .pick(&active, &skip, &key)
                .or_else(|| self.balancer.pick(&active, &hard, &key))
        };
        self.active_scratch = active;
        match picked {
            Some(i) => {
                self.admit(i, now);
                Pick::Target(i)
            }
            None if waitable => Pick::Wait,
            None if open => Pick::CircuitOpen,
            None => Pick::None,
        }
    }

    /// Target `i` was chosen: its breaker (if any) counts the attempt.
    fn admit(&mut self, i: usize, now: Instant) {
        let (Some(cfg), Some(t)) = (self.breaker.as_ref(), self.targets.get_mut(i)) else {
            return;
        };
        if let Some(change) = t.breaker.admit(cfg, now) {
            info!(upstream = self.name, target = %t.label, from = change.from, to = change.to, "circuit breaker: trial request");
        }
    }

    /// Feed an attempt's outcome to target `i`'s breaker (if the pool has breakers).
    fn breaker_outcome(&mut self, i: usize, success: bool, why: &dyn fmt::Display, now: Instant) {
        let (Some(cfg), Some(t)) = (self.breaker.as_ref(), self.targets.get_mut(i)) else {
            return;
        };
        let change = if success {
            t.breaker.on_success(cfg)
        } else {
            t.breaker.on_failure(cfg, now)
        };
        if let Some(change) = change {
            match change.to {
                "open" => {
                    warn!(upstream = self.name, target = %t.label, from = change.from, to = change.to, reason = %why, timeout_secs = cfg.timeout_seconds, "circuit breaker opened: target skipped")
                }
                _ => {
                    info!(upstream = self.name, target = %t.label, from = change.from, to = change.to, "circuit breaker state changed")
                }
            }
        }
    }
}

impl Upstreams {
    /// Choose a target of `pool` for a new exchange, skipping `failed` (targets that already
    /// failed for it), targets without an address or at their connection cap, and, while any
    /// other is left, targets out of rotation.
    pub fn pick(
        &mut self,
        pool: usize,
        failed: &[usize],
        now: Instant,
        req: &PickRequest<'_>,
    ) -> Pick {
        match self.pools.get_mut(pool) {
            Some(p) => p.choose(failed, req, now),
            None => Pick::None,
        }
    }

    /// Wake `token` when a connection of `pool` is released or a name of it resolves.
    pub fn wait_for(&mut self, pool: usize, token: Token) {
        if let Some(p) = self.pools.get_mut(pool) {
            if !p.waiters.contains(&token) {
                p.waiters.push(token);
            }
        }
    }

    /// Something changed in `pool` that may let waiting sessions go on: they all get an event
    /// (each tries again and waits again if it still cannot go).
    pub(super) fn wake_waiters(&mut self, pool: usize) {
        if let Some(p) = self.pools.get_mut(pool) {
            self.wakeups.append(&mut p.waiters);
        }
    }

    /// Sessions to give an event to (see [`Upstreams::wake_waiters`]).
    pub fn take_wakeups(&mut self) -> Vec<Token> {
        std::mem::take(&mut self.wakeups)
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
        p.breaker_outcome(target, false, reason, now);
        let checked = p.health_check.is_some();
        let Some(t) = p.targets.get_mut(target) else {
            return;
        };
        if t.health.traffic_failure(&p.passive, checked, now) == Some(Transition::Down) {
            info!(
                upstream = p.name,
                target = %t.label,
                reason = %reason,
                max_fails = p.passive.max_fails,
                until = if checked { "health checks pass" } else { "fail timeout elapses" },
                "upstream target out of rotation (passive)"
            );
        }
    }

    /// `target` answered a request with `status`: its response head came `rtt` after the
    /// attempt started. Any answer clears passive-health failures (a 5xx is the application's
    /// word, not a dead target); for the circuit breaker, as upstream Zentinel, 500 and above
    /// is a failure.
    pub fn report_response(
        &mut self,
        pool: usize,
        target: usize,
        status: u16,
        rtt: Duration,
        now: Instant,
    ) {
        let Some(p) = self.pools.get_mut(pool) else {
            return;
        };
        p.breaker_outcome(target, status < 500, &format_args!("status {status}"), now);
        if let Some(t) = p.targets.get_mut(target) {
            t.health.traffic_success();
            p.balancer.observe_latency(target, rtt, now);
        }
    }
}
