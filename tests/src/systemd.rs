//! What systemd does to Zentinel, done by the tests themselves: passing listening sockets
//! (socket activation: fds 3.., `LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`) and receiving
//! `sd_notify` datagrams on a `NOTIFY_SOCKET`, with the sender's pid from `SCM_CREDENTIALS`
//! as systemd checks it for `NotifyAccess=`.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, UnixAddr};

use crate::{
    configured_listeners, configured_workers, new_runtime_dir, temp_path, wait_until, zentinel_bin,
    CtlOutput, Zentinel,
};

/// Where the passed sockets are moved before the final `dup2` to 3.., so that a source fd
/// that already sits in 3..3+N is not overwritten before it is copied.
const SCRATCH_FD_BASE: RawFd = 200;

/// `zentinel --config CONFIG` as systemd would start it with `sockets` passed: the sockets at
/// fds 3.., `LISTEN_FDS`, `LISTEN_FDNAMES` (when `names` is given) and `LISTEN_PID` set to
/// the pid zentinel will run as (a `/bin/sh` wrapper exports its own `$$` and execs
/// zentinel, which keeps the pid; `ZENTINEL_TEST_LISTEN_PID` in the command's environment
/// overrides it, to pass sockets meant for another process). Same environment rules as
/// [`crate::master_command`].
pub fn activated_command(
    binary: &Path,
    config_path: &Path,
    runtime_dir: &Path,
    sockets: &[BorrowedFd<'_>],
    names: Option<&str>,
) -> Command {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=${ZENTINEL_TEST_LISTEN_PID:-$$}; export LISTEN_PID; exec \"$@\"")
        .arg("zentinel-activation")
        .arg(binary)
        .arg("--config")
        .arg(config_path);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.args(["--log-level", "info"]);
    }
    cmd.env_remove("ZENTINEL_CONFIG")
        .env_remove("ZENTINEL_SOCKET")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_PID")
        .env("XDG_RUNTIME_DIR", runtime_dir)
        .env("LISTEN_FDS", sockets.len().to_string());
    match names {
        Some(names) => cmd.env("LISTEN_FDNAMES", names),
        None => cmd.env_remove("LISTEN_FDNAMES"),
    };
    let sources: Vec<RawFd> = sockets.iter().map(AsRawFd::as_raw_fd).collect();
    let mut scratch: Vec<RawFd> = vec![-1; sources.len()];
    // SAFETY: runs in the forked child before exec and only calls fcntl and dup2 (both
    // async-signal-safe) on fds that are open in the parent for the whole spawn (the caller
    // borrows them); `scratch` was allocated before the fork and is only written in place.
    unsafe {
        cmd.pre_exec(move || {
            for (slot, &fd) in scratch.iter_mut().zip(&sources) {
                *slot = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, SCRATCH_FD_BASE);
                if *slot < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            for (index, &fd) in scratch.iter().enumerate() {
                // dup2 leaves the new fd without FD_CLOEXEC: it survives both execs.
                if libc::dup2(fd, 3 + index as RawFd) < 0 {
                    return Err(io::Error::last_os_error());
                }
                libc::close(fd);
            }
            Ok(())
        });
    }
    cmd
}

