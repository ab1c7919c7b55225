//! Request ids, unique across masters, and the matching of a worker's answers to them.
//!
//! During a binary upgrade two masters read the same worker channels: the successor asks the
//! workers it adopted for their status before it confirms, and if it fails then, the answers
//! it did not read reach the previous master, which never asked. The previous master must
//! not take them for answers to its own requests, so no id a successor draws may equal one
//! the previous master is waiting for.
//!
//! An id is `prefix << 32 | counter`. The counter counts this master's requests (from 1,
//! never 0: that is [`zentinel_protocol::messages::NO_REQUEST_ID`]). The prefix holds this
//! master's pid in its low 22 bits (Linux pids stay below `PID_MAX_LIMIT`, 2^22) and 10 bits of
//! a nonce drawn at start above them:
//! - the pid makes the prefix differ between any two masters alive at the same time, which
//!   covers the case above: a successor runs while the previous master runs, so their pids
//!   differ, and the previous master, alive throughout, keeps its own;
//! - pids are reused, though: a successor that failed and a later one may get the same pid,
//!   and the later one may find the first one's answers still unread on the channels. The
//!   nonce sets them apart but for a 1 in 1024 chance, on top of the pid being reused just
//!   then.
//!
//! Workers answer in order. [`Outstanding`] keeps one worker's requests of one kind, oldest
//! first, and takes each answer's request off it: by id; or, for a worker of protocol 3 or
//! older, whose answers carry no id, the oldest (order matching: such a worker's answer to a
//! request this master did not send is recognised only when none of ours is outstanding).

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

/// Bits of the prefix that hold the pid.
const PID_BITS: u32 = 22;
const PID_MASK: u32 = (1 << PID_BITS) - 1;
/// Bits of the prefix that hold the nonce.
const NONCE_MASK: u32 = (1 << (32 - PID_BITS)) - 1;

/// This master's source of request ids.
#[derive(Debug)]
pub struct RequestIds {
    prefix: u32,
    counter: u32,
}

impl RequestIds {
    /// Ids for this process: its pid and a fresh nonce.
    pub fn for_this_master() -> Self {
        Self::new(std::process::id(), nonce())
    }

    /// Ids for master `pid` with `nonce` (only its low 10 bits are used).
    pub fn new(pid: u32, nonce: u32) -> Self {
        RequestIds {
            prefix: (pid & PID_MASK) | ((nonce & NONCE_MASK) << PID_BITS),
            counter: 0,
        }
    }

    /// A new id: never 0, never one drawn before (until 2^32 requests wrap the counter).
    pub fn draw(&mut self) -> u64 {
        self.counter = self.counter.wrapping_add(1).max(1);
        (u64::from(self.prefix) << 32) | u64::from(self.counter)
    }

    /// Whether this master drew `request_id`'s prefix.
    pub fn is_ours(&self, request_id: u64) -> bool {
        request_id >> 32 == u64::from(self.prefix)
    }

    /// The pid (its low 22 bits) of the master that drew `request_id`, for logs.
    pub fn master_pid_of(request_id: u64) -> u64 {
        (request_id >> 32) & u64::from(PID_MASK)
    }
}

/// 10 bits that differ from one master to the next: the standard library's per-process
/// random hash keys, over the time.
fn nonce() -> u32 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(now);
    u32::try_from(hasher.finish() & u64::from(NONCE_MASK)).unwrap_or(0)
}

/// What an answer took off a worker's [`Outstanding`] requests.
#[derive(Debug, PartialEq, Eq)]
pub enum Matched<T> {
    /// The request it answers, with what the caller recorded for it. `overtaken`: older
    /// requests whose answers never came here (the worker answers in order, so another
    /// master read them during an upgrade); this answer is the freshest there will be for
    /// them too.
    Request {
        request_id: u64,
        value: T,
        overtaken: Vec<(u64, T)>,
    },
    /// No outstanding request has that id: another master's request, or one answered already.
    Stale,
    /// An answer without an id while nothing is outstanding: an old worker answering a
    /// request this master did not send.
    Unsolicited,
}

/// One worker's requests of one kind that wait for an answer, oldest first, each with what
/// the caller needs when it comes.
#[derive(Debug)]
pub struct Outstanding<T> {
    queue: VecDeque<(u64, T)>,
}

impl<T> Default for Outstanding<T> {
    fn default() -> Self {
        Outstanding {
            queue: VecDeque::new(),
        }
    }
}

impl<T> Outstanding<T> {
    /// Request `request_id` was sent.
    pub fn push(&mut self, request_id: u64, value: T) {
        self.queue.push_back((request_id, value));
    }

    /// Whether `request_id` still waits for its answer.
    pub fn contains(&self, request_id: u64) -> bool {
        self.queue.iter().any(|(id, _)| *id == request_id)
    }

    /// How many requests wait.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// No request waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// An answer carrying `request_id` (protocol 4 and later).
    pub fn take(&mut self, request_id: u64) -> Matched<T> {
        let Some(at) = self.queue.iter().position(|(id, _)| *id == request_id) else {
            return Matched::Stale;
        };
        let mut overtaken: Vec<(u64, T)> = self.queue.drain(..=at).collect();
        match overtaken.pop() {
            Some((request_id, value)) => Matched::Request {
                request_id,
                value,
                overtaken,
            },
            None => Matched::Stale,
        }
    }

