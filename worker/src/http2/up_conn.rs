//! An HTTP/2 connection to one upstream target, shared by many exchanges: each is a stream
//! bridged to its session through a pipe (`up_stream`). Driven like the client side (`conn`):
//! no runtime, each run polls the connection and every stream with a waker that only records
//! "run again". Owned by the upstream pools (`upstream::h2`), which hand its streams out and
//! close it.
//!
//! | state | event | what happens |
//! |---|---|---|
//! | connecting | socket ready | TCP (and TLS) done: over TLS, ALPN must have chosen `h2`; the preface and SETTINGS go out |
//! | connecting | every waiting stream gone | closed (their sessions timed out or failed over) |
//! | connecting | connect or TLS failure, no `h2` by ALPN | every waiting stream's session fails over as after a refused connect |
//! | open | a session writes a request head | a stream opens (up to the target's SETTINGS_MAX_CONCURRENT_STREAMS and `max-h2-streams`) |
//! | open | GOAWAY | no new stream here; streams beyond its last id go again elsewhere (refused); the others finish |
//! | open | no stream for the pool's idle timeout, or PING unanswered | closed |
//! | any | connection error | streams in flight fail (sessions see a reset) |

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::{Connection, SendRequest};
use h2::{Ping, PingPong, Reason};
use http::uri::Scheme;
use slab::Slab;
use tracing::{debug, warn};

use super::driver::{Driver, MAX_PASSES};
use super::io::{H2Io, SharedWire, Wire};
use super::up_stream::{UpCtx, UpStream};
use crate::sock::pipe::{Connect, SharedPipe};
use crate::sock::{Buf, Ready, UpSock};
use crate::timers::TimerId;
use crate::wakeups::{self, Wake};

/// Per-stream receive window: what a target may send ahead on one stream. Given back only as
/// the bytes move into the stream's bounded pipe, so this bounds memory.
const STREAM_WINDOW: u32 = 256 * 1024;
/// Connection receive window: bounds what all streams together may have buffered here.
const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Largest response head accepted from a target.
const MAX_HEADER_LIST: u32 = 64 * 1024;
/// h2's allowance for the bookkeeping of small DATA frames buffered on the connection (its
/// defence against a peer flooding tiny frames). Its default, half the connection window,
/// is exhausted by an ordinary gRPC server streaming small messages on a few dozen streams
/// faster than their clients read: the connection would be closed with ENHANCE_YOUR_CALM. A
/// target is the operator's own server, so it gets four windows' worth; memory per
/// connection stays bounded (the window bounds the payload, this the overhead).
const DATA_FRAME_BUDGET: usize = 4 * CONNECTION_WINDOW as usize;

type Handshake =
    Pin<Box<dyn Future<Output = Result<(SendRequest<Bytes>, Connection<H2Io, Bytes>), h2::Error>>>>;

enum State {
    Connecting(Option<UpSock>),
    Handshaking(Handshake),
    Open {
        send: SendRequest<Bytes>,
        conn: Box<Connection<H2Io, Bytes>>,
    },
    Closed,
}

/// Where a connection belongs (set by the pools).
#[derive(Debug, Clone, Copy)]
pub struct UpstreamSide {
    /// Key in the pools' HTTP/2 table (what sessions wake).
    pub key: usize,
    /// Key in the pools' connection table (its token).
    pub conn_id: usize,
    pub pool: usize,
    pub target: usize,
}

/// What a run left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpRun {
    Open,
    /// Over: the pools remove it.
    Closed,
}

pub struct H2Upstream {
    pub side: UpstreamSide,
    state: State,
    /// Readiness from mio, folded into the socket at the next read or write.
    /// The socket once connected, shared with h2's `H2Io` (readiness is folded into it).
    wire: Option<SharedWire>,
    streams: Slab<UpStream>,
    driver: Driver,
    scheme: Scheme,
    /// The target's address, as `:authority` of a request without `Host`.
    authority: String,
    /// `max-h2-streams`.
    max_streams: usize,
    /// No new stream goes here (GOAWAY, an error, max lifetime reached, draining).
    pub going_away: bool,
    /// Over TLS, ALPN did not choose `h2`.
    pub alpn_refused: bool,
    /// The connection itself is over (the target closed it after its GOAWAY, or it failed),
    /// but streams still hold what they received: they hand it to their sessions, then the
    /// connection closes.
    ended: bool,
    /// The pools' timer for this connection (idle timeout, PING).
    pub timer: Option<TimerId>,
    /// Since when no stream has been open (`None` while some is).
    pub idle_since: Option<Instant>,
    pub created: Instant,
    ping: Option<Pinger>,
}

/// `h2-ping-interval`: a PING every interval, and the connection found dead when one is not
/// answered within the next.
struct Pinger {
    interval: Duration,
    pong: Option<PingPong>,
    /// A PING in flight since then.
    sent: Option<Instant>,
    next: Instant,
}

