//! The listener set: the listening sockets handed over by the master (docs/design/upgrades.md,
//! "Accepting").
//!
//! Each listening socket is added to the event loop's own epoll with `EPOLLEXCLUSIVE`, so a
//! new connection wakes one worker that is waiting in `epoll_wait`, not all of them; a busy
//! worker is not waiting, so the kernel hands the wakeup to an idle one, which spreads
//! connections over the workers. (Through a nested epoll fd, as before, the exclusive wakeup
//! never applied: the inner epoll has no waiter of its own, so the kernel went on to wake
//! every worker, and the first to run took a whole burst of connections.) A dedicated epoll
//! holding the same sockets, never waited on, answers which listeners have connections queued.
//!
//! The worker never binds a socket and never closes the kernel socket for others: dropping the
//! set closes only this worker's duplicate fds, so the accept queue lives on for the other
//! workers while this one drains.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};

use mio::Registry;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use socket2::{Socket, Type};

use crate::sys;
use crate::tokens;

#[derive(Debug)]
pub struct Listener {
    pub name: String,
    pub socket: TcpListener,
    /// `TCP_NODELAY` is set on the listening socket, so every accepted connection has it
    /// already (see [`adopt_listener`]).
    pub nodelay_inherited: bool,
}

/// A listening socket adopted by [`adopt_listener`].
pub struct Adopted {
    pub socket: TcpListener,
    pub local: SocketAddr,
    /// Connections accepted from it come with `TCP_NODELAY` set.
    pub nodelay_inherited: bool,
}

/// Check a received fd and turn it into a listener: it must be a stream socket, listening,
/// bound to exactly `expected` (the address the master says it bound).
pub fn adopt_listener(fd: OwnedFd, name: &str, expected: &str) -> Result<Adopted, String> {
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
    // Linux copies a listening socket's TCP_NODELAY into every connection accepted from it:
    // set once here (every worker wants it on the shared socket), it saves a setsockopt per
    // connection. Where it fails, each connection gets it after its accept instead.
    let nodelay_inherited = sock.set_tcp_nodelay(true).is_ok();
    Ok(Adopted {
        socket: sock.into(),
        local,
        nodelay_inherited,
    })
}

