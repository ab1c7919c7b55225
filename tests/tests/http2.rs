//! HTTP/2 to clients (issue 16), end to end with real clients: curl negotiating `h2` by ALPN
//! on a TLS listener and with prior knowledge (h2c) on a plain one, HTTP/1.1 still served on
//! the same listeners, bodies streamed both ways and checked byte for byte, and h2load with
//! many concurrent streams per connection.

use std::fs;
use std::process::Command;
use std::time::Duration;

use zentinel_tests::tls_support::Ca;
use zentinel_tests::*;

fn plain_config(port: u16, protocol: &'static str, backend: &Backend) -> String {
    plain_config_with(port, protocol, backend, "")
}

/// `extra`: more top-level nodes.
fn plain_config_with(port: u16, protocol: &'static str, backend: &Backend, extra: &str) -> String {
    configs::Proxy::new(2, port, backend)
        .protocol(protocol)
        .listener("max-concurrent-streams 64")
        .top_level(extra)
        .build()
}

/// `curl` with `args`, printing the body then `\n<status> <http version>`.
fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "30",
            "-w",
            "\n%{http_code} %{http_version}",
        ])
        .args(args)
        .output()
        .expect("curl runs (scripts/test-deps.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    (body.to_owned(), tail.to_owned())
}

#[test]
fn prior_knowledge_h2c_and_http1_share_a_plain_listener() {
    let backend = Backend::start("h2c");
    let dir = TempDir::new("h2c-access");
    for protocol in ["h2", "http"] {
        let log = dir.0.join(format!("{protocol}.log"));
        let access = format!(
            "observability {{ logging {{ access-log {{\n    file \"{}\"\n    format \"$protocol $status $path\"\n}} }} }}",
            log.display()
        );
        let z = Zentinel::start(&plain_config_with(free_port(), protocol, &backend, &access));
        let url = format!("http://{}/hello?x=1", z.addr());
        let (body, tail) = curl(&["--http2-prior-knowledge", &url]);
        assert_eq!(tail, "200 2", "{protocol}: h2c answered over HTTP/2");
        assert_eq!(body, "backend=h2c path=/hello\n");
        let (body, tail) = curl(&["--http1.1", &url]);
        assert_eq!(tail, "200 1.1", "{protocol}: HTTP/1.1 on the same listener");
        assert_eq!(body, "backend=h2c path=/hello\n");
        let read = || fs::read_to_string(&log).unwrap_or_default();
        assert!(
            wait_until(Duration::from_secs(10), || read().lines().count() >= 2),
            "access log: {}",
            read()
        );
        assert_eq!(read(), "HTTP/2.0 200 /hello?x=1\nHTTP/1.1 200 /hello?x=1\n");
    }
}

#[test]
fn curl_negotiates_h2_by_alpn_on_tls_listeners() {
    let dir = TempDir::new("h2-tls");
    let ca = Ca::new();
    ca.issue(&dir.0, "a", &["a.test"]);
    fs::write(dir.0.join("ca.pem"), ca.cert.pem()).unwrap();
    let backend = Backend::start("h2tls");
    let port = free_port();
    let path = |f: &str| dir.0.join(f).display().to_string();
    let tls = format!(
        "tls {{\n    cert-file \"{}\"\n    key-file \"{}\"\n}}",
        path("a.crt"),
        path("a.key")
    );
    let config = configs::Proxy::new(1, port, &backend)
        .protocol("https")
        .listener(&tls)
        .build();
    let _zentinel = Zentinel::start(&config);
    let resolve = format!("a.test:{port}:127.0.0.1");
    let url = format!("https://a.test:{port}/alpn");
    let ca_file = path("ca.pem");
    let (body, tail) = curl(&["--http2", "--cacert", &ca_file, "--resolve", &resolve, &url]);
    assert_eq!(tail, "200 2", "ALPN chose h2");
    assert_eq!(body, "backend=h2tls path=/alpn\n");
    let (_, tail) = curl(&[
        "--http1.1",
        "--cacert",
        &ca_file,
        "--resolve",
        &resolve,
        &url,
    ]);
    assert_eq!(tail, "200 1.1", "a client offering only http/1.1 gets it");
}

#[test]
fn request_and_response_bodies_stream_through_h2c() {
    let backend = Backend::start("h2body");
    let z = Zentinel::start(&plain_config(free_port(), "h2", &backend));
    let dir = TempDir::new("h2-body");
    let upload = pattern(3_000_000);
    let file = dir.0.join("upload.bin");
    fs::write(&file, &upload).unwrap();
    let url = format!("http://{}/upload", z.addr());
    let data = format!("@{}", file.display());
    // Without a length (chunked towards the upstream) and with one.
    for extra in [&["-H", "content-length:"][..], &[][..]] {
        let mut args = vec![
            "--http2-prior-knowledge",
            "-X",
            "POST",
            "--data-binary",
            &data,
        ];
        args.extend_from_slice(extra);
        args.push(&url);
        let (body, tail) = curl(&args);
        assert_eq!(tail, "200 2");
        assert_eq!(
            body,
            format!("len=3000000 checksum={}", checksum_hex(checksum(&upload))),
            "the upstream got every byte ({extra:?})"
        );
    }
    let out = dir.0.join("download.bin");
    let url = format!("http://{}/bytes/5000000", z.addr());
    let (_, tail) = curl(&[
        "--http2-prior-knowledge",
        "-o",
        &out.display().to_string(),
        &url,
    ]);
    assert_eq!(tail, "200 2");
    let got = fs::read(&out).unwrap();
    assert_eq!(got.len(), 5_000_000);
    assert_eq!(
        checksum(&got),
        pattern_checksum(5_000_000),
        "download byte for byte"
    );
}

#[test]
fn h2load_runs_many_streams_per_connection_without_errors() {
    let backend = Backend::start("h2load");
    let z = Zentinel::start(&plain_config(free_port(), "h2", &backend));
    let out = Command::new("h2load")
        .args(["-n", "4000", "-c", "4", "-m", "32"])
        .arg(format!("http://{}/load", z.addr()))
        .output()
        .expect("h2load runs (scripts/test-deps.sh installs nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "h2load: {text}");
    assert!(
        text.contains("4000 total, 4000 started, 4000 done, 4000 succeeded, 0 failed, 0 errored"),
        "h2load: {text}"
    );
    assert!(text.contains("4000 2xx"), "h2load: {text}");
}

#[test]
fn a_reload_leaves_http2_streams_in_flight_alone() {
    let backend = Backend::start("h2reload");
    let z = Zentinel::start(&plain_config(free_port(), "h2", &backend));
    let (_, connections_before) = backend.stats();
    let url = format!("http://{}/delay/2500", z.addr());
    let slow = std::thread::spawn(move || curl(&["--http2-prior-knowledge", &url]));
    // The stream is in flight once the proxy has its upstream connection.
    assert!(
        wait_until(Duration::from_secs(10), || backend.stats().1
            > connections_before),
        "the slow request never reached the backend"
    );
    z.ctl(&["reload"]).assert_success("reload");
    let (body, tail) = slow.join().expect("curl thread");
    assert_eq!(
        tail, "200 2",
        "the stream finished over HTTP/2 after the reload"
    );
    assert_eq!(body, "delayed 2500ms\n");
    // And the listener still takes new HTTP/2 connections on the new configuration.
    let (_, tail) = curl(&[
        "--http2-prior-knowledge",
        &format!("http://{}/after", z.addr()),
    ]);
    assert_eq!(tail, "200 2");
}
