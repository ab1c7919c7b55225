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
//! no retired worker is draining), byte for byte what the previous release writes, so that
//! release can still take over from this one (a rollback is an upgrade too); format 5 only
//! when a deadline must travel. [`written_format`] says which.
//!
//! History: version 1 (frozen in [`v1`]); version 2 added `UpstreamConfig::health_check`,
//! `UpstreamConfig::passive_health`, `ListenerConfig::access_log`, the metrics listener and the
//! master's metrics counters (frozen in [`v2`]); version 3 added `PendingUpgrade::canary`
//! (frozen in [`v3`]); version 4 replaced the parsed configuration by its source text (frozen
//! in [`v4`]); version 5 added `WorkerRecord::drain_deadline_monotonic_ms`, so that a worker
//! retired with its own drain timeout keeps it across later hand-overs.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use rkyv::rancor;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

pub use crate::config_source::{ConfigSource, ConfigSourceFile};
use crate::control::{CanaryPolicy, WorkerState};
use crate::messages::WorkerCounters;

pub mod inherited_fds;
pub mod legacy_kdl;
pub mod v1;
pub mod v2;
pub mod v3;
pub mod v3_config;
pub mod v4;
pub use inherited_fds::InheritedFd;
pub use v1::MasterStateV1;
pub use v2::MasterStateV2;
pub use v3::MasterStateV3;
pub use v4::MasterStateV4;

/// The first 8 bytes of every state file.
pub const STATE_MAGIC: [u8; 8] = *b"ZNTLSTAT";
/// The newest format this build writes (and reads). Bump it, and add a frozen
/// `MasterStateV{N}` plus a conversion, whenever the runtime facts change; a change of the
/// configuration model never needs it.
pub const STATE_FORMAT_VERSION: u32 = 5;

/// The format a state without drain deadlines is written in ([`v4`]): the previous release's.
pub const NO_DRAIN_DEADLINE_STATE_FORMAT: u32 = 4;

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

/// Format version 5 (the latest): runtime facts and the configuration's source text.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct MasterStateV5 {
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
}

/// The latest state, what the rest of the code uses.
pub type MasterState = MasterStateV5;

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

/// Bytes before the payload: magic, version, payload length, checksum.
pub const STATE_HEADER_LEN: usize = 8 + 4 + 8 + 8;

/// The part of the header every format version shares: magic and version. Everything after it
/// may change with the version, so the version is dispatched on before the rest is read.
const STABLE_PREFIX_LEN: usize = 8 + 4;

/// A master state is a few KiB; anything this large is not one of ours, and refusing it before
/// reading keeps a wrong path (a disk image, /dev/zero) from exhausting memory.
const MAX_STATE_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// FNV-1a 64: not cryptographic (the file is written by a trusted predecessor into a 0600
/// file), it only catches truncation and bit rot before rkyv validation sees the bytes.
fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(PRIME)
    })
}

/// Serialize `state` in the oldest format that holds it ([`written_format`]): magic, version,
/// length, checksum, payload.
pub fn encode_state(state: &MasterState) -> Vec<u8> {
    match MasterStateV4::holding(state) {
        Some(v4) => framed(NO_DRAIN_DEADLINE_STATE_FORMAT, &archive(&v4)),
        None => framed(STATE_FORMAT_VERSION, &archive(state)),
    }
}

/// The format [`encode_state`] writes `state` in: 4 unless a worker carries a drain deadline.
pub fn written_format(state: &MasterState) -> u32 {
    if state
        .workers
        .iter()
        .any(|w| w.drain_deadline_monotonic_ms.is_some())
    {
        STATE_FORMAT_VERSION
    } else {
        NO_DRAIN_DEADLINE_STATE_FORMAT
    }
}

