//! A configuration archived by state formats 1 to 3 (a parsed model), written back as KDL text.
//!
//! Format 4 carries the configuration's source; a master that takes over from a format 1 to 3
//! predecessor gets a model instead. Rendering that model as text lets the new master treat
//! both the same way: it parses the text with its own parser, exactly as it parses the source a
//! format 4 predecessor hands over. The text uses the spellings every release since format 1
//! accepts (they stay accepted as aliases), and lists routes in evaluation order with explicit
//! priorities, so parsing it gives back the same evaluation order.

use std::fmt::Write;

use super::v3_config::{
    AccessLogConfig, HealthCheck, HealthCheckKind, ListenerConfig, ListenerProtocol, LoadBalancing,
    MetricsConfig, ProxyConfig, RouteAction, RouteConfig, RouteMatch, RoutePriority, TlsConfig,
    TlsVersion, UpstreamConfig,
};

/// The KDL text of `config` (and of the master-only metrics endpoint).
pub fn render(config: &ProxyConfig, metrics: Option<&MetricsConfig>) -> String {
    let mut out = String::from(
        "// Rendered by Zentinel from the parsed configuration a master of state format 1-3\n\
         // handed over (those formats carried no source text).\n",
    );
    let system = &config.system;
    out.push_str("system {\n");
    let _ = writeln!(out, "    worker-processes {}", system.worker_processes);
    let _ = writeln!(out, "    max-connections {}", system.max_connections);
    let _ = writeln!(
        out,
        "    graceful-shutdown-timeout-secs {}",
        system.graceful_shutdown_timeout_secs
    );
    if let Some(socket) = &system.control_socket {
        let _ = writeln!(out, "    control-socket {}", quote(socket));
    }
    out.push_str("}\n");

    out.push_str("listeners {\n");
    for listener in &config.listeners {
        render_listener(&mut out, listener);
    }
    out.push_str("}\n");

    if !config.routes.is_empty() {
        out.push_str("routes {\n");
        for route in &config.routes {
            render_route(&mut out, route);
        }
        out.push_str("}\n");
    }
    if !config.upstreams.is_empty() {
        out.push_str("upstreams {\n");
        for upstream in &config.upstreams {
            render_upstream(&mut out, upstream);
        }
        out.push_str("}\n");
    }

    let limits = &config.limits;
    let _ = writeln!(
        out,
        "limits {{\n    max-header-size-bytes {}\n    max-header-count {}\n    max-body-size-bytes {}\n}}",
        limits.max_header_size_bytes, limits.max_header_count, limits.max_body_size_bytes
    );

    // The access log is the same for every listener that has one (one `logging` block).
    let access_log = config.listeners.iter().find_map(|l| l.access_log.as_ref());
    if access_log.is_some() || metrics.is_some() {
        out.push_str("observability {\n");
        if let Some(metrics) = metrics {
            let _ = writeln!(
                out,
                "    metrics {{\n        address {}\n        path {}\n    }}",
                quote(&metrics.address),
                quote(&metrics.path)
            );
        }
        if let Some(AccessLogConfig { file, format }) = access_log {
            let _ = writeln!(
                out,
                "    logging {{\n        access-log {{\n            file {}\n            format {}\n        }}\n    }}",
                quote(file),
                quote(format)
            );
        }
        out.push_str("}\n");
    }
    out
}

fn render_listener(out: &mut String, listener: &ListenerConfig) {
    let _ = writeln!(out, "    listener {} {{", quote(&listener.name));
    let _ = writeln!(out, "        address {}", quote(&listener.address));
    let protocol = match listener.protocol {
        ListenerProtocol::Http => "http",
        ListenerProtocol::Tcp => "tcp",
    };
    let _ = writeln!(out, "        protocol {}", quote(protocol));
    let _ = writeln!(out, "        backlog {}", listener.backlog);
    if listener.protocol == ListenerProtocol::Http {
        let _ = writeln!(
            out,
            "        request-timeout-secs {}",
            listener.request_timeout_secs
        );
        let _ = writeln!(
            out,
            "        keepalive-timeout-secs {}",
            listener.keepalive_timeout_secs
        );
    }
    if let Some(route) = &listener.default_route {
        let _ = writeln!(out, "        default-route {}", quote(route));
    }
    if let Some(upstream) = &listener.upstream {
        let _ = writeln!(out, "        upstream {}", quote(upstream));
    }
    if let Some(tls) = &listener.tls {
        render_tls(out, tls);
    }
    out.push_str("    }\n");
}

fn tls_version(version: TlsVersion) -> &'static str {
    match version {
        TlsVersion::Tls12 => "1.2",
        TlsVersion::Tls13 => "1.3",
    }
}

fn render_tls(out: &mut String, tls: &TlsConfig) {
    out.push_str("        tls {\n");
    let _ = writeln!(out, "            cert-file {}", quote(&tls.cert_file));
    let _ = writeln!(out, "            key-file {}", quote(&tls.key_file));
    let _ = writeln!(
        out,
        "            min-version {}",
        quote(tls_version(tls.min_version))
    );
    if let Some(max) = tls.max_version {
        let _ = writeln!(out, "            max-version {}", quote(tls_version(max)));
    }
    for sni in &tls.additional_certs {
        out.push_str("            sni {\n                hostnames");
        for host in &sni.hostnames {
            let _ = write!(out, " {}", quote(host));
        }
        let _ = writeln!(
            out,
            "\n                cert-file {}\n                key-file {}\n            }}",
            quote(&sni.cert_file),
            quote(&sni.key_file)
        );
    }
    out.push_str("        }\n");
}

