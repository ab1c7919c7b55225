//! HTTP/2 to upstreams without gRPC (issue 16), against an HTTP/2 test server on the `h2`
//! package (`tests/python/h2_server.py`): h2c with prior knowledge and TLS with ALPN `h2`,
//! `http-version "auto"` choosing by ALPN, many exchanges multiplexed on one connection and
//! a new connection once `max-h2-streams` are open, request and response bodies (length,
//! chunked, trailers) both ways, refused streams and GOAWAY retried on a new connection,
//! health checks over HTTP/2 and failover from a dead target.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::thread;
use std::time::Duration;

use serde_json::Value;
use zentinel_tests::python::PyServer;
use zentinel_tests::tls_support::Ca;
use zentinel_tests::*;

fn config(port: u16, targets: &[String], upstream_extra: &str) -> String {
    let targets: String = targets
        .iter()
        .map(|t| format!("        target \"{t}\"\n"))
        .collect();
    format!(
        r#"system {{
    worker-processes 1
}}
listeners {{
    listener "main" {{
        address "127.0.0.1:{port}"
    }}
}}
routes {{
    route "all" {{
        matches {{ path-prefix "/" }}
        upstream "h2"
    }}
}}
upstreams {{
    upstream "h2" {{
{targets}        {upstream_extra}
    }}
}}
"#
    )
}

/// One request on a new connection (`Connection: close`): the raw response.
fn exchange(z: &Zentinel, request: &[u8]) -> String {
    let mut s = TcpStream::connect(z.addr()).expect("connect to zentinel");
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    s.write_all(request).expect("send");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read the response");
    String::from_utf8_lossy(&out).into_owned()
}

