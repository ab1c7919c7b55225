//! What the supervisor knows of each worker process (its role, handshake state, channel,
//! deadlines) and of each slot (the worker id its successive processes serve under), and the
//! one way a worker is killed.

use super::*;
use crate::request_ids::Matched;

mod channel_io;

pub(super) use channel_io::{
    close_channel, deregister_channel, flush, register_channel, send, update_interest,
};

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
#[derive(Debug, Clone, Copy)]
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
    worker_id: u32,
    generation: u64,
    role: Role,
    pid: Pid,
    /// `None` once the channel hit EOF or an error.
    channel: Option<Channel>,
    token: Token,
    /// Registered for writability (output waiting in the channel).
    wants_write: bool,
    state: WorkerState,
    spawned_at: Instant,
    ready_at: Option<Instant>,
    channel_closed_at: Option<Instant>,
    killed: bool,
    /// The reason the worker gave in a `Fatal` message (or why the master killed it).
    fatal: Option<String>,
    /// The worker's software version, from its Hello.
    version: Option<String>,
    /// The master-worker protocol it speaks: ours for a worker we started (its Hello is
    /// checked), the previous master's record for an adopted one.
    protocol_version: u32,
    counters: Option<WorkerCounters>,
    /// Its HTTP/2 refusals as it last reported them (totals since it started).
    http2: Http2Refusals,
    /// Status requests sent and not answered yet, by request id (see [`answers`]).
    status_asked: Outstanding<()>,
    /// A retired worker's drain deadline (what it was told when retired, kept across master
    /// hand-overs); still running `DRAIN_KILL_GRACE` after it, it is killed.
    drain_deadline: Option<Instant>,
    restart_done: Option<PendingDone>,
    /// `Reconfigure`s sent and not answered yet, by request id.
    reconfigures: Outstanding<ReconfigureKind>,
    /// The executable it was started from (status shows it per worker).
    binary: String,
    /// Adopted from a previous master: not our child, so supervised through this pidfd
    /// (registered under the token) instead of waitpid.
    pidfd: Option<(OwnedFd, Token)>,
    /// Longest time from spawn to `Ready`.
    ready_timeout: Duration,
    /// When this master told it to drain (for the drain-duration histogram).
    drain_started: Option<Instant>,
    /// Adopted workers stay the previous master's until the takeover is confirmed: no signal
    /// reaches them before (see `crate::ownership`). Spawned ones are ours from the start.
    ownership: Ownership,
    /// A kill this master decided while the worker was still tentatively owned; carried out
    /// once the takeover is confirmed (dropped if it never is).
    kill_deferred: bool,
}

/// What a new [`WorkerProcess`] starts from: a worker this master spawned, or one adopted from
/// the previous master (with what that master knew of it).
#[derive(Debug)]
pub(super) struct NewWorker {
    pub(super) worker_id: u32,
    pub(super) generation: u64,
    pub(super) role: Role,
    pub(super) pid: Pid,
    pub(super) channel: Channel,
    pub(super) token: Token,
    pub(super) state: WorkerState,
    pub(super) spawned_at: Instant,
    pub(super) ready_at: Option<Instant>,
    pub(super) version: Option<String>,
    pub(super) protocol_version: u32,
    pub(super) counters: Option<WorkerCounters>,
    pub(super) drain_deadline: Option<Instant>,
    pub(super) binary: String,
    pub(super) ready_timeout: Duration,
    pub(super) ownership: Ownership,
}

/// The first protocol whose answers carry the request's id.
pub(super) const FIRST_PROTOCOL_WITH_REQUEST_IDS: u32 = 4;

impl WorkerProcess {
    pub(super) fn new(new: NewWorker) -> Self {
        WorkerProcess {
            worker_id: new.worker_id,
            generation: new.generation,
            role: new.role,
            pid: new.pid,
            channel: Some(new.channel),
            token: new.token,
            wants_write: false,
            state: new.state,
            spawned_at: new.spawned_at,
            ready_at: new.ready_at,
            channel_closed_at: None,
            killed: false,
            fatal: None,
            version: new.version,
            protocol_version: new.protocol_version,
            counters: new.counters,
            http2: Http2Refusals::default(),
            status_asked: Outstanding::default(),
            drain_deadline: new.drain_deadline,
            restart_done: None,
            reconfigures: Outstanding::default(),
            binary: new.binary,
            pidfd: None,
            ready_timeout: new.ready_timeout,
            drain_started: None,
            ownership: new.ownership,
            kill_deferred: false,
        }
    }

    // ----- what it is -----

    pub(super) fn worker_id(&self) -> u32 {
        self.worker_id
    }

    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    pub(super) fn pid(&self) -> Pid {
        self.pid
    }

    pub(super) fn token(&self) -> Token {
        self.token
    }

    pub(super) fn role(&self) -> Role {
        self.role
    }

    pub(super) fn state(&self) -> WorkerState {
        self.state
    }

    pub(super) fn channel(&self) -> Option<&Channel> {
        self.channel.as_ref()
    }

    /// For reading its messages.
    pub(super) fn channel_mut(&mut self) -> Option<&mut Channel> {
        self.channel.as_mut()
    }

    pub(super) fn spawned_at(&self) -> Instant {
        self.spawned_at
    }

    pub(super) fn ready_at(&self) -> Option<Instant> {
        self.ready_at
    }

    pub(super) fn channel_closed_at(&self) -> Option<Instant> {
        self.channel_closed_at
    }

    pub(super) fn killed(&self) -> bool {
        self.killed
    }

