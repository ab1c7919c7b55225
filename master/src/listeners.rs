//! Binding the configured listening sockets.
//!
//! The master binds each address exactly once and keeps the socket for as long as the
//! address stays in the configuration; workers only ever receive duplicates of these fds
//! (docs/design/upgrades.md, "Listening sockets"). Closing the master's fd while a worker
//! still uses the socket is harmless, but closing the last fd drops the accept queue, so the
//! master holds them for the lifetime of the configuration.
//!
//! Under systemd socket activation the sockets of some addresses come ready-made
//! ([`adopt_activated`]); [`bind_listener`] then hands out a duplicate of the passed socket
//! instead of binding, and everything downstream (workers, reloads, upgrades) treats it like
//! one we bound ourselves. [`adopt_activated`] and the sockets it keeps are in `activation`.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use socket2::{Domain, Protocol, Socket, Type};
use zentinel_protocol::config::{ListenerConfig, ListenerProtocol};
use zentinel_protocol::messages::ListenerHandle;

mod activation;

use activation::activated_listener;
pub use activation::adopt_activated;

/// Why a listener could not be set up. Every variant names the listener and its address.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("listener \"{name}\": invalid address \"{address}\": {source}")]
    InvalidAddress {
        name: String,
        address: String,
        #[source]
        source: std::net::AddrParseError,
    },
    #[error("listener \"{name}\": cannot {step} for {address}: {source}")]
    Socket {
        name: String,
        address: SocketAddr,
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("listener \"{name}\": cannot bind {address}: {source}")]
    Bind {
        name: String,
        address: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("listener \"{name}\": cannot listen on {address}: {source}")]
    Listen {
        name: String,
        address: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// A socket passed by systemd that cannot be used: not a listening TCP socket, or no
    /// listener has its address.
    #[error("socket activation: fd {fd}{}: {reason}", fd_name_suffix(.fd_name))]
    Activated {
        fd: RawFd,
        fd_name: Option<String>,
        reason: String,
    },
}

fn fd_name_suffix(name: &Option<String>) -> String {
    name.as_ref()
        .map_or_else(String::new, |name| format!(" (name \"{name}\")"))
}

impl ListenerError {
    /// The underlying I/O error, if any (e.g. to test for `AddrInUse`).
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            ListenerError::InvalidAddress { .. } | ListenerError::Activated { .. } => None,
            ListenerError::Socket { source, .. }
            | ListenerError::Bind { source, .. }
            | ListenerError::Listen { source, .. } => Some(source),
        }
    }
}

/// A bound, listening, non-blocking, close-on-exec socket owned by the master.
#[derive(Debug)]
pub struct BoundListener {
    name: String,
    /// The address actually bound (differs from the configured one only for port 0).
    local_address: SocketAddr,
    protocol: ListenerProtocol,
    fd: OwnedFd,
}

impl BoundListener {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn local_address(&self) -> SocketAddr {
        self.local_address
    }

    pub fn protocol(&self) -> ListenerProtocol {
        self.protocol
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Another fd for the same kernel socket, under the name and protocol of `config` (a
    /// reload that keeps the address). Closing either fd leaves the socket open for the other.
    pub fn try_clone_as(&self, config: &ListenerConfig) -> io::Result<BoundListener> {
        Ok(BoundListener {
            name: config.name.clone(),
            local_address: self.local_address,
            protocol: config.protocol,
            fd: self.fd.try_clone()?,
        })
    }

    /// Take over a listening socket inherited across a master upgrade, after checking that it
    /// is what the state file says: a listening TCP stream socket bound to `address`. The fd
    /// gets close-on-exec again.
    pub fn adopt(fd: OwnedFd, config: &ListenerConfig, address: &str) -> io::Result<BoundListener> {
        let raw = fd.as_raw_fd();
        let bad = |what: String| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "listener \"{}\": inherited fd {raw} is not the listening socket of {address}: {what}",
                    config.name
                ),
            )
        };
        let socket = socket2::SockRef::from(&fd);
        match socket.r#type() {
            Ok(ty) if ty == Type::STREAM => {}
            Ok(ty) => return Err(bad(format!("socket type {ty:?}"))),
            Err(err) => return Err(bad(err.to_string())),
        }
        match socket.is_listener() {
            Ok(true) => {}
            Ok(false) => return Err(bad("not listening".to_owned())),
            Err(err) => return Err(bad(err.to_string())),
        }
        let local = socket
            .local_addr()
            .map_err(|err| bad(err.to_string()))?
            .as_socket()
            .ok_or_else(|| bad("not an IP socket".to_owned()))?;
        if local.to_string() != address {
            return Err(bad(format!("it is bound to {local}")));
        }
        socket.set_cloexec(true)?;
        socket.set_nonblocking(true)?;
        Ok(BoundListener {
            name: config.name.clone(),
            local_address: local,
            protocol: config.protocol,
            fd,
        })
    }

    /// What a worker is told about this socket; it checks the fd's local address against it.
    pub fn handle(&self) -> ListenerHandle {
        ListenerHandle {
            name: self.name.clone(),
            address: self.local_address.to_string(),
        }
    }
}

