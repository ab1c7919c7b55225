//! The worker's raw libc calls, each behind a safe function. The rest of the crate has no
//! `unsafe` (`#![deny(unsafe_code)]` in `lib.rs`).

use std::io;
use std::os::fd::AsRawFd;

use nix::sys::signal::{signal, SigHandler, Signal};

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
