//! HTTP/1.1 proxying end to end: real `zentinel`, real backends, raw sockets.

use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use zentinel_tests::*;

fn upstream(name: &str, targets: &[&Backend], extra: &str) -> String {
    let targets: String = targets
        .iter()
        .map(|b| format!("        target \"{}\"\n", b.target()))
        .collect();
    format!("    upstream \"{name}\" {{\n{targets}        {extra}\n    }}\n")
}

/// A proxy whose default route sends everything to `backend` (upstream "b").
fn simple_proxy(backend: &Backend, workers: u32, upstream_extra: &str, limits: &str) -> Zentinel {
    Zentinel::start(
        &configs::Proxy::new(workers, free_port(), backend)
            .drain_secs(2)
            .upstream(upstream_extra)
            .top_level(limits)
            .build(),
    )
}

fn get(z: &Zentinel, host: &str, path: &str) -> Response {
    let mut c = z.client();
    c.send(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes());
    c.read_response()
}

#[test]
fn routing_by_host_path_priority_default_and_404() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let c = Backend::start("c");
    let r1 = Backend::start("r1");
    let r2 = Backend::start("r2");
    let main_port = free_port();
    let nodefault_port = free_port();
    let cfg = format!(
        r#"
system {{
    worker-processes 2
}}
listeners {{
    listener "main" {{
        address "127.0.0.1:{main_port}"
        protocol "http"
        default-route "fallback"
    }}
    listener "nodefault" {{
        address "127.0.0.1:{nodefault_port}"
        protocol "http"
    }}
}}
routes {{
    route "low-first" {{
        priority "low"
        matches {{
            path-prefix "/prio/"
        }}
        upstream "a"
    }}
    route "api" {{
        matches {{
            host "api.example.com"
        }}
        upstream "a"
    }}
    route "wild" {{
        matches {{
            host "*.wild.test"
        }}
        upstream "b"
    }}
    route "both" {{
        matches {{
            host "both.test"
            path-prefix "/x/"
        }}
        upstream "c"
    }}
    route "prefix" {{
        matches {{
            path-prefix "/p/"
        }}
        upstream "c"
    }}
    route "exact" {{
        matches {{
            path "/exact"
        }}
        static-response status=201 body="exact-static" content-type="text/x-test"
    }}
    route "rr" {{
        matches {{
            host "rr.test"
        }}
        upstream "rr"
    }}
    route "crit" {{
        priority "critical"
        matches {{
            path-prefix "/prio/"
        }}
        upstream "b"
    }}
    route "fallback" {{
        matches {{
            path "/only-used-as-default-route"
        }}
        static-response status=200 body="fallback" content-type="text/plain"
    }}
}}
upstreams {{
{}{}{}{}
}}
"#,
        upstream("a", &[&a], ""),
        upstream("b", &[&b], ""),
        upstream("c", &[&c], ""),
        upstream("rr", &[&r1, &r2], "load-balancing \"round_robin\""),
    );
    let z = Zentinel::start(&cfg);

    let check = |host: &str, path: &str, want: &str| {
        let r = get(&z, host, path);
        let got = if let Some(b) = r.backend() {
            assert_eq!(r.status, 200, "{host}{path}: {r:?}");
            let body = r.body_str();
            assert!(
                body.contains(&format!("path={}", path.split('?').next().unwrap())),
                "{body}"
            );
            b.to_owned()
        } else {
            format!("static:{}:{}", r.status, r.body_str())
        };
        assert_eq!(
            got, want,
            "request Host: {host} path {path} was routed wrongly"
        );
    };
    check("api.example.com", "/", "a");
    check("API.Example.COM:8080", "/anything", "a"); // case-insensitive, port ignored
    check("foo.wild.test", "/", "b");
    check("deep.foo.wild.test", "/z", "b");
    check("other.test", "/p/x", "c");
    check("api.example.com", "/p/x", "a"); // same priority: file order, "api" first
    check("both.test", "/x/1", "c");
    check("both.test", "/y", "static:200:fallback"); // host and path must both match
    check("other.test", "/p", "static:200:fallback"); // prefix "/p/" does not match "/p"
    check("other.test", "/prio/1", "b"); // critical beats low declared earlier
    check("other.test", "/nothing", "static:200:fallback");
    check("other.test", "/exact", "static:201:exact-static");
    check("other.test", "/exact?q=1", "static:201:exact-static");
    check("other.test", "/exact/more", "static:200:fallback");

    let r = get(&z, "other.test", "/exact");
    assert_eq!(r.header("content-type"), Some("text/x-test"));
    assert_eq!(r.header("content-length"), Some("12"));

    // Round robin over two targets (one client connection = one worker).
    let mut cl = z.client();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let r = cl.get("/", "rr.test");
        assert_eq!(r.status, 200);
        seen.insert(r.backend().unwrap().to_owned());
    }
    assert_eq!(seen.len(), 2, "round robin used only {seen:?}");

    // A listener without a default route: 404 when nothing matches; routes still apply.
    let nodefault: std::net::SocketAddr = format!("127.0.0.1:{nodefault_port}").parse().unwrap();
    let mut cl = HttpClient::connect(nodefault);
    let r = cl.get("/nothing", "other.test");
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(r.backend(), None);
    let r = cl.get("/", "api.example.com");
    assert_eq!((r.status, r.backend()), (200, Some("a")), "{r:?}");
}

