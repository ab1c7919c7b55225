//! The worker's event loop: one mio `Poll` for the master channel, the listener set, every
//! client and upstream socket; deadlines from [`Timers`]; sessions in a slab.
//!
//! This file holds the worker's state, its start and the loop itself (poll, then channel,
//! timers, sockets); `control` handles the master's messages and reloads, `drain` the
//! graceful stop, `accepting` new connections, `sessions` the sessions' events.

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
use crate::drain_schedule::{self, DrainSchedule, SpreadKind};
use crate::fd_budget::FdBudget;
use crate::filters::Segments;
use crate::generation::{Candidate, DrainSettings, Generation};
use crate::http::session::{HttpSession, LINGER};
use crate::http2::H2Conn;
use crate::sock::Ready;
use crate::tcp::TcpSession;
use crate::timers::{TimerId, TimerKey, Timers};
use crate::tls_listener::Resumption;
use crate::tokens::{self, Decoded, Side};
use crate::upstream::{Owner, Resolver, Upstreams, RESOLVE_AT_START};

mod accepting;
mod control;
mod drain;
mod sessions;

use control::{build_generation, start_resolver};

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
///
/// Measured against 16 (2 workers, 3 alternating rounds, medians): 16 was slower everywhere,
/// 31,161 against 36,601 keep-alive 1 KiB req/s and 14,174 against 15,369 connections per
/// second with a new connection per request: one worker took bursts the other then idled for.
const ACCEPT_BUDGET: usize = 1;
/// Events an iteration must have handled for each connection accepted beyond
/// [`ACCEPT_BUDGET`]: a busy worker's iterations are long (a batch of 1,024 events takes
/// milliseconds), and one accept per iteration then starves the accept queue. Measured with
/// 10,000 keep-alive clients connecting at once to 2 workers: with a fixed budget of 1 the
/// workers held 8,500 connections after 5 s with the rest (the listen queue full, 1,024)
/// waiting, and 2,549 clients got no response within 10 s; with one more accept per 16
/// events, (an iteration of 1,024 events accepts 65) none waited. An idle worker's
/// iterations are short, so a burst still spreads over the workers one at a time.
const EVENTS_PER_EXTRA_ACCEPT: usize = 16;

/// Connections the next accept turn may take after an iteration that handled `events`.
fn accept_budget(events: usize) -> usize {
    ACCEPT_BUDGET + events / EVENTS_PER_EXTRA_ACCEPT
}

enum Entry {
    Http(HttpSession),
    Tcp(TcpSession),
    /// An HTTP/2 connection; each of its streams is an `Http` entry over a pipe.
    H2(Box<H2Conn>),
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
    /// Upstream-side work woken through pipes (see `wakeups`), run after the next poll.
    woken: Vec<crate::wakeups::Wake>,
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
    /// What to close when (`crate::drain_schedule`).
    schedule: DrainSchedule,
    /// Armed at the schedule's next wake-up.
    timer: Option<TimerId>,
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
    drain_settings: DrainSettings,
    accept_pending: bool,
    /// What the next accept turn may take (see [`accept_budget`]).
    accept_budget: usize,
    accept_backoff: Option<TimerId>,
    /// A listener could not be registered again after an accept (see `accept_loop`).
    listeners_lost: bool,
    at_capacity_logged: bool,
    drain: Option<DrainState>,
    /// Next look-up of the upstream host names (only while some target has one).
    dns_timer: Option<TimerId>,
    /// The master's TLS session-ticket keys, shared by every TLS listener's `ServerConfig` of
    /// every generation (replaced in place when the master rotates them), and the session
    /// cache every worker shares (mapped at most once).
    resumption: Resumption,
    /// The filters' segments the master handed for the next `Reconfigure` (see
    /// `MasterMessage::FilterSegments`).
    pending_segments: Segments,
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
    /// Register everything in a new `Poll` and install the `Start` configuration (validated
    /// with `resumption`). On failure the channel is handed back so the caller can still
    /// report the error to the master.
    pub fn new(
        channel: Channel,
        worker_id: u32,
        start: Candidate,
        resumption: Resumption,
    ) -> Result<Self, Box<(io::Error, Channel)>> {
        let setup = || -> io::Result<Poll> {
            let poll = Poll::new()?;
            start.listeners.register(poll.registry())?;
            // Made now so the helper threads started later (Redis checks) can wake the loop.
            crate::wakeups::helper_waker(poll.registry())?;
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
        let (generation, set, max_connections, drain_settings) =
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
        crate::sock::splice::set_limit(fd_budget.available());
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
                woken: Vec::new(),
            },
            max_connections,
            fd_budget,
            drain_settings,
            // Connections may already be queued: try once right away.
            accept_pending: true,
            accept_budget: ACCEPT_BUDGET,
            accept_backoff: None,
            listeners_lost: false,
            at_capacity_logged: false,
            drain: None,
            dns_timer: None,
            resumption,
            pending_segments: Segments::default(),
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
            crate::wakeups::take_into(&mut self.shared.yielded, &mut self.shared.woken);
            let now = Instant::now();
            // A session that yielded has work left: only look at what else is ready.
            let timeout = if (self.can_accept() && self.accept_pending)
                || !self.shared.yielded.is_empty()
                || !self.shared.woken.is_empty()
            {
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
            self.accept_budget = accept_budget(events.iter().count());
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
                    Decoded::Resolver => {
                        self.shared
                            .upstreams
                            .on_resolved(self.poll.registry(), &mut self.shared.timers);
                        crate::filters::wake_redis_answered();
                    }
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
                        Some(Owner::H2(key)) => self.shared.upstreams.on_h2_event(
                            key,
                            Ready::from_event(ev),
                            now,
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
            self.run_woken(Instant::now());
            // Sessions those runs woke go now rather than one poll later.
            crate::wakeups::take_into(&mut resumed, &mut self.shared.woken);
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
                TimerKey::H2Upstream(key) => self.shared.upstreams.on_h2_timer(
                    key,
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
                    let event = drain_schedule::Event::Tick { now };
                    if let Control::Exit = self.drain_event(event, now) {
                        return Control::Exit;
                    }
                }
            }
        }
        Control::Continue
    }
}
