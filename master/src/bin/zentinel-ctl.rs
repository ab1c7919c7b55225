//! `zentinel-ctl`: drive a running Zentinel master over its Unix control socket.
//!
//! Speaks the control protocol of `zentinel_protocol::control` with the same framing as
//! master <-> worker: Hello both ways, then one request and its answers (`Progress` lines, then
//! a final `Status`, `Done` or `Failed`). Every failure ends the process with exit status 1 and
//! one line `zentinel-ctl: <reason>` on stderr, so scripts can both test and log it.

use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use socket2::{Domain, SockAddr, Socket, Type};
use zentinel_master::canary::ErrorRate;
use zentinel_master::config::{load_config, DEFAULT_CONFIG_NAME};
use zentinel_master::control_socket_path::{master_control_socket, SOCKET_ENV};
use zentinel_master::preflight::{self, VersionInfo};
use zentinel_master::upgrade::format_duration;
use zentinel_protocol::config_source::ConfigSource;
use zentinel_protocol::control::CONTROL_PROTOCOL_VERSION;
use zentinel_protocol::control::{
    CanaryPolicy, ControlRequest, ControlResponse, MasterStatus, StatusReport, UpgradeRequest,
    WorkerState, WorkerStatus, CONTROL_CLIENT_LIMITS,
};
use zentinel_protocol::messages::{Hello, WorkerCounters};
use zentinel_protocol::{Channel, ProtocolError};

/// Exit status of every failure after the command line was parsed (clap uses 2 for usage).
const EXIT_FAILURE: u8 = 1;

/// Time the master gets, beyond a stop's or restart's drain deadline, to finish and answer.
const LONG_OPERATION_MARGIN: Duration = Duration::from_secs(15);

/// Drain deadline assumed when neither `--drain-timeout` nor a config says otherwise: the
/// default `graceful-shutdown-timeout-secs`.
const DEFAULT_DRAIN: Duration = Duration::from_secs(30);

/// The master's default for `--ready-timeout`.
const DEFAULT_READY: Duration = Duration::from_secs(10);

/// A reload starts and hands over sockets but drains nothing; this bounds the wait for it.
const RELOAD_WAIT: Duration = Duration::from_secs(60);

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
struct Cli {
    /// The master's control socket (overrides $ZENTINEL_SOCKET and the config).
    #[arg(long, value_name = "PATH", env = SOCKET_ENV, global = true)]
    socket: Option<PathBuf>,

    /// Read the control socket path from this config's `system { control-socket }`.
    #[arg(
        short = 'c',
        long = "config",
        value_name = "PATH",
        env = "ZENTINEL_CONFIG"
    )]
    config: Option<PathBuf>,

    /// Deadline for connecting and for short requests (status). Like 10s, 500ms, 2m, or
    /// plain seconds.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = parse_duration, global = true)]
    timeout: Duration,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
struct UpgradeArgs {
    /// After the master, replace every worker from the new binary, one at a time.
    #[arg(long)]
    rolling: bool,
    /// The new binary (default: the path the master was started from, which may have been
    /// replaced on disk). Sent as an absolute path.
    #[arg(long, value_name = "PATH")]
    binary: Option<PathBuf>,
    /// How long each old worker may drain (default: `graceful-shutdown-timeout-secs`).
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    drain_timeout: Option<Duration>,
    /// How long the new master, and each new worker, may take to become ready (default 10s).
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    ready_timeout: Option<Duration>,
    /// Put the first new worker on probation for DUR before replacing the others; roll it
    /// back if its error rate exceeds the old workers'. Needs --rolling.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, requires = "rolling")]
    canary: Option<Duration>,
    /// How many percentage points the canary's error rate may exceed the old workers' (0 to
    /// 100; `0.5`, `2%`).
    #[arg(long, value_name = "PCT", value_parser = parse_percent_points, requires = "canary")]
    max_error_rate: Option<u32>,
    /// One JSON object per progress line.
    #[arg(long)]
    json: bool,
    /// Run only the pre-flight checks and print what the upgrade would do; change nothing.
    /// Exit 0 if the upgrade would proceed.
    #[arg(long)]
    dry_run: bool,
    /// Skip the pre-flight checks (the master still checks that the binary is executable and
    /// rolls back a new master or worker that fails). Only for a new binary that cannot answer
    /// them, e.g. a wrapper script, or when the running master's binary is unreachable.
    #[arg(long, conflicts_with = "dry_run")]
    no_preflight: bool,
    /// Bound of each pre-flight run of a binary; it is killed on overrun.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = parse_duration)]
    preflight_timeout: Duration,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Redraw every SECS seconds (default 2) until interrupted.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2",
          value_parser = parse_watch_interval)]
    watch: Option<Duration>,
}

