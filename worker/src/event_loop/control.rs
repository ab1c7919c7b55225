//! The master's messages: reading the channel, reloads (a `Reconfigure` checked in full, then
//! installed as a new generation), retiring the pools no generation uses any more, and
//! installing a generation at start or on reload.

use super::*;

impl Worker {
    pub(super) fn on_channel(&mut self, now: Instant) -> Control {
        if !self.channel_open {
            return Control::Continue;
        }
        loop {
            match self.channel.recv() {
                Ok(Some(mut frame)) => {
                    let fds = frame.take_fds();
                    match frame.deserialize::<MasterMessage>() {
                        Ok(msg) => {
                            if let Control::Exit = self.on_message(msg, fds, now) {
                                return Control::Exit;
                            }
                        }
                        Err(e) => warn!(
                            error = %e,
                            fds = fds.len(),
                            "ignoring an invalid message from the master (closing the fds it carried)"
                        ),
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    match e {
                        ProtocolError::Closed => {
                            warn!("master channel closed: draining")
                        }
                        e => error!(error = %e, "master channel failed: draining"),
                    }
                    self.channel_open = false;
                    let _ = self
                        .poll
                        .registry()
                        .deregister(&mut SourceFd(&self.channel.as_raw_fd()));
                    self.start_drain(self.drain_settings.timeout, now);
                    return Control::Continue;
                }
            }
        }
        if self.channel_pending() {
            if let Err(e) = self.channel.flush() {
                warn!(error = %e, "cannot flush the master channel");
            }
        }
        Control::Continue
    }

    pub(super) fn on_message(
        &mut self,
        msg: MasterMessage,
        fds: Vec<OwnedFd>,
        now: Instant,
    ) -> Control {
        if let MasterMessage::Reconfigure { request_id, start } = msg {
            self.reconfigure(request_id, &start, fds);
            return Control::Continue;
        }
        if let MasterMessage::FilterSegments(handles) = msg {
            let mapped = self.shared.current.router.filter_segments();
            self.pending_segments.add(&handles, fds, mapped);
            return Control::Continue;
        }
        if !fds.is_empty() {
            // Closing them here is all that is needed: they are duplicates.
            warn!(
                message = msg.kind(),
                fds = fds.len(),
                "closing fds attached to a message that takes none"
            );
            drop(fds);
        }
        match msg {
            MasterMessage::StatusRequest { request_id } => {
                let mut counters = self.shared.counters.snapshot();
                counters.active_connections = self.sessions.len() as u64;
                // The id goes back as it came: the master matches answers to requests by it.
                self.send(&WorkerMessage::Status {
                    http2: self.shared.counters.http2_snapshot(),
                    request_id,
                    counters,
                });
            }
            MasterMessage::Drain { timeout_ms } => {
                self.start_drain(Duration::from_millis(timeout_ms), now);
            }
            MasterMessage::FinishDrain => self.finish_drain(now),
            MasterMessage::Stop => {
                info!(active = self.sessions.len(), "stop requested: exiting now");
                return Control::Exit;
            }
            MasterMessage::TicketKeys(keys) => {
                self.resumption.ticketer.replace(&keys);
                info!(
                    keys = ?self.resumption.ticketer,
                    "TLS session-ticket keys replaced: new tickets use the first"
                );
            }
            MasterMessage::Hello(_) | MasterMessage::Start(_) => {
                warn!("ignoring a handshake message after startup");
            }
            // Handled above (they need the fds).
            MasterMessage::Reconfigure { .. } | MasterMessage::FilterSegments(_) => {}
        }
        Control::Continue
    }

    /// `Reconfigure`: validate everything first (any error changes nothing and closes the
    /// received fds), then switch listeners and configuration for new connections. The answer
    /// carries `request_id`.
    pub(super) fn reconfigure(&mut self, request_id: u64, ws: &WorkerStart, mut fds: Vec<OwnedFd>) {
        let generation = ws.generation;
        // The filters' segments handed just before: this configuration's, whatever comes of it.
        let segments = std::mem::take(&mut self.pending_segments);
        // The shared session cache: kept if this worker has one (the master hands the same
        // one again), else mapped now, e.g. when this reload is the first to resume sessions.
        let cache_fd = crate::session_cache::split_fds(ws, &mut fds);
        if self.resumption.cache.is_none() {
            self.resumption.cache =
                crate::session_cache::attach(ws.session_cache.as_deref(), cache_fd);
        }
        let refuse = |w: &mut Worker, reason: String| {
            warn!(
                config_generation = generation,
                %reason,
                "reconfigure refused: keeping the running configuration"
            );
            w.send(&WorkerMessage::ReconfigureFailed { request_id, reason });
        };
        if self.drain.is_some() {
            return refuse(self, "worker is draining".into());
        }
        if ws.worker_id != self.worker_id {
            return refuse(
                self,
                format!(
                    "Reconfigure is for worker {}, but this is worker {}",
                    ws.worker_id, self.worker_id
                ),
            );
        }
        let candidate =
            match Candidate::validate(ws, fds, "Reconfigure", &self.resumption, &segments) {
                Ok(c) => c,
                Err(reason) => return refuse(self, reason),
            };
        // The new set goes into the poll before the old one leaves it, so there is no moment
        // without a listener polled. (No queued connection could be lost either way: the
        // master keeps every kernel socket open; ours are duplicates.)
        if let Err(e) = candidate.listeners.register(self.poll.registry()) {
            return refuse(self, format!("cannot poll the new listener set: {e}"));
        }
        let registry = self.poll.registry();
        let (generation_new, set, max_connections, drain_settings) = build_generation(
            candidate,
            &mut self.shared.upstreams,
            &self.shared.current.pools,
            registry,
            &mut self.shared.timers,
        );
        if let Some(old) = self.listeners.replace(set) {
            if let Err(e) = old.deregister(registry) {
                warn!(error = %e, "cannot deregister the previous listener set");
            }
            // Closes our duplicates and the old set's epoll instance (whose registrations go
            // with it even though the master still holds the sockets).
            drop(old);
        }
        let old = std::mem::replace(&mut self.shared.current, Rc::new(generation_new));
        self.retired.push(Rc::downgrade(&old));
        drop(old);
        self.max_connections = max_connections.max(1);
        self.drain_settings = drain_settings;
        // The new sockets may have connections queued already.
        self.accept_pending = true;
        self.at_capacity_logged = false;
        self.reloads += 1;
        // The master's current keys: the same as the last rotation sent, unless this came
        // first (the keys are never older than what this worker has).
        self.resumption.ticketer.replace(&ws.ticket_keys);
        self.pools_to_check = true;
        self.retire_pools();
        // New names are looked up off the loop; exchanges wait for them (see `Pick::Wait`).
        if self.shared.upstreams.has_names() {
            start_resolver(&mut self.shared.upstreams, self.poll.registry());
            self.shared.upstreams.request_lookups(false);
        }
        self.arm_dns_refresh(Instant::now());
        let listeners: Vec<&str> = self
            .shared
            .current
            .listeners
            .iter()
            .map(|l| l.name.as_str())
            .collect();
        info!(
            config_generation = generation,
            reloads = self.reloads,
            ?listeners,
            upstreams = self.shared.current.pools.len(),
            active = self.sessions.len(),
            "reconfigured: new connections use the new configuration"
        );
        self.send(&WorkerMessage::Reconfigured { request_id });
    }

    /// Drop generations no session runs on any more, then the upstream pools that neither
    /// the current nor a remaining generation refers to (once no connection to them is
    /// checked out).
    pub(super) fn retire_pools(&mut self) {
        self.retired.retain(|w| w.strong_count() > 0);
        let mut keep: HashSet<usize> = self.shared.current.pools.iter().copied().collect();
        for g in self.retired.iter().filter_map(Weak::upgrade) {
            keep.extend(g.pools.iter().copied());
        }
        let busy = self.shared.upstreams.retire_unused(
            |k| keep.contains(&k),
            self.poll.registry(),
            &mut self.shared.timers,
        );
        self.pools_to_check = busy > 0 || !self.retired.is_empty();
    }

    /// Keep the host-name refresh timer armed while any pool has a host-name target.
    pub(super) fn arm_dns_refresh(&mut self, now: Instant) {
        let want = self.shared.upstreams.has_names().then(|| {
            self.dns_timer
                .map_or(now + Duration::from_secs(DNS_REFRESH_SECS), |t| t.at())
        });
        self.shared
            .timers
            .set(&mut self.dns_timer, want, TimerKey::DnsRefresh);
    }
}

/// Start the worker's DNS lookup threads unless they run already. Without them host-name
/// targets stay out of rotation, which is logged; the worker still serves the others.
pub(super) fn start_resolver(upstreams: &mut Upstreams, registry: &mio::Registry) {
    if upstreams.has_resolver() {
        return;
    }
    match Resolver::start(registry) {
        Ok(r) => upstreams.set_resolver(r),
        Err(e) => {
            error!(error = %e, "cannot start the DNS lookup threads: host-name targets stay unresolved")
        }
    }
}

/// Install a validated candidate: its pools (reusing unchanged ones among `current_pools`),
/// with routes and listeners resolved to pool keys. Returns the generation, the listener set
/// (registered by the caller), `max_connections` and how to drain.
pub(super) fn build_generation(
    c: Candidate,
    upstreams: &mut Upstreams,
    current_pools: &[usize],
    registry: &mio::Registry,
    timers: &mut Timers<TimerKey>,
) -> (Generation, ListenerSet, usize, DrainSettings) {
    let keys = upstreams.install(c.pools, current_pools, registry, timers);
    // Start or reload: access-log files are reopened by path (log rotation).
    crate::access_log::reopen();
    let mut router = c.router;
    router.map_upstreams(&keys);
    let mut listeners = c.entries;
    for l in &mut listeners {
        l.ctx.upstream = l.ctx.upstream.and_then(|i| keys.get(i).copied());
    }
    let mut head_limits = c.limits.clone();
    if let Some(max) = router.max_body_override() {
        head_limits.max_body_size_bytes = head_limits.max_body_size_bytes.max(max);
    }
    let generation = Generation {
        router,
        head_limits,
        limits: c.limits,
        trace_id_format: c.trace_id_format,
        listeners,
        pools: keys,
        config_view: c.config_view,
    };
    (generation, c.listeners, c.max_connections.max(1), c.drain)
}
