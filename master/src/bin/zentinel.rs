//! The `zentinel` binary: the master by default, a worker when the master re-executes it as
//! `zentinel worker --channel-fd N`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use nix::sys::signalfd::SignalFd;
use zentinel_master::config::{self, ConfigDiagnostic, DEFAULT_CONFIG_NAME};
use zentinel_master::control::ControlSocket;
use zentinel_master::control_socket_path::master_control_socket;
use zentinel_master::listeners;
use zentinel_master::listeners::BoundListener;
use zentinel_master::logging::{self, LogSettings, DEFAULT_LOG_LEVEL};
use zentinel_master::ownership::Ownership;
use zentinel_master::preflight;
use zentinel_master::supervisor::{self, Inherited, Supervisor, SupervisorSetup};
use zentinel_master::systemd;
use zentinel_master::upgrade;
use zentinel_master::validate_command as validate;
use zentinel_master::worker_process::{adopt_channel_fd, set_cloexec_on_inherited_fds, Executable};
use zentinel_protocol::state::{read_state_file, InheritedFd, ListenerFd};

/// Exit code of an invalid configuration or command line (like clap's usage errors).
const EXIT_CONFIG: u8 = 2;
/// Exit code of any other failure.
const EXIT_FAILURE: u8 = 1;
/// Exit code of `-t` on an invalid configuration: 1, like upstream Zentinel and `nginx -t`.
const EXIT_INVALID_CONFIG: u8 = 1;
/// How long a starting master waits for a listening address still held by a previous
/// instance's exiting workers.
const BIND_PATIENCE: std::time::Duration = std::time::Duration::from_secs(3);

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

/// `-t`: like upstream Zentinel's and `nginx -t`. Parses and validates only; it does not
/// bind, so it also works next to a running instance. The success line is upstream's, naming
/// the file as given (`(embedded)` for the embedded default).
fn check(path: Option<&Path>) -> ExitCode {
    match config::load_full_config(path) {
        Ok(loaded) => {
            for warning in &loaded.config.warnings {
                eprintln!("warning: {warning}");
            }
            let name = path.map_or_else(|| "(embedded)".to_owned(), |p| p.display().to_string());
            println!("zentinel: configuration file {name} test is successful");
            ExitCode::SUCCESS
        }
        Err(diagnostics) => {
            print_diagnostics(path, &diagnostics);
            ExitCode::from(EXIT_INVALID_CONFIG)
        }
    }
}

/// `--check-source FILE`: `-t` on the source text a running master would hand over.
fn check_source(file: &Path) -> ExitCode {
    let source = match std::fs::read(file)
        .map_err(|e| e.to_string())
        .and_then(|bytes| config::ConfigSource::decode(&bytes))
    {
        Ok(source) => source,
        Err(err) => return fail(EXIT_FAILURE, format!("{}: {err}", file.display())),
    };
    let name = source
        .main()
        .map_or_else(String::new, |main| main.path.clone());
    match config::parse_config_source(source) {
        Ok(_) => {
            println!("zentinel: configuration file {name} test is successful (the running text)");
            ExitCode::SUCCESS
        }
        Err(diagnostics) => {
            print_diagnostics(Some(Path::new(&name)), &diagnostics);
            ExitCode::from(EXIT_INVALID_CONFIG)
        }
    }
}

/// What every master does first, fresh or upgraded: block the signals it reads from a
/// signalfd (before any thread or child exists) and mark every inherited fd close-on-exec (the
/// fds an upgraded master adopts are checked and taken one by one later). Logging starts once
/// the configuration is known ([`start_logging`]); errors before that go to stderr.
fn master_prologue() -> Result<SignalFd, ExitCode> {
    let signals = supervisor::block_signals().map_err(|err| {
        fail(
            EXIT_FAILURE,
            format!("cannot set up signal handling: {err}"),
        )
    })?;
    if let Err(err) = set_cloexec_on_inherited_fds() {
        eprintln!(
            "zentinel: cannot mark inherited fds close-on-exec; workers may inherit them: {err}"
        );
    }
    Ok(signals)
}

