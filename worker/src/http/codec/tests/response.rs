//! `parse_response`: framing rules, keep-alive, invalid responses, the head size limit.

use super::*;

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
