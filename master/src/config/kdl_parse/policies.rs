//! A route's `policies { ... }` block in upstream Zentinel's grammar. Upstream's KDL parser reads
//! only `request-headers` and `response-headers` and silently drops every other key; here each
//! key either works or is accepted with a located warning saying what happens instead.

use zentinel_protocol::config::{HeaderModifications, RateLimit, RateLimitKey, RoutePolicies};

use super::limits::leaf_size;
use super::*;

const POLICY_KEYS: &[&str] = &[
    "request-headers",
    "response-headers",
    "timeout-secs",
    "max-body-size",
    "failure-mode",
    "buffer-requests",
    "buffer-responses",
    "rate-limit",
    "cache",
    "rewrite-path",
];
pub(super) const HEADER_OPS: &[&str] = &["rename", "set", "add", "remove"];
const RATE_LIMIT_KEYS: &[&str] = &["requests-per-second", "burst", "key"];

/// Fields that decide a message's framing or its connection: a policy changing them would let
/// a config line desynchronise the proxy and the next hop (request smuggling), so no policy
/// may name them.
const FRAMING_HEADERS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// Upstream's key spellings (filters and the top-level `rate-limits`), then aliases.
const RATE_KEYS: &[(&str, RateLimitKey)] = &[
    ("client-ip", RateLimitKey::ClientIp),
    ("client_ip", RateLimitKey::ClientIp),
    ("ip", RateLimitKey::ClientIp),
    ("path", RateLimitKey::Path),
    ("route", RateLimitKey::Route),
    ("client-ip-and-path", RateLimitKey::ClientIpAndPath),
    ("client_ip_and_path", RateLimitKey::ClientIpAndPath),
];

pub(super) fn parse_policies(node: &KdlNode, diags: &mut Diagnostics<'_>) -> RoutePolicies {
    let mut policies = RoutePolicies::default();
    let once = &POLICY_KEYS[2..];
    for child in keyed_block(node, once, diags) {
        match name(child) {
            // Repeated header blocks add up (upstream reads only the first).
            "request-headers" => parse_header_block(child, &mut policies.request_headers, diags),
            "response-headers" => parse_header_block(child, &mut policies.response_headers, diags),
            "timeout-secs" => policies.timeout_secs = leaf_int(child, 1, MAX_SECS, diags),
            "max-body-size" => {
                policies.max_body_size_bytes = leaf_size(child, 0, u64::MAX >> 1, diags)
            }
            "failure-mode" => parse_failure_mode(child, diags),
            "buffer-requests" => {
                policies.buffer_requests = leaf_bool(child, diags).unwrap_or(false)
            }
            "buffer-responses" => {
                policies.buffer_responses = leaf_bool(child, diags).unwrap_or(false)
            }
            "rate-limit" => policies.rate_limit = parse_rate_limit(child, diags),
            "cache" => diags.warn(
                name_at(child),
                "cache",
                "`cache` inside `policies` is ignored (as upstream, whose parser never reads \
                 it); this build has no response cache",
            ),
            "rewrite-path" => diags.warn(
                name_at(child),
                "rewrite-path",
                "`rewrite-path` inside `policies` is not applied (upstream's parser never reads \
                 it either): the path is forwarded as received",
            ),
            _ => unknown_listing(child, "policies", POLICY_KEYS, &[], diags),
        }
    }
    policies
}

fn parse_failure_mode(node: &KdlNode, diags: &mut Diagnostics<'_>) {
    let Some((mode, at)) = leaf_string(node, diags) else {
        return;
    };
    if mode == "open" || mode == "closed" {
        diags.warn(
            name_at(node),
            "failure-mode",
            format!(
                "`failure-mode \"{mode}\"` accepted with no effect: it governs agent failures, \
                 and this build has no agents"
            ),
        );
    } else {
        diags.error(
            at,
            "failure-mode",
            format!("unknown failure-mode {mode:?}: expected \"open\" or \"closed\""),
        );
    }
}

/// `request-headers { rename { Old "New" } set { Name "v" } add { Name "v" } remove "A" "B" }`.
fn parse_header_block(node: &KdlNode, mods: &mut HeaderModifications, diags: &mut Diagnostics<'_>) {
    let block_name = name(node).to_owned();
    for op in block(node, diags) {
        if !parse_header_op(op, mods, diags) {
            unknown_listing(op, &block_name, HEADER_OPS, &[], diags);
        }
    }
}