    /// An answer without an id (protocol 3 and older): it answers the oldest request.
    pub fn take_oldest(&mut self) -> Matched<T> {
        match self.queue.pop_front() {
            Some((request_id, value)) => Matched::Request {
                request_id,
                value,
                overtaken: Vec::new(),
            },
            None => Matched::Unsolicited,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_count_up_under_the_masters_prefix_and_are_never_zero() {
        let mut ids = RequestIds::new(4321, 7);
        let first = ids.draw();
        assert_eq!(first >> 32, u64::from(4321u32 | (7u32 << 22)));
        assert_eq!(first & 0xFFFF_FFFF, 1);
        assert_eq!(ids.draw(), first + 1);
        assert!(ids.is_ours(first));
        assert_eq!(RequestIds::master_pid_of(first), 4321);
        // The counter wraps past 0.
        let mut ids = RequestIds::new(1, 0);
        ids.counter = u32::MAX;
        assert_eq!(ids.draw() & 0xFFFF_FFFF, 1);
    }

    /// Two masters alive together have different pids: none of one's ids is the other's,
    /// whatever their nonces.
    #[test]
    fn masters_alive_together_never_share_an_id() {
        let mut previous = RequestIds::new(100, 5);
        let mut successor = RequestIds::new(200, 5);
        let theirs: Vec<u64> = (0..1000).map(|_| successor.draw()).collect();
        for _ in 0..1000 {
            let ours = previous.draw();
            assert!(!theirs.contains(&ours));
        }
        assert!(theirs.iter().all(|id| !previous.is_ours(*id)));
        // The pid's bits are all kept (up to Linux's largest pid).
        let big = RequestIds::new(PID_MASK, 0);
        let mut neighbour = RequestIds::new(PID_MASK - 1, 0);
        assert!(!big.is_ours(neighbour.draw()));
    }

    /// A later successor that got a failed one's pid back is told apart by its nonce.
    #[test]
    fn a_reused_pid_gets_other_ids_through_the_nonce() {
        let mut failed = RequestIds::new(300, 1);
        let later = RequestIds::new(300, 2);
        assert!(!later.is_ours(failed.draw()));
        // Nonces differ from one master to the next (a 1 in 1024 chance of a repeat per
        // pair: of 8 draws, at least two differ unless something is broken).
        let nonces: std::collections::BTreeSet<u32> = (0..8).map(|_| nonce()).collect();
        assert!(nonces.len() > 1, "{nonces:?}");
        assert!(nonces.iter().all(|n| *n <= NONCE_MASK));
    }

    #[test]
    fn an_answer_takes_its_own_request() {
        let mut out = Outstanding::default();
        out.push(10, "a");
        out.push(11, "b");
        assert_eq!(
            out.take(10),
            Matched::Request {
                request_id: 10,
                value: "a",
                overtaken: vec![]
            }
        );
        assert!(!out.contains(10) && out.contains(11));
        assert_eq!(out.len(), 1);
    }

    /// The case: answers to requests this master never sent (a failed successor's)
    /// arrive before the answer to its own; they take nothing.
    #[test]
    fn answers_to_other_masters_requests_are_stale() {
        let mut successor = RequestIds::new(200, 9);
        let mut previous = RequestIds::new(100, 3);
        let mut out = Outstanding::default();
        let ours = previous.draw();
        out.push(ours, ());
        assert_eq!(out.take(successor.draw()), Matched::Stale);
        assert_eq!(out.take(successor.draw()), Matched::Stale);
        assert!(out.contains(ours));
        assert!(
            matches!(out.take(ours), Matched::Request { request_id, .. } if request_id == ours)
        );
        // Answered once: a repeat is stale too.
        assert_eq!(out.take(ours), Matched::Stale);
        assert!(out.is_empty());
    }

    /// An answer whose older requests' answers went to another master answers them too.
    #[test]
    fn a_later_answer_overtakes_older_requests() {
        let mut out = Outstanding::default();
        out.push(1, "x");
        out.push(2, "y");
        out.push(3, "z");
        assert_eq!(
            out.take(2),
            Matched::Request {
                request_id: 2,
                value: "y",
                overtaken: vec![(1, "x")]
            }
        );
        assert!(out.contains(3) && out.len() == 1);
    }

    /// Protocol 3 and older: answers carry no id and are matched by order; one with nothing
    /// outstanding is recognised as unsolicited.
    #[test]
    fn answers_without_ids_take_the_oldest_request() {
        let mut out = Outstanding::default();
        assert_eq!(out.take_oldest(), Matched::<()>::Unsolicited);
        out.push(5, ());
        out.push(6, ());
        assert!(matches!(
            out.take_oldest(),
            Matched::Request { request_id: 5, .. }
        ));
        assert!(matches!(
            out.take_oldest(),
            Matched::Request { request_id: 6, .. }
        ));
        assert_eq!(out.take_oldest(), Matched::Unsolicited);
    }
}
