//! How a connection ends: the lingering close (write side shut, input discarded until the
//! client's FIN or the linger deadline) and the immediate one when the client asked for the
//! close itself (see `Phase::Closing`).

use super::*;

impl HttpSession {
    pub(super) fn start_closing(&mut self, now: Instant) {
        self.client.shutdown_write();
        self.phase = Phase::Closing {
            since: now,
            linger: true,
        };
    }

    /// The client asked for the close (`Connection: close`, or HTTP/1.0 without keep-alive),
    /// its request was read whole and nothing follows it: RFC 9112 9.6 forbids it to send
    /// more, so there is nothing to linger for. The socket closes (FIN, after every byte of
    /// the response) once the response is out, as nginx does: no shutdown, no wait for the
    /// client's FIN, no read of it (11 -> 9 system calls per connection).
    pub(super) fn close_after_response(&mut self, now: Instant) {
        self.phase = Phase::Closing {
            since: now,
            linger: false,
        };
    }

    pub(super) fn finish_close(&mut self, _ctx: &mut Ctx<'_>) -> Outcome {
        Outcome::Done
    }

    pub(super) fn step_closing(&mut self, ctx: &mut Ctx<'_>) -> Result<bool, Outcome> {
        if !self.cout.is_empty() {
            self.write_client(ctx)?;
        }
        if matches!(self.phase, Phase::Closing { linger: false, .. }) {
            // Plain socket: with `cout` empty every byte is in the kernel, which sends them
            // before the FIN.
            return if self.cout.is_empty() {
                Err(Outcome::Done)
            } else {
                Ok(false)
            };
        }
        match self.client.discard() {
            Ok(true) | Err(_) => Err(Outcome::Done),
            Ok(false) => Ok(false),
        }
    }
}