impl std::fmt::Debug for H2Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Upstream")
            .field("side", &self.side)
            .field("streams", &self.streams.len())
            .field("going_away", &self.going_away)
            .finish_non_exhaustive()
    }
}

impl H2Upstream {
    /// A connection whose connect (and TLS handshake) was just started; `ping_interval`:
    /// `h2-ping-interval` (zero: none).
    pub fn connecting(
        side: UpstreamSide,
        sock: UpSock,
        authority: String,
        max_streams: u32,
        ping_interval: Duration,
        now: Instant,
    ) -> Self {
        let scheme = if sock.is_tls() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        };
        H2Upstream {
            side,
            state: State::Connecting(Some(sock)),
            wire: None,
            streams: Slab::new(),
            driver: Driver::default(),
            scheme,
            authority,
            max_streams: usize::try_from(max_streams.max(1)).unwrap_or(usize::MAX),
            going_away: false,
            alpn_refused: false,
            ended: false,
            timer: None,
            idle_since: Some(now),
            created: now,
            ping: (!ping_interval.is_zero()).then_some(Pinger {
                interval: ping_interval,
                pong: None,
                sent: None,
                next: now + ping_interval,
            }),
        }
    }

    /// Established (TCP and TLS), nothing sent yet.
    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open { .. })
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Streams it may carry at once: `max-h2-streams`, lowered by the target's
    /// SETTINGS_MAX_CONCURRENT_STREAMS once known.
    pub fn capacity(&self) -> usize {
        match &self.state {
            State::Open { conn, .. } => self.max_streams.min(conn.max_concurrent_send_streams()),
            _ => self.max_streams,
        }
    }

    /// A new exchange may go here.
    pub fn has_room(&self) -> bool {
        !self.going_away && !self.is_closed() && self.streams.len() < self.capacity()
    }

    /// Bridge `pipe` (a new exchange) to a new stream. Its pipe says whether the connection
    /// is established yet.
    pub fn add_stream(&mut self, pipe: SharedPipe) {
        pipe.borrow_mut().connect = if self.is_open() {
            Connect::Ready
        } else {
            Connect::Pending
        };
        self.streams.insert(UpStream::new(pipe));
        self.idle_since = None;
    }

    /// The socket's readiness.
    pub fn on_ready(&mut self, r: Ready, now: Instant) -> UpRun {
        match &mut self.state {
            State::Connecting(Some(sock)) => sock.on_ready(r),
            _ => {
                if let Some(wire) = &self.wire {
                    wire.borrow_mut().on_ready(r);
                }
            }
        }
        self.run(now)
    }

    /// Poll the connection and every stream until nothing moves (or its share of the turn is
    /// used up: it is woken again after the next poll).
    pub fn run(&mut self, now: Instant) -> UpRun {
        let waker = self.driver.waker();
        let mut cx = Context::from_waker(&waker);
        let mut passes = 0;
        loop {
            self.driver.start_pass();
            if !self.poll_state(&mut cx) {
                self.close_streams(Reason::CANCEL);
                return UpRun::Closed;
            }
            if let State::Open { send, .. } = &mut self.state {
                let mut up = UpCtx {
                    send_request: send,
                    scheme: &self.scheme,
                    authority: &self.authority,
                    going_away: &mut self.going_away,
                };
                for (_, s) in self.streams.iter_mut() {
                    s.pump(&mut cx, &mut up);
                }
            } else {
                // Still connecting: sessions that gave up leave.
                for (_, s) in self.streams.iter_mut() {
                    if s.pipe.borrow().session_gone {
                        s.cut(Reason::CANCEL);
                    }
                }
            }
            self.streams.retain(|_, s| !s.finished());
            passes += 1;
            if !self.driver.again() {
                break;
            }
            if passes >= MAX_PASSES {
                wakeups::wake(Wake::H2Upstream(self.side.key));
                break;
            }
        }
        if self.streams.is_empty() {
            if !self.is_open() || self.ended {
                // Nobody waits for it any more.
                return UpRun::Closed;
            }
            if self.idle_since.is_none() {
                self.idle_since = Some(now);
            }
        } else {
            self.idle_since = None;
        }
        UpRun::Open
    }

    /// Drive the connect, the handshake or the connection. `false`: it is over.
    fn poll_state(&mut self, cx: &mut Context<'_>) -> bool {
        if let State::Connecting(slot) = &mut self.state {
            let Some(mut sock) = slot.take() else {
                return false;
            };
            match sock.poll_connect() {
                Ok(false) => {
                    *slot = Some(sock);
                    return true;
                }
                Ok(true) if sock.is_tls() && !sock.negotiated_h2() => {
                    self.alpn_refused = true;
                    self.connect_failed(
                        io::ErrorKind::Unsupported,
                        "the target did not choose h2 by ALPN (it speaks HTTP/1.1 only?)",
                    );
                    return false;
                }
                Ok(true) => {
                    let wire = Wire::shared(sock, Buf::new(), None, Instant::now());
                    self.wire = Some(Rc::clone(&wire));
                    let io = H2Io(wire);
                    let mut builder = h2::client::Builder::new();
                    builder
                        .initial_window_size(STREAM_WINDOW)
                        .initial_connection_window_size(CONNECTION_WINDOW)
                        .max_header_list_size(MAX_HEADER_LIST)
                        .data_frame_budget(DATA_FRAME_BUDGET)
                        .enable_push(false);
                    self.state = State::Handshaking(Box::pin(builder.handshake(io)));
                }
                Err(e) => {
                    self.connect_failed(e.kind(), &e.to_string());
                    return false;
                }
            }
        }
        if let State::Handshaking(hs) = &mut self.state {
            match hs.as_mut().poll(cx) {
                Poll::Ready(Ok((send, mut conn))) => {
                    if let Some(p) = self.ping.as_mut() {
                        p.pong = conn.ping_pong();
                    }
                    self.state = State::Open {
                        send,
                        conn: Box::new(conn),
                    };
                    for (_, s) in self.streams.iter() {
                        s.connected();
                    }
                }
                Poll::Ready(Err(e)) => {
                    self.connect_failed(io::ErrorKind::ConnectionAborted, &e.to_string());
                    return false;
                }
                Poll::Pending => return true,
            }
        }
        let State::Open { conn, .. } = &mut self.state else {
            return false;
        };
        if self.ended {
            return true;
        }
        if let Some(p) = self.ping.as_mut() {
            if let Some(pong) = p.pong.as_mut() {
                if let Poll::Ready(Ok(_)) = pong.poll_pong(cx) {
                    p.sent = None;
                }
            }
        }
        match Pin::new(&mut **conn).poll(cx) {
            Poll::Pending => return true,
            Poll::Ready(Ok(())) => {
                debug!(
                    upstream = self.side.pool,
                    target = self.side.target,
                    "HTTP/2 upstream connection ended"
                );
            }
            Poll::Ready(Err(e)) => {
                if e.is_go_away() || e.is_io() || e.reason() == Some(Reason::NO_ERROR) {
                    debug!(error = %e, "HTTP/2 upstream connection ended");
                } else {
                    warn!(error = %e, reason = ?e.reason(), "HTTP/2 upstream connection failed");
                }
            }
        }
        // Responses already received are still handed over (h2 keeps them with the
        // streams); streams that wait for more get h2's error at their next poll.
        self.ended = true;
        self.going_away = true;
        true
    }

    fn connect_failed(&mut self, kind: io::ErrorKind, why: &str) {
        debug!(why, "HTTP/2 upstream connection not established");
        self.state = State::Closed;
        for (_, s) in self.streams.iter_mut() {
            s.connect_failed(kind, why);
        }
        self.streams.clear();
    }

    fn close_streams(&mut self, reason: Reason) {
        for (_, s) in self.streams.iter_mut() {
            s.cut(reason);
        }
        self.streams.clear();
    }

    /// The next instant the pools' timer must fire for the PING schedule.
    pub fn ping_deadline(&self) -> Option<Instant> {
        let p = self.ping.as_ref().filter(|_| self.is_open())?;
        Some(p.sent.map_or(p.next, |s| s + p.interval))
    }

    /// The PING schedule is due: send one, or find the connection dead (`Closed`) when the
    /// last one went unanswered.
    pub fn on_ping_timer(&mut self, now: Instant) -> UpRun {
        let Some(p) = self.ping.as_mut() else {
            return UpRun::Open;
        };
        if let Some(sent) = p.sent {
            if now >= sent + p.interval {
                warn!(
                    upstream = self.side.pool,
                    target = self.side.target,
                    "HTTP/2 upstream connection did not answer a PING: closed"
                );
                self.close_streams(Reason::CANCEL);
                self.state = State::Closed;
                return UpRun::Closed;
            }
            return UpRun::Open;
        }
        if now < p.next {
            return UpRun::Open;
        }
        p.next = now + p.interval;
        if let Some(pong) = p.pong.as_mut() {
            if pong.send_ping(Ping::opaque()).is_ok() {
                p.sent = Some(now);
            }
        }
        self.run(now)
    }

    /// The pools close it: open streams are cut (their sessions see a reset), a GOAWAY goes
    /// out if the socket takes it. Returns the socket when it never got past the connect.
    pub fn close(mut self) -> Option<UpSock> {
        self.close_streams(Reason::CANCEL);
        match std::mem::replace(&mut self.state, State::Closed) {
            State::Connecting(sock) => sock,
            State::Open { send, mut conn } => {
                // Without a handle and a stream, h2 ends the connection (GOAWAY) at its next
                // poll; the socket closes when it is dropped.
                drop(send);
                let _ = self.driver.with_context(|cx| Pin::new(&mut *conn).poll(cx));
                None
            }
            State::Handshaking(_) | State::Closed => None,
        }
    }
}
