//! The access log: one line per HTTP request, in a configurable format, written off the event
//! loop.
//!
//! Sessions render a line when a request ends (response written, or the exchange aborted) and
//! hand it to a bounded crossbeam channel with `try_send`; a dedicated writer thread (one per
//! worker process, started on first use) appends batches of whole lines to the file with one
//! `write(2)` per batch on an `O_APPEND` descriptor. The event loop therefore never waits on the
//! disk, and several workers appending to the same file never interleave parts of lines: with
//! `O_APPEND` each write lands at the end of the file as a unit. When the writer falls behind
//! (slow disk) and the channel is full, lines are dropped and counted rather than blocking the
//! proxy; the count is logged by the writer.
//!
//! Rotation: a `Reconfigure` (what `zentinel-ctl reload` sends every worker) installs a new
//! generation, which calls [`reopen`]: the writer closes its files and opens them again by path
//! on the next line, so `mv access.log access.log.1 && zentinel-ctl reload` starts a fresh file.
//!
//! Request-derived text (method, path, headers) is escaped (`"`, `\`, control and non-ASCII
//! bytes as `\xHH`), so a client can neither break the one-line-per-request shape nor forge a
//! line.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use tracing::warn;
use zentinel_protocol::config::AccessLogConfig;

/// Lines queued for the writer thread before new ones are dropped.
const QUEUE_LINES: usize = 16_384;
/// Longest request line shown for a refused head (the rest is cut).
const MAX_RAW_LINE: usize = 1024;
/// Largest batch written with one `write(2)`.
const BATCH_BYTES: usize = 64 * 1024;

/// nginx's `combined` format.
pub const COMBINED: &str = "$remote_addr - - [$time_local] \"$method $path $protocol\" $status $bytes \"$referer\" \"$user_agent\"";
/// nginx's `common` (CLF) format.
pub const COMMON: &str =
    "$remote_addr - - [$time_local] \"$method $path $protocol\" $status $bytes";
/// One JSON object per line; every value is a string or a number.
/// `json` with `include-trace-id` (upstream's default): the same, with the trace id.
pub const JSON_WITH_TRACE_ID: &str = "{\"time\":\"$time_iso8601\",\"trace_id\":\"$trace_id\",\"remote_addr\":\"$remote_addr\",\"method\":\"$method\",\"path\":\"$path\",\"protocol\":\"$protocol\",\"status\":$status,\"bytes\":$bytes,\"duration_ms\":$duration_ms,\"upstream\":\"$upstream\",\"host\":\"$host\",\"user_agent\":\"$user_agent\",\"listener\":\"$listener\",\"worker_id\":$worker_id}";
pub const JSON: &str = "{\"time\":\"$time_iso8601\",\"remote_addr\":\"$remote_addr\",\"method\":\"$method\",\"path\":\"$path\",\"protocol\":\"$protocol\",\"status\":$status,\"bytes\":$bytes,\"duration_ms\":$duration_ms,\"upstream\":\"$upstream\",\"host\":\"$host\",\"user_agent\":\"$user_agent\",\"listener\":\"$listener\",\"worker_id\":$worker_id}";

