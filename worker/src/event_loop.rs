//! The worker's event loop: one mio `Poll` for the master channel, the listener set, every
//! client and upstream socket; deadlines from [`Timers`]; sessions in a slab.

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll};
use slab::Slab;
use tracing::{debug, error, info, warn};
use zentinel_protocol::config::{ListenerProtocol, DNS_REFRESH_SECS};
use zentinel_protocol::messages::{MasterMessage, WorkerMessage, WorkerStart};
use zentinel_protocol::{Channel, ProtocolError};

use crate::accept::{Accepted, ListenerSet};
use crate::client_limit::ClientConnections;
use crate::counters::Counters;
use crate::ctx::{Ctx, Outcome};
use crate::fd_budget::FdBudget;
use crate::generation::{Candidate, Generation};
use crate::http::session::{HttpSession, LINGER};
use crate::sock::Ready;
use crate::tcp::TcpSession;
use crate::timers::{TimerId, TimerKey, Timers};
use crate::tokens::{self, Decoded, Side};
use crate::upstream::{Owner, Resolver, Upstreams, RESOLVE_AT_START};

/// Pause after EMFILE/ENFILE/ENOBUFS before accepting again: the open connections keep being
/// served meanwhile, and some of them will have closed.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Connections accepted per loop iteration before other events get their turn.
///
/// Small on purpose: it is also how connections spread over the workers. Every worker polls
/// the same accept queue, and a burst of connections (a load balancer or a client pool
/// opening 64 at once) would otherwise all go to the first worker to wake up, leaving the
/// others idle for the lifetime of those keep-alive connections. Taking a few and going back
/// to the event loop lets the other workers, woken for the same queue, take their share
/// (nginx's `multi_accept off` default does the same with one).
const ACCEPT_BUDGET: usize = 1;

enum Entry {
    Http(HttpSession),
    Tcp(TcpSession),
    /// Placeholder while a session is being converted (HTTP upgrade -> tunnel).
    Converting,
}

/// Everything sessions may borrow while the slab is borrowed too.
struct Shared {
    upstreams: Upstreams,
    timers: Timers<TimerKey>,
    counters: Counters,
    /// The configuration new connections get.
    current: Rc<Generation>,
    draining: bool,
    /// Test-only `respond-500` fault (see `fault_injection`), looked up once at start.
    respond_500: bool,
    /// Sessions to run again after the next poll (see [`Ctx::yield_turn`]).
    yielded: Vec<usize>,
}

impl Shared {
    fn ctx<'a>(&'a mut self, registry: &'a mio::Registry, now: Instant) -> Ctx<'a> {
        Ctx {
            registry,
            upstreams: &mut self.upstreams,
            timers: &mut self.timers,
            counters: &mut self.counters,
            current: &self.current,
            now,
            draining: self.draining,
            respond_500: self.respond_500,
            yielded: &mut self.yielded,
        }
    }
}

struct DrainState {
    deadline: Instant,
    timer: Option<TimerId>,
    /// Idle keep-alive connections were half-closed ahead of the deadline.
    idle_closed: bool,
}

pub struct Worker {
    poll: Poll,
    channel: Channel,
    channel_open: bool,
    worker_id: u32,
    /// Entry `i` of the set is listener `i` of `shared.current`.
    listeners: Option<ListenerSet>,
    /// Replaced generations some session may still run on: their pools stay until they go.
    retired: Vec<Weak<Generation>>,
    /// Some pool may be unreferenced by now (see [`Worker::retire_pools`]).
    pools_to_check: bool,
    /// Reloads installed so far (for logs).
    reloads: u64,
    sessions: Slab<Entry>,
    /// `limits { max-connections-per-client }`, counted per client IP.
    clients: ClientConnections,
    shared: Shared,
    max_connections: usize,
    /// Room the open-file limit leaves for sessions (see [`FdBudget`]).
    fd_budget: FdBudget,
    graceful_timeout: Duration,
    accept_pending: bool,
    accept_backoff: Option<TimerId>,
    /// A listener could not be registered again after an accept (see `accept_loop`).
    listeners_lost: bool,
    at_capacity_logged: bool,
    drain: Option<DrainState>,
    /// Next look-up of the upstream host names (only while some target has one).
    dns_timer: Option<TimerId>,
}

/// What keeps a worker from accepting more connections.
enum Capacity {
    MaxConnections,
    FileDescriptors,
}

