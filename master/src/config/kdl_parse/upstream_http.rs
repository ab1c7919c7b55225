//! `http-version` inside an upstream: the HTTP version spoken to its targets.
//!
//! Our spelling is one string: `http-version "1.1"` (the default), `"2"` (HTTP/2 only: prior
//! knowledge on plain connections, ALPN `h2` over TLS) or `"auto"` (ALPN offers both over TLS,
//! HTTP/1.1 on plain connections). Upstream Zentinel's block is accepted too:
//!
//! ```kdl
//! http-version {
//!     min-version 1      // 1 or 2
//!     max-version 2      // 1 or 2
//!     max-h2-streams 100 // streams per HTTP/2 connection
//!     h2-ping-interval 30 // seconds, 0: no PING
//! }
//! ```
//!
//! `min-version`/`max-version` map onto the three modes as upstream maps them onto ALPN:
//! `min-version 2` is `"2"`, a range reaching 2 from 1 is `"auto"`, `max-version 1` is
//! `"1.1"`. As upstream, a block that names neither is the range 1 to 2 (`"auto"`). The HTTP/2
//! settings may also follow the string form: `http-version "2" { max-h2-streams 50 }`.

use super::*;
use zentinel_protocol::config::{UpstreamHttp, UpstreamHttpVersion};

const HTTP_VERSION_KEYS: &[&str] = &[
    "min-version",
    "max-version",
    "max-h2-streams",
    "h2-ping-interval",
];
const ACCEPTED: &str = "accepted: \"1.1\", \"2\", \"auto\"";
/// Streams per connection: RFC 9113 stream ids leave room for 2^30 client streams, far beyond
/// any useful concurrency.
const MAX_H2_STREAMS: u32 = 1 << 20;

/// Parse `node` into `http`. Errors are reported at the offending value.
pub(super) fn parse_http_version(
    node: &KdlNode,
    http: &mut UpstreamHttp,
    diags: &mut Diagnostics<'_>,
) {
    for entry in props(node) {
        unknown_property(node, entry, &[], diags);
    }
    let mut args = args(node);
    let given = args.next();
    if let Some(extra) = args.next() {
        diags.error(
            extra.span().offset(),
            "http-version",
            format!("`http-version` takes one version; {ACCEPTED}"),
        );
    }
    let named = given.and_then(|entry| version_value(entry, diags));
    let children = node.children().map_or(&[][..], |c| c.nodes());
    if given.is_none() && node.children().is_none() {
        diags.error(
            name_at(node),
            "http-version",
            format!("missing version: write e.g. `http-version \"2\"`; {ACCEPTED}"),
        );
        return;
    }
    let mut min: Option<(u64, usize)> = None;
    let mut max: Option<(u64, usize)> = None;
    let mut seen = Seen::default();
    for c in children {
        if HTTP_VERSION_KEYS.contains(&name(c)) && !seen.check(c, diags) {
            continue;
        }
        match name(c) {
            "min-version" | "max-version" => {
                if given.is_some() {
                    diags.error(
                        name_at(c),
                        name(c),
                        "the version is given twice: keep the string (`http-version \"2\"`) \
                         or `min-version`/`max-version`, not both",
                    );
                    continue;
                }
                let at = single_arg(c, diags).map(|e| e.span().offset());
                if let (Some(v), Some(at)) = (leaf_int_quiet(c, diags), at) {
                    if name(c) == "min-version" {
                        min = Some((v, at));
                    } else {
                        max = Some((v, at));
                    }
                }
            }
            "max-h2-streams" => {
                if let Some(v) = leaf_u32(c, 1, MAX_H2_STREAMS, diags) {
                    http.max_h2_streams = v;
                }
            }
            "h2-ping-interval" => {
                if let Some(v) = leaf_int(c, 0, MAX_SECS, diags) {
                    http.h2_ping_interval_secs = v;
                }
            }
            _ => unknown_listing(c, "http-version", HTTP_VERSION_KEYS, &[], diags),
        }
    }
    if given.is_some() {
        if let Some(v) = named {
            http.version = v;
        }
        return;
    }
    // Upstream's defaults: min 1, max 2.
    let (lo, hi) = (min.map_or(1, |m| m.0), max.map_or(2, |m| m.0));
    if lo > hi {
        let at = min.or(max).map_or(name_at(node), |m| m.1);
        diags.error(
            at,
            "min-version",
            format!("`min-version` {lo} is above `max-version` {hi}"),
        );
        return;
    }
    http.version = match (lo, hi) {
        (2, _) => UpstreamHttpVersion::Http2,
        (_, 2) => UpstreamHttpVersion::Auto,
        _ => UpstreamHttpVersion::Http1,
    };
}

/// `min-version`/`max-version`: 1 or 2, as integers (upstream's form) or strings.
fn leaf_int_quiet(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Option<u64> {
    let entry = args(node).next()?;
    let ok = match entry.value() {
        KdlValue::Integer(1) => Some(1),
        KdlValue::Integer(2) => Some(2),
        KdlValue::String(s) if s == "1" || s == "1.1" => Some(1),
        KdlValue::String(s) if s == "2" => Some(2),
        _ => None,
    };
    if ok.is_none() {
        diags.error(
            entry.span().offset(),
            name(node),
            format!(
                "unknown HTTP version {}: accepted: 1 (HTTP/1.1), 2 (HTTP/2)",
                describe(entry.value())
            ),
        );
    }
    ok
}

/// The string form's value.
fn version_value(entry: &KdlEntry, diags: &mut Diagnostics<'_>) -> Option<UpstreamHttpVersion> {
    let at = entry.span().offset();
    match entry.value() {
        KdlValue::String(s) => match s.as_str() {
            "1.1" => Some(UpstreamHttpVersion::Http1),
            "2" => Some(UpstreamHttpVersion::Http2),
            "auto" => Some(UpstreamHttpVersion::Auto),
            other => {
                diags.error(
                    at,
                    "http-version",
                    format!("unknown HTTP version {other:?}; {ACCEPTED}"),
                );
                None
            }
        },
        KdlValue::Integer(n @ (1 | 2)) => {
            let text = if *n == 1 { "1.1" } else { "2" };
            diags.error(
                at,
                "http-version",
                format!("write the version as a string: `http-version \"{text}\"`; {ACCEPTED}"),
            );
            None
        }
        other => {
            diags.error(
                at,
                "http-version",
                format!("unknown HTTP version {}; {ACCEPTED}", describe(other)),
            );
            None
        }
    }
}
