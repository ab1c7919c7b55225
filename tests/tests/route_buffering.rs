//! `policies { buffer-requests #true; buffer-responses #true }` on real processes, with an
//! upstream capped at one connection so that who holds it is visible from outside: a slow
//! uploader on a buffer-requests route and a slow reader on a buffer-responses route leave the
//! connection free for others, while on a plain route they hold it.

use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};
use zentinel_tests::*;

fn config(port: u16, backend: &Backend) -> String {
    let target = backend.target();
    format!(
        r#"
system {{
    worker-threads 1
}}
listeners {{
    listener "http" {{
        address "127.0.0.1:{port}"
    }}
}}
routes {{
    route "unbuffered" {{
        priority "high"
        matches {{ host "plain.test"; }}
        upstream "one"
    }}
    route "uploads" {{
        matches {{ path-prefix "/in"; }}
        upstream "one"
        policies {{
            buffer-requests #true
            max-body-size 200000
        }}
    }}
    route "downloads" {{
        matches {{ path-prefix "/bytes"; }}
        upstream "one"
        policies {{ buffer-responses #true; }}
    }}
}}
upstreams {{
    upstream "one" {{
        target "{target}"
        connection-pool {{ max-connections 1; }}
        timeouts {{ connect-secs 1; }}
    }}
}}
"#
    )
}

fn start() -> (Backend, Zentinel) {
    let backend = Backend::start("buf");
    let z = Zentinel::start(&config(free_port(), &backend));
    (backend, z)
}

/// A client whose receive buffer is tiny from before it connects (so its window never grows),
/// leaving the kernel little room to absorb a response on its behalf.
fn slow_reader(addr: SocketAddr) -> HttpClient {
    let fd = socket::socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    socket::setsockopt(&fd, sockopt::RcvBuf, &4096).expect("SO_RCVBUF");
    let SocketAddr::V4(v4) = addr else {
        panic!("an IPv4 listener");
    };
    socket::connect(fd.as_raw_fd(), &SockaddrIn::from(v4)).expect("connect");
    HttpClient::from_stream(TcpStream::from(fd))
}

/// A GET on the one-connection upstream, answered within the connect timeout.
fn served_meanwhile(z: &Zentinel, host: &str) -> Response {
    let started = Instant::now();
    let mut c = z.client();
    c.send(
        format!("GET /bytes/10 HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let r = c.read_response();
    eprintln!("second client: {} after {:?}", r.status, started.elapsed());
    r
}

#[test]
fn a_slow_upload_does_not_hold_the_upstream_connection() {
    let (_backend, z) = start();
    let body = pattern(150_000);
    let mut uploader = z.client();
    let head = format!(
        "POST /in/upload HTTP/1.1\r\nHost: buf.test\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    uploader.send(head.as_bytes());
    uploader.send(&body[..100_000]);
    // The body is incomplete: the upstream connection is still free for someone else.
    let other = served_meanwhile(&z, "buf.test");
    assert_eq!(other.status, 200, "{}", other.body_str());
    uploader.send(&body[100_000..]);
    let r = uploader.read_response();
    assert_eq!(r.status, 200, "{}", r.body_str());
    let (len, sum) = parse_upload_answer(&r.body_str());
    assert_eq!(len, body.len() as u64);
    assert_eq!(sum, checksum_hex(checksum(&body)));

    // The same slow upload on a route without buffering holds the only connection: the other
    // request waits its connect timeout and gets 503.
    let mut holder = z.client();
    let head = format!(
        "POST /in/upload HTTP/1.1\r\nHost: plain.test\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    holder.send(head.as_bytes());
    holder.send(&body[..1000]);
    let waiting = served_meanwhile(&z, "plain.test");
    assert_eq!(waiting.status, 503, "the contrast: {}", waiting.body_str());
    holder.send(&body[1000..]);
    assert_eq!(holder.read_response().status, 200);
}

#[test]
fn expect_continue_is_answered_by_the_proxy_and_chunked_bodies_are_buffered() {
    let (_backend, z) = start();
    let mut c = z.client();
    c.send(b"POST /in/x HTTP/1.1\r\nHost: buf.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    let interim = c.read_response();
    assert_eq!(interim.status, 100, "the proxy asks for the body itself");
    c.send(b"hello");
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(parse_upload_answer(&r.body_str()).0, 5);

    c.send(
        b"POST /in/x HTTP/1.1\r\nHost: buf.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
    );
    c.send(b"4\r\ndefg\r\n0\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(parse_upload_answer(&r.body_str()).0, 7);
}

#[test]
fn a_buffered_body_over_the_limit_is_refused_before_any_upstream_request() {
    let (backend, z) = start();
    let (requests_before, _) = backend.stats();
    let mut c = z.client();
    // No Content-Length to refuse up front: a chunked body that grows past 200000 bytes.
    c.send(b"POST /in/x HTTP/1.1\r\nHost: buf.test\r\nTransfer-Encoding: chunked\r\n\r\n");
    let chunk = format!("{:x}\r\n{}\r\n", 50_000, "x".repeat(50_000));
    let mut status = None;
    for _ in 0..5 {
        if c.try_send(chunk.as_bytes()).is_err() {
            break;
        }
    }
    if let Ok(r) = c.try_read_response(true, false) {
        status = Some(r.status);
    }
    assert_eq!(status, Some(413));
    let (requests_after, _) = backend.stats();
    assert_eq!(
        requests_after, requests_before,
        "nothing reached the backend"
    );
}

#[test]
fn a_slow_reader_does_not_hold_the_upstream_connection() {
    let (_backend, z) = start();
    let size = 8_000_000;
    let mut reader = slow_reader(z.addr());
    reader.send(format!("GET /bytes/{size} HTTP/1.1\r\nHost: buf.test\r\n\r\n").as_bytes());
    // The proxy has read the whole response ahead of the reader: the connection is free.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut other = served_meanwhile(&z, "buf.test");
    while other.status != 200 && Instant::now() < deadline {
        // The reader's response may still be on its way in from the backend.
        other = served_meanwhile(&z, "buf.test");
    }
    assert_eq!(other.status, 200, "{}", other.body_str());
    let r = reader.read_response_hashed();
    r.assert_pattern_body(size);
    // And the reader's keep-alive connection goes on.
    let next = reader.get("/bytes/3", "buf.test");
    assert_eq!(next.status, 200);

    // Without buffer-responses the slow reader holds the connection to its response's end.
    let mut holder = slow_reader(z.addr());
    holder.send(format!("GET /bytes/{size} HTTP/1.1\r\nHost: plain.test\r\n\r\n").as_bytes());
    let waiting = served_meanwhile(&z, "plain.test");
    assert_eq!(waiting.status, 503, "the contrast: {}", waiting.body_str());
    holder.read_response_hashed().assert_pattern_body(size);
}