/// Every variable a template may use.
pub const VARIABLES: &[&str] = &[
    "remote_addr",
    "remote_port",
    "time_local",
    "time_iso8601",
    "msec",
    "method",
    "path",
    "protocol",
    "status",
    "bytes",
    "duration_ms",
    "request_time",
    "upstream",
    "host",
    "referer",
    "user_agent",
    "listener",
    "worker_id",
    "pid",
    "trace_id",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Var {
    RemoteAddr,
    RemotePort,
    TimeLocal,
    TimeIso8601,
    Msec,
    Method,
    Path,
    Protocol,
    Status,
    Bytes,
    DurationMs,
    RequestTime,
    Upstream,
    Host,
    Referer,
    UserAgent,
    Listener,
    WorkerId,
    Pid,
    TraceId,
}

impl Var {
    fn from_name(name: &str) -> Option<Var> {
        Some(match name {
            "remote_addr" => Var::RemoteAddr,
            "remote_port" => Var::RemotePort,
            "time_local" => Var::TimeLocal,
            "time_iso8601" => Var::TimeIso8601,
            "msec" => Var::Msec,
            "method" => Var::Method,
            "path" => Var::Path,
            "protocol" => Var::Protocol,
            "status" => Var::Status,
            "bytes" => Var::Bytes,
            "duration_ms" => Var::DurationMs,
            "request_time" => Var::RequestTime,
            "upstream" => Var::Upstream,
            "host" => Var::Host,
            "referer" => Var::Referer,
            "user_agent" => Var::UserAgent,
            "listener" => Var::Listener,
            "worker_id" => Var::WorkerId,
            "pid" => Var::Pid,
            "trace_id" => Var::TraceId,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Lit(String),
    Var(Var),
}

/// A parsed format: literal text and `$variables` (or `${variable}` when a letter follows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

impl Template {
    /// `format` is a template or a named format (`combined`, `common`, `json`). The error names
    /// the offending variable and lists the known ones.
    pub fn parse(format: &str) -> Result<Template, String> {
        let text = match format {
            "combined" => COMBINED,
            "common" => COMMON,
            "json" => JSON,
            other => other,
        };
        if text.contains(['\n', '\r']) {
            return Err("an access-log format must fit on one line (no newline)".to_owned());
        }
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut rest = text;
        while let Some(pos) = rest.find('$') {
            lit.push_str(&rest[..pos]);
            rest = &rest[pos + 1..];
            let (name, after) = if let Some(braced) = rest.strip_prefix('{') {
                let end = braced
                    .find('}')
                    .ok_or_else(|| "unterminated `${` in the access-log format".to_owned())?;
                (&braced[..end], &braced[end + 1..])
            } else {
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                (&rest[..end], &rest[end..])
            };
            if name.is_empty() {
                return Err(
                    "`$` without a variable name in the access-log format (known: $remote_addr, $method, ...)"
                        .to_owned(),
                );
            }
            let var = Var::from_name(name).ok_or_else(|| {
                format!(
                    "unknown access-log variable `${name}`; known: {}",
                    VARIABLES
                        .iter()
                        .map(|v| format!("${v}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            })?;
            if !lit.is_empty() {
                pieces.push(Piece::Lit(std::mem::take(&mut lit)));
            }
            pieces.push(Piece::Var(var));
            rest = after;
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            pieces.push(Piece::Lit(lit));
        }
        Ok(Template { pieces })
    }

    /// Append one line (with its `\n`) for `e`.
    pub fn render(&self, e: &Entry, ctx: &LineContext<'_>, out: &mut Vec<u8>) {
        use std::io::Write as _;
        for piece in &self.pieces {
            // Writing into a Vec cannot fail.
            let _ = match piece {
                Piece::Lit(s) => {
                    out.extend_from_slice(s.as_bytes());
                    Ok(())
                }
                Piece::Var(v) => match v {
                    Var::RemoteAddr => write!(out, "{}", ctx.peer.ip()),
                    Var::RemotePort => write!(out, "{}", ctx.peer.port()),
                    Var::TimeLocal => {
                        write_time(out, e.wall, false);
                        Ok(())
                    }
                    Var::TimeIso8601 => {
                        write_time(out, e.wall, true);
                        Ok(())
                    }
                    Var::Msec => {
                        let d = e.wall.duration_since(UNIX_EPOCH).unwrap_or_default();
                        write!(out, "{}.{:03}", d.as_secs(), d.subsec_millis())
                    }
                    Var::Method => {
                        escape(out, e.method.as_bytes());
                        Ok(())
                    }
                    Var::Path => {
                        escape(out, e.target.as_bytes());
                        Ok(())
                    }
                    Var::Protocol => out.write_all(e.protocol.as_bytes()),
                    Var::Status => write!(out, "{}", e.status),
                    Var::Bytes => write!(out, "{}", e.bytes),
                    Var::DurationMs => write!(out, "{}", ctx.duration.as_millis()),
                    Var::RequestTime => write!(
                        out,
                        "{}.{:03}",
                        ctx.duration.as_secs(),
                        ctx.duration.subsec_millis()
                    ),
                    Var::Upstream => match e.upstream {
                        Some(a) => write!(out, "{a}"),
                        None => out.write_all(b"-"),
                    },
                    Var::Host => {
                        escape_or_dash(out, &e.host);
                        Ok(())
                    }
                    Var::Referer => {
                        escape_or_dash(out, &e.referer);
                        Ok(())
                    }
                    Var::UserAgent => {
                        escape_or_dash(out, &e.user_agent);
                        Ok(())
                    }
                    Var::Listener => {
                        escape(out, ctx.listener.as_bytes());
                        Ok(())
                    }
                    Var::WorkerId => write!(out, "{}", ctx.worker_id),
                    Var::Pid => write!(out, "{}", std::process::id()),
                    Var::TraceId => {
                        escape_or_dash(out, e.trace_id.as_bytes());
                        Ok(())
                    }
                },
            };
        }
        out.push(b'\n');
    }
}

fn escape_or_dash(out: &mut Vec<u8>, s: &[u8]) {
    if s.is_empty() {
        out.push(b'-');
    } else {
        escape(out, s);
    }
}

/// Printable ASCII as is, except `"` and `\`; everything else as `\xHH` (nginx's escaping).
fn escape(out: &mut Vec<u8>, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s {
        if (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\' {
            out.push(b);
        } else {
            out.extend_from_slice(&[
                b'\\',
                b'x',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]);
        }
    }
}

/// `27/Nov/2026:03:58:35 +0000` (nginx `$time_local`, always UTC) or `2026-11-27T03:58:35+00:00`.
pub(crate) fn write_time(out: &mut Vec<u8>, t: SystemTime, iso: bool) {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let (year, month, day) = crate::http::files::civil_from_days(days);
    let _ = if iso {
        write!(
            out,
            "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}+00:00"
        )
    } else {
        let name = MONTHS[(month - 1).clamp(0, 11) as usize];
        write!(out, "{day:02}/{name}/{year:04}:{h:02}:{m:02}:{s:02} +0000")
    };
}

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
}

/// What the session adds when it writes the line.
pub struct LineContext<'a> {
    pub peer: SocketAddr,
    pub listener: &'a str,
    pub worker_id: u32,
    pub duration: Duration,
}

/// One listener's access log: its template and file.
#[derive(Debug)]
pub struct AccessLog {
    template: Template,
    file: Arc<str>,
}

impl AccessLog {
    pub fn new(config: &AccessLogConfig) -> Result<AccessLog, String> {
        if config.file.is_empty() {
            return Err("access log: empty file path".to_owned());
        }
        let format = match config.format.as_str() {
            "json" if config.include_trace_id => JSON_WITH_TRACE_ID,
            other => other,
        };
        let template =
            Template::parse(format).map_err(|e| format!("access log {}: {e}", config.file))?;
        // Like nginx: a log that cannot be opened fails the start or the reload (with the
        // reason), instead of every line being dropped later. One open per configuration.
        open(&config.file)
            .map_err(|e| format!("access log {}: cannot open for appending: {e}", config.file))?;
        Ok(AccessLog {
            template,
            file: Arc::from(config.file.as_str()),
        })
    }

    /// Render and queue the line for `entry`; never blocks.
    pub fn log(&self, entry: &Entry, peer: SocketAddr, listener: &str, now: Instant) {
        let ctx = LineContext {
            peer,
            listener,
            worker_id: WORKER_ID.load(Ordering::Relaxed) as u32,
            duration: now.saturating_duration_since(entry.started),
        };
        let mut line = Vec::with_capacity(256);
        self.template.render(entry, &ctx, &mut line);
        send(Msg::Line {
            file: Arc::clone(&self.file),
            line,
        });
    }
}

static WORKER_ID: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);
static WRITER: OnceLock<Sender<Msg>> = OnceLock::new();

/// The worker id `$worker_id` shows.
pub fn set_worker_id(id: u32) {
    WORKER_ID.store(u64::from(id), Ordering::Relaxed);
}

enum Msg {
    Line {
        file: Arc<str>,
        line: Vec<u8>,
    },
    /// Close every file; the next line reopens it by path (log rotation).
    Reopen,
    /// Everything queued before this is written: answer.
    Sync(Sender<()>),
}

fn writer() -> Option<&'static Sender<Msg>> {
    if let Some(tx) = WRITER.get() {
        return Some(tx);
    }
    let (tx, rx) = bounded(QUEUE_LINES);
    let spawned = std::thread::Builder::new()
        .name("access-log".to_owned())
        .spawn(move || writer_thread(rx));
    match spawned {
        Ok(_) => Some(WRITER.get_or_init(|| tx)),
        Err(e) => {
            warn!(error = %e, "cannot start the access-log writer thread; access log lines are dropped");
            None
        }
    }
}

fn send(msg: Msg) {
    let Some(tx) = writer() else {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return;
    };
    match tx.try_send(msg) {
        Ok(()) => {}
        Err(TrySendError::Full(Msg::Line { .. })) | Err(TrySendError::Disconnected(_)) => {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
        // A reopen or sync that did not fit: the writer is far behind; a reopen is retried by
        // the next reload, a sync caller times out.
        Err(TrySendError::Full(_)) => {}
    }
}

/// Log rotation: reopen every access-log file by path (called when a configuration is
/// installed). Only touches the writer when one runs.
pub fn reopen() {
    if WRITER.get().is_some() {
        send(Msg::Reopen);
    }
}

/// Wait (at most `budget`) until the lines queued so far are written: called before the worker
/// exits, so the last requests of a drain are not lost.
pub fn flush(budget: Duration) {
    let Some(tx) = WRITER.get() else {
        return;
    };
    let (ack_tx, ack_rx) = bounded(1);
    if tx.send_timeout(Msg::Sync(ack_tx), budget).is_ok() {
        let _ = ack_rx.recv_timeout(budget);
    }
}

fn open(path: &str) -> std::io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

fn writer_thread(rx: Receiver<Msg>) {
    let mut files: HashMap<Arc<str>, Option<File>> = HashMap::new();
    let mut batches: Vec<(Arc<str>, Vec<u8>)> = Vec::new();
    let mut last_open_error: Option<Instant> = None;
    loop {
        let first = match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(msg) => msg,
            Err(RecvTimeoutError::Timeout) => {
                report_dropped();
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut pending = Some(first);
        let mut acks = Vec::new();
        let mut size = 0usize;
        // Gather what is queued into one batch per file, up to BATCH_BYTES.
        while let Some(msg) = pending.take() {
            match msg {
                Msg::Line { file, line } => {
                    size += line.len();
                    match batches.iter_mut().find(|(f, _)| *f == file) {
                        Some((_, buf)) => buf.extend_from_slice(&line),
                        None => batches.push((file, line)),
                    }
                }
                Msg::Reopen => {
                    write_batches(&mut batches, &mut files, &mut last_open_error);
                    files.clear();
                }
                Msg::Sync(ack) => acks.push(ack),
            }
            if size < BATCH_BYTES {
                pending = rx.try_recv().ok();
            }
        }
        write_batches(&mut batches, &mut files, &mut last_open_error);
        for ack in acks {
            let _ = ack.send(());
        }
        report_dropped();
    }
}

fn write_batches(
    batches: &mut Vec<(Arc<str>, Vec<u8>)>,
    files: &mut HashMap<Arc<str>, Option<File>>,
    last_open_error: &mut Option<Instant>,
) {
    for (path, buf) in batches.drain(..) {
        let slot = files.entry(Arc::clone(&path)).or_insert(None);
        if slot.is_none() {
            match open(&path) {
                Ok(f) => *slot = Some(f),
                Err(e) => {
                    if last_open_error.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                        warn!(file = %path, error = %e, "cannot open the access log; lines are dropped");
                        *last_open_error = Some(Instant::now());
                    }
                    let lines = buf.iter().filter(|&&b| b == b'\n').count() as u64;
                    DROPPED.fetch_add(lines, Ordering::Relaxed);
                    files.remove(&path);
                    continue;
                }
            }
        }
        if let Some(file) = slot.as_mut() {
            // One write for the whole batch of whole lines: O_APPEND places it at the end of
            // the file atomically with respect to other workers' writes.
            if let Err(e) = file.write_all(&buf) {
                warn!(file = %path, error = %e, "cannot write the access log; reopening on the next line");
                files.remove(&path);
            }
        }
    }
}

fn report_dropped() {
    let dropped = DROPPED.swap(0, Ordering::Relaxed);
    if dropped > 0 {
        warn!(
            dropped,
            "access log lines dropped (writer behind or file not writable)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        let mut e = Entry::unparsed(Instant::now());
        e.wall = UNIX_EPOCH + Duration::from_secs(1_795_751_915); // 2026-11-27T03:58:35Z
        e.method = "GET".to_owned();
        e.target = "/a b\"\n?x=1".to_owned();
        e.protocol = "HTTP/1.1";
        e.user_agent = b"curl/8".to_vec();
        e.status = 200;
        e.bytes = 123;
        e
    }

    fn render(format: &str) -> String {
        let t = Template::parse(format).unwrap();
        let ctx = LineContext {
            peer: "10.1.2.3:4567".parse().unwrap(),
            listener: "http",
            worker_id: 1,
            duration: Duration::from_millis(1500),
        };
        let mut out = Vec::new();
        t.render(&entry(), &ctx, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn combined_format_escapes_request_text() {
        assert_eq!(
            render("combined"),
            "10.1.2.3 - - [27/Nov/2026:03:58:35 +0000] \"GET /a b\\x22\\x0A?x=1 HTTP/1.1\" 200 123 \"-\" \"curl/8\"\n"
        );
    }

    #[test]
    fn custom_template_with_braces() {
        assert_eq!(
            render("${status}x $duration_ms $request_time $upstream $worker_id $time_iso8601"),
            "200x 1500 1.500 - 1 2026-11-27T03:58:35+00:00\n"
        );
    }

    #[test]
    fn json_is_parseable_shape() {
        let line = render("json");
        assert!(
            line.starts_with("{\"time\":\"2026-11-27T03:58:35+00:00\""),
            "{line}"
        );
        assert!(line.ends_with("}\n"), "{line}");
    }

    #[test]
    fn refused_heads_show_their_request_line() {
        let e = Entry::from_raw_head(Instant::now(), b"GET /x\"y HTTP/1.1\r\nHost");
        assert_eq!(
            (e.method.as_str(), e.target.as_str(), e.protocol),
            ("GET", "/x\"y", "HTTP/1.1")
        );
        let e = Entry::from_raw_head(Instant::now(), b"\xffgarbage");
        assert_eq!(
            (e.method.as_str(), e.target.as_str(), e.protocol),
            ("\u{fffd}garbage", "-", "-")
        );
        let long = vec![b'a'; 5000];
        let e = Entry::from_raw_head(Instant::now(), &long);
        assert_eq!(e.method.len(), MAX_RAW_LINE);
    }

    #[test]
    fn unknown_variable_is_named() {
        let err = Template::parse("$remote_addr $nope").unwrap_err();
        assert!(err.contains("`$nope`"), "{err}");
        assert!(Template::parse("a $").is_err());
        assert!(Template::parse("${status").is_err());
        assert!(Template::parse("a\nb").is_err());
    }

    #[test]
    fn leap_and_epoch_dates() {
        let mut out = Vec::new();
        write_time(&mut out, UNIX_EPOCH, true);
        write_time(
            &mut out,
            UNIX_EPOCH + Duration::from_secs(951_782_400),
            false,
        ); // 2000-02-29
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "1970-01-01T00:00:00+00:0029/Feb/2000:00:00:00 +0000"
        );
    }
}
