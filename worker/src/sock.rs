//! Non-blocking socket plumbing shared by HTTP and TCP sessions: readiness as an event
//! reports it, a socket wrapper that remembers edge-triggered readiness ([`Sock`]), the client
//! or upstream end of a connection, plain or TLS ([`ClientSock`], in `client.rs`), and byte
//! buffers with a read cursor ([`Buf`], in `buf.rs`).
//!
//! mio is edge-triggered: a readiness event is reported once, so a side that stops reading
//! before `WouldBlock` (its buffer is full: backpressure) must remember that it is still
//! readable and try again when room frees up. `readable`/`writable` are exactly that memory;
//! they are cleared only by `WouldBlock`.

mod buf;
mod client;
pub mod pipe;
pub mod splice;
#[cfg(test)]
mod tests;

/// A connected loopback pair for tests of code that moves bytes between sockets: (the
/// proxy's non-blocking end, the peer's blocking end).
#[cfg(test)]
pub(crate) fn loopback_pair() -> (ClientSock, std::net::TcpStream) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let peer = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (ours, _) = listener.accept().expect("accept");
    ours.set_nonblocking(true).expect("nonblocking");
    let sock = Sock::new(TcpStream::from_std(ours), true);
    (ClientSock::Plain(sock), peer)
}

use std::fs::File;
use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;

use mio::net::TcpStream;
use nix::errno::Errno;
use nix::sys::sendfile::sendfile;
use nix::sys::socket::{sendmsg, MsgFlags, SockaddrStorage};

pub use buf::{Buf, BUF_CAP};
pub use client::{ClientSock, UpSock};

/// Scratch size for input that is thrown away (a closing connection).
const DISCARD_CHUNK: usize = 4 * 1024;

/// Readiness flags of one mio event, folded so an error or hang-up makes the next syscall run
/// (and report it) instead of being missed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ready {
    pub readable: bool,
    pub writable: bool,
    /// The peer closed its side (or the socket failed): whatever is queued ends in EOF.
    pub read_closed: bool,
}