#[derive(Debug, Subcommand)]
enum WorkerCommand {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            // One line, whatever the master put in its message.
            let line = reason
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            eprintln!("zentinel-ctl: {line}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Every failure is one human-readable reason.
type CtlResult<T> = Result<T, String>;

fn run(cli: &Cli) -> CtlResult<()> {
    let socket = resolve_socket(cli)?;
    match &cli.command {
        Command::Status(args) => match args.watch {
            None => {
                let mut conn = Connection::open(&socket, cli.timeout)?;
                let report = conn.status(cli.timeout)?;
                print_report(&report, args.json)
            }
            Some(interval) => watch(&socket, cli.timeout, interval, args.json),
        },
        Command::Reload { config } => {
            let config_path = config.as_deref().map(absolute_config_path).transpose()?;
            let wait = cli.timeout.max(RELOAD_WAIT);
            let mut conn = Connection::open(&socket, cli.timeout)?;
            conn.operation(&ControlRequest::Reload { config_path }, wait, false)
        }
        Command::Stop {
            fast,
            drain_timeout,
        } => {
            let drain_timeout_ms = drain_timeout.map(|d| d.as_millis().min(u64::MAX.into()) as u64);
            let drain = drain_timeout.unwrap_or_else(|| configured_drain(cli));
            let wait = cli.timeout.max(drain + LONG_OPERATION_MARGIN);
            let mut conn = Connection::open(&socket, cli.timeout)?;
            conn.operation(
                &ControlRequest::Stop {
                    fast: *fast,
                    drain_timeout_ms,
                },
                wait,
                true,
            )
        }
        Command::Upgrade(args) => {
            let binary = args
                .binary
                .as_deref()
                .map(|path| {
                    absolute_config_path(path).map_err(|e| e.replacen("config path", "binary", 1))
                })
                .transpose()?;
            if !args.no_preflight {
                // Its own connection: the pre-flight may take a while, and the upgrade request
                // goes on a fresh one the new master inherits.
                let report = Connection::open(&socket, cli.timeout)?.status(cli.timeout)?;
                let fetch_source =
                    || Connection::open(&socket, cli.timeout)?.running_config(cli.timeout);
                let outcome = preflight(&report, binary.as_deref(), args, &fetch_source)?;
                if args.dry_run {
                    return print_plan(&report, &outcome, args);
                }
            }
            let ready = args.ready_timeout.unwrap_or(DEFAULT_READY);
            let request = upgrade_request(args, binary);
            let mut conn = Connection::open(&socket, cli.timeout)?;
            conn.upgrade(
                &request,
                cli.timeout.max(ready + LONG_OPERATION_MARGIN),
                args.json,
            )
            .map_err(|reason| {
                // Only reachable with --no-preflight: the pre-flight checks the master's
                // features first.
                if matches!(request, ControlRequest::UpgradeWith(_))
                    && reason.contains("invalid request")
                {
                    format!(
                        "{reason} (the running master predates --canary: upgrade without it \
                         first)"
                    )
                } else {
                    reason
                }
            })
        }
        Command::Worker(WorkerCommand::Restart { id }) => {
            let wait = cli
                .timeout
                .max(configured_drain(cli) + LONG_OPERATION_MARGIN);
            let mut conn = Connection::open(&socket, cli.timeout)?;
            conn.operation(
                &ControlRequest::WorkerRestart { worker_id: *id },
                wait,
                false,
            )
        }
    }
}

/// The request for `args`: the protocol 2 `Upgrade` unless an option needs `UpgradeWith`,
/// so that a master predating those options still takes every upgrade it can carry out.
fn upgrade_request(args: &UpgradeArgs, binary: Option<String>) -> ControlRequest {
    let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let request = UpgradeRequest {
        binary,
        rolling: args.rolling,
        drain_timeout_ms: args.drain_timeout.map(millis),
        ready_timeout_ms: args.ready_timeout.map(millis),
        canary: args.canary.map(|window| CanaryPolicy {
            duration_ms: millis(window),
            max_excess_basis_points: args
                .max_error_rate
                .unwrap_or(CanaryPolicy::DEFAULT_MAX_EXCESS_BASIS_POINTS),
        }),
    };
    if request.canary.is_some() {
        return ControlRequest::UpgradeWith(Box::new(request));
    }
    ControlRequest::Upgrade {
        binary: request.binary,
        rolling: request.rolling,
        drain_timeout_ms: request.drain_timeout_ms,
        ready_timeout_ms: request.ready_timeout_ms,
    }
}

/// `--socket` / `$ZENTINEL_SOCKET`, else the config's `control-socket`, else the default.
fn resolve_socket(cli: &Cli) -> CtlResult<PathBuf> {
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

/// The drain deadline the master will use when the command does not set one: the config's
/// when one was given, else the built-in default.
fn configured_drain(cli: &Cli) -> Duration {
    cli.config
        .as_deref()
        .and_then(|path| load_config(Some(path)).ok())
        .map_or(DEFAULT_DRAIN, |(config, _)| {
            Duration::from_secs(config.system.graceful_shutdown_timeout_secs)
        })
}

/// The master resolves paths against its own working directory, which is not ours.
fn absolute_config_path(path: &Path) -> CtlResult<String> {
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

// ---------------------------------------------------------------------------------------------
// The connection.
// ---------------------------------------------------------------------------------------------

struct Connection {
    channel: Channel,
    socket: PathBuf,
}

impl Connection {
    /// Connect (bounded by `timeout`) and exchange Hellos.
    fn open(socket: &Path, timeout: Duration) -> CtlResult<Connection> {
        let stream = connect(socket, timeout)?;
        let mut conn = Connection {
            channel: Channel::with_limits(stream, CONTROL_CLIENT_LIMITS),
            socket: socket.to_owned(),
        };
        conn.send(&ControlRequest::Hello(Hello {
            protocol_version: CONTROL_PROTOCOL_VERSION,
            pid: std::process::id(),
            software_version: env!("CARGO_PKG_VERSION").to_owned(),
        }))
        .map_err(|e| conn.handshake_error(e))?;
        match conn.recv(timeout).map_err(|e| conn.handshake_error(e))? {
            ControlResponse::Hello(hello) if hello.protocol_version == CONTROL_PROTOCOL_VERSION => {
                Ok(conn)
            }
            ControlResponse::Hello(hello) => Err(format!(
                "protocol version mismatch: zentinel-ctl {} speaks control protocol {}, the \
                 master at {} (zentinel {}) speaks {}; use the zentinel-ctl of the running \
                 zentinel",
                env!("CARGO_PKG_VERSION"),
                CONTROL_PROTOCOL_VERSION,
                socket.display(),
                hello.software_version,
                hello.protocol_version
            )),
            ControlResponse::Failed { message } => Err(format!(
                "the master at {} refused the connection: {message}",
                socket.display()
            )),
            other => Err(format!(
                "the master at {} answered the hello with {} instead of a Hello",
                socket.display(),
                response_kind(&other)
            )),
        }
    }

    fn send(&mut self, request: &ControlRequest) -> Result<(), ProtocolError> {
        // The socket is blocking with a write timeout: `send` writes everything or fails.
        self.channel.send(request, &[]).map(|_| ())
    }

    fn recv(&mut self, timeout: Duration) -> Result<ControlResponse, ProtocolError> {
        self.channel
            .recv_timeout(timeout)?
            .deserialize::<ControlResponse>()
    }

    /// A connection closed during the handshake means the master refused this client (its
    /// peer-credential check closes without a word) or is shutting down.
    fn handshake_error(&self, err: ProtocolError) -> String {
        if err.is_closed() {
            format!(
                "the master at {} closed the connection during the handshake: it refuses \
                 clients that run as neither its user nor root (see its log), or it is \
                 shutting down",
                self.socket.display()
            )
        } else {
            self.io_error("the handshake", &err)
        }
    }

    fn io_error(&self, during: &str, err: &ProtocolError) -> String {
        match err {
            ProtocolError::Io(e) if e.kind() == io::ErrorKind::TimedOut => format!(
                "no answer from the master at {} during {during}: {e}",
                self.socket.display()
            ),
            _ => format!(
                "control connection to {} failed during {during}: {err}",
                self.socket.display()
            ),
        }
    }

    /// One `Status` request on this connection.
    fn status(&mut self, timeout: Duration) -> CtlResult<StatusReport> {
        self.ask(
            &ControlRequest::Status,
            timeout,
            |response| match response {
                ControlResponse::Status(report) => Ok(report),
                other => Err(other),
            },
        )
    }

    /// One `RunningConfig` request: the source text the master runs.
    fn running_config(&mut self, timeout: Duration) -> CtlResult<ConfigSource> {
        self.ask(
            &ControlRequest::RunningConfig,
            timeout,
            |response| match response {
                ControlResponse::RunningConfig(source) => Ok(*source),
                other => Err(other),
            },
        )
    }

    /// Send `request` and wait for the one answer `expected` takes (it hands back any other).
    fn ask<T>(
        &mut self,
        request: &ControlRequest,
        timeout: Duration,
        expected: impl Fn(ControlResponse) -> Result<T, ControlResponse>,
    ) -> CtlResult<T> {
        let what = format!("the {} request", request_name(request));
        self.send(request).map_err(|e| self.io_error(&what, &e))?;
        loop {
            match self.recv(timeout).map(&expected) {
                Ok(Ok(answer)) => return Ok(answer),
                // Not expected for a one-answer request, but harmless: keep waiting.
                Ok(Err(ControlResponse::Progress { .. })) => {}
                Ok(Err(ControlResponse::Failed { message })) => return Err(message),
                Ok(Err(other)) => {
                    return Err(format!(
                        "the master at {} answered {what} with {}",
                        self.socket.display(),
                        response_kind(&other)
                    ))
                }
                Err(e) if e.is_closed() => {
                    return Err(format!(
                        "the master at {} closed the connection before answering {what}",
                        self.socket.display()
                    ))
                }
                Err(e) => return Err(self.io_error(&what, &e)),
            }
        }
    }

    /// Send a long-running request and print its `Progress` lines as they come, until `Done`
    /// (printed, success) or `Failed` (the error). `eof_is_success`: for a stop, the master
    /// exiting (the connection closing) is the success it was asked for.
    fn operation(
        &mut self,
        request: &ControlRequest,
        wait: Duration,
        eof_is_success: bool,
    ) -> CtlResult<()> {
        let what = request_name(request);
        self.send(request)
            .map_err(|e| self.io_error(&format!("the {what} request"), &e))?;
        let deadline = Instant::now() + wait;
        let mut stdout = io::stdout().lock();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "no final answer from the master at {} to {what} within {wait:?}; the \
                     operation may still be in progress (check `zentinel-ctl status`)",
                    self.socket.display()
                ));
            }
            match self.recv(left) {
                Ok(ControlResponse::Progress { message }) => {
                    let _ = writeln!(stdout, "{message}");
                    let _ = stdout.flush();
                }
                Ok(ControlResponse::Done { message }) => {
                    let message = if message.is_empty() && eof_is_success {
                        "stopped"
                    } else {
                        &message
                    };
                    if !message.is_empty() {
                        let _ = writeln!(stdout, "{message}");
                    }
                    return Ok(());
                }
                Ok(ControlResponse::Failed { message }) => {
                    return Err(format!("{what} failed: {message}"))
                }
                Ok(other) => {
                    return Err(format!(
                        "the master at {} answered {what} with {}",
                        self.socket.display(),
                        response_kind(&other)
                    ))
                }
                Err(e) if e.is_closed() && eof_is_success => {
                    let _ = writeln!(stdout, "stopped");
                    return Ok(());
                }
                Err(e) if e.is_closed() => {
                    return Err(format!(
                        "the master at {} closed the connection before {what} finished (did it \
                         exit? check its log); the outcome is unknown",
                        self.socket.display()
                    ))
                }
                Err(ProtocolError::Io(e)) if e.kind() == io::ErrorKind::TimedOut => {}
                Err(e) => return Err(self.io_error(&format!("the {what} request"), &e)),
            }
        }
    }
}

