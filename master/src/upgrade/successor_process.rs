//! Low-level pieces of a master binary upgrade (docs/design/upgrades.md, "The master
//! hand-over"): where the state file goes, checking the new binary, starting the successor
//! master with exactly the fds it inherits, the readiness pipe, and `pidfd` supervision of
//! adopted workers.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::unistd::{access, AccessFlags, Pid};
use socket2::{Domain, SockRef, Type};

use crate::sys;

/// Hidden command-line flags of a successor master.
pub const UPGRADE_FROM_ARG: &str = "--upgrade-from";
pub const UPGRADE_READY_FD_ARG: &str = "--upgrade-ready-fd";

/// What the successor writes on the readiness pipe: `READY <pid>\n`.
pub const READY_PREFIX: &str = "READY ";

/// Default bound of the wait for a new master, or a new worker, to be ready.
pub const DEFAULT_READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The state file of an upgrade started by master `pid`: in `$XDG_RUNTIME_DIR`, else next to
/// the control socket (both private to the master's user).
pub fn state_file_path(control_socket: &Path, pid: u32) -> PathBuf {
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| control_socket.parent().map(Path::to_path_buf))
        .unwrap_or_else(std::env::temp_dir);
    dir.join(format!("zentinel-upgrade-{pid}.state"))
}

/// The new binary must exist, be a regular file, and be executable by us.
pub fn check_binary(path: &Path) -> Result<(), String> {
    let metadata =
        std::fs::metadata(path).map_err(|err| format!("new binary {}: {err}", path.display()))?;
    if !metadata.is_file() {
        return Err(format!(
            "new binary {} is not a regular file",
            path.display()
        ));
    }
    if metadata.permissions().mode() & 0o111 == 0 || access(path, AccessFlags::X_OK).is_err() {
        return Err(format!("new binary {} is not executable", path.display()));
    }
    Ok(())
}

/// A pipe whose both ends are close-on-exec: (read, write).
pub fn ready_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
}

/// Start `binary` as the successor master: `BINARY --upgrade-from STATE --upgrade-ready-fd N
/// [--log-level L]` (only a level the operator gave explicitly; otherwise the successor takes
/// it from the configuration text), inheriting exactly `inherit` and `ready_write` (CLOEXEC cleared in the
/// child only, between fork and exec). argv[0] is the binary's path, so the new master names
/// its executable the way the operator did.
pub fn spawn_successor(
    binary: &Path,
    state_file: &Path,
    ready_write: &OwnedFd,
    inherit: &[RawFd],
    log_level: Option<&str>,
) -> io::Result<Pid> {
    let ready_raw = ready_write.as_raw_fd();
    let mut fds: Vec<RawFd> = inherit.to_vec();
    fds.push(ready_raw);
    let mut command = Command::new(binary);
    if let Some(now) = monotonic_ns() {
        command.env(SPAWNED_AT_ENV, now.to_string());
    }
    command
        .arg0(OsString::from(binary))
        .arg(UPGRADE_FROM_ARG)
        .arg(state_file)
        .arg(UPGRADE_READY_FD_ARG)
        .arg(ready_raw.to_string())
        .args(
            log_level
                .map(|level| ["--log-level", level])
                .into_iter()
                .flatten(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    // Every fd in `fds` stays open in the parent for the whole `spawn` call (the supervisor
    // owns them), hence in the child.
    inherit_only_on_exec(&mut command, fds);
    let child = command.spawn().map_err(|err| {
        io::Error::new(
            err.kind(),
            format!("cannot start the new master {}: {err}", binary.display()),
        )
    })?;
    let pid = i32::try_from(child.id())
        .map(Pid::from_raw)
        .map_err(|_| io::Error::other(format!("new master pid {} out of range", child.id())))?;
    // `Child` neither waits nor kills on drop; the supervisor reaps it.
    drop(child);
    Ok(pid)
}

/// Set up `command`'s child, between fork and exec, to inherit `fds` (CLOEXEC cleared in the
/// child only; every other fd of ours is close-on-exec) and to start from an empty signal
/// mask: the master blocks its signals to read them from a signalfd, a blocked mask survives
/// exec, and a worker or successor master must choose its own dispositions. Shared by worker
/// and successor-master spawns. Each fd in `fds` must stay open in the parent until
/// `command.spawn()` has returned, so that it is open in the child.
pub(crate) fn inherit_only_on_exec(command: &mut Command, fds: Vec<RawFd>) {
    sys::on_exec_inherit_fds_and_unblock_signals(command, fds);
}

/// Take ownership of an inherited fd number named in the state file or on the command line,
/// after checking it is open; it gets close-on-exec again (docs/design/upgrades.md,
/// "Inherited descriptors").
pub fn take_inherited_fd(raw: RawFd, what: &str) -> io::Result<OwnedFd> {
    if raw <= 2 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} {raw}: fds 0-2 are stdio, not an inherited descriptor"),
        ));
    }
    // Every number of the state file or a flag is taken once (the state's were checked as a
    // set for duplicates first), so this is its only owner.
    let fd = sys::take_inherited_fd(raw).map_err(|err| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} {raw} is not an open file descriptor: {err}"),
        )
    })?;
    sys::set_cloexec(fd.as_raw_fd())?;
    Ok(fd)
}

