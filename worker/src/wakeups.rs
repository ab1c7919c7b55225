//! Sessions woken by another session rather than by a socket: an HTTP/2 connection and the
//! HTTP/1 sessions that serve its streams exchange bytes through in-memory pipes (see
//! `sock::pipe`), and no kernel event tells either side that the other wrote or read. Each
//! side queues the other's slab key here; the event loop runs the queued sessions after its
//! next poll (with a zero timeout while any wait), like sessions that yielded their turn.
//!
//! Thread-local because a worker is one thread and a pipe end has no `Ctx` to hand: the
//! queue belongs to the event loop of the thread that runs both sessions.

use std::cell::RefCell;

thread_local! {
    static WOKEN: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// Run session `key` again soon (its peer's pipe end changed).
pub fn wake(key: usize) {
    let _ = WOKEN.try_with(|w| w.borrow_mut().push(key));
}

/// Move every queued key into `into` (the event loop's list of sessions to run again).
pub fn take_into(into: &mut Vec<usize>) {
    let _ = WOKEN.try_with(|w| into.append(&mut w.borrow_mut()));
}
