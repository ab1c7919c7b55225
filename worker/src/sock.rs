//! Non-blocking socket plumbing shared by HTTP and TCP sessions: a byte buffer with a read
//! cursor, and a socket wrapper that remembers edge-triggered readiness.
//!
//! mio is edge-triggered: a readiness event is reported once, so a side that stops reading
//! before `WouldBlock` (its buffer is full: backpressure) must remember that it is still
//! readable and try again when room frees up. `readable`/`writable` are exactly that memory;
//! they are cleared only by `WouldBlock`.

use std::io::{self, Read, Write};
use std::net::Shutdown;

use mio::net::TcpStream;

/// Cap of each direction's buffer: a full buffer stops reading from the source.
pub const BUF_CAP: usize = 64 * 1024;
const READ_CHUNK: usize = 16 * 1024;

#[derive(Debug, Default)]
pub struct Buf {
    data: Vec<u8>,
    start: usize,
}

impl Buf {
    pub fn new() -> Self {
        Buf::default()
    }
    pub fn len(&self) -> usize {
        self.data.len() - self.start
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn as_slice(&self) -> &[u8] {
        &self.data[self.start..]
    }
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.data.len());
        if self.start == self.data.len() {
            self.data.clear();
            self.start = 0;
        }
    }
    pub fn extend(&mut self, bytes: &[u8]) {
        self.compact_if_useful();
        self.data.extend_from_slice(bytes);
    }
    pub fn clear(&mut self) {
        self.data.clear();
        self.start = 0;
    }
    /// Move everything into a new buffer, leaving this one empty.
    pub fn take(&mut self) -> Buf {
        std::mem::take(self)
    }
    fn compact_if_useful(&mut self) {
        if self.start > 0 && self.start >= self.data.len() / 2 {
            self.data.drain(..self.start);
            self.start = 0;
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
}

impl Sock {
    pub fn new(stream: TcpStream, connected: bool) -> Self {
        Sock {
            stream,
            readable: connected,
            writable: connected,
            read_eof: false,
            write_shut: false,
        }
    }

    /// Read into `buf` until `WouldBlock`, EOF, or `buf` holds `cap` bytes.
    pub fn fill(&mut self, buf: &mut Buf, cap: usize) -> io::Result<ReadOutcome> {
        let mut out = ReadOutcome::default();
        let mut chunk = [0u8; READ_CHUNK];
        while self.readable && !self.read_eof && buf.len() < cap {
            let want = (cap - buf.len()).min(READ_CHUNK);
            match self.stream.read(&mut chunk[..want]) {
                Ok(0) => {
                    self.read_eof = true;
                    out.eof = true;
                }
                Ok(n) => {
                    buf.extend(&chunk[..n]);
                    out.bytes += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Read and throw away (a closing connection's late input), until `WouldBlock` or EOF.
    pub fn discard(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; READ_CHUNK];
        while self.readable && !self.read_eof {
            match self.stream.read(&mut chunk) {
                Ok(0) => self.read_eof = true,
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

    pub fn shutdown_write(&mut self) {
        if !self.write_shut {
            self.write_shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
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
}
