//! Upgrade pre-flight: what `zentinel-ctl upgrade` checks about a new binary before it asks the
//! master to replace anything (issue 8).
//!
//! Everything here runs in the client, from data any control client already gets (the status
//! report) plus local runs of the binaries: a new `zentinel-ctl` usually drives an older
//! running master, so the pre-flight must not need anything the master would have to learn.
//!
//! - [`VersionInfo`]: what `zentinel --version --json` prints, and how a binary built before
//!   that flag existed is recognised ([`query_version`]).
//! - [`run_bounded`]: one run of a binary with a deadline; on overrun its whole process group is
//!   killed, so a hung (or malicious) "new binary" cannot hang the upgrade command.
//! - [`check_state_format`], [`check_protocol`]: the compatibility rules.

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use zentinel_protocol::control::CONTROL_PROTOCOL_VERSION;
use zentinel_protocol::state::{NO_DRAIN_DEADLINE_STATE_FORMAT, STATE_FORMAT_VERSION};
use zentinel_protocol::PROTOCOL_VERSION;

/// Arguments that make a binary print its [`VersionInfo`].
pub const VERSION_JSON_ARGS: [&str; 2] = ["--version", "--json"];

/// Default bound of one pre-flight run of a binary (`--version --json`, `--check`).
pub const DEFAULT_CHILD_TIMEOUT: Duration = Duration::from_secs(10);

/// The oldest state format this build's `read_state_file` decodes. Every format since 1 is
/// kept (see `zentinel_protocol::state`), so this stays 1 until a format is deliberately
/// dropped.
pub const OLDEST_READABLE_STATE_FORMAT: u32 = 1;

/// What a binary built before `--version --json` existed is assumed to speak: the first
/// versions of everything. Such a binary answers `--version --json` with its plain
/// `zentinel X.Y.Z` line (clap handles `--version` before looking at other arguments).
pub const LEGACY_FORMAT: u32 = 1;

/// The first state format that carries the configuration as source text: releases that read
/// only older formats cannot take over from one that writes it.
pub const TEXT_STATE_FORMAT: u32 = 4;

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

/// Output kept from one child stream: an error message fits easily; a binary that floods its
/// output must not make the client buffer it all.
const MAX_CAPTURE: usize = 64 * 1024;

/// How long the output pipes may stay open after the child was reaped (a grandchild that
/// escaped its process group could hold them forever).
const PIPE_GRACE: Duration = Duration::from_secs(1);

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
            draining_state_format: Some(STATE_FORMAT_VERSION),
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

/// What one bounded run produced.
#[derive(Debug, Clone)]
pub struct ChildOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl ChildOutput {
    /// `exit status 2`, `killed by signal 9`.
    pub fn status_text(&self) -> String {
        describe_status(self.status)
    }

    /// The child's own words: stderr, else stdout, trimmed, on one line.
    pub fn said(&self) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        shown(text)
    }
}

fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}

/// Text on one line for a message, `(nothing)` if empty.
fn shown(text: &str) -> String {
    let line = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    if line.is_empty() {
        "(nothing)".to_owned()
    } else {
        line
    }
}

/// Run `binary args...` with stdin closed, capturing its output, for at most `timeout`. The
/// child gets its own process group, and on overrun the whole group is killed (a shell script
/// "binary" waits on its own children). `ZENTINEL_CONFIG` is removed from its environment: the
/// config checked must be the one on the command line, not whatever the caller's shell set.
pub fn run_bounded(binary: &Path, args: &[&str], timeout: Duration) -> Result<ChildOutput, String> {
    let shown_command = format!("{} {}", binary.display(), args.join(" "));
    let mut child = Command::new(binary)
        .args(args)
        .env_remove("ZENTINEL_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run `{shown_command}`: {e}"))?;
    let pid = child.id();
    let readers = [
        child.stdout.take().map(|s| capture(Box::new(s))),
        child.stderr.take().map(|s| capture(Box::new(s))),
    ];
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                kill_group(pid);
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "`{shown_command}` did not finish within {timeout:?} (killed)"
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                kill_group(pid);
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("cannot wait for `{shown_command}`: {e}"));
            }
        }
    };
    // Whatever the child left running in its group must not outlive the check.
    kill_group(pid);
    let [stdout, stderr] = readers.map(|reader| {
        reader
            .and_then(|rx| rx.recv_timeout(PIPE_GRACE).ok())
            .unwrap_or_default()
    });
    Ok(ChildOutput {
        status,
        stdout,
        stderr,
    })
}

fn kill_group(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        // ESRCH (the group is already gone) is the common, harmless case.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Read a child stream to its end on a thread, keeping the first [`MAX_CAPTURE`] bytes.
fn capture(mut stream: Box<dyn Read + Send>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = MAX_CAPTURE.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
            }
        }
        let _ = tx.send(String::from_utf8_lossy(&kept).into_owned());
    });
    rx
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

