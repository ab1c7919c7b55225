//! One direction of a tunnel: the bytes read from one side and not yet written to the other,
//! in a buffer, or in a kernel pipe once the direction carries bulk data between two plain
//! sockets (`splice(2)`: the bytes never enter the worker).
//!
//! A direction starts copying through its buffer: most tunnels (WebSocket messages, a
//! database protocol's requests) move little at a time, and a pipe costs two descriptors. A
//! read that brings [`SPLICE_AFTER`] bytes at once marks bulk transfer (a download, a
//! backup stream) and the direction moves to a pipe for the rest of its life, as HAProxy's
//! `splice-auto` does; bytes already in the buffer go out first, so the order holds. TLS on
//! either side keeps the buffer (the bytes must pass through rustls).

use std::io;

use crate::sock::splice::SplicePipe;
use crate::sock::{Buf, ClientSock, BUF_CAP};

/// Bytes one read must bring for the direction to move to a pipe. A quarter of the buffer:
/// larger than any interactive message burst seen in practice, reached at once by a bulk
/// sender on loopback or a fast link.
const SPLICE_AFTER: usize = BUF_CAP / 4;

pub struct Lane {
    buf: Buf,
    pipe: Option<SplicePipe>,
}

impl Lane {
    /// A direction starting with the bytes already read into `buf` (a tunnel after 101).
    pub fn new(buf: Buf) -> Lane {
        Lane { buf, pipe: None }
    }

    /// The buffer bytes wait in before the upstream is connected (no pipe yet then).
    pub fn buf_mut(&mut self) -> &mut Buf {
        &mut self.buf
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty() && self.pipe.as_ref().is_none_or(SplicePipe::is_empty)
    }

    /// Moved by splice.
    #[cfg(test)]
    pub fn spliced(&self) -> bool {
        self.pipe.is_some()
    }

    /// Move bytes `src` -> lane -> `dst`; carry EOF over as a write shutdown once the lane is
    /// empty. Returns (bytes read from src, bytes written to dst).
    pub fn relay(
        &mut self,
        src: &mut ClientSock,
        dst: &mut ClientSock,
    ) -> io::Result<(usize, usize)> {
        let moved = match (&mut self.pipe, &mut *src, &mut *dst) {
            (Some(pipe), ClientSock::Plain(s), ClientSock::Plain(d)) => {
                // What was read before the pipe goes out before anything read into it.
                let mut written = d.flush(&mut self.buf)?;
                let mut read = 0;
                if self.buf.is_empty() {
                    read = pipe.fill(s)?.bytes;
                    written += pipe.flush(d)?;
                }
                (read, written)
            }
            _ => {
                let r = src.fill(&mut self.buf, BUF_CAP)?;
                let written = dst.flush(&mut self.buf)?;
                if r.bytes >= SPLICE_AFTER && self.pipe.is_none() {
                    self.start_splice(src, dst);
                }
                (r.bytes, written)
            }
        };
        if src.read_eof() && self.is_empty() {
            dst.shutdown_write();
        }
        Ok(moved)
    }

    /// Bulk data between two plain sockets: take a pipe (none when the worker is at its pipe
    /// limit or out of descriptors: the buffer goes on).
    fn start_splice(&mut self, src: &ClientSock, dst: &ClientSock) {
        if matches!((src, dst), (ClientSock::Plain(_), ClientSock::Plain(_))) {
            self.pipe = SplicePipe::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sock::{splice, Ready, Sock};
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    /// A connected loopback pair: (the proxy's non-blocking end, the peer's blocking end).
    fn pair() -> (ClientSock, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let peer = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (ours, _) = listener.accept().expect("accept");
        ours.set_nonblocking(true).expect("nonblocking");
        let sock = Sock::new(mio::net::TcpStream::from_std(ours), true);
        (ClientSock::Plain(sock), peer)
    }

    /// Relays until the source's EOF has been carried over (readiness forced each round, as
    /// spurious readiness is harmless), within a deadline.
    fn relay_all(lane: &mut Lane, src: &mut ClientSock, dst: &mut ClientSock) {
        let all = Ready {
            readable: true,
            writable: true,
            read_closed: false,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(src.read_eof() && lane.is_empty()) {
            assert!(Instant::now() < deadline, "relay did not finish");
            src.on_ready(all);
            dst.on_ready(all);
            lane.relay(src, dst).expect("relay");
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn bulk_moves_to_a_pipe_and_every_byte_arrives_in_order() {
        splice::set_limit(1000);
        let (mut src, mut sender) = pair();
        let (mut dst, mut receiver) = pair();
        let data = pattern(4 << 20);
        let sent = data.clone();
        let writer = std::thread::spawn(move || {
            sender.write_all(&sent).expect("write");
            // Dropped: EOF, carried over as a write shutdown.
        });
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            receiver.read_to_end(&mut got).expect("read");
            got
        });
        let mut lane = Lane::new(Buf::new());
        relay_all(&mut lane, &mut src, &mut dst);
        writer.join().expect("writer");
        let got = reader.join().expect("reader");
        assert!(
            lane.spliced(),
            "4 MiB at once is bulk: the lane should splice"
        );
        assert_eq!(got.len(), data.len());
        assert!(got == data, "bytes differ");
    }

    #[test]
    fn at_the_pipe_limit_the_buffer_goes_on() {
        splice::set_limit(0);
        let (mut src, mut sender) = pair();
        let (mut dst, mut receiver) = pair();
        let data = pattern(1 << 20);
        let sent = data.clone();
        let writer = std::thread::spawn(move || sender.write_all(&sent).expect("write"));
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            receiver.read_to_end(&mut got).expect("read");
            got
        });
        let mut lane = Lane::new(Buf::new());
        relay_all(&mut lane, &mut src, &mut dst);
        writer.join().expect("writer");
        assert!(!lane.spliced());
        assert!(reader.join().expect("reader") == data);
    }

    #[test]
    fn bytes_read_before_the_pipe_go_out_first() {
        splice::set_limit(1000);
        let (mut src, mut sender) = pair();
        let (mut dst, mut receiver) = pair();
        // A tunnel after 101: the upgrade's first bytes were already read into the buffer.
        let mut early = Buf::new();
        early.extend(b"early bytes;");
        let data = pattern(2 << 20);
        let sent = data.clone();
        let writer = std::thread::spawn(move || sender.write_all(&sent).expect("write"));
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            receiver.read_to_end(&mut got).expect("read");
            got
        });
        let mut lane = Lane::new(early);
        relay_all(&mut lane, &mut src, &mut dst);
        writer.join().expect("writer");
        let got = reader.join().expect("reader");
        assert!(got.starts_with(b"early bytes;"));
        assert!(got[12..] == data[..]);
    }
}
