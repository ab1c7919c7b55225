//! The `upstreams` section: `upstream "name" { ... }`, targets, balancing, pool, timeouts and
//! health checks.

use super::*;

const UPSTREAM_KEYS: &[&str] = &[
    "target",
    "load-balancing",
    "connection-pool",
    "timeouts",
    "health-check",
    "passive-health",
];
const UPSTREAM_UNSUPPORTED: &[&str] = &["tls"];
const HEALTH_CHECK_KEYS: &[&str] = &[
    "type",
    "interval-secs",
    "timeout-secs",
    "healthy-threshold",
    "unhealthy-threshold",
];
const HTTP_CHECK_KEYS: &[&str] = &["path", "expected-status", "host"];
const PASSIVE_HEALTH_KEYS: &[&str] = &["max-fails", "fail-timeout-secs"];
/// More consecutive probes than this before a state change is a typo, not a policy.
const MAX_THRESHOLD: u32 = 1_000;
const POOL_KEYS: &[&str] = &["max-idle", "idle-timeout-secs"];
const TIMEOUT_KEYS: &[&str] = &["connect-secs", "read-secs"];

pub(super) fn parse_upstream(node: &KdlNode, diags: &mut Diagnostics<'_>) -> ParsedUpstream {
    let named = block_name(node, diags);
    let upstream_name = named.as_ref().map(|(n, _)| n.clone()).unwrap_or_default();
    let mut config = UpstreamConfig {
        name: upstream_name.clone(),
        targets: Vec::new(),
        load_balancing: LoadBalancing::RoundRobin,
        pool: ConnectionPool::default(),
        timeouts: UpstreamTimeouts::default(),
        health_check: None,
        passive_health: PassiveHealth::default(),
    };
    let mut seen = Seen::default();
    let mut target_seen: HashMap<SocketAddr, usize> = HashMap::new();
    let mut target_written = false;
    let children = node.children().map_or(&[][..], |c| c.nodes());
    for child in children {
        if matches!(
            name(child),
            "load-balancing" | "connection-pool" | "timeouts" | "health-check" | "passive-health"
        ) {
            seen.check(child, diags);
        }
        match name(child) {
            "target" => {
                target_written = true;
                if let Some(target) = parse_target(child, &mut target_seen, diags) {
                    config.targets.push(target);
                }
            }
            "load-balancing" => {
                if let Some((lb, at)) = leaf_string(child, diags) {
                    match lb.as_str() {
                        "round_robin" | "round-robin" => {
                            config.load_balancing = LoadBalancing::RoundRobin
                        }
                        "least_connections" | "least-connections" => {
                            config.load_balancing = LoadBalancing::LeastConnections
                        }
                        _ => diags.error(
                            at,
                            "load-balancing",
                            format!(
                                "unknown load-balancing {lb:?}: expected \"round_robin\" or \
                             \"least_connections\""
                            ),
                        ),
                    }
                }
            }
            "connection-pool" => {
                for c in keyed_block(child, POOL_KEYS, diags) {
                    match name(c) {
                        "max-idle" => {
                            if let Some(v) = leaf_u32(c, 0, 1_000_000, diags) {
                                config.pool.max_idle = v;
                            }
                        }
                        "idle-timeout-secs" => {
                            if let Some(v) = leaf_int(c, 1, MAX_SECS, diags) {
                                config.pool.idle_timeout_secs = v;
                            }
                        }
                        _ => unknown(c, "connection-pool", POOL_KEYS, &[], diags),
                    }
                }
            }
            "timeouts" => {
                for c in keyed_block(child, TIMEOUT_KEYS, diags) {
                    match name(c) {
                        "connect-secs" => {
                            if let Some(v) = leaf_int(c, 1, MAX_SECS, diags) {
                                config.timeouts.connect_secs = v;
                            }
                        }
                        "read-secs" => {
                            if let Some(v) = leaf_int(c, 1, MAX_SECS, diags) {
                                config.timeouts.read_secs = v;
                            }
                        }
                        _ => unknown(c, "timeouts", TIMEOUT_KEYS, &[], diags),
                    }
                }
            }
            "health-check" => config.health_check = parse_health_check(child, diags),
            "passive-health" => {
                for c in keyed_block(child, PASSIVE_HEALTH_KEYS, diags) {
                    match name(c) {
                        "max-fails" => {
                            if let Some(v) = leaf_u32(c, 0, 1_000_000, diags) {
                                config.passive_health.max_fails = v;
                            }
                        }
                        "fail-timeout-secs" => {
                            if let Some(v) = leaf_int(c, 1, MAX_SECS, diags) {
                                config.passive_health.fail_timeout_secs = v;
                            }
                        }
                        _ => unknown(c, "passive-health", PASSIVE_HEALTH_KEYS, &[], diags),
                    }
                }
            }
            _ => unknown(
                child,
                "upstream",
                UPSTREAM_KEYS,
                UPSTREAM_UNSUPPORTED,
                diags,
            ),
        }
    }
    if !target_written {
        diags.error(
            name_at(node),
            "upstream",
            format!(
                "upstream `{upstream_name}` has no `target` (at least one is required, e.g. \
                 target \"127.0.0.1:9001\")"
            ),
        );
    }
    ParsedUpstream {
        config,
        name_at: named.as_ref().map_or(name_at(node), |(_, at)| *at),
        has_name: named.is_some(),
    }
}

/// `health-check { type "http" { path "/health"; expected-status 200; }; interval-secs 5; }`
fn parse_health_check(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Option<HealthCheck> {
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
        other => {
            diags.error(
                first.span().offset(),
                "type",
                format!("unknown health check type {other:?}: expected \"http\" or \"tcp\""),
            );
            None
        }
    }
}

/// What can go on a request line or into a header value verbatim.
fn is_request_target(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic())
}

fn parse_target(
    node: &KdlNode,
    seen: &mut HashMap<SocketAddr, usize>,
    diags: &mut Diagnostics<'_>,
) -> Option<UpstreamTarget> {
    no_children(node, diags);
    let mut weight = Some(1u32);
    for entry in props(node) {
        match entry.name().map_or("", |k| k.value()) {
            "weight" => {
                weight = int_value(node, entry, 1, u64::from(u16::MAX), diags)
                    .and_then(|w| u32::try_from(w).ok());
            }
            _ => unknown_property(node, entry, &["weight"], diags),
        }
    }
    let (first, extra) = only_arg(
        node,
        "missing address: expected e.g. target \"127.0.0.1:9001\"",
        "`target` takes one address; write one `target` node per backend",
        diags,
    )?;
    if extra {
        return None;
    }
    let text = string_value(node, first, diags)?;
    let at = first.span().offset();
    let addr = socket_addr(node, &text, at, diags)?;
    if let Some(&prev) = seen.get(&addr) {
        let line = diags.line_of(prev);
        diags.error(
            at,
            "target",
            format!("duplicate target {text:?} (first at line {line}); use `weight` instead"),
        );
        return None;
    }
    seen.insert(addr, at);
    Some(UpstreamTarget {
        address: text,
        weight: weight?,
    })
}
