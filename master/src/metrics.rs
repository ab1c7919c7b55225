//! The master's Prometheus endpoint: a tiny HTTP/1.1 server on the supervision loop, and the
//! text exposition of the workers' and the master's counters.
//!
//! The master never proxies traffic; it serves this one path itself, non-blocking on its mio
//! loop: a request head is at most [`MAX_REQUEST_BYTES`], a connection lives at most
//! [`CONNECTION_TIMEOUT`], at most [`MAX_CONNECTIONS`] are open at once, every answer carries
//! `Connection: close`. Other paths get 404, other methods 405.
//!
//! Counter semantics (see README "Metrics and access log"):
//! - `zentinel_worker_*{worker, pid, generation}`: one series per live worker process, as it
//!   last reported (polled every few seconds, and on every scrape for the next one). A replaced
//!   or restarted worker is a new series (new pid) starting from 0; the old one disappears.
//! - `zentinel_*` without worker labels: totals over every worker this master (and its
//!   predecessors across binary upgrades) ever ran: live workers plus the last counts of
//!   exited ones. They never go down.
//! - master counters (upgrades, reloads, restarts, drains) are carried across binary upgrades
//!   in the state file.
//!
//! - [`MetricsServer`] (`server`): the listener and its connections on the master's loop; what
//!   each request gets is decided by `response`.
//! - [`render`] (`exposition`): the text exposition of a [`Snapshot`].
//! - [`retire_counters`], [`observe_drain`]: the master's own bookkeeping below.

use std::time::Duration;

use zentinel_protocol::messages::WorkerCounters;
use zentinel_protocol::state::{MasterMetrics, DRAIN_BUCKETS_SECONDS};

mod exposition;
mod filters;
mod response;
mod server;

pub use exposition::{render, Snapshot, WorkerSample};
pub use server::{MetricsServer, CONNECTION_TIMEOUT, MAX_CONNECTIONS, MAX_REQUEST_BYTES};

/// Add a worker's last counters to the retired totals (it exited).
pub fn retire_counters(m: &mut MasterMetrics, c: &WorkerCounters) {
    let r = &mut m.retired;
    r.accepted_total = r.accepted_total.saturating_add(c.accepted_total);
    r.requests_total = r.requests_total.saturating_add(c.requests_total);
    r.responses_1xx = r.responses_1xx.saturating_add(c.responses_1xx);
    r.responses_2xx = r.responses_2xx.saturating_add(c.responses_2xx);
    r.responses_3xx = r.responses_3xx.saturating_add(c.responses_3xx);
    r.responses_4xx = r.responses_4xx.saturating_add(c.responses_4xx);
    r.responses_5xx = r.responses_5xx.saturating_add(c.responses_5xx);
    r.upstream_errors = r.upstream_errors.saturating_add(c.upstream_errors);
    r.client_errors = r.client_errors.saturating_add(c.client_errors);
    r.accept_errors = r.accept_errors.saturating_add(c.accept_errors);
    r.bytes_in = r.bytes_in.saturating_add(c.bytes_in);
    r.bytes_out = r.bytes_out.saturating_add(c.bytes_out);
}

/// Record how long a retired worker took from `Drain` to exit.
pub fn observe_drain(m: &mut MasterMetrics, took: Duration) {
    if m.drain_buckets.len() != DRAIN_BUCKETS_SECONDS.len() {
        m.drain_buckets.resize(DRAIN_BUCKETS_SECONDS.len(), 0);
    }
    let secs = took.as_secs_f64();
    for (bound, count) in DRAIN_BUCKETS_SECONDS.iter().zip(m.drain_buckets.iter_mut()) {
        if secs <= *bound {
            *count += 1;
        }
    }
    m.drains += 1;
    m.drain_sum_ms = m
        .drain_sum_ms
        .saturating_add(u64::try_from(took.as_millis()).unwrap_or(u64::MAX));
}
