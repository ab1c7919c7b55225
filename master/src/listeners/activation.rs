//! Sockets passed by systemd (`LISTEN_FDS`): checked, claimed by a listener's address, and kept
//! for the master's whole life so that [`super::bind_listener`] duplicates them instead of
//! binding.

use std::net::SocketAddr;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::{Mutex, MutexGuard};

use socket2::Type;
use zentinel_protocol::config::ListenerConfig;

use super::{BoundListener, ListenerError};
use crate::systemd::ActivatedSocket;

/// A socket systemd passed us, checked: a listening TCP socket bound to `address`.
#[derive(Debug)]
struct Activated {
    fd: OwnedFd,
    address: SocketAddr,
    number: RawFd,
    name: Option<String>,
}

/// The socket-activated sockets, kept for the master's whole life (a duplicate goes to each
/// listener using one). Keeping them costs nothing: systemd holds its own copy, so the kernel
/// socket lives on anyway. It is what lets a listener removed by a reload and re-added by a
/// later one get its socket back, where binding would fail with EADDRINUSE against systemd's
/// copy. A master started by a binary upgrade starts with an empty set: it inherits the
/// sockets in use as ordinary listeners, not the unused ones.
static ACTIVATED: Mutex<Vec<Activated>> = Mutex::new(Vec::new());

fn activated() -> MutexGuard<'static, Vec<Activated>> {
    // The master is single-threaded; a poisoned lock still holds valid fds.
    ACTIVATED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Same address for listening purposes: IP and port (a configured IPv6 address carries no
/// flow info, and scope ids are part of the IP's meaning only for link-local addresses).
fn same_address(a: SocketAddr, b: SocketAddr) -> bool {
    match (a, b) {
        (SocketAddr::V6(a), SocketAddr::V6(b)) => {
            a.ip() == b.ip() && a.port() == b.port() && a.scope_id() == b.scope_id()
        }
        _ => a == b,
    }
}

/// Take over the sockets systemd passed (`LISTEN_FDS`): check that each is a listening TCP
/// socket and that a listener in `listeners` has its address, then keep it for
/// [`bind_listener`](super::bind_listener). An unusable or unclaimed socket is an error naming
/// its fd number, name and address; nothing is kept then. Returns the number of sockets
/// adopted.
pub fn adopt_activated(
    sockets: Vec<ActivatedSocket>,
    listeners: &[ListenerConfig],
) -> Result<usize, ListenerError> {
    let mut checked = Vec::with_capacity(sockets.len());
    for socket in sockets {
        let bad = |reason: String| ListenerError::Activated {
            fd: socket.number,
            fd_name: socket.name.clone(),
            reason,
        };
        let sock = socket2::SockRef::from(&socket.fd);
        let address = match sock.local_addr().map(|a| (a.as_socket(), a)) {
            Ok((Some(address), _)) => address,
            Ok((None, other)) => {
                return Err(bad(format!(
                    "not an IP socket ({}); Zentinel listens on TCP only",
                    other
                        .as_pathname()
                        .map_or_else(|| "unix socket".to_owned(), |p| p.display().to_string())
                )))
            }
            Err(err) => return Err(bad(format!("not a socket: {err}"))),
        };
        match sock.r#type() {
            Ok(ty) if ty == Type::STREAM => {}
            Ok(_) => {
                return Err(bad(format!(
                "{address} is not a stream socket (ListenStream= is needed, not ListenDatagram=)"
            )))
            }
            Err(err) => {
                return Err(bad(format!(
                    "{address}: cannot read the socket type: {err}"
                )))
            }
        }
        match sock.is_listener() {
            Ok(true) => {}
            Ok(false) => {
                return Err(bad(format!(
                    "{address} is not listening (Accept=yes sockets are not supported)"
                )))
            }
            Err(err) => return Err(bad(format!("{address}: {err}"))),
        }
        let claimed = listeners.iter().any(|listener| {
            listener
                .address
                .parse::<SocketAddr>()
                .is_ok_and(|configured| same_address(configured, address))
        });
        if !claimed {
            let configured: Vec<String> = listeners
                .iter()
                .map(|l| format!("\"{}\" {}", l.name, l.address))
                .collect();
            return Err(bad(format!(
                "it listens on {address}, but no listener has that address (configured: {}); \
                 add a listener with address \"{address}\" or remove the socket from the socket unit",
                if configured.is_empty() {
                    "none".to_owned()
                } else {
                    configured.join(", ")
                }
            )));
        }
        if let Err(err) = sock.set_nonblocking(true) {
            return Err(bad(format!("{address}: cannot set O_NONBLOCK: {err}")));
        }
        checked.push(Activated {
            fd: socket.fd,
            address,
            number: socket.number,
            name: socket.name,
        });
    }
    let count = checked.len();
    activated().extend(checked);
    Ok(count)
}