impl AsFd for BoundListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Bind every listener, in configuration order. Stops at the first failure; sockets bound
/// before it are closed when the partial result is dropped.
pub fn bind_all(listeners: &[ListenerConfig]) -> Result<Vec<BoundListener>, ListenerError> {
    listeners.iter().map(bind_listener).collect()
}

/// [`bind_all`] for a master starting up: an address in use is retried every 250 ms for up to
/// `patience`. A master restarted right after a crash (SIGKILL, OOM) finds its orphaned
/// workers still holding the old listening sockets for the moment they need to notice and
/// stop accepting; like nginx, wait for them instead of failing the restart.
pub fn bind_all_at_start(
    listeners: &[ListenerConfig],
    patience: std::time::Duration,
) -> Result<Vec<BoundListener>, ListenerError> {
    let deadline = std::time::Instant::now() + patience;
    loop {
        match bind_all(listeners) {
            Err(err)
                if err
                    .io_error()
                    .is_some_and(|e| e.kind() == io::ErrorKind::AddrInUse)
                    && std::time::Instant::now() < deadline =>
            {
                tracing::warn!(error = %err, "address in use; retrying in 250 ms");
                std::thread::sleep(std::time::Duration::from_millis(250));
            }
            result => return result,
        }
    }
}

/// Create, configure, bind and listen one socket; or, when systemd passed a socket for the
/// address ([`adopt_activated`]), duplicate that one (its options, backlog included, are the
/// socket unit's).
pub fn bind_listener(config: &ListenerConfig) -> Result<BoundListener, ListenerError> {
    let address: SocketAddr =
        config
            .address
            .parse()
            .map_err(|source| ListenerError::InvalidAddress {
                name: config.name.clone(),
                address: config.address.clone(),
                source,
            })?;
    if let Some(bound) = activated_listener(config, address)? {
        return Ok(bound);
    }
    let socket_err = |step: &'static str| {
        let name = config.name.clone();
        move |source: io::Error| ListenerError::Socket {
            name,
            address,
            step,
            source,
        }
    };

    // socket2 sets SOCK_CLOEXEC; the flag stays on for the master's copy. Only the fds
    // duplicated to a worker (with MSG_CMSG_CLOEXEC on its side) ever cross a process boundary.
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )
    .map_err(socket_err("create a socket"))?;
    // Lets a restarted zentinel bind while connections of the previous one sit in TIME_WAIT.
    socket
        .set_reuse_address(true)
        .map_err(socket_err("set SO_REUSEADDR"))?;
    if address.is_ipv6() {
        // `[::]:80` must not also grab the IPv4 port: a separate `0.0.0.0:80` listener is
        // legal configuration and would otherwise fail with EADDRINUSE.
        socket
            .set_only_v6(true)
            .map_err(socket_err("set IPV6_V6ONLY"))?;
    }
    socket
        .set_nonblocking(true)
        .map_err(socket_err("set O_NONBLOCK"))?;
    socket
        .bind(&address.into())
        .map_err(|source| ListenerError::Bind {
            name: config.name.clone(),
            address,
            source,
        })?;
    let backlog = i32::try_from(config.backlog).unwrap_or(i32::MAX);
    socket
        .listen(backlog)
        .map_err(|source| ListenerError::Listen {
            name: config.name.clone(),
            address,
            source,
        })?;
    let local_address = socket
        .local_addr()
        .map_err(socket_err("read the local address"))?
        .as_socket()
        .unwrap_or(address);

    Ok(BoundListener {
        name: config.name.clone(),
        local_address,
        protocol: config.protocol,
        fd: socket.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    use socket2::SockRef;
    use zentinel_protocol::config::DEFAULT_BACKLOG;

    pub(super) fn listener_config(name: &str, address: &str) -> ListenerConfig {
        ListenerConfig {
            route_scope: None,
            max_concurrent_streams: 100,
            keepalive_max_requests: 0,
            name: name.to_owned(),
            address: address.to_owned(),
            protocol: ListenerProtocol::Http,
            backlog: DEFAULT_BACKLOG,
            request_timeout_secs: 60,
            keepalive_timeout_secs: 75,
            default_route: None,
            upstream: None,
            access_log: None,
            tls: None,
        }
    }

    pub(super) fn fd_flags(fd: BorrowedFd<'_>) -> (i32, i32) {
        let fd_flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        let fl_flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL).unwrap();
        (fd_flags, fl_flags)
    }

    fn assert_listening_socket(bound: &BoundListener) {
        let sock = SockRef::from(bound);
        assert_eq!(sock.r#type().unwrap(), Type::STREAM);
        assert!(sock.is_listener().unwrap(), "socket is not listening");
        assert!(sock.reuse_address().unwrap(), "SO_REUSEADDR not set");
        let (fd_flags, fl_flags) = fd_flags(bound.fd());
        assert_ne!(fd_flags & libc::FD_CLOEXEC, 0, "CLOEXEC not set");
        assert_ne!(fl_flags & libc::O_NONBLOCK, 0, "O_NONBLOCK not set");
        // A real connection completes against the socket.
        TcpStream::connect(bound.local_address()).unwrap();
    }

    #[test]
    fn binds_ipv4() {
        let bound = bind_listener(&listener_config("v4", "127.0.0.1:0")).unwrap();
        assert_eq!(bound.name(), "v4");
        assert!(bound.local_address().is_ipv4());
        assert_ne!(bound.local_address().port(), 0, "port 0 must resolve");
        assert_eq!(bound.handle().address, bound.local_address().to_string());
        assert_eq!(bound.handle().name, "v4");
        assert_listening_socket(&bound);
    }

    #[test]
    fn binds_ipv6_loopback_v6only() {
        let bound = bind_listener(&listener_config("v6", "[::1]:0")).unwrap();
        assert_eq!(
            bound.local_address().ip(),
            "::1".parse::<std::net::IpAddr>().unwrap()
        );
        assert!(
            SockRef::from(&bound).only_v6().unwrap(),
            "IPV6_V6ONLY not set"
        );
        assert_listening_socket(&bound);
    }

    #[test]
    fn ipv6_wildcard_leaves_the_ipv4_port_free() {
        let v6 = bind_listener(&listener_config("any6", "[::]:0")).unwrap();
        let port = v6.local_address().port();
        let v4 = bind_listener(&listener_config("any4", &format!("0.0.0.0:{port}")));
        assert!(v4.is_ok(), "IPv4 bind on the v6 port failed: {v4:?}");
    }

    #[test]
    fn address_in_use_names_the_listener_and_address() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = taken.local_addr().unwrap();
        let err = bind_listener(&listener_config("public", &address.to_string())).unwrap_err();
        assert_eq!(
            err.io_error().map(io::Error::kind),
            Some(io::ErrorKind::AddrInUse)
        );
        let message = err.to_string();
        assert!(message.contains("listener \"public\""), "{message}");
        assert!(message.contains(&address.to_string()), "{message}");
    }

    #[test]
    fn invalid_address_names_the_listener() {
        let err = bind_listener(&listener_config("broken", "localhost:80")).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("listener \"broken\""), "{message}");
        assert!(message.contains("localhost:80"), "{message}");
    }

    #[test]
    fn bind_all_keeps_order_and_fails_on_the_first_error() {
        let all = bind_all(&[
            listener_config("a", "127.0.0.1:0"),
            listener_config("b", "[::1]:0"),
        ])
        .unwrap();
        let names: Vec<&str> = all.iter().map(BoundListener::name).collect();
        assert_eq!(names, ["a", "b"]);

        let taken = all[0].local_address().to_string();
        let err = bind_all(&[
            listener_config("c", "127.0.0.1:0"),
            listener_config("dup", &taken),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("listener \"dup\""), "{err}");
    }
}
