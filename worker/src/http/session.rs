//! The client side of one HTTP/1.x connection: read a request head, route it, answer locally
//! or proxy it to an upstream connection, stream both bodies through bounded buffers, then
//! take the next (possibly already buffered, pipelined) request.
//!
//! Backpressure: every buffer is capped at [`BUF_CAP`]; a side is not read while the buffer it
//! feeds is full, so a slow reader slows the writer down instead of growing memory. A client
//! that takes no response byte for a whole `request_timeout` is cut off (both connections
//! closed), and the upstream's read timeout only runs while the proxy has room to read into.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::access_log;
use crate::ctx::{Ctx, Outcome};
use crate::failover::{self, NoConn};
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
use crate::rate_limit::Decision;
use crate::routing::Action;
use crate::sock::{Buf, ClientSock, Ready, Sock, UpSock, BUF_CAP};
use crate::tcp::{TcpSession, UpMeta};
use crate::timers::{TimerId, TimerKey};
use crate::tls::TlsSock;
use crate::tokens::{self, Side};
use crate::trace_id;
use crate::upstream::{PickRequest, UpConn};
use buffering::{Buffering, Prebuffered, ReadAhead, RESPONSE_BUFFER_CAP};

mod file_body;
mod retries;

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
    /// Every target the request may go to is at its connection cap (or still being
    /// resolved): waiting for the pool to wake this session, up to the connect timeout.
    Queued(Box<Queued>),
    /// Write side shut down; discarding input until EOF or the linger deadline.
    Closing {
        since: Instant,
    },
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

mod buffering;

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
}

/// A failure that may not be retried: `RetryElsewhere` stays one (so `fail` still blames the
/// target) but is answered with a 502 instead of being sent again.
fn not_retried(f: Fail) -> Fail {
    match f {
        Fail::RetryElsewhere(r) => Fail::NotRetried(r),
        other => other,
    }
}

/// What the balancer may choose by: the client's address and the pool's sticky cookie.
/// The upstream pool's name for logs (`?` for an unknown key, a routing bug).
fn pool_name<'c>(ctx: &'c Ctx<'_>, pool: usize) -> &'c str {
    ctx.upstreams
        .pool(pool)
        .map(|p| p.name.as_str())
        .unwrap_or("?")
}

/// The access log's view of the upstream that answered.
fn note_upstream(
    a: &mut access_log::Entry,
    ctx: &Ctx<'_>,
    ids: Option<(usize, usize)>,
    addr: Option<SocketAddr>,
    reused: bool,
) {
    a.upstream = addr;
    a.connection_reused = reused;
    if let Some((pool, _)) = ids {
        pool_name(ctx, pool).clone_into(&mut a.upstream_name);
    }
}

