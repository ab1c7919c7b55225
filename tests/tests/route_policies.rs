//! A route's `policies { ... }` on real processes: request and response header changes as the
//! backend and the client see them, the per-route upstream timeout (504), body limit (413,
//! above and below the global one) and rate limit (429 with upstream's headers) leaving the
//! other routes alone.

use std::time::{Duration, Instant};

use zentinel_tests::*;

fn config(port: u16, backend: &Backend) -> String {
    let target = backend.target();
    format!(
        r#"
system {{
    // One worker: the rate-limit buckets are per worker, and this test counts exactly.
    worker-processes 1
}}
listeners {{
    listener "http" {{
        address "127.0.0.1:{port}"
    }}
}}
limits {{
    max-body-size 100
}}
routes {{
    route "headers" {{
        matches {{ path "/headers"; }}
        upstream "b"
        policies {{
            request-headers {{
                rename {{ X-Old "X-Renamed"; }}
                set {{ "Host" "api.example.com"; X-Api-Version "v1"; }}
                add {{ X-Tag "one"; }}
                remove "Cookie" "X-Debug"
                add {{ X-Tag "two"; }}
            }}
            response-headers {{
                set {{ Cache-Control "no-store"; }}
                add {{ X-Served-Via "zentinel"; }}
                rename {{ X-Connection-Id "X-Upstream-Conn"; }}
                remove "X-Backend"
            }}
            failure-mode "closed"
        }}
    }}
    route "slow" {{
        matches {{ path-prefix "/delay"; }}
        upstream "b"
        policies {{ timeout-secs 1; }}
    }}
    route "small-uploads" {{
        matches {{ path "/small"; }}
        upstream "b"
        policies {{ max-body-size 10; }}
    }}
    route "big-uploads" {{
        matches {{ path "/big"; }}
        upstream "b"
        policies {{ max-body-size "1KB"; }}
    }}
    route "limited" {{
        matches {{ path-prefix "/limited"; }}
        upstream "b"
        policies {{
            rate-limit {{ requests-per-second 1; burst 3; key "route"; }}
        }}
    }}
    route "rest" {{
        priority "low"
        matches {{ path-prefix "/"; }}
        upstream "b"
    }}
}}
upstreams {{
    upstream "b" {{
        target "{target}"
    }}
}}
"#
    )
}

fn start() -> (Backend, Zentinel) {
    let backend = Backend::start("pol");
    let z = Zentinel::start(&config(free_port(), &backend));
    (backend, z)
}

fn request(z: &Zentinel, head: &str, body: &[u8]) -> Response {
    let mut c = z.client();
    let mut bytes = format!(
        "{head}\r\nHost: pol.test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if body.is_empty() {
        bytes = format!("{head}\r\nHost: pol.test\r\nConnection: close\r\n\r\n").into_bytes();
    }
    bytes.extend_from_slice(body);
    c.send(&bytes);
    c.read_response()
}

#[test]
fn header_policies_change_what_backend_and_client_see() {
    let (_backend, z) = start();
    let r = request(
        &z,
        "GET /headers HTTP/1.1\r\nX-Old: moved\r\nCookie: a=b\r\nX-Debug: 1\r\nX-Api-Version: v0",
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.body_str());
    let (_, seen) = parse_echoed_head(&r.body_str());
    let values = |name: &str| -> Vec<String> {
        seen.iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    };
    assert_eq!(values("host"), ["api.example.com"], "{seen:?}");
    assert_eq!(values("x-api-version"), ["v1"], "{seen:?}");
    assert_eq!(values("x-renamed"), ["moved"], "{seen:?}");
    assert_eq!(values("x-tag"), ["one", "two"], "{seen:?}");
    for gone in ["x-old", "cookie", "x-debug"] {
        assert!(
            values(gone).is_empty(),
            "{gone} reached the backend: {seen:?}"
        );
    }
    // The proxy's own fields are still there.
    assert_eq!(values("x-forwarded-proto"), ["http"], "{seen:?}");

    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("x-served-via"), Some("zentinel"));
    assert!(r.header("x-upstream-conn").is_some(), "{:?}", r.headers);
    assert_eq!(r.header("x-connection-id"), None);
    assert_eq!(r.header("x-backend"), None);

    // Another route is untouched.
    let other = request(&z, "GET /headers-not HTTP/1.1\r\nCookie: a=b", b"");
    assert_eq!(other.backend(), Some("pol"));
    assert_eq!(other.header("cache-control"), None);
}