impl Connection {
    /// Send an upgrade and print each step as it comes, until `Done` or `Failed`. The
    /// connection survives the master's replacement (the new master inherits it), so `wait`
    /// bounds the silence between two steps, not the whole upgrade.
    fn upgrade(&mut self, request: &ControlRequest, wait: Duration, json: bool) -> CtlResult<()> {
        self.send(request)
            .map_err(|e| self.io_error("the upgrade request", &e))?;
        let mut stdout = io::stdout().lock();
        let mut deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "no progress from the master at {} for {wait:?}; the upgrade may still be \
                     in progress (check `zentinel-ctl status`)",
                    self.socket.display()
                ));
            }
            let response = match self.recv(left) {
                Ok(response) => response,
                Err(ProtocolError::Io(e)) if e.kind() == io::ErrorKind::TimedOut => continue,
                Err(e) if e.is_closed() => {
                    return Err(format!(
                        "the master at {} closed the connection before the upgrade finished \
                         (check its log and `zentinel-ctl status`); the outcome is unknown",
                        self.socket.display()
                    ))
                }
                Err(e) => return Err(self.io_error("the upgrade request", &e)),
            };
            deadline = Instant::now() + wait;
            let (line, outcome) = upgrade_line(&response, json);
            if let Some(line) = line {
                let _ = writeln!(stdout, "{line}");
                let _ = stdout.flush();
            }
            match outcome {
                Some(Ok(())) => return Ok(()),
                Some(Err(reason)) => return Err(reason),
                None => {}
            }
        }
    }
}

