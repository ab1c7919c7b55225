//! The pieces of upstream Zentinel's `config/examples/cors-headers.kdl` and
//! `rate-limiting-per-route.kdl` that issue 17 makes work: the same blocks, keys and values,
//! with loopback addresses. `zentinel --test` and `zentinel validate` accept them (the CORS
//! example's `agent` filter and `agents` block aside, which stay "not supported yet"), and the
//! running proxy does what they say: CORS preflights answered, per-route rate limits.

use std::fs;
use std::process::Command;
use std::time::Duration;

use zentinel_tests::curl::curl;
use zentinel_tests::*;

/// The CORS example: `public-cors` (a cors filter with upstream's defaults) on three routes
/// with explicit `response-headers` policies, the `auth` agent filter on the private one.
fn cors_example(http: u16, metrics: u16, api: &str, with_agent: bool) -> String {
    let (agent_filter, agents, private_filters) = if with_agent {
        (
            "filter \"auth\" {\n        type \"agent\"\n        agent \"auth\"\n        timeout-ms 100\n        failure-mode \"closed\"\n    }",
            "agents {\n    agent \"auth\" {\n        type \"auth\"\n        grpc address=\"http://localhost:50051\"\n        events \"request_headers\"\n        timeout-ms 100\n        failure-mode \"closed\"\n    }\n}",
            "\"public-cors\" \"auth\"",
        )
    } else {
        ("", "", "\"public-cors\"")
    };
    format!(
        r#"
system {{
    worker-threads 2
    max-connections 10000
    graceful-shutdown-timeout-secs 30
}}
listeners {{
    listener "http" {{
        address "127.0.0.1:{http}"
        protocol "http"
        request-timeout-secs 60
    }}
}}
filters {{
    filter "public-cors" {{
        type "cors"
    }}
    {agent_filter}
}}
{agents}
routes {{
    route "public-api" {{
        priority "high"
        matches {{
            path-prefix "/api/public"
            method "GET" "POST" "PUT" "DELETE" "OPTIONS"
        }}
        upstream "api"
        filters "public-cors"
        policies {{
            timeout-secs 30
            response-headers {{
                set {{
                    "Access-Control-Allow-Origin" "*"
                    "Access-Control-Allow-Methods" "GET, POST, PUT, DELETE, OPTIONS"
                    "Access-Control-Allow-Headers" "Content-Type, Authorization, X-Requested-With, X-API-Key"
                    "Access-Control-Expose-Headers" "X-Total-Count, X-Page-Count"
                    "Access-Control-Max-Age" "3600"
                }}
            }}
        }}
    }}
    route "private-api" {{
        priority "high"
        matches {{
            path-prefix "/api/private"
            method "GET" "POST" "PUT" "DELETE" "OPTIONS"
        }}
        upstream "api"
        filters {private_filters}
        policies {{
            timeout-secs 30
            failure-mode "closed"
            response-headers {{
                set {{
                    "Access-Control-Allow-Origin" "https://app.example.com"
                    "Access-Control-Allow-Credentials" "true"
                }}
            }}
        }}
    }}
    route "websocket" {{
        priority "high"
        matches {{
            path-prefix "/ws"
        }}
        upstream "api"
        filters "public-cors"
        websocket {{
            enabled #true
            ping-interval-secs 30
            ping-timeout-secs 10
            max-message-size-bytes 65536
        }}
    }}
    route "health" {{
        priority "critical"
        matches {{
            path "/health"
        }}
        builtin-handler "health"
    }}
}}
upstreams {{
    upstream "api" {{
        target "{api}" weight=1
        load-balancing "round-robin"
        health-check {{
            type "http" {{
                path "/health"
                expected-status 200
            }}
            interval-secs 10
            timeout-secs 5
            healthy-threshold 2
            unhealthy-threshold 3
        }}
    }}
}}
observability {{
    metrics {{
        enabled #true
        address "127.0.0.1:{metrics}"
        path "/metrics"
    }}
    logging {{
        level "info"
        format "json"
    }}
}}
limits {{
    max-header-size-bytes 8192
    max-header-count 100
    max-body-size-bytes 10485760
}}
"#
    )
}

