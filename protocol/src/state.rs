//! The state file a master hands to its successor across a binary upgrade (fork + exec).
//!
//! Layout: `MAGIC` (8 bytes) | format version (u32 LE) | payload length (u64 LE) |
//! payload checksum (u64 LE, FNV-1a 64) | payload (rkyv archive of the version's struct).
//! A newer binary reads every older format version (each old struct is kept frozen here and
//! converted to the latest); an older binary refuses a newer version with a clear error instead
//! of guessing.
//!
//! # What crosses the exec: the configuration's source, and runtime facts
//!
//! Since format 4 the state carries the running configuration as its **source text**
//! ([`ConfigSource`]: every file it was read from, with its path) plus the runtime facts
//! (inherited fds, workers, the pending upgrade, metrics totals). The new master parses that
//! text with its own parser; a binary that rejects it fails before readiness and the old master
//! keeps serving. So the configuration model can grow without ever changing this format: only
//! a change of the runtime facts below needs a new version.
//!
//! Formats 1 to 3 archived the parsed model instead. They are still read: the model is decoded
//! with the frozen types of [`v3_config`] and rendered back to KDL text ([`legacy_kdl`]), so a
//! master taking over from such a predecessor is given text like any other. Every upgrade
//! writes format 4 or later (see below); a release that reads only formats 1 to 3 cannot take
//! over from this one (the upgrade pre-flight says so before anything changes).
//!
//! fd numbers in the state are inherited across exec (CLOEXEC cleared only in the forked
//! child); the new master checks each fd before use.
//!
//! Only the magic and the version are common to all versions; the rest of the header belongs to
//! the version, so the version is dispatched on before anything else is read. The payload is
//! copied into an aligned buffer and validated (bytecheck) before it is deserialized: a state
//! file is input like any other, and no byte sequence makes decoding panic.
//!
//! # Compatibility is proven by a frozen fixture
//!
//! `tests/fixtures/state-v{N}.bin` (workspace root) was written once by the version N encoder
//! from a fixed value; `protocol/tests/state.rs::frozen_v{N}_state_file_still_decodes` decodes
//! it with the current code and compares every field. **Never regenerate the fixture of an existing
//! version**: that would turn the test into "this build reads its own output" and hide exactly
//! the break it exists to catch. When the format changes, bump `STATE_FORMAT_VERSION`, freeze
//! the old struct as `MasterStateV{N}` with a conversion, and add a new `state-v{N+1}.bin`
//! (the generator only creates fixtures that do not exist yet; see
//! `ZENTINEL_REGENERATE_FIXTURES` in that test file).
//!
//! # The oldest format that holds the state is the one written
//!
//! [`encode_state`] writes format 4 when no worker carries a drain deadline (the usual case:
//! no retired worker is draining) and no TLS session-ticket keys travel, byte for byte what the
//! previous release writes, so that release can still take over from this one (a rollback is
//! an upgrade too); format 5 when a deadline must travel; format 6 when ticket keys do; format
//! 7 when the shared TLS session cache does; format 8 when filter segments do (handed on only
//! to a binary that says it reads format 8). [`written_format`] says which. The keys and the
//! cache are the facts a master may leave out: without them the new master makes fresh keys
//! (or a fresh, empty cache) and clients pay one full handshake, so the master hands them on
//! only to a binary that says it reads the format that holds them (and only when a TLS
//! listener resumes sessions); see `docs/design/session-tickets.md` and
//! `docs/design/session-cache.md`.
//!
//! History: version 1 (frozen in [`v1`]); version 2 added `UpstreamConfig::health_check`,
//! `UpstreamConfig::passive_health`, `ListenerConfig::access_log`, the metrics listener and the
//! master's metrics counters (frozen in [`v2`]); version 3 added `PendingUpgrade::canary`
//! (frozen in [`v3`]); version 4 replaced the parsed configuration by its source text (frozen
//! in [`v4`]); version 5 added `WorkerRecord::drain_deadline_monotonic_ms`, so that a worker
//! retired with its own drain timeout keeps it across later hand-overs (frozen in [`v5`]);
//! version 6 added `ticket_keys`, the TLS session-ticket keys, so that a client's session
//! resumes on the new binary's workers (frozen in [`v6`]). The keys are secrets: the file is
//! 0600, the new master removes it as soon as it has read it, and every buffer that held its
//! bytes is zeroed. Version 7 added `session_cache`, the shared TLS session cache's memfd
//! (inherited across the exec like the listeners) and size, so that a client resuming by
//! session id resumes on the new binary's workers. The sessions themselves never enter the
//! file: they stay in the memfd, which is never written to a file (frozen in [`v7`]).
//! Version 8 added `filter_segments`, the filters' shared memfds (counters and rate-limit
//! tables), so that a rate limit holds across a rolling upgrade, old and new workers sharing
//! one table (`docs/design/filters.md`).

use rkyv::{Archive, Deserialize, Serialize};

pub use crate::config_source::{ConfigSource, ConfigSourceFile};
use crate::control::{CanaryPolicy, WorkerState};
use crate::messages::WorkerCounters;
use crate::ticket_keys::TicketKeys;

