//! HTTP/2 request heads written as HTTP/1.1 for the session serving the stream, and the
//! session's HTTP/1.1 response heads read back as HTTP/2 ones (RFC 9113 8.2.2, 8.3).

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use super::body::Framing;
use crate::sock::Buf;

/// Header fields that only mean something to one HTTP/1.1 connection: never sent on an
/// HTTP/2 stream (h2 refuses them in requests already; responses are cleaned here).
pub(super) const CONNECTION_SPECIFIC: [HeaderName; 5] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Why a request cannot be served (answered on the stream with this status).
#[derive(Debug, PartialEq, Eq)]
pub struct Refused(pub StatusCode, pub &'static str);

/// How the request body goes to the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestBody {
    /// END_STREAM came with the head.
    None,
    /// `content-length` given: DATA payload passed as it is (h2 checks the length).
    Length,
    /// Unknown length: each DATA frame becomes a chunk, trailers the trailer section.
    Chunked,
}

/// Write `req`'s head as an HTTP/1.1 request into `out`. `end_of_stream`: no body follows.
pub fn write_request_head<B>(
    req: &Request<B>,
    end_of_stream: bool,
    out: &mut Buf,
) -> Result<RequestBody, Refused> {
    if req.method() == Method::CONNECT {
        // Without the extended CONNECT protocol (not advertised) there is nothing to tunnel.
        return Err(Refused(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT over HTTP/2",
        ));
    }
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| !p.is_empty())
        .ok_or(Refused(StatusCode::BAD_REQUEST, "no :path"))?;
    let headers = req.headers();
    let authority = req.uri().authority().map(|a| a.as_str());
    if let (Some(a), Some(host)) = (authority, headers.get(header::HOST)) {
        // RFC 9113 8.3.1: a Host naming another entity than :authority is malformed.
        if !host.as_bytes().eq_ignore_ascii_case(a.as_bytes()) {
            return Err(Refused(
                StatusCode::BAD_REQUEST,
                ":authority and host differ",
            ));
        }
    }
    let host = match authority {
        Some(a) => a.as_bytes(),
        None => headers
            .get(header::HOST)
            .map(HeaderValue::as_bytes)
            .ok_or(Refused(StatusCode::BAD_REQUEST, "no :authority or host"))?,
    };
    out.extend(req.method().as_str().as_bytes());
    out.extend(b" ");
    out.extend(path.as_bytes());
    out.extend(b" HTTP/1.1\r\nhost: ");
    out.extend(host);
    out.extend(b"\r\n");
    let mut cookies: Vec<&[u8]> = Vec::new();
    for (name, value) in headers {
        if name == header::HOST {
            continue;
        }
        if name == header::COOKIE {
            // HTTP/2 may split cookies into several fields; HTTP/1.1 wants one (8.2.3).
            cookies.push(value.as_bytes());
            continue;
        }
        if name == header::TRANSFER_ENCODING || name == header::CONNECTION {
            return Err(Refused(
                StatusCode::BAD_REQUEST,
                "connection-specific header",
            ));
        }
        write_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !cookies.is_empty() {
        out.extend(b"cookie: ");
        for (i, c) in cookies.iter().enumerate() {
            if i > 0 {
                out.extend(b"; ");
            }
            out.extend(c);
        }
        out.extend(b"\r\n");
    }
    let body = if end_of_stream {
        RequestBody::None
    } else if headers.contains_key(header::CONTENT_LENGTH) {
        RequestBody::Length
    } else {
        out.extend(b"transfer-encoding: chunked\r\n");
        RequestBody::Chunked
    };
    out.extend(b"\r\n");
    Ok(body)
}

pub(super) fn write_field(out: &mut Buf, name: &[u8], value: &[u8]) {
    out.extend(name);
    out.extend(b": ");
    out.extend(value);
    out.extend(b"\r\n");
}

/// A parsed response head: the HTTP/2 response, its body framing, the head's length.
pub struct ParsedResponse {
    pub response: Response<()>,
    pub body: Framing,
    pub head_len: usize,
}