/// The rate-limit example: three `rate-limit` filters (10, 100 and 1000 rps per client) on
/// the auth, API and static routes, none on the health check.
fn rate_limit_example(http: u16, metrics: u16, api: &str, statics: &str) -> String {
    let limit = |name: &str, rps: u32, burst: u32| {
        format!(
            "    filter \"{name}\" {{\n        type \"rate-limit\"\n        max-rps {rps}\n        \
             burst {burst}\n        key \"client-ip\"\n        on-limit \"reject\"\n        \
             backend \"local\"\n    }}\n"
        )
    };
    let filters = [
        limit("auth-rate-limit", 10, 15),
        limit("api-rate-limit", 100, 200),
        limit("static-rate-limit", 1000, 2000),
    ]
    .concat();
    format!(
        r#"
system {{
    worker-threads 2
    max-connections 10000
    graceful-shutdown-timeout-secs 30
}}
listeners {{
    listener "http" {{
        address "127.0.0.1:{http}"
        protocol "http"
        request-timeout-secs 60
    }}
}}
filters {{
{filters}}}
routes {{
    route "auth" {{
        priority "critical"
        matches {{ path-prefix "/api/auth"; }}
        upstream "api"
        filters "auth-rate-limit"
        policies {{
            timeout-secs 30
            failure-mode "closed"
        }}
    }}
    route "api" {{
        priority "high"
        matches {{ path-prefix "/api"; }}
        upstream "api"
        filters "api-rate-limit"
        policies {{
            timeout-secs 30
            failure-mode "open"
        }}
    }}
    route "static" {{
        priority "low"
        matches {{ path-prefix "/static"; }}
        upstream "static"
        filters "static-rate-limit"
        policies {{ timeout-secs 10; }}
    }}
    route "health" {{
        priority "critical"
        matches {{ path "/health"; }}
        builtin-handler "health"
    }}
}}
upstreams {{
    upstream "api" {{
        target "{api}" weight=1
        load-balancing "round-robin"
        health-check {{
            type "http" {{
                path "/health"
                expected-status 200
            }}
            interval-secs 10
            timeout-secs 5
            healthy-threshold 2
            unhealthy-threshold 3
        }}
    }}
    upstream "static" {{
        target "{statics}" weight=1
        load-balancing "round-robin"
    }}
}}
observability {{
    metrics {{
        enabled #true
        address "127.0.0.1:{metrics}"
        path "/metrics"
    }}
    logging {{
        level "info"
        format "json"
    }}
}}
limits {{
    max-header-size-bytes 8192
    max-header-count 100
    max-body-size-bytes 10485760
}}
"#
    )
}

