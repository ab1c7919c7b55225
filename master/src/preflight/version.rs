//! What a binary says it is: `zentinel --version --json` ([`VersionInfo`]), asked with a bounded
//! run ([`query_version`]), and how a binary built before that flag existed is recognised.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use zentinel_protocol::control::CONTROL_PROTOCOL_VERSION;
use zentinel_protocol::state::{
    DRAIN_DEADLINE_STATE_FORMAT, FILTER_SEGMENTS_STATE_FORMAT, NO_DRAIN_DEADLINE_STATE_FORMAT,
    SESSION_CACHE_STATE_FORMAT, STATE_FORMAT_VERSION, TICKET_KEYS_STATE_FORMAT,
};
use zentinel_protocol::PROTOCOL_VERSION;

use super::bounded_run::{run_bounded, shown};

/// Arguments that make a binary print its [`VersionInfo`].
pub const VERSION_JSON_ARGS: [&str; 2] = ["--version", "--json"];

/// The oldest state format this build's `read_state_file` decodes. Every format since 1 is
/// kept (see `zentinel_protocol::state`), so this stays 1 until a format is deliberately
/// dropped.
pub const OLDEST_READABLE_STATE_FORMAT: u32 = 1;

/// What a binary built before `--version --json` existed is assumed to speak: the first
/// versions of everything. Such a binary answers `--version --json` with its plain
/// `zentinel X.Y.Z` line (clap handles `--version` before looking at other arguments).
pub const LEGACY_FORMAT: u32 = 1;

/// The upgrade option `--canary`: the running master must carry the request to its successor
/// and the new master must run the canary.
pub const FEATURE_CANARY: &str = "canary";

/// The running master answers `ControlRequest::RunningConfig` with the source text it runs,
/// and the binary checks such a text with `--check-source FILE`: the pre-flight checks a new
/// binary against the very text the new master will be handed, not the file on disk.
pub const FEATURE_RUNNING_CONFIG: &str = "running-config";
/// The build carries the test-only faults of `ZENTINEL_FAULT_INJECTION` (built with the
/// `fault-injection` cargo feature): the end-to-end tests check it before relying on a fault.
/// Never listed by a default build.
pub const FEATURE_FAULT_INJECTION: &str = "fault-injection";

/// `zentinel --version --json`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    /// Always `zentinel`: tells a Zentinel answer from another program's JSON.
    pub name: String,
    /// The build version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// The master <-> worker protocol (`zentinel_protocol::PROTOCOL_VERSION`).
    pub protocol_version: u32,
    /// The newest upgrade state format this binary writes (for an upgrade with every option it
    /// supports, e.g. a canary).
    pub state_format_version: u32,
    /// The state format this binary writes for an upgrade without a canary, when older than
    /// `state_format_version`: a master writes the oldest format that holds its state, so that
    /// the previous release can still take over (a downgrade). Absent from builds that always
    /// wrote `state_format_version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plain_upgrade_state_format: Option<u32>,
    /// The state format this binary writes while retired workers are draining: their drain
    /// deadlines travel in it. Every other upgrade, with or without a canary, writes
    /// `plain_upgrade_state_format`. Absent from builds from before format 5, whose formats
    /// depend on the canary only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draining_state_format: Option<u32>,
    /// The state format this binary writes instead of the two above to a new binary that
    /// reads it, while a TLS listener resumes sessions: the TLS session-ticket keys travel in
    /// it. Never needed: to a binary that does not read it, the master writes the format above
    /// without the keys (its master running `NEW --version --json` to know). Absent from
    /// builds from before format 6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket_keys_state_format: Option<u32>,
    /// The state format this binary writes instead of the ones above to a new binary that reads
    /// it, while a TLS listener resumes sessions: the shared TLS session cache travels in it,
    /// with the keys. Never needed either: to a binary that does not read it, the master
    /// writes the keys' format, or an older one, without the cache. Absent from builds from
    /// before format 7.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_cache_state_format: Option<u32>,
    /// The state format this binary writes instead of the ones above to a new binary that reads
    /// it, while some filter keeps shared state (counters, a rate-limit table): the filters'
    /// segments travel in it. Never needed either: to a binary that does not read it, the
    /// master writes an older format without them (its workers' limits start over). Absent
    /// from builds from before format 8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_segments_state_format: Option<u32>,
    /// Every state format this binary reads (as the successor master of an upgrade).
    pub readable_state_formats: Vec<u32>,
    /// The `zentinel-ctl` <-> master protocol.
    pub control_protocol_version: u32,
    /// Optional upgrade abilities ([`FEATURE_CANARY`]); absent from builds that predate them.
    #[serde(default)]
    pub features: Vec<String>,
    /// Not printed: true when the binary predates `--json` and the versions above are the
    /// [`LEGACY_FORMAT`] assumption, not its answer.
    #[serde(skip)]
    pub legacy: bool,
}

