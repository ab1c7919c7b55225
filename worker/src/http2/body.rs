//! Bodies between an HTTP/2 stream and a pipe, in both directions, for both sides of the
//! proxy: [`RecvBody`] moves DATA (and trailers) received on a stream into the pipe as an
//! HTTP/1.1 body (a client's request body, an upstream's response body); [`SendBody`] takes
//! the HTTP/1.1 body a session wrote into the pipe and sends it as DATA (and trailers) within
//! the peer's flow-control window (a response to a client, a request to an upstream).
//!
//! Backpressure both ways: DATA is taken from h2, and its window given back to the peer, only
//! while the pipe has room; bytes are taken from the pipe only as fast as the peer's window
//! lets them out.

use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use http::HeaderMap;

use super::chunked::{self, ChunkedDecoder};
use crate::sock::pipe::{SharedPipe, PIPE_CAP};

/// Decoded payload held for the peer's window: a DATA frame's worth or so.
const SEND_CHUNK: usize = 16 * 1024;

/// How the HTTP/1.1 body in a pipe is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (END_STREAM goes with the head).
    None,
    Length(u64),
    Chunked,
    /// Until the session closes its end.
    UntilClose,
}

/// A stream's incoming DATA on its way into a pipe.
pub struct RecvBody {
    recv: RecvStream,
    /// Written as chunks (each DATA frame one chunk, trailers the trailer section); else as
    /// it is (its length is known to the session from the head).
    chunked: bool,
    done: bool,
}

impl RecvBody {
    /// `done`: there is no body (END_STREAM came with the head).
    pub fn new(recv: RecvStream, chunked: bool, done: bool) -> Self {
        RecvBody {
            recv,
            chunked,
            done,
        }
    }

    /// All of it (and the last chunk) is in the pipe.
    pub fn done(&self) -> bool {
        self.done
    }

    /// Move what can move. Registers the connection's waker wherever it waits. Err: the stream
    /// failed (reset, connection lost).
    pub fn pump(&mut self, cx: &mut Context<'_>, pipe: &SharedPipe) -> Result<(), h2::Error> {
        while !self.done && pipe.borrow().to_session.len() < PIPE_CAP {
            match self.recv.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => {
                    // The window goes back as the bytes go into the bounded pipe.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    if data.is_empty() {
                        continue;
                    }
                    let mut p = pipe.borrow_mut();
                    if self.chunked {
                        chunked::encode(&data, &mut p.to_session);
                    } else {
                        p.to_session.extend(&data);
                    }
                    p.wake_session();
                }
                Poll::Ready(Some(Err(e))) => return Err(e),
                Poll::Ready(None) => {
                    if self.chunked {
                        let trailers = match self.recv.poll_trailers(cx) {
                            Poll::Ready(Ok(t)) => t,
                            Poll::Ready(Err(e)) => return Err(e),
                            Poll::Pending => return Ok(()),
                        };
                        let mut p = pipe.borrow_mut();
                        chunked::write_last_chunk(trailers.as_ref(), &mut p.to_session);
                        p.wake_session();
                    }
                    self.done = true;
                }
                Poll::Pending => return Ok(()),
            }
        }
        Ok(())
    }
}

/// Why a body cannot be sent on.
#[derive(Debug)]
pub enum SendError {
    /// The session's bytes are not the body its head announced (malformed chunked framing or
    /// trailers): the peer must not take it for a whole message.
    Malformed(&'static str),
    /// The session ended in the middle of the body.
    Truncated,
    /// The stream failed (reset by the peer, connection lost).
    Stream,
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Malformed(why) => f.write_str(why),
            SendError::Truncated => f.write_str("the body ended early"),
            SendError::Stream => f.write_str("the stream failed"),
        }
    }
}

