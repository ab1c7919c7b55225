//! Exchanges kept for reuse: the next request's exchange is written into the box (and the
//! buffers) of one that ended, so proxying a request on a keep-alive connection does not
//! call the allocator for them.
//!
//! An ended exchange gives up everything that is more than memory first (its upstream
//! connection is already back in the pool; configuration handles, read-ahead budget, head
//! storage and byte buffers go back now), so a spare holds no resource, only its own
//! allocation and the capacity of its scratch vectors.

use std::cell::RefCell;

use super::Exchange;
use crate::sock::Buf;

/// Spares kept per worker thread: as many exchanges as end between two that start on a busy
/// worker, small next to the sessions' own memory (about 1 KiB each).
const SPARES_MAX: usize = 64;

thread_local! {
    // Boxed on purpose: the boxes themselves are what is reused.
    #[allow(clippy::vec_box)]
    static SPARES: RefCell<Vec<Box<Exchange>>> = const { RefCell::new(Vec::new()) };
}

/// An ended exchange to write the next one into, if one is kept.
pub(super) fn take() -> Option<Box<Exchange>> {
    SPARES.try_with(|s| s.borrow_mut().pop()).ok().flatten()
}

/// `ex` in `spare`'s box, or in a new one.
pub(super) fn boxed(spare: Option<Box<Exchange>>, ex: Exchange) -> Box<Exchange> {
    match spare {
        Some(mut b) => {
            *b = ex;
            b
        }
        None => Box::new(ex),
    }
}

/// Keep an ended exchange (its upstream connection already released) for reuse.
pub(super) fn recycle(mut ex: Box<Exchange>) {
    debug_assert!(
        ex.up.is_none(),
        "a recycled exchange still holds its connection"
    );
    ex.up = None;
    ex.req.release_storage();
    ex.resp = None;
    ex.resp_body = None;
    ex.retry = None;
    ex.errors.pages = None;
    ex.cookie = None;
    ex.replay = None;
    ex.fallback = None;
    ex.read_ahead = None;
    ex.body_pipe = None;
    ex.uin = Buf::new();
    ex.uout = Buf::new();
    ex.tried.clear();
    ex.failed.clear();
    let _ = SPARES.try_with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < SPARES_MAX {
            s.push(ex);
        }
    });
}
