//! Starting worker processes, and the worker side's adoption of its channel fd.
//!
//! Workers are the master's own binary re-executed as `zentinel worker --channel-fd N ...`.
//! The binary is the file the master was started from, kept open as an fd from start-up
//! (docs/design/upgrades.md, "Worker executables"): a worker restarted after the file on disk
//! was replaced still runs the code that speaks this master's protocol.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use nix::fcntl::{fcntl, FcntlArg};
use nix::unistd::Pid;
use zentinel_protocol::Channel;

use crate::upgrade::{check_unix_stream, inherit_only_on_exec, take_inherited_fd};

/// The name workers show in `ps` (argv[0]); the exec path itself is `/proc/self/fd/K`.
pub const WORKER_ARG0: &str = "zentinel";

/// The master's own executable, opened once at start-up.
#[derive(Debug)]
pub struct Executable {
    fd: OwnedFd,
    /// Where the file was at start-up (for status; the path may change later, the fd does not).
    path: PathBuf,
}

impl Executable {
    /// Open `/proc/self/exe` (read-only, close-on-exec).
    pub fn open_self() -> io::Result<Self> {
        // std opens with O_CLOEXEC, so no other child inherits it.
        let file = std::fs::File::open("/proc/self/exe").map_err(|err| {
            io::Error::new(
                err.kind(),
                format!("cannot open the master's own executable /proc/self/exe: {err}"),
            )
        })?;
        let path = std::fs::read_link("/proc/self/exe")
            .unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
        Ok(Executable {
            fd: file.into(),
            path,
        })
    }

    /// Like [`Executable::open_self`], naming the executable by `started_as` (argv[0] made
    /// absolute) when that path is the same file: status then shows the path the operator
    /// used, not its symlink-resolved form, and a later upgrade defaults to that path.
    pub fn open_self_as(started_as: Option<&std::path::Path>) -> io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let mut exe = Self::open_self()?;
        let Some(hint) = started_as.and_then(|p| std::path::absolute(p).ok()) else {
            return Ok(exe);
        };
        let ours = std::fs::File::from(exe.fd.try_clone()?).metadata()?;
        if let Ok(named) = std::fs::metadata(&hint) {
            if named.dev() == ours.dev() && named.ino() == ours.ino() {
                exe.path = hint;
            }
        }
        Ok(exe)
    }

    /// Take over the previous master's executable fd (master upgrade: a failed rolling upgrade
    /// puts workers back on it). It must be an open regular file; it gets close-on-exec again.
    pub fn adopt(fd: OwnedFd, path: PathBuf) -> io::Result<Self> {
        let raw = fd.as_raw_fd();
        let file = std::fs::File::from(fd);
        let metadata = file.metadata().map_err(|err| {
            io::Error::new(
                err.kind(),
                format!("previous executable fd {raw} ({}): {err}", path.display()),
            )
        })?;
        if !metadata.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "previous executable fd {raw} ({}) is not a regular file",
                    path.display()
                ),
            ));
        }
        let fd = OwnedFd::from(file);
        fcntl(&fd, FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC)).map_err(io::Error::from)?;
        Ok(Executable { fd, path })
    }

    /// The fd number (handed to a successor master).
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The executable's path as it was at start-up (`readlink /proc/self/exe`).
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The path a child execs. It resolves through the fd, which is still open in the child
    /// while `execve` looks the path up (CLOEXEC closes it only once the exec succeeded).
    pub fn exec_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }
}

/// What identifies a worker on its command line (for `ps` and its own logs).
#[derive(Debug, Clone, Copy)]
pub struct WorkerArgs<'a> {
    pub worker_id: u32,
    pub generation: u64,
    /// Passed on as `--log-level` and friends, so workers log like their master.
    pub log: &'a crate::logging::LogSettings,
    /// `system { user; group }`: the uid and gid the worker runs as (the master stays as it
    /// is, holding the listeners it bound). `None`: as the master.
    pub identity: Option<(u32, u32)>,
}

/// The uid and gid of `system { user; group }` (the group defaults to the user's primary one).
pub fn worker_identity(
    user: Option<&str>,
    group: Option<&str>,
) -> Result<Option<(u32, u32)>, String> {
    let Some(user) = user else {
        return Ok(None);
    };
    let found = nix::unistd::User::from_name(user)
        .map_err(|e| format!("cannot look up user {user:?}: {e}"))?
        .ok_or_else(|| format!("no user {user:?} on this system"))?;
    let gid = match group {
        Some(group) => {
            nix::unistd::Group::from_name(group)
                .map_err(|e| format!("cannot look up group {group:?}: {e}"))?
                .ok_or_else(|| format!("no group {group:?} on this system"))?
                .gid
        }
        None => found.gid,
    };
    Ok(Some((found.uid.as_raw(), gid.as_raw())))
}

/// A freshly started worker: its pid and the master's end of its channel (blocking mode).
#[derive(Debug)]
pub struct SpawnedWorker {
    pub pid: Pid,
    pub channel: Channel,
}

