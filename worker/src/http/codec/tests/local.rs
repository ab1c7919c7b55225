//! Responses the proxy writes itself.

use super::*;

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

#[test]
fn reason_phrases() {
    assert_eq!(reason_phrase(200), "OK");
    assert_eq!(reason_phrase(413), "Content Too Large");
    assert_eq!(reason_phrase(431), "Request Header Fields Too Large");
    assert_eq!(reason_phrase(799), "");
}
