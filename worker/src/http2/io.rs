//! The HTTP/2 connection's socket as the `tokio::io` traits the `h2` crate reads and writes
//! through, without a runtime: `Pending` means "wait for the socket's next mio event", which
//! the event loop turns into another run of the connection (`http2::conn`). No waker is kept
//! for I/O: with edge-triggered readiness every event that could unblock a read or a write
//! reaches the connection anyway.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::sock::{Buf, ClientSock, Ready, BUF_CAP};

/// Plaintext read from the socket per fill: h2 parses frames out of it as they come.
const READ_CHUNK: usize = 32 * 1024;

/// The socket (plain or TLS) under an HTTP/2 connection, with what was read but not parsed
/// yet and what h2 wrote but the socket did not take yet.
pub struct H2Io {
    sock: ClientSock,
    rbuf: Buf,
    wbuf: Buf,
    /// Readiness the event loop saw since the last read or write (the connection owns the
    /// socket only through h2, so events are handed over here).
    ready: Rc<Cell<Ready>>,
}

impl H2Io {
    /// `read_ahead`: bytes already read from the socket (the connection preface, read while
    /// the connection still looked like HTTP/1).
    pub fn new(sock: ClientSock, read_ahead: Buf, ready: Rc<Cell<Ready>>) -> Self {
        H2Io {
            sock,
            rbuf: read_ahead,
            wbuf: Buf::new(),
            ready,
        }
    }

    /// Fold the events seen since the last call into the socket's readiness memory.
    fn take_events(&mut self) {
        let r = self.ready.take();
        if r.readable || r.writable || r.read_closed {
            self.sock.on_ready(r);
        }
    }

    fn flush_sock(&mut self) -> io::Result<()> {
        self.take_events();
        self.sock.flush(&mut self.wbuf).map(|_| ())
    }
}

impl AsyncRead for H2Io {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.rbuf.is_empty() {
            this.take_events();
            let got = this.sock.fill(&mut this.rbuf, READ_CHUNK)?;
            if got.bytes == 0 {
                // EOF is a read of nothing; otherwise the socket's next event brings more.
                return if got.eof || this.sock.read_eof() {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                };
            }
        }
        let n = buf.remaining().min(this.rbuf.len());
        buf.put_slice(&this.rbuf.as_slice()[..n]);
        this.rbuf.consume(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.wbuf.len() >= BUF_CAP {
            this.flush_sock()?;
            if this.wbuf.len() >= BUF_CAP {
                return Poll::Pending;
            }
        }
        let n = data.len().min(BUF_CAP - this.wbuf.len());
        this.wbuf.extend(&data[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.flush_sock()?;
        if this.wbuf.is_empty() && !this.sock.write_pending() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.as_mut().poll_flush(cx) {
            Poll::Ready(Ok(())) => {
                self.get_mut().sock.shutdown_write();
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}
