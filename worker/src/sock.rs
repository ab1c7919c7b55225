//! Non-blocking socket plumbing shared by HTTP and TCP sessions: a byte buffer with a read
//! cursor, and a socket wrapper that remembers edge-triggered readiness.
//!
//! mio is edge-triggered: a readiness event is reported once, so a side that stops reading
//! before `WouldBlock` (its buffer is full: backpressure) must remember that it is still
//! readable and try again when room frees up. `readable`/`writable` are exactly that memory;
//! they are cleared only by `WouldBlock`.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Shutdown;

use mio::net::TcpStream;
use nix::errno::Errno;
use nix::sys::sendfile::sendfile;

use crate::ctx::Ready;
use crate::tls::TlsSock;

/// Cap of each direction's buffer: a full buffer stops reading from the source.
pub const BUF_CAP: usize = 64 * 1024;
/// Scratch size for input that is thrown away (a closing connection).
const DISCARD_CHUNK: usize = 4 * 1024;
/// Size of a buffer taken from the pool: a request or response head and a small body fit.
/// Buffers grow beyond it (up to the caller's cap) only while a large body streams.
const BLOCK: usize = 16 * 1024;
/// Free buffers the worker keeps for reuse: enough for the connections busy at any one
/// moment to take theirs without calling the allocator, small next to the 10 MiB idle budget.
const POOL_MAX_BYTES: usize = 2 * 1024 * 1024;

/// The worker's free buffers. Every buffer is fully initialized (its `len` is its size), so
/// reads go straight into it without zeroing or unsafe code, and without a copy.
///
/// A connection holds buffers only while bytes wait in them: an idle keep-alive connection
/// owns none, so its cost is the session struct and the kernel socket.
struct BufPool {
    free: Vec<Vec<u8>>,
    bytes: usize,
}

thread_local! {
    static POOL: RefCell<BufPool> = const {
        RefCell::new(BufPool { free: Vec::new(), bytes: 0 })
    };
}

fn pool_get() -> Vec<u8> {
    POOL.try_with(|p| {
        let mut p = p.borrow_mut();
        let v = p.free.pop()?;
        p.bytes -= v.len();
        Some(v)
    })
    .ok()
    .flatten()
    .unwrap_or_else(|| vec![0; BLOCK])
}

fn pool_put(v: Vec<u8>) {
    if v.len() < BLOCK {
        return;
    }
    // Past the budget the buffer is freed: after a burst the pool shrinks back by itself.
    let _ = POOL.try_with(|p| {
        let mut p = p.borrow_mut();
        if p.bytes + v.len() <= POOL_MAX_BYTES {
            p.bytes += v.len();
            p.free.push(v);
        }
    });
}

