//! Stopping: graceful (drain, then kill stragglers at the deadline) or fast.

use super::*;

impl Supervisor {
    pub(super) fn begin_stop(
        &mut self,
        kind: StopKind,
        failure: Option<SupervisorError>,
        drain_override: Option<Duration>,
    ) {
        let now = Instant::now();
        let drain = drain_override.unwrap_or(self.config.system.stop_drain());
        let grace = match kind {
            StopKind::Graceful => drain + DRAIN_KILL_GRACE,
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
                };
                systemd::stopping(match kind {
                    StopKind::Graceful => "stopping: draining workers",
                    StopKind::Fast => "stopping",
                });
            }
        }
        self.abort_reload("the master is stopping");
        self.abort_upgrade("the master is stopping");

        let message = match kind {
            StopKind::Graceful => MasterMessage::Drain {
                timeout_ms: u64::try_from(drain.as_millis()).unwrap_or(u64::MAX),
            },
            StopKind::Fast => MasterMessage::Stop,
        };
        for slot in &mut self.slots {
            slot.restart_at = None;
        }
        let registry = self.poll.registry();
        let mut broken = Vec::new();
        for (&token, process) in self.processes.iter_mut() {
            if process.killed() || process.channel().is_none() {
                continue; // already on its way out
            }
            if let Role::Successor { .. } = process.role() {
                process.set_fatal("the master is stopping".to_owned());
                kill_process(process);
                continue;
            }
            if process.state() == WorkerState::AwaitingHello {
                // It has no listeners and no connections: nothing to drain.
                kill_process(process);
                continue;
            }
            if matches!(process.role(), Role::Retired) && kind == StopKind::Graceful {
                continue; // already draining on its own deadline
            }
            debug!(
                worker_id = process.worker_id(),
                pid = process.pid().as_raw(),
                generation = process.generation(),
                message = message.kind(),
                "stopping worker"
            );
            if let Err(err) = send(registry, process, &message, &[]) {
                broken.push((token, err));
            }
        }
        for (token, err) in broken {
            self.channel_failed(token, err);
        }
    }
}
