//! Reloads, inside the supervision loop: the configuration re-read and validated, new
//! listeners bound, every worker sent a `Reconfigure`, then committed once all switched, or
//! rolled back.

use std::path::PathBuf;

use super::*;
use crate::config;
use crate::gatherer::Answer;
use crate::listeners::bind_listener;
use crate::request_ids::Matched;

/// Longest wait for every worker to acknowledge a reload.
pub const RECONFIGURE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why workers are sent a configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    /// `zentinel-ctl reload` or SIGHUP: a configuration read again.
    Reload,
    /// The running configuration, for the OCSP responses fetched again since
    /// (`supervisor::ocsp`): not a reload for the operator, the metrics or systemd.
    OcspRefresh,
}

/// A reload between validation and the last worker's acknowledgement.
#[derive(Debug)]
pub(super) struct ReloadOp {
    pub(super) purpose: Purpose,
    client: Option<Token>,
    config: ProxyConfig,
    config_name: String,
    config_source: ConfigSource,
    /// The metrics endpoint after the reload (bound already if its address moved).
    metrics: super::metrics::MetricsPlan,
    /// The new listener set, in the order of `config.listeners`: duplicates of kept sockets
    /// and freshly bound ones. Dropping it (rollback) leaves the running set untouched.
    listeners: Vec<BoundListener>,
    /// Each worker's `Reconfigure`, by request id, and its answer: `Err` holds the failure
    /// as the client is told it.
    gather: Gatherer<Token, Result<(), String>>,
    /// Workers the configuration could not even be sent to.
    failures: Vec<String>,
    added: Vec<String>,
    removed: Vec<String>,
}

impl ReloadOp {
    /// When the workers that have not answered are given up on.
    pub(super) fn deadline(&self) -> Instant {
        self.gather.deadline()
    }
}

impl Supervisor {
    /// A reload that failed before anything changed: say why, count it, answer the client.
    fn reload_refused(
        &mut self,
        client: Option<Token>,
        purpose: Purpose,
        name: &str,
        err: &dyn std::fmt::Display,
    ) {
        if purpose == Purpose::OcspRefresh {
            return error!("cannot send the refreshed OCSP responses to the workers: {err}");
        }
        let message =
            format!("reload of {name} failed: {err}; the running configuration is unchanged");
        error!("{message}");
        self.metrics_reload_finished(false);
        self.finish(client, ControlResponse::Failed { message });
    }

