//! The `zentinel` binary: the master by default, a worker when the master re-executes it as
//! `zentinel worker --channel-fd N`.
//!
//! - [`check`](mod@check): `-t` and `--check-source`.
//! - [`fresh_master`]: a master started by hand or by systemd.
//! - [`take_over`]: a master started by the previous one in a binary upgrade.

// Raw libc calls belong in the library's `sys` module.
#![deny(unsafe_code)]

mod check;
mod fresh_master;
mod take_over;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use zentinel_master::config;
use zentinel_master::logging::{self, LogSettings, DEFAULT_LOG_LEVEL};
use zentinel_master::preflight;
use zentinel_master::validate_command as validate;
use zentinel_master::worker_process::adopt_channel_fd;

use crate::check::{check, check_source};
use crate::fresh_master::run_master;
use crate::take_over::run_upgraded_master;

/// Exit code of an invalid configuration or command line (like clap's usage errors).
const EXIT_CONFIG: u8 = 2;
/// Exit code of any other failure.
const EXIT_FAILURE: u8 = 1;
/// Exit code of `-t` on an invalid configuration: 1, like upstream Zentinel and `nginx -t`.
const EXIT_INVALID_CONFIG: u8 = 1;

/// Zentinel: an HTTP/1.1 and TCP reverse proxy with zero-downtime upgrades.
#[derive(Debug, Parser)]
#[command(name = "zentinel", version, disable_version_flag = true)]
struct Cli {
    /// Print version (with --json: the protocol and state-format versions too).
    #[arg(short = 'V', long = "version")]
    version: bool,

    /// With --version: one JSON object with the build version, the master-worker protocol,
    /// the upgrade state format written and the formats read, and the control protocol
    /// (what `zentinel-ctl upgrade` checks before an upgrade).
    #[arg(long, requires = "version")]
    json: bool,

    /// Configuration file (KDL). Without one, the embedded default is used.
    #[arg(short = 'c', long, value_name = "PATH", env = "ZENTINEL_CONFIG")]
    config: Option<PathBuf>,

    /// Test the configuration, print every error, and exit (1 if invalid), like upstream
    /// Zentinel's and nginx's `-t`.
    #[arg(short = 't', long = "test", visible_alias = "check")]
    check: bool,

    /// Check a configuration's source text as a running master hands it to its successor (the
    /// upgrade pre-flight writes it to a file; see `zentinel-ctl upgrade`).
    #[arg(long = "check-source", value_name = "FILE", hide = true)]
    check_source: Option<PathBuf>,

    /// Log filter (`info`, `debug`, or `EnvFilter` directives); RUST_LOG takes precedence, and
    /// this takes precedence over the configuration's `logging { level }` (default `info`).
    #[arg(long, value_name = "LEVEL", global = true)]
    log_level: Option<String>,

    /// Log at debug level (the same as `--log-level debug`).
    #[arg(long, global = true)]
    verbose: bool,

