//! The access log: one line per HTTP request, in a configurable format, written off the event
//! loop.
//!
//! Sessions render a line when a request ends (response written, or the exchange aborted),
//! if sampling keeps it (`sample-rate`; with `sample-errors-always`, every 4xx and 5xx is
//! kept), and hand it to a bounded crossbeam channel with `try_send`; a dedicated writer thread
//! (one per worker process, started on first use; see [`writer`]) buffers up to `buffer-size`
//! bytes per file and appends whole lines with one `write(2)` on an `O_APPEND` descriptor. The
//! event loop therefore never waits on the disk, and several workers appending to the same file
//! never interleave parts of lines. When the writer falls behind (slow disk) and the channel is
//! full, lines are dropped and counted rather than blocking the proxy; the count is logged by
//! the writer.
//!
//! Rotation: a `Reconfigure` (what `zentinel-ctl reload` sends every worker) installs a new
//! generation, which calls [`reopen`]: the writer writes its buffers, closes its files and opens
//! them again by path on the next line, so `mv access.log access.log.1 && zentinel-ctl reload`
//! starts a fresh file.
//!
//! Formats ([`Format`]): upstream's `json` (keys chosen by `fields`, see [`json`]) and
//! `combined`, or a `$variable` template. Request-derived text is escaped (`\xHH` in
//! templates, JSON escapes in `json`), so a client can neither break the one-line-per-request
//! shape nor forge a line.

mod format;
mod json;
#[cfg(test)]
mod tests;
mod writer;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use zentinel_protocol::config::{AccessLogConfig, AccessLogFields, SAMPLE_ALL};

pub(crate) use format::write_time;
pub use format::{Format, Template, COMBINED, COMBINED_NO_TRACE_ID, VARIABLES};
pub use writer::{flush, reopen, FLUSH_INTERVAL};

/// Longest request line shown for a refused head (the rest is cut).
const MAX_RAW_LINE: usize = 1024;

/// What is known of one request, gathered while it runs.
#[derive(Debug, Clone)]
pub struct Entry {
    pub started: Instant,
    pub wall: SystemTime,
    pub method: String,
    pub target: String,
    pub protocol: &'static str,
    pub host: Vec<u8>,
    pub referer: Vec<u8>,
    pub user_agent: Vec<u8>,
    /// The final status sent (0 until one is).
    pub status: u16,
    /// Bytes written to the client for this request (head and body).
    pub bytes: u64,
    pub upstream: Option<SocketAddr>,
    /// The request's trace id (empty: none, e.g. a local answer).
    pub trace_id: String,
    /// Bytes of response heads (interim ones included) among `bytes`.
    pub head_bytes: u64,
    /// The upstream connection came from the pool.
    pub connection_reused: bool,
    /// The matched route's name (empty: none).
    pub route: String,
    /// The upstream (pool) that answered (empty: none).
    pub upstream_name: String,
    /// The verified client certificate's subject (mutual TLS; empty: none).
    pub client_cert_subject: String,
}

impl Entry {
    /// A request whose head could not be parsed: only the time is known.
    pub fn unparsed(now: Instant) -> Entry {
        Entry {
            started: now,
            wall: SystemTime::now(),
            method: "-".to_owned(),
            target: "-".to_owned(),
            protocol: "-",
            host: Vec::new(),
            referer: Vec::new(),
            user_agent: Vec::new(),
            status: 0,
            bytes: 0,
            upstream: None,
            trace_id: String::new(),
            head_bytes: 0,
            connection_reused: false,
            route: String::new(),
            upstream_name: String::new(),
            client_cert_subject: String::new(),
        }
    }

    /// A request whose head was refused (malformed, too large): what its first line shows.
    pub fn from_raw_head(now: Instant, head: &[u8]) -> Entry {
        let mut e = Entry::unparsed(now);
        let line = &head[..head.len().min(MAX_RAW_LINE)];
        let line = line.split(|&b| b == b'\n').next().unwrap_or(&[]);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut parts = line.split(|&b| b == b' ').filter(|p| !p.is_empty());
        if let Some(method) = parts.next() {
            e.method = String::from_utf8_lossy(method).into_owned();
        }
        if let Some(target) = parts.next() {
            e.target = String::from_utf8_lossy(target).into_owned();
        }
        e.protocol = match parts.next() {
            Some(b"HTTP/1.1") => "HTTP/1.1",
            Some(b"HTTP/1.0") => "HTTP/1.0",
            _ => "-",
        };
        e
    }