/// The master's logging, from its command line and the configuration's `logging` block.
fn start_logging(
    cli: &Cli,
    logging_config: &config::LoggingConfig,
) -> Result<LogSettings, ExitCode> {
    let settings = LogSettings::resolve(cli.log_level.as_deref(), logging_config);
    logging::init(&settings).map_err(|err| fail(EXIT_CONFIG, err))?;
    Ok(settings)
}

fn run_master(cli: &Cli) -> ExitCode {
    // First of all: fds 3.. must still be the ones systemd passed (nothing opened yet), and
    // no thread may exist while the LISTEN_* variables are removed from the environment.
    let activation = systemd::take_listen_fds();
    let signals = match master_prologue() {
        Ok(signals) => signals,
        Err(code) => return code,
    };
    let activation = match activation {
        Ok(activation) => activation,
        Err(err) => return fail(EXIT_FAILURE, err),
    };
    let path = cli.config.as_deref();
    let config::LoadedConfig {
        config:
            config::FullConfig {
                proxy: config,
                metrics,
                logging,
                warnings,
            },
        source: config_source,
        name: config_name,
    } = match config::load_full_config(path) {
        Ok(loaded) => loaded,
        Err(diagnostics) => {
            print_diagnostics(path, &diagnostics);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let log = match start_logging(cli, &logging) {
        Ok(log) => log,
        Err(code) => return code,
    };
    zentinel_worker::fault_injection::report_unavailable();
    for warning in &activation.warnings {
        tracing::warn!("{warning}");
    }
    config::log_warnings(&warnings);
    if !activation.sockets.is_empty() {
        // Listeners whose address systemd passed use that socket (bind_listener duplicates
        // it); the others are bound below as usual.
        match listeners::adopt_activated(activation.sockets, &config.listeners) {
            Ok(count) => tracing::info!(
                sockets = count,
                "socket activation: using the sockets passed by systemd"
            ),
            Err(err) => return fail(EXIT_CONFIG, format!("configuration {config_name}: {err}")),
        }
    }
    let executable = match Executable::open_self_as(started_as().as_deref()) {
        Ok(executable) => executable,
        Err(err) => return fail(EXIT_FAILURE, err),
    };
    // Before the listeners: a second master must fail here, not on EADDRINUSE.
    let control_path = master_control_socket(config.system.control_socket.as_deref());
    let control = match ControlSocket::bind(&control_path) {
        Ok(control) => control,
        Err(err) => return fail(EXIT_FAILURE, err),
    };
    let listeners = match listeners::bind_all_at_start(&config.listeners, BIND_PATIENCE) {
        Ok(listeners) => listeners,
        Err(err) => return fail(EXIT_FAILURE, err),
    };
    let metrics = match metrics
        .map(zentinel_master::metrics::MetricsServer::bind)
        .transpose()
    {
        Ok(metrics) => metrics,
        Err(err) => return fail(EXIT_FAILURE, err),
    };
    let setup = SupervisorSetup {
        config,
        config_name,
        config_source,
        listeners,
        executable,
        signals,
        log,
        explicit_log_level: cli.log_level.clone(),
        generation: 1,
        control: Some(control),
        inherited: None,
        metrics,
        master_metrics: Default::default(),
    };
    let result = Supervisor::new(setup).and_then(Supervisor::run);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(EXIT_FAILURE, err),
    }
}

/// argv[0] when it names a path (`./zentinel`, `/usr/bin/zentinel`), for the executable's
/// name in status and as the default binary of an upgrade.
fn started_as() -> Option<PathBuf> {
    let arg0 = PathBuf::from(std::env::args_os().next()?);
    (arg0.components().count() > 1).then_some(arg0)
}

/// `--upgrade-from STATE --upgrade-ready-fd N`: the previous master forked and exec'd us with
/// its listeners, control socket, worker channels and executable inherited. Any failure here
/// exits non-zero without confirming readiness, so the previous master keeps running.
fn run_upgraded_master(cli: &Cli) -> ExitCode {
    // Our listeners come from the state file; LISTEN_* (if an older predecessor left them)
    // named its pid, not ours, and must not reach our workers.
    systemd::forget_listen_fds();
    let signals = match master_prologue() {
        Ok(signals) => signals,
        Err(code) => return code,
    };
    let (Some(state_path), Some(ready_fd)) = (cli.upgrade_from.as_deref(), cli.upgrade_ready_fd)
    else {
        return fail(
            EXIT_CONFIG,
            "--upgrade-from and --upgrade-ready-fd go together",
        );
    };
    // The previous master takes EOF on the readiness pipe for failure and kills us at once: a
    // second write end, held until our reason is printed, keeps it from dying unsaid. (Once
    // the supervisor runs, it logs its own reasons before dropping the pipe.)
    let mut hold = upgrade::hold_open(ready_fd);
    let result = take_over(cli, state_path, ready_fd, signals, &mut hold);
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(
            EXIT_FAILURE,
            format!("cannot take over from the previous master: {err}"),
        ),
    };
    drop(hold);
    code
}

