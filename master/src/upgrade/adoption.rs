//! The new master's side of a binary upgrade as a state machine: from the adoption of the
//! previous master's workers until readiness is confirmed and everything adopted is ours
//! (`crate::ownership`). Pure: no fds, no syscalls, no clock reads; the supervisor's adapter
//! (`supervisor/adoption.rs`) feeds it what happened and carries out the commands it returns.
//! `docs/design/lifecycle.md` has the state × event table.
//!
//! ```text
//!  Adopting ──every worker answered──> Preparing ──Prepared──> Confirming ──READY written──> Serving
//!     │  └──previous master gone──────────^   └──(previous gone)───────────────────────────^
//!     └── deadline, stop, prepare failed, write failed ──> Abandoned
//! ```
//!
//! The previous master dying before the confirmation (its pidfd readable, or EPIPE on the
//! readiness pipe) leaves nobody else to supervise the workers: the new master stops waiting,
//! confirms to nobody, and takes full ownership. Abandoning then would take the service down.

use std::collections::BTreeMap;
use std::time::Instant;

/// An adopted worker, as the adapter names it (its token's number).
pub type WorkerKey = usize;

/// What happened, as the adapter saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// This adopted worker answered the adoption's status request.
    WorkerAnswered(WorkerKey),
    /// This adopted worker exited (or its channel closed): it will not answer.
    WorkerExited(WorkerKey),
    /// The previous master exited before this one confirmed.
    PreviousMasterGone,
    /// A stop signal; the description names it and its sender.
    StopRequested(String),
    /// The upgrade's client closed its connection.
    ClientGone,
    /// The sockets to serve on are registered (control, metrics, the client), the pid file
    /// and systemd updated: confirming can no longer fail for want of them.
    Prepared,
    PrepareFailed(String),
    /// `READY <pid>` was written on the readiness pipe.
    ReadyWritten,
    /// Writing it failed; `peer_gone`: EPIPE, nobody reads the pipe any more.
    ReadyFailed {
        peer_gone: bool,
        reason: String,
    },
    /// Nothing new: only the clock moved (deadlines).
    Tick,
}

/// What the adapter must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Register what confirming needs (may fail: report `Prepared` or `PrepareFailed`).
    Prepare,
    /// Write `READY <pid>` on the readiness pipe; report `ReadyWritten` or `ReadyFailed`.
    ConfirmReadiness,
    /// Everything adopted is ours now: confirm the claim and carry out what was put off.
    /// `confirmed`: the previous master was told; otherwise it is gone, and the pipe is closed
    /// unwritten.
    TakeOwnership { confirmed: bool },
    /// Tell the client the master was replaced (a progress line).
    AnswerReplaced,
    /// Replace the workers one at a time (`--rolling`); the rolling upgrade answers the client.
    BeginRolling,
    /// Tell the client the upgrade is complete (final).
    AnswerDone,
    /// Give up before confirming: the previous master keeps everything.
    Abandon(String),
}

/// Where the adoption stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Waiting for each adopted worker's status answer (name for the messages).
    Adopting {
        waiting: BTreeMap<WorkerKey, String>,
        deadline: Instant,
    },
    /// `Prepare` issued.
    Preparing,
    /// `ConfirmReadiness` issued.
    Confirming,
    /// Confirmed (or the previous master is gone): this master serves.
    Serving,
    /// Given up before confirming.
    Abandoned,
}

/// A new master adopting its predecessor's workers.
#[derive(Debug)]
pub struct Adoption {
    state: State,
    /// Replace the workers once serving.
    rolling: bool,
    /// A client waits for the answers.
    client: bool,
    previous_gone: bool,
}

