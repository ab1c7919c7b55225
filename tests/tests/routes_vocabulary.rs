//! Upstream Zentinel's route vocabulary on real processes: method, header, query-param and
//! path-regex conditions choosing backends, integer priorities, builtin handlers and JSON
//! errors for api routes.

use std::time::Duration;

use serde_json::Value;
use zentinel_tests::*;

/// Sends `head` (request line and headers, no blank line) with `Connection: close`.
fn request(z: &Zentinel, head: &str) -> Response {
    let mut c = z.client();
    c.send(format!("{head}\r\nConnection: close\r\n\r\n").as_bytes());
    c.read_response()
}

fn get(z: &Zentinel, path: &str) -> Response {
    request(z, &format!("GET {path} HTTP/1.1\r\nHost: routes.test"))
}

/// Which backend (or `static:BODY` / `status:N`) answered.
fn served_by(r: &Response) -> String {
    match r.backend() {
        Some(b) => b.to_owned(),
        None if r.status == 200 => format!("static:{}", r.body_str()),
        None => format!("status:{}", r.status),
    }
}

fn json(r: &Response) -> Value {
    serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", r.body_str()))
}

fn upstream(name: &str, targets: &[String]) -> String {
    let targets: String = targets
        .iter()
        .map(|t| format!("        target \"{t}\"\n"))
        .collect();
    format!("    upstream \"{name}\" {{\n{targets}    }}\n")
}

#[test]
fn conditions_and_priorities_choose_the_backend() {
    let backends: Vec<Backend> = [
        "method",
        "header",
        "header-value",
        "query",
        "regex",
        "prio",
        "rest",
    ]
    .iter()
    .map(|n| Backend::start(n))
    .collect();
    let upstreams: String = backends
        .iter()
        .zip([
            "method",
            "header",
            "header-value",
            "query",
            "regex",
            "prio",
            "rest",
        ])
        .map(|(b, n)| upstream(n, &[b.target()]))
        .collect();
    let port = free_port();
    let cfg = format!(
        r#"
system {{
    worker-processes 2
}}
listeners {{
    listener "http" {{
        address "127.0.0.1:{port}"
    }}
}}
routes {{
    route "rest" {{
        priority "low"
        matches {{ path-prefix "/"; }}
        upstream "rest"
    }}
    route "writes" {{
        priority 60
        matches {{ path-prefix "/m"; method "POST" "PUT"; }}
        upstream "method"
    }}
    route "tenant-blue" {{
        priority 70
        matches {{ path-prefix "/h"; header "X-Tenant" "blue"; }}
        upstream "header-value"
    }}
    route "tenant-any" {{
        priority 65
        matches {{ path-prefix "/h"; header "x-tenant"; }}
        upstream "header"
    }}
    route "preview" {{
        matches {{ path-prefix "/q"; query-param "preview"; query-param "lang" "en"; }}
        upstream "query"
    }}
    route "versioned" {{
        matches {{ path-regex "^/v[0-9]+/items$"; }}
        upstream "regex"
    }}
    route "prio-high" {{
        priority 500
        matches {{ path-prefix "/p"; }}
        upstream "prio"
    }}
    route "prio-low-first-in-file" {{
        priority 499
        matches {{ path-prefix "/p"; }}
        static-response status=200 body="lost"
    }}
}}
upstreams {{
{upstreams}}}
"#
    );
    let z = Zentinel::start(&cfg);
    let check = |head: &str, want: &str| {
        let r = request(&z, head);
        assert_eq!(served_by(&r), want, "{head}: {r:?}");
    };
    // method: any of the values on the node; others fall through to the low-priority route.
    check("POST /m HTTP/1.1\r\nHost: a\r\nContent-Length: 0", "method");
    check(
        "PUT /m/x HTTP/1.1\r\nHost: a\r\nContent-Length: 0",
        "method",
    );
    check("GET /m HTTP/1.1\r\nHost: a", "rest");
    // path-prefix on a segment boundary.
    check("POST /mx HTTP/1.1\r\nHost: a\r\nContent-Length: 0", "rest");
    // header: exact value first (higher priority), then presence, names case-insensitive.
    check(
        "GET /h HTTP/1.1\r\nHost: a\r\nx-TENANT: blue",
        "header-value",
    );
    check("GET /h HTTP/1.1\r\nHost: a\r\nX-Tenant: green", "header");
    check("GET /h HTTP/1.1\r\nHost: a\r\nX-Tenant: Blue", "header");
    check("GET /h HTTP/1.1\r\nHost: a", "rest");
    // query-param: both conditions must hold; values are form-decoded.
    check("GET /q?preview&lang=en HTTP/1.1\r\nHost: a", "query");
    check("GET /q?lang=%65n&preview=1 HTTP/1.1\r\nHost: a", "query");
    check("GET /q?preview&lang=de HTTP/1.1\r\nHost: a", "rest");
    check("GET /q?lang=en HTTP/1.1\r\nHost: a", "rest");
    // path-regex on the path only.
    check("GET /v2/items?x=1 HTTP/1.1\r\nHost: a", "regex");
    check("GET /v2/items/1 HTTP/1.1\r\nHost: a", "rest");
    // Integer priorities: the higher one wins even though it is not first in the file.
    check("GET /p HTTP/1.1\r\nHost: a", "prio");
}

