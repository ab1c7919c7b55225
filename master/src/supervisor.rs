//! The master's supervision loop: starts the workers, restarts the ones that die, and stops
//! them all on a signal.
//!
//! Everything happens on one thread, in one `mio` loop, over three kinds of sources:
//! - a signalfd for SIGTERM, SIGQUIT, SIGINT, SIGHUP, SIGUSR2 and SIGCHLD (blocked process-wide by
//!   [`block_signals`] before any child exists, so none is lost or runs a handler);
//! - each worker's channel (non-blocking), which carries the handshake, status and drain
//!   messages and whose EOF says the worker is gone;
//! - the control socket and its clients (`crate::control`; requests are carried out in
//!   [`control`] here, as state machines driven by worker replies and deadlines);
//! - a binary upgrade's readiness pipe (old master) and adopted workers' pidfds (new master;
//!   see [`upgrade`]);
//! - deadlines: handshake timeouts, restart backoff, the kill deadline of a stop, control
//!   request timeouts.
//!
//! Each worker process has a role: the *current* worker of its slot (restarted with backoff
//! when it dies), the *successor* a `worker restart` is starting (its failure fails only that
//! request), or *retired* (replaced or surplus; draining, never restarted).
//!
//! The handshake runs inside the loop, as a state machine per worker, so that a slow or stuck
//! worker never keeps the master from reacting to signals or to other workers.
//!
//! One job per file: this one holds the loop and its state; [`workers`] what is known of each
//! worker and slot; [`channel`] worker channel I/O and messages; [`lifecycle`] spawn, retire,
//! reap; [`stop`]; [`signals`]; [`deadlines`]; [`notify`] (systemd, pid file); the control
//! commands [`control`] (status, restart, stop), [`reload`], [`answers`] (request ids);
//! [`draining`] (`max-draining-generations`, the drain status);
//! [`metrics`]; [`tickets`] (the TLS session-ticket keys: rotation, and what workers and a
//! successor get, the shared TLS session cache included); [`ocsp`] (fetched OCSP responses
//! refreshed); and the upgrade's adapters, each carrying out one state machine of
//! `crate::upgrade`: [`handover`] (old master), [`adoption`] and [`takeover`] (new master),
//! [`rolling`] (rolling replacement and canary), with [`upgrade`] their shared parts.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use nix::errno::Errno;
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tracing::{debug, error, info, warn};
use zentinel_protocol::channel::check_version;
use zentinel_protocol::config::ProxyConfig;
use zentinel_protocol::config_source::ConfigSource;
use zentinel_protocol::control::{ControlRequest, ControlResponse};
use zentinel_protocol::messages::v2::MasterMessageV2;
use zentinel_protocol::messages::v3::MasterMessageV3;
use zentinel_protocol::messages::{
    Hello, Http2Refusals, MasterMessage, WorkerCounters, WorkerMessage, WorkerStart,
    FIRST_PROTOCOL_WITH_FILTER_SEGMENTS, PROTOCOL_VERSION,
};
use zentinel_protocol::{Channel, ProtocolError};

use crate::backoff::Backoff;
use crate::control::{ControlServer, ControlSocket};
use crate::draining_generations::DrainingGenerations;
use crate::filter_shm::FilterSegments;
use crate::gatherer::Gatherer;
use crate::listeners::BoundListener;
use crate::metrics::MetricsServer;
use crate::ocsp_fetch::Stapler;
use crate::ownership::Ownership;
use crate::request_ids::{Outstanding, RequestIds};
use crate::session_cache::SessionCache;
use crate::systemd;
use crate::ticket_keys::TicketKeyRotation;
use crate::upgrade::rolling::RollingEvent;
use crate::worker_process::{spawn_worker, Executable, WorkerArgs};

/// Longest time from spawn to `Ready`.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Grace after the drain deadline before stragglers are killed.
pub const DRAIN_KILL_GRACE: Duration = Duration::from_secs(2);
/// Grace after `Stop` before stragglers are killed.
pub const FAST_STOP_GRACE: Duration = Duration::from_secs(1);
/// A worker whose channel closed but which has not exited after this long is killed.
pub const EOF_KILL_GRACE: Duration = Duration::from_secs(2);
/// How often running workers are asked for their counters.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(5);

/// Longest wait at exit for control clients to take their last responses.
const EXIT_FLUSH_BUDGET: Duration = Duration::from_millis(500);

