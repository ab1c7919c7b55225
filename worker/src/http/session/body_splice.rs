//! A large response body moved by `splice(2)`: upstream socket -> pipe -> client socket, the
//! bytes never copied into the worker (see `sock::splice`).
//!
//! Only where nothing needs to see the bytes: both connections plain (TLS must encrypt them),
//! a Content-Length body (a chunked one is framed or decoded here), no compression filter, no
//! `buffer-responses` read-ahead, and at least [`SPLICE_BODY_MIN`] bytes to go. The head and
//! any body bytes read with it go out through `cout` first; the pipe starts once both are
//! gone, so the order holds. The body tracker counts bytes as they enter the pipe, so the
//! upstream is never read past the body's end.

use std::io;

use crate::http::codec::BodyTracker;
use crate::sock::splice::SplicePipe;
use crate::sock::{Buf, ClientSock, UpSock};

/// Body bytes left for a pipe to pay. Below it a pipe's own system calls (pipe2, fcntl and two
/// closes) stand against a copy of a few pages; the TCP tunnel measurements (see
/// `sock::splice`) showed the gain on bulk transfers.
pub(super) const SPLICE_BODY_MIN: u64 = 1024 * 1024;

/// Bytes one round moved: read from the upstream into the pipe, written from it to the client.
pub(super) struct Moved {
    pub read: usize,
    pub written: usize,
    /// The whole body has been read from the upstream.
    pub complete: bool,
}

/// A pipe for the rest of the body, when the rest may move by splice (see the module docs;
/// `copied` says whether something else must see the bytes: dechunking, compression,
/// read-ahead). None: the body goes on through the buffers.
pub(super) fn start(
    tracker: &BodyTracker,
    up: &UpSock,
    client: &ClientSock,
    uin: &Buf,
    cout: &Buf,
    copied: bool,
) -> Option<SplicePipe> {
    let plain = matches!((up, client), (ClientSock::Plain(_), ClientSock::Plain(_)));
    let large = tracker.length_left().is_some_and(|n| n >= SPLICE_BODY_MIN);
    if !plain || !large || copied || !uin.is_empty() || !cout.is_empty() {
        return None;
    }
    SplicePipe::new()
}

/// One round: upstream -> pipe (never past the body's end) -> client.
pub(super) fn pump(
    pipe: &mut SplicePipe,
    tracker: &mut BodyTracker,
    up: &mut UpSock,
    client: &mut ClientSock,
) -> io::Result<Moved> {
    let (ClientSock::Plain(src), ClientSock::Plain(dst)) = (up, client) else {
        return Err(io::ErrorKind::Unsupported.into());
    };
    let left = tracker.length_left().unwrap_or(0);
    let limit = usize::try_from(left).unwrap_or(usize::MAX);
    let read = if limit > 0 {
        pipe.fill_at_most(src, limit)?.bytes
    } else {
        0
    };
    let complete = tracker.passed(read as u64).complete || left == 0;
    let written = pipe.flush(dst)?;
    Ok(Moved {
        read,
        written,
        complete,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::codec::BodyFraming;
    use crate::sock::{loopback_pair as pair, splice, Ready};
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    #[test]
    fn a_spliced_body_stops_at_its_end_and_arrives_whole() {
        splice::set_limit(1000);
        const BODY: usize = 3 << 20;
        let (mut up, mut upstream) = pair();
        let (mut client, mut receiver) = pair();
        let body: Vec<u8> = (0..BODY).map(|i| (i % 253) as u8).collect();
        let sent = body.clone();
        // The body, then the next response on the same connection: not the body's.
        let writer = std::thread::spawn(move || {
            upstream.write_all(&sent).expect("write body");
            upstream
                .write_all(b"HTTP/1.1 200 OK\r\n")
                .expect("write next");
            upstream
        });
        let mut tracker = BodyTracker::new(BodyFraming::ContentLength(BODY as u64), u64::MAX);
        let mut pipe = start(&tracker, &up, &client, &Buf::new(), &Buf::new(), false)
            .expect("a plain 3 MiB body moves by splice");
        let reader = std::thread::spawn(move || {
            let mut got = vec![0u8; BODY];
            receiver.read_exact(&mut got).expect("read body");
            got
        });
        let all = Ready {
            readable: true,
            writable: true,
            read_closed: false,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut complete = false;
        while !(complete && pipe.is_empty()) {
            assert!(Instant::now() < deadline, "the body did not pass");
            up.on_ready(all);
            client.on_ready(all);
            complete |= pump(&mut pipe, &mut tracker, &mut up, &mut client)
                .expect("pump")
                .complete;
        }
        assert!(reader.join().expect("reader") == body, "body altered");
        drop(writer.join().expect("writer"));
        // What followed the body is still on the upstream connection.
        let mut next = Buf::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while next.len() < 17 {
            assert!(
                Instant::now() < deadline,
                "the next response's bytes are gone"
            );
            up.on_ready(all);
            up.fill(&mut next, 1024).expect("read next");
        }
        assert_eq!(next.as_slice(), b"HTTP/1.1 200 OK\r\n");
    }

    #[test]
    fn small_chunked_or_tls_bound_bodies_keep_the_buffers() {
        splice::set_limit(1000);
        let (up, _a) = pair();
        let (client, _b) = pair();
        let small = BodyTracker::new(BodyFraming::ContentLength(SPLICE_BODY_MIN - 1), u64::MAX);
        assert!(start(&small, &up, &client, &Buf::new(), &Buf::new(), false).is_none());
        let chunked = BodyTracker::new(BodyFraming::Chunked, u64::MAX);
        assert!(start(&chunked, &up, &client, &Buf::new(), &Buf::new(), false).is_none());
        let large = BodyTracker::new(BodyFraming::ContentLength(SPLICE_BODY_MIN), u64::MAX);
        assert!(start(&large, &up, &client, &Buf::new(), &Buf::new(), true).is_none());
        let mut waiting = Buf::new();
        waiting.extend(b"x");
        assert!(start(&large, &up, &client, &waiting, &Buf::new(), false).is_none());
        assert!(start(&large, &up, &client, &Buf::new(), &Buf::new(), false).is_some());
    }
}
