//! HTTP/1.x message heads and body framing: parsing (httparse), validation against request
//! smuggling and size limits, and the rewriting of heads as they cross the proxy.
//!
//! Pure functions over byte buffers, no I/O: the event loop feeds them what it read.
//! Bodies are forwarded byte-for-byte (chunked stays chunked); [`BodyTracker`] finds where a
//! body ends and rejects malformed framing. The one exception is a chunked response to an
//! HTTP/1.0 client, which cannot decode chunked: [`BodyTracker::feed_decoded`] strips the
//! framing and the response is delimited by the connection close instead
//! ([`ResponseHead::dechunks_for`]).

use std::cell::RefCell;
use std::net::SocketAddr;

use zentinel_protocol::config::{Limits, StaticResponse};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVersion {
    Http10,
    Http11,
}

/// How the length of a message body is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body (requests without CL/TE, HEAD responses, 1xx/204/304 responses).
    Empty,
    ContentLength(u64),
    Chunked,
    /// Response body delimited by the upstream closing its connection.
    UntilClose,
}

/// One header field of a parsed head, borrowed from the head's stored bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    /// As received (case preserved). A token (ASCII) in every parsed head.
    pub name: &'a [u8],
    pub value: &'a [u8],
}

impl std::fmt::Debug for Header<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {:?}",
            String::from_utf8_lossy(self.name),
            String::from_utf8_lossy(self.value)
        )
    }
}

/// Start and end of a part of a head, as offsets into [`HeadStore::bytes`].
type Span = (u32, u32);

#[derive(Debug, Clone, Copy)]
struct FieldSpan {
    name: Span,
    value: Span,
}

/// A parsed head's own copy of its bytes, with where each field sits in them: one copy of
/// the head instead of a `String` and a `Vec` per field. The storage comes from a per-thread
/// free list and goes back to it when the head is dropped, so parsing a head does not call
/// the allocator in steady state.
pub struct HeadStore {
    bytes: Vec<u8>,
    fields: Vec<FieldSpan>,
}

/// Free head storage kept per thread (the worker is single-threaded): enough for the heads in
/// flight at once. Storage grown past [`STORE_KEEP_BYTES`] by a large head is freed instead.
const STORE_POOL_MAX: usize = 256;
const STORE_KEEP_BYTES: usize = 8 * 1024;
const STORE_KEEP_FIELDS: usize = 128;
/// Sized for ordinary heads so that a fresh store rarely grows.
const STORE_INITIAL_BYTES: usize = 1024;
const STORE_INITIAL_FIELDS: usize = 16;

type FreeStore = (Vec<u8>, Vec<FieldSpan>);

thread_local! {
    static FREE_STORES: RefCell<Vec<FreeStore>> = const { RefCell::new(Vec::new()) };
}

impl HeadStore {
    /// Storage holding a copy of `head`, no fields yet.
    fn copy_of(head: &[u8]) -> Self {
        let (mut bytes, mut fields) = FREE_STORES
            .try_with(|p| p.borrow_mut().pop())
            .ok()
            .flatten()
            .unwrap_or_else(|| {
                (
                    Vec::with_capacity(STORE_INITIAL_BYTES.max(head.len())),
                    Vec::with_capacity(STORE_INITIAL_FIELDS),
                )
            });
        bytes.clear();
        fields.clear();
        bytes.extend_from_slice(head);
        HeadStore { bytes, fields }
    }

    /// Where `part` (a sub-slice of `head`, the slice this store copied) lies. Parts that are
    /// not inside `head` (httparse's static empty reason) are empty.
    fn span_of(head: &[u8], part: &[u8]) -> Span {
        let start = (part.as_ptr() as usize).wrapping_sub(head.as_ptr() as usize);
        if part.is_empty() || start > head.len() || part.len() > head.len() - start {
            return (0, 0);
        }
        // Heads are checked to fit u32 offsets before a store is made.
        (start as u32, (start + part.len()) as u32)
    }

    fn push_field(&mut self, head: &[u8], name: &[u8], value: &[u8]) {
        self.fields.push(FieldSpan {
            name: Self::span_of(head, name),
            value: Self::span_of(head, value),
        });
    }

    fn get(&self, (start, end): Span) -> &[u8] {
        self.bytes.get(start as usize..end as usize).unwrap_or(&[])
    }

    /// A part known to be UTF-8 (it was a `&str` when the head was parsed).
    fn get_str(&self, span: Span) -> &str {
        std::str::from_utf8(self.get(span)).unwrap_or("")
    }

    fn headers(&self) -> Headers<'_> {
        Headers {
            store: self,
            fields: self.fields.iter(),
        }
    }
}

impl Drop for HeadStore {
    fn drop(&mut self) {
        let bytes = std::mem::take(&mut self.bytes);
        let fields = std::mem::take(&mut self.fields);
        if bytes.capacity() == 0
            || bytes.capacity() > STORE_KEEP_BYTES
            || fields.capacity() > STORE_KEEP_FIELDS
        {
            return;
        }
        // At thread exit the pool may be gone already: then the storage is simply freed.
        let _ = FREE_STORES.try_with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < STORE_POOL_MAX {
                p.push((bytes, fields));
            }
        });
    }
}