/// The body a session writes into a pipe, on its way out as DATA.
pub struct SendBody {
    framing: Framing,
    /// `Length` bodies: bytes still to come.
    left: u64,
    chunked: ChunkedDecoder,
    /// Payload decoded from the pipe, waiting for send capacity.
    pending: BytesMut,
    trailers: Option<HeaderMap>,
    done: bool,
}

impl SendBody {
    pub fn new(framing: Framing) -> Self {
        SendBody {
            framing,
            left: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            chunked: ChunkedDecoder::default(),
            pending: BytesMut::new(),
            trailers: None,
            done: framing == Framing::None,
        }
    }

    /// All of it went out, END_STREAM included.
    pub fn done(&self) -> bool {
        self.done
    }

    /// Payload waits for the client's window (or h2's send buffer).
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Decode from the pipe and send within the window. `Ok(true)`: progress (run again).
    pub fn pump(
        &mut self,
        cx: &mut Context<'_>,
        pipe: &SharedPipe,
        send: &mut SendStream<Bytes>,
    ) -> Result<bool, SendError> {
        if self.done {
            return Ok(false);
        }
        let (ended, truncated) = self.refill(pipe)?;
        if ended && self.framing == Framing::Chunked && self.trailers.is_none() {
            self.trailers = self.chunked.trailers().map_err(SendError::Malformed)?;
        }
        if !self.pending.is_empty() {
            send.reserve_capacity(self.pending.len());
            let mut capacity = send.capacity();
            if capacity == 0 {
                match send.poll_capacity(cx) {
                    Poll::Ready(Some(Ok(n))) => capacity = n,
                    Poll::Ready(Some(Err(_))) | Poll::Ready(None) => return Err(SendError::Stream),
                    Poll::Pending => return Ok(false),
                }
            }
            if capacity == 0 {
                return Ok(false);
            }
            let n = capacity.min(self.pending.len());
            let chunk = self.pending.split_to(n).freeze();
            let last = ended && self.pending.is_empty() && self.trailers.is_none();
            send.send_data(chunk, last).map_err(|_| SendError::Stream)?;
            self.done = last;
            return Ok(true);
        }
        if ended {
            let sent = match self.trailers.take() {
                Some(t) => send.send_trailers(t),
                None => send.send_data(Bytes::new(), true),
            };
            sent.map_err(|_| SendError::Stream)?;
            self.done = true;
            return Ok(true);
        }
        if truncated {
            return Err(SendError::Truncated);
        }
        Ok(false)
    }

    /// Move what waits in the pipe into `pending` (a DATA frame's worth). Returns whether the
    /// body has ended, and whether the session ended before it did.
    fn refill(&mut self, pipe: &SharedPipe) -> Result<(bool, bool), SendError> {
        let mut p = pipe.borrow_mut();
        if self.pending.len() < SEND_CHUNK && !p.from_session.is_empty() {
            let input = p.from_session.as_slice();
            let room = SEND_CHUNK.saturating_sub(self.pending.len());
            let used = match self.framing {
                Framing::Length(_) => {
                    let n = input
                        .len()
                        .min(room)
                        .min(usize::try_from(self.left).unwrap_or(usize::MAX));
                    self.pending.extend_from_slice(&input[..n]);
                    self.left -= n as u64;
                    n
                }
                Framing::Chunked => self
                    .chunked
                    .decode(input, &mut self.pending, SEND_CHUNK)
                    .map_err(SendError::Malformed)?,
                Framing::UntilClose | Framing::None => {
                    let n = input.len().min(room);
                    self.pending.extend_from_slice(&input[..n]);
                    n
                }
            };
            p.from_session.consume(used);
            if used > 0 {
                p.wake_session();
            }
        }
        let drained = p.from_session_done && p.from_session.is_empty();
        let ended = match self.framing {
            Framing::Length(_) => self.left == 0,
            Framing::Chunked => self.chunked.done(),
            Framing::UntilClose | Framing::None => drained,
        };
        Ok((ended, drained && !ended))
    }
}
