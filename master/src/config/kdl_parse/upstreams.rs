//! The `upstreams` section: `upstream "name" { ... }`, its targets, connection pool and
//! timeouts. Balancing is in `balancing.rs`, health checks in `health_check.rs`.
//!
//! Upstream Zentinel's spellings are accepted (`target address=...`, `targets { }`, the
//! `address` shorthand, `idle-timeout`, `connect`, ...) next to ours. Where upstream silently
//! ignores a key or a value of the wrong type, this parser reports it with its position.

use super::balancing::parse_load_balancing;
use super::circuit_breaker::parse_circuit_breaker;
use super::health_check::parse_health_check;
use super::upstream_http::parse_http_version;
use super::upstream_tls::parse_upstream_tls;
use super::*;
use zentinel_protocol::config::{parse_target_address, TargetAddress, UpstreamHttp};

const UPSTREAM_KEYS: &[&str] = &[
    "target",
    "targets",
    "address",
    "load-balancing",
    "connection-pool",
    "timeouts",
    "health-check",
    "passive-health",
    "circuit-breaker",
    "tls",
    "http-version",
];
const PASSIVE_HEALTH_KEYS: &[&str] = &["max-fails", "fail-timeout-secs"];
/// (spelling, the setting it sets): upstream's names and ours are one setting each.
const POOL_KEYS: &[(&str, &str)] = &[
    ("max-connections", "max-connections"),
    ("max-idle", "max-idle"),
    ("idle-timeout-secs", "idle-timeout"),
    ("idle-timeout", "idle-timeout"),
    ("max-lifetime-secs", "max-lifetime"),
    ("max-lifetime", "max-lifetime"),
];
const TIMEOUT_KEYS: &[(&str, &str)] = &[
    ("connect-secs", "connect"),
    ("connect", "connect"),
    ("read-secs", "read"),
    ("read", "read"),
    ("write-secs", "write"),
    ("write", "write"),
    ("request-secs", "request"),
    ("request", "request"),
];
const TARGET_BLOCK_KEYS: &[&str] = &["address", "weight"];

pub(super) fn parse_upstream(node: &KdlNode, diags: &mut Diagnostics<'_>) -> ParsedUpstream {
    let named = block_name(node, diags);
    let upstream_name = named.as_ref().map(|(n, _)| n.clone()).unwrap_or_default();
    let mut config = UpstreamConfig {
        name: upstream_name.clone(),
        targets: Vec::new(),
        load_balancing: LoadBalancing::RoundRobin,
        sticky: None,
        pool: ConnectionPool::default(),
        timeouts: UpstreamTimeouts::default(),
        health_check: None,
        passive_health: PassiveHealth::default(),
        // As upstream Zentinel: every target has a breaker with the defaults unless the
        // upstream (or a route to it) says otherwise.
        circuit_breaker: Some(CircuitBreakerConfig::default()),
        tls: None,
        http: UpstreamHttp::default(),
    };
    let mut has_circuit_breaker = false;
    let mut seen = Seen::default();
    let mut targets = Targets::default();
    let mut shorthand: Option<&KdlNode> = None;
    // Parsed once the targets are known (it checks their names).
    let mut tls: Option<&KdlNode> = None;
    let children = node.children().map_or(&[][..], |c| c.nodes());
    for child in children {
        if matches!(
            name(child),
            "load-balancing"
                | "connection-pool"
                | "timeouts"
                | "health-check"
                | "passive-health"
                | "circuit-breaker"
                | "address"
                | "tls"
                | "http-version"
        ) {
            seen.check(child, diags);
        }
        match name(child) {
            "target" => {
                targets.written = true;
                if let Some(t) = parse_target(child, &mut targets, diags) {
                    config.targets.push(t);
                }
            }
            "targets" => {
                targets.written = true;
                for c in block(child, diags) {
                    match name(c) {
                        "target" => {
                            if let Some(t) = parse_target(c, &mut targets, diags) {
                                config.targets.push(t);
                            }
                        }
                        _ => unknown(c, "targets", &["target"], &[], diags),
                    }
                }
            }
            "address" => shorthand = Some(child),
            "tls" => tls = Some(child),
            "http-version" => parse_http_version(child, &mut config.http, diags),
            "load-balancing" => {
                if let Some((lb, sticky)) = parse_load_balancing(child, diags) {
                    config.load_balancing = lb;
                    config.sticky = sticky;
                }
            }
            "connection-pool" => parse_pool(child, &mut config.pool, diags),
            "timeouts" => parse_timeouts(child, &mut config.timeouts, diags),
            "health-check" => config.health_check = parse_health_check(child, diags),
            "circuit-breaker" => {
                has_circuit_breaker = true;
                config.circuit_breaker = parse_circuit_breaker(child, diags).flatten();
            }
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
            _ => unknown(child, "upstream", UPSTREAM_KEYS, &[], diags),
        }
    }
    if let Some(short) = shorthand {
        if targets.written {
            // Upstream silently drops the shorthand when a target exists.
            diags.error(
                name_at(short),
                "address",
                "`address` is the shorthand for an upstream with a single target: use it \
                 instead of `target`, not next to it",
            );
        } else {
            targets.written = true;
            if let Some((text, at)) = leaf_string(short, diags) {
                if let Some(address) = check_address(short, &text, at, &mut targets, diags) {
                    config.targets.push(UpstreamTarget { address, weight: 1 });
                }
            }
        }
    }
    if let Some(node) = tls {
        config.tls = parse_upstream_tls(node, &upstream_name, &config.targets, diags);
    }
    if !targets.written {
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
        has_circuit_breaker,
    }
}

