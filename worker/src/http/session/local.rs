//! Responses the proxy writes itself: queued, written, then the next request or the close.

use super::*;

impl HttpSession {
    /// Queue a response generated here. `close` ends the connection once it is written.
    pub(super) fn respond_local(
        &mut self,
        ctx: &mut Ctx<'_>,
        status: u16,
        bytes: Vec<u8>,
        close: bool,
    ) {
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

    pub(super) fn step_local(&mut self, ctx: &mut Ctx<'_>) -> Result<bool, Outcome> {
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
}