/// The printed line of one upgrade response, and the outcome if it is the last one.
fn upgrade_line(response: &ControlResponse, json: bool) -> (Option<String>, Option<CtlResult<()>>) {
    let value = |v: serde_json::Value| Some(v.to_string());
    match response {
        ControlResponse::Progress { message } => (
            if json {
                value(serde_json::json!({"event": "progress", "message": message}))
            } else {
                Some(message.clone())
            },
            None,
        ),
        ControlResponse::MasterReplaced {
            old_pid,
            new_pid,
            ready_ms,
            generation,
            binary,
        } => (
            if json {
                value(serde_json::json!({
                    "event": "master_replaced", "old_pid": old_pid, "new_pid": new_pid,
                    "ready_ms": ready_ms, "generation": generation, "binary": binary,
                }))
            } else {
                Some(format!(
                    "master: pid {old_pid} -> pid {new_pid} ready in {ready_ms} ms (generation \
                     {generation}, binary {binary})"
                ))
            },
            None,
        ),
        ControlResponse::WorkerReplaced {
            index,
            total,
            worker_id,
            old_pid,
            new_pid,
            ready_ms,
            old_active_connections,
        } => {
            (
                if json {
                    value(serde_json::json!({
                        "event": "worker_replaced", "index": index, "total": total,
                        "worker_id": worker_id, "old_pid": old_pid, "new_pid": new_pid,
                        "ready_ms": ready_ms, "old_active_connections": old_active_connections,
                    }))
                } else {
                    Some(format!(
                    "worker {index}/{total}: pid {old_pid} -> pid {new_pid} ready in {ready_ms} \
                     ms, old draining ({old_active_connections} connection{})",
                    if *old_active_connections == 1 { "" } else { "s" }
                ))
                },
                None,
            )
        }
        ControlResponse::WorkerRolledBack {
            worker_id,
            failed_pid,
            restored_pid,
        } => (
            if json {
                value(serde_json::json!({
                    "event": "worker_rolled_back", "worker_id": worker_id,
                    "failed_pid": failed_pid, "restored_pid": restored_pid,
                }))
            } else {
                Some(format!(
                    "rollback: worker {worker_id}: pid {failed_pid} (new binary) -> pid \
                     {restored_pid} (previous binary)"
                ))
            },
            None,
        ),
        ControlResponse::CanaryComparison {
            worker_id,
            elapsed_ms,
            window_ms,
            new_errors,
            new_requests,
            old_errors,
            old_requests,
        } => (
            if json {
                value(serde_json::json!({
                    "event": "canary", "worker_id": worker_id, "elapsed_ms": elapsed_ms,
                    "window_ms": window_ms,
                    "new": {"errors": new_errors, "requests": new_requests},
                    "old": {"errors": old_errors, "requests": old_requests},
                }))
            } else {
                let rate = |errors: u64, requests: u64| ErrorRate { errors, requests };
                Some(format!(
                    "canary: {:.1}s/{}: new {}, old {}",
                    Duration::from_millis(*elapsed_ms).as_secs_f64(),
                    format_duration(Duration::from_millis(*window_ms)),
                    rate(*new_errors, *new_requests),
                    rate(*old_errors, *old_requests)
                ))
            },
            None,
        ),
        ControlResponse::Done { message } => (
            if json {
                value(serde_json::json!({"event": "done", "message": message}))
            } else {
                Some(message.clone())
            },
            Some(Ok(())),
        ),
        ControlResponse::Failed { message } => (
            json.then(|| serde_json::json!({"event": "failed", "message": message}).to_string()),
            Some(Err(format!("upgrade failed: {message}"))),
        ),
        other => (
            None,
            Some(Err(format!(
                "the master answered the upgrade with {}",
                response_kind(other)
            ))),
        ),
    }
}