/// `zentinel ARGS -c FILE` on `text`: (exit code, stdout and stderr together).
fn run_check(args: &[&str], text: &str, files: &mut TempFiles) -> (Option<i32>, String) {
    let path = files.add(temp_path("example.kdl"));
    fs::write(&path, text).expect("write the example");
    let out = Command::new(zentinel_bin())
        .args(args)
        .arg("-c")
        .arg(&path)
        .env_remove("ZENTINEL_CONFIG")
        .output()
        .expect("run zentinel");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A backend whose `/health` answers 200 and is not counted in its `/stats`, so the example's
/// health checks do not blur what the test counts.
fn healthy_backend(name: &str, files: &mut TempFiles) -> Backend {
    let health = files.add(temp_path("healthy"));
    fs::write(&health, "up").expect("write the health file");
    let path = health.display().to_string();
    Backend::start_args(name, &["--health-file", &path])
}

#[test]
fn the_cors_example_runs_but_for_its_agent() {
    let mut files = TempFiles::default();
    let api = healthy_backend("api", &mut files);
    let (http, metrics) = (free_port(), free_port());

    // As upstream wrote it: the agent parts, and only they, are refused.
    let (code, out) = run_check(
        &["--test"],
        &cors_example(http, metrics, &api.target(), true),
        &mut files,
    );
    assert_eq!(code, Some(1), "{out}");
    let errors: Vec<&str> = out
        .lines()
        .filter(|l| !l.starts_with("warning:") && l.contains(".kdl:"))
        .collect();
    assert_eq!(errors.len(), 2, "{out}");
    assert!(
        errors[0].contains("filter type \"agent\" is not supported yet"),
        "{out}"
    );
    assert!(errors[1].contains("`agents` is not supported yet"), "{out}");

    // Without them: valid, upstream reachable, and it serves.
    let text = cors_example(http, metrics, &api.target(), false);
    let (code, out) = run_check(&["--test"], &text, &mut files);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = run_check(&["validate"], &text, &mut files);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("All validation checks passed"), "{out}");

    let z = Zentinel::start(&text);
    let url = |path: &str| format!("http://{}{path}", z.addr());
    let r = curl(&[
        "-X",
        "OPTIONS",
        "-H",
        "Origin: https://app.example.com",
        "-H",
        "Access-Control-Request-Method: POST",
        "-H",
        "Access-Control-Request-Headers: Content-Type",
        &url("/api/public/items"),
    ]);
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("Content-Type")
    );
    assert_eq!(r.header("access-control-max-age"), Some("86400"));
    assert_eq!(api.stats().0, 0, "the backend saw the preflight");

    // The actual request: the filter's origin wins over the policy's `*` (filters run after
    // the route's policies, on the same head).
    let r = curl(&[
        "-H",
        "Origin: https://app.example.com",
        &url("/api/public/items"),
    ]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-backend"), Some("api"));
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("X-Total-Count, X-Page-Count"),
        "the policy's field, kept"
    );
    assert_eq!(r.header_all("vary"), ["Origin"]);
    let r = curl(&[&url("/health")]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_no_access_control(&r);
}

fn assert_no_access_control(r: &zentinel_tests::curl::CurlResponse) {
    assert!(r.names_starting_with("access-control-").is_empty(), "{r:?}");
}

#[test]
fn the_per_route_rate_limit_example_runs() {
    let mut files = TempFiles::default();
    let api = healthy_backend("api", &mut files);
    let statics = Backend::start("static");
    let text = rate_limit_example(free_port(), free_port(), &api.target(), &statics.target());
    let (code, out) = run_check(&["--test"], &text, &mut files);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = run_check(&["validate"], &text, &mut files);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("All validation checks passed"), "{out}");

    let z = Zentinel::start(&text);
    // One keep-alive connection, faster than 10 per second: the auth route's burst of 15
    // runs out and the refusal carries upstream's fields.
    let mut c = z.client();
    let mut served = 0;
    let mut refused = None;
    let found = wait_until(Duration::from_secs(20), || {
        let r = c.get("/api/auth/login", "example.test");
        if r.status == 429 {
            refused = Some(r);
            return true;
        }
        assert_eq!(r.status, 200, "{r:?}");
        served += 1;
        false
    });
    assert!(found, "no 429 on the auth route after {served} requests");
    let refused = refused.expect("found");
    assert!(
        (15..40).contains(&served),
        "{served} served before the auth route's burst of 15 ran out"
    );
    assert!(refused.header("retry-after").is_some(), "{refused:?}");
    assert_eq!(
        refused.header("x-ratelimit-limit"),
        Some("10"),
        "{refused:?}"
    );

    // The other routes have their own, larger limits; the health check none.
    for path in ["/api/items", "/static/app.js", "/health"] {
        let mut c = z.client();
        for i in 0..30 {
            let r = c.get(path, "example.test");
            assert_eq!(r.status, 200, "{path} #{i}: {r:?}");
        }
    }
    assert!(statics.stats().0 >= 30);
}