impl Clone for HeadStore {
    fn clone(&self) -> Self {
        HeadStore {
            bytes: self.bytes.clone(),
            fields: self.fields.clone(),
        }
    }
}

impl std::fmt::Debug for HeadStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.headers()).finish()
    }
}

/// The header fields of a parsed head, in the order received.
#[derive(Clone)]
pub struct Headers<'a> {
    store: &'a HeadStore,
    fields: std::slice::Iter<'a, FieldSpan>,
}

impl<'a> Iterator for Headers<'a> {
    type Item = Header<'a>;
    fn next(&mut self) -> Option<Header<'a>> {
        let f = self.fields.next()?;
        Some(Header {
            name: self.store.get(f.name),
            value: self.store.get(f.value),
        })
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.fields.size_hint()
    }
}

impl ExactSizeIterator for Headers<'_> {}

/// Longest string [`SmallStr`] keeps inline; request methods and host names are shorter.
const SMALL_STR_INLINE: usize = 62;

/// A short string stored inline (request methods, host names), on the heap only when longer
/// than [`SMALL_STR_INLINE`] bytes. Dereferences to `str`.
#[derive(Clone)]
pub struct SmallStr(SmallRepr);

#[derive(Clone)]
enum SmallRepr {
    /// The common request methods: no copy, no UTF-8 check when read.
    Static(&'static str),
    Inline {
        len: u8,
        buf: [u8; SMALL_STR_INLINE],
    },
    Heap(Box<str>),
}

/// Methods [`SmallStr::new`] recognizes (case-sensitive, as methods are).
const KNOWN_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE",
];

impl SmallStr {
    pub fn new(s: &str) -> Self {
        if let Some(m) = KNOWN_METHODS.iter().find(|m| **m == s) {
            return SmallStr(SmallRepr::Static(m));
        }
        Self::from_bytes_mapped(s, |b| b)
    }

    /// `s` with ASCII letters lowercased.
    pub fn lowercase(s: &str) -> Self {
        Self::from_bytes_mapped(s, |b| b.to_ascii_lowercase())
    }

    fn from_bytes_mapped(s: &str, map: impl Fn(u8) -> u8) -> Self {
        if s.len() > SMALL_STR_INLINE {
            let mut owned = s.to_owned();
            if map(b'A') != b'A' {
                owned.make_ascii_lowercase();
            }
            return SmallStr(SmallRepr::Heap(owned.into_boxed_str()));
        }
        let mut buf = [0u8; SMALL_STR_INLINE];
        for (d, &b) in buf.iter_mut().zip(s.as_bytes()) {
            *d = map(b);
        }
        SmallStr(SmallRepr::Inline {
            len: s.len() as u8,
            buf,
        })
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            SmallRepr::Static(s) => s,
            // Built from a `&str` with only ASCII bytes changed: always UTF-8.
            SmallRepr::Inline { len, buf } => {
                std::str::from_utf8(&buf[..usize::from(*len)]).unwrap_or("")
            }
            SmallRepr::Heap(s) => s,
        }
    }
}

impl std::ops::Deref for SmallStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for SmallStr {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}
impl Eq for SmallStr {}