/// An established TLS upstream connection failed at the TLS layer (an alert such as a
/// refused client certificate, a bad record): the exchange's failure names no more than
/// "reset", so the TLS reason is logged here with the target.
fn log_tls_failure(
    up: &UpSock,
    target: Option<SocketAddr>,
    peer: SocketAddr,
    error: &std::io::Error,
) {
    if !up.is_tls() || error.kind() != std::io::ErrorKind::InvalidData {
        return;
    }
    match target {
        Some(t) => warn!(%peer, target = %t, error = %error, "upstream TLS connection failed"),
        None => warn!(%peer, error = %error, "upstream TLS connection failed"),
    }
}

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
        Some(HttpSession {
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
        })
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

    pub fn on_timer(&mut self, id: TimerId, ctx: &mut Ctx<'_>) -> Outcome {
        if self.timer != Some(id) {
            return Outcome::Continue;
        }
        self.timer = None;
        let now = ctx.now;
        // The timer is only moved when a deadline comes closer (see `update_timer`): it may
        // fire before the deadline that counts now, which then just needs arming.
        if self.desired_deadline(ctx).is_none_or(|at| now < at) {
            self.update_timer(ctx);
            return Outcome::Continue;
        }
        match &mut self.phase {
            Phase::ReadingHead => {
                if self.cin.is_empty() {
                    debug!(peer = %self.peer, "idle client connection timed out");
                    self.start_closing(now);
                } else {
                    ctx.counters.c.client_errors += 1;
                    debug!(peer = %self.peer, "request head not received in time");
                    self.respond_local(ctx, 408, codec::error_response(408, true, false), true);
                }
            }
            Phase::Local { .. } => {
                debug!(peer = %self.peer, "client did not read its response in time");
                return Outcome::Done;
            }
            Phase::Closing { .. } => return self.finish_close(ctx),
            Phase::Queued(_) => {
                let phase = std::mem::replace(&mut self.phase, Phase::ReadingHead);
                if let Phase::Queued(q) = phase {
                    self.queue_timed_out(*q, ctx);
                }
            }
            Phase::Buffering(_) => self.buffering_timed_out(ctx),
            Phase::Proxy(ex) if ex.retry_at.is_some() => self.resume_retry(ctx),
            Phase::Proxy(_) => {
                let fail = match &self.phase {
                    Phase::Proxy(ex) => self
                        .exchange_deadlines(ex, ctx)
                        .into_iter()
                        .flatten()
                        .find(|(t, _)| now >= *t)
                        .map(|(_, f)| f),
                    _ => None,
                };
                if let Some(f) = fail {
                    self.handle_fail(f, ctx);
                }
            }
        }
        self.run(ctx)
    }

    fn desired_deadline(&self, ctx: &Ctx<'_>) -> Option<Instant> {
        match &self.phase {
            Phase::ReadingHead => {
                if self.cin.is_empty() && !self.first_request {
                    Some(self.idle_since + self.lctx.keepalive_timeout)
                } else {
                    Some(self.head_started + self.lctx.request_timeout)
                }
            }
            Phase::Local { since, .. } => Some(*since + self.lctx.request_timeout),
            Phase::Closing { since } => Some(*since + LINGER),
            Phase::Buffering(b) => Some(b.since + self.lctx.request_timeout),
            Phase::Queued(q) => Some(
                q.since
                    + ctx
                        .upstreams
                        .pool(q.pool)
                        .map_or(Duration::from_secs(5), |p| p.connect_timeout()),
            ),
            Phase::Proxy(ex) => self
                .exchange_deadlines(ex, ctx)
                .into_iter()
                .flatten()
                .map(|(t, _)| t)
                .min(),
        }
    }

    /// The deadlines a proxied exchange is under, each with the failure it means, in the order
    /// they are blamed when several have passed. Arming the timer and deciding what fired both
    /// use this, so they cannot disagree.
    fn exchange_deadlines(&self, ex: &Exchange, ctx: &Ctx<'_>) -> [Option<(Instant, Fail)>; 7] {
        if let Some(at) = ex.retry_at {
            // Backing off: no connection, nothing else runs.
            return [
                None,
                None,
                None,
                None,
                None,
                None,
                Some((at, Fail::AttemptTimedOut)),
            ];
        }
        let pool = ex.up.as_ref().and_then(|(_, m)| ctx.upstreams.pool(m.pool));
        let (ct, rt) = pool
            .map(|p| (p.connect_timeout(), p.read_timeout()))
            .unwrap_or((Duration::from_secs(5), Duration::from_secs(30)));
        // `policies { timeout-secs }` replaces the upstream's read timeout on this route.
        let rt = ex
            .route
            .and_then(|r| self.generation.router.policies(r))
            .and_then(|p| p.timeout_secs)
            .map_or(rt, Duration::from_secs);
        // Both only until the response head: a long download is not a slow upstream.
        let whole = pool.and_then(|p| p.request_timeout()).and_then(|t| {
            ex.resp.is_none().then(|| {
                (
                    ex.started + t,
                    Fail::Upstream(504, "upstream request timed out"),
                )
            })
        });
        let write = pool.and_then(|p| p.write_timeout()).and_then(|t| {
            ex.uout_stalled_since
                .filter(|_| ex.connecting.is_none() && ex.resp.is_none() && !ex.uout.is_empty())
                .map(|s| (s + t, Fail::Upstream(504, "upstream write timed out")))
        });
        let request_timeout = self.lctx.request_timeout;
        let connect = ex.connecting.map(|t| (t + ct, Fail::ConnectTimedOut));
        // While `uin` is full the proxy is not reading the upstream (the client is slow):
        // its silence is not the upstream's fault then.
        let read =
            (ex.connecting.is_none() && !ex.resp_done && ex.uin.len() < BUF_CAP).then(|| {
                (
                    ex.last_up_activity + rt,
                    Fail::Upstream(504, "upstream read timed out"),
                )
            });
        // A client that stops reading would otherwise hold both connections forever.
        let send = ex
            .cout_stalled_since
            .filter(|_| !self.cout.is_empty())
            .map(|t| (t + request_timeout, Fail::ClientStalled));
        // Likewise the request body only times out while the proxy waits for it.
        let body = (!ex.req_done && self.cin.is_empty() && ex.uout.len() < BUF_CAP).then(|| {
            (
                ex.last_client_activity + request_timeout,
                Fail::Client(408, "request body not received in time"),
            )
        });
        // `retry-policy { timeout-ms }`: each attempt, until its response head.
        let attempt = ex
            .retry
            .as_ref()
            .and_then(|r| r.attempt_timeout)
            .filter(|_| ex.resp.is_none())
            .map(|t| (ex.sent_at + t, Fail::AttemptTimedOut));
        [connect, whole, write, read, send, body, attempt]
    }

    /// Deadlines move on nearly every event of a busy connection (activity pushes them
    /// later): the armed timer is only moved earlier, and `on_timer` re-arms when it fires
    /// ahead of the real deadline. Saves two ordered-map updates per request.
    fn update_timer(&mut self, ctx: &mut Ctx<'_>) {
        let want = self.desired_deadline(ctx);
        ctx.timers
            .set_no_later(&mut self.timer, want, TimerKey::Session(self.key));
    }

    fn start_closing(&mut self, now: Instant) {
        self.client.shutdown_write();
        self.phase = Phase::Closing { since: now };
    }

    fn finish_close(&mut self, _ctx: &mut Ctx<'_>) -> Outcome {
        Outcome::Done
    }

    /// Queue a response generated here. `close` ends the connection once it is written.
    fn respond_local(&mut self, ctx: &mut Ctx<'_>, status: u16, bytes: Vec<u8>, close: bool) {
        ctx.counters.response(status);
        if self.logs_access() {
            // A head that did not parse has no entry yet; its bytes are still in `cin`.
            let started = self.head_started;
            let head = self.cin.as_slice();
            let entry = self
                .access
                .get_or_insert_with(|| Box::new(access_log::Entry::from_raw_head(started, head)));
            entry.status = status;
            // The head ends at the blank line; what follows is body (a file body comes later).
            entry.head_bytes = bytes
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(bytes.len(), |p| p + 4) as u64;
        }
        self.cout.extend(&bytes);
        self.file_body = None;
        self.phase = Phase::Local {
            close,
            since: ctx.now,
        };
    }

    fn pump(&mut self, ctx: &mut Ctx<'_>) -> Outcome {
        loop {
            let step = match &self.phase {
                Phase::ReadingHead => self.step_head(ctx),
                Phase::Local { .. } => self.step_local(ctx),
                Phase::Closing { .. } => self.step_closing(ctx),
                Phase::Proxy(_) => self.step_proxy(ctx),
                Phase::Queued(_) => self.step_queued(ctx),
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
                self.count_out(n, ctx);
                Ok(n)
            }
            Err(e) => {
                debug!(peer = %self.peer, error = %e, "client write failed");
                Err(Outcome::Done)
            }
        }
    }

    /// `n` bytes went to the client: counters and access log.
    fn count_out(&mut self, n: usize, ctx: &mut Ctx<'_>) {
        ctx.counters.c.bytes_out += n as u64;
        if let Some(a) = self.access.as_mut() {
            a.bytes += n as u64;
        }
    }

    /// Ok(true): progress made, run again. Ok(false): wait for events. Err: outcome now.
    fn step_head(&mut self, ctx: &mut Ctx<'_>) -> Result<bool, Outcome> {
        // No exchange is in flight while a head is read: the one place a reload may apply.
        self.adopt_current_generation(ctx);
        let head_cap = BUF_CAP.max(self.generation.limits.max_header_size_bytes as usize + 1024);
        let was_empty = self.cin.is_empty();
        let n = self.read_client(ctx, head_cap)?;
        if self.cin.is_empty() {
            if self.client.read_eof() {
                // The client closed between requests: a clean end.
                return Err(Outcome::Done);
            }
            return Ok(false);
        }
        if was_empty && !self.first_request {
            // First byte of a new request: its head timer starts now.
            self.head_started = ctx.now;
        }
        match codec::parse_request(self.cin.as_slice(), &self.generation.head_limits) {
            Ok(Parsed::Complete(head)) => {
                self.first_request = false;
                self.cin.consume(head.head_len);
                self.start_request(head, ctx);
                Ok(true)
            }
            Ok(Parsed::Partial) => {
                if self.client.read_eof() {
                    debug!(peer = %self.peer, "client closed in the middle of a request head");
                    ctx.counters.c.client_errors += 1;
                    return Err(Outcome::Done);
                }
                if self.cin.len() >= head_cap {
                    ctx.counters.c.client_errors += 1;
                    self.respond_local(ctx, 431, codec::error_response(431, true, false), true);
                    return Ok(true);
                }
                Ok(n > 0 && self.client.readable())
            }
            Err(e) => {
                ctx.counters.c.requests_total += 1;
                ctx.counters.c.client_errors += 1;
                debug!(peer = %self.peer, error = %e, "bad request");
                let status = e.status();
                self.first_request = false;
                self.respond_local(
                    ctx,
                    status,
                    codec::error_response(status, true, false),
                    true,
                );
                Ok(true)
            }
        }
    }

    fn start_request(&mut self, mut req: RequestHead, ctx: &mut Ctx<'_>) {
        ctx.counters.c.requests_total += 1;
        self.requests_served = self.requests_served.saturating_add(1);
        let max = self.lctx.keepalive_max_requests;
        if max > 0 && self.requests_served >= max {
            // `keepalive-max-requests`: this answer is the connection's last.
            req.keep_alive = false;
        }
        self.trace_id = trace_id::for_request(&req, self.generation.trace_id_format);
        if self.logs_access() {
            let mut entry = access_log::Entry::from_request(self.head_started, &req);
            entry.trace_id = self.trace_id.clone();
            self.access = Some(Box::new(entry));
        }
        let has_body = !matches!(req.framing, BodyFraming::Empty);
        // A request body the proxy does not forward cannot be skipped reliably: close after
        // answering (the linger discards it).
        let local_close = ctx.draining || !req.keep_alive || has_body;
        if ctx.respond_500 {
            let bytes = codec::error_response(500, local_close, req.is_head());
            return self.respond_local(ctx, 500, bytes, local_close);
        }
        let subject = self.client_subject().clone();
        let router = &self.generation.router;
        let routed = Routed {
            head: &req,
            client_cert_subject: subject.as_deref(),
        };
        let route = router.find(self.lctx.route_scope, self.lctx.default_route, &routed);
        if let (Some(a), Some(r)) = (self.access.as_mut(), route) {
            a.route = router.name(r).to_owned();
        }
        let action = route.and_then(|r| router.action(r)).cloned();
        let errors = router.error_style(route);
        let mut rate = None;
        if let Some(limiter) = route.and_then(|r| router.limiter(r)) {
            let d =
                header_policy::rate_check(&mut limiter.borrow_mut(), self.peer.ip(), &req, ctx.now);
            if !d.allowed {
                debug!(peer = %self.peer, path = req.path(), limit = d.limit, "rate limit exceeded");
                let bytes = header_policy::too_many_requests(&d, req.is_head());
                return self.respond_local(ctx, 429, bytes, true);
            }
            rate = Some(d);
        }
        // The head was parsed against the largest body limit of any route: this route's own.
        let body_limit = self.body_limit(route);
        if let BodyFraming::ContentLength(n) = req.framing {
            if n > body_limit {
                ctx.counters.c.client_errors += 1;
                let bytes = errors.response(413, true, req.is_head(), Some(&req));
                return self.respond_local(ctx, 413, bytes, true);
            }
        }
        let retry = route.and_then(|r| router.retry_rule(r));
        if route.is_some_and(|r| !router.websocket_allowed(r)) {
            if let Some(bytes) = websocket::refused(&req) {
                debug!(peer = %self.peer, path = req.path(), "websocket upgrade refused by the route");
                return self.respond_local(ctx, 403, bytes, true);
            }
        }
        match action {
            None => {
                debug!(peer = %self.peer, host = ?req.host, path = req.path(), "no route");
                let bytes = codec::error_response(404, local_close, req.is_head());
                self.respond_local(ctx, 404, bytes, local_close);
            }
            Some(Action::Static(resp)) => {
                let bytes = codec::static_response(&resp, local_close, req.is_head());
                self.respond_local(ctx, resp.status, bytes, local_close);
            }
            Some(Action::Files(route)) => {
                let answer = files::answer(&route, &req, local_close);
                debug!(peer = %self.peer, path = req.path(), status = answer.status, "static file");
                self.respond_local(ctx, answer.status, answer.bytes, local_close);
                self.file_body = answer.body;
            }
            Some(Action::Builtin(handler)) => {
                let counters = ctx.counters.snapshot();
                let view = builtin::View {
                    counters: &counters,
                    upstreams: ctx.upstreams,
                    generation: &self.generation,
                    now: ctx.now,
                };
                let (status, bytes) = builtin::answer(handler, &req, &view, local_close);
                debug!(peer = %self.peer, handler = handler.name(), status, "builtin handler");
                self.respond_local(ctx, status, bytes, local_close);
            }
            // A tunnel hands the raw client socket over, which a TLS session cannot do yet:
            // refuse before the upstream switches protocols.
            Some(Action::Upstream(_))
                if req.upgrade.is_some() && matches!(self.client, ClientSock::Tls(_)) =>
            {
                debug!(peer = %self.peer, "protocol upgrade over TLS is not supported yet");
                ctx.counters.c.client_errors += 1;
                let bytes = errors.response(501, true, req.is_head(), Some(&req));
                self.respond_local(ctx, 501, bytes, true);
            }
            Some(Action::Upstream(pool)) => {
                if let Some(sh) = route.and_then(|r| router.shadow(r)).cloned() {
                    shadow::mirror(&sh, &req, &self.forward_context(), ctx);
                }
                let router = &self.generation.router;
                let mut fallback = route
                    .and_then(|r| router.fallback(r))
                    .map(|f| FallbackState::new(Arc::clone(f)));
                let pool = fallback
                    .as_mut()
                    .map_or(pool, |f| f.initial(pool, ctx.upstreams, ctx.now));
                let buffer = has_body
                    && req.upgrade.is_none()
                    && route
                        .and_then(|r| router.policies(r))
                        .is_some_and(|p| p.buffer_requests);
                let q = Queued {
                    req,
                    pool,
                    since: ctx.now,
                    errors,
                    retry,
                    route,
                    rate,
                    fallback,
                    prebuffered: None,
                };
                if buffer {
                    self.start_buffering(q, ctx.now);
                } else {
                    self.try_proxy(q, ctx);
                }
            }
        }
    }

    /// The request body limit on `route`: its `policies { max-body-size }`, else the global one.
    fn body_limit(&self, route: Option<usize>) -> u64 {
        route
            .and_then(|r| self.generation.router.policies(r))
            .and_then(|p| p.max_body_size_bytes)
            .unwrap_or(self.generation.limits.max_body_size_bytes)
    }

    /// The forwarding fields of the current request (the proxied one and its shadow copy).
    fn forward_context(&self) -> ForwardContext {
        ForwardContext {
            client: self.peer,
            listener: self.lctx.local,
            scheme: match self.client {
                ClientSock::Plain(_) => "http",
                ClientSock::Tls(_) => "https",
            },
            trace_id: Some(self.trace_id.clone()),
            client_cert_subject: self.client_subject.clone().flatten(),
        }
    }

    /// The client certificate's subject, read from the TLS session once.
    fn client_subject(&mut self) -> &Option<Rc<str>> {
        let client = &self.client;
        self.client_subject.get_or_insert_with(|| match client {
            ClientSock::Tls(t) => t.client_subject().map(Rc::from),
            ClientSock::Plain(_) => None,
        })
    }

    /// Connect for the request (routed at `since`) and start the exchange; or wait in the
    /// pool's queue while every target is at its connection cap; or answer with an error.
    fn try_proxy(&mut self, mut q: Queued, ctx: &mut Ctx<'_>) {
        let mut failed = Vec::new();
        let token = tokens::session(self.key, Side::Upstream);
        let cookie = ctx
            .upstreams
            .pool(q.pool)
            .and_then(|p| p.sticky.as_ref())
            .and_then(|s| sticky::request_cookie(&q.req, &s.cookie_name));
        let pick = pick_request(self.peer, &cookie);
        let conn = match failover::connect_next(ctx, q.pool, &mut failed, token, self.peer, &pick) {
            Ok(conn) => conn,
            Err(NoConn::Wait) => {
                let waited = ctx.now.saturating_duration_since(q.since);
                let limit = ctx
                    .upstreams
                    .pool(q.pool)
                    .map_or(Duration::ZERO, |p| p.connect_timeout());
                if waited >= limit {
                    return self.queue_timed_out(q, ctx);
                }
                ctx.upstreams
                    .wait_for(q.pool, tokens::session(self.key, Side::Client));
                self.phase = Phase::Queued(Box::new(q));
                return;
            }
            Err(NoConn::CircuitOpen) => {
                // Fail fast: the breakers exist so that a failing upstream is not waited on.
                ctx.counters.c.upstream_errors += 1;
                let upstream = pool_name(ctx, q.pool);
                warn!(peer = %self.peer, upstream, "every upstream target's circuit breaker is open: 503");
                return self.refuse_queued(ctx, 503, &q);
            }
            Err(NoConn::Exhausted) => {
                let next = q
                    .fallback
                    .as_mut()
                    .and_then(|f| f.after_connect_failure(q.pool, ctx.upstreams, ctx.now));
                if let Some(pool) = next {
                    q.pool = pool;
                    return self.try_proxy(q, ctx);
                }
                // Each failed target was counted; an unknown pool (a routing bug) was not.
                if failed.is_empty() {
                    ctx.counters.c.upstream_errors += 1;
                }
                let upstream = pool_name(ctx, q.pool);
                warn!(peer = %self.peer, upstream, tried = failed.len(), "no upstream target could be connected");
                return self.refuse_queued(ctx, 502, &q);
            }
        };
        let Queued {
            req,
            pool,
            since,
            errors,
            retry,
            route,
            rate,
            fallback,
            prebuffered,
        } = q;
        let mut head_bytes = Vec::with_capacity(512);
        codec::write_upstream_request(&req, &self.forward_context(), &mut head_bytes);
        let policies = route.and_then(|r| self.generation.router.policies(r));
        if let Some(p) = policies {
            header_policy::apply(&p.request_headers, &mut head_bytes, 0);
        }
        if prebuffered.is_some() && req.expect_continue {
            Prebuffered::strip_expect(&mut head_bytes);
        }
        let read_ahead = policies
            .filter(|p| p.buffer_responses)
            .and_then(|_| ReadAhead::take());
        let (sock, meta) = UpMeta::split(conn);
        let connected = meta.reused;
        let mut uout = Buf::new();
        uout.extend(&head_bytes);
        let (req_body, replay, req_done) = match prebuffered {
            Some(p) => {
                uout.extend(&p.body);
                (p.tracker, Some(p.body), true)
            }
            None => (
                BodyTracker::new(req.framing, self.body_limit(route)),
                Some(Vec::new()),
                matches!(req.framing, BodyFraming::Empty),
            ),
        };
        let ex = Exchange {
            req_body,
            req,
            pool,
            retry,
            attempts: 1,
            tried: Vec::new(),
            retry_at: None,
            route,
            rate,
            errors,
            started: since,
            sent_at: ctx.now,
            cookie,
            uout_stalled_since: None,
            head_bytes,
            up: Some((sock, meta)),
            connecting: (!connected).then_some(ctx.now),
            uout,
            uin: Buf::new(),
            req_done,
            replay,
            retried: false,
            failed,
            resp: None,
            resp_body: None,
            dechunk: false,
            decoded: Vec::new(),
            resp_done: false,
            resp_started: false,
            got_upstream_bytes: false,
            last_up_activity: ctx.now,
            last_client_activity: ctx.now,
            cout_stalled_since: None,
            close_client: false,
            fallback,
            read_ahead,
        };
        self.phase = Phase::Proxy(Box::new(ex));
    }

    /// Woken (or any event) while queued: try again.
    fn step_queued(&mut self, ctx: &mut Ctx<'_>) -> Result<bool, Outcome> {
        let phase = std::mem::replace(&mut self.phase, Phase::ReadingHead);
        let Phase::Queued(q) = phase else {
            self.phase = phase;
            return Ok(false);
        };
        self.try_proxy(*q, ctx);
        Ok(!matches!(self.phase, Phase::Queued(_)))
    }

    /// Waited a whole connect timeout for a connection under the pool's cap: 503.
    fn queue_timed_out(&mut self, q: Queued, ctx: &mut Ctx<'_>) {
        ctx.counters.c.upstream_errors += 1;
        let upstream = pool_name(ctx, q.pool);
        warn!(peer = %self.peer, upstream, waited_ms = ctx.now.saturating_duration_since(q.since).as_millis() as u64, "no upstream connection became free within the connect timeout (max-connections)");
        self.refuse_queued(ctx, 503, &q);
    }

    /// Answers a request that never reached an upstream with the proxy's own `status`, in the
    /// route's error format; the connection closes when its body was not read.
    fn refuse_queued(&mut self, ctx: &mut Ctx<'_>, status: u16, q: &Queued) {
        let req = &q.req;
        let close = ctx.draining || !req.keep_alive || !matches!(req.framing, BodyFraming::Empty);
        let bytes = q.errors.response(status, close, req.is_head(), Some(req));
        self.respond_local(ctx, status, bytes, close);
    }

    fn step_local(&mut self, ctx: &mut Ctx<'_>) -> Result<bool, Outcome> {
        let n = self.write_client(ctx)?;
        self.local_progress(n, ctx);
        if !self.cout.is_empty() {
            return Ok(false);
        }
        if self.file_body.is_some() && !self.send_file_body(ctx)? {
            return Ok(false);
        }
        self.log_access(ctx);
        let close = matches!(self.phase, Phase::Local { close: true, .. });
        if close {
            self.start_closing(ctx.now);
        } else {
            self.phase = Phase::ReadingHead;
            self.idle_since = ctx.now;
        }
        Ok(true)
    }

    fn step_closing(&mut self, ctx: &mut Ctx<'_>) -> Result<bool, Outcome> {
        if !self.cout.is_empty() {
            self.write_client(ctx)?;
        }
        match self.client.discard() {
            Ok(true) | Err(_) => Err(Outcome::Done),
            Ok(false) => Ok(false),
        }
    }

    fn step_proxy(&mut self, ctx: &mut Ctx<'_>) -> Result<bool, Outcome> {
        if let Phase::Proxy(ex) = &self.phase {
            if ex.retry_at.is_some() {
                // Backing off before a retry: the timer resumes the exchange.
                return Ok(false);
            }
            if ex.up.is_none() {
                // The exchange was aborted (already counted and logged).
                return Err(Outcome::Done);
            }
        }
        match self.exchange_io(ctx) {
            Ok(progress) => {
                if let Phase::Proxy(ex) = &self.phase {
                    if ex.resp.as_ref().is_some_and(|h| h.status == 101) {
                        return Err(Outcome::Upgrade);
                    }
                }
                Ok(progress)
            }
            Err(Fail::RetryFresh) => {
                self.retry_fresh(ctx);
                Ok(true)
            }
            Err(Fail::RetryElsewhere(reason)) => {
                self.retry_elsewhere(reason, ctx);
                Ok(true)
            }
            Err(Fail::RetryStatus(status)) => {
                self.retry_status(status, ctx);
                Ok(true)
            }
            Err(f) => {
                self.handle_fail(f, ctx);
                // A failover attached a new connection (the next round drives it), or the
                // exchange ended: with an error response, or with no upstream left (then the
                // next round ends the session).
                Ok(true)
            }
        }
    }

    /// A connect failure moves on to another target; anything else ends the exchange.
    fn handle_fail(&mut self, f: Fail, ctx: &mut Ctx<'_>) {
        let f = match f {
            Fail::ConnectFailed(e) => self.failover(&e, ctx),
            Fail::ConnectTimedOut => self.failover(&"connect timed out", ctx),
            Fail::AttemptTimedOut => self.attempt_timed_out(ctx),
            other => Some(other),
        };
        if let Some(f) = f {
            self.fail(f, ctx);
        }
    }

    /// The pending connect failed before any request byte was sent: report it and connect to
    /// the balancer's next choice among the targets not tried yet. Returns the failure to
    /// answer with when none is left.
    fn failover(&mut self, error: &dyn std::fmt::Display, ctx: &mut Ctx<'_>) -> Option<Fail> {
        let peer = self.peer;
        let token = tokens::session(self.key, Side::Upstream);
        let Phase::Proxy(ex) = &mut self.phase else {
            return None;
        };
        // No connection: the exchange was already aborted, and the session ends.
        let (up, meta) = ex.up.take()?;
        failover::connect_failed(ctx, meta.join(up), &mut ex.failed, peer, error);
        let pick = pick_request(peer, &ex.cookie);
        let mut pool = meta.pool;
        loop {
            match failover::connect_next(ctx, pool, &mut ex.failed, token, peer, &pick) {
                Ok(conn) => {
                    ex.attach(conn, ctx.now);
                    return None;
                }
                Err(_) => {
                    // Nothing was sent yet: a fallback upstream may take the request.
                    let next = ex
                        .fallback
                        .as_mut()
                        .and_then(|f| f.after_connect_failure(pool, ctx.upstreams, ctx.now));
                    let Some(next) = next else {
                        return Some(Fail::Exhausted);
                    };
                    pool = next;
                    // Target indices of the failed list belong to the previous pool.
                    ex.failed.clear();
                }
            }
        }
    }

    /// Turn a failure into an error response (nothing sent yet) or an abort.
    fn fail(&mut self, f: Fail, ctx: &mut Ctx<'_>) {
        let Phase::Proxy(ex) = &mut self.phase else {
            return;
        };
        let (status, reason) = match f {
            Fail::Upstream(s, r) => {
                ctx.counters.c.upstream_errors += 1;
                // Passive health: a fresh connection that failed before any response byte,
                // or a target that did not answer in time, says something about the target;
                // a pooled connection closed while idle or a malformed answer does not.
                if let Some((_, m)) = ex.up.as_ref() {
                    if s == 504 || (!m.reused && !ex.got_upstream_bytes) {
                        ctx.upstreams.report_failure(m.pool, m.target, ctx.now, &r);
                    }
                }
                (s, r)
            }
            Fail::RetryElsewhere(r) | Fail::NotRetried(r) => {
                // Only reached when not retried.
                ctx.counters.c.upstream_errors += 1;
                if let Some((_, m)) = ex.up.as_ref() {
                    ctx.upstreams.report_failure(m.pool, m.target, ctx.now, &r);
                }
                (502, r)
            }
            Fail::Client(s, r) => {
                ctx.counters.c.client_errors += 1;
                (s, r)
            }
            // Each failed target was counted when it failed.
            Fail::Exhausted => (502, "no upstream target could be connected"),
            // Only reached if a connect failure was not failed over; it was not counted yet.
            Fail::ConnectFailed(_) | Fail::ConnectTimedOut => {
                ctx.counters.c.upstream_errors += 1;
                (502, "upstream connect failed")
            }
            // Only reached if not retried: the status went to the client instead.
            Fail::RetryStatus(s) => {
                ctx.counters.c.upstream_errors += 1;
                (s, "retryable status")
            }
            Fail::AttemptTimedOut => {
                ctx.counters.c.upstream_errors += 1;
                (504, "upstream attempt timed out")
            }
            // The upstream's answer was valid: counted as a response, not an error.
            Fail::ErrorPage(s) => (s, "upstream error replaced by the route's error page"),
            Fail::ClientGone | Fail::RetryFresh => {
                ctx.counters.c.client_errors += 1;
                (0, "client connection lost")
            }
            Fail::ClientStalled => {
                ctx.counters.c.client_errors += 1;
                (0, "client stopped reading the response")
            }
        };
        let upstream = ex.up.as_ref().map(|(_, m)| m.addr);
        debug!(peer = %self.peer, upstream = ?upstream, status, reason, "exchange failed");
        let head_only = ex.req.is_head();
        let can_answer = status != 0 && !ex.resp_started;
        let keep = can_answer
            && ex.req_done
            && ex.req.keep_alive
            && !ctx.draining
            && !self.client.read_eof();
        if let Some((up, meta)) = ex.up.take() {
            ctx.discard_upstream(meta.join(up));
        }
        if can_answer {
            self.cout.clear();
            let bytes = ex.errors.response(status, !keep, head_only, Some(&ex.req));
            self.respond_local(ctx, status, bytes, !keep);
        }
        // Otherwise the phase stays Proxy with no upstream: the caller ends the session.
    }

    fn retry_fresh(&mut self, ctx: &mut Ctx<'_>) {
        let peer = self.peer;
        let token = tokens::session(self.key, Side::Upstream);
        let Phase::Proxy(ex) = &mut self.phase else {
            return;
        };
        let Some((up, meta)) = ex.up.take() else {
            return;
        };
        debug!(peer = %peer, upstream = %meta.addr, "pooled upstream connection was dead, retrying on a new one");
        ctx.discard_upstream(meta.join(up));
        ex.retried = true;
        ex.rewind_request();
        let conn = match ctx
            .upstreams
            .connect(meta.pool, meta.target, ctx.registry, token)
        {
            Ok(c) => Some(c),
            Err(e) => {
                failover::note_failure(ctx, meta.pool, meta.target, &mut ex.failed, peer, &e);
                let pick = pick_request(peer, &ex.cookie);
                failover::connect_next(ctx, meta.pool, &mut ex.failed, token, peer, &pick).ok()
            }
        };
        match conn {
            Some(c) => ex.attach(c, ctx.now),
            None => self.fail(Fail::Exhausted, ctx),
        }
    }

    /// One round of I/O for a proxied exchange. Ok(progress).
    fn exchange_io(&mut self, ctx: &mut Ctx<'_>) -> Result<bool, Fail> {
        let now = ctx.now;
        let draining = ctx.draining;
        let Phase::Proxy(ex) = &mut self.phase else {
            return Ok(false);
        };
        let mut progress = false;
        // The upstream's read timeout runs only while there is room to read into.
        if ex.uin.len() >= BUF_CAP {
            ex.last_up_activity = now;
        }

        // Client -> cin (read ahead is bounded; pipelined bytes wait in cin).
        if !self.client.read_eof() && self.cin.len() < BUF_CAP {
            match self.client.fill(&mut self.cin, BUF_CAP) {
                Ok(r) => {
                    ctx.counters.c.bytes_in += r.bytes as u64;
                    if r.bytes > 0 {
                        ex.last_client_activity = now;
                        progress = true;
                    }
                    progress |= r.eof;
                }
                Err(_) => return Err(Fail::ClientGone),
            }
        }

        // cin -> request body -> uout.
        if !ex.req_done && !self.cin.is_empty() && ex.uout.len() < BUF_CAP {
            let room = BUF_CAP - ex.uout.len();
            let take = self.cin.len().min(room);
            match ex.req_body.feed(&self.cin.as_slice()[..take]) {
                Ok(p) => {
                    let bytes = &self.cin.as_slice()[..p.consumed];
                    ex.uout.extend(bytes);
                    if let Some(r) = ex.replay.as_mut() {
                        if r.len() + bytes.len() <= REPLAY_CAP {
                            r.extend_from_slice(bytes);
                        } else {
                            ex.replay = None;
                        }
                    }
                    self.cin.consume(p.consumed);
                    ex.req_done = p.complete;
                    progress |= p.consumed > 0 || p.complete;
                }
                Err(BodyError::TooLarge(_)) => {
                    return Err(Fail::Client(413, "request body too large"))
                }
                Err(BodyError::InvalidChunk(_)) => {
                    return Err(Fail::Client(400, "invalid chunked request body"))
                }
            }
        }
        if !ex.req_done && self.cin.is_empty() && self.client.read_eof() {
            return Err(Fail::ClientGone);
        }

        // A pooled connection may have been closed by the upstream while idle; if it fails
        // before any response byte, the request can be sent again on a fresh connection.
        // Idempotent requests only (RFC 9112 9.3.1.1: a proxy must not retry others): the
        // upstream may have acted on a request it never answered.
        let reused = ex.up.as_ref().is_some_and(|(_, m)| m.reused);
        let replayable = ex.replayable();
        let retry_ok = reused && !ex.retried && replayable;
        // A fresh connection failing before any response byte: the target is to blame. RFC
        // 9110 9.2.2 lets an idempotent request go again; others get a 502.
        let elsewhere = |got_upstream_bytes: bool, reason: &'static str| {
            if !reused && !got_upstream_bytes {
                Fail::RetryElsewhere(reason)
            } else {
                Fail::Upstream(502, reason)
            }
        };
        let elsewhere_ok =
            !reused && replayable && retry::attempts_left(ex.retry.as_deref(), ex.attempts);
        let up_ids = ex.up.as_ref().map(|(_, m)| (m.pool, m.target));
        let up_addr = ex.up.as_ref().map(|(_, m)| m.addr);
        let Some((up, _)) = ex.up.as_mut() else {
            return Err(Fail::ClientGone);
        };

        // The TCP connect, then for a TLS upstream the handshake: a certificate that does not
        // verify fails like a refused connect (failover, counted against the target).
        if ex.connecting.is_some() {
            match up.poll_connect() {
                Ok(true) => {
                    ex.connecting = None;
                    ex.last_up_activity = now;
                    progress = true;
                }
                Ok(false) => return Ok(progress),
                Err(e) => return Err(Fail::ConnectFailed(e)),
            }
        }

        // uout -> upstream.
        if !ex.uout.is_empty() {
            match up.flush(&mut ex.uout) {
                Ok(n) => {
                    if n > 0 {
                        ex.last_up_activity = now;
                        progress = true;
                    }
                    ex.uout_stalled_since = match (ex.uout.is_empty(), n > 0) {
                        (true, _) => None,
                        (false, true) => Some(now),
                        (false, false) => Some(ex.uout_stalled_since.unwrap_or(now)),
                    };
                }
                Err(_) if retry_ok && !ex.got_upstream_bytes => return Err(Fail::RetryFresh),
                Err(e) => {
                    log_tls_failure(up, up_addr, self.peer, &e);
                    if !ex.resp_started {
                        let f = elsewhere(ex.got_upstream_bytes, "upstream write failed");
                        return Err(if elsewhere_ok { f } else { not_retried(f) });
                    }
                    return Err(Fail::ClientGone);
                }
            }
        }

        // upstream -> uin (-> cout): read ahead of the client up to this.
        let read_cap = if ex.read_ahead.is_some() {
            RESPONSE_BUFFER_CAP
        } else {
            BUF_CAP
        };
        if !up.read_eof() && ex.uin.len() < read_cap {
            match up.fill(&mut ex.uin, read_cap) {
                Ok(r) => {
                    if r.bytes > 0 {
                        ex.got_upstream_bytes = true;
                        ex.last_up_activity = now;
                        progress = true;
                    }
                    progress |= r.eof;
                }
                Err(_) if retry_ok && !ex.got_upstream_bytes => return Err(Fail::RetryFresh),
                Err(e) => {
                    log_tls_failure(up, up_addr, self.peer, &e);
                    if !ex.resp_started {
                        let f = elsewhere(ex.got_upstream_bytes, "upstream connection reset");
                        return Err(if elsewhere_ok { f } else { not_retried(f) });
                    }
                    return Err(Fail::ClientGone);
                }
            }
        }

        // Response head(s).
        // Sized for a typical head at once, instead of growing through several reallocations
        // (allocated only when a head is parsed).
        let mut head_out = Vec::new();
        if ex.resp.is_none() && !ex.uin.is_empty() {
            head_out.reserve(512);
        }
        while ex.resp.is_none() {
            if ex.uin.is_empty() {
                if up.read_eof() {
                    if retry_ok && !ex.got_upstream_bytes {
                        return Err(Fail::RetryFresh);
                    }
                    let f = elsewhere(ex.got_upstream_bytes, "upstream closed before responding");
                    return Err(if elsewhere_ok { f } else { not_retried(f) });
                }
                break;
            }
            match codec::parse_response(ex.uin.as_slice(), ex.req.is_head(), MAX_RESPONSE_HEAD) {
                Ok(Parsed::Complete(h)) => {
                    ex.uin.consume(h.head_len);
                    progress = true;
                    if h.is_interim() {
                        // HTTP/1.0 clients must not receive 1xx responses.
                        if ex.req.version == HttpVersion::Http11 {
                            codec::write_client_response(&h, ex.req.version, false, &mut head_out);
                            ctx.counters.response(h.status);
                            ex.resp_started = true;
                        }
                        continue;
                    }
                    if h.status == 101 {
                        if ex.req.upgrade.is_none() {
                            return Err(Fail::Upstream(
                                502,
                                "101 response to a request without upgrade",
                            ));
                        }
                        codec::write_client_response(&h, ex.req.version, false, &mut head_out);
                        ctx.counters.response(101);
                        if let Some(a) = self.access.as_mut() {
                            a.status = 101;
                            note_upstream(a, ctx, up_ids, up_addr, reused);
                            a.head_bytes += head_out.len() as u64;
                        }
                        ex.resp_started = true;
                        ex.resp = Some(h);
                        self.cout.extend(&head_out);
                        return Ok(true);
                    }
                    if let Some((pool, target)) = up_ids {
                        let rtt = now.saturating_duration_since(ex.sent_at);
                        ctx.upstreams
                            .report_response(pool, target, h.status, rtt, now);
                    }
                    if retry::retry_on_status(
                        ex.retry.as_deref(),
                        h.status,
                        ex.attempts,
                        replayable,
                        ex.resp_started,
                    ) {
                        return Err(Fail::RetryStatus(h.status));
                    }
                    if !ex.resp_started && ex.errors.replaces(h.status) {
                        if let Some(a) = self.access.as_mut() {
                            a.upstream = up_addr;
                        }
                        return Err(Fail::ErrorPage(h.status));
                    }
                    let framing = h.framing;
                    ex.dechunk = h.dechunks_for(ex.req.version);
                    // Without its chunked framing the body's end is the connection close.
                    ex.close_client = draining
                        || !ex.req.keep_alive
                        || !ex.req_done
                        || framing == BodyFraming::UntilClose
                        || ex.dechunk;
                    let set_cookie = up_ids.and_then(|(pool, target)| {
                        ctx.upstreams
                            .pool(pool)
                            .and_then(|p| p.set_cookie(target, ex.cookie.as_deref()))
                    });
                    let rate = ex.rate.as_ref().map(header_policy::rate_headers);
                    let mut extra: Vec<(&[u8], &[u8])> = Vec::new();
                    // As upstream: the client learns the request's trace id (unless the
                    // upstream named one itself).
                    if !h
                        .headers()
                        .any(|f| f.name.eq_ignore_ascii_case(b"x-correlation-id"))
                    {
                        extra.push((b"X-Correlation-Id", self.trace_id.as_bytes()));
                    }
                    if let Some(v) = &set_cookie {
                        extra.push((b"Set-Cookie", v.as_bytes()));
                    }
                    for (name, value) in rate.iter().flatten() {
                        extra.push((name.as_bytes(), value.as_bytes()));
                    }
                    let head_start = head_out.len();
                    codec::write_client_response_with(
                        &h,
                        ex.req.version,
                        ex.close_client,
                        &extra,
                        &mut head_out,
                    );
                    if let Some(p) = ex.route.and_then(|r| self.generation.router.policies(r)) {
                        header_policy::apply(&p.response_headers, &mut head_out, head_start);
                    }
                    ctx.counters.response(h.status);
                    if let Some(a) = self.access.as_mut() {
                        a.status = h.status;
                        note_upstream(a, ctx, up_ids, up_addr, reused);
                    }
                    ex.resp_started = true;
                    ex.resp_done = framing == BodyFraming::Empty;
                    ex.resp_body = Some(BodyTracker::new(framing, u64::MAX));
                    ex.resp = Some(h);
                }
                Ok(Parsed::Partial) => {
                    if up.read_eof() {
                        return Err(Fail::Upstream(
                            502,
                            "upstream closed inside the response head",
                        ));
                    }
                    if ex.uin.len() >= MAX_RESPONSE_HEAD {
                        return Err(Fail::Upstream(502, "upstream response head too large"));
                    }
                    break;
                }
                Err(_) => return Err(Fail::Upstream(502, "invalid upstream response")),
            }
        }

        self.cout.extend(&head_out);
        if let Some(a) = self.access.as_mut() {
            a.head_bytes += head_out.len() as u64;
        }
        if ex.resp.as_ref().is_some_and(|h| h.status == 101) {
            return Ok(progress);
        }

        // uin -> response body -> cout.
        if let Some(tracker) = ex.resp_body.as_mut() {
            if !ex.resp_done && !ex.uin.is_empty() && self.cout.len() < read_cap {
                let take = ex.uin.len().min(read_cap - self.cout.len());
                let input = &ex.uin.as_slice()[..take];
                let fed = if ex.dechunk {
                    ex.decoded.clear();
                    tracker.feed_decoded(input, &mut ex.decoded)
                } else {
                    tracker.feed(input)
                };
                match fed {
                    Ok(p) => {
                        if ex.dechunk {
                            self.cout.extend(&ex.decoded);
                        } else {
                            self.cout.extend(&ex.uin.as_slice()[..p.consumed]);
                        }
                        ex.uin.consume(p.consumed);
                        ex.resp_done = p.complete;
                        progress |= p.consumed > 0 || p.complete;
                    }
                    Err(_) => return Err(Fail::ClientGone),
                }
            }
            if !ex.resp_done && ex.uin.is_empty() && up.read_eof() {
                if tracker.framing() == BodyFraming::UntilClose {
                    ex.resp_done = true;
                    progress = true;
                } else {
                    // Truncated body: the client must see the connection end, not a
                    // complete-looking response.
                    return Err(Fail::ClientGone);
                }
            }
        }

        // cout -> client.
        if !self.cout.is_empty() {
            match self.client.flush(&mut self.cout) {
                Ok(n) => {
                    ctx.counters.c.bytes_out += n as u64;
                    if let Some(a) = self.access.as_mut() {
                        a.bytes += n as u64;
                    }
                    progress |= n > 0;
                    ex.cout_stalled_since = if self.cout.is_empty() {
                        None
                    } else if n > 0 {
                        Some(now)
                    } else {
                        Some(ex.cout_stalled_since.unwrap_or(now))
                    };
                }
                Err(_) => return Err(Fail::ClientGone),
            }
        }
        if ex.uin.len() >= read_cap {
            ex.last_up_activity = now;
        }

        if ex.resp_done && self.cout.is_empty() && (ex.req_done || ex.close_client) {
            self.finish_exchange(ctx);
            return Ok(true);
        }
        if ex.read_ahead.is_some() && ex.resp_done && ex.req_done && ex.uin.is_empty() {
            // The whole response is in memory: the upstream connection is free, the client
            // gets the rest like a local answer.
            self.end_exchange(ctx, true);
            return Ok(true);
        }
        Ok(progress)
    }

    fn finish_exchange(&mut self, ctx: &mut Ctx<'_>) {
        self.log_access(ctx);
        self.end_exchange(ctx, false);
    }

    /// Release the exchange's upstream connection (to the pool when it is reusable). With
    /// `rest_pending`, response bytes are still in `cout`: they go out in `Phase::Local`, which
    /// writes the access-log line when they are gone.
    fn end_exchange(&mut self, ctx: &mut Ctx<'_>, rest_pending: bool) {
        let phase = std::mem::replace(&mut self.phase, Phase::ReadingHead);
        let Phase::Proxy(mut ex) = phase else {
            self.phase = phase;
            return;
        };
        if let Some((up, meta)) = ex.up.take() {
            let reusable = ex.req_done
                && ex.resp_done
                && ex.uin.is_empty()
                && ex.uout.is_empty()
                && !up.read_eof()
                // Still readable: the last read filled the buffer, so bytes beyond the
                // response may be waiting, with no event left to reveal them in the pool.
                && !up.readable()
                && ex
                    .resp
                    .as_ref()
                    .is_some_and(|h| h.keep_alive && h.framing != BodyFraming::UntilClose)
                && !ctx.draining;
            ctx.upstreams
                .release(meta.join(up), reusable, ctx.registry, ctx.timers, ctx.now);
        }
        if rest_pending {
            self.phase = Phase::Local {
                close: ex.close_client,
                since: ctx.now,
            };
        } else if ex.close_client {
            self.start_closing(ctx.now);
        } else {
            self.phase = Phase::ReadingHead;
            self.idle_since = ctx.now;
        }
    }

    fn logs_access(&self) -> bool {
        self.generation
            .listeners
            .get(self.listener)
            .is_some_and(|l| l.access_log.is_some())
    }

    /// Write the current request's access-log line (once: the entry is taken).
    fn log_access(&mut self, ctx: &Ctx<'_>) {
        let Some(mut entry) = self.access.take() else {
            return;
        };
        if let Some(l) = self.generation.listeners.get(self.listener) {
            if let Some(log) = &l.access_log {
                if entry.status == 0 {
                    entry.status = 499;
                }
                log.log(&entry, self.peer, &l.name, ctx.now);
            }
        }
    }

    /// After a 101 has been queued: hand both sockets and all buffered bytes to a tunnel.
    pub fn into_tunnel(mut self, ctx: &mut Ctx<'_>) -> Option<TcpSession> {
        if let Some(id) = self.timer.take() {
            ctx.timers.cancel(id);
        }
        self.log_access(ctx);
        let phase = std::mem::replace(&mut self.phase, Phase::ReadingHead);
        let Phase::Proxy(mut ex) = phase else {
            return None;
        };
        let client = match self.client.into_plain() {
            Ok(sock) => sock,
            Err(mut tls) => {
                warn!(peer = %self.peer, "protocol upgrade over TLS is not supported yet: closing");
                tls.close();
                if let Some((up, meta)) = ex.up.take() {
                    ctx.discard_upstream(meta.join(up));
                }
                let _ = ctx.registry.deregister(tls.stream_mut());
                return None;
            }
        };
        let (up, meta) = ex.up.take()?;
        let mut c2u = ex.uout.take();
        c2u.extend(self.cin.as_slice());
        let mut u2c = self.cout.take();
        u2c.extend(ex.uin.as_slice());
        Some(TcpSession::tunnel(
            self.key, self.peer, client, up, meta, c2u, u2c,
        ))
    }

    /// Release the upstream connection (never pooled: the exchange did not finish) and
    /// deregister the client.
    pub fn close(mut self, ctx: &mut Ctx<'_>) {
        if let Some(id) = self.timer.take() {
            ctx.timers.cancel(id);
        }
        // A request still open when the session ends was cut short: logged like nginx does,
        // 499 when no status was sent.
        self.log_access(ctx);
        self.client.close();
        let _ = ctx.registry.deregister(self.client.stream_mut());
        if let Phase::Proxy(ex) = &mut self.phase {
            if let Some((up, meta)) = ex.up.take() {
                ctx.discard_upstream(meta.join(up));
            }
        }
    }
}
