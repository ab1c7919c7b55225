//! `namespace "ns" { ... }` and its `service "svc" { ... }` blocks, as upstream Zentinel
//! scopes them: what is defined inside gets a qualified name (`ns:name`, `ns:svc:name`), an
//! unqualified reference resolves in its own scope first (service, then namespace), then among
//! the upstreams any namespace `exports`, then at the top level; a qualified one names exactly
//! what it says. Routes belong to their scope: a listener serves the routes of its own scope
//! (top-level listeners the top-level routes; `namespace "ns"` on a top-level listener, or a
//! listener defined in the namespace or service, that scope's routes).
//!
//! Upstream parses namespace and service listeners but never binds them; here they are bound
//! like any listener. Namespace `limits` have no effect upstream either (a warning says so).
//! `agents` and `filters` inside namespaces are "not supported yet", as at the top level.

use std::collections::BTreeSet;

use super::listeners::parse_listener_named;
use super::*;

const NAMESPACE_KEYS: &[&str] = &[
    "listeners",
    "upstreams",
    "routes",
    "service",
    "exports",
    "limits",
    "agents",
    "filters",
];
const SERVICE_KEYS: &[&str] = &[
    "listener",
    "upstreams",
    "routes",
    "limits",
    "agents",
    "filters",
];
const NOT_YET: &[&str] = &["agents", "filters"];
/// Upstream's default name of a service listener written without one.
const SERVICE_LISTENER: &str = "service-listener";

/// An upstream a namespace makes visible to unqualified references everywhere.
pub(in crate::config) struct Export {
    pub namespace: String,
    pub upstream: String,
}

pub(super) fn parse_namespace(
    node: &KdlNode,
    parsed: &mut ParsedConfig,
    diags: &mut Diagnostics<'_>,
) {
    let Some((ns, at)) = scope_name(node, diags) else {
        return;
    };
    if parsed.namespaces.iter().any(|(n, _)| *n == ns) {
        diags.error(at, "namespace", format!("duplicate namespace {ns:?}"));
    }
    parsed.namespaces.push((ns.clone(), at));
    for child in children(node) {
        match name(child) {
            "listeners" => {
                for l in block(child, diags) {
                    match name(l) {
                        "listener" => {
                            push_listener(parsed, parse_listener_named(l, None, diags), &ns)
                        }
                        _ => unknown(l, "listeners", &["listener"], &[], diags),
                    }
                }
            }
            "upstreams" | "routes" => parse_collection(child, parsed, &ns, diags),
            "service" => parse_service(child, &ns, parsed, diags),
            "exports" => parse_exports(child, &ns, parsed, diags),
            "limits" => scoped_limits(child, diags),
            _ => unknown(child, "namespace", NAMESPACE_KEYS, NOT_YET, diags),
        }
    }
}

fn parse_service(node: &KdlNode, ns: &str, parsed: &mut ParsedConfig, diags: &mut Diagnostics<'_>) {
    let Some((svc, at)) = scope_name(node, diags) else {
        return;
    };
    let scope = format!("{ns}:{svc}");
    if parsed.namespaces.iter().any(|(n, _)| *n == scope) {
        diags.error(
            at,
            "service",
            format!("duplicate service {svc:?} in namespace {ns:?}"),
        );
    }
    parsed.namespaces.push((scope.clone(), at));
    let mut listener_seen = false;
    for child in children(node) {
        match name(child) {
            "listener" => {
                if listener_seen {
                    diags.error(name_at(child), "listener", "a service has one `listener`");
                }
                listener_seen = true;
                let listener = parse_listener_named(child, Some(SERVICE_LISTENER), diags);
                push_listener(parsed, listener, &scope);
            }
            "upstreams" | "routes" => parse_collection(child, parsed, &scope, diags),
            "limits" => scoped_limits(child, diags),
            _ => unknown(child, "service", SERVICE_KEYS, NOT_YET, diags),
        }
    }
}

/// `upstreams { ... }` or `routes { ... }` inside a namespace or service: names qualified with
/// `scope`, routes tagged with it.
fn parse_collection(
    node: &KdlNode,
    parsed: &mut ParsedConfig,
    scope: &str,
    diags: &mut Diagnostics<'_>,
) {
    let kind = name(node);
    let item = if kind == "routes" {
        "route"
    } else {
        "upstream"
    };
    for child in block(node, diags) {
        if name(child) != item {
            unknown(child, kind, &[item], &[], diags);
            continue;
        }
        if item == "route" {
            let mut route = parse_route(child, diags);
            route.config.name = format!("{scope}:{}", route.config.name);
            route.config.scope = Some(scope.to_owned());
            parsed.routes.push(route);
        } else {
            let mut upstream = parse_upstream(child, diags);
            upstream.config.name = format!("{scope}:{}", upstream.config.name);
            parsed.upstreams.push(upstream);
        }
    }
}

fn push_listener(parsed: &mut ParsedConfig, mut listener: ParsedListener, scope: &str) {
    listener.config.name = format!("{scope}:{}", listener.config.name);
    listener.config.route_scope = Some(scope.to_owned());
    parsed.listeners_at.get_or_insert(listener.name_at);
    parsed.listeners.push(listener);
}

