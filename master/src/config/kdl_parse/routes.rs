//! The `routes` section: `route "name" { ... }`, its priority, service type and action. The
//! `matches` block is in `route_matches`.

use zentinel_protocol::config::{
    BuiltinHandler, RouteExtras, ServiceType, PRIORITY_CRITICAL, PRIORITY_HIGH, PRIORITY_LOW,
    PRIORITY_NORMAL,
};

use super::circuit_breaker::parse_circuit_breaker;
use super::error_pages::parse_error_pages;
use super::fallback::parse_fallback;
use super::policies::parse_policies;
use super::retry_policy::parse_retry_policy;
use super::route_matches::parse_matches;
use super::shadow::parse_shadow;
use super::static_files::parse_static_files;
use super::websocket::{parse_inspection, parse_websocket};
use super::*;

const ROUTE_KEYS: &[&str] = &[
    "priority",
    "matches",
    "upstream",
    "static-response",
    "builtin-handler",
    "static-files",
    "service-type",
    "retry-policy",
    "circuit-breaker",
    "policies",
    "websocket",
    "websocket-inspection",
    "fallback",
    "shadow",
    "error-pages",
    "filters",
];
const ROUTE_UNSUPPORTED: &[&str] = &[
    "agents",
    "waf",
    "cache",
    "rate-limit",
    "api-schema",
    "inference",
    "waf-enabled",
];
const ACTIONS: &str = "`upstream \"name\"`, `static-response status=200`, \
                       `builtin-handler \"health\"` or `static-files { root \"/dir\" }`";

/// Upstream's priority names and numbers.
const PRIORITY_NAMES: &[(&str, i32)] = &[
    ("critical", PRIORITY_CRITICAL),
    ("high", PRIORITY_HIGH),
    ("normal", PRIORITY_NORMAL),
    ("low", PRIORITY_LOW),
];

/// Upstream's `builtin-handler` spellings, and what this build does with them.
const BUILTIN_NAMES: &[(&str, Option<BuiltinHandler>)] = &[
    ("status", Some(BuiltinHandler::Status)),
    ("health", Some(BuiltinHandler::Health)),
    ("metrics", Some(BuiltinHandler::Metrics)),
    ("not-found", Some(BuiltinHandler::NotFound)),
    ("not_found", Some(BuiltinHandler::NotFound)),
    ("upstreams", Some(BuiltinHandler::Upstreams)),
    ("config", Some(BuiltinHandler::Config)),
    // This build has no response cache, so there is nothing to purge or count.
    ("cache-purge", None),
    ("cache_purge", None),
    ("cache-stats", None),
    ("cache_stats", None),
];

const SERVICE_TYPES: &[(&str, ServiceType)] = &[
    ("web", ServiceType::Web),
    ("api", ServiceType::Api),
    ("static", ServiceType::Static),
    ("builtin", ServiceType::Builtin),
    ("inference", ServiceType::Inference),
];

