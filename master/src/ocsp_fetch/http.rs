//! One OCSP request over HTTP (RFC 6960 appendix A): an HTTP/1.0 POST of the DER request, the
//! DER response in the body of a 200. HTTP/1.0, so the responder answers with a body ended by
//! its length or by closing, never chunked, and closes the connection after it.
//!
//! Plain `std` sockets with a deadline over everything (connect, send, every read) are all
//! this needs; an HTTP client crate would bring an async runtime or TLS for one POST.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::request::HttpUrl;

/// The largest response read. Responses are a few KiB (one signed entry, maybe the
/// responder's certificate); anything far bigger is not an OCSP response.
const MAX_RESPONSE: usize = 64 * 1024;

/// POSTs `body` to `url` and returns the body of its 200 answer, or why not, by `deadline`.
///
/// Name resolution has no timeout of its own: the caller runs this on a thread it stops
/// waiting for at the deadline.
pub fn post(url: &HttpUrl, body: &[u8], deadline: Instant) -> Result<Vec<u8>, String> {
    let addrs: Vec<SocketAddr> = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", url.host))?
        .collect();
    let mut last_error = format!("{} resolves to no address", url.host);
    let mut stream = None;
    for addr in addrs {
        let left = remaining(deadline)?;
        match TcpStream::connect_timeout(&addr, left) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_error = format!("cannot connect to {addr}: {e}"),
        }
    }
    let mut stream = stream.ok_or(last_error)?;
    let head = format!(
        "POST {} HTTP/1.0\r\nHost: {}\r\nContent-Type: application/ocsp-request\r\n\
         Accept: application/ocsp-response\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        url.path,
        url.authority,
        body.len()
    );
    stream
        .set_write_timeout(Some(remaining(deadline)?))
        .and_then(|()| stream.write_all(&[head.as_bytes(), body].concat()))
        .map_err(|e| format!("cannot send the request: {}", io_reason(&e)))?;
    let mut received = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(body) = complete_body(&received)? {
            return Ok(body);
        }
        stream
            .set_read_timeout(Some(remaining(deadline)?))
            .map_err(|e| format!("cannot read the answer: {e}"))?;
        match stream.read(&mut chunk) {
            Ok(0) => return answer_at_eof(&received),
            Ok(n) => {
                received.extend_from_slice(&chunk[..n]);
                if received.len() > MAX_RESPONSE {
                    return Err(format!(
                        "the answer is larger than {} KiB: not an OCSP response",
                        MAX_RESPONSE / 1024
                    ));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("cannot read the answer: {}", io_reason(&e))),
        }
    }
}

/// What is left until `deadline`; an error once nothing is.
fn remaining(deadline: Instant) -> Result<Duration, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err("no answer in time".to_owned())
    } else {
        Ok(left)
    }
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            "no answer in time".to_owned()
        }
        _ => e.to_string(),
    }
}

/// An answer's head.
struct Head {
    /// Where the body starts.
    at: usize,
    status: u16,
    reason: String,
    /// `Content-Length`, when given.
    length: Option<usize>,
}

impl Head {
    /// The head, once all of it arrived.
    fn parse(received: &[u8]) -> Result<Option<Head>, String> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let at = match response.parse(received) {
            Ok(httparse::Status::Complete(at)) => at,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(format!("the answer is not HTTP: {e}")),
        };
        let mut length = None;
        for header in response.headers.iter() {
            if header.name.eq_ignore_ascii_case("transfer-encoding") {
                return Err("the answer is chunked, although the request was HTTP/1.0".to_owned());
            }
            if header.name.eq_ignore_ascii_case("content-length") {
                let value = std::str::from_utf8(header.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .ok_or_else(|| "the answer has a bad Content-Length".to_owned())?;
                length = Some(value);
            }
        }
        Ok(Some(Head {
            at,
            status: response.code.unwrap_or_default(),
            reason: response.reason.unwrap_or_default().to_owned(),
            length,
        }))
    }

