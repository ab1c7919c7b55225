//! Messages between `zentinel-ctl` and the master, over the master's Unix control socket.
//!
//! Same framing as master <-> worker ([`crate::Channel`]); the first message each way is a
//! [`Hello`] with [`CONTROL_PROTOCOL_VERSION`]. One request per connection is the common case,
//! but a client may send several requests in sequence on one connection (`status --watch`).
//!
//! The control protocol has its own version, apart from the master <-> worker one: a status
//! field added for operators must not stop a new master from adopting (or rolling back to)
//! workers of the previous build, which speak the unchanged worker protocol.

// rkyv's `Archive` derive gives the resolver of an enum with struct variants (generated next
// to it, in this module) fields without docs, which nothing but a module-level attribute can
// reach. Every item written here is documented all the same.
#![allow(
    missing_docs,
    reason = "the Archive derive leaves its resolvers' struct-variant fields undocumented"
)]

use rkyv::{Archive, Deserialize, Serialize};

use crate::channel::FrameLimits;
use crate::messages::{Hello, WorkerCounters};

/// Largest frame the master accepts from a control client: requests are tiny, and a client
/// must not make the master buffer much.
pub const MAX_CONTROL_REQUEST_FRAME: usize = 64 * 1024;

/// Largest frame the master sends a control client: a `status` answer carries one entry per
/// worker (a few hundred bytes each; thousands fit), `RunningConfig` a configuration's text.
pub const MAX_CONTROL_RESPONSE_FRAME: usize = 4 * 1024 * 1024;

/// The master's end of a control connection: small requests in, large answers out.
pub const CONTROL_SERVER_LIMITS: FrameLimits = FrameLimits {
    send: MAX_CONTROL_RESPONSE_FRAME,
    recv: MAX_CONTROL_REQUEST_FRAME,
};

/// The client's end (`zentinel-ctl`): the master's limits reversed.
pub const CONTROL_CLIENT_LIMITS: FrameLimits = CONTROL_SERVER_LIMITS.reversed();

/// Version of the messages in this module. 2: worker status carries restart figures.
pub const CONTROL_PROTOCOL_VERSION: u32 = 2;

/// What `zentinel-ctl` asks the master. One request, then responses until the final one (`Done`,
/// `Failed`, `Status`, `RunningConfig`); a long operation sends `Progress` lines (and upgrade
/// progress) before it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum ControlRequest {
    /// The first message of a connection: the client's control protocol version.
    Hello(Hello),
    /// Fresh counters: the master asks every worker before answering.
    Status,
    /// Re-read the config (from `config_path`, else the path the master runs with), validate
    /// it, and switch every worker to it.
    Reload {
        /// The configuration file to read; `None`: the one the master runs with.
        config_path: Option<String>,
    },
    /// Stop the master and its workers. `drain_timeout_ms` overrides
    /// `graceful-shutdown-timeout-secs` for this stop.
    Stop {
        /// Drop connections and exit now instead of draining.
        fast: bool,
        /// How long workers may drain; `None`: `graceful-shutdown-timeout-secs`.
        drain_timeout_ms: Option<u64>,
    },
    /// Replace one worker: start its successor, wait until it is ready, then drain the old one.
    WorkerRestart {
        /// The worker's id, as `zentinel-ctl status` shows it.
        worker_id: u32,
    },
    /// Replace the master by `binary` (absolute; `None`: the path the master was started
    /// from), handing over listeners, workers and this connection; with `rolling`, then replace
    /// the workers one at a time from the new binary. The timeouts override the defaults
    /// (`upgrade-drain-timeout-secs`, else `graceful-shutdown-timeout-secs`; 10 s).
    Upgrade {
        /// The path of the new binary; `None`: the path the master was started from.
        binary: Option<String>,
        /// Then replace the workers one at a time from the new binary.
        rolling: bool,
        /// How long each replaced worker may drain; `None`: `upgrade-drain-timeout-secs`, else
        /// `graceful-shutdown-timeout-secs`.
        drain_timeout_ms: Option<u64>,
        /// How long the new master and each new worker may take to be ready; `None`: 10 s.
        ready_timeout_ms: Option<u64>,
    },
    /// `Upgrade` with the options added since control protocol 2 (the canary). Boxed, and
    /// last, so that the archived `ControlRequest` keeps its size and every earlier variant its
    /// tag: a master that predates it still reads every other request, and refuses this one as
    /// malformed. `zentinel-ctl` sends it only when an option needs it.
    UpgradeWith(Box<UpgradeRequest>),
    /// The running configuration's source text (answered with
    /// [`ControlResponse::RunningConfig`]): what the upgrade pre-flight checks a new binary
    /// against, since it is what the new master will parse. Added after control protocol 2
    /// without changing the archived size; older masters refuse it.
    RunningConfig,
    /// The draining workers' generations, open connections and remaining drain time
    /// (answered with [`ControlResponse::DrainStatus`] from what the master knows, without
    /// asking the workers). `zentinel-ctl status` sends it after `Status`, on the same
    /// connection. Added after control protocol 2 without changing the archived size; older
    /// masters refuse it, and the status is then shown without it.
    DrainStatus,
}

