//! Cross-reference checks on a parsed configuration, and the final ordering of routes.

use std::collections::HashMap;
use std::net::SocketAddr;

use zentinel_protocol::config::{
    ListenerProtocol, MetricsConfig, ProxyConfig, RouteAction, UpstreamHttpVersion,
};

use super::kdl_parse::{did_you_mean, Diagnostics, ParsedConfig};

/// Checks names and references across sections and builds the final configuration. Problems go
/// to `diags`; the returned value is only meaningful when no diagnostic was recorded. The
/// metrics endpoint is returned apart: it is the master's, and never travels to workers.
pub(super) fn validate(
    mut parsed: ParsedConfig,
    diags: &mut Diagnostics<'_>,
) -> (ProxyConfig, Option<MetricsConfig>, super::LoggingConfig) {
    check_unique_names(
        "listener",
        parsed
            .listeners
            .iter()
            .filter(|l| l.has_name)
            .map(|l| (l.config.name.as_str(), l.name_at)),
        diags,
    );
    check_unique_names(
        "route",
        parsed
            .routes
            .iter()
            .filter(|r| r.has_name)
            .map(|r| (r.config.name.as_str(), r.name_at)),
        diags,
    );
    check_unique_names(
        "upstream",
        parsed
            .upstreams
            .iter()
            .filter(|u| u.has_name)
            .map(|u| (u.config.name.as_str(), u.name_at)),
        diags,
    );

    check_unique_names(
        "filter",
        parsed
            .filters
            .iter()
            .filter(|f| f.has_name)
            .map(|f| (f.config.name.as_str(), f.name_at)),
        diags,
    );
    check_filter_references(&parsed, diags);

    if parsed.listeners.is_empty() {
        diags.error(
            parsed.listeners_at.unwrap_or(0),
            "listeners",
            "no listener configured: add `listeners { listener \"http\" { address \"0.0.0.0:8080\" } }`",
        );
    }

    // Two listeners on the same address, or a wildcard and a specific address on the same port
    // and family, cannot both be bound; say so now rather than failing at bind time.
    let mut bound: Vec<(SocketAddr, usize, &str)> = Vec::new();
    for listener in &parsed.listeners {
        let Some((addr, at)) = listener.address else {
            continue;
        };
        let clash = bound
            .iter()
            .find(|(other, _, _)| cannot_both_bind(addr, *other));
        if let Some(&(other, other_at, other_name)) = clash {
            let line = diags.line_of(other_at);
            let message = if other == addr {
                format!("address {addr} is already used by listener `{other_name}` (line {line})")
            } else {
                format!(
                    "address {addr} overlaps listener `{other_name}` on {other} (line {line}): \
                     both cannot be bound"
                )
            };
            diags.error(at, "address", message);
        } else {
            bound.push((addr, at, listener.config.name.as_str()));
        }
    }
    if let Some((addr, at)) = parsed.observability.metrics_address {
        let clash = bound
            .iter()
            .find(|(other, _, _)| cannot_both_bind(addr, *other));
        if let Some(&(other, other_at, other_name)) = clash {
            let line = diags.line_of(other_at);
            diags.error(
                at,
                "address",
                format!(
                    "metrics address {addr} overlaps listener `{other_name}` on {other} \
                     (line {line}): both cannot be bound"
                ),
            );
        }
    }

    let route_names: Vec<&str> = parsed
        .routes
        .iter()
        .map(|r| r.config.name.as_str())
        .collect();
    let upstream_names: Vec<&str> = parsed
        .upstreams
        .iter()
        .map(|u| u.config.name.as_str())
        .collect();
    for listener in &parsed.listeners {
        if let (Some(route), Some(at)) = (&listener.config.default_route, listener.default_route_at)
        {
            if !route_names.contains(&route.as_str()) {
                diags.error(
                    at,
                    "default-route",
                    format!(
                        "listener `{}` names route `{route}`, which is not defined in `routes`{}",
                        listener.config.name,
                        did_you_mean(route, route_names.iter().copied())
                    ),
                );
            }
        }
        if let (Some(upstream), Some(at)) = (&listener.config.upstream, listener.upstream_at) {
            check_upstream_exists(
                "listener",
                &listener.config.name,
                upstream,
                at,
                &upstream_names,
                diags,
            );
            // A TCP listener relays bytes: no HTTP/2 connection can carry them.
            let speaks_h2 = parsed.upstreams.iter().any(|u| {
                u.config.name == *upstream && u.config.http.version != UpstreamHttpVersion::Http1
            });
            if speaks_h2 {
                diags.error(
                    at,
                    "upstream",
                    format!(
                        "listener `{}` relays TCP to upstream `{upstream}`, whose                          `http-version` is not \"1.1\": HTTP/2 upstreams serve `http`                          listeners' routes only",
                        listener.config.name
                    ),
                );
            }
        }
    }
    for route in &parsed.routes {
        let fallback = route
            .config
            .extras
            .as_ref()
            .and_then(|e| e.fallback.as_ref());
        for (up, &at) in fallback
            .map_or(&[][..], |f| &f.upstreams[..])
            .iter()
            .zip(&route.fallback_at)
        {
            check_upstream_exists(
                "route",
                &route.config.name,
                &up.name,
                at,
                &upstream_names,
                diags,
            );
        }
        let shadow = route.config.extras.as_ref().and_then(|e| e.shadow.as_ref());
        if let (Some(shadow), Some(at)) = (shadow, route.shadow_at) {
            check_upstream_exists(
                "route",
                &route.config.name,
                &shadow.upstream,
                at,
                &upstream_names,
                diags,
            );
        }
        if let (RouteAction::Upstream(upstream), Some(at)) =
            (&route.config.action, route.upstream_at)
        {
            check_upstream_exists(
                "route",
                &route.config.name,
                upstream,
                at,
                &upstream_names,
                diags,
            );
        }
    }

    apply_route_circuit_breakers(&mut parsed, diags);

    let mut routes: Vec<_> = parsed.routes.into_iter().map(|r| r.config).collect();
    // Highest first; stable, so equal priorities keep file order.
    routes.sort_by_key(|r| std::cmp::Reverse(r.priority));
    let access_log = parsed.observability.access_log;
    let listeners = parsed
        .listeners
        .into_iter()
        .map(|l| {
            let mut config = l.config;
            if config.protocol == ListenerProtocol::Http {
                config.access_log = access_log.clone();
            }
            config
        })
        .collect();
    let config = ProxyConfig {
        system: parsed.system,
        listeners,
        routes,
        upstreams: parsed.upstreams.into_iter().map(|u| u.config).collect(),
        limits: parsed.limits,
        filters: parsed.filters.into_iter().map(|f| f.config).collect(),
    };
    (
        config,
        parsed.observability.metrics,
        parsed.observability.logging,
    )
}

