//! Worker processes from spawn to reap: starting a slot's worker, retiring one, reaping exits
//! and deciding by role what an exit means (restart with backoff, fail the start-up, fail a
//! `worker restart` or a rolling upgrade step).

use super::*;

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

impl Supervisor {
    /// Spawn a worker process, register its channel and send our Hello.
    pub(super) fn spawn_process(&mut self, worker_id: u32, role: Role) -> Result<Token, String> {
        self.spawn_process_from(worker_id, role, false, HANDSHAKE_TIMEOUT)
    }

    /// Spawn from our own executable, or (`previous`) from the previous master's.
    pub(super) fn spawn_process_from(
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
        let mut process = WorkerProcess::new(NewWorker {
            worker_id,
            generation,
            role,
            pid,
            channel: spawned.channel,
            token,
            state: WorkerState::AwaitingHello,
            spawned_at: Instant::now(),
            ready_at: None,
            version: None,
            protocol_version: PROTOCOL_VERSION,
            counters: None,
            drain_deadline: None,
            binary,
            ready_timeout,
            ownership: Ownership::confirmed(),
        });
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
    pub(super) fn worker_executable(&self) -> &Executable {
        match (&self.previous_executable, self.workers_on_previous) {
            (Some(previous), true) => previous,
            _ => &self.executable,
        }
    }

    pub(super) fn start_worker(&mut self, index: usize) {
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

    /// After the last worker's first Ready, the start is complete.
    pub(super) fn check_started(&mut self) {
        if !matches!(self.phase, Phase::Starting) {
            return;
        }
        let all_running = self.slots.iter().all(|slot| {
            slot.current
                .and_then(|token| self.processes.get(&token))
                .is_some_and(|process| process.state() == WorkerState::Running)
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

    /// Stop serving new connections on `token`'s worker and let it drain; it is never
    /// restarted. Returns false if it could not be told (it is killed instead).
    pub(super) fn retire(&mut self, token: Token, drain: Duration) -> bool {
        let registry = self.poll.registry();
        let Some(process) = self.processes.get_mut(&token) else {
            return false;
        };
        process.retire(Instant::now(), drain);
        if process.state() == WorkerState::AwaitingHello || process.channel().is_none() {
            kill_process(process);
            return false;
        }
        let drain_message = MasterMessage::Drain {
            timeout_ms: u64::try_from(drain.as_millis()).unwrap_or(u64::MAX),
        };
        info!(
            worker_id = process.worker_id(),
            pid = process.pid().as_raw(),
            generation = process.generation(),
            timeout_ms = drain.as_millis() as u64,
            "retiring worker"
        );
        let generation = process.generation();
        if let Err(err) = send(registry, process, &drain_message, &[]) {
            self.channel_failed(token, err);
            return false;
        }
        self.draining_event(crate::draining_generations::Event::Retired {
            worker: token,
            generation,
        });
        true
    }

    pub(super) fn reap(&mut self) {
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
                .find(|(_, process)| process.pid() == pid)
                .map(|(token, _)| *token);
            match token {
                Some(token) => self.worker_exited(token, &description, clean),
                None => debug!(pid = pid.as_raw(), status = %description, "reaped unknown child"),
            }
        }
    }

    pub(super) fn worker_exited(&mut self, token: Token, status: &str, clean: bool) {
        let registry = self.poll.registry();
        let stopping = matches!(self.phase, Phase::Stopping { .. });
        let starting = matches!(self.phase, Phase::Starting);
        let Some(mut process) = self.processes.remove(&token) else {
            return;
        };
        close_channel(registry, &mut process);
        self.metrics_worker_exited(&process);
        self.cannot_answer(token);
        self.draining_event(crate::draining_generations::Event::Exited { worker: token });
        self.rolling_event(RollingEvent::WorkerExited { worker: token });
        let worker_id = process.worker_id();
        let generation = process.generation();
        let pid = process.pid().as_raw();
        match process.role() {
            Role::Retired => {
                if clean {
                    info!(worker_id, pid, generation, status, "retired worker exited");
                } else {
                    warn!(worker_id, pid, generation, status, "retired worker exited");
                }
                if let Some(done) = process.take_restart_done() {
                    let message = format!("{}, old exited ({status})", done.message);
                    self.finish(done.client, ControlResponse::Done { message });
                }
                return;
            }
            Role::Successor { upgrade: true, .. } => {
                let reason = process.fatal().unwrap_or("exited during start-up");
                let message = format!(
                    "worker {worker_id}: new worker pid {pid} from {} failed: {reason} ({status})",
                    process.binary()
                );
                error!(worker_id, pid, generation, "{message}");
                self.rolling_event(RollingEvent::SuccessorFailed {
                    successor: token,
                    reason: message,
                });
                return;
            }
            Role::Successor { client, .. } => {
                let reason = process.fatal().unwrap_or("exited during start-up");
                let old_pid = self
                    .slot_index(worker_id)
                    .and_then(|index| self.slots[index].current)
                    .and_then(|old| self.processes.get(&old))
                    .map_or(0, |old| old.pid().as_raw());
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
        if process.counters().is_some() {
            slot.last_counters = process.take_counters();
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
            reason = process.fatal().unwrap_or(""),
            "worker exited unexpectedly"
        );
        // A worker that never became ready fails the start-up (a broken binary or config must
        // not restart in a loop); one that was serving and died is restarted like any other.
        if starting && process.ready_at().is_none() {
            let reason = match &process.fatal() {
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
            .ready_at()
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

    pub(super) fn slot_index(&self, worker_id: u32) -> Option<usize> {
        self.slots
            .iter()
            .position(|slot| slot.worker_id == worker_id)
    }
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
            filters: Vec::new(),
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
