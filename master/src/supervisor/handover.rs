//! Old master: the adapter of the hand-over state machine (`crate::upgrade::handover`). The
//! machine decides; this feeds it what the loop saw (the channels and the client drained, the
//! readiness pipe, the successor reaped, a stop, the clock) and carries out its commands with
//! the fds, the registry and the processes it must not hold itself.
//!
//! [`Supervisor::begin_upgrade`] checks the request, then the machine flushes (the loop waits
//! for writability; no sleeping), starts the new binary with the listeners, the control socket,
//! the worker channels and the requesting client's connection inherited, and waits for
//! `READY <pid>` on a pipe. Until then this master neither reads nor writes the worker channels
//! (the new master reads the same sockets) nor restarts workers. Ready: it leaves at once,
//! touching nothing. Not ready (exit, EOF, timeout, a stop): it kills the new master, resumes
//! once it is reaped, and answers `Failed`.

use std::path::Path;

use zentinel_protocol::control::{CanaryPolicy, UpgradeRequest, WorkerState as CtlState};
use zentinel_protocol::state::{ListenerFd, MasterState, PendingUpgrade, WorkerRecord};

use super::upgrade::UpgradeOp;
use super::*;
use crate::drain_deadline::ClockPair;
use crate::handover_state_file::HandoverStateFile;
use crate::upgrade::handover::{self as machine, Command, Event};
use crate::upgrade::{
    check_binary, ready_pipe, spawn_successor, state_file_path, DEFAULT_READY_TIMEOUT,
};

/// At most this much is read from the readiness pipe per event (the line is far shorter; more
/// is garbage, and the machine gives up on it).
const PIPE_READ_LIMIT: usize = 1024;

/// Old master: handing over to a successor master. The machine decides; this holds what it
/// must not (the client's token, the pipe, the state file).
#[derive(Debug)]
pub(super) struct Handover {
    machine: machine::Handover,
    client: Option<Token>,
    request: HandoverRequest,
    /// The readiness pipe's read end, once the successor was started.
    pipe: Option<OwnedFd>,
    /// Removed when dropped: when the handover fails or this master goes away.
    state_file: Option<HandoverStateFile>,
}

/// What the successor is started with, kept while the channels drain.
#[derive(Debug)]
struct HandoverRequest {
    binary: String,
    rolling: bool,
    drain_timeout_ms: u64,
    ready_timeout: Duration,
    canary: Option<CanaryPolicy>,
}

impl Handover {
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.machine.deadline()
    }
}

impl Supervisor {
    pub(super) fn begin_upgrade(&mut self, client: Option<Token>, request: UpgradeRequest) {
        let UpgradeRequest {
            binary,
            rolling,
            drain_timeout_ms,
            ready_timeout_ms,
            canary,
        } = request;
        if canary.is_some() && !rolling {
            return self.refuse(
                client,
                "refused: a canary needs a rolling upgrade (--rolling)".to_owned(),
            );
        }
        if self.upgrade.is_some() || self.adoption.is_some() {
            return self.refuse(client, "an upgrade is already in progress".to_owned());
        }
        if let Some(reason) = self.busy_reason() {
            return self.refuse(client, format!("refused: {reason}"));
        }
        if let Some(process) = self.processes.values().find(|p| {
            matches!(p.role(), Role::Successor { .. })
                || (!p.killed()
                    && p.channel().is_some()
                    && matches!(
                        p.state(),
                        WorkerState::AwaitingHello | WorkerState::AwaitingReady
                    ))
        }) {
            let message = format!(
                "refused: worker {} (pid {}) is starting; retry once it is running",
                process.worker_id(),
                process.pid().as_raw()
            );
            return self.refuse(client, message);
        }
        if self.control.is_none() {
            return self.refuse(
                client,
                "refused: the master runs without a control socket".to_owned(),
            );
        }
        let binary = binary.unwrap_or_else(|| {
            let path = self.executable.path().display().to_string();
            // A file replaced on disk reads back as "PATH (deleted)"; the new file is at PATH.
            path.strip_suffix(" (deleted)").unwrap_or(&path).to_owned()
        });
        if let Err(reason) = check_binary(Path::new(&binary)) {
            return self.refuse(client, format!("refused: {reason}"));
        }
        let ready_timeout = ready_timeout_ms.map_or(DEFAULT_READY_TIMEOUT, Duration::from_millis);
        // Fixed here, by the master that accepts the request: the state file carries it to the
        // new master, which retires the old workers with it.
        let drain_timeout_ms = drain_timeout_ms.unwrap_or_else(|| {
            u64::try_from(self.config.system.upgrade_drain().as_millis()).unwrap_or(u64::MAX)
        });
        let machine = machine::Handover::new(
            binary.clone(),
            std::process::id(),
            client.is_some(),
            ready_timeout,
            Instant::now(),
        );
        self.upgrade = Some(UpgradeOp::Handover(Handover {
            machine,
            client,
            request: HandoverRequest {
                binary,
                rolling,
                drain_timeout_ms,
                ready_timeout,
                canary,
            },
            pipe: None,
            state_file: None,
        }));
        // Usually nothing is queued: the successor starts on this very turn.
        self.handover_poll(Instant::now());
    }

