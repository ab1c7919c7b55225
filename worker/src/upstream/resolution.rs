//! Host names of upstream targets: resolved off the event loop and refreshed periodically.
//!
//! `getaddrinfo` blocks (for seconds when a DNS server is slow), so lookups run on helper
//! threads. The loop sends them [`Lookup`]s over a channel; each answer comes back over another
//! channel, with a [`mio::Waker`] event (the helper threads' one) telling the loop to collect it. At worker start the
//! loop is not serving yet, so it waits (up to [`RESOLVE_AT_START`]) for the first answers: targets
//! are usable from the first request. A name that does not resolve leaves its target out of
//! rotation (logged), never fails the worker; the refresh every `DNS_REFRESH_SECS` retries it.
//!
//! The first address `getaddrinfo` returns is used, like upstream Zentinel. A refresh that
//! fails keeps the last good address: a DNS outage should not take healthy backends away.

use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::thread;

use crossbeam_channel::{Receiver, Sender};

use super::*;

/// How long worker start waits for the first answers before serving anyway.
pub const RESOLVE_AT_START: Duration = Duration::from_secs(5);
/// Lookups run in parallel on this many threads per worker, so one slow name does not hold
/// up the others.
const THREADS: usize = 2;

#[derive(Debug)]
struct Lookup {
    pool: usize,
    target: usize,
    host: String,
    port: u16,
}

#[derive(Debug)]
struct Answer {
    lookup: Lookup,
    result: Result<SocketAddr, String>,
}

/// The worker's lookup threads. Dropping it closes the request channel: the threads finish
/// the lookup they are in, if any, and exit.
#[derive(Debug)]
pub struct Resolver {
    requests: Sender<Lookup>,
    answers: Receiver<Answer>,
}

impl Resolver {
    /// Start the lookup threads; each answer wakes the event loop with the helper threads'
    /// waker (see `wakeups::helper_waker`).
    pub fn start(registry: &Registry) -> io::Result<Resolver> {
        let waker = crate::wakeups::helper_waker(registry)?;
        let (requests, lookups) = crossbeam_channel::unbounded::<Lookup>();
        let (answer_tx, answers) = crossbeam_channel::unbounded::<Answer>();
        for i in 0..THREADS {
            let lookups = lookups.clone();
            let answer_tx = answer_tx.clone();
            let waker = Arc::clone(&waker);
            thread::Builder::new()
                .name(format!("dns-{i}"))
                .spawn(move || {
                    for lookup in lookups {
                        let result = resolve(&lookup.host, lookup.port);
                        if answer_tx.send(Answer { lookup, result }).is_err() {
                            return;
                        }
                        // A failed wake only delays the answer to the next loop iteration.
                        let _ = waker.wake();
                    }
                })?;
        }
        Ok(Resolver { requests, answers })
    }
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    match (host, port).to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| "the name has no address".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

impl Upstreams {
    pub fn set_resolver(&mut self, resolver: Resolver) {
        self.resolver = Some(resolver);
    }

    pub fn has_resolver(&self) -> bool {
        self.resolver.is_some()
    }

    /// Whether any pool has a target given by host name (the refresh timer is needed).
    pub fn has_names(&self) -> bool {
        self.pools
            .iter()
            .any(|(_, p)| p.targets.iter().any(|t| t.host.is_some()))
    }

    /// Ask for the addresses of host-name targets: all of them (`refresh`), or only those
    /// that have none yet (a new configuration). One lookup per target at a time.
    pub fn request_lookups(&mut self, refresh: bool) {
        let Some(resolver) = &self.resolver else {
            return;
        };
        for (key, p) in self.pools.iter_mut() {
            for (i, t) in p.targets.iter_mut().enumerate() {
                let Some((host, port)) = &t.host else {
                    continue;
                };
                if t.lookup_pending || (!refresh && t.addr.is_some()) {
                    continue;
                }
                let lookup = Lookup {
                    pool: key,
                    target: i,
                    host: host.clone(),
                    port: *port,
                };
                if resolver.requests.send(lookup).is_ok() {
                    t.lookup_pending = true;
                }
            }
        }
    }

    /// Worker start: resolve every name, waiting up to `wait` for the answers (the event
    /// loop does not run yet). Names still unanswered are applied when their answer comes.
    pub fn resolve_at_start(
        &mut self,
        wait: Duration,
        registry: &Registry,
        timers: &mut Timers<TimerKey>,
    ) {
        self.request_lookups(false);
        let deadline = Instant::now() + wait;
        while self.lookups_pending() {
            let answer = match &self.resolver {
                Some(r) => r.answers.recv_deadline(deadline),
                None => return,
            };
            match answer {
                Ok(a) => self.apply(a, registry, timers),
                Err(_) => {
                    warn!(
                        wait_secs = wait.as_secs(),
                        "some upstream host names are not resolved yet: serving without them \
                         until they are"
                    );
                    return;
                }
            }
        }
    }

    fn lookups_pending(&self) -> bool {
        self.pools
            .iter()
            .any(|(_, p)| p.targets.iter().any(|t| t.lookup_pending))
    }

    /// The resolver's waker fired: apply every answer that arrived.
    pub fn on_resolved(&mut self, registry: &Registry, timers: &mut Timers<TimerKey>) {
        loop {
            let answer = match &self.resolver {
                Some(r) => r.answers.try_recv(),
                None => return,
            };
            match answer {
                Ok(a) => self.apply(a, registry, timers),
                Err(_) => return,
            }
        }
    }

    fn apply(&mut self, answer: Answer, registry: &Registry, timers: &mut Timers<TimerKey>) {
        let Answer { lookup, result } = answer;
        let Some(p) = self.pools.get_mut(lookup.pool) else {
            return;
        };
        let Some(t) = p.targets.get_mut(lookup.target) else {
            return;
        };
        // The slab key may have been reused by another pool since the lookup was sent.
        if t.host.as_ref() != Some(&(lookup.host.clone(), lookup.port)) {
            return;
        }
        t.lookup_pending = false;
        let was_resolving = std::mem::replace(&mut t.resolving, false);
        let mut stale_idle = Vec::new();
        match result {
            Ok(addr) if t.addr == Some(addr) => t.dns_failing = false,
            Ok(addr) => {
                match t.addr {
                    None => {
                        info!(upstream = p.name, target = %t.label, %addr, "upstream host name resolved")
                    }
                    Some(old) => {
                        info!(upstream = p.name, target = %t.label, %old, %addr, "upstream host name now resolves to another address")
                    }
                }
                t.addr = Some(addr);
                t.dns_failing = false;
                // Pooled connections still go to the old address.
                stale_idle = t.idle.drain(..).collect();
            }
            Err(error) => {
                let first = !std::mem::replace(&mut t.dns_failing, true);
                match (t.addr, first || was_resolving) {
                    (None, true) => {
                        warn!(upstream = p.name, target = %t.label, %error, "cannot resolve upstream host name: target out of rotation until it resolves")
                    }
                    (Some(addr), true) => {
                        warn!(upstream = p.name, target = %t.label, %error, %addr, "cannot resolve upstream host name: keeping its last address")
                    }
                    _ => {
                        debug!(upstream = p.name, target = %t.label, %error, "upstream host name still does not resolve")
                    }
                }
            }
        }
        for k in stale_idle {
            self.drop_idle_conn(k, registry, timers);
        }
        self.wake_waiters(lookup.pool);
    }
}
