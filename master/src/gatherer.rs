//! Ask several workers, gather their answers by request id, finish or time out.
//!
//! One [`Gatherer`] per round of questions (a `zentinel-ctl status`, a reload's
//! `Reconfigure`s, a metrics poll): the caller sends each worker a request with a fresh id
//! ([`crate::request_ids`]), records `(worker, id)` with [`Gatherer::ask`], and hands over
//! every answer it reads with [`Gatherer::answer`]. An answer counts only for the exact
//! request asked of that worker here: another round's id, another master's (a successor that
//! asked and failed during a binary upgrade leaves its answers on the shared channels), a
//! second answer or one after the deadline is refused, and the returned [`Answer`] says why so
//! that the caller can log it. The round is done once every worker asked has answered or can
//! no longer answer (the caller says so with [`Gatherer::gone`]), or at the deadline.
//!
//! Pure bookkeeping, no I/O and no clock of its own: the caller passes the time. (The idea is
//! sozu's `Gatherer`, which collects its workers' answers to one command the same way.)

use std::collections::BTreeMap;
use std::time::Instant;

/// Where one worker's request stands.
#[derive(Debug)]
enum Entry<T> {
    Waiting {
        request_id: u64,
    },
    Answered {
        request_id: u64,
        payload: T,
    },
    /// The caller said the worker cannot answer any more (exited, channel closed).
    Gone {
        request_id: u64,
    },
}

impl<T> Entry<T> {
    fn request_id(&self) -> u64 {
        match self {
            Entry::Waiting { request_id }
            | Entry::Answered { request_id, .. }
            | Entry::Gone { request_id } => *request_id,
        }
    }
}

/// What became of an answer handed to [`Gatherer::answer`]. Anything but `Accepted` was
/// ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Answer {
    /// Recorded: the answer to a request this round waits for.
    Accepted,
    /// Not the answer to anything asked here: the worker was not asked, or was asked under
    /// another id (another round's request, another master's).
    Unknown,
    /// That request was answered already.
    Duplicate,
    /// The round stopped waiting for it: the deadline passed, or the worker was reported gone.
    Late,
}

/// One round of questions to several workers, keyed by `K` (a worker token), with answers of
/// type `T`.
#[derive(Debug)]
pub struct Gatherer<K, T> {
    entries: BTreeMap<K, Entry<T>>,
    deadline: Instant,
}

impl<K: Ord + Copy, T> Gatherer<K, T> {
    /// A round with nobody asked yet, over at `deadline` at the latest.
    pub fn new(deadline: Instant) -> Self {
        Gatherer {
            entries: BTreeMap::new(),
            deadline,
        }
    }

    /// Wait for `key`'s answer to request `request_id`. Asking a worker again replaces the
    /// earlier request: only the latest one's answer counts.
    pub fn ask(&mut self, key: K, request_id: u64) {
        self.entries.insert(key, Entry::Waiting { request_id });
    }

    /// Hand over an answer read from `key` to request `request_id`, at `now`.
    pub fn answer(&mut self, key: K, request_id: u64, payload: T, now: Instant) -> Answer {
        let Some(entry) = self.entries.get_mut(&key) else {
            return Answer::Unknown;
        };
        if entry.request_id() != request_id {
            return Answer::Unknown;
        }
        match entry {
            Entry::Waiting { .. } if now >= self.deadline => Answer::Late,
            Entry::Waiting { .. } => {
                *entry = Entry::Answered {
                    request_id,
                    payload,
                };
                Answer::Accepted
            }
            Entry::Answered { .. } => Answer::Duplicate,
            Entry::Gone { .. } => Answer::Late,
        }
    }

    /// `key` can no longer answer (it exited, or its channel closed): stop waiting for it.
    /// Returns whether it was still awaited. An answer it already gave stays recorded.
    pub fn gone(&mut self, key: K) -> bool {
        match self.entries.get_mut(&key) {
            Some(entry @ Entry::Waiting { .. }) => {
                *entry = Entry::Gone {
                    request_id: entry.request_id(),
                };
                true
            }
            _ => false,
        }
    }

    /// Every worker asked has answered or is gone.
    pub fn all_answered(&self) -> bool {
        !self
            .entries
            .values()
            .any(|entry| matches!(entry, Entry::Waiting { .. }))
    }

    /// Nothing more to wait for at `now`: all answered (or gone), or the deadline passed.
    pub fn is_done(&self, now: Instant) -> bool {
        self.all_answered() || now >= self.deadline
    }