/// Start one worker process connected to the master by a new socketpair.
pub fn spawn_worker(exe: &Executable, args: WorkerArgs<'_>) -> io::Result<SpawnedWorker> {
    // Both ends are CLOEXEC: only the child's end loses the flag, and only in that child.
    let (master_end, worker_end) = UnixStream::pair()?;
    let worker_end = above_stdio(OwnedFd::from(worker_end))?;
    let worker_raw: RawFd = worker_end.as_raw_fd();

    let mut command = Command::new(exe.exec_path());
    command
        .arg0(WORKER_ARG0)
        .arg("worker")
        .arg("--channel-fd")
        .arg(worker_raw.to_string())
        .arg("--worker-id")
        .arg(args.worker_id.to_string())
        .arg("--generation")
        .arg(args.generation.to_string())
        .args(args.log.worker_args())
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    if let Some((uid, gid)) = args.identity {
        // std sets the group, drops supplementary groups (when root) and then the user,
        // between fork and exec.
        command.uid(uid).gid(gid);
    }
    // The one fd the worker inherits: its end of the channel. `worker_end` stays alive until
    // `spawn` has returned, so it is open in the child.
    inherit_only_on_exec(&mut command, vec![worker_raw]);
    let child = command.spawn().map_err(|err| {
        io::Error::new(
            err.kind(),
            format!(
                "cannot start worker {} from {}: {err}",
                args.worker_id,
                exe.exec_path().display()
            ),
        )
    })?;
    // Our copy of the worker's end must go, or the worker's death would never show as EOF.
    drop(worker_end);
    let pid = i32::try_from(child.id())
        .map(Pid::from_raw)
        .map_err(|_| io::Error::other(format!("worker pid {} out of range", child.id())))?;
    // `Child` does not wait or kill on drop; the supervisor reaps with waitpid(-1).
    drop(child);
    Ok(SpawnedWorker {
        pid,
        channel: Channel::new(master_end),
    })
}

/// Move an fd to a number above 2: if the master was started with stdio closed, a socket
/// could land on 0..2, where the child's stdio set-up would overwrite it.
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    crate::sys::dup_above_stdio(fd.as_raw_fd())
}

/// Set close-on-exec on every fd above stdio that this process inherited without it.
///
/// The master's own fds are all CLOEXEC, but whatever started it may have left some open (a
/// shell's or supervisor's pipes); without this they would leak into every worker and keep
/// those pipes open for the workers' lifetime. The master itself keeps them open.
// A successor master (binary upgrade) calls it too: every fd it adopts from the state file is
// checked and marked close-on-exec again anyway. Later (systemd socket activation): the same.
pub fn set_cloexec_on_inherited_fds() -> io::Result<()> {
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd: &RawFd| fd > 2)
        .collect();
    // The directory's own fd was in the listing and is closed now: EBADF, skipped.
    for fd in fds {
        let _ = crate::sys::set_cloexec(fd);
    }
    Ok(())
}

/// Worker side: take ownership of the inherited `--channel-fd`, after checking that it is
/// what the master promised (an open `AF_UNIX` stream socket), and make it close-on-exec again
/// (docs/design/upgrades.md, "Inherited descriptors").
pub fn adopt_channel_fd(raw: RawFd) -> io::Result<OwnedFd> {
    let fd = take_inherited_fd(raw, "--channel-fd")?;
    check_unix_stream(&fd, "--channel-fd")?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::os::fd::IntoRawFd;

    fn is_cloexec(fd: &OwnedFd) -> bool {
        let flags = fcntl(fd, FcntlArg::F_GETFD).unwrap();
        flags & libc::FD_CLOEXEC != 0
    }

    #[test]
    fn adopts_a_unix_stream_and_sets_cloexec() {
        let (a, _b) = UnixStream::pair().unwrap();
        let a = OwnedFd::from(a);
        // Without FD_CLOEXEC, as an exec'd worker sees its channel.
        fcntl(&a, FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())).unwrap();
        assert!(!is_cloexec(&a));
        let raw = a.into_raw_fd();
        let fd = adopt_channel_fd(raw).unwrap();
        assert!(is_cloexec(&fd));
    }

    #[test]
    fn refuses_stdio_closed_and_non_unix_fds() {
        assert!(adopt_channel_fd(1)
            .unwrap_err()
            .to_string()
            .contains("stdio"));

        // Far above any fd limit in use, so it cannot be open (a recently closed number could
        // be reused by another test thread at once, and adopting it would close that fd).
        let err = adopt_channel_fd(999_999).unwrap_err();
        assert!(
            err.to_string()
                .contains("--channel-fd 999999 is not an open file descriptor"),
            "{err}"
        );

        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let raw = OwnedFd::from(tcp).into_raw_fd();
        let err = adopt_channel_fd(raw).unwrap_err();
        assert!(
            err.to_string().contains("not a Unix stream socket"),
            "{err}"
        );
    }

    #[test]
    fn exec_path_goes_through_the_fd() {
        let exe = Executable::open_self().unwrap();
        let path = exe.exec_path();
        assert!(path.starts_with("/proc/self/fd/"));
        assert_eq!(
            std::fs::read_link(&path).unwrap(),
            std::fs::read_link("/proc/self/exe").unwrap()
        );
    }
}
