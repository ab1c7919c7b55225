//! `retry-policy { max-attempts 3; timeout-ms 5000; backoff-base-ms 100; backoff-max-ms 2000;
//! retryable-status-codes 502 503 504; }` inside a route.
//!
//! Upstream Zentinel only knows `max-attempts` and rejects the other keys, although its own
//! examples write them; here all of them are accepted and implemented (see the README).

use super::*;
use zentinel_protocol::config::RetryPolicy;

pub(super) const RETRY_POLICY_KEYS: &[&str] = &[
    "max-attempts",
    "timeout-ms",
    "backoff-base-ms",
    "backoff-max-ms",
    "retryable-status-codes",
];
/// More attempts than this is a typo, not a policy (every attempt may take a whole timeout).
const MAX_ATTEMPTS: u32 = 100;
/// One hour: longer waits between attempts would outlive any client.
const MAX_BACKOFF_MS: u64 = 3_600_000;

/// Returns `None` when anything in the block is wrong (each problem reported).
pub(super) fn parse_retry_policy(
    node: &KdlNode,
    diags: &mut Diagnostics<'_>,
) -> Option<RetryPolicy> {
    let errors_before = diags.error_count();
    let mut policy = RetryPolicy::default();
    let mut max_at = None;
    for c in keyed_block(node, RETRY_POLICY_KEYS, diags) {
        match name(c) {
            "max-attempts" => {
                if let Some(v) = leaf_u32(c, 1, MAX_ATTEMPTS, diags) {
                    policy.max_attempts = v;
                }
            }
            "timeout-ms" => {
                if let Some(v) = leaf_int(c, 1, MAX_SECS * 1000, diags) {
                    policy.timeout_ms = Some(v);
                }
            }
            "backoff-base-ms" => {
                if let Some(v) = leaf_int(c, 0, MAX_BACKOFF_MS, diags) {
                    policy.backoff_base_ms = v;
                }
            }
            "backoff-max-ms" => {
                if let Some(v) = leaf_int(c, 0, MAX_BACKOFF_MS, diags) {
                    policy.backoff_max_ms = v;
                    max_at = Some(name_at(c));
                }
            }
            "retryable-status-codes" => {
                if let Some(codes) = parse_status_codes(c, diags) {
                    policy.retryable_status_codes = codes;
                }
            }
            _ => unknown_listing(c, "retry-policy", RETRY_POLICY_KEYS, &[], diags),
        }
    }
    if let Some(at) = max_at {
        if policy.backoff_max_ms < policy.backoff_base_ms {
            diags.error(
                at,
                "backoff-max-ms",
                format!(
                    "backoff-max-ms ({}) is below backoff-base-ms ({}): the cap must be at least \
                     the first wait",
                    policy.backoff_max_ms, policy.backoff_base_ms
                ),
            );
        }
    }
    (diags.error_count() == errors_before).then_some(policy)
}

/// `retryable-status-codes 502 503 504`: one or more statuses from 400 to 599, no repeats.
fn parse_status_codes(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Option<Vec<u16>> {
    no_children(node, diags);
    for entry in props(node) {
        unknown_property(node, entry, &[], diags);
    }
    let mut codes: Vec<u16> = Vec::new();
    let mut ok = true;
    for entry in args(node) {
        match int_value(node, entry, 400, 599, diags).and_then(|v| u16::try_from(v).ok()) {
            Some(code) if codes.contains(&code) => {
                ok = false;
                diags.error(
                    entry.span().offset(),
                    name(node),
                    format!("status {code} is listed twice"),
                );
            }
            Some(code) => codes.push(code),
            None => ok = false,
        }
    }
    if codes.is_empty() && ok {
        diags.error(
            name_at(node),
            name(node),
            "missing value: expected one or more statuses, e.g. `retryable-status-codes 502 503 504`",
        );
        return None;
    }
    ok.then_some(codes)
}
