//! Control requests, carried out inside the supervision loop: status, stop, worker restart
//! and reload. Each is a small state machine advanced by worker replies and deadlines, so no
//! request ever blocks the loop.

use std::collections::BTreeSet;
use std::path::PathBuf;

use zentinel_protocol::control::{
    ControlRequest, MasterStatus, StatusReport, UpgradeRequest, WorkerState as CtlState,
    WorkerStatus,
};

use super::*;
use crate::config;
use crate::listeners::bind_listener;

/// Longest wait for fresh counters before `Status` answers with stale ones.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait for every worker to acknowledge a reload.
pub const RECONFIGURE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for a replaced worker to acknowledge its drain before `worker restart` is done.
pub const DRAIN_ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// A `Status` waiting for workers' replies.
#[derive(Debug)]
pub(super) struct PendingStatus {
    client: Token,
    /// (worker, number of the reply that answers our request).
    waits: Vec<(Token, u64)>,
    pub(super) deadline: Instant,
}

/// A reload between validation and the last worker's acknowledgement.
#[derive(Debug)]
pub(super) struct ReloadOp {
    client: Option<Token>,
    config: ProxyConfig,
    config_name: String,
    config_source: ConfigSource,
    /// The metrics endpoint after the reload (bound already if its address moved).
    metrics: super::metrics::MetricsPlan,
    /// The new listener set, in the order of `config.listeners`: duplicates of kept sockets
    /// and freshly bound ones. Dropping it (rollback) leaves the running set untouched.
    listeners: Vec<BoundListener>,
    waiting: BTreeSet<Token>,
    switched: Vec<Token>,
    failures: Vec<String>,
    pub(super) deadline: Instant,
    added: Vec<String>,
    removed: Vec<String>,
}

impl Supervisor {
    pub(super) fn handle_request(&mut self, client: Token, request: ControlRequest) {
        match request {
            // The server answers Hello itself and never passes it on.
            ControlRequest::Hello(_) => {}
            ControlRequest::Status => self.start_status(client),
            ControlRequest::RunningConfig => {
                let source = Box::new(self.config_source.clone());
                self.finish(Some(client), ControlResponse::RunningConfig(source));
            }
            ControlRequest::Stop {
                fast,
                drain_timeout_ms,
            } => {
                let kind = if fast {
                    StopKind::Fast
                } else {
                    StopKind::Graceful
                };
                let drain = drain_timeout_ms.map(Duration::from_millis);
                let message = if fast {
                    "stopping now (fast)".to_owned()
                } else {
                    let secs = drain
                        .map_or(self.config.system.graceful_shutdown_timeout_secs, |d| {
                            d.as_secs()
                        });
                    format!("stopping gracefully (drain timeout {secs}s)")
                };
                info!(
                    fast,
                    drain_timeout_ms, "stop requested over the control socket"
                );
                self.progress(Some(client), message);
                self.stop_clients.push(client);
                self.begin_stop(kind, None, drain);
            }
            ControlRequest::WorkerRestart { worker_id } => self.start_restart(client, worker_id),
            ControlRequest::Reload { config_path } => self.begin_reload(Some(client), config_path),
            ControlRequest::Upgrade {
                binary,
                rolling,
                drain_timeout_ms,
                ready_timeout_ms,
            } => self.begin_upgrade(
                Some(client),
                UpgradeRequest {
                    binary,
                    rolling,
                    drain_timeout_ms,
                    ready_timeout_ms,
                    canary: None,
                },
            ),
            ControlRequest::UpgradeWith(request) => self.begin_upgrade(Some(client), *request),
        }
    }

    /// The final answer to a request (dropped if the client is gone or it was SIGHUP's).
    pub(super) fn finish(&mut self, client: Option<Token>, response: ControlResponse) {
        if let (Some(client), Some(control)) = (client, self.control.as_mut()) {
            control.finish(self.poll.registry(), client, &response);
        }
    }

    pub(super) fn progress(&mut self, client: Option<Token>, message: String) {
        if let (Some(client), Some(control)) = (client, self.control.as_mut()) {
            control.progress(self.poll.registry(), client, message);
        }
    }

    pub(super) fn refuse(&mut self, client: Option<Token>, message: String) {
        warn!(reason = %message, "control request refused");
        self.finish(client, ControlResponse::Failed { message });
    }

    // ----- status -----

