//! Active health probes of a pool's targets: scheduling, running and applying their results.

use zentinel_protocol::config::{HealthCheckKind, UpstreamHttpVersion};

use super::connections::{close_sock, open, Alpn};
use super::*;
use crate::sock::pipe::PipeEnd;
use crate::wakeups::Wake;

impl Upstreams {
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
        let Some(addr) = t.addr else {
            // No address yet: nothing to probe; the name's resolution decides for now.
            let next = now + Duration::from_secs(check.interval_secs.max(1));
            t.health.timer = Some(timers.insert(next, TimerKey::Health(pool, target)));
            return;
        };
        t.health.probe_started = Some(now);
        let version = p.config.http.version;
        // Both keys are taken before anything is inserted: the probe knows its connection's
        // key (its token) and the connection entry names the probe.
        let conn = self.conns.vacant_key();
        let probe_key = self.probes.vacant_key();
        let over_h2 = version == UpstreamHttpVersion::Http2
            && matches!(check.kind, HealthCheckKind::Http { .. });
        let started = if over_h2 {
            // An HTTP/2-only target: the GET goes on a stream.
            self.h2_stream(pool, target, registry, Wake::Probe(probe_key), false, now)
                .map(|s| {
                    let sock = UpSock::Pipe(PipeEnd { shared: s.pipe });
                    Probe::new(sock, addr, &check, None, pool, target)
                })
        } else {
            // `"auto"` pools: the probe speaks HTTP/1.1 on its own connection.
            let alpn = match version {
                UpstreamHttpVersion::Http2 => Alpn::Pool,
                _ => Alpn::Http1,
            };
            open(&self.pools, pool, target, conn, registry, alpn)
                .map(|(sock, _)| Probe::new(sock, addr, &check, Some(conn), pool, target))
        };
        match started {
            Ok(probe) => {
                if probe.conn.is_none() {
                    // A stream raises no socket event: the probe writes its request at once.
                    crate::wakeups::wake(Wake::Probe(probe_key));
                }
                if probe.conn.is_some() {
                    self.conns.insert(ConnEntry {
                        owner: Owner::Probe(probe_key),
                        timer: None,
                        idle_since: now,
                        created: now,
                    });
                }
                self.probes.insert(probe);
                let timeout = Duration::from_secs(check.timeout_secs.max(1));
                let t = &mut self.pools[pool].targets[target];
                t.health.probe = Some(probe_key);
                t.health.timer = Some(timers.insert(now + timeout, TimerKey::Health(pool, target)));
            }
            Err(e) if !blames_target(&e) => {
                // Not the target's fault: try again at the next interval, verdict unchanged.
                warn!(upstream = self.pools[pool].name, target = %self.pools[pool].targets[target].label, error = %e, "cannot start a health check: this worker is out of local resources");
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
                target = %t.label,
                reason = result.as_ref().err().map_or("", String::as_str),
                failures = check.unhealthy_threshold,
                "upstream target out of rotation (health check)"
            ),
            Some(Transition::Up) => info!(
                upstream = p.name,
                target = %t.label,
                reason = "health check passed",
                successes = check.healthy_threshold,
                "upstream target back in rotation"
            ),
            None => {
                if let Err(why) = &result {
                    debug!(upstream = p.name, target = %t.label, reason = why, "health check failed");
                }
            }
        }
        let started = t.health.probe_started.take().unwrap_or(now);
        let next = (started + Duration::from_secs(check.interval_secs.max(1))).max(now);
        t.health.timer = Some(timers.insert(next, TimerKey::Health(pool, target)));
    }

    /// Close a probe's socket and forget it (its target's state is the caller's business).
    pub(super) fn drop_probe(
        &mut self,
        key: usize,
        registry: &Registry,
        timers: &mut Timers<TimerKey>,
    ) {
        if let Some(mut probe) = self.probes.try_remove(key) {
            if let Some(conn) = probe.conn {
                self.forget_conn(conn, timers);
            }
            close_sock(&mut probe.sock, registry);
        }
    }
}
