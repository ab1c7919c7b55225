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
//! | open | a response waits for window or socket for the request timeout | refused (slow read) |
//! | open | the guard's verdict (flood), a reset storm | GOAWAY(ENHANCE_YOUR_CALM); counted, logged |
//! | any | h2 finds a protocol error or flood | h2's GOAWAY and error code; counted, logged |
//! | refused | the GOAWAY is out | lingering (below); `LINGER` passed without it leaving (a client that reads nothing): closed |
//! | h2 done | (GOAWAY sent, socket shut for writing) | lingering: the client's last bytes read and dropped until its EOF or `LINGER`, so the GOAWAY is not lost to a reset |
//! | any | drain deadline | every open stream cut with RST_STREAM(CANCEL), logged; GOAWAY; closed |

use std::cell::RefCell;
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
use super::guard::{FrameGuard, Refusal};
use super::io::{H2Io, SharedWire, Wire};
use super::stream::StreamBridge;
use super::{translate, PREFACE};
use crate::ctx::{Ctx, Outcome};
use crate::generation::Generation;
use crate::http::session::LINGER;
use crate::sock::pipe::{PipeState, SharedPipe};
use crate::sock::{Buf, ClientSock, Ready};
use crate::timers::{TimerId, TimerKey};
use crate::wakeups::Wake;

