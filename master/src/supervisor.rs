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
    Hello, MasterMessage, WorkerCounters, WorkerMessage, WorkerStart, PROTOCOL_VERSION,
};
use zentinel_protocol::{Channel, ProtocolError};

use crate::backoff::Backoff;
use crate::control::{ControlServer, ControlSocket};
use crate::gatherer::Gatherer;
use crate::listeners::BoundListener;
use crate::metrics::MetricsServer;
use crate::ownership::Ownership;
use crate::request_ids::{Outstanding, RequestIds};
use crate::systemd;
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
mod control;
mod handover;
mod metrics;
mod reload;
mod rolling;
mod takeover;
mod upgrade;

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// Our Hello is sent; waiting for the worker's.
    AwaitingHello,
    /// Start (with the listeners) is sent; waiting for Ready.
    AwaitingReady,
    Running,
    /// The worker said it stopped accepting.
    Draining,
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

/// What a worker process is to its slot.
#[derive(Debug)]
enum Role {
    /// Serves its slot; restarted with backoff when it dies.
    Current,
    /// Started by `worker restart` to replace its slot's current worker once ready. Its
    /// failure only fails the request: the current worker keeps serving.
    Successor {
        client: Option<Token>,
        /// Started by a rolling upgrade (or its rollback): its fate goes to the upgrade.
        upgrade: bool,
    },
    /// Replaced (or surplus after a reload): draining until it exits, never restarted.
    Retired,
}

/// A `worker restart` waiting for the old worker's `Draining` acknowledgement.
#[derive(Debug)]
struct PendingDone {
    client: Option<Token>,
    message: String,
    deadline: Instant,
}

/// Why a `Reconfigure` was sent, so that its answer (matched to it by request id) reaches the
/// right place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReconfigureKind {
    Reload,
    Rollback,
}

/// One live worker process.
#[derive(Debug)]
struct WorkerProcess {
    worker_id: u32,
    generation: u64,
    role: Role,
    pid: Pid,
    /// `None` once the channel hit EOF or an error.
    channel: Option<Channel>,
    token: Token,
    /// Registered for writability (output waiting in the channel).
    wants_write: bool,
    state: WorkerState,
    spawned_at: Instant,
    ready_at: Option<Instant>,
    channel_closed_at: Option<Instant>,
    killed: bool,
    /// The reason the worker gave in a `Fatal` message (or why the master killed it).
    fatal: Option<String>,
    /// The worker's software version, from its Hello.
    version: Option<String>,
    /// The master-worker protocol it speaks: ours for a worker we started (its Hello is
    /// checked), the previous master's record for an adopted one.
    protocol_version: u32,
    counters: Option<WorkerCounters>,
    /// Status requests sent and not answered yet, by request id (see [`answers`]).
    status_asked: Outstanding<()>,
    /// A retired worker's drain deadline (what it was told when retired, kept across master
    /// hand-overs); still running `DRAIN_KILL_GRACE` after it, it is killed.
    drain_deadline: Option<Instant>,
    restart_done: Option<PendingDone>,
    /// `Reconfigure`s sent and not answered yet, by request id.
    reconfigures: Outstanding<ReconfigureKind>,
    /// The executable it was started from (status shows it per worker).
    binary: String,
    /// Adopted from a previous master: not our child, so supervised through this pidfd
    /// (registered under the token) instead of waitpid.
    pidfd: Option<(OwnedFd, Token)>,
    /// Longest time from spawn to `Ready`.
    ready_timeout: Duration,
    /// When this master told it to drain (for the drain-duration histogram).
    drain_started: Option<Instant>,
    /// Adopted workers stay the previous master's until the takeover is confirmed: no signal
    /// reaches them before (see `crate::ownership`). Spawned ones are ours from the start.
    ownership: Ownership,
    /// A kill this master decided while the worker was still tentatively owned; carried out
    /// once the takeover is confirmed (dropped if it never is).
    kill_deferred: bool,
}

impl WorkerProcess {
    /// When a retired worker still running is killed: its drain deadline plus the grace it
    /// gets to exit after closing what was left.
    fn drain_kill_at(&self) -> Option<Instant> {
        self.drain_deadline
            .map(|deadline| deadline + DRAIN_KILL_GRACE)
    }
}

/// A worker id and whatever currently serves under it.
#[derive(Debug)]
struct WorkerSlot {
    worker_id: u32,
    current: Option<Token>,
    restart_at: Option<Instant>,
    backoff: Backoff,
    /// Counters of the last worker that served this slot, kept across its death.
    last_counters: Option<WorkerCounters>,
    /// Unexpected exits of this slot's current workers (status shows them).
    restarts: u32,
    /// How the last of them ended.
    last_exit: Option<String>,
}

