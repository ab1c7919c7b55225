//! The Zentinel worker: one process, one mio event loop, sessions in a slab.
//!
//! Entry point: [`run`] (or [`run_with_args`]), called by
//! `zentinel worker --channel-fd N --worker-id I --generation G`.
//!
//! Startup follows the master/worker protocol: exchange `Hello`s (version checked), receive
//! `Start` with the listening sockets, validate every fd (stream socket, listening, bound to
//! the announced address), poll them, send `Ready`. Afterwards the channel is non-blocking and
//! part of the event loop.
//!
//! `Reconfigure` (a reload) is checked exactly like `Start`; if anything is wrong the worker
//! answers `ReconfigureFailed` and changes nothing. Otherwise new connections use the new
//! configuration and listeners, sessions in flight finish on the one they started with, and a
//! keep-alive HTTP connection moves to the new one at its next request (see `generation`).

// Raw libc calls live in `sys`, and the shared-memory mapping (of the session cache and of the
// filters' segments) in `session_cache::shm`, each with its `// SAFETY:` argument; `unsafe`
// anywhere else is refused.
#![deny(unsafe_code)]
// Sizes, counts and offsets are converted all over a proxy: a cast that could truncate one
// is spelled out (`try_from`, or an allow that says why it cannot).
#![warn(clippy::cast_possible_truncation)]
#![cfg_attr(test, allow(clippy::cast_possible_truncation))]
#![warn(clippy::borrow_as_ptr)]

pub mod access_log;
pub mod fault_injection;
pub mod http;

mod accept;
pub mod client_cert;
mod client_limit;
mod counters;
mod ctx;
mod drain_schedule;
mod event_loop;
mod failover;
mod fd_budget;
mod filters;
mod generation;
mod http2;
pub mod ocsp;
mod rate_limit;
mod routing;
pub mod session_cache;
mod sock;
#[allow(unsafe_code)]
mod sys;
mod tcp;
mod timers;
pub mod tls;
mod tls_listener;
pub mod tls_options;
pub mod tls_tickets;
pub mod tls_verify;
mod tokens;
mod trace_id;
mod upstream;
mod wakeups;
/// For the master: `tls` blocks of upstreams checked as the workers load them.
pub use upstream::tls as upstream_tls;

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use nix::sys::signal::Signal;
use tracing::{debug, error, info, warn};
use zentinel_protocol::channel::check_version;
use zentinel_protocol::messages::{Hello, MasterMessage, WorkerMessage, WorkerStart};
use zentinel_protocol::{Channel, PROTOCOL_VERSION};

use crate::event_loop::Worker;
use crate::generation::Candidate;

pub use crate::routing::normalize_host;

