//! SCM_RIGHTS send/receive of file descriptor batches over a Unix stream socket.
//!
//! Received fds are wrapped in [`OwnedFd`] the moment the kernel hands them over and carry
//! `FD_CLOEXEC` (`MSG_CMSG_CLOEXEC`), so none can leak into a child process or be lost on an
//! error path. Both directions retry on `EINTR`.

use std::io::{self, IoSlice};
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

use crate::frame::MAX_FDS_PER_FRAME;
use crate::ProtocolError;

/// Bytes of control buffer needed for one SCM_RIGHTS message of [`MAX_FDS_PER_FRAME`] fds.
// SAFETY: CMSG_SPACE is pure arithmetic on its argument.
const CMSG_CAPACITY: usize =
    unsafe { libc::CMSG_SPACE((MAX_FDS_PER_FRAME * mem::size_of::<libc::c_int>()) as u32) }
        as usize;

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
///
/// Uses `libc::recvmsg` directly: nix refuses to iterate control messages once `MSG_CTRUNC`
/// is set, but the kernel has already installed the fds that fit, and they must be closed.
pub(crate) fn recv_with_fds_flags(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    extra_flags: libc::c_int,
) -> io::Result<usize> {
    // u64 words: cmsghdr needs at most 8-byte alignment.
    let mut control = [0u64; CMSG_CAPACITY.div_ceil(8)];
    let control_len = mem::size_of_val(&control);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let (bytes, msg) = loop {
        // SAFETY: msghdr is plain old data; all-zero is a valid (empty) value, and zeroing
        // covers platform-specific padding fields.
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control_len as _;
        // SAFETY: msg points at a live iovec describing `buf` and at `control`, both valid
        // for writes of the advertised lengths for the duration of the call.
        let ret = unsafe {
            libc::recvmsg(
                fd.as_raw_fd(),
                &mut msg,
                libc::MSG_CMSG_CLOEXEC | extra_flags,
            )
        };
        if ret >= 0 {
            break (ret as usize, msg);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    };

    let before = fds.len();
    collect_fds(&msg, control_len, fds);
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        // Dropping closes the partial batch: a frame cannot be matched with part of its fds.
        fds.truncate(before);
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            ProtocolError::ControlTruncated,
        ));
    }
    Ok(bytes)
}

/// Take ownership of every fd in the SCM_RIGHTS control messages of `msg`.
// msg_controllen and cmsg_len are usize on glibc but u32 on musl.
#[allow(clippy::unnecessary_cast)]
fn collect_fds(msg: &libc::msghdr, control_len: usize, fds: &mut Vec<OwnedFd>) {
    let control_start = msg.msg_control as usize;
    // The kernel shrinks msg_controllen to what it wrote; never trust it beyond our buffer.
    let control_end = control_start + (msg.msg_controllen as usize).min(control_len);
    // SAFETY: msg was filled in by a successful recvmsg; CMSG_FIRSTHDR/NXTHDR stay within
    // msg_control/msg_controllen and return null at the end.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(msg) };
    while !cmsg.is_null() {
        // SAFETY: non-null cmsg returned by CMSG_FIRSTHDR/NXTHDR points at a complete
        // header inside our (suitably aligned) control buffer.
        let header = unsafe { ptr::read(cmsg) };
        if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_DATA only offsets the header pointer.
            let data = unsafe { libc::CMSG_DATA(cmsg) };
            let data_start = data as usize;
            let cmsg_end = (cmsg as usize)
                .saturating_add(header.cmsg_len as usize)
                .min(control_end);
            let count = cmsg_end.saturating_sub(data_start) / mem::size_of::<libc::c_int>();
            for i in 0..count {
                // SAFETY: i < count keeps the read inside this cmsg's data, within the
                // control buffer; read_unaligned because CMSG_DATA makes no int-alignment
                // promise.
                let raw = unsafe { ptr::read_unaligned(data.cast::<libc::c_int>().add(i)) };
                if raw >= 0 {
                    // SAFETY: the kernel just installed this fd in our table for us; nothing
                    // else owns it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
                }
            }
        }
        // SAFETY: as for CMSG_FIRSTHDR; cmsg is a valid header of msg.
        cmsg = unsafe { libc::CMSG_NXTHDR(msg, cmsg) };
    }
}
