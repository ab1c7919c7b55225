//! Header blocks through an HPACK codec (`hpack`): a request's (or trailers') block decoded into a
//! [`Head`] and checked as RFC 9113 8.2-8.3 asks (pseudo-headers first and known, lowercase
//! names, no connection-specific fields, the list within SETTINGS_MAX_HEADER_LIST_SIZE), and a
//! response's header list encoded into HEADERS (+ CONTINUATION) frames.
//!
//! A [`Head`] keeps every name and value in one buffer that the connection reuses from
//! request to request: decoding a head allocates nothing once the buffers have grown.

use std::ops::Range;

use crate::frame::{self, CONTINUATION, END_HEADERS, END_STREAM, HEADERS};
use crate::hpack::Hpack;

/// Why a decoded block is not a valid head: a stream error (RST_STREAM PROTOCOL_ERROR), or
/// an HPACK failure, which is a connection error (COMPRESSION_ERROR) since the decoder's
/// table no longer matches the peer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    Malformed(&'static str),
    TooLarge,
    Compression,
}

/// A decoded request head (or trailer section).
#[derive(Default)]
pub struct Head {
    bytes: Vec<u8>,
    fields: Vec<(Range<usize>, Range<usize>)>,
    method: Option<usize>,
    scheme: Option<usize>,
    authority: Option<usize>,
    path: Option<usize>,
    /// The `content-length` field's value, parsed.
    pub content_length: Option<u64>,
}

impl Head {
    fn clear(&mut self) {
        self.bytes.clear();
        self.fields.clear();
        self.method = None;
        self.scheme = None;
        self.authority = None;
        self.path = None;
        self.content_length = None;
    }

    fn field(&self, i: Option<usize>) -> Option<&[u8]> {
        let (_, v) = self.fields.get(i?)?;
        Some(&self.bytes[v.clone()])
    }

    pub fn method(&self) -> Option<&[u8]> {
        self.field(self.method)
    }

    pub fn path(&self) -> Option<&[u8]> {
        self.field(self.path)
    }
}

/// Fields HTTP/2 forbids (RFC 9113 8.2.2): they describe the HTTP/1.1 connection.
const CONNECTION_SPECIFIC: [&[u8]; 5] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"transfer-encoding",
    b"upgrade",
];

/// Decode `block` into `head`, checking it as a request head (`trailers` false) or a trailer
/// section. `max_list`: SETTINGS_MAX_HEADER_LIST_SIZE as we announced it.
pub fn decode(
    codec: &mut impl Hpack,
    block: &[u8],
    head: &mut Head,
    trailers: bool,
    max_list: usize,
) -> Result<(), Bad> {
    head.clear();
    let mut bad: Option<Bad> = None;
    let mut list_size = 0usize;
    let mut regular_seen = false;
    let decoded = codec.decode(block, |name, value| {
        if bad.is_some() {
            // The rest of the block is still decoded (the table must follow the peer's).
            return;
        }
        list_size += name.len() + value.len() + 32;
        if list_size > max_list {
            bad = Some(Bad::TooLarge);
            return;
        }
        if let Err(why) = add_field(head, name, value, trailers, &mut regular_seen) {
            bad = Some(Bad::Malformed(why));
        }
    });
    if decoded.is_err() {
        return Err(Bad::Compression);
    }
    if let Some(bad) = bad {
        return Err(bad);
    }
    if trailers {
        return Ok(());
    }
    match head.method() {
        None => Err(Bad::Malformed("no :method")),
        Some(b"CONNECT") => {
            if head.authority.is_none() || head.path.is_some() || head.scheme.is_some() {
                Err(Bad::Malformed("CONNECT needs :authority alone"))
            } else {
                Ok(())
            }
        }
        Some(_) if head.scheme.is_none() => Err(Bad::Malformed("no :scheme")),
        Some(_) if head.path().is_none_or(<[u8]>::is_empty) => Err(Bad::Malformed("no :path")),
        Some(_) => Ok(()),
    }
}

