//! A route's `policies`, as the HTTP session applies them: header modifications, the request
//! key and headers of the rate limit, and the 429 it answers with.
//!
//! Header modifications are applied to a head the codec has already serialized (hop-by-hop
//! fields removed, forwarding fields added), so they see exactly what the next hop would see
//! and cannot undo the codec's framing decisions: the master refuses policies naming
//! Content-Length, Transfer-Encoding, Connection and the other hop-by-hop fields, and removing
//! `Host`. Only the routes that have modifications pay for the extra pass.

use std::net::IpAddr;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use zentinel_protocol::config::{HeaderModifications, RateLimitKey};

use crate::http::codec::{self, RequestHead};
use crate::rate_limit::{Decision, Limiter};

/// Apply `mods` to the head serialized at `head[start..]` (start line, fields, blank line),
/// in upstream's order: rename, set, add, remove.
pub fn apply(mods: &HeaderModifications, head: &mut Vec<u8>, start: usize) {
    if mods.is_empty() {
        return;
    }
    let Some(text) = head.get(start..) else {
        return;
    };
    // The codec wrote this head: CRLF line ends, `Name: value`, a blank line last.
    let Some(line_end) = find(text, b"\r\n") else {
        return;
    };
    let fields_start = line_end + 2;
    let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut rest = &text[fields_start..];
    while let Some(end) = find(rest, b"\r\n") {
        let line = &rest[..end];
        rest = &rest[end + 2..];
        if line.is_empty() {
            break;
        }
        if let Some(colon) = line.iter().position(|&b| b == b':') {
            let value = line[colon + 1..].trim_ascii_start();
            fields.push((line[..colon].to_vec(), value.to_vec()));
        }
    }
    // Anything after the blank line (a body of a local response) is kept as it is.
    let tail = rest.to_vec();

    for (old, new) in &mods.rename {
        for (name, _) in fields.iter_mut() {
            if name.eq_ignore_ascii_case(old.as_bytes()) {
                *name = new.as_bytes().to_vec();
            }
        }
    }
    for (name, value) in &mods.set {
        let first = fields
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()));
        match first {
            Some(i) => {
                fields[i] = (name.as_bytes().to_vec(), value.as_bytes().to_vec());
                let mut j = 0;
                fields.retain(|(n, _)| {
                    j += 1;
                    j - 1 == i || !n.eq_ignore_ascii_case(name.as_bytes())
                });
            }
            None => fields.push((name.as_bytes().to_vec(), value.as_bytes().to_vec())),
        }
    }
    for (name, value) in &mods.add {
        fields.push((name.as_bytes().to_vec(), value.as_bytes().to_vec()));
    }
    for name in &mods.remove {
        fields.retain(|(n, _)| !n.eq_ignore_ascii_case(name.as_bytes()));
    }

    head.truncate(start + fields_start);
    for (name, value) in &fields {
        head.extend_from_slice(name);
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head.extend_from_slice(&tail);
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Check the request against the route's limiter, keyed as configured.
pub fn rate_check(
    limiter: &mut Limiter,
    peer: IpAddr,
    req: &RequestHead,
    now: Instant,
) -> Decision {
    rate_check_keyed(limiter, "", peer, req, now)
}

/// [`rate_check`] with the route's name in the key: one limiter serving several routes (a
/// `rate-limit` filter named by each) counts each route apart, as upstream does.
pub fn rate_check_keyed(
    limiter: &mut Limiter,
    route: &str,
    peer: IpAddr,
    req: &RequestHead,
    now: Instant,
) -> Decision {
    let key = limiter.key.clone();
    with_rate_key(&key, route, peer, req, |parts| limiter.check(parts, now))
}

/// Call `f` with the parts of a request's rate-limit key (hashed in order by the caller): the
/// route's name, then what `key` names of the request.
pub fn with_rate_key<R>(
    key: &RateLimitKey,
    route: &str,
    peer: IpAddr,
    req: &RequestHead,
    f: impl FnOnce(&[&[u8]]) -> R,
) -> R {
    // IPv4 and IPv4-mapped IPv6 are one client.
    let ip = match peer.to_canonical() {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    };
    let route = route.as_bytes();
    match key {
        RateLimitKey::ClientIp => f(&[route, &ip]),
        RateLimitKey::Path => f(&[route, req.path().as_bytes()]),
        RateLimitKey::Route => f(&[route]),
        RateLimitKey::ClientIpAndPath => f(&[route, &ip, req.path().as_bytes()]),
        RateLimitKey::Header(name) => {
            // Requests without the header share one bucket (upstream's "unknown").
            let value = req
                .headers()
                .find(|h| h.name.eq_ignore_ascii_case(name.as_bytes()))
                .map_or(&b""[..], |h| h.value.trim_ascii());
            f(&[route, b"h", value])
        }
    }
}

/// `X-RateLimit-Limit`, `-Remaining`, `-Reset` (unix seconds), as upstream names them.
pub fn rate_headers(d: &Decision) -> [(&'static str, String); 3] {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |t| t.as_secs());
    [
        ("X-RateLimit-Limit", d.limit.to_string()),
        ("X-RateLimit-Remaining", d.remaining.to_string()),
        ("X-RateLimit-Reset", (now + d.reset_secs.max(1)).to_string()),
    ]
}

/// Upstream's refusal: 429, plain text "Rate limit exceeded", the rate headers and
/// `Retry-After`; the connection is closed after it (as upstream).
pub fn too_many_requests(d: &Decision, head_only: bool) -> Vec<u8> {
    refusal(d, 429, "Rate limit exceeded", head_only)
}

/// A rate limit's refusal: `status`, the rate fields and `Retry-After`, `body` as plain text,
/// the connection closed after it (a `rate-limit` filter's `status-code` and `limit-message`).
pub fn refusal(d: &Decision, status: u16, body: &str, head_only: bool) -> Vec<u8> {
    let [limit, remaining, reset] = rate_headers(d);
    let retry = d.retry_after_secs.to_string();
    let extra = [
        (limit.0, limit.1.as_str()),
        (remaining.0, remaining.1.as_str()),
        (reset.0, reset.1.as_str()),
        ("Retry-After", retry.as_str()),
    ];
    codec::local_response_with(
        status,
        Some("text/plain; charset=utf-8"),
        &extra,
        body.as_bytes(),
        true,
        head_only,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mods() -> HeaderModifications {
        HeaderModifications {
            rename: vec![("X-Old".into(), "X-New".into())],
            set: vec![
                ("X-Set".into(), "one".into()),
                ("Host".into(), "h.example".into()),
            ],
            add: vec![("X-Add".into(), "a".into()), ("X-Add".into(), "b".into())],
            remove: vec!["X-Gone".into(), "x-new-gone".into()],
        }
    }

    #[test]
    fn order_rename_set_add_remove() {
        let mut head = b"prefix".to_vec();
        head.extend_from_slice(
            b"GET / HTTP/1.1\r\nHost: a\r\nx-old: kept value\r\nX-Set: 1\r\nX-Gone: x\r\n\
              x-set: 2\r\nX-New-Gone: y\r\nConnection: keep-alive\r\n\r\n",
        );
        apply(&mods(), &mut head, 6);
        assert_eq!(
            String::from_utf8_lossy(&head),
            "prefixGET / HTTP/1.1\r\nHost: h.example\r\nX-New: kept value\r\nX-Set: one\r\n\
             Connection: keep-alive\r\nX-Add: a\r\nX-Add: b\r\n\r\n"
        );
    }

    #[test]
    fn body_after_the_head_is_kept() {
        let mut head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec();
        let m = HeaderModifications {
            add: vec![("X-A".into(), "1".into())],
            ..Default::default()
        };
        apply(&m, &mut head, 0);
        assert_eq!(
            head,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\n\r\nok".to_vec()
        );
    }

    #[test]
    fn refusal_has_upstreams_headers() {
        let d = Decision {
            allowed: false,
            limit: 5,
            remaining: 0,
            reset_secs: 1,
            retry_after_secs: 1,
        };
        let text = String::from_utf8(too_many_requests(&d, false)).unwrap_or_default();
        assert!(
            text.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
            "{text}"
        );
        for h in [
            "X-RateLimit-Limit: 5\r\n",
            "X-RateLimit-Remaining: 0\r\n",
            "Retry-After: 1\r\n",
            "Connection: close\r\n",
        ] {
            assert!(text.contains(h), "{h} in {text}");
        }
        assert!(text.ends_with("\r\n\r\nRate limit exceeded"));
    }
}
