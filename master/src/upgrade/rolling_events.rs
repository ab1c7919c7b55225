//! What the rolling upgrade ([`super::rolling::RollingUpgrade`]) hears and says: its events,
//! its commands, how it ends, and how it is started.

use std::time::Duration;

use mio::Token;
use zentinel_protocol::control::{CanaryPolicy, ControlResponse};
use zentinel_protocol::messages::WorkerCounters;

/// Which binary a new worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerBinary {
    /// The new master's executable.
    New,
    /// The executable the workers ran before the upgrade (a rollback).
    Previous,
}

/// The worker a successor replaces, as it was when the successor became ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replaced {
    pub worker: Token,
    pub pid: u32,
    /// Its last reported active connections (reported if it never acknowledges its drain).
    pub active_connections: u64,
}

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum RollingEvent {
    /// Time passed: the machine's deadline, or any wake-up.
    Tick,
    /// The `Spawn` command for `worker_id` started `successor`.
    Spawned { worker_id: u32, successor: Token },
    /// The `Spawn` command for `worker_id` failed.
    SpawnFailed { worker_id: u32, reason: String },
    /// A successor became ready. `replaced`: the slot's current worker, if any; `peers`: the
    /// current workers of the other slots (a canary compares with them).
    SuccessorReady {
        successor: Token,
        pid: u32,
        ready_ms: u64,
        replaced: Option<Replaced>,
        peers: Vec<Token>,
    },
    /// A successor died or was killed before it was ready.
    SuccessorFailed { successor: Token, reason: String },
    /// A worker acknowledged its drain (`Some(active connections)`), or could not be told to
    /// drain (`None`).
    Draining {
        worker: Token,
        active_connections: Option<u64>,
    },
    /// A slot's current worker died after it was ready (ask [`RollingUpgrade::claims_death`]
    /// first: only then is the death the upgrade's to handle).
    CurrentDied {
        worker_id: u32,
        pid: u32,
        status: String,
    },
    /// A status request the canary asked for went out.
    StatusAsked { worker: Token, request_id: u64 },
    /// A worker answered a status request.
    StatusAnswered {
        worker: Token,
        request_id: u64,
        counters: WorkerCounters,
    },
    /// A worker can no longer answer the master (channel closed, or killed).
    WorkerSilenced { worker: Token },
    /// A worker's process is gone (after any role-specific event above).
    WorkerExited { worker: Token },
    /// The client that asked for the upgrade went away: carry on, answer nobody.
    ClientGone,
    /// Give up now (the master is stopping).
    Abort { reason: String },
}

/// How the upgrade ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every worker runs the new binary.
    Completed { total: u32 },
    /// Replacing failed for `reason`; `restored` replaced slots run the previous binary again.
    RolledBack { reason: String, restored: u32 },
    /// Abandoned half-way (the master stops).
    Abandoned { reason: String },
}

/// What the supervisor must do.
#[derive(Debug, Clone, PartialEq)]
pub enum RollingCommand {
    /// Start a successor for `worker_id`; answer with `Spawned` or `SpawnFailed`.
    Spawn {
        worker_id: u32,
        binary: WorkerBinary,
        ready_timeout: Duration,
    },
    /// `successor` becomes `worker_id`'s current worker (its restart backoff starts over).
    Promote { worker_id: u32, successor: Token },
    /// Tell `worker` to drain within `drain`; if it cannot be told, answer with
    /// `Draining { active_connections: None }`.
    Retire { worker: Token, drain: Duration },
    /// Ask these workers for their counters; answer with `StatusAsked` per request sent and
    /// `WorkerSilenced` per worker that could not be asked.
    AskStatus(Vec<Token>),
    /// Tell the client (`last`: and close its connection).
    Respond {
        response: ControlResponse,
        last: bool,
    },
    /// The upgrade is over: the supervisor drops the machine. The final `Respond` comes from
    /// the supervisor, which knows the binaries' names.
    Finished(Outcome),
}

/// How to run one rolling upgrade.
#[derive(Debug, Clone)]
pub struct RollingPlan {
    /// The slots, in replacement order.
    pub worker_ids: Vec<u32>,
    pub drain: Duration,
    pub ready_timeout: Duration,
    pub canary: Option<CanaryPolicy>,
    /// A client waits for progress.
    pub client: bool,
}
