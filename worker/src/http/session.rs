//! The client side of one HTTP/1.x connection: read a request head, route it, answer locally
//! or proxy it to an upstream connection, stream both bodies through bounded buffers, then
//! take the next (possibly already buffered, pipelined) request.
//!
//! Backpressure: every buffer is capped at [`BUF_CAP`]; a side is not read while the buffer it
//! feeds is full, so a slow reader slows the writer down instead of growing memory. A client
//! that takes no response byte for a whole `request_timeout` is cut off (both connections
//! closed), and the upstream's read timeout only runs while the proxy has room to read into.
//!
//! This file holds the session's state (phases, the exchange) and its event entry points;
//! each job has its own file under `session/`: `request` (head read, routed, dispatched),
//! `local` and `file_body` (answers written here), `buffering` (`buffer-requests` and
//! `buffer-responses`), `connect` (an upstream connection, or the queue), `exchange` (the
//! proxy phase's I/O), `failure` and `retries` (when an exchange cannot go on), `deadlines`
//! (the timer), `access` (the access-log line).

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::access_log;
use crate::ctx::{Ctx, Outcome};
use crate::failover::{self, NoConn};
use crate::filters::{RequestFacts, RequestState, Verdict};
use crate::generation::{Generation, ListenerCtx};
use crate::http::builtin;
use crate::http::codec::{
    self, BodyError, BodyFraming, BodyTracker, ForwardContext, HttpVersion, Parsed, RequestHead,
    ResponseHead,
};
use crate::http::error_pages::ErrorStyle;
use crate::http::fallback::FallbackState;
use crate::http::files::{self, FileBody};
use crate::http::header_policy;
use crate::http::retry::{self, RetryRule};
use crate::http::sticky;
use crate::http::Routed;
use crate::http::{shadow, websocket};
use crate::http2::{H2Conn, Origin};
use crate::rate_limit::Decision;
use crate::routing::Action;
use crate::sock::pipe::PipeEnd;
use crate::sock::splice::SplicePipe;
use crate::sock::{Buf, ClientSock, Ready, Sock, UpSock, BUF_CAP};
use crate::tcp::{TcpSession, UpMeta};
use crate::timers::{TimerId, TimerKey};
use crate::tls::TlsSock;
use crate::tokens::{self, Side};
use crate::trace_id;
use crate::upstream::{PickRequest, UpConn};
use buffering::{Buffering, Prebuffered, ReadAhead, RESPONSE_BUFFER_CAP};

mod access;
mod body_splice;
mod buffering;
mod closing;
mod connect;
mod deadlines;
mod exchange;
mod exchange_end;
mod failure;
mod file_body;
mod local;
mod request;
mod retries;
mod spare;

/// How long a closing connection keeps reading (and discarding) after its write shutdown, so
/// a request racing with the close gets an EOF rather than an RST.
pub const LINGER: Duration = Duration::from_secs(1);
/// Largest upstream response head accepted.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Body bytes kept to replay a request (on a fresh connection when a pooled one was dead, or
/// on another target: see `retry`). A larger body is not replayed.
const REPLAY_CAP: usize = 64 * 1024;

enum Phase {
    /// Waiting for (the rest of) a request head.
    ReadingHead,
    /// Writing a response the proxy generated itself; then next request or close.
    /// `since` bounds how long a client that does not read may hold the connection.
    Local {
        close: bool,
        since: Instant,
    },
    Proxy(Box<Exchange>),
    /// Reading a `buffer-requests` route's body whole before proxying it.
    Buffering(Box<Buffering>),
    /// A route filter holds the request back (`rate-limit` with `on-limit "delay"`, or
    /// waiting for Redis' answer) until then or the answer; the filter chain then resumes.
    Held(Box<Held>),
    /// Every target the request may go to is at its connection cap (or still being
    /// resolved): waiting for the pool to wake this session, up to the connect timeout.
    Queued(Box<Queued>),
    /// Closing. With `linger`: write side shut down, input discarded until EOF or the linger
    /// deadline (the client may have sent more, and closing with unread input would reset
    /// the connection and could destroy the response in flight). Without: the connection
    /// closes as soon as the response is out.
    Closing {
        since: Instant,
        linger: bool,
    },
}