/// The targets of one upstream so far.
#[derive(Default)]
struct Targets {
    /// Some target form was written (even an invalid one: no second "no target" error).
    written: bool,
    /// Normalised address -> offset, to report duplicates.
    seen: HashMap<String, usize>,
}

/// `connection-pool { max-connections 100; max-idle 20; idle-timeout 60; max-lifetime 3600 }`.
fn parse_pool(node: &KdlNode, pool: &mut ConnectionPool, diags: &mut Diagnostics<'_>) {
    let mut seen = Seen::default();
    for c in block(node, diags) {
        let Some(&(_, setting)) = POOL_KEYS.iter().find(|(k, _)| *k == name(c)) else {
            let known = POOL_KEYS.iter().map(|(k, _)| *k).collect::<Vec<_>>();
            unknown(c, "connection-pool", &known, &[], diags);
            continue;
        };
        if !seen.check_as(c, setting, diags) {
            continue;
        }
        match setting {
            "max-connections" => {
                if let Some(v) = leaf_u32(c, 1, 1_000_000, diags) {
                    pool.max_connections = Some(v);
                }
            }
            "max-idle" => {
                if let Some(v) = leaf_u32(c, 0, 1_000_000, diags) {
                    pool.max_idle = v;
                }
            }
            "idle-timeout" => {
                if let Some(v) = leaf_int(c, 1, MAX_SECS, diags) {
                    pool.idle_timeout_secs = v;
                }
            }
            _ => {
                if let Some(v) = leaf_int(c, 1, MAX_SECS, diags) {
                    pool.max_lifetime_secs = Some(v);
                }
            }
        }
    }
}

/// `timeouts { connect 5; read 30; write 30; request 60 }` (or the `-secs` spellings).
fn parse_timeouts(node: &KdlNode, timeouts: &mut UpstreamTimeouts, diags: &mut Diagnostics<'_>) {
    let mut seen = Seen::default();
    for c in block(node, diags) {
        let Some(&(_, setting)) = TIMEOUT_KEYS.iter().find(|(k, _)| *k == name(c)) else {
            let known = TIMEOUT_KEYS.iter().map(|(k, _)| *k).collect::<Vec<_>>();
            unknown(c, "timeouts", &known, &[], diags);
            continue;
        };
        if !seen.check_as(c, setting, diags) {
            continue;
        }
        let Some(v) = leaf_int(c, 1, MAX_SECS, diags) else {
            continue;
        };
        match setting {
            "connect" => timeouts.connect_secs = v,
            "read" => timeouts.read_secs = v,
            "write" => timeouts.write_secs = Some(v),
            _ => timeouts.request_secs = Some(v),
        }
    }
}

