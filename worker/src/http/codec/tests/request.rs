//! `parse_request`: the request heads accepted, the smuggling vectors refused, limits,
//! versions and connection semantics.

use super::*;

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

/// A field value continued on the next line (RFC 9112 5.2 obs-fold): a proxy that unfolds it
/// and one that reads the next line as a field of its own disagree on the head.
#[test]
fn obsolete_line_folding_is_refused() {
    for folded in [
        "X-A: b\r\n c\r\n",
        "X-A: b\r\n\tc\r\n",
        "Content-Length: 5\r\n 0\r\n",
        "Transfer-Encoding: gzip,\r\n chunked\r\n",
    ] {
        let buf = format!("POST / HTTP/1.1\r\nHost: a\r\n{folded}\r\n");
        assert_eq!(status_of(buf.as_bytes()), 400, "{folded:?}");
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

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
}