fn parse_exports(node: &KdlNode, ns: &str, parsed: &mut ParsedConfig, diags: &mut Diagnostics<'_>) {
    for child in block(node, diags) {
        match name(child) {
            "upstreams" => {
                for entry in child.entries() {
                    match (entry.name(), entry.value()) {
                        (None, KdlValue::String(upstream)) => parsed.exports.push(Export {
                            namespace: ns.to_owned(),
                            upstream: upstream.clone(),
                        }),
                        _ => diags.error(
                            entry.span().offset(),
                            "upstreams",
                            "expected upstream names: `upstreams \"a\" \"b\"`",
                        ),
                    }
                }
            }
            _ => unknown(child, "exports", &["upstreams"], NOT_YET, diags),
        }
    }
}

/// Checked like the top-level `limits`, without effect (as upstream).
fn scoped_limits(node: &KdlNode, diags: &mut Diagnostics<'_>) {
    let mut ignored = Limits::default();
    parse_limits(node, &mut ignored, diags);
    diags.warn(
        name_at(node),
        "limits",
        "`limits` inside a namespace or service have no effect (as upstream): the top-level \
         `limits` apply",
    );
}

/// The block of a named node (`namespace "ns" { ... }`).
fn children(node: &KdlNode) -> &[KdlNode] {
    node.children().map_or(&[], |c| c.nodes())
}

/// A namespace or service name: no `:` (it separates qualified names).
fn scope_name(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Option<(String, usize)> {
    let (scope, at) = block_name(node, diags)?;
    if scope.contains(':') {
        diags.error(
            at,
            name(node),
            format!(
                "{:?}: a {} name may not contain `:` (it separates qualified names)",
                scope,
                name(node)
            ),
        );
        return None;
    }
    Some((scope, at))
}

/// Rewrites every unqualified reference to the name it resolves to in its scope, and checks
/// that every listener's `namespace` exists. Left as written when nothing matches: `validate`
/// then reports the unknown name.
pub(super) fn resolve_references(parsed: &mut ParsedConfig, diags: &mut Diagnostics<'_>) {
    let upstreams: BTreeSet<String> = parsed
        .upstreams
        .iter()
        .map(|u| u.config.name.clone())
        .collect();
    let routes: BTreeSet<String> = parsed
        .routes
        .iter()
        .map(|r| r.config.name.clone())
        .collect();
    let exported: Vec<String> = parsed
        .exports
        .iter()
        .map(|e| format!("{}:{}", e.namespace, e.upstream))
        .collect();
    for route in &mut parsed.routes {
        let scope = route.config.scope.clone();
        if let RouteAction::Upstream(name) = &mut route.config.action {
            if let Some(found) = resolve(name, scope.as_deref(), &upstreams, &exported) {
                *name = found;
            }
        }
        let fallback = route
            .config
            .extras
            .as_mut()
            .and_then(|e| e.fallback.as_mut());
        for up in fallback.map_or(&mut [][..], |f| &mut f.upstreams[..]) {
            if let Some(found) = resolve(&up.name, scope.as_deref(), &upstreams, &exported) {
                up.name = found;
            }
        }
    }
    for listener in &mut parsed.listeners {
        let scope = listener.config.route_scope.clone();
        if let (Some(scope), Some(at)) = (&scope, listener.route_scope_at) {
            if !parsed.namespaces.iter().any(|(n, _)| n == scope) {
                diags.error(
                    at,
                    "namespace",
                    format!(
                        "listener `{}` serves namespace {scope:?}, which is not defined{}",
                        listener.config.name,
                        did_you_mean(scope, parsed.namespaces.iter().map(|(n, _)| n.as_str()))
                    ),
                );
            }
        }
        if let Some(name) = &mut listener.config.upstream {
            if let Some(found) = resolve(name, scope.as_deref(), &upstreams, &exported) {
                *name = found;
            }
        }
        if let Some(name) = &mut listener.config.default_route {
            if let Some(found) = resolve(name, scope.as_deref(), &routes, &[]) {
                *name = found;
            }
        }
    }
}

/// What `name`, written in `scope`, names: the scope's own (service, then its namespace),
/// then an exported one, then a top-level one. `None`: qualified, or nothing matches.
fn resolve(
    name: &str,
    scope: Option<&str>,
    defined: &BTreeSet<String>,
    exported: &[String],
) -> Option<String> {
    if name.contains(':') {
        return None;
    }
    let mut candidates = Vec::new();
    if let Some(scope) = scope {
        candidates.push(format!("{scope}:{name}"));
        if let Some((ns, _service)) = scope.split_once(':') {
            candidates.push(format!("{ns}:{name}"));
        }
    }
    candidates.extend(
        exported
            .iter()
            .filter(|e| e.rsplit_once(':').is_some_and(|(_, n)| n == name))
            .cloned(),
    );
    candidates.push(name.to_owned());
    candidates.into_iter().find(|c| defined.contains(c))
}
