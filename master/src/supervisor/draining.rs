//! Draining workers: feeding `max-draining-generations` (the state machine in
//! `crate::draining_generations`) what happens to retired workers and sending `FinishDrain`
//! where it says; the control socket's `DrainStatus` answer.

use zentinel_protocol::control::{DrainStatusReport, DrainingWorker};
use zentinel_protocol::messages::FIRST_PROTOCOL_WITH_FINISH_DRAIN;

use super::*;
use crate::draining_generations::{Command, Event};

impl Supervisor {
    /// Feed the draining generations an event and carry out what they say.
    pub(super) fn draining_event(&mut self, event: Event<Token>) {
        for command in self.draining.handle(event) {
            let Command::FinishNow { worker, generation } = command;
            self.finish_drain_now(worker, generation);
        }
    }

    fn finish_drain_now(&mut self, token: Token, generation: u64) {
        let limit = self.draining.limit();
        let unfinished = self.draining.unfinished_generations();
        let registry = self.poll.registry();
        let Some(process) = self.processes.get_mut(&token) else {
            return;
        };
        let (worker_id, pid) = (process.worker_id(), process.pid().as_raw());
        if process.protocol_version() < FIRST_PROTOCOL_WITH_FINISH_DRAIN {
            warn!(
                worker_id,
                pid,
                generation,
                max_draining_generations = limit,
                protocol = process.protocol_version(),
                "too many generations draining, but this one's worker speaks an older protocol \
                 and cannot be asked to finish now: it keeps its idle connections until its \
                 drain deadline"
            );
            return;
        }
        info!(
            worker_id,
            pid,
            generation,
            max_draining_generations = limit,
            still_draining = ?unfinished,
            "too many generations draining: asking the oldest to finish now (idle connections \
             close at once, requests in flight keep their deadline)"
        );
        if let Err(err) = send(registry, process, &MasterMessage::FinishDrain, &[]) {
            self.channel_failed(token, err);
        }
    }

    /// The adopted workers that drain, once they are ours (a tentative master decides
    /// nothing about them). Only those the previous master told to drain: a worker adopted
    /// beyond the configured count is marked retired without having been told.
    pub(super) fn draining_adopted(&mut self) {
        let retired: Vec<(Token, u64)> = self
            .processes
            .iter()
            .filter(|(_, p)| {
                matches!(p.role(), Role::Retired)
                    && p.state() == WorkerState::Draining
                    && !p.killed()
            })
            .map(|(&token, p)| (token, p.generation()))
            .collect();
        for (worker, generation) in retired {
            self.draining_event(Event::Retired { worker, generation });
        }
    }

    /// The answer to `DrainStatus`: every draining worker, oldest generation first.
    pub(super) fn drain_status_report(&self, now: Instant) -> DrainStatusReport {
        // Workers draining because the master stops have the stop's deadline.
        let stop_deadline = match self.phase {
            Phase::Stopping {
                kind: StopKind::Graceful,
                kill_at,
                ..
            } => kill_at.checked_sub(DRAIN_KILL_GRACE),
            _ => None,
        };
        let mut workers: Vec<DrainingWorker> = self
            .processes
            .values()
            .filter(|p| {
                !p.killed()
                    && (matches!(p.role(), Role::Retired) || p.state() == WorkerState::Draining)
            })
            .map(|p| DrainingWorker {
                pid: p.pid().as_raw().unsigned_abs(),
                id: p.worker_id(),
                generation: p.generation(),
                connections: p.counters().map_or(0, |c| c.active_connections),
                drain_remaining_ms: p.drain_deadline().or(stop_deadline).map(|deadline| {
                    u64::try_from(deadline.saturating_duration_since(now).as_millis())
                        .unwrap_or(u64::MAX)
                }),
                // Asked, not merely counted as asked: an older worker cannot be.
                finishing: self.draining.finishing(p.token())
                    && p.protocol_version() >= FIRST_PROTOCOL_WITH_FINISH_DRAIN,
            })
            .collect();
        workers.sort_by_key(|w| (w.generation, w.id, w.pid));
        DrainStatusReport {
            max_draining_generations: self.draining.limit(),
            workers,
        }
    }
}
