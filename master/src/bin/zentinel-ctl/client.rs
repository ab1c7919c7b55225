//! The control connection: connect with a deadline, exchange Hellos, one-answer requests
//! (`status`, the running config) and long operations whose `Progress` lines are printed
//! (reload, stop, worker restart). Every failure says which socket and which step.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use socket2::{Domain, SockAddr, Socket, Type};
use zentinel_protocol::config_source::ConfigSource;
use zentinel_protocol::control::CONTROL_PROTOCOL_VERSION;
use zentinel_protocol::control::{
    ControlRequest, ControlResponse, DrainStatusReport, StatusReport, CONTROL_CLIENT_LIMITS,
};
use zentinel_protocol::messages::Hello;
use zentinel_protocol::{Channel, ProtocolError};

use crate::{print_line, CtlResult};

pub(crate) struct Connection {
    channel: Channel,
    pub(crate) socket: PathBuf,
}

impl Connection {
    /// Connect (bounded by `timeout`) and exchange Hellos.
    pub(crate) fn open(socket: &Path, timeout: Duration) -> CtlResult<Connection> {
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
                other.kind()
            )),
        }
    }

    fn send(&mut self, request: &ControlRequest) -> Result<(), ProtocolError> {
        // The socket is blocking with a write timeout: `send` writes everything or fails.
        self.channel.send(request, &[]).map(|_| ())
    }

    pub(crate) fn recv(&mut self, timeout: Duration) -> Result<ControlResponse, ProtocolError> {
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

    pub(crate) fn io_error(&self, during: &str, err: &ProtocolError) -> String {
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
    pub(crate) fn status(&mut self, timeout: Duration) -> CtlResult<StatusReport> {
        self.ask(
            &ControlRequest::Status,
            timeout,
            |response| match response {
                ControlResponse::Status(report) => Ok(report),
                other => Err(other),
            },
        )
    }

    /// One `DrainStatus` request: the draining workers' generations, connections and
    /// remaining drain time. A master that predates it refuses it and closes the connection.
    pub(crate) fn drain_status(&mut self, timeout: Duration) -> CtlResult<DrainStatusReport> {
        self.ask(
            &ControlRequest::DrainStatus,
            timeout,
            |response| match response {
                ControlResponse::DrainStatus(report) => Ok(*report),
                other => Err(other),
            },
        )
    }

    /// One `RunningConfig` request: the source text the master runs.
    pub(crate) fn running_config(&mut self, timeout: Duration) -> CtlResult<ConfigSource> {
        self.ask(
            &ControlRequest::RunningConfig,
            timeout,
            |response| match response {
                ControlResponse::RunningConfig(source) => Ok(*source),
                other => Err(other),
            },
        )
    }

    /// Send `request`; a failure names it.
    pub(crate) fn submit(&mut self, request: &ControlRequest) -> CtlResult<()> {
        self.send(request)
            .map_err(|e| self.io_error(&format!("the {} request", request_name(request)), &e))
    }

    /// The next answer before `deadline`, `None` once it passed. A read that times out
    /// earlier (the socket's own timeout) is not an error: long operations outlast it.
    pub(crate) fn recv_before(
        &mut self,
        deadline: Instant,
    ) -> Result<Option<ControlResponse>, ProtocolError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            match self.recv(left) {
                Err(ProtocolError::Io(e)) if e.kind() == io::ErrorKind::TimedOut => {}
                answer => return answer.map(Some),
            }
        }
    }

    /// An answer that does not fit `what` was asked.
    fn unexpected(&self, what: &str, answer: &ControlResponse) -> String {
        format!(
            "the master at {} answered {what} with {}",
            self.socket.display(),
            answer.kind()
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
        self.submit(request)?;
        loop {
            match self.recv(timeout).map(&expected) {
                Ok(Ok(answer)) => return Ok(answer),
                // Not expected for a one-answer request, but harmless: keep waiting.
                Ok(Err(ControlResponse::Progress { .. })) => {}
                Ok(Err(ControlResponse::Failed { message })) => return Err(message),
                Ok(Err(other)) => return Err(self.unexpected(&what, &other)),
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
    pub(crate) fn operation(
        &mut self,
        request: &ControlRequest,
        wait: Duration,
        eof_is_success: bool,
    ) -> CtlResult<()> {
        let what = request_name(request);
        self.submit(request)?;
        let deadline = Instant::now() + wait;
        loop {
            match self.recv_before(deadline) {
                Ok(Some(ControlResponse::Progress { message })) => print_line(&message),
                Ok(Some(ControlResponse::Done { message })) => {
                    let message = if message.is_empty() && eof_is_success {
                        "stopped"
                    } else {
                        &message
                    };
                    if !message.is_empty() {
                        print_line(message);
                    }
                    return Ok(());
                }
                Ok(Some(ControlResponse::Failed { message })) => {
                    return Err(format!("{what} failed: {message}"))
                }
                Ok(Some(other)) => return Err(self.unexpected(what, &other)),
                Ok(None) => {
                    return Err(format!(
                        "no final answer from the master at {} to {what} within {wait:?}; the \
                         operation may still be in progress (check `zentinel-ctl status`)",
                        self.socket.display()
                    ))
                }
                Err(e) if e.is_closed() && eof_is_success => {
                    print_line("stopped");
                    return Ok(());
                }
                Err(e) if e.is_closed() => {
                    return Err(format!(
                        "the master at {} closed the connection before {what} finished (did it \
                         exit? check its log); the outcome is unknown",
                        self.socket.display()
                    ))
                }
                Err(e) => return Err(self.io_error(&format!("the {what} request"), &e)),
            }
        }
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

/// The request as the operator named it on the command line, for messages (not
/// [`ControlRequest::kind`], the protocol's name).
fn request_name(request: &ControlRequest) -> &'static str {
    match request {
        ControlRequest::Hello(_) => "hello",
        ControlRequest::Status => "status",
        ControlRequest::Reload { .. } => "reload",
        ControlRequest::Stop { .. } => "stop",
        ControlRequest::WorkerRestart { .. } => "worker restart",
        ControlRequest::Upgrade { .. } | ControlRequest::UpgradeWith(_) => "upgrade",
        ControlRequest::RunningConfig => "running config",
        ControlRequest::DrainStatus => "drain status",
    }
}

/// Kept apart: it runs a real control server.
#[cfg(test)]
mod large_status_tests;