impl ControlRequest {
    /// The request's name, for logs and refusals. `UpgradeWith` is named `Upgrade`: it is
    /// the same request with more options, and an operator reads it as one.
    pub fn kind(&self) -> &'static str {
        match self {
            ControlRequest::Hello(_) => "Hello",
            ControlRequest::Status => "Status",
            ControlRequest::Reload { .. } => "Reload",
            ControlRequest::Stop { .. } => "Stop",
            ControlRequest::WorkerRestart { .. } => "WorkerRestart",
            ControlRequest::Upgrade { .. } | ControlRequest::UpgradeWith(_) => "Upgrade",
            ControlRequest::RunningConfig => "RunningConfig",
            ControlRequest::DrainStatus => "DrainStatus",
        }
    }
}

/// Everything an upgrade request says; see [`ControlRequest::Upgrade`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct UpgradeRequest {
    /// The path of the new binary; `None`: the path the master was started from.
    pub binary: Option<String>,
    /// Then replace the workers one at a time from the new binary.
    pub rolling: bool,
    /// How long each replaced worker may drain; `None`: `upgrade-drain-timeout-secs`, else
    /// `graceful-shutdown-timeout-secs`.
    pub drain_timeout_ms: Option<u64>,
    /// How long the new master and each new worker may take to be ready; `None`: 10 s.
    pub ready_timeout_ms: Option<u64>,
    /// Gate the rolling upgrade on the first new worker's error rate (requires `rolling`).
    pub canary: Option<CanaryPolicy>,
}

/// Canary gating of a rolling upgrade: once the first new worker took over its slot and the
/// worker it replaced drained, the new worker's error rate is compared with the old workers'
/// over `duration_ms` before any other worker is replaced.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct CanaryPolicy {
    /// How long the canary's error rate is watched.
    pub duration_ms: u64,
    /// How far (in hundredths of a percentage point) the canary's error rate may exceed the
    /// old workers' before it is rolled back: 100 = one percentage point.
    pub max_excess_basis_points: u32,
}

impl CanaryPolicy {
    /// One percentage point, the default tolerance.
    pub const DEFAULT_MAX_EXCESS_BASIS_POINTS: u32 = 100;
}

/// A worker as the master sees it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
pub enum WorkerState {
    /// Started; its `Ready` has not come yet.
    Starting,
    /// Serving: it accepts connections.
    Running,
    /// Retired: it stopped accepting and finishes its connections before it exits.
    Draining,
    /// Exited.
    Stopped,
}

impl WorkerState {
    /// The state's name, as `zentinel-ctl status` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Starting => "starting",
            WorkerState::Running => "running",
            WorkerState::Draining => "draining",
            WorkerState::Stopped => "stopped",
        }
    }
}

/// The master: what it runs and since when.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct MasterStatus {
    /// Its process id.
    pub pid: u32,
    /// Its software version.
    pub version: String,
    /// Its generation: 1 for the first master, one more for each master that took over by upgrade.
    pub generation: u64,
    /// Path of the executable the master runs.
    pub binary: String,
    /// Seconds since it started serving.
    pub uptime_s: u64,
    /// Config file path, or `<embedded default>`.
    pub config: String,
}

/// One worker in a status answer.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct WorkerStatus {
    /// The worker's id (slot).
    pub id: u32,
    /// Its process id.
    pub pid: u32,
    /// The master generation that started it.
    pub generation: u64,
    /// The software version it announced.
    pub version: String,
    /// The path of the binary it was started from.
    pub binary: String,
    /// Serving, draining or starting.
    pub state: WorkerState,
    /// Seconds since it was started.
    pub uptime_s: u64,
    /// Its counters (fresh, unless `stale`).
    pub counters: WorkerCounters,
    /// The counters are from the last periodic report, because the worker did not answer the
    /// fresh status request in time.
    pub stale: bool,
    /// Unexpected exits of this worker slot's processes since the master started.
    pub restarts: u32,
    /// How long the master would wait before restarting this slot's worker if it crashed now
    /// (grows while a worker keeps crashing).
    pub next_restart_delay_ms: u64,
    /// How the slot's last crashed worker ended (`killed by SIGKILL`, `exit status 1`), empty
    /// if none crashed.
    pub last_exit: String,
}

/// The answer to [`ControlRequest::Status`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct StatusReport {
    /// The master itself.
    pub master: MasterStatus,
    /// Current workers, then draining workers of earlier generations until they exit.
    pub workers: Vec<WorkerStatus>,
}

