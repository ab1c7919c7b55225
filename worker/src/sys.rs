//! The worker's raw libc calls, each behind a safe function. The rest of the crate has no
//! `unsafe` (`#![deny(unsafe_code)]` in `lib.rs`).

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};

use nix::sys::signal::{signal, SigHandler, Signal};
use socket2::SockAddr;

/// `epoll_ctl(2)` on `epoll` (mio's registry) for `fd`, with `op` (`EPOLL_CTL_ADD`, `_MOD`,
/// `_DEL`). `event` may be `None` for `EPOLL_CTL_DEL` only.
///
/// For what mio cannot ask for itself: `EPOLLEXCLUSIVE` on the listening sockets.
pub(crate) fn epoll_ctl(
    epoll: &impl AsRawFd,
    op: libc::c_int,
    fd: &impl AsRawFd,
    event: Option<&mut libc::epoll_event>,
) -> io::Result<()> {
    let ev = event.map_or(std::ptr::null_mut(), std::ptr::from_mut);
    // SAFETY: both fds stay open for the duration of the call (their owners are borrowed);
    // `ev` is null (allowed for EPOLL_CTL_DEL, refused by the kernel otherwise) or points to
    // a live epoll_event that the kernel only reads.
    let rc = unsafe { libc::epoll_ctl(epoll.as_raw_fd(), op, fd.as_raw_fd(), ev) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Ignore `sig` in this whole process (`SIG_IGN`); returns the disposition it had.
pub(crate) fn ignore_signal(sig: Signal) -> nix::Result<SigHandler> {
    // SAFETY: SIG_IGN installs no handler code, so no async-signal-safety requirement
    // applies; `signal` only changes this process's disposition for `sig`.
    unsafe { signal(sig, SigHandler::SigIgn) }
}

/// `accept4(2)` with `SOCK_NONBLOCK | SOCK_CLOEXEC`: the connection comes out ready for the
/// event loop, without the `ioctl(FIONBIO)` that `set_nonblocking` would cost afterwards (one
/// system call less per connection; std's `accept` sets only `SOCK_CLOEXEC`).
pub(crate) fn accept_nonblocking(listener: &TcpListener) -> io::Result<(TcpStream, SocketAddr)> {
    // SAFETY: `try_init` passes a zeroed sockaddr_storage and its size; accept4 writes at most
    // that many bytes into it and the actual length back. The listener's fd is borrowed for
    // the duration of the call.
    let (fd, addr) = unsafe {
        SockAddr::try_init(|storage, len| {
            let fd = libc::accept4(
                listener.as_raw_fd(),
                storage.cast(),
                len,
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            );
            if fd < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(fd)
            }
        })?
    };
    // SAFETY: accept4 just returned this fd; nothing else owns it.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let peer = addr
        .as_socket()
        .ok_or_else(|| io::Error::other("accepted a connection that is not TCP/IP"))?;
    Ok((stream, peer))
}