fn framed(version: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(STATE_HEADER_LEN + payload.len());
    out.extend_from_slice(&STATE_MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&fnv1a64(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fn archive<T>(value: &T) -> AlignedVec
where
    T: for<'a> Serialize<
        rkyv::api::high::HighSerializer<
            AlignedVec,
            rkyv::ser::allocator::ArenaHandle<'a>,
            rancor::Error,
        >,
    >,
{
    match rkyv::to_bytes::<rancor::Error>(value) {
        Ok(payload) => payload,
        // Serializing into a growable in-memory buffer only fails when the archive outgrows
        // rkyv's 32-bit relative pointers (2 GiB); a master's state is a few KiB, so reaching
        // this is a bug in the caller, not a condition to handle.
        Err(e) => panic!("cannot serialize the master state: {e}"),
    }
}

/// Parse a state file's bytes, of any supported version, into the latest `MasterState`.
/// `path` only names the file in errors.
pub fn decode_state(bytes: &[u8], path: &str) -> Result<MasterState, StateError> {
    Ok(match decode_any(bytes, path)? {
        Decoded::Model(state) => state.into(),
        Decoded::Source(state) => state,
    })
}

/// A state of format 1 to 3 as it was archived (with the parsed configuration model), before
/// its conversion to the latest format; `None` for a format 4 or 5 file. For tests that compare an
/// old fixture with the value it was written from.
pub fn decode_model_state(bytes: &[u8], path: &str) -> Result<Option<MasterStateV3>, StateError> {
    Ok(match decode_any(bytes, path)? {
        Decoded::Model(state) => Some(state),
        Decoded::Source(_) => None,
    })
}

/// What a state file decodes to before conversion: formats 1 to 3 carry the parsed model
/// (converted to format 3), formats 4 and 5 the source text (converted to format 5).
enum Decoded {
    Model(MasterStateV3),
    Source(MasterStateV5),
}

fn decode_any(bytes: &[u8], path: &str) -> Result<Decoded, StateError> {
    let corrupt = |reason: String| StateError::Corrupt {
        path: path.to_owned(),
        reason,
    };

    // A file that is a prefix of the magic is a truncated state file, anything else is not ours.
    if bytes.len() < STATE_MAGIC.len() {
        if STATE_MAGIC.starts_with(bytes) {
            return Err(corrupt(format!(
                "truncated: {} bytes, shorter than the {}-byte header",
                bytes.len(),
                STATE_HEADER_LEN
            )));
        }
        return Err(StateError::BadMagic {
            path: path.to_owned(),
        });
    }
    if bytes[..STATE_MAGIC.len()] != STATE_MAGIC {
        return Err(StateError::BadMagic {
            path: path.to_owned(),
        });
    }
    let Some(version_bytes) = bytes.get(STATE_MAGIC.len()..STABLE_PREFIX_LEN) else {
        return Err(corrupt(format!(
            "truncated: {} bytes, no room for the format version",
            bytes.len()
        )));
    };
    let version = u32::from_le_bytes(le_array(version_bytes));
    match version {
        1 => {
            let payload = checked_payload(bytes, path)?;
            let state = decode_payload::<MasterStateV1>(payload, 1).map_err(corrupt)?;
            Ok(Decoded::Model(MasterStateV2::from(state).into()))
        }
        2 => {
            let payload = checked_payload(bytes, path)?;
            let state = decode_payload::<MasterStateV2>(payload, 2).map_err(corrupt)?;
            Ok(Decoded::Model(state.into()))
        }
        3 => {
            let payload = checked_payload(bytes, path)?;
            let state = decode_payload::<MasterStateV3>(payload, 3).map_err(corrupt)?;
            Ok(Decoded::Model(state))
        }
        4 => {
            let payload = checked_payload(bytes, path)?;
            let state = decode_payload::<MasterStateV4>(payload, 4).map_err(corrupt)?;
            Ok(Decoded::Source(state.into()))
        }
        5 => {
            let payload = checked_payload(bytes, path)?;
            let state = decode_payload::<MasterStateV5>(payload, 5).map_err(corrupt)?;
            Ok(Decoded::Source(state))
        }
        0 => Err(StateError::UnknownVersion {
            path: path.to_owned(),
            found: version,
        }),
        found if found > STATE_FORMAT_VERSION => Err(StateError::FutureVersion {
            path: path.to_owned(),
            found,
            supported: STATE_FORMAT_VERSION,
        }),
        // 1..=STATE_FORMAT_VERSION without an arm: a version was bumped without keeping the
        // decoder of the previous one, which the frozen fixture test is there to catch.
        found => Err(StateError::UnknownVersion {
            path: path.to_owned(),
            found,
        }),
    }
}

fn le_array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut array = [0u8; N];
    array.copy_from_slice(bytes);
    array
}

/// Check the length and checksum of the header (the same for versions 1 to 5) and return the
/// payload.
fn checked_payload<'a>(bytes: &'a [u8], path: &str) -> Result<&'a [u8], StateError> {
    let corrupt = |reason: String| StateError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    if bytes.len() < STATE_HEADER_LEN {
        return Err(corrupt(format!(
            "truncated: {} bytes, shorter than the {STATE_HEADER_LEN}-byte header",
            bytes.len()
        )));
    }
    let declared = u64::from_le_bytes(le_array(&bytes[12..20]));
    let expected_checksum = u64::from_le_bytes(le_array(&bytes[20..28]));
    let payload = &bytes[STATE_HEADER_LEN..];
    if declared != payload.len() as u64 {
        return Err(corrupt(format!(
            "header announces a {declared}-byte payload but {} bytes follow it \
             (truncated or overwritten file)",
            payload.len()
        )));
    }
    let actual_checksum = fnv1a64(payload);
    if actual_checksum != expected_checksum {
        return Err(corrupt(format!(
            "payload checksum mismatch: header says {expected_checksum:#018x}, \
             payload hashes to {actual_checksum:#018x}"
        )));
    }
    Ok(payload)
}

