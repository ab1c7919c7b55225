//! The session's side of retries (the decisions are in `http::retry`): giving up an attempt,
//! waiting out the backoff on the session timer, and starting the next attempt on another
//! target. Every retry is logged at info level with structured fields (`attempt`,
//! `max_attempts`, `status` or `reason`, `backoff_ms`), which is how they are counted.

use tracing::{debug, info};

use super::*;

impl HttpSession {
    /// A fresh connection failed before any response byte: count it against its target and
    /// send the (idempotent, fully replayable) request to another target.
    pub(super) fn retry_elsewhere(&mut self, reason: &'static str, ctx: &mut Ctx<'_>) {
        let peer = self.peer;
        let Phase::Proxy(ex) = &mut self.phase else {
            return;
        };
        let Some((up, meta)) = ex.up.take() else {
            return;
        };
        let (pool, target) = (meta.pool, meta.target);
        ctx.discard_upstream(meta.join(up));
        failover::note_target_failure(
            ctx,
            pool,
            target,
            &mut ex.failed,
            peer,
            &reason,
            "upstream failed before responding; retrying on another target",
        );
        self.schedule_retry(None, reason, ctx);
    }

    /// The response head had a retryable status: drop the response (and its connection, whose
    /// body was not read) and try again, preferring a target not tried yet.
    pub(super) fn retry_status(&mut self, status: u16, ctx: &mut Ctx<'_>) {
        let Phase::Proxy(ex) = &mut self.phase else {
            return;
        };
        let Some((up, meta)) = ex.up.take() else {
            return;
        };
        if !ex.tried.contains(&meta.target) {
            ex.tried.push(meta.target);
        }
        ctx.discard_upstream(meta.join(up));
        self.schedule_retry(Some(status), "retryable status", ctx);
    }

    /// `timeout-ms` passed without a response head: retry when allowed, else the failure to
    /// answer with (a 504, which counts against the target).
    pub(super) fn attempt_timed_out(&mut self, ctx: &mut Ctx<'_>) -> Option<Fail> {
        let peer = self.peer;
        let Phase::Proxy(ex) = &mut self.phase else {
            return None;
        };
        let allowed = ex.replayable()
            && !ex.resp_started
            && retry::attempts_left(ex.retry.as_deref(), ex.attempts);
        if !allowed {
            return Some(Fail::Upstream(504, "upstream attempt timed out"));
        }
        let (up, meta) = ex.up.take()?;
        let (pool, target) = (meta.pool, meta.target);
        ctx.discard_upstream(meta.join(up));
        failover::note_target_failure(
            ctx,
            pool,
            target,
            &mut ex.failed,
            peer,
            &"no response within timeout-ms",
            "upstream attempt timed out; retrying on another target",
        );
        self.schedule_retry(None, "attempt timed out", ctx);
        None
    }

    /// The current attempt is given up (its connection already released): rewind the request
    /// and start the next attempt after the policy's backoff (at once without one).
    fn schedule_retry(&mut self, status: Option<u16>, reason: &'static str, ctx: &mut Ctx<'_>) {
        let peer = self.peer;
        let Phase::Proxy(ex) = &mut self.phase else {
            return;
        };
        ex.rewind_request();
        ex.connecting = None;
        ex.uin.clear();
        let wait = retry::delay(ex.retry.as_deref(), ex.attempts);
        let name = ctx.upstreams.pool(ex.pool).map_or("?", |p| p.name.as_str());
        info!(
            %peer,
            upstream = name,
            method = %ex.req.method,
            path = ex.req.path(),
            attempt = ex.attempts + 1,
            max_attempts = ex.retry.as_ref().map_or(2, |r| r.max_attempts),
            status = status.unwrap_or(0),
            reason,
            backoff_ms = wait.map_or(0, crate::timers::millis),
            "retrying request"
        );
        match wait {
            Some(d) => ex.retry_at = Some(ctx.now + d),
            None => self.resume_retry(ctx),
        }
    }

    /// Start the next attempt: a target neither failed nor tried if any is left, else one of
    /// the tried ones again. No target at all: 502 (the discarded responses are gone).
    pub(super) fn resume_retry(&mut self, ctx: &mut Ctx<'_>) {
        let peer = self.peer;
        let token = tokens::session(self.key, Side::Upstream);
        let Phase::Proxy(ex) = &mut self.phase else {
            return;
        };
        ex.retry_at = None;
        ex.attempts += 1;
        let pool = ex.pool;
        let pick = pick_request(peer, &ex.cookie);
        let mut skip = ex.failed.clone();
        skip.extend(ex.tried.iter().filter(|t| !ex.failed.contains(t)));
        let fresh = failover::connect_next(ctx, pool, &mut skip, token, peer, &pick);
        // Targets whose connect failed just now stay excluded.
        for t in skip {
            if !ex.tried.contains(&t) && !ex.failed.contains(&t) {
                ex.failed.push(t);
            }
        }
        let conn = match fresh {
            Ok(c) => Ok(c),
            Err(_) => failover::connect_next(ctx, pool, &mut ex.failed, token, peer, &pick),
        };
        match conn {
            Ok(c) => {
                debug!(%peer, upstream = %c.addr, attempt = ex.attempts, "request sent again");
                ex.attach(c, ctx.now);
            }
            Err(_) => self.fail(Fail::Exhausted, ctx),
        }
    }

    pub(super) fn retry_fresh(&mut self, ctx: &mut Ctx<'_>) {
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
}