impl PartialEq<str> for SmallStr {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for SmallStr {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::fmt::Debug for SmallStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for SmallStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: SmallStr,
    /// Request target as received (origin-form path and query, or absolute-form).
    target: Span,
    pub version: HttpVersion,
    store: HeadStore,
    /// Bytes of the buffer the head occupied (request line + headers + blank line).
    pub head_len: usize,
    pub framing: BodyFraming,
    /// The client allows the connection to stay open after this exchange
    /// (HTTP/1.1 without `Connection: close`, or HTTP/1.0 with `Connection: keep-alive`).
    pub keep_alive: bool,
    /// `Host` header (or absolute-form authority), lowercased, port stripped.
    pub host: Option<SmallStr>,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    /// `Connection: upgrade` with an `Upgrade` header: its value (e.g. `websocket`).
    pub upgrade: Option<String>,
    /// What parsing learnt and rewriting needs again: saves passes over the fields.
    content_length: Option<u64>,
    conn: ConnectionSummary,
}

impl RequestHead {
    /// Request target as received (origin-form path and query, or absolute-form).
    pub fn target(&self) -> &str {
        self.store.get_str(self.target)
    }
    /// Header fields as received (case preserved), in order.
    pub fn headers(&self) -> Headers<'_> {
        self.store.headers()
    }
    /// Path part of the target, without the query string.
    pub fn path(&self) -> &str {
        let target = self.target();
        let rest = match split_absolute_form(target) {
            Some((_, after_authority)) => after_authority,
            None => target,
        };
        let end = rest.find(['?', '#']).unwrap_or(rest.len());
        match &rest[..end] {
            "" => "/",
            p => p,
        }
    }
    pub fn is_head(&self) -> bool {
        // Asked several times per exchange: the common case skips the UTF-8 check.
        match &self.method.0 {
            SmallRepr::Static(m) => *m == "HEAD",
            _ => self.method.eq_ignore_ascii_case("HEAD"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub status: u16,
    reason: Span,
    pub version: HttpVersion,
    store: HeadStore,
    pub head_len: usize,
    pub framing: BodyFraming,
    /// The upstream allows reusing its connection after this response.
    pub keep_alive: bool,
    content_length: Option<u64>,
    conn: ConnectionSummary,
}

impl ResponseHead {
    /// Reason phrase as received (empty when absent or not plain ASCII).
    pub fn reason(&self) -> &str {
        self.store.get_str(self.reason)
    }
    /// Header fields as received (case preserved), in order.
    pub fn headers(&self) -> Headers<'_> {
        self.store.headers()
    }
    /// 1xx other than 101: forwarded to the client, then the final response follows.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }

    /// Whether this response's chunked framing must be removed on the way to a client of
    /// `client_version` (HTTP/1.0 clients know no chunked coding). The body is then sent
    /// decoded, without Content-Length, and the client connection closed after it.
    pub fn dechunks_for(&self, client_version: HttpVersion) -> bool {
        client_version == HttpVersion::Http10 && self.framing == BodyFraming::Chunked
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed<T> {
    Complete(T),
    /// More bytes are needed.
    Partial,
}

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

/// Why an upstream's response is unusable (the client gets 502).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid upstream response: {0}")]
pub struct ResponseError(pub &'static str);

/// Headers that describe one connection, never the message: not forwarded by a proxy.
/// (`Transfer-Encoding` is hop-by-hop too, but bodies are forwarded byte-for-byte, so the
/// framing header must travel with them.)
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// Headers a `Connection` list can never strip: removing them would change the framing or the
/// target of the message as the next hop sees it (a known smuggling trick:
/// `Connection: Content-Length`).
const NEVER_CONNECTION_NAMED: &[&str] = &["host", "content-length", "transfer-encoding"];

/// Header names are compared without allocating a lowercased copy (this runs for every header
/// of every message).
fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| h.as_bytes().eq_ignore_ascii_case(name))
}

/// Room for this many header fields on the stack; more (rare) take a heap allocation.
const STACK_HEADERS: usize = 48;

/// `Name: n\r\n`, keeping the field name as the client or upstream spelled it.
fn push_length_field(out: &mut Vec<u8>, name: &[u8], n: u64) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    push_decimal(out, n);
    out.extend_from_slice(b"\r\n");
}

/// Append the decimal form of `n` (no formatting machinery, no allocation).
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Parse and validate a request head at the start of `buf`.
///
/// Refused (never forwarded): both Content-Length and Transfer-Encoding; several
/// Content-Length values that differ (identical repeats are merged); a Transfer-Encoding other
/// than exactly `chunked` as the final coding; obfuscated names/values (whitespace before the
/// colon, NUL/CR/LF/control bytes in values); bare LF line endings; a missing Host on HTTP/1.1;
/// a head longer than `limits.max_header_size_bytes` (414 when the request line alone is
/// longer, 431 otherwise, also as soon as a partial head exceeds it); more headers than
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
fn split_absolute_form(target: &str) -> Option<(&str, &str)> {
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
fn is_tchar(b: u8) -> bool {
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
fn is_forbidden_value_byte(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

/// Whether a field value holds a forbidden byte. Runs over every header value of every
/// message: written without an early exit so the compiler can check 32 bytes at a time.
fn has_forbidden_value_byte(v: &[u8]) -> bool {
    v.iter()
        .fold(false, |acc, &b| acc | is_forbidden_value_byte(b))
}

/// Strip optional whitespace (SP / HTAB) around a field value or list element.
fn trim_ows(v: &[u8]) -> &[u8] {
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
fn list_elements(v: &[u8]) -> impl Iterator<Item = &[u8]> {
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

/// [`ConnectionTokens`] without the other option names, kept in a parsed head: most messages
/// name no other option, and then rewriting the head needs no new pass over its fields.
#[derive(Debug, Clone, Copy)]
struct ConnectionSummary {
    close: bool,
    keep_alive: bool,
    upgrade: bool,
    other_names: bool,
}

impl ConnectionSummary {
    fn tokens<'a>(self, headers: Headers<'a>) -> ConnectionTokens<'a> {
        if self.other_names {
            return ConnectionTokens::of(headers);
        }
        ConnectionTokens {
            close: self.close,
            keep_alive: self.keep_alive,
            upgrade: self.upgrade,
            names: Vec::new(),
        }
    }
}

/// What the `Connection` fields of a message say.
#[derive(Debug, Default)]
struct ConnectionTokens<'a> {
    close: bool,
    keep_alive: bool,
    upgrade: bool,
    /// The other options, as received (compared ignoring case): these headers are hop-by-hop
    /// too. (The three above are options as well; kept as flags, they cost no allocation on
    /// the common path.)
    names: Vec<&'a [u8]>,
}

impl<'a> ConnectionTokens<'a> {
    fn summary(&self) -> ConnectionSummary {
        ConnectionSummary {
            close: self.close,
            keep_alive: self.keep_alive,
            upgrade: self.upgrade,
            other_names: !self.names.is_empty(),
        }
    }

    fn of(headers: impl IntoIterator<Item = Header<'a>>) -> Self {
        let mut t = ConnectionTokens::default();
        for h in headers {
            if !h.name.eq_ignore_ascii_case(b"connection") {
                continue;
            }
            for token in list_elements(h.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    t.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    t.keep_alive = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    t.upgrade = true;
                } else {
                    t.names.push(token);
                }
            }
        }
        t
    }

    /// Whether the header `name` (any case) must not be forwarded because a `Connection`
    /// field names it.
    fn strips(&self, name: &[u8]) -> bool {
        let named = (self.close && name.eq_ignore_ascii_case(b"close"))
            || (self.keep_alive && name.eq_ignore_ascii_case(b"keep-alive"))
            || (self.upgrade && name.eq_ignore_ascii_case(b"upgrade"))
            || self.names.iter().any(|n| n.eq_ignore_ascii_case(name));
        named
            && !NEVER_CONNECTION_NAMED
                .iter()
                .any(|n| n.as_bytes().eq_ignore_ascii_case(name))
    }
}

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

/// Where a request came from, for the forwarding headers.
#[derive(Debug, Clone)]
pub struct ForwardContext {
    pub client: SocketAddr,
    /// The listener's local address (for `Forwarded: by=` / `host=` fallbacks).
    pub listener: SocketAddr,
    /// `"http"` (or `"https"` once TLS exists).
    pub scheme: &'static str,
    /// The request's trace id, sent as `X-Trace-Id` (replacing the client's). `None`: none.
    pub trace_id: Option<String>,
    /// The verified client certificate's subject (mutual TLS), sent as
    /// `X-Client-Cert-Subject`. The client's own field of that name is always dropped.
    pub client_cert_subject: Option<std::rc::Rc<str>>,
}

/// Serialize the request head to send upstream: hop-by-hop headers removed (Connection, the
/// headers it names, Keep-Alive, Proxy-Connection, TE, Trailer, Upgrade unless upgrading);
/// `X-Forwarded-For` appended to, `X-Forwarded-Proto`, `X-Forwarded-Host` and `Forwarded`
/// (RFC 7239) added; HTTP/1.1 always; `Connection: keep-alive`, or `Connection: upgrade` plus
/// the `Upgrade` header when `head.upgrade` is set. Framing headers are kept as received.
pub fn write_upstream_request(head: &RequestHead, ctx: &ForwardContext, out: &mut Vec<u8>) {
    use std::io::Write as _;
    let conn = head.conn.tokens(head.headers());
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.store.get(head.target));
    out.extend_from_slice(b" HTTP/1.1\r\n");

    let mut host_value: Option<&[u8]> = None;
    let mut wrote_cl = false;
    for h in head.headers() {
        let name = h.name;
        if is_hop_by_hop(name) || conn.strips(name) {
            continue;
        }
        // Gathered below, into the proxy's own fields.
        if name.eq_ignore_ascii_case(b"x-forwarded-for") || name.eq_ignore_ascii_case(b"forwarded")
        {
            continue;
        }
        // Set by this proxy only: a client must not be able to claim another scheme/host.
        if name.eq_ignore_ascii_case(b"x-forwarded-proto")
            || name.eq_ignore_ascii_case(b"x-forwarded-host")
        {
            continue;
        }
        // The proxy's own trace id replaces the client's (the same value when it sent one).
        if ctx.trace_id.is_some() && name.eq_ignore_ascii_case(b"x-trace-id") {
            continue;
        }
        // Only the proxy vouches for a client certificate.
        if name.eq_ignore_ascii_case(b"x-client-cert-subject") {
            continue;
        }
        if name.eq_ignore_ascii_case(b"host") {
            host_value = Some(trim_ows(h.value));
        } else if name.eq_ignore_ascii_case(b"content-length") {
            // Identical repeats were accepted; the next hop sees a single value.
            if !wrote_cl {
                if let Some(n) = head.content_length {
                    push_length_field(out, h.name, n);
                }
                wrote_cl = true;
            }
            continue;
        }
        push_header(out, h.name, h.value);
    }
    // The elements of the client's fields named `name` (X-Forwarded-For, Forwarded), each
    // followed by ", ": the proxy's own element comes last.
    let push_previous = |out: &mut Vec<u8>, name: &[u8]| {
        for h in head.headers() {
            if h.name.eq_ignore_ascii_case(name) && !conn.strips(h.name) {
                for e in list_elements(h.value) {
                    out.extend_from_slice(e);
                    out.extend_from_slice(b", ");
                }
            }
        }
    };

    // Writing into a Vec cannot fail.
    if host_value.is_none() && head.version == HttpVersion::Http10 {
        let _ = write!(out, "Host: {}\r\n", ctx.listener);
    }
    let client_ip = ctx.client.ip().to_canonical();
    out.extend_from_slice(b"X-Forwarded-For: ");
    push_previous(out, b"x-forwarded-for");
    push_ip(out, client_ip);
    out.extend_from_slice(b"\r\n");
    push_header(out, b"X-Forwarded-Proto", ctx.scheme.as_bytes());
    let host_value = host_value.filter(|h| !h.is_empty());
    if let Some(h) = host_value {
        push_header(out, b"X-Forwarded-Host", h);
    }

    out.extend_from_slice(b"Forwarded: ");
    push_previous(out, b"forwarded");
    match client_ip {
        std::net::IpAddr::V4(_) => {
            out.extend_from_slice(b"for=");
            push_ip(out, client_ip);
        }
        std::net::IpAddr::V6(_) => {
            out.extend_from_slice(b"for=\"[");
            push_ip(out, client_ip);
            out.extend_from_slice(b"]\"");
        }
    }
    out.extend_from_slice(b";proto=");
    out.extend_from_slice(ctx.scheme.as_bytes());
    out.extend_from_slice(b";host=");
    match host_value {
        Some(h) => push_forwarded_value(out, h),
        // A socket address always holds a `:`, never a `"` or `\`: the quoted-string form,
        // with nothing to escape.
        None => {
            let _ = write!(out, "\"{}\"", ctx.listener);
        }
    }
    out.extend_from_slice(b"\r\n");
    if let Some(id) = &ctx.trace_id {
        push_header(out, b"X-Trace-Id", id.as_bytes());
    }
    if let Some(subject) = &ctx.client_cert_subject {
        push_header(out, b"X-Client-Cert-Subject", subject.as_bytes());
    }

    match &head.upgrade {
        Some(protocol) => {
            push_header(out, b"Connection", b"upgrade");
            push_header(out, b"Upgrade", protocol.as_bytes());
        }
        None => push_header(out, b"Connection", b"keep-alive"),
    }
    out.extend_from_slice(b"\r\n");
}

/// An IP address as its `Display` form writes it; IPv4 (the common case) without the
/// formatting machinery.
fn push_ip(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut text = [0u8; 15];
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[len] = b'.';
                    len += 1;
                }
                if octet >= 100 {
                    text[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    text[len] = b'0' + octet / 10 % 10;
                    len += 1;
                }
                text[len] = b'0' + octet % 10;
                len += 1;
            }
            out.extend_from_slice(&text[..len]);
        }
        std::net::IpAddr::V6(v6) => {
            use std::io::Write as _;
            // Writing into a Vec cannot fail.
            let _ = write!(out, "{v6}");
        }
    }
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// RFC 7239 value: a token as is, anything else as a quoted-string.
fn push_forwarded_value(out: &mut Vec<u8>, v: &[u8]) {
    if !v.is_empty() && v.iter().all(|&b| is_tchar(b)) {
        out.extend_from_slice(v);
        return;
    }
    out.push(b'"');
    for &b in v {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// Serialize the response head to send to the client: hop-by-hop headers removed, then
/// `Connection: close` when `close` is set, else `Connection: keep-alive` for HTTP/1.0
/// clients. `client_version` is the request's version; the status line is always HTTP/1.1
/// (RFC 9110 6.2: the highest version the sender supports). A chunked response to an HTTP/1.0
/// client loses its `chunked` coding ([`ResponseHead::dechunks_for`]: the caller decodes the
/// body with [`BodyTracker::feed_decoded`] and must pass `close = true`, the close being the
/// only end-of-body marker left). A 101 response keeps `Connection: upgrade` and `Upgrade`.
pub fn write_client_response(
    head: &ResponseHead,
    client_version: HttpVersion,
    close: bool,
    out: &mut Vec<u8>,
) {
    write_client_response_with(head, client_version, close, &[], out);
}

/// [`write_client_response`] with fields the proxy adds (`extra`: name, value; values must
/// be valid field values, e.g. a `Set-Cookie` built here).
pub fn write_client_response_with(
    head: &ResponseHead,
    client_version: HttpVersion,
    close: bool,
    extra: &[(&[u8], &[u8])],
    out: &mut Vec<u8>,
) {
    let conn = head.conn.tokens(head.headers());
    let switching = head.status == 101;
    // RFC 9110 8.6 / RFC 9112 6.1: no framing fields in 1xx and 204 responses.
    let no_framing_fields = (100..200).contains(&head.status) || head.status == 204;
    let dechunk = head.dechunks_for(client_version);
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(head.status));
    out.push(b' ');
    out.extend_from_slice(head.store.get(head.reason));
    out.extend_from_slice(b"\r\n");
    let mut wrote_cl = false;
    for h in head.headers() {
        let name = h.name;
        let keep_for_upgrade = switching && name.eq_ignore_ascii_case(b"upgrade");
        if !keep_for_upgrade && (is_hop_by_hop(name) || conn.strips(name)) {
            continue;
        }
        let is_te = name.eq_ignore_ascii_case(b"transfer-encoding");
        if name.eq_ignore_ascii_case(b"content-length") {
            // With Transfer-Encoding the length is wrong by definition (RFC 9112 6.3:
            // an intermediary removes it); repeats collapse to one field.
            if !wrote_cl && !no_framing_fields && head.framing != BodyFraming::Chunked {
                if let Some(n) = head.content_length {
                    push_length_field(out, h.name, n);
                }
            }
            wrote_cl = true;
            continue;
        }
        if is_te && no_framing_fields {
            continue;
        }
        if is_te && dechunk {
            // Only `chunked` is undone here; other codings (rare) still describe the bytes
            // that follow.
            let mut rest = list_elements(h.value).filter(|c| !c.eq_ignore_ascii_case(b"chunked"));
            if let Some(first) = rest.next() {
                out.extend_from_slice(h.name);
                out.extend_from_slice(b": ");
                out.extend_from_slice(first);
                for c in rest {
                    out.extend_from_slice(b", ");
                    out.extend_from_slice(c);
                }
                out.extend_from_slice(b"\r\n");
            }
            continue;
        }
        push_header(out, h.name, h.value);
    }
    for (name, value) in extra {
        push_header(out, name, value);
    }
    if switching {
        push_header(out, b"Connection", b"upgrade");
    } else if head.is_interim() {
        // The connection's fate is announced by the final response.
    } else if close {
        push_header(out, b"Connection", b"close");
    } else if client_version == HttpVersion::Http10 {
        push_header(out, b"Connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
}

/// Canonical reason phrase of a status code (RFC 9110), `""` when unknown.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// A response head and body produced by the proxy. Bodyless statuses (1xx, 204, 304) get
/// neither body nor Content-Length.
pub fn local_response(
    status: u16,
    content_type: Option<&str>,
    body: &[u8],
    close: bool,
    head_only: bool,
) -> Vec<u8> {
    local_response_with(status, content_type, &[], body, close, head_only)
}

/// A response generated here, with `extra` header fields. They come from this crate, never
/// from a request or the config, so they are written as they are.
pub fn local_response_with(
    status: u16,
    content_type: Option<&str>,
    extra: &[(&str, &str)],
    body: &[u8],
    close: bool,
    head_only: bool,
) -> Vec<u8> {
    // A status line needs three digits; config validation keeps statuses in range, this keeps
    // the output well-formed regardless.
    let status = if (100..=999).contains(&status) {
        status
    } else {
        500
    };
    let bodyless = (100..200).contains(&status) || status == 204 || status == 304;
    let mut out = Vec::with_capacity(128 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(&mut out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    if !bodyless {
        if let Some(ct) = content_type {
            push_header(&mut out, b"Content-Type", ct.as_bytes());
        }
        out.extend_from_slice(b"Content-Length: ");
        push_decimal(&mut out, body.len() as u64);
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in extra {
        push_header(&mut out, name.as_bytes(), value.as_bytes());
    }
    // Stated either way so that HTTP/1.0 clients (keep-alive only on request) stay in step.
    push_header(
        &mut out,
        b"Connection",
        if close {
            &b"close"[..]
        } else {
            &b"keep-alive"[..]
        },
    );
    out.extend_from_slice(b"\r\n");
    if !bodyless && !head_only {
        out.extend_from_slice(body);
    }
    out
}

/// A complete response generated by the proxy itself (errors: 400, 404, 413, 414, 431, 502,
/// 503, 504...). Small HTML-free text body naming the status; `Connection: close` when
/// `close`; no body for HEAD requests (`head_only`).
pub fn error_response(status: u16, close: bool, head_only: bool) -> Vec<u8> {
    let reason = reason_phrase(status);
    let body = if reason.is_empty() {
        format!("{status}\n")
    } else {
        format!("{status} {reason}\n")
    };
    local_response(
        status,
        Some("text/plain; charset=utf-8"),
        body.as_bytes(),
        close,
        head_only,
    )
}

/// A configured static response (route action).
pub fn static_response(resp: &StaticResponse, close: bool, head_only: bool) -> Vec<u8> {
    // The content type comes from the config: never let it inject header lines.
    let ct = resp.content_type.trim();
    let ct = (!ct.is_empty() && !ct.bytes().any(is_forbidden_value_byte)).then_some(ct);
    local_response(resp.status, ct, resp.body.as_bytes(), close, head_only)
}

/// The interim `HTTP/1.1 100 Continue` the proxy may send itself.
pub const CONTINUE_100: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Longest chunk extension accepted on one chunk-size line: extensions are not counted in the
/// body size, so unbounded ones would let a peer stream endless bytes into a "small" body.
const MAX_CHUNK_EXT: usize = 4096;
/// Longest trailer section accepted, for the same reason.
const MAX_TRAILERS: usize = 16 * 1024;
/// Hex digits in a chunk size: 16 fill a u64.
const MAX_CHUNK_SIZE_DIGITS: u8 = 16;

/// Finds the end of a body being streamed through, without changing its bytes.
#[derive(Debug, Clone)]
pub struct BodyTracker {
    framing: BodyFraming,
    max_body: u64,
    state: TrackState,
    /// Body bytes seen so far (decoded size for chunked bodies).
    body_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TrackState {
    /// Content-Length body with this many bytes left (0: complete).
    Length(u64),
    UntilClose,
    Chunked(Chunk),
    Failed(BodyError),
}

/// Position inside a chunked body (RFC 9112 7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Start of a chunk-size line: a hex digit must come.
    SizeStart,
    Size {
        size: u64,
        digits: u8,
    },
    /// Whitespace after the size: only `;` (an extension) may follow.
    SizeWs {
        size: u64,
    },
    Ext {
        size: u64,
        len: usize,
    },
    /// CR of the size line seen, LF must follow.
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// After the last chunk, at the start of a trailer line or the final empty line.
    TrailerStart {
        total: usize,
    },
    Trailer {
        total: usize,
    },
    TrailerLf {
        total: usize,
    },
    FinalLf,
    Done,
}

/// Result of feeding bytes to a [`BodyTracker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyProgress {
    /// How many of the fed bytes belong to the body (forward exactly these).
    pub consumed: usize,
    /// The body ended within those bytes (anything after `consumed` is the next message).
    pub complete: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("invalid chunked encoding: {0}")]
    InvalidChunk(&'static str),
    #[error("body larger than {0} bytes")]
    TooLarge(u64),
}

impl BodyTracker {
    /// `max_body` bounds the decoded body size (request bodies: `max_body_size_bytes`;
    /// responses: `u64::MAX`).
    pub fn new(framing: BodyFraming, max_body: u64) -> Self {
        let state = match framing {
            BodyFraming::Empty => TrackState::Length(0),
            BodyFraming::ContentLength(n) if n > max_body => {
                TrackState::Failed(BodyError::TooLarge(max_body))
            }
            BodyFraming::ContentLength(n) => TrackState::Length(n),
            BodyFraming::Chunked => TrackState::Chunked(Chunk::SizeStart),
            BodyFraming::UntilClose => TrackState::UntilClose,
        };
        BodyTracker {
            framing,
            max_body,
            state,
            body_bytes: 0,
        }
    }

    /// Feed the next bytes. Chunk-size lines, extensions and trailers are validated
    /// (hex digits only, no overflow, CRLF after each chunk).
    pub fn feed(&mut self, input: &[u8]) -> Result<BodyProgress, BodyError> {
        self.feed_into(input, None)
    }

    /// Like [`feed`](Self::feed), and also append the body's payload to `out`: for chunked
    /// bodies only the chunk data (sizes, extensions, trailers dropped), for other framings
    /// the consumed bytes as they are. `progress.consumed` still counts input bytes.
    pub fn feed_decoded(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<BodyProgress, BodyError> {
        if matches!(self.state, TrackState::Chunked(_)) {
            return self.feed_into(input, Some(out));
        }
        let p = self.feed_into(input, None)?;
        out.extend_from_slice(&input[..p.consumed]);
        Ok(p)
    }

    fn feed_into(
        &mut self,
        input: &[u8],
        sink: Option<&mut Vec<u8>>,
    ) -> Result<BodyProgress, BodyError> {
        match &self.state {
            TrackState::Failed(e) => Err(e.clone()),
            &TrackState::Length(left) => {
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
                let left = left - take as u64;
                self.state = TrackState::Length(left);
                self.body_bytes += take as u64;
                Ok(BodyProgress {
                    consumed: take,
                    complete: left == 0,
                })
            }
            TrackState::UntilClose => {
                let total = self.body_bytes.saturating_add(input.len() as u64);
                if total > self.max_body {
                    return Err(self.fail(BodyError::TooLarge(self.max_body)));
                }
                self.body_bytes = total;
                Ok(BodyProgress {
                    consumed: input.len(),
                    complete: false,
                })
            }
            &TrackState::Chunked(chunk) => match self.feed_chunked(chunk, input, sink) {
                Ok((chunk, consumed)) => {
                    self.state = TrackState::Chunked(chunk);
                    Ok(BodyProgress {
                        consumed,
                        complete: chunk == Chunk::Done,
                    })
                }
                Err(e) => Err(self.fail(e)),
            },
        }
    }

    fn fail(&mut self, e: BodyError) -> BodyError {
        self.state = TrackState::Failed(e.clone());
        e
    }

    /// `sink`: where chunk data goes when decoding.
    fn feed_chunked(
        &mut self,
        mut st: Chunk,
        input: &[u8],
        mut sink: Option<&mut Vec<u8>>,
    ) -> Result<(Chunk, usize), BodyError> {
        use BodyError::InvalidChunk as Bad;
        let mut i = 0;
        while i < input.len() && st != Chunk::Done {
            if let Chunk::Data { left } = st {
                // Bulk path: chunk data is forwarded without looking at it.
                let take = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(input.len() - i);
                if let Some(out) = sink.as_deref_mut() {
                    out.extend_from_slice(&input[i..i + take]);
                }
                i += take;
                let left = left - take as u64;
                st = if left == 0 {
                    Chunk::DataCr
                } else {
                    Chunk::Data { left }
                };
                continue;
            }
            let b = input[i];
            i += 1;
            st = match st {
                Chunk::SizeStart => match hex_value(b) {
                    Some(d) => Chunk::Size {
                        size: u64::from(d),
                        digits: 1,
                    },
                    None => return Err(Bad("chunk size is not a hex number")),
                },
                Chunk::Size { size, digits } => match (hex_value(b), b) {
                    (Some(d), _) => {
                        if digits >= MAX_CHUNK_SIZE_DIGITS {
                            return Err(Bad("chunk size too long"));
                        }
                        let size = size
                            .checked_mul(16)
                            .and_then(|s| s.checked_add(u64::from(d)))
                            .ok_or(Bad("chunk size overflows"))?;
                        Chunk::Size {
                            size,
                            digits: digits + 1,
                        }
                    }
                    (None, b'\r') => Chunk::SizeLf { size },
                    (None, b';') => Chunk::Ext { size, len: 0 },
                    (None, b' ' | b'\t') => Chunk::SizeWs { size },
                    (None, b'\n') => return Err(Bad("bare LF after chunk size")),
                    (None, _) => return Err(Bad("invalid byte in chunk size")),
                },
                Chunk::SizeWs { size } => match b {
                    b' ' | b'\t' => Chunk::SizeWs { size },
                    b';' => Chunk::Ext { size, len: 0 },
                    _ => return Err(Bad("whitespace after chunk size not followed by `;`")),
                },
                Chunk::Ext { size, len } => match b {
                    b'\r' => Chunk::SizeLf { size },
                    _ if is_forbidden_value_byte(b) => {
                        return Err(Bad("control character in chunk extension"))
                    }
                    _ if len >= MAX_CHUNK_EXT => return Err(Bad("chunk extension too long")),
                    _ => Chunk::Ext { size, len: len + 1 },
                },
                Chunk::SizeLf { size } => {
                    if b != b'\n' {
                        return Err(Bad("chunk size line not ended by CRLF"));
                    }
                    let total = self
                        .body_bytes
                        .checked_add(size)
                        .filter(|&t| t <= self.max_body)
                        .ok_or(BodyError::TooLarge(self.max_body))?;
                    self.body_bytes = total;
                    if size == 0 {
                        Chunk::TrailerStart { total: 0 }
                    } else {
                        Chunk::Data { left: size }
                    }
                }
                Chunk::DataCr => match b {
                    b'\r' => Chunk::DataLf,
                    _ => return Err(Bad("chunk data not followed by CRLF")),
                },
                Chunk::DataLf => match b {
                    b'\n' => Chunk::SizeStart,
                    _ => return Err(Bad("chunk data not followed by CRLF")),
                },
                Chunk::TrailerStart { total } => match b {
                    b'\r' => Chunk::FinalLf,
                    b'\n' => return Err(Bad("bare LF in trailers")),
                    b' ' | b'\t' => return Err(Bad("obsolete line folding in trailers")),
                    _ if is_forbidden_value_byte(b) => {
                        return Err(Bad("control character in trailers"))
                    }
                    _ => Chunk::Trailer { total: total + 1 },
                },
                Chunk::Trailer { total } => match b {
                    b'\r' => Chunk::TrailerLf { total },
                    b'\n' => return Err(Bad("bare LF in trailers")),
                    _ if is_forbidden_value_byte(b) => {
                        return Err(Bad("control character in trailers"))
                    }
                    _ if total >= MAX_TRAILERS => return Err(Bad("trailers too large")),
                    _ => Chunk::Trailer { total: total + 1 },
                },
                Chunk::TrailerLf { total } => match b {
                    b'\n' => Chunk::TrailerStart { total },
                    _ => return Err(Bad("trailer line not ended by CRLF")),
                },
                Chunk::FinalLf => match b {
                    b'\n' => Chunk::Done,
                    _ => return Err(Bad("chunked body not ended by CRLF")),
                },
                Chunk::Data { .. } | Chunk::Done => st,
            };
        }
        Ok((st, i))
    }

    /// `UntilClose` bodies complete when the peer closes; for other framings an EOF before
    /// completion means a truncated body.
    pub fn is_complete(&self) -> bool {
        match &self.state {
            &TrackState::Length(left) => left == 0,
            TrackState::UntilClose => true,
            TrackState::Chunked(c) => *c == Chunk::Done,
            TrackState::Failed(_) => false,
        }
    }

    pub fn framing(&self) -> BodyFraming {
        self.framing
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