    fn start_status(&mut self, client: Token) {
        let tokens: Vec<Token> = self.processes.keys().copied().collect();
        let waits = tokens
            .into_iter()
            .filter_map(|token| self.ask_status(token).map(|seq| (token, seq)))
            .collect();
        self.pending_status.push(PendingStatus {
            client,
            waits,
            deadline: Instant::now() + STATUS_TIMEOUT,
        });
        self.status_progress();
    }

    /// Answer every pending `Status` whose workers all replied (or went away).
    pub(super) fn status_progress(&mut self) {
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending_status)
            .into_iter()
            .partition(|pending| self.all_answered(&pending.waits));
        self.pending_status = waiting;
        for pending in ready {
            let report = self.status_report(&[]);
            self.finish(Some(pending.client), ControlResponse::Status(report));
        }
        self.adoption_progress();
    }

    pub(super) fn status_timeouts(&mut self, now: Instant) {
        let (expired, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending_status)
            .into_iter()
            .partition(|pending| pending.deadline <= now);
        self.pending_status = waiting;
        for pending in expired {
            let stale: Vec<Token> = pending
                .waits
                .iter()
                .filter(|(token, seq)| {
                    self.processes
                        .get(token)
                        .is_some_and(|process| process.status_received < *seq)
                })
                .map(|(token, _)| *token)
                .collect();
            warn!(
                silent_workers = stale.len(),
                "status: some workers did not answer in time; reporting their last counters"
            );
            let report = self.status_report(&stale);
            self.finish(Some(pending.client), ControlResponse::Status(report));
        }
    }

    /// `slot`: the slot `process` currently serves (restart figures), if any.
    fn worker_status(
        &self,
        process: &WorkerProcess,
        slot: Option<&WorkerSlot>,
        stale: bool,
    ) -> WorkerStatus {
        let state = if process.killed || process.channel.is_none() {
            CtlState::Stopped
        } else {
            match (&process.role, process.state) {
                (_, WorkerState::AwaitingHello | WorkerState::AwaitingReady) => CtlState::Starting,
                (Role::Retired, _) | (_, WorkerState::Draining) => CtlState::Draining,
                (_, WorkerState::Running) => CtlState::Running,
            }
        };
        let (restarts, next_restart_delay_ms, last_exit) = restart_figures(slot);
        WorkerStatus {
            id: process.worker_id,
            pid: process.pid.as_raw().unsigned_abs(),
            generation: process.generation,
            version: process.version.clone().unwrap_or_default(),
            binary: process.binary.clone(),
            state,
            uptime_s: process.spawned_at.elapsed().as_secs(),
            counters: process.counters.clone().unwrap_or_default(),
            stale,
            restarts,
            next_restart_delay_ms,
            last_exit,
        }
    }

    fn status_report(&self, stale: &[Token]) -> StatusReport {
        let mut workers = Vec::new();
        for slot in &self.slots {
            match slot.current.and_then(|token| self.processes.get(&token)) {
                Some(process) => workers.push(self.worker_status(
                    process,
                    Some(slot),
                    stale.contains(&process.token),
                )),
                // Between a crash and its restart.
                None => {
                    let (restarts, next_restart_delay_ms, last_exit) = restart_figures(Some(slot));
                    workers.push(WorkerStatus {
                        id: slot.worker_id,
                        pid: 0,
                        generation: self.generation,
                        version: String::new(),
                        binary: self.executable.path().display().to_string(),
                        state: CtlState::Stopped,
                        uptime_s: 0,
                        counters: slot.last_counters.clone().unwrap_or_default(),
                        stale: true,
                        restarts,
                        next_restart_delay_ms,
                        last_exit,
                    })
                }
            }
        }
        // Successors, then retired workers, oldest first.
        for want_retired in [false, true] {
            for process in self.processes.values() {
                let retired = matches!(process.role, Role::Retired);
                let current = matches!(process.role, Role::Current);
                if !current && retired == want_retired {
                    workers.push(self.worker_status(process, None, stale.contains(&process.token)));
                }
            }
        }
        StatusReport {
            master: MasterStatus {
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                generation: self.generation,
                binary: self.executable.path().display().to_string(),
                uptime_s: self.started_at.elapsed().as_secs(),
                config: self.config_name.clone(),
            },
            workers,
        }
    }

    // ----- worker restart -----

    pub(super) fn busy_reason(&self) -> Option<String> {
        match self.phase {
            Phase::Starting => return Some("the master is still starting its workers".into()),
            Phase::Stopping { .. } => return Some("the master is stopping".into()),
            Phase::Running => {}
        }
        if self.reload.is_some() {
            return Some("a reload is in progress".into());
        }
        if self.upgrade.is_some() || self.adoption.is_some() {
            return Some("an upgrade is in progress".into());
        }
        None
    }

    fn start_restart(&mut self, client: Token, worker_id: u32) {
        if let Some(reason) = self.busy_reason() {
            return self.refuse(
                Some(client),
                format!("worker restart {worker_id}: {reason}"),
            );
        }
        let Some(index) = self.slot_index(worker_id) else {
            let message = format!(
                "unknown worker id {worker_id} (workers are 0..={})",
                self.slots.len().saturating_sub(1)
            );
            return self.refuse(Some(client), message);
        };
        let in_progress = self.processes.values().any(|process| {
            process.worker_id == worker_id && matches!(process.role, Role::Successor { .. })
        });
        if in_progress {
            let message = format!("a restart of worker {worker_id} is already in progress");
            return self.refuse(Some(client), message);
        }
        let old = self.slots[index]
            .current
            .and_then(|token| self.processes.get(&token));
        let Some(old) = old.filter(|old| old.state == WorkerState::Running) else {
            let message = format!("worker {worker_id} is not running (it is being restarted)");
            return self.refuse(Some(client), message);
        };
        let old_pid = old.pid.as_raw();
        match self.spawn_process(
            worker_id,
            Role::Successor {
                client: Some(client),
                upgrade: false,
            },
        ) {
            Ok(token) => {
                let pid = self
                    .processes
                    .get(&token)
                    .map_or(0, |process| process.pid.as_raw());
                self.progress(
                    Some(client),
                    format!("worker {worker_id}: started pid {pid} to replace pid {old_pid}; waiting until it is ready"),
                );
            }
            Err(reason) => {
                let message = format!(
                    "worker {worker_id}: cannot start a new worker: {reason}; pid {old_pid} keeps serving"
                );
                self.refuse(Some(client), message);
            }
        }
    }

    /// The successor is ready: it takes the slot and the old worker drains.
    pub(super) fn promote_successor(&mut self, token: Token) {
        let Some(process) = self.processes.get_mut(&token) else {
            return;
        };
        if matches!(process.role, Role::Successor { upgrade: true, .. }) {
            return self.rolling_successor_ready(token);
        }
        let client = match std::mem::replace(&mut process.role, Role::Current) {
            Role::Successor { client, .. } => client,
            _ => None,
        };
        let worker_id = process.worker_id;
        let pid = process.pid.as_raw();
        let ready_ms = process.spawned_at.elapsed().as_millis();
        let Some(index) = self.slot_index(worker_id) else {
            // The slot went away (cannot happen while restarts and reloads exclude each
            // other); do not leave an orphan serving.
            self.retire(
                token,
                Duration::from_secs(self.config.system.graceful_shutdown_timeout_secs),
            );
            return self.refuse(client, format!("worker {worker_id} no longer exists"));
        };
        let old = self.slots[index].current.replace(token);
        self.slots[index].backoff = Backoff::default();
        let Some(old) = old.filter(|old| self.processes.contains_key(old)) else {
            let message = format!("worker {worker_id}: pid {pid} ready in {ready_ms} ms");
            return self.finish(client, ControlResponse::Done { message });
        };
        let old_pid = self.processes.get(&old).map_or(0, |p| p.pid.as_raw());
        let drain = Duration::from_secs(self.config.system.graceful_shutdown_timeout_secs);
        info!(
            worker_id,
            old_pid,
            new_pid = pid,
            ready_ms = ready_ms as u64,
            "worker replaced; draining the old one"
        );
        self.progress(
            client,
            format!("worker {worker_id}: pid {pid} ready in {ready_ms} ms; draining pid {old_pid}"),
        );
        let message =
            format!("worker {worker_id}: pid {old_pid} -> pid {pid} ready in {ready_ms} ms");
        if self.retire(old, drain) {
            if let Some(process) = self.processes.get_mut(&old) {
                process.restart_done = Some(PendingDone {
                    client,
                    message,
                    deadline: Instant::now() + DRAIN_ACK_TIMEOUT,
                });
                return;
            }
        }
        let message = format!("{message}, old worker killed (it could not be told to drain)");
        self.finish(client, ControlResponse::Done { message });
    }

    // ----- reload -----

    /// Re-read and validate the configuration, bind new listeners, and send it to every
    /// running worker. `client` is `None` for SIGHUP.
    pub(super) fn begin_reload(&mut self, client: Option<Token>, path: Option<String>) {
        if let Some(reason) = self.busy_reason() {
            return self.refuse(client, format!("reload refused: {reason}"));
        }
        if let Some(process) = self.processes.values().find(|process| match process.role {
            Role::Successor { .. } => true,
            Role::Current => process.state != WorkerState::Running,
            Role::Retired => false,
        }) {
            let message = format!(
                "reload refused: worker {} (pid {}) is starting; retry once it is running",
                process.worker_id,
                process.pid.as_raw()
            );
            return self.refuse(client, message);
        }
        // A worker adopted from an older binary reads configurations only in its own layout.
        let older: Vec<String> = self
            .processes
            .values()
            .filter(|p| matches!(p.role, Role::Current) && p.protocol_version != PROTOCOL_VERSION)
            .map(|p| {
                format!(
                    "worker {} (pid {}, protocol {})",
                    p.worker_id,
                    p.pid.as_raw(),
                    p.protocol_version
                )
            })
            .collect();
        if !older.is_empty() {
            let message = format!(
                "reload refused: workers still on the previous binary cannot read this \
                 binary's configuration (protocol {PROTOCOL_VERSION}): {}; replace them first \
                 with `zentinel-ctl upgrade --rolling`",
                older.join(", ")
            );
            return self.refuse(client, message);
        }
        let path: Option<PathBuf> = path
            .map(PathBuf::from)
            .or_else(|| self.config_source.main_path.as_ref().map(PathBuf::from));
        let (new_config, new_metrics, name, source) = match config::load_full_config(
            path.as_deref(),
        ) {
            Ok(loaded) => (
                {
                    config::log_warnings(&loaded.config.warnings);
                    config::log_notes(&loaded.config.proxy);
                    let log = crate::logging::LogSettings::resolve(
                        self.explicit_log_level.as_deref(),
                        &loaded.config.logging,
                    );
                    if log != self.log {
                        warn!(
                            "observability.logging changed: it takes effect at the next start \
                             or binary upgrade (workers log like the master that started them)"
                        );
                    }
                    loaded.config.proxy
                },
                loaded.config.metrics,
                loaded.name,
                loaded.source,
            ),
            Err(diagnostics) => {
                let mut message = format!(
                    "configuration {} is invalid ({} error{}); the running configuration is unchanged",
                    path.as_ref().map_or_else(|| config::DEFAULT_CONFIG_NAME.to_owned(), |p| p.display().to_string()),
                    diagnostics.len(),
                    if diagnostics.len() == 1 { "" } else { "s" }
                );
                for diagnostic in &diagnostics {
                    message.push('\n');
                    message.push_str(&diagnostic.to_string());
                }
                error!("reload failed: {message}");
                self.metrics_reload_finished(false);
                return self.finish(client, ControlResponse::Failed { message });
            }
        };
        let metrics_plan = match self.metrics_plan(new_metrics) {
            Ok(plan) => plan,
            Err(err) => {
                let message = format!(
                    "reload of {name} failed: {err}; the running configuration is unchanged"
                );
                error!("{message}");
                self.metrics_reload_finished(false);
                return self.finish(client, ControlResponse::Failed { message });
            }
        };
        if new_config.system.control_socket != self.config.system.control_socket {
            warn!("system.control-socket changed: it takes effect at the next master start");
        }

        // Listener diff, by configured address: a kept address keeps its kernel socket.
        let mut listeners = Vec::with_capacity(new_config.listeners.len());
        let mut added = Vec::new();
        for listener in &new_config.listeners {
            let kept = self
                .config
                .listeners
                .iter()
                .position(|old| old.address == listener.address)
                .and_then(|index| self.listeners.get(index));
            let bound = match kept {
                Some(old) => old.try_clone_as(listener).map_err(|err| {
                    format!(
                        "listener \"{}\": cannot duplicate the socket of {}: {err}",
                        listener.name,
                        old.local_address()
                    )
                }),
                None => bind_listener(listener)
                    .map_err(|err| err.to_string())
                    .inspect(|bound| {
                        added.push(format!("{} ({})", bound.name(), bound.local_address()));
                    }),
            };
            match bound {
                Ok(bound) => listeners.push(bound),
                Err(err) => {
                    let message = format!(
                        "reload of {name} failed: {err}; the running configuration is unchanged"
                    );
                    error!("{message}");
                    self.metrics_reload_finished(false);
                    return self.finish(client, ControlResponse::Failed { message });
                }
            }
        }
        let removed: Vec<String> = self
            .config
            .listeners
            .iter()
            .zip(&self.listeners)
            .filter(|(old, _)| {
                !new_config
                    .listeners
                    .iter()
                    .any(|new| new.address == old.address)
            })
            .map(|(_, bound)| format!("{} ({})", bound.name(), bound.local_address()))
            .collect();

        let targets: Vec<Token> = self
            .slots
            .iter()
            .filter_map(|slot| slot.current)
            .filter(|token| {
                self.processes
                    .get(token)
                    .is_some_and(|p| p.channel.is_some() && !p.killed)
            })
            .collect();
        self.progress(
            client,
            format!(
                "configuration {name} is valid; switching {} worker(s)",
                targets.len()
            ),
        );
        self.reload = Some(ReloadOp {
            client,
            config: new_config,
            config_name: name,
            config_source: source,
            metrics: metrics_plan,
            listeners,
            waiting: BTreeSet::new(),
            switched: Vec::new(),
            failures: Vec::new(),
            deadline: Instant::now() + RECONFIGURE_TIMEOUT,
            added,
            removed,
        });
        for token in targets {
            self.send_reconfigure(token, ReconfigureKind::Reload);
        }
        self.reload_check_done();
    }

    /// Send the pending reload's configuration (or, for a rollback, the running one).
    fn send_reconfigure(&mut self, token: Token, kind: ReconfigureKind) {
        let registry = self.poll.registry();
        let Some(process) = self.processes.get_mut(&token) else {
            return;
        };
        let (config, listeners) = match (kind, &self.reload) {
            (ReconfigureKind::Reload, Some(op)) => (&op.config, &op.listeners),
            (ReconfigureKind::Reload, None) => return,
            (ReconfigureKind::Rollback, _) => (&self.config, &self.listeners),
        };
        let message = MasterMessage::Reconfigure(WorkerStart {
            worker_id: process.worker_id,
            generation: process.generation,
            config: Box::new(worker_config(config, self.slots.len())),
            listeners: listeners.iter().map(BoundListener::handle).collect(),
        });
        let fds: Vec<BorrowedFd<'_>> = listeners.iter().map(|l| l.as_fd()).collect();
        match send(registry, process, &message, &fds) {
            Ok(()) => {
                process.reconfigures.push_back(kind);
                if kind == ReconfigureKind::Reload {
                    if let Some(op) = self.reload.as_mut() {
                        op.waiting.insert(token);
                    }
                }
            }
            Err(err) => {
                if let Some(op) = self.reload.as_mut() {
                    op.failures.push(format!(
                        "worker {} (pid {}): cannot send the configuration: {err}",
                        process.worker_id,
                        process.pid.as_raw()
                    ));
                }
                self.channel_failed(token, err);
            }
        }
    }

    pub(super) fn reconfigure_reply(&mut self, token: Token, result: Result<(), String>) {
        let Some(process) = self.processes.get_mut(&token) else {
            return;
        };
        let worker_id = process.worker_id;
        let pid = process.pid.as_raw();
        let Some(kind) = process.reconfigures.pop_front() else {
            warn!(
                worker_id,
                pid, "worker sent a reconfigure reply nobody asked for; ignored"
            );
            return;
        };
        match kind {
            ReconfigureKind::Rollback => match result {
                Ok(()) => info!(
                    worker_id,
                    pid, "worker rolled back to the running configuration"
                ),
                Err(reason) => {
                    // It runs a configuration the master no longer has: replace it.
                    self.worker_failed(
                        token,
                        format!("cannot roll back to the running configuration: {reason}"),
                    );
                }
            },
            ReconfigureKind::Reload => {
                let Some(op) = self.reload.as_mut() else {
                    // A late answer after a timeout: its rollback is already queued behind.
                    return;
                };
                if !op.waiting.remove(&token) {
                    return;
                }
                match result {
                    Ok(()) => {
                        debug!(worker_id, pid, "worker switched to the new configuration");
                        op.switched.push(token);
                    }
                    Err(reason) => {
                        warn!(worker_id, pid, reason = %reason, "worker refused the new configuration");
                        op.failures.push(format!(
                            "worker {worker_id} (pid {pid}) refused it: {reason}"
                        ));
                    }
                }
                self.reload_check_done();
            }
        }
    }

    /// A worker went away during a reload: nothing to wait for. It is restarted later, with
    /// whichever configuration is running then.
    pub(super) fn reload_forget(&mut self, token: Token) {
        let Some(op) = self.reload.as_mut() else {
            return;
        };
        op.switched.retain(|t| *t != token);
        if op.waiting.remove(&token) {
            self.reload_check_done();
        }
    }

    pub(super) fn reload_timeout(&mut self, now: Instant) {
        let Some(op) = self.reload.as_mut() else {
            return;
        };
        if op.deadline > now || op.waiting.is_empty() {
            return;
        }
        for token in &op.waiting {
            if let Some(process) = self.processes.get(token) {
                op.failures.push(format!(
                    "worker {} (pid {}) did not answer within {}s",
                    process.worker_id,
                    process.pid.as_raw(),
                    RECONFIGURE_TIMEOUT.as_secs()
                ));
            }
        }
        // The silent ones may still switch: they get the rollback too, queued behind.
        let silent = std::mem::take(&mut op.waiting);
        op.switched.extend(silent);
        self.reload_check_done();
    }

    fn reload_check_done(&mut self) {
        let Some(op) = self.reload.as_ref() else {
            return;
        };
        if !op.waiting.is_empty() {
            return;
        }
        let Some(op) = self.reload.take() else {
            return;
        };
        if op.failures.is_empty() {
            self.reload_commit(op);
        } else {
            self.reload_rollback(op);
        }
    }

    fn reload_rollback(&mut self, op: ReloadOp) {
        for &token in &op.switched {
            self.send_reconfigure(token, ReconfigureKind::Rollback);
        }
        let message = format!(
            "reload of {} failed: {}; the running configuration ({}) is unchanged{}",
            op.config_name,
            op.failures.join("; "),
            self.config_name,
            if op.switched.is_empty() {
                String::new()
            } else {
                format!(" ({} worker(s) switched back)", op.switched.len())
            }
        );
        error!("{message}");
        self.metrics_reload_finished(false);
        // Dropping `op.listeners` closes the new sockets and our duplicates of kept ones.
        drop(op.listeners);
        self.finish(op.client, ControlResponse::Failed { message });
    }

    fn reload_commit(&mut self, op: ReloadOp) {
        let old_count = self.slots.len();
        let old_pid_file = self.config.system.pid_file.clone();
        self.config = op.config;
        self.config_name = op.config_name;
        self.config_source = op.config_source;
        if self.config.system.pid_file != old_pid_file {
            if let Some(old) = &old_pid_file {
                crate::pid_file::remove_if_ours(old, std::process::id());
            }
            self.write_pid_file();
        }
        self.metrics_apply(op.metrics);
        self.metrics_reload_finished(true);
        // The old set goes: removed addresses close here (workers already dropped theirs),
        // kept ones live on in their duplicates.
        self.listeners = op.listeners;
        let target = worker_count(self.config.system.worker_processes) as usize;
        let drain = Duration::from_secs(self.config.system.graceful_shutdown_timeout_secs);
        while self.slots.len() > target {
            if let Some(slot) = self.slots.pop() {
                if let Some(token) = slot.current {
                    self.retire(token, drain);
                }
            }
        }
        while self.slots.len() < target {
            let worker_id = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
            self.slots.push(WorkerSlot::new(worker_id));
            self.start_worker(self.slots.len() - 1);
        }
        let list = |items: &[String]| {
            if items.is_empty() {
                "none".to_owned()
            } else {
                items.join(", ")
            }
        };
        let mut message = format!(
            "reloaded {}: listeners added: {}; removed: {}; {} worker(s) switched",
            self.config_name,
            list(&op.added),
            list(&op.removed),
            op.switched.len()
        );
        if target != old_count {
            message.push_str(&format!("; workers {old_count} -> {target}"));
        }
        info!("{message}");
        self.finish(op.client, ControlResponse::Done { message });
    }

    pub(super) fn abort_reload(&mut self, reason: &str) {
        if let Some(op) = self.reload.take() {
            self.metrics_reload_finished(false);
            let message = format!("reload of {} abandoned: {reason}", op.config_name);
            warn!("{message}");
            self.finish(op.client, ControlResponse::Failed { message });
        }
    }
}

/// A worker's restart figures in status: its slot's crash count, next backoff and last exit
/// (zero and empty for successors and retired workers, whose deaths are never restarts).
fn restart_figures(slot: Option<&WorkerSlot>) -> (u32, u64, String) {
    match slot {
        Some(slot) => (
            slot.restarts,
            slot.backoff.peek().as_millis() as u64,
            slot.last_exit.clone().unwrap_or_default(),
        ),
        None => (0, 0, String::new()),
    }
}
