//! `circuit-breaker { failure-threshold 5; success-threshold 2; timeout-seconds 30;
//! half-open-max-requests 1; }` inside an upstream (one breaker per target), or inside a
//! route, where it applies to the route's upstream (see `validate`).
//!
//! Upstream Zentinel's keys and defaults. Without a block, an upstream's targets have breakers
//! with the defaults, as upstream. Also accepted, as written in its multi-file examples:
//! `timeout` (seconds, or a string such as "30s" or "2m") for `timeout-seconds`, and
//! `enabled #false` to turn the breakers off (upstream refuses that key).

use super::*;
use zentinel_protocol::config::CircuitBreakerConfig;

pub(super) const CIRCUIT_BREAKER_KEYS: &[&str] = &[
    "failure-threshold",
    "success-threshold",
    "timeout-seconds",
    "timeout",
    "half-open-max-requests",
    "enabled",
];
const MAX_COUNT: u32 = 1_000_000;

/// `Some(None)`: a valid block that turns the breaker off (`enabled #false`). `None`: an
/// error was reported.
pub(super) fn parse_circuit_breaker(
    node: &KdlNode,
    diags: &mut Diagnostics<'_>,
) -> Option<Option<CircuitBreakerConfig>> {
    let errors_before = diags.error_count();
    let mut config = CircuitBreakerConfig::default();
    let mut enabled = true;
    let mut seen = Seen::default();
    for c in block(node, diags) {
        let key = match name(c) {
            "timeout" => "timeout-seconds",
            other => other,
        };
        if CIRCUIT_BREAKER_KEYS.contains(&key) && !seen.check_as(c, key, diags) {
            continue;
        }
        match name(c) {
            "failure-threshold" => {
                if let Some(v) = leaf_u32(c, 1, MAX_COUNT, diags) {
                    config.failure_threshold = v;
                }
            }
            "success-threshold" => {
                if let Some(v) = leaf_u32(c, 1, MAX_COUNT, diags) {
                    config.success_threshold = v;
                }
            }
            "half-open-max-requests" => {
                if let Some(v) = leaf_u32(c, 1, MAX_COUNT, diags) {
                    config.half_open_max_requests = v;
                }
            }
            "timeout-seconds" => {
                if let Some(v) = leaf_int(c, 1, MAX_SECS, diags) {
                    config.timeout_seconds = v;
                }
            }
            "timeout" => {
                if let Some(v) = duration_secs(c, diags) {
                    config.timeout_seconds = v;
                }
            }
            "enabled" => {
                if let Some(b) = leaf_bool(c, diags) {
                    enabled = b;
                }
            }
            _ => unknown_listing(c, "circuit-breaker", CIRCUIT_BREAKER_KEYS, &[], diags),
        }
    }
    (diags.error_count() == errors_before).then_some(enabled.then_some(config))
}

/// `timeout 30` or `timeout "30s"` / `"2m"` / `"1h"`: whole seconds, at least one.
fn duration_secs(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Option<u64> {
    let entry = single_arg(node, diags)?;
    if let KdlValue::Integer(_) = entry.value() {
        return int_value(node, entry, 1, MAX_SECS, diags);
    }
    let text = string_value(node, entry, diags)?;
    let parsed = text
        .strip_suffix('s')
        .map(|n| (n, 1))
        .or_else(|| text.strip_suffix('m').map(|n| (n, 60)))
        .or_else(|| text.strip_suffix('h').map(|n| (n, 3600)))
        .and_then(|(n, unit)| n.parse::<u64>().ok().map(|n| n.saturating_mul(unit)))
        .filter(|s| (1..=MAX_SECS).contains(s));
    if parsed.is_none() {
        diags.error(
            entry.span().offset(),
            name(node),
            format!(
                "invalid duration {text:?}: expected whole seconds (`timeout 30`) or a string \
                 such as \"30s\", \"2m\" or \"1h\" (at least 1 second)"
            ),
        );
    }
    parsed
}
