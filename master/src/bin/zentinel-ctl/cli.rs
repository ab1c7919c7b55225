//! The command line: flags, subcommands and their help, the value parsers, and what the
//! global options resolve to (the control socket, the drain deadline a config sets).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use zentinel_master::config::load_config;
use zentinel_master::control_socket_path::{master_control_socket, SOCKET_ENV};

use crate::CtlResult;

/// Drain deadline assumed when neither `--drain-timeout` nor a config says otherwise: the
/// default `graceful-shutdown-timeout-secs`.
const DEFAULT_DRAIN: Duration = Duration::from_secs(30);

const AFTER_HELP: &str = "\
Socket: --socket PATH, else $ZENTINEL_SOCKET, else `system { control-socket }` of the config
given with -c/--config (or $ZENTINEL_CONFIG), else $XDG_RUNTIME_DIR/zentinel.sock, else
/run/zentinel/zentinel.sock.

Examples:
  zentinel-ctl status                          # master and per-worker table
  zentinel-ctl status --json | python3 -m json.tool
  zentinel-ctl status --watch 1                # redraw every second until Ctrl-C
  zentinel-ctl reload                          # re-read the master's config file
  zentinel-ctl reload --config ./zentinel.kdl  # switch to another config file
  zentinel-ctl stop                            # graceful: drain, then exit
  zentinel-ctl stop --drain-timeout 10s
  zentinel-ctl stop --fast                     # drop connections, exit now
  zentinel-ctl worker restart 0                # replace worker 0 gracefully
  zentinel-ctl upgrade --rolling               # new master, then every worker, from the
                                               # binary at the master's path
  zentinel-ctl upgrade --rolling --binary /opt/zentinel/bin/zentinel --json
  zentinel-ctl upgrade --rolling --binary /opt/zentinel/bin/zentinel --dry-run
                                               # pre-flight checks and the plan only
  zentinel-ctl --socket /run/zentinel/zentinel.sock status
  zentinel-ctl -c /etc/zentinel/zentinel.kdl status

Exit status: 0 on success; 1 with one line `zentinel-ctl: <reason>` on stderr on failure;
2 on a command-line error.";

/// Control a running Zentinel master: status, reload, stop, worker restart, upgrade.
#[derive(Debug, Parser)]
#[command(name = "zentinel-ctl", version, after_help = AFTER_HELP)]
pub(crate) struct Cli {
    /// The master's control socket (overrides $ZENTINEL_SOCKET and the config).
    #[arg(long, value_name = "PATH", env = SOCKET_ENV, global = true)]
    pub(crate) socket: Option<PathBuf>,

    /// Read the control socket path from this config's `system { control-socket }`.
    #[arg(
        short = 'c',
        long = "config",
        value_name = "PATH",
        env = "ZENTINEL_CONFIG"
    )]
    pub(crate) config: Option<PathBuf>,

    /// Deadline for connecting and for short requests (status). Like 10s, 500ms, 2m, or
    /// plain seconds.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = parse_duration, global = true)]
    pub(crate) timeout: Duration,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Show the master and one row per worker (draining ones of earlier generations too).
    #[command(after_help = "\
Columns: ERRORS = 5xx responses + upstream errors + client errors + accept errors (one failed
request can count twice: an upstream failure answered with a 502). `*` after a state: the
worker did not answer in time; its counters are from its last periodic report.

Examples:
  zentinel-ctl status
  zentinel-ctl status --json
  zentinel-ctl status --watch          # every 2 s until Ctrl-C
  zentinel-ctl status --watch 0.5 --json   # one JSON object per line")]
    Status(StatusArgs),

    /// Re-read and validate the config, then switch every worker to it without dropping
    /// connections. On any error the running config stays.
    #[command(after_help = "\
Examples:
  zentinel-ctl reload                          # the file the master was started with
  zentinel-ctl reload --config /etc/zentinel/new.kdl")]
    Reload {
        /// Config file to load instead of the master's current one (sent as an absolute path).
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },

    /// Stop the master and its workers: graceful by default (stop accepting, finish in-flight
    /// requests, bounded by the drain timeout).
    #[command(after_help = "\