pub(super) fn parse_route(node: &KdlNode, diags: &mut Diagnostics<'_>) -> ParsedRoute {
    let named = block_name(node, diags);
    let route_name = named.as_ref().map(|(n, _)| n.clone()).unwrap_or_default();
    let mut priority = PRIORITY_NORMAL;
    let mut matches = Vec::new();
    let mut service_type: Option<(ServiceType, usize)> = None;
    let mut action: Option<RouteAction> = None;
    let mut action_node: Option<&KdlNode> = None;
    let mut action_missing_value = false;
    let mut upstream_at = None;
    let mut retry_policy = None;
    let mut circuit_breaker = None;
    let mut policies = Default::default();
    let mut seen = Seen::default();
    let mut extras: Option<Box<RouteExtras>> = None;
    let mut fallback_at = Vec::new();
    let mut shadow_at = None;
    let mut filters_at = Vec::new();
    let children = node.children().map_or(&[][..], |c| c.nodes());
    for child in children {
        let kind = name(child);
        if matches!(
            kind,
            "priority"
                | "matches"
                | "service-type"
                | "retry-policy"
                | "circuit-breaker"
                | "policies"
                | "websocket"
                | "websocket-inspection"
                | "fallback"
                | "shadow"
                | "error-pages"
                | "filters"
        ) && !seen.check(child, diags)
        {
            continue;
        }
        match kind {
            "priority" => {
                if let Some(p) = parse_priority(child, diags) {
                    priority = p;
                }
            }
            "matches" => parse_matches(child, &mut matches, diags),
            "service-type" => service_type = parse_service_type(child, diags),
            "retry-policy" => retry_policy = parse_retry_policy(child, diags),
            "circuit-breaker" => {
                circuit_breaker = parse_circuit_breaker(child, diags).map(|cb| (cb, name_at(child)))
            }
            "policies" => policies = parse_policies(child, diags),
            "websocket" => {
                if let Some(on) = parse_websocket(child, diags) {
                    extras.get_or_insert_with(Box::default).websocket = on;
                }
            }
            "websocket-inspection" => parse_inspection(child, diags),
            "error-pages" => {
                if let Some(pages) = parse_error_pages(child, diags) {
                    extras.get_or_insert_with(Box::default).error_pages = Some(pages);
                }
            }
            "shadow" => {
                if let Some((sh, at)) = parse_shadow(child, diags) {
                    extras.get_or_insert_with(Box::default).shadow = Some(sh);
                    shadow_at = Some(at);
                }
            }
            "fallback" => {
                if let Some((fb, at)) = parse_fallback(child, diags) {
                    extras.get_or_insert_with(Box::default).fallback = Some(fb);
                    fallback_at = at;
                }
            }
            "filters" => {
                let (names, at) = parse_filter_refs(child, diags);
                if !names.is_empty() {
                    extras.get_or_insert_with(Box::default).filters = names;
                    filters_at = at;
                }
            }
            "upstream" | "static-response" | "builtin-handler" | "static-files" => {
                if let Some(first) = action_node {
                    let line = diags.line_of(name_at(first));
                    diags.error(
                        name_at(child),
                        kind,
                        format!(
                            "route `{route_name}` already has an action (`{}` at line {line}): \
                             a route takes exactly one of {ACTIONS}",
                            name(first)
                        ),
                    );
                    continue;
                }
                action_node = Some(child);
                let parsed = match kind {
                    "upstream" => leaf_string(child, diags).map(|(up, at)| {
                        upstream_at = Some(at);
                        RouteAction::Upstream(up)
                    }),
                    "static-response" => {
                        parse_static_response(child, diags).map(RouteAction::Static)
                    }
                    "static-files" => {
                        parse_static_files(child, diags).map(|f| RouteAction::Files(Box::new(f)))
                    }
                    _ => parse_builtin(child, diags).map(RouteAction::Builtin),
                };
                match parsed {
                    Some(a) => action = Some(a),
                    None => action_missing_value = true,
                }
            }
            _ => unknown(child, "route", ROUTE_KEYS, ROUTE_UNSUPPORTED, diags),
        }
    }
    if action_node.is_none() && !action_missing_value {
        diags.error(
            name_at(node),
            "route",
            format!("route `{route_name}` has no action: add {ACTIONS}"),
        );
    }
    let service_type = resolve_service_type(&route_name, service_type, action.as_ref(), diags);
    ParsedRoute {
        config: RouteConfig {
            name: route_name,
            priority,
            matches,
            // Only reached through an error already reported, so the config is never used.
            action: action.unwrap_or_else(|| RouteAction::Upstream(String::new())),
            service_type,
            // Set by `namespace` for routes defined in a namespace or service.
            scope: None,
            retry_policy,
            policies,
            extras,
        },
        name_at: named.as_ref().map_or(name_at(node), |(_, at)| *at),
        has_name: named.is_some(),
        upstream_at,
        circuit_breaker,
        fallback_at,
        shadow_at,
        filters_at,
    }
}

