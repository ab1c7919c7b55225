//! The event loops: one mio `Poll` per thread, a state machine per connection.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Registry, Token};

use super::report::{Report, ThreadStats};
use super::{Config, Method, Mode, Verify};
use crate::failure::{Failure, FailureKind};
use crate::{checksum, checksum_hex, fill_pattern, pattern, pattern_checksum, Fnv64};

/// Initial read buffer of a connection; grows (up to [`MAX_HEAD`]) only for a huge head.
const READ_BUF: usize = 16 * 1024;
const MAX_HEAD: usize = 64 * 1024;
/// Longest chunk-size or trailer line accepted.
const MAX_LINE: usize = 4096;
/// How much of an upload answer is kept (it is `len=N checksum=HEX`, about 40 bytes).
const MAX_ANSWER: usize = 256;
/// Timeouts and backoffs are checked this often; also the longest poll wait, so a stop
/// request (signal, duration) is noticed within it.
const SWEEP: Duration = Duration::from_millis(10);
/// A connection whose connect failed waits this long before the next attempt (closed loop),
/// so a dead address is not hammered in a busy loop.
const CONNECT_BACKOFF: Duration = Duration::from_millis(10);
/// Up to this size the expected `/bytes/N` body is kept and compared byte for byte (memcmp is
/// far cheaper than FNV-1a); above it the body is hashed.
const MAX_PATTERN: u64 = 64 * 1024 * 1024;

/// What a complete response must carry to be a success.
enum Expect {
    /// 2xx and complete framing.
    Status,
    /// `GET /bytes/N`: N pattern bytes and `X-Body-Checksum` of them.
    Download {
        len: u64,
        /// The expected body, when small enough to keep.
        pattern: Option<Vec<u8>>,
        sum: u64,
    },
    /// `POST /upload`: the backend's `len=N checksum=HEX` of what was sent.
    Upload { answer: Vec<u8> },
}

/// Read-only state shared by every thread.
struct Plan<'a> {
    config: &'a Config,
    request: Vec<u8>,
    desc: String,
    expect: Expect,
    started: Instant,
    end: Option<Instant>,
    /// Requests started (closed loop with `-n`).
    issued: AtomicU64,
    stop: &'a AtomicBool,
}

impl Plan<'_> {
    /// Claims one request of the `-n` budget.
    fn take_budget(&self) -> bool {
        match self.config.requests {
            None => true,
            Some(n) => self.issued.fetch_add(1, Ordering::Relaxed) < n,
        }
    }
}

fn build_plan<'a>(config: &'a Config, stop: &'a AtomicBool) -> Plan<'a> {
    let path = config.request_path();
    let connection = match config.mode {
        Mode::KeepAlive => "",
        Mode::Close => "Connection: close\r\n",
    };
    let host = &config.host;
    let (request, expect) = match config.method {
        Method::Get => {
            let head = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{connection}\r\n");
            let expect = if config.verify == Verify::Status || config.path.is_some() {
                Expect::Status
            } else {
                let len = config.body;
                Expect::Download {
                    len,
                    pattern: (len <= MAX_PATTERN).then(|| pattern(len as usize)),
                    sum: pattern_checksum(len),
                }
            };
            (head.into_bytes(), expect)
        }
        Method::Post => {
            let n = config.body as usize;
            // Another stretch of the pattern than downloads use (as the in-process load client
            // does), so an upload answered with a download's bytes cannot pass.
            let mut body = vec![0u8; n];
            fill_pattern(7_919 * n as u64 + 13, &mut body);
            let answer = format!("len={n} checksum={}", checksum_hex(checksum(&body)));
            let mut request = format!(
                "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\n\
                 Content-Length: {n}\r\n{connection}\r\n"
            )
            .into_bytes();
            request.extend_from_slice(&body);
            let expect = if config.verify == Verify::Status || config.path.is_some() {
                Expect::Status
            } else {
                Expect::Upload {
                    answer: answer.into_bytes(),
                }
            };
            (request, expect)
        }
    };
    let started = Instant::now();
    Plan {
        config,
        request,
        desc: config.describe_request(),
        expect,
        started,
        end: config.duration.map(|d| started + d),
        issued: AtomicU64::new(0),
        stop,
    }
}

