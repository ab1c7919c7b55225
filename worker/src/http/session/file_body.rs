//! The session's side of a static file's body (the file side is `http::files`): sendfile
//! on a plain socket, else a buffer at a time, within a budget per turn of the event loop.

use tracing::warn;

use super::*;

impl HttpSession {
    /// The client took `n` response bytes: its stall clock starts again.
    pub(super) fn local_progress(&mut self, n: usize, ctx: &mut Ctx<'_>) {
        if n > 0 {
            if let Phase::Local { since, .. } = &mut self.phase {
                *since = ctx.now;
            }
        }
    }

    /// Send the file body after its head (already written): sendfile on a plain socket, else
    /// a buffer at a time. At most one turn's budget of file bytes, then the session yields so
    /// that one fast download cannot hold the worker. Ok(true) once the whole body is out.
    pub(super) fn send_file_body(&mut self, ctx: &mut Ctx<'_>) -> Result<bool, Outcome> {
        let Some(mut body) = self.file_body.take() else {
            return Ok(true);
        };
        let r = self.send_file_turn(&mut body, ctx);
        if matches!(r, Ok(false)) {
            self.file_body = Some(body);
        }
        r
    }

    fn send_file_turn(&mut self, body: &mut FileBody, ctx: &mut Ctx<'_>) -> Result<bool, Outcome> {
        let plain = matches!(self.client, ClientSock::Plain(_)) && body.zero_copy();
        let mut budget = body.turn_budget(plain);
        loop {
            if body.is_done() {
                return Ok(true);
            }
            if budget == 0 {
                ctx.yield_turn(self.key);
                return Ok(false);
            }
            let used = match &mut self.client {
                ClientSock::Plain(sock) if plain => body.send_to(sock, budget),
                _ => body.fill(&mut self.cout, budget.min(BUF_CAP)),
            };
            let used = used.map_err(|e| {
                // The head promised a length (or a complete chunked body): the connection
                // cannot be reused, and the client must see the body cut short.
                warn!(peer = %self.peer, file = %body.path().display(), error = %e,
                    "static file body could not be sent whole: closing the connection");
                Outcome::Done
            })?;
            budget = budget.saturating_sub(used);
            if plain {
                count_out(&mut self.access, used, ctx);
                self.local_progress(used, ctx);
                if used == 0 {
                    // The socket is full: its writable event resumes the body.
                    return Ok(false);
                }
                continue;
            }
            let n = self.write_client(ctx)?;
            self.local_progress(n, ctx);
            if !self.cout.is_empty() {
                return Ok(false);
            }
        }
    }
}