/// Connect with `timeout` bounding a full listen backlog too (a blocking AF_UNIX connect
/// waits under SO_SNDTIMEO), then set read/write timeouts on the stream.
fn connect(socket: &Path, timeout: Duration) -> CtlResult<UnixStream> {
    let address = SockAddr::unix(socket)
        .map_err(|e| format!("control socket path {}: {e}", socket.display()))?;
    let fd = Socket::new(Domain::UNIX, Type::STREAM, None)
        .map_err(|e| format!("cannot create a Unix socket: {e}"))?;
    let _ = fd.set_write_timeout(Some(timeout));
    let _ = fd.set_read_timeout(Some(timeout));
    if let Err(e) = fd.connect(&address) {
        return Err(connect_error(socket, &e));
    }
    Ok(UnixStream::from(std::os::fd::OwnedFd::from(fd)))
}

fn connect_error(socket: &Path, err: &io::Error) -> String {
    let path = socket.display();
    let hint = "is the master running? Pick its socket with --socket PATH, $ZENTINEL_SOCKET or \
                -c CONFIG";
    match err.kind() {
        io::ErrorKind::NotFound => format!("cannot connect to {path}: no such socket ({hint})"),
        io::ErrorKind::ConnectionRefused => format!(
            "cannot connect to {path}: connection refused, nothing listens there (a stale \
             socket of a master that died?) ({hint})"
        ),
        io::ErrorKind::PermissionDenied => format!(
            "cannot connect to {path}: permission denied (the socket is only for the master's \
             user and root)"
        ),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!("cannot connect to {path}: the master did not accept the connection in time")
        }
        _ => format!("cannot connect to {path}: {err} ({hint})"),
    }
}