/// Runs the load described by `config` until its duration or request count is reached or
/// `stop` is set (e.g. from a signal handler), then merges every thread's figures.
pub fn run(config: &Config, stop: &AtomicBool) -> Report {
    let start_epoch_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let plan = build_plan(config, stop);
    let threads = config.threads.clamp(1, config.connections.max(1));
    let per = config.connections / threads;
    let extra = config.connections % threads;
    let results: Vec<ThreadStats> = thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let plan = &plan;
                let n = per + usize::from(t < extra);
                thread::Builder::new()
                    .name(format!("load-{t}"))
                    .spawn_scoped(scope, move || run_thread(plan, t, threads, n))
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(t, h)| match h {
                Ok(h) => h.join().unwrap_or_else(|_| {
                    let mut s = ThreadStats::new(plan.started);
                    s.error = Some(format!("load thread {t} panicked"));
                    s
                }),
                Err(e) => {
                    let mut s = ThreadStats::new(plan.started);
                    s.error = Some(format!("cannot spawn load thread {t}: {e}"));
                    s
                }
            })
            .collect()
    });
    Report::merge(
        results,
        plan.started,
        start_epoch_ms,
        stop.load(Ordering::SeqCst),
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No request in flight (socket kept open in keep-alive mode, or none).
    Idle,
    /// Waiting after a failed connect before the next attempt.
    Backoff(Instant),
    Connecting,
    Writing,
    Head,
    Body,
    /// No more requests for this connection.
    Done,
}

impl Phase {
    fn in_request(self) -> bool {
        matches!(
            self,
            Phase::Connecting | Phase::Writing | Phase::Head | Phase::Body
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked(Chunk),
    UntilClose,
}

enum Progress {
    /// The response needs more bytes.
    More,
    /// The request ended (success or failure), the connection is handed back.
    Finished,
}

/// Per-thread context handed to the connection state machines.
struct Ctx<'p, 'a> {
    plan: &'p Plan<'a>,
    stats: ThreadStats,
    registry: Registry,
    /// Connections whose request ended, to be given their next one by the loop (never
    /// recursively, so a burst of instant failures cannot grow the stack).
    ready: Vec<usize>,
    /// Connections with a request in flight.
    active: usize,
    thread: usize,
    open_loop: bool,
}

impl Ctx<'_, '_> {
    fn record_failure(&mut self, conn: usize, kind: FailureKind, detail: impl FnOnce() -> String) {
        let now = Instant::now();
        let plan = self.plan;
        let thread = self.thread;
        self.stats.record_failure(now, kind, || Failure {
            kind,
            at: now.saturating_duration_since(plan.started),
            client: format!("t{thread}/c{conn}"),
            request: plan.desc.clone(),
            detail: detail(),
        });
    }
}

struct Conn {
    index: usize,
    sock: Option<TcpStream>,
    phase: Phase,
    wpos: usize,
    buf: Vec<u8>,
    rpos: usize,
    end: usize,
    /// Latency origin: send time (closed loop) or scheduled time (open loop).
    origin: Instant,
    deadline: Instant,
    got_bytes: bool,
    status: u16,
    server_close: bool,
    framing: Framing,
    body_len: u64,
    hash: Fnv64,
    /// First body offset that differs from the expected pattern.
    mismatch: Option<u64>,
    header_sum: Option<u64>,
    header_sum_raw: bool,
    answer: Vec<u8>,
}

fn classify_connect(e: &io::Error) -> FailureKind {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => FailureKind::ConnectRefused,
        io::ErrorKind::TimedOut => FailureKind::ConnectTimeout,
        _ => FailureKind::ConnectError,
    }
}

fn classify_write(e: &io::Error) -> FailureKind {
    match e.kind() {
        io::ErrorKind::ConnectionReset => FailureKind::Reset,
        io::ErrorKind::TimedOut => FailureKind::Timeout,
        _ => FailureKind::WriteError,
    }
}

fn classify_read(e: &io::Error) -> FailureKind {
    match e.kind() {
        io::ErrorKind::ConnectionReset => FailureKind::Reset,
        io::ErrorKind::TimedOut => FailureKind::Timeout,
        _ => FailureKind::ReadError,
    }
}

fn find_crlf(data: &[u8]) -> Option<usize> {
    data.windows(2).position(|w| w == b"\r\n")
}

fn parse_hex_u64(v: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(v).ok()?.trim();
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

/// What the head says, extracted before the buffer is touched again.
struct Head {
    len: usize,
    status: u16,
    close: bool,
    framing: Framing,
    header_sum: Option<u64>,
    header_sum_raw: bool,
}

fn parse_head(data: &[u8]) -> Result<Option<Head>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(data) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => {
            return Err(format!(
                "unparsable response head ({e}): {:?}",
                String::from_utf8_lossy(&data[..data.len().min(200)])
            ))
        }
    };
    let status = resp.code.unwrap_or(0);
    let http10 = resp.version == Some(0);
    let mut close = http10;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut header_sum = None;
    let mut header_sum_raw = false;
    for h in resp.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    format!("bad Content-Length {:?}", String::from_utf8_lossy(h.value))
                })?;
            if length.is_some_and(|l| l != v) {
                return Err("conflicting Content-Length headers".into());
            }
            length = Some(v);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = h
                .value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case("connection") {
            for t in h.value.split(|&b| b == b',') {
                let t = t.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if http10 && t.eq_ignore_ascii_case(b"keep-alive") {
                    close = false;
                }
            }
        } else if name.eq_ignore_ascii_case("x-body-checksum") {
            header_sum_raw = true;
            header_sum = parse_hex_u64(h.value);
        }
    }
    let framing = if status == 204 || status == 304 {
        Framing::Empty
    } else if chunked {
        Framing::Chunked(Chunk::Size)
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        close = true;
        Framing::UntilClose
    };
    Ok(Some(Head {
        len,
        status,
        close,
        framing,
        header_sum,
        header_sum_raw,
    }))
}

