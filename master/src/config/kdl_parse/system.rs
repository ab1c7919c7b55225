//! The `system` section (and its deprecated upstream spelling `server`), and the top-level
//! `schema-version`.
//!
//! Spelled as upstream Zentinel spells them: `worker-threads` is the worker count (worker
//! *processes* here; 0 = one per CPU), with this project's earlier `worker-processes` kept as an
//! alias. Upstream silently ignores `workers` and `daemon`; here they are accepted and each gets
//! a warning saying what it does (nothing), so a file written for upstream runs unchanged and
//! its operator learns why nothing changed.

use kdl::{KdlNode, KdlValue};
use zentinel_protocol::config::{SystemConfig, TraceIdFormat};

use super::{
    keyed_block, leaf_bool, leaf_int, leaf_string, leaf_u32, name, name_at, single_arg, unknown,
    Diagnostics, MAX_SECS,
};

const SYSTEM_KEYS: &[&str] = &[
    "worker-threads",
    "worker-processes",
    "workers",
    "max-connections",
    "graceful-shutdown-timeout-secs",
    "upgrade-drain-timeout-secs",
    "close-spread-time-secs",
    "max-draining-generations",
    "control-socket",
    "pid-file",
    "daemon",
    "route-cache-size",
    "trace-id-format",
    "user",
    "group",
];
const SYSTEM_UNSUPPORTED: &[&str] = &["working-directory", "auto-reload"];

/// The schema version upstream Zentinel reads (and the newest it knows).
const SCHEMA_VERSION: (u32, u32) = (1, 0);

