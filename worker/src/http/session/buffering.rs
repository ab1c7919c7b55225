//! A route's `policies { buffer-requests #true; buffer-responses #true }`.
//!
//! - **buffer-requests**: the whole request body is read before an upstream connection is
//!   taken (nginx's `proxy_request_buffering`), so a slow uploader never holds an upstream
//!   connection or a place under `max-connections`, and a body held whole can be replayed when
//!   an idempotent request is retried. The body is bounded by the route's `max-body-size`
//!   (413 beyond it); a client that asked `Expect: 100-continue` is answered `100 Continue` by
//!   the proxy, and the upstream gets the body straight after the head, without `Expect`.
//! - **buffer-responses**: the response is read ahead of the client up to
//!   [`RESPONSE_BUFFER_CAP`] (nginx's `proxy_buffering`); once all of it is in memory the
//!   upstream connection goes back to the pool and the rest is written to the client like a
//!   local answer. Larger responses stream as usual past the bound.

use std::time::Instant;

use tracing::debug;
use zentinel_protocol::config::HeaderModifications;

use super::{HttpSession, Phase, Queued};
use crate::ctx::{Ctx, Outcome};
use crate::http::codec::{BodyError, BodyTracker};
use crate::http::header_policy;
use crate::sock::BUF_CAP;

/// How much of a response is read ahead of a slow client on a `buffer-responses` route. The
/// kernel already absorbs up to its socket buffers (4 MiB with Linux's default `tcp_wmem`
/// maximum), so a smaller bound would change nothing; nginx spools beyond its 64 KiB of
/// memory buffers to disk, which this build does not.
pub(super) const RESPONSE_BUFFER_CAP: usize = 8 * 1024 * 1024;
/// Exchanges of one worker reading ahead at once: bounds the worker's read-ahead memory to
/// 256 MiB. Past it, responses stream as on routes without `buffer-responses`.
const READ_AHEAD_SLOTS: usize = 32;

thread_local! {
    /// Read-ahead slots in use in this worker (one event-loop thread).
    static READ_AHEAD_IN_USE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// One exchange's permission to read its response ahead of the client; given back on drop.
#[derive(Debug)]
pub(super) struct ReadAhead(());

impl ReadAhead {
    /// A slot, when one is free.
    pub(super) fn take() -> Option<ReadAhead> {
        READ_AHEAD_IN_USE.with(|used| {
            let n = used.get();
            (n < READ_AHEAD_SLOTS).then(|| {
                used.set(n + 1);
                ReadAhead(())
            })
        })
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        READ_AHEAD_IN_USE.with(|used| used.set(used.get().saturating_sub(1)));
    }
}

/// A request whose body is being read whole (see the module docs).
pub(super) struct Buffering {
    pub(super) q: Queued,
    body: Vec<u8>,
    tracker: BodyTracker,
    /// The client must deliver the body within the listener's request timeout from here.
    pub(super) since: Instant,
}

/// A request body read whole, handed to the exchange with its finished tracker.
pub(super) struct Prebuffered {
    pub(super) body: Vec<u8>,
    pub(super) tracker: BodyTracker,
}

impl Prebuffered {
    /// The upstream head without `Expect` (the body follows at once; the proxy answered the
    /// client's `100 Continue` itself).
    pub(super) fn strip_expect(head: &mut Vec<u8>) {
        let mods = HeaderModifications {
            remove: vec!["Expect".to_owned()],
            ..HeaderModifications::default()
        };
        header_policy::apply(&mods, head, 0);
    }
}

impl HttpSession {
    /// Start reading `q`'s body whole before proxying it.
    pub(super) fn start_buffering(&mut self, q: Queued, now: Instant) {
        if q.req.expect_continue {
            self.cout.extend(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let tracker = BodyTracker::new(q.req.framing, self.body_limit(q.route));
        self.phase = Phase::Buffering(Box::new(Buffering {
            q,
            body: Vec::new(),
            tracker,
            since: now,
        }));
    }

    pub(super) fn step_buffering(&mut self, ctx: &mut Ctx<'_>) -> Result<bool, Outcome> {
        let mut progress = false;
        if !self.cout.is_empty() {
            progress |= self.write_client(ctx)? > 0;
        }
        if self.cin.len() < BUF_CAP {
            progress |= self.read_client(ctx, BUF_CAP)? > 0;
        }
        let Phase::Buffering(b) = &mut self.phase else {
            return Ok(false);
        };
        let mut complete = false;
        if !self.cin.is_empty() {
            match b.tracker.feed(self.cin.as_slice()) {
                Ok(p) => {
                    b.body.extend_from_slice(&self.cin.as_slice()[..p.consumed]);
                    self.cin.consume(p.consumed);
                    progress |= p.consumed > 0;
                    complete = p.complete;
                }
                Err(e) => {
                    let status = match e {
                        BodyError::TooLarge(_) => 413,
                        BodyError::InvalidChunk(_) => 400,
                    };
                    ctx.counters.c.client_errors += 1;
                    debug!(peer = %self.peer, status, "buffered request body refused");
                    let bytes =
                        b.q.errors
                            .response(status, true, b.q.req.is_head(), Some(&b.q.req));
                    self.respond_local(ctx, status, bytes, true);
                    return Ok(true);
                }
            }
        }
        if complete {
            let phase = std::mem::replace(&mut self.phase, Phase::ReadingHead);
            if let Phase::Buffering(b) = phase {
                let Buffering {
                    mut q,
                    body,
                    tracker,
                    ..
                } = *b;
                // The upstream's clocks start now: the client's pace is not the upstream's.
                q.since = ctx.now;
                q.prebuffered = Some(Box::new(Prebuffered { body, tracker }));
                self.try_proxy(q, ctx);
            }
            return Ok(true);
        }
        if self.cin.is_empty() && self.client.read_eof() {
            debug!(peer = %self.peer, "client closed inside a buffered request body");
            ctx.counters.c.client_errors += 1;
            return Err(Outcome::Done);
        }
        Ok(progress)
    }

    /// The body did not arrive within the request timeout: 408.
    pub(super) fn buffering_timed_out(&mut self, ctx: &mut Ctx<'_>) {
        let Phase::Buffering(b) = &self.phase else {
            return;
        };
        ctx.counters.c.client_errors += 1;
        debug!(peer = %self.peer, "request body not received in time");
        let bytes =
            b.q.errors
                .response(408, true, b.q.req.is_head(), Some(&b.q.req));
        self.respond_local(ctx, 408, bytes, true);
    }
}