fn get(z: &Zentinel, path: &str) -> String {
    exchange(
        z,
        format!("GET {path} HTTP/1.1\r\nHost: h2.test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// The body of a `Content-Length` (or unframed) response.
fn body_of(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

fn stats(z: &Zentinel) -> Value {
    let r = get(z, "/stats");
    serde_json::from_str(body_of(&r)).unwrap_or_else(|e| panic!("stats {r:?}: {e}"))
}

#[test]
fn h2c_multiplexes_exchanges_and_opens_a_connection_when_full() {
    let server = PyServer::start("h2_server.py", &[]);
    let z = Zentinel::start(&config(
        free_port(),
        &[server.target()],
        "http-version { min-version 2; max-h2-streams 4; }",
    ));
    let r = get(&z, "/hello");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(body_of(&r), "h2 backend path=/hello\n", "{r}");
    // Eight HTTP/1.1 clients at once; the server answers `/hold` only when all eight are
    // open: four streams on each of two connections.
    let holds: Vec<_> = (0..8)
        .map(|_| {
            let addr = z.addr();
            thread::spawn(move || {
                let mut c = HttpClient::connect(addr);
                c.set_timeout(Duration::from_secs(30));
                c.get("/hold?n=8", "h2.test")
            })
        })
        .collect();
    for h in holds {
        let r = h.join().expect("client thread");
        assert_eq!(r.status, 200, "{r:?}");
    }
    let s = stats(&z);
    assert_eq!(
        s["connections"], 2,
        "max-h2-streams 4: two connections for 8 streams: {s}"
    );
    assert_eq!(s["max_open"], 4, "{s}");
    let _ = &server;
}

#[test]
fn bodies_and_trailers_cross_both_ways() {
    let server = PyServer::start("h2_server.py", &[]);
    let z = Zentinel::start(&config(
        free_port(),
        &[server.target()],
        "http-version \"2\"",
    ));
    // A length-delimited body, 1 MB, from an HTTP/1.1 client.
    let body = pattern(1 << 20);
    let mut req = format!(
        "POST /echo HTTP/1.1\r\nHost: h2.test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let r = exchange(&z, &req);
    assert!(r.starts_with("HTTP/1.1 200"), "{}", &r[..r.len().min(200)]);
    assert!(
        r.contains("transfer-encoding: chunked"),
        "an HTTP/2 response with trailers goes on chunked"
    );
    assert!(
        r.ends_with(&format!("0\r\nx-body-length: {}\r\n\r\n", body.len())),
        "the upstream's trailer ends the chunked body: {}",
        &r[r.len().saturating_sub(100)..]
    );
    // A chunked body with a trailer, asking for trailers back.
    let r = exchange(
        &z,
        b"POST /echo HTTP/1.1\r\nHost: h2.test\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\n\
          Connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 11\r\n\r\n",
    );
    assert!(
        r.ends_with("\r\n\r\nb\r\nhello world\r\n0\r\nx-body-length: 11\r\n\r\n"),
        "{r}"
    );
    // And from an HTTP/2 client (curl, prior knowledge), streamed both ways.
    let dir = TempDir::new("h2up-bodies");
    let file = dir.0.join("body");
    fs::write(&file, &body).unwrap();
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "30",
            "--http2-prior-knowledge",
            "--data-binary",
        ])
        .arg(format!("@{}", file.display()))
        .arg(format!("http://{}/echo", z.addr()))
        .output()
        .expect("curl runs (scripts/test-deps.sh installs it)");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout == body,
        "the echo came back whole ({} bytes)",
        out.stdout.len()
    );
    let _ = &server;
}

#[test]
fn refused_streams_and_goaway_go_again_on_a_new_connection() {
    let server = PyServer::start("h2_server.py", &[]);
    let z = Zentinel::start(&config(
        free_port(),
        &[server.target()],
        "http-version \"2\"",
    ));
    // REFUSED_STREAM says the request was not processed: even a POST goes again.
    let r = exchange(
        &z,
        b"POST /refused?key=a HTTP/1.1\r\nHost: h2.test\r\nContent-Length: 3\r\n\
          Connection: close\r\n\r\nabc",
    );
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(body_of(&r), "retried method=POST\n", "{r}");
    // After each GOAWAY, the next exchange opens a new connection.
    for _ in 0..3 {
        let r = get(&z, "/goaway");
        assert_eq!(body_of(&r), "going away\n", "{r}");
        let r = get(&z, "/hello");
        assert_eq!(body_of(&r), "h2 backend path=/hello\n", "{r}");
    }
    let s = stats(&z);
    assert_eq!(s["paths"]["/goaway"], 3, "each /goaway was sent once: {s}");
    assert!(s["connections"].as_u64() >= Some(4), "{s}");
    let _ = &server;
}

#[test]
fn tls_upstreams_negotiate_h2_by_alpn() {
    let dir = TempDir::new("h2up-tls");
    let ca = Ca::new();
    ca.issue(&dir.0, "h2", &["h2.test"]);
    fs::write(dir.0.join("ca.pem"), ca.cert.pem()).unwrap();
    let path = |f: &str| dir.0.join(f).display().to_string();
    let server = PyServer::start("h2_server.py", &["--tls", &path("h2.crt"), &path("h2.key")]);
    let tls = format!("tls {{ ca-cert \"{}\"; sni \"h2.test\"; }}", path("ca.pem"));
    // A proxy to `target` in `mode` over TLS, after `n` requests answered with `want`.
    let serve = |target: String, mode: &str, path: &str, want: &str, n: usize| {
        let z = Zentinel::start(&config(
            free_port(),
            &[target],
            &format!("http-version \"{mode}\"\n        {tls}"),
        ));
        for _ in 0..n {
            let r = get(&z, path);
            assert_eq!(body_of(&r), want, "{mode}: {r}");
        }
        z
    };
    // "2": ALPN h2 only.
    let z = serve(
        server.target(),
        "2",
        "/hello",
        "h2 backend path=/hello\n",
        3,
    );
    assert_eq!(
        stats(&z)["connections"],
        1,
        "one TLS connection carried every exchange"
    );
    drop(z);
    // "auto": the first connection offers h2 and http/1.1, the server chooses h2, and the
    // connection becomes the HTTP/2 one every later exchange shares.
    let z = serve(
        server.target(),
        "auto",
        "/hello",
        "h2 backend path=/hello\n",
        3,
    );
    assert_eq!(
        stats(&z)["connections"],
        2,
        "one more connection for the second proxy"
    );
    drop(z);
    // "auto" to a server that speaks HTTP/1.1 only: HTTP/1.1.
    let backend = Backend::start_args("h1tls", &["--tls", &path("h2.crt"), &path("h2.key")]);
    serve(backend.target(), "auto", "/x", "backend=h1tls path=/x\n", 2);
}

#[test]
fn health_checks_and_failover_with_http2_targets() {
    let server = PyServer::start("h2_server.py", &[]);
    let dead = format!("127.0.0.1:{}", free_port());
    let z = Zentinel::start(&config(
        free_port(),
        &[dead, server.target()],
        "http-version \"2\"\n        health-check { type \"http\" { path \"/health\"; \
         expected-status 200; }; interval-secs 1; timeout-secs 1; healthy-threshold 1; \
         unhealthy-threshold 1; }",
    ));
    // Every exchange succeeds: the dead target fails over (then is out of rotation).
    for _ in 0..6 {
        let r = get(&z, "/hello");
        assert_eq!(body_of(&r), "h2 backend path=/hello\n", "{r}");
    }
    // The probes of the live target went over HTTP/2 and passed.
    assert!(
        wait_until(Duration::from_secs(10), || {
            stats(&z)["paths"]["/health"].as_u64() >= Some(2)
        }),
        "health probes did not reach the HTTP/2 target: {}",
        stats(&z)
    );
    let _ = &server;
}

#[test]
fn idle_connections_are_pinged() {
    let server = PyServer::start("h2_server.py", &[]);
    let z = Zentinel::start(&config(
        free_port(),
        &[server.target()],
        "http-version \"2\" { h2-ping-interval 1; }",
    ));
    let r = get(&z, "/hello");
    assert_eq!(body_of(&r), "h2 backend path=/hello\n", "{r}");
    // Answered PINGs keep coming on the idle connection, and it stays the only one.
    assert!(
        wait_until(Duration::from_secs(15), || stats(&z)["pings"].as_u64()
            >= Some(3)),
        "no PINGs: {}",
        stats(&z)
    );
    assert_eq!(stats(&z)["connections"], 1, "{}", stats(&z));
}

#[test]
fn requests_are_mirrored_to_an_http2_upstream() {
    let mirror = PyServer::start("h2_server.py", &[]);
    let primary = Backend::start("primary");
    let config = format!(
        r#"system {{
    worker-processes 1
}}
listeners {{
    listener "main" {{
        address "127.0.0.1:{port}"
    }}
}}
routes {{
    route "all" {{
        matches {{ path-prefix "/" }}
        upstream "primary"
        shadow {{
            upstream "mirror"
            timeout-ms 5000
        }}
    }}
}}
upstreams {{
    upstream "primary" {{
        target "{primary}"
    }}
    upstream "mirror" {{
        target "{mirror}"
        http-version "2"
    }}
}}
"#,
        port = free_port(),
        primary = primary.target(),
        mirror = mirror.target()
    );
    let z = Zentinel::start(&config);
    for _ in 0..3 {
        let r = get(&z, "/copied");
        assert_eq!(body_of(&r), "backend=primary path=/copied\n", "{r}");
    }
    // The mirror's own counters, asked directly.
    assert!(
        wait_until(Duration::from_secs(10), || {
            mirror_paths(&mirror)["/copied"].as_u64() == Some(3)
        }),
        "the mirror got {}",
        mirror_paths(&mirror)
    );
}

/// The h2 test server's request counts, asked over HTTP/2 by curl (prior knowledge).
fn mirror_paths(server: &PyServer) -> Value {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--http2-prior-knowledge"])
        .arg(format!("http://{}/stats", server.target()))
        .output()
        .expect("curl runs");
    let s: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stats {:?}: {e}", String::from_utf8_lossy(&out.stdout)));
    s["paths"].clone()
}