enum Control {
    Continue,
    Exit,
}

impl Worker {
    /// Register everything in a new `Poll` and install the `Start` configuration. On failure
    /// the channel is handed back so the caller can still report the error to the master.
    pub fn new(
        channel: Channel,
        worker_id: u32,
        start: Candidate,
    ) -> Result<Self, Box<(io::Error, Channel)>> {
        let setup = || -> io::Result<Poll> {
            let poll = Poll::new()?;
            start.listeners.register(poll.registry())?;
            channel.stream().set_nonblocking(true)?;
            poll.registry().register(
                &mut SourceFd(&channel.as_raw_fd()),
                tokens::CHANNEL,
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(poll)
        };
        let poll = match setup() {
            Ok(p) => p,
            Err(e) => return Err(Box::new((e, channel))),
        };
        let mut timers = Timers::new();
        let mut upstreams = Upstreams::new();
        let (generation, set, max_connections, graceful_timeout) =
            build_generation(start, &mut upstreams, &[], poll.registry(), &mut timers);
        // Not serving yet: the first requests should find the names resolved.
        if upstreams.has_names() {
            start_resolver(&mut upstreams, poll.registry());
            upstreams.resolve_at_start(RESOLVE_AT_START, poll.registry(), &mut timers);
        }
        let fd_budget = FdBudget::measure().unwrap_or_else(|e| {
            warn!(error = %e, "cannot measure the open-file limit: sessions are not capped by it");
            FdBudget::unlimited()
        });
        debug!(
            descriptors = fd_budget.available(),
            "file descriptors available to sessions"
        );
        Ok(Worker {
            poll,
            channel,
            channel_open: true,
            worker_id,
            listeners: Some(set),
            retired: Vec::new(),
            pools_to_check: false,
            reloads: 0,
            sessions: Slab::new(),
            clients: ClientConnections::default(),
            shared: Shared {
                upstreams,
                timers,
                counters: Counters::default(),
                current: Rc::new(generation),
                draining: false,
                respond_500: crate::fault_injection::respond_500(),
                yielded: Vec::new(),
            },
            max_connections,
            fd_budget,
            graceful_timeout,
            // Connections may already be queued: try once right away.
            accept_pending: true,
            accept_backoff: None,
            listeners_lost: false,
            at_capacity_logged: false,
            drain: None,
            dns_timer: None,
        })
        .map(|mut w| {
            w.arm_dns_refresh(Instant::now());
            w
        })
    }

    fn send(&mut self, msg: &WorkerMessage) {
        if !self.channel_open {
            return;
        }
        if let Err(e) = self.channel.send(msg, &[]) {
            warn!(error = %e, "cannot send to master");
        }
    }

    /// Tell the master every listener is polled, then serve.
    pub fn run_ready(mut self) -> Result<(), Box<dyn std::error::Error>> {
        self.send(&WorkerMessage::Ready);
        #[cfg(feature = "fault-injection")]
        if crate::fault_injection::armed()
            == Some(crate::fault_injection::Fault::WorkerAbortAfterReady)
        {
            // Let the master see `Ready` and promote this worker, then die mid-service.
            let _ = self.channel.flush();
            std::thread::spawn(|| {
                std::thread::sleep(Duration::from_millis(200));
                error!("fault injection: worker-abort-after-ready");
                std::process::abort();
            });
        }
        self.run()
    }

    fn run(mut self) -> Result<(), Box<dyn std::error::Error>> {
        let mut events = Events::with_capacity(1024);
        // Frames that arrived with the handshake may already sit in the channel's buffer.
        if let Control::Exit = self.on_channel(Instant::now()) {
            return Ok(());
        }
        loop {
            if self.drain.is_some() && self.sessions.is_empty() && !self.channel_pending() {
                info!("drained: no session left, exiting");
                return Ok(());
            }
            let now = Instant::now();
            // A session that yielded has work left: only look at what else is ready.
            let timeout =
                if (self.can_accept() && self.accept_pending) || !self.shared.yielded.is_empty() {
                    Some(Duration::ZERO)
                } else {
                    self.shared.timers.poll_timeout(now)
                };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                error!(error = %e, "poll failed");
                return Err(e.into());
            }
            let now = Instant::now();
            // Those that yielded before this poll run after its events: the others' turn.
            let mut resumed = std::mem::take(&mut self.shared.yielded);
            for ev in events.iter() {
                match tokens::decode(ev.token()) {
                    Decoded::Channel => {
                        if let Control::Exit = self.on_channel(now) {
                            return Ok(());
                        }
                    }
                    Decoded::Listeners => self.accept_pending = true,
                    Decoded::Resolver => self
                        .shared
                        .upstreams
                        .on_resolved(self.poll.registry(), &mut self.shared.timers),
                    Decoded::Session(key, side) => {
                        self.on_session_event(key, side, Ready::from_event(ev), now)
                    }
                    Decoded::Upstream(id) => match self.shared.upstreams.owner(id) {
                        Some(Owner::Session(token)) => {
                            if let Decoded::Session(key, side) = tokens::decode(token) {
                                self.on_session_event(key, side, Ready::from_event(ev), now)
                            }
                        }
                        Some(Owner::Idle(key)) => self.shared.upstreams.on_idle_event(
                            key,
                            self.poll.registry(),
                            &mut self.shared.timers,
                        ),
                        Some(Owner::Probe(key)) => self.shared.upstreams.on_probe_event(
                            key,
                            now,
                            self.poll.registry(),
                            &mut self.shared.timers,
                        ),
                        Some(Owner::Shadow(key)) => self.shared.upstreams.on_shadow_event(
                            key,
                            self.poll.registry(),
                            &mut self.shared.timers,
                        ),
                        // Closed earlier in this batch of events.
                        None => {}
                    },
                    Decoded::Unknown => {}
                }
            }
            if let Control::Exit = self.fire_timers(Instant::now()) {
                return Ok(());
            }
            self.wake_waiting_sessions(Instant::now());
            self.resume_yielded(&mut resumed, Instant::now());
            if self.pools_to_check {
                self.retire_pools();
            }
            if self.accept_pending && self.can_accept() {
                self.accept_loop(Instant::now());
            }
        }
    }