/// `target "host:port" weight=2`, `target address="host:port" weight=2`, or
/// `target { address "host:port"; weight 2; }` (a `weight=` property allowed on the node).
fn parse_target(
    node: &KdlNode,
    targets: &mut Targets,
    diags: &mut Diagnostics<'_>,
) -> Option<UpstreamTarget> {
    let mut weight = Some(1u32);
    let mut address: Option<(String, usize)> = None;
    let mut ok = true;
    for entry in props(node) {
        match entry.name().map_or("", |k| k.value()) {
            "weight" => weight = target_weight(node, entry, diags),
            "address" => match string_value(node, entry, diags) {
                Some(a) => address = Some((a, entry.span().offset())),
                None => ok = false,
            },
            _ => {
                ok = false;
                unknown_property(node, entry, &["weight", "address"], diags);
            }
        }
    }
    let mut args = args(node);
    if let Some(first) = args.next() {
        if address.is_some() {
            diags.error(
                first.span().offset(),
                "target",
                "the address is given twice (argument and `address=`): keep one",
            );
            return None;
        }
        match string_value(node, first, diags) {
            Some(a) => address = Some((a, first.span().offset())),
            None => ok = false,
        }
    }
    if let Some(extra) = args.next() {
        diags.error(
            extra.span().offset(),
            "target",
            "`target` takes one address; write one `target` node per backend",
        );
        return None;
    }
    let mut seen = Seen::default();
    for c in node.children().map_or(&[][..], |c| c.nodes()) {
        if TARGET_BLOCK_KEYS.contains(&name(c)) && !seen.check(c, diags) {
            continue;
        }
        match name(c) {
            "address" if address.is_some() => diags.error(
                name_at(c),
                "address",
                "the address is given twice: keep one of the argument, `address=` and `address`",
            ),
            "address" => match leaf_string(c, diags) {
                Some(a) => address = Some(a),
                None => ok = false,
            },
            "weight" => match single_arg(c, diags) {
                Some(entry) => weight = target_weight(c, entry, diags),
                None => ok = false,
            },
            _ => {
                ok = false;
                unknown(c, "target", TARGET_BLOCK_KEYS, &[], diags);
            }
        }
    }
    let Some((text, at)) = address else {
        if ok {
            diags.error(
                name_at(node),
                "target",
                "missing address: expected e.g. target \"127.0.0.1:9001\"",
            );
        }
        return None;
    };
    let address = check_address(node, &text, at, targets, diags)?;
    Some(UpstreamTarget {
        address,
        weight: weight?,
    })
}

fn target_weight(node: &KdlNode, entry: &KdlEntry, diags: &mut Diagnostics<'_>) -> Option<u32> {
    int_value(node, entry, 1, u64::from(u16::MAX), diags).and_then(|w| u32::try_from(w).ok())
}

/// Check a target address's form (no DNS lookup: `-t` works offline) and that it is not a
/// duplicate. Returns the address as the workers get it.
fn check_address(
    node: &KdlNode,
    text: &str,
    at: usize,
    targets: &mut Targets,
    diags: &mut Diagnostics<'_>,
) -> Option<String> {
    let key = match parse_target_address(text) {
        Ok(TargetAddress::Ip(addr)) => addr.to_string(),
        Ok(TargetAddress::Name(host, port)) => {
            format!("{}:{port}", host.trim_end_matches('.').to_ascii_lowercase())
        }
        Err(why) => {
            diags.error(
                at,
                name(node),
                format!(
                    "invalid target address {text:?}: {why}; expected IP:port, [IPv6]:port or \
                     hostname:port, e.g. \"127.0.0.1:8080\", \"[::1]:8080\", \
                     \"backend.internal:80\""
                ),
            );
            return None;
        }
    };
    if let Some(&prev) = targets.seen.get(&key) {
        let line = diags.line_of(prev);
        diags.error(
            at,
            name(node),
            format!("duplicate target {text:?} (first at line {line}); use `weight` instead"),
        );
        return None;
    }
    targets.seen.insert(key, at);
    Some(text.to_owned())
}