#[test]
fn client_keep_alive_several_requests_one_connection() {
    let be = Backend::start("ka");
    let z = simple_proxy(&be, 2, "", "");
    let mut c = z.client();
    for i in 0..5 {
        let r = c.get(&format!("/req/{i}"), "ka.test");
        assert_eq!(r.status, 200);
        assert_eq!(r.body_str(), format!("backend=ka path=/req/{i}\n"));
        assert!(!r.connection_has("close"), "proxy asked to close: {r:?}");
    }
    assert!(
        !c.server_closed_within(Duration::from_millis(300)),
        "proxy closed an idle keep-alive client connection at once"
    );
    let r = c.get("/last", "ka.test");
    assert_eq!(r.status, 200);
}

#[test]
fn upstream_keep_alive_reused_across_client_connections() {
    let be = Backend::start("pool");
    // One worker: the upstream pool is per worker.
    let z = simple_proxy(
        &be,
        1,
        "connection-pool { max-idle 4; idle-timeout-secs 30; }",
        "",
    );
    let mut ids = Vec::new();
    for _ in 0..4 {
        let mut c = z.client();
        let r = c.get("/conn-id", "pool.test");
        assert_eq!(r.status, 200);
        ids.push(r.header("x-connection-id").unwrap().to_owned());
        assert_eq!(ids.last().unwrap(), &r.body_str());
        drop(c);
    }
    assert!(
        ids.iter().all(|id| id == &ids[0]),
        "upstream connection not reused: X-Connection-Id per request {ids:?}"
    );
    let (_, connections) = be.stats();
    // One proxied connection plus the /stats one.
    assert_eq!(connections, 2, "backend accepted {connections} connections");
}

