//! The upstream side's translation: the HTTP/1.1 request head a session wrote into a pipe, read
//! as an HTTP/2 request (RFC 9113 8.2.2, 8.3.1: `Host` becomes `:authority`, fields that only
//! mean something to one HTTP/1.1 connection are dropped, `TE: trailers` kept), and the
//! upstream's HTTP/2 response head written back as HTTP/1.1, with the framing its body gets in
//! the pipe (chunked when no length is known, so trailers such as `grpc-status` can follow).

use http::header::{self, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};

use super::body::Framing;
use super::translate::{write_field, CONNECTION_SPECIFIC};
use crate::sock::Buf;

/// Fields of a request head read here at most (the session already enforced its own limit).
const MAX_FIELDS: usize = 512;

/// A request head read from the pipe.
#[derive(Debug)]
pub struct UpRequest {
    pub request: Request<()>,
    /// How its body follows in the pipe.
    pub body: Framing,
    /// Bytes of the head (they leave the pipe once the request is sent).
    pub head_len: usize,
    /// `Expect: 100-continue` was asked: the proxy answers it (HTTP/2 has no use for it).
    pub expect_continue: bool,
}

/// Read the HTTP/1.1 request head at the start of `bytes` as an HTTP/2 request to `scheme`;
/// `authority` stands in for a missing `Host`. `Ok(None)`: incomplete.
pub fn parse_request_head(
    bytes: &[u8],
    scheme: &Scheme,
    authority: &str,
) -> Result<Option<UpRequest>, &'static str> {
    let mut raw = vec![httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut parsed = httparse::Request::new(&mut raw);
    let head_len = match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("malformed request head"),
    };
    let method =
        Method::from_bytes(parsed.method.unwrap_or("").as_bytes()).map_err(|_| "bad method")?;
    let target = parsed.path.ok_or("no request target")?;
    let mut host: Option<&[u8]> = None;
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    let mut chunked = false;
    let mut length: Option<u64> = None;
    let mut expect_continue = false;
    for f in parsed.headers.iter() {
        let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| "bad header name")?;
        if name == header::HOST {
            host = Some(f.value);
            continue;
        }
        if name == header::TRANSFER_ENCODING {
            chunked = f.value.eq_ignore_ascii_case(b"chunked");
            continue;
        }
        if name == header::CONTENT_LENGTH {
            length = std::str::from_utf8(f.value)
                .ok()
                .and_then(|v| v.trim().parse().ok());
        }
        if name == header::TE {
            // The only TE an HTTP/2 request may carry (RFC 9113 8.2.2); gRPC needs it.
            if f.value.eq_ignore_ascii_case(b"trailers") {
                headers.append(header::TE, HeaderValue::from_static("trailers"));
            }
            continue;
        }
        if name == header::EXPECT {
            expect_continue |= f.value.eq_ignore_ascii_case(b"100-continue");
            continue;
        }
        if CONNECTION_SPECIFIC.contains(&name) {
            continue;
        }
        let value = HeaderValue::from_bytes(f.value).map_err(|_| "bad header value")?;
        headers.append(name, value);
    }
    let uri = request_uri(target, host, scheme, authority)?;
    let body = if chunked {
        Framing::Chunked
    } else {
        match length {
            Some(0) | None => Framing::None,
            Some(n) => Framing::Length(n),
        }
    };
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    Ok(Some(UpRequest {
        request,
        body,
        head_len,
        expect_continue,
    }))
}

/// `:scheme`, `:authority` and `:path` from an origin-form (or absolute-form) target and the
/// `Host` field.
fn request_uri(
    target: &str,
    host: Option<&[u8]>,
    scheme: &Scheme,
    fallback: &str,
) -> Result<Uri, &'static str> {
    let absolute = target
        .get(..8)
        .is_some_and(|p| p.eq_ignore_ascii_case("https://"))
        || target
            .get(..7)
            .is_some_and(|p| p.eq_ignore_ascii_case("http://"));
    let (authority, path) = if absolute {
        let uri: Uri = target.parse().map_err(|_| "bad request target")?;
        let path = uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
        let authority = uri.authority().cloned().ok_or("no authority")?;
        (authority, path)
    } else {
        let authority = match host {
            Some(h) if !h.is_empty() => {
                Authority::try_from(h).map_err(|_| "bad host for :authority")?
            }
            _ => Authority::try_from(fallback).map_err(|_| "bad target address")?,
        };
        (authority, target.to_owned())
    };
    Uri::builder()
        .scheme(scheme.clone())
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|_| "request target cannot be sent over HTTP/2")
}

