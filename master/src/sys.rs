//! The master's raw libc calls, each behind a safe function: descriptor numbers inherited
//! across exec (checked, taken, duplicated, made close-on-exec), the set-up of a child between
//! fork and exec, and the pidfd system calls libc has no wrapper for. The rest of the crate
//! has no `unsafe` (`#![deny(unsafe_code)]` in `lib.rs`); the policy around these calls (which
//! numbers, what an error means) stays with the callers.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::unistd::Pid;

/// `-1` from a libc call means "see errno".
fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Give `signal` its default disposition (SIG_DFL): an ignored signal is discarded, never
/// queued, so a signalfd would not see it either.
pub(crate) fn default_disposition(signal: nix::sys::signal::Signal) -> nix::Result<()> {
    // SAFETY: installs SIG_DFL, no handler code runs in this process; the caller blocks the
    // signal first, so the default action cannot fire either.
    unsafe { nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigDfl) }?;
    Ok(())
}

/// Make descriptor number `raw` close-on-exec (`F_GETFD`, then `F_SETFD` when the flag is not
/// set yet). An unused number fails with `EBADF` and nothing changes.
///
/// A number rather than a borrowed fd: the callers mark fds that nothing in this process owns
/// yet (inherited ones). Only the close-on-exec flag of whatever file is behind the number
/// changes; nothing is closed or reinterpreted.
pub(crate) fn set_cloexec(raw: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFD only reads the descriptor flags of number `raw`; an unused number fails
    // with EBADF.
    let flags = check(unsafe { libc::fcntl(raw, libc::F_GETFD) })?;
    if flags & libc::FD_CLOEXEC == 0 {
        // SAFETY: F_SETFD only changes the descriptor flags of number `raw`, open just above.
        check(unsafe { libc::fcntl(raw, libc::F_SETFD, flags | libc::FD_CLOEXEC) })?;
    }
    Ok(())
}

/// Take ownership of descriptor number `raw`, inherited across exec, after checking that it is
/// open (`F_GETFD`; an unused number fails with `EBADF` and nothing is taken). Its flags are
/// left as they are.
///
/// Only for numbers handed to this process by whatever exec'd it (`LISTEN_FDS`, a state file,
/// a command-line flag), which nothing else in the process owns: each caller takes every
/// number it was given once, after checking that the set names none twice.
pub(crate) fn take_inherited_fd(raw: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD only reads the descriptor flags of number `raw`; an unused number fails
    // with EBADF.
    check(unsafe { libc::fcntl(raw, libc::F_GETFD) })?;
    // SAFETY: `raw` is open (checked above) and was inherited for this caller, which takes it
    // once (this function's contract): the returned OwnedFd is its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// A close-on-exec duplicate of descriptor number `raw`, numbered 3 or above
/// (`F_DUPFD_CLOEXEC`): never one of stdio, which a child's set-up would overwrite. An unused
/// number fails with `EBADF` and nothing is created.
pub(crate) fn dup_above_stdio(raw: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC only creates a new descriptor (>= 3) for the file behind `raw`;
    // it neither closes nor changes `raw`.
    let dup = check(unsafe { libc::fcntl(raw, libc::F_DUPFD_CLOEXEC, 3) })?;
    // SAFETY: the kernel just returned this new descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}

/// Set up `command`'s child, between fork and exec: clear close-on-exec on every number in
/// `fds` (so that exactly those, plus stdio, survive the exec) and empty the signal mask.
///
/// A number in `fds` that is closed in the parent when `command` spawns makes the spawn fail
/// (EBADF); one reused by another file hands that file to the child instead. The callers keep
/// their fds open until `spawn` has returned.
pub(crate) fn on_exec_inherit_fds_and_unblock_signals(command: &mut Command, fds: Vec<RawFd>) {
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // calls are allowed: fcntl(F_SETFD), sigemptyset and sigprocmask. It allocates nothing
    // (`fds` was built before the fork and is only read; io::Error::last_os_error builds an
    // OS-code variant without allocating), takes no lock and touches no shared state.
    unsafe {
        command.pre_exec(move || {
            for &fd in &fds {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            if libc::sigemptyset(&raw mut empty) == -1
                || libc::sigprocmask(libc::SIG_SETMASK, &raw const empty, std::ptr::null_mut())
                    == -1
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// `pidfd_open(2)`: a descriptor that becomes readable when process `pid` exits, also for a
/// process that is not our child. Close-on-exec (implied for pidfds).
pub(crate) fn pidfd_open(pid: Pid) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is
    // passed.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    let raw = RawFd::try_from(raw).map_err(|_| io::Error::other("pidfd out of range"))?;
    // SAFETY: the kernel just returned this new fd, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// `pidfd_send_signal(2)`: send `signal` to the process behind `pidfd` (immune to pid reuse).
/// Errors as the kernel reports them (`ESRCH`: the process has exited).
pub(crate) fn pidfd_send_signal(pidfd: &impl AsFd, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: pidfd_send_signal with a pidfd borrowed for the call, a signal number, a null
    // siginfo (the kernel fills it in as for kill(2)) and no flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_fd().as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::process::Stdio;

    #[test]
    fn a_child_inherits_the_fds_named_and_no_other() {
        let pipe = || {
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map(|(r, w)| (std::fs::File::from(r), w))
                .unwrap()
        };
        let (mut named_read, named) = pipe();
        let (mut other_read, other) = pipe();
        // Both pipes are close-on-exec; the child writes to each write end by number.
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(format!(
                "echo named >&{}; echo other >&{}; true",
                named.as_raw_fd(),
                other.as_raw_fd()
            ))
            .stdin(Stdio::null())
            .stderr(Stdio::null());
        on_exec_inherit_fds_and_unblock_signals(&mut command, vec![named.as_raw_fd()]);
        assert!(command.status().unwrap().success());
        drop((named, other));
        let mut said = (String::new(), String::new());
        named_read.read_to_string(&mut said.0).unwrap();
        other_read.read_to_string(&mut said.1).unwrap();
        assert_eq!(said, ("named\n".to_owned(), String::new()));
    }

    #[test]
    fn pidfd_signals_the_process_until_it_is_reaped() {
        let mut child = Command::new("/bin/sleep").arg("30").spawn().unwrap();
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap());
        let pidfd = pidfd_open(pid).unwrap();
        pidfd_send_signal(&pidfd, libc::SIGKILL).unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
        let gone = pidfd_send_signal(&pidfd, libc::SIGKILL).unwrap_err();
        assert_eq!(gone.raw_os_error(), Some(libc::ESRCH));
    }

    #[test]
    fn unused_numbers_are_refused_and_duplicates_stay_above_stdio() {
        // Far above any fd limit in use, so it cannot be open.
        assert_eq!(
            take_inherited_fd(999_999).unwrap_err().raw_os_error(),
            Some(libc::EBADF)
        );
        assert_eq!(
            dup_above_stdio(999_999).unwrap_err().raw_os_error(),
            Some(libc::EBADF)
        );
        assert_eq!(
            set_cloexec(999_999).unwrap_err().raw_os_error(),
            Some(libc::EBADF)
        );
        let dup = dup_above_stdio(0).unwrap();
        assert!(dup.as_raw_fd() > 2);
        let flags = nix::fcntl::fcntl(&dup, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
    }
}
