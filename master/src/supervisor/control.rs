//! Control requests, carried out inside the supervision loop: status, stop and worker restart
//! (reloads are [`super::reload`]'s). Each is a small state machine advanced by worker replies
//! and deadlines, so no request ever blocks the loop.

use zentinel_protocol::control::{
    ControlRequest, MasterStatus, StatusReport, UpgradeRequest, WorkerState as CtlState,
    WorkerStatus,
};

use super::*;

/// Longest wait for fresh counters before `Status` answers with stale ones.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait for a replaced worker to acknowledge its drain before `worker restart` is done.
pub const DRAIN_ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// A `Status` waiting for workers' answers.
#[derive(Debug)]
pub(super) struct PendingStatus {
    client: Token,
    /// The status request asked of each worker; the answers' counters are on the processes.
    pub(super) gather: Gatherer<Token, ()>,
}

impl Supervisor {
    pub(super) fn handle_request(&mut self, client: Token, request: ControlRequest) {
        match request {
            // The server answers Hello itself and never passes it on.
            ControlRequest::Hello(_) => {}
            ControlRequest::Status => self.start_status(client),
            ControlRequest::DrainStatus => {
                let report = Box::new(self.drain_status_report(Instant::now()));
                self.finish(Some(client), ControlResponse::DrainStatus(report));
            }
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
        let mut gather = Gatherer::new(Instant::now() + STATUS_TIMEOUT);
        let tokens: Vec<Token> = self.processes.keys().copied().collect();
        for token in tokens {
            if let Some(request_id) = self.ask_status(token) {
                gather.ask(token, request_id);
            }
        }
        self.pending_status.push(PendingStatus { client, gather });
        self.status_progress();
    }

    /// Answer every pending `Status` whose workers all answered (or went away).
    pub(super) fn status_progress(&mut self) {
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending_status)
            .into_iter()
            .partition(|pending| pending.gather.all_answered());
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
            .partition(|pending| pending.gather.is_done(now));
        self.pending_status = waiting;
        for pending in expired {
            let stale: Vec<Token> = pending.gather.waiting().collect();
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
        let state = if process.killed() || process.channel().is_none() {
            CtlState::Stopped
        } else {
            match (&process.role(), process.state()) {
                (_, WorkerState::AwaitingHello | WorkerState::AwaitingReady) => CtlState::Starting,
                (Role::Retired, _) | (_, WorkerState::Draining) => CtlState::Draining,
                (_, WorkerState::Running) => CtlState::Running,
            }
        };
        let (restarts, next_restart_delay_ms, last_exit) = restart_figures(slot);
        WorkerStatus {
            id: process.worker_id(),
            pid: process.pid().as_raw().unsigned_abs(),
            generation: process.generation(),
            version: process.version().unwrap_or_default().to_owned(),
            binary: process.binary().to_owned(),
            state,
            uptime_s: process.spawned_at().elapsed().as_secs(),
            counters: process.counters().cloned().unwrap_or_default(),
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
                    stale.contains(&process.token()),
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
                let retired = matches!(process.role(), Role::Retired);
                let current = matches!(process.role(), Role::Current);
                if !current && retired == want_retired {
                    workers.push(self.worker_status(
                        process,
                        None,
                        stale.contains(&process.token()),
                    ));
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
        match self.reload.as_ref().map(|op| op.purpose) {
            Some(reload::Purpose::Reload) => return Some("a reload is in progress".into()),
            Some(reload::Purpose::OcspRefresh) => {
                return Some("refreshed OCSP responses are being sent to the workers".into())
            }
            None => {}
        }
        if self.upgrade.is_some() || self.adoption.is_some() {
            return Some("an upgrade is in progress".into());
        }
        None
    }

    /// Why workers cannot be sent a configuration now, if they cannot.
    pub(super) fn reconfigure_blocked(&self) -> Option<String> {
        if let Some(reason) = self.busy_reason() {
            return Some(reason);
        }
        if let Some(process) = self
            .processes
            .values()
            .find(|process| match process.role() {
                Role::Successor { .. } => true,
                Role::Current => process.state() != WorkerState::Running,
                Role::Retired => false,
            })
        {
            return Some(format!(
                "worker {} (pid {}) is starting; retry once it is running",
                process.worker_id(),
                process.pid().as_raw()
            ));
        }
        // A worker adopted from an older binary reads configurations only in its own layout.
        let older: Vec<String> = self
            .processes
            .values()
            .filter(|p| {
                matches!(p.role(), Role::Current) && p.protocol_version() != PROTOCOL_VERSION
            })
            .map(|p| {
                format!(
                    "worker {} (pid {}, protocol {})",
                    p.worker_id(),
                    p.pid().as_raw(),
                    p.protocol_version()
                )
            })
            .collect();
        if !older.is_empty() {
            return Some(format!(
                "workers still on the previous binary cannot read this binary's configuration \
                 (protocol {PROTOCOL_VERSION}): {}; replace them first with `zentinel-ctl \
                 upgrade --rolling`",
                older.join(", ")
            ));
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
            process.worker_id() == worker_id && matches!(process.role(), Role::Successor { .. })
        });
        if in_progress {
            let message = format!("a restart of worker {worker_id} is already in progress");
            return self.refuse(Some(client), message);
        }
        let old = self.slots[index]
            .current
            .and_then(|token| self.processes.get(&token));
        let Some(old) = old.filter(|old| old.state() == WorkerState::Running) else {
            let message = format!("worker {worker_id} is not running (it is being restarted)");
            return self.refuse(Some(client), message);
        };
        let old_pid = old.pid().as_raw();
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
                    .map_or(0, |process| process.pid().as_raw());
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
        if matches!(process.role(), Role::Successor { upgrade: true, .. }) {
            return self.rolling_successor_ready(token);
        }
        let client = match process.replace_role(Role::Current) {
            Role::Successor { client, .. } => client,
            _ => None,
        };
        let worker_id = process.worker_id();
        let pid = process.pid().as_raw();
        let ready_ms = process.spawned_at().elapsed().as_millis();
        let Some(index) = self.slot_index(worker_id) else {
            // The slot went away (cannot happen while restarts and reloads exclude each
            // other); do not leave an orphan serving.
            self.retire(token, self.config.system.upgrade_drain());
            return self.refuse(client, format!("worker {worker_id} no longer exists"));
        };
        let old = self.slots[index].current.replace(token);
        self.slots[index].backoff = Backoff::default();
        let Some(old) = old.filter(|old| self.processes.contains_key(old)) else {
            let message = format!("worker {worker_id}: pid {pid} ready in {ready_ms} ms");
            return self.finish(client, ControlResponse::Done { message });
        };
        let old_pid = self.processes.get(&old).map_or(0, |p| p.pid().as_raw());
        let drain = self.config.system.upgrade_drain();
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
                process.expect_drain_ack(PendingDone {
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
