//! KDL text -> a located, not yet cross-checked configuration.
//!
//! This pass checks everything that can be judged node by node (names, argument types, ranges,
//! unknown nodes and properties) and remembers where each named thing was defined, so that
//! `validate` can report cross-reference problems at the right place.

use std::collections::HashMap;
use std::net::SocketAddr;

use kdl::{KdlDocument, KdlEntry, KdlNode, KdlValue};
use zentinel_protocol::config::{
    CircuitBreakerConfig, ConnectionPool, HealthCheck, HealthCheckKind, Limits, ListenerConfig,
    ListenerProtocol, LoadBalancing, PassiveHealth, RouteAction, RouteConfig, RouteMatch,
    StaticResponse, SystemConfig, UpstreamConfig, UpstreamTarget, UpstreamTimeouts,
    DEFAULT_BACKLOG, DEFAULT_HEALTHY_THRESHOLD, DEFAULT_HEALTH_INTERVAL_SECS,
    DEFAULT_HEALTH_TIMEOUT_SECS, DEFAULT_MAX_CONCURRENT_STREAMS, DEFAULT_UNHEALTHY_THRESHOLD,
};

use super::observability::{parse_observability, ParsedObservability};
use super::ConfigDiagnostic;

mod balancing;
mod circuit_breaker;
mod diagnostics;
mod error_pages;
mod fallback;
mod filter_rate_limit;
mod filters;
mod health_check;
mod limits;
mod listeners;
mod namespace;
mod node;
mod policies;
mod retry_policy;
mod route_matches;
mod routes;
mod shadow;
mod static_files;
mod syntax;
mod system;
mod tls;
mod tls_options;
mod upstream_http;
mod upstream_tls;
mod upstreams;
mod websocket;

pub(super) use diagnostics::{Diagnostics, MappedFile, Segment, SourceMap};
use limits::parse_limits;
use listeners::parse_listener;
pub(super) use node::*;
use routes::parse_route;
use syntax::parse_document;
pub(super) use syntax::parse_document as parse_document_for_includes;
#[cfg(test)]
pub(super) use syntax::rewrite_v1_keywords;
use upstreams::parse_upstream;

/// Longest accepted duration in seconds. Far beyond any sensible timeout, and small enough that
/// converting to milliseconds or nanoseconds anywhere downstream cannot overflow.
const MAX_SECS: u64 = 365 * 24 * 3600;

const TOP_LEVEL: &[&str] = &[
    "include",
    "namespace",
    "schema-version",
    "system",
    "listeners",
    "routes",
    "upstreams",
    "limits",
    "observability",
    "filters",
];
/// Zentinel nodes this build does not implement yet: reported as such, not as typos.
const TOP_LEVEL_UNSUPPORTED: &[&str] = &["policies", "agents", "waf", "tls", "cache", "rate-limit"];

/// A listener as written, with the places its references were written.
pub(super) struct ParsedListener {
    pub config: ListenerConfig,
    /// Offset of the name argument (or of the node when the name is missing).
    pub name_at: usize,
    pub has_name: bool,
    pub address: Option<(SocketAddr, usize)>,
    pub default_route_at: Option<usize>,
    pub upstream_at: Option<usize>,
    /// Where `namespace "ns"` was written (a top-level listener serving a namespace's routes).
    pub route_scope_at: Option<usize>,
}

pub(super) struct ParsedRoute {
    pub config: RouteConfig,
    pub name_at: usize,
    pub has_name: bool,
    pub upstream_at: Option<usize>,
    /// A `circuit-breaker` written in the route (upstream Zentinel ignores it there): applied
    /// to the route's upstream by `validate`, with the offset of its name. The inner `None`
    /// is `enabled #false`.
    pub circuit_breaker: Option<(Option<CircuitBreakerConfig>, usize)>,
    /// Where each `fallback` upstream name was written, in `extras.fallback` order.
    pub fallback_at: Vec<usize>,
    /// Where the `shadow` upstream name was written.
    pub shadow_at: Option<usize>,
    /// Where each `filters` name was written, in `extras.filters` order.
    pub filters_at: Vec<usize>,
}

