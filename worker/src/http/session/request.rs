//! A request head read from the client, routed, and dispatched: answered here (static,
//! files, builtin handlers, refusals) or sent on towards an upstream.

use super::*;

impl HttpSession {
    /// Ok(true): progress made, run again. Ok(false): wait for events. Err: outcome now.
    pub(super) fn step_head(&mut self, ctx: &mut Ctx<'_>) -> Result<bool, Outcome> {
        // No exchange is in flight while a head is read: the one place a reload may apply.
        self.adopt_current_generation(ctx);
        let max_head =
            usize::try_from(self.generation.limits.max_header_size_bytes).unwrap_or(usize::MAX);
        let head_cap = BUF_CAP.max(max_head.saturating_add(1024));
        let was_empty = self.cin.is_empty();
        let n = self.read_client(ctx, head_cap)?;
        if self.first_request && self.speaks_h2() {
            return Err(Outcome::Http2);
        }
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
        if self.first_request && crate::http2::PREFACE.starts_with(self.cin.as_slice()) {
            // The start of the HTTP/2 preface: wait for the rest.
            return Ok(n > 0 && self.client.readable() && !self.client.read_eof());
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

    /// Before the first request: the client chose HTTP/2, by ALPN or by sending the
    /// prior-knowledge preface (h2c). Streams of an HTTP/2 connection (pipes) never switch.
    fn speaks_h2(&self) -> bool {
        match &self.client {
            ClientSock::Pipe(_) => false,
            ClientSock::Tls(_) if self.client.negotiated_h2() => true,
            ClientSock::Plain(_) | ClientSock::Tls(_) => {
                self.cin.len() >= crate::http2::PREFACE.len()
                    && self.cin.as_slice().starts_with(crate::http2::PREFACE)
            }
        }
    }

    pub(super) fn start_request(&mut self, mut req: RequestHead, ctx: &mut Ctx<'_>) {
        ctx.counters.c.requests_total += 1;
        self.requests_served = self.requests_served.saturating_add(1);
        let max = self.lctx.keepalive_max_requests;
        if max > 0 && self.requests_served >= max {
            // `keepalive-max-requests`: this answer is the connection's last.
            req.keep_alive = false;
        }
        trace_id::for_request(&req, self.generation.trace_id_format, &mut self.trace_id);
        if self.logs_access() {
            let mut entry = access_log::Entry::from_request(self.head_started, &req);
            if matches!(self.client, ClientSock::Pipe(_)) {
                // A stream of an HTTP/2 connection: its head only passed through HTTP/1.1.
                entry.protocol = "HTTP/2.0";
            }
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
        if let Some(a) = self.access.as_mut() {
            if let Some(r) = route {
                a.route = router.name(r).to_owned();
            }
            if let Some(s) = &subject {
                s.as_ref().clone_into(&mut a.client_cert_subject);
            }
        }
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
        self.filtered = route
            .and_then(|r| router.filters(r))
            .map(|chain| Box::new(RequestState::new(Rc::clone(chain), &req, ctx.now)));
        self.filter_then_dispatch(req, route, rate, ctx);
    }

    /// The route's request filters (see `crate::filters`), then its action: a filter may
    /// answer itself, or hold the request back and resume here later (`Phase::Held`).
    pub(super) fn filter_then_dispatch(
        &mut self,
        req: RequestHead,
        route: Option<usize>,
        rate: Option<Decision>,
        ctx: &mut Ctx<'_>,
    ) {
        if let Some(state) = self.filtered.as_mut() {
            let scheme = match &self.client {
                ClientSock::Plain(_) => "http",
                ClientSock::Tls(_) => "https",
                ClientSock::Pipe(p) if p.shared.borrow().over_tls => "https",
                ClientSock::Pipe(_) => "http",
            };
            let facts = RequestFacts {
                peer: self.peer.ip(),
                req: &req,
                scheme,
                trace_id: &self.trace_id,
                now: ctx.now,
                session: self.key,
            };
            match state.on_request(&facts) {
                Verdict::Continue => {}
                Verdict::Respond {
                    status,
                    bytes,
                    close,
                } => {
                    debug!(peer = %self.peer, path = req.path(), status, "answered by a route filter");
                    return self.respond_local(ctx, status, bytes, close);
                }
                Verdict::Hold { until } => {
                    self.phase = Phase::Held(Box::new(Held {
                        req,
                        route,
                        rate,
                        until,
                    }));
                    return;
                }
            }
        }
        self.dispatch(req, route, rate, ctx);
    }

    /// A held request (`Phase::Held`) goes on: its time came, or its Redis answer did.
    pub(super) fn resume_held(&mut self, ctx: &mut Ctx<'_>) {
        let phase = std::mem::replace(&mut self.phase, Phase::ReadingHead);
        if let Phase::Held(h) = phase {
            let Held {
                req, route, rate, ..
            } = *h;
            self.filter_then_dispatch(req, route, rate, ctx);
        }
    }

    /// Held for a Redis answer that came: resume now rather than at the deadline.
    pub(super) fn step_held(&mut self, ctx: &mut Ctx<'_>) -> Result<bool, Outcome> {
        if !self.filtered.as_ref().is_some_and(|f| f.redis_answered()) {
            return Ok(false);
        }
        self.resume_held(ctx);
        Ok(true)
    }

    /// The route's action: answered here, or sent on towards an upstream.
    fn dispatch(
        &mut self,
        req: RequestHead,
        route: Option<usize>,
        rate: Option<Decision>,
        ctx: &mut Ctx<'_>,
    ) {
        let has_body = !matches!(req.framing, BodyFraming::Empty);
        let local_close = ctx.draining || !req.keep_alive || has_body;
        let router = &self.generation.router;
        let action = route.and_then(|r| router.action(r)).cloned();
        let errors = router.error_style(route);
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
                // gRPC messages stream both ways and may never end: never held whole.
                let buffer = has_body
                    && req.upgrade.is_none()
                    && !is_grpc(&req)
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
    pub(super) fn body_limit(&self, route: Option<usize>) -> u64 {
        route
            .and_then(|r| self.generation.router.policies(r))
            .and_then(|p| p.max_body_size_bytes)
            .unwrap_or(self.generation.limits.max_body_size_bytes)
    }

    /// The forwarding fields of the current request (the proxied one and its shadow copy).
    pub(super) fn forward_context(&self) -> ForwardContext<'_> {
        ForwardContext {
            client: self.peer,
            listener: self.lctx.local,
            scheme: match &self.client {
                ClientSock::Plain(_) => "http",
                ClientSock::Tls(_) => "https",
                ClientSock::Pipe(p) if p.shared.borrow().over_tls => "https",
                ClientSock::Pipe(_) => "http",
            },
            trace_id: Some(&self.trace_id),
            client_cert_subject: self.client_subject.clone().flatten(),
        }
    }

    /// The client certificate's subject, read from the TLS session once.
    pub(super) fn client_subject(&mut self) -> &Option<Rc<str>> {
        let client = &self.client;
        self.client_subject.get_or_insert_with(|| match client {
            ClientSock::Tls(t) => t.client_subject().map(Rc::from),
            ClientSock::Pipe(p) => p.shared.borrow().client_subject.clone(),
            ClientSock::Plain(_) => None,
        })
    }
}

/// A gRPC call (`content-type: application/grpc`, `application/grpc+proto`, ...): its bodies
/// are streams of messages, never buffered whole.
pub(super) fn is_grpc(req: &RequestHead) -> bool {
    req.headers().any(|h| {
        h.name.eq_ignore_ascii_case(b"content-type")
            && h.value.len() >= 16
            && h.value[..16].eq_ignore_ascii_case(b"application/grpc")
    })
}