/// A duplicate of the socket-activated socket for `address`, if systemd passed one.
pub(super) fn activated_listener(
    config: &ListenerConfig,
    address: SocketAddr,
) -> Result<Option<BoundListener>, ListenerError> {
    let registry = activated();
    let Some(entry) = registry.iter().find(|a| same_address(a.address, address)) else {
        return Ok(None);
    };
    let fd = entry
        .fd
        .try_clone()
        .map_err(|source| ListenerError::Socket {
            name: config.name.clone(),
            address,
            step: "duplicate the socket passed by systemd",
            source,
        })?;
    tracing::info!(
        listener = %config.name,
        address = %entry.address,
        fd = entry.number,
        fd_name = entry.name.as_deref().unwrap_or(""),
        "using the socket passed by systemd instead of binding"
    );
    Ok(Some(BoundListener {
        name: config.name.clone(),
        local_address: entry.address,
        protocol: config.protocol,
        fd,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

    use socket2::{Domain, Socket};

    use crate::listeners::bind_listener;
    use crate::listeners::tests::{fd_flags, listener_config};
    fn activated_socket(fd: OwnedFd, name: &str) -> ActivatedSocket {
        ActivatedSocket {
            number: fd.as_raw_fd(),
            fd,
            name: Some(name.to_owned()),
        }
    }

    fn inode(fd: BorrowedFd<'_>) -> u64 {
        nix::sys::stat::fstat(fd).unwrap().st_ino
    }

    #[test]
    fn an_activated_socket_is_duplicated_instead_of_bound() {
        let passed = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = passed.local_addr().unwrap();
        let passed_inode = inode(passed.as_fd());
        let adopted = adopt_activated(
            vec![activated_socket(OwnedFd::from(passed), "web.socket")],
            &[listener_config("web", &address.to_string())],
        )
        .unwrap();
        assert_eq!(adopted, 1);
        // Binding would fail with EADDRINUSE: the passed socket still holds the port.
        let first = bind_listener(&listener_config("web", &address.to_string())).unwrap();
        assert_eq!(inode(first.fd()), passed_inode);
        assert_eq!(first.local_address(), address);
        let (fd_flags, fl_flags) = fd_flags(first.fd());
        assert_ne!(fd_flags & libc::FD_CLOEXEC, 0, "CLOEXEC not set");
        assert_ne!(fl_flags & libc::O_NONBLOCK, 0, "O_NONBLOCK not set");
        // Removed by a reload (dropped) and re-added: the same socket comes back.
        drop(first);
        let again = bind_listener(&listener_config("web-again", &address.to_string())).unwrap();
        assert_eq!(inode(again.fd()), passed_inode);
        assert_eq!(again.name(), "web-again");
        TcpStream::connect(address).unwrap();
    }

    #[test]
    fn an_unclaimed_activated_socket_names_fd_name_and_address() {
        let passed = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = passed.local_addr().unwrap();
        let socket = activated_socket(OwnedFd::from(passed), "stray.socket");
        let number = socket.number;
        let err =
            adopt_activated(vec![socket], &[listener_config("web", "127.0.0.1:1")]).unwrap_err();
        let message = err.to_string();
        assert!(message.contains(&format!("fd {number}")), "{message}");
        assert!(message.contains("stray.socket"), "{message}");
        assert!(message.contains(&address.to_string()), "{message}");
        assert!(message.contains("\"web\" 127.0.0.1:1"), "{message}");
        // Nothing was kept: the address binds normally again once the socket is gone.
        let rebound = bind_listener(&listener_config("web", &address.to_string())).unwrap();
        assert_ne!(rebound.local_address().port(), 0);
    }

    #[test]
    fn activated_sockets_that_do_not_listen_are_refused() {
        let datagram = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let address = datagram.local_addr().unwrap();
        let err = adopt_activated(
            vec![activated_socket(OwnedFd::from(datagram), "udp.socket")],
            &[listener_config("u", &address.to_string())],
        )
        .unwrap_err();
        assert!(err.to_string().contains("not a stream socket"), "{err}");

        let unbound = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        unbound
            .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        let address = unbound.local_addr().unwrap().as_socket().unwrap();
        let err = adopt_activated(
            vec![activated_socket(OwnedFd::from(unbound), "idle.socket")],
            &[listener_config("i", &address.to_string())],
        )
        .unwrap_err();
        assert!(err.to_string().contains("is not listening"), "{err}");
    }
}
