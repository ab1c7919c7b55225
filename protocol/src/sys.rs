//! The crate's raw libc calls, each behind a safe function: `recvmsg(2)` with SCM_RIGHTS
//! control messages. (Sending goes through nix's safe `sendmsg`.) The rest of the crate has
//! no `unsafe` (`#![deny(unsafe_code)]` in `lib.rs`).

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr;

/// Bytes of control buffer one SCM_RIGHTS message of `fds` descriptors takes.
pub(crate) const fn cmsg_space(fds: usize) -> usize {
    let bytes = fds * mem::size_of::<libc::c_int>();
    assert!(bytes <= u32::MAX as usize, "control message too large");
    #[allow(clippy::cast_possible_truncation)] // checked just above
    let bytes = bytes as u32;
    // SAFETY: CMSG_SPACE is pure arithmetic on its argument.
    let space = unsafe { libc::CMSG_SPACE(bytes) };
    space as usize
}

/// One `recvmsg(2)` into `buf`, control messages into `control`, with `MSG_CMSG_CLOEXEC`
/// and `flags`; `EINTR` is retried. Every fd the kernel installed is appended to `fds` as an
/// [`OwnedFd`], also when the control data was cut short. Returns the bytes read and whether
/// the control data was truncated (`MSG_CTRUNC`: more fds were sent than `control` holds).
///
/// libc rather than nix: nix refuses to iterate control messages once `MSG_CTRUNC` is set,
/// but the kernel has already installed the fds that fit, and they must be closed.
pub(crate) fn recvmsg_fds(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    control: &mut [u64],
    flags: libc::c_int,
    fds: &mut Vec<OwnedFd>,
) -> io::Result<(usize, bool)> {
    let control_len = mem::size_of_val(control);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let (bytes, msg) = loop {
        // SAFETY: msghdr is plain old data; all-zero is a valid (empty) value, and zeroing
        // covers platform-specific padding fields.
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        // usize on glibc, u32 on musl: the buffer is a few hundred bytes either way.
        msg.msg_controllen = control_len as _;
        // SAFETY: msg points at a live iovec describing `buf` and at `control`, both valid
        // for writes of the advertised lengths for the duration of the call.
        let ret =
            unsafe { libc::recvmsg(fd.as_raw_fd(), &raw mut msg, libc::MSG_CMSG_CLOEXEC | flags) };
        if let Ok(n) = usize::try_from(ret) {
            break (n, msg);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    };
    collect_fds(&msg, control_len, fds);
    Ok((bytes, msg.msg_flags & libc::MSG_CTRUNC != 0))
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
