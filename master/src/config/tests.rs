use super::*;
use zentinel_protocol::config::*;
use zentinel_worker::tls::Resumption;
use zentinel_worker::tls_tickets::SharedTicketer;

const FULL_EXAMPLE: &str = r#"system {
    worker-processes 2                 // 0 or absent = one per CPU
    max-connections 10000
    graceful-shutdown-timeout-secs 30
    control-socket "/run/zentinel/zentinel.sock"
}
listeners {
    listener "http" {
        address "127.0.0.1:8080"
        protocol "http"
        request-timeout-secs 60
        keepalive-timeout-secs 75
        backlog 1024
        default-route "fallback"
    }
    listener "db" {
        address "[::1]:5433"
        protocol "tcp"
        upstream "db"
    }
}
routes {
    route "api" {
        priority "high"
        matches {
            host "api.example.com"
            host "*.example.com"
            path-prefix "/api/"
            path "/exact"
        }
        upstream "backend"
    }
    route "health" {
        matches { path "/health"; }
        static-response status=200 body="ok" content-type="text/plain"
    }
    route "fallback" {
        priority "low"
        static-response status=404
    }
}
upstreams {
    upstream "backend" {
        target "127.0.0.1:9001" weight=1
        target "127.0.0.1:9002" weight=3
        target "[::1]:9003"
        load-balancing "round_robin"
        connection-pool { max-idle 16; idle-timeout-secs 90; }
        timeouts { connect-secs 2; read-secs 45; }
    }
    upstream "db" {
        target "127.0.0.1:5432"
        load-balancing "least_connections"
    }
}
limits {
    max-header-size-bytes 16384
    max-header-count 50
    max-body-size-bytes 1048576
}
"#;

fn errors(source: &str) -> Vec<ConfigDiagnostic> {
    match parse_config(source, "test.kdl") {
        Ok(config) => panic!("expected errors, got {config:#?}"),
        Err(errs) => errs,
    }
}