    pub fn from_request(now: Instant, req: &crate::http::codec::RequestHead) -> Entry {
        let mut e = Entry::unparsed(now);
        e.method = req.method.as_str().to_owned();
        e.target = req.target().to_owned();
        e.protocol = match req.version {
            crate::http::codec::HttpVersion::Http10 => "HTTP/1.0",
            crate::http::codec::HttpVersion::Http11 => "HTTP/1.1",
        };
        e.host = req.host.as_deref().unwrap_or("").as_bytes().to_vec();
        for h in req.headers() {
            if h.name.eq_ignore_ascii_case(b"user-agent") {
                e.user_agent = h.value.to_vec();
            } else if h.name.eq_ignore_ascii_case(b"referer") {
                e.referer = h.value.to_vec();
            }
        }
        e
    }

    /// Response body bytes the client received (upstream's `body_bytes_sent`).
    pub fn body_bytes_sent(&self) -> u64 {
        self.bytes.saturating_sub(self.head_bytes)
    }
}

/// What the session adds when it writes the line.
pub struct LineContext<'a> {
    pub peer: SocketAddr,
    pub listener: &'a str,
    pub worker_id: u32,
    pub duration: Duration,
    /// Upstream's `instance_id` (`json`).
    pub instance_id: &'a str,
}

/// One listener's access log: its format, sampling and file.
#[derive(Debug)]
pub struct AccessLog {
    format: Format,
    include_trace_id: bool,
    fields: AccessLogFields,
    sample_per_million: u32,
    sample_errors_always: bool,
    target: Arc<writer::Target>,
    instance_id: String,
}

impl AccessLog {
    pub fn new(config: &AccessLogConfig) -> Result<AccessLog, String> {
        if config.file.is_empty() {
            return Err("access log: empty file path".to_owned());
        }
        let format = Format::parse(&config.format, config.include_trace_id)
            .map_err(|e| format!("access log {}: {e}", config.file))?;
        // Like nginx: a log that cannot be opened fails the start or the reload (with the
        // reason), instead of every line being dropped later. One open per configuration.
        writer::open(&config.file)
            .map_err(|e| format!("access log {}: cannot open for appending: {e}", config.file))?;
        Ok(AccessLog {
            format,
            include_trace_id: config.include_trace_id,
            fields: config.fields,
            sample_per_million: config.sample_per_million.min(SAMPLE_ALL),
            sample_errors_always: config.sample_errors_always,
            target: Arc::new(writer::Target {
                path: Arc::from(config.file.as_str()),
                buffer_size: config.buffer_size as usize,
            }),
            instance_id: crate::http::builtin::instance_id(),
        })
    }

    /// Whether the request answered `status` gets a line (upstream's rule: errors first, then
    /// a draw against the rate).
    pub fn sampled(&self, status: u16) -> bool {
        if self.sample_errors_always && status >= 400 {
            return true;
        }
        match self.sample_per_million {
            SAMPLE_ALL => true,
            0 => false,
            p => {
                let draw =
                    (u128::from(crate::trace_id::next_random()) * u128::from(SAMPLE_ALL)) >> 64;
                draw < u128::from(p)
            }
        }
    }

    /// Render and queue the line for `entry` if sampling keeps it; never blocks.
    pub fn log(&self, entry: &Entry, peer: SocketAddr, listener: &str, now: Instant) {
        if !self.sampled(entry.status) {
            return;
        }
        let ctx = LineContext {
            peer,
            listener,
            worker_id: WORKER_ID.load(Ordering::Relaxed),
            duration: now.saturating_duration_since(entry.started),
            instance_id: &self.instance_id,
        };
        let line = self.render(entry, &ctx);
        writer::send_line(&self.target, line);
    }

    fn render(&self, entry: &Entry, ctx: &LineContext<'_>) -> Vec<u8> {
        let mut line = Vec::with_capacity(256);
        match &self.format {
            Format::Json => {
                json::render(entry, ctx, &self.fields, self.include_trace_id, &mut line)
            }
            Format::Template(t) => t.render(entry, ctx, &mut line),
        }
        line
    }
}

static WORKER_ID: AtomicU32 = AtomicU32::new(0);

/// The worker id `$worker_id` shows.
pub fn set_worker_id(id: u32) {
    WORKER_ID.store(id, Ordering::Relaxed);
}
