//! systemd integration without libsystemd (docs/design/upgrades.md, "systemd").
//!
//! - Socket activation ([`take_listen_fds`]): `sd_listen_fds(unset_environment = 1)`. The
//!   sockets start at fd 3, `LISTEN_PID` must be our pid, and the variables are removed so
//!   that no child (a worker, or the successor master of a binary upgrade) believes they are
//!   meant for it. Matching them to listeners is [`crate::listeners::adopt_activated`]'s job.
//! - `Type=notify` ([`notify`]): one `AF_UNIX` datagram per state change to `$NOTIFY_SOCKET`
//!   (a path, or an abstract name when it starts with `@`). `NOTIFY_SOCKET` stays in the
//!   environment on purpose: a successor master must be able to send `MAINPID=` itself.
//!
//! Notification failures are logged and never fatal: a proxy that serves traffic but cannot
//! tell systemd so is better than one that exits over it.

use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixSocketAddr, UnixDatagram};
use std::time::Duration;

/// The first passed fd (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;
/// More than this many passed sockets is not a plausible configuration but a garbled variable.
const MAX_LISTEN_FDS: usize = 4096;
/// A notification that cannot be queued within this long is given up on: the master's event
/// loop must not stall behind a stuck service manager.
const NOTIFY_SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// One socket systemd passed us, not checked yet.
#[derive(Debug)]
pub struct ActivatedSocket {
    pub fd: OwnedFd,
    /// Its fd number at start-up, for messages.
    pub number: RawFd,
    /// Its name from `LISTEN_FDNAMES` (`FileDescriptorName=`, by default the socket unit's
    /// name).
    pub name: Option<String>,
}

/// What [`take_listen_fds`] found.
#[derive(Debug, Default)]
pub struct ListenFds {
    pub sockets: Vec<ActivatedSocket>,
    /// Things worth a warning, logged by the caller once logging is up (this runs before).
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("socket activation: {variable}={value:?} is not a valid number")]
    Invalid {
        variable: &'static str,
        value: String,
    },
    #[error("socket activation: LISTEN_FDS={count} is more than the {MAX_LISTEN_FDS} supported")]
    TooMany { count: usize },
    #[error("socket activation: LISTEN_FDS={count} but fd {fd} is not open: {source}")]
    NotOpen {
        count: usize,
        fd: RawFd,
        #[source]
        source: io::Error,
    },
}

/// Take the sockets systemd passed (`LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`) and remove
/// the three variables in every case, like `sd_listen_fds(1)`.
///
/// Call first thing in `main`, before any other fd is opened (fd 3 onwards must still be the
/// inherited ones) and before any thread exists (it changes the environment). Each returned
/// fd is close-on-exec.
pub fn take_listen_fds() -> Result<ListenFds, ActivationError> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let names = std::env::var("LISTEN_FDNAMES").ok();
    for variable in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // Single-threaded here (see above), so changing the environment races with nobody.
        std::env::remove_var(variable);
    }
    parse_listen_fds(
        pid.as_deref(),
        fds.as_deref(),
        names.as_deref(),
        std::process::id(),
    )
}

/// Remove the socket-activation variables without taking anything: a master started by a
/// binary upgrade inherits its listeners through the state file, and a predecessor that did
/// not clear the variables must not make them reach our workers.
pub fn forget_listen_fds() {
    for variable in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // Called before any thread exists, like take_listen_fds.
        std::env::remove_var(variable);
    }
}