impl Conn {
    fn new(index: usize, now: Instant) -> Conn {
        Conn {
            index,
            sock: None,
            phase: Phase::Idle,
            wpos: 0,
            buf: vec![0u8; READ_BUF],
            rpos: 0,
            end: 0,
            origin: now,
            deadline: now,
            got_bytes: false,
            status: 0,
            server_close: false,
            framing: Framing::Empty,
            body_len: 0,
            hash: Fnv64::new(),
            mismatch: None,
            header_sum: None,
            header_sum_raw: false,
            answer: Vec::with_capacity(MAX_ANSWER),
        }
    }

    /// Starts a request whose latency counts from `origin`.
    fn start(&mut self, cx: &mut Ctx, origin: Instant) {
        self.origin = origin;
        self.deadline = Instant::now() + cx.plan.config.timeout;
        self.wpos = 0;
        self.rpos = 0;
        self.end = 0;
        self.got_bytes = false;
        self.status = 0;
        self.server_close = false;
        self.framing = Framing::Empty;
        self.body_len = 0;
        self.hash = Fnv64::new();
        self.mismatch = None;
        self.header_sum = None;
        self.header_sum_raw = false;
        self.answer.clear();
        cx.active += 1;
        if self.sock.is_some() {
            self.phase = Phase::Writing;
            self.write(cx);
            return;
        }
        self.phase = Phase::Connecting;
        let addr = cx.plan.config.addr;
        match TcpStream::connect(addr) {
            Ok(mut s) => {
                if let Err(e) = cx.registry.register(
                    &mut s,
                    Token(self.index),
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    self.fail(cx, FailureKind::ConnectError, || {
                        format!("registering a socket to {addr}: {e}")
                    });
                    return;
                }
                self.sock = Some(s);
            }
            Err(e) => {
                self.fail(cx, classify_connect(&e), || {
                    format!("connect to {addr}: {e}")
                });
            }
        }
    }

