//! An HTTP/2 client connection (RFC 9113), driven by the worker's mio loop through the `h2`
//! crate: no runtime, no executor. Each run polls the connection (which reads and writes the
//! socket through [`H2Io`]) and every stream's bridge, with a waker that only records that
//! h2 asked to be polled again; the run repeats while it did. h2 handles are owned here
//! alone, so every wake happens inside a run.
//!
//! Each accepted stream becomes an HTTP/1 session over a pipe (see `sock::pipe`); the event
//! loop creates those sessions from [`H2Conn::take_new_streams`].
//!
//! | state | event | what happens |
//! |---|---|---|
//! | handshaking | socket ready | SETTINGS exchanged; open once the preface is in |
//! | handshaking | timer (request timeout) | closed |
//! | open | new stream | its head written into a new pipe; a session is spawned |
//! | open | no stream for the keep-alive timeout | GOAWAY (graceful), then closed |
//! | open | drain starts | two-step GOAWAY: last stream id 2^31-1 and a PING, then the real last id once the PING returns; streams in flight finish |
//! | shutting down | last stream done | closed (h2 ends the connection) |
//! | any | drain deadline | every open stream cut with RST_STREAM(CANCEL), logged; GOAWAY; closed |
//! | any | protocol error, flood, reset storm | GOAWAY with h2's error code; closed; counted |

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::server::{Connection, Handshake};
use h2::Reason;
use http::{Method, Request};
use slab::Slab;
use tracing::{debug, warn};

use super::driver::{Driver, MAX_PASSES};
use super::io::H2Io;
use super::stream::StreamBridge;
use super::translate;
use crate::ctx::{Ctx, Outcome};
use crate::generation::Generation;
use crate::sock::pipe::{PipeState, SharedPipe};
use crate::sock::{Buf, ClientSock, Ready};
use crate::timers::{TimerId, TimerKey};
use crate::wakeups::Wake;

/// Per-stream receive window: what a client may send ahead on one stream. The window is
/// given back only as the bytes move into the stream's bounded pipe, so this bounds memory.
const STREAM_WINDOW: u32 = 256 * 1024;
/// Connection receive window: bounds what all streams together may have buffered here.
const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// How long a connection that got its GOAWAY may wait for the PING that completes the
/// two-step shutdown once it has no stream left.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Where a connection came from: what its streams' sessions are created with.
pub struct Origin {
    pub peer: SocketAddr,
    /// The configuration and listener it was accepted on.
    pub generation: Rc<Generation>,
    pub listener: usize,
    /// The verified client certificate's subject (mutual TLS).
    pub client_subject: Option<Rc<str>>,
}

enum State {
    Handshaking(Pin<Box<Handshake<H2Io, Bytes>>>),
    Open(Box<Connection<H2Io, Bytes>>),
    Closed,
}

pub struct H2Conn {
    key: usize,
    peer: SocketAddr,
    /// The configuration and listener new streams start on (each stream's session moves to
    /// the newest generation like a keep-alive connection between requests).
    pub generation: Rc<Generation>,
    pub listener: usize,
    over_tls: bool,
    client_subject: Option<Rc<str>>,
    state: State,
    /// Readiness from mio, folded into the socket at the next read or write.
    ready: Rc<Cell<Ready>>,
    streams: Slab<StreamBridge>,
    /// Pipes of accepted streams whose session the event loop has still to create.
    new_streams: Vec<SharedPipe>,
    driver: Driver,
    timer: Option<TimerId>,
    since: Instant,
    /// Since when no stream has been open (`None` while some is).
    idle_since: Option<Instant>,
    shutting_down: Option<Instant>,
}

