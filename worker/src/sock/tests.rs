//! Buffers (storage pooled, order kept) and the socket wrapper on real loopback sockets.

use std::fs::File;
use std::io;

use mio::net::TcpStream;

use super::buf::BLOCK;
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

/// The reader handed to rustls keeps the same memory: a short read clears `readable`, a
/// read that fills what was offered leaves it set (more may be queued).
#[test]
fn drain_reader_clears_readable_on_a_short_read_only() {
    use std::io::Write as _;
    let (mut ours, mut peer) = loopback_pair();
    let ClientSock::Plain(sock) = &mut ours else {
        unreachable!("loopback_pair is plain")
    };
    peer.write_all(&[7u8; 6000]).expect("write");
    let mut all = [0u8; 8192];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while sock.stream.peek(&mut all).unwrap_or(0) < 6000 {
        assert!(
            std::time::Instant::now() < deadline,
            "the bytes did not arrive"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let mut chunk = [0u8; 4096];
    assert_eq!(
        sock.drain_reader().read(&mut chunk).expect("first read"),
        4096
    );
    assert!(sock.readable, "a full read leaves the socket readable");
    let n = sock.drain_reader().read(&mut chunk).expect("second read");
    assert_eq!(n, 6000 - 4096);
    assert!(!sock.readable, "a short read means the queue is empty");
}

/// A head in the buffer and a body given as a tail leave in order; when the socket fills, the
/// counts say where the write stopped (inside the buffer or inside the tail), and the rest
/// goes out after the peer reads.
#[test]
fn flush_with_writes_buffer_then_tail_and_counts_a_short_write() {
    use std::io::Read as _;
    let (mut ours, mut peer) = loopback_pair();
    let ClientSock::Plain(sock) = &mut ours else {
        unreachable!("loopback_pair is plain")
    };
    let mut head = Buf::new();
    head.extend(b"HTTP/1.1 200 OK\r\n\r\n");
    let head_len = head.len();
    // Far more than a loopback socket's send buffer takes at once.
    let body: Vec<u8> = (0..(16 << 20)).map(|i| (i % 253) as u8).collect();
    let (total, from_body) = sock.flush_with(&mut head, &body).expect("first write");
    assert!(head.is_empty(), "the head left first");
    assert_eq!(total, head_len + from_body);
    assert!(
        from_body < body.len(),
        "the socket filled before the body was out"
    );
    assert!(
        !sock.writable,
        "a short write waits for the next writable edge"
    );

    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        peer.read_to_end(&mut got).expect("read");
        got
    });
    let mut sent = from_body;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while sent < body.len() {
        assert!(std::time::Instant::now() < deadline, "body not out in time");
        sock.writable = true;
        let mut empty = Buf::new();
        match sock.flush_with(&mut empty, &body[sent..]) {
            Ok((n, from_tail)) => {
                assert_eq!(n, from_tail, "nothing came from the empty buffer");
                sent += from_tail;
            }
            Err(e) => panic!("write: {e}"),
        }
        if !sock.writable {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    sock.shutdown_write();
    let got = reader.join().expect("reader");
    assert_eq!(&got[..head_len], b"HTTP/1.1 200 OK\r\n\r\n");
    assert!(
        got[head_len..] == body[..],
        "the body arrived whole and in order"
    );
}