/// Per-stream receive window: what a client may send ahead on one stream. The window is
/// given back only as the bytes move into the stream's bounded pipe, so this bounds memory.
const STREAM_WINDOW: u32 = 256 * 1024;
/// Connection receive window: bounds what all streams together may have buffered here.
const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// How long a connection that got its GOAWAY may wait, once it has no stream left, for the
/// PING that completes the two-step shutdown (and h2 to close it).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Response bytes h2 may hold per stream before the socket took them (h2's default is
/// ~400 KiB): with the pipe's and the bridge's own, what a stream whose client does not
/// read can pin in memory. Bytes leave it as fast as the socket takes them, so a fast client
/// never waits on it.
const SEND_BUFFER: usize = 64 * 1024;
/// Streams the client may reset before this connection took them from h2 (h2's, and hyper's,
/// default, set here for the record). Streams are taken in the run that read their HEADERS,
/// so only a HEADERS and its RST_STREAM arriving together count: more than this many at
/// once is the rapid-reset attack (CVE-2023-44487), answered by h2 with
/// GOAWAY(ENHANCE_YOUR_CALM).
const MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Streams h2 may reset or refuse on its own per connection (malformed, over
/// `max-concurrent-streams`) before GOAWAY(ENHANCE_YOUR_CALM). A client that keeps to the
/// protocol causes at most the few refusals of streams sent before our SETTINGS arrived;
/// one that makes the server reset streams on purpose ("MadeYouReset") costs work per
/// stream. h2 allows 1024; this is tighter and still far above any honest client.
const MAX_LOCAL_ERROR_RESETS: usize = 256;
/// Envoy's premature-reset rule (`overload.premature_reset_total_stream_count` and
/// `premature_reset_min_stream_lifetime_seconds`, defaults 500 and 1 s): once this many
/// streams closed, a connection on which at least half were reset by the client within
/// `PREMATURE` of opening is refused. This catches rapid reset paced so that each stream
/// is taken before its RST_STREAM arrives, which h2 does not count.
const PREMATURE_RESET_MIN_STREAMS: u64 = 500;
const PREMATURE: Duration = Duration::from_secs(1);

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
    /// h2 is done; the socket drains what the client still sends (since when).
    Lingering(Instant),
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
    /// The socket, shared with h2's [`H2Io`]: readiness goes in, the guard's verdict out.
    wire: SharedWire,
    streams: Slab<StreamBridge>,
    /// Pipes of accepted streams whose session the event loop has still to create.
    new_streams: Vec<SharedPipe>,
    driver: Driver,
    timer: Option<TimerId>,
    since: Instant,
    /// Since when no stream has been open (`None` while some is).
    idle_since: Option<Instant>,
    shutting_down: Option<Instant>,
    /// Closed for abuse: why and when (the GOAWAY gets `LINGER` to leave).
    refused: Option<(Refusal, Instant)>,
    /// Since when a response has waited for flow-control window or socket room with no
    /// DATA going out.
    stalled_since: Option<Instant>,
    /// Streams closed, and those the client reset within `PREMATURE` of opening them.
    streams_closed: u64,
    premature_resets: u64,
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
        let guard = FrameGuard::new(PREFACE.len(), now);
        let wire = Wire::shared(sock, read_ahead, Some(guard), now);
        let io = H2Io(Rc::clone(&wire));
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
            .max_header_list_size(max_header_list)
            .max_send_buffer_size(SEND_BUFFER)
            .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
            .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS));
        let handshake = Box::pin(builder.handshake::<H2Io, Bytes>(io));
        H2Conn {
            key,
            peer,
            generation,
            listener,
            over_tls,
            client_subject,
            state: State::Handshaking(handshake),
            wire,
            streams: Slab::new(),
            new_streams: Vec::new(),
            driver: Driver::default(),
            timer: None,
            since: now,
            idle_since: Some(now),
            shutting_down: None,
            refused: None,
            stalled_since: None,
            streams_closed: 0,
            premature_resets: 0,
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
        self.wire.borrow_mut().on_ready(r);
        self.run(ctx)
    }

    pub fn on_timer(&mut self, id: TimerId, ctx: &mut Ctx<'_>) -> Outcome {
        if self.timer != Some(id) {
            return Outcome::Continue;
        }
        self.timer = None;
        let now = ctx.now;
        let request_timeout = self.lctx().map(|l| l.request_timeout);
        match &self.state {
            State::Handshaking(_) | State::Closed => return Outcome::Done,
            State::Lingering(since) if now >= *since + LINGER => return Outcome::Done,
            State::Lingering(_) => return self.run(ctx),
            State::Open(_) => {}
        }
        if self.refused.is_some_and(|(_, at)| now >= at + LINGER) {
            // The GOAWAY could not leave (a client that reads nothing): close anyway.
            return Outcome::Done;
        }
        if self.shutdown_deadline().is_some_and(|at| now >= at) {
            return Outcome::Done;
        }
        if self
            .stalled_since
            .zip(request_timeout)
            .is_some_and(|(at, t)| now >= at + t)
        {
            self.refuse(Refusal::SlowRead, ctx);
        } else if self.streams.is_empty() && self.shutting_down.is_none() {
            debug!(peer = %self.peer, "idle HTTP/2 connection: GOAWAY");
            self.shut_down(now);
        }
        self.run(ctx)
    }

    /// After the GOAWAY, once no stream is left: when to stop waiting for h2 to finish the
    /// two-step shutdown (`SHUTDOWN_GRACE` after the later of the GOAWAY and the last
    /// stream's end).
    fn shutdown_deadline(&self) -> Option<Instant> {
        let at = self.shutting_down?;
        let idle = self.idle_since.filter(|_| self.streams.is_empty())?;
        Some(at.max(idle) + SHUTDOWN_GRACE)
    }

    fn lctx(&self) -> Option<crate::generation::ListenerCtx> {
        self.generation.listeners.get(self.listener).map(|l| l.ctx)
    }

    /// Close for abuse: GOAWAY(ENHANCE_YOUR_CALM), counted and logged. Streams in flight end
    /// with the connection.
    fn refuse(&mut self, kind: Refusal, ctx: &mut Ctx<'_>) {
        if self.refused.is_some() {
            return;
        }
        self.refused = Some((kind, ctx.now));
        kind.count(&mut ctx.counters.http2);
        ctx.counters.c.client_errors += 1;
        warn!(peer = %self.peer, kind = kind.name(), "HTTP/2 connection refused: GOAWAY(ENHANCE_YOUR_CALM)");
        if let State::Open(conn) = &mut self.state {
            conn.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
        }
        // Poll again: the GOAWAY goes out in this run.
        self.driver.request_run();
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
        if let State::Lingering(_) = self.state {
            return self.linger(ctx);
        }
        self.wire.borrow_mut().now = ctx.now;
        let waker = self.driver.waker();
        let mut cx = Context::from_waker(&waker);
        for _ in 0..MAX_PASSES {
            self.driver.start_pass();
            if !self.poll_connection(&mut cx, ctx) {
                return self.start_lingering(ctx);
            }
            let mut progressed = false;
            let mut waiting = false;
            for (_, s) in self.streams.iter_mut() {
                s.pump(&mut cx);
                progressed |= s.take_progress();
                waiting |= s.waiting_for_window();
            }
            self.stalled_since = match (progressed, waiting) {
                (false, true) => self.stalled_since.or(Some(ctx.now)),
                _ => None,
            };
            self.count_closed_streams(ctx.now);
            self.streams.retain(|_, s| !s.finished());
            let verdict = self.wire.borrow().verdict();
            if let Some(kind) = verdict {
                self.refuse(kind, ctx);
            } else if self.streams_closed >= PREMATURE_RESET_MIN_STREAMS
                && self.premature_resets * 2 >= self.streams_closed
            {
                self.refuse(Refusal::RapidReset, ctx);
            }
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

    /// Streams about to leave the slab: how many closed, how many the client reset at once.
    fn count_closed_streams(&mut self, now: Instant) {
        for (_, s) in self.streams.iter().filter(|(_, s)| s.finished()) {
            self.streams_closed += 1;
            if s.reset_by_client() && now.duration_since(s.opened()) < PREMATURE {
                self.premature_resets += 1;
            }
        }
    }

    /// h2 is done with the connection (its GOAWAY out, the socket shut for writing): streams
    /// still bridged end, and the socket reads and drops the client's last bytes, so that
    /// closing it with unread input does not send a reset that could destroy the GOAWAY.
    fn start_lingering(&mut self, ctx: &mut Ctx<'_>) -> Outcome {
        for (_, s) in self.streams.iter_mut() {
            s.abandon();
        }
        self.streams.clear();
        self.state = State::Lingering(ctx.now);
        self.linger(ctx)
    }

    fn linger(&mut self, ctx: &mut Ctx<'_>) -> Outcome {
        if self.wire.borrow_mut().linger() {
            return Outcome::Done;
        }
        self.update_timer(ctx);
        Outcome::Continue
    }

    /// Drive the handshake or the connection, taking new streams. `false`: it is over.
    fn poll_connection(&mut self, cx: &mut Context<'_>, ctx: &mut Ctx<'_>) -> bool {
        if let State::Handshaking(hs) = &mut self.state {
            match hs.as_mut().poll(cx) {
                Poll::Ready(Ok(mut conn)) => {
                    if self.shutting_down.is_some() {
                        // The drain began while the client was still saying hello.
                        conn.graceful_shutdown();
                    }
                    self.state = State::Open(Box::new(conn));
                }
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
                    let kind = {
                        let wire = self.wire.borrow();
                        classify(&e, wire.guard.as_ref().and_then(|g| g.sent_goaway()))
                    };
                    match kind {
                        Some(kind) if self.refused.is_none() => {
                            // h2 sent its GOAWAY already: count and log it like ours.
                            self.refused = Some((kind, ctx.now));
                            kind.count(&mut ctx.counters.http2);
                            ctx.counters.c.client_errors += 1;
                            warn!(peer = %self.peer, kind = kind.name(), error = %e, "HTTP/2 connection refused");
                        }
                        _ => debug!(peer = %self.peer, error = %e, "HTTP/2 connection ended"),
                    }
                    break false;
                }
                Poll::Ready(None) => break false,
                Poll::Pending => break true,
            }
        };
        for (req, respond) in accepted {
            self.accept_stream(req, respond, ctx.now);
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
        now: Instant,
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
            now,
        ));
        self.new_streams.push(shared);
    }

    fn update_timer(&mut self, ctx: &mut Ctx<'_>) {
        let lctx = self.lctx();
        let want = match (&self.state, self.shutting_down) {
            (State::Handshaking(_), _) => lctx.map(|l| self.since + l.request_timeout),
            (State::Lingering(since), _) => Some(*since + LINGER),
            (State::Open(_), shutting_down) => [
                self.shutdown_deadline(),
                self.idle_since
                    .filter(|_| shutting_down.is_none())
                    .zip(lctx)
                    .map(|(at, l)| at + l.keepalive_timeout),
                self.stalled_since
                    .zip(lctx)
                    .map(|(at, l)| at + l.request_timeout),
                self.refused.map(|(_, at)| at + LINGER),
            ]
            .into_iter()
            .flatten()
            .min(),
            (State::Closed, _) => None,
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
            // One write of the resets first: the abrupt shutdown fails every stream, which
            // drops what they still had queued, the resets included.
            let _ = self.driver.with_context(|cx| conn.poll_closed(cx));
            conn.abrupt_shutdown(Reason::NO_ERROR);
            // Then the GOAWAY (when the two-step one is not out already); the socket closes
            // when the connection is dropped.
            let _ = self.driver.with_context(|cx| conn.poll_closed(cx));
        }
    }
}

