//! Deadlines for the event loop: an ordered map keyed by `(Instant, sequence)`.
//!
//! Each owner (a session, an idle upstream connection, the accept back-off, the drain) holds at
//! most one [`TimerId`] and moves it with [`Timers::set`]. A fired id is only acted upon if the
//! owner still holds that exact id, so a slab key reused by a new session never inherits an
//! old deadline.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Identity of one armed deadline (its instant plus a unique sequence number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimerId {
    at: Instant,
    seq: u64,
}

/// Who a deadline belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerKey {
    Session(usize),
    IdleUpstream(usize),
    /// The health probe schedule of (pool key, target index).
    Health(usize, usize),
    /// A mirrored request's timeout (key in the shadow table).
    Shadow(usize),
    AcceptBackoff,
    Drain,
    /// Time to look the upstream host names up again.
    DnsRefresh,
    /// An HTTP/2 upstream connection's idle timeout or PING schedule (key in its table).
    H2Upstream(usize),
}

#[derive(Debug)]
pub struct Timers<K> {
    map: BTreeMap<TimerId, K>,
    next_seq: u64,
}

impl TimerId {
    /// When it fires.
    pub fn at(&self) -> Instant {
        self.at
    }
}

impl<K: Copy> Default for Timers<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Copy> Timers<K> {
    pub fn new() -> Self {
        Timers {
            map: BTreeMap::new(),
            next_seq: 0,
        }
    }

    pub fn insert(&mut self, at: Instant, key: K) -> TimerId {
        let id = TimerId {
            at,
            seq: self.next_seq,
        };
        self.next_seq += 1;
        self.map.insert(id, key);
        id
    }

    pub fn cancel(&mut self, id: TimerId) {
        self.map.remove(&id);
    }

    /// Move the owner's single deadline to `want` (or disarm it), touching the map only when
    /// the instant actually changes.
    pub fn set(&mut self, slot: &mut Option<TimerId>, want: Option<Instant>, key: K) {
        match (*slot, want) {
            (Some(cur), Some(at)) if cur.at == at => {}
            (cur, want) => {
                if let Some(cur) = cur {
                    self.cancel(cur);
                }
                *slot = want.map(|at| self.insert(at, key));
            }
        }
    }

    /// Make the owner's single deadline fire no later than `want`: an armed deadline that is
    /// already earlier is kept as it is. For owners whose deadline moves on every event (a
    /// busy connection): the map is touched only when the deadline comes closer, and the
    /// owner, when an early deadline fires, checks its real one and arms again.
    pub fn set_no_later(&mut self, slot: &mut Option<TimerId>, want: Option<Instant>, key: K) {
        match (*slot, want) {
            (Some(cur), Some(at)) if cur.at <= at => {}
            _ => self.set(slot, want, key),
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.map.keys().next().map(|id| id.at)
    }

    /// Remove and return the earliest deadline at or before `now`.
    pub fn pop_expired(&mut self, now: Instant) -> Option<(TimerId, K)> {
        let (&id, _) = self.map.iter().next()?;
        if id.at <= now {
            self.map.remove(&id).map(|k| (id, k))
        } else {
            None
        }
    }

    /// How long `poll` may sleep: until the next deadline (rounded up to a whole millisecond
    /// so the loop does not wake a hair early and spin), or `None` for no deadline.
    pub fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        self.next_deadline().map(|at| {
            let d = at.saturating_duration_since(now);
            let ms = d.as_nanos().div_ceil(1_000_000);
            Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
        })
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// `d` in whole milliseconds, for log fields (saturating: no duration here comes near it).
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expire_in_deadline_order() {
        let mut t = Timers::new();
        let now = Instant::now();
        t.insert(now + Duration::from_millis(30), 3);
        t.insert(now + Duration::from_millis(10), 1);
        t.insert(now + Duration::from_millis(20), 2);
        assert_eq!(t.next_deadline(), Some(now + Duration::from_millis(10)));
        assert!(t.pop_expired(now).is_none());
        let later = now + Duration::from_millis(25);
        assert_eq!(t.pop_expired(later).map(|x| x.1), Some(1));
        assert_eq!(t.pop_expired(later).map(|x| x.1), Some(2));
        assert!(t.pop_expired(later).is_none());
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn same_instant_distinct_entries() {
        let mut t = Timers::new();
        let at = Instant::now();
        let a = t.insert(at, 'a');
        let b = t.insert(at, 'b');
        assert_ne!(a, b);
        t.cancel(a);
        assert_eq!(t.pop_expired(at), Some((b, 'b')));
        assert!(t.is_empty());
    }

    #[test]
    fn set_moves_and_disarms() {
        let mut t = Timers::new();
        let now = Instant::now();
        let mut slot = None;
        t.set(&mut slot, Some(now + Duration::from_secs(5)), 7);
        let first = slot;
        t.set(&mut slot, Some(now + Duration::from_secs(5)), 7);
        assert_eq!(slot, first, "same instant keeps the same id");
        t.set(&mut slot, Some(now + Duration::from_secs(1)), 7);
        assert_eq!(t.len(), 1);
        assert_eq!(t.next_deadline(), Some(now + Duration::from_secs(1)));
        t.set(&mut slot, None, 7);
        assert!(t.is_empty());
        assert!(slot.is_none());
    }

    #[test]
    fn set_no_later_only_moves_earlier() {
        let mut t = Timers::new();
        let now = Instant::now();
        let mut slot = None;
        t.set_no_later(&mut slot, Some(now + Duration::from_secs(5)), 7);
        let first = slot;
        assert!(first.is_some());
        t.set_no_later(&mut slot, Some(now + Duration::from_secs(9)), 7);
        assert_eq!(slot, first, "a later deadline keeps the earlier timer");
        t.set_no_later(&mut slot, Some(now + Duration::from_secs(2)), 7);
        assert_ne!(slot, first);
        assert_eq!(t.len(), 1);
        assert_eq!(t.next_deadline(), Some(now + Duration::from_secs(2)));
        t.set_no_later(&mut slot, None, 7);
        assert!(t.is_empty() && slot.is_none());
    }

    #[test]
    fn poll_timeout_rounds_up() {
        let mut t = Timers::new();
        let now = Instant::now();
        assert_eq!(t.poll_timeout(now), None);
        t.insert(now + Duration::from_micros(1500), ());
        assert_eq!(t.poll_timeout(now), Some(Duration::from_millis(2)));
        assert_eq!(
            t.poll_timeout(now + Duration::from_secs(1)),
            Some(Duration::ZERO)
        );
    }
}
