//! SCM_RIGHTS send/receive of file descriptor batches over a Unix stream socket.
//!
//! Received fds are wrapped in [`OwnedFd`] the moment the kernel hands them over and carry
//! `FD_CLOEXEC` (`MSG_CMSG_CLOEXEC`), so none can leak into a child process or be lost on an
//! error path. Both directions retry on `EINTR`.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

use crate::frame::MAX_FDS_PER_FRAME;
use crate::sys;
use crate::ProtocolError;

/// Bytes of control buffer needed for one SCM_RIGHTS message of [`MAX_FDS_PER_FRAME`] fds.
const CMSG_CAPACITY: usize = sys::cmsg_space(MAX_FDS_PER_FRAME);

/// Send `bytes` with `fds` attached (SCM_RIGHTS). Returns how many bytes the socket took;
/// when it is more than zero the fds have been sent (the kernel holds its own references,
/// so the caller may close its copies). `MSG_NOSIGNAL`: a closed peer is `EPIPE`, not a
/// process-killing `SIGPIPE`.
pub fn send_with_fds(
    fd: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    send_vectored_with_fds(fd, &[IoSlice::new(bytes)], fds)
}

/// Like [`send_with_fds`] with several buffers gathered into one `sendmsg`. The fds ride on
/// the first byte of the first buffer.
pub fn send_vectored_with_fds(
    fd: BorrowedFd<'_>,
    bufs: &[IoSlice<'_>],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    if fds.len() > MAX_FDS_PER_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "cannot send {} fds in one message (maximum {MAX_FDS_PER_FRAME})",
                fds.len()
            ),
        ));
    }
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
    loop {
        match sendmsg::<()>(fd.as_raw_fd(), bufs, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) => return Ok(n),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(errno) => return Err(io::Error::from(errno)),
        }
    }
}

/// Receive into `buf`, appending any fds that arrived to `fds` (CLOEXEC set). Returns the
/// number of bytes read (0 at EOF). If the peer sent more fds than fit the control buffer
/// (`MSG_CTRUNC`), the ones that did arrive are closed and the error wraps
/// [`ProtocolError::ControlTruncated`] (converted back by `ProtocolError::from`).
pub fn recv_with_fds(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    recv_with_fds_flags(fd, buf, fds, 0)
}

/// [`recv_with_fds`] with extra `recvmsg` flags (e.g. `MSG_DONTWAIT`).
pub(crate) fn recv_with_fds_flags(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    extra_flags: libc::c_int,
) -> io::Result<usize> {
    // u64 words: cmsghdr needs at most 8-byte alignment.
    let mut control = [0u64; CMSG_CAPACITY.div_ceil(8)];
    let before = fds.len();
    let (bytes, truncated) = sys::recvmsg_fds(fd, buf, &mut control, extra_flags, fds)?;
    if truncated {
        // Dropping closes the partial batch: a frame cannot be matched with part of its fds.
        fds.truncate(before);
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            ProtocolError::ControlTruncated,
        ));
    }
    Ok(bytes)
}
