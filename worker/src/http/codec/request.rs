//! A client's request head: parsing, and every rule that refuses a request before anything of
//! it is forwarded. This is the file to read to review the defences against request smuggling
//! (Content-Length against Transfer-Encoding, repeated or malformed framing fields, obsolete
//! line folding, bare LF and stray CR, control bytes in values, header-name syntax, the Host
//! rules, size limits). The chunked framing of the body that follows is checked as it streams,
//! by [`BodyTracker`](super::BodyTracker) (`body.rs`); what `Connection` may strip on the way
//! out is in `connection.rs`.
//!
//! The field-syntax helpers at the end (tokens, forbidden bytes, list elements, the merged
//! Content-Length) are the ones response parsing and rewriting use too.

use zentinel_protocol::config::Limits;

use super::connection::ConnectionTokens;
use super::head::{HeadStore, Header, RequestHead, SmallStr};
use super::{BodyFraming, HttpVersion, Parsed, STACK_HEADERS};

/// Why a client's request is refused. Each maps to one status code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    #[error("request line too long")]
    UriTooLong,
    #[error("request header fields too large")]
    HeadersTooLarge,
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("HTTP version not supported")]
    VersionNotSupported,
}

impl RequestError {
    pub fn status(&self) -> u16 {
        match self {
            RequestError::BadRequest(_) => 400,
            RequestError::UriTooLong => 414,
            RequestError::HeadersTooLarge => 431,
            RequestError::PayloadTooLarge => 413,
            RequestError::VersionNotSupported => 505,
        }
    }
}