    /// Re-read and validate the configuration, fetch its OCSP responses, bind new listeners,
    /// and send it to every running worker. `client` is `None` for SIGHUP.
    pub(super) fn begin_reload(&mut self, client: Option<Token>, path: Option<String>) {
        if let Some(reason) = self.reconfigure_blocked() {
            return self.refuse(client, format!("reload refused: {reason}"));
        }
        let path: Option<PathBuf> = path
            .map(PathBuf::from)
            .or_else(|| self.config_source.main_path.as_ref().map(PathBuf::from));
        let (mut new_config, new_metrics, name, source) = match config::load_full_config(
            path.as_deref(),
        ) {
            Ok(loaded) => (
                {
                    config::log_warnings(&loaded.config.warnings);
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
        // Blocks the loop for at most `ocsp_fetch::FETCH_TIMEOUT` (see `supervisor::ocsp`).
        let fetched = self.ocsp.fetch_all(&mut new_config);
        for warning in fetched.warnings {
            self.progress(client, format!("warning: {warning}"));
        }
        config::log_notes(&new_config);
        if new_config.system.control_socket != self.config.system.control_socket {
            warn!("system.control-socket changed: it takes effect at the next master start");
        }
        self.switch_config(
            client,
            Purpose::Reload,
            (new_config, new_metrics, name, source),
        );
    }

    /// Binds the listeners `config` adds and sends it to every running worker; the reload
    /// (or refresh) then completes as they answer.
    pub(super) fn switch_config(
        &mut self,
        client: Option<Token>,
        purpose: Purpose,
        (new_config, new_metrics, name, source): (
            ProxyConfig,
            Option<zentinel_protocol::config::MetricsConfig>,
            String,
            ConfigSource,
        ),
    ) {
        let metrics_plan = match self.metrics_plan(new_metrics) {
            Ok(plan) => plan,
            Err(err) => return self.reload_refused(client, purpose, &name, &err),
        };

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
                Err(err) => return self.reload_refused(client, purpose, &name, &err),
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
                    .is_some_and(|p| p.channel().is_some() && !p.killed())
            })
            .collect();
        self.progress(
            client,
            format!(
                "configuration {name} is valid; switching {} worker(s)",
                targets.len()
            ),
        );
        // A reload that turns session resumption on gets the shared cache made now, before
        // its `Reconfigure`s (which carry it) go out.
        self.session_cache =
            crate::session_cache::ensure(self.session_cache.take(), &new_config, "reload");
        // Likewise the segments of filters new to this configuration (those it keeps go on).
        self.filter_segments.ensure(&new_config, "reload");
        self.reload = Some(ReloadOp {
            purpose,
            client,
            config: new_config,
            config_name: name,
            config_source: source,
            metrics: metrics_plan,
            listeners,
            gather: Gatherer::new(Instant::now() + RECONFIGURE_TIMEOUT),
            failures: Vec::new(),
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
        let request_id = self.request_ids.draw();
        let registry = self.poll.registry();
        let Some(process) = self.processes.get_mut(&token) else {
            return;
        };
        let (config, listeners) = match (kind, &self.reload) {
            (ReconfigureKind::Reload, Some(op)) => (&op.config, &op.listeners),
            (ReconfigureKind::Reload, None) => return,
            (ReconfigureKind::Rollback, _) => (&self.config, &self.listeners),
        };
        // The filters' segments first: the worker's `Reconfigure` takes them.
        let mut failed = None;
        if process.protocol_version() >= FIRST_PROTOCOL_WITH_FILTER_SEGMENTS {
            for (message, fds) in self.filter_segments.messages(config) {
                if let Err(err) = send(registry, process, &message, &fds) {
                    failed = Some(err);
                    break;
                }
            }
        }
        if let Some(err) = failed {
            if let Some(op) = self.reload.as_mut() {
                op.failures.push(format!(
                    "worker {} (pid {}): cannot send the filters' segments: {err}",
                    process.worker_id(),
                    process.pid().as_raw()
                ));
            }
            return self.channel_failed(token, err);
        }
        let cache = crate::session_cache::with_room(self.session_cache.as_ref(), listeners.len());
        let message = MasterMessage::Reconfigure {
            request_id,
            start: WorkerStart {
                worker_id: process.worker_id(),
                session_cache: cache.map(|c| Box::new(c.handle())),
                generation: process.generation(),
                config: Box::new(worker_config(config, self.slots.len())),
                listeners: listeners.iter().map(BoundListener::handle).collect(),
                ticket_keys: Box::new(self.ticket_keys.keys().clone()),
            },
        };
        let fds: Vec<BorrowedFd<'_>> = listeners
            .iter()
            .map(|l| l.as_fd())
            .chain(cache.map(SessionCache::fd))
            .collect();
        match send(registry, process, &message, &fds) {
            Ok(()) => {
                process.sent_reconfigure(request_id, kind);
                if kind == ReconfigureKind::Reload {
                    if let Some(op) = self.reload.as_mut() {
                        op.gather.ask(token, request_id);
                    }
                }
            }
            Err(err) => {
                if let Some(op) = self.reload.as_mut() {
                    op.failures.push(format!(
                        "worker {} (pid {}): cannot send the configuration: {err}",
                        process.worker_id(),
                        process.pid().as_raw()
                    ));
                }
                self.channel_failed(token, err);
            }
        }
    }

    /// `Reconfigured` (`Ok`) or `ReconfigureFailed` from `token`'s worker, for request
    /// `request_id` (ignored from a worker whose answers carry none: matched by order).
    pub(super) fn reconfigure_reply(
        &mut self,
        token: Token,
        request_id: u64,
        result: Result<(), String>,
    ) {
        let Some(process) = self.processes.get_mut(&token) else {
            return;
        };
        let worker_id = process.worker_id();
        let pid = process.pid().as_raw();
        let matched = process.match_reconfigure_answer(request_id);
        let (request_id, kind) = match matched {
            Matched::Request {
                request_id,
                value,
                overtaken,
            } => {
                for (lost, kind) in overtaken {
                    warn!(
                        worker_id,
                        pid,
                        request_id = lost,
                        ?kind,
                        "the answer to a reconfigure went to another master"
                    );
                }
                (request_id, value)
            }
            Matched::Stale | Matched::Unsolicited => {
                warn!(
                    worker_id,
                    pid, request_id, "worker sent a reconfigure reply nobody asked for; ignored"
                );
                return;
            }
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
                let answer = match &result {
                    Ok(()) => Ok(()),
                    Err(reason) => Err(format!(
                        "worker {worker_id} (pid {pid}) refused it: {reason}"
                    )),
                };
                match op.gather.answer(token, request_id, answer, Instant::now()) {
                    Answer::Accepted => match result {
                        Ok(()) => {
                            debug!(worker_id, pid, "worker switched to the new configuration")
                        }
                        Err(reason) => {
                            warn!(worker_id, pid, reason = %reason, "worker refused the new configuration")
                        }
                    },
                    // Another reload's request, or past the deadline: a worker counted as
                    // silent gets the rollback too, queued behind.
                    outcome @ (Answer::Unknown | Answer::Duplicate | Answer::Late) => {
                        debug!(
                            worker_id,
                            pid,
                            request_id,
                            ?outcome,
                            "reconfigure answer not counted"
                        );
                        return;
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
        if op.gather.gone(token) {
            self.reload_check_done();
        }
    }

    /// The workers that have not answered by the deadline are given up on.
    pub(super) fn reload_timeout(&mut self, now: Instant) {
        if self.reload.as_ref().is_some_and(|op| op.deadline() <= now) {
            self.reload_check_done();
        }
    }

    /// Once every worker answered (or went away, or the deadline passed): commit if all
    /// switched, roll back otherwise.
    fn reload_check_done(&mut self) {
        let now = Instant::now();
        if !self
            .reload
            .as_ref()
            .is_some_and(|op| op.gather.is_done(now))
        {
            return;
        }
        let Some(mut op) = self.reload.take() else {
            return;
        };
        // Switched: answered yes and still there (a worker gone since is restarted with
        // whichever configuration is running then).
        let mut switched: Vec<Token> = op
            .gather
            .answers()
            .filter(|(_, answer)| answer.is_ok())
            .map(|(token, _)| token)
            .filter(|token| {
                self.processes
                    .get(token)
                    .is_some_and(|p| p.channel().is_some())
            })
            .collect();
        let refusals: Vec<String> = op
            .gather
            .answers()
            .filter_map(|(_, answer)| answer.as_ref().err().cloned())
            .collect();
        op.failures.extend(refusals);
        for token in op.gather.waiting() {
            if let Some(process) = self.processes.get(&token) {
                op.failures.push(format!(
                    "worker {} (pid {}) did not answer within {}s",
                    process.worker_id(),
                    process.pid().as_raw(),
                    RECONFIGURE_TIMEOUT.as_secs()
                ));
            }
            // The silent ones may still switch: they get the rollback too, queued behind.
            switched.push(token);
        }
        if op.failures.is_empty() {
            self.reload_commit(op, switched.len());
        } else {
            self.reload_rollback(op, &switched);
        }
    }

    fn reload_rollback(&mut self, op: ReloadOp, switched: &[Token]) {
        for &token in switched {
            self.send_reconfigure(token, ReconfigureKind::Rollback);
        }
        let back = if switched.is_empty() {
            String::new()
        } else {
            format!(" ({} worker(s) switched back)", switched.len())
        };
        if op.purpose == Purpose::OcspRefresh {
            return error!(
                "sending the refreshed OCSP responses to the workers failed: {}{back}",
                op.failures.join("; ")
            );
        }
        let message = format!(
            "reload of {} failed: {}; the running configuration ({}) is unchanged{back}",
            op.config_name,
            op.failures.join("; "),
            self.config_name,
        );
        error!("{message}");
        self.metrics_reload_finished(false);
        // Dropping `op.listeners` closes the new sockets and our duplicates of kept ones.
        drop(op.listeners);
        // Segments made for the refused configuration go (the workers that switched back
        // drop their mappings with that generation).
        self.filter_segments.retain_for(&[&self.config]);
        self.finish(op.client, ControlResponse::Failed { message });
    }

    fn reload_commit(&mut self, op: ReloadOp, switched: usize) {
        if op.purpose == Purpose::OcspRefresh {
            self.config = op.config;
            self.listeners = op.listeners;
            self.filter_segments.retain_for(&[&self.config]);
            return info!(
                workers = switched,
                "refreshed OCSP responses sent to the workers"
            );
        }
        let old_count = self.slots.len();
        let old_pid_file = self.config.system.pid_file.clone();
        self.config = op.config;
        // The segments of filters the new configuration no longer has (or changed) close.
        self.filter_segments.retain_for(&[&self.config]);
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
        // The responses of certificates no longer served go (a rollback keeps them: its
        // workers may need them again).
        self.ocsp.remove_unused(&self.config);
        // The old set goes: removed addresses close here (workers already dropped theirs),
        // kept ones live on in their duplicates.
        self.listeners = op.listeners;
        let target = self.config.system.worker_count() as usize;
        let limit = self.config.system.max_draining_generations;
        self.draining_event(crate::draining_generations::Event::Limit(limit));
        // Surplus workers are retired while the service goes on: the upgrade window.
        let drain = self.config.system.upgrade_drain();
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
            switched
        );
        if target != old_count {
            message.push_str(&format!("; workers {old_count} -> {target}"));
        }
        info!("{message}");
        self.finish(op.client, ControlResponse::Done { message });
    }

    pub(super) fn abort_reload(&mut self, reason: &str) {
        if let Some(op) = self
            .reload
            .take()
            .filter(|op| op.purpose == Purpose::Reload)
        {
            self.metrics_reload_finished(false);
            let message = format!("reload of {} abandoned: {reason}", op.config_name);
            warn!("{message}");
            self.finish(op.client, ControlResponse::Failed { message });
        }
    }
}