fn chunked_body(data: &[u8]) -> Vec<u8> {
    let sizes = [1usize, 5, 4096, 17, 65536, 100, 3000];
    let mut out = Vec::new();
    let mut off = 0;
    let mut i = 0;
    while off < data.len() {
        let n = sizes[i % sizes.len()].min(data.len() - off);
        i += 1;
        out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        out.extend_from_slice(&data[off..off + n]);
        out.extend_from_slice(b"\r\n");
        off += n;
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[test]
fn chunked_request_and_response_bodies_intact() {
    let be = Backend::start("chunk");
    let z = simple_proxy(&be, 2, "", "");
    let mut c = z.client();

    let data = pattern(300_001);
    let mut req =
        b"POST /upload HTTP/1.1\r\nHost: chunk.test\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    req.extend_from_slice(&chunked_body(&data));
    c.send(&req);
    let r = c.read_response();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        parse_upload_answer(&r.body_str()),
        (data.len() as u64, checksum_hex(checksum(&data))),
        "chunked request body arrived altered"
    );

    // Chunked response with chunk sizes from 1 byte to 64 KiB, same connection.
    let r = c.get("/bytes/300000?chunked=1", "chunk.test");
    r.assert_pattern_body(300_000);

    // Read-until-close upstream response.
    let r = c.get("/bytes/200000?close=1", "chunk.test");
    r.assert_pattern_body(200_000);
}

#[test]
fn large_response_body_50mb_streamed() {
    const N: u64 = 50 * 1024 * 1024;
    let be = Backend::start("big");
    let z = simple_proxy(&be, 1, "", "");
    let worker = z.worker_pids()[0];
    let mut c = z.client();
    c.set_timeout(Duration::from_secs(30));
    let start = Instant::now();
    c.send(format!("GET /bytes/{N} HTTP/1.1\r\nHost: big.test\r\n\r\n").as_bytes());
    let r = c.read_response_hashed();
    r.assert_pattern_body(N);
    eprintln!("50 MiB response in {:?}", start.elapsed());
    // The body's rest moved by splice (plain both ways, over 1 MiB): the connection goes on
    // with the next response, nothing of one body read into the other.
    let r = c.get("/bytes/70000", "big.test");
    r.assert_pattern_body(70_000);
    // Streaming, not buffering: the worker never held the whole body.
    let peak = peak_rss_kib(worker).expect("worker VmHWM");
    eprintln!("worker peak RSS: {peak} KiB");
    assert!(
        peak < 45 * 1024,
        "worker peak RSS {peak} KiB after a 50 MiB response: the body was buffered"
    );
}

#[test]
fn a_client_that_stops_reading_a_spliced_body_is_cut_off() {
    // 64 MiB, plain both ways: the body's rest moves by splice; a client that takes nothing
    // for a whole request timeout is cut off there as with buffered bodies.
    const N: u64 = 64 * 1024 * 1024;
    let be = Backend::start("stall");
    let z = Zentinel::start(&configs::proxy_with_listener(
        1,
        free_port(),
        &be,
        "",
        "request-timeout-secs 1",
        "",
    ));
    let mut s = TcpStream::connect(z.addr()).expect("connect");
    s.write_all(format!("GET /bytes/{N} HTTP/1.1\r\nHost: stall\r\n\r\n").as_bytes())
        .expect("send");
    // The stalled client: reads nothing for three request timeouts.
    thread::sleep(Duration::from_secs(3));
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut got = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "the connection was never closed");
        match std::io::Read::read(&mut s, &mut buf) {
            // Closed by the proxy (FIN, or a reset for the unread rest).
            Ok(0) => break,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("the stalled download was not cut off: nothing more for 10 s")
            }
            Err(_) => break,
            Ok(n) => got += n as u64,
        }
    }
    assert!(
        got < N,
        "a client that read nothing for 3 s (request-timeout-secs 1) still got the whole body"
    );
    // The worker goes on serving.
    let r = z.client().get("/bytes/70000", "ok");
    r.assert_pattern_body(70_000);
}

#[test]
fn large_request_body_50mb_streamed() {
    const N: usize = 50 * 1024 * 1024;
    let be = Backend::start("bigup");
    let z = simple_proxy(
        &be,
        1,
        "",
        "limits {\n    max-body-size-bytes 104857600\n}\n",
    );
    let worker = z.worker_pids()[0];
    let mut c = z.client();
    c.set_timeout(Duration::from_secs(30));
    let mut writer = c.stream.try_clone().unwrap();
    let sender = thread::spawn(move || {
        let mut sum = Fnv64::new();
        writer
            .write_all(
                format!("PUT /upload HTTP/1.1\r\nHost: bigup.test\r\nContent-Length: {N}\r\n\r\n")
                    .as_bytes(),
            )
            .unwrap();
        let mut block = vec![0u8; 1 << 20];
        let mut off = 0usize;
        while off < N {
            let n = block.len().min(N - off);
            fill_pattern(off as u64, &mut block[..n]);
            sum.update(&block[..n]);
            writer
                .write_all(&block[..n])
                .expect("sending the 50 MiB body");
            off += n;
        }
        sum.hex()
    });
    let r = c.read_response();
    let sent_sum = sender.join().unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(parse_upload_answer(&r.body_str()), (N as u64, sent_sum));
    let peak = peak_rss_kib(worker).expect("worker VmHWM");
    eprintln!("worker peak RSS: {peak} KiB");
    assert!(
        peak < 45 * 1024,
        "worker peak RSS {peak} KiB after a 50 MiB upload: the body was buffered"
    );
}

