//! A master started by hand or by systemd (not by a previous master): binds the control
//! socket and the listeners itself, or takes the sockets systemd passed. Also the steps every
//! master takes first, fresh or taking over ([`master_prologue`], [`start_logging`]).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use nix::sys::signalfd::SignalFd;
use zentinel_master::config;
use zentinel_master::control::ControlSocket;
use zentinel_master::control_socket_path::master_control_socket;
use zentinel_master::filter_shm::FilterSegments;
use zentinel_master::listeners;
use zentinel_master::logging::{self, LogSettings};
use zentinel_master::ocsp_fetch::{staple_dir, Stapler};
use zentinel_master::session_cache;
use zentinel_master::supervisor::{self, Supervisor, SupervisorSetup};
use zentinel_master::systemd;
use zentinel_master::ticket_keys::{self, TicketKeyRotation};
use zentinel_master::worker_process::{set_cloexec_on_inherited_fds, Executable};

use crate::check::print_diagnostics;
use crate::{fail, Cli, EXIT_CONFIG, EXIT_FAILURE};

/// How long a starting master waits for a listening address still held by a previous
/// instance's exiting workers.
const BIND_PATIENCE: std::time::Duration = std::time::Duration::from_secs(3);

/// What every master does first, fresh or upgraded: block the signals it reads from a
/// signalfd (before any thread or child exists) and mark every inherited fd close-on-exec (the
/// fds an upgraded master adopts are checked and taken one by one later). Logging starts once
/// the configuration is known ([`start_logging`]); errors before that go to stderr.
pub(crate) fn master_prologue() -> Result<SignalFd, ExitCode> {
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
pub(crate) fn start_logging(
    cli: &Cli,
    logging_config: &config::LoggingConfig,
) -> Result<LogSettings, ExitCode> {
    let settings = LogSettings::resolve(cli.log_level.as_deref(), logging_config);
    logging::init(&settings).map_err(|err| fail(EXIT_CONFIG, err))?;
    Ok(settings)
}

pub(crate) fn run_master(cli: &Cli) -> ExitCode {
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
                proxy: mut config,
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
    // Once this master is known to be the only one (its control socket is bound): the
    // responses of the certificates that name a responder, for at most FETCH_TIMEOUT.
    let mut ocsp = Stapler::new(staple_dir(&control_path));
    ocsp.fetch_all(&mut config);
    ocsp.remove_unused(&config);
    config::log_notes(&config);
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
    let ticket_keys =
        match TicketKeyRotation::with_rotation(ticket_keys::rotation_interval(), Instant::now()) {
            Ok(keys) => keys,
            Err(err) => {
                return fail(
                    EXIT_FAILURE,
                    format!("cannot make TLS session-ticket keys: {err}"),
                )
            }
        };
    // Before any worker starts: each gets it in its `Start`.
    let session_cache = session_cache::ensure(None, &config, "start");
    // Likewise the filters' shared counters and rate-limit tables.
    let filter_segments = FilterSegments::for_start(&config);
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
        ticket_keys,
        ocsp,
        session_cache,
        filter_segments,
    };
    let result = Supervisor::new(setup).and_then(Supervisor::run);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(EXIT_FAILURE, err),
    }
}

/// `argv[0]` when it names a path (`./zentinel`, `/usr/bin/zentinel`), for the executable's
/// name in status and as the default binary of an upgrade.
pub(crate) fn started_as() -> Option<PathBuf> {
    let arg0 = PathBuf::from(std::env::args_os().next()?);
    (arg0.components().count() > 1).then_some(arg0)
}
