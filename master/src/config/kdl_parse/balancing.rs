//! `load-balancing "name"` and the sticky-session block it may carry.
//!
//! Names are upstream Zentinel's, matched case-insensitively like upstream does, plus the
//! hyphenated forms (`least-connections`, `ip-hash`, ...). Upstream silently runs round robin
//! for any name it does not know, hyphenated ones included; here they mean what they say and
//! anything else is an error listing the accepted names.

use super::*;
use zentinel_protocol::config::{SameSite, StickySession};

/// Every accepted spelling (after lowercasing and `-` -> `_`) and what it means.
const NAMES: &[(&str, LoadBalancing)] = &[
    ("round_robin", LoadBalancing::RoundRobin),
    ("roundrobin", LoadBalancing::RoundRobin),
    ("weighted", LoadBalancing::Weighted),
    ("weighted_round_robin", LoadBalancing::Weighted),
    ("least_connections", LoadBalancing::LeastConnections),
    ("leastconnections", LoadBalancing::LeastConnections),
    (
        "weighted_least_connections",
        LoadBalancing::WeightedLeastConnections,
    ),
    (
        "weighted_least_conn",
        LoadBalancing::WeightedLeastConnections,
    ),
    ("wlc", LoadBalancing::WeightedLeastConnections),
    ("random", LoadBalancing::Random),
    ("power_of_two_choices", LoadBalancing::PowerOfTwoChoices),
    ("p2c", LoadBalancing::PowerOfTwoChoices),
    ("ip_hash", LoadBalancing::IpHash),
    ("iphash", LoadBalancing::IpHash),
    ("consistent_hash", LoadBalancing::ConsistentHash),
    ("consistenthash", LoadBalancing::ConsistentHash),
    ("maglev", LoadBalancing::Maglev),
    ("peak_ewma", LoadBalancing::PeakEwma),
    ("peakewma", LoadBalancing::PeakEwma),
    ("ewma", LoadBalancing::PeakEwma),
    ("sticky", LoadBalancing::Sticky),
    ("sticky_session", LoadBalancing::Sticky),
    ("stickysession", LoadBalancing::Sticky),
];

/// Upstream's AI-gateway algorithms: known names, not implemented here.
const UNSUPPORTED: &[&str] = &[
    "least_tokens_queued",
    "leasttokensqueued",
    "least_tokens",
    "adaptive",
    "locality_aware",
    "localityaware",
    "locality",
    "deterministic_subset",
    "subset",
    "subsetting",
];

const STICKY_KEYS: &[&str] = &[
    "cookie-name",
    "cookie-ttl",
    "cookie-path",
    "cookie-secure",
    "cookie-same-site",
    "fallback",
];

/// The names listed in errors: one spelling per algorithm.
const LISTED: &str = "round_robin, weighted (weighted_round_robin), least_connections, \
                      weighted_least_connections (wlc), random, power_of_two_choices (p2c), \
                      ip_hash, consistent_hash, maglev, peak_ewma (ewma), sticky; `-` may \
                      replace `_`";

/// Look a name up. Err: the message for an unknown or unsupported name.
pub(super) fn algorithm(name: &str) -> Result<LoadBalancing, String> {
    let key = name.to_ascii_lowercase().replace('-', "_");
    if let Some((_, lb)) = NAMES.iter().find(|(n, _)| *n == key) {
        return Ok(*lb);
    }
    if UNSUPPORTED.contains(&key.as_str()) {
        return Err(format!(
            "load-balancing {name:?} is not supported yet (accepted: {LISTED})"
        ));
    }
    Err(format!(
        "unknown load-balancing {name:?}{}: expected one of {LISTED}",
        did_you_mean(&key, NAMES.iter().map(|(n, _)| *n))
    ))
}

/// `load-balancing "name"`, with a `{ ... }` block for `sticky`. Returns the algorithm and,
/// for sticky, its cookie settings (defaults when there is no block).
pub(super) fn parse_load_balancing(
    node: &KdlNode,
    diags: &mut Diagnostics<'_>,
) -> Option<(LoadBalancing, Option<StickySession>)> {
    for entry in props(node) {
        unknown_property(node, entry, &[], diags);
    }
    let (first, extra) = only_arg(
        node,
        "missing algorithm: expected e.g. load-balancing \"round_robin\"",
        "`load-balancing` takes one algorithm name",
        diags,
    )?;
    if extra {
        return None;
    }
    let text = string_value(node, first, diags)?;
    let lb = match algorithm(&text) {
        Ok(lb) => lb,
        Err(message) => {
            diags.error(first.span().offset(), "load-balancing", message);
            return None;
        }
    };
    if lb != LoadBalancing::Sticky {
        no_children(node, diags);
        return Some((lb, None));
    }
    // Upstream refuses to start with a bare `"sticky"`; its defaults are as good a choice.
    let sticky = parse_sticky(node, diags)?;
    Some((lb, Some(sticky)))
}