/// A close-on-exec duplicate of fd number `raw` if it is open (`None` otherwise): a second
/// reference that keeps the file open while the first is taken, checked or closed.
pub fn hold_open(raw: RawFd) -> Option<OwnedFd> {
    if raw <= 2 {
        return None;
    }
    // An unused number fails with EBADF and nothing is created.
    sys::dup_above_stdio(raw).ok()
}

/// Check that `fd` is a connected Unix stream socket (a worker channel, a control client).
pub fn check_unix_stream(fd: &OwnedFd, what: &str) -> io::Result<()> {
    let socket = SockRef::from(fd);
    let bad = |why: String| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{what}: fd {} is not a Unix stream socket: {why}",
                fd.as_raw_fd()
            ),
        )
    };
    match socket.domain() {
        Ok(d) if d == Domain::UNIX => {}
        Ok(d) => return Err(bad(format!("domain {d:?}"))),
        Err(err) => return Err(bad(err.to_string())),
    }
    match socket.r#type() {
        Ok(t) if t == Type::STREAM => {}
        Ok(t) => return Err(bad(format!("type {t:?}"))),
        Err(err) => return Err(bad(err.to_string())),
    }
    Ok(())
}

/// `pidfd_open(pid)`: an fd that becomes readable when the process exits, for processes that
/// are not our children (adopted workers). Close-on-exec.
pub fn pidfd_open(pid: Pid) -> io::Result<OwnedFd> {
    sys::pidfd_open(pid)
}

/// Signal the process behind a pidfd (immune to pid reuse).
pub fn pidfd_kill(pidfd: &OwnedFd, signal: libc::c_int) -> io::Result<()> {
    match sys::pidfd_send_signal(pidfd, signal) {
        // ESRCH: the process has already exited.
        Err(err) if err.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        result => result,
    }
}

/// Whether the process behind a pidfd has exited (poll, no wait).
pub fn pidfd_exited(pidfd: &OwnedFd) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
}

/// Carries the CLOCK_MONOTONIC instant (ns) at which the old master started its successor, so
/// the successor can report its start-up time exactly (the process start time in /proc has
/// only 10 ms resolution: fast start-ups read as 0 ms).
const SPAWNED_AT_ENV: &str = "ZENTINEL_UPGRADE_SPAWNED_AT_NS";

fn monotonic_ns() -> Option<u64> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).ok()?;
    let secs = u64::try_from(now.tv_sec()).ok()?;
    let nanos = u64::try_from(now.tv_nsec()).ok()?;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

/// Successor side: how long ago the old master started this process (None when not started
/// by an upgrade, or from an older binary that did not say).
pub fn time_since_spawn() -> Option<std::time::Duration> {
    elapsed_since_stamp(&std::env::var(SPAWNED_AT_ENV).ok()?)
}

fn elapsed_since_stamp(stamp: &str) -> Option<std::time::Duration> {
    let spawned: u64 = stamp.parse().ok()?;
    let now = monotonic_ns()?;
    Some(std::time::Duration::from_nanos(now.checked_sub(spawned)?))
}

/// Successor side: confirm readiness on the inherited pipe, then close it.
pub fn write_ready(fd: OwnedFd) -> io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::from(fd);
    file.write_all(format!("{READY_PREFIX}{}\n", std::process::id()).as_bytes())
}

/// A duration as the upgrade flags spell it: `30s`, `1.5s`, `250ms`.
pub fn format_duration(d: std::time::Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else if d.as_secs() == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_checks_name_the_path() {
        let err = check_binary(Path::new("/nonexistent/zentinel")).unwrap_err();
        assert!(err.contains("/nonexistent/zentinel"), "{err}");
        let dir = std::env::temp_dir().join(format!("zentinel-upg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("not-exec");
        std::fs::write(&file, "x").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = check_binary(&file).unwrap_err();
        assert!(err.contains("not executable"), "{err}");
        assert!(check_binary(&dir)
            .unwrap_err()
            .contains("not a regular file"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(check_binary(Path::new("/bin/sh")).is_ok());
    }

    #[test]
    fn pidfd_sees_exit_of_a_process() {
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg("exit 0")
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        let fd = pidfd_open(pid).unwrap();
        child.wait().unwrap();
        assert!(pidfd_exited(&fd));
    }

    #[test]
    fn time_since_spawn_reads_the_stamp_of_the_old_master() {
        let before = monotonic_ns().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let elapsed = elapsed_since_stamp(&before.to_string()).unwrap();
        assert!(
            elapsed >= std::time::Duration::from_millis(20)
                && elapsed < std::time::Duration::from_secs(60),
            "{elapsed:?}"
        );
        assert_eq!(elapsed_since_stamp("soon"), None);
        assert_eq!(elapsed_since_stamp(&u64::MAX.to_string()), None);
    }

    #[test]
    fn state_file_goes_to_the_runtime_dir_or_next_to_the_socket() {
        let path = state_file_path(Path::new("/run/x/z.sock"), 42);
        assert!(path
            .to_string_lossy()
            .ends_with("zentinel-upgrade-42.state"));
    }
}
