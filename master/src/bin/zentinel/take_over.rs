//! The new master's side of a binary upgrade: started by the previous master with
//! `--upgrade-from STATE --upgrade-ready-fd N`, it reads the state file, adopts every inherited
//! fd tentatively, and confirms readiness only from a running supervisor.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use zentinel_master::config;
use zentinel_master::control::ControlSocket;
use zentinel_master::filter_shm::FilterSegments;
use zentinel_master::listeners::BoundListener;
use zentinel_master::ocsp_fetch::{staple_dir, Stapler};
use zentinel_master::ownership::Ownership;
use zentinel_master::session_cache;
use zentinel_master::supervisor::{Inherited, Supervisor, SupervisorSetup};
use zentinel_master::systemd;
use zentinel_master::ticket_keys::{self, TicketKeyRotation};
use zentinel_master::upgrade;
use zentinel_master::worker_process::Executable;
use zentinel_protocol::state::{read_state_file, InheritedFd, ListenerFd};

use crate::fresh_master::{master_prologue, start_logging, started_as};
use crate::{fail, Cli, EXIT_CONFIG, EXIT_FAILURE};

/// `--upgrade-from STATE --upgrade-ready-fd N`: the previous master forked and exec'd us with
/// its listeners, control socket, worker channels and executable inherited. Any failure here
/// exits non-zero without confirming readiness, so the previous master keeps running.
pub(crate) fn run_upgraded_master(cli: &Cli) -> ExitCode {
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
                proxy: mut config,
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
    // The responses the previous master fetched, in the directory of the same control socket:
    // asking responders now could keep it waiting for our readiness; once confirmed, the loop
    // refreshes them (at once when there are none).
    let mut ocsp = Stapler::new(staple_dir(Path::new(&state.control_socket_path)));
    ocsp.use_stored(&mut config);
    config::log_notes(&config);
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
    let inherited_cache = match &state.session_cache {
        Some(entry) => Some((
            upgrade::take_inherited_fd(entry.fd, "TLS session cache").map_err(fd_err)?,
            entry.segment_bytes,
        )),
        None => None,
    };
    let mut inherited_segments = Vec::new();
    for entry in &state.filter_segments {
        let fd = upgrade::take_inherited_fd(entry.fd, "filter segment").map_err(fd_err)?;
        inherited_segments.push((entry.name.clone(), fd, entry.segment_bytes));
    }
    let executable = Executable::open_self_as(started_as().as_deref())
        .map_err(|e| format!("cannot open this binary's executable (/proc/self/exe): {e}"))?;
    tracing::info!(
        previous_master_pid = state.previous_master_pid,
        generation = state.generation,
        binary = %executable.path().display(),
        workers = workers.len(),
        ticket_keys_inherited = !state.ticket_keys.keys.is_empty(),
        session_cache_inherited = inherited_cache.is_some(),
        filter_segments_inherited = inherited_segments.len(),
        "taking over from the previous master"
    );
    // The predecessor's session cache, shared with its workers, so that their sessions resume
    // on ours; a fresh one if it handed none on (an older format, no TLS listener resuming
    // sessions) or one of a layout this binary does not share.
    let session_cache = session_cache::inherited(inherited_cache, &config);
    // The predecessor's filter segments, shared with its workers: a rate limit holds across
    // the upgrade, old and new workers counting in one table.
    let filter_segments = FilterSegments::inherited(inherited_segments, &config);
    // The predecessor's keys, so that its workers' tickets open on ours; fresh ones if it
    // handed none on (an older format, or no TLS listener resuming sessions).
    let ticket_keys = TicketKeyRotation::inherited_with_rotation(
        state.ticket_keys,
        ticket_keys::rotation_interval(),
        Instant::now(),
    )
    .map_err(|e| format!("cannot make TLS session-ticket keys: {e}"))?;
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
        ticket_keys,
        ocsp,
        session_cache,
        filter_segments,
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