fn request_name(request: &ControlRequest) -> &'static str {
    match request {
        ControlRequest::Hello(_) => "hello",
        ControlRequest::Status => "status",
        ControlRequest::Reload { .. } => "reload",
        ControlRequest::Stop { .. } => "stop",
        ControlRequest::WorkerRestart { .. } => "worker restart",
        ControlRequest::Upgrade { .. } | ControlRequest::UpgradeWith(_) => "upgrade",
        ControlRequest::RunningConfig => "running config",
    }
}

fn response_kind(response: &ControlResponse) -> &'static str {
    match response {
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
    }
}

// ---------------------------------------------------------------------------------------------
// Upgrade pre-flight and dry run.
// ---------------------------------------------------------------------------------------------

/// What the pre-flight learned, for the dry run's plan.
struct Preflight {
    binary: PathBuf,
    new: VersionInfo,
    running: VersionInfo,
    /// Where the running master's versions came from (`/proc/PID/exe` or its binary path).
    running_source: String,
    config: Option<PathBuf>,
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
    let mut stdout = io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

/// Retired workers the status lists as draining: while there are any, the master hands their
/// drain deadlines over in a newer state format.
fn draining_workers(report: &StatusReport) -> usize {
    report
        .workers
        .iter()
        .filter(|w| w.state == WorkerState::Draining)
        .count()
}

/// Checks of the new binary before the upgrade request is sent: it is executable, it reads
/// the state format the running master writes for this upgrade (format 4 unless retired
/// workers drain: a rollback to the release before format 5 passes once they have exited) and
/// speaks at least its worker protocol, and
/// it accepts the running configuration. Each step prints one line; the first failure is the
/// command's error, and nothing was changed.
fn preflight(
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

/// `--dry-run`: what the upgrade would do, after a successful pre-flight.
fn print_plan(report: &StatusReport, pre: &Preflight, args: &UpgradeArgs) -> CtlResult<()> {
    let master = &report.master;
    let workers: Vec<&WorkerStatus> = report
        .workers
        .iter()
        .filter(|w| w.state == WorkerState::Running && w.generation == master.generation)
        .collect();
    // The master's drain default is the running config's graceful-shutdown-timeout-secs.
    let drain = args.drain_timeout.unwrap_or_else(|| {
        load_config(pre.config.as_deref()).map_or(DEFAULT_DRAIN, |(config, _)| {
            Duration::from_secs(config.system.graceful_shutdown_timeout_secs)
        })
    });
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
            "drain_timeout_ms": u64::try_from(drain.as_millis()).unwrap_or(u64::MAX),
            "ready_timeout_ms": u64::try_from(ready.as_millis()).unwrap_or(u64::MAX),
            "canary": canary.map(|(window, points)| serde_json::json!({
                "duration_ms": u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
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

// ---------------------------------------------------------------------------------------------
// Status output.
// ---------------------------------------------------------------------------------------------

#[derive(Serialize)]
struct JsonReport<'a> {
    master: JsonMaster<'a>,
    workers: Vec<JsonWorker<'a>>,
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

fn json_report(report: &StatusReport) -> JsonReport<'_> {
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

fn render_json(report: &StatusReport) -> CtlResult<String> {
    serde_json::to_string(&json_report(report)).map_err(|e| format!("cannot encode JSON: {e}"))
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

fn print_report(report: &StatusReport, json: bool) -> CtlResult<()> {
    let text = if json {
        let mut text = render_json(report)?;
        text.push('\n');
        text
    } else {
        render_table(report)
    };
    write_stdout(&text)
}

/// A closed stdout (e.g. `| head`) is a failure to report, not a panic.
fn write_stdout(text: &str) -> CtlResult<()> {
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("cannot write to stdout: {e}"))
}

/// Redraw until interrupted, reusing one connection and reconnecting when it breaks. The
/// first failure ends the command (a wrong socket fails fast); later ones are shown and
/// retried, so the screen survives a master restart.
fn watch(socket: &Path, timeout: Duration, interval: Duration, json: bool) -> CtlResult<()> {
    let mut conn = Some(Connection::open(socket, timeout)?);
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
        let now = chrono_free_clock();
        match result {
            Ok(report) if json => write_stdout(&(render_json(&report)? + "\n"))?,
            Ok(report) => write_stdout(&format!(
                "\x1b[H\x1b[2J{now}  every {interval:?} from {}  (Ctrl-C to stop)\n\n{}",
                socket.display(),
                render_table(&report)
            ))?,
            Err(reason) => {
                conn = None;
                if json {
                    eprintln!("zentinel-ctl: {reason} (retrying)");
                } else {
                    write_stdout(&format!(
                        "\x1b[H\x1b[2J{now}  every {interval:?} from {}  (Ctrl-C to stop)\n\n\
                         zentinel-ctl: {reason}\nretrying...\n",
                        socket.display()
                    ))?;
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

/// Kept apart: this file is long enough.
#[cfg(test)]
#[path = "ctl_tests/large_status.rs"]
mod large_status_tests;

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

    #[test]
    fn canary_goes_in_the_extended_request_only() {
        let args = |extra: &[&str]| {
            let mut argv = vec!["zentinel-ctl", "upgrade", "--rolling"];
            argv.extend_from_slice(extra);
            match Cli::try_parse_from(argv).unwrap().command {
                Command::Upgrade(args) => args,
                other => panic!("{other:?}"),
            }
        };
        // Without a canary, the request an older master understands.
        assert!(matches!(
            upgrade_request(&args(&[]), None),
            ControlRequest::Upgrade { rolling: true, .. }
        ));
        match upgrade_request(
            &args(&["--canary", "30s", "--max-error-rate", "0.25"]),
            None,
        ) {
            ControlRequest::UpgradeWith(request) => assert_eq!(
                request.canary,
                Some(CanaryPolicy {
                    duration_ms: 30_000,
                    max_excess_basis_points: 25,
                })
            ),
            other => panic!("{other:?}"),
        }
        match upgrade_request(&args(&["--canary", "5s"]), None) {
            ControlRequest::UpgradeWith(request) => assert_eq!(
                request.canary.map(|c| c.max_excess_basis_points),
                Some(CanaryPolicy::DEFAULT_MAX_EXCESS_BASIS_POINTS)
            ),
            other => panic!("{other:?}"),
        }
        // --canary needs --rolling; --max-error-rate needs --canary.
        assert!(Cli::try_parse_from(["zentinel-ctl", "upgrade", "--canary", "5s"]).is_err());
        assert!(Cli::try_parse_from([
            "zentinel-ctl",
            "upgrade",
            "--rolling",
            "--max-error-rate",
            "1"
        ])
        .is_err());
    }

    #[test]
    fn upgrade_lines() {
        let (line, outcome) = upgrade_line(
            &ControlResponse::MasterReplaced {
                old_pid: 1,
                new_pid: 2,
                ready_ms: 30,
                generation: 2,
                binary: "/opt/z".into(),
            },
            false,
        );
        assert_eq!(
            line.unwrap(),
            "master: pid 1 -> pid 2 ready in 30 ms (generation 2, binary /opt/z)"
        );
        assert!(outcome.is_none());
        let replaced = ControlResponse::WorkerReplaced {
            index: 1,
            total: 4,
            worker_id: 0,
            old_pid: 123,
            new_pid: 456,
            ready_ms: 38,
            old_active_connections: 12,
        };
        assert_eq!(
            upgrade_line(&replaced, false).0.unwrap(),
            "worker 1/4: pid 123 -> pid 456 ready in 38 ms, old draining (12 connections)"
        );
        let json: serde_json::Value =
            serde_json::from_str(&upgrade_line(&replaced, true).0.unwrap()).unwrap();
        assert_eq!(json["event"], "worker_replaced");
        assert_eq!(json["new_pid"], 456);
        let comparison = ControlResponse::CanaryComparison {
            worker_id: 0,
            elapsed_ms: 2_000,
            window_ms: 10_000,
            new_errors: 3,
            new_requests: 400,
            old_errors: 1,
            old_requests: 1_000,
        };
        let (line, outcome) = upgrade_line(&comparison, false);
        assert_eq!(
            line.unwrap(),
            "canary: 2.0s/10s: new 0.75% errors (3 of 400 requests), old 0.10% errors (1 of 1000 \
             requests)"
        );
        assert!(outcome.is_none());
        let json: serde_json::Value =
            serde_json::from_str(&upgrade_line(&comparison, true).0.unwrap()).unwrap();
        assert_eq!(json["event"], "canary");
        assert_eq!(json["new"]["requests"], 400);
        assert_eq!(json["old"]["errors"], 1);
        let (line, outcome) = upgrade_line(
            &ControlResponse::Failed {
                message: "x".into(),
            },
            false,
        );
        assert!(line.is_none());
        assert_eq!(outcome.unwrap().unwrap_err(), "upgrade failed: x");
        let (_, outcome) = upgrade_line(
            &ControlResponse::Done {
                message: "ok".into(),
            },
            true,
        );
        assert!(outcome.unwrap().is_ok());
    }

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

    #[test]
    fn json_has_the_contract_keys() {
        let value: serde_json::Value =
            serde_json::from_str(&render_json(&report()).unwrap()).unwrap();
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
