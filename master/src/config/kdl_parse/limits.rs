//! The `limits` section, in upstream Zentinel's spelling (`max-header-size`, `max-body-size`,
//! `max-header-count`, `max-connections-per-client`, `max-total-connections`,
//! `max-in-flight-requests`) with this project's `*-bytes` names kept as aliases. Sizes are an
//! integer number of bytes or a string with a unit (`"10MB"`, `"512KiB"`; K/M/G are powers of
//! 1024, as in nginx). Upstream reads only the names without `-bytes` and silently ignores the
//! `-bytes` ones its own files use; here both mean what they say.

use super::*;

const LIMIT_KEYS: &[&str] = &[
    "max-header-size",
    "max-header-size-bytes",
    "max-header-count",
    "max-body-size",
    "max-body-size-bytes",
    "max-connections-per-client",
    "max-total-connections",
    "max-in-flight-requests",
];

/// Fields of upstream's limits struct that its KDL parser never reads (a file that sets them
/// changes nothing there): accepted here with a warning saying so, instead of an error.
const UPSTREAM_UNREAD: &[&str] = &[
    "max-header-name-bytes",
    "max-header-value-bytes",
    "max-body-buffer-bytes",
    "max-body-inspection-bytes",
    "max-decompression-ratio",
    "max-decompressed-size-bytes",
    "max-connections-per-route",
    "max-idle-connections-per-upstream",
    "max-in-flight-requests-per-worker",
    "max-queued-requests",
    "max-agent-queue-depth",
    "max-agent-body-bytes",
    "max-agent-response-bytes",
    "max-requests-per-second-global",
    "max-requests-per-second-per-client",
    "max-requests-per-second-per-route",
    "max-memory-bytes",
    "max-memory-percent",
];

pub(super) fn parse_limits(node: &KdlNode, limits: &mut Limits, diags: &mut Diagnostics<'_>) {
    let mut seen = Seen::default();
    for child in block(node, diags) {
        let key = match name(child) {
            "max-header-size-bytes" => "max-header-size",
            "max-body-size-bytes" => "max-body-size",
            other => other,
        };
        if LIMIT_KEYS.contains(&key) && !seen.check_as(child, key, diags) {
            continue;
        }
        match key {
            "max-header-size" => {
                // Below a few hundred bytes no real request line + Host header fits.
                if let Some(v) = leaf_size(child, 256, 1 << 30, diags) {
                    limits.max_header_size_bytes = v;
                }
            }
            "max-header-count" => {
                if let Some(v) = leaf_u32(child, 1, 100_000, diags) {
                    limits.max_header_count = v;
                }
            }
            "max-body-size" => {
                if let Some(v) = leaf_size(child, 0, u64::MAX >> 1, diags) {
                    limits.max_body_size_bytes = v;
                }
            }
            "max-connections-per-client" => {
                if let Some(v) = leaf_u32(child, 1, 10_000_000, diags) {
                    limits.max_connections_per_client = v;
                }
            }
            "max-total-connections" => {
                if let Some(v) = leaf_u32(child, 1, 100_000_000, diags) {
                    limits.max_total_connections = v;
                }
            }
            "max-in-flight-requests" => {
                if leaf_u32(child, 1, 100_000_000, diags).is_some() {
                    diags.warn(
                        name_at(child),
                        "max-in-flight-requests",
                        "`max-in-flight-requests` is not enforced yet (upstream does not \
                         enforce it either); `max-total-connections` bounds the work in flight",
                    );
                }
            }
            key if UPSTREAM_UNREAD.contains(&key) => {
                if let Some(entry) = single_arg(child, diags) {
                    if matches!(entry.value(), KdlValue::Integer(_) | KdlValue::Float(_)) {
                        diags.warn(
                            name_at(child),
                            key,
                            format!(
                                "`{key}` has no effect (upstream Zentinel does not read it from \
                                 KDL either)"
                            ),
                        );
                    } else {
                        diags.error(entry.span().offset(), key, "expected a number");
                    }
                }
            }
            _ => unknown(
                child,
                "limits",
                &[LIMIT_KEYS, UPSTREAM_UNREAD].concat(),
                &[],
                diags,
            ),
        }
    }
}

/// A size: an integer (bytes) or a string with a unit.
pub(super) fn leaf_size(
    node: &KdlNode,
    min: u64,
    max: u64,
    diags: &mut Diagnostics<'_>,
) -> Option<u64> {
    let entry = single_arg(node, diags)?;
    let KdlValue::String(text) = entry.value() else {
        return int_value(node, entry, min, max, diags);
    };
    let at = entry.span().offset();
    match parse_size(text) {
        Some(v) if v < min => {
            diags.error(
                at,
                name(node),
                format!("must be at least {min} bytes, found {text:?}"),
            );
            None
        }
        Some(v) if v > max => {
            diags.error(
                at,
                name(node),
                format!("must be at most {max} bytes, found {text:?}"),
            );
            None
        }
        Some(v) => Some(v),
        None => {
            diags.error(
                at,
                name(node),
                format!(
                    "invalid size {text:?}: expected bytes, or a number with a unit such as \
                     \"512KB\", \"10MB\", \"1GiB\" (K, M, G: powers of 1024)"
                ),
            );
            None
        }
    }
}

/// `"10MB"`, `"512 KiB"`, `"1g"`, `"4096"`, `"100B"`: bytes, K/M/G as powers of 1024.
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(multiplier)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_with_units() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("100B"), Some(100));
        assert_eq!(parse_size("512KB"), Some(512 * 1024));
        assert_eq!(parse_size("10MB"), Some(10 << 20));
        assert_eq!(parse_size("1 GiB"), Some(1 << 30));
        assert_eq!(parse_size("2g"), Some(2 << 30));
        for bad in ["", "MB", "1.5MB", "10 TB", "-1", "99999999999999999999GB"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }
}
