//! Requests to workers that expect an answer, and the answers: status requests and their
//! `Status`, matched by request id (`crate::request_ids`), and the rounds that gather them
//! (`crate::gatherer`): `zentinel-ctl status`, the metrics poll.
//!
//! Every request gets an id unique across masters, which a worker of protocol 4 or later
//! echoes; an answer whose id this master is not waiting for (another master's request, or a
//! request answered already) is ignored and logged. A worker of protocol 3 or older (adopted
//! from the previous binary) answers without an id: its answers are matched by order, as they
//! always were, and one that comes with none of our requests outstanding is ignored.

use zentinel_protocol::messages::v3::WorkerMessageV3;
use zentinel_protocol::ReceivedFrame;

use super::*;
use crate::gatherer::{Answer, Gatherer};
use crate::request_ids::{Matched, RequestIds};

/// How long a metrics poll waits for its answers before the next poll may ask again. Under
/// `STATUS_INTERVAL`, so that a silent worker does not make the next periodic poll skip.
pub(super) const STATUS_POLL_TIMEOUT: Duration = Duration::from_secs(4);
const _: () = assert!(STATUS_POLL_TIMEOUT.as_millis() < STATUS_INTERVAL.as_millis());

/// Read a worker's message in the layout its protocol writes. A worker we started speaks ours
/// (its Hello says so; one that does not is refused at the Hello check, so a Hello of the
/// protocol 3 layout is read as such for a clear error).
pub(super) fn read_worker_message(
    frame: &ReceivedFrame,
    protocol_version: u32,
    awaiting_hello: bool,
) -> Result<WorkerMessage, ProtocolError> {
    if protocol_version < FIRST_PROTOCOL_WITH_REQUEST_IDS {
        // Protocols 1 to 3 share this layout (only the master's messages changed).
        return frame.deserialize::<WorkerMessageV3>().map(Into::into);
    }
    match frame.deserialize::<WorkerMessage>() {
        Ok(message) => Ok(message),
        Err(err) if awaiting_hello => match frame.deserialize::<WorkerMessageV3>() {
            Ok(legacy @ WorkerMessageV3::Hello(_)) => Ok(legacy.into()),
            _ => Err(err),
        },
        Err(err) => Err(err),
    }
}

impl Supervisor {
    /// Ask one worker for its counters; returns the request's id (`None`: it cannot be asked
    /// now). Its answer is taken only for this id.
    pub(super) fn ask_status(&mut self, token: Token) -> Option<u64> {
        if self.handing_over() {
            // The successor master may be talking to the workers already: one writer only.
            return None;
        }
        let request_id = self.request_ids.draw();
        let registry = self.poll.registry();
        let process = self.processes.get_mut(&token)?;
        if process.killed()
            || process.channel().is_none()
            || !matches!(
                process.state(),
                WorkerState::Running | WorkerState::Draining
            )
        {
            return None;
        }
        match send(
            registry,
            process,
            &MasterMessage::StatusRequest { request_id },
            &[],
        ) {
            Ok(()) => {
                process.asked_status(request_id);
                Some(request_id)
            }
            Err(err) => {
                self.channel_failed(token, err);
                None
            }
        }
    }

    /// Every `(worker, request id)` of `waits` answered, or can no longer answer (gone, its
    /// channel closed, or killed).
    pub(super) fn all_answered(&self, waits: &[(Token, u64)]) -> bool {
        waits.iter().all(|&(token, request_id)| {
            self.processes
                .get(&token)
                .is_none_or(|p| !p.awaits_status(request_id) || p.channel().is_none() || p.killed())
        })
    }

    /// Poll every worker's counters (the metrics, `STATUS_INTERVAL`, a scrape). Not while the
    /// last poll's answers are still on their way: a scrape storm asks no more than a worker
    /// answers.
    pub(super) fn request_status(&mut self) {
        let now = Instant::now();
        if let Some(round) = &self.status_poll {
            if !round.is_done(now) {
                return;
            }
            let silent: Vec<u32> = round
                .waiting()
                .filter_map(|token| self.processes.get(&token))
                .map(|p| p.worker_id())
                .collect();
            if !silent.is_empty() {
                debug!(
                    ?silent,
                    "status poll: some workers did not answer in time; their counters are older"
                );
            }
        }
        let mut round = Gatherer::new(now + STATUS_POLL_TIMEOUT);
        let tokens: Vec<Token> = self.processes.keys().copied().collect();
        for token in tokens {
            if let Some(request_id) = self.ask_status(token) {
                round.ask(token, request_id);
            }
        }
        self.status_poll = Some(round);
    }

    /// A `Status` from `token`'s worker: its counters, if it answers one of our requests.
    pub(super) fn status_answer(
        &mut self,
        token: Token,
        request_id: u64,
        counters: WorkerCounters,
        http2: Option<Http2Refusals>,
    ) {
        let Some(process) = self.processes.get_mut(&token) else {
            return;
        };
        let (worker_id, pid, generation) = (
            process.worker_id(),
            process.pid().as_raw(),
            process.generation(),
        );
        let matched = process.match_status_answer(request_id);
        let answered: Vec<u64> = match matched {
            Matched::Request {
                request_id,
                overtaken,
                ..
            } => {
                if !overtaken.is_empty() {
                    debug!(
                        worker_id,
                        pid,
                        overtaken = overtaken.len(),
                        "worker status: answers to earlier requests went to another master"
                    );
                }
                overtaken
                    .into_iter()
                    .map(|(id, ())| id)
                    .chain([request_id])
                    .collect()
            }
            Matched::Stale => {
                info!(
                    worker_id,
                    pid,
                    request_id,
                    asked_by_master_pid = RequestIds::master_pid_of(request_id),
                    ours = self.request_ids.is_ours(request_id),
                    "ignoring a stale status answer: this master is not waiting for that \
                     request (another master's, or answered already)"
                );
                return;
            }
            Matched::Unsolicited => {
                info!(
                    worker_id,
                    pid,
                    protocol = process.protocol_version(),
                    "ignoring a status answer to no request of this master (an old worker \
                     answering another master's request)"
                );
                return;
            }
        };
        debug!(
            worker_id,
            pid,
            generation,
            active_connections = counters.active_connections,
            requests_total = counters.requests_total,
            "worker status"
        );
        process.set_counters(counters.clone());
        if let Some(http2) = http2 {
            process.set_http2(http2);
        }
        let now = Instant::now();
        let rounds = self
            .pending_status
            .iter_mut()
            .map(|pending| &mut pending.gather)
            .chain(self.status_poll.as_mut());
        for round in rounds {
            for &id in &answered {
                match round.answer(token, id, (), now) {
                    Answer::Accepted | Answer::Unknown => {}
                    outcome @ (Answer::Duplicate | Answer::Late) => {
                        debug!(
                            worker_id,
                            pid,
                            request_id = id,
                            ?outcome,
                            "status answer not counted"
                        );
                    }
                }
            }
        }
        self.status_progress();
        // The rolling upgrade's canary matches answers to its requests by id too.
        for request_id in answered {
            self.rolling_event(RollingEvent::StatusAnswered {
                worker: token,
                request_id,
                counters: counters.clone(),
            });
        }
    }

    /// `token`'s worker can no longer answer (its channel closed, it was killed or exited):
    /// nothing waits for it any more.
    pub(super) fn cannot_answer(&mut self, token: Token) {
        for pending in &mut self.pending_status {
            pending.gather.gone(token);
        }
        if let Some(round) = self.status_poll.as_mut() {
            round.gone(token);
        }
        self.status_progress();
        self.reload_forget(token);
    }
}
