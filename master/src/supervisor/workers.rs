//! What the supervisor knows of each worker process (its role, handshake state, channel,
//! deadlines) and of each slot (the worker id its successive processes serve under), and the
//! one way a worker is killed.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// Our Hello is sent; waiting for the worker's.
    AwaitingHello,
    /// Start (with the listeners) is sent; waiting for Ready.
    AwaitingReady,
    Running,
    /// The worker said it stopped accepting.
    Draining,
}

/// What a worker process is to its slot.
#[derive(Debug)]
pub(super) enum Role {
    /// Serves its slot; restarted with backoff when it dies.
    Current,
    /// Started by `worker restart` to replace its slot's current worker once ready. Its
    /// failure only fails the request: the current worker keeps serving.
    Successor {
        client: Option<Token>,
        /// Started by a rolling upgrade (or its rollback): its fate goes to the upgrade.
        upgrade: bool,
    },
    /// Replaced (or surplus after a reload): draining until it exits, never restarted.
    Retired,
}

/// A `worker restart` waiting for the old worker's `Draining` acknowledgement.
#[derive(Debug)]
pub(super) struct PendingDone {
    pub(super) client: Option<Token>,
    pub(super) message: String,
    pub(super) deadline: Instant,
}

/// Why a `Reconfigure` was sent, so that its answer (matched to it by request id) reaches the
/// right place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReconfigureKind {
    Reload,
    Rollback,
}

/// One live worker process.
#[derive(Debug)]
pub(super) struct WorkerProcess {
    pub(super) worker_id: u32,
    pub(super) generation: u64,
    pub(super) role: Role,
    pub(super) pid: Pid,
    /// `None` once the channel hit EOF or an error.
    pub(super) channel: Option<Channel>,
    pub(super) token: Token,
    /// Registered for writability (output waiting in the channel).
    pub(super) wants_write: bool,
    pub(super) state: WorkerState,
    pub(super) spawned_at: Instant,
    pub(super) ready_at: Option<Instant>,
    pub(super) channel_closed_at: Option<Instant>,
    pub(super) killed: bool,
    /// The reason the worker gave in a `Fatal` message (or why the master killed it).
    pub(super) fatal: Option<String>,
    /// The worker's software version, from its Hello.
    pub(super) version: Option<String>,
    /// The master-worker protocol it speaks: ours for a worker we started (its Hello is
    /// checked), the previous master's record for an adopted one.
    pub(super) protocol_version: u32,
    pub(super) counters: Option<WorkerCounters>,
    /// Status requests sent and not answered yet, by request id (see [`answers`]).
    pub(super) status_asked: Outstanding<()>,
    /// A retired worker's drain deadline (what it was told when retired, kept across master
    /// hand-overs); still running `DRAIN_KILL_GRACE` after it, it is killed.
    pub(super) drain_deadline: Option<Instant>,
    pub(super) restart_done: Option<PendingDone>,
    /// `Reconfigure`s sent and not answered yet, by request id.
    pub(super) reconfigures: Outstanding<ReconfigureKind>,
    /// The executable it was started from (status shows it per worker).
    pub(super) binary: String,
    /// Adopted from a previous master: not our child, so supervised through this pidfd
    /// (registered under the token) instead of waitpid.
    pub(super) pidfd: Option<(OwnedFd, Token)>,
    /// Longest time from spawn to `Ready`.
    pub(super) ready_timeout: Duration,
    /// When this master told it to drain (for the drain-duration histogram).
    pub(super) drain_started: Option<Instant>,
    /// Adopted workers stay the previous master's until the takeover is confirmed: no signal
    /// reaches them before (see `crate::ownership`). Spawned ones are ours from the start.
    pub(super) ownership: Ownership,
    /// A kill this master decided while the worker was still tentatively owned; carried out
    /// once the takeover is confirmed (dropped if it never is).
    pub(super) kill_deferred: bool,
}

impl WorkerProcess {
    /// When a retired worker still running is killed: its drain deadline plus the grace it
    /// gets to exit after closing what was left.
    pub(super) fn drain_kill_at(&self) -> Option<Instant> {
        self.drain_deadline
            .map(|deadline| deadline + DRAIN_KILL_GRACE)
    }
}

/// A worker id and whatever currently serves under it.
#[derive(Debug)]
pub(super) struct WorkerSlot {
    pub(super) worker_id: u32,
    pub(super) current: Option<Token>,
    pub(super) restart_at: Option<Instant>,
    pub(super) backoff: Backoff,
    /// Counters of the last worker that served this slot, kept across its death.
    pub(super) last_counters: Option<WorkerCounters>,
    /// Unexpected exits of this slot's current workers (status shows them).
    pub(super) restarts: u32,
    /// How the last of them ended.
    pub(super) last_exit: Option<String>,
}

impl WorkerSlot {
    pub(super) fn new(worker_id: u32) -> Self {
        WorkerSlot {
            worker_id,
            current: None,
            restart_at: None,
            backoff: Backoff::default(),
            last_counters: None,
            restarts: 0,
            last_exit: None,
        }
    }
}

pub(super) fn kill_process(process: &mut WorkerProcess) {
    if process.killed {
        return;
    }
    if !process.ownership.is_confirmed() {
        // Still the previous master's worker: a failing successor (this very Drop, say) must
        // not take it down. Carried out after the confirmation, if that ever comes.
        if !process.kill_deferred {
            warn!(
                worker_id = process.worker_id,
                pid = process.pid.as_raw(),
                "adopted worker not ours until the takeover is confirmed; not killing it"
            );
        }
        process.kill_deferred = true;
        return;
    }
    if let Some((pidfd, _)) = &process.pidfd {
        // Not our child: only the pidfd is safe against pid reuse.
        if let Err(err) = crate::upgrade::pidfd_kill(pidfd, libc::SIGKILL) {
            error!(pid = process.pid.as_raw(), error = %err, "cannot kill adopted worker");
        }
        process.killed = true;
        return;
    }
    // The pid is our unreaped child, so it cannot have been reused by another process.
    match kill(process.pid, Signal::SIGKILL) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(err) => error!(pid = process.pid.as_raw(), error = %err, "cannot kill worker"),
    }
    process.killed = true;
}
