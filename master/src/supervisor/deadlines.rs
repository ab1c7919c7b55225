//! Deadlines: what each turn of the loop checks (kills at stop, drain and EOF deadlines,
//! handshake timeouts, restart backoff, periodic status) and when the loop must wake next.

use super::*;

impl Supervisor {
    pub(super) fn run_timers(&mut self, now: Instant) {
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
            if let Some(done) = process.restart_done() {
                if done.deadline <= now {
                    done_timeouts.push(process.take_restart_done());
                }
            }
            if process.killed() || !process.ownership().is_confirmed() {
                continue; // a tentative worker's deadlines count from the confirmation
            }
            let pid = process.pid().as_raw();
            let worker_id = process.worker_id();
            let generation = process.generation();
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
                .channel_closed_at()
                .is_some_and(|at| at + EOF_KILL_GRACE <= now)
            {
                warn!(
                    worker_id,
                    pid, generation, "worker closed its channel but did not exit; killing it"
                );
                kill_process(process);
            } else if process.channel().is_some()
                && matches!(
                    process.state(),
                    WorkerState::AwaitingHello | WorkerState::AwaitingReady
                )
                && process.spawned_at() + process.ready_timeout() <= now
            {
                failures.push((
                    token,
                    format!(
                        "not ready within {} ms",
                        process.ready_timeout().as_millis()
                    ),
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
        self.ticket_key_timers(now);
        self.ocsp_timers(now);
        if !stopping && !self.handing_over() && !self.tentative() && self.next_status_at <= now {
            self.next_status_at = now + STATUS_INTERVAL;
            self.request_status();
        }
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
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
        deadlines.extend(self.ticket_key_deadline());
        deadlines.extend(self.ocsp_deadline());
        deadlines.extend(self.exit_flush_until);
        for process in self.processes.values() {
            if let Some(done) = &process.restart_done() {
                deadlines.push(done.deadline);
            }
            if process.killed() || !process.ownership().is_confirmed() {
                continue;
            }
            if let Some(at) = process.drain_kill_at() {
                deadlines.push(at);
            }
            if let Some(at) = process.channel_closed_at() {
                deadlines.push(at + EOF_KILL_GRACE);
            }
            if matches!(
                process.state(),
                WorkerState::AwaitingHello | WorkerState::AwaitingReady
            ) {
                deadlines.push(process.spawned_at() + process.ready_timeout());
            }
        }
        deadlines.into_iter().min()
    }
}
