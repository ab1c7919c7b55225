//! The `log` filter: a line per request (method, path, client, host, user agent) and per
//! response (status, duration) at the configured level, with the filter's name and the trace
//! id on both (upstream's response line has no method nor path; this one repeats them so each
//! line stands on its own).

use std::time::Instant;

use tracing::{debug, error, info, trace, warn};
use zentinel_protocol::config::{LogFilter, LogLevel};

use super::{header_value, RequestFacts};

/// What the response line repeats of the request, kept from the request phase.
#[derive(Debug)]
pub struct ResponseLine {
    method: String,
    path: String,
    trace_id: String,
}

impl ResponseLine {
    pub(super) fn new(facts: &RequestFacts<'_>) -> Self {
        ResponseLine {
            method: facts.req.method.to_string(),
            path: facts.req.path().to_owned(),
            trace_id: facts.trace_id.to_owned(),
        }
    }
}

pub(super) fn request(l: &LogFilter, filter: &str, facts: &RequestFacts<'_>) {
    let req = facts.req;
    let method = req.method.as_str();
    let path = req.path();
    let host = req.host.as_ref().map_or("", |h| h.as_str());
    let user_agent = header_value(req, "user-agent").unwrap_or("");
    let client = facts.peer;
    let trace_id = facts.trace_id;
    macro_rules! line {
        ($m:ident) => {
            $m!(filter, trace_id, method, path, %client, host, user_agent, "log filter: request")
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
    req: &ResponseLine,
    status: u16,
    started: Instant,
) {
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let ResponseLine {
        method,
        path,
        trace_id,
    } = req;
    macro_rules! line {
        ($m:ident) => {
            $m!(
                filter,
                trace_id,
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