    fn on_event(&mut self, cx: &mut Ctx) {
        match self.phase {
            Phase::Connecting => self.check_connect(cx),
            Phase::Writing => self.write(cx),
            Phase::Head | Phase::Body => self.read(cx),
            Phase::Idle | Phase::Backoff(_) | Phase::Done => self.check_idle(),
        }
    }

    fn check_connect(&mut self, cx: &mut Ctx) {
        let addr = cx.plan.config.addr;
        let Some(sock) = self.sock.as_ref() else {
            return;
        };
        match sock.take_error() {
            Ok(None) => {}
            Ok(Some(e)) | Err(e) => {
                return self.fail(cx, classify_connect(&e), || {
                    format!("connect to {addr}: {e}")
                })
            }
        }
        match sock.peer_addr() {
            Ok(_) => {}
            // Spurious wakeup: the handshake is still going on.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
            Err(e) => {
                return self.fail(cx, classify_connect(&e), || {
                    format!("connect to {addr}: {e}")
                })
            }
        }
        // Small requests and responses: do not let Nagle hold a request back.
        let _ = sock.set_nodelay(true);
        cx.stats.connections += 1;
        self.phase = Phase::Writing;
        self.write(cx);
    }

    fn write(&mut self, cx: &mut Ctx) {
        let request = &cx.plan.request;
        while self.wpos < request.len() {
            let Some(sock) = self.sock.as_mut() else {
                return;
            };
            match sock.write(&request[self.wpos..]) {
                Ok(0) => {
                    return self.fail(cx, FailureKind::WriteError, || {
                        "the socket accepted no byte of the request".to_owned()
                    })
                }
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let wpos = self.wpos;
                    return self.fail(cx, classify_write(&e), || {
                        format!(
                            "sending the request ({wpos} of {} bytes sent): {e}",
                            request.len()
                        )
                    });
                }
            }
        }
        // No read attempt now: the response cannot be there yet, and the edge-triggered
        // readable event comes when it arrives (saves a syscall per request).
        self.phase = Phase::Head;
    }

    fn read(&mut self, cx: &mut Ctx) {
        loop {
            if self.end == self.buf.len() {
                if self.rpos > 0 {
                    self.buf.copy_within(self.rpos..self.end, 0);
                    self.end -= self.rpos;
                    self.rpos = 0;
                } else if self.phase == Phase::Head && self.buf.len() < MAX_HEAD {
                    let len = (self.buf.len() * 2).min(MAX_HEAD);
                    self.buf.resize(len, 0);
                } else {
                    let what = if self.phase == Phase::Head {
                        "response head larger than 64 KiB"
                    } else {
                        "chunk-size or trailer line too long"
                    };
                    return self.fail(cx, FailureKind::BadResponse, || what.to_owned());
                }
            }
            let Some(sock) = self.sock.as_mut() else {
                return;
            };
            match sock.read(&mut self.buf[self.end..]) {
                Ok(0) => return self.on_eof(cx),
                Ok(n) => {
                    self.end += n;
                    self.got_bytes = true;
                    if let Progress::Finished = self.process(cx) {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let got = self.got_bytes;
                    return self.fail(cx, classify_read(&e), || {
                        format!("reading the response (bytes received: {got}): {e}")
                    });
                }
            }
        }
    }

    /// Parses what the buffer holds.
    fn process(&mut self, cx: &mut Ctx) -> Progress {
        while self.phase == Phase::Head {
            match parse_head(&self.buf[self.rpos..self.end]) {
                Ok(None) => return Progress::More,
                Err(msg) => {
                    self.fail(cx, FailureKind::BadResponse, || msg);
                    return Progress::Finished;
                }
                Ok(Some(head)) => {
                    self.rpos += head.len;
                    // Interim responses (100 Continue...) precede the real one.
                    if (100..200).contains(&head.status) && head.status != 101 {
                        continue;
                    }
                    self.status = head.status;
                    self.server_close = head.close;
                    self.framing = if head.status == 101 {
                        Framing::Empty
                    } else {
                        head.framing
                    };
                    self.header_sum = head.header_sum;
                    self.header_sum_raw = head.header_sum_raw;
                    self.phase = Phase::Body;
                }
            }
        }
        loop {
            let avail = self.end - self.rpos;
            match self.framing {
                Framing::Empty => return self.complete(cx),
                Framing::Length(0) => return self.complete(cx),
                Framing::Length(rem) => {
                    if avail == 0 {
                        return Progress::More;
                    }
                    let take = (avail as u64).min(rem) as usize;
                    self.consume(cx, take);
                    self.framing = Framing::Length(rem - take as u64);
                }
                Framing::UntilClose => {
                    if avail > 0 {
                        self.consume(cx, avail);
                    }
                    // Compact eagerly: nothing but body bytes ever sits in the buffer.
                    self.rpos = 0;
                    self.end = 0;
                    return Progress::More;
                }
                Framing::Chunked(state) => match state {
                    Chunk::Size | Chunk::Trailer => {
                        let data = &self.buf[self.rpos..self.end];
                        let Some(pos) = find_crlf(data) else {
                            if data.len() > MAX_LINE {
                                self.fail(cx, FailureKind::BadResponse, || {
                                    "chunk-size or trailer line too long".to_owned()
                                });
                                return Progress::Finished;
                            }
                            return Progress::More;
                        };
                        if state == Chunk::Trailer {
                            self.rpos += pos + 2;
                            if pos == 0 {
                                return self.complete(cx);
                            }
                            continue;
                        }
                        let line = &data[..pos];
                        let size_part = line.split(|&b| b == b';').next().unwrap_or(line);
                        let Some(size) = parse_hex_u64(size_part) else {
                            let shown = String::from_utf8_lossy(line).into_owned();
                            self.fail(cx, FailureKind::BadResponse, || {
                                format!("bad chunk-size line {shown:?}")
                            });
                            return Progress::Finished;
                        };
                        self.rpos += pos + 2;
                        self.framing = Framing::Chunked(if size == 0 {
                            Chunk::Trailer
                        } else {
                            Chunk::Data(size)
                        });
                    }
                    Chunk::Data(rem) => {
                        if avail == 0 {
                            return Progress::More;
                        }
                        let take = (avail as u64).min(rem) as usize;
                        self.consume(cx, take);
                        let left = rem - take as u64;
                        self.framing = Framing::Chunked(if left == 0 {
                            Chunk::DataEnd
                        } else {
                            Chunk::Data(left)
                        });
                    }
                    Chunk::DataEnd => {
                        if avail < 2 {
                            return Progress::More;
                        }
                        if &self.buf[self.rpos..self.rpos + 2] != b"\r\n" {
                            self.fail(cx, FailureKind::BadResponse, || {
                                "chunk data not followed by CRLF".to_owned()
                            });
                            return Progress::Finished;
                        }
                        self.rpos += 2;
                        self.framing = Framing::Chunked(Chunk::Size);
                    }
                },
            }
        }
    }

    /// Checks `take` body bytes at the read position against what is expected, and moves on.
    fn consume(&mut self, cx: &Ctx, take: usize) {
        let bytes = &self.buf[self.rpos..self.rpos + take];
        match &cx.plan.expect {
            Expect::Download {
                pattern: Some(p), ..
            } => {
                if self.mismatch.is_none() {
                    let off = self.body_len as usize;
                    let expected = p.get(off..).unwrap_or(&[]);
                    let n = bytes.len().min(expected.len());
                    if bytes[..n] != expected[..n] {
                        let k = bytes
                            .iter()
                            .zip(expected)
                            .position(|(a, b)| a != b)
                            .unwrap_or(0);
                        self.mismatch = Some(self.body_len + k as u64);
                    }
                    // Bytes past the expected length are caught by the length check.
                }
            }
            Expect::Download { pattern: None, .. } => self.hash.update(bytes),
            Expect::Upload { .. } => {
                let room = MAX_ANSWER.saturating_sub(self.answer.len());
                self.answer
                    .extend_from_slice(&bytes[..bytes.len().min(room)]);
            }
            Expect::Status => {}
        }
        self.body_len += take as u64;
        self.rpos += take;
    }

    fn on_eof(&mut self, cx: &mut Ctx) {
        match (self.phase, self.framing) {
            (Phase::Body, Framing::UntilClose) => {
                self.server_close = true;
                self.complete(cx);
            }
            (Phase::Head, _) if !self.got_bytes => {
                self.fail(cx, FailureKind::ClosedBeforeResponse, || {
                    "the server closed the connection after the request was sent, before any \
                 response byte"
                        .to_owned()
                })
            }
            (Phase::Head, _) => self.fail(cx, FailureKind::Truncated, || {
                "the server closed the connection inside the response head".to_owned()
            }),
            _ => {
                let body_len = self.body_len;
                self.fail(cx, FailureKind::Truncated, || {
                    format!(
                        "the server closed the connection inside the body ({body_len} bytes \
                         received)"
                    )
                })
            }
        }
    }

    /// The response is complete: verify it, account for it, hand the connection back.
    fn complete(&mut self, cx: &mut Ctx) -> Progress {
        if self.rpos != self.end {
            let extra = self.end - self.rpos;
            self.fail(cx, FailureKind::BadResponse, || {
                format!("{extra} unexpected bytes after the response")
            });
            return Progress::Finished;
        }
        let verdict = self.verify(cx);
        let now = Instant::now();
        let keep = !self.server_close && cx.plan.config.mode == Mode::KeepAlive;
        match verdict {
            Ok(()) => {
                let us = now.saturating_duration_since(self.origin).as_micros() as u64;
                cx.stats.record_ok(now, us);
                if self.server_close && cx.plan.config.mode == Mode::KeepAlive {
                    cx.stats.closed_by_server += 1;
                }
            }
            Err((kind, detail)) => cx.record_failure(self.index, kind, || detail),
        }
        if !keep {
            self.sock = None;
        }
        self.end_request(cx, false);
        Progress::Finished
    }

    fn verify(&self, cx: &Ctx) -> Result<(), (FailureKind, String)> {
        if !(200..300).contains(&self.status) {
            return Err((FailureKind::Non2xx, format!("status {}", self.status)));
        }
        match &cx.plan.expect {
            Expect::Status => Ok(()),
            Expect::Download { len, pattern, sum } => {
                let (len, sum) = (*len, *sum);
                if self.body_len < len {
                    return Err((
                        FailureKind::Truncated,
                        format!("{} of {len} body bytes", self.body_len),
                    ));
                }
                if self.body_len > len {
                    return Err((
                        FailureKind::Corrupt,
                        format!("{} body bytes, {len} expected", self.body_len),
                    ));
                }
                if pattern.is_some() {
                    if let Some(at) = self.mismatch {
                        return Err((
                            FailureKind::Corrupt,
                            format!("body differs from the pattern at byte {at}"),
                        ));
                    }
                } else if self.hash.finish() != sum {
                    return Err((
                        FailureKind::Corrupt,
                        format!(
                            "body checksum {} != pattern's {}",
                            self.hash.hex(),
                            checksum_hex(sum)
                        ),
                    ));
                }
                if self.header_sum != Some(sum) {
                    return Err((
                        FailureKind::Corrupt,
                        if self.header_sum_raw {
                            format!("X-Body-Checksum is not the pattern's {}", checksum_hex(sum))
                        } else {
                            "no X-Body-Checksum header (use --verify status for another \
                             server)"
                                .to_owned()
                        },
                    ));
                }
                Ok(())
            }
            Expect::Upload { answer } => {
                if self.answer.trim_ascii() == answer.as_slice() {
                    Ok(())
                } else {
                    Err((
                        FailureKind::Corrupt,
                        format!(
                            "upload answer {:?}, expected {:?}",
                            String::from_utf8_lossy(&self.answer),
                            String::from_utf8_lossy(answer)
                        ),
                    ))
                }
            }
        }
    }

    /// Counts a failure of the request in flight and drops the connection.
    fn fail(&mut self, cx: &mut Ctx, kind: FailureKind, detail: impl FnOnce() -> String) {
        cx.record_failure(self.index, kind, detail);
        self.sock = None;
        let connect_failed = matches!(
            kind,
            FailureKind::ConnectRefused | FailureKind::ConnectTimeout | FailureKind::ConnectError
        );
        self.end_request(cx, connect_failed);
    }

    fn end_request(&mut self, cx: &mut Ctx, connect_failed: bool) {
        cx.active -= 1;
        if connect_failed && !cx.open_loop {
            self.phase = Phase::Backoff(Instant::now() + CONNECT_BACKOFF);
        } else {
            self.phase = Phase::Idle;
            cx.ready.push(self.index);
        }
    }

    /// An event on a connection without a request: the server closing an idle keep-alive
    /// connection (not a failure: the next request reconnects), or stray bytes (dropped).
    fn check_idle(&mut self) {
        let Some(sock) = self.sock.as_mut() else {
            return;
        };
        let mut scratch = [0u8; 64];
        loop {
            match sock.read(&mut scratch) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => {
                    self.sock = None;
                    return;
                }
            }
        }
    }
}

