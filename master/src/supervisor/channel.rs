//! The worker channels: reading and dispatching worker messages (the handshake as a state
//! machine per worker), and what happens when a channel breaks or a worker misbehaves. Sending,
//! with writable interest kept in step with the backlog, is `workers::channel_io`.

use super::*;

impl Supervisor {
    pub(super) fn handle_channel_event(&mut self, token: Token, writable: bool) {
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
            let protocol_version = process.protocol_version();
            let awaiting_hello = process.state() == WorkerState::AwaitingHello;
            let Some(channel) = process.channel_mut() else {
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

    pub(super) fn handle_message(&mut self, token: Token, message: WorkerMessage) {
        let Some(process) = self.processes.get_mut(&token) else {
            return;
        };
        let worker_id = process.worker_id();
        let generation = process.generation();
        let pid = process.pid().as_raw();
        match (process.state(), message) {
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
                process.hello(hello.software_version);
                self.send_start(token);
            }
            (WorkerState::AwaitingReady, WorkerMessage::Ready) => {
                process.ready(Instant::now());
                info!(
                    worker_id,
                    pid,
                    generation,
                    startup_ms = process.spawned_at().elapsed().as_millis() as u64,
                    "worker ready"
                );
                match process.role() {
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
                    http2,
                    request_id,
                    counters,
                },
            ) => self.status_answer(token, request_id, counters, http2.map(|h| *h)),
            (_, WorkerMessage::Draining { active_connections }) => {
                process.draining();
                info!(
                    worker_id,
                    pid, generation, active_connections, "worker draining"
                );
                if let Some(done) = process.take_restart_done() {
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
                process.set_fatal(reason);
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

    pub(super) fn send_start(&mut self, token: Token) {
        let Some(process) = self.processes.get_mut(&token) else {
            return;
        };
        // The filters' segments first: the worker's `Start` takes them.
        let mut failed = None;
        if process.protocol_version() >= FIRST_PROTOCOL_WITH_FILTER_SEGMENTS {
            for (message, fds) in self.filter_segments.messages(&self.config) {
                if let Err(err) = send(self.poll.registry(), process, &message, &fds) {
                    failed = Some(err);
                    break;
                }
            }
        }
        if let Some(err) = failed {
            return self.channel_failed(token, err);
        }
        let cache =
            crate::session_cache::with_room(self.session_cache.as_ref(), self.listeners.len());
        let start = MasterMessage::Start(WorkerStart {
            worker_id: process.worker_id(),
            session_cache: cache.map(|c| Box::new(c.handle())),
            generation: process.generation(),
            config: Box::new(worker_config(&self.config, self.slots.len())),
            listeners: self.listeners.iter().map(BoundListener::handle).collect(),
            // The keys now: a rotation after this reaches the worker as `TicketKeys`.
            ticket_keys: Box::new(self.ticket_keys.keys().clone()),
        });
        // The session cache's memfd after the listeners'.
        let fds: Vec<BorrowedFd<'_>> = self
            .listeners
            .iter()
            .map(|l| l.as_fd())
            .chain(cache.map(SessionCache::fd))
            .collect();
        process.start_sent();
        if let Err(err) = send(self.poll.registry(), process, &start, &fds) {
            self.channel_failed(token, err);
        }
    }

    /// The channel broke: EOF means the worker is exiting (or died); anything else means it
    /// cannot be talked to any more.
    pub(super) fn channel_failed(&mut self, token: Token, err: ProtocolError) {
        let registry = self.poll.registry();
        let Some(process) = self.processes.get_mut(&token) else {
            return;
        };
        close_channel(registry, process);
        process.channel_closed(Instant::now());
        if err.is_closed() {
            // The worker is exiting or dead: its exit status, reaped shortly, says more than
            // the EOF. One that keeps running is killed after EOF_KILL_GRACE.
            debug!(
                worker_id = process.worker_id(),
                pid = process.pid().as_raw(),
                generation = process.generation(),
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
    pub(super) fn worker_failed(&mut self, token: Token, reason: String) {
        let registry = self.poll.registry();
        let Some(process) = self.processes.get_mut(&token) else {
            return;
        };
        error!(
            worker_id = process.worker_id(),
            pid = process.pid().as_raw(),
            generation = process.generation(),
            reason = %reason,
            "worker failed; killing it"
        );
        process.fatal_unless_known(reason);
        close_channel(registry, process);
        kill_process(process);
        self.cannot_answer(token);
        self.rolling_event(RollingEvent::WorkerSilenced { worker: token });
    }
}