impl H2Conn {
    /// Take over a connection that spoke HTTP/2 from its first bytes (`read_ahead`: what was
    /// read of it already).
    pub fn new(
        key: usize,
        sock: ClientSock,
        read_ahead: Buf,
        origin: Origin,
        now: Instant,
    ) -> Self {
        let Origin {
            peer,
            generation,
            listener,
            client_subject,
        } = origin;
        let over_tls = sock.is_tls();
        let ready = Rc::new(Cell::new(Ready::default()));
        let io = H2Io::new(sock, read_ahead, Rc::clone(&ready));
        let max_streams = generation
            .listeners
            .get(listener)
            .map_or(100, |l| l.ctx.max_concurrent_streams);
        let max_header_list =
            u32::try_from(generation.limits.max_header_size_bytes).unwrap_or(u32::MAX);
        let mut builder = h2::server::Builder::new();
        builder
            .max_concurrent_streams(max_streams)
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_header_list_size(max_header_list);
        let handshake = Box::pin(builder.handshake::<H2Io, Bytes>(io));
        H2Conn {
            key,
            peer,
            generation,
            listener,
            over_tls,
            client_subject,
            state: State::Handshaking(handshake),
            ready,
            streams: Slab::new(),
            new_streams: Vec::new(),
            driver: Driver::default(),
            timer: None,
            since: now,
            idle_since: Some(now),
            shutting_down: None,
        }
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// No stream open: the drain spreads such connections' GOAWAYs like idle keep-alive
    /// connections' closes.
    pub fn is_idle(&self) -> bool {
        self.streams.is_empty()
    }

    /// Pipes of streams accepted since the last call: the event loop creates their sessions.
    pub fn take_new_streams(&mut self) -> Vec<SharedPipe> {
        std::mem::take(&mut self.new_streams)
    }

    pub fn on_ready(&mut self, r: Ready, ctx: &mut Ctx<'_>) -> Outcome {
        let had = self.ready.get();
        self.ready.set(Ready {
            readable: had.readable || r.readable,
            writable: had.writable || r.writable,
            read_closed: had.read_closed || r.read_closed,
        });
        self.run(ctx)
    }

    pub fn on_timer(&mut self, id: TimerId, ctx: &mut Ctx<'_>) -> Outcome {
        if self.timer != Some(id) {
            return Outcome::Continue;
        }
        self.timer = None;
        match &self.state {
            State::Handshaking(_) | State::Closed => return Outcome::Done,
            State::Open(_) if self.shutting_down.is_some() && self.streams.is_empty() => {
                return Outcome::Done
            }
            State::Open(_) => {}
        }
        if self.streams.is_empty() {
            debug!(peer = %self.peer, "idle HTTP/2 connection: GOAWAY");
            self.shut_down(ctx.now);
        }
        self.run(ctx)
    }

    /// Ask the client to open no new stream here (the two-step GOAWAY); streams in flight
    /// finish. The drain, and the keep-alive timeout.
    pub fn shut_down(&mut self, now: Instant) {
        if self.shutting_down.is_some() {
            return;
        }
        if let State::Open(conn) = &mut self.state {
            conn.graceful_shutdown();
        }
        self.shutting_down = Some(now);
    }

    /// The drain has begun: GOAWAY now, so the client's next request goes to a new
    /// connection (a new worker), and run to send it.
    pub fn start_drain(&mut self, ctx: &mut Ctx<'_>) -> Outcome {
        self.shut_down(ctx.now);
        self.run(ctx)
    }

    fn run(&mut self, ctx: &mut Ctx<'_>) -> Outcome {
        let waker = self.driver.waker();
        let mut cx = Context::from_waker(&waker);
        for _ in 0..MAX_PASSES {
            self.driver.start_pass();
            if !self.poll_connection(&mut cx, ctx) {
                return Outcome::Done;
            }
            for (_, s) in self.streams.iter_mut() {
                s.pump(&mut cx);
            }
            self.streams.retain(|_, s| !s.finished());
            if !self.streams.is_empty() {
                self.idle_since = None;
            } else if self.idle_since.is_none() {
                self.idle_since = Some(ctx.now);
            }
            if !self.driver.again() {
                self.update_timer(ctx);
                return Outcome::Continue;
            }
        }
        ctx.yield_turn(self.key);
        self.update_timer(ctx);
        Outcome::Continue
    }

    /// Drive the handshake or the connection, taking new streams. `false`: it is over.
    fn poll_connection(&mut self, cx: &mut Context<'_>, ctx: &mut Ctx<'_>) -> bool {
        if let State::Handshaking(hs) = &mut self.state {
            match hs.as_mut().poll(cx) {
                Poll::Ready(Ok(conn)) => self.state = State::Open(Box::new(conn)),
                Poll::Ready(Err(e)) => {
                    debug!(peer = %self.peer, error = %e, "HTTP/2 handshake failed");
                    ctx.counters.c.client_errors += 1;
                    self.state = State::Closed;
                    return false;
                }
                Poll::Pending => return true,
            }
        }
        let State::Open(conn) = &mut self.state else {
            return false;
        };
        let mut accepted = Vec::new();
        let open = loop {
            match conn.poll_accept(cx) {
                Poll::Ready(Some(Ok(stream))) => accepted.push(stream),
                Poll::Ready(Some(Err(e))) => {
                    if e.is_go_away() || e.is_io() || e.reason() == Some(Reason::NO_ERROR) {
                        debug!(peer = %self.peer, error = %e, "HTTP/2 connection ended");
                    } else {
                        warn!(peer = %self.peer, error = %e, reason = ?e.reason(), "HTTP/2 connection closed on a protocol error");
                        ctx.counters.c.client_errors += 1;
                    }
                    break false;
                }
                Poll::Ready(None) => break false,
                Poll::Pending => break true,
            }
        };
        for (req, respond) in accepted {
            self.accept_stream(req, respond);
        }
        if !open {
            self.state = State::Closed;
        }
        open
    }

    fn accept_stream(
        &mut self,
        req: Request<h2::RecvStream>,
        respond: h2::server::SendResponse<Bytes>,
    ) {
        let (parts, recv) = req.into_parts();
        let req = Request::from_parts(parts, ());
        let mut pipe = PipeState::new(
            Wake::Session(self.key),
            self.over_tls,
            self.client_subject.clone(),
        );
        let body = match translate::write_request_head(
            &req,
            recv.is_end_stream(),
            &mut pipe.to_session,
        ) {
            Ok(body) => body,
            Err(translate::Refused(status, why)) => {
                debug!(peer = %self.peer, status = status.as_u16(), why, "HTTP/2 request refused");
                StreamBridge::refuse(respond, status);
                return;
            }
        };
        let shared = Rc::new(RefCell::new(pipe));
        let head_request = req.method() == Method::HEAD;
        self.streams.insert(StreamBridge::new(
            Rc::clone(&shared),
            recv,
            body,
            respond,
            head_request,
        ));
        self.new_streams.push(shared);
    }

    fn update_timer(&mut self, ctx: &mut Ctx<'_>) {
        let lctx = self.generation.listeners.get(self.listener).map(|l| l.ctx);
        let want = match (&self.state, self.shutting_down) {
            (State::Handshaking(_), _) => lctx.map(|l| self.since + l.request_timeout),
            (State::Open(_), Some(at)) if self.streams.is_empty() => Some(at + SHUTDOWN_GRACE),
            (State::Open(_), None) => self
                .idle_since
                .zip(lctx)
                .map(|(at, l)| at + l.keepalive_timeout),
            _ => None,
        };
        ctx.timers
            .set(&mut self.timer, want, TimerKey::Session(self.key));
    }

    /// The connection ends (its slab entry is removed): streams still open are cut with
    /// RST_STREAM(CANCEL) and their sessions see a broken pipe; a GOAWAY goes out if the
    /// socket takes it.
    pub fn close(mut self, ctx: &mut Ctx<'_>) {
        if let Some(id) = self.timer.take() {
            ctx.timers.cancel(id);
        }
        let open = self.streams.iter().filter(|(_, s)| !s.finished()).count();
        if open > 0 {
            warn!(peer = %self.peer, streams = open, "HTTP/2 streams cut (RST_STREAM CANCEL)");
        }
        for (_, s) in self.streams.iter_mut() {
            s.cut(Reason::CANCEL);
        }
        if let State::Open(conn) = &mut self.state {
            conn.abrupt_shutdown(Reason::NO_ERROR);
            // One last write of what is queued (the resets, the GOAWAY); the socket closes
            // when the connection is dropped.
            let _ = self.driver.with_context(|cx| conn.poll_closed(cx));
        }
    }
}
