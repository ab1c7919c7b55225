//! A filter's counters: words of its shared segment (every worker adds to them, the master
//! reads them for `/metrics`), or this worker's own when the filter has no segment.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::Ordering;

use zentinel_protocol::filter_shm::counter;

use super::FilterShm;

/// One counter of a filter: a word of its shared segment (every worker adds to it, the master
/// reads it for `/metrics`), or this worker's own when the filter has no segment.
#[derive(Debug)]
pub enum Counter {
    Shared(Rc<FilterShm>, usize),
    Local(Cell<u64>),
}

impl Default for Counter {
    fn default() -> Self {
        Counter::Local(Cell::new(0))
    }
}

impl Counter {
    /// `+= n`.
    pub fn add(&self, n: u64) {
        match self {
            Counter::Shared(shm, i) => {
                shm.counter(*i).fetch_add(n, Ordering::Relaxed);
            }
            Counter::Local(c) => c.set(c.get().wrapping_add(n)),
        }
    }

    /// The count now (over every worker sharing it).
    #[allow(dead_code, reason = "read by the tests")]
    pub fn get(&self) -> u64 {
        match self {
            Counter::Shared(shm, i) => shm.counter(*i).load(Ordering::Relaxed),
            Counter::Local(c) => c.get(),
        }
    }
}

/// Counters of one filter, summed over the routes using it, and over every worker when the
/// filter has a shared segment (`shared`).
#[derive(Debug, Default)]
pub struct FilterCounters {
    /// Requests refused by a rate limit.
    pub limited: Counter,
    /// Requests a rate limit held back (`on-limit "delay"`).
    pub delayed: Counter,
    /// Over the limit but let through (`on-limit "log-only"`).
    pub logged_only: Counter,
    /// CORS preflights answered by the proxy.
    pub preflights: Counter,
    /// Redirects answered by the proxy.
    pub redirects: Counter,
    /// Requests whose path or host was rewritten.
    pub rewrites: Counter,
    /// Responses compressed.
    pub compressed: Counter,
    /// Body bytes before compression (of the responses compressed).
    pub compress_in: Counter,
    /// Body bytes after compression (without the chunked framing).
    pub compress_out: Counter,
    /// `backend "redis"`: checks Redis did not answer (timeout, full queue, lost connection,
    /// error reply).
    pub backend_errors: Counter,
    /// `backend "redis"`: requests the failure mode decided (Redis failed or was down).
    pub fallbacks: Counter,
}

impl FilterCounters {
    /// `counter += n`.
    pub fn add(counter: &Counter, n: u64) {
        counter.add(n);
    }

    /// The counters in `shm` (`zentinel_protocol::filter_shm::counter`).
    pub fn shared(shm: &Rc<FilterShm>) -> Self {
        let at = |i| Counter::Shared(Rc::clone(shm), i);
        FilterCounters {
            limited: at(counter::LIMITED),
            delayed: at(counter::DELAYED),
            logged_only: at(counter::LOGGED_ONLY),
            preflights: at(counter::PREFLIGHTS),
            redirects: at(counter::REDIRECTS),
            rewrites: at(counter::REWRITES),
            compressed: at(counter::COMPRESSED),
            compress_in: at(counter::COMPRESS_IN),
            compress_out: at(counter::COMPRESS_OUT),
            backend_errors: at(counter::BACKEND_ERRORS),
            fallbacks: at(counter::FALLBACKS),
        }
    }
}