/// One of `rename { Old "New" }`, `set { Name "v" }`, `add { Name "v" }`, `remove "A" "B"`,
/// added to `mods` (also the body of a `headers` filter). False: `op` is none of them.
pub(super) fn parse_header_op(
    op: &KdlNode,
    mods: &mut HeaderModifications,
    diags: &mut Diagnostics<'_>,
) -> bool {
    match name(op) {
        "remove" => {
            no_children(op, diags);
            for entry in props(op) {
                unknown_property(op, entry, &[], diags);
            }
            for entry in args(op) {
                let Some(h) = string_value(op, entry, diags) else {
                    continue;
                };
                if check_name(&h, entry.span().offset(), op, diags) {
                    mods.remove.push(h);
                }
            }
        }
        kind @ ("rename" | "set" | "add") => {
            for pair in block(op, diags) {
                let at = name_at(pair);
                let field = name(pair).to_owned();
                let Some((value, value_at)) = leaf_string(pair, diags) else {
                    continue;
                };
                let mut ok = check_name(&field, at, op, diags);
                // Adding a second Host, or renaming it away, leaves an invalid request;
                // replacing its value (`set { Host "..." }`) is what upstream users do.
                if kind != "set" && field.eq_ignore_ascii_case("host") {
                    diags.error(
                        at,
                        kind,
                        format!(
                            "`{kind}` cannot change `Host` (a request has exactly one); use \
                             `set {{ Host \"...\" }}` to replace its value"
                        ),
                    );
                    ok = false;
                }
                ok &= if kind == "rename" {
                    check_name(&value, value_at, op, diags)
                } else {
                    check_value(&value, value_at, op, diags)
                };
                if !ok {
                    continue;
                }
                let list = match kind {
                    "rename" => &mut mods.rename,
                    "set" => &mut mods.set,
                    _ => &mut mods.add,
                };
                list.push((field, value));
            }
        }
        _ => return false,
    }
    true
}

/// A field name a policy may touch: a valid token, not a framing or hop-by-hop field.
pub(super) fn check_name(
    field: &str,
    at: usize,
    op: &KdlNode,
    diags: &mut Diagnostics<'_>,
) -> bool {
    let valid = !field.is_empty()
        && field
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !valid {
        diags.error(
            at,
            name(op),
            format!("invalid header name {field:?}: letters, digits and !#$%&'*+-.^_`|~ only"),
        );
        return false;
    }
    if FRAMING_HEADERS
        .iter()
        .any(|f| f.eq_ignore_ascii_case(field))
    {
        diags.error(
            at,
            name(op),
            format!(
                "`{field}` cannot be changed by a policy: the proxy manages the framing and \
                 connection fields (Content-Length, Transfer-Encoding, Connection, Keep-Alive, \
                 Proxy-Connection, TE, Trailer, Upgrade) so both hops agree on where a message \
                 ends"
            ),
        );
        return false;
    }
    if field.eq_ignore_ascii_case("host") && name(op) == "remove" {
        diags.error(
            at,
            "remove",
            "`Host` cannot be removed (an HTTP/1.1 request needs one); use `set { Host \"...\" }` \
             to replace it",
        );
        return false;
    }
    true
}

pub(super) fn check_value(
    value: &str,
    at: usize,
    op: &KdlNode,
    diags: &mut Diagnostics<'_>,
) -> bool {
    if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        diags.error(
            at,
            name(op),
            "a header value must be a single line (no CR, LF or NUL)",
        );
        return false;
    }
    true
}

fn parse_rate_limit(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Option<RateLimit> {
    let mut rps = None;
    let mut burst = None;
    let mut key = Some(RateLimitKey::ClientIp);
    for child in keyed_block(node, RATE_LIMIT_KEYS, diags) {
        match name(child) {
            "requests-per-second" => rps = leaf_u32(child, 1, 1_000_000, diags),
            "burst" => burst = leaf_u32(child, 1, 10_000_000, diags),
            "key" => key = parse_rate_key(child, diags),
            _ => unknown_listing(child, "rate-limit", RATE_LIMIT_KEYS, &[], diags),
        }
    }
    let Some(rps) = rps else {
        if !node
            .children()
            .is_some_and(|c| c.nodes().iter().any(|n| name(n) == "requests-per-second"))
        {
            diags.error(
                name_at(node),
                "rate-limit",
                "missing `requests-per-second` (e.g. `requests-per-second 100`)",
            );
        }
        return None;
    };
    Some(RateLimit {
        requests_per_second: rps,
        // Upstream's default burst is the rate itself: one second's worth at once.
        burst: burst.unwrap_or(rps),
        key: key?,
    })
}

pub(super) fn parse_rate_key(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Option<RateLimitKey> {
    let (text, at) = leaf_string(node, diags)?;
    let lower = text.to_ascii_lowercase();
    if let Some((_, k)) = RATE_KEYS.iter().find(|(n, _)| *n == lower) {
        return Some(k.clone());
    }
    if let Some(header) = lower.strip_prefix("header:") {
        let header = header.trim();
        if !header.is_empty()
            && header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        {
            return Some(RateLimitKey::Header(header.to_owned()));
        }
    }
    diags.error(
        at,
        "key",
        format!(
            "unknown rate-limit key {text:?}{}: expected \"client-ip\", \"path\", \"route\", \
             \"client-ip-and-path\" or \"header:NAME\"",
            did_you_mean(&lower, RATE_KEYS.iter().map(|(n, _)| *n))
        ),
    );
    None
}
