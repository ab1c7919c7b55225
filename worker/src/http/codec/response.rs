//! An upstream's response head: parsing, its body framing and whether the connection can be
//! reused. Upstreams are trusted more than clients (bare LF is tolerated, the head being
//! re-serialized), but a response whose framing is ambiguous never leaves its connection
//! reusable.

use super::connection::ConnectionTokens;
use super::head::{HeadStore, Header, ResponseHead};
use super::request::{has_forbidden_value_byte, list_elements, merged_content_length};
use super::{BodyFraming, HttpVersion, Parsed, STACK_HEADERS};

/// Why an upstream's response is unusable (the client gets 502).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid upstream response: {0}")]
pub struct ResponseError(pub &'static str);

/// Parse a response head at the start of `buf`. `request_method_is_head` decides whether a
/// body follows. 1xx, 204 and 304 have no body. Conflicting framing headers are an error.
pub fn parse_response(
    buf: &[u8],
    request_method_is_head: bool,
    max_head_bytes: usize,
) -> Result<Parsed<ResponseHead>, ResponseError> {
    let head_len = match scan_response_head(buf, max_head_bytes)? {
        Some(n) => n,
        None => return Ok(Parsed::Partial),
    };
    // Parts of the head are kept as u32 offsets.
    if u32::try_from(head_len).is_err() {
        return Err(ResponseError("response head too large"));
    }
    let head = &buf[..head_len];
    // One slot per line is always enough; no fixed header-count cap on upstreams beyond the
    // head size (responses legitimately carry many Set-Cookie fields). The stack array fits
    // ordinary responses; only a head with more fields pays for counting its lines and a
    // heap array.
    let mut stack_headers = [httparse::EMPTY_HEADER; STACK_HEADERS];
    let mut heap_headers = Vec::new();
    let mut resp = httparse::Response::new(&mut stack_headers);
    let mut parsed = resp.parse(head);
    if matches!(parsed, Err(httparse::Error::TooManyHeaders)) {
        let lines = head.iter().filter(|&&b| b == b'\n').count();
        heap_headers.resize(lines, httparse::EMPTY_HEADER);
        resp = httparse::Response::new(&mut heap_headers);
        parsed = resp.parse(head);
    }
    match parsed {
        Ok(httparse::Status::Complete(n)) if n == head_len => {}
        Ok(_) => return Err(ResponseError("malformed response head")),
        Err(httparse::Error::Version) => return Err(ResponseError("unsupported HTTP version")),
        Err(httparse::Error::Status) => return Err(ResponseError("invalid status line")),
        Err(httparse::Error::HeaderName) => return Err(ResponseError("invalid header name")),
        Err(httparse::Error::HeaderValue) => return Err(ResponseError("invalid header value")),
        Err(_) => return Err(ResponseError("malformed response head")),
    }
    let (Some(minor), Some(status)) = (resp.version, resp.code) else {
        return Err(ResponseError("incomplete status line"));
    };
    let version = match minor {
        0 => HttpVersion::Http10,
        1 => HttpVersion::Http11,
        _ => return Err(ResponseError("unsupported HTTP version")),
    };
    if status < 100 {
        return Err(ResponseError("invalid status code"));
    }
    let reason = resp.reason.unwrap_or("");
    let raw: &[httparse::Header<'_>] = resp.headers;
    let headers = || {
        raw.iter().map(|h| Header {
            name: h.name.as_bytes(),
            value: h.value,
        })
    };
    // The transfer codings of all Transfer-Encoding fields, in order: how many there are, how
    // many are `chunked`, whether the last one is.
    let mut te_codings = 0usize;
    let mut chunked_count = 0usize;
    let mut chunked_last = false;
    let mut has_te = false;
    for h in headers() {
        if has_forbidden_value_byte(h.value) {
            return Err(ResponseError("control character in header value"));
        }
        if h.name.eq_ignore_ascii_case(b"transfer-encoding") {
            has_te = true;
            for coding in list_elements(h.value) {
                let chunked = coding.eq_ignore_ascii_case(b"chunked");
                te_codings += 1;
                chunked_count += usize::from(chunked);
                chunked_last = chunked;
            }
        }
    }
    let content_length = merged_content_length(headers()).map_err(ResponseError)?;
    if has_te && version == HttpVersion::Http10 {
        // RFC 9112 6.1: such framing is faulty.
        return Err(ResponseError("Transfer-Encoding in an HTTP/1.0 response"));
    }
    if chunked_count > 1 || (chunked_count == 1 && !chunked_last) {
        return Err(ResponseError("chunked is not the final transfer coding"));
    }
    if has_te && te_codings == 0 {
        return Err(ResponseError("empty Transfer-Encoding"));
    }

    let no_body =
        request_method_is_head || (100..200).contains(&status) || status == 204 || status == 304;
    let framing = if no_body {
        BodyFraming::Empty
    } else if has_te {
        // RFC 9112 6.3: Transfer-Encoding overrides Content-Length; a final coding other than
        // chunked leaves the end of the body to the connection close.
        if chunked_last {
            BodyFraming::Chunked
        } else {
            BodyFraming::UntilClose
        }
    } else {
        match content_length {
            Some(0) => BodyFraming::Empty,
            Some(n) => BodyFraming::ContentLength(n),
            None => BodyFraming::UntilClose,
        }
    };
    let conn = ConnectionTokens::of(headers());
    let version_keep_alive = match version {
        HttpVersion::Http11 => !conn.close,
        HttpVersion::Http10 => conn.keep_alive && !conn.close,
    };
    // Both framing headers hint at smuggling: use the message, never the connection again.
    let keep_alive = version_keep_alive
        && framing != BodyFraming::UntilClose
        && !(has_te && content_length.is_some())
        && status != 101;
    let mut store = HeadStore::copy_of(head);
    for h in raw {
        store.push_field(head, h.name.as_bytes(), h.value);
    }
    Ok(Parsed::Complete(ResponseHead {
        status,
        reason: HeadStore::span_of(head, reason.as_bytes()),
        version,
        store,
        head_len,
        framing,
        keep_alive,
        content_length,
        conn: conn.summary(),
    }))
}

/// Find the end of a response head. Upstreams are allowed bare LF line endings (the head is
/// re-serialized with CRLF, so they cannot reach the client).
fn scan_response_head(buf: &[u8], max_head: usize) -> Result<Option<usize>, ResponseError> {
    let mut start = 0;
    loop {
        match buf.get(start..) {
            Some([b'\r', b'\n', ..]) => start += 2,
            Some([b'\n', ..]) => start += 1,
            _ => break,
        }
        if start > max_head {
            return Err(ResponseError("response head too large"));
        }
    }
    let mut i = start;
    while let Some(off) = buf[i..].iter().position(|&b| b == b'\n') {
        let lf = i + off;
        let end = match buf.get(lf + 1..) {
            Some([b'\n', ..]) => Some(lf + 2),
            Some([b'\r', b'\n', ..]) => Some(lf + 3),
            _ => None,
        };
        if let Some(end) = end {
            if end > max_head {
                return Err(ResponseError("response head too large"));
            }
            return Ok(Some(end));
        }
        i = lf + 1;
    }
    if buf.len() > max_head {
        return Err(ResponseError("response head too large"));
    }
    Ok(None)
}