pub(super) struct ParsedUpstream {
    pub config: UpstreamConfig,
    pub name_at: usize,
    pub has_name: bool,
    /// A `circuit-breaker` block was written (even `enabled #false`): a route's does not
    /// override it.
    pub has_circuit_breaker: bool,
}

pub(super) struct ParsedConfig {
    pub system: SystemConfig,
    pub limits: Limits,
    pub listeners: Vec<ParsedListener>,
    /// Offset of the first `listeners` block, to place "no listener" errors.
    pub listeners_at: Option<usize>,
    pub routes: Vec<ParsedRoute>,
    pub upstreams: Vec<ParsedUpstream>,
    pub observability: ParsedObservability,
    /// Namespaces and services (`ns:svc`) defined, with where.
    pub namespaces: Vec<(String, usize)>,
    pub exports: Vec<namespace::Export>,
    /// `filters { filter "name" { ... } }`, in file order.
    pub filters: Vec<filters::ParsedFilter>,
    /// Filters of a type not supported yet, by name: already reported, so a route naming
    /// one is not reported again as naming an undefined filter.
    pub filters_not_supported: Vec<String>,
}

/// Parses KDL text and interprets it. Returns `None` when the text is not valid KDL (the syntax
/// errors are in `diags`); otherwise a configuration whose node-level errors are in `diags`.
pub(super) fn parse(source: &str, diags: &mut Diagnostics<'_>) -> Option<ParsedConfig> {
    let doc = parse_document(source, diags)?;
    let mut parsed = ParsedConfig {
        system: SystemConfig::default(),
        limits: Limits::default(),
        listeners: Vec::new(),
        listeners_at: None,
        routes: Vec::new(),
        upstreams: Vec::new(),
        observability: ParsedObservability::default(),
        namespaces: Vec::new(),
        exports: Vec::new(),
        filters: Vec::new(),
        filters_not_supported: Vec::new(),
    };
    let mut seen = Seen::default();
    for node in doc.nodes() {
        match name(node) {
            // Spliced in by `config::include` before this parse; one left here could not be
            // expanded, and that was reported there.
            "include" => {}
            "system" | "server" => {
                seen.check_as(node, "system", diags);
                system::parse_system(node, &mut parsed.system, diags);
            }
            "schema-version" | "version" => {
                seen.check_as(node, "schema-version", diags);
                system::parse_schema_version(node, diags);
            }
            "limits" => {
                seen.check(node, diags);
                parse_limits(node, &mut parsed.limits, diags);
            }
            "observability" => {
                seen.check(node, diags);
                parse_observability(node, &mut parsed.observability, diags);
            }
            // Collections may be split across several blocks; they simply add up.
            "listeners" => {
                parsed.listeners_at.get_or_insert(name_at(node));
                for child in block(node, diags) {
                    match name(child) {
                        "listener" => parsed.listeners.push(parse_listener(child, diags)),
                        _ => unknown(child, "listeners", &["listener"], &[], diags),
                    }
                }
            }
            "routes" => {
                for child in block(node, diags) {
                    match name(child) {
                        "route" => parsed.routes.push(parse_route(child, diags)),
                        _ => unknown(child, "routes", &["route"], &[], diags),
                    }
                }
            }
            "upstreams" => {
                for child in block(node, diags) {
                    match name(child) {
                        "upstream" => parsed.upstreams.push(parse_upstream(child, diags)),
                        _ => unknown(child, "upstreams", &["upstream"], &[], diags),
                    }
                }
            }
            "filters" => filters::parse_filters(
                node,
                &mut parsed.filters,
                &mut parsed.filters_not_supported,
                diags,
            ),
            "namespace" => namespace::parse_namespace(node, &mut parsed, diags),
            _ => unknown(node, "", TOP_LEVEL, TOP_LEVEL_UNSUPPORTED, diags),
        }
    }
    namespace::resolve_references(&mut parsed, diags);
    Some(parsed)
}