Examples:
  zentinel-ctl stop
  zentinel-ctl stop --drain-timeout 10s
  zentinel-ctl stop --fast")]
    Stop {
        /// Exit at once, dropping open connections.
        #[arg(long, conflicts_with = "drain_timeout")]
        fast: bool,
        /// Override `graceful-shutdown-timeout-secs` for this stop: 30s, 500ms, 2m, or plain
        /// seconds.
        #[arg(long, value_name = "DUR", value_parser = parse_duration)]
        drain_timeout: Option<Duration>,
    },

    /// Worker operations.
    #[command(subcommand)]
    Worker(WorkerCommand),

    /// Replace the running binary without dropping a connection: a new master takes over the
    /// listeners, the workers and the control socket; with --rolling the workers are then
    /// replaced one at a time (new worker ready, then the old one drains). A new worker that
    /// fails rolls the replaced ones back; a new master that fails leaves the old one running.
    #[command(after_help = "\
Output: one line per step as it happens:
  master: pid A -> pid B ready in N ms (generation G, binary PATH)
  worker 1/4: pid X -> pid Y ready in M ms, old draining (K connections)
then the final line. --json prints each step as one JSON object per line.
Exit status 0 only once the upgrade completed.

Examples:
  zentinel-ctl upgrade --rolling
  zentinel-ctl upgrade --rolling --binary ./target/release/zentinel --drain-timeout 60s
  zentinel-ctl upgrade                 # the master only; workers keep running
  zentinel-ctl upgrade --rolling --binary ./zentinel.new --dry-run   # checks and plan only
  zentinel-ctl upgrade --rolling --canary 30s --max-error-rate 0.5

Canary (--canary DUR, with --rolling): once the first new worker took over and the worker it
replaced drained, the others wait DUR while its error rate (5xx answers + upstream failures, per
request) is compared with the old workers' over the same window, one line per second:
  canary: 3.0s/30s: new 0.00% errors (0 of 1530 requests), old 0.00% errors (0 of 1498 requests)
If it exceeds theirs by more than --max-error-rate percentage points (default 1), dies, or stops
answering the master, it is rolled back to the previous binary and the command exits 1 with the figures. With --json
each comparison is {\"event\":\"canary\",\"elapsed_ms\":..,\"new\":{\"errors\":..,\"requests\":..},\"old\":{..}}.

Pre-flight (before anything changes; skipped with --no-preflight):
  pre-flight: binary PATH is executable
  pre-flight: PATH is zentinel V (protocol P, reads state formats 1..=N); running master
              pid A (zentinel V) writes state format S
  pre-flight: PATH accepts the running configuration CONFIG
Any failure stops the command with exit status 1 and the reason (the new binary's own error
output included); nothing is changed. --dry-run then prints the plan and exits 0.")]
    Upgrade(UpgradeArgs),
}

#[derive(Debug, Args)]
pub(crate) struct UpgradeArgs {
    /// After the master, replace every worker from the new binary, one at a time.
    #[arg(long)]
    pub(crate) rolling: bool,
    /// The new binary (default: the path the master was started from, which may have been
    /// replaced on disk). Sent as an absolute path.
    #[arg(long, value_name = "PATH")]
    pub(crate) binary: Option<PathBuf>,
    /// How long each old worker may drain (default: `upgrade-drain-timeout-secs`, else
    /// `graceful-shutdown-timeout-secs`).
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub(crate) drain_timeout: Option<Duration>,
    /// How long the new master, and each new worker, may take to become ready (default 10s).
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub(crate) ready_timeout: Option<Duration>,
    /// Put the first new worker on probation for DUR before replacing the others; roll it
    /// back if its error rate exceeds the old workers'. Needs --rolling.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, requires = "rolling")]
    pub(crate) canary: Option<Duration>,
    /// How many percentage points the canary's error rate may exceed the old workers' (0 to
    /// 100; `0.5`, `2%`).
    #[arg(long, value_name = "PCT", value_parser = parse_percent_points, requires = "canary")]
    pub(crate) max_error_rate: Option<u32>,
    /// One JSON object per progress line.
    #[arg(long)]
    pub(crate) json: bool,
    /// Run only the pre-flight checks and print what the upgrade would do; change nothing.
    /// Exit 0 if the upgrade would proceed.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Skip the pre-flight checks (the master still checks that the binary is executable and
    /// rolls back a new master or worker that fails). Only for a new binary that cannot answer
    /// them, e.g. a wrapper script, or when the running master's binary is unreachable.
    #[arg(long, conflicts_with = "dry_run")]
    pub(crate) no_preflight: bool,
    /// Bound of each pre-flight run of a binary; it is killed on overrun.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = parse_duration)]
    pub(crate) preflight_timeout: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Redraw every SECS seconds (default 2) until interrupted.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2",
          value_parser = parse_watch_interval)]
    pub(crate) watch: Option<Duration>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum WorkerCommand {
    /// Replace one worker gracefully: start its successor, wait until it is ready, then drain
    /// the old one.
    #[command(after_help = "\
Examples:
  zentinel-ctl worker restart 0
  zentinel-ctl status     # the old worker is listed as draining until it exits")]
    Restart {
        /// The worker id (the ID column of `zentinel-ctl status`).
        id: u32,
    },
}