impl Zentinel {
    /// [`Zentinel::start`] under socket activation: `sockets` are passed as fds 3.. (see
    /// [`activated_command`]); `env` is added to the master's environment.
    pub fn start_activated(
        config: &str,
        sockets: &[BorrowedFd<'_>],
        names: Option<&str>,
        env: &[(&str, &str)],
    ) -> Zentinel {
        let config_path = temp_path("config.kdl");
        fs::write(&config_path, config).expect("write temp config");
        let binary = zentinel_bin();
        let runtime_dir = new_runtime_dir();
        let mut cmd = activated_command(&binary, &config_path, &runtime_dir, sockets, names);
        cmd.envs(env.iter().copied());
        Zentinel::launch(
            cmd,
            binary,
            Some(config_path),
            configured_listeners(config),
            configured_workers(config),
            runtime_dir,
            true,
        )
    }
}

/// Runs `cmd` in its own process group until it exits or `deadline` passes (then the whole
/// group is killed); returns its exit code and output.
pub fn run_group_with_deadline(mut cmd: Command, deadline: Duration) -> CtlOutput {
    let out_path = temp_path("stdout");
    let err_path = temp_path("stderr");
    let mut child = cmd
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("create stdout file"))
        .stderr(File::create(&err_path).expect("create stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut status = None;
    if !wait_until(deadline, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    }) {
        eprintln!("{cmd:?} outlived its {deadline:?} deadline; killing its process group");
    }
    // Whatever it started (workers of a master that should have exited) goes too.
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    if status.is_none() {
        status = child.wait().ok();
    }
    let read = |p: &Path| {
        let text = fs::read_to_string(p).unwrap_or_default();
        let _ = fs::remove_file(p);
        text
    };
    CtlOutput {
        code: status.and_then(|s| s.code()),
        stdout: read(&out_path),
        stderr: read(&err_path),
    }
}

/// The inode of the socket behind `fd` (what `/proc/<pid>/fd` shows as `socket:[N]`).
pub fn socket_inode(fd: BorrowedFd<'_>) -> u64 {
    nix::sys::stat::fstat(fd).expect("fstat").st_ino
}

/// Inodes of LISTEN-state IPv4/IPv6 TCP sockets on local port `port`, system-wide.
pub fn listening_inodes_on_port(port: u16) -> BTreeSet<u64> {
    crate::tcp_inodes_on_port(port, "0A")
}

/// The environment of process `pid` as `KEY=VALUE` strings.
pub fn process_environ(pid: u32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// One `sd_notify` datagram.
#[derive(Debug, Clone)]
pub struct Notification {
    /// The sender's pid as the kernel vouches for it (`SCM_CREDENTIALS`).
    pub sender_pid: Option<u32>,
    pub text: String,
}

impl Notification {
    /// The value of `KEY=` in this datagram.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.text
            .lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
    }

    /// Whether it carries `KEY=VALUE` exactly.
    pub fn has(&self, assignment: &str) -> bool {
        self.text.lines().any(|line| line == assignment)
    }
}

/// A `NOTIFY_SOCKET`: a datagram socket bound in a private temp dir (or in the abstract
/// namespace), with `SO_PASSCRED` on like systemd's.
pub struct NotifySocket {
    socket: UnixDatagram,
    /// The value for `NOTIFY_SOCKET`.
    pub address: String,
    dir: Option<PathBuf>,
    /// Every datagram received so far, in order.
    pub received: Vec<Notification>,
}

impl NotifySocket {
    pub fn bind() -> NotifySocket {
        let dir = temp_path("notify");
        fs::create_dir(&dir).expect("create notify dir");
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        Self::with(socket, path.display().to_string(), Some(dir))
    }

    /// Bound in the abstract namespace (`NOTIFY_SOCKET=@name`), as systemd does for user
    /// managers in containers.
    pub fn bind_abstract() -> NotifySocket {
        use std::os::linux::net::SocketAddrExt;
        let name = temp_path("notify")
            .file_name()
            .expect("temp name")
            .to_string_lossy()
            .into_owned();
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .expect("abstract address");
        let socket = UnixDatagram::bind_addr(&address).expect("bind the abstract notify socket");
        Self::with(socket, format!("@{name}"), None)
    }

    fn with(socket: UnixDatagram, address: String, dir: Option<PathBuf>) -> NotifySocket {
        setsockopt(&socket, sockopt::PassCred, &true).expect("SO_PASSCRED");
        NotifySocket {
            socket,
            address,
            dir,
            received: Vec::new(),
        }
    }

    /// The next datagram within `timeout`, if any.
    pub fn recv(&mut self, timeout: Duration) -> Option<Notification> {
        self.socket
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .expect("SO_RCVTIMEO");
        let mut buf = vec![0u8; 4096];
        let mut cmsg = nix::cmsg_space!(libc::ucred);
        let (len, sender_pid) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = match recvmsg::<UnixAddr>(
                self.socket.as_fd().as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::empty(),
            ) {
                Ok(msg) => msg,
                Err(nix::errno::Errno::EAGAIN) => return None,
                Err(err) => panic!("recvmsg on the notify socket: {err}"),
            };
            let sender_pid = msg.cmsgs().ok().and_then(|mut cmsgs| {
                cmsgs.find_map(|c| match c {
                    ControlMessageOwned::ScmCredentials(cred) => Some(cred.pid() as u32),
                    _ => None,
                })
            });
            (msg.bytes, sender_pid)
        };
        let note = Notification {
            sender_pid,
            text: String::from_utf8_lossy(&buf[..len]).into_owned(),
        };
        self.received.push(note.clone());
        Some(note)
    }

    /// Receives until a datagram satisfies `done` (returned with every one before it, since
    /// the last call), or panics with everything received when `timeout` passes.
    pub fn until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&Notification) -> bool,
    ) -> Vec<Notification> {
        let deadline = Instant::now() + timeout;
        let mut batch = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "no notification {what} within {timeout:?}; received so far: {:#?}",
                    self.received
                );
            }
            if let Some(note) = self.recv(left) {
                let finished = done(&note);
                batch.push(note);
                if finished {
                    return batch;
                }
            }
        }
    }

    /// Everything that arrives within `quiet` (e.g. to check that nothing else was sent).
    pub fn drain(&mut self, quiet: Duration) -> Vec<Notification> {
        let mut batch = Vec::new();
        while let Some(note) = self.recv(quiet) {
            batch.push(note);
        }
        batch
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = fs::remove_dir_all(dir);
        }
    }
}
