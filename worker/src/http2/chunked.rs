//! Chunked HTTP/1.1 bodies on the HTTP/2 side of a stream, both ways: DATA frames written as
//! chunks and trailers as the trailer section ([`encode`], [`write_last_chunk`]), and a
//! chunked body decoded back into payload and trailers ([`ChunkedDecoder`]: the payload
//! becomes DATA frames, the trailers a HEADERS frame; gRPC's `grpc-status` travels there). The
//! session that wrote a body already checked its framing byte by byte (`http::codec::body`);
//! the decoder still refuses anything malformed rather than guess.

use bytes::BytesMut;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::sock::Buf;

/// Write `data` as one chunk.
pub fn encode(data: &[u8], out: &mut Buf) {
    out.extend(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend(data);
    out.extend(b"\r\n");
}

/// Write trailers as the end of a chunked body: the last chunk, the fields, the empty line.
pub fn write_last_chunk(trailers: Option<&HeaderMap>, out: &mut Buf) {
    out.extend(b"0\r\n");
    if let Some(t) = trailers {
        for (name, value) in t {
            out.extend(name.as_str().as_bytes());
            out.extend(b": ");
            out.extend(value.as_bytes());
            out.extend(b"\r\n");
        }
    }
    out.extend(b"\r\n");
}

/// Longest trailer section kept (the session allows no more).
const MAX_TRAILERS: usize = 16 * 1024;
/// Hex digits in a chunk size: 16 fill a u64.
const MAX_SIZE_DIGITS: u8 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In a chunk-size line: the size so far, its digits, and whether an extension started.
    Size {
        size: u64,
        digits: u8,
        ext: bool,
    },
    /// CR of the size line seen.
    SizeLf {
        size: u64,
    },
    /// Payload bytes left in the current chunk.
    Data(u64),
    /// After a chunk's payload: CR, then LF.
    DataCr,
    DataLf,
    /// After the last chunk: the trailer section, up to its empty line.
    Trailers,
    Done,
}

/// A chunked body being decoded.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
    trailers: Vec<u8>,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: State::Size {
                size: 0,
                digits: 0,
                ext: false,
            },
            trailers: Vec::new(),
        }
    }
}