    /// When the round gives up on the silent workers.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The workers asked that have neither answered nor gone (after the deadline: the silent
    /// ones).
    pub fn waiting(&self) -> impl Iterator<Item = K> + '_ {
        self.entries
            .iter()
            .filter(|(_, entry)| matches!(entry, Entry::Waiting { .. }))
            .map(|(key, _)| *key)
    }

    /// The answers recorded so far, by worker.
    pub fn answers(&self) -> impl Iterator<Item = (K, &T)> + '_ {
        self.entries.iter().filter_map(|(key, entry)| match entry {
            Entry::Answered { payload, .. } => Some((*key, payload)),
            Entry::Waiting { .. } | Entry::Gone { .. } => None,
        })
    }

    /// How many workers were asked.
    pub fn asked(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const A: u32 = 1;
    const B: u32 = 2;

    fn round(now: Instant) -> Gatherer<u32, &'static str> {
        let mut g = Gatherer::new(now + Duration::from_secs(1));
        g.ask(A, 10);
        g.ask(B, 11);
        g
    }

    #[test]
    fn done_once_every_worker_answered_its_own_request() {
        let now = Instant::now();
        let mut g = round(now);
        assert!(!g.is_done(now));
        assert_eq!(g.answer(A, 10, "a", now), Answer::Accepted);
        assert!(!g.all_answered() && !g.is_done(now));
        assert_eq!(g.waiting().collect::<Vec<_>>(), vec![B]);
        assert_eq!(g.answer(B, 11, "b", now), Answer::Accepted);
        assert!(g.all_answered() && g.is_done(now));
        assert_eq!(g.answers().collect::<Vec<_>>(), vec![(A, &"a"), (B, &"b")]);
        assert_eq!(g.asked(), 2);
    }

    #[test]
    fn nobody_asked_is_done_at_once() {
        let now = Instant::now();
        let g: Gatherer<u32, ()> = Gatherer::new(now + Duration::from_secs(1));
        assert!(g.is_done(now));
        assert_eq!(g.waiting().count(), 0);
    }

    /// The stale answer of the issue: a worker's answer to another request (an older round's,
    /// or one a failed successor master asked) satisfies nothing.
    #[test]
    fn an_answer_to_another_request_id_is_ignored() {
        let now = Instant::now();
        let mut g = round(now);
        assert_eq!(g.answer(A, 9, "stale", now), Answer::Unknown);
        assert_eq!(g.answer(A, 11, "b's id", now), Answer::Unknown);
        assert!(!g.all_answered());
        assert_eq!(g.waiting().collect::<Vec<_>>(), vec![A, B]);
        assert_eq!(g.answers().count(), 0);
        // The real answer still counts afterwards.
        assert_eq!(g.answer(A, 10, "fresh", now), Answer::Accepted);
        assert_eq!(g.answers().collect::<Vec<_>>(), vec![(A, &"fresh")]);
    }

    #[test]
    fn a_worker_never_asked_is_unknown() {
        let now = Instant::now();
        let mut g = round(now);
        assert_eq!(g.answer(3, 10, "who", now), Answer::Unknown);
        assert_eq!(g.asked(), 2);
    }

    #[test]
    fn a_second_answer_is_a_duplicate_and_keeps_the_first() {
        let now = Instant::now();
        let mut g = round(now);
        assert_eq!(g.answer(A, 10, "first", now), Answer::Accepted);
        assert_eq!(g.answer(A, 10, "second", now), Answer::Duplicate);
        assert_eq!(g.answers().collect::<Vec<_>>(), vec![(A, &"first")]);
    }

    #[test]
    fn asking_again_replaces_the_earlier_request() {
        let now = Instant::now();
        let mut g = round(now);
        g.ask(A, 12);
        assert_eq!(g.answer(A, 10, "old", now), Answer::Unknown);
        assert_eq!(g.answer(A, 12, "new", now), Answer::Accepted);
    }

    #[test]
    fn a_gone_worker_is_not_waited_for() {
        let now = Instant::now();
        let mut g = round(now);
        assert_eq!(g.answer(A, 10, "a", now), Answer::Accepted);
        assert!(g.gone(B));
        assert!(!g.gone(B), "already gone");
        assert!(g.all_answered() && g.is_done(now));
        assert_eq!(g.waiting().count(), 0);
        // An answer still buffered when it went comes too late.
        assert_eq!(g.answer(B, 11, "b", now), Answer::Late);
        assert_eq!(g.answers().collect::<Vec<_>>(), vec![(A, &"a")]);
    }

    #[test]
    fn going_away_after_answering_keeps_the_answer() {
        let now = Instant::now();
        let mut g = round(now);
        assert_eq!(g.answer(A, 10, "a", now), Answer::Accepted);
        assert!(!g.gone(A));
        assert_eq!(g.answers().collect::<Vec<_>>(), vec![(A, &"a")]);
        assert!(!g.gone(7), "never asked");
    }

    #[test]
    fn the_deadline_ends_the_round_with_the_silent_workers_named() {
        let now = Instant::now();
        let mut g = round(now);
        assert_eq!(g.answer(A, 10, "a", now), Answer::Accepted);
        let deadline = g.deadline();
        assert_eq!(deadline, now + Duration::from_secs(1));
        assert!(!g.is_done(deadline - Duration::from_millis(1)));
        assert!(g.is_done(deadline));
        assert!(!g.all_answered());
        assert_eq!(g.waiting().collect::<Vec<_>>(), vec![B]);
    }

    #[test]
    fn an_answer_after_the_deadline_is_late() {
        let now = Instant::now();
        let mut g = round(now);
        let after = g.deadline() + Duration::from_millis(1);
        assert_eq!(g.answer(B, 11, "b", after), Answer::Late);
        assert_eq!(g.waiting().collect::<Vec<_>>(), vec![A, B]);
        assert_eq!(g.answers().count(), 0);
        // Still refused for a stale id first: the caller learns the most useful reason.
        assert_eq!(g.answer(B, 3, "b", after), Answer::Unknown);
    }
}
