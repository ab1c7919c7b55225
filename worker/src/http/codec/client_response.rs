//! An upstream's response head as sent to the client: hop-by-hop fields removed, framing
//! fields made consistent, the connection's fate stated.

use super::connection::is_hop_by_hop;
use super::head::ResponseHead;
use super::request::list_elements;
use super::{push_decimal, push_header, push_length_field, BodyFraming, HttpVersion};

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