impl ChunkedDecoder {
    /// The last chunk and the trailer section have been read.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Decode from `input`, appending payload to `out` until it holds `max_out` bytes.
    /// Returns the input bytes consumed.
    pub fn decode(
        &mut self,
        input: &[u8],
        out: &mut BytesMut,
        max_out: usize,
    ) -> Result<usize, &'static str> {
        let mut i = 0;
        while i < input.len() && self.state != State::Done {
            let b = input[i];
            self.state = match self.state {
                State::Data(left) => {
                    let room = max_out.saturating_sub(out.len());
                    if room == 0 {
                        return Ok(i);
                    }
                    let take = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(input.len() - i)
                        .min(room);
                    out.extend_from_slice(&input[i..i + take]);
                    i += take;
                    let left = left - take as u64;
                    if left == 0 {
                        State::DataCr
                    } else {
                        State::Data(left)
                    }
                }
                State::Size { size, digits, ext } => {
                    i += 1;
                    match b {
                        b'\r' if digits > 0 => State::SizeLf { size },
                        _ if ext => State::Size { size, digits, ext },
                        b';' | b' ' | b'\t' if digits > 0 => State::Size {
                            size,
                            digits,
                            ext: true,
                        },
                        _ => {
                            let d = (b as char).to_digit(16).ok_or("bad chunk size")?;
                            if digits >= MAX_SIZE_DIGITS {
                                return Err("chunk size too large");
                            }
                            State::Size {
                                size: size * 16 + u64::from(d),
                                digits: digits + 1,
                                ext,
                            }
                        }
                    }
                }
                State::SizeLf { size } => {
                    i += 1;
                    match (b, size) {
                        (b'\n', 0) => State::Trailers,
                        (b'\n', n) => State::Data(n),
                        _ => return Err("bad chunk size line"),
                    }
                }
                State::DataCr => {
                    i += 1;
                    if b != b'\r' {
                        return Err("chunk not followed by CRLF");
                    }
                    State::DataLf
                }
                State::DataLf => {
                    i += 1;
                    if b != b'\n' {
                        return Err("chunk not followed by CRLF");
                    }
                    State::Size {
                        size: 0,
                        digits: 0,
                        ext: false,
                    }
                }
                State::Trailers => {
                    i += 1;
                    if self.trailers.len() >= MAX_TRAILERS {
                        return Err("trailers too large");
                    }
                    self.trailers.push(b);
                    if self.trailers == b"\r\n" || self.trailers.ends_with(b"\r\n\r\n") {
                        State::Done
                    } else {
                        State::Trailers
                    }
                }
                State::Done => State::Done,
            };
        }
        Ok(i)
    }

    /// The trailer fields, once [`done`](Self::done): `None` when there were none.
    pub fn trailers(&self) -> Result<Option<HeaderMap>, &'static str> {
        if self.trailers.len() <= 2 {
            return Ok(None);
        }
        let mut raw = [httparse::EMPTY_HEADER; 64];
        let parsed = match httparse::parse_headers(&self.trailers, &mut raw) {
            Ok(httparse::Status::Complete((_, fields))) => fields,
            _ => return Err("bad trailers"),
        };
        let mut map = HeaderMap::new();
        for f in parsed {
            let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| "bad trailer name")?;
            let value = HeaderValue::from_bytes(f.value).map_err(|_| "bad trailer value")?;
            map.append(name, value);
        }
        Ok(Some(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> (Vec<u8>, ChunkedDecoder) {
        let mut d = ChunkedDecoder::default();
        let mut out = BytesMut::new();
        // One byte at a time: every state boundary is crossed mid-input.
        for b in input {
            let n = d
                .decode(std::slice::from_ref(b), &mut out, usize::MAX)
                .unwrap();
            assert_eq!(n, 1);
        }
        (out.to_vec(), d)
    }

    #[test]
    fn payload_and_trailers_come_out() {
        let (out, d) =
            decode_all(b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\ngrpc-status: 0\r\nx-a: b\r\n\r\n");
        assert_eq!(out, b"hello world");
        assert!(d.done());
        let t = d.trailers().unwrap().unwrap();
        assert_eq!(t["grpc-status"], "0");
        assert_eq!(t["x-a"], "b");
    }

    #[test]
    fn no_trailers_and_a_full_output_stops_early() {
        let mut d = ChunkedDecoder::default();
        let mut out = BytesMut::new();
        let input = b"a\r\n0123456789\r\n0\r\n\r\nNEXT";
        let n = d.decode(input, &mut out, 4).unwrap();
        assert_eq!(&out[..], b"0123");
        let m = d.decode(&input[n..], &mut out, usize::MAX).unwrap();
        assert_eq!(&out[..], b"0123456789");
        assert!(d.done());
        assert_eq!(&input[n + m..], b"NEXT");
        assert!(d.trailers().unwrap().is_none());
    }

    #[test]
    fn encoded_chunks_and_trailers_decode_back() {
        let mut out = Buf::new();
        encode(b"hello", &mut out);
        encode(b" world", &mut out);
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        write_last_chunk(Some(&t), &mut out);
        assert_eq!(
            out.as_slice(),
            b"5\r\nhello\r\n6\r\n world\r\n0\r\ngrpc-status: 0\r\n\r\n"
        );
        let (payload, d) = decode_all(out.as_slice());
        assert_eq!(payload, b"hello world");
        assert_eq!(d.trailers().unwrap().unwrap()["grpc-status"], "0");
    }

    #[test]
    fn malformed_bodies_are_refused() {
        for bad in [
            &b"zz\r\n"[..],
            b"5\r\nhelloXX",
            b"5\nhello",
            b"11111111111111111\r\n",
        ] {
            let mut d = ChunkedDecoder::default();
            assert!(
                d.decode(bad, &mut BytesMut::new(), usize::MAX).is_err(),
                "{bad:?}"
            );
        }
    }
}