impl WorkerSlot {
    fn new(worker_id: u32) -> Self {
        WorkerSlot {
            worker_id,
            current: None,
            restart_at: None,
            backoff: Backoff::default(),
            last_counters: None,
            restarts: 0,
            last_exit: None,
        }
    }
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
    /// Stopped with every worker gone: the last responses drain until then.
    exit_flush_until: Option<Instant>,
    /// A successor master's readiness pipe until it confirms. Declared last: fields drop
    /// after `Drop::drop`, in order, so a failing successor closes it (the previous master
    /// takes that EOF for failure and kills it) only once everything else is dropped.
    ready_pipe: Option<OwnedFd>,
}

/// The number of workers `worker-processes` asks for (0: one per CPU).
pub fn worker_count(configured: u32) -> u32 {
    if configured > 0 {
        return configured;
    }
    std::thread::available_parallelism()
        .ok()
        .and_then(|n| u32::try_from(n.get()).ok())
        .unwrap_or(1)
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
        let count = worker_count(setup.config.system.worker_processes);
        let mut next_token = FIRST_WORKER_TOKEN;
        let mut metrics = setup.metrics;
        if let Some(server) = metrics.as_mut().filter(|_| accepting) {
            let token = Self::alloc_token(&mut next_token);
            server
                .register(poll.registry(), token)
                .map_err(SupervisorError::Setup)?;
        }
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
            exit_flush_until: None,
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
                    .and_then(|process| process.counters.as_ref());
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

    fn handle_signals(&mut self) {
        loop {
            let info = match self.signals.read_signal() {
                Ok(Some(info)) => info,
                Ok(None) => return,
                Err(Errno::EINTR) => continue,
                Err(err) => {
                    error!(error = %err, "cannot read the signalfd");
                    return;
                }
            };
            let signal = i32::try_from(info.ssi_signo)
                .ok()
                .and_then(|n| Signal::try_from(n).ok());
            match signal {
                Some(Signal::SIGCHLD) => {} // reaped after the event batch
                Some(signal @ (Signal::SIGTERM | Signal::SIGQUIT | Signal::SIGINT))
                    if self.tentative() =>
                {
                    self.adoption_stop(format!("{} (from pid {})", signal.as_str(), info.ssi_pid));
                }
                Some(signal @ (Signal::SIGTERM | Signal::SIGQUIT)) => {
                    info!(
                        signal = signal.as_str(),
                        sender_pid = info.ssi_pid,
                        "graceful stop requested"
                    );
                    self.begin_stop(StopKind::Graceful, None, None);
                }
                Some(Signal::SIGINT) => {
                    info!(sender_pid = info.ssi_pid, "fast stop requested (SIGINT)");
                    self.begin_stop(StopKind::Fast, None, None);
                }
                Some(Signal::SIGHUP) => {
                    info!(
                        sender_pid = info.ssi_pid,
                        "configuration reload requested (SIGHUP)"
                    );
                    self.reload_announce();
                    self.begin_reload(None, None);
                }
                Some(Signal::SIGUSR2) => {
                    info!(
                        sender_pid = info.ssi_pid,
                        "rolling binary upgrade requested (SIGUSR2)"
                    );
                    self.begin_upgrade(
                        None,
                        zentinel_protocol::control::UpgradeRequest {
                            binary: None,
                            rolling: true,
                            drain_timeout_ms: None,
                            ready_timeout_ms: None,
                            canary: None,
                        },
                    );
                }
                _ => debug!(signo = info.ssi_signo, "ignoring unexpected signal"),
            }
        }
    }

    fn handle_channel_event(&mut self, token: Token, writable: bool) {
        if writable {
            let registry = self.poll.registry();
            if let Some(process) = self.processes.get_mut(&token) {
                if let Err(err) = flush(registry, process) {
                    self.channel_failed(token, err);
                    return;
                }
            }
        }
        // Edge-triggered: read until the channel has nothing more.
        loop {
            let Some(process) = self.processes.get_mut(&token) else {
                return;
            };
            let protocol_version = process.protocol_version;
            let awaiting_hello = process.state == WorkerState::AwaitingHello;
            let Some(channel) = process.channel.as_mut() else {
                return;
            };
            match channel.recv() {
                Ok(Some(frame)) => {
                    match answers::read_worker_message(&frame, protocol_version, awaiting_hello) {
                        Ok(message) => self.handle_message(token, message),
                        Err(err) => {
                            self.worker_failed(token, format!("sent an invalid message: {err}"));
                            return;
                        }
                    }
                }
                Ok(None) => return,
                Err(err) => {
                    self.channel_failed(token, err);
                    return;
                }
            }
        }
    }

    fn handle_message(&mut self, token: Token, message: WorkerMessage) {
        let Some(process) = self.processes.get_mut(&token) else {
            return;
        };
        let worker_id = process.worker_id;
        let generation = process.generation;
        let pid = process.pid.as_raw();
        match (process.state, message) {
            (WorkerState::AwaitingHello, WorkerMessage::Hello(hello)) => {
                if let Err(err) = check_version(hello.protocol_version) {
                    self.worker_failed(token, err.to_string());
                    return;
                }
                debug!(
                    worker_id,
                    pid,
                    generation,
                    worker_version = %hello.software_version,
                    "worker hello"
                );
                process.version = Some(hello.software_version);
                self.send_start(token);
            }
            (WorkerState::AwaitingReady, WorkerMessage::Ready) => {
                process.state = WorkerState::Running;
                process.ready_at = Some(Instant::now());
                info!(
                    worker_id,
                    pid,
                    generation,
                    startup_ms = process.spawned_at.elapsed().as_millis() as u64,
                    "worker ready"
                );
                match process.role {
                    Role::Current => self.check_started(),
                    Role::Successor { .. } => self.promote_successor(token),
                    // Retired before it was ready (a reload shrank the pool): its Drain is
                    // already queued behind Start.
                    Role::Retired => {}
                }
            }
            (
                _,
                WorkerMessage::Status {
                    request_id,
                    counters,
                },
            ) => self.status_answer(token, request_id, counters),
            (_, WorkerMessage::Draining { active_connections }) => {
                process.state = WorkerState::Draining;
                info!(
                    worker_id,
                    pid, generation, active_connections, "worker draining"
                );
                if let Some(done) = process.restart_done.take() {
                    let message = format!(
                        "{}, old draining ({active_connections} connections)",
                        done.message
                    );
                    self.finish(done.client, ControlResponse::Done { message });
                }
                self.rolling_event(RollingEvent::Draining {
                    worker: token,
                    active_connections: Some(active_connections),
                });
            }
            (_, WorkerMessage::Fatal { reason }) => {
                error!(worker_id, pid, generation, reason = %reason, "worker reported a fatal error");
                process.fatal = Some(reason);
            }
            (_, WorkerMessage::Reconfigured { request_id }) => {
                self.reconfigure_reply(token, request_id, Ok(()))
            }
            (_, WorkerMessage::ReconfigureFailed { request_id, reason }) => {
                self.reconfigure_reply(token, request_id, Err(reason))
            }
            (state, message) => {
                let unexpected = format!(
                    "sent an unexpected {} message in state {state:?}",
                    message.kind()
                );
                if matches!(
                    state,
                    WorkerState::AwaitingHello | WorkerState::AwaitingReady
                ) {
                    self.worker_failed(token, unexpected);
                } else {
                    warn!(worker_id, pid, generation, "worker {unexpected}; ignored");
                }
            }
        }
    }

    fn send_start(&mut self, token: Token) {
        let Some(process) = self.processes.get_mut(&token) else {
            return;
        };
        let start = MasterMessage::Start(WorkerStart {
            worker_id: process.worker_id,
            generation: process.generation,
            config: Box::new(worker_config(&self.config, self.slots.len())),
            listeners: self.listeners.iter().map(BoundListener::handle).collect(),
        });
        let fds: Vec<BorrowedFd<'_>> = self.listeners.iter().map(|l| l.as_fd()).collect();
        process.state = WorkerState::AwaitingReady;
        if let Err(err) = send(self.poll.registry(), process, &start, &fds) {
            self.channel_failed(token, err);
        }
    }

    /// After the last worker's first Ready, the start is complete.
    fn check_started(&mut self) {
        if !matches!(self.phase, Phase::Starting) {
            return;
        }
        let all_running = self.slots.iter().all(|slot| {
            slot.current
                .and_then(|token| self.processes.get(&token))
                .is_some_and(|process| process.state == WorkerState::Running)
        });
        if all_running {
            self.phase = Phase::Running;
            info!(
                workers = self.slots.len(),
                generation = self.generation,
                master_pid = std::process::id(),
                "zentinel started"
            );
            self.write_pid_file();
            systemd::ready(&self.serving_status());
        }
    }

    /// `system { pid-file }`: this master serves from now on.
    pub(super) fn write_pid_file(&self) {
        if let Some(path) = &self.config.system.pid_file {
            crate::pid_file::write(path, std::process::id());
        }
    }

    /// systemd's `STATUS=` while serving.
    fn serving_status(&self) -> String {
        format!(
            "serving: {} worker(s), generation {}, config {}",
            self.slots.len(),
            self.generation,
            self.config_name
        )
    }

    /// systemd: a reload is about to begin (RELOADING=1). Not when the master is busy: the
    /// request is refused then, and an upgrade in progress has its own RELOADING=1/READY=1.
    fn reload_announce(&mut self) {
        if self.notify_reloading || self.busy_reason().is_some() {
            return;
        }
        self.notify_reloading = true;
        let what = self
            .config_source
            .main_path
            .clone()
            .unwrap_or_else(|| self.config_name.clone());
        systemd::reloading(&format!("reloading {what}"));
    }

    /// systemd: the announced reload is over, committed, rolled back or refused (READY=1;
    /// `zentinel-ctl reload`'s exit status says which). A stop that abandoned it said
    /// STOPPING=1 instead.
    fn reload_notify_done(&mut self) {
        if !self.notify_reloading || self.reload.is_some() {
            return;
        }
        self.notify_reloading = false;
        if !matches!(self.phase, Phase::Stopping { .. }) {
            systemd::ready(&self.serving_status());
        }
    }

    /// The channel broke: EOF means the worker is exiting (or died); anything else means it
    /// cannot be talked to any more.
    fn channel_failed(&mut self, token: Token, err: ProtocolError) {
        let registry = self.poll.registry();
        let Some(process) = self.processes.get_mut(&token) else {
            return;
        };
        close_channel(registry, process);
        process.channel_closed_at = Some(Instant::now());
        if err.is_closed() {
            // The worker is exiting or dead: its exit status, reaped shortly, says more than
            // the EOF. One that keeps running is killed after EOF_KILL_GRACE.
            debug!(
                worker_id = process.worker_id,
                pid = process.pid.as_raw(),
                generation = process.generation,
                "worker channel closed"
            );
        } else {
            self.worker_failed(token, format!("channel error: {err}"));
        }
        // Nobody waits for a reply on a closed channel.
        self.cannot_answer(token);
        self.rolling_event(RollingEvent::WorkerSilenced { worker: token });
    }

    /// The worker misbehaved: kill it. Its exit is then handled by its role (restart with
    /// backoff, abort during start-up, fail a `worker restart`).
    fn worker_failed(&mut self, token: Token, reason: String) {
        let registry = self.poll.registry();
        let Some(process) = self.processes.get_mut(&token) else {
            return;
        };
        error!(
            worker_id = process.worker_id,
            pid = process.pid.as_raw(),
            generation = process.generation,
            reason = %reason,
            "worker failed; killing it"
        );
        if process.fatal.is_none() {
            process.fatal = Some(reason);
        }
        close_channel(registry, process);
        kill_process(process);
        self.cannot_answer(token);
        self.rolling_event(RollingEvent::WorkerSilenced { worker: token });
    }

    /// Spawn a worker process, register its channel and send our Hello.
    fn spawn_process(&mut self, worker_id: u32, role: Role) -> Result<Token, String> {
        self.spawn_process_from(worker_id, role, false, HANDSHAKE_TIMEOUT)
    }

    /// Spawn from our own executable, or (`previous`) from the previous master's.
    fn spawn_process_from(
        &mut self,
        worker_id: u32,
        role: Role,
        previous: bool,
        ready_timeout: Duration,
    ) -> Result<Token, String> {
        let token = Self::alloc_token(&mut self.next_token);
        let generation = self.generation;
        let system = &self.config.system;
        let identity =
            crate::worker_process::worker_identity(system.user.as_deref(), system.group.as_deref())
                .map_err(|err| {
                    error!(worker_id, generation, error = %err, "cannot spawn worker");
                    err
                })?;
        let args = WorkerArgs {
            worker_id,
            generation,
            log: &self.log,
            identity,
        };
        let executable = if previous {
            self.previous_executable
                .as_ref()
                .unwrap_or(&self.executable)
        } else {
            self.worker_executable()
        };
        let binary = executable.path().display().to_string();
        let spawned = spawn_worker(executable, args).map_err(|err| {
            error!(worker_id, generation, error = %err, "cannot spawn worker");
            err.to_string()
        })?;
        let pid = spawned.pid;
        info!(worker_id, pid = pid.as_raw(), generation, "worker spawned");
        let mut process = WorkerProcess {
            worker_id,
            generation,
            role,
            pid,
            channel: Some(spawned.channel),
            token,
            wants_write: false,
            state: WorkerState::AwaitingHello,
            spawned_at: Instant::now(),
            ready_at: None,
            channel_closed_at: None,
            killed: false,
            fatal: None,
            version: None,
            protocol_version: PROTOCOL_VERSION,
            counters: None,
            status_asked: Outstanding::default(),
            drain_deadline: None,
            restart_done: None,
            reconfigures: Outstanding::default(),
            binary,
            pidfd: None,
            ready_timeout,
            drain_started: None,
            ownership: Ownership::confirmed(),
            kill_deferred: false,
        };
        let registry = self.poll.registry();
        let setup = register_channel(registry, &mut process).and_then(|()| {
            let hello = MasterMessage::Hello(Hello {
                protocol_version: PROTOCOL_VERSION,
                pid: std::process::id(),
                software_version: env!("CARGO_PKG_VERSION").to_owned(),
            });
            send(registry, &mut process, &hello, &[])
        });
        self.processes.insert(token, process);
        if let Err(err) = setup {
            self.channel_failed(token, err);
        }
        Ok(token)
    }

    /// What new workers run: this master's executable, unless a rolling upgrade to it was
    /// rolled back.
    fn worker_executable(&self) -> &Executable {
        match (&self.previous_executable, self.workers_on_previous) {
            (Some(previous), true) => previous,
            _ => &self.executable,
        }
    }

    fn start_worker(&mut self, index: usize) {
        if matches!(self.phase, Phase::Stopping { .. }) {
            return;
        }
        let worker_id = self.slots[index].worker_id;
        match self.spawn_process(worker_id, Role::Current) {
            Ok(token) => {
                let slot = &mut self.slots[index];
                slot.current = Some(token);
                slot.restart_at = None;
            }
            Err(reason) => {
                if matches!(self.phase, Phase::Starting) {
                    self.begin_stop(
                        StopKind::Fast,
                        Some(SupervisorError::StartupFailed { worker_id, reason }),
                        None,
                    );
                } else {
                    let slot = &mut self.slots[index];
                    let delay = slot.backoff.on_failure(Duration::ZERO);
                    slot.restart_at = Some(Instant::now() + delay);
                }
            }
        }
    }

    /// Stop serving new connections on `token`'s worker and let it drain; it is never
    /// restarted. Returns false if it could not be told (it is killed instead).
    fn retire(&mut self, token: Token, drain: Duration) -> bool {
        let registry = self.poll.registry();
        let Some(process) = self.processes.get_mut(&token) else {
            return false;
        };
        process.role = Role::Retired;
        process.drain_deadline = Some(Instant::now() + drain);
        process.drain_started.get_or_insert_with(Instant::now);
        if process.state == WorkerState::AwaitingHello || process.channel.is_none() {
            kill_process(process);
            return false;
        }
        let drain_message = MasterMessage::Drain {
            timeout_ms: u64::try_from(drain.as_millis()).unwrap_or(u64::MAX),
        };
        info!(
            worker_id = process.worker_id,
            pid = process.pid.as_raw(),
            generation = process.generation,
            timeout_ms = drain.as_millis() as u64,
            "retiring worker"
        );
        if let Err(err) = send(registry, process, &drain_message, &[]) {
            self.channel_failed(token, err);
            return false;
        }
        true
    }

    fn reap(&mut self) {
        loop {
            let status = match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(status) => status,
                Err(Errno::EINTR) => continue,
                Err(err) => {
                    error!(error = %err, "waitpid failed");
                    return;
                }
            };
            let (pid, description) = match status {
                WaitStatus::Exited(pid, code) => (pid, format!("exit code {code}")),
                WaitStatus::Signaled(pid, signal, core) => (
                    pid,
                    format!(
                        "killed by {signal}{}",
                        if core { " (core dumped)" } else { "" }
                    ),
                ),
                _ => continue,
            };
            if self.successor_master_reaped(pid, &description) {
                continue;
            }
            let clean = matches!(status, WaitStatus::Exited(_, 0));
            let token = self
                .processes
                .iter()
                .find(|(_, process)| process.pid == pid)
                .map(|(token, _)| *token);
            match token {
                Some(token) => self.worker_exited(token, &description, clean),
                None => debug!(pid = pid.as_raw(), status = %description, "reaped unknown child"),
            }
        }
    }

    fn worker_exited(&mut self, token: Token, status: &str, clean: bool) {
        let registry = self.poll.registry();
        let stopping = matches!(self.phase, Phase::Stopping { .. });
        let starting = matches!(self.phase, Phase::Starting);
        let Some(mut process) = self.processes.remove(&token) else {
            return;
        };
        close_channel(registry, &mut process);
        self.metrics_worker_exited(&process);
        self.cannot_answer(token);
        self.rolling_event(RollingEvent::WorkerExited { worker: token });
        let worker_id = process.worker_id;
        let generation = process.generation;
        let pid = process.pid.as_raw();
        match process.role {
            Role::Retired => {
                if clean {
                    info!(worker_id, pid, generation, status, "retired worker exited");
                } else {
                    warn!(worker_id, pid, generation, status, "retired worker exited");
                }
                if let Some(done) = process.restart_done.take() {
                    let message = format!("{}, old exited ({status})", done.message);
                    self.finish(done.client, ControlResponse::Done { message });
                }
                return;
            }
            Role::Successor { upgrade: true, .. } => {
                let reason = process.fatal.as_deref().unwrap_or("exited during start-up");
                let message = format!(
                    "worker {worker_id}: new worker pid {pid} from {} failed: {reason} ({status})",
                    process.binary
                );
                error!(worker_id, pid, generation, "{message}");
                self.rolling_event(RollingEvent::SuccessorFailed {
                    successor: token,
                    reason: message,
                });
                return;
            }
            Role::Successor { client, .. } => {
                let reason = process.fatal.as_deref().unwrap_or("exited during start-up");
                let old_pid = self
                    .slot_index(worker_id)
                    .and_then(|index| self.slots[index].current)
                    .and_then(|old| self.processes.get(&old))
                    .map_or(0, |old| old.pid.as_raw());
                let message = format!(
                    "worker {worker_id}: new worker pid {pid} failed: {reason} ({status}); pid {old_pid} keeps serving"
                );
                error!(worker_id, pid, generation, "{message}");
                self.finish(client, ControlResponse::Failed { message });
                return;
            }
            Role::Current => {}
        }
        let Some(index) = self
            .slots
            .iter()
            .position(|slot| slot.current == Some(token))
        else {
            return;
        };
        let slot = &mut self.slots[index];
        slot.current = None;
        if process.counters.is_some() {
            slot.last_counters = process.counters.take();
        }
        if stopping {
            if clean {
                info!(worker_id, pid, generation, status, "worker exited");
            } else {
                warn!(worker_id, pid, generation, status, "worker exited");
            }
            return;
        }
        error!(
            worker_id,
            pid,
            generation,
            status,
            reason = process.fatal.as_deref().unwrap_or(""),
            "worker exited unexpectedly"
        );
        // A worker that never became ready fails the start-up (a broken binary or config must
        // not restart in a loop); one that was serving and died is restarted like any other.
        if starting && process.ready_at.is_none() {
            let reason = match &process.fatal {
                Some(fatal) => format!("{fatal} ({status})"),
                None => format!("exited during start-up ({status})"),
            };
            self.begin_stop(
                StopKind::Fast,
                Some(SupervisorError::StartupFailed { worker_id, reason }),
                None,
            );
            return;
        }
        self.master_metrics.worker_restarts += 1;
        let slot = &mut self.slots[index];
        slot.restarts = slot.restarts.saturating_add(1);
        slot.last_exit = Some(status.to_owned());
        if self.rolling_claims_death(worker_id, pid, status) {
            return;
        }
        let slot = &mut self.slots[index];
        let ran_for = process
            .ready_at
            .map(|ready| ready.elapsed())
            .unwrap_or_default();
        let delay = slot.backoff.on_failure(ran_for);
        slot.restart_at = Some(Instant::now() + delay);
        info!(
            worker_id,
            generation,
            delay_ms = delay.as_millis() as u64,
            "restarting worker after backoff"
        );
    }

    fn slot_index(&self, worker_id: u32) -> Option<usize> {
        self.slots
            .iter()
            .position(|slot| slot.worker_id == worker_id)
    }

    fn begin_stop(
        &mut self,
        kind: StopKind,
        failure: Option<SupervisorError>,
        drain_override: Option<Duration>,
    ) {
        let now = Instant::now();
        let drain = drain_override.unwrap_or(Duration::from_secs(
            self.config.system.graceful_shutdown_timeout_secs,
        ));
        let grace = match kind {
            StopKind::Graceful => drain + DRAIN_KILL_GRACE,
            StopKind::Fast => FAST_STOP_GRACE,
        };
        match &mut self.phase {
            Phase::Stopping {
                kind: current,
                kill_at,
                failure: current_failure,
            } => {
                if kind == StopKind::Graceful || *current == StopKind::Fast {
                    info!("already stopping");
                    return;
                }
                // A fast stop overrides a drain in progress.
                *current = StopKind::Fast;
                *kill_at = (*kill_at).min(now + grace);
                if current_failure.is_none() {
                    *current_failure = failure;
                }
            }
            phase => {
                *phase = Phase::Stopping {
                    kind,
                    kill_at: now + grace,
                    failure,
                };
                systemd::stopping(match kind {
                    StopKind::Graceful => "stopping: draining workers",
                    StopKind::Fast => "stopping",
                });
            }
        }
        self.abort_reload("the master is stopping");
        self.abort_upgrade("the master is stopping");

        let message = match kind {
            StopKind::Graceful => MasterMessage::Drain {
                timeout_ms: u64::try_from(drain.as_millis()).unwrap_or(u64::MAX),
            },
            StopKind::Fast => MasterMessage::Stop,
        };
        for slot in &mut self.slots {
            slot.restart_at = None;
        }
        let registry = self.poll.registry();
        let mut broken = Vec::new();
        for (&token, process) in self.processes.iter_mut() {
            if process.killed || process.channel.is_none() {
                continue; // already on its way out
            }
            if let Role::Successor { .. } = process.role {
                process.fatal = Some("the master is stopping".to_owned());
                kill_process(process);
                continue;
            }
            if process.state == WorkerState::AwaitingHello {
                // It has no listeners and no connections: nothing to drain.
                kill_process(process);
                continue;
            }
            if matches!(process.role, Role::Retired) && kind == StopKind::Graceful {
                continue; // already draining on its own deadline
            }
            debug!(
                worker_id = process.worker_id,
                pid = process.pid.as_raw(),
                generation = process.generation,
                message = message.kind(),
                "stopping worker"
            );
            if let Err(err) = send(registry, process, &message, &[]) {
                broken.push((token, err));
            }
        }
        for (token, err) in broken {
            self.channel_failed(token, err);
        }
    }

    fn run_timers(&mut self, now: Instant) {
        if let Some(control) = self.control.as_mut() {
            control.run_timers(self.poll.registry(), now);
        }
        self.status_timeouts(now);
        self.reload_timeout(now);
        if let Some(metrics) = self.metrics.as_mut() {
            metrics.expire(self.poll.registry(), now);
        }

        let stopping = matches!(self.phase, Phase::Stopping { .. });
        let kill_everyone = matches!(self.phase, Phase::Stopping { kill_at, .. } if kill_at <= now);
        // A worker restarted while a reload is in flight would get the old configuration; one
        // started by a successor master before it confirmed would serve next to the previous
        // master's worker of the same slot (and die with a failing successor).
        let restarts_allowed =
            !stopping && self.reload.is_none() && !self.handing_over() && !self.tentative();
        let restarts: Vec<usize> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| restarts_allowed && slot.restart_at.is_some_and(|at| at <= now))
            .map(|(index, _)| index)
            .collect();
        let mut failures = Vec::new();
        let mut done_timeouts = Vec::new();
        for (&token, process) in self.processes.iter_mut() {
            if let Some(done) = process.restart_done.as_ref() {
                if done.deadline <= now {
                    done_timeouts.push(process.restart_done.take());
                }
            }
            if process.killed || !process.ownership.is_confirmed() {
                continue; // a tentative worker's deadlines count from the confirmation
            }
            let pid = process.pid.as_raw();
            let worker_id = process.worker_id;
            let generation = process.generation;
            if kill_everyone {
                warn!(
                    worker_id,
                    pid, generation, "worker still running at the stop deadline; killing it"
                );
                kill_process(process);
            } else if process.drain_kill_at().is_some_and(|at| at <= now) {
                warn!(
                    worker_id,
                    pid,
                    generation,
                    "retired worker still running at its drain deadline; killing it"
                );
                kill_process(process);
            } else if process
                .channel_closed_at
                .is_some_and(|at| at + EOF_KILL_GRACE <= now)
            {
                warn!(
                    worker_id,
                    pid, generation, "worker closed its channel but did not exit; killing it"
                );
                kill_process(process);
            } else if process.channel.is_some()
                && matches!(
                    process.state,
                    WorkerState::AwaitingHello | WorkerState::AwaitingReady
                )
                && process.spawned_at + process.ready_timeout <= now
            {
                failures.push((
                    token,
                    format!("not ready within {} ms", process.ready_timeout.as_millis()),
                ));
            }
        }
        for done in done_timeouts.into_iter().flatten() {
            let message = format!(
                "{}, old draining (connection count not reported)",
                done.message
            );
            self.finish(done.client, ControlResponse::Done { message });
        }
        for (token, reason) in failures {
            self.worker_failed(token, reason);
        }
        for index in restarts {
            self.start_worker(index);
        }
        self.upgrade_timers(now);
        if !stopping && !self.handing_over() && !self.tentative() && self.next_status_at <= now {
            self.next_status_at = now + STATUS_INTERVAL;
            self.request_status();
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut deadlines: Vec<Instant> = Vec::new();
        match &self.phase {
            Phase::Stopping { kill_at, .. } => deadlines.push(*kill_at),
            Phase::Running if !self.tentative() => deadlines.push(self.next_status_at),
            Phase::Running => {}
            Phase::Starting => {}
        }
        if let Some(at) = self.control.as_ref().and_then(ControlServer::next_deadline) {
            deadlines.push(at);
        }
        deadlines.extend(
            self.pending_status
                .iter()
                .map(|pending| pending.gather.deadline()),
        );
        deadlines.extend(self.reload.as_ref().map(reload::ReloadOp::deadline));
        deadlines.extend(self.metrics.as_ref().and_then(MetricsServer::next_deadline));
        let stopping = matches!(self.phase, Phase::Stopping { .. });
        if !stopping && self.reload.is_none() && !self.handing_over() && !self.tentative() {
            deadlines.extend(self.slots.iter().filter_map(|slot| slot.restart_at));
        }
        deadlines.extend(self.upgrade_deadline());
        deadlines.extend(self.exit_flush_until);
        for process in self.processes.values() {
            if let Some(done) = &process.restart_done {
                deadlines.push(done.deadline);
            }
            if process.killed || !process.ownership.is_confirmed() {
                continue;
            }
            if let Some(at) = process.drain_kill_at() {
                deadlines.push(at);
            }
            if let Some(at) = process.channel_closed_at {
                deadlines.push(at + EOF_KILL_GRACE);
            }
            if matches!(
                process.state,
                WorkerState::AwaitingHello | WorkerState::AwaitingReady
            ) {
                deadlines.push(process.spawned_at + process.ready_timeout);
            }
        }
        deadlines.into_iter().min()
    }
}

