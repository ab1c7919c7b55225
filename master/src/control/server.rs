//! Control clients: accepting, the peer-credential check, the Hello handshake, framing,
//! timeouts and bounded output. Requests that pass all of that go to the supervisor.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use tracing::{debug, info, warn};
use zentinel_protocol::channel::check_version_of;
use zentinel_protocol::control::CONTROL_PROTOCOL_VERSION;
use zentinel_protocol::control::{ControlRequest, ControlResponse, CONTROL_SERVER_LIMITS};
use zentinel_protocol::messages::Hello;
use zentinel_protocol::{Channel, ProtocolError};

use super::socket::ControlSocket;

/// A client that has no request in progress and sends nothing complete for this long is closed.
pub const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that does not read its responses for this long is closed.
pub const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Responses queued for a client that does not read; beyond this it is closed.
pub const MAX_QUEUED_RESPONSES: usize = 64;
/// Concurrent control connections; more are refused at once.
pub const MAX_CLIENTS: usize = 128;

/// Whether a peer with `peer_uid` may drive a master running with effective uid `master_euid`.
pub fn peer_allowed(peer_uid: u32, master_euid: u32) -> bool {
    peer_uid == master_euid || peer_uid == 0
}

/// (pid, uid) of the process at the other end of a Unix stream.
pub fn peer_credentials(stream: &UnixStream) -> io::Result<(i32, u32)> {
    let creds = getsockopt(stream, PeerCredentials).map_err(io::Error::from)?;
    Ok((creds.pid(), creds.uid()))
}

#[derive(Debug)]
struct Client {
    channel: Channel,
    peer_pid: i32,
    peer_uid: u32,
    greeted: bool,
    /// A request is in progress: the client waits for its final response, not idle.
    busy: bool,
    last_activity: Instant,
    wants_write: bool,
    /// Since when output has been waiting for the client to read.
    output_stuck_since: Option<Instant>,
    queued: usize,
}

/// The listening control socket and its clients.
#[derive(Debug)]
pub struct ControlServer {
    socket: ControlSocket,
    token: Token,
    clients: HashMap<Token, Client>,
    master_euid: u32,
}

impl ControlServer {
    /// Register the socket for accepts under `token`.
    pub fn new(socket: ControlSocket, registry: &Registry, token: Token) -> io::Result<Self> {
        let server = Self::not_accepting(socket, token);
        server.start_accepting(registry)?;
        Ok(server)
    }

    /// The server of an adopted socket, not yet accepting: until a successor master has
    /// confirmed readiness, connections on the shared socket are the previous master's (one
    /// accepted here would die with a new master that fails). See [`Self::start_accepting`].
    pub fn not_accepting(socket: ControlSocket, token: Token) -> Self {
        ControlServer {
            socket,
            token,
            clients: HashMap::new(),
            master_euid: nix::unistd::geteuid().as_raw(),
        }
    }

    /// Register the socket for accepts under the server's token.
    pub fn start_accepting(&self, registry: &Registry) -> io::Result<()> {
        registry.register(
            &mut SourceFd(&self.socket.listener().as_raw_fd()),
            self.token,
            Interest::READABLE,
        )
    }

    pub fn path(&self) -> &std::path::Path {
        self.socket.path()
    }

    pub fn listener_token(&self) -> Token {
        self.token
    }

    pub fn has_client(&self, token: Token) -> bool {
        self.clients.contains_key(&token)
    }

