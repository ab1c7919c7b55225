//! The upstream connection table: checking connections out of a pool, giving them back, idle
//! keep-alive connections and their timers.

use super::*;

/// Idle connections per target kept for the pool's whole `idle-timeout`; beyond them, spares.
/// Without an idle cap (the default) a burst of N clients leaves N idle connections behind;
/// the backend holds them open too. 64 covers the steady concurrency of a worker in front of
/// one target on the benchmarks (64 clients) and of most deployments.
const CORE_IDLE: usize = 64;
/// How long a spare idle connection waits for reuse before it is closed. Reuse is LIFO, so
/// under steady load a connection is idle for microseconds: only connections a burst left
/// behind reach this, and they go back to the backend within seconds instead of a minute.
const SPARE_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an idle connection may wait when its target has `idle_count` idle connections
/// (itself included): the pool's timeout for the core, at most [`SPARE_IDLE_TIMEOUT`] beyond.
fn idle_limit(idle_timeout: Duration, idle_count: usize) -> Duration {
    if idle_count > CORE_IDLE {
        idle_timeout.min(SPARE_IDLE_TIMEOUT)
    } else {
        idle_timeout
    }
}

impl Upstreams {
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
    pub(super) fn drop_idle_conn(
        &mut self,
        key: usize,
        registry: &Registry,
        timers: &mut Timers<TimerKey>,
    ) {
        if let Some(mut c) = self.idle.try_remove(key) {
            self.forget_conn(c.id, timers);
            close_sock(&mut c.sock, registry);
        }
    }