fn parse_listen_fds(
    pid: Option<&str>,
    fds: Option<&str>,
    names: Option<&str>,
    our_pid: u32,
) -> Result<ListenFds, ActivationError> {
    let mut found = ListenFds::default();
    let Some(fds) = fds else {
        return Ok(found);
    };
    let Some(pid) = pid else {
        found.warnings.push(format!(
            "socket activation: LISTEN_FDS={fds} without LISTEN_PID; ignored"
        ));
        return Ok(found);
    };
    let pid: u32 = pid.trim().parse().map_err(|_| ActivationError::Invalid {
        variable: "LISTEN_PID",
        value: pid.to_owned(),
    })?;
    if pid != our_pid {
        // systemd semantics: the sockets were meant for another process (typically a parent
        // that exec'd us without clearing the variables); leave them alone.
        found.warnings.push(format!(
            "socket activation: LISTEN_PID={pid} is not our pid {our_pid}; LISTEN_FDS ignored"
        ));
        return Ok(found);
    }
    let count: usize = fds.trim().parse().map_err(|_| ActivationError::Invalid {
        variable: "LISTEN_FDS",
        value: fds.to_owned(),
    })?;
    if count > MAX_LISTEN_FDS {
        return Err(ActivationError::TooMany { count });
    }
    let mut names: Option<Vec<String>> = names.map(|n| n.split(':').map(str::to_owned).collect());
    if let Some(list) = &names {
        if list.len() != count {
            found.warnings.push(format!(
                "socket activation: LISTEN_FDNAMES has {} names for LISTEN_FDS={count}; names ignored",
                list.len()
            ));
            names = None;
        }
    }
    for index in 0..count {
        // `count` is at most MAX_LISTEN_FDS, so this cannot overflow.
        let number = LISTEN_FDS_START + index as RawFd;
        // The socket-activation protocol reserves fds 3..3+LISTEN_FDS for us: nothing else in
        // this process owns them. The variables are gone, so each is taken exactly once.
        let fd =
            crate::sys::take_inherited_fd(number).map_err(|source| ActivationError::NotOpen {
                count,
                fd: number,
                source,
            })?;
        // Close-on-exec, so that only the copies the master hands out on purpose reach a
        // child. It cannot fail on an fd just found open.
        let _ = crate::sys::set_cloexec(number);
        let name = names
            .as_ref()
            .and_then(|n| n.get(index))
            .filter(|n| !n.is_empty())
            .cloned();
        found.sockets.push(ActivatedSocket { fd, number, name });
    }
    Ok(found)
}

// ----- sd_notify -----

/// Send one notification (newline-separated `KEY=VALUE` assignments) to `$NOTIFY_SOCKET`.
/// `Ok(false)`: not running under a service manager that asked for notifications.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let address = notify_address(target.as_encoded_bytes())?;
    let socket = UnixDatagram::unbound()?;
    socket.set_write_timeout(Some(NOTIFY_SEND_TIMEOUT))?;
    let sent = socket.send_to_addr(state.as_bytes(), &address)?;
    if sent != state.len() {
        return Err(io::Error::other(format!(
            "short datagram ({sent} of {} bytes)",
            state.len()
        )));
    }
    Ok(true)
}

fn notify_address(target: &[u8]) -> io::Result<UnixSocketAddr> {
    match target.first() {
        Some(b'@') => UnixSocketAddr::from_abstract_name(&target[1..]),
        Some(b'/') => {
            use std::os::unix::ffi::OsStrExt;
            UnixSocketAddr::from_pathname(std::ffi::OsStr::from_bytes(target))
        }
        _ => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "NOTIFY_SOCKET={:?} is neither an absolute path nor an abstract name (@...)",
                String::from_utf8_lossy(target)
            ),
        )),
    }
}

/// [`notify`], with the outcome logged. Never fails: systemd integration must not take the
/// proxy down.
pub fn notify_logged(state: &str) {
    let summary = state.replace('\n', " ");
    match notify(state) {
        Ok(true) => tracing::debug!(notification = %summary, "notified the service manager"),
        Ok(false) => {}
        Err(err) => tracing::warn!(
            notification = %summary,
            notify_socket = ?std::env::var_os("NOTIFY_SOCKET"),
            error = %err,
            "cannot notify the service manager"
        ),
    }
}

