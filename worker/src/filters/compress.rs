//! The `compress` route filter: a proxied response compressed on its way to the client, with
//! the coding negotiated from the request's `Accept-Encoding` (see `negotiate`) among the
//! filter's `algorithms`, in its order of preference.
//!
//! A response is compressed when all of these hold (nginx's `gzip` checks, with upstream
//! Zentinel's `min-size` and `content-types`):
//! - its status allows a body (not 1xx, 204, 304), it is not a 206, and a body follows (not
//!   an answer to HEAD, not `Content-Length: 0`);
//! - it has no `Content-Encoding` (already encoded), and no transfer coding but `chunked`;
//! - its media type (parameters ignored) starts with one of `content-types`;
//! - its `Content-Length`, when known, is at least `min-size`;
//! - `Cache-Control` does not say `no-transform`;
//! - the request had no `Range` (its offsets are the identity body's);
//! - the client accepts one of the codings, and one of the worker's compressed-stream places
//!   is free (see `coder`).
//!
//! Then the head loses `Content-Length` and `Accept-Ranges` (ranges would be of the encoded
//! body), gains `Content-Encoding`, and a strong `ETag` becomes weak (`W/`, as nginx: the
//! encoded bytes are not the identity bytes the tag was made for). The body is decoded from
//! its upstream framing, compressed as it streams (flushed whenever the upstream has nothing
//! more waiting, so a slow stream is never held back), and framed as chunks to HTTP/1.1
//! clients, or delimited by the connection's close for HTTP/1.0 clients. HTTP/2 clients are
//! served by a session speaking HTTP/1.1 over a pipe, so they get the chunked form, which
//! their connection turns into DATA frames.
//!
//! Whenever the response itself qualifies (whatever the request), `Vary: Accept-Encoding` is
//! added, or appended to the response's `Vary`: a cache must not give one client's variant to
//! another.

mod coder;
mod negotiate;
#[cfg(test)]
mod tests;

pub use coder::{coder_level, Coder, StreamSlot, MAX_STREAMS};
pub use negotiate::negotiate;

use std::io;
use std::rc::Rc;

use tracing::{debug, warn};
use zentinel_protocol::config::{CompressFilter, CompressionAlgorithm};

use super::{Filter, FilterCounters};
use crate::http::codec::{BodyFraming, Header, HttpVersion, ResponseHead};
use crate::sock::Buf;

/// What the request tells the filter.
pub struct RequestSide<'a> {
    /// `Accept-Encoding`, all its lines joined; None when absent (no compression then).
    pub accept_encoding: Option<&'a str>,
    /// The request asked for a `Range`.
    pub range: bool,
    /// The request is HEAD.
    pub head: bool,
}

/// A compress filter's decision on one response.
#[derive(Debug)]
pub struct Decision {
    /// Index of the deciding filter in the route's chain (its fields are written after the
    /// other filters' edits of the head, in one pass of their own).
    #[allow(dead_code, reason = "shown in debug output and checked by the tests")]
    pub filter: usize,
    /// The body's encoder, when it is compressed (taken when the body ends).
    pub stream: Option<Box<Stream>>,
}

/// Whether `resp`'s own fields let `f` compress it (see the module docs; the request's side
/// is checked by [`decide`]).
pub fn eligible(f: &CompressFilter, resp: &ResponseHead) -> bool {
    let status = resp.status;
    if (100..200).contains(&status) || status == 204 || status == 304 || status == 206 {
        return false;
    }
    let mut typed = false;
    let mut stated = None;
    let mut transfer_coded = false;
    for h in resp.headers() {
        if is(h, "content-length") {
            stated = std::str::from_utf8(h.value.trim_ascii())
                .ok()
                .and_then(|v| v.parse::<u64>().ok());
        }
        if is(h, "content-encoding") && !h.value.trim_ascii().is_empty() {
            return false;
        }
        if is(h, "transfer-encoding") {
            if list(h.value).any(|c| !c.eq_ignore_ascii_case(b"chunked")) {
                return false;
            }
            transfer_coded = true;
        }
        if is(h, "cache-control")
            && list(h.value).any(|d| {
                let name = d.split(|&b| b == b'=').next().unwrap_or(d);
                name.trim_ascii().eq_ignore_ascii_case(b"no-transform")
            })
        {
            return false;
        }
        if is(h, "content-type") && !typed {
            typed = true;
            if !type_matches(h.value, &f.content_types) {
                return false;
            }
        }
    }
    if !typed {
        return false;
    }
    let length = match resp.framing {
        BodyFraming::ContentLength(n) => Some(n),
        BodyFraming::Chunked | BodyFraming::UntilClose => None,
        // No body follows, but an answer to HEAD states the length of the one a GET would
        // get (and gets the same `Vary`); Transfer-Encoding overrides it.
        BodyFraming::Empty => stated.filter(|_| !transfer_coded),
    };
    length.is_none_or(|n| n >= f.min_size)
}

