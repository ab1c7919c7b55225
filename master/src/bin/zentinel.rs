//! The `zentinel` binary: the master by default, a worker when the master re-executes it as
//! `zentinel worker --channel-fd N`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use zentinel_master::config::{self, ConfigDiagnostic, DEFAULT_CONFIG_NAME};
use zentinel_master::control::ControlSocket;
use zentinel_master::control_socket_path::master_control_socket;
use zentinel_master::listeners;
use zentinel_master::logging::{self, DEFAULT_LOG_LEVEL};
use zentinel_master::supervisor::{self, Supervisor, SupervisorSetup};
use zentinel_master::worker_process::{adopt_channel_fd, set_cloexec_on_inherited_fds, Executable};

/// Exit code of an invalid configuration or command line (like clap's usage errors).
const EXIT_CONFIG: u8 = 2;
/// Exit code of any other failure.
const EXIT_FAILURE: u8 = 1;

/// Zentinel: an HTTP/1.1 and TCP reverse proxy with zero-downtime upgrades.
#[derive(Debug, Parser)]
#[command(name = "zentinel", version)]
struct Cli {
    /// Configuration file (KDL). Without one, the embedded default is used.
    #[arg(short = 'c', long, value_name = "PATH", env = "ZENTINEL_CONFIG")]
    config: Option<PathBuf>,

    /// Validate the configuration, print every error, and exit (2 if invalid).
    #[arg(short = 't', long = "check", visible_alias = "test")]
    check: bool,

    /// Log filter (`info`, `debug`, or `EnvFilter` directives); RUST_LOG takes precedence.
    #[arg(long, value_name = "LEVEL", default_value = DEFAULT_LOG_LEVEL, global = true)]
    log_level: String,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
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
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Worker {
            channel_fd,
            worker_id,
            generation,
        }) => run_worker(&cli.log_level, channel_fd, worker_id, generation),
        None if cli.check => check(cli.config.as_deref()),
        None => run_master(&cli),
    }
}

fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("zentinel: {message}");
    ExitCode::from(code)
}

fn config_name(path: Option<&Path>) -> String {
    path.map_or_else(
        || DEFAULT_CONFIG_NAME.to_owned(),
        |p| p.display().to_string(),
    )
}

fn print_diagnostics(path: Option<&Path>, diagnostics: &[ConfigDiagnostic]) {
    for diagnostic in diagnostics {
        eprintln!("{diagnostic}");
    }
    eprintln!(
        "zentinel: configuration {} is invalid ({} error{})",
        config_name(path),
        diagnostics.len(),
        if diagnostics.len() == 1 { "" } else { "s" }
    );
}

/// `--check`: like `nginx -t`. Parses and validates only; it does not bind, so it also works
/// next to a running instance.
fn check(path: Option<&Path>) -> ExitCode {
    match config::load_config(path) {
        Ok((_, name)) => {
            println!("configuration {name} is ok");
            ExitCode::SUCCESS
        }
        Err(diagnostics) => {
            print_diagnostics(path, &diagnostics);
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn run_master(cli: &Cli) -> ExitCode {
    // Before anything else: the mask must be in place before any thread or child exists.
    let signals = match supervisor::block_signals() {
        Ok(signals) => signals,
        Err(err) => {
            return fail(
                EXIT_FAILURE,
                format!("cannot set up signal handling: {err}"),
            )
        }
    };
    if let Err(err) = logging::init(&cli.log_level) {
        return fail(EXIT_CONFIG, err);
    }
    if let Err(err) = set_cloexec_on_inherited_fds() {
        tracing::warn!(error = %err, "cannot mark inherited fds close-on-exec; workers may inherit them");
    }
    let path = cli.config.as_deref();
    let (config, config_name) = match config::load_config(path) {
        Ok(loaded) => loaded,
        Err(diagnostics) => {
            print_diagnostics(path, &diagnostics);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let executable = match Executable::open_self() {
        Ok(executable) => executable,
        Err(err) => return fail(EXIT_FAILURE, err),
    };
    // Before the listeners: a second master must fail here, not on EADDRINUSE.
    let control_path = master_control_socket(config.system.control_socket.as_deref());
    let control = match ControlSocket::bind(&control_path) {
        Ok(control) => control,
        Err(err) => return fail(EXIT_FAILURE, err),
    };
    let listeners = match listeners::bind_all(&config.listeners) {
        Ok(listeners) => listeners,
        Err(err) => return fail(EXIT_FAILURE, err),
    };
    let setup = SupervisorSetup {
        config,
        config_name,
        // Absolute, so a reload finds the file whatever the current directory is then.
        config_path: path.map(|p| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())),
        listeners,
        executable,
        signals,
        log_level: cli.log_level.clone(),
        generation: 1,
        control: Some(control),
    };
    let result = Supervisor::new(setup).and_then(Supervisor::run);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(EXIT_FAILURE, err),
    }
}

fn run_worker(
    log_level: &str,
    channel_fd: i32,
    worker_id: Option<u32>,
    generation: Option<u64>,
) -> ExitCode {
    // Errors before the worker's own logging context exists still say who failed.
    let mut label = worker_id.map_or_else(|| "worker".to_owned(), |id| format!("worker {id}"));
    if let Some(generation) = generation {
        label.push_str(&format!(" (generation {generation})"));
    }
    if let Err(err) = logging::init(log_level) {
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
