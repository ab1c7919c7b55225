//! Binary upgrades, inside the supervision loop (design note, sections 4-6).
//!
//! Old master: [`Supervisor::begin_upgrade`] writes the state file, starts the new binary with
//! the listeners, the control socket, the worker channels and the requesting client's
//! connection inherited, and waits (in the loop, bounded) for `READY <pid>` on a pipe. Until
//! then it neither reads nor writes the worker channels (the new master reads the same
//! sockets) nor restarts workers. Ready: it leaves at once, touching nothing. Not ready (exit,
//! EOF, timeout): it kills the new master, resumes, and answers `Failed`.
//!
//! New master: [`Supervisor::adopt`] takes the workers over (pidfd + channel EOF, no waitpid),
//! checks that each answers a status request, confirms readiness, tells the client
//! `MasterReplaced`, and with `--rolling` replaces the workers one at a time from its own
//! executable, rolling the replaced ones back to the previous executable on failure.

use std::collections::VecDeque;
use std::io::Read;
use std::os::unix::net::UnixStream;

use zentinel_protocol::control::{UpgradeRequest, WorkerState as CtlState};
use zentinel_protocol::state::{ListenerFd, MasterState, PendingUpgrade, WorkerRecord};

use super::rolling::RollingOp;
use super::*;
use crate::drain_deadline::{adopted_drain_deadline, ClockPair};
use crate::handover_state_file::HandoverStateFile;
use crate::upgrade::{
    check_binary, pidfd_open, ready_pipe, spawn_successor, state_file_path, write_ready,
    DEFAULT_READY_TIMEOUT, READY_PREFIX,
};

/// Longest wait to flush queued output to workers and the client before the handover.
const HANDOVER_FLUSH_BUDGET: Duration = Duration::from_millis(500);

/// What a successor master took over, validated by `main` (every fd checked and CLOEXEC).
#[derive(Debug)]
pub struct Inherited {
    pub previous_master_pid: u32,
    pub previous_executable: Executable,
    /// Each worker's record and its channel.
    pub workers: Vec<(WorkerRecord, OwnedFd)>,
    pub upgrade: Option<PendingUpgrade>,
    /// The control client waiting for the upgrade's progress.
    pub client: Option<UnixStream>,
    /// Where readiness is confirmed.
    pub ready_fd: OwnedFd,
    /// The claim every adopted resource carries (the control socket too): tentative until
    /// readiness is confirmed.
    pub ownership: crate::ownership::Ownership,
}

#[derive(Debug)]
pub(super) enum UpgradeOp {
    Handover(Handover),
    Rolling(RollingOp),
}

/// Old master: the new one runs and has not confirmed readiness yet.
#[derive(Debug)]
pub(super) struct Handover {
    client: Option<Token>,
    child: Pid,
    pipe: OwnedFd,
    buf: Vec<u8>,
    /// Removed when dropped: when the handover fails or this master goes away.
    state_file: HandoverStateFile,
    binary: String,
    deadline: Instant,
}

/// New master: taking over until the adopted workers answered.
#[derive(Debug)]
pub(super) struct Adoption {
    waits: Vec<(Token, u64)>,
    deadline: Instant,
    previous_master_pid: u32,
    pending: Option<PendingUpgrade>,
    /// The upgrade's client, registered only on confirmation (until then the connection is
    /// the previous master's).
    client: Option<UnixStream>,
}

impl Supervisor {
    pub(super) fn handing_over(&self) -> bool {
        matches!(self.upgrade, Some(UpgradeOp::Handover(_)))
    }

    /// Tell an upgrade's client something (progress or the final answer).
    pub(super) fn upgrade_respond(
        &mut self,
        client: Option<Token>,
        response: ControlResponse,
        last: bool,
    ) {
        let (Some(client), Some(control)) = (client, self.control.as_mut()) else {
            return;
        };
        if last {
            control.finish(self.poll.registry(), client, &response);
        } else {
            control.respond(self.poll.registry(), client, &response);
        }
    }

