//! The session's one timer: which deadline the current phase is under (head, idle, linger,
//! queue, and the proxied exchange's connect, read, write, request, attempt and client
//! deadlines), arming it, and what firing means.

use super::*;

impl HttpSession {
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
            Phase::Held(_) => self.resume_held(ctx),
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

    pub(super) fn desired_deadline(&self, ctx: &Ctx<'_>) -> Option<Instant> {
        match &self.phase {
            Phase::ReadingHead => {
                if self.cin.is_empty() && !self.first_request {
                    Some(self.idle_since + self.lctx.keepalive_timeout)
                } else {
                    Some(self.head_started + self.lctx.request_timeout)
                }
            }
            Phase::Local { since, .. } => Some(*since + self.lctx.request_timeout),
            Phase::Closing { since, .. } => Some(*since + LINGER),
            Phase::Buffering(b) => Some(b.since + self.lctx.request_timeout),
            Phase::Held(h) => Some(h.until),
            Phase::Queued(q) => Some(
                q.since
                    + self
                        .filtered
                        .as_ref()
                        .and_then(|f| f.connect_timeout())
                        .unwrap_or_else(|| {
                            ctx.upstreams
                                .pool(q.pool)
                                .map_or(Duration::from_secs(5), |p| p.connect_timeout())
                        }),
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
    pub(super) fn exchange_deadlines(
        &self,
        ex: &Exchange,
        ctx: &Ctx<'_>,
    ) -> [Option<(Instant, Fail)>; 7] {
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
        // A `timeout` filter overrides both, and the upstream's whole-request timeout.
        let filtered = self.filtered.as_deref();
        let rt = filtered.and_then(|f| f.upstream_timeout()).unwrap_or(rt);
        let ct = filtered.and_then(|f| f.connect_timeout()).unwrap_or(ct);
        let request_limit = filtered
            .and_then(|f| f.request_timeout())
            .or_else(|| pool.and_then(|p| p.request_timeout()));
        // Both only until the response head: a long download is not a slow upstream.
        let whole = request_limit.and_then(|t| {
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
        let read = (ex.connecting.is_none()
            && !ex.resp_done
            && ex.uin.len() < BUF_CAP
            && !ex.body_pipe.as_ref().is_some_and(SplicePipe::is_full))
        .then(|| {
            (
                ex.last_up_activity + rt,
                Fail::Upstream(504, "upstream read timed out"),
            )
        });
        // A client that stops reading would otherwise hold both connections forever.
        let send = ex
            .cout_stalled_since
            .filter(|_| {
                !self.cout.is_empty() || ex.body_pipe.as_ref().is_some_and(|p| !p.is_empty())
            })
            .map(|t| (t + request_timeout, Fail::ClientStalled));
        // Likewise the request body only times out while the proxy waits for it. Once the
        // response flows, the exchange is full duplex (a bidirectional gRPC stream): a client
        // that sends nothing for a while is not stalled while the upstream still answers.
        let body_since = if ex.resp.is_some() {
            ex.last_client_activity.max(ex.last_up_activity)
        } else {
            ex.last_client_activity
        };
        let body = (!ex.req_done && self.cin.is_empty() && ex.uout.len() < BUF_CAP).then(|| {
            (
                body_since + request_timeout,
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
    pub(super) fn update_timer(&mut self, ctx: &mut Ctx<'_>) {
        let want = self.desired_deadline(ctx);
        ctx.timers
            .set_no_later(&mut self.timer, want, TimerKey::Session(self.key));
    }
}
