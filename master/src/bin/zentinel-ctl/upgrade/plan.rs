//! `upgrade --dry-run`: what the upgrade would do, once the pre-flight passed.

use std::fmt::Write as _;

use zentinel_master::config::DEFAULT_CONFIG_NAME;
use zentinel_master::upgrade::format_duration;
use zentinel_protocol::control::{CanaryPolicy, StatusReport, WorkerState, WorkerStatus};

use super::preflight::{draining_workers, Preflight};
use crate::cli::{drain_of_config, DrainWindow, UpgradeArgs};
use crate::{millis, write_stdout, CtlResult, DEFAULT_READY};

/// `--dry-run`: what the upgrade would do, after a successful pre-flight.
pub(super) fn print(report: &StatusReport, pre: &Preflight, args: &UpgradeArgs) -> CtlResult<()> {
    let master = &report.master;
    let workers: Vec<&WorkerStatus> = report
        .workers
        .iter()
        .filter(|w| w.state == WorkerState::Running && w.generation == master.generation)
        .collect();
    // The master's drain default is the running config's upgrade window.
    let drain = args
        .drain_timeout
        .unwrap_or_else(|| drain_of_config(pre.config.as_deref(), DrainWindow::Upgrade));
    let ready = args.ready_timeout.unwrap_or(DEFAULT_READY);
    let pids: Vec<u32> = workers.iter().map(|w| w.pid).collect();
    let canary = args.canary.map(|window| {
        let basis_points = args
            .max_error_rate
            .unwrap_or(CanaryPolicy::DEFAULT_MAX_EXCESS_BASIS_POINTS);
        (window, f64::from(basis_points) / 100.0)
    });
    let config = pre.config.as_ref().map_or_else(
        || DEFAULT_CONFIG_NAME.to_owned(),
        |p| p.display().to_string(),
    );
    if args.json {
        let plan = serde_json::json!({
            "event": "dry_run",
            "proceed": true,
            "master": {
                "pid": master.pid, "version": master.version, "binary": master.binary,
                "generation": master.generation, "config": config,
                // The format this upgrade's state file will have (from format 5 on: 4 unless
                // retired workers drain; before: 2 unless --canary).
                "state_format_version": pre.running.writes_state_format(
                    args.canary.is_some(),
                    draining_workers(report) > 0,
                ),
                "protocol_version": pre.running.protocol_version,
                "versions_from": pre.running_source,
            },
            "new": {
                "binary": pre.binary.display().to_string(), "version": pre.new.version,
                "protocol_version": pre.new.protocol_version,
                "readable_state_formats": pre.new.readable_state_formats,
                "generation": master.generation + 1,
            },
            "rolling": args.rolling,
            "workers_to_replace": if args.rolling { pids.clone() } else { Vec::new() },
            "drain_timeout_ms": millis(drain),
            "ready_timeout_ms": millis(ready),
            "canary": canary.map(|(window, points)| serde_json::json!({
                "duration_ms": millis(window),
                "max_error_rate_points": points,
            })),
        });
        return write_stdout(&format!("{plan}\n"));
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "dry run: the upgrade would proceed; nothing was changed"
    );
    let _ = writeln!(
        out,
        "  master   pid {} (zentinel {}, generation {}, binary {}) hands over to a new master",
        master.pid, master.version, master.generation, master.binary
    );
    let _ = writeln!(
        out,
        "  new      {} (zentinel {}, protocol {}, generation {}), ready within {}",
        pre.binary.display(),
        pre.new.version,
        if pre.new.legacy {
            "unknown".to_owned()
        } else {
            pre.new.protocol_version.to_string()
        },
        master.generation + 1,
        format_duration(ready)
    );
    let list = pids
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if args.rolling {
        let _ = writeln!(
            out,
            "  workers  {} replaced one at a time (pids {}), each old one draining up to {}",
            workers.len(),
            if list.is_empty() { "none" } else { &list },
            format_duration(drain)
        );
    } else {
        let _ = writeln!(
            out,
            "  workers  {} keep running the old binary under the new master (pids {}); add \
             --rolling to replace them",
            workers.len(),
            if list.is_empty() { "none" } else { &list }
        );
    }
    if let Some((window, points)) = canary {
        let _ = writeln!(
            out,
            "  canary   the first new worker serves alone on the new binary for {}; rolled back \
             if its error rate exceeds the old workers' by more than {points:.2} points",
            format_duration(window)
        );
    }
    let _ = writeln!(out, "  config   {config}");
    write_stdout(&out)
}
