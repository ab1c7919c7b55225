//! Unit tests of the HTTP codec: request validation (smuggling vectors, limits), response
//! framing, head rewriting (exact bytes) and incremental body tracking.

use super::*;
use proptest::prelude::*;
use zentinel_protocol::config::{Limits, StaticResponse};

fn limits() -> Limits {
    Limits {
        max_header_size_bytes: 8192,
        max_header_count: 100,
        max_body_size_bytes: 1_000_000,
        ..Limits::default()
    }
}

fn req(buf: &[u8]) -> RequestHead {
    match parse_request(buf, &limits()) {
        Ok(Parsed::Complete(h)) => h,
        other => panic!(
            "expected a complete request for {:?}, got {other:?}",
            String::from_utf8_lossy(buf)
        ),
    }
}

fn req_err(buf: &[u8]) -> RequestError {
    req_err_with(buf, &limits())
}

fn req_err_with(buf: &[u8], l: &Limits) -> RequestError {
    match parse_request(buf, l) {
        Err(e) => e,
        other => panic!(
            "expected an error for {:?}, got {other:?}",
            String::from_utf8_lossy(buf)
        ),
    }
}

fn status_of(buf: &[u8]) -> u16 {
    req_err(buf).status()
}

fn resp(buf: &[u8], head: bool) -> ResponseHead {
    match parse_response(buf, head, 16 * 1024) {
        Ok(Parsed::Complete(h)) => h,
        other => panic!(
            "expected a complete response for {:?}, got {other:?}",
            String::from_utf8_lossy(buf)
        ),
    }
}

fn resp_err(buf: &[u8]) -> ResponseError {
    match parse_response(buf, false, 16 * 1024) {
        Err(e) => e,
        other => panic!(
            "expected an error for {:?}, got {other:?}",
            String::from_utf8_lossy(buf)
        ),
    }
}

fn get_with(headers: &str) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nHost: example.com\r\n{headers}\r\n").into_bytes()
}

fn post_with(headers: &str) -> Vec<u8> {
    format!("POST /upload HTTP/1.1\r\nHost: example.com\r\n{headers}\r\n").into_bytes()
}

// ---------------------------------------------------------------------------------------------
// parse_request: basics

#[test]
fn simple_get() {
    let buf = b"GET /a/b?x=1 HTTP/1.1\r\nHost: Example.COM:8080\r\nUser-Agent: t\r\n\r\n";
    let h = req(buf);
    assert_eq!(h.method, "GET");
    assert_eq!(h.target(), "/a/b?x=1");
    assert_eq!(h.path(), "/a/b");
    assert_eq!(h.version, HttpVersion::Http11);
    assert_eq!(h.head_len, buf.len());
    assert_eq!(h.framing, BodyFraming::Empty);
    assert!(h.keep_alive);
    assert_eq!(h.host.as_deref(), Some("example.com"));
    assert!(!h.expect_continue);
    assert_eq!(h.upgrade, None);
    assert_eq!(h.headers().len(), 2);
    let first = h.headers().next().expect("a header");
    assert_eq!(first.name, b"Host");
    assert_eq!(first.value, b"Example.COM:8080");
    assert!(!h.is_head());
}

#[test]
fn every_proper_prefix_is_partial() {
    let buf = b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n";
    for n in 0..buf.len() {
        assert_eq!(
            parse_request(&buf[..n], &limits()).map(|p| matches!(p, Parsed::Partial)),
            Ok(true),
            "prefix of {n} bytes"
        );
    }
    assert_eq!(req(buf).framing, BodyFraming::ContentLength(3));
}

#[test]
fn pipelined_requests_are_parsed_one_after_another() {
    let first = b"POST /one HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n".to_vec();
    let second = b"GET /two HTTP/1.1\r\nHost: b\r\n\r\n".to_vec();
    let mut buf = first.clone();
    buf.extend_from_slice(b"hello");
    buf.extend_from_slice(&second);
    let h1 = req(&buf);
    assert_eq!(h1.head_len, first.len());
    assert_eq!(h1.framing, BodyFraming::ContentLength(5));
    let mut body = BodyTracker::new(h1.framing, 100);
    let p = body.feed(&buf[h1.head_len..]).unwrap();
    assert_eq!(
        p,
        BodyProgress {
            consumed: 5,
            complete: true
        }
    );
    let rest = &buf[h1.head_len + 5..];
    let h2 = req(rest);
    assert_eq!(h2.path(), "/two");
    assert_eq!(h2.host.as_deref(), Some("b"));
    assert_eq!(h2.head_len, second.len());
}

#[test]
fn leading_empty_lines_are_skipped() {
    let buf = b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let h = req(buf);
    assert_eq!(h.head_len, buf.len());
    assert_eq!(h.method, "GET");
    assert!(matches!(
        parse_request(b"\r\n", &limits()),
        Ok(Parsed::Partial)
    ));
    assert!(matches!(
        parse_request(b"\r\n\r", &limits()),
        Ok(Parsed::Partial)
    ));
}

#[test]
fn content_length_zero_is_empty_framing() {
    assert_eq!(
        req(&post_with("Content-Length: 0\r\n")).framing,
        BodyFraming::Empty
    );
    assert_eq!(
        req(&post_with("Content-Length: 000\r\n")).framing,
        BodyFraming::Empty
    );
    assert_eq!(
        req(&post_with("Content-Length: 12\r\n")).framing,
        BodyFraming::ContentLength(12)
    );
    assert_eq!(
        req(&post_with("Transfer-Encoding: chunked\r\n")).framing,
        BodyFraming::Chunked
    );
}

#[test]
fn path_forms() {
    let p = |target: &str| {
        let buf = format!("OPTIONS {target} HTTP/1.1\r\nHost: h\r\n\r\n");
        req(buf.as_bytes()).path().to_string()
    };
    assert_eq!(p("/"), "/");
    assert_eq!(p("/a?b#c"), "/a");
    assert_eq!(p("/a#frag"), "/a");
    assert_eq!(p("*"), "*");
    assert_eq!(p("http://h"), "/");
    assert_eq!(p("http://h?q=1"), "/");
    assert_eq!(p("http://h:81/x/y?q=1"), "/x/y");
    assert_eq!(p("HTTPS://h/z"), "/z");
}

