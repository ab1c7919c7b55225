//! What a session may touch while it handles an event: the registry, the upstream pools, the
//! timers and counters, the newest configuration generation. Borrowed from the event loop for
//! one call.

use std::rc::Rc;
use std::time::Instant;

use mio::Registry;

use crate::counters::Counters;
use crate::generation::Generation;
use crate::timers::{TimerKey, Timers};
use crate::upstream::{UpConn, Upstreams};

pub struct Ctx<'a> {
    pub registry: &'a Registry,
    pub upstreams: &'a mut Upstreams,
    pub timers: &'a mut Timers<TimerKey>,
    pub counters: &'a mut Counters,
    /// The generation new sessions (and HTTP sessions between requests) adopt.
    pub current: &'a Rc<Generation>,
    pub now: Instant,
    pub draining: bool,
    /// Test-only: answer every HTTP request with a 500 (`fault_injection::Fault::Respond500`).
    pub respond_500: bool,
    /// Sessions that stopped with work left (their turn's budget used up, see
    /// [`Ctx::yield_turn`]): the event loop runs them again after the next poll.
    pub yielded: &'a mut Vec<usize>,
}

impl Ctx<'_> {
    /// Session `key` could go on (its socket still takes bytes) but has had its share of this
    /// turn: it runs again once the other ready sockets had theirs. With edge-triggered
    /// readiness no new event would come for a socket that was not written until it was full,
    /// so this is what brings the session back.
    pub fn yield_turn(&mut self, key: usize) {
        self.yielded.push(key);
    }

    /// Close an upstream connection that must not go back to its pool (it failed, or the
    /// exchange on it was cut short), keeping the pool's active count right.
    pub fn discard_upstream(&mut self, conn: UpConn) {
        self.upstreams
            .release(conn, false, self.registry, self.timers, self.now);
    }
}

/// What the event loop must do after a session handled an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Continue,
    /// Remove the session (its sockets are closed on drop).
    Done,
    /// HTTP 101: turn the session into a bidirectional tunnel.
    Upgrade,
    /// The client speaks HTTP/2 (ALPN `h2`, or the prior-knowledge preface): hand the
    /// connection to an HTTP/2 session.
    Http2,
}