impl Adoption {
    /// Adopting `waiting` (each worker's key and name), until `deadline`.
    pub fn new(
        waiting: BTreeMap<WorkerKey, String>,
        deadline: Instant,
        rolling: bool,
        client: bool,
    ) -> Self {
        Adoption {
            state: State::Adopting { waiting, deadline },
            rolling,
            client,
            previous_gone: false,
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// The workers whose answer is still awaited.
    pub fn waiting(&self) -> Vec<WorkerKey> {
        match &self.state {
            State::Adopting { waiting, .. } => waiting.keys().copied().collect(),
            _ => Vec::new(),
        }
    }

    /// The previous master was seen gone before the confirmation.
    pub fn previous_gone(&self) -> bool {
        self.previous_gone
    }

    /// Over (serving or abandoned): the adapter drops it.
    pub fn finished(&self) -> bool {
        matches!(self.state, State::Serving | State::Abandoned)
    }

    pub fn deadline(&self) -> Option<Instant> {
        match &self.state {
            State::Adopting { deadline, .. } => Some(*deadline),
            _ => None,
        }
    }

    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Command> {
        match event {
            Event::ClientGone => {
                self.client = false;
                return Vec::new();
            }
            Event::PreviousMasterGone if !self.finished() => self.previous_gone = true,
            _ => {}
        }
        match std::mem::replace(&mut self.state, State::Abandoned) {
            State::Adopting {
                mut waiting,
                deadline,
            } => match event {
                Event::WorkerAnswered(key) | Event::WorkerExited(key) => {
                    waiting.remove(&key);
                    self.adopting(waiting, deadline, now)
                }
                Event::StopRequested(what) => {
                    self.abandon(format!("{what} before the takeover was confirmed"))
                }
                // Failures of steps not started yet cannot happen here; the tick checks
                // the deadline (and an adoption of no workers at all).
                Event::PreviousMasterGone
                | Event::Tick
                | Event::ClientGone
                | Event::Prepared
                | Event::PrepareFailed(_)
                | Event::ReadyWritten
                | Event::ReadyFailed { .. } => self.adopting(waiting, deadline, now),
            },
            State::Preparing => match event {
                Event::Prepared if self.previous_gone => self.serve(false),
                Event::Prepared => {
                    self.state = State::Confirming;
                    vec![Command::ConfirmReadiness]
                }
                // Nobody else supervises the workers: serve without what failed rather than
                // leave them masterless.
                Event::PrepareFailed(_) if self.previous_gone => self.serve(false),
                Event::PrepareFailed(reason) => self.abandon(reason),
                Event::StopRequested(what) if !self.previous_gone => {
                    self.abandon(format!("{what} before the takeover was confirmed"))
                }
                _ => {
                    self.state = State::Preparing;
                    Vec::new()
                }
            },
            State::Confirming => match event {
                Event::ReadyWritten => self.serve(true),
                Event::ReadyFailed {
                    peer_gone: true, ..
                } => {
                    self.previous_gone = true;
                    self.serve(false)
                }
                Event::ReadyFailed { .. } if self.previous_gone => self.serve(false),
                Event::ReadyFailed { reason, .. } => {
                    self.abandon(format!("cannot confirm readiness: {reason}"))
                }
                Event::StopRequested(what) if !self.previous_gone => {
                    self.abandon(format!("{what} before the takeover was confirmed"))
                }
                _ => {
                    self.state = State::Confirming;
                    Vec::new()
                }
            },
            // Late answers, the previous master leaving after it read READY, a stop (handled
            // as any master's stop once serving): nothing for the adoption.
            done @ (State::Serving | State::Abandoned) => {
                self.state = done;
                Vec::new()
            }
        }
    }

    /// Still adopting after an event: done waiting, out of time, or on.
    fn adopting(
        &mut self,
        waiting: BTreeMap<WorkerKey, String>,
        deadline: Instant,
        now: Instant,
    ) -> Vec<Command> {
        if waiting.is_empty() || self.previous_gone {
            self.state = State::Preparing;
            return vec![Command::Prepare];
        }
        if deadline <= now {
            let silent: Vec<&str> = waiting.values().map(String::as_str).collect();
            return self.abandon(format!(
                "adopted workers did not answer in time: {}",
                silent.join(", ")
            ));
        }
        self.state = State::Adopting { waiting, deadline };
        Vec::new()
    }

    fn serve(&mut self, confirmed: bool) -> Vec<Command> {
        self.state = State::Serving;
        let mut commands = vec![Command::TakeOwnership { confirmed }];
        if self.client {
            commands.push(Command::AnswerReplaced);
        }
        if self.rolling {
            commands.push(Command::BeginRolling);
        } else {
            commands.push(Command::AnswerDone);
        }
        commands
    }

    fn abandon(&mut self, reason: String) -> Vec<Command> {
        self.state = State::Abandoned;
        vec![Command::Abandon(reason)]
    }
}

#[cfg(test)]
#[path = "adoption_tests.rs"]
mod tests;
