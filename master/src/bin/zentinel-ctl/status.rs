//! `zentinel-ctl status`: the table, the JSON object (its keys are a contract), and
//! `--watch`.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;
use zentinel_protocol::control::{
    DrainStatusReport, MasterStatus, StatusReport, WorkerState, WorkerStatus,
};
use zentinel_protocol::messages::WorkerCounters;

use crate::cli::StatusArgs;
use crate::client::Connection;
use crate::{write_stdout, CtlResult};

/// `status`: once, or with `--watch` until interrupted.
pub(crate) fn run(socket: &Path, timeout: Duration, args: &StatusArgs) -> CtlResult<()> {
    match args.watch {
        None => {
            let mut conn = Connection::open(socket, timeout)?;
            let report = conn.status(timeout)?;
            // After the status, whose fresh counters the master keeps: the connection counts
            // of the drain status are those. A master that predates it refuses it (and closes
            // the connection): the status is shown without it.
            let drain = conn.drain_status(timeout).ok();
            print_report(&report, drain.as_ref(), args.json)
        }
        Some(interval) => watch(socket, timeout, interval, args.json),
    }
}

#[derive(Serialize)]
struct JsonReport<'a> {
    master: JsonMaster<'a>,
    workers: Vec<JsonWorker<'a>>,
    /// Absent when the master does not answer `DrainStatus` (it predates it).
    #[serde(skip_serializing_if = "Option::is_none")]
    draining: Option<Vec<JsonDraining>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_draining_generations: Option<u32>,
}

#[derive(Serialize)]
struct JsonDraining {
    pid: u32,
    id: u32,
    generation: u64,
    connections: u64,
    /// `null` when the master knows no deadline for it.
    drain_remaining_ms: Option<u64>,
    finishing: bool,
}

#[derive(Serialize)]
struct JsonMaster<'a> {
    pid: u32,
    version: &'a str,
    generation: u64,
    binary: &'a str,
    uptime_s: u64,
    config: &'a str,
}

#[derive(Serialize)]
struct JsonWorker<'a> {
    id: u32,
    pid: u32,
    generation: u64,
    version: &'a str,
    binary: &'a str,
    state: &'static str,
    uptime_s: u64,
    active_connections: u64,
    accepted_total: u64,
    requests_total: u64,
    errors_total: u64,
    responses_1xx: u64,
    responses_2xx: u64,
    responses_3xx: u64,
    responses_4xx: u64,
    responses_5xx: u64,
    upstream_errors: u64,
    client_errors: u64,
    accept_errors: u64,
    bytes_in: u64,
    bytes_out: u64,
    /// The counters are from the worker's last periodic report.
    stale: bool,
    restarts: u32,
    next_restart_delay_ms: u64,
    last_exit: &'a str,
}

/// 5xx responses (from upstreams or generated) plus every error the proxy itself counted. An
/// upstream failure answered with a 502 counts twice: this sums error events, not requests.
fn errors_total(c: &WorkerCounters) -> u64 {
    c.responses_5xx
        .saturating_add(c.upstream_errors)
        .saturating_add(c.client_errors)
        .saturating_add(c.accept_errors)
}

fn json_report<'a>(report: &'a StatusReport, drain: Option<&DrainStatusReport>) -> JsonReport<'a> {
    let MasterStatus {
        pid,
        version,
        generation,
        binary,
        uptime_s,
        config,
    } = &report.master;
    JsonReport {
        master: JsonMaster {
            pid: *pid,
            version,
            generation: *generation,
            binary,
            uptime_s: *uptime_s,
            config,
        },
        workers: report.workers.iter().map(json_worker).collect(),
        draining: drain.map(|d| {
            d.workers
                .iter()
                .map(|w| JsonDraining {
                    pid: w.pid,
                    id: w.id,
                    generation: w.generation,
                    connections: w.connections,
                    drain_remaining_ms: w.drain_remaining_ms,
                    finishing: w.finishing,
                })
                .collect()
        }),
        max_draining_generations: drain.map(|d| d.max_draining_generations),
    }
}