    /// Output for the master still queued (only meaningful while the channel is open).
    fn channel_pending(&self) -> bool {
        self.channel_open && self.channel.has_pending_output()
    }

    fn can_accept(&self) -> bool {
        self.listeners.is_some() && self.accept_backoff.is_none()
    }

    fn on_channel(&mut self, now: Instant) -> Control {
        if !self.channel_open {
            return Control::Continue;
        }
        loop {
            match self.channel.recv() {
                Ok(Some(mut frame)) => {
                    let fds = frame.take_fds();
                    match frame.deserialize::<MasterMessage>() {
                        Ok(msg) => {
                            if let Control::Exit = self.on_message(msg, fds, now) {
                                return Control::Exit;
                            }
                        }
                        Err(e) => warn!(
                            error = %e,
                            fds = fds.len(),
                            "ignoring an invalid message from the master (closing the fds it carried)"
                        ),
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    match e {
                        ProtocolError::Closed => {
                            warn!("master channel closed: draining")
                        }
                        e => error!(error = %e, "master channel failed: draining"),
                    }
                    self.channel_open = false;
                    let _ = self
                        .poll
                        .registry()
                        .deregister(&mut SourceFd(&self.channel.as_raw_fd()));
                    self.start_drain(self.graceful_timeout, now);
                    return Control::Continue;
                }
            }
        }
        if self.channel_pending() {
            if let Err(e) = self.channel.flush() {
                warn!(error = %e, "cannot flush the master channel");
            }
        }
        Control::Continue
    }

    fn on_message(&mut self, msg: MasterMessage, fds: Vec<OwnedFd>, now: Instant) -> Control {
        if let MasterMessage::Reconfigure(ws) = msg {
            self.reconfigure(&ws, fds);
            return Control::Continue;
        }
        if !fds.is_empty() {
            // Closing them here is all that is needed: they are duplicates.
            warn!(
                message = msg.kind(),
                fds = fds.len(),
                "closing fds attached to a message that takes none"
            );
            drop(fds);
        }
        match msg {
            MasterMessage::StatusRequest => {
                let mut c = self.shared.counters.snapshot();
                c.active_connections = self.sessions.len() as u64;
                self.send(&WorkerMessage::Status(c));
            }
            MasterMessage::Drain { timeout_ms } => {
                self.start_drain(Duration::from_millis(timeout_ms), now);
            }
            MasterMessage::Stop => {
                info!(active = self.sessions.len(), "stop requested: exiting now");
                return Control::Exit;
            }
            MasterMessage::Hello(_) | MasterMessage::Start(_) => {
                warn!("ignoring a handshake message after startup");
            }
            // Handled above (it needs the fds).
            MasterMessage::Reconfigure(_) => {}
        }
        Control::Continue
    }

    /// `Reconfigure`: validate everything first (any error changes nothing and closes the
    /// received fds), then switch listeners and configuration for new connections.
    fn reconfigure(&mut self, ws: &WorkerStart, fds: Vec<OwnedFd>) {
        let generation = ws.generation;
        let refuse = |w: &mut Worker, reason: String| {
            warn!(
                config_generation = generation,
                %reason,
                "reconfigure refused: keeping the running configuration"
            );
            w.send(&WorkerMessage::ReconfigureFailed { reason });
        };
        if self.drain.is_some() {
            return refuse(self, "worker is draining".into());
        }
        if ws.worker_id != self.worker_id {
            return refuse(
                self,
                format!(
                    "Reconfigure is for worker {}, but this is worker {}",
                    ws.worker_id, self.worker_id
                ),
            );
        }
        let candidate = match Candidate::validate(ws, fds, "Reconfigure") {
            Ok(c) => c,
            Err(reason) => return refuse(self, reason),
        };
        // The new set goes into the poll before the old one leaves it, so there is no moment
        // without a listener polled. (No queued connection could be lost either way: the
        // master keeps every kernel socket open; ours are duplicates.)
        if let Err(e) = candidate.listeners.register(self.poll.registry()) {
            return refuse(self, format!("cannot poll the new listener set: {e}"));
        }
        let registry = self.poll.registry();
        let (generation_new, set, max_connections, graceful_timeout) = build_generation(
            candidate,
            &mut self.shared.upstreams,
            &self.shared.current.pools,
            registry,
            &mut self.shared.timers,
        );
        if let Some(old) = self.listeners.replace(set) {
            if let Err(e) = old.deregister(registry) {
                warn!(error = %e, "cannot deregister the previous listener set");
            }
            // Closes our duplicates and the old set's epoll instance (whose registrations go
            // with it even though the master still holds the sockets).
            drop(old);
        }
        let old = std::mem::replace(&mut self.shared.current, Rc::new(generation_new));
        self.retired.push(Rc::downgrade(&old));
        drop(old);
        self.max_connections = max_connections.max(1);
        self.graceful_timeout = graceful_timeout;
        // The new sockets may have connections queued already.
        self.accept_pending = true;
        self.at_capacity_logged = false;
        self.reloads += 1;
        self.pools_to_check = true;
        self.retire_pools();
        // New names are looked up off the loop; exchanges wait for them (see `Pick::Wait`).
        if self.shared.upstreams.has_names() {
            start_resolver(&mut self.shared.upstreams, self.poll.registry());
            self.shared.upstreams.request_lookups(false);
        }
        self.arm_dns_refresh(Instant::now());
        let listeners: Vec<&str> = self
            .shared
            .current
            .listeners
            .iter()
            .map(|l| l.name.as_str())
            .collect();
        info!(
            config_generation = generation,
            reloads = self.reloads,
            ?listeners,
            upstreams = self.shared.current.pools.len(),
            active = self.sessions.len(),
            "reconfigured: new connections use the new configuration"
        );
        self.send(&WorkerMessage::Reconfigured);
    }

    /// Drop generations no session runs on any more, then the upstream pools that neither
    /// the current nor a remaining generation refers to (once no connection to them is
    /// checked out).
    fn retire_pools(&mut self) {
        self.retired.retain(|w| w.strong_count() > 0);
        let mut keep: HashSet<usize> = self.shared.current.pools.iter().copied().collect();
        for g in self.retired.iter().filter_map(Weak::upgrade) {
            keep.extend(g.pools.iter().copied());
        }
        let busy = self.shared.upstreams.retire_unused(
            |k| keep.contains(&k),
            self.poll.registry(),
            &mut self.shared.timers,
        );
        self.pools_to_check = busy > 0 || !self.retired.is_empty();
    }

    fn start_drain(&mut self, timeout: Duration, now: Instant) {
        let deadline = now + timeout;
        let active = self.sessions.len() as u64;
        self.send(&WorkerMessage::Draining {
            active_connections: active,
        });
        if let Some(d) = &mut self.drain {
            if deadline < d.deadline {
                d.deadline = deadline;
                let at = drain_timer_at(deadline, d.idle_closed, now);
                self.shared
                    .timers
                    .set(&mut d.timer, Some(at), TimerKey::Drain);
            }
            return;
        }
        info!(active, timeout_ms = timeout.as_millis() as u64, "draining");
        if let Some(set) = self.listeners.take() {
            if let Err(e) = set.deregister(self.poll.registry()) {
                warn!(error = %e, "cannot deregister the listener set");
            }
            // Dropping the set closes only our duplicates: the kernel sockets and their
            // accept queues stay with the other workers.
            drop(set);
        }
        self.accept_pending = false;
        if let Some(id) = self.accept_backoff.take() {
            self.shared.timers.cancel(id);
        }
        self.shared
            .upstreams
            .close_all_idle(self.poll.registry(), &mut self.shared.timers);
        self.shared.draining = true;
        let mut timer = None;
        self.shared.timers.set(
            &mut timer,
            Some(drain_timer_at(deadline, false, now)),
            TimerKey::Drain,
        );
        self.drain = Some(DrainState {
            deadline,
            timer,
            idle_closed: false,
        });
    }

    /// Give an event to every session a pool woke (a connection under its cap was released,
    /// or a host name resolved): each tries to connect again.
    fn wake_waiting_sessions(&mut self, now: Instant) {
        // A woken session may release a connection and wake others: bounded rounds, in case.
        for _ in 0..64 {
            let woken = self.shared.upstreams.take_wakeups();
            if woken.is_empty() {
                return;
            }
            for token in woken {
                if let Decoded::Session(key, side) = tokens::decode(token) {
                    self.on_session_event(key, side, Ready::default(), now);
                }
            }
        }
    }

    /// Run again the sessions that yielded their turn (see [`Ctx::yield_turn`]). A key whose
    /// session ended meanwhile is skipped, or gets a harmless spurious run if reused.
    fn resume_yielded(&mut self, keys: &mut Vec<usize>, now: Instant) {
        keys.sort_unstable();
        keys.dedup();
        for key in keys.drain(..) {
            self.on_session_event(key, Side::Client, Ready::default(), now);
        }
    }

    /// Keep the host-name refresh timer armed while any pool has a host-name target.
    fn arm_dns_refresh(&mut self, now: Instant) {
        let want = self.shared.upstreams.has_names().then(|| {
            self.dns_timer
                .map_or(now + Duration::from_secs(DNS_REFRESH_SECS), |t| t.at())
        });
        self.shared
            .timers
            .set(&mut self.dns_timer, want, TimerKey::DnsRefresh);
    }

    fn fire_timers(&mut self, now: Instant) -> Control {
        while let Some((id, key)) = self.shared.timers.pop_expired(now) {
            match key {
                TimerKey::Session(k) => self.on_session_timer(k, id, now),
                TimerKey::IdleUpstream(k) => self.shared.upstreams.on_idle_timer(
                    k,
                    id,
                    now,
                    self.poll.registry(),
                    &mut self.shared.timers,
                ),
                TimerKey::Shadow(key) => self.shared.upstreams.on_shadow_timer(
                    key,
                    self.poll.registry(),
                    &mut self.shared.timers,
                ),
                TimerKey::Health(pool, target) => self.shared.upstreams.on_health_timer(
                    pool,
                    target,
                    id,
                    now,
                    self.poll.registry(),
                    &mut self.shared.timers,
                ),
                TimerKey::DnsRefresh => {
                    if self.dns_timer == Some(id) {
                        self.dns_timer = None;
                        self.shared.upstreams.request_lookups(true);
                        self.arm_dns_refresh(now);
                    }
                }
                TimerKey::AcceptBackoff => {
                    if self.accept_backoff == Some(id) {
                        self.accept_backoff = None;
                        self.accept_pending = true;
                        if self.listeners_lost {
                            self.reregister_listeners(now);
                        }
                    }
                }
                TimerKey::Drain => {
                    let Some(d) = &mut self.drain else { continue };
                    if d.timer != Some(id) {
                        continue;
                    }
                    d.timer = None;
                    if now >= d.deadline {
                        warn!(
                            active = self.sessions.len(),
                            "drain deadline reached: closing remaining connections"
                        );
                        return Control::Exit;
                    }
                    // Shortly before the deadline: half-close idle keep-alive connections so
                    // a request racing with the close sees EOF, not a reset at exit.
                    d.idle_closed = true;
                    let deadline = d.deadline;
                    let mut t = None;
                    self.shared
                        .timers
                        .set(&mut t, Some(deadline), TimerKey::Drain);
                    if let Some(d) = &mut self.drain {
                        d.timer = t;
                    }
                    self.close_idle_sessions(now);
                }
            }
        }
        Control::Continue
    }

    fn close_idle_sessions(&mut self, now: Instant) {
        let keys: Vec<usize> = self
            .sessions
            .iter()
            .filter(|(_, e)| matches!(e, Entry::Http(h) if h.is_idle()))
            .map(|(k, _)| k)
            .collect();
        for key in keys {
            let registry = self.poll.registry();
            let mut ctx = self.shared.ctx(registry, now);
            let out = match self.sessions.get_mut(key) {
                Some(Entry::Http(h)) => h.close_idle(&mut ctx),
                _ => continue,
            };
            self.handle_outcome(key, out, now);
        }
    }

    fn on_session_event(&mut self, key: usize, side: Side, r: Ready, now: Instant) {
        let registry = self.poll.registry();
        let mut ctx = self.shared.ctx(registry, now);
        let out = match self.sessions.get_mut(key) {
            Some(Entry::Http(h)) => h.on_ready(side, r, &mut ctx),
            Some(Entry::Tcp(t)) => t.on_ready(side, r, &mut ctx),
            _ => return,
        };
        self.handle_outcome(key, out, now);
    }

    fn on_session_timer(&mut self, key: usize, id: TimerId, now: Instant) {
        let registry = self.poll.registry();
        let mut ctx = self.shared.ctx(registry, now);
        let out = match self.sessions.get_mut(key) {
            Some(Entry::Http(h)) => h.on_timer(id, &mut ctx),
            Some(Entry::Tcp(t)) => t.on_timer(id, &mut ctx),
            _ => return,
        };
        self.handle_outcome(key, out, now);
    }

    fn handle_outcome(&mut self, key: usize, out: Outcome, now: Instant) {
        match out {
            Outcome::Continue => {}
            Outcome::Done => self.remove_session(key, now),
            Outcome::Upgrade => {
                let Some(slot) = self.sessions.get_mut(key) else {
                    return;
                };
                let entry = std::mem::replace(slot, Entry::Converting);
                let registry = self.poll.registry();
                let mut ctx = self.shared.ctx(registry, now);
                let tunnel = match entry {
                    Entry::Http(h) => h.into_tunnel(&mut ctx),
                    _ => None,
                };
                match tunnel {
                    Some(mut t) => {
                        debug!(key, "connection upgraded: tunnelling");
                        let out = t.on_ready(Side::Client, Ready::default(), &mut ctx);
                        self.sessions[key] = Entry::Tcp(t);
                        if out != Outcome::Continue {
                            self.remove_session(key, now);
                        }
                    }
                    None => self.remove_session(key, now),
                }
            }
        }
    }

    fn remove_session(&mut self, key: usize, now: Instant) {
        let Some(entry) = self.sessions.try_remove(key) else {
            return;
        };
        self.clients.release(key);
        let registry = self.poll.registry();
        let mut ctx = self.shared.ctx(registry, now);
        match entry {
            Entry::Http(h) => h.close(&mut ctx),
            Entry::Tcp(t) => t.close(&mut ctx),
            Entry::Converting => {}
        }
        self.shared.counters.c.active_connections = self.sessions.len() as u64;
        if self.at_capacity_logged {
            // A slot freed up: queued connections can be taken again.
            self.accept_pending = true;
        }
    }

    fn accept_loop(&mut self, now: Instant) {
        let mut took_from = Vec::new();
        self.accept_some(now, &mut took_from);
        // Step to the back of each listener's queue of exclusive waiters, so the next
        // connection wakes another idle worker (see `ListenerSet::requeue`).
        let Some(set) = &self.listeners else {
            return;
        };
        let mut failed = None;
        for idx in took_from {
            if let Err(e) = set.requeue(self.poll.registry(), idx) {
                failed = Some(e);
            }
        }
        if let Some(e) = failed {
            error!(error = %e, "cannot re-register a listener: retrying after a back-off");
            self.listeners_lost = true;
            self.back_off_accept(now);
        }
    }

    /// Accept up to [`ACCEPT_BUDGET`] connections; `took_from` gets the listeners that gave one.
    fn accept_some(&mut self, now: Instant, took_from: &mut Vec<usize>) {
        let ready = match self.listeners.as_mut().map(|s| s.ready()) {
            None => {
                self.accept_pending = false;
                return;
            }
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                error!(error = %e, "epoll_wait on the listener set failed");
                self.back_off_accept(now);
                return;
            }
        };
        let mut budget = ACCEPT_BUDGET;
        for idx in ready {
            loop {
                if let Some(limit) = self.at_capacity() {
                    if !self.at_capacity_logged {
                        match limit {
                            Capacity::MaxConnections => warn!(
                                max_connections = self.max_connections,
                                "connection limit reached: not accepting until a connection closes"
                            ),
                            Capacity::FileDescriptors => warn!(
                                sessions = self.sessions.len(),
                                descriptors = self.fd_budget.available(),
                                "open-file limit reached: not accepting until a connection closes"
                            ),
                        }
                        self.at_capacity_logged = true;
                    }
                    self.accept_pending = false;
                    return;
                }
                self.at_capacity_logged = false;
                if budget == 0 {
                    self.accept_pending = true;
                    return;
                }
                budget -= 1;
                let res = match &self.listeners {
                    Some(set) => set.accept(idx),
                    None => return,
                };
                match res {
                    Accepted::Conn {
                        stream,
                        peer,
                        listener,
                    } => {
                        if !took_from.contains(&idx) {
                            took_from.push(idx);
                        }
                        self.new_session(stream, peer, listener, now)
                    }
                    Accepted::Empty => break,
                    Accepted::Transient(e) => {
                        self.shared.counters.c.accept_errors += 1;
                        debug!(error = %e, "accept: transient error");
                    }
                    Accepted::Exhausted(e) => {
                        self.shared.counters.c.accept_errors += 1;
                        warn!(error = %e, backoff_ms = ACCEPT_BACKOFF.as_millis() as u64, "accept failed: backing off");
                        self.back_off_accept(now);
                        return;
                    }
                }
            }
        }
        self.accept_pending = false;
    }