/// Open-loop schedule of one thread: global slot k is due at `started + k / rate`; thread t
/// of T takes slots t, t+T, t+2T...
struct Schedule {
    next: u64,
    thread: u64,
    threads: u64,
    rate: f64,
}

impl Schedule {
    fn slot(&self, j: u64) -> u64 {
        j * self.threads + self.thread
    }

    /// Due time of this thread's `j`-th slot, None when past `-n` or the duration.
    fn due(&self, plan: &Plan, j: u64) -> Option<Instant> {
        let k = self.slot(j);
        if plan.config.requests.is_some_and(|n| k >= n) {
            return None;
        }
        let due = plan.started + Duration::from_secs_f64(k as f64 / self.rate);
        match plan.end {
            Some(end) if due >= end => None,
            _ => Some(due),
        }
    }
}

/// Hands out work until nothing changes: next requests for the connections handed back
/// (closed loop), due requests for idle connections (open loop). A start may fail at once and
/// hand its connection back, hence the loop.
fn dispatch(
    conns: &mut [Conn],
    cx: &mut Ctx,
    idle: &mut Vec<usize>,
    mut schedule: Option<&mut Schedule>,
    stopped: bool,
    exhausted: &mut bool,
) {
    let plan = cx.plan;
    loop {
        while let Some(i) = cx.ready.pop() {
            let conn = &mut conns[i];
            if cx.open_loop {
                idle.push(i);
            } else if stopped || *exhausted {
                conn.phase = Phase::Done;
                conn.sock = None;
            } else if !plan.take_budget() {
                *exhausted = true;
                conn.phase = Phase::Done;
                conn.sock = None;
            } else {
                conn.start(cx, Instant::now());
            }
        }
        if let Some(s) = schedule.as_deref_mut() {
            if !stopped {
                let now = Instant::now();
                loop {
                    let Some(due) = s.due(plan, s.next) else {
                        *exhausted = true;
                        break;
                    };
                    if due > now {
                        break;
                    }
                    // Due but no idle connection: it waits, its latency growing.
                    let Some(i) = idle.pop() else { break };
                    s.next += 1;
                    conns[i].start(cx, due);
                }
            }
        }
        if cx.ready.is_empty() {
            return;
        }
    }
}

