//! The configuration a master of state format 1 to 3 hands over arrives as KDL text rendered
//! from its parsed model (`zentinel_protocol::state::legacy_kdl`). This parser must read that
//! text back into the same configuration, or an upgrade from such a release would fail (or,
//! worse, serve something else).

use super::*;
use zentinel_protocol::config::*;
use zentinel_protocol::state::{decode_model_state, decode_state, v3_config};

const FIXTURES: [(&str, &[u8]); 3] = [
    (
        "state-v1.bin",
        include_bytes!("../../../tests/fixtures/state-v1.bin"),
    ),
    (
        "state-v2.bin",
        include_bytes!("../../../tests/fixtures/state-v2.bin"),
    ),
    (
        "state-v3.bin",
        include_bytes!("../../../tests/fixtures/state-v3.bin"),
    ),
];

fn same_listener(got: &ListenerConfig, want: &v3_config::ListenerConfig, what: &str) {
    assert_eq!(got.name, want.name, "{what}");
    assert_eq!(got.address, want.address, "{what} {}", want.name);
    assert_eq!(
        format!("{:?}", got.protocol),
        format!("{:?}", want.protocol)
    );
    assert_eq!(got.backlog, want.backlog, "{what} {}", want.name);
    if want.protocol == v3_config::ListenerProtocol::Http {
        assert_eq!(got.request_timeout_secs, want.request_timeout_secs);
        assert_eq!(got.keepalive_timeout_secs, want.keepalive_timeout_secs);
    }
    assert_eq!(
        got.default_route, want.default_route,
        "{what} {}",
        want.name
    );
    assert_eq!(got.upstream, want.upstream, "{what} {}", want.name);
    // One `logging { access-log }` block serves every listener, so a real master's model has
    // the same access log on each (the format 2 fixture varies the format per listener, which
    // no configuration file could express: the first listener's is the one rendered).
    assert_eq!(
        got.access_log.as_ref().map(|a| &a.file),
        want.access_log.as_ref().map(|a| &a.file),
        "{what} {}",
        want.name
    );
}

fn same_route(got: &RouteConfig, want: &v3_config::RouteConfig, what: &str) {
    assert_eq!(got.name, want.name, "{what}");
    let priority = match want.priority {
        v3_config::RoutePriority::Critical => PRIORITY_CRITICAL,
        v3_config::RoutePriority::High => PRIORITY_HIGH,
        v3_config::RoutePriority::Normal => PRIORITY_NORMAL,
        v3_config::RoutePriority::Low => PRIORITY_LOW,
    };
    assert_eq!(got.priority, priority, "{what} {}", want.name);
    // Those formats made every condition of one kind an alternative; the rendering puts each
    // kind's values on one node, which keeps that meaning: compare value lists per kind.
    let mut got_kinds: [Vec<String>; 3] = Default::default();
    for m in &got.matches {
        match m {
            RouteMatch::Host(h) => got_kinds[0].push(h.clone()),
            RouteMatch::PathPrefix(p) => got_kinds[1].extend(p.iter().cloned()),
            RouteMatch::Path(p) => got_kinds[2].extend(p.iter().cloned()),
            other => panic!("{what} {}: unexpected condition {other:?}", want.name),
        }
    }
    let mut want_kinds: [Vec<String>; 3] = Default::default();
    for m in &want.matches {
        match m {
            v3_config::RouteMatch::Host(h) => want_kinds[0].push(h.clone()),
            v3_config::RouteMatch::PathPrefix(p) => want_kinds[1].push(p.clone()),
            v3_config::RouteMatch::Path(p) => want_kinds[2].push(p.clone()),
        }
    }
    assert_eq!(got_kinds, want_kinds, "{what} {}", want.name);
    let path_nodes = got
        .matches
        .iter()
        .filter(|m| matches!(m, RouteMatch::Path(_)))
        .count();
    assert!(path_nodes <= 1, "{what} {}: one `path` node", want.name);
    assert_eq!(format!("{:?}", got.action), format!("{:?}", want.action));
}