    pub(super) fn fatal(&self) -> Option<&str> {
        self.fatal.as_deref()
    }

    pub(super) fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    pub(super) fn protocol_version(&self) -> u32 {
        self.protocol_version
    }

    pub(super) fn counters(&self) -> Option<&WorkerCounters> {
        self.counters.as_ref()
    }

    pub(super) fn drain_deadline(&self) -> Option<Instant> {
        self.drain_deadline
    }

    pub(super) fn restart_done(&self) -> Option<&PendingDone> {
        self.restart_done.as_ref()
    }

    pub(super) fn binary(&self) -> &str {
        &self.binary
    }

    pub(super) fn pidfd(&self) -> Option<&(OwnedFd, Token)> {
        self.pidfd.as_ref()
    }

    pub(super) fn ready_timeout(&self) -> Duration {
        self.ready_timeout
    }

    pub(super) fn drain_started(&self) -> Option<Instant> {
        self.drain_started
    }

    pub(super) fn ownership(&self) -> &Ownership {
        &self.ownership
    }

    pub(super) fn kill_deferred(&self) -> bool {
        self.kill_deferred
    }

    /// When a retired worker still running is killed: its drain deadline plus the grace it
    /// gets to exit after closing what was left.
    pub(super) fn drain_kill_at(&self) -> Option<Instant> {
        self.drain_deadline
            .map(|deadline| deadline + DRAIN_KILL_GRACE)
    }

    /// Its answers carry request ids (otherwise they are matched by order).
    pub(super) fn answers_carry_ids(&self) -> bool {
        self.protocol_version >= FIRST_PROTOCOL_WITH_REQUEST_IDS
    }

    /// The status request `request_id` sent to it is still unanswered.
    pub(super) fn awaits_status(&self, request_id: u64) -> bool {
        self.status_asked.contains(request_id)
    }

    // ----- what happens to it -----

    /// Its Hello arrived.
    pub(super) fn hello(&mut self, software_version: String) {
        self.version = Some(software_version);
    }

    /// `Start` went out.
    pub(super) fn start_sent(&mut self) {
        self.state = WorkerState::AwaitingReady;
    }

    /// It said `Ready`.
    pub(super) fn ready(&mut self, now: Instant) {
        self.state = WorkerState::Running;
        self.ready_at = Some(now);
    }

    /// It said it stopped accepting.
    pub(super) fn draining(&mut self) {
        self.state = WorkerState::Draining;
    }

    /// Its channel broke or hit EOF (already closed by `close_channel`).
    pub(super) fn channel_closed(&mut self, now: Instant) {
        self.channel_closed_at = Some(now);
    }

    /// Why it failed: what it said, or why the master gave up on it.
    pub(super) fn set_fatal(&mut self, reason: String) {
        self.fatal = Some(reason);
    }

    /// The first reason given stays.
    pub(super) fn fatal_unless_known(&mut self, reason: String) {
        self.fatal.get_or_insert(reason);
    }

    pub(super) fn http2(&self) -> &Http2Refusals {
        &self.http2
    }

    pub(super) fn set_http2(&mut self, http2: Http2Refusals) {
        self.http2 = http2;
    }

    pub(super) fn set_counters(&mut self, counters: WorkerCounters) {
        self.counters = Some(counters);
    }

    /// Its last counters, for its slot to keep once it is gone.
    pub(super) fn take_counters(&mut self) -> Option<WorkerCounters> {
        self.counters.take()
    }

    pub(super) fn set_role(&mut self, role: Role) {
        self.role = role;
    }

    pub(super) fn replace_role(&mut self, role: Role) -> Role {
        std::mem::replace(&mut self.role, role)
    }

    /// Told to drain within `drain` from `now`: retired, never restarted.
    pub(super) fn retire(&mut self, now: Instant, drain: Duration) {
        self.role = Role::Retired;
        self.drain_deadline = Some(now + drain);
        self.drain_started.get_or_insert(now);
    }

    /// A `worker restart` waits for its `Draining` acknowledgement.
    pub(super) fn expect_drain_ack(&mut self, done: PendingDone) {
        self.restart_done = Some(done);
    }

    pub(super) fn take_restart_done(&mut self) -> Option<PendingDone> {
        self.restart_done.take()
    }

    /// Adopted: supervised through this pidfd, registered under `token`.
    pub(super) fn watch_through(&mut self, pidfd: OwnedFd, token: Token) {
        self.pidfd = Some((pidfd, token));
    }

    /// A status request went out under `request_id`.
    pub(super) fn asked_status(&mut self, request_id: u64) {
        self.status_asked.push(request_id, ());
    }

    /// The status request a `Status` answers: by its id, or by order from an older worker.
    pub(super) fn match_status_answer(&mut self, request_id: u64) -> Matched<()> {
        if self.answers_carry_ids() {
            self.status_asked.take(request_id)
        } else {
            self.status_asked.take_oldest()
        }
    }

    /// A `Reconfigure` went out under `request_id`.
    pub(super) fn sent_reconfigure(&mut self, request_id: u64, kind: ReconfigureKind) {
        self.reconfigures.push(request_id, kind);
    }

    /// The `Reconfigure` an answer is for: by its id, or by order from an older worker.
    pub(super) fn match_reconfigure_answer(&mut self, request_id: u64) -> Matched<ReconfigureKind> {
        if self.answers_carry_ids() {
            self.reconfigures.take(request_id)
        } else {
            self.reconfigures.take_oldest()
        }
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
