//! How many sessions the open-file limit leaves room for.
//!
//! A session costs up to two file descriptors (the client and its upstream connection), an
//! idle pooled upstream connection one, and a tunnel direction moved by splice two (its pipe). Accepting past what the limit allows does not refuse
//! the extra client: it moves the failure to the upstream connect, which then fails with
//! `EMFILE`, so a client that was already being served gets a 502. The worker stops accepting
//! before that point instead (closing idle pooled connections first) and leaves the rest in the
//! kernel's backlog until a session ends.

use std::io;

use nix::sys::resource::{getrlimit, Resource};

/// Descriptors kept free for what is not a session: a reload's new listener set (duplicates and
/// its epoll instance), fds arriving with control messages, health checks, logging.
const RESERVED: usize = 16;

#[derive(Debug, Clone, Copy)]
pub struct FdBudget {
    /// Descriptors sessions and pooled connections may use in all.
    available: usize,
}

impl FdBudget {
    /// Measure once everything the worker keeps for life is open (channel, epoll, listeners).
    pub fn measure() -> io::Result<FdBudget> {
        let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
        let limit = usize::try_from(soft).unwrap_or(usize::MAX);
        // The directory handle read_dir holds is counted too: one more reserved, harmless.
        let open = std::fs::read_dir("/proc/self/fd")?.count();
        Ok(FdBudget::new(limit, open))
    }

    fn new(limit: usize, open: usize) -> FdBudget {
        FdBudget {
            available: limit.saturating_sub(open.saturating_add(RESERVED)),
        }
    }

    /// No limit (when the limit cannot be read: the accept back-off still copes with EMFILE).
    pub fn unlimited() -> FdBudget {
        FdBudget {
            available: usize::MAX,
        }
    }

    /// Whether one more session fits next to `sessions` sessions and `held` descriptors held
    /// beside them (idle pooled connections, splice pipes).
    pub fn allows_one_more(&self, sessions: usize, held: usize) -> bool {
        sessions
            .saturating_add(1)
            .saturating_mul(2)
            .saturating_add(held)
            <= self.available
    }

    pub fn available(&self) -> usize {
        self.available
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_descriptors_per_session_plus_idle_connections() {
        // 64 allowed, 8 open at start: 40 for sessions after the reserve.
        let b = FdBudget::new(64, 8);
        assert_eq!(b.available(), 40);
        assert!(b.allows_one_more(19, 0));
        assert!(!b.allows_one_more(20, 0));
        assert!(b.allows_one_more(15, 8));
        assert!(!b.allows_one_more(15, 9));
    }

    #[test]
    fn tiny_or_unlimited_limits_do_not_overflow() {
        assert!(!FdBudget::new(10, 8).allows_one_more(0, 0));
        assert!(FdBudget::new(usize::MAX, 8).allows_one_more(1_000_000, 1_000_000));
        assert!(FdBudget::unlimited().allows_one_more(usize::MAX, usize::MAX));
    }
}
