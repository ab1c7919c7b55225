//! How a parsed head keeps its bytes: one pooled copy of the head with the spans of its parts
//! ([`HeadStore`]), short strings inline ([`SmallStr`]), and the request and response heads
//! built on them.

use std::cell::RefCell;

use super::connection::ConnectionSummary;
use super::request::split_absolute_form;
use super::{BodyFraming, HttpVersion};

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
pub(super) const STORE_KEEP_BYTES: usize = 8 * 1024;
const STORE_KEEP_FIELDS: usize = 128;
/// Sized for ordinary heads so that a fresh store rarely grows.
const STORE_INITIAL_BYTES: usize = 1024;
const STORE_INITIAL_FIELDS: usize = 16;

type FreeStore = (Vec<u8>, Vec<FieldSpan>);

thread_local! {
    static FREE_STORES: RefCell<Vec<FreeStore>> = const { RefCell::new(Vec::new()) };
}

/// How many free stores this thread keeps (tests check what goes back to the pool).
#[cfg(test)]
pub(super) fn free_stores() -> usize {
    FREE_STORES.with(|p| p.borrow().len())
}

impl HeadStore {
    /// Storage holding a copy of `head`, no fields yet.
    pub(super) fn copy_of(head: &[u8]) -> Self {
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
    pub(super) fn span_of(head: &[u8], part: &[u8]) -> Span {
        let start = (part.as_ptr() as usize).wrapping_sub(head.as_ptr() as usize);
        if part.is_empty() || start > head.len() || part.len() > head.len() - start {
            return (0, 0);
        }
        // Heads are checked to fit u32 offsets before a store is made.
        #[allow(clippy::cast_possible_truncation)]
        let span = (start as u32, (start + part.len()) as u32);
        span
    }

    pub(super) fn push_field(&mut self, head: &[u8], name: &[u8], value: &[u8]) {
        self.fields.push(FieldSpan {
            name: Self::span_of(head, name),
            value: Self::span_of(head, value),
        });
    }

    pub(super) fn get(&self, (start, end): Span) -> &[u8] {
        self.bytes.get(start as usize..end as usize).unwrap_or(&[])
    }

    /// A part known to be UTF-8 (it was a `&str` when the head was parsed).
    pub(super) fn get_str(&self, span: Span) -> &str {
        std::str::from_utf8(self.get(span)).unwrap_or("")
    }

    /// Where the copied bytes live: tests check that storage is reused.
    #[cfg(test)]
    pub(super) fn bytes_ptr(&self) -> *const u8 {
        self.bytes.as_ptr()
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
pub(super) const SMALL_STR_INLINE: usize = 62;

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
        // At most SMALL_STR_INLINE (62) bytes here: longer ones went to the heap above.
        #[allow(clippy::cast_possible_truncation)]
        let len = s.len() as u8;
        SmallStr(SmallRepr::Inline { len, buf })
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
    pub(super) target: Span,
    pub version: HttpVersion,
    pub(super) store: HeadStore,
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
    pub(super) content_length: Option<u64>,
    pub(super) conn: ConnectionSummary,
}

impl RequestHead {
    /// Give the head's storage back to the pool now; the head reads as empty after (an
    /// ended exchange kept for reuse holds no head bytes).
    pub fn release_storage(&mut self) {
        self.store = HeadStore {
            bytes: Vec::new(),
            fields: Vec::new(),
        };
    }

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
    pub(super) reason: Span,
    pub version: HttpVersion,
    pub(super) store: HeadStore,
    pub head_len: usize,
    pub framing: BodyFraming,
    /// The upstream allows reusing its connection after this response.
    pub keep_alive: bool,
    pub(super) content_length: Option<u64>,
    pub(super) conn: ConnectionSummary,
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
