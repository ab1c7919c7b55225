//! Parsing an HTTP/1.x response head, for every client of the harness:
//! [`HttpClient`](crate::HttpClient), the TLS and WebSocket clients, and the tests that read a
//! body themselves (throttled, paused) after [`read_response_head`].

use std::io::Read;

use crate::{Fnv64, Response};

/// The most header lines a response head may have here.
const MAX_HEADERS: usize = 256;
/// [`read_response_head`] gives up on a head longer than this: a peer that never ends its
/// head must not make a test buffer without bound.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Parse the response head at the start of `bytes`: `Ok(None)` while it is incomplete, else
/// the head as a [`Response`] with no body yet, and the head's length in bytes.
pub fn parse_response_head(bytes: &[u8]) -> Result<Option<(Response, usize)>, String> {
    let mut headers = vec![httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    let len = match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => {
            return Err(format!(
                "unparsable response head ({e}): {:?}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(512)])
            ))
        }
    };
    let head = Response {
        minor_version: parsed.version.unwrap_or(1),
        status: parsed.code.unwrap_or(0),
        reason: parsed.reason.unwrap_or("").to_owned(),
        headers: parsed
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_owned(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
        body: Vec::new(),
        body_len: 0,
        body_checksum: Fnv64::new().finish(),
        close_delimited: false,
        chunked: false,
    };
    Ok(Some((head, len)))
}

/// Read `stream` until a whole response head has arrived. Returns the head and the bytes that
/// arrived after it (the start of a body, or of a tunnel after a `101`), for a caller that
/// reads the rest at its own pace.
pub fn read_response_head(stream: &mut impl Read) -> Result<(Response, Vec<u8>), String> {
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        if let Some((head, len)) = parse_response_head(&got)? {
            return Ok((head, got.split_off(len)));
        }
        if got.len() > MAX_HEAD_BYTES {
            return Err(format!(
                "response head too large (no end after {} bytes)",
                got.len()
            ));
        }
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("head: {e}")),
        };
        if n == 0 {
            return Err(format!(
                "EOF in the response head: {:?}",
                String::from_utf8_lossy(&got)
            ));
        }
        got.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out at most 3 bytes per read, like a slow peer.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.len().min(buf.len()).min(3);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello";

    #[test]
    fn a_head_is_complete_only_at_its_blank_line() {
        let head_len = ANSWER.len() - 5;
        for cut in 0..head_len {
            assert!(
                parse_response_head(&ANSWER[..cut]).unwrap().is_none(),
                "{cut}"
            );
        }
        let (head, len) = parse_response_head(ANSWER).unwrap().unwrap();
        assert_eq!(len, head_len);
        assert_eq!((head.status, head.reason.as_str()), (200, "OK"));
        assert_eq!(head.content_length(), Some(5));
        assert_eq!(head.header("x-a"), Some("b"));
        assert!(parse_response_head(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn reading_a_head_keeps_the_body_bytes_that_came_with_it() {
        let (head, body) = read_response_head(&mut Trickle(ANSWER)).unwrap();
        assert_eq!(head.status, 200);
        assert!(b"hello".starts_with(&body), "{body:?}");
        let (_, body) = read_response_head(&mut &ANSWER[..]).unwrap();
        assert_eq!(body, b"hello");
        let err = read_response_head(&mut Trickle(&ANSWER[..20])).unwrap_err();
        assert!(err.starts_with("EOF in the response head"), "{err}");
        let endless = [b"HTTP/1.1 200 OK\r\n".as_slice(), &[b'X'; MAX_HEAD_BYTES]].concat();
        let err = read_response_head(&mut &endless[..]).unwrap_err();
        assert!(err.starts_with("response head too large"), "{err}");
    }
}