    /// Take over from a running master (binary upgrade; started by that master, not by hand).
    #[arg(
        long = "upgrade-from",
        value_name = "STATEFILE",
        hide = true,
        requires = "upgrade_ready_fd"
    )]
    upgrade_from: Option<PathBuf>,

    /// The pipe on which to confirm readiness to the previous master.
    #[arg(
        long = "upgrade-ready-fd",
        value_name = "N",
        hide = true,
        requires = "upgrade_from"
    )]
    upgrade_ready_fd: Option<i32>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Test the configuration and exit (the same as `-t`).
    Test {
        /// Configuration file; defaults to the top-level `-c` (or `ZENTINEL_CONFIG`).
        #[arg(short = 'c', long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Run the proxy (what `zentinel` does without a subcommand). A `-c` file that does not
    /// exist is created with the embedded default configuration first.
    Run {
        #[arg(short = 'c', long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Test the configuration, then check what it refers to: every upstream target accepts a
    /// TCP connection and every TLS certificate file is a readable certificate.
    Validate {
        #[arg(short = 'c', long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Do not connect to the upstream targets.
        #[arg(long)]
        skip_network: bool,
        /// Do not check the certificate files.
        #[arg(long)]
        skip_certs: bool,
        /// Accepted for upstream compatibility: there are no agents to check.
        #[arg(long)]
        skip_agents: bool,
    },
    /// Run as a worker process (started by the master, not by hand).
    #[command(hide = true)]
    Worker {
        /// This worker's end of the master channel, inherited across exec.
        #[arg(long, value_name = "N")]
        channel_fd: i32,
        #[arg(long, value_name = "I")]
        worker_id: Option<u32>,
        #[arg(long, value_name = "G")]
        generation: Option<u64>,
        /// `json`: one JSON object per log line (the master's `logging { format }`).
        #[arg(long, value_name = "FORMAT")]
        log_format: Option<String>,
        #[arg(long)]
        log_no_timestamps: bool,
        /// Also append warnings and errors to this file (`logging { error-log }`).
        #[arg(long, value_name = "PATH")]
        error_log: Option<String>,
        #[arg(long, requires = "error_log")]
        error_log_errors_only: bool,
        /// Bytes of the error log held before a write (`error-log { buffer-size }`).
        #[arg(long, value_name = "BYTES", default_value_t = 0)]
        error_log_buffer_size: usize,
    },
}

fn main() -> ExitCode {
    let _flush = logging::FlushOnExit;
    let mut cli = Cli::parse();
    if cli.version {
        return print_version(cli.json);
    }
    if cli.verbose && cli.log_level.is_none() {
        cli.log_level = Some("debug".to_owned());
    }
    if let Some(source) = cli.check_source.as_deref() {
        return check_source(source);
    }
    // Like upstream, `-t` wins over a subcommand.
    if cli.check {
        return check(cli.config.as_deref());
    }
    match cli.command.take() {
        Some(Command::Worker {
            channel_fd,
            worker_id,
            generation,
            log_format,
            log_no_timestamps,
            error_log,
            error_log_errors_only,
            error_log_buffer_size,
        }) => {
            let settings = LogSettings {
                level: cli
                    .log_level
                    .unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_owned()),
                json: log_format.as_deref() == Some("json"),
                timestamps: !log_no_timestamps,
                error_log: error_log.map(|file| logging::ErrorLog {
                    file,
                    errors_only: error_log_errors_only,
                    buffer_size: error_log_buffer_size,
                }),
            };
            run_worker(&settings, channel_fd, worker_id, generation)
        }
        Some(Command::Test { config }) => check(config.or(cli.config).as_deref()),
        Some(Command::Validate {
            config,
            skip_network,
            skip_certs,
            skip_agents: _,
        }) => validate::run(
            config.or(cli.config).as_deref(),
            validate::Checks {
                network: !skip_network,
                certificates: !skip_certs,
            },
        ),
        Some(Command::Run { config }) => {
            if let Some(config) = config {
                cli.config = Some(config);
            }
            if let Some(path) = cli.config.as_deref() {
                if let Err(err) = config::create_default_if_missing(path) {
                    return fail(EXIT_FAILURE, err);
                }
            }
            run_master(&cli)
        }
        None if cli.upgrade_from.is_some() => run_upgraded_master(&cli),
        None => run_master(&cli),
    }
}

/// `--version`: clap's usual `zentinel X.Y.Z` line (scripts and older `zentinel-ctl`s parse
/// it), or with `--json` the versions an upgrade pre-flight compares.
fn print_version(json: bool) -> ExitCode {
    use std::io::Write as _;
    let line = if json {
        preflight::VersionInfo::current().to_json()
    } else {
        format!("zentinel {}", env!("CARGO_PKG_VERSION"))
    };
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(EXIT_FAILURE, format!("cannot write to stdout: {err}")),
    }
}

fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("zentinel: {message}");
    ExitCode::from(code)
}

fn run_worker(
    log: &LogSettings,
    channel_fd: i32,
    worker_id: Option<u32>,
    generation: Option<u64>,
) -> ExitCode {
    // Errors before the worker's own logging context exists still say who failed.
    let mut label = worker_id.map_or_else(|| "worker".to_owned(), |id| format!("worker {id}"));
    if let Some(generation) = generation {
        label.push_str(&format!(" (generation {generation})"));
    }
    if let Err(err) = logging::init(log) {
        return fail(EXIT_CONFIG, format!("{label}: {err}"));
    }
    // No span here: the worker opens its own, with the identity it learns from Start.
    let channel = match adopt_channel_fd(channel_fd) {
        Ok(channel) => channel,
        Err(err) => return fail(EXIT_FAILURE, format!("{label}: {err}")),
    };
    match zentinel_worker::run(channel) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(EXIT_FAILURE, format!("{label}: {err}")),
    }
}
