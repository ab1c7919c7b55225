//! The old master's side of a binary upgrade as a state machine: from the request until the
//! successor master has confirmed readiness (or failed). Pure: no fds, no syscalls, no clock
//! reads; the supervisor's adapter (`supervisor/handover.rs`) feeds it what happened and
//! carries out the commands it returns. `docs/design/lifecycle.md` has the state × event table.
//!
//! ```text
//!  Flushing ──Drained──> SpawnSuccessor ──Spawned──> AwaitingReady ──READY <pid>──> HandedOver
//!     │ (deadline, stop,                               │ (EOF, garbage, deadline, stop)
//!     │  spawn failed)                                 v
//!     └──> Failed <──────────── reaped ─────────── Killing
//! ```
//!
//! Flushing comes first because the successor takes over the worker channels and the client's
//! connection, not this process's memory: a frame left half-written in a buffer here would
//! reach the new master's reader cut in two. The loop waits for writability instead of
//! sleeping, bounded by [`FLUSH_BUDGET`]; a peer that does not drain by then fails the upgrade
//! before anything was started.

use std::time::{Duration, Instant};

use super::READY_PREFIX;

/// Longest wait for the worker channels and the client to take what this master queued for
/// them, before the successor may be started.
pub const FLUSH_BUDGET: Duration = Duration::from_millis(500);
/// Longest wait for the successor master to be reaped after SIGKILL. A process cannot run
/// user code after SIGKILL, so resuming after this is safe even if it was not reaped.
pub const KILL_REAP_BUDGET: Duration = Duration::from_secs(5);
/// A readiness line longer than this is garbage.
const MAX_READY_LINE: usize = 256;

/// What happened, as the adapter saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// No worker channel and not the client has output queued any more.
    Drained,
    /// The successor master was started (state file written, fds inherited).
    Spawned { pid: i32 },
    /// It could not be started; the reason says what, nothing was changed.
    SpawnFailed(String),
    /// Bytes read from the readiness pipe.
    PipeBytes(Vec<u8>),
    /// The readiness pipe reached end of file: the successor closed it (or exited).
    PipeEof,
    /// Reading (or watching) the readiness pipe failed; the reason says which.
    PipeError(String),
    /// The successor master was reaped; how it ended ("exit code 70", "killed by SIGKILL").
    SuccessorReaped { status: String },
    /// This master is stopping (a signal or a `stop` request).
    StopRequested,
    /// The upgrade's client closed its connection.
    ClientGone,
    /// Nothing new: only the clock moved (deadlines).
    Tick,
}

/// What the adapter must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Write the state file and start the successor from the binary; report `Spawned` or
    /// `SpawnFailed`.
    SpawnSuccessor,
    /// Stop reading and writing the worker channels and pause metrics: the successor reads the
    /// same sockets now. Watch the readiness pipe.
    Suspend,
    /// SIGKILL the successor master (not reaped yet); the loop reaps it.
    KillSuccessor,
    /// The successor is gone: read the worker channels again, resume metrics, take the pid
    /// file and systemd's main pid back, remove the state file.
    Resume,
    /// The upgrade failed: log `message`, and give it to the client as the request's final
    /// answer (`Failed`) if it is still there (`tell_client`).
    Fail { message: String, tell_client: bool },
    /// The successor confirmed: leave without touching anything it now owns.
    Leave,
}

/// Where the hand-over stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Waiting for every worker channel and the client to take their queued output.
    Flushing { deadline: Instant },
    /// The successor runs; waiting for `READY <pid>\n` on the pipe.
    AwaitingReady {
        pid: i32,
        line: Vec<u8>,
        deadline: Instant,
    },
    /// The successor failed and was sent SIGKILL: waiting for it to be reaped before the
    /// worker channels are read again (two readers would split frames).
    Killing {
        pid: i32,
        reason: String,
        deadline: Instant,
    },
    /// The successor confirmed readiness: this master leaves.
    HandedOver,
    /// The upgrade failed; this master serves on as before.
    Failed,
}

