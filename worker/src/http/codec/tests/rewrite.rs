//! Heads rewritten as they cross the proxy, byte for byte: `write_upstream_request` and
//! `write_client_response`.

use super::*;
use crate::http::codec::upstream_request::{push_forwarded_value, push_ip};

// ---------------------------------------------------------------------------------------------
// write_upstream_request

fn ctx_v4() -> ForwardContext<'static> {
    ForwardContext {
        client: "192.0.2.7:51000".parse().unwrap(),
        listener: "10.0.0.1:8080".parse().unwrap(),
        scheme: "http",
        trace_id: None,
        client_cert_subject: None,
    }
}

fn upstream_bytes(buf: &[u8], ctx: &ForwardContext<'_>) -> String {
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
         TE: trailers\r\n\
         Connection: keep-alive, TE\r\n\
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
        trace_id: Some("3Ab9xYz12Kq"),
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

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
