//! The master's supervision loop: starts the workers, restarts the ones that die, and stops
//! them all on a signal.
//!
//! Everything happens on one thread, in one `mio` loop, over three kinds of sources:
//! - a signalfd for SIGTERM, SIGQUIT, SIGINT, SIGHUP and SIGCHLD (blocked process-wide by
//!   [`block_signals`] before any child exists, so none is lost or runs a handler);
//! - each worker's channel (non-blocking), which carries the handshake, status and drain
//!   messages and whose EOF says the worker is gone;
//! - deadlines: handshake timeouts, restart backoff, the kill deadline of a stop.
//!
//! The handshake runs inside the loop, as a state machine per worker, so that a slow or stuck
//! worker never keeps the master from reacting to signals or to other workers.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
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
use zentinel_protocol::messages::{
    Hello, MasterMessage, WorkerCounters, WorkerMessage, WorkerStart, PROTOCOL_VERSION,
};
use zentinel_protocol::{Channel, ProtocolError};

use crate::backoff::Backoff;
use crate::listeners::BoundListener;
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

const SIGNAL_TOKEN: Token = Token(0);

/// The signals the master handles through its signalfd.
pub fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for signal in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGHUP,
        Signal::SIGCHLD,
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
        // SAFETY: installs SIG_DFL, no handler code; the signal is blocked, so the default
        // action cannot fire either.
        unsafe { nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigDfl) }?;
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
}

/// What the supervisor needs to run one configuration.
#[derive(Debug)]
pub struct SupervisorSetup {
    pub config: ProxyConfig,
    /// Where the configuration came from, for logs.
    pub config_name: String,
    /// Bound listeners, in the order of `config.listeners`.
    pub listeners: Vec<BoundListener>,
    pub executable: Executable,
    /// From [`block_signals`].
    pub signals: SignalFd,
    /// Passed on to workers as `--log-level`.
    pub log_level: String,
    /// Configuration generation, starting at 1.
    pub generation: u64,
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

/// One live worker process.
#[derive(Debug)]
struct WorkerProcess {
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
    /// The reason the worker gave in a `Fatal` message.
    fatal: Option<String>,
}

/// A worker id and whatever currently runs under it.
#[derive(Debug)]
struct WorkerSlot {
    worker_id: u32,
    process: Option<WorkerProcess>,
    restart_at: Option<Instant>,
    backoff: Backoff,
    counters: Option<WorkerCounters>,
}

/// The running master.
#[derive(Debug)]
pub struct Supervisor {
    config: ProxyConfig,
    config_name: String,
    listeners: Vec<BoundListener>,
    executable: Executable,
    signals: SignalFd,
    log_level: String,
    generation: u64,
    poll: Poll,
    slots: Vec<WorkerSlot>,
    next_token: usize,
    phase: Phase,
    next_status_at: Instant,
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
        let count = worker_count(setup.config.system.worker_processes);
        let slots = (0..count)
            .map(|worker_id| WorkerSlot {
                worker_id,
                process: None,
                restart_at: None,
                backoff: Backoff::default(),
                counters: None,
            })
            .collect();
        Ok(Supervisor {
            config: setup.config,
            config_name: setup.config_name,
            listeners: setup.listeners,
            executable: setup.executable,
            signals: setup.signals,
            log_level: setup.log_level,
            generation: setup.generation,
            poll,
            slots,
            next_token: 1,
            phase: Phase::Starting,
            next_status_at: Instant::now() + STATUS_INTERVAL,
        })
    }

    /// The latest counters each worker reported, by worker id.
    pub fn worker_counters(&self) -> Vec<(u32, Option<&WorkerCounters>)> {
        self.slots
            .iter()
            .map(|slot| (slot.worker_id, slot.counters.as_ref()))
            .collect()
    }

    /// Start the workers and supervise them until a stop signal has been handled and every
    /// worker has exited. Returns an error if the start failed or the loop broke; no worker
    /// is left running or unreaped either way.
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
        for index in 0..self.slots.len() {
            self.start_worker(index);
        }

