//! The `json` format: upstream Zentinel's object, one per line, with the keys `fields` leaves
//! on. Keys and their order are upstream's: `timestamp trace_id method path query status
//! duration_ms client_ip user_agent referer body_bytes_sent upstream_addr connection_reused
//! rate_limit_hit geo_country`, then `route_id upstream instance_id`, which no field turns off.
//! As upstream, `query`, `user_agent`, `referer`, `upstream_addr`, `route_id` and `upstream` are
//! left out when the request has none; `geo_country` always is (no GeoIP here).

use std::io::Write as _;

use zentinel_protocol::config::AccessLogFields;

use super::format::write_rfc3339_millis;
use super::{Entry, LineContext};

/// Writes `"key":value` pairs separated by commas.
struct Object<'o> {
    out: &'o mut Vec<u8>,
    first: bool,
}

impl Object<'_> {
    fn key(&mut self, key: &str) -> &mut Vec<u8> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
        self.out
    }

    fn string(&mut self, key: &str, value: &[u8]) {
        let out = self.key(key);
        string(out, value);
    }

    fn number(&mut self, key: &str, value: u64) {
        let out = self.key(key);
        let _ = write!(out, "{value}");
    }

    fn boolean(&mut self, key: &str, value: bool) {
        let out = self.key(key);
        out.extend_from_slice(if value { b"true" } else { b"false" });
    }
}

/// Append one line (with its `\n`) for `e`. `trace_id`: `include-trace-id`.
pub(super) fn render(
    e: &Entry,
    ctx: &LineContext<'_>,
    fields: &AccessLogFields,
    trace_id: bool,
    out: &mut Vec<u8>,
) {
    out.push(b'{');
    let mut o = Object { out, first: true };
    if fields.timestamp {
        let out = o.key("timestamp");
        out.push(b'"');
        write_rfc3339_millis(out, e.wall);
        out.push(b'"');
    }
    if fields.trace_id && trace_id {
        o.string("trace_id", e.trace_id.as_bytes());
    }
    let (path, query) = match e.target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (e.target.as_str(), None),
    };
    if fields.method {
        o.string("method", e.method.as_bytes());
    }
    if fields.path {
        o.string("path", path.as_bytes());
    }
    if let Some(query) = query.filter(|_| fields.query) {
        o.string("query", query.as_bytes());
    }
    if fields.status {
        o.number("status", u64::from(e.status));
    }
    if fields.latency_ms {
        o.number(
            "duration_ms",
            u64::try_from(ctx.duration.as_millis()).unwrap_or(u64::MAX),
        );
    }
    if fields.client_ip {
        o.string("client_ip", ctx.peer.ip().to_string().as_bytes());
    }
    if fields.user_agent && !e.user_agent.is_empty() {
        o.string("user_agent", &e.user_agent);
    }
    if fields.referer && !e.referer.is_empty() {
        o.string("referer", &e.referer);
    }
    if fields.body_bytes_sent {
        o.number("body_bytes_sent", e.body_bytes_sent());
    }
    if let Some(addr) = e.upstream.filter(|_| fields.upstream_addr) {
        o.string("upstream_addr", addr.to_string().as_bytes());
    }
    if fields.connection_reused {
        o.boolean("connection_reused", e.connection_reused);
    }
    if fields.rate_limit_hit {
        // Upstream's definition: the answer was 429.
        o.boolean("rate_limit_hit", e.status == 429);
    }
    if !e.route.is_empty() {
        o.string("route_id", e.route.as_bytes());
    }
    if !e.upstream_name.is_empty() {
        o.string("upstream", e.upstream_name.as_bytes());
    }
    if !e.client_cert_subject.is_empty() {
        o.string("client_cert_subject", e.client_cert_subject.as_bytes());
    }
    o.string("instance_id", ctx.instance_id.as_bytes());
    out.extend_from_slice(b"}\n");
}

/// A JSON string. Request bytes that are not UTF-8 become U+FFFD; control characters are
/// escaped, so the object always stays on one line.
fn string(out: &mut Vec<u8>, value: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for c in String::from_utf8_lossy(value).chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let b = c as u8;
                out.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 15)],
                ]);
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}