fn add_field(
    head: &mut Head,
    name: &[u8],
    value: &[u8],
    trailers: bool,
    regular_seen: &mut bool,
) -> Result<(), &'static str> {
    let index = head.fields.len();
    if let Some(pseudo) = name.strip_prefix(b":") {
        if trailers || *regular_seen {
            return Err("pseudo-header after a regular field");
        }
        let slot = match pseudo {
            b"method" => &mut head.method,
            b"scheme" => &mut head.scheme,
            b"authority" => &mut head.authority,
            b"path" => &mut head.path,
            _ => return Err("unknown pseudo-header"),
        };
        if slot.replace(index).is_some() {
            return Err("repeated pseudo-header");
        }
    } else {
        *regular_seen = true;
        if name.is_empty() || name.iter().any(u8::is_ascii_uppercase) {
            return Err("field name empty or not lowercase");
        }
        if CONNECTION_SPECIFIC.contains(&name) {
            return Err("connection-specific field");
        }
        if name == b"te" && value != b"trailers" {
            return Err("te other than trailers");
        }
        if name == b"content-length" && !trailers {
            let n = parse_decimal(value).ok_or("content-length not a number")?;
            if head.content_length.is_some_and(|had| had != n) {
                return Err("conflicting content-length");
            }
            head.content_length = Some(n);
        }
    }
    if value.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n') {
        return Err("NUL, CR or LF in a field value");
    }
    let n = head.bytes.len()..head.bytes.len() + name.len();
    head.bytes.extend_from_slice(name);
    let v = head.bytes.len()..head.bytes.len() + value.len();
    head.bytes.extend_from_slice(value);
    head.fields.push((n, v));
    Ok(())
}

fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    s.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

/// Encode a response head (`:status` and `fields`) as HEADERS, split into CONTINUATION
/// frames past `max_frame`.
pub fn encode_response(
    codec: &mut impl Hpack,
    out: &mut Vec<u8>,
    stream: u32,
    status: u16,
    fields: &[(&[u8], &[u8])],
    end_stream: bool,
    max_frame: usize,
) {
    let at = out.len();
    frame::write_head(out, 0, HEADERS, 0, stream);
    let block_start = out.len();
    codec.start_block(out);
    let mut digits = [0u8; 3];
    let status = status.clamp(100, 999);
    digits[0] = b'0' + u8::try_from(status / 100).unwrap_or(9);
    digits[1] = b'0' + u8::try_from(status / 10 % 10).unwrap_or(9);
    digits[2] = b'0' + u8::try_from(status % 10).unwrap_or(9);
    codec.encode(b":status", &digits, out);
    for &(name, value) in fields {
        codec.encode(name, value, out);
    }
    let block_len = out.len() - block_start;
    let end_flag = if end_stream { END_STREAM } else { 0 };
    if block_len <= max_frame {
        out[at + 4] = END_HEADERS | end_flag;
        frame::patch_len(out, at, block_len);
        return;
    }
    // Too large for one frame: HEADERS with the first piece, CONTINUATIONs with the rest.
    let rest = out.split_off(block_start + max_frame);
    out[at + 4] = end_flag;
    frame::patch_len(out, at, max_frame);
    let mut pieces = rest.chunks(max_frame).peekable();
    while let Some(piece) = pieces.next() {
        let flags = if pieces.peek().is_none() {
            END_HEADERS
        } else {
            0
        };
        frame::write_head(out, piece.len(), CONTINUATION, flags, stream);
        out.extend_from_slice(piece);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hpack::Loona;

    fn block(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut codec = Loona::create();
        let mut out = Vec::new();
        for (name, value) in fields {
            codec.encode(name, value, &mut out);
        }
        out
    }

    #[test]
    fn request_head_is_checked() {
        let mut d = Loona::create();
        let mut head = Head::default();
        let ok = block(&[
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":path", b"/x"),
            (b":authority", b"a"),
            (b"content-length", b"0"),
        ]);
        assert_eq!(decode(&mut d, &ok, &mut head, false, 8192), Ok(()));
        assert_eq!(head.path(), Some(&b"/x"[..]));
        assert_eq!(head.content_length, Some(0));
        let bad = block(&[(b":method", b"GET"), (b"Host", b"a")]);
        assert!(matches!(
            decode(&mut Loona::create(), &bad, &mut head, false, 8192),
            Err(Bad::Malformed(_))
        ));
        let conn = block(&[
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":path", b"/"),
            (b"connection", b"close"),
        ]);
        assert_eq!(
            decode(&mut Loona::create(), &conn, &mut head, false, 8192),
            Err(Bad::Malformed("connection-specific field"))
        );
        assert_eq!(
            decode(&mut Loona::create(), &ok, &mut head, false, 64),
            Err(Bad::TooLarge)
        );
    }
}
