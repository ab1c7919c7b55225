//! The HTTP/2 connection's socket as the `tokio::io` traits the `h2` crate reads and writes
//! through, without a runtime: `Pending` means "wait for the socket's next mio event", which
//! the event loop turns into another run of the connection (`http2::conn`). No waker is kept
//! for I/O: with edge-triggered readiness every event that could unblock a read or a write
//! reaches the connection anyway.
//!
//! The socket lives in a [`Wire`] the connection shares with [`H2Io`] (h2 owns the `H2Io`):
//! the connection folds mio's events into it, reads the [`FrameGuard`]'s verdict out of it,
//! and lingers on the socket once h2 is done with it.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::guard::FrameGuard;
use crate::sock::{Buf, ClientSock, Ready, BUF_CAP};

/// Plaintext read from the socket per fill: h2 parses frames out of it as they come.
const READ_CHUNK: usize = 32 * 1024;

/// The socket (plain or TLS) under an HTTP/2 connection, with what was read but not parsed
/// yet and what h2 wrote but the socket did not take yet.
pub struct Wire {
    pub sock: ClientSock,
    rbuf: Buf,
    wbuf: Buf,
    /// Readiness the event loop saw since the last read or write.
    pending: Ready,
    /// Counts the frames both ways and decides when the client floods (client connections;
    /// upstream connections trust their targets and have none).
    pub guard: Option<FrameGuard>,
    /// The time of the current run (the guard's rate windows).
    pub now: Instant,
}

pub type SharedWire = Rc<RefCell<Wire>>;

impl Wire {
    /// `read_ahead`: bytes already read from the socket (the connection preface, read while
    /// the connection still looked like HTTP/1).
    pub fn shared(
        sock: ClientSock,
        read_ahead: Buf,
        guard: Option<FrameGuard>,
        now: Instant,
    ) -> SharedWire {
        Rc::new(RefCell::new(Wire {
            sock,
            rbuf: read_ahead,
            wbuf: Buf::new(),
            pending: Ready::default(),
            guard,
            now,
        }))
    }

    /// The guard's verdict: the client flooded.
    pub fn verdict(&self) -> Option<super::guard::Refusal> {
        self.guard.as_ref().and_then(FrameGuard::verdict)
    }

    /// mio saw `r`: folded into the socket at the next read or write.
    pub fn on_ready(&mut self, r: Ready) {
        let had = self.pending;
        self.pending = Ready {
            readable: had.readable || r.readable,
            writable: had.writable || r.writable,
            read_closed: had.read_closed || r.read_closed,
        };
    }

    /// Fold the events seen since the last call into the socket's readiness memory.
    fn take_events(&mut self) {
        let r = std::mem::take(&mut self.pending);
        if r.readable || r.writable || r.read_closed {
            self.sock.on_ready(r);
        }
    }

    fn flush_sock(&mut self) -> io::Result<()> {
        self.take_events();
        self.sock.flush(&mut self.wbuf).map(|_| ())
    }

    /// After h2 closed the connection: write what is left, then read and drop whatever the
    /// client still sends. `true` once the client closed its side (or the socket failed).
    pub fn linger(&mut self) -> bool {
        let _ = self.flush_sock();
        self.rbuf.clear();
        self.sock.discard().unwrap_or(true)
    }
}

/// h2's handle on the [`Wire`].
pub struct H2Io(pub SharedWire);

impl AsyncRead for H2Io {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut wire = self.0.borrow_mut();
        let wire = &mut *wire;
        if wire.verdict().is_some() {
            // Refused: h2 gets nothing more to parse; the connection sends its GOAWAY.
            return Poll::Pending;
        }
        if wire.rbuf.is_empty() {
            wire.take_events();
            let got = wire.sock.fill(&mut wire.rbuf, READ_CHUNK)?;
            if got.bytes == 0 {
                // EOF is a read of nothing; otherwise the socket's next event brings more.
                return if got.eof || wire.sock.read_eof() {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                };
            }
        }
        let n = buf.remaining().min(wire.rbuf.len());
        // Every byte passes the guard before h2 sees it; a flood is cut at the frame that
        // crossed the line.
        let now = wire.now;
        let n = match wire.guard.as_mut() {
            Some(guard) => guard.inbound(&wire.rbuf.as_slice()[..n], now),
            None => n,
        };
        if n == 0 {
            return Poll::Pending;
        }
        buf.put_slice(&wire.rbuf.as_slice()[..n]);
        wire.rbuf.consume(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut wire = self.0.borrow_mut();
        if wire.wbuf.len() >= BUF_CAP {
            wire.flush_sock()?;
            if wire.wbuf.len() >= BUF_CAP {
                return Poll::Pending;
            }
        }
        let n = data.len().min(BUF_CAP - wire.wbuf.len());
        wire.wbuf.extend(&data[..n]);
        if let Some(guard) = wire.guard.as_mut() {
            guard.outbound(&data[..n]);
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut wire = self.0.borrow_mut();
        wire.flush_sock()?;
        if wire.wbuf.is_empty() && !wire.sock.write_pending() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.as_mut().poll_flush(cx) {
            Poll::Ready(Ok(())) => {
                self.0.borrow_mut().sock.shutdown_write();
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}
