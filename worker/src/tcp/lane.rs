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
    use crate::sock::{loopback_pair, splice, Ready};
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    /// Sends `data` through a lane starting with `early` in its buffer, then EOF; relays (with
    /// readiness forced each round, as spurious readiness is harmless) until the EOF has been
    /// carried over, within a deadline. Returns what arrived and whether the lane spliced.
    fn relay_through(early: &[u8], data: &[u8]) -> (Vec<u8>, bool) {
        let (mut src, mut sender) = loopback_pair();
        let (mut dst, mut receiver) = loopback_pair();
        let sent = data.to_vec();
        // The sender is dropped at the end: EOF, carried over as a write shutdown.
        let writer = std::thread::spawn(move || sender.write_all(&sent).expect("write"));
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            receiver.read_to_end(&mut got).expect("read");
            got
        });
        let mut buf = Buf::new();
        buf.extend(early);
        let mut lane = Lane::new(buf);
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
            lane.relay(&mut src, &mut dst).expect("relay");
        }
        writer.join().expect("writer");
        (reader.join().expect("reader"), lane.spliced())
    }

    #[test]
    fn bulk_moves_to_a_pipe_and_every_byte_arrives_in_order() {
        splice::set_limit(1000);
        let data = pattern(4 << 20);
        let (got, spliced) = relay_through(b"", &data);
        assert!(spliced, "4 MiB at once is bulk: the lane should splice");
        assert_eq!(got.len(), data.len());
        assert!(got == data, "bytes differ");
    }

    #[test]
    fn at_the_pipe_limit_the_buffer_goes_on() {
        splice::set_limit(0);
        let data = pattern(1 << 20);
        let (got, spliced) = relay_through(b"", &data);
        assert!(!spliced);
        assert!(got == data, "bytes differ");
    }

    #[test]
    fn bytes_read_before_the_pipe_go_out_first() {
        splice::set_limit(1000);
        // A tunnel after 101: the upgrade's first bytes were already read into the buffer.
        let data = pattern(2 << 20);
        let (got, spliced) = relay_through(b"early bytes;", &data);
        assert!(spliced);
        assert!(got.starts_with(b"early bytes;"));
        assert!(got[12..] == data[..], "bytes differ");
    }
}
