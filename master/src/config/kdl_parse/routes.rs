//! The `routes` section: `route "name" { ... }`, its matches and actions.

use super::*;

const ROUTE_KEYS: &[&str] = &["priority", "matches", "upstream", "static-response"];
const ROUTE_UNSUPPORTED: &[&str] = &[
    "policies",
    "filters",
    "agents",
    "waf",
    "cache",
    "rate-limit",
];
const MATCH_KEYS: &[&str] = &["host", "path-prefix", "path"];

pub(super) fn parse_route(node: &KdlNode, diags: &mut Diagnostics<'_>) -> ParsedRoute {
    let named = block_name(node, diags);
    let route_name = named.as_ref().map(|(n, _)| n.clone()).unwrap_or_default();
    let mut priority = RoutePriority::Normal;
    let mut matches = Vec::new();
    let mut action: Option<RouteAction> = None;
    let mut action_node: Option<&KdlNode> = None;
    let mut action_missing_value = false;
    let mut upstream_at = None;
    let mut seen = Seen::default();
    let children = node.children().map_or(&[][..], |c| c.nodes());
    for child in children {
        if name(child) == "priority" {
            seen.check(child, diags);
        }
        match name(child) {
            "priority" => {
                if let Some((p, at)) = leaf_string(child, diags) {
                    match p.as_str() {
                        "critical" => priority = RoutePriority::Critical,
                        "high" => priority = RoutePriority::High,
                        "normal" => priority = RoutePriority::Normal,
                        "low" => priority = RoutePriority::Low,
                        _ => diags.error(
                            at,
                            "priority",
                            format!(
                                "unknown priority {p:?}: expected \"critical\", \"high\", \
                             \"normal\" or \"low\""
                            ),
                        ),
                    }
                }
            }
            "matches" => parse_matches(child, &mut matches, diags),
            "upstream" | "static-response" => {
                if let Some(first) = action_node {
                    let line = diags.line_of(name_at(first));
                    diags.error(
                        name_at(child),
                        name(child),
                        format!(
                            "route `{route_name}` already has an action (`{}` at line {line}): \
                             a route takes exactly one of `upstream` or `static-response`",
                            name(first)
                        ),
                    );
                    continue;
                }
                action_node = Some(child);
                if name(child) == "upstream" {
                    match leaf_string(child, diags) {
                        Some((up, at)) => {
                            action = Some(RouteAction::Upstream(up));
                            upstream_at = Some(at);
                        }
                        None => action_missing_value = true,
                    }
                } else {
                    match parse_static_response(child, diags) {
                        Some(resp) => action = Some(RouteAction::Static(resp)),
                        None => action_missing_value = true,
                    }
                }
            }
            _ => unknown(child, "route", ROUTE_KEYS, ROUTE_UNSUPPORTED, diags),
        }
    }
    if action_node.is_none() && !action_missing_value {
        diags.error(
            name_at(node),
            "route",
            format!(
                "route `{route_name}` has no action: add `upstream \"name\"` or \
                 `static-response status=200`"
            ),
        );
    }
    ParsedRoute {
        config: RouteConfig {
            name: route_name,
            priority,
            matches,
            // Only reached through an error already reported, so the config is never used.
            action: action.unwrap_or_else(|| RouteAction::Upstream(String::new())),
        },
        name_at: named.as_ref().map_or(name_at(node), |(_, at)| *at),
        has_name: named.is_some(),
        upstream_at,
    }
}

fn parse_matches(node: &KdlNode, matches: &mut Vec<RouteMatch>, diags: &mut Diagnostics<'_>) {
    for child in block(node, diags) {
        let kind = name(child);
        if !MATCH_KEYS.contains(&kind) {
            unknown(child, "matches", MATCH_KEYS, &[], diags);
            continue;
        }
        no_children(child, diags);
        for entry in props(child) {
            unknown_property(child, entry, &[], diags);
        }
        // Several values on one node are alternatives, like several nodes of the same kind.
        let mut any = false;
        for entry in args(child) {
            any = true;
            let Some(value) = string_value(child, entry, diags) else {
                continue;
            };
            let at = entry.span().offset();
            match kind {
                "host" => {
                    if let Some(problem) = host_problem(&value) {
                        diags.error(at, kind, format!("invalid host {value:?}: {problem}"));
                    } else {
                        matches.push(RouteMatch::Host(value));
                    }
                }
                _ => {
                    if !value.starts_with('/') {
                        diags.error(at, kind, format!("{kind} {value:?} must start with '/'"));
                    } else if kind == "path" {
                        matches.push(RouteMatch::Path(value));
                    } else {
                        matches.push(RouteMatch::PathPrefix(value));
                    }
                }
            }
        }
        if !any {
            diags.error(
                name_at(child),
                kind,
                "missing value: expected at least one argument",
            );
        }
    }
}

fn host_problem(host: &str) -> Option<&'static str> {
    let rest = host.strip_prefix("*.").unwrap_or(host);
    if rest.is_empty() {
        return Some("empty host name");
    }
    if rest.contains('*') {
        return Some("a wildcard is only allowed as a leading `*.`, e.g. \"*.example.com\"");
    }
    if rest
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || "/?#@".contains(c))
    {
        return Some("not a host name (no scheme, path or spaces)");
    }
    None
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