const SIGNAL_TOKEN: Token = Token(0);
const CONTROL_TOKEN: Token = Token(1);
/// The read end of a successor master's readiness pipe (old master of an upgrade), or the
/// previous master's pidfd (new master, until it confirmed): never both in one process.
const UPGRADE_PIPE_TOKEN: Token = Token(2);
/// Worker channels, pidfds and control clients share the tokens from here on; none is ever
/// reused.
const FIRST_WORKER_TOKEN: usize = 3;

mod adoption;
mod answers;
mod channel;
mod control;
mod deadlines;
mod draining;
mod filters;
mod handover;
mod lifecycle;
mod metrics;
mod notify;
mod ocsp;
mod reload;
mod rolling;
mod signals;
mod stop;
mod takeover;
mod tickets;
mod upgrade;
mod workers;

use lifecycle::worker_config;
pub use workers::WorkerState;
use workers::{
    close_channel, deregister_channel, flush, kill_process, register_channel, send,
    update_interest, NewWorker, PendingDone, ReconfigureKind, Role, WorkerProcess, WorkerSlot,
    FIRST_PROTOCOL_WITH_REQUEST_IDS,
};

pub use upgrade::Inherited;

/// The signals the master handles through its signalfd.
pub fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for signal in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGHUP,
        Signal::SIGCHLD,
        Signal::SIGUSR2,
    ] {
        set.add(signal);
    }
    set
}