        let mut events = Events::with_capacity(64);
        loop {
            if let Phase::Stopping { .. } = self.phase {
                if self.slots.iter().all(|slot| slot.process.is_none()) {
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
                if event.token() == SIGNAL_TOKEN {
                    self.handle_signals();
                } else {
                    self.handle_channel_event(event.token(), event.is_writable());
                }
            }
            // Reaping on every turn, not only on SIGCHLD, costs one syscall and makes the
            // loop immune to a coalesced or missed SIGCHLD.
            self.reap();
            self.run_timers(Instant::now());
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
                Some(signal @ (Signal::SIGTERM | Signal::SIGQUIT)) => {
                    info!(
                        signal = signal.as_str(),
                        sender_pid = info.ssi_pid,
                        "graceful stop requested"
                    );
                    self.begin_stop(StopKind::Graceful, None);
                }
                Some(Signal::SIGINT) => {
                    info!(sender_pid = info.ssi_pid, "fast stop requested (SIGINT)");
                    self.begin_stop(StopKind::Fast, None);
                }
                Some(Signal::SIGHUP) => {
                    warn!("SIGHUP received: configuration reload is not implemented yet; ignored");
                }
                _ => debug!(signo = info.ssi_signo, "ignoring unexpected signal"),
            }
        }
    }

    fn slot_for_token(&self, token: Token) -> Option<usize> {
        self.slots.iter().position(|slot| {
            slot.process
                .as_ref()
                .is_some_and(|process| process.token == token)
        })
    }

    fn handle_channel_event(&mut self, token: Token, writable: bool) {
        // A token is never reused, so an event for a worker replaced in the same batch finds
        // no slot and is dropped.
        let Some(index) = self.slot_for_token(token) else {
            return;
        };
        if writable {
            let registry = self.poll.registry();
            let slot = &mut self.slots[index];
            if let Some(process) = slot.process.as_mut() {
                if let Err(err) = flush(registry, process) {
                    self.channel_failed(index, err);
                    return;
                }
            }
        }
        // Edge-triggered: read until the channel has nothing more.
        loop {
            let Some(channel) = self.slots[index]
                .process
                .as_mut()
                .and_then(|process| process.channel.as_mut())
            else {
                return;
            };
            match channel.recv() {
                Ok(Some(frame)) => match frame.deserialize::<WorkerMessage>() {
                    Ok(message) => self.handle_message(index, message),
                    Err(err) => {
                        self.worker_failed(index, format!("sent an invalid message: {err}"));
                        return;
                    }
                },
                Ok(None) => return,
                Err(err) => {
                    self.channel_failed(index, err);
                    return;
                }
            }
        }
    }

    fn handle_message(&mut self, index: usize, message: WorkerMessage) {
        let generation = self.generation;
        let slot = &mut self.slots[index];
        let worker_id = slot.worker_id;
        let Some(process) = slot.process.as_mut() else {
            return;
        };
        let pid = process.pid.as_raw();
        match (process.state, message) {
            (WorkerState::AwaitingHello, WorkerMessage::Hello(hello)) => {
                if let Err(err) = check_version(hello.protocol_version) {
                    self.worker_failed(index, err.to_string());
                    return;
                }
                debug!(
                    worker_id,
                    pid,
                    generation,
                    worker_version = %hello.software_version,
                    "worker hello"
                );
                self.send_start(index);
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
                self.check_started();
            }
            (_, WorkerMessage::Status(counters)) => {
                debug!(
                    worker_id,
                    pid,
                    generation,
                    active_connections = counters.active_connections,
                    requests_total = counters.requests_total,
                    "worker status"
                );
                slot.counters = Some(counters);
            }
            (_, WorkerMessage::Draining { active_connections }) => {
                process.state = WorkerState::Draining;
                info!(
                    worker_id,
                    pid, generation, active_connections, "worker draining"
                );
            }
            (_, WorkerMessage::Fatal { reason }) => {
                error!(worker_id, pid, generation, reason = %reason, "worker reported a fatal error");
                process.fatal = Some(reason);
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
                    self.worker_failed(index, unexpected);
                } else {
                    warn!(worker_id, pid, generation, "worker {unexpected}; ignored");
                }
            }
        }
    }

    fn send_start(&mut self, index: usize) {
        let start = MasterMessage::Start(WorkerStart {
            worker_id: self.slots[index].worker_id,
            generation: self.generation,
            config: self.config.clone(),
            listeners: self.listeners.iter().map(BoundListener::handle).collect(),
        });
        let fds: Vec<BorrowedFd<'_>> = self.listeners.iter().map(|l| l.as_fd()).collect();
        let registry = self.poll.registry();
        let result = match self.slots[index].process.as_mut() {
            Some(process) => {
                process.state = WorkerState::AwaitingReady;
                send(registry, process, &start, &fds)
            }
            None => return,
        };
        if let Err(err) = result {
            self.channel_failed(index, err);
        }
    }

    /// After the last worker's first Ready, the start is complete.
    fn check_started(&mut self) {
        if !matches!(self.phase, Phase::Starting) {
            return;
        }
        let all_running = self.slots.iter().all(|slot| {
            slot.process
                .as_ref()
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
        }
    }

    /// The channel broke: EOF means the worker is exiting (or died); anything else means it
    /// cannot be talked to any more.
    fn channel_failed(&mut self, index: usize, err: ProtocolError) {
        let generation = self.generation;
        let registry = self.poll.registry();
        let slot = &mut self.slots[index];
        let worker_id = slot.worker_id;
        let Some(process) = slot.process.as_mut() else {
            return;
        };
        let pid = process.pid.as_raw();
        close_channel(registry, process);
        process.channel_closed_at = Some(Instant::now());
        if err.is_closed() {
            // The worker is exiting or dead: its exit status, reaped shortly, says more than
            // the EOF. One that keeps running is killed after EOF_KILL_GRACE.
            debug!(worker_id, pid, generation, "worker channel closed");
        } else {
            self.worker_failed(index, format!("channel error: {err}"));
        }
    }

    /// The worker misbehaved: kill it. Its exit is then handled like any other death
    /// (restart with backoff, or abort during start-up).
    fn worker_failed(&mut self, index: usize, reason: String) {
        let generation = self.generation;
        let registry = self.poll.registry();
        let slot = &mut self.slots[index];
        let worker_id = slot.worker_id;
        let Some(process) = slot.process.as_mut() else {
            return;
        };
        error!(worker_id, pid = process.pid.as_raw(), generation, reason = %reason, "worker failed; killing it");
        if process.fatal.is_none() {
            process.fatal = Some(reason);
        }
        close_channel(registry, process);
        kill_process(process);
    }

    fn start_worker(&mut self, index: usize) {
        if matches!(self.phase, Phase::Stopping { .. }) {
            return;
        }
        let token = Token(self.next_token);
        self.next_token += 1;
        let generation = self.generation;
        let worker_id = self.slots[index].worker_id;
        let args = WorkerArgs {
            worker_id,
            generation,
            log_level: &self.log_level,
        };
        let spawned = match spawn_worker(&self.executable, args) {
            Ok(spawned) => spawned,
            Err(err) => {
                error!(worker_id, generation, error = %err, "cannot spawn worker");
                if matches!(self.phase, Phase::Starting) {
                    self.begin_stop(
                        StopKind::Fast,
                        Some(SupervisorError::StartupFailed {
                            worker_id,
                            reason: err.to_string(),
                        }),
                    );
                } else {
                    let slot = &mut self.slots[index];
                    let delay = slot.backoff.on_failure(Duration::ZERO);
                    slot.restart_at = Some(Instant::now() + delay);
                }
                return;
            }
        };
        let pid = spawned.pid;
        info!(worker_id, pid = pid.as_raw(), generation, "worker spawned");
        let mut process = WorkerProcess {
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
        let slot = &mut self.slots[index];
        slot.process = Some(process);
        slot.restart_at = None;
        if let Err(err) = setup {
            self.channel_failed(index, err);
        }
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
            let clean = matches!(status, WaitStatus::Exited(_, 0));
            match self.slots.iter().position(|slot| {
                slot.process
                    .as_ref()
                    .is_some_and(|process| process.pid == pid)
            }) {
                Some(index) => self.worker_exited(index, &description, clean),
                None => debug!(pid = pid.as_raw(), status = %description, "reaped unknown child"),
            }
        }
    }

    fn worker_exited(&mut self, index: usize, status: &str, clean: bool) {
        let generation = self.generation;
        let registry = self.poll.registry();
        let stopping = matches!(self.phase, Phase::Stopping { .. });
        let starting = matches!(self.phase, Phase::Starting);
        let slot = &mut self.slots[index];
        let worker_id = slot.worker_id;
        let Some(mut process) = slot.process.take() else {
            return;
        };
        close_channel(registry, &mut process);
        let pid = process.pid.as_raw();
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
        if starting {
            let reason = match &process.fatal {
                Some(fatal) => format!("{fatal} ({status})"),
                None => format!("exited during start-up ({status})"),
            };
            self.begin_stop(
                StopKind::Fast,
                Some(SupervisorError::StartupFailed { worker_id, reason }),
            );
            return;
        }
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

    fn begin_stop(&mut self, kind: StopKind, failure: Option<SupervisorError>) {
        let now = Instant::now();
        let grace = match kind {
            StopKind::Graceful => {
                Duration::from_secs(self.config.system.graceful_shutdown_timeout_secs)
                    + DRAIN_KILL_GRACE
            }
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
                }
            }
        }

        let message = match kind {
            StopKind::Graceful => MasterMessage::Drain {
                timeout_ms: self
                    .config
                    .system
                    .graceful_shutdown_timeout_secs
                    .saturating_mul(1000),
            },
            StopKind::Fast => MasterMessage::Stop,
        };
        let generation = self.generation;
        let registry = self.poll.registry();
        let mut broken = Vec::new();
        for (index, slot) in self.slots.iter_mut().enumerate() {
            slot.restart_at = None;
            let Some(process) = slot.process.as_mut() else {
                continue;
            };
            if process.killed || process.channel.is_none() {
                continue; // already on its way out
            }
            if process.state == WorkerState::AwaitingHello {
                // It has no listeners and no connections: nothing to drain.
                kill_process(process);
                continue;
            }
            debug!(
                worker_id = slot.worker_id,
                pid = process.pid.as_raw(),
                generation,
                message = message.kind(),
                "stopping worker"
            );
            if let Err(err) = send(registry, process, &message, &[]) {
                broken.push((index, err));
            }
        }
        for (index, err) in broken {
            self.channel_failed(index, err);
        }
    }

    fn run_timers(&mut self, now: Instant) {
        let generation = self.generation;
        let stopping = matches!(self.phase, Phase::Stopping { .. });
        let kill_everyone = matches!(self.phase, Phase::Stopping { kill_at, .. } if kill_at <= now);
        let mut failures = Vec::new();
        let mut restarts = Vec::new();
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if let Some(at) = slot.restart_at {
                if at <= now && !stopping {
                    restarts.push(index);
                }
            }
            let Some(process) = slot.process.as_mut() else {
                continue;
            };
            if process.killed {
                continue;
            }
            let pid = process.pid.as_raw();
            let worker_id = slot.worker_id;
            if kill_everyone {
                warn!(
                    worker_id,
                    pid, generation, "worker still running at the stop deadline; killing it"
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
                && process.spawned_at + HANDSHAKE_TIMEOUT <= now
            {
                failures.push((
                    index,
                    format!("not ready within {}s", HANDSHAKE_TIMEOUT.as_secs()),
                ));
            }
        }
        for (index, reason) in failures {
            self.worker_failed(index, reason);
        }
        for index in restarts {
            self.start_worker(index);
        }
        if !stopping && self.next_status_at <= now {
            self.next_status_at = now + STATUS_INTERVAL;
            self.request_status();
        }
    }

    fn request_status(&mut self) {
        let registry = self.poll.registry();
        let mut broken = Vec::new();
        for (index, slot) in self.slots.iter_mut().enumerate() {
            let Some(process) = slot.process.as_mut() else {
                continue;
            };
            if process.state != WorkerState::Running || process.channel.is_none() {
                continue;
            }
            if let Err(err) = send(registry, process, &MasterMessage::StatusRequest, &[]) {
                broken.push((index, err));
            }
        }
        for (index, err) in broken {
            self.channel_failed(index, err);
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut deadlines: Vec<Instant> = Vec::new();
        match &self.phase {
            Phase::Stopping { kill_at, .. } => deadlines.push(*kill_at),
            Phase::Running => deadlines.push(self.next_status_at),
            Phase::Starting => {}
        }
        let stopping = matches!(self.phase, Phase::Stopping { .. });
        for slot in &self.slots {
            if let Some(at) = slot.restart_at.filter(|_| !stopping) {
                deadlines.push(at);
            }
            let Some(process) = &slot.process else {
                continue;
            };
            if process.killed {
                continue;
            }
            if let Some(at) = process.channel_closed_at {
                deadlines.push(at + EOF_KILL_GRACE);
            }
            if matches!(
                process.state,
                WorkerState::AwaitingHello | WorkerState::AwaitingReady
            ) {
                deadlines.push(process.spawned_at + HANDSHAKE_TIMEOUT);
            }
        }
        deadlines.into_iter().min()
    }
}

impl Drop for Supervisor {
    /// Last line of defence (an event-loop error, a panic): never leave a worker running or
    /// a zombie behind. After a normal stop there is nobody left and this does nothing.
    fn drop(&mut self) {
        for slot in &mut self.slots {
            if let Some(process) = slot.process.as_mut() {
                kill_process(process);
                while let Err(Errno::EINTR) = waitpid(process.pid, None) {}
            }
        }
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
fn send(
    registry: &Registry,
    process: &mut WorkerProcess,
    message: &MasterMessage,
    fds: &[BorrowedFd<'_>],
) -> Result<(), ProtocolError> {
    let channel = process.channel.as_mut().ok_or(ProtocolError::Closed)?;
    channel.send(message, fds)?;
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
    // The pid is our unreaped child, so it cannot have been reused by another process.
    match kill(process.pid, Signal::SIGKILL) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(err) => error!(pid = process.pid.as_raw(), error = %err, "cannot kill worker"),
    }
    process.killed = true;
}