/// `BINARY --check [--config PATH]` (no path: the embedded default config), bounded by
/// `timeout`. Ok: the binary's own success line. For binaries or masters without
/// [`FEATURE_RUNNING_CONFIG`]; otherwise [`check_running_source`].
pub fn check_config(
    binary: &Path,
    config: Option<&Path>,
    timeout: Duration,
) -> Result<String, String> {
    let mut args = vec!["--check"];
    let config_text;
    if let Some(path) = config {
        config_text = path.display().to_string();
        args.push("--config");
        args.push(&config_text);
    }
    let out = run_bounded(binary, &args, timeout)?;
    if out.status.success() {
        Ok(shown(&out.stdout))
    } else {
        Err(format!(
            "{} rejects the running configuration {} ({}): {}",
            binary.display(),
            config.map_or_else(
                || "<embedded default>".to_owned(),
                |p| p.display().to_string()
            ),
            out.status_text(),
            out.said()
        ))
    }
}

/// `BINARY --check-source FILE` on the running master's source text (what the new master will
/// parse at take-over), bounded by `timeout`. Ok: the binary's own success line.
pub fn check_running_source(
    binary: &Path,
    source: &zentinel_protocol::config_source::ConfigSource,
    timeout: Duration,
) -> Result<String, String> {
    let file = std::env::temp_dir().join(format!(
        "zentinel-preflight-source-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let written = {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&file)
            .and_then(|mut f| f.write_all(&source.encode()))
    };
    if let Err(e) = written {
        let _ = std::fs::remove_file(&file);
        return Err(format!("cannot write {}: {e}", file.display()));
    }
    let file_arg = file.display().to_string();
    let out = run_bounded(binary, &["--check-source", &file_arg], timeout);
    let _ = std::fs::remove_file(&file);
    let out = out?;
    let name = source.main().map_or("", |main| main.path.as_str());
    if out.status.success() {
        Ok(shown(&out.stdout))
    } else {
        Err(format!(
            "{} rejects the running configuration {name} (the text the running master was \
             started or reloaded with) ({}): {}",
            binary.display(),
            out.status_text(),
            out.said()
        ))
    }
}

/// The new master reads the state file the running master writes: format
/// [`VersionInfo::writes_state_format`] for this upgrade (`canary`: `--canary` was asked for;
/// `draining`: how many retired workers the running master's status lists as draining). A
/// running master writes the oldest format that holds its state, so an upgrade to the previous
/// release (a rollback) passes where one needing a newer format (drain deadlines to carry, or
/// a canary for masters from before format 5) is refused, saying what to do instead.
///
/// A worker retired between this check and the upgrade request makes the running master write
/// the newer format after all: a new binary that cannot read it refuses the state file at
/// take-over, and the running master keeps serving.
///
/// A new binary that predates `--version --json` (a downgrade, or a rollback to an older
/// build) cannot say what it reads; it is let through, because its master refuses a state file
/// of a format it does not know at take-over (`read_state_file`: "future version") before
/// confirming readiness, and the running master then keeps serving. Refusing it here would
/// block every rollback to a build older than this check.
pub fn check_state_format(
    running: &VersionInfo,
    new: &VersionInfo,
    canary: bool,
    draining: usize,
) -> Result<(), String> {
    let needed = running.writes_state_format(canary, draining > 0);
    if new.legacy || new.reads_state_format(needed) {
        return Ok(());
    }
    let calm = running.writes_state_format(canary, false);
    if draining > 0 && new.reads_state_format(calm) {
        return Err(format!(
            "the new binary (zentinel {}) reads upgrade state formats {}, but the running master \
             (zentinel {}) has {draining} retired worker(s) draining and writes format {needed} \
             while they do (it carries their drain deadlines): it could not take over; wait \
             until they have exited (`zentinel-ctl status` lists them as draining), then retry \
             (the master then writes format {calm})",
            new.version,
            new.readable_formats_text(),
            running.version,
        ));
    }
    let plain = running.writes_state_format(false, draining > 0);
    if canary && new.reads_state_format(plain) {
        return Err(format!(
            "the new binary (zentinel {}) reads upgrade state formats {}, but the running master \
             (zentinel {}) writes format {needed} for an upgrade with --canary: it could not take \
             over; upgrade to it without --canary (the master then writes format {plain})",
            new.version,
            new.readable_formats_text(),
            running.version,
        ));
    }
    let advice = if needed >= TEXT_STATE_FORMAT && !new.reads_state_format(TEXT_STATE_FORMAT) {
        "; a release from before format 4 (the configuration handed over as text) cannot take \
         over from this one by an upgrade: to go back to it, restart the service on it \
         (replace the binary, then `systemctl restart zentinel`), which closes open connections"
    } else {
        ""
    };
    Err(format!(
        "the new binary (zentinel {}) reads upgrade state formats {}, but the running master \
         (zentinel {}) writes format {needed}{}: it could not take over{advice}",
        new.version,
        new.readable_formats_text(),
        running.version,
        if canary {
            " for an upgrade with --canary"
        } else {
            ""
        },
    ))
}

/// The new master configures the running workers it adopts, so it must speak at least their
/// protocol (a newer one keeps the layouts adopted workers receive; see
/// `zentinel_protocol::messages::PROTOCOL_VERSION`).
///
/// Not checked for a new binary that predates `--version --json` (see [`check_state_format`]).
pub fn check_protocol(running: &VersionInfo, new: &VersionInfo) -> Result<(), String> {
    if new.legacy || new.protocol_version >= running.protocol_version {
        Ok(())
    } else {
        Err(format!(
            "the new binary (zentinel {}) speaks master-worker protocol {}, older than the \
             running workers' {} (zentinel {}): it could not drive them",
            new.version, new.protocol_version, running.protocol_version, running.version
        ))
    }
}

/// Both masters of the upgrade support `feature` (an option of the upgrade request).
pub fn check_feature(
    running: &VersionInfo,
    new: &VersionInfo,
    feature: &str,
) -> Result<(), String> {
    let has = |info: &VersionInfo| info.features.iter().any(|f| f == feature);
    if !has(running) {
        return Err(format!(
            "the running master (zentinel {}) predates --{feature}: upgrade without it first, \
             then use --{feature} from that build on",
            running.version
        ));
    }
    if !has(new) {
        return Err(format!(
            "the new binary (zentinel {}) cannot run a {feature} (it predates --{feature})",
            new.version
        ));
    }
    Ok(())
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

    #[test]
    fn compatibility_rules() {
        let current = VersionInfo::current();
        let legacy = VersionInfo::legacy("0.0.9");
        // Any current binary takes over from a legacy master...
        assert!(check_state_format(&legacy, &current, false, 0).is_ok());
        assert!(check_protocol(&legacy, &current).is_ok());
        // ...and a legacy binary cannot say what it reads: its own take-over check decides.
        assert!(check_state_format(&current, &legacy, false, 0).is_ok());
        assert!(check_state_format(&current, &legacy, true, 3).is_ok());
        assert!(check_protocol(&current, &legacy).is_ok());
        // A binary that says it cannot read the running format, or speaks an older protocol.
        let mut older = current.clone();
        older.readable_state_formats = vec![1];
        older.version = "0.0.8".into();
        let mut running = current.clone();
        running.state_format_version = 2;
        running.plain_upgrade_state_format = None;
        running.draining_state_format = None;
        let err = check_state_format(&running, &older, false, 0).unwrap_err();
        assert!(err.contains("reads upgrade state formats 1,"), "{err}");
        assert!(err.contains("writes format 2"), "{err}");
        running.protocol_version = 2;
        older.protocol_version = 1;
        assert!(check_protocol(&running, &older).is_err());
        let mut gaps = current.clone();
        gaps.readable_state_formats = vec![1, 3];
        assert_eq!(gaps.readable_formats_text(), "1, 3");
        gaps.readable_state_formats = vec![1, 2, 3];
        assert_eq!(gaps.readable_formats_text(), "1..=3");
    }

    /// A rollback to the release before format 4 (the configuration as text): it reads formats
    /// 1 to 3 only, so the pre-flight refuses, saying what the operator does instead.
    #[test]
    fn release_before_the_text_state_cannot_take_over() {
        let current = VersionInfo::current();
        let previous = VersionInfo {
            version: "0.0.9".into(),
            state_format_version: 3,
            plain_upgrade_state_format: Some(2),
            draining_state_format: None,
            readable_state_formats: vec![1, 2, 3],
            features: vec![FEATURE_CANARY.to_owned()],
            ..current.clone()
        };
        for canary in [false, true] {
            let err = check_state_format(&current, &previous, canary, 0).unwrap_err();
            assert!(
                err.contains("zentinel 0.0.9")
                    && err.contains("reads upgrade state formats 1..=3")
                    && err.contains("writes format 4")
                    && err.contains("restart"),
                "{err}"
            );
        }
        // This build takes over from the previous release (plain or canary), and from itself.
        assert_eq!(check_state_format(&previous, &current, false, 0), Ok(()));
        assert_eq!(check_state_format(&previous, &current, true, 0), Ok(()));
        assert_eq!(check_state_format(&current, &current, true, 2), Ok(()));
    }

    /// This build writes format 4 (the previous release's) unless retired workers drain: then
    /// format 5 carries their deadlines, and a rollback to the release that reads up to 4
    /// waits for them, whatever the canary.
    #[test]
    fn the_format_4_release_takes_over_unless_workers_drain() {
        let current = VersionInfo::current();
        assert_eq!(current.state_format_version, 5);
        assert_eq!(current.writes_state_format(false, false), 4);
        assert_eq!(current.writes_state_format(true, false), 4);
        assert_eq!(current.writes_state_format(false, true), 5);
        assert_eq!(current.writes_state_format(true, true), 5);
        assert_eq!(
            current.written_formats_text(),
            "format 4 (5 while retired workers drain)"
        );
        // What the format 4 release prints: no `draining_state_format`.
        let json = r#"{"name":"zentinel","version":"0.1.0","protocol_version":3,"state_format_version":4,"plain_upgrade_state_format":4,"readable_state_formats":[1,2,3,4],"control_protocol_version":2,"features":["canary","running-config"]}"#;
        let previous = parse_version_output(json).unwrap();
        assert_eq!(previous.draining_state_format, None);
        assert_eq!(previous.writes_state_format(true, true), 4);
        assert_eq!(previous.written_formats_text(), "format 4");
        for canary in [false, true] {
            assert_eq!(check_state_format(&current, &previous, canary, 0), Ok(()));
            let err = check_state_format(&current, &previous, canary, 2).unwrap_err();
            assert!(
                err.contains("reads upgrade state formats 1..=4")
                    && err.contains("2 retired worker(s) draining")
                    && err.contains("writes format 5")
                    && err.contains("wait until they have exited")
                    && err.contains("then writes format 4"),
                "{err}"
            );
            // The other way round: this build reads everything the release writes.
            assert_eq!(check_state_format(&previous, &current, canary, 2), Ok(()));
        }
    }

    /// The JSON of a build that always wrote its latest format has no
    /// `plain_upgrade_state_format` (nor `draining_state_format`): it still parses, and that
    /// format is needed either way.
    #[test]
    fn version_json_without_plain_format_still_parses() {
        let current = VersionInfo::current();
        let mut json: serde_json::Value = serde_json::from_str(&current.to_json()).unwrap();
        assert_eq!(json["plain_upgrade_state_format"], 4);
        assert_eq!(json["draining_state_format"], 5);
        let object = json.as_object_mut().unwrap();
        object.remove("plain_upgrade_state_format");
        object.remove("draining_state_format");
        object.insert("state_format_version".into(), 4.into());
        let before = parse_version_output(&json.to_string()).unwrap();
        assert_eq!(before.plain_upgrade_state_format, None);
        assert_eq!(before.draining_state_format, None);
        for (canary, draining) in [(false, false), (true, false), (true, true)] {
            assert_eq!(before.writes_state_format(canary, draining), 4);
        }
        let mut reads_three = current.clone();
        reads_three.readable_state_formats = vec![1, 2, 3];
        assert!(check_state_format(&before, &reads_three, false, 0).is_err());
    }

    #[test]
    fn canary_needs_both_masters_to_support_it() {
        let current = VersionInfo::current();
        assert!(check_feature(&current, &current, FEATURE_CANARY).is_ok());
        // The JSON of a build from before the field existed has no `features`.
        let mut json: serde_json::Value = serde_json::from_str(&current.to_json()).unwrap();
        json.as_object_mut().unwrap().remove("features");
        let before = parse_version_output(&json.to_string()).unwrap();
        assert!(before.features.is_empty());
        let err = check_feature(&before, &current, FEATURE_CANARY).unwrap_err();
        assert!(
            err.contains("running master") && err.contains("predates --canary"),
            "{err}"
        );
        let err = check_feature(&current, &before, FEATURE_CANARY).unwrap_err();
        assert!(err.contains("new binary"), "{err}");
        let legacy = VersionInfo::legacy("0.0.9");
        assert!(check_feature(&current, &legacy, FEATURE_CANARY).is_err());
    }

    #[test]
    fn bounded_run_kills_on_overrun_and_captures_output() {
        let sh = Path::new("/bin/sh");
        let started = Instant::now();
        let err = run_bounded(sh, &["-c", "sleep 30"], Duration::from_millis(300)).unwrap_err();
        assert!(err.contains("did not finish"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let out = run_bounded(
            sh,
            &["-c", "echo out; echo err >&2; exit 3"],
            DEFAULT_CHILD_TIMEOUT,
        )
        .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.said(), "err");
        assert!(run_bounded(
            Path::new("/nonexistent/zentinel"),
            &[],
            DEFAULT_CHILD_TIMEOUT
        )
        .is_err());
    }
}
