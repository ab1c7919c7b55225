//! The compress filter's decision, head rewriting and body framing.

use std::rc::Rc;

use zentinel_protocol::config::{CompressFilter, CompressionAlgorithm};

use super::coder::tests::decode;
use super::*;
use crate::filters::{Filter, FilterCounters, Kind};
use crate::http::codec::{parse_response, Parsed};
use CompressionAlgorithm::{Brotli, Gzip, Zstd};

fn filter(c: CompressFilter) -> Rc<Filter> {
    Rc::new(Filter {
        name: "gz".into(),
        kind: Kind::Compress(c),
        counters: FilterCounters::default(),
        shm: None,
    })
}

fn settings(f: &Filter) -> &CompressFilter {
    match &f.kind {
        Kind::Compress(c) => c,
        other => panic!("{other:?}"),
    }
}

fn response(head: &str, is_head: bool) -> ResponseHead {
    match parse_response(head.as_bytes(), is_head, 64 * 1024) {
        Ok(Parsed::Complete(h)) => h,
        other => panic!("{head:?}: {other:?}"),
    }
}

const HTML: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n";

fn req(ae: Option<&str>) -> RequestSide<'_> {
    RequestSide {
        accept_encoding: ae,
        range: false,
        head: false,
    }
}

#[test]
fn which_responses_qualify() {
    let c = CompressFilter::default();
    let ok = |extra: &str| eligible(&c, &response(&format!("{HTML}{extra}\r\n"), false));
    assert!(ok("Content-Length: 1024\r\n"), "at min-size");
    assert!(!ok("Content-Length: 1023\r\n"), "under min-size");
    assert!(ok("Transfer-Encoding: chunked\r\n"), "length unknown");
    assert!(ok(""), "close-delimited");
    assert!(!ok("Content-Length: 5000\r\nContent-Encoding: br\r\n"));
    assert!(
        !ok("Transfer-Encoding: gzip, chunked\r\n"),
        "another transfer coding"
    );
    assert!(!ok(
        "Content-Length: 5000\r\nCache-Control: public, No-Transform\r\n"
    ));
    assert!(ok(
        "Content-Length: 5000\r\nCache-Control: no-cache, max-age=5\r\n"
    ));
    let typed = |ct: &str| {
        let head = format!("HTTP/1.1 200 OK\r\n{ct}Content-Length: 5000\r\n\r\n");
        eligible(&c, &response(&head, false))
    };
    assert!(
        typed("Content-Type: APPLICATION/JSON\r\n"),
        "case-insensitive"
    );
    assert!(typed("Content-Type: text/plain;charset=utf-8\r\n"));
    assert!(!typed("Content-Type: image/png\r\n"));
    assert!(!typed(""), "no Content-Type");
    for status in ["204 No Content", "304 Not Modified", "206 Partial Content"] {
        let head =
            format!("HTTP/1.1 {status}\r\nContent-Type: text/html\r\nContent-Length: 5000\r\n\r\n");
        assert!(!eligible(&c, &response(&head, false)), "{status}");
    }
    let head = "HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: 5000\r\n\r\n";
    assert!(eligible(&c, &response(head, false)), "error pages too");
    let custom = CompressFilter {
        content_types: vec!["application/".into()],
        min_size: 0,
        ..CompressFilter::default()
    };
    let head =
        "HTTP/1.1 200 OK\r\nContent-Type: application/x-anything\r\nContent-Length: 0\r\n\r\n";
    assert!(
        eligible(&custom, &response(head, false)),
        "prefix match, min-size 0"
    );
}

#[test]
fn the_request_decides_whether_to_compress() {
    let f = filter(CompressFilter {
        algorithms: vec![Zstd, Brotli, Gzip],
        ..CompressFilter::default()
    });
    let c = settings(&f);
    let resp = response(&format!("{HTML}Content-Length: 5000\r\n\r\n"), false);
    let coding = |r: &RequestSide<'_>| {
        decide(0, &f, c, r, &resp, HttpVersion::Http11)
            .expect("the response qualifies")
            .stream
            .map(|s| s.coding())
    };
    assert_eq!(coding(&req(Some("gzip, br"))), Some((Brotli, true)));
    assert_eq!(coding(&req(Some("gzip, zstd;q=0.5"))), Some((Gzip, true)));
    assert_eq!(coding(&req(Some("identity"))), None);
    assert_eq!(coding(&req(None)), None, "no Accept-Encoding");
    let range = RequestSide {
        range: true,
        ..req(Some("gzip"))
    };
    assert_eq!(coding(&range), None);
    let d = decide(0, &f, c, &req(Some("gzip")), &resp, HttpVersion::Http10);
    assert_eq!(
        d.and_then(|d| d.stream).map(|s| s.coding()),
        Some((Gzip, false))
    );
    // HEAD: no body to compress.
    let head_resp = response(&format!("{HTML}Content-Length: 5000\r\n\r\n"), true);
    let head = RequestSide {
        head: true,
        ..req(Some("gzip"))
    };
    let d = decide(0, &f, c, &head, &head_resp, HttpVersion::Http11).expect("qualifies");
    assert!(d.stream.is_none());
    assert_eq!(
        f.counters.compressed.get(),
        3,
        "each compressed response counted"
    );
    // Not qualifying at all: no decision (no Vary either).
    let png = response("HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n\r\n", false);
    assert!(decide(0, &f, c, &req(Some("gzip")), &png, HttpVersion::Http11).is_none());
}

fn rewritten(upstream: &str, ae: Option<&str>, client: HttpVersion) -> String {
    let f = filter(CompressFilter::default());
    let resp = response(upstream, false);
    let d = decide(3, &f, settings(&f), &req(ae), &resp, client).expect("qualifies");
    assert_eq!(d.filter, 3);
    let mut head = b"before".to_vec();
    head.extend_from_slice(upstream.as_bytes());
    rewrite_head(&mut head, 6, &d);
    let text = String::from_utf8(head).expect("utf-8");
    text.strip_prefix("before").expect("prefix kept").to_owned()
}

