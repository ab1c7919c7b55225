//! Work woken by another part of the worker rather than by a socket: an HTTP/2 connection and
//! the HTTP/1 sessions it is bridged to exchange bytes through in-memory pipes (see
//! `sock::pipe`), and no kernel event tells either side that the other wrote or read. Each
//! side queues the other here; the event loop runs what was queued after its next poll (with
//! a zero timeout while anything waits), like sessions that yielded their turn.
//!
//! Both HTTP/2 sides use pipes: a client connection's streams are served by sessions, and a
//! session's exchange (or a health probe, or a mirrored request) may go to a stream of an
//! upstream connection.
//!
//! Thread-local because a worker is one thread and a pipe end has no `Ctx` to hand: the
//! queue belongs to the event loop of the thread that runs both sides.

use std::cell::RefCell;
use std::io;
use std::sync::Arc;

/// Who to run again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Wake {
    /// An entry of the event loop's session slab: an HTTP/1 session, or an HTTP/2 client
    /// connection.
    Session(usize),
    /// An HTTP/2 connection to an upstream (its key in the pools' HTTP/2 table).
    H2Upstream(usize),
    /// An active health probe (its key in the pools' probe table).
    Probe(usize),
    /// A mirrored request (its key in the pools' shadow table).
    Shadow(usize),
}

thread_local! {
    static WOKEN: RefCell<Vec<Wake>> = const { RefCell::new(Vec::new()) };
    static HELPER_WAKER: RefCell<Option<Arc<mio::Waker>>> = const { RefCell::new(None) };
}

/// The waker of this thread's event loop for its helper threads (DNS lookups, Redis
/// checks): made at the first call, with `crate::tokens::RESOLVER`. One for all of them, as
/// mio allows one `Waker` per `Poll`; the loop looks at every helper's answers when woken.
pub fn helper_waker(registry: &mio::Registry) -> io::Result<Arc<mio::Waker>> {
    HELPER_WAKER.with(|w| {
        let mut w = w.borrow_mut();
        if let Some(waker) = w.as_ref() {
            return Ok(Arc::clone(waker));
        }
        let waker = Arc::new(mio::Waker::new(registry, crate::tokens::RESOLVER)?);
        *w = Some(Arc::clone(&waker));
        Ok(waker)
    })
}

/// The helper waker, if this thread's event loop made one (not in unit tests: answers are
/// then found when the waiting session's deadline comes).
pub fn helper_waker_if_any() -> Option<Arc<mio::Waker>> {
    HELPER_WAKER.try_with(|w| w.borrow().clone()).ok().flatten()
}

/// Run `who` again soon (its peer's pipe end changed).
pub fn wake(who: Wake) {
    let _ = WOKEN.try_with(|w| w.borrow_mut().push(who));
}

/// Move every queued wake-up out: session keys into `sessions` (the event loop's list of
/// sessions to run again), the rest into `others`.
pub fn take_into(sessions: &mut Vec<usize>, others: &mut Vec<Wake>) {
    let _ = WOKEN.try_with(|w| {
        for who in w.borrow_mut().drain(..) {
            match who {
                Wake::Session(key) => sessions.push(key),
                other => others.push(other),
            }
        }
    });
}