    /// A listener's registration was lost (a failed re-register): add back what is missing.
    fn reregister_listeners(&mut self, now: Instant) {
        let Some(set) = &self.listeners else {
            self.listeners_lost = false;
            return;
        };
        match set.register_missing(self.poll.registry()) {
            Ok(()) => {
                info!("listeners registered again");
                self.listeners_lost = false;
            }
            Err(e) => {
                error!(error = %e, "cannot re-register the listeners: retrying after a back-off");
                self.back_off_accept(now);
            }
        }
    }

    /// Which limit stops another accept, if any. Idle pooled upstream connections are closed
    /// first when they are all that stands in the way: a client beats a spare connection.
    fn at_capacity(&mut self) -> Option<Capacity> {
        if self.sessions.len() >= self.max_connections {
            return Some(Capacity::MaxConnections);
        }
        let registry = self.poll.registry();
        let shared = &mut self.shared;
        while !self
            .fd_budget
            .allows_one_more(self.sessions.len(), shared.upstreams.idle_count())
        {
            if !shared
                .upstreams
                .close_oldest_idle(registry, &mut shared.timers)
            {
                return Some(Capacity::FileDescriptors);
            }
        }
        None
    }

    fn back_off_accept(&mut self, now: Instant) {
        let mut t = None;
        self.shared
            .timers
            .set(&mut t, Some(now + ACCEPT_BACKOFF), TimerKey::AcceptBackoff);
        self.accept_backoff = t;
        self.accept_pending = true;
    }

