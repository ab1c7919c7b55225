//! The fd numbers a state file hands over, checked as a set before the new master takes any of
//! them: each number is taken into exactly one owner, so a number named twice would be closed
//! twice (the second close hitting whatever reused the number meanwhile), and a number of
//! stdio is never an inherited socket.

use std::fmt::Write as _;

use super::{MasterStateV8, StateError};

/// One fd number the new master is handed, and what it is (for errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InheritedFd {
    /// The fd number, as the previous master had it open.
    pub fd: i32,
    /// What it is (`listener "http"`, `worker 3's channel`...), for errors that name it.
    pub what: String,
}

impl InheritedFd {
    /// Fd number `fd`, described as `what`.
    pub fn new(fd: i32, what: impl Into<String>) -> Self {
        InheritedFd {
            fd,
            what: what.into(),
        }
    }
}

impl MasterStateV8 {
    /// Every fd number this state hands over, in the order the new master takes them.
    pub fn inherited_fds(&self) -> Vec<InheritedFd> {
        let mut fds = vec![
            InheritedFd::new(self.control_socket_fd, "control socket"),
            InheritedFd::new(self.previous_executable_fd, "previous executable"),
        ];
        fds.extend(
            self.listeners
                .iter()
                .map(|l| InheritedFd::new(l.fd, format!("listener \"{}\"", l.name))),
        );
        fds.extend(self.workers.iter().map(|w| {
            InheritedFd::new(
                w.channel_fd,
                format!("channel of worker {} (pid {})", w.id, w.pid),
            )
        }));
        if let Some(fd) = self.upgrade.as_ref().and_then(|u| u.client_fd) {
            fds.push(InheritedFd::new(fd, "upgrade control client"));
        }
        if let Some(metrics) = &self.metrics_listener {
            fds.push(InheritedFd::new(metrics.fd, "metrics listener"));
        }
        if let Some(cache) = &self.session_cache {
            fds.push(InheritedFd::new(cache.fd, "TLS session cache"));
        }
        fds.extend(
            self.filter_segments.iter().map(|s| {
                InheritedFd::new(s.fd, format!("shared segment of filter \"{}\"", s.name))
            }),
        );
        fds
    }

    /// Refuse the state if any fd number it names (or one of `extra`, such as the readiness
    /// pipe given on the command line) is negative, stdio (0-2), or named twice. Meant to run
    /// before any fd is taken, so a refused state closes nothing.
    pub fn check_inherited_fds(&self, path: &str, extra: &[InheritedFd]) -> Result<(), StateError> {
        let mut all = self.inherited_fds();
        all.extend_from_slice(extra);
        let mut problems = String::new();
        for (index, entry) in all.iter().enumerate() {
            if entry.fd <= 2 {
                let _ = write!(
                    problems,
                    "; {} is fd {}, which is not an inherited descriptor",
                    entry.what, entry.fd
                );
            }
            if let Some(first) = all[..index].iter().find(|e| e.fd == entry.fd) {
                let _ = write!(
                    problems,
                    "; fd {} is named twice ({} and {})",
                    entry.fd, first.what, entry.what
                );
            }
        }
        match problems.strip_prefix("; ") {
            None => Ok(()),
            Some(reason) => Err(StateError::Corrupt {
                path: path.to_owned(),
                reason: format!("{reason}; no fd was taken"),
            }),
        }
    }
}