pub mod inherited_fds;
pub mod legacy_kdl;
pub mod v1;
pub mod v2;
pub mod v3;
pub mod v3_config;
pub mod v4;
pub mod v5;
pub mod v6;
pub mod v7;
pub use inherited_fds::InheritedFd;
pub use v1::MasterStateV1;
pub use v2::MasterStateV2;
pub use v3::MasterStateV3;
pub use v4::MasterStateV4;
pub use v5::MasterStateV5;
pub use v6::MasterStateV6;
pub use v7::MasterStateV7;

mod encoding;
mod file;
pub use encoding::{
    decode_model_state, decode_state, encode_state, written_format, STATE_HEADER_LEN,
};
pub use file::{read_state_file, write_state_file};

/// The first 8 bytes of every state file.
pub const STATE_MAGIC: [u8; 8] = *b"ZNTLSTAT";
/// The newest format this build writes (and reads). Bump it, and add a frozen
/// `MasterStateV{N}` plus a conversion, whenever the runtime facts change; a change of the
/// configuration model never needs it.
pub const STATE_FORMAT_VERSION: u32 = 8;

/// The format a state without drain deadlines (and without ticket keys) is written in
/// ([`v4`]): the previous release's.
pub const NO_DRAIN_DEADLINE_STATE_FORMAT: u32 = 4;

/// The format a state with drain deadlines but without ticket keys is written in ([`v5`]).
pub const DRAIN_DEADLINE_STATE_FORMAT: u32 = 5;

/// The format a state with TLS session-ticket keys but without the session cache is written in
/// ([`v6`]).
pub const TICKET_KEYS_STATE_FORMAT: u32 = 6;

/// The format a state with the shared TLS session cache but without filter segments is
/// written in ([`v7`]).
pub const SESSION_CACHE_STATE_FORMAT: u32 = 7;

/// The format a state with the filters' shared segments is written in (the latest).
pub const FILTER_SEGMENTS_STATE_FORMAT: u32 = 8;

/// A listening socket handed over, by the name of the listener it belongs to.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ListenerFd {
    /// The listener's name in the configuration.
    pub name: String,
    /// The address it is bound to, as configured.
    pub address: String,
    /// The fd number, inherited across the exec.
    pub fd: i32,
}

/// A worker the new master adopts: the process, its channel and what the old master knew of it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct WorkerRecord {
    /// The worker's id (slot), as `zentinel-ctl status` shows it.
    pub id: u32,
    /// Its process id.
    pub pid: u32,
    /// The master generation that started it.
    pub generation: u64,
    /// The master's end of the worker's socketpair.
    pub channel_fd: i32,
    /// The software version the worker announced in its `Hello`.
    pub version: String,
    /// The path of the binary it was started from.
    pub binary: String,
    /// When it was started (Unix milliseconds).
    pub started_at_unix_ms: u64,
    /// Serving, draining or starting, as the old master last knew.
    pub state: WorkerState,
    /// Its last reported counters.
    pub counters: WorkerCounters,
    /// The master-worker protocol the worker speaks (its binary's `PROTOCOL_VERSION`): a
    /// configuration goes to it only in a layout it reads.
    pub protocol_version: u32,
    /// A retired worker's drain deadline: the `CLOCK_MONOTONIC` time (ms) at which it closes
    /// what is left, as it was told when retired. Every later master keeps it (that clock is
    /// system-wide and survives exec; see `master/src/drain_deadline.rs`). `None`: not
    /// retired, or recorded by a master from before format 5.
    pub drain_deadline_monotonic_ms: Option<u64>,
}

/// An upgrade request that the new master carries on (the rolling part, and the answer to the
/// control client that asked for it).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct PendingUpgrade {
    /// Replace the workers one at a time from the new binary once the new master is ready.
    pub rolling: bool,
    /// How long each replaced worker may drain.
    pub drain_timeout_ms: u64,
    /// How long each new worker may take to report ready.
    pub ready_timeout_ms: u64,
    /// The control client connection waiting for progress, if any (SIGUSR2 has none).
    pub client_fd: Option<i32>,
    /// Gate the rolling replacement on the first new worker's error rate.
    pub canary: Option<CanaryPolicy>,
}

/// A listening socket inherited without a configuration of its own (the admin listener
/// serving `/metrics`): the kernel socket and its backlog stay open across the upgrade, and
/// the new master matches it against its parse of the configuration text.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct InheritedListener {
    /// The address actually bound (port 0 resolved).
    pub address: String,
    /// The fd number, inherited across the exec.
    pub fd: i32,
}