/// Upstream Zentinel ignores a `circuit-breaker` written in a route (with a warning), yet its
/// examples write it there. Here it becomes the breaker of the route's upstream, unless the
/// upstream has its own block or another route already gave it one (first one wins, warned).
fn apply_route_circuit_breakers(parsed: &mut ParsedConfig, diags: &mut Diagnostics<'_>) {
    // Upstream index -> (route name, offset) whose breaker it took.
    let mut given: HashMap<usize, (String, usize)> = HashMap::new();
    for route in &parsed.routes {
        let Some((cb, at)) = &route.circuit_breaker else {
            continue;
        };
        let RouteAction::Upstream(name) = &route.config.action else {
            diags.warn(
                *at,
                "circuit-breaker",
                format!(
                    "route `{}` has no upstream, so its circuit-breaker has nothing to guard                      (ignored)",
                    route.config.name
                ),
            );
            continue;
        };
        // An unknown upstream was reported by `check_upstream_exists`.
        let Some(idx) = parsed.upstreams.iter().position(|u| &u.config.name == name) else {
            continue;
        };
        let upstream = &mut parsed.upstreams[idx];
        if upstream.has_circuit_breaker {
            let line = diags.line_of(upstream.name_at);
            diags.warn(
                *at,
                "circuit-breaker",
                format!(
                    "upstream `{name}` (line {line}) has its own circuit-breaker: the one of                      route `{}` is ignored",
                    route.config.name
                ),
            );
            continue;
        }
        if let Some((first, first_at)) = given.get(&idx) {
            if upstream.config.circuit_breaker != *cb {
                let line = diags.line_of(*first_at);
                diags.warn(
                    *at,
                    "circuit-breaker",
                    format!(
                        "upstream `{name}` already takes the circuit-breaker of route `{first}`                          (line {line}): this different one is ignored (write one                          circuit-breaker in the upstream instead)"
                    ),
                );
            }
            continue;
        }
        upstream.config.circuit_breaker = cb.clone();
        given.insert(idx, (route.config.name.clone(), *at));
    }
}

/// Every name in a route's `filters` is defined in the top-level `filters` block.
fn check_filter_references(parsed: &ParsedConfig, diags: &mut Diagnostics<'_>) {
    let defined: Vec<&str> = parsed
        .filters
        .iter()
        .map(|f| f.config.name.as_str())
        .collect();
    for route in &parsed.routes {
        let Some(extras) = &route.config.extras else {
            continue;
        };
        for (filter, &at) in extras.filters.iter().zip(&route.filters_at) {
            if !defined.contains(&filter.as_str()) && !parsed.filters_not_supported.contains(filter)
            {
                diags.error(
                    at,
                    "filters",
                    format!(
                        "route `{}` names filter `{filter}`, which is not defined in the \
                         top-level `filters` block{}",
                        route.config.name,
                        did_you_mean(filter, defined.iter().copied())
                    ),
                );
            }
        }
    }
}

fn check_unique_names<'n>(
    kind: &str,
    names: impl Iterator<Item = (&'n str, usize)>,
    diags: &mut Diagnostics<'_>,
) {
    let mut first: HashMap<&str, usize> = HashMap::new();
    for (name, at) in names {
        if let Some(&prev) = first.get(name) {
            let line = diags.line_of(prev);
            diags.error(
                at,
                kind,
                format!("duplicate {kind} name `{name}` (first defined at line {line})"),
            );
        } else {
            first.insert(name, at);
        }
    }
}

fn check_upstream_exists(
    kind: &str,
    owner: &str,
    upstream: &str,
    at: usize,
    upstream_names: &[&str],
    diags: &mut Diagnostics<'_>,
) {
    if !upstream_names.contains(&upstream) {
        diags.error(
            at,
            "upstream",
            format!(
                "{kind} `{owner}` names upstream `{upstream}`, which is not defined in \
                 `upstreams`{}",
                did_you_mean(upstream, upstream_names.iter().copied())
            ),
        );
    }
}

/// Whether two listening addresses collide: same port and family, and the same IP or either
/// one the wildcard (port 0 asks the kernel for a free port, so it never collides).
fn cannot_both_bind(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}