fn same_upstream(got: &UpstreamConfig, want: &v3_config::UpstreamConfig, what: &str) {
    assert_eq!(got.name, want.name, "{what}");
    let targets: Vec<(String, u32)> = got
        .targets
        .iter()
        .map(|t| (t.address.clone(), t.weight))
        .collect();
    let wanted: Vec<(String, u32)> = want
        .targets
        .iter()
        .map(|t| (t.address.clone(), t.weight))
        .collect();
    assert_eq!(targets, wanted, "{what} {}", want.name);
    assert_eq!(
        format!("{:?}", got.load_balancing),
        format!("{:?}", want.load_balancing)
    );
    assert_eq!(got.pool.max_idle, want.pool.max_idle);
    // Without idle connections (max-idle 0) the idle timeout is not rendered: it means nothing.
    if want.pool.max_idle > 0 {
        assert_eq!(got.pool.idle_timeout_secs, want.pool.idle_timeout_secs);
    }
    assert_eq!(got.timeouts.connect_secs, want.timeouts.connect_secs);
    assert_eq!(got.timeouts.read_secs, want.timeouts.read_secs);
    assert_eq!(
        format!("{:?}", got.health_check),
        format!("{:?}", want.health_check)
    );
    assert_eq!(got.passive_health.max_fails, want.passive_health.max_fails);
    if want.passive_health.max_fails > 0 {
        assert_eq!(
            got.passive_health.fail_timeout_secs,
            want.passive_health.fail_timeout_secs
        );
    }
}

#[test]
fn configurations_of_model_states_parse_back_to_the_same_configuration() {
    for (what, bytes) in FIXTURES {
        let model = decode_model_state(bytes, what).unwrap().unwrap();
        let state = decode_state(bytes, what).unwrap();
        let main = state.config_source.main().unwrap();
        // The fixtures name certificate files that do not exist here: those (and only those)
        // may be refused; everything else must parse as it was.
        let full = match parse_full_config(&main.text, &main.path) {
            Ok(full) => full,
            Err(diagnostics) => {
                for d in &diagnostics {
                    assert!(
                        d.message.contains("/etc/zentinel/certs/"),
                        "{what}: unexpected diagnostic {d}\n{}",
                        main.text
                    );
                }
                let without_tls = strip_tls_blocks(&main.text);
                parse_full_config(&without_tls, &main.path).unwrap_or_else(|d| {
                    panic!("{what}: {d:?}\n{without_tls}");
                })
            }
        };
        let config = full.proxy;
        let want = &model.config;
        assert_eq!(config.system.worker_processes, want.system.worker_processes);
        assert_eq!(config.system.max_connections, want.system.max_connections);
        assert_eq!(
            config.system.graceful_shutdown_timeout_secs,
            want.system.graceful_shutdown_timeout_secs
        );
        assert_eq!(config.system.control_socket, want.system.control_socket);
        assert_eq!(config.listeners.len(), want.listeners.len(), "{what}");
        for (got, want) in config.listeners.iter().zip(&want.listeners) {
            same_listener(got, want, what);
        }
        assert_eq!(
            config.listeners[0].access_log.as_ref().map(|a| &a.format),
            want.listeners[0].access_log.as_ref().map(|a| &a.format),
            "{what}"
        );
        assert_eq!(config.routes.len(), want.routes.len(), "{what}");
        for (got, want) in config.routes.iter().zip(&want.routes) {
            same_route(got, want, what);
        }
        assert_eq!(config.upstreams.len(), want.upstreams.len(), "{what}");
        for (got, want) in config.upstreams.iter().zip(&want.upstreams) {
            same_upstream(got, want, what);
        }
        assert_eq!(
            config.limits.max_header_size_bytes,
            want.limits.max_header_size_bytes
        );
        assert_eq!(config.limits.max_header_count, want.limits.max_header_count);
        assert_eq!(
            config.limits.max_body_size_bytes,
            want.limits.max_body_size_bytes
        );
        assert_eq!(
            full.metrics.map(|m| (m.address, m.path)),
            model
                .metrics_listener
                .map(|m| (m.config.address, m.config.path)),
            "{what}"
        );
    }
}

/// The text without its `tls { ... }` blocks (which name files absent from this machine).
fn strip_tls_blocks(text: &str) -> String {
    let mut out = String::new();
    let mut depth = 0usize;
    for line in text.lines() {
        if depth == 0 && line.trim() == "tls {" {
            depth = 1;
            continue;
        }
        if depth > 0 {
            depth += line.matches('{').count();
            depth -= line.matches('}').count();
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}