/// The filter at `index` of a chain (`f`, settings `c`) decides on `resp`: None when the
/// response does not qualify (nothing changes); else whether to compress, for a client of
/// `client` version.
pub fn decide(
    index: usize,
    f: &Rc<Filter>,
    c: &CompressFilter,
    req: &RequestSide<'_>,
    resp: &ResponseHead,
    client: HttpVersion,
) -> Option<Decision> {
    if !eligible(c, resp) {
        return None;
    }
    let mut decision = Decision {
        filter: index,
        stream: None,
    };
    if req.head || req.range || resp.framing == BodyFraming::Empty {
        return Some(decision);
    }
    let Some(alg) = req
        .accept_encoding
        .and_then(|ae| negotiate(ae, &c.algorithms))
    else {
        return Some(decision);
    };
    let Some(slot) = StreamSlot::take() else {
        debug!(filter = %f.name, max = MAX_STREAMS,
            "every compressed stream place is taken: the response goes as it is");
        return Some(decision);
    };
    let size = match resp.framing {
        BodyFraming::ContentLength(n) => Some(n),
        _ => None,
    };
    let coder = match Coder::new(alg, coder_level(alg, c.level), size) {
        Ok(coder) => coder,
        Err(e) => {
            warn!(filter = %f.name, coding = alg.token(), error = %e,
                "cannot start an encoder: the response goes as it is");
            return Some(decision);
        }
    };
    let chunked = client == HttpVersion::Http11;
    FilterCounters::add(&f.counters.compressed, 1);
    debug!(filter = %f.name, coding = alg.token(), chunked, "compressing the response");
    decision.stream = Some(Box::new(Stream {
        coder,
        alg,
        chunked,
        out: Vec::new(),
        filter: Rc::clone(f),
        _slot: slot,
    }));
    Some(decision)
}

/// A body being compressed.
#[derive(Debug)]
pub struct Stream {
    coder: Coder,
    alg: CompressionAlgorithm,
    /// Framed as chunks (HTTP/1.1 clients); else close-delimited.
    chunked: bool,
    /// Compressed bytes not framed yet.
    out: Vec<u8>,
    /// Whose counters the bytes go to.
    filter: Rc<Filter>,
    _slot: StreamSlot,
}

impl Stream {
    /// Compress `input` (decoded body bytes) into `cout`; with `flush`, all of it is
    /// decodable there (the upstream has nothing more waiting).
    pub fn push(&mut self, input: &[u8], flush: bool, cout: &mut Buf) -> io::Result<()> {
        if let Err(e) = self.coder.push(input, flush, &mut self.out) {
            warn!(filter = %self.filter.name, error = %e, "compressing a response body failed");
            return Err(e);
        }
        FilterCounters::add(&self.filter.counters.compress_in, input.len() as u64);
        emit(&mut self.out, self.chunked, &self.filter, cout);
        Ok(())
    }

    /// End the body: the coder's last bytes, and the last chunk.
    pub fn finish(self, cout: &mut Buf) -> io::Result<()> {
        let Stream {
            coder,
            chunked,
            mut out,
            filter,
            ..
        } = self;
        if let Err(e) = coder.finish(&mut out) {
            warn!(filter = %filter.name, error = %e, "ending a compressed body failed");
            return Err(e);
        }
        emit(&mut out, chunked, &filter, cout);
        if chunked {
            cout.extend(b"0\r\n\r\n");
        }
        Ok(())
    }