#[test]
fn per_route_timeout_gives_504() {
    let (_backend, z) = start();
    let started = Instant::now();
    let r = request(&z, "GET /delay/5000 HTTP/1.1", b"");
    assert_eq!(r.status, 504, "{}", r.body_str());
    // The route's 1 s, not the upstream's default 30 s.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // Within the route's timeout the backend answers.
    let ok = request(&z, "GET /delay/10 HTTP/1.1", b"");
    assert_eq!(ok.status, 200);
}

#[test]
fn per_route_body_limits() {
    let (_backend, z) = start();
    // Below the global 100 bytes, above the route's 10.
    let r = request(&z, "POST /small HTTP/1.1", &[b'x'; 50]);
    assert_eq!(r.status, 413);
    let r = request(&z, "POST /small HTTP/1.1", &[b'x'; 10]);
    assert_eq!(r.status, 200, "{}", r.body_str());
    // Above the global limit, within the route's 1 KiB.
    let r = request(&z, "POST /big HTTP/1.1", &[b'x'; 500]);
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert!(r.body_str().starts_with("len=500 "), "{}", r.body_str());
    let r = request(&z, "POST /big HTTP/1.1", &[b'x'; 2000]);
    assert_eq!(r.status, 413);
    // Other routes keep the global limit.
    let r = request(&z, "POST /other HTTP/1.1", &[b'x'; 500]);
    assert_eq!(r.status, 413);
    // A chunked body over the route's limit is refused while it streams.
    let mut c = z.client();
    c.send(
        b"POST /small HTTP/1.1\r\nHost: pol.test\r\nTransfer-Encoding: chunked\r\n\
          Connection: close\r\n\r\n14\r\nxxxxxxxxxxxxxxxxxxxx\r\n0\r\n\r\n",
    );
    assert_eq!(c.read_response().status, 413);
}

#[test]
fn rate_limit_refuses_after_the_burst_and_spares_other_routes() {
    let (_backend, z) = start();
    let mut allowed = Vec::new();
    let mut refused = None;
    // 3 at once, then 1 per second: a slow machine may see a token come back, so keep going
    // until the refusal instead of assuming exactly three.
    let found = wait_until(Duration::from_secs(20), || {
        let r = request(&z, "GET /limited/x HTTP/1.1", b"");
        if r.status == 429 {
            refused = Some(r);
            true
        } else {
            allowed.push(r);
            false
        }
    });
    assert!(found, "no 429 after {} requests", allowed.len());
    assert!(
        allowed.len() >= 3,
        "refused after {} requests",
        allowed.len()
    );
    let first = &allowed[0];
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-ratelimit-limit"), Some("1"));
    assert_eq!(first.header("x-ratelimit-remaining"), Some("2"));
    assert!(first.header("x-ratelimit-reset").is_some());

    let r = refused.unwrap_or_else(|| unreachable!());
    assert_eq!(r.header("x-ratelimit-limit"), Some("1"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(r.header("retry-after"), Some("1"));
    let reset: u64 = r
        .header("x-ratelimit-reset")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(reset > 1_600_000_000, "unix seconds expected, got {reset}");
    assert_eq!(r.body_str(), "Rate limit exceeded");
    assert!(r.connection_has("close"));

    // Other routes are not limited, and carry no rate headers.
    for _ in 0..5 {
        let other = request(&z, "GET /free HTTP/1.1", b"");
        assert_eq!(other.status, 200);
        assert_eq!(other.header("x-ratelimit-limit"), None);
    }
    // The bucket refills: within a few seconds the limited route answers again.
    assert!(wait_until(Duration::from_secs(5), || {
        request(&z, "GET /limited/y HTTP/1.1", b"").status == 200
    }));
}
