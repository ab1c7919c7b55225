//! The `limits` section.

use super::*;

const LIMIT_KEYS: &[&str] = &[
    "max-header-size-bytes",
    "max-header-count",
    "max-body-size-bytes",
];

pub(super) fn parse_limits(node: &KdlNode, limits: &mut Limits, diags: &mut Diagnostics<'_>) {
    for child in keyed_block(node, LIMIT_KEYS, diags) {
        match name(child) {
            "max-header-size-bytes" => {
                // Below a few hundred bytes no real request line + Host header fits.
                if let Some(v) = leaf_int(child, 256, 1 << 30, diags) {
                    limits.max_header_size_bytes = v;
                }
            }
            "max-header-count" => {
                if let Some(v) = leaf_u32(child, 1, 100_000, diags) {
                    limits.max_header_count = v;
                }
            }
            "max-body-size-bytes" => {
                if let Some(v) = leaf_int(child, 0, u64::MAX >> 1, diags) {
                    limits.max_body_size_bytes = v;
                }
            }
            _ => unknown(child, "limits", LIMIT_KEYS, &[], diags),
        }
    }
}
