//! What the shared-memory segments (the TLS session cache, the filters' tables) have in
//! common: an anonymous memfd of a fixed size, its header written once, sealed so that no
//! process can shrink or grow it under another's mapping, and read back with `pread` by the
//! master, which never maps one.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::uio::{pread, pwrite};

/// The seals every segment carries: it can neither shrink (a process touching a page cut off
/// would fault, `SIGBUS`) nor grow, and its seals cannot change.
fn seals() -> SealFlag {
    SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL
}

/// A new segment named `name` (as `/proc` shows it): close-on-exec, sized with `ftruncate`
/// (zero-filled), `header` written at offset 0, then sealed. `what` names it in errors.
pub fn create(name: &str, segment_bytes: u64, header: &[u8], what: &str) -> io::Result<OwnedFd> {
    let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
    let size = i64::try_from(segment_bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "segment size out of range"))?;
    nix::unistd::ftruncate(&fd, size)?;
    if pwrite(&fd, header, 0)? != header.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("short write of the {what} header"),
        ));
    }
    fcntl(&fd, FcntlArg::F_ADD_SEALS(seals()))?;
    Ok(fd)
}

/// The first `N` bytes of `fd` once it is known to be a memfd of exactly `segment_bytes`,
/// sealed against shrinking (so a mapping of it never faults); why not otherwise.
pub fn read_header<const N: usize>(
    fd: BorrowedFd<'_>,
    segment_bytes: u64,
) -> Result<[u8; N], String> {
    let stat = nix::sys::stat::fstat(fd).map_err(|e| format!("fstat: {e}"))?;
    if u64::try_from(stat.st_size).ok() != Some(segment_bytes) {
        return Err(format!(
            "{} bytes, announced as {segment_bytes}",
            stat.st_size
        ));
    }
    let sealed = fcntl(fd, FcntlArg::F_GET_SEALS).map_err(|e| format!("not a memfd: {e}"))?;
    if !SealFlag::from_bits_truncate(sealed).contains(SealFlag::F_SEAL_SHRINK) {
        return Err("not sealed against shrinking".to_owned());
    }
    let mut header = [0u8; N];
    let read = pread(fd, &mut header, 0).map_err(|e| format!("reading its header: {e}"))?;
    if read != header.len() {
        return Err(format!("a header of {read} bytes"));
    }
    Ok(header)
}

/// `N` bytes at `offset` (a segment's counters), read with `pread`. A counter may be read while
/// a worker adds to it: each is one aligned word, and a scrape only needs a recent value.
pub fn read_at<const N: usize>(fd: impl AsFd, offset: usize, what: &str) -> io::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    let offset = i64::try_from(offset).unwrap_or(0);
    if pread(fd.as_fd(), &mut bytes, offset)? != bytes.len() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("short read of the {what}"),
        ));
    }
    Ok(bytes)
}