impl Drop for Supervisor {
    /// Last line of defence (an event-loop error, a panic): never leave a worker running or
    /// a zombie behind. After a normal stop there is nobody left and this does nothing.
    fn drop(&mut self) {
        for process in self.processes.values_mut() {
            kill_process(process);
            if process.pidfd.is_none() {
                while let Err(Errno::EINTR) = waitpid(process.pid, None) {}
            }
        }
        self.kill_successor_master();
    }
}

fn register_channel(registry: &Registry, process: &mut WorkerProcess) -> Result<(), ProtocolError> {
    let Some(channel) = process.channel.as_ref() else {
        return Err(ProtocolError::Closed);
    };
    channel.stream().set_nonblocking(true)?;
    registry.register(
        &mut SourceFd(&channel.as_raw_fd()),
        process.token,
        Interest::READABLE,
    )?;
    Ok(())
}

fn close_channel(registry: &Registry, process: &mut WorkerProcess) {
    if let Some(channel) = process.channel.take() {
        // Closing the fd would drop it from the epoll set as well; deregistering first keeps
        // the registry's view exact.
        let _ = registry.deregister(&mut SourceFd(&channel.as_raw_fd()));
    }
    process.wants_write = false;
}

/// Queue a message and keep the writable interest in step with the channel's backlog.
/// The configuration as a worker gets it: `limits { max-total-connections }` becomes each of
/// the `workers` workers' share of the connection cap (rounded up), since a worker counts only
/// its own connections.
pub(super) fn worker_config(config: &ProxyConfig, workers: usize) -> ProxyConfig {
    let mut config = config.clone();
    let total = config.limits.max_total_connections;
    if total > 0 {
        let workers = u32::try_from(workers.max(1)).unwrap_or(u32::MAX);
        config.system.max_connections = config.system.max_connections.min(total.div_ceil(workers));
    }
    config
}