impl VersionInfo {
    /// This build's versions.
    pub fn current() -> VersionInfo {
        VersionInfo {
            name: "zentinel".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol_version: PROTOCOL_VERSION,
            state_format_version: STATE_FORMAT_VERSION,
            plain_upgrade_state_format: Some(NO_DRAIN_DEADLINE_STATE_FORMAT),
            draining_state_format: Some(DRAIN_DEADLINE_STATE_FORMAT),
            ticket_keys_state_format: Some(TICKET_KEYS_STATE_FORMAT),
            session_cache_state_format: Some(SESSION_CACHE_STATE_FORMAT),
            filter_segments_state_format: Some(FILTER_SEGMENTS_STATE_FORMAT),
            readable_state_formats: (OLDEST_READABLE_STATE_FORMAT..=STATE_FORMAT_VERSION).collect(),
            control_protocol_version: CONTROL_PROTOCOL_VERSION,
            features: [FEATURE_CANARY, FEATURE_RUNNING_CONFIG]
                .into_iter()
                .chain(
                    zentinel_worker::fault_injection::AVAILABLE.then_some(FEATURE_FAULT_INJECTION),
                )
                .map(str::to_owned)
                .collect(),
            legacy: false,
        }
    }

    /// A binary that printed `zentinel VERSION` instead of JSON.
    pub fn legacy(version: &str) -> VersionInfo {
        VersionInfo {
            name: "zentinel".to_owned(),
            version: version.to_owned(),
            protocol_version: LEGACY_FORMAT,
            state_format_version: LEGACY_FORMAT,
            plain_upgrade_state_format: None,
            draining_state_format: None,
            ticket_keys_state_format: None,
            session_cache_state_format: None,
            filter_segments_state_format: None,
            readable_state_formats: vec![LEGACY_FORMAT],
            control_protocol_version: LEGACY_FORMAT,
            features: Vec::new(),
            legacy: true,
        }
    }

    /// One JSON line.
    pub fn to_json(&self) -> String {
        // A struct of strings and integers always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The state format this binary's master writes to hand over an upgrade: with or without
    /// a canary, while retired workers drain (`draining`) or not.
    pub fn writes_state_format(&self, canary: bool, draining: bool) -> u32 {
        let plain = self
            .plain_upgrade_state_format
            .unwrap_or(self.state_format_version);
        match self.draining_state_format {
            // From format 5 on, only drain deadlines need the newer format.
            Some(format) if draining => format,
            Some(_) => plain,
            None if canary => self.state_format_version,
            None => plain,
        }
    }

    /// `format 4 (5 while retired workers drain)`, `format 2 (3 with --canary)`, or
    /// `format 3` when there is one.
    pub fn written_formats_text(&self) -> String {
        let plain = self.writes_state_format(false, false);
        let (other, when) = match self.draining_state_format {
            Some(_) => (
                self.writes_state_format(false, true),
                "while retired workers drain",
            ),
            None => (self.writes_state_format(true, false), "with --canary"),
        };
        if plain == other {
            format!("format {plain}")
        } else {
            format!("format {plain} ({other} {when})")
        }
    }

    pub fn reads_state_format(&self, format: u32) -> bool {
        self.readable_state_formats.contains(&format)
    }

    /// `1..=2`, `1`, or `1, 3` for the messages.
    pub fn readable_formats_text(&self) -> String {
        let formats = &self.readable_state_formats;
        let contiguous = formats.windows(2).all(|w| w[1] == w[0] + 1);
        match (formats.first(), formats.last()) {
            (Some(first), Some(last)) if contiguous && first != last => format!("{first}..={last}"),
            _ => formats
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// Interpret the answer to `BINARY --version --json`: the JSON object, or the plain
/// `zentinel X.Y.Z` line of a binary that predates the flag.
pub fn parse_version_output(stdout: &str) -> Result<VersionInfo, String> {
    let text = stdout.trim();
    if text.starts_with('{') {
        let info: VersionInfo = serde_json::from_str(text)
            .map_err(|e| format!("its --version --json answer is not valid: {e}: {text}"))?;
        if info.name != "zentinel" {
            return Err(format!(
                "its --version --json answer names `{}`, not zentinel",
                info.name
            ));
        }
        return Ok(info);
    }
    match text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("zentinel "))
    {
        Some(version) if !version.trim().is_empty() && !version.contains(' ') => {
            Ok(VersionInfo::legacy(version.trim()))
        }
        _ => Err(format!(
            "it does not answer --version like zentinel (stdout: {})",
            shown(text)
        )),
    }
}

/// `BINARY --version --json`, bounded by `timeout`.
pub fn query_version(binary: &Path, timeout: Duration) -> Result<VersionInfo, String> {
    let out = run_bounded(binary, &VERSION_JSON_ARGS, timeout)?;
    if !out.status.success() {
        return Err(format!(
            "`{} --version --json` failed ({}): {}",
            binary.display(),
            out.status_text(),
            out.said()
        ));
    }
    parse_version_output(&out.stdout).map_err(|e| format!("{}: {e}", binary.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_round_trips_through_json() {
        let info = VersionInfo::current();
        let parsed = parse_version_output(&info.to_json()).unwrap();
        assert_eq!(parsed, info);
        assert!(info.reads_state_format(STATE_FORMAT_VERSION));
        assert!(info.reads_state_format(1));
        assert!(!info.reads_state_format(STATE_FORMAT_VERSION + 1));
    }

    #[test]
    fn legacy_answer_is_format_one() {
        let info = parse_version_output("zentinel 0.1.0\n").unwrap();
        assert!(info.legacy);
        assert_eq!(info.version, "0.1.0");
        assert_eq!(info.state_format_version, 1);
        assert_eq!(info.protocol_version, 1);
        assert!(parse_version_output("nginx version: 1.2").is_err());
        assert!(parse_version_output("").is_err());
        assert!(parse_version_output("{\"name\":\"other\"}").is_err());
    }
}