/// Bytes waiting to be written (or parsed): `data[start..end]`. The storage comes from the
/// worker's pool when the first byte arrives and goes back as soon as the buffer is empty.
#[derive(Debug, Default)]
pub struct Buf {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl Drop for Buf {
    fn drop(&mut self) {
        pool_put(std::mem::take(&mut self.data));
    }
}

impl Buf {
    pub fn new() -> Self {
        Buf::default()
    }
    pub fn len(&self) -> usize {
        self.end - self.start
    }
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
    pub fn as_slice(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }
    /// Storage held (0 when empty): what this buffer costs its connection.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.data.len()
    }
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.clear();
        }
    }
    pub fn extend(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.reserve(bytes.len());
        self.data[self.end..self.end + bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
    }
    /// Empty the buffer and give its storage back to the pool.
    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
        pool_put(std::mem::take(&mut self.data));
    }
    /// Move everything into a new buffer, leaving this one empty.
    pub fn take(&mut self) -> Buf {
        std::mem::take(self)
    }
    /// Make room for at least `extra` more bytes after `end`.
    fn reserve(&mut self, extra: usize) {
        if self.data.len() - self.end >= extra {
            return;
        }
        if self.data.is_empty() {
            self.data = pool_get();
        }
        // Slide the pending bytes to the front when that makes enough room.
        if self.start > 0 && self.data.len() - self.len() >= extra {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let need = self.end + extra;
        if need > self.data.len() {
            self.data.resize(need.max(self.data.len() * 2), 0);
        }
    }
    /// One `read` from `r` into spare room (at most `max` bytes, `max > 0`): what the reader
    /// returns, with the bytes appended. For readers that are not a socket (TLS plaintext).
    pub fn read_from<R: Read>(&mut self, r: &mut R, max: usize) -> io::Result<usize> {
        let spare = self.spare(max);
        let n = r.read(spare)?;
        self.end += n;
        Ok(n)
    }
    /// Spare room at the end, at most `max` bytes (and at least one when `max > 0`).
    fn spare(&mut self, max: usize) -> &mut [u8] {
        let room = self.data.len() - self.end;
        if room == 0 {
            self.reserve(max.min(BLOCK));
        }
        let room = self.data.len() - self.end;
        let end = self.end;
        &mut self.data[end..end + room.min(max)]
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
                    buf.end += n;
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
        let mut total = 0;
        while self.writable && !buf.is_empty() {
            match self.stream.write(buf.as_slice()) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    // A short write means the send buffer is full: wait for the next edge
                    // instead of a `write` that would only say `WouldBlock`.
                    if n < buf.len() {
                        self.writable = false;
                    }
                    buf.consume(n);
                    total += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(total)
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

/// The client side of an HTTP connection: a plain socket, or TLS over one. Plain connections
/// go straight to [`Sock`]; only TLS ones pay for the indirection. The proxy's end of an
/// upstream connection is the same thing (see [`UpSock`]).
#[derive(Debug)]
pub enum ClientSock {
    Plain(Sock),
    Tls(Box<TlsSock>),
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
        }
    }

    /// A pooled upstream connection handed to a new exchange (see [`Sock::reuse`]).
    pub fn reuse(&mut self) {
        match self {
            ClientSock::Plain(s) => s.reuse(),
            ClientSock::Tls(t) => t.reuse(),
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
        }
    }

    /// Over TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientSock::Tls(_))
    }

    #[inline]
    pub fn on_ready(&mut self, r: Ready) {
        match self {
            ClientSock::Plain(s) => s.on_ready(r),
            ClientSock::Tls(t) => t.on_ready(r),
        }
    }

    /// The client will send nothing more.
    #[inline]
    pub fn read_eof(&self) -> bool {
        match self {
            ClientSock::Plain(s) => s.read_eof,
            ClientSock::Tls(t) => t.read_eof(),
        }
    }

    /// More input may be had without waiting for an event.
    #[inline]
    pub fn readable(&self) -> bool {
        match self {
            ClientSock::Plain(s) => s.readable,
            ClientSock::Tls(t) => t.readable(),
        }
    }

    #[inline]
    pub fn fill(&mut self, buf: &mut Buf, cap: usize) -> io::Result<ReadOutcome> {
        match self {
            ClientSock::Plain(s) => s.fill(buf, cap),
            ClientSock::Tls(t) => t.fill(buf, cap),
        }
    }

    #[inline]
    pub fn flush(&mut self, buf: &mut Buf) -> io::Result<usize> {
        match self {
            ClientSock::Plain(s) => s.flush(buf),
            ClientSock::Tls(t) => t.flush(buf),
        }
    }

    pub fn discard(&mut self) -> io::Result<bool> {
        match self {
            ClientSock::Plain(s) => s.discard(),
            ClientSock::Tls(t) => t.discard(),
        }
    }

    /// Plain: FIN. TLS: close_notify, then FIN once it has left.
    pub fn shutdown_write(&mut self) {
        match self {
            ClientSock::Plain(s) => s.shutdown_write(),
            ClientSock::Tls(t) => t.shutdown_write(),
        }
    }

    /// The session is dropped: TLS gets a last chance to send pending bytes and close_notify.
    pub fn close(&mut self) {
        if let ClientSock::Tls(t) = self {
            t.close();
        }
    }

    pub fn stream_mut(&mut self) -> &mut TcpStream {
        match self {
            ClientSock::Plain(s) => &mut s.stream,
            ClientSock::Tls(t) => &mut t.sock.stream,
        }
    }

    /// The plain socket, for a tunnel (an upgraded connection). TLS connections cannot be
    /// tunnelled yet.
    pub fn into_plain(self) -> Result<Sock, Self> {
        match self {
            ClientSock::Plain(s) => Ok(s),
            tls => Err(tls),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buf_consume_and_extend() {
        let mut b = Buf::new();
        b.extend(b"hello world");
        b.consume(6);
        assert_eq!(b.as_slice(), b"world");
        b.extend(b"!");
        assert_eq!(b.as_slice(), b"world!");
        b.consume(100);
        assert!(b.is_empty());
    }

    #[test]
    fn empty_buffer_holds_no_storage() {
        let mut b = Buf::new();
        assert_eq!(b.capacity(), 0);
        b.extend(b"request");
        assert!(b.capacity() >= BLOCK);
        b.consume(3);
        assert!(b.capacity() >= BLOCK, "bytes still wait");
        b.consume(4);
        assert_eq!(b.capacity(), 0, "an idle connection keeps no buffer");
    }

    #[test]
    fn buffer_grows_past_a_block_and_keeps_order() {
        let mut b = Buf::new();
        let data: Vec<u8> = (0..(3 * BLOCK)).map(|i| (i % 251) as u8).collect();
        b.extend(&data[..1000]);
        b.consume(500);
        b.extend(&data[1000..]);
        assert_eq!(b.as_slice(), &data[500..]);
        assert!(b.capacity() >= data.len() - 500);
    }

    #[test]
    fn send_file_sends_the_range_and_notices_a_shrunk_file() {
        use std::io::Read as _;
        let path = std::env::temp_dir().join(format!("zentinel-sendfile-{}", std::process::id()));
        std::fs::write(&path, b"0123456789").unwrap();
        let file = File::open(&path).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let mut sock = Sock::new(TcpStream::from_std(server), true);
        let mut offset = 2;
        assert_eq!(sock.send_file(&file, &mut offset, 4).unwrap(), 4);
        assert_eq!(offset, 6);
        let mut got = [0u8; 4];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"2345");
        // Cut to 8 bytes under an open descriptor: asking for bytes 6..10 sends 6..8, then
        // says the file ended early instead of spinning on zero-byte sends.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(8)
            .unwrap();
        let err = sock.send_file(&file, &mut offset, 4).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(offset, 8);
        let mut got = [0u8; 2];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"67");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn short_read_marks_the_socket_drained_and_eof_is_still_seen() {
        use std::io::Write as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let mut sock = Sock::new(TcpStream::from_std(server), true);
        client.write_all(b"hello").unwrap();
        let mut buf = Buf::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while buf.is_empty() {
            assert!(std::time::Instant::now() < deadline, "no data arrived");
            sock.readable = true;
            sock.fill(&mut buf, BUF_CAP).unwrap();
        }
        assert_eq!(buf.as_slice(), b"hello");
        assert!(!sock.readable, "a short read means the queue is empty");
        // The peer closes with data queued: the event says so, and reading goes on to EOF
        // after the short read instead of waiting for an edge that will not come.
        client.write_all(b" world").unwrap();
        drop(client);
        let mut out = ReadOutcome::default();
        while !out.eof {
            assert!(std::time::Instant::now() < deadline, "EOF not seen");
            sock.on_ready(Ready {
                readable: true,
                writable: false,
                read_closed: true,
            });
            out = sock.fill(&mut buf, BUF_CAP).unwrap();
        }
        assert_eq!(buf.as_slice(), b"hello world");
        assert!(sock.read_eof);
    }
}
