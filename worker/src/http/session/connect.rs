//! Getting an upstream connection for a routed request: connect (failing over between
//! targets and to fallback upstreams), wait in the pool's queue under `max-connections`, or
//! answer with the proxy's own error. A connection got starts the exchange.

use super::*;
use std::mem::take;

impl HttpSession {
    /// Connect for the request (routed at `since`) and start the exchange; or wait in the
    /// pool's queue while every target is at its connection cap; or answer with an error.
    pub(super) fn try_proxy(&mut self, mut q: Queued, ctx: &mut Ctx<'_>) {
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
        // The head goes into the vectors of an ended exchange when one is kept.
        let mut spare = spare::take();
        let (mut head_bytes, head_scratch) = spare
            .as_mut()
            .map(|b| (take(&mut b.head_bytes), take(&mut b.head_scratch)))
            .unwrap_or_default();
        head_bytes.clear();
        // Sized for a typical head at once, instead of growing through several reallocations.
        head_bytes.reserve(512);
        codec::write_upstream_request(&req, &self.forward_context(), &mut head_bytes);
        let policies = route.and_then(|r| self.generation.router.policies(r));
        if let Some(p) = policies {
            header_policy::apply(&p.request_headers, &mut head_bytes, 0);
        }
        if let Some(f) = &self.filtered {
            f.rewrite_upstream_head(&mut head_bytes);
        }
        if prebuffered.is_some() && req.expect_continue {
            Prebuffered::strip_expect(&mut head_bytes);
        }
        let read_ahead = policies
            .filter(|p| p.buffer_responses && !super::request::is_grpc(&req))
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
            head_scratch,
            body_pipe: None,
        };
        self.phase = Phase::Proxy(spare::boxed(spare, ex));
    }

    /// `http-version "auto"`: the exchange's new connection chose h2; it goes on as the first
    /// stream of that connection, which later exchanges to the target share.
    pub(super) fn switch_to_h2(&mut self, ctx: &mut Ctx<'_>) {
        let token = tokens::session(self.key, Side::Upstream);
        let Phase::Proxy(ex) = &mut self.phase else {
            return;
        };
        let Some((up, meta)) = ex.up.take() else {
            return;
        };
        match ctx.upstreams.adopt_h2(meta.join(up), token, ctx.now) {
            Ok(c) => {
                debug!(peer = %self.peer, upstream = %c.addr, "upstream chose h2 by ALPN");
                ex.attach(c, ctx.now);
            }
            Err(e) => {
                debug!(peer = %self.peer, error = %e, "cannot use the upstream's h2 connection");
                self.fail(Fail::Exhausted, ctx);
            }
        }
    }

    /// Woken (or any event) while queued: try again.
    pub(super) fn step_queued(&mut self, ctx: &mut Ctx<'_>) -> Result<bool, Outcome> {
        let phase = std::mem::replace(&mut self.phase, Phase::ReadingHead);
        let Phase::Queued(q) = phase else {
            self.phase = phase;
            return Ok(false);
        };
        self.try_proxy(*q, ctx);
        Ok(!matches!(self.phase, Phase::Queued(_)))
    }

    /// Waited a whole connect timeout for a connection under the pool's cap: 503.
    pub(super) fn queue_timed_out(&mut self, q: Queued, ctx: &mut Ctx<'_>) {
        ctx.counters.c.upstream_errors += 1;
        let upstream = pool_name(ctx, q.pool);
        warn!(peer = %self.peer, upstream, waited_ms = crate::timers::millis(ctx.now.saturating_duration_since(q.since)), "no upstream connection became free within the connect timeout (max-connections)");
        self.refuse_queued(ctx, 503, &q);
    }

    /// Answers a request that never reached an upstream with the proxy's own `status`, in the
    /// route's error format; the connection closes when its body was not read.
    pub(super) fn refuse_queued(&mut self, ctx: &mut Ctx<'_>, status: u16, q: &Queued) {
        let req = &q.req;
        let close = ctx.draining || !req.keep_alive || !matches!(req.framing, BodyFraming::Empty);
        let bytes = q.errors.response(status, close, req.is_head(), Some(req));
        self.respond_local(ctx, status, bytes, close);
    }
}