fn render_route(out: &mut String, route: &RouteConfig) {
    let priority = match route.priority {
        RoutePriority::Critical => "critical",
        RoutePriority::High => "high",
        RoutePriority::Normal => "normal",
        RoutePriority::Low => "low",
    };
    let _ = writeln!(out, "    route {} {{", quote(&route.name));
    let _ = writeln!(out, "        priority {}", quote(priority));
    if !route.matches.is_empty() {
        // These formats made conditions of one kind alternatives. Hosts still are; other
        // conditions are now ANDed, and the values of one node are alternatives, so each
        // kind's values go on one node.
        out.push_str("        matches {\n");
        for (kind, values) in [
            ("host", hosts_of(route)),
            ("path-prefix", prefixes_of(route)),
            ("path", paths_of(route)),
        ] {
            if kind == "host" {
                for host in values {
                    let _ = writeln!(out, "            host {}", quote(host));
                }
            } else if !values.is_empty() {
                let _ = write!(out, "            {kind}");
                for value in values {
                    let _ = write!(out, " {}", quote(value));
                }
                out.push('\n');
            }
        }
        out.push_str("        }\n");
    }
    match &route.action {
        RouteAction::Upstream(name) => {
            let _ = writeln!(out, "        upstream {}", quote(name));
        }
        RouteAction::Static(response) => {
            let _ = writeln!(
                out,
                "        static-response status={} body={} content-type={}",
                response.status,
                quote(&response.body),
                quote(&response.content_type)
            );
        }
    }
    out.push_str("    }\n");
}

fn hosts_of(route: &RouteConfig) -> Vec<&String> {
    route
        .matches
        .iter()
        .filter_map(|m| match m {
            RouteMatch::Host(h) => Some(h),
            _ => None,
        })
        .collect()
}

fn prefixes_of(route: &RouteConfig) -> Vec<&String> {
    route
        .matches
        .iter()
        .filter_map(|m| match m {
            RouteMatch::PathPrefix(p) => Some(p),
            _ => None,
        })
        .collect()
}

fn paths_of(route: &RouteConfig) -> Vec<&String> {
    route
        .matches
        .iter()
        .filter_map(|m| match m {
            RouteMatch::Path(p) => Some(p),
            _ => None,
        })
        .collect()
}

fn render_upstream(out: &mut String, upstream: &UpstreamConfig) {
    let _ = writeln!(out, "    upstream {} {{", quote(&upstream.name));
    for target in &upstream.targets {
        let _ = writeln!(
            out,
            "        target {} weight={}",
            quote(&target.address),
            target.weight
        );
    }
    let balancing = match upstream.load_balancing {
        LoadBalancing::RoundRobin => "round_robin",
        LoadBalancing::LeastConnections => "least_connections",
    };
    let _ = writeln!(out, "        load-balancing {}", quote(balancing));
    // An idle timeout means nothing without idle connections (and 0 is not a valid one).
    if upstream.pool.max_idle == 0 {
        out.push_str("        connection-pool {\n            max-idle 0\n        }\n");
    } else {
        let _ = writeln!(
            out,
            "        connection-pool {{\n            max-idle {}\n            idle-timeout-secs {}\n        }}",
            upstream.pool.max_idle, upstream.pool.idle_timeout_secs
        );
    }
    let _ = writeln!(
        out,
        "        timeouts {{\n            connect-secs {}\n            read-secs {}\n        }}",
        upstream.timeouts.connect_secs, upstream.timeouts.read_secs
    );
    if let Some(check) = &upstream.health_check {
        render_health_check(out, check);
    }
    // Likewise a fail timeout without passive marking.
    if upstream.passive_health.max_fails == 0 {
        out.push_str("        passive-health {\n            max-fails 0\n        }\n");
    } else {
        let _ = writeln!(
            out,
            "        passive-health {{\n            max-fails {}\n            fail-timeout-secs {}\n        }}",
            upstream.passive_health.max_fails, upstream.passive_health.fail_timeout_secs
        );
    }
    out.push_str("    }\n");
}

fn render_health_check(out: &mut String, check: &HealthCheck) {
    out.push_str("        health-check {\n");
    match &check.kind {
        HealthCheckKind::Tcp => out.push_str("            type \"tcp\"\n"),
        HealthCheckKind::Http {
            path,
            expected_status,
            host,
        } => {
            let _ = write!(
                out,
                "            type \"http\" {{\n                path {}\n                expected-status {}\n",
                quote(path),
                expected_status
            );
            if let Some(host) = host {
                let _ = writeln!(out, "                host {}", quote(host));
            }
            out.push_str("            }\n");
        }
    }
    let _ = writeln!(
        out,
        "            interval-secs {}\n            timeout-secs {}\n            healthy-threshold {}\n            unhealthy-threshold {}\n        }}",
        check.interval_secs, check.timeout_secs, check.healthy_threshold, check.unhealthy_threshold
    );
}

/// A KDL string literal (the escapes KDL v1 and v2 share).
pub fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