/// Write `response`'s head as HTTP/1.1 into `out` and say how its body follows. `end_of_stream`:
/// no body comes (a response with neither a length nor END_STREAM is sent on chunked).
pub fn write_response_head(
    response: &Response<impl Sized>,
    end_of_stream: bool,
    head_request: bool,
    out: &mut Buf,
) -> Framing {
    let status = response.status();
    out.extend(b"HTTP/1.1 ");
    out.extend(status.as_str().as_bytes());
    out.extend(b" ");
    out.extend(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend(b"\r\n");
    let headers = response.headers();
    let mut length = None;
    for (name, value) in headers {
        if *name == header::CONTENT_LENGTH {
            length = value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
        }
        if CONNECTION_SPECIFIC.contains(name) {
            continue;
        }
        write_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    let no_body = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if no_body {
        Framing::None
    } else if end_of_stream {
        if length.is_none() {
            // A response without a body still needs framing in HTTP/1.1 (a gRPC
            // "trailers-only" answer is such a head, its `grpc-status` among the fields).
            write_field(out, b"content-length", b"0");
        }
        Framing::None
    } else {
        match length {
            Some(0) => Framing::None,
            Some(n) => Framing::Length(n),
            None => {
                write_field(out, b"transfer-encoding", b"chunked");
                Framing::Chunked
            }
        }
    };
    out.extend(b"\r\n");
    framing
}

/// The answer written into the pipe for a request that cannot be sent as HTTP/2 at all.
pub const UNTRANSLATABLE: &[u8] = b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n";

/// The interim answer to `Expect: 100-continue`, written by the proxy (the upstream never
/// sees the field).
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn read(head: &str) -> UpRequest {
        parse_request_head(head.as_bytes(), &Scheme::HTTP, "10.0.0.1:50051")
            .unwrap()
            .unwrap()
    }

    #[test]
    fn host_becomes_authority_and_connection_fields_go() {
        let text = "POST /pkg.Svc/Call HTTP/1.1\r\nHost: api.test:8080\r\n\
            Connection: keep-alive, TE\r\nTE: trailers\r\nTransfer-Encoding: chunked\r\n\
            content-type: application/grpc\r\nKeep-Alive: timeout=5\r\n\
            X-Forwarded-For: 192.0.2.1\r\n\r\nbody";
        let r = read(text);
        assert_eq!(r.request.method(), Method::POST);
        assert_eq!(
            r.request.uri().to_string(),
            "http://api.test:8080/pkg.Svc/Call"
        );
        let h = r.request.headers();
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["content-type"], "application/grpc");
        assert_eq!(h["x-forwarded-for"], "192.0.2.1");
        for gone in ["host", "connection", "keep-alive", "transfer-encoding"] {
            assert!(h.get(gone).is_none(), "{gone}");
        }
        assert_eq!(r.body, Framing::Chunked);
        assert!(!r.expect_continue);
        assert_eq!(r.head_len, text.len() - "body".len());
    }

    #[test]
    fn bodies_and_missing_hosts() {
        let r = read(
            "PUT /u HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\nTE: gzip\r\n\r\n",
        );
        assert_eq!(r.body, Framing::Length(3));
        assert!(r.expect_continue);
        assert!(r.request.headers().get("expect").is_none());
        assert!(r.request.headers().get("te").is_none());
        assert_eq!(r.request.uri().authority().unwrap(), "10.0.0.1:50051");
        assert_eq!(
            read("GET / HTTP/1.1\r\nHost: a\r\n\r\n").body,
            Framing::None
        );
        assert!(
            parse_request_head(b"GET / HTTP/1.1\r\nHost: a\r\n", &Scheme::HTTP, "a")
                .unwrap()
                .is_none()
        );
        let abs = read("GET http://b.test/x?y HTTP/1.1\r\nHost: b.test\r\n\r\n");
        assert_eq!(abs.request.uri().to_string(), "http://b.test/x?y");
    }

    fn response_text(r: Response<()>, eos: bool, head: bool) -> (String, Framing) {
        let mut out = Buf::new();
        let f = write_response_head(&r, eos, head, &mut out);
        (String::from_utf8(out.as_slice().to_vec()).unwrap(), f)
    }

    #[test]
    fn response_heads_get_http1_framing() {
        let r = Response::builder()
            .status(200)
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        let (text, f) = response_text(r, false, false);
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        assert_eq!(f, Framing::Chunked);
        // Trailers-only (gRPC error): the status travels in the head, the body is empty.
        let r = Response::builder()
            .status(200)
            .header("grpc-status", "5")
            .body(())
            .unwrap();
        let (text, f) = response_text(r, true, false);
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ngrpc-status: 5\r\ncontent-length: 0\r\n\r\n"
        );
        assert_eq!(f, Framing::None);
        let r = Response::builder()
            .status(200)
            .header("content-length", "12")
            .body(())
            .unwrap();
        assert_eq!(response_text(r, false, false).1, Framing::Length(12));
        let r = Response::builder()
            .status(200)
            .header("content-length", "12")
            .body(())
            .unwrap();
        let (text, f) = response_text(r, true, true);
        assert_eq!(text, "HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n");
        assert_eq!(f, Framing::None);
        let r = Response::builder().status(204).body(()).unwrap();
        assert_eq!(
            response_text(r, true, false),
            ("HTTP/1.1 204 No Content\r\n\r\n".to_owned(), Framing::None)
        );
    }
}