    fn new_session(
        &mut self,
        stream: std::net::TcpStream,
        peer: SocketAddr,
        listener: usize,
        now: Instant,
    ) {
        self.shared.counters.c.accepted_total += 1;
        if let Err(e) = stream.set_nonblocking(true) {
            warn!(peer = %peer, error = %e, "cannot make an accepted socket non-blocking");
            return;
        }
        let _ = stream.set_nodelay(true);
        let mut stream = mio::net::TcpStream::from_std(stream);
        let generation = Rc::clone(&self.shared.current);
        let Some(entry) = generation.listeners.get(listener) else {
            return;
        };
        let (lctx, proto) = (entry.ctx, entry.protocol);
        let entry = self.sessions.vacant_entry();
        let key = entry.key();
        let per_client = generation.limits.max_connections_per_client;
        if !self.clients.admit(key, peer.ip(), per_client) {
            // Dropping the stream closes it: the client's other connections go on.
            self.shared.counters.c.client_errors += 1;
            debug!(peer = %peer, limit = per_client, "max-connections-per-client reached: connection closed");
            return;
        }
        let registry = self.poll.registry();
        if let Err(e) = registry.register(
            &mut stream,
            tokens::session(key, Side::Client),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!(peer = %peer, error = %e, "cannot register an accepted socket");
            self.clients.release(key);
            return;
        }
        let mut ctx = self.shared.ctx(registry, now);
        match proto {
            ListenerProtocol::Http => {
                let Some(mut s) =
                    HttpSession::new(key, peer, stream, Rc::clone(&generation), listener, now)
                else {
                    self.clients.release(key);
                    return;
                };
                let out = s.on_ready(Side::Client, Ready::default(), &mut ctx);
                entry.insert(Entry::Http(s));
                self.handle_outcome(key, out, now);
            }
            ListenerProtocol::Tcp => {
                let Some(pool) = lctx.upstream else {
                    let _ = registry.deregister(&mut stream);
                    self.clients.release(key);
                    return;
                };
                match TcpSession::connect(key, peer, stream, pool, &mut ctx) {
                    Some(mut s) => {
                        let out = s.on_ready(Side::Client, Ready::default(), &mut ctx);
                        entry.insert(Entry::Tcp(s));
                        self.handle_outcome(key, out, now);
                    }
                    None => {
                        // Every target's failure was logged and counted. The client stream
                        // was moved into the attempt and is closed with it.
                        warn!(peer = %peer, "tcp: no upstream target could be connected");
                        self.clients.release(key);
                    }
                }
            }
        }
        self.shared.counters.c.active_connections = self.sessions.len() as u64;
    }
}

