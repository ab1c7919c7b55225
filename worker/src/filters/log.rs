//! The `log` filter: a line per request (method, path, client, host) and per response
//! (status, duration) at the configured level, with the filter's name and the trace id, as
//! upstream's log filter writes them.

use std::time::Instant;

use tracing::{debug, error, info, trace, warn};
use zentinel_protocol::config::{LogFilter, LogLevel};

use super::RequestFacts;

pub(super) fn request(l: &LogFilter, filter: &str, facts: &RequestFacts<'_>) {
    let req = facts.req;
    let method = req.method.as_str();
    let path = req.path();
    let host = req.host.as_ref().map_or("", |h| h.as_str());
    let client = facts.peer;
    let trace_id = facts.trace_id;
    macro_rules! line {
        ($m:ident) => {
            $m!(filter, trace_id, method, path, %client, host, "log filter: request")
        };
    }
    match l.level {
        LogLevel::Trace => line!(trace),
        LogLevel::Debug => line!(debug),
        LogLevel::Info => line!(info),
        LogLevel::Warn => line!(warn),
        LogLevel::Error => line!(error),
    }
}

pub(super) fn response(
    l: &LogFilter,
    filter: &str,
    method: &str,
    path: &str,
    status: u16,
    started: Instant,
) {
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    macro_rules! line {
        ($m:ident) => {
            $m!(
                filter,
                method,
                path,
                status,
                duration_ms,
                "log filter: response"
            )
        };
    }
    match l.level {
        LogLevel::Trace => line!(trace),
        LogLevel::Debug => line!(debug),
        LogLevel::Info => line!(info),
        LogLevel::Warn => line!(warn),
        LogLevel::Error => line!(error),
    }
}
