//! The proxy phase: one round of I/O moving the request body up and the response down
//! through bounded buffers, the response head checked and rewritten on the way (its end:
//! `exchange_end.rs`).

use super::access::note_upstream;
use super::failure::not_retried;
use super::*;
use crate::sock::pipe;

/// An established TLS upstream connection failed at the TLS layer (an alert such as a
/// refused client certificate, a bad record): the exchange's failure names no more than
/// "reset", so the TLS reason is logged here with the target.
pub(super) fn log_tls_failure(
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

/// Since when bytes waiting for a peer have found it taking none: None once nothing waits,
/// now when this write took some, else unchanged (`prev`, or now for the first stall).
fn stalled_since(prev: Option<Instant>, empty: bool, wrote: bool, now: Instant) -> Option<Instant> {
    if empty {
        None
    } else if wrote {
        Some(now)
    } else {
        Some(prev.unwrap_or(now))
    }
}

impl HttpSession {
    pub(super) fn step_proxy(&mut self, ctx: &mut Ctx<'_>) -> Result<bool, Outcome> {
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
            Err(Fail::SwitchToH2) => {
                self.switch_to_h2(ctx);
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

    /// One round of I/O for a proxied exchange. Ok(progress).
    pub(super) fn exchange_io(&mut self, ctx: &mut Ctx<'_>) -> Result<bool, Fail> {
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
        // An HTTP/2 stream the upstream did not process (refused, or beyond the last stream
        // of its GOAWAY): any method may go again, on a new connection, while its body so far
        // is held for replay.
        let refused_ok = !ex.retried && ex.replay.is_some() && !ex.got_upstream_bytes;
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
                    if up.negotiated_h2() {
                        // `http-version "auto"` and the target chose h2 by ALPN.
                        return Err(Fail::SwitchToH2);
                    }
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
                    ex.uout_stalled_since =
                        stalled_since(ex.uout_stalled_since, ex.uout.is_empty(), n > 0, now);
                }
                Err(_) if retry_ok && !ex.got_upstream_bytes => return Err(Fail::RetryFresh),
                Err(e) if refused_ok && pipe::is_refused(&e) => return Err(Fail::RetryFresh),
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

        // A large body's rest may move by splice once the head and the bytes read with it
        // are gone (see `body_splice`).
        if let Some(tracker) = ex.resp_body.as_ref() {
            if ex.body_pipe.is_none() && !ex.resp_done {
                let copied = ex.dechunk
                    || ex.read_ahead.is_some()
                    || self
                        .filtered
                        .as_mut()
                        .is_some_and(|f| f.compressing().is_some());
                ex.body_pipe =
                    body_splice::start(tracker, up, &self.client, &ex.uin, &self.cout, copied);
            }
        }

        // upstream -> uin (-> cout): read ahead of the client up to this.
        let read_cap = if ex.read_ahead.is_some() {
            RESPONSE_BUFFER_CAP
        } else {
            BUF_CAP
        };
        if !up.read_eof() && ex.uin.len() < read_cap && ex.body_pipe.is_none() {
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
                Err(e) if refused_ok && pipe::is_refused(&e) => return Err(Fail::RetryFresh),
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

        // Response head(s), written to the exchange's scratch vector (kept from exchange to
        // exchange, see `spare`), sized for a typical head at once.
        let mut head_out = std::mem::take(&mut ex.head_scratch);
        head_out.clear();
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
                    // A compressed body goes through decoded, then re-framed (filters).
                    let compress = self
                        .filtered
                        .as_mut()
                        .is_some_and(|f| f.start_compress(&h, ex.req.version));
                    ex.dechunk = compress || h.dechunks_for(ex.req.version);
                    // Without its chunked framing the body's end is the connection close.
                    ex.close_client = draining
                        || !ex.req.keep_alive
                        || !ex.req_done
                        || framing == BodyFraming::UntilClose
                        || (ex.dechunk && ex.req.version == HttpVersion::Http10);
                    let set_cookie = up_ids.and_then(|(pool, target)| {
                        ctx.upstreams
                            .pool(pool)
                            .and_then(|p| p.set_cookie(target, ex.cookie.as_deref()))
                    });
                    let rate = ex
                        .rate
                        .or_else(|| self.filtered.as_ref().and_then(|f| f.rate))
                        .map(|d| header_policy::rate_headers(&d));
                    // At most the correlation id, the sticky cookie and three rate headers:
                    // on the stack.
                    let mut extra: [(&[u8], &[u8]); 5] = [(b"", b""); 5];
                    let mut extras = 0;
                    // As upstream: the client learns the request's trace id (unless the
                    // upstream named one itself).
                    if !h
                        .headers()
                        .any(|f| f.name.eq_ignore_ascii_case(b"x-correlation-id"))
                    {
                        extra[extras] = (b"X-Correlation-Id", self.trace_id.as_bytes());
                        extras += 1;
                    }
                    if let Some(v) = &set_cookie {
                        extra[extras] = (b"Set-Cookie", v.as_bytes());
                        extras += 1;
                    }
                    for (name, value) in rate.iter().flatten() {
                        extra[extras] = (name.as_bytes(), value.as_bytes());
                        extras += 1;
                    }
                    let head_start = head_out.len();
                    codec::write_client_response_with(
                        &h,
                        ex.req.version,
                        ex.close_client,
                        &extra[..extras],
                        &mut head_out,
                    );
                    if let Some(p) = ex.route.and_then(|r| self.generation.router.policies(r)) {
                        header_policy::apply(&p.response_headers, &mut head_out, head_start);
                    }
                    if let Some(f) = self.filtered.as_mut() {
                        f.on_response_head(h.status, &mut head_out, head_start);
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
        ex.head_scratch = head_out;
        if ex.resp.as_ref().is_some_and(|h| h.status == 101) {
            return Ok(progress);
        }

        // upstream -> pipe -> client, for a body moving by splice.
        if let (Some(pipe), Some(tracker)) = (ex.body_pipe.as_mut(), ex.resp_body.as_mut()) {
            let moved = body_splice::pump(pipe, tracker, up, &mut self.client)
                .map_err(|_| Fail::ClientGone)?;
            if moved.read > 0 {
                ex.last_up_activity = now;
                progress = true;
            }
            if moved.written > 0 {
                count_out(&mut self.access, moved.written, ctx);
                progress = true;
            }
            ex.cout_stalled_since = stalled_since(
                ex.cout_stalled_since,
                pipe.is_empty(),
                moved.written > 0,
                now,
            );
            if pipe.is_full() {
                // Not reading: the upstream's silence is not its fault.
                ex.last_up_activity = now;
            }
            if moved.complete && !ex.resp_done {
                ex.resp_done = true;
                progress = true;
            }
            if !ex.resp_done && up.read_eof() {
                // Truncated body: the client must see the connection end.
                return Err(Fail::ClientGone);
            }
        }

        // uin -> response body -> cout (or straight to a plain client).
        let mut sent_direct = 0;
        if let Some(tracker) = ex.resp_body.as_mut().filter(|_| ex.body_pipe.is_none()) {
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
                        if let Some(z) = self.filtered.as_mut().and_then(|f| f.compressing()) {
                            // Flushed when nothing more is waiting: a slow stream is not held.
                            let flush = p.consumed == ex.uin.len() && !p.complete;
                            z.push(&ex.decoded, flush, &mut self.cout)
                                .map_err(|_| Fail::ClientGone)?;
                        } else if ex.dechunk {
                            self.cout.extend(&ex.decoded);
                        } else {
                            // Plain client: head and body leave in one writev, the body
                            // straight from `uin`; what the socket does not take waits in
                            // `cout`.
                            let body = &ex.uin.as_slice()[..p.consumed];
                            let (sent, from_body) = self
                                .client
                                .flush_with(&mut self.cout, body)
                                .map_err(|_| Fail::ClientGone)?;
                            self.cout.extend(&body[from_body..]);
                            sent_direct = sent;
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
            if ex.resp_done {
                if let Some(f) = self.filtered.as_mut() {
                    f.end_compress(&mut self.cout)
                        .map_err(|_| Fail::ClientGone)?;
                }
            }
        }

        // cout -> client.
        let mut sent = sent_direct;
        if !self.cout.is_empty() {
            sent += self
                .client
                .flush(&mut self.cout)
                .map_err(|_| Fail::ClientGone)?;
        }
        if sent > 0 || !self.cout.is_empty() {
            count_out(&mut self.access, sent, ctx);
            progress |= sent > 0;
            ex.cout_stalled_since =
                stalled_since(ex.cout_stalled_since, self.cout.is_empty(), sent > 0, now);
        }
        if ex.uin.len() >= read_cap {
            ex.last_up_activity = now;
        }

        let pipe_empty = ex.body_pipe.as_ref().is_none_or(SplicePipe::is_empty);
        if ex.resp_done && self.cout.is_empty() && pipe_empty && (ex.req_done || ex.close_client) {
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
}