fn send(
    registry: &Registry,
    process: &mut WorkerProcess,
    message: &MasterMessage,
    fds: &[BorrowedFd<'_>],
) -> Result<(), ProtocolError> {
    let channel = process.channel.as_mut().ok_or(ProtocolError::Closed)?;
    // An adopted worker of an older protocol reads only its own layout (protocol 1's
    // `Drain`, `Stop` and `StatusRequest` are protocol 2's).
    match process.protocol_version {
        0..=2 => {
            let legacy = MasterMessageV2::try_from(message)
                .map_err(|err| ProtocolError::Invalid(err.to_string()))?;
            channel.send(&legacy, fds)?;
        }
        3 => {
            let legacy = MasterMessageV3::try_from(message)
                .map_err(|err| ProtocolError::Invalid(err.to_string()))?;
            channel.send(&legacy, fds)?;
        }
        _ => {
            channel.send(message, fds)?;
        }
    }
    update_interest(registry, process)
}

fn flush(registry: &Registry, process: &mut WorkerProcess) -> Result<(), ProtocolError> {
    let channel = process.channel.as_mut().ok_or(ProtocolError::Closed)?;
    channel.flush()?;
    update_interest(registry, process)
}

fn update_interest(registry: &Registry, process: &mut WorkerProcess) -> Result<(), ProtocolError> {
    let Some(channel) = process.channel.as_ref() else {
        return Ok(());
    };
    let wants_write = channel.has_pending_output();
    if wants_write != process.wants_write {
        let interest = if wants_write {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        registry.reregister(&mut SourceFd(&channel.as_raw_fd()), process.token, interest)?;
        process.wants_write = wants_write;
    }
    Ok(())
}

fn kill_process(process: &mut WorkerProcess) {
    if process.killed {
        return;
    }
    if !process.ownership.is_confirmed() {
        // Still the previous master's worker: a failing successor (this very Drop, say) must
        // not take it down. Carried out after the confirmation, if that ever comes.
        if !process.kill_deferred {
            warn!(
                worker_id = process.worker_id,
                pid = process.pid.as_raw(),
                "adopted worker not ours until the takeover is confirmed; not killing it"
            );
        }
        process.kill_deferred = true;
        return;
    }
    if let Some((pidfd, _)) = &process.pidfd {
        // Not our child: only the pidfd is safe against pid reuse.
        if let Err(err) = crate::upgrade::pidfd_kill(pidfd, libc::SIGKILL) {
            error!(pid = process.pid.as_raw(), error = %err, "cannot kill adopted worker");
        }
        process.killed = true;
        return;
    }
    // The pid is our unreaped child, so it cannot have been reused by another process.
    match kill(process.pid, Signal::SIGKILL) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(err) => error!(pid = process.pid.as_raw(), error = %err, "cannot kill worker"),
    }
    process.killed = true;
}

#[cfg(test)]
mod worker_config_tests {
    use super::worker_config;
    use zentinel_protocol::config::ProxyConfig;

    #[test]
    fn total_connections_become_each_workers_share() {
        let mut config = ProxyConfig {
            system: Default::default(),
            listeners: Vec::new(),
            routes: Vec::new(),
            upstreams: Vec::new(),
            limits: Default::default(),
        };
        config.system.max_connections = 10_000;
        assert_eq!(worker_config(&config, 4).system.max_connections, 10_000);
        config.limits.max_total_connections = 1001;
        assert_eq!(worker_config(&config, 4).system.max_connections, 251);
        config.system.max_connections = 100;
        assert_eq!(worker_config(&config, 4).system.max_connections, 100);
        assert_eq!(worker_config(&config, 0).system.max_connections, 100);
    }
}