/// The old master's hand-over to its successor.
#[derive(Debug)]
pub struct Handover {
    state: State,
    /// A client waits for the answer.
    client: bool,
    /// The successor's binary, and this master's pid (for the messages).
    binary: String,
    own_pid: u32,
    ready_timeout: Duration,
}

impl Handover {
    /// A hand-over just requested: flushing first (`now`: the request's time).
    pub fn new(
        binary: String,
        own_pid: u32,
        client: bool,
        ready_timeout: Duration,
        now: Instant,
    ) -> Self {
        Handover {
            state: State::Flushing {
                deadline: now + FLUSH_BUDGET,
            },
            client,
            binary,
            own_pid,
            ready_timeout,
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn binary(&self) -> &str {
        &self.binary
    }

    /// The successor's pid, once started and until the hand-over ended.
    pub fn successor(&self) -> Option<i32> {
        match self.state {
            State::AwaitingReady { pid, .. } | State::Killing { pid, .. } => Some(pid),
            _ => None,
        }
    }

    /// Still flushing: the worker channels are this master's, and must drain.
    pub fn flushing(&self) -> bool {
        matches!(self.state, State::Flushing { .. })
    }

    /// Over (handed over or failed): the adapter drops it.
    pub fn finished(&self) -> bool {
        matches!(self.state, State::HandedOver | State::Failed)
    }

    pub fn deadline(&self) -> Option<Instant> {
        match &self.state {
            State::Flushing { deadline }
            | State::AwaitingReady { deadline, .. }
            | State::Killing { deadline, .. } => Some(*deadline),
            State::HandedOver | State::Failed => None,
        }
    }

    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Command> {
        if event == Event::ClientGone {
            self.client = false;
            return Vec::new();
        }
        match std::mem::replace(&mut self.state, State::Failed) {
            State::Flushing { deadline } => self.flushing_event(deadline, event, now),
            State::AwaitingReady {
                pid,
                line,
                deadline,
            } => self.awaiting_event(pid, line, deadline, event, now),
            State::Killing {
                pid,
                reason,
                deadline,
            } => self.killing_event(pid, reason, deadline, event, now),
            // Anything after the end (EOF after READY, the successor's exit after it took over,
            // an answer after a failure) changes nothing.
            done @ (State::HandedOver | State::Failed) => {
                self.state = done;
                Vec::new()
            }
        }
    }

    fn flushing_event(&mut self, deadline: Instant, event: Event, now: Instant) -> Vec<Command> {
        match event {
            Event::Drained => {
                // Stays here until the adapter says whether the start worked.
                self.state = State::Flushing { deadline };
                vec![Command::SpawnSuccessor]
            }
            Event::Spawned { pid } => {
                self.state = State::AwaitingReady {
                    pid,
                    line: Vec::new(),
                    deadline: now + self.ready_timeout,
                };
                vec![Command::Suspend]
            }
            Event::SpawnFailed(reason) => self.refused(reason),
            Event::StopRequested => {
                self.refused("upgrade abandoned: the master is stopping".to_owned())
            }
            Event::Tick if deadline <= now => self.refused(format!(
                "refused: queued output did not drain within {} ms (a worker or the client \
                 does not read); nothing changed",
                FLUSH_BUDGET.as_millis()
            )),
            // No successor exists yet: nothing on a pipe, nobody to reap.
            Event::Tick
            | Event::PipeBytes(_)
            | Event::PipeEof
            | Event::PipeError(_)
            | Event::SuccessorReaped { .. }
            | Event::ClientGone => {
                self.state = State::Flushing { deadline };
                Vec::new()
            }
        }
    }

    fn awaiting_event(
        &mut self,
        pid: i32,
        mut line: Vec<u8>,
        deadline: Instant,
        event: Event,
        now: Instant,
    ) -> Vec<Command> {
        match event {
            Event::PipeBytes(bytes) => {
                line.extend_from_slice(&bytes);
                let Some(end) = line.iter().position(|&b| b == b'\n') else {
                    if line.len() > MAX_READY_LINE {
                        return self.kill(
                            pid,
                            "it wrote garbage on the readiness pipe".into(),
                            now,
                        );
                    }
                    self.state = State::AwaitingReady {
                        pid,
                        line,
                        deadline,
                    };
                    return Vec::new();
                };
                let text = String::from_utf8_lossy(&line[..end]).into_owned();
                let confirmed = text
                    .strip_prefix(READY_PREFIX)
                    .and_then(|p| p.trim().parse::<i32>().ok())
                    == Some(pid);
                if confirmed {
                    self.state = State::HandedOver;
                    vec![Command::Leave]
                } else {
                    self.kill(pid, format!("unexpected readiness line {text:?}"), now)
                }
            }
            Event::PipeEof => self.kill(
                pid,
                half_line("it closed the readiness pipe without confirming", &line),
                now,
            ),
            Event::PipeError(reason) => self.kill(pid, reason, now),
            Event::SuccessorReaped { status } => {
                let reason = half_line(&format!("it exited ({status})"), &line);
                self.failed(pid, reason)
            }
            Event::StopRequested => self.kill(pid, "the master is stopping".to_owned(), now),
            Event::Tick if deadline <= now => {
                self.kill(pid, "no readiness confirmation in time".to_owned(), now)
            }
            Event::Tick
            | Event::Drained
            | Event::Spawned { .. }
            | Event::SpawnFailed(_)
            | Event::ClientGone => {
                self.state = State::AwaitingReady {
                    pid,
                    line,
                    deadline,
                };
                Vec::new()
            }
        }
    }

    fn killing_event(
        &mut self,
        pid: i32,
        reason: String,
        deadline: Instant,
        event: Event,
        now: Instant,
    ) -> Vec<Command> {
        match event {
            Event::SuccessorReaped { status } => {
                let reason = if status.starts_with("exit code") {
                    // It ended on its own before the kill: say how.
                    format!("{reason} (it exited: {status})")
                } else {
                    reason
                };
                self.failed(pid, reason)
            }
            Event::Tick if deadline <= now => self.failed(
                pid,
                format!(
                    "{reason} (and it was not reaped within {} s of SIGKILL)",
                    KILL_REAP_BUDGET.as_secs()
                ),
            ),
            // A confirmation that comes after the decision to kill (the deadline passed, say)
            // is too late: the kill is already sent.
            Event::PipeBytes(_)
            | Event::PipeEof
            | Event::PipeError(_)
            | Event::StopRequested
            | Event::Tick
            | Event::Drained
            | Event::Spawned { .. }
            | Event::SpawnFailed(_)
            | Event::ClientGone => {
                self.state = State::Killing {
                    pid,
                    reason,
                    deadline,
                };
                Vec::new()
            }
        }
    }

    fn kill(&mut self, pid: i32, reason: String, now: Instant) -> Vec<Command> {
        self.state = State::Killing {
            pid,
            reason,
            deadline: now + KILL_REAP_BUDGET,
        };
        vec![Command::KillSuccessor]
    }

    /// The successor is gone: resume and answer.
    fn failed(&mut self, pid: i32, reason: String) -> Vec<Command> {
        self.state = State::Failed;
        let message = format!(
            "new master {} (pid {pid}) did not become ready: {reason}; this master (pid {}) \
             keeps serving, nothing changed",
            self.binary, self.own_pid
        );
        vec![Command::Resume, self.fail(message)]
    }

    /// Nothing was started: only the failure to report.
    fn refused(&mut self, message: String) -> Vec<Command> {
        self.state = State::Failed;
        vec![self.fail(message)]
    }

    fn fail(&self, message: String) -> Command {
        Command::Fail {
            message,
            tell_client: self.client,
        }
    }
}

/// `reason`, plus what the successor had written of its readiness line if anything.
fn half_line(reason: &str, line: &[u8]) -> String {
    if line.is_empty() {
        reason.to_owned()
    } else {
        format!(
            "{reason}, after writing only {:?} of its readiness line",
            String::from_utf8_lossy(line)
        )
    }
}

#[cfg(test)]
#[path = "handover_tests.rs"]
mod tests;
