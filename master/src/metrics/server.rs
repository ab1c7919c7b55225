//! The admin listener and its scrape connections, non-blocking on the master's mio loop: each
//! bounded in size, time and number, every answer followed by a close.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use tracing::{debug, warn};
use zentinel_protocol::config::MetricsConfig;

use super::response::{answer, head_end, simple};

/// Longest request head accepted.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// A scrape connection is closed after this long, whatever its state.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections beyond this are closed on accept.
pub const MAX_CONNECTIONS: usize = 64;

struct Conn {
    stream: TcpStream,
    input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
    deadline: Instant,
    /// The response is queued (input is no longer read).
    responding: bool,
    writable_registered: bool,
}

/// The admin listener and its connections.
pub struct MetricsServer {
    listener: TcpListener,
    config: MetricsConfig,
    local: SocketAddr,
    token: Option<Token>,
    conns: BTreeMap<Token, Conn>,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("address", &self.local)
            .field("path", &self.config.path)
            .field("connections", &self.conns.len())
            .finish()
    }
}

impl MetricsServer {
    /// Bind `config.address` (SO_REUSEADDR, non-blocking, close-on-exec). Not polled yet.
    pub fn bind(config: MetricsConfig) -> io::Result<MetricsServer> {
        let addr: SocketAddr = config.address.parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("metrics address {:?} is not IP:port", config.address),
            )
        })?;
        let listener = TcpListener::bind(addr).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot bind the metrics address {addr}: {e}"),
            )
        })?;
        let local = listener.local_addr()?;
        Ok(MetricsServer {
            listener,
            config,
            local,
            token: None,
            conns: BTreeMap::new(),
        })
    }

    /// Take over the listening socket inherited from the previous master, after checking it
    /// listens on the address the state file recorded.
    pub fn from_fd(
        fd: OwnedFd,
        config: MetricsConfig,
        expected_address: &str,
    ) -> io::Result<MetricsServer> {
        let listening = nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::AcceptConn)
            .map_err(|e| {
                io::Error::other(format!("inherited metrics socket {expected_address}: {e}"))
            })?;
        if !listening {
            return Err(io::Error::other(format!(
                "inherited metrics socket {expected_address} is not listening"
            )));
        }
        let std_listener = std::net::TcpListener::from(fd);
        std_listener.set_nonblocking(true)?;
        let local = std_listener.local_addr()?;
        if local.to_string() != expected_address {
            return Err(io::Error::other(format!(
                "inherited metrics socket is bound to {local}, expected {expected_address}"
            )));
        }
        Ok(MetricsServer {
            listener: TcpListener::from_std(std_listener),
            config,
            local,
            token: None,
            conns: BTreeMap::new(),
        })
    }

    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(&mut self.listener, token, Interest::READABLE)?;
        self.token = Some(token);
        Ok(())
    }

    pub fn config(&self) -> &MetricsConfig {
        &self.config
    }

    /// A reload keeping the address may change the path.
    pub fn set_path(&mut self, path: String) {
        self.config.path = path;
    }

    pub fn local_address(&self) -> SocketAddr {
        self.local
    }

    /// The listening fd, inherited by a successor master.
    pub fn raw_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// Binary upgrade: stop accepting (connections wait in the kernel backlog for the new
    /// master, which polls the same socket) while finishing the ones already accepted, so
    /// that no scrape is cut when this master leaves.
    pub fn pause(&mut self, registry: &Registry) {
        if self.token.is_some() {
            let _ = registry.deregister(&mut self.listener);
        }
    }

    /// The upgrade failed: accept again.
    pub fn resume(&mut self, registry: &Registry) {
        if let Some(token) = self.token {
            if let Err(e) = registry.register(&mut self.listener, token, Interest::READABLE) {
                warn!(address = %self.local, error = %e, "metrics: cannot poll the endpoint again");
            }
        }
    }

    pub fn owns(&self, token: Token) -> bool {
        self.token == Some(token) || self.conns.contains_key(&token)
    }

    /// Deregister everything and close the connections (the listener closes on drop).
    pub fn shutdown(&mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.listener);
        for (_, mut conn) in std::mem::take(&mut self.conns) {
            let _ = registry.deregister(&mut conn.stream);
        }
        self.token = None;
    }

    /// Handle readiness of `token` (the listener or a connection). `render` builds the
    /// exposition, called only when a valid scrape asks for it.
    pub fn handle_event(
        &mut self,
        registry: &Registry,
        token: Token,
        mut alloc: impl FnMut() -> Token,
        render: impl FnOnce() -> String,
        now: Instant,
    ) {
        if self.token == Some(token) {
            self.accept_all(registry, &mut alloc, now);
            return;
        }
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let keep = drive(conn, registry, token, &self.config.path, render);
        if !keep {
            if let Some(mut conn) = self.conns.remove(&token) {
                let _ = registry.deregister(&mut conn.stream);
            }
        }
    }

    fn accept_all(&mut self, registry: &Registry, alloc: &mut impl FnMut() -> Token, now: Instant) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, peer)) => {
                    if self.conns.len() >= MAX_CONNECTIONS {
                        debug!(%peer, "metrics: too many scrape connections; closing");
                        continue;
                    }
                    let token = alloc();
                    if let Err(e) = registry.register(&mut stream, token, Interest::READABLE) {
                        warn!(%peer, error = %e, "metrics: cannot poll a scrape connection");
                        continue;
                    }
                    self.conns.insert(
                        token,
                        Conn {
                            stream,
                            input: Vec::new(),
                            output: Vec::new(),
                            written: 0,
                            deadline: now + CONNECTION_TIMEOUT,
                            responding: false,
                            writable_registered: false,
                        },
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ECONNABORTED, EMFILE...: the next readiness retries.
                    warn!(address = %self.local, error = %e, "metrics: accept failed");
                    return;
                }
            }
        }
    }

    /// Close connections past their deadline.
    pub fn expire(&mut self, registry: &Registry, now: Instant) {
        let expired: Vec<Token> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for token in expired {
            if let Some(mut conn) = self.conns.remove(&token) {
                debug!("metrics: scrape connection timed out");
                let _ = registry.deregister(&mut conn.stream);
            }
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.conns.values().map(|c| c.deadline).min()
    }
}

/// Read the head, queue the answer, write it. Returns false when the connection is done.
fn drive(
    conn: &mut Conn,
    registry: &Registry,
    token: Token,
    path: &str,
    render: impl FnOnce() -> String,
) -> bool {
    if !conn.responding {
        let mut buf = [0u8; 2048];
        let mut eof = false;
        loop {
            match conn.stream.read(&mut buf) {
                // A client may half-close right after its request: answer what arrived.
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    conn.input.extend_from_slice(&buf[..n]);
                    if conn.input.len() > MAX_REQUEST_BYTES {
                        conn.output = simple(431, "request head too large\n");
                        conn.responding = true;
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        if !conn.responding {
            let Some(end) = head_end(&conn.input) else {
                // Wait for the rest (bounded by size and deadline), unless none can come.
                return !eof;
            };
            conn.output = answer(&conn.input[..end], path, render);
            conn.responding = true;
        }
    }
    loop {
        match conn.stream.write(&conn.output[conn.written..]) {
            Ok(0) => return false,
            Ok(n) => {
                conn.written += n;
                if conn.written == conn.output.len() {
                    let _ = conn.stream.shutdown(Shutdown::Write);
                    return false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !conn.writable_registered {
                    if registry
                        .reregister(&mut conn.stream, token, Interest::WRITABLE)
                        .is_err()
                    {
                        return false;
                    }
                    conn.writable_registered = true;
                }
                return true;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}
