//! `fallback { ... }` on a route: other upstreams for when the route's own cannot serve.
//!
//! Upstream's spelling: `max-attempts N`, `triggers { on-health-failure; on-connection-error;
//! on-budget-exhausted; on-latency-threshold-ms; on-error-codes }` and any number of
//! `fallback-upstream "id" { provider; skip-if-unhealthy; model-mapping { } }`. Upstream's own
//! example writes `upstream "id"` (and `model-mapping`) directly in the block, which its parser
//! ignores; here `upstream "id"` is read as one more fallback upstream, as the operator means.
//!
//! What runs (as upstream, plus the connection trigger upstream parses but never calls):
//! the health trigger (the route's upstream has no target in rotation) and the connection
//! trigger (every target of the current upstream failed to connect). Error-code and latency
//! triggers are accepted with a warning, as upstream does not act on them either; budgets and
//! model mapping belong to inference routes, which this build does not have.

use zentinel_protocol::config::{FallbackUpstream, RouteFallback};

use super::*;

const KEYS: &[&str] = &[
    "max-attempts",
    "triggers",
    "fallback-upstream",
    "upstream",
    "model-mapping",
];
const TRIGGER_KEYS: &[&str] = &[
    "on-health-failure",
    "on-connection-error",
    "on-budget-exhausted",
    "on-latency-threshold-ms",
    "on-error-codes",
];
const UPSTREAM_KEYS: &[&str] = &["provider", "skip-if-unhealthy", "model-mapping"];

/// The fallback, and where each upstream name was written (for the reference check).
pub(super) fn parse_fallback(
    node: &KdlNode,
    diags: &mut Diagnostics<'_>,
) -> Option<(RouteFallback, Vec<usize>)> {
    let children = block(node, diags);
    let mut seen = Seen::default();
    let errors_before = diags.error_count();
    let mut fb = RouteFallback {
        upstreams: Vec::new(),
        max_attempts: 3,
        on_health_failure: true,
        on_connection_error: true,
    };
    let mut names_at = Vec::new();
    for child in children {
        let key = name(child);
        if matches!(key, "max-attempts" | "triggers" | "model-mapping") && !seen.check(child, diags)
        {
            continue;
        }
        match key {
            "max-attempts" => {
                if let Some(n) = leaf_u32(child, 1, 100, diags) {
                    fb.max_attempts = n;
                }
            }
            "triggers" => parse_triggers(child, &mut fb, diags),
            "upstream" => {
                if let Some((up, at)) = leaf_string(child, diags) {
                    fb.upstreams.push(FallbackUpstream {
                        name: up,
                        skip_if_unhealthy: false,
                    });
                    names_at.push(at);
                }
            }
            "fallback-upstream" => {
                if let Some((up, at)) = parse_fallback_upstream(child, diags) {
                    fb.upstreams.push(up);
                    names_at.push(at);
                }
            }
            "model-mapping" => no_effect(child, "model mapping rewrites inference requests", diags),
            _ => unknown_listing(child, "fallback", KEYS, &[], diags),
        }
    }
    if fb.upstreams.is_empty() && diags.error_count() == errors_before {
        diags.error(
            name_at(node),
            "fallback",
            "`fallback` needs an upstream to fall back to, e.g. fallback-upstream \"backup\"",
        );
    }
    (diags.error_count() == errors_before).then_some((fb, names_at))
}

fn parse_triggers(node: &KdlNode, fb: &mut RouteFallback, diags: &mut Diagnostics<'_>) {
    for child in keyed_block(node, TRIGGER_KEYS, diags) {
        match name(child) {
            "on-health-failure" => {
                if let Some(b) = leaf_bool(child, diags) {
                    fb.on_health_failure = b;
                }
            }
            "on-connection-error" => {
                if let Some(b) = leaf_bool(child, diags) {
                    fb.on_connection_error = b;
                }
            }
            "on-budget-exhausted" => {
                if let Some(true) = leaf_bool(child, diags) {
                    no_effect(child, "this build has no inference budgets", diags);
                }
            }
            "on-latency-threshold-ms" => {
                if leaf_int(child, 1, u64::from(u32::MAX), diags).is_some() {
                    no_effect(child, "upstream does not act on it either", diags);
                }
            }
            "on-error-codes" => {
                no_children(child, diags);
                let mut ok = !child.entries().is_empty();
                for entry in child.entries() {
                    ok &= int_value(child, entry, 100, 599, diags).is_some();
                }
                if ok {
                    no_effect(child, "upstream does not act on it either", diags);
                } else if child.entries().is_empty() {
                    diags.error(
                        name_at(child),
                        "on-error-codes",
                        "`on-error-codes` needs status codes, e.g. on-error-codes 502 503",
                    );
                }
            }
            _ => unknown_listing(child, "triggers", TRIGGER_KEYS, &[], diags),
        }
    }
}

fn parse_fallback_upstream(
    node: &KdlNode,
    diags: &mut Diagnostics<'_>,
) -> Option<(FallbackUpstream, usize)> {
    let (entry, _) = only_arg(
        node,
        "`fallback-upstream` needs an upstream name, e.g. fallback-upstream \"backup\"",
        "`fallback-upstream` takes one upstream name; write one node per upstream",
        diags,
    )?;
    for p in props(node) {
        unknown_property(node, p, &[], diags);
    }
    let at = entry.span().offset();
    let up = string_value(node, entry, diags)?;
    let mut skip_if_unhealthy = false;
    let children = node.children().map_or(&[][..], |c| c.nodes());
    let mut seen = Seen::default();
    for child in children {
        if !seen.check(child, diags) {
            continue;
        }
        match name(child) {
            "skip-if-unhealthy" => {
                if let Some(b) = leaf_bool(child, diags) {
                    skip_if_unhealthy = b;
                }
            }
            "provider" => {
                if leaf_string(child, diags).is_some() {
                    no_effect(child, "providers matter to inference routes only", diags);
                }
            }
            "model-mapping" => no_effect(child, "model mapping rewrites inference requests", diags),
            _ => unknown_listing(child, "fallback-upstream", UPSTREAM_KEYS, &[], diags),
        }
    }
    Some((
        FallbackUpstream {
            name: up,
            skip_if_unhealthy,
        },
        at,
    ))
}

fn no_effect(node: &KdlNode, why: &str, diags: &mut Diagnostics<'_>) {
    diags.warn(
        name_at(node),
        name(node),
        format!("`{}` is accepted, no effect: {why}", name(node)),
    );
}