fn json_worker(w: &WorkerStatus) -> JsonWorker<'_> {
    let c = &w.counters;
    JsonWorker {
        id: w.id,
        pid: w.pid,
        generation: w.generation,
        version: &w.version,
        binary: &w.binary,
        state: w.state.as_str(),
        uptime_s: w.uptime_s,
        active_connections: c.active_connections,
        accepted_total: c.accepted_total,
        requests_total: c.requests_total,
        errors_total: errors_total(c),
        responses_1xx: c.responses_1xx,
        responses_2xx: c.responses_2xx,
        responses_3xx: c.responses_3xx,
        responses_4xx: c.responses_4xx,
        responses_5xx: c.responses_5xx,
        upstream_errors: c.upstream_errors,
        client_errors: c.client_errors,
        accept_errors: c.accept_errors,
        bytes_in: c.bytes_in,
        bytes_out: c.bytes_out,
        stale: w.stale,
        restarts: w.restarts,
        next_restart_delay_ms: w.next_restart_delay_ms,
        last_exit: &w.last_exit,
    }
}

fn render_json(report: &StatusReport, drain: Option<&DrainStatusReport>) -> CtlResult<String> {
    serde_json::to_string(&json_report(report, drain))
        .map_err(|e| format!("cannot encode JSON: {e}"))
}

/// `12.3s`, `4m05s`: a remaining drain time.
fn format_remaining(ms: u64) -> String {
    if ms < 60_000 {
        format!("{}.{}s", ms / 1000, ms % 1000 / 100)
    } else {
        format_uptime(ms / 1000)
    }
}

/// One line per draining worker: what keeps it, and for how long at most.
fn render_draining(drain: &DrainStatusReport) -> String {
    let mut out = String::new();
    if drain.workers.is_empty() {
        return out;
    }
    let generations: std::collections::BTreeSet<u64> =
        drain.workers.iter().map(|w| w.generation).collect();
    let _ = writeln!(
        out,
        "draining: {} worker(s) of {} generation(s) (max-draining-generations {})",
        drain.workers.len(),
        generations.len(),
        drain.max_draining_generations
    );
    for w in &drain.workers {
        let left = w.drain_remaining_ms.map_or_else(
            || "no deadline known".to_owned(),
            |ms| format!("{} left", format_remaining(ms)),
        );
        let finishing = if w.finishing {
            ", finishing now (idle connections closed)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  pid {} (worker {}, generation {}): {} connection(s), {left}{finishing}",
            w.pid, w.id, w.generation, w.connections
        );
    }
    out
}

