//! One connection's state machine: connect, TLS handshake (with `--tls`), write the request,
//! read the response (parsed and verified in `response.rs`), hand the connection back.

use std::io;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Token};

use super::engine::Ctx;
use super::response::{Framing, Progress, MAX_ANSWER};
use super::stream::Stream;
use super::Mode;
use crate::failure::FailureKind;
use crate::Fnv64;

/// Initial read buffer of a connection; grows (up to [`MAX_HEAD`]) only for a huge head.
const READ_BUF: usize = 16 * 1024;
const MAX_HEAD: usize = 64 * 1024;

/// A connection whose connect failed waits this long before the next attempt (closed loop),
/// so a dead address is not hammered in a busy loop.
const CONNECT_BACKOFF: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// No request in flight (socket kept open in keep-alive mode, or none).
    Idle,
    /// Waiting after a failed connect before the next attempt.
    Backoff(Instant),
    Connecting,
    /// `--tls`: connected, the TLS handshake under way.
    Handshake,
    Writing,
    Head,
    Body,
    /// No more requests for this connection.
    Done,
}

impl Phase {
    pub(super) fn in_request(self) -> bool {
        matches!(
            self,
            Phase::Connecting | Phase::Handshake | Phase::Writing | Phase::Head | Phase::Body
        )
    }
}

pub(super) struct Conn {
    pub(super) index: usize,
    /// The socket, plain or TLS (None between connections).
    pub(super) stream: Option<Stream>,
    pub(super) phase: Phase,
    pub(super) wpos: usize,
    pub(super) buf: Vec<u8>,
    pub(super) rpos: usize,
    pub(super) end: usize,
    /// Latency origin: send time (closed loop) or scheduled time (open loop).
    pub(super) origin: Instant,
    pub(super) deadline: Instant,
    pub(super) got_bytes: bool,
    pub(super) status: u16,
    pub(super) server_close: bool,
    pub(super) framing: Framing,
    pub(super) body_len: u64,
    pub(super) hash: Fnv64,
    /// First body offset that differs from the expected pattern.
    pub(super) mismatch: Option<u64>,
    pub(super) header_sum: Option<u64>,
    pub(super) header_sum_raw: bool,
    pub(super) answer: Vec<u8>,
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

impl Conn {
    pub(super) fn new(index: usize, now: Instant) -> Conn {
        Conn {
            index,
            stream: None,
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
    pub(super) fn start(&mut self, cx: &mut Ctx, origin: Instant) {
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
        if self.stream.is_some() {
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
                let plan = cx.plan;
                self.stream = match &plan.config.tls {
                    None => Some(Stream::plain(s)),
                    Some(tls) => match Stream::tls(s, &tls.config, &tls.server_name) {
                        Ok(stream) => Some(stream),
                        Err(e) => {
                            return self.fail(cx, FailureKind::TlsHandshake, || {
                                format!("starting a TLS session: {e}")
                            })
                        }
                    },
                };
            }
            Err(e) => {
                self.fail(cx, classify_connect(&e), || {
                    format!("connect to {addr}: {e}")
                });
            }
        }
    }

    pub(super) fn on_event(&mut self, cx: &mut Ctx) {
        match self.phase {
            Phase::Connecting => self.check_connect(cx),
            Phase::Handshake => self.handshake(cx),
            Phase::Writing => self.write(cx),
            Phase::Head | Phase::Body => self.read(cx),
            Phase::Idle | Phase::Backoff(_) | Phase::Done => self.check_idle(),
        }
    }

    fn check_connect(&mut self, cx: &mut Ctx) {
        let addr = cx.plan.config.addr;
        let Some(sock) = self.stream.as_ref().map(|s| &s.sock) else {
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
            // Spurious wakeup: the TCP handshake is still going on.
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
        if self.stream.as_ref().is_some_and(Stream::is_tls) {
            self.phase = Phase::Handshake;
            self.handshake(cx);
        } else {
            self.phase = Phase::Writing;
            self.write(cx);
        }
    }

    fn handshake(&mut self, cx: &mut Ctx) {
        let Some(stream) = self.stream.as_mut() else {
            return;
        };
        match stream.handshake() {
            Ok(None) => {}
            Ok(Some(done)) => {
                cx.stats.record_handshake(done.resumed, &done.negotiated);
                self.phase = Phase::Writing;
                self.write(cx);
            }
            Err(e) => {
                let addr = cx.plan.config.addr;
                self.fail(cx, FailureKind::TlsHandshake, || {
                    format!("TLS handshake with {addr}: {e}")
                })
            }
        }
    }

    fn write(&mut self, cx: &mut Ctx) {
        let request = &cx.plan.request;
        while self.wpos < request.len() {
            let Some(stream) = self.stream.as_mut() else {
                return;
            };
            match stream.write(&request[self.wpos..]) {
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
        // TLS: the last records may still wait in rustls; the next writable event sends them.
        match self.stream.as_mut().map(Stream::flush) {
            Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => return,
            Some(Err(e)) => {
                return self.fail(cx, classify_write(&e), || {
                    format!("sending the request: {e}")
                })
            }
            _ => {}
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
            let Some(stream) = self.stream.as_mut() else {
                return;
            };
            match stream.read(&mut self.buf[self.end..]) {
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

    pub(super) fn on_eof(&mut self, cx: &mut Ctx) {
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
    pub(super) fn complete(&mut self, cx: &mut Ctx) -> Progress {
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
            self.close();
        }
        self.end_request(cx, false);
        Progress::Finished
    }

    /// The client ends the connection (TLS: with close_notify).
    pub(super) fn close(&mut self) {
        if let Some(stream) = self.stream.take() {
            stream.close();
        }
    }

    /// Counts a failure of the request in flight and drops the connection.
    pub(super) fn fail(
        &mut self,
        cx: &mut Ctx,
        kind: FailureKind,
        detail: impl FnOnce() -> String,
    ) {
        cx.record_failure(self.index, kind, detail);
        self.stream = None;
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
    /// TLS records without plaintext (session tickets) leave the connection as it is.
    fn check_idle(&mut self) {
        let Some(stream) = self.stream.as_mut() else {
            return;
        };
        let mut scratch = [0u8; 64];
        loop {
            match stream.read(&mut scratch) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => {
                    self.stream = None;
                    return;
                }
            }
        }
    }
}
