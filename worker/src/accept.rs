//! The listener set: the listening sockets handed over by the master, held in a dedicated
//! epoll instance with `EPOLLEXCLUSIVE` so one new connection wakes one worker, not all of
//! them (design note "thundering herd"). That epoll fd is registered in the mio `Poll`.
//!
//! The worker never binds a socket and never closes the kernel socket for others: dropping the
//! set closes only this worker's duplicate fds, so the accept queue lives on for the other
//! workers while this one drains.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use mio::unix::SourceFd;
use mio::{Interest, Registry};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use socket2::{Socket, Type};

use crate::tokens;

#[derive(Debug)]
pub struct Listener {
    pub name: String,
    pub socket: TcpListener,
}

/// Check a received fd and turn it into a listener: it must be a stream socket, listening,
/// bound to exactly `expected` (the address the master says it bound).
pub fn adopt_listener(
    fd: OwnedFd,
    name: &str,
    expected: &str,
) -> Result<(TcpListener, SocketAddr), String> {
    let expected: SocketAddr = expected
        .parse()
        .map_err(|e| format!("listener `{name}`: address `{expected}` does not parse: {e}"))?;
    let sock = Socket::from(fd);
    let ty = sock
        .r#type()
        .map_err(|e| format!("listener `{name}`: getsockopt(SO_TYPE): {e}"))?;
    if ty != Type::STREAM {
        return Err(format!(
            "listener `{name}`: received fd is not a stream socket"
        ));
    }
    let listening = sock
        .is_listener()
        .map_err(|e| format!("listener `{name}`: getsockopt(SO_ACCEPTCONN): {e}"))?;
    if !listening {
        return Err(format!(
            "listener `{name}`: received fd is not a listening socket"
        ));
    }
    let local = sock
        .local_addr()
        .map_err(|e| format!("listener `{name}`: getsockname: {e}"))?
        .as_socket()
        .ok_or_else(|| format!("listener `{name}`: received fd is not an IP socket"))?;
    if local.ip() != expected.ip() || local.port() != expected.port() {
        return Err(format!(
            "listener `{name}`: received fd is bound to {local}, expected {expected}"
        ));
    }
    sock.set_cloexec(true)
        .map_err(|e| format!("listener `{name}`: set CLOEXEC: {e}"))?;
    // O_NONBLOCK lives on the open file description that every worker shares; all of them
    // want it (a blocking accept after another worker took the connection would hang the
    // loop), so setting it here changes nothing for the others.
    sock.set_nonblocking(true)
        .map_err(|e| format!("listener `{name}`: set O_NONBLOCK: {e}"))?;
    Ok((sock.into(), local))
}

pub struct ListenerSet {
    epoll: Epoll,
    listeners: Vec<Listener>,
    events: Vec<EpollEvent>,
}

pub enum Accepted {
    Conn {
        stream: TcpStream,
        peer: SocketAddr,
        listener: usize,
    },
    /// Nothing left to accept right now.
    Empty,
    /// A transient per-connection failure (ECONNABORTED, EPROTO...): try the next one.
    Transient(io::Error),
    /// Out of fds or memory: back off before accepting again.
    Exhausted(io::Error),
}

impl ListenerSet {
    pub fn new(listeners: Vec<Listener>) -> io::Result<Self> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(io::Error::from)?;
        for (i, l) in listeners.iter().enumerate() {
            epoll
                .add(
                    l.socket.as_fd(),
                    EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLEXCLUSIVE, i as u64),
                )
                .map_err(|e| {
                    io::Error::other(format!("epoll_ctl(ADD) listener `{}`: {e}", l.name))
                })?;
        }
        Ok(ListenerSet {
            epoll,
            events: vec![EpollEvent::empty(); listeners.len().max(1)],
            listeners,
        })
    }

    pub fn register(&self, registry: &Registry) -> io::Result<()> {
        let fd = self.epoll.0.as_raw_fd();
        registry.register(&mut SourceFd(&fd), tokens::LISTENERS, Interest::READABLE)
    }

    pub fn deregister(&self, registry: &Registry) -> io::Result<()> {
        let fd = self.epoll.0.as_raw_fd();
        registry.deregister(&mut SourceFd(&fd))
    }

    /// Indices of listeners with connections waiting (level-triggered inner epoll, zero wait).
    pub fn ready(&mut self) -> io::Result<Vec<usize>> {
        let n = loop {
            match self.epoll.wait(&mut self.events, EpollTimeout::ZERO) {
                Ok(n) => break n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        Ok(self.events[..n]
            .iter()
            .map(|e| e.data() as usize)
            .filter(|&i| i < self.listeners.len())
            .collect())
    }

    pub fn accept(&self, idx: usize) -> Accepted {
        let Some(l) = self.listeners.get(idx) else {
            return Accepted::Empty;
        };
        match l.socket.accept() {
            Ok((stream, peer)) => Accepted::Conn {
                stream,
                peer,
                listener: idx,
            },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Accepted::Empty,
            Err(e) => match e.raw_os_error() {
                Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                    Accepted::Exhausted(e)
                }
                Some(libc::ECONNABORTED | libc::EINTR | libc::EPROTO | libc::EPERM) => {
                    Accepted::Transient(e)
                }
                // Anything else is unexpected; backing off keeps it from spinning the loop.
                _ => Accepted::Exhausted(e),
            },
        }
    }
}
