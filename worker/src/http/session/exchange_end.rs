//! An exchange's end: the upstream connection released (to its pool when reusable), then the
//! next request, the rest of the response as a local one, or the close.

use super::*;

impl HttpSession {
    pub(super) fn finish_exchange(&mut self, ctx: &mut Ctx<'_>) {
        self.log_access(ctx);
        self.end_exchange(ctx, false);
    }

    /// Release the exchange's upstream connection (to the pool when it is reusable). With
    /// `rest_pending`, response bytes are still in `cout`: they go out in `Phase::Local`, which
    /// writes the access-log line when they are gone.
    pub(super) fn end_exchange(&mut self, ctx: &mut Ctx<'_>, rest_pending: bool) {
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
                && ex.body_pipe.as_ref().is_none_or(SplicePipe::is_empty)
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
        let close = ex.close_client;
        // A plain client only: a TLS one still gets its close_notify sent and answered.
        let client_done = !ex.req.keep_alive
            && ex.req_done
            && self.cin.is_empty()
            && matches!(self.client, ClientSock::Plain(_));
        spare::recycle(ex);
        if rest_pending {
            self.phase = Phase::Local {
                close,
                since: ctx.now,
            };
        } else if close && client_done {
            self.close_after_response(ctx.now);
        } else if close {
            self.start_closing(ctx.now);
        } else {
            self.phase = Phase::ReadingHead;
            self.idle_since = ctx.now;
        }
    }
}
