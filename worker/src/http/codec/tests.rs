//! Unit tests of the HTTP codec, one file per part of it (`tests/request.rs` for the request
//! validation and its smuggling vectors, `response.rs`, `body.rs`, `rewrite.rs` for heads as
//! they cross the proxy, `local.rs`, `head.rs`); the helpers they share are here.

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

mod body;
mod head;
mod local;
mod request;
mod response;
mod rewrite;