/// Start the worker's DNS lookup threads unless they run already. Without them host-name
/// targets stay out of rotation, which is logged; the worker still serves the others.
fn start_resolver(upstreams: &mut Upstreams, registry: &mio::Registry) {
    if upstreams.has_resolver() {
        return;
    }
    match Resolver::start(registry, tokens::RESOLVER) {
        Ok(r) => upstreams.set_resolver(r),
        Err(e) => {
            error!(error = %e, "cannot start the DNS lookup threads: host-name targets stay unresolved")
        }
    }
}

/// When the drain timer should fire: a linger before the deadline to half-close idle
/// connections (unless done already or the drain is shorter than that), then the deadline.
fn drain_timer_at(deadline: Instant, idle_closed: bool, now: Instant) -> Instant {
    if idle_closed {
        return deadline;
    }
    match deadline.checked_sub(LINGER) {
        Some(t) if t > now => t,
        _ => deadline,
    }
}

/// Install a validated candidate: its pools (reusing unchanged ones among `current_pools`),
/// with routes and listeners resolved to pool keys. Returns the generation, the listener set
/// (registered by the caller), `max_connections` and the graceful shutdown timeout.
fn build_generation(
    c: Candidate,
    upstreams: &mut Upstreams,
    current_pools: &[usize],
    registry: &mio::Registry,
    timers: &mut Timers<TimerKey>,
) -> (Generation, ListenerSet, usize, Duration) {
    let keys = upstreams.install(c.pools, current_pools, registry, timers);
    // Start or reload: access-log files are reopened by path (log rotation).
    crate::access_log::reopen();
    let mut router = c.router;
    router.map_upstreams(&keys);
    let mut listeners = c.entries;
    for l in &mut listeners {
        l.ctx.upstream = l.ctx.upstream.and_then(|i| keys.get(i).copied());
    }
    let mut head_limits = c.limits.clone();
    if let Some(max) = router.max_body_override() {
        head_limits.max_body_size_bytes = head_limits.max_body_size_bytes.max(max);
    }
    let generation = Generation {
        router,
        head_limits,
        limits: c.limits,
        trace_id_format: c.trace_id_format,
        listeners,
        pools: keys,
        config_view: c.config_view,
    };
    (
        generation,
        c.listeners,
        c.max_connections.max(1),
        c.graceful_timeout,
    )
}