/// `45s`, `12m03s`, `5h02m`, `3d04h`.
fn format_uptime(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

fn render_table(report: &StatusReport) -> String {
    let m = &report.master;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "master   pid {}  version {}  generation {}  uptime {}",
        m.pid,
        m.version,
        m.generation,
        format_uptime(m.uptime_s)
    );
    let _ = writeln!(out, "config   {}", m.config);
    let _ = writeln!(out, "binary   {}", m.binary);
    let _ = writeln!(out);

    let header = [
        "ID", "PID", "GEN", "VERSION", "STATE", "UPTIME", "ACTIVE", "ACCEPTED", "REQUESTS",
        "ERRORS", "RESTARTS",
    ];
    let rows: Vec<[String; 11]> = report
        .workers
        .iter()
        .map(|w| {
            let c = &w.counters;
            let state = if w.stale {
                format!("{}*", w.state.as_str())
            } else {
                w.state.as_str().to_owned()
            };
            [
                w.id.to_string(),
                w.pid.to_string(),
                w.generation.to_string(),
                w.version.clone(),
                state,
                format_uptime(w.uptime_s),
                c.active_connections.to_string(),
                c.accepted_total.to_string(),
                c.requests_total.to_string(),
                errors_total(c).to_string(),
                w.restarts.to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    // Text columns left-aligned, numbers right-aligned.
    let numeric = [
        false, true, true, false, false, true, true, true, true, true, true,
    ];
    let mut line = |cells: &[&str]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            if numeric[i] {
                let _ = write!(text, "{cell:>width$}", width = widths[i]);
            } else {
                let _ = write!(text, "{cell:<width$}", width = widths[i]);
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(&header);
    for row in &rows {
        line(&row.each_ref().map(String::as_str));
    }
    if rows.is_empty() {
        let _ = writeln!(out, "(no workers)");
    }
    for w in report.workers.iter().filter(|w| w.restarts > 0) {
        let _ = writeln!(
            out,
            "worker {}: restarted {} time(s), last exit: {}; another crash restarts it after {} ms",
            w.id, w.restarts, w.last_exit, w.next_restart_delay_ms
        );
    }
    if report.workers.iter().any(|w| w.stale) {
        let _ = writeln!(
            out,
            "* no fresh answer from this worker: counters from its last periodic report"
        );
    }
    if report
        .workers
        .iter()
        .any(|w| w.state == WorkerState::Draining)
    {
        let _ = writeln!(
            out,
            "draining workers finish their open connections, then exit"
        );
    }
    out
}

fn print_report(
    report: &StatusReport,
    drain: Option<&DrainStatusReport>,
    json: bool,
) -> CtlResult<()> {
    write_stdout(&render(report, drain, json)?)
}

fn render(
    report: &StatusReport,
    drain: Option<&DrainStatusReport>,
    json: bool,
) -> CtlResult<String> {
    if json {
        let mut text = render_json(report, drain)?;
        text.push('\n');
        return Ok(text);
    }
    let mut text = render_table(report);
    if let Some(drain) = drain {
        text.push_str(&render_draining(drain));
    }
    Ok(text)
}

/// Redraw until interrupted, reusing one connection and reconnecting when it breaks. The
/// first failure ends the command (a wrong socket fails fast); later ones are shown and
/// retried, so the screen survives a master restart.
fn watch(socket: &Path, timeout: Duration, interval: Duration, json: bool) -> CtlResult<()> {
    let mut conn = Some(Connection::open(socket, timeout)?);
    // Until a master refuses it (it predates it, and closes the connection on it).
    let mut drain_known = true;
    loop {
        let started = Instant::now();
        let result = match conn.as_mut() {
            Some(c) => c.status(timeout),
            None => Connection::open(socket, timeout).and_then(|mut c| {
                let report = c.status(timeout);
                conn = Some(c);
                report
            }),
        };
        let mut drain = None;
        if let (Ok(_), Some(c), true) = (&result, conn.as_mut(), drain_known) {
            match c.drain_status(timeout) {
                Ok(report) => drain = Some(report),
                Err(_) => {
                    drain_known = false;
                    conn = None;
                }
            }
        }
        // Clear the screen, then the header.
        let header = format!(
            "\x1b[H\x1b[2J{}  every {interval:?} from {}  (Ctrl-C to stop)\n\n",
            chrono_free_clock(),
            socket.display()
        );
        match result {
            Ok(report) if json => write_stdout(&render(&report, drain.as_ref(), true)?)?,
            Ok(report) => write_stdout(&(header + &render(&report, drain.as_ref(), false)?))?,
            Err(reason) => {
                conn = None;
                if json {
                    eprintln!("zentinel-ctl: {reason} (retrying)");
                } else {
                    write_stdout(&format!("{header}zentinel-ctl: {reason}\nretrying...\n"))?;
                }
            }
        }
        std::thread::sleep(interval.saturating_sub(started.elapsed()));
    }
}

/// Wall-clock time of day (UTC) for the watch header, without a date/time dependency.
fn chrono_free_clock() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "{:02}:{:02}:{:02} UTC",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use zentinel_protocol::control::{MasterStatus, WorkerState, WorkerStatus};

    use super::*;

    #[test]
    fn uptimes() {
        assert_eq!(format_uptime(0), "0s");
        assert_eq!(format_uptime(61), "1m01s");
        assert_eq!(format_uptime(3600 + 120), "1h02m");
        assert_eq!(format_uptime(2 * 86_400 + 3 * 3600), "2d03h");
    }

    fn report() -> StatusReport {
        StatusReport {
            master: MasterStatus {
                pid: 10,
                version: "0.1.0".into(),
                generation: 1,
                binary: "/usr/bin/zentinel".into(),
                uptime_s: 5,
                config: "/etc/z.kdl".into(),
            },
            workers: vec![WorkerStatus {
                id: 0,
                pid: 11,
                generation: 1,
                version: "0.1.0".into(),
                binary: "/usr/bin/zentinel".into(),
                state: WorkerState::Draining,
                uptime_s: 4,
                counters: WorkerCounters {
                    requests_total: 7,
                    responses_5xx: 1,
                    upstream_errors: 2,
                    client_errors: 3,
                    accept_errors: 4,
                    ..Default::default()
                },
                stale: true,
                restarts: 2,
                next_restart_delay_ms: 200,
                last_exit: "killed by signal SIGKILL".into(),
            }],
        }
    }

    fn drain() -> DrainStatusReport {
        use zentinel_protocol::control::DrainingWorker;
        DrainStatusReport {
            max_draining_generations: 3,
            workers: vec![
                DrainingWorker {
                    pid: 11,
                    id: 0,
                    generation: 1,
                    connections: 4,
                    drain_remaining_ms: Some(12_345),
                    finishing: true,
                },
                DrainingWorker {
                    pid: 12,
                    id: 1,
                    generation: 2,
                    connections: 0,
                    drain_remaining_ms: None,
                    finishing: false,
                },
            ],
        }
    }

    #[test]
    fn drain_status_adds_keys_and_lines_only() {
        let without: serde_json::Value =
            serde_json::from_str(&render_json(&report(), None).unwrap()).unwrap();
        assert!(without.get("draining").is_none(), "{without}");
        let with: serde_json::Value =
            serde_json::from_str(&render_json(&report(), Some(&drain())).unwrap()).unwrap();
        assert_eq!(with["master"], without["master"]);
        assert_eq!(with["workers"], without["workers"]);
        assert_eq!(with["max_draining_generations"], 3);
        let first = &with["draining"][0];
        assert_eq!(first["pid"], 11);
        assert_eq!(first["generation"], 1);
        assert_eq!(first["connections"], 4);
        assert_eq!(first["drain_remaining_ms"], 12_345);
        assert_eq!(first["finishing"], true);
        assert!(with["draining"][1]["drain_remaining_ms"].is_null());

        let text = render(&report(), Some(&drain()), false).unwrap();
        assert!(
            text.contains("draining: 2 worker(s) of 2 generation(s) (max-draining-generations 3)"),
            "{text}"
        );
        assert!(
            text.contains(
                "pid 11 (worker 0, generation 1): 4 connection(s), 12.3s left, finishing now"
            ),
            "{text}"
        );
        assert!(
            text.contains("pid 12 (worker 1, generation 2): 0 connection(s), no deadline known"),
            "{text}"
        );
        assert_eq!(format_remaining(125_000), "2m05s");
    }

    #[test]
    fn json_has_the_contract_keys() {
        let value: serde_json::Value =
            serde_json::from_str(&render_json(&report(), None).unwrap()).unwrap();
        for key in [
            "pid",
            "version",
            "generation",
            "binary",
            "uptime_s",
            "config",
        ] {
            assert!(value["master"].get(key).is_some(), "master.{key}");
        }
        let w = &value["workers"][0];
        for key in [
            "id",
            "pid",
            "generation",
            "version",
            "binary",
            "state",
            "uptime_s",
            "active_connections",
            "accepted_total",
            "requests_total",
            "errors_total",
            "restarts",
            "next_restart_delay_ms",
            "last_exit",
        ] {
            assert!(w.get(key).is_some(), "workers[0].{key}");
        }
        assert_eq!(w["errors_total"], 10);
        assert_eq!(w["state"], "draining");
        assert_eq!(w["stale"], true);
    }

    #[test]
    fn table_lists_every_worker() {
        let table = render_table(&report());
        assert!(table.contains("pid 10"), "{table}");
        assert!(table.contains("draining*"), "{table}");
        let row = table.lines().find(|l| l.starts_with("0 ")).expect(&table);
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[1], "11");
        assert_eq!(cells[8], "7");
        assert_eq!(cells[9], "10");
        assert_eq!(cells[10], "2");
        assert!(
            table.contains("worker 0: restarted 2 time(s), last exit: killed by signal SIGKILL"),
            "{table}"
        );
    }
}