/// Parse and validate a request head at the start of `buf`.
///
/// Refused (never forwarded): both Content-Length and Transfer-Encoding; several
/// Content-Length values that differ (identical repeats are merged); a Transfer-Encoding other
/// than exactly `chunked` as the final coding; obfuscated names/values (whitespace before the
/// colon, NUL/CR/LF/control bytes in values); obsolete line folding (httparse refuses a line
/// starting with whitespace as an invalid header name); bare LF line endings; a missing Host on
/// HTTP/1.1; a head longer than `limits.max_header_size_bytes` (414 when the request line alone
/// is longer, 431 otherwise, also as soon as a partial head exceeds it); more headers than
/// `limits.max_header_count` (431); a Content-Length above `limits.max_body_size_bytes` (413).
pub fn parse_request(buf: &[u8], limits: &Limits) -> Result<Parsed<RequestHead>, RequestError> {
    let max_head = usize::try_from(limits.max_header_size_bytes).unwrap_or(usize::MAX);
    let head_len = match scan_request_head(buf, max_head)? {
        Some(n) => n,
        None => return Ok(Parsed::Partial),
    };
    // Parts of the head are kept as u32 offsets.
    if u32::try_from(head_len).is_err() {
        return Err(RequestError::HeadersTooLarge);
    }
    let head = &buf[..head_len];

    // Every header line takes at least 4 bytes (`a:` CRLF), so the head bounds how many slots
    // can be used: no allocation sized by a huge configured count.
    let max_count = usize::try_from(limits.max_header_count).unwrap_or(usize::MAX);
    let slots = max_count.min(head_len / 4 + 1);
    let mut stack_headers = [httparse::EMPTY_HEADER; STACK_HEADERS];
    let mut heap_headers = Vec::new();
    let raw_headers = if slots <= STACK_HEADERS {
        &mut stack_headers[..slots]
    } else {
        heap_headers.resize(slots, httparse::EMPTY_HEADER);
        &mut heap_headers[..]
    };
    let mut req = httparse::Request::new(raw_headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head_len => {}
        // The scan found the blank line that ends the head; httparse disagreeing means the
        // head is malformed in a way the scan does not look for.
        Ok(_) => return Err(RequestError::BadRequest("malformed request head")),
        Err(httparse::Error::TooManyHeaders) => return Err(RequestError::HeadersTooLarge),
        Err(httparse::Error::Version) => return Err(version_error(head)),
        Err(httparse::Error::HeaderName) => {
            return Err(RequestError::BadRequest("invalid header name"))
        }
        Err(httparse::Error::HeaderValue) => {
            return Err(RequestError::BadRequest("invalid header value"))
        }
        Err(_) => return Err(RequestError::BadRequest("invalid request line")),
    }
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(RequestError::BadRequest("incomplete request line"));
    };
    let version = match minor {
        0 => HttpVersion::Http10,
        1 => HttpVersion::Http11,
        _ => return Err(RequestError::VersionNotSupported),
    };
    let raw: &[httparse::Header<'_>] = req.headers;
    let headers = || {
        raw.iter().map(|h| Header {
            name: h.name.as_bytes(),
            value: h.value,
        })
    };
    for h in headers() {
        if h.name.is_empty() || !h.name.iter().all(|&b| is_tchar(b)) {
            return Err(RequestError::BadRequest("invalid header name"));
        }
        if has_forbidden_value_byte(h.value) {
            return Err(RequestError::BadRequest(
                "control character in header value",
            ));
        }
    }

    // Request target: origin-form, absolute-form (http/https) or `*` for OPTIONS. CONNECT
    // (authority-form) is refused: a reverse proxy has nothing to tunnel to, and relaying it
    // would turn the connection into an unframed stream.
    if method.eq_ignore_ascii_case("CONNECT") {
        return Err(RequestError::BadRequest("CONNECT is not supported"));
    }
    let mut authority_host = None;
    if target.starts_with('/') {
        // origin-form
    } else if let Some((authority, _)) = split_absolute_form(target) {
        authority_host = Some(
            normalize_authority(authority.as_bytes())
                .filter(|h| !h.is_empty())
                .ok_or(RequestError::BadRequest(
                    "invalid authority in request target",
                ))?,
        );
    } else if target == "*" && method == "OPTIONS" {
        // asterisk-form
    } else {
        return Err(RequestError::BadRequest("invalid request target"));
    }

    let mut host_header: Option<&[u8]> = None;
    let mut te_count = 0usize;
    let mut te_value: &[u8] = b"";
    let mut has_cl = false;
    let mut upgrade_values: Vec<&[u8]> = Vec::new();
    let mut expect_continue = false;
    for h in headers() {
        let name = h.name;
        if name.eq_ignore_ascii_case(b"host") {
            if host_header.is_some() {
                return Err(RequestError::BadRequest("multiple Host headers"));
            }
            host_header = Some(h.value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te_count += 1;
            te_value = h.value;
        } else if name.eq_ignore_ascii_case(b"content-length") {
            has_cl = true;
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade_values.push(h.value);
        } else if name.eq_ignore_ascii_case(b"expect") {
            expect_continue |= trim_ows(h.value).eq_ignore_ascii_case(b"100-continue");
        }
    }

    let host = match host_header {
        Some(v) => {
            let h =
                normalize_authority(v).ok_or(RequestError::BadRequest("invalid Host header"))?;
            if h.is_empty() {
                if version == HttpVersion::Http11 {
                    return Err(RequestError::BadRequest("empty Host header"));
                }
                None
            } else {
                Some(h)
            }
        }
        None if version == HttpVersion::Http11 => {
            return Err(RequestError::BadRequest("missing Host header"))
        }
        None => None,
    };
    // RFC 9112 3.2.2: the absolute-form authority wins over the Host header.
    let host = authority_host.or(host);

    let content_length = merged_content_length(headers()).map_err(RequestError::BadRequest)?;
    let chunked = if te_count > 0 {
        if version == HttpVersion::Http10 {
            return Err(RequestError::BadRequest(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        if te_count > 1 {
            return Err(RequestError::BadRequest(
                "multiple Transfer-Encoding headers",
            ));
        }
        if has_cl {
            return Err(RequestError::BadRequest(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        if !trim_ows(te_value).eq_ignore_ascii_case(b"chunked") {
            return Err(RequestError::BadRequest("unsupported Transfer-Encoding"));
        }
        true
    } else {
        false
    };
    let framing = if chunked {
        BodyFraming::Chunked
    } else {
        match content_length {
            Some(n) if n > limits.max_body_size_bytes => return Err(RequestError::PayloadTooLarge),
            Some(0) | None => BodyFraming::Empty,
            Some(n) => BodyFraming::ContentLength(n),
        }
    };

    let conn = ConnectionTokens::of(headers());
    let keep_alive = match version {
        HttpVersion::Http11 => !conn.close,
        HttpVersion::Http10 => conn.keep_alive && !conn.close,
    };
    // RFC 9110 7.8 and 10.1.1: Upgrade and 100-continue are ignored in HTTP/1.0 requests.
    let upgrade = if version == HttpVersion::Http11 && conn.upgrade && !upgrade_values.is_empty() {
        let joined = upgrade_values
            .iter()
            .map(|v| trim_ows(v))
            .filter(|v| !v.is_empty())
            .collect::<Vec<_>>()
            .join(&b", "[..]);
        String::from_utf8(joined).ok().filter(|s| !s.is_empty())
    } else {
        None
    };
    let expect_continue = expect_continue && version == HttpVersion::Http11;

    let mut store = HeadStore::copy_of(head);
    for h in raw {
        store.push_field(head, h.name.as_bytes(), h.value);
    }
    Ok(Parsed::Complete(RequestHead {
        method: SmallStr::new(method),
        target: HeadStore::span_of(head, target.as_bytes()),
        version,
        store,
        head_len,
        framing,
        keep_alive,
        host,
        expect_continue,
        upgrade,
        content_length,
        conn: conn.summary(),
    }))
}

/// Find the end of a request head, checking line endings and the size limit on the raw bytes
/// (httparse tolerates bare LF and knows nothing of the limit). `Ok(None)`: incomplete.
fn scan_request_head(buf: &[u8], max_head: usize) -> Result<Option<usize>, RequestError> {
    // RFC 9112 2.2: empty lines before the request line are ignored (clients sometimes send a
    // stray CRLF after a body).
    let mut start = 0;
    while buf.len() >= start + 2 && buf[start] == b'\r' && buf[start + 1] == b'\n' {
        start += 2;
    }
    if start > max_head {
        return Err(RequestError::BadRequest(
            "too many empty lines before the request",
        ));
    }
    let mut request_line_done = false;
    for (i, &b) in buf.iter().enumerate().skip(start) {
        match b {
            b'\n' => {
                if i == 0 || buf[i - 1] != b'\r' {
                    return Err(RequestError::BadRequest("bare LF line ending"));
                }
                if !request_line_done {
                    request_line_done = true;
                } else if buf[i - 3..=i] == *b"\r\n\r\n" {
                    let head_len = i + 1;
                    if head_len > max_head {
                        return Err(RequestError::HeadersTooLarge);
                    }
                    return Ok(Some(head_len));
                }
            }
            b'\r' if buf.get(i + 1).is_some_and(|&n| n != b'\n') => {
                return Err(RequestError::BadRequest("CR not followed by LF"));
            }
            _ => {}
        }
        if i >= max_head {
            return Err(if request_line_done {
                RequestError::HeadersTooLarge
            } else {
                RequestError::UriTooLong
            });
        }
    }
    Ok(None)
}

/// httparse reports any version other than 1.0/1.1 the same way; only a well-formed
/// `HTTP/x.y` deserves 505, anything else is a malformed request line.
fn version_error(head: &[u8]) -> RequestError {
    let line_end = head
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(head.len());
    let line = &head[..line_end];
    let version = line.rsplit(|&b| b == b' ').next().unwrap_or(b"");
    match version {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            RequestError::VersionNotSupported
        }
        _ => RequestError::BadRequest("invalid HTTP version"),
    }
}

/// `http://authority/rest` (scheme case-insensitive) -> (authority, rest).
pub(super) fn split_absolute_form(target: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = target.split_once("://")?;
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
        return None;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some((&rest[..end], &rest[end..]))
}

/// Validate a `Host` value or an authority and return its host part lowercased, the port
/// stripped, IPv6 literals kept in brackets (as the router expects). `None`: invalid (userinfo,
/// spaces, non-ASCII, a non-numeric port...). An empty value gives `Some("")`.
pub fn normalize_authority(value: &[u8]) -> Option<SmallStr> {
    let value = trim_ows(value);
    let (host, port): (&[u8], &[u8]) = if value.first() == Some(&b'[') {
        let close = value.iter().position(|&b| b == b']')?;
        let literal = &value[1..close];
        if literal.is_empty()
            || !literal
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return None;
        }
        let rest = &value[close + 1..];
        match rest.split_first() {
            None => (&value[..=close], b""),
            Some((b':', port)) => (&value[..=close], port),
            Some(_) => return None,
        }
    } else {
        match value.iter().position(|&b| b == b':') {
            Some(i) => (&value[..i], &value[i + 1..]),
            None => (value, b""),
        }
    };
    if !port.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if host.first() != Some(&b'[') && !host.iter().all(|&b| is_reg_name_byte(b)) {
        return None;
    }
    if host.is_empty() && !port.is_empty() {
        return None;
    }
    let host = std::str::from_utf8(host).ok()?;
    Some(SmallStr::lowercase(host))
}

/// RFC 3986 reg-name: unreserved / pct-encoded / sub-delims.
fn is_reg_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'%'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
        )
}

/// RFC 9110 tchar.
pub(super) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// Control bytes other than HTAB (NUL, CR, LF, DEL...) never belong in a field value.
pub(super) fn is_forbidden_value_byte(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

/// Whether a field value holds a forbidden byte. Runs over every header value of every
/// message: written without an early exit so the compiler can check 32 bytes at a time.
pub(super) fn has_forbidden_value_byte(v: &[u8]) -> bool {
    v.iter()
        .fold(false, |acc, &b| acc | is_forbidden_value_byte(b))
}

/// Strip optional whitespace (SP / HTAB) around a field value or list element.
pub(super) fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |i| i + 1);
    &v[start..end]
}

/// Comma-separated list elements of a field value, trimmed; empty elements skipped.
pub(super) fn list_elements(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',')
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

/// The single Content-Length all `Content-Length` fields agree on (several fields and
/// `5, 5` lists are fine when every value is the same). Digits only; no sign, no spaces inside.
pub fn merged_content_length<'a>(
    headers: impl IntoIterator<Item = Header<'a>>,
) -> Result<Option<u64>, &'static str> {
    let mut found: Option<u64> = None;
    for h in headers {
        if !h.name.eq_ignore_ascii_case(b"content-length") {
            continue;
        }
        for element in h.value.split(|&b| b == b',') {
            let digits = trim_ows(element);
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return Err("invalid Content-Length");
            }
            let n = digits.iter().try_fold(0u64, |acc, &d| {
                acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            });
            let n = n.ok_or("Content-Length overflows")?;
            match found {
                Some(prev) if prev != n => return Err("conflicting Content-Length values"),
                _ => found = Some(n),
            }
        }
    }
    Ok(found)
}