/// Block the handled signals and open a signalfd for them. Call first thing in `main`, before
/// any thread or child exists: the mask is per thread, inherited by threads created later.
pub fn block_signals() -> nix::Result<SignalFd> {
    let set = handled_signals();
    set.thread_block()?;
    // An ignored signal is discarded, never queued, so the signalfd would not see it either.
    // Shells start background jobs with SIGINT and SIGQUIT ignored and nohup ignores SIGHUP;
    // an ignored SIGCHLD would even make the kernel reap workers behind our back.
    for signal in set.iter() {
        crate::sys::default_disposition(signal)?;
    }
    SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
}

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("cannot set up the event loop: {0}")]
    Setup(#[source] io::Error),
    #[error("event loop failed: {0}")]
    EventLoop(#[source] io::Error),
    #[error("worker {worker_id} failed to start: {reason}")]
    StartupFailed { worker_id: u32, reason: String },
    /// A successor master gave up before confirming readiness (the previous one keeps
    /// running; `main` says "cannot take over from the previous master").
    #[error("abandoned before confirming readiness: {0}")]
    TakeoverFailed(String),
}

/// What the supervisor needs to run one configuration.
#[derive(Debug)]
pub struct SupervisorSetup {
    pub config: ProxyConfig,
    /// Where the configuration came from, for logs and status.
    pub config_name: String,
    /// The text `config` was parsed from (its `main_path` is the file to re-read on reload;
    /// `None`: the embedded default). A binary upgrade hands it to the next master.
    pub config_source: ConfigSource,
    /// Bound listeners, in the order of `config.listeners`.
    pub listeners: Vec<BoundListener>,
    pub executable: Executable,
    /// From [`block_signals`].
    pub signals: SignalFd,
    /// How this master logs; workers get the same settings on their command line.
    pub log: crate::logging::LogSettings,
    /// `--log-level`/`--verbose` as given on the command line, handed to a successor master
    /// (otherwise it takes the level from the configuration text, like this one did).
    pub explicit_log_level: Option<String>,
    /// Master generation, starting at 1 (a future binary upgrade increments it; a reload
    /// keeps it).
    pub generation: u64,
    /// The bound control socket; `None` runs without a control plane.
    pub control: Option<ControlSocket>,
    /// What a successor master took over from its predecessor (binary upgrade); `None` for a
    /// fresh start.
    pub inherited: Option<Inherited>,
    /// The bound (or inherited) Prometheus endpoint; `None`: metrics are off.
    pub metrics: Option<MetricsServer>,
    /// Master-side counters: zero on a fresh start, the predecessor's after an upgrade.
    pub master_metrics: zentinel_protocol::state::MasterMetrics,
    /// The TLS session-ticket keys: fresh at a fresh start, the predecessor's after an
    /// upgrade (when it handed them on).
    pub ticket_keys: TicketKeyRotation,
    /// The OCSP responses fetched for `config` so far, and when each is fetched again.
    pub ocsp: Stapler,
    /// The TLS session cache every worker shares: made before any worker starts when a TLS
    /// listener resumes sessions, the predecessor's after an upgrade (when it handed it on).
    pub session_cache: Option<SessionCache>,
    /// The filters' shared segments: made before any worker starts, the predecessor's after
    /// an upgrade (when it handed them on).
    pub filter_segments: FilterSegments,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopKind {
    /// SIGTERM / SIGQUIT: drain.
    Graceful,
    /// SIGINT, or a failed start-up: stop now.
    Fast,
}

#[derive(Debug)]
enum Phase {
    /// Not every worker has been ready yet; any worker failure aborts the start.
    Starting,
    Running,
    Stopping {
        kind: StopKind,
        kill_at: Instant,
        failure: Option<SupervisorError>,
    },
}

/// The running master.
#[derive(Debug)]
pub struct Supervisor {
    config: ProxyConfig,
    config_name: String,
    config_source: ConfigSource,
    listeners: Vec<BoundListener>,
    executable: Executable,
    signals: SignalFd,
    log: crate::logging::LogSettings,
    explicit_log_level: Option<String>,
    generation: u64,
    poll: Poll,
    slots: Vec<WorkerSlot>,
    processes: BTreeMap<Token, WorkerProcess>,
    next_token: usize,
    phase: Phase,
    next_status_at: Instant,
    started_at: Instant,
    control: Option<ControlServer>,
    pending_status: Vec<control::PendingStatus>,
    /// Where the ids of requests to workers come from (unique across masters).
    request_ids: RequestIds,
    /// The last poll of every worker's counters (metrics), while its answers come in.
    status_poll: Option<Gatherer<Token, ()>>,
    reload: Option<reload::ReloadOp>,
    /// Clients of `Stop` requests, told `Done` right before exit.
    stop_clients: Vec<Token>,
    /// The previous master's executable (after a binary upgrade): a failed rolling upgrade
    /// puts workers back on it.
    previous_executable: Option<Executable>,
    /// A rolling upgrade from this master was rolled back: its workers run the previous
    /// executable again, and so do the ones it starts from now on (a crash restart must not
    /// bring back the binary that just failed).
    workers_on_previous: bool,
    /// A binary upgrade in progress (handing over, or replacing workers).
    upgrade: Option<upgrade::UpgradeOp>,
    /// Taking over from a previous master until readiness is confirmed.
    inherited: Option<Inherited>,
    adoption: Option<adoption::Adoption>,
    /// pidfd token -> worker token (adopted workers).
    pidfds: BTreeMap<Token, Token>,
    /// The successor master confirmed readiness: leave without touching anything.
    handed_over: bool,
    /// Taking over failed: return the error; every adopted resource is still tentatively
    /// owned, so dropping it touches nothing of the previous master's.
    takeover_failed: Option<String>,
    /// A successor master's claim on what it adopted (`None` for a fresh start): tentative
    /// until readiness is confirmed to the previous master.
    takeover: Option<Ownership>,
    /// systemd was told RELOADING=1 for a reload and waits for READY=1.
    notify_reloading: bool,
    /// The Prometheus endpoint, if configured.
    metrics: Option<MetricsServer>,
    master_metrics: zentinel_protocol::state::MasterMetrics,
    /// HTTP/2 refusals of the workers that exited under this master. Not in the state file:
    /// a successor master counts its own from zero (adopted workers report their whole totals
    /// again), so only the counts of workers gone before a binary upgrade leave the totals.
    retired_http2: Http2Refusals,
    /// Stopped with every worker gone: the last responses drain until then.
    exit_flush_until: Option<Instant>,
    /// The TLS session-ticket keys every worker gets, and when they rotate next.
    ticket_keys: TicketKeyRotation,
    /// The fetched OCSP responses, and when each is fetched again.
    ocsp: Stapler,
    /// The TLS session cache every worker gets (kept for this master's life once made).
    session_cache: Option<SessionCache>,
    /// The filters' shared segments (counters, rate-limit tables) of the running
    /// configuration, and of the one being reloaded to.
    filter_segments: FilterSegments,
    /// Which retired generations drain, and which were asked to finish now
    /// (`max-draining-generations`).
    draining: DrainingGenerations<Token>,
    /// A successor master's readiness pipe until it confirms. Declared last: fields drop
    /// after `Drop::drop`, in order, so a failing successor closes it (the previous master
    /// takes that EOF for failure and kills it) only once everything else is dropped.
    ready_pipe: Option<OwnedFd>,
}

impl Supervisor {
    pub fn new(setup: SupervisorSetup) -> Result<Self, SupervisorError> {
        let poll = Poll::new().map_err(SupervisorError::Setup)?;
        poll.registry()
            .register(
                &mut SourceFd(&setup.signals.as_raw_fd()),
                SIGNAL_TOKEN,
                Interest::READABLE,
            )
            .map_err(SupervisorError::Setup)?;
        let takeover = setup.inherited.as_ref().map(|i| i.ownership.clone());
        // A successor master accepts on the inherited control and metrics sockets only once
        // it has confirmed readiness (`confirm_takeover`): until then connections are the
        // previous master's.
        let accepting = takeover.is_none();
        let control = match setup.control {
            Some(socket) if accepting => Some(
                ControlServer::new(socket, poll.registry(), CONTROL_TOKEN)
                    .map_err(SupervisorError::Setup)?,
            ),
            Some(socket) => Some(ControlServer::not_accepting(socket, CONTROL_TOKEN)),
            None => None,
        };
        let count = setup.config.system.worker_count();
        let mut next_token = FIRST_WORKER_TOKEN;
        let mut metrics = setup.metrics;
        if let Some(server) = metrics.as_mut().filter(|_| accepting) {
            let token = Self::alloc_token(&mut next_token);
            server
                .register(poll.registry(), token)
                .map_err(SupervisorError::Setup)?;
        }
        let draining = DrainingGenerations::new(setup.config.system.max_draining_generations);
        Ok(Supervisor {
            config: setup.config,
            config_name: setup.config_name,
            config_source: setup.config_source,
            listeners: setup.listeners,
            executable: setup.executable,
            signals: setup.signals,
            log: setup.log,
            explicit_log_level: setup.explicit_log_level,
            generation: setup.generation,
            poll,
            slots: (0..count).map(WorkerSlot::new).collect(),
            processes: BTreeMap::new(),
            next_token,
            phase: Phase::Starting,
            next_status_at: Instant::now() + STATUS_INTERVAL,
            started_at: Instant::now(),
            control,
            pending_status: Vec::new(),
            request_ids: RequestIds::for_this_master(),
            status_poll: None,
            reload: None,
            stop_clients: Vec::new(),
            previous_executable: None,
            workers_on_previous: false,
            upgrade: None,
            inherited: setup.inherited,
            adoption: None,
            pidfds: BTreeMap::new(),
            handed_over: false,
            takeover_failed: None,
            takeover,
            notify_reloading: false,
            metrics,
            master_metrics: setup.master_metrics,
            retired_http2: Http2Refusals::default(),
            exit_flush_until: None,
            ticket_keys: setup.ticket_keys,
            ocsp: setup.ocsp,
            session_cache: setup.session_cache,
            filter_segments: setup.filter_segments,
            draining,
            ready_pipe: None,
        })
    }

    /// The latest counters each worker reported, by worker id.
    pub fn worker_counters(&self) -> Vec<(u32, Option<&WorkerCounters>)> {
        self.slots
            .iter()
            .map(|slot| {
                let current = slot
                    .current
                    .and_then(|token| self.processes.get(&token))
                    .and_then(|process| process.counters());
                (slot.worker_id, current.or(slot.last_counters.as_ref()))
            })
            .collect()
    }

    fn alloc_token(next_token: &mut usize) -> Token {
        let token = Token(*next_token);
        *next_token += 1;
        token
    }

    /// Start the workers and supervise them until a stop has been handled and every worker
    /// has exited. Returns an error if the start failed or the loop broke; no worker is left
    /// running or unreaped either way.
    pub fn run(mut self) -> Result<(), SupervisorError> {
        info!(
            config = %self.config_name,
            workers = self.slots.len(),
            listeners = self.listeners.len(),
            generation = self.generation,
            "starting workers"
        );
        for listener in &self.listeners {
            info!(listener = listener.name(), address = %listener.local_address(), "listening");
        }
        if let Some(control) = &self.control {
            info!(path = %control.path().display(), "control socket ready");
        }
        if let Some(metrics) = &self.metrics {
            info!(address = %metrics.local_address(), path = %metrics.config().path, "metrics endpoint ready");
        }
        self.log_ticket_keys();
        if let Some(inherited) = self.inherited.take() {
            self.adopt(inherited);
            self.asked_fault();
        } else {
            for index in 0..self.slots.len() {
                self.start_worker(index);
            }
        }

        let mut events = Events::with_capacity(64);
        loop {
            if self.handed_over {
                self.leave_quietly();
                return Ok(());
            }
            if let Some(reason) = self.takeover_failed.take() {
                // No leave_quietly: what was adopted is still tentatively owned, and dropping
                // it (here, or unwinding from a panic) must leave the previous master intact
                // on its own (`crate::ownership`).
                return Err(SupervisorError::TakeoverFailed(reason));
            }
            if let Phase::Stopping { .. } = self.phase {
                if self.processes.is_empty() && self.exit_flushed(Instant::now()) {
                    break;
                }
            }
            let timeout = self
                .next_deadline()
                .map(|at| at.saturating_duration_since(Instant::now()));
            if let Err(err) = self.poll.poll(&mut events, timeout) {
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(SupervisorError::EventLoop(err));
            }
            for event in events.iter() {
                let token = event.token();
                if token == SIGNAL_TOKEN {
                    self.handle_signals();
                } else if token == CONTROL_TOKEN {
                    if let Some(control) = self.control.as_mut() {
                        let next_token = &mut self.next_token;
                        control.accept_all(self.poll.registry(), || Self::alloc_token(next_token));
                    }
                } else if token == UPGRADE_PIPE_TOKEN {
                    self.handover_readable();
                } else if let Some(&worker) = self.pidfds.get(&token) {
                    self.adopted_exited(worker);
                } else if self.metrics.as_ref().is_some_and(|m| m.owns(token)) {
                    self.metrics_event(token);
                } else if self.processes.contains_key(&token) {
                    self.handle_channel_event(token, event.is_writable());
                } else if let Some(control) = self.control.as_mut() {
                    let requests =
                        control.handle_event(self.poll.registry(), token, event.is_writable());
                    for request in requests {
                        if matches!(request, ControlRequest::Reload { .. }) {
                            self.reload_announce();
                        }
                        self.handle_request(token, request);
                    }
                    self.rolling_client_check(token);
                }
            }
            if self.handed_over {
                continue; // leave before anything else is started or sent
            }
            // Reaping on every turn, not only on SIGCHLD, costs one syscall and makes the
            // loop immune to a coalesced or missed SIGCHLD.
            self.reap();
            self.run_timers(Instant::now());
            self.reload_notify_done();
        }

        if let Some(path) = &self.config.system.pid_file {
            crate::pid_file::remove_if_ours(path, std::process::id());
        }
        match std::mem::replace(&mut self.phase, Phase::Running) {
            Phase::Stopping {
                failure: Some(failure),
                ..
            } => Err(failure),
            _ => {
                info!("all workers exited; master stopping");
                Ok(())
            }
        }
    }

    /// Every worker is gone: give the `stop` clients their final answer, then let every
    /// client's output drain through the loop (writability, not sleeping), for at most
    /// `EXIT_FLUSH_BUDGET` so that a client that does not read cannot hold the exit. True once
    /// done.
    fn exit_flushed(&mut self, now: Instant) -> bool {
        let Some(control) = self.control.as_mut() else {
            return true;
        };
        let until = match self.exit_flush_until {
            Some(until) => until,
            None => {
                let done = ControlResponse::Done {
                    message: "master stopped".to_owned(),
                };
                for &client in &self.stop_clients {
                    control.finish(self.poll.registry(), client, &done);
                }
                *self.exit_flush_until.insert(now + EXIT_FLUSH_BUDGET)
            }
        };
        !control.output_pending() || until <= now
    }
}

impl Drop for Supervisor {
    /// Last line of defence (an event-loop error, a panic): never leave a worker running or
    /// a zombie behind. After a normal stop there is nobody left and this does nothing.
    fn drop(&mut self) {
        for process in self.processes.values_mut() {
            kill_process(process);
            if process.pidfd().is_none() {
                while let Err(Errno::EINTR) = waitpid(process.pid(), None) {}
            }
        }
        self.kill_successor_master();
    }
}