/// Master-side counters, carried to the successor master so that the exposed counters stay
/// monotonic across binary upgrades.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct MasterMetrics {
    /// Sum of the last counters reported by every worker that has exited (its
    /// `active_connections` is meaningless and kept 0).
    pub retired: WorkerCounters,
    /// Binary upgrades that finished.
    pub upgrades_total: u64,
    /// Binary upgrades that failed (the old binary kept or put back).
    pub upgrades_failed: u64,
    /// Duration of the last finished binary upgrade (start of the handover to the last worker
    /// replaced), 0 before the first one.
    pub last_upgrade_duration_ms: u64,
    /// When the upgrade in progress started (Unix ms), set by the old master.
    pub upgrade_started_unix_ms: Option<u64>,
    /// Reloads that were applied.
    pub reloads_total: u64,
    /// Reloads that were refused (the running configuration kept).
    pub reloads_failed: u64,
    /// Unexpected exits of serving workers (each is restarted).
    pub worker_restarts: u64,
    /// Drain-duration histogram of retired workers: cumulative counts per bucket bound of
    /// `DRAIN_BUCKETS_SECONDS` (the `+Inf` bucket is `drains`).
    pub drain_buckets: Vec<u64>,
    /// Retired workers whose drain was measured (the `+Inf` bucket).
    pub drains: u64,
    /// Sum of those drains' durations.
    pub drain_sum_ms: u64,
}

/// Upper bounds (seconds) of the drain-duration histogram buckets.
pub const DRAIN_BUCKETS_SECONDS: &[f64] = &[0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// The shared TLS session cache handed over: a memfd (`crate::session_cache`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct SessionCacheFd {
    /// The memfd's number, inherited across the exec.
    pub fd: i32,
    /// Its size; the new master checks the fd against it, and the layout in its header, before
    /// adopting it.
    pub segment_bytes: u64,
}

/// A filter's shared segment handed over: a memfd (`crate::filter_shm`) holding its counters
/// and, for a rate limit, the table every worker shares.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct FilterSegmentFd {
    /// The filter's name in the running configuration.
    pub name: String,
    /// The memfd's number, inherited across the exec.
    pub fd: i32,
    /// Its size; the new master checks the fd against it, and the layout in its header, before
    /// adopting it.
    pub segment_bytes: u64,
}

/// Format version 8 (the latest): runtime facts, the configuration's source text, the TLS
/// session-ticket keys, the shared TLS session cache and the filters' shared segments.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct MasterStateV8 {
    /// The old master's pid (the new master reports readiness to it).
    pub previous_master_pid: u32,
    /// The generation the new master runs as (old + 1).
    pub generation: u64,
    /// The running configuration, as the text it was parsed from.
    pub config_source: ConfigSource,
    /// The log level the old master ran with.
    pub log_level: String,
    /// The control socket's path.
    pub control_socket_path: String,
    /// The control socket's listening fd, inherited across the exec.
    pub control_socket_fd: i32,
    /// The previous binary, kept open so a failed rolling upgrade can put workers back on it.
    pub previous_binary: String,
    /// `previous_binary`, open (read-only), inherited across the exec.
    pub previous_executable_fd: i32,
    /// One per configured listener, by name.
    pub listeners: Vec<ListenerFd>,
    /// Every worker of the old master, serving or draining: the new master adopts them.
    pub workers: Vec<WorkerRecord>,
    /// An upgrade the new master carries on once ready (rolling replacement, client answer).
    pub upgrade: Option<PendingUpgrade>,
    /// `None`: no metrics endpoint configured.
    pub metrics_listener: Option<InheritedListener>,
    /// Counters the new master continues from.
    pub metrics: MasterMetrics,
    /// The TLS session-ticket keys the workers use, for the new master and its workers to go
    /// on with (newest first). Empty: none handed on, the new master makes fresh ones.
    pub ticket_keys: TicketKeys,
    /// The shared TLS session cache, for the new master and its workers to go on with (the
    /// old workers keep using it until they exit). `None`: none handed on, the new master
    /// makes a fresh, empty one when a TLS listener resumes sessions.
    pub session_cache: Option<SessionCacheFd>,
    /// The filters' shared segments (counters, rate-limit tables), for the new master and its
    /// workers to go on with, so that a rate limit holds across the upgrade (the old workers
    /// keep using them until they exit). Empty: none handed on, the new master makes fresh
    /// ones.
    pub filter_segments: Vec<FilterSegmentFd>,
}

/// The latest state, what the rest of the code uses.
pub type MasterState = MasterStateV8;

/// Why a state file cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing the file failed.
    #[error("state file {path}: {source}")]
    Io {
        /// The state file.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The file does not start with [`STATE_MAGIC`].
    #[error("state file {path}: not a Zentinel state file (bad magic number)")]
    BadMagic {
        /// The state file.
        path: String,
    },
    /// The file was written by a newer binary, in a format this one does not know.
    #[error(
        "state file {path}: format version {found} is newer than this binary supports \
         (up to {supported}); upgrade to a binary that reads it instead"
    )]
    FutureVersion {
        /// The state file.
        path: String,
        /// Its format version.
        found: u32,
        /// The newest format this binary reads.
        supported: u32,
    },
    /// The file's format version is not one this binary has a decoder for (0 never was one).
    #[error("state file {path}: unknown format version {found}")]
    UnknownVersion {
        /// The state file.
        path: String,
        /// Its format version.
        found: u32,
    },
    /// The file's length, checksum, archive or contents are wrong (`reason` says which).
    #[error("state file {path}: corrupt ({reason})")]
    Corrupt {
        /// The state file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}