    /// Each loop turn while handing over: the client gone, everything drained, the deadlines.
    pub(super) fn handover_poll(&mut self, now: Instant) {
        let Some(UpgradeOp::Handover(op)) = self.upgrade.as_mut() else {
            return;
        };
        let client_gone = op
            .client
            .is_some_and(|c| !self.control.as_ref().is_some_and(|s| s.has_client(c)));
        if client_gone {
            op.client = None;
            self.handover_event(Event::ClientGone);
        }
        let Some(UpgradeOp::Handover(op)) = self.upgrade.as_ref() else {
            return;
        };
        if op.machine.flushing() {
            let stuck = self.pending_output(op.client);
            if stuck.is_empty() {
                self.handover_event(Event::Drained);
            } else if op.machine.deadline().is_some_and(|at| at <= now) {
                warn!(stuck = %stuck.join(", "), "upgrade: queued output did not drain");
            }
        }
        self.handover_event(Event::Tick);
    }

    /// What still has output queued: worker channels, and the client's connection.
    fn pending_output(&self, client: Option<Token>) -> Vec<String> {
        let mut stuck: Vec<String> = self
            .processes
            .values()
            .filter(|p| p.channel().is_some_and(Channel::has_pending_output))
            .map(|p| format!("worker {} (pid {})", p.worker_id(), p.pid()))
            .collect();
        if let (Some(c), Some(control)) = (client, self.control.as_ref()) {
            if control.client_output_pending(c) {
                stuck.push("the upgrade's client".to_owned());
            }
        }
        stuck
    }

    fn handover_event(&mut self, event: Event) {
        let Some(UpgradeOp::Handover(op)) = self.upgrade.as_mut() else {
            return;
        };
        for command in op.machine.handle(event, Instant::now()) {
            self.handover_command(command);
        }
        if matches!(&self.upgrade, Some(UpgradeOp::Handover(op)) if op.machine.finished()) {
            // Closes the pipe; after a failure, removes the state file.
            self.upgrade = None;
        }
    }

    fn handover_command(&mut self, command: Command) {
        match command {
            Command::SpawnSuccessor => match self.start_successor() {
                Ok(pid) => self.handover_event(Event::Spawned { pid: pid.as_raw() }),
                Err(message) => self.handover_event(Event::SpawnFailed(message)),
            },
            Command::Suspend => self.handover_suspend(),
            Command::KillSuccessor => self.handover_kill(),
            Command::Resume => self.handover_resume(),
            Command::Fail {
                message,
                tell_client,
            } => {
                error!("upgrade failed: {message}");
                let client = match &self.upgrade {
                    Some(UpgradeOp::Handover(op)) if tell_client => op.client,
                    _ => None,
                };
                self.upgrade_respond(client, ControlResponse::Failed { message }, true);
            }
            Command::Leave => self.handover_complete(),
        }
    }