pub(super) fn parse_system(node: &KdlNode, system: &mut SystemConfig, diags: &mut Diagnostics<'_>) {
    if name(node) == "server" {
        diags.warn(
            name_at(node),
            "server",
            "`server` is the deprecated spelling of `system` (as in upstream Zentinel); it is \
             read the same",
        );
    }
    let mut worker_count_at: Option<(&str, usize)> = None;
    let mut close_spread_at = None;
    for child in keyed_block(node, SYSTEM_KEYS, diags) {
        match name(child) {
            key @ ("worker-threads" | "worker-processes") => {
                if let Some((first, _)) = worker_count_at {
                    // The same key twice is already reported as a duplicate.
                    if first == key {
                        continue;
                    }
                    diags.error(
                        name_at(child),
                        key,
                        format!(
                            "the worker count is already set by `{first}` (`worker-threads` \
                             and `worker-processes` are the same setting)"
                        ),
                    );
                    continue;
                }
                worker_count_at = Some((key, name_at(child)));
                if let Some(v) = leaf_u32(child, 0, 4096, diags) {
                    system.worker_processes = v;
                }
            }
            "workers" => {
                if leaf_u32(child, 0, 4096, diags).is_some() {
                    diags.warn(
                        name_at(child),
                        "workers",
                        "`workers` has no effect (upstream Zentinel ignores it too): the worker \
                         count is `worker-threads`",
                    );
                }
            }
            "max-connections" => {
                if let Some(v) = leaf_u32(child, 1, 10_000_000, diags) {
                    system.max_connections = v;
                }
            }
            "graceful-shutdown-timeout-secs" => {
                if let Some(v) = leaf_int(child, 0, MAX_SECS, diags) {
                    system.graceful_shutdown_timeout_secs = v;
                }
            }
            "upgrade-drain-timeout-secs" => {
                if let Some(v) = leaf_int(child, 0, MAX_SECS, diags) {
                    system.upgrade_drain_timeout_secs = Some(v);
                }
            }
            "close-spread-time-secs" => {
                if let Some(v) = leaf_int(child, 0, MAX_SECS, diags) {
                    close_spread_at = Some(name_at(child));
                    system.close_spread_time_ms = Some(v.saturating_mul(1000));
                }
            }
            "max-draining-generations" => {
                if let Some(v) = leaf_u32(child, 0, 1000, diags) {
                    system.max_draining_generations = v;
                }
            }
            key @ ("control-socket" | "pid-file") => {
                if let Some((path, at)) = leaf_string(child, diags) {
                    if path.is_empty() {
                        diags.error(at, key, "path must not be empty");
                    } else if key == "control-socket" {
                        system.control_socket = Some(path);
                    } else {
                        system.pid_file = Some(path);
                    }
                }
            }
            "user" => {
                if let Some((user, at)) = leaf_string(child, diags) {
                    match nix::unistd::User::from_name(&user) {
                        Ok(Some(_)) => system.user = Some(user),
                        Ok(None) => {
                            diags.error(at, "user", format!("no user {user:?} on this system"))
                        }
                        Err(e) => {
                            diags.error(at, "user", format!("cannot look up user {user:?}: {e}"))
                        }
                    }
                }
            }
            "group" => {
                if let Some((group, at)) = leaf_string(child, diags) {
                    match nix::unistd::Group::from_name(&group) {
                        Ok(Some(_)) => system.group = Some(group),
                        Ok(None) => {
                            diags.error(at, "group", format!("no group {group:?} on this system"))
                        }
                        Err(e) => {
                            diags.error(at, "group", format!("cannot look up group {group:?}: {e}"))
                        }
                    }
                }
            }
            "daemon" => {
                if leaf_bool(child, diags) == Some(true) {
                    diags.warn(
                        name_at(child),
                        "daemon",
                        "`daemon #true`: zentinel stays in the foreground; run it under a \
                         supervisor (systemd: scripts/zentinel.service), which also gives \
                         upgrades their MAINPID hand-over",
                    );
                }
            }
            "route-cache-size" => {
                // Upstream's route-match cache; routes are matched without one here.
                let _ = leaf_u32(child, 1, u32::MAX, diags);
            }
            "trace-id-format" => {
                if let Some((format, at)) = leaf_string(child, diags) {
                    let lower = format.to_ascii_lowercase();
                    if lower == "tinyflake" {
                        system.trace_id_format = TraceIdFormat::TinyFlake;
                    } else if ["uuid", "uuid4", "uuidv4"].contains(&lower.as_str()) {
                        system.trace_id_format = TraceIdFormat::Uuid;
                    } else {
                        diags.error(
                            at,
                            "trace-id-format",
                            format!(
                                "unknown trace id format {format:?}: expected \"tinyflake\" or \
                                 \"uuid\""
                            ),
                        );
                    }
                }
            }
            _ => unknown(child, "system", SYSTEM_KEYS, SYSTEM_UNSUPPORTED, diags),
        }
    }
    if let (Some(at), Some(spread)) = (close_spread_at, system.close_spread()) {
        let shortest = system.stop_drain().min(system.upgrade_drain());
        if spread > shortest {
            diags.warn(
                at,
                "close-spread-time-secs",
                format!(
                    "longer than the shortest drain window ({} s): a drain that short spreads \
                     its closes over the whole of it",
                    shortest.as_secs()
                ),
            );
        }
    }
}

/// `schema-version "1.0"` (also spelled `version`): a `major.minor` string. Older than 1.0 or
/// malformed is an error (upstream silently ignores a version that is not a string; here it is
/// an error too); newer than 1.0 loads with a warning, as upstream does.
pub(super) fn parse_schema_version(node: &KdlNode, diags: &mut Diagnostics<'_>) {
    let Some(entry) = single_arg(node, diags) else {
        return;
    };
    let at = entry.span().offset();
    let text = match entry.value() {
        KdlValue::String(s) => s.trim().to_owned(),
        _ => {
            diags.error(
                at,
                name(node),
                "expected a string such as \"1.0\" (major.minor)",
            );
            return;
        }
    };
    let parsed = text
        .split_once('.')
        .and_then(|(major, minor)| Some((major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?)));
    match parsed {
        None => diags.error(
            at,
            name(node),
            format!("invalid schema version {text:?}: expected major.minor, such as \"1.0\""),
        ),
        Some(version) if version < SCHEMA_VERSION => diags.error(
            at,
            name(node),
            format!("schema version {text} is older than the oldest supported, 1.0"),
        ),
        Some(version) if version > SCHEMA_VERSION => diags.warn(
            at,
            name(node),
            format!("schema version {text} is newer than the supported 1.0; some settings may not be understood"),
        ),
        Some(_) => {}
    }
}