#[test]
fn builtin_handlers_answer_with_upstreams_shapes() {
    let backend = Backend::start("web");
    let dead_port = free_port();
    let port = free_port();
    let cfg = format!(
        r#"
system {{
    worker-processes 1
}}
listeners {{
    listener "http" {{
        address "127.0.0.1:{port}"
    }}
}}
routes {{
    route "status" {{ priority "critical"; matches {{ path "/status"; }}; service-type "builtin"; builtin-handler "status"; }}
    route "health" {{ priority "critical"; matches {{ path "/health" "/healthz"; }}; builtin-handler "health"; }}
    route "metrics" {{ priority "critical"; matches {{ path "/metrics"; }}; builtin-handler "metrics"; }}
    route "gone" {{ priority "critical"; matches {{ path-prefix "/gone"; }}; builtin-handler "not_found"; }}
    route "upstreams" {{ priority "critical"; matches {{ path "/upstreams"; }}; builtin-handler "upstreams"; }}
    route "config" {{ priority "critical"; matches {{ path "/config"; }}; builtin-handler "config"; }}
    route "api" {{ matches {{ path-prefix "/api"; }}; service-type "api"; upstream "dead"; }}
    route "web" {{ matches {{ path-prefix "/web"; }}; upstream "dead"; }}
    route "rest" {{ priority "low"; upstream "web"; }}
}}
upstreams {{
    upstream "web" {{ target "{}"; }}
    upstream "dead" {{ target "127.0.0.1:{dead_port}"; passive-health {{ max-fails 1; fail-timeout-secs 30; }}; }}
}}
"#,
        backend.target()
    );
    let z = Zentinel::start(&cfg);

    let r = get(&z, "/status");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(
        r.header("cache-control"),
        Some("no-cache, no-store, must-revalidate")
    );
    let v = json(&r);
    assert_eq!(v["status"], "ok");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        v["uptime"].as_str().is_some_and(|u| u.ends_with('s')),
        "{v}"
    );
    assert!(v["uptime_secs"].is_u64(), "{v}");
    assert!(
        v["instance_id"].is_string() && v["timestamp"].is_string(),
        "{v}"
    );
    // Upstream's field order is kept.
    let body = r.body_str();
    let pos = |k: &str| body.find(&format!("\"{k}\"")).unwrap_or(usize::MAX);
    assert!(
        pos("status") < pos("version") && pos("version") < pos("uptime"),
        "{body}"
    );

    for path in ["/health", "/healthz"] {
        let r = get(&z, path);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            r.header("content-type"),
            Some("application/json; charset=utf-8")
        );
        let v = json(&r);
        assert_eq!(v["status"], "healthy");
        assert!(v["timestamp"].is_string(), "{v}");
        assert!(
            !r.body_str().contains('\n'),
            "compact, as upstream: {:?}",
            r.body_str()
        );
    }

    let r = request(
        &z,
        "GET /gone/x HTTP/1.1\r\nHost: a\r\nX-Request-Id: req-42",
    );
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(r.header("x-request-id"), Some("req-42"));
    let v = json(&r);
    assert_eq!(v["error"], "Not Found");
    assert_eq!(v["status"], 404);
    assert_eq!(v["request_id"], "req-42");
    assert!(
        v["message"].is_string() && v["timestamp"].is_string(),
        "{v}"
    );

    let r = get(&z, "/config");
    assert_eq!(r.status, 200, "{r:?}");
    let v = json(&r);
    let config = &v["config"];
    let routes = config["routes"].as_array().expect("routes");
    let health = routes
        .iter()
        .find(|r| r["id"] == "health")
        .expect("health route");
    assert_eq!(health["builtin_handler"], "health");
    assert_eq!(health["service_type"], "builtin");
    assert_eq!(health["priority"], 1000);
    assert_eq!(
        health["matches"][0]["path"],
        serde_json::json!(["/health", "/healthz"])
    );
    let api = routes.iter().find(|r| r["id"] == "api").expect("api route");
    assert_eq!(api["service_type"], "api");
    assert_eq!(api["upstream"], "dead");
    assert_eq!(api["matches"][0]["path_prefix"], "/api");
    assert_eq!(config["upstreams"][0]["id"], "web");
    assert_eq!(
        config["upstreams"][0]["targets"][0]["address"],
        backend.target()
    );
    assert_eq!(
        config["listeners"][0]["address"],
        format!("127.0.0.1:{port}")
    );
    assert!(
        v["request_id"].is_string() && v["timestamp"].is_string(),
        "{v}"
    );

    // The proxy's own errors: JSON on an api route, plain text on a web route.
    let r = get(&z, "/api/x");
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    let v = json(&r);
    assert_eq!(
        (v["status"].as_u64(), v["title"].as_str()),
        (Some(502), Some("Bad Gateway"))
    );
    assert!(
        v["request_id"].is_string() && v["timestamp"].is_u64(),
        "{v}"
    );
    let r = get(&z, "/web/x");
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));

    // One worker, so its health view has seen the failures above: the dead target is out.
    let mut last = Value::Null;
    let seen = wait_until(Duration::from_secs(10), || {
        last = json(&get(&z, "/upstreams"));
        last["summary"]["unhealthy"] == 1
    });
    assert!(seen, "the dead target never showed as unhealthy: {last:#}");
    assert_eq!(last["summary"]["healthy"], 1);
    assert_eq!(last["summary"]["total_targets"], 2);
    assert_eq!(last["summary"]["total_upstreams"], 2);
    let dead = last["upstreams"]
        .as_array()
        .and_then(|u| u.iter().find(|u| u["id"] == "dead"))
        .expect("dead upstream");
    assert_eq!(dead["load_balancing"], "RoundRobin");
    assert_eq!(
        dead["targets"][0]["address"],
        format!("127.0.0.1:{dead_port}")
    );
    assert_eq!(dead["targets"][0]["status"], "unhealthy");
    assert_eq!(dead["targets"][0]["down_reason"], "passive");

    // Metrics: this worker's counters in Prometheus text, counting the requests above.
    let r = get(&z, "/metrics");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = r.body_str();
    assert!(
        text.contains("\nzentinel_up 1\n") || text.starts_with("# HELP zentinel_up"),
        "{text}"
    );
    let requests: u64 = text
        .lines()
        .find(|l| l.starts_with("zentinel_worker_requests_total{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no request counter in {text}"));
    assert!(requests >= 8, "{text}");
    assert!(text.contains(",class=\"5xx\"} "), "{text}");

    // Everything else still reaches the backend.
    assert_eq!(get(&z, "/other").backend(), Some("web"));
}
