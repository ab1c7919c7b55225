//! The request head as sent upstream: hop-by-hop fields removed, the forwarding fields
//! (`X-Forwarded-*`, `Forwarded`, `X-Trace-Id`, `X-Client-Cert-Subject`) set by the proxy.

use std::net::SocketAddr;

use super::connection::is_hop_by_hop;
use super::head::RequestHead;
use super::request::{is_tchar, list_elements, trim_ows};
use super::{push_header, push_length_field, HttpVersion};

/// Where a request came from, for the forwarding headers.
#[derive(Debug, Clone)]
pub struct ForwardContext<'a> {
    pub client: SocketAddr,
    /// The listener's local address (for `Forwarded: by=` / `host=` fallbacks).
    pub listener: SocketAddr,
    /// `"http"` (or `"https"` once TLS exists).
    pub scheme: &'static str,
    /// The request's trace id, sent as `X-Trace-Id` (replacing the client's). `None`: none.
    pub trace_id: Option<&'a str>,
    /// The verified client certificate's subject (mutual TLS), sent as
    /// `X-Client-Cert-Subject`. The client's own field of that name is always dropped.
    pub client_cert_subject: Option<std::rc::Rc<str>>,
}

/// Serialize the request head to send upstream: hop-by-hop headers removed (Connection, the
/// headers it names, Keep-Alive, Proxy-Connection, TE (but the proxy's own `TE: trailers` when
/// the client's lists `trailers`), Trailer, Upgrade unless upgrading);
/// `X-Forwarded-For` appended to, `X-Forwarded-Proto`, `X-Forwarded-Host` and `Forwarded`
/// (RFC 7239) added; HTTP/1.1 always; `Connection: keep-alive`, or `Connection: upgrade` plus
/// the `Upgrade` header when `head.upgrade` is set. Framing headers are kept as received.
pub fn write_upstream_request(head: &RequestHead, ctx: &ForwardContext<'_>, out: &mut Vec<u8>) {
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
        // The proxy passes trailers on (chunked bodies travel as they are, HTTP/2 trailers
        // become chunked ones): a client that accepts them lets the next hop send them. gRPC
        // servers require this `TE` from their clients.
        None if accepts_trailers(head) => {
            push_header(out, b"TE", b"trailers");
            push_header(out, b"Connection", b"keep-alive, TE");
        }
        None => push_header(out, b"Connection", b"keep-alive"),
    }
    out.extend_from_slice(b"\r\n");
}

/// The client's `TE` lists `trailers`.
fn accepts_trailers(head: &RequestHead) -> bool {
    head.headers().any(|h| {
        h.name.eq_ignore_ascii_case(b"te")
            && list_elements(h.value).any(|e| e.eq_ignore_ascii_case(b"trailers"))
    })
}

/// An IP address as its `Display` form writes it; IPv4 (the common case) without the
/// formatting machinery.
pub(super) fn push_ip(out: &mut Vec<u8>, ip: std::net::IpAddr) {
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

/// RFC 7239 value: a token as is, anything else as a quoted-string.
pub(super) fn push_forwarded_value(out: &mut Vec<u8>, v: &[u8]) {
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