#[test]
fn absolute_form_takes_host_from_target() {
    let h = req(b"GET http://Backend.Example:8080/x?y HTTP/1.1\r\nHost: other.example\r\n\r\n");
    assert_eq!(h.host.as_deref(), Some("backend.example"));
    assert_eq!(h.path(), "/x");
    assert_eq!(h.target(), "http://Backend.Example:8080/x?y");
    let h = req(b"GET http://[2001:DB8::1]:8080/ HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(h.host.as_deref(), Some("[2001:db8::1]"));
    // Missing Host on HTTP/1.1 stays an error even with an absolute-form target.
    assert_eq!(status_of(b"GET http://a/ HTTP/1.1\r\n\r\n"), 400);
    assert_eq!(
        status_of(b"GET http://user@a/ HTTP/1.1\r\nHost: a\r\n\r\n"),
        400
    );
    assert_eq!(status_of(b"GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    assert_eq!(status_of(b"GET ftp://a/x HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
}

#[test]
fn invalid_targets_and_connect_are_refused() {
    assert_eq!(status_of(b"GET * HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    assert_eq!(status_of(b"GET foo HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    assert_eq!(
        status_of(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"),
        400
    );
    assert_eq!(status_of(b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    assert_eq!(status_of(b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n"), 400);
    assert_eq!(status_of(b"G\x01T / HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    assert_eq!(status_of(b"GET /a\x7fb HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
}

#[test]
fn host_normalization() {
    let host = |v: &str| {
        let buf = format!("GET / HTTP/1.1\r\nHost: {v}\r\n\r\n");
        req(buf.as_bytes()).host
    };
    assert_eq!(host("EXAMPLE.com").as_deref(), Some("example.com"));
    assert_eq!(host("example.com:80").as_deref(), Some("example.com"));
    assert_eq!(host("example.com:").as_deref(), Some("example.com"));
    assert_eq!(host("[::1]").as_deref(), Some("[::1]"));
    assert_eq!(
        host("[::FFFF:1.2.3.4]:443").as_deref(),
        Some("[::ffff:1.2.3.4]")
    );
    assert_eq!(host("10.0.0.1:8080").as_deref(), Some("10.0.0.1"));
    assert_eq!(
        host("  padded.example  ").as_deref(),
        Some("padded.example")
    );
    for bad in [
        "a b",
        "a/b",
        "user@a",
        "a:8x",
        "[::1",
        "[::1]x",
        "[zz]",
        ":80",
        "a:1:2",
        "\u{e9}.fr",
    ] {
        let buf = format!("GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n");
        assert_eq!(status_of(buf.as_bytes()), 400, "Host: {bad}");
    }
}

#[test]
fn host_rules() {
    assert_eq!(status_of(b"GET / HTTP/1.1\r\n\r\n"), 400);
    assert_eq!(status_of(b"GET / HTTP/1.1\r\nHost:\r\n\r\n"), 400);
    assert_eq!(
        status_of(b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"),
        400
    );
    assert_eq!(
        status_of(b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n"),
        400
    );
    let h = req(b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(h.host, None);
    assert_eq!(h.version, HttpVersion::Http10);
    assert_eq!(req(b"GET / HTTP/1.0\r\nHost:\r\n\r\n").host, None);
}

// ---------------------------------------------------------------------------------------------
// parse_request: smuggling vectors

#[test]
fn content_length_with_transfer_encoding_is_refused() {
    assert_eq!(
        status_of(&post_with(
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"
        )),
        400
    );
    assert_eq!(
        status_of(&post_with(
            "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n"
        )),
        400
    );
    assert_eq!(
        status_of(&post_with(
            "Transfer-Encoding: chunked\r\nContent-Length: 0\r\n"
        )),
        400
    );
}

#[test]
fn content_length_values() {
    assert_eq!(
        req(&post_with("Content-Length: 5\r\nContent-Length: 5\r\n")).framing,
        BodyFraming::ContentLength(5)
    );
    assert_eq!(
        req(&post_with("Content-Length: 5, 5\r\n")).framing,
        BodyFraming::ContentLength(5)
    );
    assert_eq!(
        req(&post_with("Content-Length: 5,5\r\n")).framing,
        BodyFraming::ContentLength(5)
    );
    assert_eq!(
        req(&post_with("Content-Length:\t7 \r\n")).framing,
        BodyFraming::ContentLength(7)
    );
    for bad in [
        "Content-Length: 5\r\nContent-Length: 6\r\n",
        "Content-Length: 5, 6\r\n",
        "Content-Length: 5,\r\n",
        "Content-Length: ,5\r\n",
        "Content-Length:\r\n",
        "Content-Length: +5\r\n",
        "Content-Length: -1\r\n",
        "Content-Length: 5 5\r\n",
        "Content-Length: 0x5\r\n",
        "Content-Length: 5.0\r\n",
        "Content-Length: 1e3\r\n",
        "Content-Length: 99999999999999999999999\r\n",
        "Content-Length: 5\x0b\r\n",
    ] {
        assert_eq!(status_of(&post_with(bad)), 400, "{bad:?}");
    }
}

#[test]
fn transfer_encoding_must_be_exactly_chunked() {
    for ok in [
        "Transfer-Encoding: chunked\r\n",
        "Transfer-Encoding: CHUNKED\r\n",
        "Transfer-Encoding: Chunked \r\n",
        "Transfer-Encoding:\tchunked\t\r\n",
        "transfer-encoding: chunked\r\n",
    ] {
        assert_eq!(req(&post_with(ok)).framing, BodyFraming::Chunked, "{ok:?}");
    }
    for bad in [
        "Transfer-Encoding: chunked, identity\r\n",
        "Transfer-Encoding: identity, chunked\r\n",
        "Transfer-Encoding: gzip, chunked\r\n",
        "Transfer-Encoding: chunked, chunked\r\n",
        "Transfer-Encoding: xchunked\r\n",
        "Transfer-Encoding: chunkedx\r\n",
        "Transfer-Encoding: chunked;q=1\r\n",
        "Transfer-Encoding: chu nked\r\n",
        "Transfer-Encoding: \"chunked\"\r\n",
        "Transfer-Encoding: identity\r\n",
        "Transfer-Encoding:\r\n",
        "Transfer-Encoding: \x0bchunked\r\n",
        "Transfer-Encoding: \x0cchunked\r\n",
        "Transfer-Encoding: chunked\x00\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
        "Transfer-Encoding : chunked\r\n",
        "Transfer-Encoding\t: chunked\r\n",
        " Transfer-Encoding: chunked\r\n",
        "Transfer-Encoding:\r\n chunked\r\n",
        "X: y\r\n Transfer-Encoding: chunked\r\n",
        "Transfer-Encoding: \u{e9}chunked\r\n",
    ] {
        assert_eq!(status_of(&post_with(bad)), 400, "{bad:?}");
    }
}

#[test]
fn transfer_encoding_on_http10_is_refused() {
    assert_eq!(
        status_of(b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"),
        400
    );
}

#[test]
fn bare_lf_and_stray_cr_are_refused() {
    for bad in [
        &b"GET / HTTP/1.1\nHost: a\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n\n",
        b"GET / HTTP/1.1\r\nHost: a\n\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\ny: 2\r\n\r\n",
        b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"\r\n\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\rX: 1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\r\n\r\n",
    ] {
        assert_eq!(status_of(bad), 400, "{:?}", String::from_utf8_lossy(bad));
    }
    // A bare LF is refused as soon as it arrives, even before the head is complete.
    assert_eq!(status_of(b"GET / HTTP/1.1\nHo"), 400);
}

#[test]
fn control_bytes_in_values_are_refused() {
    for b in (0u8..0x20)
        .filter(|&b| b != b'\t' && b != b'\r' && b != b'\n')
        .chain([0x7f])
    {
        let mut buf = b"GET / HTTP/1.1\r\nHost: a\r\nX-Test: a".to_vec();
        buf.push(b);
        buf.extend_from_slice(b"b\r\n\r\n");
        assert_eq!(status_of(&buf), 400, "byte {b:#04x}");
    }
    // HTAB and obs-text are allowed.
    let h = req(b"GET / HTTP/1.1\r\nHost: a\r\nX-Test: a\tb \xe9\r\n\r\n");
    assert_eq!(h.headers().nth(1).map(|x| x.value), Some(&b"a\tb \xe9"[..]));
}

#[test]
fn invalid_header_names_are_refused() {
    for bad in [
        "Host : a\r\n",
        "X-A : b\r\n",
        "X A: b\r\n",
        ": b\r\n",
        "X\"A: b\r\n",
        "X(A): b\r\n",
        "NoColon\r\n",
    ] {
        let buf = format!("GET / HTTP/1.1\r\nHost: a\r\n{bad}\r\n");
        assert_eq!(status_of(buf.as_bytes()), 400, "{bad:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// parse_request: limits and versions

fn small_limits() -> Limits {
    Limits {
        max_header_size_bytes: 64,
        max_header_count: 3,
        max_body_size_bytes: 100,
        ..Limits::default()
    }
}

#[test]
fn request_line_too_long_is_414() {
    let l = small_limits();
    let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(80));
    assert_eq!(req_err_with(long.as_bytes(), &l), RequestError::UriTooLong);
    // Already while the head is partial: no CRLF within the limit.
    assert_eq!(
        req_err_with(&long.as_bytes()[..65], &l),
        RequestError::UriTooLong
    );
    assert_eq!(req_err_with(&long.as_bytes()[..65], &l).status(), 414);
    // Exactly at the limit, still incomplete: more bytes are needed.
    assert!(matches!(
        parse_request(&long.as_bytes()[..64], &l),
        Ok(Parsed::Partial)
    ));
}

#[test]
fn headers_too_large_is_431() {
    let l = small_limits();
    let big = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n", "b".repeat(60));
    assert_eq!(
        req_err_with(big.as_bytes(), &l),
        RequestError::HeadersTooLarge
    );
    assert_eq!(req_err_with(&big.as_bytes()[..65], &l).status(), 431);
    assert!(matches!(
        parse_request(&big.as_bytes()[..64], &l),
        Ok(Parsed::Partial)
    ));
}

#[test]
fn head_exactly_at_limit_is_accepted_and_one_more_byte_is_not() {
    let base = "GET / HTTP/1.1\r\nHost: a\r\nX: \r\n\r\n".len();
    let fill = 64 - base;
    let exact = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
        "b".repeat(fill)
    );
    assert_eq!(exact.len(), 64);
    let mut with_body = exact.clone().into_bytes();
    with_body.extend_from_slice(&[b'z'; 200]);
    let h = match parse_request(&with_body, &small_limits()) {
        Ok(Parsed::Complete(h)) => h,
        other => panic!("{other:?}"),
    };
    assert_eq!(h.head_len, 64);
    let over = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
        "b".repeat(fill + 1)
    );
    assert_eq!(
        req_err_with(over.as_bytes(), &small_limits()),
        RequestError::HeadersTooLarge
    );
}

#[test]
fn too_many_headers_is_431() {
    let l = small_limits();
    let ok = b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n";
    assert!(matches!(parse_request(ok, &l), Ok(Parsed::Complete(_))));
    let over = b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
    assert_eq!(req_err_with(over, &l), RequestError::HeadersTooLarge);
    let none = Limits {
        max_header_count: 0,
        ..limits()
    };
    assert_eq!(
        req_err_with(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", &none).status(),
        431
    );
}

#[test]
fn content_length_above_body_limit_is_413() {
    let l = small_limits();
    let ok = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n";
    assert!(matches!(parse_request(ok, &l), Ok(Parsed::Complete(_))));
    let over = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 101\r\n\r\n";
    assert_eq!(req_err_with(over, &l), RequestError::PayloadTooLarge);
    assert_eq!(req_err_with(over, &l).status(), 413);
}

#[test]
fn versions() {
    assert_eq!(status_of(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"), 505);
    assert_eq!(status_of(b"GET / HTTP/1.2\r\nHost: a\r\n\r\n"), 505);
    assert_eq!(status_of(b"GET / HTTP/0.9\r\nHost: a\r\n\r\n"), 505);
    assert_eq!(status_of(b"GET / HTTP/1.1x\r\nHost: a\r\n\r\n"), 400);
    assert_eq!(status_of(b"GET / HTTX/1.1\r\nHost: a\r\n\r\n"), 400);
    assert_eq!(status_of(b"GET / http/1.1\r\nHost: a\r\n\r\n"), 400);
    assert_eq!(status_of(b"GET /\r\n\r\n"), 400);
    assert_eq!(status_of(b"GET / HTTP/11\r\nHost: a\r\n\r\n"), 400);
}

// ---------------------------------------------------------------------------------------------
// parse_request: connection semantics

#[test]
fn keep_alive_semantics() {
    let ka = |v: &str, conn: &str| {
        let buf = format!("GET / {v}\r\nHost: a\r\n{conn}\r\n");
        req(buf.as_bytes()).keep_alive
    };
    assert!(ka("HTTP/1.1", ""));
    assert!(!ka("HTTP/1.1", "Connection: close\r\n"));
    assert!(!ka("HTTP/1.1", "Connection: CLOSE\r\n"));
    assert!(!ka("HTTP/1.1", "Connection: x-foo, Close\r\n"));
    assert!(!ka(
        "HTTP/1.1",
        "Connection: keep-alive\r\nConnection: close\r\n"
    ));
    assert!(ka("HTTP/1.1", "Connection: keep-alive\r\n"));
    assert!(ka("HTTP/1.1", "Connection: closed\r\n"));
    assert!(!ka("HTTP/1.0", ""));
    assert!(ka("HTTP/1.0", "Connection: keep-alive\r\n"));
    assert!(ka("HTTP/1.0", "Connection: foo,Keep-Alive\r\n"));
    assert!(!ka("HTTP/1.0", "Connection: keep-alive, close\r\n"));
    assert!(!ka("HTTP/1.0", "Keep-Alive: timeout=5\r\n"));
}

#[test]
fn upgrade_and_expect() {
    let h = req(&get_with("Connection: Upgrade\r\nUpgrade: websocket\r\n"));
    assert_eq!(h.upgrade.as_deref(), Some("websocket"));
    let h = req(&get_with(
        "Connection: keep-alive, upgrade\r\nUpgrade:  websocket \r\n",
    ));
    assert_eq!(h.upgrade.as_deref(), Some("websocket"));
    assert_eq!(req(&get_with("Upgrade: websocket\r\n")).upgrade, None);
    assert_eq!(req(&get_with("Connection: upgrade\r\n")).upgrade, None);
    let h10 = b"GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
    assert_eq!(req(h10).upgrade, None);

    assert!(req(&post_with("Content-Length: 3\r\nExpect: 100-Continue\r\n")).expect_continue);
    assert!(!req(&post_with("Content-Length: 3\r\nExpect: 200-ok\r\n")).expect_continue);
    let h10 = b"POST / HTTP/1.0\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n";
    assert!(!req(h10).expect_continue);
}

// ---------------------------------------------------------------------------------------------
// parse_response

#[test]
fn response_with_content_length() {
    let buf = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: y\r\n\r\nhello";
    let h = resp(buf, false);
    assert_eq!(h.status, 200);
    assert_eq!(h.reason(), "OK");
    assert_eq!(h.version, HttpVersion::Http11);
    assert_eq!(h.framing, BodyFraming::ContentLength(5));
    assert_eq!(h.head_len, buf.len() - 5);
    assert!(h.keep_alive);
    assert!(!h.is_interim());
    assert_eq!(
        resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false).framing,
        BodyFraming::Empty
    );
}

#[test]
fn response_prefixes_are_partial() {
    let buf = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
    for n in 0..buf.len() {
        assert!(
            matches!(parse_response(&buf[..n], false, 1024), Ok(Parsed::Partial)),
            "{n}"
        );
    }
}

#[test]
fn response_framing_rules() {
    let f = |buf: &[u8], head: bool| {
        let h = resp(buf, head);
        (h.framing, h.keep_alive)
    };
    use BodyFraming::*;
    assert_eq!(
        f(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false
        ),
        (Chunked, true)
    );
    assert_eq!(
        f(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            false
        ),
        (Chunked, true)
    );
    assert_eq!(
        f(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: Chunked\r\n\r\n",
            false
        ),
        (Chunked, true)
    );
    // Both: chunked wins and the connection is not reused.
    assert_eq!(
        f(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            false
        ),
        (Chunked, false)
    );
    assert_eq!(f(b"HTTP/1.1 200 OK\r\n\r\n", false), (UntilClose, false));
    assert_eq!(
        f(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false),
        (UntilClose, false)
    );
    for status in [
        "100 Continue",
        "103 Early Hints",
        "204 No Content",
        "304 Not Modified",
    ] {
        let buf = format!("HTTP/1.1 {status}\r\nContent-Length: 10\r\n\r\n");
        assert_eq!(f(buf.as_bytes(), false), (Empty, true), "{status}");
    }
    assert_eq!(
        f(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", true),
        (Empty, true)
    );
    assert_eq!(
        f(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            true
        ),
        (Empty, true)
    );
    assert_eq!(f(b"HTTP/1.1 200 OK\r\n\r\n", true), (Empty, true));
    let h = resp(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        false,
    );
    assert_eq!(
        (h.framing, h.keep_alive, h.is_interim()),
        (Empty, false, false)
    );
    assert!(resp(b"HTTP/1.1 100 Continue\r\n\r\n", false).is_interim());
}

#[test]
fn response_keep_alive_by_version_and_connection() {
    let ka = |buf: &[u8]| resp(buf, false).keep_alive;
    assert!(ka(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
    assert!(!ka(
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    ));
    assert!(!ka(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
    assert!(ka(
        b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n"
    ));
    assert_eq!(
        resp(b"HTTP/1.0 200 OK\r\n\r\n", false).version,
        HttpVersion::Http10
    );
}

#[test]
fn invalid_responses() {
    for bad in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding:\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 099 Odd\r\n\r\n",
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX : y\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: y\r\n folded\r\n\r\n",
        b"garbage\r\n\r\n",
    ] {
        assert!(
            parse_response(bad, false, 1024).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    // Conflicting lengths are an error even when no body follows.
    assert_eq!(
        resp_err(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
        ResponseError("conflicting Content-Length values")
    );
    // Identical repeats are fine.
    let h = resp(
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\n",
        false,
    );
    assert_eq!(h.framing, BodyFraming::ContentLength(4));
}

#[test]
fn response_head_size_limit() {
    let big = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "a".repeat(100));
    assert!(parse_response(big.as_bytes(), false, 64).is_err());
    // Partial heads beyond the limit fail too.
    assert!(parse_response(&big.as_bytes()[..65], false, 64).is_err());
    assert!(matches!(
        parse_response(&big.as_bytes()[..64], false, 64),
        Ok(Parsed::Partial)
    ));
    assert!(matches!(
        parse_response(big.as_bytes(), false, big.len()),
        Ok(Parsed::Complete(_))
    ));
}

#[test]
fn response_bare_lf_is_tolerated() {
    let buf = b"HTTP/1.1 200 OK\nContent-Length: 2\n\nhi";
    let h = resp(buf, false);
    assert_eq!(h.head_len, buf.len() - 2);
    assert_eq!(h.framing, BodyFraming::ContentLength(2));
    let mut out = Vec::new();
    write_client_response(&h, HttpVersion::Http11, false, &mut out);
    assert_eq!(out, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n");
}

#[test]
fn response_with_many_headers() {
    let mut buf = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..500 {
        buf.extend_from_slice(format!("Set-Cookie: c{i}=v\r\n").as_bytes());
    }
    buf.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    assert_eq!(resp(&buf, false).headers().len(), 501);
}

// ---------------------------------------------------------------------------------------------
// write_upstream_request

fn ctx_v4() -> ForwardContext {
    ForwardContext {
        client: "192.0.2.7:51000".parse().unwrap(),
        listener: "10.0.0.1:8080".parse().unwrap(),
        scheme: "http",
        trace_id: None,
        client_cert_subject: None,
    }
}

fn upstream_bytes(buf: &[u8], ctx: &ForwardContext) -> String {
    let mut out = Vec::new();
    write_upstream_request(&req(buf), ctx, &mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn upstream_request_exact_bytes() {
    let buf = b"POST /api?x=1 HTTP/1.1\r\n\
        Host: Example.com:8080\r\n\
        Connection: keep-alive, X-Secret\r\n\
        Keep-Alive: timeout=5\r\n\
        X-Secret: hop\r\n\
        Proxy-Connection: keep-alive\r\n\
        TE: trailers\r\n\
        Trailer: X-Sum\r\n\
        Upgrade: websocket\r\n\
        X-Forwarded-For: 203.0.113.1\r\n\
        X-Forwarded-Proto: https\r\n\
        X-Forwarded-Host: evil.example\r\n\
        Forwarded: for=203.0.113.1\r\n\
        Content-Length: 3\r\n\
        accept: */*\r\n\
        \r\n";
    assert_eq!(
        upstream_bytes(buf, &ctx_v4()),
        "POST /api?x=1 HTTP/1.1\r\n\
         Host: Example.com:8080\r\n\
         Content-Length: 3\r\n\
         accept: */*\r\n\
         X-Forwarded-For: 203.0.113.1, 192.0.2.7\r\n\
         X-Forwarded-Proto: http\r\n\
         X-Forwarded-Host: Example.com:8080\r\n\
         Forwarded: for=203.0.113.1, for=192.0.2.7;proto=http;host=\"Example.com:8080\"\r\n\
         Connection: keep-alive\r\n\
         \r\n"
    );
}

#[test]
fn upstream_request_minimal() {
    assert_eq!(
        upstream_bytes(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", &ctx_v4()),
        "GET / HTTP/1.1\r\n\
         Host: a\r\n\
         X-Forwarded-For: 192.0.2.7\r\n\
         X-Forwarded-Proto: http\r\n\
         X-Forwarded-Host: a\r\n\
         Forwarded: for=192.0.2.7;proto=http;host=a\r\n\
         Connection: keep-alive\r\n\
         \r\n"
    );
}

#[test]
fn upstream_request_upgrade() {
    let buf = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
        Sec-WebSocket-Key: k\r\n\r\n";
    assert_eq!(
        upstream_bytes(buf, &ctx_v4()),
        "GET /ws HTTP/1.1\r\n\
         Host: a\r\n\
         Sec-WebSocket-Key: k\r\n\
         X-Forwarded-For: 192.0.2.7\r\n\
         X-Forwarded-Proto: http\r\n\
         X-Forwarded-Host: a\r\n\
         Forwarded: for=192.0.2.7;proto=http;host=a\r\n\
         Connection: upgrade\r\n\
         Upgrade: websocket\r\n\
         \r\n"
    );
}

#[test]
fn upstream_request_http10_without_host_gets_listener_host() {
    let buf = b"GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
    assert_eq!(
        upstream_bytes(buf, &ctx_v4()),
        "GET /x HTTP/1.1\r\n\
         Host: 10.0.0.1:8080\r\n\
         X-Forwarded-For: 192.0.2.7\r\n\
         X-Forwarded-Proto: http\r\n\
         Forwarded: for=192.0.2.7;proto=http;host=\"10.0.0.1:8080\"\r\n\
         Connection: keep-alive\r\n\
         \r\n"
    );
}

#[test]
fn upstream_request_ipv6_client() {
    let ctx = ForwardContext {
        client: "[2001:db8::9]:4000".parse().unwrap(),
        listener: "[::1]:8080".parse().unwrap(),
        scheme: "http",
        trace_id: None,
        client_cert_subject: None,
    };
    let out = upstream_bytes(b"GET / HTTP/1.0\r\n\r\n", &ctx);
    assert!(out.contains("\r\nHost: [::1]:8080\r\n"), "{out}");
    assert!(
        out.contains("\r\nX-Forwarded-For: 2001:db8::9\r\n"),
        "{out}"
    );
    assert!(
        out.contains("\r\nForwarded: for=\"[2001:db8::9]\";proto=http;host=\"[::1]:8080\"\r\n"),
        "{out}"
    );
    // IPv4-mapped addresses from dual-stack listeners are reported as IPv4.
    let mapped = ForwardContext {
        client: "[::ffff:192.0.2.9]:4000".parse().unwrap(),
        ..ctx.clone()
    };
    let out = upstream_bytes(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", &mapped);
    assert!(out.contains("\r\nX-Forwarded-For: 192.0.2.9\r\n"), "{out}");
    assert!(out.contains("\r\nForwarded: for=192.0.2.9;"), "{out}");
}

#[test]
fn connection_cannot_strip_framing_or_host() {
    let buf = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\
        Connection: Content-Length, Host, Transfer-Encoding\r\n\r\n";
    let out = upstream_bytes(buf, &ctx_v4());
    assert!(
        out.starts_with("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n"),
        "{out}"
    );
    let buf = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\
        Connection: transfer-encoding\r\n\r\n";
    let out = upstream_bytes(buf, &ctx_v4());
    assert!(out.contains("\r\nTransfer-Encoding: chunked\r\n"), "{out}");
}

#[test]
fn repeated_content_length_is_merged_upstream() {
    let buf = b"POST / HTTP/1.1\r\nHost: a\r\ncontent-length: 5, 5\r\nContent-Length: 005\r\n\r\n";
    let out = upstream_bytes(buf, &ctx_v4());
    assert!(
        out.starts_with("POST / HTTP/1.1\r\nHost: a\r\ncontent-length: 5\r\nX-Forwarded-For"),
        "{out}"
    );
    assert_eq!(out.matches("ontent-").count(), 1, "{out}");
}

#[test]
fn several_forwarding_headers_are_combined() {
    let buf = b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1, 2.2.2.2\r\n\
        X-Forwarded-For: 3.3.3.3\r\nForwarded: for=1.1.1.1\r\nforwarded: for=2.2.2.2;proto=https\r\n\r\n";
    let out = upstream_bytes(buf, &ctx_v4());
    assert!(
        out.contains("\r\nX-Forwarded-For: 1.1.1.1, 2.2.2.2, 3.3.3.3, 192.0.2.7\r\n"),
        "{out}"
    );
    assert!(
        out.contains("\r\nForwarded: for=1.1.1.1, for=2.2.2.2;proto=https, for=192.0.2.7;proto=http;host=a\r\n"),
        "{out}"
    );
    assert_eq!(out.matches("orwarded-For").count(), 1);
}

#[test]
fn absolute_form_target_is_forwarded_as_received() {
    let out = upstream_bytes(b"GET http://a/x HTTP/1.1\r\nHost: a\r\n\r\n", &ctx_v4());
    assert!(out.starts_with("GET http://a/x HTTP/1.1\r\n"), "{out}");
}

// ---------------------------------------------------------------------------------------------
// write_client_response

fn client_bytes(buf: &[u8], request_head: bool, v: HttpVersion, close: bool) -> String {
    let mut out = Vec::new();
    write_client_response(&resp(buf, request_head), v, close, &mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn client_response_exact_bytes() {
    let buf = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: keep-alive, X-Hop\r\n\
        Keep-Alive: timeout=5\r\nX-Hop: 1\r\nProxy-Connection: x\r\nTrailer: X-Sum\r\nUpgrade: h2c\r\n\
        Content-Length: 2\r\n\r\n";
    assert_eq!(
        client_bytes(buf, false, HttpVersion::Http11, false),
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n"
    );
    assert_eq!(
        client_bytes(buf, false, HttpVersion::Http11, true),
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(
        client_bytes(buf, false, HttpVersion::Http10, false),
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n"
    );
    assert_eq!(
        client_bytes(buf, false, HttpVersion::Http10, true),
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
    );
}

#[test]
fn client_response_status_line_is_http11_and_keeps_reason() {
    assert_eq!(
        client_bytes(
            b"HTTP/1.0 404 Nope Nope\r\nContent-Length: 0\r\n\r\n",
            false,
            HttpVersion::Http11,
            false
        ),
        "HTTP/1.1 404 Nope Nope\r\nContent-Length: 0\r\n\r\n"
    );
    assert_eq!(
        client_bytes(
            b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",
            false,
            HttpVersion::Http11,
            false
        ),
        "HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n"
    );
}

#[test]
fn client_response_switching_protocols_keeps_upgrade() {
    let buf = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Accept: abc\r\n\r\n";
    assert_eq!(
        client_bytes(buf, false, HttpVersion::Http11, false),
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: abc\r\n\
         Connection: upgrade\r\n\r\n"
    );
}

#[test]
fn client_response_chunked_to_http10_drops_the_chunked_coding() {
    let buf = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n";
    let head = resp(buf, false);
    assert!(head.dechunks_for(HttpVersion::Http10));
    assert!(!head.dechunks_for(HttpVersion::Http11));
    assert_eq!(
        client_bytes(buf, false, HttpVersion::Http10, true),
        "HTTP/1.1 200 OK\r\nX-A: 1\r\nConnection: close\r\n\r\n"
    );
    // HTTP/1.1 clients keep it.
    assert_eq!(
        client_bytes(buf, false, HttpVersion::Http11, false),
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n"
    );
    // Another coding under chunked still describes the decoded bytes.
    let buf = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n";
    assert_eq!(
        client_bytes(buf, false, HttpVersion::Http10, true),
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\n"
    );
    // Not chunked (until close): nothing to undo.
    let buf = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n";
    assert!(!resp(buf, false).dechunks_for(HttpVersion::Http10));
    assert_eq!(
        client_bytes(buf, false, HttpVersion::Http10, true),
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\n"
    );
}

#[test]
fn client_response_chunked_with_content_length_drops_length() {
    let buf = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(
        client_bytes(buf, false, HttpVersion::Http11, true),
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
}

#[test]
fn client_response_framing_fields_in_bodyless_responses() {
    // 204 and 1xx never carry framing fields.
    assert_eq!(
        client_bytes(
            b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nX: y\r\n\r\n",
            false,
            HttpVersion::Http11,
            false
        ),
        "HTTP/1.1 204 No Content\r\nX: y\r\n\r\n"
    );
    // 1xx: no Connection header either, whatever `close` says.
    assert_eq!(
        client_bytes(
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
            false,
            HttpVersion::Http11,
            true
        ),
        "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
    );
    // 304 and HEAD responses keep their (metadata) Content-Length, merged to one field.
    assert_eq!(
        client_bytes(
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\nContent-Length: 7\r\n\r\n",
            false,
            HttpVersion::Http11,
            false
        ),
        "HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n"
    );
    assert_eq!(
        client_bytes(
            b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n",
            true,
            HttpVersion::Http11,
            false
        ),
        "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n"
    );
}

// ---------------------------------------------------------------------------------------------
// error_response / static_response

#[test]
fn error_response_exact_bytes() {
    assert_eq!(
        error_response(404, true, false),
        b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\n\
          Content-Length: 14\r\nConnection: close\r\n\r\n404 Not Found\n"
    );
    assert_eq!(
        error_response(502, false, false),
        b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\n\
          Content-Length: 16\r\nConnection: keep-alive\r\n\r\n502 Bad Gateway\n"
    );
    // HEAD: same head (the length of the body a GET would get), no body.
    assert_eq!(
        error_response(404, true, true),
        b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\n\
          Content-Length: 14\r\nConnection: close\r\n\r\n"
    );
    for status in [400, 408, 413, 414, 431, 500, 503, 504, 505] {
        let r = error_response(status, true, false);
        let h = resp(&r, false);
        assert_eq!(h.status, status);
        assert_eq!(h.reason(), reason_phrase(status));
        assert!(!h.reason().is_empty());
        let body = &r[h.head_len..];
        assert_eq!(h.framing, BodyFraming::ContentLength(body.len() as u64));
        assert_eq!(
            body,
            format!("{status} {}\n", reason_phrase(status)).as_bytes()
        );
        assert!(!h.keep_alive);
    }
    assert_eq!(
        error_response(599, true, false),
        b"HTTP/1.1 599 \r\nContent-Type: text/plain; charset=utf-8\r\n\
          Content-Length: 4\r\nConnection: close\r\n\r\n599\n"
    );
}

#[test]
fn static_response_bytes() {
    let r = StaticResponse {
        status: 200,
        body: "hello".into(),
        content_type: "text/html".into(),
    };
    assert_eq!(
        static_response(&r, false, false),
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5\r\n\
          Connection: keep-alive\r\n\r\nhello"
    );
    assert_eq!(
        static_response(&r, true, true),
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5\r\n\
          Connection: close\r\n\r\n"
    );
    let no_content = StaticResponse {
        status: 204,
        body: "ignored".into(),
        content_type: "text/plain".into(),
    };
    assert_eq!(
        static_response(&no_content, false, false),
        b"HTTP/1.1 204 No Content\r\nConnection: keep-alive\r\n\r\n"
    );
    // A content type that would inject header lines is dropped.
    let injected = StaticResponse {
        status: 200,
        body: "x".into(),
        content_type: "text/plain\r\nSet-Cookie: a=b".into(),
    };
    assert_eq!(
        static_response(&injected, true, false),
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"
    );
    assert_eq!(CONTINUE_100, b"HTTP/1.1 100 Continue\r\n\r\n");
}

// ---------------------------------------------------------------------------------------------
// BodyTracker

#[test]
fn tracker_content_length() {
    let mut t = BodyTracker::new(BodyFraming::ContentLength(5), 100);
    assert!(!t.is_complete());
    assert_eq!(
        t.feed(b"").unwrap(),
        BodyProgress {
            consumed: 0,
            complete: false
        }
    );
    assert_eq!(
        t.feed(b"he").unwrap(),
        BodyProgress {
            consumed: 2,
            complete: false
        }
    );
    assert_eq!(
        t.feed(b"lloGET /").unwrap(),
        BodyProgress {
            consumed: 3,
            complete: true
        }
    );
    assert!(t.is_complete());
    assert_eq!(
        t.feed(b"more").unwrap(),
        BodyProgress {
            consumed: 0,
            complete: true
        }
    );
    assert_eq!(t.framing(), BodyFraming::ContentLength(5));
}

#[test]
fn tracker_content_length_above_max() {
    let mut t = BodyTracker::new(BodyFraming::ContentLength(101), 100);
    assert_eq!(t.feed(b"x"), Err(BodyError::TooLarge(100)));
    assert!(!t.is_complete());
}

#[test]
fn tracker_empty_and_until_close() {
    let mut t = BodyTracker::new(BodyFraming::Empty, 0);
    assert!(t.is_complete());
    assert_eq!(
        t.feed(b"GET").unwrap(),
        BodyProgress {
            consumed: 0,
            complete: true
        }
    );
    assert_eq!(
        t.feed(b"").unwrap(),
        BodyProgress {
            consumed: 0,
            complete: true
        }
    );

    let mut t = BodyTracker::new(BodyFraming::UntilClose, u64::MAX);
    assert!(t.is_complete());
    assert_eq!(
        t.feed(b"abc").unwrap(),
        BodyProgress {
            consumed: 3,
            complete: false
        }
    );
    assert_eq!(
        t.feed(b"").unwrap(),
        BodyProgress {
            consumed: 0,
            complete: false
        }
    );

    let mut t = BodyTracker::new(BodyFraming::UntilClose, 4);
    assert_eq!(t.feed(b"abcd").unwrap().consumed, 4);
    assert_eq!(t.feed(b"e"), Err(BodyError::TooLarge(4)));
}

const VALID_CHUNKED: &[&[u8]] = &[
    b"0\r\n\r\n",
    b"5\r\nhello\r\n0\r\n\r\n",
    b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    b"A\r\n0123456789\r\n0\r\n\r\n",
    b"a\r\n0123456789\r\n0000\r\n\r\n",
    b"005\r\nhello\r\n0\r\n\r\n",
    b"5;name=value\r\nhello\r\n0;last\r\n\r\n",
    b"5 ;name=\"quoted value\"\r\nhello\r\n0\r\n\r\n",
    b"5\t; a = b\r\nhello\r\n0\r\n\r\n",
    b"5\r\nhello\r\n0\r\nX-Sum: abc\r\nX-Other: d\te\r\n\r\n",
    b"4\r\n\r\n\r\n\r\n0\r\n\r\n",
    b"0000000000000001\r\nx\r\n0\r\n\r\n",
];

fn feed_all(t: &mut BodyTracker, parts: &[&[u8]]) -> Result<(usize, bool), BodyError> {
    let mut consumed = 0;
    let mut complete = false;
    for p in parts {
        let r = t.feed(p)?;
        assert!(r.consumed <= p.len());
        consumed += r.consumed;
        if r.complete {
            complete = true;
            break;
        }
        assert_eq!(
            r.consumed,
            p.len(),
            "incomplete body must consume all input"
        );
    }
    Ok((consumed, complete))
}

#[test]
fn tracker_chunked_valid_messages_whole_and_byte_by_byte() {
    for msg in VALID_CHUNKED {
        let name = String::from_utf8_lossy(msg);
        // Whole, followed by the next message.
        let mut buf = msg.to_vec();
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let mut t = BodyTracker::new(BodyFraming::Chunked, 1000);
        let p = t.feed(&buf).unwrap();
        assert_eq!(
            p,
            BodyProgress {
                consumed: msg.len(),
                complete: true
            },
            "{name}"
        );
        assert!(t.is_complete());
        // One byte at a time.
        let mut t = BodyTracker::new(BodyFraming::Chunked, 1000);
        for (i, b) in msg.iter().enumerate() {
            assert!(!t.is_complete(), "{name} complete too early at {i}");
            let p = t.feed(std::slice::from_ref(b)).unwrap();
            assert_eq!(p.consumed, 1, "{name} at {i}");
            assert_eq!(p.complete, i == msg.len() - 1, "{name} at {i}");
        }
        assert!(t.is_complete());
        assert_eq!(
            t.feed(b"G").unwrap(),
            BodyProgress {
                consumed: 0,
                complete: true
            }
        );
    }
}

fn chunk_error(msg: &[u8]) -> BodyError {
    let mut t = BodyTracker::new(BodyFraming::Chunked, 1 << 20);
    let whole = t.feed(msg);
    // Byte by byte must fail the same way.
    let mut t2 = BodyTracker::new(BodyFraming::Chunked, 1 << 20);
    let mut split = Ok(());
    for b in msg {
        if let Err(e) = t2.feed(std::slice::from_ref(b)) {
            split = Err(e);
            break;
        }
    }
    match (whole, split) {
        (Err(a), Err(b)) => {
            assert_eq!(a, b, "{:?}", String::from_utf8_lossy(msg));
            a
        }
        other => panic!(
            "expected an error for {:?}, got {other:?}",
            String::from_utf8_lossy(msg)
        ),
    }
}

#[test]
fn tracker_chunked_invalid() {
    for bad in [
        &b"g\r\n"[..],
        b"\r\n",
        b" 5\r\nhello\r\n",
        b"-5\r\n",
        b"+5\r\n",
        b"0x5\r\nhello\r\n",
        b"5\nhello\r\n",
        b"5\r\r\nhello\r\n",
        b"5 \r\nhello\r\n",
        b"5 x\r\nhello\r\n",
        b"5\r\nhelloX\r\n",
        b"5\r\nhello\rX",
        b"5\r\nhello\n0\r\n\r\n",
        b"5\r\nhello\r\r",
        b"5;a\x00b\r\nhello\r\n",
        b"5;a\nb\r\nhello\r\n",
        b"5;a\rb\r\nhello\r\n",
        b"5;a\x7fb\r\n",
        b"0\r\nX: a\nY: b\r\n\r\n",
        b"0\r\nX: a\x00\r\n\r\n",
        b"0\r\n\n",
        b"0\r\n\rX",
        b"0\r\nX: a\r\n folded\r\n\r\n",
        b"0\r\nX: a\rX",
        b"11111111111111111\r\n",
        b"fffffffffffffffff\r\n",
        b"00000000000000000\r\n",
    ] {
        let e = chunk_error(bad);
        assert!(
            matches!(e, BodyError::InvalidChunk(_)),
            "{:?} -> {e:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn tracker_chunked_size_limit() {
    let mut t = BodyTracker::new(BodyFraming::Chunked, 8);
    assert_eq!(t.feed(b"5\r\nhello\r\n").unwrap().consumed, 10);
    assert_eq!(t.feed(b"4\r\n"), Err(BodyError::TooLarge(8)));
    // The error is sticky.
    assert_eq!(t.feed(b"0\r\n\r\n"), Err(BodyError::TooLarge(8)));
    assert!(!t.is_complete());

    let mut t = BodyTracker::new(BodyFraming::Chunked, 8);
    assert!(
        t.feed(b"3\r\nabc\r\n5\r\nhello\r\n0\r\n\r\n")
            .unwrap()
            .complete
    );
    // The largest size fits, and its data is then forwarded as it comes.
    let mut t = BodyTracker::new(BodyFraming::Chunked, u64::MAX);
    assert_eq!(t.feed(b"ffffffffffffffff\r\nabc").unwrap().consumed, 21);
    assert!(!t.is_complete());
}

#[test]
fn tracker_chunked_extension_and_trailer_bounds() {
    let mut long_ext = b"1;".to_vec();
    long_ext.extend(std::iter::repeat_n(b'a', MAX_CHUNK_EXT + 1));
    long_ext.extend_from_slice(b"\r\n");
    assert_eq!(
        chunk_error(&long_ext),
        BodyError::InvalidChunk("chunk extension too long")
    );
    let mut long_trailer = b"0\r\nX: ".to_vec();
    long_trailer.extend(std::iter::repeat_n(b'a', MAX_TRAILERS + 1));
    long_trailer.extend_from_slice(b"\r\n\r\n");
    assert_eq!(
        chunk_error(&long_trailer),
        BodyError::InvalidChunk("trailers too large")
    );
}

#[test]
fn tracker_chunked_truncated_is_not_complete() {
    for prefix in [
        &b"5\r\nhel"[..],
        b"5\r\nhello\r\n",
        b"0\r\n",
        b"0\r\n\r",
        b"0\r\nX: y\r\n",
    ] {
        let mut t = BodyTracker::new(BodyFraming::Chunked, 100);
        let p = t.feed(prefix).unwrap();
        assert_eq!(
            p,
            BodyProgress {
                consumed: prefix.len(),
                complete: false
            }
        );
        assert!(!t.is_complete());
    }
}

// ---------------------------------------------------------------------------------------------
// Property tests

#[derive(Debug, Clone)]
struct ChunkSpec {
    data: Vec<u8>,
    ext: Option<String>,
    upper: bool,
    zeros: usize,
}

fn chunk_spec() -> impl Strategy<Value = ChunkSpec> {
    (
        proptest::collection::vec(any::<u8>(), 1..300),
        proptest::option::of("[a-z]{1,8}(=[a-z0-9]{1,8})?"),
        any::<bool>(),
        0usize..3,
    )
        .prop_map(|(data, ext, upper, zeros)| ChunkSpec {
            data,
            ext,
            upper,
            zeros,
        })
}

fn encode_chunked(chunks: &[ChunkSpec], trailers: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in chunks {
        let size = if c.upper {
            format!("{:X}", c.data.len())
        } else {
            format!("{:x}", c.data.len())
        };
        out.extend(std::iter::repeat_n(b'0', c.zeros));
        out.extend_from_slice(size.as_bytes());
        if let Some(e) = &c.ext {
            out.push(b';');
            out.extend_from_slice(e.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&c.data);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n");
    for t in trailers {
        out.extend_from_slice(t.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[test]
fn tracker_feed_decoded() {
    let msg = b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Sum: 9\r\n\r\nNEXT";
    let mut t = BodyTracker::new(BodyFraming::Chunked, u64::MAX);
    let mut out = Vec::new();
    let p = t.feed_decoded(msg, &mut out).unwrap();
    assert_eq!(out, b"hello 0123456789");
    assert_eq!(p.consumed, msg.len() - 4);
    assert!(p.complete);

    // Errors are the tracker's errors, and stay.
    let mut t = BodyTracker::new(BodyFraming::Chunked, u64::MAX);
    let mut out = Vec::new();
    assert!(t.feed_decoded(b"2\r\nabX", &mut out).is_err());
    assert!(t.feed_decoded(b"\r\n", &mut out).is_err());

    // Other framings pass the consumed bytes through unchanged.
    let mut t = BodyTracker::new(BodyFraming::ContentLength(3), u64::MAX);
    let mut out = Vec::new();
    let p = t.feed_decoded(b"abcdef", &mut out).unwrap();
    assert_eq!(
        (p.consumed, p.complete, out.as_slice()),
        (3, true, &b"abc"[..])
    );
    let mut t = BodyTracker::new(BodyFraming::UntilClose, u64::MAX);
    let mut out = Vec::new();
    t.feed_decoded(b"xyz", &mut out).unwrap();
    assert_eq!(out, b"xyz");
}

fn split_at_points(buf: &[u8], mut cuts: Vec<usize>) -> Vec<&[u8]> {
    cuts.retain(|&c| c > 0 && c < buf.len());
    cuts.sort_unstable();
    cuts.dedup();
    let mut parts = Vec::new();
    let mut prev = 0;
    for c in cuts {
        parts.push(&buf[prev..c]);
        prev = c;
    }
    parts.push(&buf[prev..]);
    parts
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn chunked_bodies_end_exactly_where_they_end(
        chunks in proptest::collection::vec(chunk_spec(), 0..6),
        trailers in proptest::collection::vec("X-[A-Za-z]{1,6}: [ -~]{0,20}", 0..3),
        cuts in proptest::collection::vec(0usize..4000, 0..12),
        next in proptest::collection::vec(any::<u8>(), 0..20),
    ) {
        let msg = encode_chunked(&chunks, &trailers);
        let mut buf = msg.clone();
        buf.extend_from_slice(&next);
        let decoded: usize = chunks.iter().map(|c| c.data.len()).sum();

        let mut t = BodyTracker::new(BodyFraming::Chunked, decoded as u64);
        let (consumed, complete) = feed_all(&mut t, &split_at_points(&buf, cuts)).unwrap();
        prop_assert!(complete);
        prop_assert_eq!(consumed, msg.len());
        prop_assert!(t.is_complete());

        // One byte less of allowance: too large.
        if decoded > 0 {
            let mut t = BodyTracker::new(BodyFraming::Chunked, decoded as u64 - 1);
            prop_assert_eq!(feed_all(&mut t, &[&msg]), Err(BodyError::TooLarge(decoded as u64 - 1)));
        }

        // Byte by byte.
        let mut t = BodyTracker::new(BodyFraming::Chunked, u64::MAX);
        for (i, b) in msg.iter().enumerate() {
            let p = t.feed(std::slice::from_ref(b)).unwrap();
            prop_assert_eq!(p.consumed, 1);
            prop_assert_eq!(p.complete, i + 1 == msg.len());
        }
    }

    #[test]
    fn chunked_bodies_decode_to_their_data(
        chunks in proptest::collection::vec(chunk_spec(), 0..6),
        trailers in proptest::collection::vec("X-[A-Za-z]{1,6}: [ -~]{0,20}", 0..3),
        cuts in proptest::collection::vec(0usize..4000, 0..12),
    ) {
        let msg = encode_chunked(&chunks, &trailers);
        let data: Vec<u8> = chunks.iter().flat_map(|c| c.data.iter().copied()).collect();
        let mut t = BodyTracker::new(BodyFraming::Chunked, u64::MAX);
        let mut out = Vec::new();
        let mut consumed = 0;
        let mut complete = false;
        for part in split_at_points(&msg, cuts) {
            let p = t.feed_decoded(part, &mut out).unwrap();
            consumed += p.consumed;
            complete = p.complete;
        }
        prop_assert!(complete);
        prop_assert_eq!(consumed, msg.len());
        prop_assert_eq!(out, data);
    }

    #[test]
    fn content_length_bodies_end_exactly(
        len in 0u64..2000,
        extra in 0usize..50,
        cuts in proptest::collection::vec(0usize..3000, 0..10),
    ) {
        let buf = vec![b'x'; len as usize + extra];
        let mut t = BodyTracker::new(BodyFraming::ContentLength(len), u64::MAX);
        let (consumed, complete) = feed_all(&mut t, &split_at_points(&buf, cuts)).unwrap();
        prop_assert_eq!(consumed as u64, len);
        prop_assert!(complete);
    }

    #[test]
    fn tracker_never_panics_on_garbage(
        input in proptest::collection::vec(any::<u8>(), 0..200),
        cuts in proptest::collection::vec(0usize..200, 0..10),
    ) {
        let mut t = BodyTracker::new(BodyFraming::Chunked, 1000);
        let mut total = 0;
        for part in split_at_points(&input, cuts) {
            match t.feed(part) {
                Ok(p) => {
                    prop_assert!(p.consumed <= part.len());
                    total += p.consumed;
                    if p.complete { break; }
                }
                Err(_) => break,
            }
        }
        prop_assert!(total <= input.len());
    }

    #[test]
    fn request_heads_split_anywhere_parse_the_same(
        path in "/[a-z0-9/]{0,30}",
        host in "[a-z]{1,10}(\\.[a-z]{2,5})?",
        extra in proptest::collection::vec(("X-[A-Za-z]{1,8}", "[ -~]{0,30}"), 0..8),
        body_len in 0u64..1000,
    ) {
        let mut head = format!("PUT {path} HTTP/1.1\r\nHost: {host}\r\n");
        for (n, v) in &extra {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str(&format!("Content-Length: {body_len}\r\n\r\n"));
        let bytes = head.as_bytes();
        for n in 0..bytes.len() {
            prop_assert!(matches!(parse_request(&bytes[..n], &limits()), Ok(Parsed::Partial)));
        }
        let h = req(bytes);
        prop_assert_eq!(h.head_len, bytes.len());
        prop_assert_eq!(h.host.as_deref(), Some(host.as_str()));
        prop_assert_eq!(h.path(), path.as_str());
        prop_assert_eq!(h.headers().len(), extra.len() + 2);
        let expected = if body_len == 0 { BodyFraming::Empty } else { BodyFraming::ContentLength(body_len) };
        prop_assert_eq!(h.framing, expected);
    }

    #[test]
    fn parsers_never_panic(input in proptest::collection::vec(any::<u8>(), 0..300)) {
        let l = Limits {
            max_header_size_bytes: 128,
            max_header_count: 4,
            max_body_size_bytes: 10,
            ..Limits::default()
        };
        if let Ok(Parsed::Complete(h)) = parse_request(&input, &l) {
            prop_assert!(h.head_len <= input.len() && h.head_len <= 128);
            let _ = h.path();
            let mut out = Vec::new();
            write_upstream_request(&h, &ctx_v4(), &mut out);
        }
        if let Ok(Parsed::Complete(h)) = parse_response(&input, false, 128) {
            prop_assert!(h.head_len <= input.len());
            let mut out = Vec::new();
            write_client_response(&h, HttpVersion::Http10, false, &mut out);
        }
    }

    #[test]
    fn rewritten_heads_parse_back(
        extra in proptest::collection::vec(("X-[A-Za-z]{1,8}", "[!-~]([ -~]{0,20}[!-~])?"), 0..6),
    ) {
        let mut head = String::from("GET /p HTTP/1.1\r\nHost: h\r\n");
        for (n, v) in &extra {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let h = req(head.as_bytes());
        let mut out = Vec::new();
        write_upstream_request(&h, &ctx_v4(), &mut out);
        let again = req(&out);
        prop_assert_eq!(again.head_len, out.len());
        prop_assert_eq!(again.headers().len(), extra.len() + 6);
        for (n, v) in &extra {
            prop_assert!(again.headers().any(|x| x.name == n.as_bytes() && x.value == v.as_bytes()));
        }
    }
}

#[test]
fn reason_phrases() {
    assert_eq!(reason_phrase(200), "OK");
    assert_eq!(reason_phrase(413), "Content Too Large");
    assert_eq!(reason_phrase(431), "Request Header Fields Too Large");
    assert_eq!(reason_phrase(799), "");
}

#[test]
fn merged_content_length_helper() {
    let h = |v: &'static str| Header {
        name: b"Content-Length",
        value: v.as_bytes(),
    };
    assert_eq!(merged_content_length(Vec::<Header>::new()), Ok(None));
    assert_eq!(merged_content_length([h("3"), h("3, 03")]), Ok(Some(3)));
    assert!(merged_content_length([h("3"), h("4")]).is_err());
    assert_eq!(
        merged_content_length([h("18446744073709551615")]),
        Ok(Some(u64::MAX))
    );
    assert!(merged_content_length([h("18446744073709551616")]).is_err());
}

#[test]
fn normalize_authority_helper() {
    assert_eq!(normalize_authority(b"").as_deref(), Some(""));
    assert_eq!(normalize_authority(b"A.b:1").as_deref(), Some("a.b"));
    assert_eq!(normalize_authority(b"[::1]:2").as_deref(), Some("[::1]"));
    assert_eq!(normalize_authority(b"[]"), None);
}

#[test]
fn forwarded_host_is_quoted_when_not_a_token() {
    // sub-delims are valid in a reg-name but must not split the Forwarded element.
    let out = upstream_bytes(b"GET / HTTP/1.1\r\nHost: a,for=evil;b\r\n\r\n", &ctx_v4());
    assert!(
        out.contains("\r\nForwarded: for=192.0.2.7;proto=http;host=\"a,for=evil;b\"\r\n"),
        "{out}"
    );
    let mut value = Vec::new();
    push_forwarded_value(&mut value, b"a\"b\\c");
    assert_eq!(value, b"\"a\\\"b\\\\c\"");
}

// ---------------------------------------------------------------------------------------------
// Head storage: borrowed fields, pooled storage, inline strings

#[test]
fn head_storage_is_reused_after_a_head_is_dropped() {
    let buf = b"GET /a HTTP/1.1\r\nHost: example.com\r\nX-A: 1\r\n\r\n";
    let first = req(buf);
    let storage = first.store.bytes.as_ptr();
    drop(first);
    let second = req(buf);
    assert_eq!(
        second.store.bytes.as_ptr(),
        storage,
        "the dropped head's storage is taken again"
    );
    // A response takes from the same free list.
    let second_storage = second.store.bytes.as_ptr();
    drop(second);
    let r = resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false);
    assert_eq!(r.store.bytes.as_ptr(), second_storage);
    assert_eq!(r.reason(), "OK");
    assert_eq!(r.headers().len(), 1);
}

#[test]
fn oversized_head_storage_is_freed_not_kept() {
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "b".repeat(STORE_KEEP_BYTES)
    );
    let roomy = Limits {
        max_header_size_bytes: 64 * 1024,
        ..limits()
    };
    let Ok(Parsed::Complete(h)) = parse_request(big.as_bytes(), &roomy) else {
        panic!("a 9 KiB head within a 64 KiB limit is accepted");
    };
    assert_eq!(
        h.headers().nth(1).map(|x| x.value.len()),
        Some(STORE_KEEP_BYTES)
    );
    let before = FREE_STORES.with(|p| p.borrow().len());
    drop(h);
    assert_eq!(FREE_STORES.with(|p| p.borrow().len()), before);
}

#[test]
fn head_parts_survive_the_input_buffer() {
    let mut buf = b"PATCH /x?y HTTP/1.1\r\nHost: Example.COM\r\nX-A: a b\r\n\r\n".to_vec();
    let h = req(&buf);
    let r = resp(
        b"HTTP/1.1 404 Not Here\r\nX-B: c\r\nContent-Length: 0\r\n\r\n",
        false,
    );
    // The session consumes its buffer right after parsing: the head must not depend on it.
    buf.fill(b'!');
    assert_eq!(h.method, "PATCH");
    assert_eq!(h.target(), "/x?y");
    assert_eq!(h.host.as_deref(), Some("example.com"));
    let fields: Vec<(&[u8], &[u8])> = h.headers().map(|x| (x.name, x.value)).collect();
    assert_eq!(
        fields,
        vec![
            (&b"Host"[..], &b"Example.COM"[..]),
            (&b"X-A"[..], &b"a b"[..])
        ]
    );
    assert_eq!(r.reason(), "Not Here");
    let cloned = h.clone();
    drop(h);
    assert_eq!(cloned.target(), "/x?y");
    assert_eq!(cloned.headers().len(), 2);
}

#[test]
fn methods_and_hosts_of_any_length() {
    let long_method = "M".repeat(SMALL_STR_INLINE + 5);
    let long_host = format!("{}.Example", "A".repeat(SMALL_STR_INLINE));
    let buf = format!("{long_method} / HTTP/1.1\r\nHost: {long_host}:81\r\n\r\n");
    let h = req(buf.as_bytes());
    assert_eq!(h.method, long_method.as_str());
    assert_eq!(
        h.host.as_deref(),
        Some(long_host.to_ascii_lowercase().as_str())
    );
    assert!(!h.is_head());
    // Methods are case-sensitive; `is_head` compared ignoring case before, and still does.
    assert!(req(b"head / HTTP/1.1\r\nHost: a\r\n\r\n").is_head());
    assert!(req(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n").is_head());
    assert_eq!(req(b"get / HTTP/1.1\r\nHost: a\r\n\r\n").method, "get");
    let exact = "h".repeat(SMALL_STR_INLINE);
    assert_eq!(
        SmallStr::lowercase(&exact.to_ascii_uppercase()).as_str(),
        exact
    );
    assert_eq!(format!("{:?}", SmallStr::new("GET")), "\"GET\"");
}

#[test]
fn obs_text_reason_is_written_empty() {
    let h = resp(
        b"HTTP/1.1 200 \xe9t\xe9\r\nContent-Length: 0\r\n\r\n",
        false,
    );
    assert_eq!(h.reason(), "");
    let mut out = Vec::new();
    write_client_response(&h, HttpVersion::Http11, false, &mut out);
    assert_eq!(out, b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n");
}

#[test]
fn ipv4_addresses_are_written_as_display_writes_them() {
    for ip in [
        "0.0.0.0",
        "255.255.255.255",
        "10.0.100.9",
        "1.22.199.200",
        "100.10.1.0",
    ] {
        let ip: std::net::IpAddr = ip.parse().unwrap();
        let mut out = Vec::new();
        push_ip(&mut out, ip);
        assert_eq!(String::from_utf8(out).unwrap(), ip.to_string());
    }
}

proptest! {
    #[test]
    fn any_ip_is_written_as_display_writes_it(v4 in any::<u32>(), v6 in any::<u128>()) {
        for ip in [
            std::net::IpAddr::from(std::net::Ipv4Addr::from(v4)),
            std::net::IpAddr::from(std::net::Ipv6Addr::from(v6)),
        ] {
            let mut out = Vec::new();
            push_ip(&mut out, ip);
            prop_assert_eq!(String::from_utf8(out).unwrap(), ip.to_string());
        }
    }
}

#[test]
fn upstream_request_carries_the_trace_id_instead_of_the_clients() {
    let ctx = ForwardContext {
        trace_id: Some("3Ab9xYz12Kq".to_owned()),
        ..ctx_v4()
    };
    let out = upstream_bytes(
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Trace-Id: from-client\r\n\r\n",
        &ctx,
    );
    assert!(out.contains("\r\nX-Trace-Id: 3Ab9xYz12Kq\r\n"), "{out}");
    // Only the proxy vouches for a client certificate.
    let spoofed = upstream_bytes(
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Client-Cert-Subject: CN=admin\r\n\r\n",
        &ForwardContext {
            client_cert_subject: Some("CN=client".into()),
            ..ctx_v4()
        },
    );
    assert!(!spoofed.contains("CN=admin"), "{spoofed}");
    assert!(
        spoofed.contains("\r\nX-Client-Cert-Subject: CN=client\r\n"),
        "{spoofed}"
    );
    assert!(!out.contains("from-client"), "{out}");
}