/// `priority 100` or `priority "high"` (names case-insensitive, as upstream). Upstream turns
/// anything else into "normal" without a word; here it is an error.
fn parse_priority(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Option<i32> {
    let entry = single_arg(node, diags)?;
    let at = entry.span().offset();
    let accepted = "an integer (higher first) or \"critical\" (1000), \"high\" (100), \
                    \"normal\" (50), \"low\" (10)";
    match entry.value() {
        KdlValue::Integer(i) => match i32::try_from(*i) {
            Ok(p) => Some(p),
            Err(_) => {
                diags.error(
                    at,
                    "priority",
                    format!("priority {i} is out of range ({}..={})", i32::MIN, i32::MAX),
                );
                None
            }
        },
        KdlValue::String(s) => {
            let lower = s.to_ascii_lowercase();
            if let Some(&(_, p)) = PRIORITY_NAMES.iter().find(|(n, _)| *n == lower) {
                return Some(p);
            }
            let hint = if s.trim().parse::<i64>().is_ok() {
                format!(
                    " (write the number without quotes: `priority {}`)",
                    s.trim()
                )
            } else {
                did_you_mean(&lower, PRIORITY_NAMES.iter().map(|(n, _)| *n))
            };
            diags.error(
                at,
                "priority",
                format!("unknown priority {s:?}: expected {accepted}{hint}"),
            );
            None
        }
        other => {
            diags.error(
                at,
                "priority",
                format!("expected {accepted}, found {}", describe(other)),
            );
            None
        }
    }
}

fn parse_builtin(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Option<BuiltinHandler> {
    let (text, at) = leaf_string(node, diags)?;
    match BUILTIN_NAMES.iter().find(|(n, _)| *n == text) {
        Some((_, Some(handler))) => Some(*handler),
        Some((_, None)) => {
            diags.error(
                at,
                "builtin-handler",
                format!(
                    "builtin-handler {text:?} is not supported yet (this build has no response \
                     cache); supported: {}",
                    supported_builtins()
                ),
            );
            None
        }
        None => {
            diags.error(
                at,
                "builtin-handler",
                format!(
                    "unknown builtin-handler {text:?}{}: expected one of {}",
                    did_you_mean(&text, BUILTIN_NAMES.iter().map(|(n, _)| *n)),
                    supported_builtins()
                ),
            );
            None
        }
    }
}

fn supported_builtins() -> String {
    BUILTIN_NAMES
        .iter()
        .filter(|(_, h)| h.is_some())
        .map(|(n, _)| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

fn parse_service_type(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Option<(ServiceType, usize)> {
    let (text, at) = leaf_string(node, diags)?;
    match SERVICE_TYPES.iter().find(|(n, _)| *n == text) {
        Some(&(_, t)) => Some((t, at)),
        None => {
            let names: Vec<String> = SERVICE_TYPES
                .iter()
                .map(|(n, _)| format!("\"{n}\""))
                .collect();
            diags.error(
                at,
                "service-type",
                format!(
                    "unknown service-type {text:?}{}: expected one of {}",
                    did_you_mean(&text, SERVICE_TYPES.iter().map(|(n, _)| *n)),
                    names.join(", ")
                ),
            );
            None
        }
    }
}

/// Upstream derives the type (a `builtin-handler` makes the route "builtin", otherwise
/// "web") and never reads `service-type`. Here an explicit type is honoured, except that a
/// builtin route stays builtin and a builtin type needs a handler.
fn resolve_service_type(
    route: &str,
    written: Option<(ServiceType, usize)>,
    action: Option<&RouteAction>,
    diags: &mut Diagnostics<'_>,
) -> ServiceType {
    let is_builtin = matches!(action, Some(RouteAction::Builtin(_)));
    match written {
        Some((t, at)) if is_builtin && t != ServiceType::Builtin => {
            diags.warn(
                at,
                "service-type",
                format!(
                    "route `{route}` has a `builtin-handler`, so its service-type is \"builtin\" \
                     (\"{}\" ignored, as upstream)",
                    t.name()
                ),
            );
            ServiceType::Builtin
        }
        Some((ServiceType::Builtin, at)) if !is_builtin && action.is_some() => {
            diags.error(
                at,
                "service-type",
                format!(
                    "route `{route}` is service-type \"builtin\" but has no `builtin-handler`: \
                     add one, e.g. `builtin-handler \"health\"`, or use another service-type"
                ),
            );
            ServiceType::Web
        }
        Some((t, _)) => t,
        None if is_builtin => ServiceType::Builtin,
        None if matches!(action, Some(RouteAction::Files(_))) => ServiceType::Static,
        None => ServiceType::Web,
    }
}

fn parse_static_response(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Option<StaticResponse> {
    const ALLOWED: &[&str] = &["status", "body", "content-type"];
    no_children(node, diags);
    let mut ok = true;
    for entry in args(node) {
        ok = false;
        diags.error(
            entry.span().offset(),
            "static-response",
            "`static-response` takes properties only, e.g. status=200 body=\"ok\" \
             content-type=\"text/plain\"",
        );
    }
    let mut status = None;
    let mut body = String::new();
    let mut content_type = "text/plain".to_owned();
    for entry in props(node) {
        match entry.name().map_or("", |k| k.value()) {
            "status" => match int_value(node, entry, 100, 599, diags) {
                Some(s) => status = u16::try_from(s).ok(),
                None => ok = false,
            },
            "body" => match string_value(node, entry, diags) {
                Some(s) => body = s,
                None => ok = false,
            },
            "content-type" => match string_value(node, entry, diags) {
                Some(s) if s.is_empty() || s.contains(['\r', '\n']) => {
                    ok = false;
                    diags.error(
                        entry.span().offset(),
                        "static-response",
                        "`content-type` must be a non-empty single-line value",
                    );
                }
                Some(s) => content_type = s,
                None => ok = false,
            },
            _ => {
                ok = false;
                unknown_property(node, entry, ALLOWED, diags);
            }
        }
    }
    if status.is_none() && !props(node).any(|e| e.name().is_some_and(|k| k.value() == "status")) {
        diags.error(
            name_at(node),
            "static-response",
            "missing `status` property (100..=599), e.g. status=200",
        );
    }
    match status {
        Some(status) if ok => Some(StaticResponse {
            status,
            body,
            content_type,
        }),
        _ => None,
    }
}

/// `filters "a" "b"`: the names of filters defined in the top-level `filters` block, in the
/// order they apply, with where each was written (checked by `validate`).
fn parse_filter_refs(node: &KdlNode, diags: &mut Diagnostics<'_>) -> (Vec<String>, Vec<usize>) {
    no_children(node, diags);
    for entry in props(node) {
        unknown_property(node, entry, &[], diags);
    }
    let mut names = Vec::new();
    let mut at = Vec::new();
    for entry in args(node) {
        let Some(filter) = string_value(node, entry, diags) else {
            continue;
        };
        if names.contains(&filter) {
            diags.error(
                entry.span().offset(),
                "filters",
                format!("filter `{filter}` is listed twice"),
            );
            continue;
        }
        names.push(filter);
        at.push(entry.span().offset());
    }
    if names.is_empty() && args(node).next().is_none() {
        diags.error(
            name_at(node),
            "filters",
            "missing filter names: write `filters \"name\" ...` with names defined in the \
             top-level `filters` block",
        );
    }
    (names, at)
}