#[test]
fn http10_client() {
    let be = Backend::start("old");
    let z = simple_proxy(&be, 2, "", "");
    let mut c = z.client();
    c.send(b"GET /bytes/5000?chunked=1 HTTP/1.0\r\nHost: old.test\r\n\r\n");
    let r = c.read_response();
    assert!(
        !r.chunked,
        "chunked response sent to an HTTP/1.0 client: {:?}",
        r.headers
    );
    r.assert_pattern_body(5000);
    assert!(
        c.server_closed_within(Duration::from_secs(3)),
        "HTTP/1.0 request without keep-alive: the proxy must close the connection"
    );

    let mut c = z.client();
    c.send(b"GET /plain HTTP/1.0\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body_str(), "backend=old path=/plain\n");
}

#[test]
fn pipelined_requests_answered_in_order() {
    let be = Backend::start("pipe");
    let z = simple_proxy(&be, 2, "", "");
    let mut c = z.client();
    let mut batch = Vec::new();
    batch.extend_from_slice(b"GET /delay/200 HTTP/1.1\r\nHost: p\r\n\r\n");
    batch.extend_from_slice(b"GET /bytes/70000 HTTP/1.1\r\nHost: p\r\n\r\n");
    batch.extend_from_slice(
        b"POST /upload HTTP/1.1\r\nHost: p\r\nContent-Length: 10\r\n\r\n0123456789",
    );
    batch.extend_from_slice(b"GET /third HTTP/1.1\r\nHost: p\r\n\r\n");
    c.send(&batch);
    let r = c.read_response();
    assert_eq!(r.body_str(), "delayed 200ms\n");
    let r = c.read_response();
    r.assert_pattern_body(70_000);
    let r = c.read_response();
    assert_eq!(
        parse_upload_answer(&r.body_str()),
        (10, checksum_hex(checksum(b"0123456789")))
    );
    let r = c.read_response();
    assert_eq!(r.body_str(), "backend=pipe path=/third\n");
}

#[test]
fn expect_100_continue() {
    let be = Backend::start("expect");
    let z = simple_proxy(&be, 2, "", "");
    let mut c = z.client();
    let data = pattern(100_000);
    c.send(
        format!(
            "POST /upload HTTP/1.1\r\nHost: e\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            data.len()
        )
        .as_bytes(),
    );
    c.set_timeout(Duration::from_secs(5));
    let interim = c.read_response();
    assert_eq!(
        interim.status, 100,
        "expected 100 Continue before sending the body: {interim:?}"
    );
    c.send(&data);
    let r = c.read_response();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        parse_upload_answer(&r.body_str()),
        (data.len() as u64, checksum_hex(checksum(&data)))
    );
}

#[test]
fn websocket_upgrade_tunnel() {
    let be = Backend::start("ws");
    let z = simple_proxy(&be, 2, "", "");
    let mut c = z.client();
    c.upgrade_to_websocket();
    c.send(b"hello through the tunnel");
    assert_eq!(c.read_raw(24), b"hello through the tunnel");
    let data = pattern(500_000);
    let echoed = c.echo_round(data.clone());
    assert_eq!(echoed.len(), data.len(), "tunnel echoed a different length");
    assert!(echoed == data, "tunnel altered the bytes");
}