/// `--socket` / `$ZENTINEL_SOCKET`, else the config's `control-socket`, else the default.
pub(crate) fn resolve_socket(cli: &Cli) -> CtlResult<PathBuf> {
    if let Some(socket) = &cli.socket {
        return Ok(socket.clone());
    }
    let configured = match &cli.config {
        Some(path) => {
            load_config(Some(path))
                .map_err(|diagnostics| {
                    let first = diagnostics
                        .first()
                        .map_or_else(|| "invalid".to_owned(), ToString::to_string);
                    let more = match diagnostics.len() {
                        0 | 1 => String::new(),
                        n => format!(" ({} more errors; see `zentinel --check`)", n - 1),
                    };
                    format!("cannot read the control socket path from the config: {first}{more}")
                })?
                .0
                .system
                .control_socket
        }
        None => None,
    };
    Ok(master_control_socket(configured.as_deref()))
}

/// Which drain window a command waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DrainWindow {
    /// `graceful-shutdown-timeout-secs`.
    Stop,
    /// `upgrade-drain-timeout-secs`, else `graceful-shutdown-timeout-secs`.
    Upgrade,
}

/// The drain deadline the master will use when the command does not set one: the config's
/// when one was given, else the built-in default.
pub(crate) fn configured_drain(cli: &Cli, window: DrainWindow) -> Duration {
    cli.config
        .as_deref()
        .map_or(DEFAULT_DRAIN, |path| drain_of_config(Some(path), window))
}

/// The drain deadline of a master running `config` (`None`: the embedded default) for
/// `window`, or the built-in default when it cannot be read.
pub(crate) fn drain_of_config(config: Option<&Path>, window: DrainWindow) -> Duration {
    load_config(config).map_or(DEFAULT_DRAIN, |(config, _)| match window {
        DrainWindow::Stop => config.system.stop_drain(),
        DrainWindow::Upgrade => config.system.upgrade_drain(),
    })
}

/// The master resolves paths against its own working directory, which is not ours.
pub(crate) fn absolute_config_path(path: &Path) -> CtlResult<String> {
    let absolute = std::path::absolute(path)
        .map_err(|e| format!("cannot make config path {} absolute: {e}", path.display()))?;
    absolute.into_os_string().into_string().map_err(|raw| {
        format!(
            "config path {} is not valid UTF-8",
            Path::new(&raw).display()
        )
    })
}

/// `1`, `0.5`, `2%`: percentage points, as basis points (hundredths of a point).
fn parse_percent_points(text: &str) -> Result<u32, String> {
    let number = text.trim().trim_end_matches('%').trim();
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a percentage (like 1, 0.5 or 2%)"))?;
    if !(0.0..=100.0).contains(&value) {
        return Err(format!("`{text}`: a percentage between 0 and 100"));
    }
    Ok((value * 100.0).round() as u32)
}

/// `30s`, `500ms`, `2m`, `1h`, or plain (possibly fractional) seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (like 30s, 500ms, 2m, or seconds)"))?;
    let seconds = match unit.trim() {
        "" | "s" | "sec" | "secs" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit `{other}` in `{text}` (use ms, s, m or h)"
            ))
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{text}`: {e}"))
}

fn parse_watch_interval(text: &str) -> Result<Duration, String> {
    let interval = parse_duration(text)?;
    if interval < Duration::from_millis(100) {
        return Err(format!("watch interval `{text}` is below 100ms"));
    }
    Ok(interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_watch_interval("0").is_err());
    }

    #[test]
    fn percentages_are_points_in_basis_points() {
        assert_eq!(parse_percent_points("1"), Ok(100));
        assert_eq!(parse_percent_points("0.5"), Ok(50));
        assert_eq!(parse_percent_points("2%"), Ok(200));
        assert_eq!(parse_percent_points("0"), Ok(0));
        assert_eq!(parse_percent_points("100"), Ok(10_000));
        assert!(parse_percent_points("101").is_err());
        assert!(parse_percent_points("-1").is_err());
        assert!(parse_percent_points("lots").is_err());
    }
}