impl Ready {
    pub fn from_event(e: &mio::event::Event) -> Self {
        Ready {
            readable: e.is_readable() || e.is_read_closed() || e.is_error(),
            writable: e.is_writable() || e.is_write_closed() || e.is_error(),
            read_closed: e.is_read_closed() || e.is_error(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadOutcome {
    pub bytes: usize,
    pub eof: bool,
}

#[derive(Debug)]
pub struct Sock {
    pub stream: TcpStream,
    pub readable: bool,
    pub writable: bool,
    /// The peer sent FIN (or we stopped reading for good).
    pub read_eof: bool,
    /// We sent FIN.
    pub write_shut: bool,
    /// An event said the peer closed: its EOF (or error) is queued behind any data, and no
    /// further edge will announce it, so a short read must not end the reading.
    peer_closed: bool,
}

impl Sock {
    pub fn new(stream: TcpStream, connected: bool) -> Self {
        Sock {
            stream,
            readable: connected,
            writable: connected,
            read_eof: false,
            write_shut: false,
            peer_closed: false,
        }
    }

    /// Fold in one readiness event.
    pub fn on_ready(&mut self, r: Ready) {
        self.readable |= r.readable;
        self.writable |= r.writable;
        self.peer_closed |= r.read_closed;
    }

    /// The socket as a reader for a library that reads on its own (rustls' `read_tls`), with
    /// the same readiness memory as [`fill`](Self::fill): a read that returns less than it was
    /// offered has emptied the receive queue and clears `readable`, so the caller does not
    /// pay a second `read` only to hear `WouldBlock`.
    pub fn drain_reader(&mut self) -> DrainReader<'_> {
        DrainReader { sock: self }
    }

    /// Read into `buf` until the socket is drained, EOF, or `buf` holds `cap` bytes.
    ///
    /// A read that returns less than it was offered has emptied the socket's receive queue:
    /// the socket is marked not readable without the extra `read` that would only say
    /// `WouldBlock`. Bytes arriving later raise a new edge-triggered event (nginx relies on
    /// the same rule).
    pub fn fill(&mut self, buf: &mut Buf, cap: usize) -> io::Result<ReadOutcome> {
        let mut out = ReadOutcome::default();
        while self.readable && !self.read_eof && buf.len() < cap {
            let want = cap - buf.len();
            let spare = buf.spare(want);
            let offered = spare.len();
            match self.stream.read(spare) {
                Ok(0) => {
                    self.read_eof = true;
                    out.eof = true;
                }
                Ok(n) => {
                    buf.filled(n);
                    out.bytes += n;
                    if n < offered && !self.peer_closed {
                        self.readable = false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if buf.is_empty() {
                        buf.clear();
                    }
                    return Err(e);
                }
            }
        }
        if buf.is_empty() {
            // Nothing arrived: do not keep a pooled buffer for an idle connection.
            buf.clear();
        }
        Ok(out)
    }

    /// Read and throw away (a closing connection's late input), until `WouldBlock` or EOF.
    pub fn discard(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; DISCARD_CHUNK];
        while self.readable && !self.read_eof {
            match self.stream.read(&mut chunk) {
                Ok(0) => self.read_eof = true,
                Ok(n) if n < chunk.len() && !self.peer_closed => self.readable = false,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(self.read_eof)
    }

    /// Write as much of `buf` as the socket takes. Returns the bytes written.
    pub fn flush(&mut self, buf: &mut Buf) -> io::Result<usize> {
        self.flush_with(buf, &[]).map(|(n, _)| n)
    }

    /// Write `buf`, then `tail`, until both are out or the socket is full: with a tail, one
    /// `sendmsg` of two slices, so bytes held in another buffer (a response body behind its
    /// head) leave without first being copied behind `buf`. Returns (bytes written in all, of
    /// which from `tail`).
    pub fn flush_with(&mut self, buf: &mut Buf, tail: &[u8]) -> io::Result<(usize, usize)> {
        let (mut total, mut from_tail) = (0, 0);
        while self.writable && (!buf.is_empty() || from_tail < tail.len()) {
            let rest = &tail[from_tail..];
            let pending = buf.len() + rest.len();
            let wrote = if rest.is_empty() {
                self.stream.write(buf.as_slice())
            } else {
                let slices = [IoSlice::new(buf.as_slice()), IoSlice::new(rest)];
                sendmsg::<SockaddrStorage>(
                    self.stream.as_raw_fd(),
                    &slices,
                    &[],
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(io::Error::from)
            };
            match wrote {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    // A short write means the send buffer is full: wait for the next edge
                    // instead of a `write` that would only say `WouldBlock`.
                    if n < pending {
                        self.writable = false;
                    }
                    let from_buf = n.min(buf.len());
                    buf.consume(from_buf);
                    from_tail += n - from_buf;
                    total += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok((total, from_tail))
    }

    /// sendfile(2): up to `count` bytes of `file` from `*offset` straight to the socket,
    /// without passing through user space; `*offset` moves past what was sent. Returns the
    /// bytes sent: 0 while the socket is not writable (wait for its event). A file that ends
    /// before `offset + count` is `UnexpectedEof`: it shrank after its length was announced.
    pub fn send_file(&mut self, file: &File, offset: &mut u64, count: usize) -> io::Result<usize> {
        let mut total = 0;
        while self.writable && total < count {
            let mut off = libc::off_t::try_from(*offset).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "file offset too large")
            })?;
            match sendfile(&self.stream, file, Some(&mut off), count - total) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file shrank while it was being sent",
                    ))
                }
                // Unlike `flush`, a short send is not taken to mean a full socket: it may be
                // the end of a shrunk file, and then no writable edge would ever come. The
                // next call tells (EAGAIN: full; 0: the file ended).
                Ok(n) => {
                    *offset += n as u64;
                    total += n;
                }
                Err(Errno::EAGAIN) => self.writable = false,
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(total)
    }

    pub fn shutdown_write(&mut self) {
        if !self.write_shut {
            self.write_shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
    }

    /// A pooled connection handed to a new exchange: writable at once, but not worth a read
    /// before the request is sent. Anything the upstream sent while the connection sat in the
    /// pool either was seen there (and the connection dropped) or raises an event that is
    /// still to be delivered, now to the new owner: the token stays the same.
    pub fn reuse(&mut self) {
        self.readable = false;
        self.writable = true;
        self.read_eof = false;
        self.write_shut = false;
        self.peer_closed = false;
    }

    /// Drive a non-blocking connect after an event: `Ok(true)` once established (readable and
    /// writable from then on, until `WouldBlock` says otherwise), `Ok(false)` still in
    /// progress (waiting for the next event).
    pub fn poll_connect(&mut self) -> io::Result<bool> {
        if !(self.writable || self.readable) {
            return Ok(false);
        }
        let connected = self.check_connected()?;
        self.readable = connected;
        self.writable = connected;
        Ok(connected)
    }

    /// For a non-blocking connect: `Ok(true)` once established, `Ok(false)` still in progress.
    pub fn check_connected(&mut self) -> io::Result<bool> {
        if let Some(e) = self.stream.take_error()? {
            return Err(e);
        }
        match self.stream.peer_addr() {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// See [`Sock::drain_reader`].
pub struct DrainReader<'a> {
    sock: &'a mut Sock,
}

impl Read for DrainReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.sock.stream.read(buf)?;
        if n > 0 && n < buf.len() && !self.sock.peer_closed {
            self.sock.readable = false;
        }
        Ok(n)
    }
}
