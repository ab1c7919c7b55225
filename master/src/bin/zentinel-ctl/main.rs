//! `zentinel-ctl`: drive a running Zentinel master over its Unix control socket.
//!
//! Speaks the control protocol of `zentinel_protocol::control` with the same framing as
//! master <-> worker: Hello both ways, then one request and its answers (`Progress` lines, then
//! a final `Status`, `Done` or `Failed`). Every failure ends the process with exit status 1 and
//! one line `zentinel-ctl: <reason>` on stderr, so scripts can both test and log it.
//!
//! - [`cli`]: flags, help, value parsers; which socket and drain deadline they resolve to.
//! - [`client`]: the control connection; reload, stop and worker restart are its operations.
//! - [`status`]: the table, the JSON object and `--watch`.
//! - [`upgrade`]: pre-flight, `--dry-run` plan, the request and its progress lines.

// Raw libc calls belong in the library's `sys` module.
#![deny(unsafe_code)]

mod cli;
mod client;
mod status;
mod upgrade;

use std::io::{self, Write as _};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser as _;
use zentinel_protocol::control::ControlRequest;

use crate::cli::{
    absolute_config_path, configured_drain, resolve_socket, Cli, Command, DrainWindow,
    WorkerCommand,
};
use crate::client::Connection;

/// Exit status of every failure after the command line was parsed (clap uses 2 for usage).
const EXIT_FAILURE: u8 = 1;

/// Time the master gets, beyond a stop's or restart's drain deadline, to finish and answer.
const LONG_OPERATION_MARGIN: Duration = Duration::from_secs(15);

/// The master's default for `--ready-timeout`.
const DEFAULT_READY: Duration = Duration::from_secs(10);

/// A reload starts and hands over sockets but drains nothing; this bounds the wait for it.
const RELOAD_WAIT: Duration = Duration::from_secs(60);

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
        Command::Status(args) => status::run(&socket, cli.timeout, args),
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
            let drain_timeout_ms = drain_timeout.map(millis);
            let drain = drain_timeout.unwrap_or_else(|| configured_drain(cli, DrainWindow::Stop));
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
        Command::Upgrade(args) => upgrade::run(&socket, cli, args),
        Command::Worker(WorkerCommand::Restart { id }) => {
            let wait = cli
                .timeout
                .max(configured_drain(cli, DrainWindow::Upgrade) + LONG_OPERATION_MARGIN);
            let mut conn = Connection::open(&socket, cli.timeout)?;
            conn.operation(
                &ControlRequest::WorkerRestart { worker_id: *id },
                wait,
                false,
            )
        }
    }
}

/// A closed stdout (e.g. `| head`) is a failure to report, not a panic.
fn write_stdout(text: &str) -> CtlResult<()> {
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("cannot write to stdout: {e}"))
}

/// A duration as the protocol and the JSON output carry it, saturating.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// One line on stdout as it happens (a step of a long operation). A closed stdout does not
/// stop the operation it reports on: its outcome is the exit status.
fn print_line(line: &str) {
    let mut stdout = io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}