fn decode_payload<T>(payload: &[u8], version: u32) -> Result<T, String>
where
    T: Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rancor::Error>>
        + Deserialize<T, rkyv::api::high::HighDeserializer<rancor::Error>>,
{
    // rkyv needs the archive aligned; a slice of the file buffer at offset 28 is not.
    let mut aligned = AlignedVec::<16>::with_capacity(payload.len());
    aligned.extend_from_slice(payload);
    rkyv::from_bytes::<T, rancor::Error>(&aligned)
        .map_err(|e| format!("payload is not a valid version {version} state archive: {e}"))
}

fn io_error(path: &Path, source: io::Error) -> StateError {
    StateError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Prefix an error with what was being done, keeping its kind for callers that match on it.
fn with_context(source: io::Error, context: String) -> io::Error {
    io::Error::new(source.kind(), format!("{context}: {source}"))
}

/// Write the state to `path` atomically (temp file in the same directory, fsync, rename, fsync
/// of the directory), mode 0600. Errors name the path. On any error nothing is left behind:
/// neither the temp file nor, when a step after the rename fails, the file at `path`.
pub fn write_state_file(path: &std::path::Path, state: &MasterState) -> Result<(), StateError> {
    write_state_file_syncing(path, state, |dir| {
        File::open(dir).and_then(|d| d.sync_all())
    })
}

/// [`write_state_file`] with the directory fsync as a parameter (a test makes it fail).
fn write_state_file_syncing(
    path: &std::path::Path,
    state: &MasterState,
    sync_dir: impl FnOnce(&Path) -> io::Result<()>,
) -> Result<(), StateError> {
    static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

    let Some(file_name) = path.file_name() else {
        return Err(io_error(
            path,
            io::Error::new(io::ErrorKind::InvalidInput, "path does not name a file"),
        ));
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut temp_name = OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(format!(
        ".tmp.{}.{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let temp_path = dir.join(temp_name);

    let bytes = encode_state(state);
    // create_new: never follow or reuse whatever sits at the temp name (a stale file, a
    // symlink planted by someone else); mode 0600 because the state lists fd numbers and paths.
    let result = (|| -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp_path)
            .map_err(|e| {
                with_context(
                    e,
                    format!("cannot create temp file {}", temp_path.display()),
                )
            })?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| {
                with_context(e, format!("cannot write temp file {}", temp_path.display()))
            })?;
        drop(file);
        std::fs::rename(&temp_path, path).map_err(|e| {
            with_context(
                e,
                format!("cannot rename temp file {}", temp_path.display()),
            )
        })
    })();
    if let Err(e) = result {
        // Best effort: the temp file may not exist (create failed); the original error is
        // the one worth reporting.
        let _ = std::fs::remove_file(&temp_path);
        return Err(io_error(path, e));
    }
    // The rename is only durable once the directory entry is. A failure fails the write, so
    // the caller gives up the upgrade: the file it would never hand over must go too.
    sync_dir(dir).map_err(|e| {
        let mut context = format!("cannot fsync directory {}", dir.display());
        match std::fs::remove_file(path) {
            Ok(()) => context.push_str(" (the state file was removed)"),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => context.push_str(&format!(" (and cannot remove the state file: {err})")),
        }
        io_error(path, with_context(e, context))
    })
}

/// Read and check the state file at `path`, in any format this binary reads, converted to the
/// latest. Errors name the path; no content makes it panic.
pub fn read_state_file(path: &std::path::Path) -> Result<MasterState, StateError> {
    let file = File::open(path).map_err(|e| io_error(path, e))?;
    let len = file.metadata().map_err(|e| io_error(path, e))?.len();
    if len > MAX_STATE_FILE_BYTES {
        return Err(StateError::Corrupt {
            path: path.display().to_string(),
            reason: format!(
                "{len} bytes, larger than any state file (limit {MAX_STATE_FILE_BYTES})"
            ),
        });
    }
    // Only a size hint: `len` is at most MAX_STATE_FILE_BYTES.
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    // take(): the file may grow between metadata and read; never read past the limit.
    file.take(MAX_STATE_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_error(path, e))?;
    if bytes.len() as u64 > MAX_STATE_FILE_BYTES {
        return Err(StateError::Corrupt {
            path: path.display().to_string(),
            reason: format!("grew past the {MAX_STATE_FILE_BYTES}-byte limit while being read"),
        });
    }
    decode_state(&bytes, &path.display().to_string())
}

#[cfg(test)]
mod write_tests {
    use super::*;

    #[test]
    fn a_failed_directory_fsync_leaves_no_state_file_behind() {
        let dir = std::env::temp_dir().join(format!(
            "zentinel-state-dirsync-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("zentinel-upgrade-1.state");
        let state = MasterState {
            previous_master_pid: 1,
            generation: 2,
            config_source: ConfigSource {
                main_path: None,
                files: Vec::new(),
            },
            log_level: "info".to_owned(),
            control_socket_path: "/run/z.sock".to_owned(),
            control_socket_fd: 3,
            previous_binary: "/usr/bin/zentinel".to_owned(),
            previous_executable_fd: 4,
            listeners: Vec::new(),
            workers: Vec::new(),
            upgrade: None,
            metrics_listener: None,
            metrics: MasterMetrics::default(),
        };
        let mut synced = None;
        let err = write_state_file_syncing(&path, &state, |d| {
            // The file is complete and in place when the directory is synced.
            synced = Some((d.to_owned(), path.exists()));
            Err(io::Error::other("input/output error (injected)"))
        })
        .unwrap_err();
        assert_eq!(synced, Some((dir.clone(), true)));
        let message = err.to_string();
        assert!(
            message.contains("cannot fsync directory")
                && message.contains("the state file was removed")
                && message.contains(&path.display().to_string()),
            "{message}"
        );
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
        std::fs::remove_dir_all(&dir).unwrap();

        // The same write with a working sync keeps the file.
        std::fs::create_dir_all(&dir).unwrap();
        write_state_file(&path, &state).unwrap();
        assert_eq!(read_state_file(&path).unwrap(), state);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
