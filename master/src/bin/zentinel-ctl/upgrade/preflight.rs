//! The upgrade pre-flight: checks of the new binary against the running master before the
//! request is sent, each printed as one line.

use std::path::PathBuf;
use std::time::Duration;

use zentinel_master::config::DEFAULT_CONFIG_NAME;
use zentinel_master::preflight::{self, VersionInfo};
use zentinel_protocol::config_source::ConfigSource;
use zentinel_protocol::control::{MasterStatus, StatusReport, WorkerState};

use crate::cli::UpgradeArgs;
use crate::{print_line, CtlResult};

/// What the pre-flight learned, for the dry run's plan.
pub(super) struct Preflight {
    pub(super) binary: PathBuf,
    pub(super) new: VersionInfo,
    pub(super) running: VersionInfo,
    /// Where the running master's versions came from (`/proc/PID/exe` or its binary path).
    pub(super) running_source: String,
    pub(super) config: Option<PathBuf>,
}

/// Retired workers the status lists as draining: while there are any, the master hands their
/// drain deadlines over in a newer state format.
pub(super) fn draining_workers(report: &StatusReport) -> usize {
    report
        .workers
        .iter()
        .filter(|w| w.state == WorkerState::Draining)
        .count()
}

/// One pre-flight line: text, or with `--json` one object.
fn preflight_line(json: bool, step: &str, ok: bool, message: &str) {
    let line = if json {
        serde_json::json!({"event": "preflight", "step": step, "ok": ok, "message": message})
            .to_string()
    } else if ok {
        format!("pre-flight: {message}")
    } else {
        format!("pre-flight: FAILED: {message}")
    };
    print_line(&line);
}

/// Checks of the new binary before the upgrade request is sent: it is executable, it reads
/// the state format the running master writes for this upgrade (format 4 unless retired
/// workers drain: a rollback to the release before format 5 passes once they have exited) and
/// speaks at least its worker protocol, and
/// it accepts the running configuration. Each step prints one line; the first failure is the
/// command's error, and nothing was changed.
pub(super) fn run(
    report: &StatusReport,
    binary: Option<&str>,
    args: &UpgradeArgs,
    fetch_source: &dyn Fn() -> CtlResult<ConfigSource>,
) -> CtlResult<Preflight> {
    let timeout = args.preflight_timeout;
    let json = args.json;
    let fail = |step: &str, reason: String| {
        preflight_line(json, step, false, &reason);
        let hint = if args.dry_run {
            ""
        } else {
            " (--no-preflight skips these checks)"
        };
        format!("pre-flight failed, nothing was changed{hint}: {reason}")
    };
    let master = &report.master;
    let binary = PathBuf::from(binary.unwrap_or(&master.binary));

    zentinel_master::upgrade::check_binary(&binary).map_err(|e| fail("binary", e))?;
    preflight_line(
        json,
        "binary",
        true,
        &format!("binary {} is executable", binary.display()),
    );

    let new = preflight::query_version(&binary, timeout).map_err(|e| {
        fail(
            "versions",
            format!("cannot learn the new binary's versions: {e}"),
        )
    })?;
    let (running, running_source) =
        running_master_versions(master, timeout).map_err(|e| fail("versions", e))?;
    let canary = args.canary.is_some();
    preflight::check_state_format(&running, &new, canary, draining_workers(report))
        .map_err(|e| fail("versions", e))?;
    preflight::check_protocol(&running, &new).map_err(|e| fail("versions", e))?;
    if canary {
        preflight::check_feature(&running, &new, preflight::FEATURE_CANARY)
            .map_err(|e| fail("versions", e))?;
    }
    preflight_line(
        json,
        "versions",
        true,
        &format!(
            "{} is zentinel {} ({}); running master pid {} (zentinel {}) writes state {}{}",
            binary.display(),
            new.version,
            if new.legacy {
                "predates --version --json, so its state formats are unknown: its master refuses \
                 an unreadable state file at take-over and the running one keeps serving"
                    .to_owned()
            } else {
                format!(
                    "protocol {}, reads state formats {}",
                    new.protocol_version,
                    new.readable_formats_text()
                )
            },
            master.pid,
            running.version,
            running.written_formats_text(),
            if running.legacy {
                " (assumed: its binary predates --version --json)"
            } else {
                ""
            },
        ),
    );

    let config = running_config_path(master);
    let has_running_config = |info: &VersionInfo| {
        info.features
            .iter()
            .any(|f| f == preflight::FEATURE_RUNNING_CONFIG)
    };
    let checked = if has_running_config(&running) && has_running_config(&new) {
        // The text the new master will be handed, not whatever the file on disk says now.
        let source = fetch_source().map_err(|e| {
            fail(
                "config",
                format!("cannot get the running configuration from the master: {e}"),
            )
        })?;
        let said = preflight::check_running_source(&binary, &source, timeout)
            .map_err(|e| fail("config", e))?;
        format!("the running configuration's text, as the master runs it ({said})")
    } else {
        let said = preflight::check_config(&binary, config.as_deref(), timeout)
            .map_err(|e| fail("config", e))?;
        let who = if has_running_config(&running) {
            "the new binary cannot check a running text"
        } else {
            "the running master cannot hand out its running text"
        };
        format!("the configuration file on disk, since {who} ({said})")
    };
    preflight_line(
        json,
        "config",
        true,
        &format!("{} accepts {checked}", binary.display()),
    );
    Ok(Preflight {
        binary,
        new,
        running,
        running_source,
        config,
    })
}

/// The running master's versions, from its own executable: `/proc/PID/exe` still runs the
/// binary it started from even when the file at its path was replaced (typically by the new
/// one), so it comes first; the path is the fallback when /proc is not readable to us. An
/// answer whose version differs from the master's status is from another binary (a replaced
/// file, or a pid from another pid namespace) and is not trusted.
fn running_master_versions(
    master: &MasterStatus,
    timeout: Duration,
) -> CtlResult<(VersionInfo, String)> {
    let candidates = [
        PathBuf::from(format!("/proc/{}/exe", master.pid)),
        PathBuf::from(&master.binary),
    ];
    let mut tried = Vec::new();
    for candidate in candidates {
        match preflight::query_version(&candidate, timeout) {
            Ok(info) if info.version == master.version => {
                return Ok((info, candidate.display().to_string()))
            }
            Ok(info) => tried.push(format!(
                "{} is zentinel {}, not the running {}",
                candidate.display(),
                info.version,
                master.version
            )),
            Err(e) => tried.push(e),
        }
    }
    Err(format!(
        "cannot learn which upgrade state format the running master (pid {}, zentinel {}) \
         writes: {}",
        master.pid,
        master.version,
        tried.join("; ")
    ))
}

/// The file the master runs with (`None`: the embedded default). A relative name is relative
/// to the master's working directory, not ours.
fn running_config_path(master: &MasterStatus) -> Option<PathBuf> {
    if master.config == DEFAULT_CONFIG_NAME {
        return None;
    }
    let path = PathBuf::from(&master.config);
    if path.is_absolute() {
        return Some(path);
    }
    Some(
        std::fs::read_link(format!("/proc/{}/cwd", master.pid))
            .map_or(path.clone(), |cwd| cwd.join(&path)),
    )
}