fn ok(source: &str) -> ProxyConfig {
    match parse_config(source, "test.kdl") {
        Ok(config) => config,
        Err(errs) => panic!(
            "expected success, got:\n{}",
            errs.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

/// Asserts that exactly one diagnostic sits at `line:column` for `node` and that its message
/// contains `needle`.
#[track_caller]
fn assert_diag(errs: &[ConfigDiagnostic], line: usize, column: usize, node: &str, needle: &str) {
    let found: Vec<_> = errs
        .iter()
        .filter(|e| {
            e.line == line && e.column == column && e.node == node && e.message.contains(needle)
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one diagnostic {line}:{column} `{node}` containing {needle:?}; got:\n{}",
        errs.iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(found[0].file, "test.kdl");
}

/// A minimal valid document to which a test appends the piece under test.
const BASE: &str = "listeners {\n    listener \"http\" { address \"127.0.0.1:8080\"; }\n}\n";

#[test]
fn full_example_parses_into_the_expected_model() {
    let config = ok(FULL_EXAMPLE);
    let expected = ProxyConfig {
        system: SystemConfig {
            worker_processes: 2,
            max_connections: 10_000,
            graceful_shutdown_timeout_secs: 30,
            control_socket: Some("/run/zentinel/zentinel.sock".to_owned()),
            ..SystemConfig::default()
        },
        listeners: vec![
            ListenerConfig {
                route_scope: None,
                max_concurrent_streams: 100,
                keepalive_max_requests: 0,
                name: "http".to_owned(),
                address: "127.0.0.1:8080".to_owned(),
                protocol: ListenerProtocol::Http,
                backlog: 1024,
                request_timeout_secs: 60,
                keepalive_timeout_secs: 75,
                default_route: Some("fallback".to_owned()),
                upstream: None,
                access_log: None,
                tls: None,
            },
            ListenerConfig {
                route_scope: None,
                max_concurrent_streams: 100,
                keepalive_max_requests: 0,
                name: "db".to_owned(),
                address: "[::1]:5433".to_owned(),
                protocol: ListenerProtocol::Tcp,
                backlog: DEFAULT_BACKLOG,
                request_timeout_secs: 60,
                keepalive_timeout_secs: 75,
                default_route: None,
                upstream: Some("db".to_owned()),
                access_log: None,
                tls: None,
            },
        ],
        routes: vec![
            RouteConfig {
                scope: None,
                extras: None,
                name: "api".to_owned(),
                priority: PRIORITY_HIGH,
                matches: vec![
                    RouteMatch::Host("api.example.com".to_owned()),
                    RouteMatch::Host("*.example.com".to_owned()),
                    RouteMatch::PathPrefix(vec!["/api/".to_owned()]),
                    RouteMatch::Path(vec!["/exact".to_owned()]),
                ],
                action: RouteAction::Upstream("backend".to_owned()),
                service_type: ServiceType::Web,
                retry_policy: None,
                policies: Default::default(),
            },
            RouteConfig {
                scope: None,
                extras: None,
                name: "health".to_owned(),
                priority: PRIORITY_NORMAL,
                matches: vec![RouteMatch::Path(vec!["/health".to_owned()])],
                action: RouteAction::Static(StaticResponse {
                    status: 200,
                    body: "ok".to_owned(),
                    content_type: "text/plain".to_owned(),
                }),
                service_type: ServiceType::Web,
                retry_policy: None,
                policies: Default::default(),
            },
            RouteConfig {
                scope: None,
                extras: None,
                name: "fallback".to_owned(),
                priority: PRIORITY_LOW,
                matches: vec![],
                action: RouteAction::Static(StaticResponse {
                    status: 404,
                    body: String::new(),
                    content_type: "text/plain".to_owned(),
                }),
                service_type: ServiceType::Web,
                retry_policy: None,
                policies: Default::default(),
            },
        ],
        upstreams: vec![
            UpstreamConfig {
                name: "backend".to_owned(),
                targets: vec![
                    UpstreamTarget {
                        address: "127.0.0.1:9001".to_owned(),
                        weight: 1,
                    },
                    UpstreamTarget {
                        address: "127.0.0.1:9002".to_owned(),
                        weight: 3,
                    },
                    UpstreamTarget {
                        address: "[::1]:9003".to_owned(),
                        weight: 1,
                    },
                ],
                load_balancing: LoadBalancing::RoundRobin,
                sticky: None,
                pool: ConnectionPool {
                    max_idle: 16,
                    idle_timeout_secs: 90,
                    ..ConnectionPool::default()
                },
                timeouts: UpstreamTimeouts {
                    connect_secs: 2,
                    read_secs: 45,
                    ..UpstreamTimeouts::default()
                },
                health_check: None,
                passive_health: PassiveHealth::default(),
                circuit_breaker: Some(CircuitBreakerConfig::default()),
                tls: None,
                http: UpstreamHttp::default(),
            },
            UpstreamConfig {
                name: "db".to_owned(),
                targets: vec![UpstreamTarget {
                    address: "127.0.0.1:5432".to_owned(),
                    weight: 1,
                }],
                load_balancing: LoadBalancing::LeastConnections,
                sticky: None,
                pool: ConnectionPool::default(),
                timeouts: UpstreamTimeouts::default(),
                health_check: None,
                passive_health: PassiveHealth::default(),
                circuit_breaker: Some(CircuitBreakerConfig::default()),
                tls: None,
                http: UpstreamHttp::default(),
            },
        ],
        limits: Limits {
            max_header_size_bytes: 16384,
            max_header_count: 50,
            max_body_size_bytes: 1_048_576,
            ..Limits::default()
        },
        filters: Vec::new(),
    };
    assert_eq!(config, expected);
}

#[test]
fn absent_sections_take_model_defaults() {
    let config = ok(BASE);
    assert_eq!(config.system, SystemConfig::default());
    assert_eq!(config.limits, Limits::default());
    assert!(config.routes.is_empty());
    assert_eq!(config.listeners[0].backlog, DEFAULT_BACKLOG);
    assert_eq!(config.listeners[0].request_timeout_secs, 60);
    assert_eq!(config.listeners[0].keepalive_timeout_secs, 75);
    assert_eq!(config.listeners[0].protocol, ListenerProtocol::Http);
}

#[test]
fn embedded_default_parses() {
    let (config, name) = load_config(None).expect("embedded default must be valid");
    assert_eq!(name, DEFAULT_CONFIG_NAME);
    assert_eq!(config.system.worker_processes, 0);
    assert_eq!(config.listeners.len(), 1);
    let listener = &config.listeners[0];
    assert_eq!(listener.name, "http");
    assert_eq!(listener.address, "127.0.0.1:8080");
    assert_eq!(listener.protocol, ListenerProtocol::Http);
    let default_route = listener.default_route.as_deref().expect("default route");
    let route = config
        .routes
        .iter()
        .find(|r| r.name == default_route)
        .expect("default route exists");
    assert_eq!(
        route.action,
        RouteAction::Static(StaticResponse {
            status: 200,
            body: "Zentinel is running\n".to_owned(),
            content_type: "text/plain".to_owned(),
        })
    );
}

#[test]
fn load_config_reads_a_file_and_reports_unreadable_ones() {
    let dir = std::env::temp_dir().join(format!("zentinel-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("zentinel.kdl");
    std::fs::write(&path, FULL_EXAMPLE).unwrap();
    let (config, name) = load_config(Some(&path)).unwrap();
    assert_eq!(name, path.display().to_string());
    assert_eq!(config.listeners.len(), 2);

    let missing = dir.join("missing.kdl");
    let errs = load_config(Some(&missing)).unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].file, missing.display().to_string());
    assert!(errs[0].message.contains("No such file"), "{}", errs[0]);
    assert!(errs[0]
        .to_string()
        .starts_with(&format!("{}: cannot read", missing.display())));

    std::fs::write(&path, "system { worker-processes \"two\"; }\n").unwrap();
    let errs = load_config(Some(&path)).unwrap_err();
    assert!(errs.iter().all(|e| e.file == path.display().to_string()));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn display_format() {
    let d = ConfigDiagnostic {
        file: "z.kdl".to_owned(),
        line: 3,
        column: 5,
        node: "backlog".to_owned(),
        message: "expected an integer".to_owned(),
    };
    assert_eq!(d.to_string(), "z.kdl:3:5: `backlog`: expected an integer");
}

#[test]
fn kdl_v1_file_parses() {
    // v1-only syntax: r"..." raw strings.
    let source = r##"listeners {
    listener "http" {
        address "127.0.0.1:8080"
        default-route "root"
    }
}
routes {
    route "root" {
        static-response status=200 body=r#"say "hi""#
    }
}
"##;
    let config = ok(source);
    assert_eq!(
        config.routes[0].action,
        RouteAction::Static(StaticResponse {
            status: 200,
            body: "say \"hi\"".to_owned(),
            content_type: "text/plain".to_owned(),
        })
    );
}

#[test]
fn kdl_v2_file_parses() {
    // v2-only syntax: bare identifier strings, #"..."# raw strings, #true.
    let source = r##"listeners {
    listener http {
        address "127.0.0.1:8080"
        protocol http
    }
}
routes {
    route root {
        priority critical
        static-response status=200 body=#"say "hi""#
    }
}
"##;
    let config = ok(source);
    assert_eq!(config.listeners[0].name, "http");
    assert_eq!(config.routes[0].priority, PRIORITY_CRITICAL);
    assert_eq!(
        config.routes[0].action,
        RouteAction::Static(StaticResponse {
            status: 200,
            body: "say \"hi\"".to_owned(),
            content_type: "text/plain".to_owned(),
        })
    );
}

#[test]
fn v1_booleans_parse_in_a_v1_file() {
    // The boolean sits in a node we do not support yet: the file must still parse as KDL and
    // yield only that one diagnostic.
    let source = format!("{BASE}waf {{\n    enabled true;\n}}\n");
    let errs = errors(&source);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_diag(&errs, 4, 1, "waf", "`waf` is not supported yet");
}

#[test]
fn v1_and_v2_booleans_mixed_in_one_file() {
    // `true` (v1) and `#false` (v2) together: neither parser accepts this alone. The error on
    // the last line sits after the rewritten keywords, so its column proves offsets map back.
    let source = "waf { enabled true; strict #false; log null; }\n\
                  listeners {\n    listener \"http\" { address \"127.0.0.1:8080\"; }\n}\n\
                  system { sandbox true; worker-processes \"two\"; }\n";
    let errs = errors(source);
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert_diag(&errs, 1, 1, "waf", "`waf` is not supported yet");
    assert_diag(
        &errs,
        5,
        10,
        "sandbox",
        "unknown node `sandbox` in `system`",
    );
    assert_diag(
        &errs,
        5,
        41,
        "worker-processes",
        "expected an integer, found the string \"two\"",
    );
}

#[test]
fn syntax_errors_carry_their_position() {
    let source = "system {\n    worker-processes 2\n    max-connections \"100\n}\n";
    let errs = errors(source);
    assert!(!errs.is_empty());
    assert!(
        errs.iter().all(|e| e.message.starts_with("syntax error")),
        "{errs:?}"
    );
    assert_diag(&errs, 3, 21, "max-connections", "syntax error");

    let errs = errors("system {\n    worker-processes 2\n");
    assert!(
        errs.iter().all(|e| e.message.starts_with("syntax error")),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.line == 1 && e.column == 8),
        "{errs:?}"
    );
}

#[test]
fn unknown_nodes_are_reported_with_suggestions() {
    let source = "listeners {\n    listener \"http\" {\n        address \"127.0.0.1:8080\"\n        backlgo 10\n        frobnicate 1\n    }\n}\nsytem { }\n";
    let errs = errors(source);
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert_diag(
        &errs,
        4,
        9,
        "backlgo",
        "unknown node `backlgo` in `listener` (did you mean `backlog`?)",
    );
    let frob = errs.iter().find(|e| e.node == "frobnicate").unwrap();
    assert_eq!((frob.line, frob.column), (5, 9));
    assert_eq!(frob.message, "unknown node `frobnicate` in `listener`");
    assert_diag(
        &errs,
        8,
        1,
        "sytem",
        "unknown node `sytem` at the top level (did you mean `system`?)",
    );
}

#[test]
fn unsupported_nodes_are_distinct_from_unknown_ones() {
    let source = format!("{BASE}waf {{ }}\nrate-limit {{ }}\n");
    let errs = errors(&source);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert_diag(&errs, 4, 1, "waf", "`waf` is not supported yet");
    assert_diag(
        &errs,
        5,
        1,
        "rate-limit",
        "`rate-limit` is not supported yet",
    );
    assert!(errs.iter().all(|e| !e.message.contains("unknown")));

    let errs = errors("listeners {\n    listener \"https\" {\n        address \"127.0.0.1:8443\"\n        tls {\n            acme { email \"a@b.c\"; }\n            ocsp-stapling #true\n        }\n    }\n}\n");
    assert_diag(&errs, 5, 13, "acme", "`acme` is not supported yet");
    assert!(errs.iter().all(|e| e.node != "ocsp-stapling"), "{errs:?}");
}

/// A certificate and key for `names`, written as PEM into a fresh directory.
fn write_cert(dir: &std::path::Path, stem: &str, names: &[&str]) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let ck = rcgen::generate_simple_self_signed(names).unwrap();
    std::fs::write(dir.join(format!("{stem}.crt")), ck.cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{stem}.key")), ck.key_pair.serialize_pem()).unwrap();
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("zentinel-config-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn tls_listener_with_sni_and_relative_paths() {
    let dir = temp_dir("tls-ok");
    write_cert(&dir, "default", &["localhost"]);
    write_cert(&dir, "api", &["api.example.com", "*.api.example.com"]);
    let file = dir.join("zentinel.kdl");
    let source = r#"listeners {
    listener "https" {
        address "127.0.0.1:8443"
        protocol "https"
        tls {
            cert-file "default.crt"
            key-file "default.key"
            min-version "1.3"
            sni {
                hostnames "API.example.com" "*.api.example.com"
                cert-file "api.crt"
                key-file "api.key"
            }
        }
    }
}
"#;
    let config = parse_config(source, file.to_str().unwrap()).unwrap();
    let tls = config.listeners[0].tls.clone().unwrap();
    assert_eq!(config.listeners[0].protocol, ListenerProtocol::Http);
    assert_eq!(tls.cert_file, dir.join("default.crt").display().to_string());
    assert_eq!(tls.key_file, dir.join("default.key").display().to_string());
    assert_eq!(tls.min_version, TlsVersion::Tls13);
    assert_eq!(tls.max_version, None);
    assert_eq!(
        tls.additional_certs,
        vec![SniCertificate {
            hostnames: vec!["api.example.com".into(), "*.api.example.com".into()],
            cert_file: dir.join("api.crt").display().to_string(),
            key_file: dir.join("api.key").display().to_string(),
            ocsp_response: None,
        }]
    );
    // The worker side builds a server configuration from exactly this.
    zentinel_worker::tls::server_config(
        &tls,
        &Resumption::new(SharedTicketer::new(&Default::default())),
    )
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// `assert_diag` for a configuration read from a real file (whose name is not `test.kdl`).
#[track_caller]
fn assert_tls_diag(
    errs: &[ConfigDiagnostic],
    line: usize,
    column: usize,
    node: &str,
    needle: &str,
) {
    let found = errs
        .iter()
        .filter(|e| {
            e.line == line && e.column == column && e.node == node && e.message.contains(needle)
        })
        .count();
    assert_eq!(
        found, 1,
        "expected {line}:{column} `{node}` {needle:?}; got {errs:#?}"
    );
}

#[test]
fn tls_file_problems_point_at_the_line() {
    let dir = temp_dir("tls-bad");
    write_cert(&dir, "a", &["a.test"]);
    write_cert(&dir, "b", &["b.test"]);
    std::fs::write(dir.join("garbage.crt"), "hello\n").unwrap();
    let file = dir.join("zentinel.kdl");
    let file = file.to_str().unwrap();
    let listener = |body: &str| {
        format!("listeners {{\n    listener \"s\" {{\n        address \"127.0.0.1:8443\"\n        tls {{\n{body}        }}\n    }}\n}}\n")
    };
    let errs = |source: String| match parse_config(&source, file) {
        Ok(c) => panic!("expected errors, got {c:#?}"),
        Err(e) => e,
    };
    // Missing certificate file: named, with its line.
    let e = errs(listener(
        "            cert-file \"missing.crt\"\n            key-file \"a.key\"\n",
    ));
    assert_eq!(e.len(), 1, "{e:?}");
    let missing = dir.join("missing.crt").display().to_string();
    assert_tls_diag(
        &e,
        5,
        23,
        "cert-file",
        &format!("cannot read certificate file {missing}"),
    );
    // Not PEM.
    let e = errs(listener(
        "            cert-file \"garbage.crt\"\n            key-file \"a.key\"\n",
    ));
    assert_tls_diag(&e, 5, 23, "cert-file", "no certificate");
    // Key of another certificate.
    let e = errs(listener(
        "            cert-file \"a.crt\"\n            key-file \"b.key\"\n",
    ));
    assert_tls_diag(&e, 6, 22, "key-file", "does not match the certificate");
    // A missing key file, and the key file line.
    let e = errs(listener(
        "            cert-file \"a.crt\"\n            key-file \"nope.key\"\n",
    ));
    assert_tls_diag(&e, 6, 22, "key-file", "cannot read key file");
    // Missing keys, old versions, https without tls, tls on tcp.
    let e = errs(listener("            min-version \"1.1\"\n"));
    assert_tls_diag(&e, 5, 25, "min-version", "TLS 1.1 is not supported");
    assert_tls_diag(&e, 4, 9, "tls", "has no `cert-file`");
    assert_tls_diag(&e, 4, 9, "tls", "has no `key-file`");
    let e = errs("listeners {\n    listener \"s\" {\n        address \"127.0.0.1:8443\"\n        protocol \"https\"\n    }\n}\n".to_owned());
    assert_tls_diag(&e, 4, 18, "protocol", "has no `tls");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn wrong_argument_types_and_counts() {
    let source = format!(
        "{BASE}system {{\n    worker-processes \"two\"\n    max-connections 1.5\n    graceful-shutdown-timeout-secs\n    control-socket \"a\" \"b\"\n}}\n"
    );
    let errs = errors(&source);
    assert_eq!(errs.len(), 4, "{errs:?}");
    assert_diag(
        &errs,
        5,
        22,
        "worker-processes",
        "expected an integer, found the string \"two\"",
    );
    let wp = errs.iter().find(|e| e.node == "worker-processes").unwrap();
    assert_eq!(
        wp.to_string(),
        "test.kdl:5:22: `worker-processes`: expected an integer, found the string \"two\""
    );
    assert_diag(
        &errs,
        6,
        21,
        "max-connections",
        "expected an integer, found the number 1.5",
    );
    assert_diag(
        &errs,
        7,
        5,
        "graceful-shutdown-timeout-secs",
        "missing value",
    );
    assert_diag(
        &errs,
        8,
        24,
        "control-socket",
        "expected exactly one value, found 2",
    );
}

#[test]
fn out_of_range_values() {
    let source = format!(
        "{BASE}system {{ worker-processes -1; }}\nlimits {{ max-header-count 0; }}\nroutes {{\n    route \"r\" {{ static-response status=700; }}\n}}\nupstreams {{\n    upstream \"u\" {{ target \"127.0.0.1:1\" weight=0; }}\n}}\n"
    );
    let errs = errors(&source);
    assert_eq!(errs.len(), 4, "{errs:?}");
    assert_diag(
        &errs,
        4,
        27,
        "worker-processes",
        "must be at least 0, found -1",
    );
    assert_diag(
        &errs,
        5,
        27,
        "max-header-count",
        "must be at least 1, found 0",
    );
    assert_diag(
        &errs,
        7,
        33,
        "static-response",
        "property `status` must be at most 599, found 700",
    );
    assert_diag(
        &errs,
        10,
        41,
        "target",
        "property `weight` must be at least 1, found 0",
    );
}

#[test]
fn unknown_properties() {
    let source = format!(
        "{BASE}upstreams {{\n    upstream \"u\" {{ target \"127.0.0.1:1\" wieght=2; }}\n}}\nroutes {{\n    route \"r\" {{ upstream \"u\"; static-response status=200; }}\n    route \"s\" {{ static-response status=200 type=\"x\"; }}\n}}\n"
    );
    let errs = errors(&source);
    assert_diag(
        &errs,
        5,
        41,
        "target",
        "unknown property `wieght` (did you mean `weight`?)",
    );
    assert_diag(&errs, 8, 31, "static-response", "already has an action");
    assert_diag(&errs, 9, 44, "static-response", "unknown property `type`");
    assert_eq!(errs.len(), 3, "{errs:?}");
}

#[test]
fn missing_required_values() {
    let source = "listeners {\n    listener \"a\" { protocol \"http\"; }\n    listener { address \"127.0.0.1:1\"; }\n}\nroutes {\n    route \"r\" { static-response body=\"x\"; }\n    route \"n\" { priority \"high\"; }\n}\nupstreams {\n    upstream \"u\" { }\n}\n";
    let errs = errors(source);
    assert_diag(&errs, 2, 5, "listener", "listener `a` has no `address`");
    assert_diag(&errs, 3, 5, "listener", "missing name");
    assert_diag(&errs, 6, 17, "static-response", "missing `status`");
    assert_diag(&errs, 7, 5, "route", "route `n` has no action");
    assert_diag(&errs, 10, 5, "upstream", "upstream `u` has no `target`");
    assert_eq!(errs.len(), 5, "{errs:?}");
}

#[test]
fn invalid_values() {
    let source = "listeners {\n    listener \"a\" { address \"localhost:80\"; protocol \"udp\"; }\n}\nroutes {\n    route \"r\" {\n        priority \"urgent\"\n        matches { path-prefix \"api\"; host \"a.*.com\"; }\n        static-response status=200\n    }\n}\n";
    let errs = errors(source);
    assert_diag(
        &errs,
        2,
        28,
        "address",
        "invalid socket address \"localhost:80\"",
    );
    assert_diag(&errs, 2, 53, "protocol", "unknown protocol \"udp\"");
    assert_diag(&errs, 6, 18, "priority", "unknown priority \"urgent\"");
    assert_diag(&errs, 7, 31, "path-prefix", "must start with '/'");
    assert_diag(&errs, 7, 43, "host", "invalid host \"a.*.com\"");
    assert_eq!(errs.len(), 5, "{errs:?}");
}

#[test]
fn duplicate_names_and_addresses() {
    let source = "listeners {\n    listener \"a\" { address \"127.0.0.1:8080\"; }\n    listener \"a\" { address \"127.0.0.1:8081\"; }\n    listener \"b\" { address \"127.0.0.1:8080\"; }\n    listener \"c\" { address \"0.0.0.0:8081\"; }\n}\nroutes {\n    route \"r\" { static-response status=200; }\n    route \"r\" { static-response status=201; }\n}\nupstreams {\n    upstream \"u\" { target \"127.0.0.1:1\"; }\n    upstream \"u\" { target \"127.0.0.1:2\"; }\n}\n";
    let errs = errors(source);
    assert_diag(
        &errs,
        3,
        14,
        "listener",
        "duplicate listener name `a` (first defined at line 2)",
    );
    assert_diag(
        &errs,
        4,
        28,
        "address",
        "address 127.0.0.1:8080 is already used by listener `a` (line 2)",
    );
    assert_diag(
        &errs,
        5,
        28,
        "address",
        "overlaps listener `a` on 127.0.0.1:8081 (line 3)",
    );
    assert_diag(
        &errs,
        9,
        11,
        "route",
        "duplicate route name `r` (first defined at line 8)",
    );
    assert_diag(
        &errs,
        13,
        14,
        "upstream",
        "duplicate upstream name `u` (first defined at line 12)",
    );
    assert_eq!(errs.len(), 5, "{errs:?}");
}

#[test]
fn dangling_references_and_tcp_without_upstream() {
    let source = "listeners {\n    listener \"a\" { address \"127.0.0.1:8080\"; default-route \"fallbak\"; }\n    listener \"t\" { address \"127.0.0.1:5000\"; protocol \"tcp\"; }\n    listener \"d\" { address \"127.0.0.1:5001\"; protocol \"tcp\"; upstream \"nope\"; }\n}\nroutes {\n    route \"fallback\" { upstream \"bakend\"; }\n}\nupstreams {\n    upstream \"backend\" { target \"127.0.0.1:1\"; }\n}\n";
    let errs = errors(source);
    assert_diag(
        &errs,
        2,
        60,
        "default-route",
        "names route `fallbak`, which is not defined in `routes` (did you mean `fallback`?)",
    );
    assert_diag(
        &errs,
        3,
        5,
        "listener",
        "tcp listener `t` has no `upstream`",
    );
    assert_diag(
        &errs,
        4,
        71,
        "upstream",
        "listener `d` names upstream `nope`, which is not defined",
    );
    assert_diag(&errs, 7, 33, "upstream", "route `fallback` names upstream `bakend`, which is not defined in `upstreams` (did you mean `backend`?)");
    assert_eq!(errs.len(), 4, "{errs:?}");
}

#[test]
fn protocol_specific_keys_are_checked() {
    let source = "listeners {\n    listener \"h\" { address \"127.0.0.1:8080\"; upstream \"u\"; }\n    listener \"t\" { address \"127.0.0.1:5000\"; protocol \"tcp\"; upstream \"u\"; default-route \"r\"; }\n}\nupstreams {\n    upstream \"u\" { target \"127.0.0.1:1\"; }\n}\n";
    let errs = errors(source);
    assert_diag(&errs, 2, 46, "upstream", "only valid on tcp listeners");
    assert_diag(
        &errs,
        3,
        76,
        "default-route",
        "only valid on http listeners",
    );
    assert_eq!(errs.len(), 2, "{errs:?}");
}

#[test]
fn no_listener_is_an_error() {
    let errs = errors("system { worker-processes 1; }\n");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_diag(&errs, 1, 1, "listeners", "no listener configured");
}

#[test]
fn all_errors_are_listed_together_in_file_order() {
    let source = "waf { }\nsystem {\n    worker-processes \"two\"\n    bogus 1\n}\nlisteners {\n    listener \"a\" { address \"nope\"; }\n}\n";
    let errs = errors(source);
    let positions: Vec<_> = errs
        .iter()
        .map(|e| (e.line, e.column, e.node.as_str()))
        .collect();
    assert_eq!(
        positions,
        vec![
            (1, 1, "waf"),
            (3, 22, "worker-processes"),
            (4, 5, "bogus"),
            (7, 28, "address")
        ]
    );
}

#[test]
fn duplicate_singleton_keys() {
    let source = format!("{BASE}system {{\n    worker-processes 1\n    worker-processes 2\n}}\n");
    let errs = errors(&source);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_diag(
        &errs,
        6,
        5,
        "worker-processes",
        "duplicate `worker-processes` (first set at line 5)",
    );
}

#[test]
fn routes_are_ordered_by_priority_then_file_order() {
    let source = format!(
        "{BASE}routes {{\n    route \"n1\" {{ static-response status=200; }}\n    route \"l1\" {{ priority \"low\"; static-response status=200; }}\n    route \"c1\" {{ priority \"critical\"; static-response status=200; }}\n    route \"h1\" {{ priority \"high\"; static-response status=200; }}\n    route \"n2\" {{ priority \"normal\"; static-response status=200; }}\n    route \"c2\" {{ priority \"critical\"; static-response status=200; }}\n    route \"l2\" {{ priority \"low\"; static-response status=200; }}\n}}\n"
    );
    let config = ok(&source);
    let names: Vec<_> = config.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["c1", "c2", "h1", "n1", "n2", "l1", "l2"]);
}

#[test]
fn columns_count_characters_not_bytes() {
    let source =
        format!("// configuración é\n{BASE}system {{ /* ñ */ worker-processes \"two\"; }}\n");
    let errs = errors(&source);
    assert_diag(&errs, 5, 35, "worker-processes", "expected an integer");
}

#[test]
fn keyword_rewrite_skips_strings_and_comments() {
    let (text, inserted) = super::kdl_parse::rewrite_v1_keywords(
        "a true \"true\" r#\"null\"# #\"false\"# // true\n/* null /* true */ */ b=false #true (t)null trueish\n",
    )
    .unwrap();
    assert_eq!(
        text,
        "a #true \"true\" r#\"null\"# #\"false\"# // true\n/* null /* true */ */ b=#false #true (t)#null trueish\n"
    );
    assert_eq!(inserted.len(), 3);
    assert!(super::kdl_parse::rewrite_v1_keywords("a #true \"true\"\n").is_none());
}

/// BASE plus one upstream whose body (after its target) is `body`; the body starts on line 5.
fn upstream_with(body: &str) -> String {
    format!("{BASE}upstreams {{\n    upstream \"u\" {{\n        target \"127.0.0.1:9001\"\n{body}\n    }}\n}}\n")
}

#[test]
fn health_check_in_the_issue_syntax_parses() {
    // The exact form of the Zentinel configs (KDL v1 `;` separators inside one line).
    let config = ok(&upstream_with(
        r#"        health-check { type "http" { path "/health"; expected-status 200; }; interval-secs 5; }"#,
    ));
    let upstream = &config.upstreams[0];
    assert_eq!(
        upstream.health_check,
        Some(HealthCheck {
            kind: HealthCheckKind::Http {
                path: "/health".to_owned(),
                expected_status: 200,
                host: None,
            },
            interval_secs: 5,
            timeout_secs: 2,
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        })
    );
    assert_eq!(
        upstream.passive_health,
        PassiveHealth {
            max_fails: 1,
            fail_timeout_secs: 10
        }
    );
}

#[test]
fn health_check_every_key_and_v2_syntax() {
    let config = ok(&upstream_with(
        r#"        health-check {
            type http {
                path "/ready?deep=1"
                expected-status 204
                host "api.internal"
            }
            interval-secs 7
            timeout-secs 3
            healthy-threshold 1
            unhealthy-threshold 4
        }
        passive-health { max-fails 5; fail-timeout-secs 30; }"#,
    ));
    let upstream = &config.upstreams[0];
    assert_eq!(
        upstream.health_check,
        Some(HealthCheck {
            kind: HealthCheckKind::Http {
                path: "/ready?deep=1".to_owned(),
                expected_status: 204,
                host: Some("api.internal".to_owned()),
            },
            interval_secs: 7,
            timeout_secs: 3,
            healthy_threshold: 1,
            unhealthy_threshold: 4,
        })
    );
    assert_eq!(
        upstream.passive_health,
        PassiveHealth {
            max_fails: 5,
            fail_timeout_secs: 30
        }
    );

    let config = ok(&upstream_with(
        "        health-check { type \"tcp\"; }\n        passive-health { max-fails 0; }",
    ));
    let check = config.upstreams[0].health_check.as_ref().unwrap();
    assert_eq!(check.kind, HealthCheckKind::Tcp);
    assert_eq!(check.interval_secs, 10);
    assert_eq!(config.upstreams[0].passive_health.max_fails, 0);
}

#[test]
fn health_check_errors_name_the_line() {
    let errs = errors(&upstream_with(
        r#"        health-check { type "http" { path "health"; }; }"#,
    ));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_diag(&errs, 7, 43, "path", "must start with `/`");

    let errs = errors(&upstream_with(
        r#"        health-check { type "http" { path "/h"; expected-status 600; }; }"#,
    ));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_diag(&errs, 7, 65, "expected-status", "at most 599");

    let errs = errors(&upstream_with(
        r#"        health-check { type "tcp"; interval-secs 0; }"#,
    ));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_diag(&errs, 7, 50, "interval-secs", "at least 1");

    let errs = errors(&upstream_with(
        r#"        health-check { interval-secs 5; }"#,
    ));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_diag(&errs, 7, 9, "health-check", "missing `type`");

    let errs = errors(&upstream_with(r#"        health-check { type "grpc"; }"#));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_diag(
        &errs,
        7,
        29,
        "type",
        "health check type \"grpc\" is not supported yet",
    );

    let errs = errors(&upstream_with(r#"        health-check { type "http"; }"#));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_diag(&errs, 7, 24, "type", "needs a `path`");

    let errs = errors(&upstream_with(
        r#"        health-check { type "http" { path "/x"; expect 200; }; healthy-threshold 0; }"#,
    ));
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert_diag(&errs, 7, 49, "expect", "unknown node `expect`");
    assert_diag(&errs, 7, 82, "healthy-threshold", "at least 1");

    let errs = errors(&upstream_with(
        "        health-check { type \"tcp\"; }\n        health-check { type \"tcp\"; }",
    ));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_diag(&errs, 8, 9, "health-check", "duplicate `health-check`");

    let errs = errors(&upstream_with(
        "        passive-health { max-fails -1; fail-timeout-secs 0; fails 2; }",
    ));
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert_diag(&errs, 7, 36, "max-fails", "at least 0");
    assert_diag(&errs, 7, 58, "fail-timeout-secs", "at least 1");
    assert_diag(&errs, 7, 61, "fails", "unknown node `fails`");
}

// ---------------------------------------------------------------------------------------------
// observability
// ---------------------------------------------------------------------------------------------

fn full(source: &str) -> FullConfig {
    match parse_full_config(source, "test.kdl") {
        Ok(config) => config,
        Err(errs) => panic!("expected success, got {errs:#?}"),
    }
}

#[test]
fn observability_is_off_by_default() {
    let config = full(BASE);
    assert_eq!(config.metrics, None);
    assert!(config
        .proxy
        .listeners
        .iter()
        .all(|l| l.access_log.is_none()));
}

#[test]
fn observability_metrics_and_access_log() {
    // v1 booleans (`true`) and v2 (`#true`) both read.
    let source = format!(
        "{BASE}listeners {{ listener \"db\" {{ address \"127.0.0.1:5433\"; protocol \"tcp\"; upstream \"u\"; }} }}\n\
         upstreams {{ upstream \"u\" {{ target \"127.0.0.1:1\"; }} }}\n\
         observability {{\n\
             metrics {{ enabled true; address \"127.0.0.1:9464\"; path \"/prom\"; }}\n\
             logging {{ access-log {{ enabled #true; file \"/var/log/z/access.log\"; format \"$remote_addr $status\"; }} }}\n\
         }}\n"
    );
    let config = full(&source);
    assert_eq!(
        config.metrics,
        Some(MetricsConfig {
            address: "127.0.0.1:9464".to_owned(),
            path: "/prom".to_owned()
        })
    );
    let http = &config.proxy.listeners[0];
    assert_eq!(
        http.access_log,
        Some(AccessLogConfig {
            format: "$remote_addr $status".to_owned(),
            ..AccessLogConfig::with_file("/var/log/z/access.log".to_owned())
        })
    );
    // TCP listeners have no requests to log.
    assert_eq!(config.proxy.listeners[1].access_log, None);
}

#[test]
fn observability_defaults_and_disabled() {
    let source = format!(
        "{BASE}observability {{ metrics {{ }}; logging {{ access-log {{ file \"/tmp/a.log\"; }} }} }}\n"
    );
    let config = full(&source);
    assert_eq!(
        config.metrics,
        Some(MetricsConfig {
            address: DEFAULT_METRICS_ADDRESS.to_owned(),
            path: DEFAULT_METRICS_PATH.to_owned()
        })
    );
    assert_eq!(
        config.proxy.listeners[0]
            .access_log
            .as_ref()
            .map(|a| a.format.as_str()),
        Some("json")
    );
    let source = format!(
        "{BASE}observability {{ metrics {{ enabled #false; }}; logging {{ access-log {{ enabled #false; }} }} }}\n"
    );
    let config = full(&source);
    assert_eq!(config.metrics, None);
    assert_eq!(config.proxy.listeners[0].access_log, None);
}

#[test]
fn observability_errors_are_located() {
    let source = format!(
        "{BASE}observability {{\n\
             metrics {{ address \"127.0.0.1:8080\"; path \"metrics\"; high-cardinality #true; }}\n\
             logging {{ level \"loud\"; access-log {{ file \"relative.log\"; format \"$nope\"; }} }}\n\
             tracing {{ }}\n\
         }}\n"
    );
    let errs = errors(&source);
    let messages: Vec<String> = errs.iter().map(ToString::to_string).collect();
    let has = |needle: &str| {
        assert!(
            messages.iter().any(|m| m.contains(needle)),
            "no diagnostic containing {needle:?} in {messages:#?}"
        )
    };
    has("test.kdl:5:");
    has("metrics address 127.0.0.1:8080 overlaps listener `http`");
    has("metrics path \"metrics\" must start with `/`");
    has("test.kdl:6:");
    has("invalid log level \"loud\"");
    has("must be an absolute path");
    has("unknown access-log variable `$nope`");
    has("test.kdl:7:1: `tracing`");
    has("`tracing` is not supported yet");
    // Without `file`, upstream Zentinel's default file.
    let source =
        format!("{BASE}observability {{ logging {{ access-log {{ format \"common\"; }} }} }}\n");
    let config = ok(&source);
    let access_log = config.listeners[0].access_log.as_ref().unwrap();
    assert_eq!(access_log.file, "/var/log/zentinel/access.log");
    assert_eq!(access_log.format, "common");
}