#[test]
fn the_head_of_a_compressed_response() {
    let up = format!(
        "{HTML}Content-Length: 5000\r\nETag: \"v1\"\r\nAccept-Ranges: bytes\r\n\
         Vary: Origin\r\nX-Other: 1\r\n\r\n"
    );
    assert_eq!(
        rewritten(&up, Some("gzip"), HttpVersion::Http11),
        "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nETag: W/\"v1\"\r\n\
         Vary: Origin, Accept-Encoding\r\nX-Other: 1\r\nContent-Encoding: gzip\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    );
    // HTTP/1.0: close-delimited, so no framing field at all.
    let up = format!("{HTML}Transfer-Encoding: chunked\r\nETag: W/\"weak\"\r\n\r\n");
    assert_eq!(
        rewritten(&up, Some("br"), HttpVersion::Http10),
        "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nETag: W/\"weak\"\r\n\
         Vary: Accept-Encoding\r\nContent-Encoding: br\r\n\r\n"
    );
}

#[test]
fn vary_alone_when_the_client_gets_identity() {
    let up = format!("{HTML}Content-Length: 5000\r\nETag: \"v1\"\r\n\r\n");
    assert_eq!(
        rewritten(&up, Some("identity"), HttpVersion::Http11),
        format!("{HTML}Content-Length: 5000\r\nETag: \"v1\"\r\nVary: Accept-Encoding\r\n\r\n")
    );
    // Already varying on it (or on everything): left as it is.
    for vary in ["accept-encoding", "*", "Origin, Accept-Encoding"] {
        let up = format!("{HTML}Content-Length: 5000\r\nVary: {vary}\r\n\r\n");
        assert_eq!(rewritten(&up, None, HttpVersion::Http11), up);
    }
    let up = format!("{HTML}Content-Length: 5000\r\nVary: Origin\r\nVary: accept-encoding\r\n\r\n");
    assert_eq!(rewritten(&up, Some("gzip;q=0"), HttpVersion::Http11), up);
}

/// Parse a chunked body: the chunks' payloads joined, and whether the last chunk ended it.
fn unchunk(mut body: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        let Some(eol) = body.windows(2).position(|w| w == b"\r\n") else {
            return (out, false);
        };
        let size = std::str::from_utf8(&body[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s, 16).ok())
            .expect("a hex chunk size");
        body = &body[eol + 2..];
        if size == 0 {
            return (out, body == b"\r\n");
        }
        assert!(size > 0 && body.len() >= size + 2, "a whole chunk");
        out.extend_from_slice(&body[..size]);
        assert_eq!(&body[size..size + 2], b"\r\n");
        body = &body[size + 2..];
    }
}

fn stream_for(f: &Rc<Filter>, ae: &str, client: HttpVersion) -> Box<Stream> {
    let resp = response(&format!("{HTML}Transfer-Encoding: chunked\r\n\r\n"), false);
    decide(0, f, settings(f), &req(Some(ae)), &resp, client)
        .and_then(|d| d.stream)
        .expect("compressed")
}

#[test]
fn the_body_is_framed_as_chunks_and_counted() {
    let input: Vec<u8> = (0..40_000u32)
        .flat_map(|i| format!("{{\"id\":{},\"name\":\"item {}\"}},", i, i % 50).into_bytes())
        .collect();
    for (ae, alg) in [
        ("gzip", Gzip),
        ("br", Brotli),
        ("zstd", Zstd),
        ("deflate", CompressionAlgorithm::Deflate),
    ] {
        let f = filter(CompressFilter {
            algorithms: vec![Gzip, Brotli, Zstd, CompressionAlgorithm::Deflate],
            ..CompressFilter::default()
        });
        let mut s = stream_for(&f, ae, HttpVersion::Http11);
        let mut cout = Buf::new();
        for (i, piece) in input.chunks(64 * 1024).enumerate() {
            s.push(piece, i % 3 == 0, &mut cout).expect("push");
            let (so_far, ended) = unchunk(cout.as_slice());
            assert!(!ended, "{ae}: no last chunk before the end");
            assert!(so_far.len() as u64 == f.counters.compress_out.get());
        }
        s.finish(&mut cout).expect("finish");
        let (payload, ended) = unchunk(cout.as_slice());
        assert!(ended, "{ae}: the last chunk ends the body");
        assert!(decode(alg, &payload) == input, "{ae}: round trip");
        assert_eq!(f.counters.compress_in.get(), input.len() as u64);
        assert_eq!(f.counters.compress_out.get(), payload.len() as u64);
        assert!(
            payload.len() < input.len() / 4,
            "{ae}: {} bytes",
            payload.len()
        );
    }
}

#[test]
fn http10_bodies_are_the_bare_stream() {
    let f = filter(CompressFilter::default());
    let mut s = stream_for(&f, "gzip", HttpVersion::Http10);
    let mut cout = Buf::new();
    s.push(b"hello, hello, hello", true, &mut cout)
        .expect("push");
    s.finish(&mut cout).expect("finish");
    assert_eq!(decode(Gzip, cout.as_slice()), b"hello, hello, hello");
}

#[test]
fn an_empty_body_is_a_valid_stream() {
    let f = filter(CompressFilter::default());
    let s = stream_for(&f, "gzip", HttpVersion::Http11);
    let mut cout = Buf::new();
    s.finish(&mut cout).expect("finish");
    let (payload, ended) = unchunk(cout.as_slice());
    assert!(ended);
    assert_eq!(decode(Gzip, &payload), b"");
}