fn take_over(
    cli: &Cli,
    state_path: &Path,
    ready_fd: i32,
    signals: nix::sys::signalfd::SignalFd,
    hold: &mut Option<std::os::fd::OwnedFd>,
) -> Result<(), String> {
    let state = read_state_file(state_path).map_err(|e| e.to_string())?;
    if let Err(err) = std::fs::remove_file(state_path) {
        tracing::warn!(path = %state_path.display(), error = %err, "cannot remove the upgrade state file");
    }
    // Every fd number is taken into exactly one owner below: a number named twice would be
    // closed twice. Checked as a set before the first one is taken.
    state
        .check_inherited_fds(
            &state_path.display().to_string(),
            &[InheritedFd::new(ready_fd, "--upgrade-ready-fd")],
        )
        .map_err(|e| e.to_string())?;
    let ready =
        upgrade::take_inherited_fd(ready_fd, "--upgrade-ready-fd").map_err(|e| e.to_string())?;
    // Everything adopted below stays the previous master's until readiness is confirmed: a
    // failure (an error returned here or in the supervisor, a panic) drops it all without
    // touching the socket file or the workers (`zentinel_master::ownership`).
    let ownership = Ownership::tentative();
    // The running configuration, parsed by this binary's parser from the text the previous
    // master runs (never re-read from disk), before anything is adopted: a binary that rejects
    // it fails here and the previous master keeps serving.
    let config::LoadedConfig {
        config:
            config::FullConfig {
                proxy: config,
                metrics: metrics_config,
                logging,
                warnings,
            },
        source: config_source,
        name: config_name,
    } = config::parse_config_source(state.config_source.clone()).map_err(|diagnostics| {
        let mut message = format!(
            "this binary rejects the running configuration ({} error{})",
            diagnostics.len(),
            if diagnostics.len() == 1 { "" } else { "s" }
        );
        for diagnostic in &diagnostics {
            message.push_str("\n  ");
            message.push_str(&diagnostic.to_string());
        }
        message
    })?;
    let log = start_logging(cli, &logging)
        .map_err(|_| "cannot start logging (see the line above)".to_owned())?;
    zentinel_worker::fault_injection::report_unavailable();
    config::log_warnings(&warnings);
    let listener_fds = inherited_listeners(&state.listeners, &config.listeners)
        .map_err(|e| format!("state file {}: {e}", state_path.display()))?;
    let fd_err = |e: std::io::Error| e.to_string();
    let control_fd =
        upgrade::take_inherited_fd(state.control_socket_fd, "control socket").map_err(fd_err)?;
    let control = ControlSocket::adopt(
        control_fd,
        Path::new(&state.control_socket_path),
        ownership.clone(),
    )
    .map_err(fd_err)?;
    let previous_fd =
        upgrade::take_inherited_fd(state.previous_executable_fd, "previous executable")
            .map_err(fd_err)?;
    let previous_executable =
        Executable::adopt(previous_fd, PathBuf::from(&state.previous_binary)).map_err(fd_err)?;
    let mut bound = Vec::with_capacity(listener_fds.len());
    for (entry, config) in listener_fds.into_iter().zip(&config.listeners) {
        let what = format!("listener \"{}\"", entry.name);
        let fd = upgrade::take_inherited_fd(entry.fd, &what).map_err(fd_err)?;
        bound.push(BoundListener::adopt(fd, config, &entry.address).map_err(fd_err)?);
    }
    let mut workers = Vec::with_capacity(state.workers.len());
    for record in &state.workers {
        let what = format!("channel of worker {} (pid {})", record.id, record.pid);
        let fd = upgrade::take_inherited_fd(record.channel_fd, &what).map_err(fd_err)?;
        upgrade::check_unix_stream(&fd, &what).map_err(fd_err)?;
        workers.push((record.clone(), fd));
    }
    let client = match state.upgrade.as_ref().and_then(|u| u.client_fd) {
        Some(raw) => {
            let fd = upgrade::take_inherited_fd(raw, "upgrade control client").map_err(fd_err)?;
            upgrade::check_unix_stream(&fd, "upgrade control client").map_err(fd_err)?;
            Some(std::os::unix::net::UnixStream::from(fd))
        }
        None => None,
    };
    let metrics = match (&state.metrics_listener, metrics_config) {
        (Some(entry), Some(metrics_config)) => {
            let fd = upgrade::take_inherited_fd(entry.fd, "metrics listener").map_err(fd_err)?;
            Some(
                zentinel_master::metrics::MetricsServer::from_fd(
                    fd,
                    metrics_config,
                    &entry.address,
                )
                .map_err(fd_err)?,
            )
        }
        (None, None) => None,
        (Some(entry), None) => {
            return Err(format!(
                "state file {}: a metrics listener ({}) was handed over, but the running \
                 configuration has no metrics endpoint",
                state_path.display(),
                entry.address
            ))
        }
        (None, Some(metrics_config)) => {
            return Err(format!(
                "state file {}: the running configuration serves metrics on {}, but no \
                 metrics listener was handed over",
                state_path.display(),
                metrics_config.address
            ))
        }
    };
    let executable = Executable::open_self_as(started_as().as_deref())
        .map_err(|e| format!("cannot open this binary's executable (/proc/self/exe): {e}"))?;
    tracing::info!(
        previous_master_pid = state.previous_master_pid,
        generation = state.generation,
        binary = %executable.path().display(),
        workers = workers.len(),
        "taking over from the previous master"
    );
    let setup = SupervisorSetup {
        config,
        config_name,
        config_source,
        listeners: bound,
        executable,
        signals,
        log,
        explicit_log_level: cli.log_level.clone(),
        generation: state.generation,
        control: Some(control),
        inherited: Some(Inherited {
            previous_master_pid: state.previous_master_pid,
            previous_executable,
            workers,
            upgrade: state.upgrade,
            client,
            ready_fd: ready,
            ownership,
        }),
        metrics,
        master_metrics: state.metrics,
    };
    let supervisor = Supervisor::new(setup).map_err(|e| e.to_string())?;
    // From here on failures are logged before the pipe closes: the supervisor's own copy is
    // the only one that must keep the previous master waiting.
    *hold = None;
    supervisor.run().map_err(|e| e.to_string())
}

/// The inherited listener fds in the order of the configured listeners, matched by name: every
/// configured listener needs exactly one, and none may be left over.
fn inherited_listeners<'s>(
    inherited: &'s [ListenerFd],
    configured: &[zentinel_protocol::config::ListenerConfig],
) -> Result<Vec<&'s ListenerFd>, String> {
    if inherited.len() != configured.len() {
        return Err(format!(
            "{} listener fds for {} configured listeners",
            inherited.len(),
            configured.len()
        ));
    }
    configured
        .iter()
        .map(|listener| {
            inherited
                .iter()
                .find(|entry| entry.name == listener.name)
                .ok_or_else(|| {
                    format!(
                        "no listener fd for configured listener \"{}\"",
                        listener.name
                    )
                })
        })
        .collect()
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