    /// Accept every pending connection (edge-triggered); `next_token` hands out tokens.
    pub fn accept_all(&mut self, registry: &Registry, mut next_token: impl FnMut() -> Token) {
        loop {
            let stream = match self.socket.listener().accept() {
                Ok((stream, _)) => stream,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    // EMFILE and friends: the connection stays queued; the next readiness
                    // event (or the next client) retries. Not spinning matters more.
                    warn!(error = %err, path = %self.socket.path().display(), "cannot accept a control connection");
                    return;
                }
            };
            let (peer_pid, peer_uid) = match peer_credentials(&stream) {
                Ok(creds) => creds,
                Err(err) => {
                    warn!(error = %err, "cannot read control peer credentials; closing");
                    continue;
                }
            };
            if !peer_allowed(peer_uid, self.master_euid) {
                warn!(
                    peer_pid,
                    peer_uid,
                    master_uid = self.master_euid,
                    "control connection refused: peer uid is neither the master's nor root"
                );
                continue;
            }
            if self.clients.len() >= MAX_CLIENTS {
                warn!(
                    peer_pid,
                    peer_uid,
                    clients = self.clients.len(),
                    "too many control connections; refusing"
                );
                continue;
            }
            if let Err(err) = stream.set_nonblocking(true) {
                warn!(peer_pid, error = %err, "cannot set a control connection non-blocking");
                continue;
            }
            let token = next_token();
            let channel = Channel::with_limits(stream, CONTROL_SERVER_LIMITS);
            if let Err(err) = registry.register(
                &mut SourceFd(&channel.as_raw_fd()),
                token,
                Interest::READABLE,
            ) {
                warn!(peer_pid, error = %err, "cannot register a control connection");
                continue;
            }
            debug!(peer_pid, peer_uid, "control client connected");
            self.clients.insert(
                token,
                Client {
                    channel,
                    peer_pid,
                    peer_uid,
                    greeted: false,
                    busy: false,
                    last_activity: Instant::now(),
                    wants_write: false,
                    output_stuck_since: None,
                    queued: 0,
                },
            );
            // A Hello already waiting is reported too: epoll checks readiness on registration.
        }
    }

    /// Read what the client sent. Returns the requests to act on (after the handshake); the
    /// client is marked busy for each. Protocol errors answer `Failed` and close the client.
    pub fn handle_event(
        &mut self,
        registry: &Registry,
        token: Token,
        writable: bool,
    ) -> Vec<ControlRequest> {
        let mut requests = Vec::new();
        if writable {
            self.flush(registry, token);
        }
        loop {
            let Some(client) = self.clients.get_mut(&token) else {
                return requests;
            };
            let frame = match client.channel.recv() {
                Ok(Some(frame)) => frame,
                Ok(None) => return requests,
                Err(err) => {
                    self.protocol_error(registry, token, err);
                    return requests;
                }
            };
            let request = match frame.deserialize::<ControlRequest>() {
                Ok(request) => request,
                Err(err) => {
                    self.protocol_error(registry, token, err);
                    return requests;
                }
            };
            let Some(client) = self.clients.get_mut(&token) else {
                return requests;
            };
            client.last_activity = Instant::now();
            match (client.greeted, request) {
                (false, ControlRequest::Hello(hello)) => {
                    if let Err(err) =
                        check_version_of(CONTROL_PROTOCOL_VERSION, hello.protocol_version)
                    {
                        let message = format!(
                            "protocol version mismatch: master speaks {CONTROL_PROTOCOL_VERSION}, client (pid {}, version {}) speaks {}",
                            hello.pid, hello.software_version, hello.protocol_version
                        );
                        warn!(peer_pid = client.peer_pid, error = %err, "{message}");
                        self.fail_and_close(registry, token, message);
                        return requests;
                    }
                    client.greeted = true;
                    let reply = ControlResponse::Hello(Hello {
                        protocol_version: CONTROL_PROTOCOL_VERSION,
                        pid: std::process::id(),
                        software_version: env!("CARGO_PKG_VERSION").to_owned(),
                    });
                    self.send(registry, token, &reply);
                }
                (false, other) => {
                    let message = format!("expected Hello first, got {}", other.kind());
                    warn!(peer_pid = client.peer_pid, "control client {message}");
                    self.fail_and_close(registry, token, message);
                    return requests;
                }
                (true, ControlRequest::Hello(_)) => {
                    self.send(
                        registry,
                        token,
                        &ControlResponse::Failed {
                            message: "Hello was already exchanged".to_owned(),
                        },
                    );
                }
                (true, request) => {
                    if client.busy {
                        self.send(
                            registry,
                            token,
                            &ControlResponse::Failed {
                                message: format!(
                                    "{} refused: the previous request on this connection is still in progress",
                                    request.kind()
                                ),
                            },
                        );
                        continue;
                    }
                    client.busy = true;
                    info!(
                        peer_pid = client.peer_pid,
                        peer_uid = client.peer_uid,
                        request = request.kind(),
                        "control request"
                    );
                    requests.push(request);
                }
            }
        }
    }

    /// The raw fd of a client's connection (handed to a successor master with its request).
    pub fn client_fd(&self, token: Token) -> Option<std::os::fd::RawFd> {
        self.clients.get(&token).map(|c| c.channel.as_raw_fd())
    }

    /// Whether output waits for the client to read it (a hand-over waits for it to drain,
    /// in the loop, before the client's fd is handed over).
    pub fn client_output_pending(&self, token: Token) -> bool {
        self.clients
            .get(&token)
            .is_some_and(|c| c.channel.has_pending_output())
    }

    /// Take over a client connection inherited from the previous master in the middle of its
    /// request (master upgrade): already greeted, and busy until the request is finished.
    pub fn adopt_client(
        &mut self,
        registry: &Registry,
        token: Token,
        stream: UnixStream,
    ) -> io::Result<()> {
        stream.set_nonblocking(true)?;
        let (peer_pid, peer_uid) = peer_credentials(&stream).unwrap_or((0, 0));
        let channel = Channel::with_limits(stream, CONTROL_SERVER_LIMITS);
        registry.register(
            &mut SourceFd(&channel.as_raw_fd()),
            token,
            Interest::READABLE,
        )?;
        self.clients.insert(
            token,
            Client {
                channel,
                peer_pid,
                peer_uid,
                greeted: true,
                busy: true,
                last_activity: Instant::now(),
                wants_write: false,
                output_stuck_since: None,
                queued: 0,
            },
        );
        Ok(())
    }

    /// Leave the socket file alone on drop (a successor master owns it now).
    pub fn keep_socket_file(&mut self) {
        self.socket.keep_file();
    }

    /// The listening socket's raw fd (handed to a successor master).
    pub fn listener_fd(&self) -> std::os::fd::RawFd {
        self.socket.listener().as_raw_fd()
    }

    /// Send any response (progress of an upgrade, which has its own response kinds).
    pub fn respond(&mut self, registry: &Registry, token: Token, response: &ControlResponse) {
        self.send(registry, token, response);
    }

    /// Queue an intermediate response (the request stays in progress).
    pub fn progress(&mut self, registry: &Registry, token: Token, message: String) {
        self.send(registry, token, &ControlResponse::Progress { message });
    }

    /// Queue the final response of the client's request.
    pub fn finish(&mut self, registry: &Registry, token: Token, response: &ControlResponse) {
        if let Some(client) = self.clients.get_mut(&token) {
            client.busy = false;
            client.last_activity = Instant::now();
        }
        self.send(registry, token, response);
    }

    fn send(&mut self, registry: &Registry, token: Token, response: &ControlResponse) {
        let Some(client) = self.clients.get_mut(&token) else {
            return; // the client went away; the operation carries on without it
        };
        let result = client.channel.send(response, &[]);
        match result {
            Ok(true) => {
                client.queued = 0;
                client.output_stuck_since = None;
            }
            Ok(false) => {
                client.queued += 1;
                client.output_stuck_since.get_or_insert_with(Instant::now);
                if client.queued > MAX_QUEUED_RESPONSES {
                    warn!(
                        peer_pid = client.peer_pid,
                        queued = client.queued,
                        "control client does not read its responses; closing"
                    );
                    self.close(registry, token);
                    return;
                }
            }
            Err(err) => {
                debug!(peer_pid = client.peer_pid, error = %err, "cannot write to control client; closing");
                self.close(registry, token);
                return;
            }
        }
        self.update_interest(registry, token);
    }

    fn flush(&mut self, registry: &Registry, token: Token) {
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        match client.channel.flush() {
            Ok(true) => {
                client.queued = 0;
                client.output_stuck_since = None;
            }
            Ok(false) => {}
            Err(err) => {
                debug!(peer_pid = client.peer_pid, error = %err, "cannot write to control client; closing");
                self.close(registry, token);
                return;
            }
        }
        self.update_interest(registry, token);
    }

    fn update_interest(&mut self, registry: &Registry, token: Token) {
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        let wants_write = client.channel.has_pending_output();
        if wants_write == client.wants_write {
            return;
        }
        let interest = if wants_write {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        match registry.reregister(&mut SourceFd(&client.channel.as_raw_fd()), token, interest) {
            Ok(()) => client.wants_write = wants_write,
            Err(err) => {
                warn!(peer_pid = client.peer_pid, error = %err, "cannot update a control client's interest; closing");
                self.close(registry, token);
            }
        }
    }

    fn protocol_error(&mut self, registry: &Registry, token: Token, err: ProtocolError) {
        let Some(client) = self.clients.get(&token) else {
            return;
        };
        if err.is_closed() {
            debug!(peer_pid = client.peer_pid, "control client disconnected");
            self.close(registry, token);
            return;
        }
        warn!(peer_pid = client.peer_pid, peer_uid = client.peer_uid, error = %err, "invalid control request; closing the connection");
        self.fail_and_close(registry, token, format!("invalid request: {err}"));
    }

    /// Best effort: one small frame on a socket that just had room almost always goes out
    /// whole; if it does not, the client sees the connection close instead.
    fn fail_and_close(&mut self, registry: &Registry, token: Token, message: String) {
        if let Some(client) = self.clients.get_mut(&token) {
            let _ = client
                .channel
                .send(&ControlResponse::Failed { message }, &[]);
            let _ = client.channel.stream().shutdown(std::net::Shutdown::Write);
        }
        self.close(registry, token);
    }

    pub fn close(&mut self, registry: &Registry, token: Token) {
        if let Some(client) = self.clients.remove(&token) {
            let _ = registry.deregister(&mut SourceFd(&client.channel.as_raw_fd()));
        }
    }

    /// Close clients that are idle too long or do not read their output.
    pub fn run_timers(&mut self, registry: &Registry, now: Instant) {
        let expired: Vec<(Token, &'static str)> = self
            .clients
            .iter()
            .filter_map(|(&token, client)| {
                if client
                    .output_stuck_since
                    .is_some_and(|at| at + CLIENT_WRITE_TIMEOUT <= now)
                {
                    Some((token, "does not read its responses"))
                } else if !client.busy && client.last_activity + CLIENT_IDLE_TIMEOUT <= now {
                    Some((token, "idle"))
                } else {
                    None
                }
            })
            .collect();
        for (token, why) in expired {
            if let Some(client) = self.clients.get(&token) {
                info!(
                    peer_pid = client.peer_pid,
                    timeout_s = CLIENT_IDLE_TIMEOUT.as_secs(),
                    "closing control client: {why}"
                );
            }
            self.close(registry, token);
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.clients
            .values()
            .filter_map(|client| {
                let write = client
                    .output_stuck_since
                    .map(|at| at + CLIENT_WRITE_TIMEOUT);
                let idle = (!client.busy).then_some(client.last_activity + CLIENT_IDLE_TIMEOUT);
                match (write, idle) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            })
            .min()
    }

    /// Whether any client has output waiting to be read (the exit waits for it, bounded).
    pub fn output_pending(&self) -> bool {
        self.clients
            .values()
            .any(|c| c.channel.has_pending_output())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_check_allows_same_uid_and_root_only() {
        assert!(peer_allowed(1000, 1000));
        assert!(peer_allowed(0, 1000));
        assert!(peer_allowed(0, 0));
        assert!(!peer_allowed(65534, 1000));
        assert!(!peer_allowed(1000, 0));
    }

    #[test]
    fn peer_credentials_of_a_real_socket_are_ours() {
        let (a, _b) = UnixStream::pair().unwrap();
        let (pid, uid) = peer_credentials(&a).unwrap();
        assert_eq!(pid, std::process::id() as i32);
        assert_eq!(uid, nix::unistd::geteuid().as_raw());
    }
}