/// A request a filter holds back (see [`Phase::Held`]).
struct Held {
    req: RequestHead,
    route: Option<usize>,
    rate: Option<Decision>,
    until: Instant,
}

/// A request waiting for a connection (see [`Phase::Queued`]).
struct Queued {
    req: RequestHead,
    pool: usize,
    since: Instant,
    /// How the proxy's own errors look on the route.
    errors: ErrorStyle,
    /// The route's `retry-policy`.
    retry: Option<Arc<RetryRule>>,
    /// The matched route (its `policies` apply to the exchange).
    route: Option<usize>,
    /// The route's rate-limit check, reported on the proxied response.
    rate: Option<Decision>,
    fallback: Option<FallbackState>,
    /// The body, already read whole (`buffer-requests`).
    prebuffered: Option<Box<Prebuffered>>,
}

struct Exchange {
    req: RequestHead,
    /// The pool the request goes to (kept for retries, when no connection is attached).
    pool: usize,
    /// The route's `retry-policy`.
    retry: Option<Arc<RetryRule>>,
    /// Attempts made so far (the one in flight included).
    attempts: u32,
    /// Targets that answered with a retryable status: a retry prefers the others.
    tried: Vec<usize>,
    /// Waiting to retry (no connection attached) until then: the backoff.
    retry_at: Option<Instant>,
    /// The matched route (its `policies` apply to the exchange).
    route: Option<usize>,
    /// The route's rate-limit check, reported on the proxied response.
    rate: Option<Decision>,
    /// How the proxy's own errors look on the route.
    errors: ErrorStyle,
    /// When the exchange started (the request head was routed): the request timeout and the
    /// latency peak EWMA learns from run from here.
    started: Instant,
    /// When the current attempt's connection was attached: the response latency is measured
    /// from here (queueing and failed attempts left out).
    sent_at: Instant,
    /// The pool's sticky cookie as the request carried it.
    cookie: Option<String>,
    /// Since when request bytes have been waiting for an upstream that takes none of them.
    uout_stalled_since: Option<Instant>,
    /// The serialized upstream head, kept to replay the request after a dead pooled connection.
    head_bytes: Vec<u8>,
    up: Option<(UpSock, UpMeta)>,
    connecting: Option<Instant>,
    uout: Buf,
    uin: Buf,
    req_body: BodyTracker,
    req_done: bool,
    replay: Option<Vec<u8>>,
    retried: bool,
    /// Targets whose connect failed for this exchange: failover skips them.
    failed: Vec<usize>,
    resp: Option<ResponseHead>,
    resp_body: Option<BodyTracker>,
    /// The response body is chunked and the client speaks HTTP/1.0: send it decoded.
    dechunk: bool,
    /// Scratch space for decoded response body bytes.
    decoded: Vec<u8>,
    resp_done: bool,
    /// Some response byte (interim or final head) was queued for the client: an upstream
    /// failure can no longer become an error response.
    resp_started: bool,
    got_upstream_bytes: bool,
    last_up_activity: Instant,
    last_client_activity: Instant,
    /// Since when response bytes have been waiting for a client that takes none of them.
    cout_stalled_since: Option<Instant>,
    /// Decided when the final response head is written.
    close_client: bool,
    /// The route's fallback upstreams (see `http::fallback`).
    fallback: Option<FallbackState>,
    /// `buffer-responses`: read the response ahead of the client (see `buffering`).
    read_ahead: Option<ReadAhead>,
    /// Scratch space the response head is written to before it joins `cout`.
    head_scratch: Vec<u8>,
    /// A large body's rest moving by splice (see `body_splice`): it replaces `uin` and `cout`.
    body_pipe: Option<SplicePipe>,
}