/// How long the worker waits for each handshake message from the master.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors that stop a worker before or during startup.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("master channel: {0}")]
    Channel(#[from] zentinel_protocol::ProtocolError),
    #[error("unexpected message from the master: expected {expected}, got {got}")]
    Unexpected { expected: &'static str, got: String },
    #[error("{0}")]
    Setup(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Signals a worker ignores: the master coordinates stops over the channel.
const IGNORED_SIGNALS: [Signal; 4] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGQUIT,
    Signal::SIGHUP,
];

/// Ignore SIGINT, SIGTERM, SIGQUIT and SIGHUP in this process.
///
/// They reach workers directly when a whole process group or cgroup is signalled (Ctrl-C in a
/// terminal, systemd `KillMode=control-group`); dying at once would cut in-flight requests
/// that the master is about to drain. The master receives the same signal and drives
/// drain/stop over the channel, and channel EOF covers a master that died. Called by [`run`];
/// the dispositions are per process, so this affects every thread of the caller.
pub fn ignore_process_signals() -> nix::Result<()> {
    for sig in IGNORED_SIGNALS {
        sys::ignore_signal(sig)?;
    }
    Ok(())
}

/// Raise this process's soft limit on open files to the hard limit; returns (before, after).
///
/// Every client and upstream connection is an fd, and the common default soft limit (1024)
/// would cap a worker far below `max-connections`. The hard limit is what the administrator
/// allows; going past it needs privileges the worker should not use.
pub fn raise_nofile_limit() -> nix::Result<(u64, u64)> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok((soft, soft.max(hard)))
}

/// Run a worker on the master channel `channel` (one end of a socketpair) until it is told to
/// stop, it has drained, or the master goes away (channel EOF: drain, then exit).
pub fn run(channel: OwnedFd) -> Result<(), Box<dyn std::error::Error>> {
    run_inner(channel, None)
}

/// Like [`run`], with the identity from the command line: it names the worker in logs before
/// `Start` arrives, and `Start` must carry the same identity (else the worker fails).
pub fn run_with_args(
    channel: OwnedFd,
    worker_id: u32,
    generation: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    run_inner(channel, Some((worker_id, generation)))
}

fn run_inner(
    channel: OwnedFd,
    expected: Option<(u32, u64)>,
) -> Result<(), Box<dyn std::error::Error>> {
    let pid = std::process::id();
    let (id_arg, gen_arg) = expected.map_or((None, None), |(i, g)| (Some(i), Some(g)));
    let pre_span = tracing::info_span!("worker", pid, worker_id = id_arg, generation = gen_arg);
    let pre = pre_span.enter();
    match ignore_process_signals() {
        Ok(()) => debug!(
            "ignoring SIGINT, SIGTERM, SIGQUIT and SIGHUP: the master drives drain and stop over the channel"
        ),
        Err(e) => warn!(error = %e, "cannot ignore SIGINT/SIGTERM/SIGQUIT/SIGHUP: a signal sent to the process group will kill this worker"),
    }
    match raise_nofile_limit() {
        Ok((before, after)) if before != after => {
            debug!(
                before,
                after, "raised the open-file limit to its hard limit"
            )
        }
        Ok((limit, _)) => debug!(limit, "open-file limit already at its hard limit"),
        Err(e) => {
            warn!(error = %e, "cannot raise the open-file limit: connections beyond it will be refused")
        }
    }
    let stream = UnixStream::from(channel);
    stream.set_nonblocking(false)?;
    let mut ch = Channel::new(stream);
    let start = match handshake(&mut ch, pid, expected) {
        Ok(s) => s,
        Err((e, fatal)) => {
            error!(error = %e, "startup failed");
            if fatal {
                let _ = ch.send(
                    &WorkerMessage::Fatal {
                        reason: e.to_string(),
                    },
                    &[],
                );
            }
            return Err(e.into());
        }
    };
    drop(pre);
    let (ws, mut fds, segments) = start;
    let span = tracing::info_span!(
        "worker",
        worker_id = ws.worker_id,
        pid,
        generation = ws.generation
    );
    let _g = span.enter();
    access_log::set_worker_id(ws.worker_id);
    http::builtin::mark_started(ws.worker_id);
    // One ticketer for the whole process: every listener of every generation seals and opens
    // tickets with the master's keys, replaced in place at each rotation.
    let ticketer = tls_tickets::SharedTicketer::new(&ws.ticket_keys);
    debug!(keys = ?ticketer, "TLS session-ticket keys from the master");
    // Likewise one session cache, shared with every other worker, when the master made one.
    let cache_fd = session_cache::split_fds(&ws, &mut fds);
    let resumption = tls::Resumption {
        ticketer,
        cache: session_cache::attach(ws.session_cache.as_deref(), cache_fd),
    };
    let prepared = match Candidate::validate(&ws, fds, "Start", &resumption, &segments) {
        Ok(p) => p,
        Err(reason) => {
            error!(%reason, "invalid start");
            let _ = ch.send(
                &WorkerMessage::Fatal {
                    reason: reason.clone(),
                },
                &[],
            );
            return Err(WorkerError::Setup(reason).into());
        }
    };
    let worker = match Worker::new(ch, ws.worker_id, prepared, resumption) {
        Ok(w) => w,
        Err(b) => {
            let (e, mut ch) = *b;
            error!(error = %e, "cannot set up the event loop");
            let _ = ch.stream().set_nonblocking(false);
            let _ = ch.send(
                &WorkerMessage::Fatal {
                    reason: format!("cannot set up the event loop: {e}"),
                },
                &[],
            );
            return Err(e.into());
        }
    };
    info!(listeners = ws.listeners.len(), "ready");
    let result = worker.run_ready();
    // The writer thread dies with the process: let it write the last lines of the drain.
    access_log::flush(std::time::Duration::from_millis(500));
    result
}

type Handshake = (WorkerStart, Vec<OwnedFd>, filters::Segments);

/// Hello both ways, then Start (after the filters' segments, when the master hands some).
/// The bool says whether a `Fatal` is worth sending.
fn handshake(
    ch: &mut Channel,
    pid: u32,
    expected: Option<(u32, u64)>,
) -> Result<Handshake, (WorkerError, bool)> {
    ch.send(
        &WorkerMessage::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            pid,
            software_version: env!("CARGO_PKG_VERSION").to_string(),
        }),
        &[],
    )
    .map_err(|e| (e.into(), false))?;
    let frame = ch
        .recv_timeout(HANDSHAKE_TIMEOUT)
        .map_err(|e| (e.into(), true))?;
    match frame
        .deserialize::<MasterMessage>()
        .map_err(|e| (e.into(), true))?
    {
        MasterMessage::Hello(h) => {
            check_version(h.protocol_version).map_err(|e| (e.into(), true))?;
        }
        other => {
            return Err((
                WorkerError::Unexpected {
                    expected: "Hello",
                    got: other.kind().to_string(),
                },
                true,
            ))
        }
    }
    let mut segments = filters::Segments::default();
    let (message, fds) = loop {
        let mut frame = ch
            .recv_timeout(HANDSHAKE_TIMEOUT)
            .map_err(|e| (e.into(), true))?;
        let fds = frame.take_fds();
        match frame
            .deserialize::<MasterMessage>()
            .map_err(|e| (e.into(), true))?
        {
            MasterMessage::FilterSegments(handles) => segments.add(&handles, fds, &[]),
            other => break (other, fds),
        }
    };
    match message {
        MasterMessage::Start(ws) => {
            if let Some((id, generation)) = expected {
                if ws.worker_id != id || ws.generation != generation {
                    return Err((
                        WorkerError::Setup(format!(
                            "Start is for worker {} generation {}, but this worker was started as worker {id} generation {generation}",
                            ws.worker_id, ws.generation
                        )),
                        true,
                    ));
                }
            }
            Ok((ws, fds, segments))
        }
        other => Err((
            WorkerError::Unexpected {
                expected: "Start",
                got: other.kind().to_string(),
            },
            true,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::{raise, SigHandler};

    #[test]
    fn nofile_limit_is_raised_to_the_hard_limit() {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        // Start below the hard limit (lowering the soft limit needs no privilege), so the
        // raise has something to do.
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let low = (hard / 2).max(256).min(hard);
        setrlimit(Resource::RLIMIT_NOFILE, low, hard).unwrap();
        let (before, after) = raise_nofile_limit().unwrap();
        assert_eq!(before, low);
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(soft, hard);
        assert_eq!(after, hard);
    }

    #[test]
    fn process_signals_are_ignored() {
        ignore_process_signals().unwrap();
        for sig in IGNORED_SIGNALS {
            // Setting SIG_IGN again returns the disposition that was in place.
            let previous = sys::ignore_signal(sig).unwrap();
            assert_eq!(previous, SigHandler::SigIgn, "{sig} is not ignored");
        }
        // With the default dispositions each of these would end the test process (SIGQUIT
        // with a core dump); ignored, they are discarded. Left ignored afterwards: nothing in
        // this test binary relies on them. raise() delivers to this thread before it returns,
        // so a signal that was not ignored kills the test binary and fails the run.
        for sig in IGNORED_SIGNALS {
            raise(sig).unwrap();
        }
    }
}