fn parse_sticky(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Option<StickySession> {
    let mut sticky = StickySession::default();
    let errors_before = diags.error_count();
    let children = node.children().map_or(&[][..], |c| c.nodes());
    let mut seen = Seen::default();
    for c in children {
        if STICKY_KEYS.contains(&name(c)) {
            seen.check(c, diags);
        }
        match name(c) {
            "cookie-name" => {
                if let Some((v, at)) = leaf_string(c, diags) {
                    if v.is_empty() || !v.bytes().all(is_token_byte) {
                        diags.error(
                            at,
                            "cookie-name",
                            format!(
                                "invalid cookie name {v:?}: letters, digits and \
                                 !#$%&'*+-.^_`|~ only"
                            ),
                        );
                    } else {
                        sticky.cookie_name = v;
                    }
                }
            }
            "cookie-ttl" => {
                if let Some(secs) = cookie_ttl(c, diags) {
                    sticky.cookie_ttl_secs = secs;
                }
            }
            "cookie-path" => {
                if let Some((v, at)) = leaf_string(c, diags) {
                    if !v.starts_with('/') || !v.bytes().all(|b| b.is_ascii_graphic() && b != b';')
                    {
                        diags.error(
                            at,
                            "cookie-path",
                            format!(
                                "invalid cookie path {v:?}: it must start with `/` and contain \
                                 no `;`, spaces or control characters"
                            ),
                        );
                    } else {
                        sticky.cookie_path = v;
                    }
                }
            }
            "cookie-secure" => {
                if let Some(v) = leaf_bool(c, diags) {
                    sticky.cookie_secure = v;
                }
            }
            "cookie-same-site" => {
                if let Some((v, at)) = leaf_string(c, diags) {
                    match v.to_ascii_lowercase().as_str() {
                        "lax" => sticky.same_site = SameSite::Lax,
                        "strict" => sticky.same_site = SameSite::Strict,
                        "none" => sticky.same_site = SameSite::None,
                        _ => diags.error(
                            at,
                            "cookie-same-site",
                            format!(
                                "unknown cookie-same-site {v:?}: expected \"lax\", \"strict\" \
                                 or \"none\""
                            ),
                        ),
                    }
                }
            }
            "fallback" => {
                if let Some((v, at)) = leaf_string(c, diags) {
                    match algorithm(&v) {
                        Ok(LoadBalancing::Sticky) => diags.error(
                            at,
                            "fallback",
                            "the fallback of sticky sessions cannot be sticky itself",
                        ),
                        Ok(lb) => sticky.fallback = lb,
                        Err(message) => diags.error(at, "fallback", message),
                    }
                }
            }
            _ => unknown(c, "load-balancing \"sticky\"", STICKY_KEYS, &[], diags),
        }
    }
    if sticky.same_site == SameSite::None && !sticky.cookie_secure {
        diags.warn(
            name_at(node),
            "load-balancing",
            "cookie-same-site \"none\" without cookie-secure #true: browsers drop such cookies",
        );
    }
    (diags.error_count() == errors_before).then_some(sticky)
}

/// RFC 9110 token characters (what a cookie name may be made of).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `cookie-ttl 3600` (seconds) or `cookie-ttl "1h"`: a number, fractions allowed, and a unit
/// among s/sec/secs/second(s), m/min/mins/minute(s), h/hr/hrs/hour(s), d/day(s).
fn cookie_ttl(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Option<u64> {
    let entry = single_arg(node, diags)?;
    if let KdlValue::Integer(_) = entry.value() {
        return int_value(node, entry, 1, MAX_SECS, diags);
    }
    let text = string_value(node, entry, diags)?;
    let at = entry.span().offset();
    let secs = parse_duration(&text).filter(|s| (1..=MAX_SECS).contains(s));
    if secs.is_none() {
        diags.error(
            at,
            "cookie-ttl",
            format!(
                "invalid cookie-ttl {text:?}: expected seconds (3600) or a duration such as \
                 \"30m\", \"1.5h\" or \"7d\", from 1 second to 365 days"
            ),
        );
    }
    secs
}

/// Seconds in a duration string such as `"90s"`, `"1.5h"`, `"7 days"`.
pub(super) fn parse_duration(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let unit_secs = match unit.trim().to_ascii_lowercase().as_str() {
        "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
        "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3600.0,
        "d" | "day" | "days" => 86_400.0,
        _ => return None,
    };
    let secs = (number * unit_secs).round();
    (secs.is_finite() && secs >= 0.0 && secs <= MAX_SECS as f64).then_some(secs as u64)
}
