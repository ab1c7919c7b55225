//! The `listeners` section: `listener "name" { ... }`.

use super::*;

const LISTENER_KEYS: &[&str] = &[
    "address",
    "protocol",
    "request-timeout-secs",
    "keepalive-timeout-secs",
    "backlog",
    "default-route",
    "upstream",
    "tls",
    "namespace",
    "max-concurrent-streams",
    "keepalive-max-requests",
];
const LISTENER_UNSUPPORTED: &[&str] = &[];

pub(super) fn parse_listener(node: &KdlNode, diags: &mut Diagnostics<'_>) -> ParsedListener {
    parse_listener_named(node, None, diags)
}

/// A listener whose name may be left out (`service { listener { ... } }`), then `default`.
pub(super) fn parse_listener_named(
    node: &KdlNode,
    default: Option<&str>,
    diags: &mut Diagnostics<'_>,
) -> ParsedListener {
    let unnamed = node.entries().iter().all(|e| e.name().is_some());
    let named = match default {
        Some(default) if unnamed => Some((default.to_owned(), name_at(node))),
        _ => block_name(node, diags),
    };
    let mut listener = ParsedListener {
        config: ListenerConfig {
            name: named.as_ref().map(|(n, _)| n.clone()).unwrap_or_default(),
            route_scope: None,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            keepalive_max_requests: 0,
            address: String::new(),
            protocol: ListenerProtocol::Http,
            backlog: DEFAULT_BACKLOG,
            request_timeout_secs: 60,
            keepalive_timeout_secs: 75,
            default_route: None,
            upstream: None,
            // Set for every HTTP listener by `validate` from `observability`.
            access_log: None,
            tls: None,
        },
        name_at: named.as_ref().map_or(name_at(node), |(_, at)| *at),
        has_name: named.is_some(),
        address: None,
        default_route_at: None,
        upstream_at: None,
        route_scope_at: None,
    };
    let mut seen = Seen::default();
    let mut address_written = false;
    let mut protocol_known = true;
    let mut default_route_node: Option<&KdlNode> = None;
    let mut upstream_node: Option<&KdlNode> = None;
    let mut tls_node: Option<&KdlNode> = None;
    let mut https_at: Option<usize> = None;
    let children = node.children().map_or(&[][..], |c| c.nodes());
    for child in children {
        if LISTENER_KEYS.contains(&name(child)) {
            seen.check(child, diags);
        }
        match name(child) {
            "address" => {
                address_written = true;
                if let Some((text, at)) = leaf_string(child, diags) {
                    if let Some(addr) = socket_addr(child, &text, at, diags) {
                        listener.address = Some((addr, at));
                    }
                    listener.config.address = text;
                }
            }
            "protocol" => {
                match leaf_string(child, diags).map(|(p, at)| (p.to_ascii_lowercase(), at)) {
                    // Every HTTP listener speaks HTTP/1.1 and HTTP/2: by ALPN over TLS, with prior
                    // knowledge (h2c) on plain ones. Upstream's `h2` (also `http2`) names the same.
                    Some((p, _)) if p == "http" || p == "h2" || p == "http2" => {
                        listener.config.protocol = ListenerProtocol::Http;
                    }
                    Some((p, at)) if p == "h3" => {
                        protocol_known = false;
                        diags.error(
                        at,
                        "protocol",
                        "protocol \"h3\" is not supported yet (use \"http\", \"https\" or \"h2\")"
                            .to_string(),
                    );
                    }
                    Some((p, _)) if p == "tcp" => listener.config.protocol = ListenerProtocol::Tcp,
                    // Zentinel's spelling of an http listener with TLS: the `tls` block is required.
                    Some((p, at)) if p == "https" => {
                        listener.config.protocol = ListenerProtocol::Http;
                        https_at = Some(at);
                    }
                    Some((p, at)) => {
                        protocol_known = false;
                        diags.error(
                        at,
                        "protocol",
                        format!(
                            "unknown protocol {p:?}: expected \"http\", \"https\", \"h2\" or \"tcp\""
                        ),
                    );
                    }
                    None => protocol_known = false,
                }
            }
            "request-timeout-secs" => {
                if let Some(v) = leaf_int(child, 1, MAX_SECS, diags) {
                    listener.config.request_timeout_secs = v;
                }
            }
            "keepalive-timeout-secs" => {
                if let Some(v) = leaf_int(child, 1, MAX_SECS, diags) {
                    listener.config.keepalive_timeout_secs = v;
                }
            }
            "backlog" => {
                // listen(2) takes a C int.
                if let Some(v) = leaf_u32(child, 1, i32::MAX as u32, diags) {
                    listener.config.backlog = v;
                }
            }
            "default-route" => {
                default_route_node = Some(child);
                if let Some((route, at)) = leaf_string(child, diags) {
                    listener.config.default_route = Some(route);
                    listener.default_route_at = Some(at);
                }
            }
            "namespace" => {
                // Upstream: the listener serves only that namespace's routes.
                if let Some((namespace, at)) = leaf_string(child, diags) {
                    listener.config.route_scope = Some(namespace);
                    listener.route_scope_at = Some(at);
                }
            }
            "max-concurrent-streams" => {
                // Stored for HTTP/2; HTTP/1 serves one request at a time per connection.
                if let Some(v) = leaf_u32(child, 1, u32::MAX, diags) {
                    listener.config.max_concurrent_streams = v;
                }
            }
            "keepalive-max-requests" => {
                if let Some(v) = leaf_u32(child, 1, u32::MAX, diags) {
                    listener.config.keepalive_max_requests = v;
                }
            }
            "upstream" => {
                upstream_node = Some(child);
                if let Some((upstream, at)) = leaf_string(child, diags) {
                    listener.config.upstream = Some(upstream);
                    listener.upstream_at = Some(at);
                }
            }
            "tls" => {
                tls_node = Some(child);
                let label = listener_label(&listener.config.name);
                listener.config.tls = tls::parse_tls(child, &label, diags);
            }
            _ => unknown(
                child,
                "listener",
                LISTENER_KEYS,
                LISTENER_UNSUPPORTED,
                diags,
            ),
        }
    }
    let label = listener_label(&listener.config.name);
    if !address_written {
        diags.error(
            name_at(node),
            "listener",
            format!("{label} has no `address` (required, e.g. address \"0.0.0.0:8080\")"),
        );
    }
    if let (Some(at), None) = (https_at, tls_node) {
        diags.error(
            at,
            "protocol",
            format!("{label} is \"https\" but has no `tls {{ cert-file ... key-file ... }}` block"),
        );
    }
    if protocol_known {
        match listener.config.protocol {
            ListenerProtocol::Http => {
                if let Some(up) = upstream_node {
                    diags.error(
                        name_at(up),
                        "upstream",
                        format!(
                            "`upstream` is only valid on tcp listeners; {label} is http and \
                             routes requests through `routes` (use `default-route`)"
                        ),
                    );
                    listener.upstream_at = None;
                }
            }
            ListenerProtocol::Tcp => {
                if let Some(t) = tls_node {
                    diags.error(
                        name_at(t),
                        "tls",
                        format!("`tls` is only supported on http listeners yet; {label} is tcp"),
                    );
                }
                if let Some(dr) = default_route_node {
                    diags.error(
                        name_at(dr),
                        "default-route",
                        format!("`default-route` is only valid on http listeners; {label} is tcp"),
                    );
                    listener.default_route_at = None;
                }
                if upstream_node.is_none() {
                    diags.error(
                        name_at(node),
                        "listener",
                        format!("tcp {label} has no `upstream` (required for tcp listeners)"),
                    );
                }
            }
        }
    } else {
        listener.default_route_at = None;
        listener.upstream_at = None;
    }
    listener
}

fn listener_label(name: &str) -> String {
    if name.is_empty() {
        "listener".to_owned()
    } else {
        format!("listener `{name}`")
    }
}