/// Parse a response head at the start of `bytes`. `Ok(None)`: incomplete. Interim (1xx)
/// responses come back too (the caller skips them: h2 here sends no informational heads).
pub fn parse_response_head(
    bytes: &[u8],
    head_request: bool,
) -> Result<Option<ParsedResponse>, &'static str> {
    let mut raw = [httparse::EMPTY_HEADER; 128];
    let mut parsed = httparse::Response::new(&mut raw);
    let head_len = match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("malformed response head"),
    };
    let code = parsed.code.ok_or("no status")?;
    let status = StatusCode::from_u16(code).map_err(|_| "bad status")?;
    let mut response = Response::new(());
    *response.status_mut() = status;
    let mut chunked = false;
    let mut length = None;
    let headers = response.headers_mut();
    for f in parsed.headers.iter() {
        let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| "bad header name")?;
        if name == header::TRANSFER_ENCODING {
            chunked = f.value.eq_ignore_ascii_case(b"chunked");
        }
        if name == header::CONTENT_LENGTH {
            length = std::str::from_utf8(f.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
        }
        if CONNECTION_SPECIFIC.contains(&name) {
            continue;
        }
        let value = HeaderValue::from_bytes(f.value).map_err(|_| "bad header value")?;
        headers.append(name, value);
    }
    let body = if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::None
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        if n == 0 {
            Framing::None
        } else {
            Framing::Length(n)
        }
    } else {
        Framing::UntilClose
    };
    Ok(Some(ParsedResponse {
        response,
        body,
        head_len,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(req: Request<()>, eos: bool) -> (String, RequestBody) {
        let mut out = Buf::new();
        let body = write_request_head(&req, eos, &mut out).unwrap();
        (String::from_utf8(out.as_slice().to_vec()).unwrap(), body)
    }

    #[test]
    fn authority_becomes_host_and_cookies_are_joined() {
        let req = Request::builder()
            .method("GET")
            .uri("https://example.com:8443/a?b=1")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .header("accept", "*/*")
            .body(())
            .unwrap();
        let (text, body) = head(req, true);
        assert_eq!(
            text,
            "GET /a?b=1 HTTP/1.1\r\nhost: example.com:8443\r\naccept: */*\r\ncookie: a=1; b=2\r\n\r\n"
        );
        assert_eq!(body, RequestBody::None);
    }

    #[test]
    fn bodies_without_length_are_chunked() {
        let req = Request::builder()
            .method("POST")
            .uri("http://h/u")
            .body(())
            .unwrap();
        let (text, body) = head(req, false);
        assert!(
            text.ends_with("transfer-encoding: chunked\r\n\r\n"),
            "{text}"
        );
        assert_eq!(body, RequestBody::Chunked);
        let req = Request::builder()
            .method("POST")
            .uri("http://h/u")
            .header("content-length", "3")
            .body(())
            .unwrap();
        assert_eq!(head(req, false).1, RequestBody::Length);
    }

    #[test]
    fn conflicting_host_and_connect_are_refused() {
        let req = Request::builder()
            .uri("http://a.example/")
            .header("host", "b.example")
            .body(())
            .unwrap();
        let mut out = Buf::new();
        assert_eq!(
            write_request_head(&req, true, &mut out).unwrap_err().0,
            StatusCode::BAD_REQUEST
        );
        let req = Request::builder()
            .method("CONNECT")
            .uri("a.example:443")
            .body(())
            .unwrap();
        assert_eq!(
            write_request_head(&req, true, &mut out).unwrap_err().0,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[test]
    fn response_heads_lose_connection_fields_and_know_their_framing() {
        let r = parse_response_head(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\nrest",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.response.status(), 200);
        assert_eq!(r.body, Framing::Chunked);
        assert!(r.response.headers().get("connection").is_none());
        assert!(r.response.headers().get("transfer-encoding").is_none());
        assert_eq!(r.response.headers()["x-a"], "1");
        let r = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(r.body, Framing::None);
        let r = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!(r.body, Framing::Length(5));
        assert!(parse_response_head(b"HTTP/1.1 200 OK\r\n", false)
            .unwrap()
            .is_none());
    }
}