    /// The coding and whether the body is chunked.
    pub fn coding(&self) -> (CompressionAlgorithm, bool) {
        (self.alg, self.chunked)
    }
}

/// Frame and queue the compressed bytes in `out`.
fn emit(out: &mut Vec<u8>, chunked: bool, filter: &Filter, cout: &mut Buf) {
    if out.is_empty() {
        return;
    }
    FilterCounters::add(&filter.counters.compress_out, out.len() as u64);
    if chunked {
        cout.extend(format!("{:x}\r\n", out.len()).as_bytes());
        cout.extend(out);
        cout.extend(b"\r\n");
    } else {
        cout.extend(out);
    }
    out.clear();
}

/// Rewrite the client head serialized at `head[start..]` for `d` (see the module docs).
pub fn rewrite_head(head: &mut Vec<u8>, start: usize, d: &Decision) {
    let coding = d.stream.as_ref().map(|s| s.coding());
    let Some(text) = head.get(start..) else {
        return;
    };
    // The codec wrote this head: CRLF line ends, `Name: value`, a blank line last.
    let Some(status_end) = find(text, b"\r\n") else {
        return;
    };
    let mut fields: Vec<(&[u8], &[u8])> = Vec::new();
    let mut rest = &text[status_end + 2..];
    while let Some(end) = find(rest, b"\r\n") {
        let line = &rest[..end];
        rest = &rest[end + 2..];
        if line.is_empty() {
            break;
        }
        if let Some(colon) = line.iter().position(|&b| b == b':') {
            fields.push((&line[..colon], line[colon + 1..].trim_ascii()));
        }
    }
    let varies_already = fields.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case(b"vary")
            && list(v).any(|t| t == b"*" || t.eq_ignore_ascii_case(b"accept-encoding"))
    });
    let mut out = Vec::with_capacity(text.len() + 96);
    out.extend_from_slice(&text[..status_end + 2]);
    let mut vary_done = varies_already;
    for &(name, value) in &fields {
        let named = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        if coding.is_some() {
            if named("content-length") || named("transfer-encoding") || named("accept-ranges") {
                continue;
            }
            if named("etag") && value.starts_with(b"\"") {
                field(&mut out, name, &[b"W/", value]);
                continue;
            }
        }
        if named("vary") && !vary_done {
            vary_done = true;
            let sep: &[u8] = if value.is_empty() { b"" } else { b", " };
            field(&mut out, name, &[value, sep, b"Accept-Encoding"]);
            continue;
        }
        field(&mut out, name, &[value]);
    }
    if !vary_done {
        field(&mut out, b"Vary", &[b"Accept-Encoding"]);
    }
    if let Some((alg, chunked)) = coding {
        field(&mut out, b"Content-Encoding", &[alg.token().as_bytes()]);
        if chunked {
            field(&mut out, b"Transfer-Encoding", &[b"chunked"]);
        }
    }
    out.extend_from_slice(b"\r\n");
    // Anything after the blank line is kept as it is.
    out.extend_from_slice(rest);
    head.truncate(start);
    head.extend_from_slice(&out);
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[&[u8]]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    for part in value {
        out.extend_from_slice(part);
    }
    out.extend_from_slice(b"\r\n");
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn is(h: Header<'_>, name: &str) -> bool {
    h.name.eq_ignore_ascii_case(name.as_bytes())
}

/// The elements of a comma-separated field value, trimmed, empty ones left out.
fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|e| !e.is_empty())
}

/// The media type of `content_type` (parameters ignored) starts with one of `types` (written
/// lowercase by the master).
fn type_matches(content_type: &[u8], types: &[String]) -> bool {
    let media = content_type
        .split(|&b| b == b';')
        .next()
        .unwrap_or(b"")
        .trim_ascii()
        .to_ascii_lowercase();
    types.iter().any(|t| media.starts_with(t.as_bytes()))
}