fn run_thread(plan: &Plan, thread: usize, threads: usize, nconns: usize) -> ThreadStats {
    let mut stats = ThreadStats::new(plan.started);
    let (mut poll, registry) = match Poll::new().and_then(|p| {
        let r = p.registry().try_clone()?;
        Ok((p, r))
    }) {
        Ok(x) => x,
        Err(e) => {
            stats.error = Some(format!("creating an event loop: {e}"));
            return stats;
        }
    };
    let now = Instant::now();
    let mut conns: Vec<Conn> = (0..nconns).map(|i| Conn::new(i, now)).collect();
    let open_loop = plan.config.rate.is_some();
    let mut cx = Ctx {
        plan,
        stats,
        registry,
        ready: (0..nconns).rev().collect(),
        active: 0,
        thread,
        open_loop,
    };
    let mut schedule = plan.config.rate.map(|rate| Schedule {
        next: 0,
        thread: thread as u64,
        threads: threads as u64,
        rate,
    });
    let mut idle: Vec<usize> = Vec::with_capacity(nconns);
    let mut events = Events::with_capacity(1024);
    // When a stop (signal or end of the duration) was noticed.
    let mut stopped_at: Option<Instant> = None;
    // No request will ever be started again (budget spent, schedule over).
    let mut exhausted = false;
    let mut last_sweep = now;

    loop {
        let now = Instant::now();
        if stopped_at.is_none() {
            let ended = plan.end.is_some_and(|e| now >= e);
            if plan.stop.load(Ordering::Relaxed) || ended {
                stopped_at = Some(match plan.end {
                    Some(e) if ended => e,
                    _ => now,
                });
            }
        }
        dispatch(
            &mut conns,
            &mut cx,
            &mut idle,
            schedule.as_mut(),
            stopped_at.is_some(),
            &mut exhausted,
        );
        if (stopped_at.is_some() || exhausted) && cx.active == 0 {
            break;
        }

        let now = Instant::now();
        let mut timeout = SWEEP.saturating_sub(now.saturating_duration_since(last_sweep));
        if let Some(s) = schedule.as_ref() {
            if stopped_at.is_none() && !idle.is_empty() {
                if let Some(due) = s.due(plan, s.next) {
                    timeout = timeout.min(due.saturating_duration_since(now));
                }
            }
        }
        if let (None, Some(end)) = (stopped_at, plan.end) {
            timeout = timeout.min(end.saturating_duration_since(now));
        }
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                cx.stats.error = Some(format!("event loop: {e}"));
                break;
            }
        }
        for event in events.iter() {
            if let Some(conn) = conns.get_mut(event.token().0) {
                conn.on_event(&mut cx);
            }
        }
        // Next requests go out after the whole batch of events was read (as wrk does it, on
        // the next loop turn): the writes of a batch then reach the server together.
        let now = Instant::now();
        if now.saturating_duration_since(last_sweep) >= SWEEP {
            last_sweep = now;
            for conn in conns.iter_mut() {
                match conn.phase {
                    p if p.in_request() && now >= conn.deadline => {
                        let timeout = plan.config.timeout;
                        let (kind, what) = if p == Phase::Connecting {
                            (FailureKind::ConnectTimeout, "connect")
                        } else {
                            (FailureKind::Timeout, "response")
                        };
                        conn.fail(&mut cx, kind, || {
                            format!("no complete {what} within {timeout:?}")
                        });
                    }
                    Phase::Backoff(until) if now >= until => {
                        conn.phase = Phase::Idle;
                        cx.ready.push(conn.index);
                    }
                    _ => {}
                }
            }
        }
    }

    // Open loop: requests that were due before the stop but never found an idle connection.
    if let (Some(s), Some(stop)) = (schedule.as_ref(), stopped_at) {
        let mut j = s.next;
        while let Some(due) = s.due(plan, j) {
            if due >= stop {
                break;
            }
            cx.stats.unsent += 1;
            j += 1;
        }
    }
    let mut stats = cx.stats;
    stats.finished = Instant::now();
    stats
}

/// A fresh latency histogram: 1 µs to 1 h, 3 significant digits.
pub(super) fn new_histogram() -> Histogram<u64> {
    // Only fails for invalid bounds, and these are constants.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant histogram bounds")
}
