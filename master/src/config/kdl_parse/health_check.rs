//! `health-check { type "http" { ... }; interval-secs ...; }` inside an upstream.

use super::*;

const HEALTH_CHECK_KEYS: &[&str] = &[
    "type",
    "interval-secs",
    "timeout-secs",
    "healthy-threshold",
    "unhealthy-threshold",
];
const HTTP_CHECK_KEYS: &[&str] = &["path", "expected-status", "host"];
/// More consecutive probes than this before a state change is a typo, not a policy.
const MAX_THRESHOLD: u32 = 1_000;

/// `health-check { type "http" { path "/health"; expected-status 200; }; interval-secs 5; }`
pub(super) fn parse_health_check(
    node: &KdlNode,
    diags: &mut Diagnostics<'_>,
) -> Option<HealthCheck> {
    let mut ok = true;
    let mut kind = None;
    let mut check = HealthCheck {
        kind: HealthCheckKind::Tcp,
        interval_secs: DEFAULT_HEALTH_INTERVAL_SECS,
        timeout_secs: DEFAULT_HEALTH_TIMEOUT_SECS,
        healthy_threshold: DEFAULT_HEALTHY_THRESHOLD,
        unhealthy_threshold: DEFAULT_UNHEALTHY_THRESHOLD,
    };
    let mut seen = Seen::default();
    let errors_before = diags.error_count();
    for c in block(node, diags) {
        if HEALTH_CHECK_KEYS.contains(&name(c)) {
            seen.check(c, diags);
        }
        match name(c) {
            "type" => kind = parse_check_type(c, diags),
            "interval-secs" => match leaf_int(c, 1, MAX_SECS, diags) {
                Some(v) => check.interval_secs = v,
                None => ok = false,
            },
            "timeout-secs" => match leaf_int(c, 1, MAX_SECS, diags) {
                Some(v) => check.timeout_secs = v,
                None => ok = false,
            },
            "healthy-threshold" => match leaf_u32(c, 1, MAX_THRESHOLD, diags) {
                Some(v) => check.healthy_threshold = v,
                None => ok = false,
            },
            "unhealthy-threshold" => match leaf_u32(c, 1, MAX_THRESHOLD, diags) {
                Some(v) => check.unhealthy_threshold = v,
                None => ok = false,
            },
            _ => {
                ok = false;
                unknown(c, "health-check", HEALTH_CHECK_KEYS, &[], diags);
            }
        }
    }
    if !seen.contains("type") {
        diags.error(
            name_at(node),
            "health-check",
            "missing `type`: expected `type \"http\" { path \"/health\"; }` or `type \"tcp\"`",
        );
        return None;
    }
    check.kind = kind?;
    (ok && diags.error_count() == errors_before).then_some(check)
}

/// `type "http" { path "/health"; expected-status 200; host "example.com"; }` or `type "tcp"`.
fn parse_check_type(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Option<HealthCheckKind> {
    for entry in props(node) {
        unknown_property(node, entry, &[], diags);
    }
    let (first, extra) = only_arg(
        node,
        "missing check type: expected \"http\" or \"tcp\"",
        "expected exactly one check type",
        diags,
    )?;
    if extra {
        return None;
    }
    let kind = string_value(node, first, diags)?;
    match kind.as_str() {
        "tcp" => {
            no_children(node, diags);
            Some(HealthCheckKind::Tcp)
        }
        "http" => {
            let mut path = None;
            let mut expected_status = 200u16;
            let mut host = None;
            let mut ok = true;
            let mut seen = Seen::default();
            for c in node.children().map_or(&[][..], |c| c.nodes()) {
                if HTTP_CHECK_KEYS.contains(&name(c)) {
                    seen.check(c, diags);
                }
                match name(c) {
                    "path" => match leaf_string(c, diags) {
                        Some((p, _)) if p.starts_with('/') && is_request_target(&p) => {
                            path = Some(p)
                        }
                        Some((p, at)) => {
                            ok = false;
                            diags.error(
                                at,
                                "path",
                                format!(
                                    "invalid health check path {p:?}: it must start with `/` \
                                     and contain no spaces or control characters"
                                ),
                            );
                        }
                        None => ok = false,
                    },
                    "expected-status" => match leaf_int(c, 100, 599, diags) {
                        Some(v) => expected_status = u16::try_from(v).unwrap_or(200),
                        None => ok = false,
                    },
                    "host" => match leaf_string(c, diags) {
                        Some((h, at)) if h.is_empty() || !is_request_target(&h) => {
                            ok = false;
                            diags.error(
                                at,
                                "host",
                                format!(
                                    "invalid health check host {h:?}: expected a non-empty \
                                     host name without spaces or control characters"
                                ),
                            );
                        }
                        Some((h, _)) => host = Some(h),
                        None => ok = false,
                    },
                    _ => {
                        ok = false;
                        unknown(c, "type \"http\"", HTTP_CHECK_KEYS, &[], diags);
                    }
                }
            }
            if path.is_none() && ok && !seen.contains("path") {
                diags.error(
                    name_at(node),
                    "type",
                    "an http health check needs a `path`, e.g. `type \"http\" { path \"/health\"; }`",
                );
            }
            let path = path?;
            ok.then_some(HealthCheckKind::Http {
                path,
                expected_status,
                host,
            })
        }
        // Upstream's other two: gRPC health checking needs HTTP/2 to the target, and the
        // inference probe belongs to the inference routing this build does not have.
        other @ ("grpc" | "inference") => {
            diags.error(
                first.span().offset(),
                "type",
                format!(
                    "health check type {other:?} is not supported yet (\"http\" and \"tcp\" \
                     are)"
                ),
            );
            None
        }
        other => {
            diags.error(
                first.span().offset(),
                "type",
                format!(
                    "unknown health check type {other:?}: expected \"http\" or \"tcp\" \
                     (\"grpc\" and \"inference\" are not supported yet)"
                ),
            );
            None
        }
    }
}

/// What can go on a request line or into a header value verbatim.
fn is_request_target(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic())
}