/// The refusal an h2 connection error stands for: `None` for the client's own GOAWAY, I/O
/// errors and clean ends. h2 names its flood verdicts only in the debug data of the GOAWAY
/// it wrote (`sent`: its code and debug data, as the guard saw it leave).
fn classify(e: &h2::Error, sent: Option<(u32, &[u8])>) -> Option<Refusal> {
    if e.is_io() || e.is_remote() {
        return None;
    }
    let reason = e.reason().filter(|r| *r != Reason::NO_ERROR)?;
    if reason != Reason::ENHANCE_YOUR_CALM {
        return Some(Refusal::ProtocolError);
    }
    let text = sent
        .filter(|(code, _)| *code == u32::from(reason))
        .map(|(_, debug)| String::from_utf8_lossy(debug).into_owned())
        .unwrap_or_default();
    let named = [
        ("too_many_internal_resets", Refusal::StreamErrors),
        ("too_many_resets", Refusal::RapidReset),
        ("too_many_continuations", Refusal::ContinuationFlood),
        ("header_list_way_too_large", Refusal::HeaderListTooLarge),
        ("too_many_data_frames", Refusal::EmptyFrames),
    ];
    Some(
        named
            .iter()
            .find(|(name, _)| text.contains(name))
            .map_or(Refusal::ProtocolError, |(_, kind)| *kind),
    )
}