    /// Write the state file and start the successor; `Err`: why not (nothing changed).
    fn start_successor(&mut self) -> Result<Pid, String> {
        let Some(UpgradeOp::Handover(op)) = self.upgrade.as_ref() else {
            return Err("no upgrade in progress".to_owned());
        };
        let Some(control) = self.control.as_ref() else {
            return Err("refused: the master runs without a control socket".to_owned());
        };
        let request = &op.request;
        let control_path = control.path().to_path_buf();
        let control_fd = control.listener_fd();
        let client_fd = op.client.and_then(|c| control.client_fd(c));
        // The binary the workers run is the one a failed rolling upgrade goes back to.
        let (workers_binary, workers_binary_fd) = {
            let executable = self.worker_executable();
            (executable.path().display().to_string(), executable.raw_fd())
        };
        let mut inherit = vec![control_fd, workers_binary_fd];
        inherit.extend(self.listeners.iter().map(|l| l.fd().as_raw_fd()));
        // Retired workers' drain deadlines travel as CLOCK_MONOTONIC times (crate::drain_deadline).
        let clocks = ClockPair::now();
        let mut workers = Vec::new();
        for process in self.processes.values() {
            let Some(channel) = process.channel() else {
                continue; // exiting; the new master never hears of it
            };
            if process.killed() {
                continue;
            }
            inherit.push(channel.as_raw_fd());
            let state = match (&process.role(), process.state()) {
                (Role::Retired, _) | (_, WorkerState::Draining) => CtlState::Draining,
                _ => CtlState::Running,
            };
            workers.push(WorkerRecord {
                id: process.worker_id(),
                pid: process.pid().as_raw().unsigned_abs(),
                generation: process.generation(),
                channel_fd: channel.as_raw_fd(),
                version: process.version().unwrap_or_default().to_owned(),
                binary: process.binary().to_owned(),
                started_at_unix_ms: unix_ms_ago(process.spawned_at().elapsed()),
                state,
                counters: process.counters().cloned().unwrap_or_default(),
                protocol_version: process.protocol_version(),
                drain_deadline_monotonic_ms: process
                    .drain_deadline()
                    .zip(clocks)
                    .map(|(deadline, clocks)| clocks.monotonic_ms(deadline)),
            });
        }
        inherit.extend(client_fd);
        let (metrics_listener, metrics, metrics_fds) = self.metrics_handover();
        inherit.extend(metrics_fds);
        let (ticket_keys, session_cache) = self.resumption_for_successor(&request.binary);
        inherit.extend(session_cache.as_ref().map(|cache| cache.fd));
        let filter_segments = self.filter_segments_for_successor(&request.binary);
        inherit.extend(filter_segments.iter().map(|segment| segment.fd));
        let state = MasterState {
            previous_master_pid: std::process::id(),
            generation: self.generation + 1,
            config_source: self.config_source.clone(),
            log_level: self.log.level.clone(),
            control_socket_path: control_path.display().to_string(),
            control_socket_fd: control_fd,
            previous_binary: workers_binary,
            previous_executable_fd: workers_binary_fd,
            listeners: self
                .config
                .listeners
                .iter()
                .zip(&self.listeners)
                .map(|(config, bound)| ListenerFd {
                    name: config.name.clone(),
                    address: bound.local_address().to_string(),
                    fd: bound.fd().as_raw_fd(),
                })
                .collect(),
            workers,
            upgrade: Some(PendingUpgrade {
                rolling: request.rolling,
                drain_timeout_ms: request.drain_timeout_ms,
                ready_timeout_ms: u64::try_from(request.ready_timeout.as_millis())
                    .unwrap_or(u64::MAX),
                client_fd,
                canary: request.canary,
            }),
            metrics_listener,
            metrics,
            ticket_keys,
            session_cache,
            filter_segments,
        };
        let state_path = state_file_path(&control_path, std::process::id());
        // From here on every way out of the upgrade (an early return below, the handover
        // failing, a stop, a panic) drops this and with it the file.
        let state_file = HandoverStateFile::write(&state_path, &state)
            .map_err(|err| format!("cannot write the upgrade state: {err}; nothing changed"))?;
        let (pipe_read, pipe_write) = ready_pipe()
            .map_err(|err| format!("cannot create the readiness pipe: {err}; nothing changed"))?;
        let child = spawn_successor(
            Path::new(&request.binary),
            &state_path,
            &pipe_write,
            &inherit,
            self.explicit_log_level.as_deref(),
        )
        .map_err(|err| format!("{err}; nothing changed"))?;
        // Our copy of the write end must go, or the new master's death would not show as EOF.
        drop(pipe_write);
        info!(
            new_master_pid = child.as_raw(),
            binary = %request.binary,
            generation = self.generation + 1,
            rolling = request.rolling,
            ready_timeout_ms = request.ready_timeout.as_millis() as u64,
            state_file = %state_path.display(),
            state_format = zentinel_protocol::state::written_format(&state),
            "upgrade: new master started; waiting for its readiness"
        );
        if let Some(UpgradeOp::Handover(op)) = self.upgrade.as_mut() {
            op.pipe = Some(pipe_read);
            op.state_file = Some(state_file);
        }
        Ok(child)
    }

