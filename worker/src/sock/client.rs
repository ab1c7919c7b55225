//! The client or upstream end of a connection: a plain socket, or TLS over one.

use std::io::{self, Read};

use mio::net::TcpStream;

use super::pipe::PipeEnd;
use super::{Buf, ReadOutcome, Ready, Sock};
use crate::tls::TlsSock;

/// The client side of an HTTP connection: a plain socket, or TLS over one. Plain connections
/// go straight to [`Sock`]; only TLS ones pay for the indirection. The proxy's end of an
/// upstream connection is the same thing (see [`UpSock`]).
#[derive(Debug)]
pub enum ClientSock {
    Plain(Sock),
    Tls(Box<TlsSock>),
    /// One stream of an HTTP/2 connection, as an in-memory HTTP/1.1 connection (see
    /// [`super::pipe`]).
    Pipe(PipeEnd),
}

/// The proxy's end of an upstream connection: plain, or TLS where the proxy is the client
/// (`upstream { tls { ... } }`). It travels with the connection between the idle pool and the
/// sessions, so a pooled TLS connection keeps its session.
pub type UpSock = ClientSock;

impl ClientSock {
    /// A new upstream connection whose non-blocking connect was just started, with the TLS
    /// session to run over it once connected.
    pub fn connecting(stream: TcpStream, tls: Option<rustls::ClientConnection>) -> Self {
        let sock = Sock::new(stream, false);
        match tls {
            None => ClientSock::Plain(sock),
            Some(conn) => ClientSock::Tls(Box::new(TlsSock::client(sock, conn))),
        }
    }

    /// Upstream connections: drive the connect, then the TLS handshake (see
    /// [`TlsSock::poll_connect`]). `Ok(true)`: ready for the request.
    pub fn poll_connect(&mut self) -> io::Result<bool> {
        match self {
            ClientSock::Plain(s) => s.poll_connect(),
            ClientSock::Tls(t) => t.poll_connect(),
            ClientSock::Pipe(p) => p.poll_connect(),
        }
    }

    /// A pooled upstream connection handed to a new exchange (see [`Sock::reuse`]).
    pub fn reuse(&mut self) {
        match self {
            ClientSock::Plain(s) => s.reuse(),
            ClientSock::Tls(t) => t.reuse(),
            ClientSock::Pipe(_) => {}
        }
    }

    /// Readiness on a pooled upstream connection: whether it is still good for a request (the
    /// upstream sent nothing but, over TLS, handshake messages such as session tickets).
    pub fn idle_ok(&mut self) -> bool {
        match self {
            ClientSock::Plain(s) => {
                let mut byte = [0u8; 1];
                matches!(
                    s.stream.read(&mut byte),
                    Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted)
                )
            }
            ClientSock::Tls(t) => t.idle_ok(),
            ClientSock::Pipe(p) => !p.readable(),
        }
    }

    /// Over TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientSock::Tls(_))
    }

    /// A TLS client whose handshake chose HTTP/2 (ALPN `h2`).
    pub fn negotiated_h2(&self) -> bool {
        match self {
            ClientSock::Tls(t) => t.negotiated_h2(),
            ClientSock::Plain(_) | ClientSock::Pipe(_) => false,
        }
    }

    #[inline]
    pub fn on_ready(&mut self, r: Ready) {
        match self {
            ClientSock::Plain(s) => s.on_ready(r),
            ClientSock::Tls(t) => t.on_ready(r),
            // No socket: the other end wakes the session (see `wakeups`).
            ClientSock::Pipe(_) => {}
        }
    }

    /// The client will send nothing more.
    #[inline]
    pub fn read_eof(&self) -> bool {
        match self {
            ClientSock::Plain(s) => s.read_eof,
            ClientSock::Tls(t) => t.read_eof(),
            ClientSock::Pipe(p) => p.read_eof(),
        }
    }

    /// More input may be had without waiting for an event.
    #[inline]
    pub fn readable(&self) -> bool {
        match self {
            ClientSock::Plain(s) => s.readable,
            ClientSock::Tls(t) => t.readable(),
            ClientSock::Pipe(p) => p.readable(),
        }
    }

    #[inline]
    pub fn fill(&mut self, buf: &mut Buf, cap: usize) -> io::Result<ReadOutcome> {
        match self {
            ClientSock::Plain(s) => s.fill(buf, cap),
            ClientSock::Tls(t) => t.fill(buf, cap),
            ClientSock::Pipe(p) => p.fill(buf, cap),
        }
    }

    #[inline]
    pub fn flush(&mut self, buf: &mut Buf) -> io::Result<usize> {
        match self {
            ClientSock::Plain(s) => s.flush(buf),
            ClientSock::Tls(t) => t.flush(buf),
            ClientSock::Pipe(p) => p.flush(buf),
        }
    }

    /// Write `buf`, then `tail`, the tail not copied behind `buf` first (see
    /// [`Sock::flush_with`]); returns (bytes written in all, of which from `tail`). Only a
    /// plain socket does: TLS and HTTP/2 streams write nothing here and return (0, 0), so the
    /// caller queues the tail behind `buf` and both leave together (one TLS record, one DATA
    /// frame) at the next flush.
    pub fn flush_with(&mut self, buf: &mut Buf, tail: &[u8]) -> io::Result<(usize, usize)> {
        match self {
            ClientSock::Plain(s) => s.flush_with(buf, tail),
            ClientSock::Tls(_) | ClientSock::Pipe(_) => Ok((0, 0)),
        }
    }

    pub fn discard(&mut self) -> io::Result<bool> {
        match self {
            ClientSock::Plain(s) => s.discard(),
            ClientSock::Tls(t) => t.discard(),
            ClientSock::Pipe(p) => p.discard(),
        }
    }

    /// Plain: FIN. TLS: close_notify, then FIN once it has left.
    pub fn shutdown_write(&mut self) {
        match self {
            ClientSock::Plain(s) => s.shutdown_write(),
            ClientSock::Tls(t) => t.shutdown_write(),
            ClientSock::Pipe(p) => p.shutdown_write(),
        }
    }

    /// The session is dropped: TLS gets a last chance to send pending bytes and close_notify.
    pub fn close(&mut self) {
        match self {
            ClientSock::Plain(_) => {}
            ClientSock::Tls(t) => t.close(),
            ClientSock::Pipe(p) => p.close(),
        }
    }

    /// Take the socket out of the event loop (a pipe has none).
    pub fn deregister(&mut self, registry: &mio::Registry) {
        let stream = match self {
            ClientSock::Plain(s) => &mut s.stream,
            ClientSock::Tls(t) => &mut t.sock.stream,
            ClientSock::Pipe(_) => return,
        };
        let _ = registry.deregister(stream);
    }

    /// Bytes already taken (TLS: encrypted) still wait for the socket: a tunnel whose both
    /// directions ended is done only once they left, or the end of the stream and the
    /// close_notify would be lost.
    pub fn write_pending(&self) -> bool {
        match self {
            ClientSock::Plain(_) | ClientSock::Pipe(_) => false,
            ClientSock::Tls(t) => t.write_pending(),
        }
    }
}