/// Why an exchange cannot go on.
enum Fail {
    /// Upstream problem: an error status if nothing was sent to the client yet.
    Upstream(u16, &'static str),
    /// Client problem: error status if nothing was sent yet (e.g. a bad chunked body).
    Client(u16, &'static str),
    /// The client connection is unusable (reset, EOF in the middle of a body).
    ClientGone,
    /// The client took no response byte for a whole request timeout.
    ClientStalled,
    /// A pooled connection was dead before any response byte: try once more on a new one.
    RetryFresh,
    /// A fresh connection failed before any response byte (reset, closed): the target is to
    /// blame, and an idempotent request goes to another target (see `retry`).
    RetryElsewhere(&'static str),
    /// Like `RetryElsewhere`, but the request may not go again (not idempotent, its body no
    /// longer replayable, or its attempts used up): 502, and the target is blamed.
    NotRetried(&'static str),
    /// The response head had a status the route's retry policy retries, and the request may
    /// go again: the response is discarded (see `retry`).
    RetryStatus(u16),
    /// The attempt did not produce a response head within the policy's `timeout-ms`.
    AttemptTimedOut,
    /// The upstream connect failed or timed out; no request byte was sent, so another target
    /// may be tried whatever the method.
    ConnectFailed(std::io::Error),
    ConnectTimedOut,
    /// Every target of the pool failed to connect (each failure already counted): 502.
    Exhausted,
    /// The upstream answered with a status the route's `error-pages` replace: its response
    /// is dropped with its connection (the body is never read) and the page goes out instead.
    ErrorPage(u16),
    /// `http-version "auto"`: the new TLS connection chose h2 by ALPN; it becomes the
    /// target's HTTP/2 connection and the exchange goes on a stream of it.
    SwitchToH2,
}

impl Exchange {
    /// Queue the whole request again (head, and the body kept for replay) for a new upstream
    /// connection.
    fn rewind_request(&mut self) {
        self.uout.clear();
        self.uout.extend(&self.head_bytes);
        if let Some(r) = &self.replay {
            self.uout.extend(r);
        }
    }

    /// Use `c` as this exchange's upstream connection. The pending request bytes stay in
    /// `uout`: they are written once it is connected.
    fn attach(&mut self, c: UpConn, now: Instant) {
        let (sock, meta) = UpMeta::split(c);
        self.connecting = (!meta.reused).then_some(now);
        self.up = Some((sock, meta));
        self.uin.clear();
        self.got_upstream_bytes = false;
        self.last_up_activity = now;
        self.sent_at = now;
        self.uout_stalled_since = None;
    }

    /// The request may be sent again: idempotent, and its body so far is all held for replay.
    fn replayable(&self) -> bool {
        retry::is_idempotent(&self.req.method) && self.replay.is_some()
    }
}

pub struct HttpSession {
    key: usize,
    peer: SocketAddr,
    /// The configuration this connection runs on; replaced by a newer one only between
    /// requests, so an exchange never sees its routing, limits or timeouts change.
    generation: Rc<Generation>,
    /// Index of this connection's listener in `generation.listeners`.
    listener: usize,
    /// `generation.listeners[listener].ctx`, copied.
    lctx: ListenerCtx,
    /// The current request's trace id (see `crate::trace_id`).
    trace_id: String,
    /// Requests started on this connection (for `keepalive-max-requests`).
    requests_served: u32,
    client: ClientSock,
    cin: Buf,
    cout: Buf,
    phase: Phase,
    timer: Option<TimerId>,
    /// Start of the current request head (accept time for the first request).
    head_started: Instant,
    /// When the connection last became idle between requests.
    idle_since: Instant,
    first_request: bool,
    /// The current request's access-log entry (only when the listener logs; boxed so that
    /// sessions without an access log stay small).
    access: Option<Box<access_log::Entry>>,
    /// The rest of a static file being sent after a local head (`Phase::Local`).
    file_body: Option<FileBody>,
    /// The verified client certificate's subject (mutual TLS); looked up at the first
    /// request, once the handshake is done.
    client_subject: Option<Option<Rc<str>>>,
    /// The current request's route filters and what they learnt (routes with filters only).
    filtered: Option<Box<RequestState>>,
}

/// The upstream pool's name for logs (`?` for an unknown key, a routing bug).
fn pool_name<'c>(ctx: &'c Ctx<'_>, pool: usize) -> &'c str {
    ctx.upstreams
        .pool(pool)
        .map(|p| p.name.as_str())
        .unwrap_or("?")
}

/// What the balancer may choose by: the client's address and the pool's sticky cookie.
fn pick_request(peer: SocketAddr, cookie: &Option<String>) -> PickRequest<'_> {
    PickRequest {
        client_ip: Some(peer.ip()),
        cookie: cookie.as_deref(),
    }
}

impl HttpSession {
    /// `listener` indexes `generation.listeners`.
    pub fn new(
        key: usize,
        peer: SocketAddr,
        stream: mio::net::TcpStream,
        generation: Rc<Generation>,
        listener: usize,
        now: Instant,
    ) -> Option<Self> {
        let entry = generation.listeners.get(listener)?;
        let lctx = entry.ctx;
        let sock = Sock::new(stream, true);
        let client = match &entry.tls {
            None => ClientSock::Plain(sock),
            Some(config) => match TlsSock::new(sock, Arc::clone(config)) {
                Ok(t) => ClientSock::Tls(Box::new(t)),
                Err(e) => {
                    warn!(peer = %peer, error = %e, "cannot start a TLS session");
                    return None;
                }
            },
        };
        Some(Self::with_client(
            key, peer, client, generation, listener, lctx, now,
        ))
    }

    /// A session serving one HTTP/2 stream: its client is one end of a pipe whose other end
    /// the HTTP/2 connection `pipe` came from holds (see `sock::pipe`).
    pub fn over_pipe(
        key: usize,
        peer: SocketAddr,
        pipe: PipeEnd,
        generation: Rc<Generation>,
        listener: usize,
        now: Instant,
    ) -> Option<Self> {
        let lctx = generation.listeners.get(listener)?.ctx;
        let client = ClientSock::Pipe(pipe);
        Some(Self::with_client(
            key, peer, client, generation, listener, lctx, now,
        ))
    }

    /// A new connection's session, before its first request.
    fn with_client(
        key: usize,
        peer: SocketAddr,
        client: ClientSock,
        generation: Rc<Generation>,
        listener: usize,
        lctx: ListenerCtx,
        now: Instant,
    ) -> Self {
        HttpSession {
            key,
            peer,
            generation,
            listener,
            lctx,
            trace_id: String::new(),
            requests_served: 0,
            client,
            cin: Buf::new(),
            cout: Buf::new(),
            phase: Phase::ReadingHead,
            timer: None,
            head_started: now,
            idle_since: now,
            first_request: true,
            access: None,
            file_body: None,
            client_subject: None,
            filtered: None,
        }
    }

    /// The connection turned out to speak HTTP/2 before its first request: its socket and
    /// what was read of it go to an HTTP/2 session.
    pub fn into_h2(mut self, ctx: &mut Ctx<'_>) -> H2Conn {
        if let Some(id) = self.timer.take() {
            ctx.timers.cancel(id);
        }
        let client_subject = self.client_subject().clone();
        let origin = Origin {
            peer: self.peer,
            generation: self.generation,
            listener: self.listener,
            client_subject,
        };
        H2Conn::new(self.key, self.client, self.cin.take(), origin, ctx.now)
    }

    /// Between requests: move to the newest generation if it still has this connection's
    /// listener (same name and socket). A connection whose listener was removed finishes on
    /// the generation it has.
    fn adopt_current_generation(&mut self, ctx: &Ctx<'_>) {
        if Rc::ptr_eq(&self.generation, ctx.current) {
            return;
        }
        let Some(mine) = self.generation.listeners.get(self.listener) else {
            return;
        };
        if let Some(idx) = ctx.current.successor_of(mine) {
            if let Some(entry) = ctx.current.listeners.get(idx) {
                self.lctx = entry.ctx;
                self.listener = idx;
                self.generation = Rc::clone(ctx.current);
            }
        }
    }

    /// Idle between requests (no byte of a next request yet).
    pub fn is_idle(&self) -> bool {
        matches!(self.phase, Phase::ReadingHead) && self.cin.is_empty() && !self.first_request
    }

    pub fn on_ready(&mut self, side: Side, r: Ready, ctx: &mut Ctx<'_>) -> Outcome {
        match side {
            Side::Client => {
                self.client.on_ready(r);
            }
            Side::Upstream => {
                if let Phase::Proxy(ex) = &mut self.phase {
                    if let Some((up, _)) = ex.up.as_mut() {
                        up.on_ready(r);
                    }
                }
            }
        }
        self.run(ctx)
    }

    /// Drain deadline approaching: close an idle keep-alive connection gracefully (write
    /// shutdown, then linger) so a racing request gets an EOF instead of a reset.
    pub fn close_idle(&mut self, ctx: &mut Ctx<'_>) -> Outcome {
        if self.is_idle() {
            self.start_closing(ctx.now);
        }
        self.run(ctx)
    }

    fn run(&mut self, ctx: &mut Ctx<'_>) -> Outcome {
        let out = self.pump(ctx);
        if out == Outcome::Continue {
            self.update_timer(ctx);
        }
        out
    }

    fn pump(&mut self, ctx: &mut Ctx<'_>) -> Outcome {
        loop {
            let step = match &self.phase {
                Phase::ReadingHead => self.step_head(ctx),
                Phase::Local { .. } => self.step_local(ctx),
                Phase::Closing { .. } => self.step_closing(ctx),
                Phase::Proxy(_) => self.step_proxy(ctx),
                Phase::Queued(_) => self.step_queued(ctx),
                Phase::Held(_) => self.step_held(ctx),
                Phase::Buffering(_) => self.step_buffering(ctx),
            };
            match step {
                Ok(true) => continue,
                Ok(false) => return Outcome::Continue,
                Err(out) => return out,
            }
        }
    }

    /// Read from the client into `cin`. Err: the connection is unusable.
    fn read_client(&mut self, ctx: &mut Ctx<'_>, cap: usize) -> Result<usize, Outcome> {
        match self.client.fill(&mut self.cin, cap) {
            Ok(r) => {
                ctx.counters.c.bytes_in += r.bytes as u64;
                Ok(r.bytes + usize::from(r.eof))
            }
            Err(e) => {
                debug!(peer = %self.peer, error = %e, "client read failed");
                Err(Outcome::Done)
            }
        }
    }

    fn write_client(&mut self, ctx: &mut Ctx<'_>) -> Result<usize, Outcome> {
        match self.client.flush(&mut self.cout) {
            Ok(n) => {
                count_out(&mut self.access, n, ctx);
                Ok(n)
            }
            Err(e) => {
                debug!(peer = %self.peer, error = %e, "client write failed");
                Err(Outcome::Done)
            }
        }
    }

    /// After a 101 has been queued: hand both sockets and all buffered bytes to a tunnel. A
    /// TLS client stays a TLS session: plaintext rustls decrypted but the session did not read
    /// yet travels inside it, and what the session read past the request head (bytes the
    /// client sent before the 101) is in `cin`.
    pub fn into_tunnel(mut self, ctx: &mut Ctx<'_>) -> Option<TcpSession> {
        if let Some(id) = self.timer.take() {
            ctx.timers.cancel(id);
        }
        self.log_access(ctx);
        let phase = std::mem::replace(&mut self.phase, Phase::ReadingHead);
        let Phase::Proxy(mut ex) = phase else {
            return None;
        };
        let (up, meta) = ex.up.take()?;
        let mut c2u = ex.uout.take();
        c2u.extend(self.cin.as_slice());
        let mut u2c = self.cout.take();
        u2c.extend(ex.uin.as_slice());
        Some(TcpSession::tunnel(
            self.key,
            self.peer,
            self.client,
            up,
            meta,
            c2u,
            u2c,
        ))
    }

    /// Release the upstream connection (never pooled: the exchange did not finish); the client
    /// socket closes when the session is dropped.
    pub fn close(mut self, ctx: &mut Ctx<'_>) {
        if let Some(id) = self.timer.take() {
            ctx.timers.cancel(id);
        }
        // A request still open when the session ends was cut short: logged like nginx does,
        // 499 when no status was sent.
        self.log_access(ctx);
        self.client.close();
        // Not deregistered: dropping the session closes the socket, which takes it out of
        // the epoll set (a worker never duplicates a client's fd), one epoll_ctl less.
        if let Phase::Proxy(ex) = &mut self.phase {
            if let Some((up, meta)) = ex.up.take() {
                ctx.discard_upstream(meta.join(up));
            }
        }
    }
}

/// `n` bytes went to the client: counters and the access-log entry. A function of the
/// session's `access` field, not a method, so the exchange's paths can call it while they
/// hold the exchange borrowed out of the session's phase.
fn count_out(access: &mut Option<Box<access_log::Entry>>, n: usize, ctx: &mut Ctx<'_>) {
    ctx.counters.c.bytes_out += n as u64;
    if let Some(a) = access.as_mut() {
        a.bytes += n as u64;
    }
}
