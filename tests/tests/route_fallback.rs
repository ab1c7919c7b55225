//! `fallback` on routes, on real processes: when every target of the route's upstream fails
//! to connect, the request goes to the fallback upstream; with the connection trigger off the
//! client gets 502.

use zentinel_tests::*;

#[test]
fn dead_primary_falls_back() {
    let backup = Backend::start("backup");
    // Nothing listens there: every connect is refused.
    let dead = format!("127.0.0.1:{}", free_port());
    let port = free_port();
    let cfg = format!(
        r#"
listeners {{
    listener "http" {{
        address "127.0.0.1:{port}"
    }}
}}
upstreams {{
    upstream "primary" {{
        target "{dead}"
    }}
    upstream "backup" {{
        target "{backup}"
    }}
}}
routes {{
    route "with-fallback" {{
        matches {{ path-prefix "/a"; }}
        upstream "primary"
        fallback {{
            fallback-upstream "backup"
        }}
    }}
    route "example-spelling" {{
        matches {{ path-prefix "/b"; }}
        upstream "primary"
        fallback {{
            upstream "backup"
        }}
    }}
    route "trigger-off" {{
        matches {{ path-prefix "/c"; }}
        upstream "primary"
        fallback {{
            fallback-upstream "backup"
            triggers {{
                on-connection-error #false
                on-health-failure #false
            }}
        }}
    }}
}}
"#,
        backup = backup.target()
    );
    let z = Zentinel::start(&cfg);
    for _ in 0..3 {
        let r = z.client().get("/a/x", "fb.test");
        assert_eq!((r.status, r.backend()), (200, Some("backup")), "{r:?}");
        let r = z.client().get("/b", "fb.test");
        assert_eq!((r.status, r.backend()), (200, Some("backup")), "{r:?}");
        let r = z.client().get("/c", "fb.test");
        assert_eq!(r.status, 502, "{r:?}");
    }
    // POST goes too: no request byte reached the dead primary.
    let mut c = z.client();
    c.send(b"POST /a HTTP/1.1\r\nHost: fb.test\r\nContent-Length: 4\r\n\r\nbody");
    let r = c.read_response();
    assert_eq!((r.status, r.backend()), (200, Some("backup")), "{r:?}");
}

/// The health trigger: once the route's upstream has no target in rotation (here its active
/// check fails), requests start on the fallback even with the connection trigger off.
#[test]
fn unhealthy_primary_starts_on_the_fallback() {
    let backup = Backend::start("backup");
    let dead = format!("127.0.0.1:{}", free_port());
    let port = free_port();
    let cfg = format!(
        r#"
system {{
    worker-threads 1
}}
listeners {{
    listener "http" {{
        address "127.0.0.1:{port}"
    }}
}}
upstreams {{
    upstream "primary" {{
        target "{dead}"
        health-check {{ type "tcp"; interval-secs 1; timeout-secs 1; healthy-threshold 1; unhealthy-threshold 1; }}
        passive-health {{ max-fails 0; }}
    }}
    upstream "backup" {{
        target "{backup}"
    }}
}}
routes {{
    route "r" {{
        upstream "primary"
        fallback {{
            fallback-upstream "backup" {{ skip-if-unhealthy #true; }}
            triggers {{ on-connection-error #false; }}
        }}
    }}
}}
"#,
        backup = backup.target()
    );
    let z = Zentinel::start(&cfg);
    assert!(
        wait_until(std::time::Duration::from_secs(10), || z
            .log_text()
            .contains("upstream target out of rotation (health check)")),
        "{}",
        z.log_text()
    );
    for _ in 0..3 {
        let r = z.client().get("/", "fb.test");
        assert_eq!((r.status, r.backend()), (200, Some("backup")), "{r:?}");
    }
    assert!(z.log_text().contains("request sent to a fallback upstream"));
}
