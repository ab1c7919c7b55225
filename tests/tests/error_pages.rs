//! A route's `error-pages` on real processes: an upstream status with a page is replaced (the
//! connection stays usable), one without a page passes through untouched, the proxy's own
//! errors take the page's template, format, message and headers, and the service type's
//! default format applies where no page is written.

use zentinel_tests::*;

fn config(port: u16, backend: &Backend, dead: u16, template: &str) -> String {
    let target = backend.target();
    format!(
        r#"
system {{
    worker-threads 1
}}
listeners {{
    listener "http" {{
        address "127.0.0.1:{port}"
    }}
}}
routes {{
    route "api" {{
        matches {{ path-prefix "/status"; }}
        service-type "api"
        upstream "b"
        error-pages {{
            pages {{
                "503" {{
                    message "Back soon"
                    headers {{ "Retry-After" "30"; }}
                }}
            }}
        }}
    }}
    route "web" {{
        matches {{ path-prefix "/web"; }}
        upstream "dead"
        policies {{ max-body-size 10; }}
        error-pages {{
            default-format "xml"
            "502" "{template}"
        }}
    }}
    route "plain" {{
        matches {{ path-prefix "/plain"; }}
        upstream "dead"
        error-pages {{ default-format "text"; }}
    }}
}}
upstreams {{
    upstream "b" {{
        target "{target}"
    }}
    upstream "dead" {{
        target "127.0.0.1:{dead}"
    }}
}}
"#
    )
}

struct Setup {
    _backend: Backend,
    _dir: TempDir,
    z: Zentinel,
}

fn start() -> Setup {
    let backend = Backend::start("ep");
    let dir = TempDir::new("error-pages");
    let template = dir.0.join("502.html");
    std::fs::write(
        &template,
        "<p>{{status}} {{title}}: {{message}} (request {{request_id}})</p>\n",
    )
    .expect("write template");
    // A port nothing listens on: connects are refused at once.
    let dead = free_port();
    let z = Zentinel::start(&config(
        free_port(),
        &backend,
        dead,
        &template.display().to_string(),
    ));
    Setup {
        _backend: backend,
        _dir: dir,
        z,
    }
}

#[test]
fn an_upstream_status_with_a_page_is_replaced_and_the_connection_stays_usable() {
    let s = start();
    let mut c = s.z.client();
    c.send(b"GET /status/503 HTTP/1.1\r\nHost: ep.test\r\nX-Request-Id: abc-123\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 503, "{}", r.body_str());
    assert_eq!(r.header("retry-after"), Some("30"), "{:?}", r.headers);
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{:?}",
        r.headers
    );
    let v: serde_json::Value = serde_json::from_str(&r.body_str()).expect("json page");
    assert_eq!(v["status"], 503);
    assert_eq!(v["message"], "Back soon");
    assert_eq!(v["request_id"], "abc-123");
    assert!(
        !r.body_str().contains("status 503"),
        "the backend's body leaked"
    );
    // The same client connection goes on: the page had its own length.
    let next = c.get("/status/200", "ep.test");
    assert_eq!(next.status, 200);
    assert_eq!(next.backend(), Some("ep"));
}

#[test]
fn an_upstream_status_without_a_page_passes_through() {
    let s = start();
    let r = s.z.client().get("/status/502", "ep.test");
    assert_eq!(r.status, 502);
    assert_eq!(r.body_str(), "status 502\n");
    assert_eq!(r.backend(), Some("ep"));
}

#[test]
fn the_proxys_own_errors_use_the_template_and_default_format() {
    let s = start();
    let mut c = s.z.client();
    c.send(b"GET /web/x HTTP/1.1\r\nHost: ep.test\r\nX-Request-Id: <id>\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 502);
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("text/html")),
        "a template given as `\"502\" \"file\"` is an HTML page: {:?}",
        r.headers
    );
    assert_eq!(
        r.body_str(),
        "<p>502 Bad Gateway: The upstream server could not be reached or sent an invalid \
         response. (request &lt;id&gt;)</p>\n"
    );
    // A HEAD gets the head only.
    c.send(b"HEAD /web/x HTTP/1.1\r\nHost: ep.test\r\nConnection: close\r\n\r\n");
    let head = c.try_read_response(true, true).expect("HEAD answer");
    assert_eq!(head.status, 502);
    assert!(head.body.is_empty());

    // Other statuses of that route take the block's default format.
    let mut c = s.z.client();
    c.send(b"POST /web/x HTTP/1.1\r\nHost: ep.test\r\nContent-Length: 50\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 413);
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("application/xml")),
        "{:?}",
        r.headers
    );
    assert!(
        r.body_str().contains("<status>413</status>"),
        "{}",
        r.body_str()
    );
    let plain = s.z.client().get("/plain/x", "ep.test");
    assert_eq!(plain.status, 502);
    assert!(
        plain.body_str().starts_with("502 Bad Gateway\n\n"),
        "{}",
        plain.body_str()
    );
}

#[test]
fn a_missing_template_fails_the_check_with_its_line() {
    let dir = TempDir::new("error-pages-check");
    let path = dir.0.join("zentinel.kdl");
    let text = "system { worker-threads 1; }\nlisteners { listener \"h\" { address \"127.0.0.1:1\"; } }\n\
                routes {\n  route \"r\" {\n    upstream \"u\"\n    error-pages { \"404\" \"nope.html\"; }\n  }\n}\n\
                upstreams { upstream \"u\" { target \"127.0.0.1:2\"; } }\n";
    std::fs::write(&path, text).expect("write config");
    let (code, _out, err) = zentinel_check(Some(&path));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(":6:25"),
        "line and column of the template: {err}"
    );
    assert!(err.contains("nope.html\": No such file"), "{err}");
}
