//! `shadow { upstream "id"; percentage 10; sample-header "X-Shadow" "on"; timeout-ms 5000 }`:
//! mirror a share of a route's requests to another upstream.
//!
//! Differences from upstream Zentinel, on the operator's side: `percentage 10.0` is 10%
//! (upstream ignores floats and mirrors everything), an unknown upstream is a config error
//! (upstream only logs at runtime), unknown keys are errors. Requests with a body are not
//! mirrored in this build, so `buffer-body #true` and `max-body-bytes` are accepted with a
//! warning.

use zentinel_protocol::config::RouteShadow;

use super::*;

const KEYS: &[&str] = &[
    "upstream",
    "percentage",
    "sample-header",
    "timeout-ms",
    "buffer-body",
    "max-body-bytes",
];

/// The shadow and where its upstream name was written.
pub(super) fn parse_shadow(
    node: &KdlNode,
    diags: &mut Diagnostics<'_>,
) -> Option<(RouteShadow, usize)> {
    let children = keyed_block(node, KEYS, diags);
    let errors_before = diags.error_count();
    let mut upstream = None;
    let mut shadow = RouteShadow {
        upstream: String::new(),
        per_10000: 10_000,
        sample_header: None,
        timeout_ms: 5000,
    };
    for child in children {
        match name(child) {
            "upstream" => upstream = leaf_string(child, diags),
            "percentage" => {
                if let Some(p) = parse_percentage(child, diags) {
                    shadow.per_10000 = p;
                }
            }
            "sample-header" => {
                no_children(child, diags);
                let values: Vec<Option<String>> = child
                    .entries()
                    .iter()
                    .map(|e| string_value(child, e, diags))
                    .collect();
                match values.as_slice() {
                    [Some(n), Some(v)] if !n.is_empty() => {
                        shadow.sample_header = Some((n.to_ascii_lowercase(), v.clone()))
                    }
                    [Some(_), Some(_)] | [_, _] => {}
                    _ => diags.error(
                        name_at(child),
                        "sample-header",
                        "`sample-header` takes a header name and the value to match, e.g. \
                         sample-header \"X-Shadow\" \"on\"",
                    ),
                }
            }
            "timeout-ms" => {
                if let Some(ms) = leaf_int(child, 1, MAX_SECS * 1000, diags) {
                    shadow.timeout_ms = ms;
                }
            }
            "buffer-body" => {
                if let Some(true) = leaf_bool(child, diags) {
                    diags.warn(
                        name_at(child),
                        "buffer-body",
                        "`buffer-body` is accepted, no effect: this build mirrors requests \
                         without a body only",
                    );
                }
            }
            "max-body-bytes" => {
                if leaf_int(child, 0, u64::MAX, diags).is_some() {
                    diags.warn(
                        name_at(child),
                        "max-body-bytes",
                        "`max-body-bytes` is accepted, no effect: this build mirrors requests \
                         without a body only",
                    );
                }
            }
            _ => unknown_listing(child, "shadow", KEYS, &[], diags),
        }
    }
    if upstream.is_none() && !children.iter().any(|c| name(c) == "upstream") {
        diags.error(
            name_at(node),
            "shadow",
            "`shadow` needs the upstream to mirror to, e.g. upstream \"canary\"",
        );
    }
    if diags.error_count() != errors_before {
        return None;
    }
    let (up, at) = upstream?;
    shadow.upstream = up;
    Some((shadow, at))
}

/// `percentage 10`, `percentage 12.5` or `percentage "12.5"`, 0..=100, in hundredths.
fn parse_percentage(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Option<u32> {
    let entry = single_arg(node, diags)?;
    let value = match entry.value() {
        KdlValue::Integer(i) => Some(*i as f64),
        KdlValue::Float(f) => Some(*f),
        KdlValue::String(s) => s.trim().trim_end_matches('%').trim().parse::<f64>().ok(),
        _ => None,
    };
    match value {
        Some(v) if (0.0..=100.0).contains(&v) => Some((v * 100.0).round() as u32),
        _ => {
            diags.error(
                entry.span().offset(),
                "percentage",
                format!(
                    "`percentage` must be a number from 0 to 100, found {}",
                    describe(entry.value())
                ),
            );
            None
        }
    }
}