/// What the master answers `zentinel-ctl`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum ControlResponse {
    /// The first message of a connection: the master's control protocol version.
    Hello(Hello),
    /// The answer to [`ControlRequest::Status`].
    Status(StatusReport),
    /// An intermediate line of a long operation (worker restart, reload); more follows.
    Progress {
        /// One line of progress, for the operator.
        message: String,
    },
    /// The request succeeded; the final message.
    Done {
        /// What was done, for the operator.
        message: String,
    },
    /// The request failed; nothing changed unless `message` says otherwise.
    Failed {
        /// What failed and why, for the operator.
        message: String,
    },
    /// Upgrade progress: the new master confirmed readiness and the old one is exiting.
    MasterReplaced {
        /// The old master's pid.
        old_pid: u32,
        /// The new master's pid.
        new_pid: u32,
        /// How long the new master took from its start to readiness.
        ready_ms: u64,
        /// The new master's generation.
        generation: u64,
        /// The binary the new master runs.
        binary: String,
    },
    /// Upgrade progress: worker `index` of `total` (1-based) was replaced.
    WorkerReplaced {
        /// This worker's position in the rolling replacement (1-based).
        index: u32,
        /// How many workers the rolling replacement replaces.
        total: u32,
        /// The worker's id (slot).
        worker_id: u32,
        /// The pid of the worker replaced (now draining).
        old_pid: u32,
        /// The pid of the new worker.
        new_pid: u32,
        /// How long the new worker took from its start to readiness.
        ready_ms: u64,
        /// Connections the replaced worker still had to finish when it was retired.
        old_active_connections: u64,
    },
    /// Upgrade progress: a replaced worker was put back on the previous binary.
    WorkerRolledBack {
        /// The worker's id (slot).
        worker_id: u32,
        /// The pid of the new worker that failed.
        failed_pid: u32,
        /// The pid of the worker started again from the previous binary.
        restored_pid: u32,
    },
    /// Canary progress (`UpgradeWith` only, so no older client ever gets it): errors and
    /// requests of the canary (`new_*`) and of the old workers since the window started.
    CanaryComparison {
        /// The canary's worker id (slot).
        worker_id: u32,
        /// How long the comparison has run.
        elapsed_ms: u64,
        /// How long it runs in all (`CanaryPolicy::duration_ms`).
        window_ms: u64,
        /// Errors (5xx answers plus upstream errors) of the canary.
        new_errors: u64,
        /// Requests of the canary.
        new_requests: u64,
        /// Errors of the old workers.
        old_errors: u64,
        /// Requests of the old workers.
        old_requests: u64,
    },
    /// The answer to [`ControlRequest::RunningConfig`] (boxed: the archived size stays).
    RunningConfig(Box<crate::config_source::ConfigSource>),
    /// The answer to [`ControlRequest::DrainStatus`] (boxed: the archived size stays).
    DrainStatus(Box<DrainStatusReport>),
}

/// The workers draining now, oldest generation first.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct DrainStatusReport {
    /// `max-draining-generations` of the running configuration.
    pub max_draining_generations: u32,
    /// One entry per draining worker (retired, or draining because the master stops).
    pub workers: Vec<DrainingWorker>,
}

/// One draining worker.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct DrainingWorker {
    /// Its process id.
    pub pid: u32,
    /// Its worker id (slot).
    pub id: u32,
    /// The master generation that started it.
    pub generation: u64,
    /// Client connections it still had at its last report (a `Status` just before refreshes
    /// it).
    pub connections: u64,
    /// Milliseconds until its drain deadline (0 once passed); `None` if the master knows of
    /// none.
    pub drain_remaining_ms: Option<u64>,
    /// Asked to finish now (`max-draining-generations`): its idle connections were closed at
    /// once.
    pub finishing: bool,
}

impl ControlResponse {
    /// The variant's name, for errors about an answer that was not the expected one.
    pub fn kind(&self) -> &'static str {
        match self {
            ControlResponse::Hello(_) => "Hello",
            ControlResponse::Status(_) => "Status",
            ControlResponse::Progress { .. } => "Progress",
            ControlResponse::MasterReplaced { .. } => "MasterReplaced",
            ControlResponse::WorkerReplaced { .. } => "WorkerReplaced",
            ControlResponse::WorkerRolledBack { .. } => "WorkerRolledBack",
            ControlResponse::CanaryComparison { .. } => "CanaryComparison",
            ControlResponse::Done { .. } => "Done",
            ControlResponse::Failed { .. } => "Failed",
            ControlResponse::RunningConfig(_) => "RunningConfig",
            ControlResponse::DrainStatus(_) => "DrainStatus",
        }
    }
}