#[test]
fn forwarded_headers_added_and_hop_by_hop_removed() {
    let be = Backend::start("fwd");
    let z = simple_proxy(&be, 2, "", "");
    let mut c = z.client();
    c.send(
        b"GET /headers HTTP/1.1\r\nHost: fwd.test\r\nConnection: keep-alive, X-Custom-Hop\r\n\
          X-Custom-Hop: secret\r\nKeep-Alive: timeout=5\r\nX-End-To-End: kept\r\n\r\n",
    );
    let r = c.read_response();
    assert_eq!(r.status, 200);
    let (line, headers) = parse_echoed_head(&r.body_str());
    assert!(line.starts_with("GET /headers HTTP/1."), "{line}");
    let h = |n: &str| -> Vec<&str> {
        headers
            .iter()
            .filter(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let xff = h("x-forwarded-for");
    assert!(
        xff.iter().any(|v| v.contains("127.0.0.1")),
        "X-Forwarded-For missing or wrong: {xff:?} in {headers:?}"
    );
    assert_eq!(h("x-forwarded-proto"), vec!["http"], "{headers:?}");
    let fwd = h("forwarded").join(",").to_ascii_lowercase();
    assert!(
        fwd.contains("for=") && fwd.contains("127.0.0.1") && fwd.contains("proto=http"),
        "Forwarded header missing or wrong: {fwd:?}"
    );
    assert!(
        h("keep-alive").is_empty(),
        "Keep-Alive forwarded: {headers:?}"
    );
    assert!(
        h("x-custom-hop").is_empty(),
        "header named by Connection forwarded: {headers:?}"
    );
    assert_eq!(h("x-end-to-end"), vec!["kept"], "end-to-end header lost");
    for v in h("connection") {
        assert!(
            !v.to_ascii_lowercase().contains("x-custom-hop"),
            "Connection forwarded as is: {v}"
        );
    }
}

#[test]
fn request_smuggling_attempts_get_400() {
    let be = Backend::start("smug");
    let z = simple_proxy(&be, 2, "", "");
    let cases: [(&str, &[u8]); 3] = [
        (
            "Content-Length + Transfer-Encoding",
            b"POST /s HTTP/1.1\r\nHost: s\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: s\r\n\r\n",
        ),
        (
            "conflicting Content-Length headers",
            b"POST /s HTTP/1.1\r\nHost: s\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nabcdef",
        ),
        (
            "conflicting Content-Length list",
            b"POST /s HTTP/1.1\r\nHost: s\r\nContent-Length: 5, 6\r\n\r\nabcdef",
        ),
    ];
    for (what, raw) in cases {
        let mut c = z.client();
        let _ = c.try_send(raw);
        let r = c
            .try_read_response(true, false)
            .unwrap_or_else(|e| panic!("{what}: no response: {e}"));
        assert_eq!(r.status, 400, "{what}: {r:?}");
        assert!(
            c.server_closed_within(Duration::from_secs(3)),
            "{what}: connection left open after a framing error"
        );
    }
    let (requests, _) = be.stats();
    assert_eq!(requests, 0, "a smuggling attempt reached the backend");
}

#[test]
fn size_limits_413_414_431() {
    let be = Backend::start("lim");
    let z = simple_proxy(
        &be,
        2,
        "",
        "limits {\n    max-header-size-bytes 8192\n    max-header-count 100\n    max-body-size-bytes 1000\n}\n",
    );
    let mut body413 = b"POST /upload HTTP/1.1\r\nHost: l\r\nContent-Length: 5000\r\n\r\n".to_vec();
    body413.extend_from_slice(&pattern(5000));
    assert_refused(&z, &body413, 413, "body over max-body-size-bytes");

    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: l\r\n\r\n", "a".repeat(20_000));
    assert_refused(
        &z,
        long_uri.as_bytes(),
        414,
        "request line over the header size limit",
    );

    let mut many = String::from("GET / HTTP/1.1\r\nHost: l\r\n");
    for i in 0..150 {
        many.push_str(&format!("X-H-{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert_refused(
        &z,
        many.as_bytes(),
        431,
        "more headers than max-header-count",
    );

    let big = format!(
        "GET / HTTP/1.1\r\nHost: l\r\nX-Big: {}\r\n\r\n",
        "b".repeat(10_000)
    );
    assert_refused(&z, big.as_bytes(), 431, "head over max-header-size-bytes");

    // Within the limits everything still works.
    let mut c = z.client();
    c.send(b"POST /upload HTTP/1.1\r\nHost: l\r\nContent-Length: 1000\r\n\r\n");
    c.send(&pattern(1000));
    let r = c.read_response();
    assert_eq!(r.status, 200, "{r:?}");
    let (requests, _) = be.stats();
    assert_eq!(requests, 1, "a rejected request reached the backend");
}

#[test]
fn upstream_down_gives_502() {
    let dead_port = free_port(); // nothing listens there
    let port = free_port();
    let z = Zentinel::start(
        &configs::Proxy::to_targets(2, port, &[format!("127.0.0.1:{dead_port}")])
            .drain_secs(2)
            .upstream("timeouts { connect-secs 1; read-secs 5; }")
            .build(),
    );
    let start = Instant::now();
    let r = get(&z, "d", "/");
    assert_eq!(r.status, 502, "{r:?}");
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn upstream_read_timeout_gives_504() {
    let be = Backend::start("slow");
    let z = simple_proxy(&be, 2, "timeouts { connect-secs 1; read-secs 1; }", "");
    let start = Instant::now();
    let r = get(&z, "s", "/delay/3000");
    let elapsed = start.elapsed();
    assert_eq!(r.status, 504, "{r:?}");
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_millis(2900),
        "504 after {elapsed:?}, expected about read-secs = 1 s"
    );
    // The proxy still works afterwards.
    let r = get(&z, "s", "/fine");
    assert_eq!(r.status, 200);
}

#[test]
fn tcp_connect_then_silent_client_is_not_a_hang() {
    // A client that connects and sends nothing does not block others (one event loop).
    let be = Backend::start("quiet");
    let z = simple_proxy(&be, 1, "", "");
    let _silent: Vec<TcpStream> = (0..5)
        .map(|_| TcpStream::connect(z.addr()).unwrap())
        .collect();
    let r = get(&z, "q", "/ok");
    assert_eq!(r.status, 200);
}

/// A listener with short request/keep-alive timeouts in front of `backend`.
fn proxy_with_listener_timeouts(
    backend: &Backend,
    request_secs: u64,
    keepalive_secs: u64,
) -> Zentinel {
    Zentinel::start(
        &configs::Proxy::new(1, free_port(), backend)
            .listener(&format!("request-timeout-secs {request_secs}"))
            .listener(&format!("keepalive-timeout-secs {keepalive_secs}"))
            .build(),
    )
}

#[test]
fn slow_client_head_is_cut_off() {
    let be = Backend::start("slowloris");
    let z = proxy_with_listener_timeouts(&be, 1, 30);
    let mut c = z.client();
    c.send(b"GET / HTTP/1.1\r\nHost: s\r\n"); // never finished
    let start = Instant::now();
    assert!(
        c.server_closed_within(Duration::from_secs(4)),
        "a request head unfinished for 4 s (request-timeout-secs 1) was not cut off"
    );
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "cut off too early"
    );
    let (requests, _) = be.stats();
    assert_eq!(requests, 0);
}

#[test]
fn idle_keep_alive_client_closed_after_keepalive_timeout() {
    let be = Backend::start("ka-timeout");
    let z = proxy_with_listener_timeouts(&be, 30, 1);
    let mut c = z.client();
    assert_eq!(c.get("/", "k").status, 200);
    assert!(
        c.server_closed_within(Duration::from_secs(4)),
        "idle keep-alive connection still open 4 s after a response (keepalive-timeout-secs 1)"
    );
}

#[test]
fn connect_failure_falls_over_to_another_target() {
    let live = Backend::start("live");
    let dead_port = free_port();
    let port = free_port();
    let z = Zentinel::start(
        &configs::Proxy::to_targets(1, port, &[format!("127.0.0.1:{dead_port}"), live.target()])
            .drain_secs(2)
            .upstream("load-balancing \"round_robin\"")
            .upstream("timeouts { connect-secs 1; read-secs 5; }")
            .build(),
    );
    // "502 when no upstream can be connected": a refused target is skipped for a live one.
    let statuses: Vec<u16> = (0..6)
        .map(|i| get(&z, "m", &format!("/{i}")).status)
        .collect();
    assert!(
        statuses.iter().all(|&s| s == 200),
        "requests to a pool with one refused and one live target: {statuses:?}"
    );
}

/// `listener { keepalive-max-requests 2 }` (upstream Zentinel's key): the second response on
/// a connection says `Connection: close` and the connection ends there.
#[test]
fn keepalive_max_requests_closes_after_the_last_one() {
    let be = Backend::start("max-requests");
    let config = configs::Proxy::new(1, free_port(), &be)
        .listener("keepalive-max-requests 2")
        .build();
    let z = Zentinel::start(&config);
    let mut c = z.client();
    let first = c.get("/bytes/10", "max.test");
    assert_eq!(first.status, 200, "{first:?}");
    assert_ne!(first.header("connection"), Some("close"), "{first:?}");
    let second = c.get("/bytes/10", "max.test");
    assert_eq!(second.status, 200, "{second:?}");
    assert_eq!(second.header("connection"), Some("close"), "{second:?}");
    assert!(
        c.server_closed_within(Duration::from_secs(5)),
        "the connection outlived its last request"
    );
}