    /// Remove a connection that is being closed from the table, with its timer.
    pub(super) fn forget_conn(&mut self, id: usize, timers: &mut Timers<TimerKey>) {
        if let Some(e) = self.conns.try_remove(id) {
            if let Some(t) = e.timer {
                timers.cancel(t);
            }
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
        let max_lifetime = p.pool.max_lifetime_secs.map(Duration::from_secs);
        let addr = t
            .addr
            .ok_or_else(|| io::Error::other("upstream target has no address"))?;
        if self.speaks_h2(pool, target) {
            return self.h2_checkout(pool, target, registry, token, false);
        }
        let Some(t) = self
            .pools
            .get_mut(pool)
            .and_then(|p| p.targets.get_mut(target))
        else {
            return Err(io::Error::other("unknown upstream target"));
        };
        while let Some(key) = t.idle.pop_back() {
            let Some(mut idle) = self.idle.try_remove(key) else {
                continue;
            };
            // Its idle timer stays armed (see `ConnEntry::timer`); if the connection is
            // closed here, the timer finds no entry (or another timer id) and does nothing.
            let Some(entry) = self.conns.get_mut(idle.id) else {
                continue;
            };
            if max_lifetime.is_some_and(|l| entry.created.elapsed() >= l) {
                self.conns.remove(idle.id);
                close_sock(&mut idle.sock, registry);
                continue;
            }
            entry.owner = Owner::Session(token);
            t.active += 1;
            idle.sock.reuse();
            return Ok(UpConn {
                id: idle.id,
                sock: idle.sock,
                pool,
                target,
                addr,
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
        if self.speaks_h2(pool, target) {
            return self.h2_checkout(pool, target, registry, token, true);
        }
        let entry = self.conns.vacant_entry();
        let id = entry.key();
        let (sock, addr) = open(&self.pools, pool, target, id, registry, Alpn::Pool)?;
        let t = self
            .pools
            .get_mut(pool)
            .and_then(|p| p.targets.get_mut(target))
            .ok_or_else(|| io::Error::other("unknown upstream target"))?;
        entry.insert(ConnEntry {
            owner: Owner::Session(token),
            timer: None,
            idle_since: Instant::now(),
            created: Instant::now(),
        });
        t.active += 1;
        Ok(UpConn {
            id,
            sock,
            pool,
            target,
            addr,
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
        // A slot under the pool's connection cap may have opened.
        if !p.waiters.is_empty() {
            self.wakeups.append(&mut p.waiters);
        }
        if let UpSock::Pipe(end) = &mut conn.sock {
            // An HTTP/2 stream: its connection finishes it (or resets it when the exchange
            // was cut short) and stays for other exchanges.
            end.close();
            return;
        }
        let max_idle = p.pool.max_idle as usize;
        let idle_timeout = Duration::from_secs(p.pool.idle_timeout_secs.max(1));
        let too_old = p.pool.max_lifetime_secs.is_some_and(|l| {
            self.conns
                .get(conn.id)
                .is_some_and(|e| now.saturating_duration_since(e.created) >= Duration::from_secs(l))
        });
        if !reusable || self.no_pooling || max_idle == 0 || too_old {
            if let Some(e) = self.conns.try_remove(conn.id) {
                if let Some(t) = e.timer {
                    timers.cancel(t);
                }
            }
            close_sock(&mut conn.sock, registry);
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
                    close_sock(&mut c.sock, registry);
                }
            }
        }
        let Some(entry) = self.conns.get_mut(conn.id) else {
            // Not in the table (cannot happen for a connection made here): close it.
            close_sock(&mut conn.sock, registry);
            return;
        };
        let slot = self.idle.vacant_entry();
        let key = slot.key();
        // From now on its events reach `on_idle_event`: an idle upstream that sends anything
        // (its close, a stray byte) makes the connection unusable and is dropped then.
        entry.owner = Owner::Idle(key);
        entry.idle_since = now;
        if entry.timer.is_none() {
            // Checked at least every SPARE_IDLE_TIMEOUT: a core connection becomes a spare
            // when newer ones go idle behind it (see `on_idle_timer`).
            let check = idle_limit(idle_timeout, t.idle.len() + 1).min(SPARE_IDLE_TIMEOUT);
            entry.timer = Some(timers.insert(now + check, TimerKey::IdleUpstream(conn.id)));
        }
        slot.insert(IdleConn {
            id: conn.id,
            sock: conn.sock,
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
        if !c.sock.idle_ok() {
            self.remove_idle(key, registry, timers);
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
            .and_then(|c| {
                let p = self.pools.get(c.pool)?;
                let idle_count = p.targets.get(c.target).map_or(0, |t| t.idle.len());
                let pool_timeout = Duration::from_secs(p.pool.idle_timeout_secs.max(1));
                Some(idle_limit(pool_timeout, idle_count))
            })
            .unwrap_or(Duration::from_secs(1));
        let due = e.idle_since + timeout;
        if now >= due {
            self.remove_idle(key, registry, timers);
        } else {
            let next = due.min(now + SPARE_IDLE_TIMEOUT);
            e.timer = Some(timers.insert(next, TimerKey::IdleUpstream(conn)));
        }
    }

    pub(super) fn remove_idle(
        &mut self,
        key: usize,
        registry: &Registry,
        timers: &mut Timers<TimerKey>,
    ) {
        if let Some(mut c) = self.idle.try_remove(key) {
            if let Some(t) = self
                .pools
                .get_mut(c.pool)
                .and_then(|p| p.targets.get_mut(c.target))
            {
                t.idle.retain(|&k| k != key);
            }
            self.forget_conn(c.id, timers);
            close_sock(&mut c.sock, registry);
        }
    }

    /// Draining: close every idle connection (HTTP/2 ones once their streams are done) and
    /// pool no more.
    pub fn close_all_idle(&mut self, registry: &Registry, timers: &mut Timers<TimerKey>) {
        self.no_pooling = true;
        self.drain_h2(registry, timers);
        let keys: Vec<usize> = self.idle.iter().map(|(k, _)| k).collect();
        for k in keys {
            self.remove_idle(k, registry, timers);
        }
    }
}

/// Which ALPN protocols a TLS connection offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Alpn {
    /// The pool's: `http/1.1`, `h2`, or both for `http-version "auto"`.
    Pool,
    /// `http/1.1` only: what speaks HTTP/1.1 on its own connection whatever the pool's
    /// version (a probe or a mirrored request to an `"auto"` pool).
    Http1,
}

/// Start a connection to `target` of `pool`, registered under the token of connection table
/// key `id`: plain, or with the pool's TLS session ready to run once connected. Returns it
/// with the address it goes to.
pub(super) fn open(
    pools: &Slab<Pool>,
    pool: usize,
    target: usize,
    id: usize,
    registry: &Registry,
    alpn: Alpn,
) -> io::Result<(UpSock, SocketAddr)> {
    let p = pools
        .get(pool)
        .ok_or_else(|| io::Error::other("unknown upstream pool"))?;
    let addr = p
        .targets
        .get(target)
        .ok_or_else(|| io::Error::other("unknown upstream target"))?
        .addr
        .ok_or_else(|| io::Error::other("upstream target has no address"))?;
    let tls = p.tls_session(target, alpn == Alpn::Http1)?;
    let mut stream = TcpStream::connect(addr)?;
    let _ = stream.set_nodelay(true);
    registry.register(
        &mut stream,
        tokens::upstream(id),
        Interest::READABLE | Interest::WRITABLE,
    )?;
    Ok((UpSock::connecting(stream, tls), addr))
}

/// An upstream connection being closed: a TLS one gets a last chance to say so (close_notify,
/// without waiting), then it leaves the poll set.
pub(super) fn close_sock(sock: &mut UpSock, registry: &Registry) {
    sock.close();
    sock.deregister(registry);
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

#[cfg(test)]
mod idle_limit_tests {
    use super::*;

    #[test]
    fn the_core_keeps_the_pool_timeout_and_spares_expire_sooner() {
        let minute = Duration::from_secs(60);
        assert_eq!(idle_limit(minute, 1), minute);
        assert_eq!(idle_limit(minute, CORE_IDLE), minute);
        assert_eq!(idle_limit(minute, CORE_IDLE + 1), SPARE_IDLE_TIMEOUT);
        // A pool timeout shorter than the spares' stays as it is.
        let short = Duration::from_secs(2);
        assert_eq!(idle_limit(short, CORE_IDLE + 1000), short);
    }
}