    fn check_status(&self) -> Result<(), String> {
        if self.status == 200 {
            Ok(())
        } else {
            Err(format!(
                "the responder answered HTTP {} {}",
                self.status, self.reason
            ))
        }
    }
}

/// The body, once the head and `Content-Length` bytes are in (`None`: read on).
fn complete_body(received: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let Some(head) = Head::parse(received)? else {
        return Ok(None);
    };
    // No need to read an error page to its end.
    head.check_status()?;
    match head.length {
        Some(length) if received.len() >= head.at + length => {
            Ok(Some(received[head.at..head.at + length].to_vec()))
        }
        _ => Ok(None),
    }
}

/// The connection closed: the body is what came after the head, unless a length said more.
pub(super) fn answer_at_eof(received: &[u8]) -> Result<Vec<u8>, String> {
    if let Some(body) = complete_body(received)? {
        return Ok(body);
    }
    match Head::parse(received)? {
        None => Err("the responder closed the connection before a complete answer".to_owned()),
        Some(Head {
            length: Some(length),
            ..
        }) => Err(format!(
            "the responder closed the connection before the end of the body ({length} bytes \
             announced)"
        )),
        Some(head) => Ok(received[head.at..].to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_end_by_length_or_by_closing() {
        let ok = b"HTTP/1.0 200 OK\r\nContent-Type: application/ocsp-response\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(complete_body(ok).unwrap().as_deref(), Some(&b"abc"[..]));
        assert_eq!(complete_body(&ok[..ok.len() - 1]).unwrap(), None);
        let err = answer_at_eof(&ok[..ok.len() - 1]).unwrap_err();
        assert!(err.contains("before the end of the body"), "{err}");
        let closing = b"HTTP/1.0 200 OK\r\n\r\n\x30\x03";
        assert_eq!(complete_body(closing).unwrap(), None);
        assert_eq!(answer_at_eof(closing).unwrap(), b"\x30\x03");
        let missing = b"HTTP/1.0 404 Not Found\r\n";
        assert!(answer_at_eof(missing)
            .unwrap_err()
            .contains("before a complete answer"));
        let refused = b"HTTP/1.0 404 Not Found\r\nContent-Length: 100\r\n\r\n";
        assert_eq!(
            complete_body(refused).unwrap_err(),
            "the responder answered HTTP 404 Not Found"
        );
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(complete_body(chunked).unwrap_err().contains("chunked"));
        assert!(complete_body(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
    }

    #[test]
    fn a_silent_responder_costs_the_deadline_and_no_more() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = HttpUrl::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
        let started = Instant::now();
        let err = post(&url, b"\x30\x00", started + Duration::from_millis(300)).unwrap_err();
        let took = started.elapsed();
        assert!(err.contains("no answer in time"), "{err}");
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }

    #[test]
    fn a_request_is_posted_and_its_answer_read() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = HttpUrl::parse(&format!(
            "http://{}/ocsp?x=1",
            listener.local_addr().unwrap()
        ))
        .unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.ends_with(b"\x30\x00") {
                let n = conn.read(&mut buf).unwrap();
                assert!(n > 0, "closed early: {got:?}");
                got.extend_from_slice(&buf[..n]);
            }
            conn.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n\x30\x01")
                .unwrap();
            String::from_utf8_lossy(&got).into_owned()
        });
        let body = post(&url, b"\x30\x00", Instant::now() + Duration::from_secs(5)).unwrap();
        assert_eq!(body, b"\x30\x01");
        let request = server.join().unwrap();
        assert!(
            request.starts_with("POST /ocsp?x=1 HTTP/1.0\r\n"),
            "{request}"
        );
        assert!(request.contains("\r\nContent-Type: application/ocsp-request\r\n"));
        assert!(request.contains("\r\nContent-Length: 2\r\n"));
    }
}