    // ----- old master -----

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
            matches!(p.role, Role::Successor { .. })
                || (!p.killed
                    && p.channel.is_some()
                    && matches!(
                        p.state,
                        WorkerState::AwaitingHello | WorkerState::AwaitingReady
                    ))
        }) {
            let message = format!(
                "refused: worker {} (pid {}) is starting; retry once it is running",
                process.worker_id,
                process.pid.as_raw()
            );
            return self.refuse(client, message);
        }
        let Some(control) = self.control.as_ref() else {
            return self.refuse(
                client,
                "refused: the master runs without a control socket".to_owned(),
            );
        };
        let binary = binary.unwrap_or_else(|| {
            let path = self.executable.path().display().to_string();
            // A file replaced on disk reads back as "PATH (deleted)"; the new file is at PATH.
            path.strip_suffix(" (deleted)").unwrap_or(&path).to_owned()
        });
        let binary_path = PathBuf::from(&binary);
        if let Err(reason) = check_binary(&binary_path) {
            return self.refuse(client, format!("refused: {reason}"));
        }
        let ready_timeout = ready_timeout_ms.map_or(DEFAULT_READY_TIMEOUT, Duration::from_millis);
        let drain_timeout_ms = drain_timeout_ms.unwrap_or(
            self.config
                .system
                .graceful_shutdown_timeout_secs
                .saturating_mul(1000),
        );
        let control_path = control.path().to_path_buf();
        let control_fd = control.listener_fd();
        let client_fd = client.and_then(|c| control.client_fd(c));

        // Nothing may stay queued in our buffers: the new master takes over the sockets,
        // not our memory.
        let registry = self.poll.registry();
        let deadline = Instant::now() + HANDOVER_FLUSH_BUDGET;
        for process in self.processes.values_mut() {
            while process
                .channel
                .as_ref()
                .is_some_and(Channel::has_pending_output)
                && Instant::now() < deadline
            {
                match process.channel.as_mut().map(Channel::flush) {
                    Some(Ok(false)) => std::thread::sleep(Duration::from_millis(2)),
                    _ => break,
                }
            }
            let _ = update_interest(registry, process);
        }
        if let (Some(c), Some(control)) = (client, self.control.as_mut()) {
            control.flush_client(c, HANDOVER_FLUSH_BUDGET);
        }

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
            let Some(channel) = process.channel.as_ref() else {
                continue; // exiting; the new master never hears of it
            };
            if process.killed {
                continue;
            }
            inherit.push(channel.as_raw_fd());
            let state = match (&process.role, process.state) {
                (Role::Retired, _) | (_, WorkerState::Draining) => CtlState::Draining,
                _ => CtlState::Running,
            };
            workers.push(WorkerRecord {
                id: process.worker_id,
                pid: process.pid.as_raw().unsigned_abs(),
                generation: process.generation,
                channel_fd: channel.as_raw_fd(),
                version: process.version.clone().unwrap_or_default(),
                binary: process.binary.clone(),
                started_at_unix_ms: unix_ms_ago(process.spawned_at.elapsed()),
                state,
                counters: process.counters.clone().unwrap_or_default(),
                protocol_version: process.protocol_version,
                drain_deadline_monotonic_ms: process
                    .drain_deadline
                    .zip(clocks)
                    .map(|(deadline, clocks)| clocks.monotonic_ms(deadline)),
            });
        }
        inherit.extend(client_fd);
        let (metrics_listener, metrics, metrics_fds) = self.metrics_handover();
        inherit.extend(metrics_fds);
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
                rolling,
                drain_timeout_ms,
                ready_timeout_ms: u64::try_from(ready_timeout.as_millis()).unwrap_or(u64::MAX),
                client_fd,
                canary,
            }),
            metrics_listener,
            metrics,
        };
        let state_path = state_file_path(&control_path, std::process::id());
        // From here on every way out of the upgrade (an early return below, the handover
        // failing, a stop, a panic) drops this and with it the file.
        let state_file = match HandoverStateFile::write(&state_path, &state) {
            Ok(file) => file,
            Err(err) => {
                return self.refuse(
                    client,
                    format!("cannot write the upgrade state: {err}; nothing changed"),
                );
            }
        };
        let (pipe_read, pipe_write) = match ready_pipe() {
            Ok(pipe) => pipe,
            Err(err) => {
                return self.refuse(
                    client,
                    format!("cannot create the readiness pipe: {err}; nothing changed"),
                );
            }
        };
        let child = match spawn_successor(
            &binary_path,
            &state_path,
            &pipe_write,
            &inherit,
            self.explicit_log_level.as_deref(),
        ) {
            Ok(pid) => pid,
            Err(err) => {
                return self.refuse(client, format!("{err}; nothing changed"));
            }
        };
        // Our copy of the write end must go, or the new master's death would not show as EOF.
        drop(pipe_write);
        let registered = nix::fcntl::fcntl(
            &pipe_read,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(io::Error::from)
        .and_then(|_| {
            self.poll.registry().register(
                &mut SourceFd(&pipe_read.as_raw_fd()),
                UPGRADE_PIPE_TOKEN,
                Interest::READABLE,
            )
        });
        info!(
            new_master_pid = child.as_raw(),
            binary = %binary,
            generation = self.generation + 1,
            rolling,
            ready_timeout_ms = ready_timeout.as_millis() as u64,
            state_file = %state_path.display(),
            "upgrade: new master started; waiting for its readiness"
        );
        // systemd: like a reload, ended by the new master's READY=1 (or ours if it fails).
        crate::systemd::reloading(&format!(
            "upgrading: new master pid {} starting from {binary}",
            child.as_raw()
        ));
        // The new master reads the worker channels from now on: two readers would split
        // frames between them.
        let registry = self.poll.registry();
        if let Some(metrics) = self.metrics.as_mut() {
            metrics.pause(registry);
        }
        for process in self.processes.values_mut() {
            if let Some(channel) = process.channel.as_ref() {
                let _ = registry.deregister(&mut SourceFd(&channel.as_raw_fd()));
            }
            process.wants_write = false;
        }
        self.upgrade = Some(UpgradeOp::Handover(Handover {
            client,
            child,
            pipe: pipe_read,
            buf: Vec::new(),
            state_file,
            binary,
            deadline: Instant::now() + ready_timeout,
        }));
        if let Err(err) = registered {
            self.handover_failed(None, format!("cannot watch the readiness pipe: {err}"));
        }
    }

    pub(super) fn handover_readable(&mut self) {
        let Some(UpgradeOp::Handover(handover)) = self.upgrade.as_mut() else {
            return;
        };
        let mut file = std::fs::File::from(match handover.pipe.try_clone() {
            Ok(fd) => fd,
            Err(err) => {
                return self.handover_failed(None, format!("cannot read the readiness pipe: {err}"))
            }
        });
        let mut chunk = [0u8; 64];
        loop {
            match file.read(&mut chunk) {
                Ok(0) => {
                    return self.handover_failed(
                        None,
                        "it closed the readiness pipe without confirming".to_owned(),
                    )
                }
                Ok(n) => {
                    handover.buf.extend_from_slice(&chunk[..n]);
                    if handover.buf.len() > 256 {
                        return self.handover_failed(
                            None,
                            "it wrote garbage on the readiness pipe".into(),
                        );
                    }
                    if let Some(end) = handover.buf.iter().position(|&b| b == b'\n') {
                        let line = String::from_utf8_lossy(&handover.buf[..end]).into_owned();
                        let confirmed = line
                            .strip_prefix(READY_PREFIX)
                            .and_then(|pid| pid.trim().parse::<i32>().ok())
                            == Some(handover.child.as_raw());
                        if confirmed {
                            return self.handover_complete();
                        }
                        return self
                            .handover_failed(None, format!("unexpected readiness line {line:?}"));
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    return self
                        .handover_failed(None, format!("cannot read the readiness pipe: {err}"))
                }
            }
        }
    }

    fn handover_complete(&mut self) {
        let Some(UpgradeOp::Handover(handover)) = self.upgrade.take() else {
            return;
        };
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&handover.pipe.as_raw_fd()));
        info!(
            new_master_pid = handover.child.as_raw(),
            binary = %handover.binary,
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
            Some(UpgradeOp::Handover(handover)) if handover.child == pid => {}
            _ => return false,
        }
        self.handover_failed(
            Some(description.to_owned()),
            format!("it exited ({description})"),
        );
        true
    }

    /// Kill the new master (unless already reaped), clean up, resume, and answer `Failed`.
    fn handover_failed(&mut self, reaped: Option<String>, reason: String) {
        let Some(UpgradeOp::Handover(handover)) = self.upgrade.take() else {
            return;
        };
        self.metrics_upgrade_finished(false);
        let registry = self.poll.registry();
        let _ = registry.deregister(&mut SourceFd(&handover.pipe.as_raw_fd()));
        if let Some(metrics) = self.metrics.as_mut() {
            metrics.resume(registry);
        }
        let mut reason = reason;
        // systemd: the new master may have claimed MAINPID already (it does so right before
        // confirming; see adoption_progress). Take it back before it dies, so that systemd
        // never watches a dead main pid, and again below once it is gone for sure.
        let reclaim = format!("MAINPID={}", std::process::id());
        crate::systemd::notify_logged(&reclaim);
        if reaped.is_none() {
            let _ = kill(handover.child, Signal::SIGKILL);
            loop {
                match waitpid(handover.child, None) {
                    Err(Errno::EINTR) => continue,
                    Ok(WaitStatus::Exited(_, code)) if !reason.contains("exit") => {
                        reason.push_str(&format!(" (it exited with code {code})"));
                        break;
                    }
                    _ => break,
                }
            }
        }
        drop(handover.state_file); // the new master is gone: nobody will read it
                                   // Resume reading the workers; anything they sent meanwhile is still queued.
        let mut broken = Vec::new();
        for (&token, process) in self.processes.iter_mut() {
            if process.channel.is_none() {
                continue; // closed before the handover; its exit is handled as usual
            }
            process.wants_write = false;
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
        let message = format!(
            "new master {} (pid {}) did not become ready: {reason}; this master (pid {}) keeps \
             serving, nothing changed",
            handover.binary,
            handover.child.as_raw(),
            std::process::id()
        );
        error!("upgrade failed: {message}");
        // Every datagram the dead new master sent is queued ahead of this one. A stop that
        // abandoned the upgrade already said STOPPING=1: no READY=1 after it.
        if matches!(self.phase, Phase::Stopping { .. }) {
            crate::systemd::notify_logged(&reclaim);
        } else {
            // The failed successor may have written its pid already.
            self.write_pid_file();
            crate::systemd::ready(&format!(
                "upgrade to {} failed; {}",
                handover.binary,
                self.serving_status()
            ));
        }
        self.upgrade_respond(handover.client, ControlResponse::Failed { message }, true);
    }

    /// Drop (Supervisor's Drop) safety net: never leave a half-started new master behind.
    pub(super) fn kill_successor_master(&mut self) {
        if let Some(UpgradeOp::Handover(handover)) = self.upgrade.take() {
            let _ = kill(handover.child, Signal::SIGKILL);
            while let Err(Errno::EINTR) = waitpid(handover.child, None) {}
            // Dropping `handover` removes the state file.
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

    // ----- new master -----

    /// Take the previous master's workers over and start checking that they answer.
    pub(super) fn adopt(&mut self, inherited: Inherited) {
        // First: whatever fails below, the pipe closes only with the supervisor.
        self.ready_pipe = Some(inherited.ready_fd);
        self.previous_executable = Some(inherited.previous_executable);
        self.phase = Phase::Running;
        let drain = Duration::from_secs(self.config.system.graceful_shutdown_timeout_secs);
        let clocks = ClockPair::now();
        let mut adopted = Vec::new();
        for (record, channel_fd) in inherited.workers {
            let pid = Pid::from_raw(i32::try_from(record.pid).unwrap_or(0));
            let pidfd = match pidfd_open(pid) {
                Ok(fd) => fd,
                Err(err) if err.raw_os_error() == Some(libc::ESRCH) => {
                    // Gone already: its slot gets a new worker once the takeover is confirmed.
                    warn!(worker_id = record.id, pid = record.pid, error = %err, "adopted worker is gone");
                    continue;
                }
                Err(err) => {
                    // Alive but unwatchable (EMFILE under a low open-file limit, say): this
                    // master could not supervise it, so the previous one must stay.
                    return self.abandon_takeover(format!(
                        "cannot watch adopted worker {} (pid {}): pidfd_open: {err}",
                        record.id, record.pid
                    ));
                }
            };
            let token = Self::alloc_token(&mut self.next_token);
            let pidfd_token = Self::alloc_token(&mut self.next_token);
            let retired = record.state == CtlState::Draining;
            // The deadline it was retired with, whatever our configuration says (issue 14).
            let drain_deadline = retired
                .then(|| adopted_drain_deadline(record.drain_deadline_monotonic_ms, clocks, drain));
            let drain_left_ms = drain_deadline.map(|deadline| {
                let left = deadline.saturating_duration_since(Instant::now());
                u64::try_from(left.as_millis()).unwrap_or(u64::MAX)
            });
            let mut process = WorkerProcess {
                worker_id: record.id,
                generation: record.generation,
                role: if retired {
                    Role::Retired
                } else {
                    Role::Current
                },
                pid,
                channel: Some(Channel::from_owned_fd(channel_fd)),
                token,
                wants_write: false,
                state: if retired {
                    WorkerState::Draining
                } else {
                    WorkerState::Running
                },
                spawned_at: instant_of_unix_ms(record.started_at_unix_ms),
                ready_at: Some(Instant::now()),
                channel_closed_at: None,
                killed: false,
                fatal: None,
                version: Some(record.version),
                protocol_version: record.protocol_version,
                counters: Some(record.counters),
                status_sent: 0,
                status_received: 0,
                drain_deadline,
                restart_done: None,
                reconfigures: VecDeque::new(),
                binary: record.binary,
                pidfd: None,
                ready_timeout: HANDSHAKE_TIMEOUT,
                // Told to drain by the previous master: its drain time is not ours to measure.
                drain_started: None,
                ownership: inherited.ownership.clone(),
                kill_deferred: false,
            };
            let registry = self.poll.registry();
            let registered = register_channel(registry, &mut process).and_then(|()| {
                registry
                    .register(
                        &mut SourceFd(&pidfd.as_raw_fd()),
                        pidfd_token,
                        Interest::READABLE,
                    )
                    .map_err(ProtocolError::from)
            });
            process.pidfd = Some((pidfd, pidfd_token));
            self.pidfds.insert(pidfd_token, token);
            info!(
                worker_id = process.worker_id,
                pid = record.pid,
                generation = process.generation,
                retired,
                drain_left_ms,
                drain_deadline_recorded = record.drain_deadline_monotonic_ms.is_some(),
                "adopted worker"
            );
            if !retired {
                if let Some(index) = self.slot_index(process.worker_id) {
                    if self.slots[index].current.is_none() {
                        self.slots[index].current = Some(token);
                    } else {
                        process.role = Role::Retired;
                    }
                } else {
                    // The configuration has fewer workers than were running: not ours to keep.
                    process.role = Role::Retired;
                }
            }
            self.processes.insert(token, process);
            if let Err(err) = registered {
                return self.abandon_takeover(format!(
                    "cannot poll adopted worker {} (pid {}): {err}",
                    record.id, record.pid
                ));
            }
            adopted.push(token);
        }
        let now = Instant::now();
        for slot in &mut self.slots {
            if slot.current.is_none() {
                slot.restart_at = Some(now);
            }
        }
        let ready_timeout = inherited
            .upgrade
            .as_ref()
            .map_or(DEFAULT_READY_TIMEOUT, |u| {
                Duration::from_millis(u.ready_timeout_ms)
            });
        let waits = adopted
            .into_iter()
            .filter_map(|token| self.ask_status(token).map(|seq| (token, seq)))
            .collect();
        self.adoption = Some(Adoption {
            waits,
            deadline: now + ready_timeout,
            previous_master_pid: inherited.previous_master_pid,
            pending: inherited.upgrade,
            client: inherited.client,
        });
        self.adoption_progress();
    }

    /// An adopted worker's pidfd became readable: it exited (status unknown: not our child).
    pub(super) fn adopted_exited(&mut self, token: Token) {
        let Some(process) = self.processes.get(&token) else {
            return;
        };
        if let Some((pidfd, pidfd_token)) = process.pidfd.as_ref() {
            if !crate::upgrade::pidfd_exited(pidfd) {
                return;
            }
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&pidfd.as_raw_fd()));
            self.pidfds.remove(pidfd_token);
        }
        let clean = process.channel_closed_at.is_some() || matches!(process.role, Role::Retired);
        self.worker_exited(token, "exited (adopted: exit status unknown)", clean);
        self.adoption_progress();
    }

    /// Confirm readiness once every adopted worker answered (or went away).
    pub(super) fn adoption_progress(&mut self) {
        let Some(adoption) = self.adoption.as_ref() else {
            return;
        };
        if !self.all_answered(&adoption.waits) {
            return;
        }
        let Some(adoption) = self.adoption.take() else {
            return;
        };
        let client = match self.prepare_confirmation(adoption.client) {
            Ok(client) => client,
            Err(reason) => return self.abandon_takeover(reason),
        };
        if self.takeover_fault() {
            return;
        }
        // systemd (Type=notify, NotifyAccess=all): we are the main process from here on.
        // Said BEFORE the previous master learns that we are ready, so the datagram is
        // queued before that master can exit: systemd reads notifications ahead of SIGCHLD,
        // and sees the main pid move instead of the main process dying. If confirming fails
        // after this, the previous master takes MAINPID back (handover_failed).
        self.write_pid_file();
        crate::systemd::ready(&format!(
            "serving: took over from pid {} (generation {}, binary {})",
            adoption.previous_master_pid,
            self.generation,
            self.executable.path().display()
        ));
        let Some(ready_pipe) = self.ready_pipe.take() else {
            return self.abandon_takeover("the readiness pipe is gone".to_owned());
        };
        if let Err(err) = write_ready(ready_pipe) {
            return self.abandon_takeover(format!("cannot confirm readiness: {err}"));
        }
        self.confirm_takeover();
        let binary = self.executable.path().display().to_string();
        // From the old master's fork to readiness.
        let ready_ms = crate::upgrade::time_since_spawn()
            .unwrap_or_else(|| self.started_at.elapsed())
            .as_millis();
        let ready_ms = u64::try_from(ready_ms).unwrap_or(u64::MAX);
        info!(
            previous_master_pid = adoption.previous_master_pid,
            generation = self.generation,
            binary = %binary,
            workers = self.processes.len(),
            ready_ms,
            "took over from the previous master"
        );
        self.upgrade_respond(
            client,
            ControlResponse::MasterReplaced {
                old_pid: adoption.previous_master_pid,
                new_pid: std::process::id(),
                ready_ms,
                generation: self.generation,
                binary: binary.clone(),
            },
            false,
        );
        match adoption.pending {
            Some(pending) if pending.rolling => self.begin_rolling(client, &pending),
            _ => {
                self.metrics_upgrade_finished(true);
                let message = format!(
                    "upgrade complete: master on {binary}, generation {} (workers not replaced)",
                    self.generation
                );
                self.upgrade_respond(client, ControlResponse::Done { message }, true);
            }
        }
    }

    pub(super) fn abort_upgrade(&mut self, reason: &str) {
        match self.upgrade.take() {
            Some(rolling @ UpgradeOp::Rolling(_)) => {
                self.upgrade = Some(rolling);
                self.rolling_event(RollingEvent::Abort {
                    reason: reason.to_owned(),
                });
            }
            Some(handover @ UpgradeOp::Handover(_)) => {
                self.upgrade = Some(handover);
                self.handover_failed(None, reason.to_owned());
            }
            None => {}
        }
    }

    pub(super) fn upgrade_timers(&mut self, now: Instant) {
        if let Some(adoption) = &self.adoption {
            if adoption.deadline <= now {
                let silent: Vec<String> = adoption
                    .waits
                    .iter()
                    .filter_map(|(token, seq)| {
                        self.processes
                            .get(token)
                            .filter(|p| p.status_received < *seq && p.channel.is_some())
                            .map(|p| format!("worker {} (pid {})", p.worker_id, p.pid))
                    })
                    .collect();
                let reason = format!(
                    "adopted workers did not answer in time: {}",
                    silent.join(", ")
                );
                error!("{reason}");
                self.takeover_failed = Some(reason);
                return;
            }
        }
        match &self.upgrade {
            Some(UpgradeOp::Handover(handover)) if handover.deadline <= now => {
                self.handover_failed(None, "no readiness confirmation in time".to_owned());
            }
            Some(UpgradeOp::Rolling(_)) => self.rolling_timers(now),
            _ => {}
        }
    }

    pub(super) fn upgrade_deadline(&self) -> Option<Instant> {
        if let Some(adoption) = &self.adoption {
            return Some(adoption.deadline);
        }
        match &self.upgrade {
            Some(UpgradeOp::Handover(handover)) => Some(handover.deadline),
            Some(UpgradeOp::Rolling(_)) => self.rolling_deadline(),
            _ => None,
        }
    }
}

/// Wall-clock milliseconds of the instant `ago` before now (for the state file).
fn unix_ms_ago(ago: Duration) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(now.saturating_sub(ago).as_millis()).unwrap_or(0)
}

/// The monotonic instant of a wall-clock time from the state file (uptimes in status).
fn instant_of_unix_ms(ms: u64) -> Instant {
    let now_ms = unix_ms_ago(Duration::ZERO);
    let ago = Duration::from_millis(now_ms.saturating_sub(ms));
    Instant::now().checked_sub(ago).unwrap_or_else(Instant::now)
}
