//! When an exchange cannot go on: a failed connect fails over to another target, anything
//! else becomes an error response (when nothing was sent yet) or an abort; counters and
//! passive health learn of it here.

use super::*;

/// A failure that may not be retried: `RetryElsewhere` stays one (so `fail` still blames the
/// target) but is answered with a 502 instead of being sent again.
pub(super) fn not_retried(f: Fail) -> Fail {
    match f {
        Fail::RetryElsewhere(r) => Fail::NotRetried(r),
        other => other,
    }
}

impl HttpSession {
    /// A connect failure moves on to another target; anything else ends the exchange.
    pub(super) fn handle_fail(&mut self, f: Fail, ctx: &mut Ctx<'_>) {
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
    pub(super) fn failover(
        &mut self,
        error: &dyn std::fmt::Display,
        ctx: &mut Ctx<'_>,
    ) -> Option<Fail> {
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
    pub(super) fn fail(&mut self, f: Fail, ctx: &mut Ctx<'_>) {
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
            Fail::ClientGone | Fail::RetryFresh | Fail::SwitchToH2 => {
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
}