pub struct ListenerSet {
    epoll: Epoll,
    listeners: Vec<Listener>,
    events: Vec<EpollEvent>,
    /// Other workers wait on the same sockets: re-queue after accepting (see
    /// [`ListenerSet::requeue`]). A lone worker has nobody to hand the next wakeup to.
    shared: bool,
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
    /// `shared`: the configuration runs more than one worker on these sockets.
    pub fn new(listeners: Vec<Listener>, shared: bool) -> io::Result<Self> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(io::Error::from)?;
        for (i, l) in listeners.iter().enumerate() {
            epoll
                .add(
                    l.socket.as_fd(),
                    EpollEvent::new(EpollFlags::EPOLLIN, i as u64),
                )
                .map_err(|e| {
                    io::Error::other(format!("epoll_ctl(ADD) listener `{}`: {e}", l.name))
                })?;
        }
        Ok(ListenerSet {
            epoll,
            events: vec![EpollEvent::empty(); listeners.len().max(1)],
            listeners,
            shared,
        })
    }

    /// Add every listening socket to the event loop's epoll (exclusive wakeup, token
    /// [`tokens::LISTENERS`]). mio has no `EPOLLEXCLUSIVE`, hence the raw call.
    ///
    /// Edge-triggered like everything else in the loop: the loop remembers that accepting is
    /// pending until `accept` says `WouldBlock`, so a worker that stops accepting (connection
    /// limit, `EMFILE` back-off) is not woken over and over by a queue it leaves alone.
    pub fn register(&self, registry: &Registry) -> io::Result<()> {
        for (i, l) in self.listeners.iter().enumerate() {
            let mut ev = listener_event();
            if let Err(e) = epoll_ctl(registry, libc::EPOLL_CTL_ADD, &l.socket, Some(&mut ev)) {
                for done in &self.listeners[..i] {
                    let _ = epoll_ctl(registry, libc::EPOLL_CTL_DEL, &done.socket, None);
                }
                return Err(io::Error::new(
                    e.kind(),
                    format!("epoll_ctl(ADD) listener `{}`: {e}", l.name),
                ));
            }
        }
        Ok(())
    }

    /// After this worker accepted from listener `idx`: take its registration out and put it
    /// back, which moves it to the back of the kernel's queue of exclusive waiters.
    ///
    /// `EPOLLEXCLUSIVE` wakes the first waiting epoll in that queue. Left alone, an idle
    /// worker at its head gets every connection while the load is light (they arrive one at a
    /// time and it is always back in `epoll_wait` first), and keep-alive connections then stay
    /// on that one worker when the load rises. Re-queueing after each accept makes the
    /// wakeups go round the idle workers. Two `epoll_ctl` calls per accepting round, nothing
    /// per request; none when this worker is the configuration's only one.
    pub fn requeue(&self, registry: &Registry, idx: usize) -> io::Result<()> {
        let Some(l) = self.listeners.get(idx).filter(|_| self.shared) else {
            return Ok(());
        };
        epoll_ctl(registry, libc::EPOLL_CTL_DEL, &l.socket, None)?;
        let mut ev = listener_event();
        epoll_ctl(registry, libc::EPOLL_CTL_ADD, &l.socket, Some(&mut ev)).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("epoll_ctl(ADD) listener `{}`: {e}", l.name),
            )
        })
    }

    /// Register the listeners that are not registered (after a failed [`Self::requeue`]).
    pub fn register_missing(&self, registry: &Registry) -> io::Result<()> {
        for l in &self.listeners {
            let mut ev = listener_event();
            match epoll_ctl(registry, libc::EPOLL_CTL_ADD, &l.socket, Some(&mut ev)) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("epoll_ctl(ADD) listener `{}`: {e}", l.name),
                    ))
                }
            }
        }
        Ok(())
    }

    /// Remove every listening socket from the event loop's epoll. Needed before their fds
    /// are closed: the master and the other workers hold the same open sockets, so closing
    /// this worker's duplicates would not remove the registrations.
    pub fn deregister(&self, registry: &Registry) -> io::Result<()> {
        let mut result = Ok(());
        for l in &self.listeners {
            if let Err(e) = epoll_ctl(registry, libc::EPOLL_CTL_DEL, &l.socket, None) {
                if result.is_ok() {
                    result = Err(io::Error::new(
                        e.kind(),
                        format!("epoll_ctl(DEL) listener `{}`: {e}", l.name),
                    ));
                }
            }
        }
        result
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
            .filter_map(|e| usize::try_from(e.data()).ok())
            .filter(|&i| i < self.listeners.len())
            .collect())
    }

    pub fn accept(&self, idx: usize) -> Accepted {
        let Some(l) = self.listeners.get(idx) else {
            return Accepted::Empty;
        };
        match sys::accept_nonblocking(&l.socket) {
            Ok((stream, peer)) => {
                if !l.nodelay_inherited {
                    let _ = stream.set_nodelay(true);
                }
                Accepted::Conn {
                    stream,
                    peer,
                    listener: idx,
                }
            }
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

fn listener_event() -> libc::epoll_event {
    libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLEXCLUSIVE | libc::EPOLLET) as u32,
        u64: tokens::LISTENERS.0 as u64,
    }
}

fn epoll_ctl(
    registry: &Registry,
    op: libc::c_int,
    socket: &TcpListener,
    event: Option<&mut libc::epoll_event>,
) -> io::Result<()> {
    sys::epoll_ctl(registry, op, socket, event)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `nodelay_inherited` relies on: a connection accepted from a listener that has
    /// TCP_NODELAY has it too, with no setsockopt of its own.
    #[test]
    fn an_adopted_listener_hands_nodelay_to_accepted_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let adopted =
            adopt_listener(OwnedFd::from(listener), "test", &addr.to_string()).expect("adopt");
        assert!(adopted.nodelay_inherited);
        let _client = TcpStream::connect(addr).expect("connect");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let (accepted, _) = loop {
            match sys::accept_nonblocking(&adopted.socket) {
                Ok(conn) => break conn,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "no connection to accept"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        assert!(
            accepted.nodelay().expect("getsockopt"),
            "TCP_NODELAY inherited"
        );
    }
}