/// `STATUS=` is one line of free text.
fn status_line(status: &str) -> String {
    status.replace(['\n', '\r'], " ")
}

/// Serving (at start-up, after a reload, after an upgrade). `MAINPID=` is always ours: the
/// process that says READY is the one to watch.
pub fn ready(status: &str) {
    notify_logged(&format!(
        "READY=1\nMAINPID={}\nSTATUS={}",
        std::process::id(),
        status_line(status)
    ));
}

/// A reload (or a binary upgrade) begins. `MONOTONIC_USEC=` is what systemd >= 253 wants
/// next to `RELOADING=1` to tell this reload from an earlier one.
pub fn reloading(status: &str) {
    notify_logged(&format!(
        "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS={}",
        monotonic_usec(),
        status_line(status)
    ));
}

/// A real stop begins (never sent by a master that hands over to a successor).
pub fn stopping(status: &str) {
    notify_logged(&format!("STOPPING=1\nSTATUS={}", status_line(status)));
}

/// Only the status text changes.
pub fn status(status: &str) {
    notify_logged(&format!("STATUS={}", status_line(status)));
}

/// `CLOCK_MONOTONIC` in microseconds, the clock systemd compares `MONOTONIC_USEC=` with.
pub fn monotonic_usec() -> u64 {
    let Ok(now) = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) else {
        return 0;
    };
    let secs = u64::try_from(now.tv_sec()).unwrap_or(0);
    let nanos = u64::try_from(now.tv_nsec()).unwrap_or(0);
    secs.saturating_mul(1_000_000).saturating_add(nanos / 1_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn no_variables_means_no_sockets() {
        let found = parse_listen_fds(None, None, None, 42).unwrap();
        assert!(found.sockets.is_empty());
        assert!(found.warnings.is_empty());
    }

    #[test]
    fn another_pid_is_ignored_with_a_warning() {
        let found = parse_listen_fds(Some("41"), Some("2"), None, 42).unwrap();
        assert!(found.sockets.is_empty());
        assert!(
            found.warnings[0].contains("LISTEN_PID=41"),
            "{:?}",
            found.warnings
        );
    }

    #[test]
    fn garbage_is_an_error_naming_the_variable() {
        let err = parse_listen_fds(Some("42"), Some("two"), None, 42).unwrap_err();
        assert!(err.to_string().contains("LISTEN_FDS=\"two\""), "{err}");
        let err = parse_listen_fds(Some("x"), Some("1"), None, 42).unwrap_err();
        assert!(err.to_string().contains("LISTEN_PID"), "{err}");
        let err = parse_listen_fds(Some("42"), Some("100000"), None, 42).unwrap_err();
        assert!(err.to_string().contains("100000"), "{err}");
    }

    #[test]
    fn zero_fds_is_nothing() {
        let found = parse_listen_fds(Some("42"), Some("0"), Some(""), 42).unwrap();
        assert!(found.sockets.is_empty());
    }

    #[test]
    fn abstract_and_path_addresses() {
        let abstract_addr = notify_address(b"@zentinel/notify").unwrap();
        assert_eq!(
            abstract_addr.as_abstract_name(),
            Some(&b"zentinel/notify"[..])
        );
        let path = notify_address(b"/run/systemd/notify").unwrap();
        assert_eq!(
            path.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        assert!(notify_address(b"vsock:2:1234").is_err());
        assert!(notify_address(b"").is_err());
    }

    #[test]
    fn datagrams_reach_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("zentinel-notify-unit-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let receiver = UnixDatagram::bind(&path).unwrap();
        let address = notify_address(path.as_os_str().as_encoded_bytes()).unwrap();
        let sender = UnixDatagram::unbound().unwrap();
        sender.send_to_addr(b"READY=1", &address).unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        assert!(receiver.as_raw_fd() >= 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn monotonic_clock_moves_forward() {
        let a = monotonic_usec();
        let b = monotonic_usec();
        assert!(a > 0 && b >= a);
    }
}