    /// The successor runs: watch the pipe, and leave the worker channels and the metrics
    /// endpoint to it (two readers would split frames between them).
    fn handover_suspend(&mut self) {
        let Some(UpgradeOp::Handover(op)) = self.upgrade.as_ref() else {
            return;
        };
        let (Some(pid), Some(pipe)) = (op.machine.successor(), op.pipe.as_ref()) else {
            return;
        };
        let registered = nix::fcntl::fcntl(
            pipe,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(io::Error::from)
        .and_then(|_| {
            self.poll.registry().register(
                &mut SourceFd(&pipe.as_raw_fd()),
                UPGRADE_PIPE_TOKEN,
                Interest::READABLE,
            )
        });
        // systemd: like a reload, ended by the new master's READY=1 (or ours if it fails).
        crate::systemd::reloading(&format!(
            "upgrading: new master pid {pid} starting from {}",
            op.request.binary
        ));
        let registry = self.poll.registry();
        if let Some(metrics) = self.metrics.as_mut() {
            metrics.pause(registry);
        }
        for process in self.processes.values_mut() {
            deregister_channel(registry, process);
        }
        if let Err(err) = registered {
            self.handover_event(Event::PipeError(format!(
                "cannot watch the readiness pipe: {err}"
            )));
        }
    }

    /// The readiness pipe is readable (old master), or the previous master's pidfd (new
    /// master: both use the upgrade pipe's token, never at the same time).
    pub(super) fn handover_readable(&mut self) {
        if self.adoption.is_some() {
            return self.previous_master_event();
        }
        for event in self.read_handover_pipe() {
            self.handover_event(event);
        }
    }

    /// Everything the pipe holds now: bytes, then EOF or an error.
    fn read_handover_pipe(&self) -> Vec<Event> {
        let Some(UpgradeOp::Handover(op)) = self.upgrade.as_ref() else {
            return Vec::new();
        };
        let Some(pipe) = op.pipe.as_ref() else {
            return Vec::new();
        };
        let mut bytes = Vec::new();
        let mut end = None;
        let mut chunk = [0u8; 64];
        while bytes.len() <= PIPE_READ_LIMIT {
            match nix::unistd::read(pipe, &mut chunk) {
                Ok(0) => {
                    end = Some(Event::PipeEof);
                    break;
                }
                Ok(n) => bytes.extend_from_slice(&chunk[..n]),
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => continue,
                Err(err) => {
                    end = Some(Event::PipeError(format!(
                        "cannot read the readiness pipe: {err}"
                    )));
                    break;
                }
            }
        }
        let mut events = Vec::new();
        if !bytes.is_empty() {
            events.push(Event::PipeBytes(bytes));
        }
        events.extend(end);
        events
    }

    fn handover_complete(&mut self) {
        let Some(UpgradeOp::Handover(op)) = self.upgrade.as_ref() else {
            return;
        };
        if let Some(pipe) = op.pipe.as_ref() {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&pipe.as_raw_fd()));
        }
        info!(
            new_master_pid = op.machine.successor(),
            binary = %op.request.binary,
            "upgrade: the new master is ready; handing over and exiting"
        );
        // The new master deleted the state file, answers the client and owns the socket file.
        if let Some(control) = self.control.as_mut() {
            control.keep_socket_file();
        }
        self.handed_over = true;
    }

    /// The new master exited (reaped by the loop): `true` if `pid` was it.
    pub(super) fn successor_master_reaped(&mut self, pid: Pid, description: &str) -> bool {
        match &self.upgrade {
            Some(UpgradeOp::Handover(op)) if op.machine.successor() == Some(pid.as_raw()) => {}
            _ => return false,
        }
        // What it wrote before it went comes first: a readiness line it completed counts (it
        // owned everything from then on), one it left half-written does not.
        for event in self.read_handover_pipe() {
            self.handover_event(event);
        }
        self.handover_event(Event::SuccessorReaped {
            status: description.to_owned(),
        });
        true
    }

    /// SIGKILL the new master; the loop reaps it (`successor_master_reaped`).
    fn handover_kill(&mut self) {
        let Some(UpgradeOp::Handover(op)) = self.upgrade.as_ref() else {
            return;
        };
        let Some(pid) = op.machine.successor() else {
            return;
        };
        // systemd: the new master may have claimed MAINPID already (it does so right before
        // confirming). Take it back before it dies, so that systemd never watches a dead main
        // pid, and again once it is gone for sure (`handover_resume`).
        crate::systemd::notify_logged(&format!("MAINPID={}", std::process::id()));
        // Our unreaped child: the pid cannot have been reused.
        match kill(Pid::from_raw(pid), Signal::SIGKILL) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(err) => error!(pid, error = %err, "cannot kill the new master"),
        }
    }

    /// The new master is gone: read the workers again, resume metrics, take the pid file and
    /// systemd's main pid back; the state file goes with the hand-over.
    fn handover_resume(&mut self) {
        let Some(UpgradeOp::Handover(op)) = self.upgrade.as_mut() else {
            return;
        };
        let pipe = op.pipe.take();
        drop(op.state_file.take()); // the new master is gone: nobody will read it
        let binary = op.request.binary.clone();
        self.metrics_upgrade_finished(false);
        let registry = self.poll.registry();
        if let Some(pipe) = &pipe {
            let _ = registry.deregister(&mut SourceFd(&pipe.as_raw_fd()));
        }
        if let Some(metrics) = self.metrics.as_mut() {
            metrics.resume(registry);
        }
        // Resume reading the workers; anything they sent meanwhile is still queued.
        let mut broken = Vec::new();
        for (&token, process) in self.processes.iter_mut() {
            if process.channel().is_none() {
                continue; // closed before the handover; its exit is handled as usual
            }
            if register_channel(registry, process).is_err() {
                broken.push(token);
                continue;
            }
            let _ = update_interest(registry, process);
        }
        for token in broken {
            self.channel_failed(token, ProtocolError::Closed);
        }
        let tokens: Vec<Token> = self.processes.keys().copied().collect();
        for token in tokens {
            self.handle_channel_event(token, true);
        }
        // Every datagram the dead new master sent is queued ahead of this one. A stop that
        // abandoned the upgrade already said STOPPING=1: no READY=1 after it.
        if matches!(self.phase, Phase::Stopping { .. }) {
            crate::systemd::notify_logged(&format!("MAINPID={}", std::process::id()));
        } else {
            // The failed successor may have written its pid already.
            self.write_pid_file();
            crate::systemd::ready(&format!(
                "upgrade to {binary} failed; {}",
                self.serving_status()
            ));
        }
    }

    /// This master stops during the hand-over. The workers must be told now, so a successor
    /// that is running is killed and reaped on the spot: after SIGKILL it runs no more code,
    /// and waitpid returns as soon as the kernel has torn it down.
    pub(super) fn handover_stop(&mut self) {
        self.handover_event(Event::StopRequested);
        let Some(UpgradeOp::Handover(op)) = self.upgrade.as_ref() else {
            return;
        };
        let Some(pid) = op.machine.successor() else {
            return;
        };
        let status = loop {
            match waitpid(Pid::from_raw(pid), None) {
                Err(Errno::EINTR) => continue,
                Ok(WaitStatus::Exited(_, code)) => break format!("exit code {code}"),
                Ok(WaitStatus::Signaled(_, signal, _)) => break format!("killed by {signal}"),
                Ok(other) => break format!("{other:?}"),
                Err(err) => break format!("not reaped: {err}"),
            }
        };
        self.handover_event(Event::SuccessorReaped { status });
    }

    /// Drop (Supervisor's Drop) safety net: never leave a half-started new master behind.
    pub(super) fn kill_successor_master(&mut self) {
        if let Some(UpgradeOp::Handover(op)) = self.upgrade.take() {
            if let Some(pid) = op.machine.successor() {
                let pid = Pid::from_raw(pid);
                let _ = kill(pid, Signal::SIGKILL);
                while let Err(Errno::EINTR) = waitpid(pid, None) {}
            }
            // Dropping `op` removes the state file.
        }
    }

    /// Leave without draining or killing anyone and without removing the control socket
    /// file: the workers belong to another master now (or still to the old one).
    pub(super) fn leave_quietly(&mut self) {
        if let Some(control) = self.control.as_mut() {
            control.keep_socket_file();
        }
        // Closing our channel ends is harmless: the other master holds its own.
        self.processes.clear();
        self.pidfds.clear();
    }
}

/// Wall-clock milliseconds of the instant `ago` before now (for the state file).
pub(super) fn unix_ms_ago(ago: Duration) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(now.saturating_sub(ago).as_millis()).unwrap_or(0)
}
