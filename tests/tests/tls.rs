//! TLS termination end to end (issue 7): a real `zentinel` with certificates generated at test
//! time (rcgen, signed by a test CA), a rustls client that verifies them against that CA, and
//! `curl --cacert` when curl is installed.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use zentinel_tests::tls_support::*;
use zentinel_tests::*;

const DEADLINE: Duration = Duration::from_secs(10);
const UPGRADE_DEADLINE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Fixture: a CA, certificates for two names, a backend and a TLS listener.
// ---------------------------------------------------------------------------------------------

struct Fixture {
    dir: TempDir,
    ca: Ca,
    /// Leaves served for `a.test` (the default) and `b.test` (SNI).
    a: CertificateDer<'static>,
    b: CertificateDer<'static>,
    backend: Backend,
}

impl Fixture {
    fn new(label: &str) -> Fixture {
        let dir = TempDir::new(label);
        let ca = Ca::new();
        let a = ca.issue(&dir.0, "a", &["a.test"]);
        let b = ca.issue(&dir.0, "b", &["b.test", "*.b.test"]);
        fs::write(dir.0.join("ca.pem"), ca.cert.pem()).unwrap();
        Fixture {
            dir,
            ca,
            a,
            b,
            backend: Backend::start("tls-backend"),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.0.join(name).display().to_string()
    }

    fn config(&self, port: u16, workers: usize) -> String {
        format!(
            r#"system {{
    worker-processes {workers}
    graceful-shutdown-timeout-secs 20
}}
listeners {{
    listener "https" {{
        address "127.0.0.1:{port}"
        protocol "https"
        default-route "app"
        tls {{
            cert-file "{a_crt}"
            key-file "{a_key}"
            min-version "1.2"
            sni {{
                hostnames "b.test" "*.b.test"
                cert-file "{b_crt}"
                key-file "{b_key}"
            }}
        }}
    }}
}}
routes {{
    route "app" {{
        upstream "app"
    }}
}}
upstreams {{
    upstream "app" {{
        target "{target}"
    }}
}}
"#,
            a_crt = self.path("a.crt"),
            a_key = self.path("a.key"),
            b_crt = self.path("b.crt"),
            b_key = self.path("b.key"),
            target = self.backend.target(),
        )
    }

    fn start(&self, workers: usize) -> Zentinel {
        Zentinel::start(&self.config(free_port(), workers))
    }

    fn client(&self, z: &Zentinel, name: &str) -> TlsClient {
        TlsClient::connect(z.addr(), name, default_client(&self.ca.der()))
    }
}

// ---------------------------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------------------------

#[test]
fn https_request_is_proxied_with_sni_and_alpn() {
    let f = Fixture::new("tls-basic");
    let z = f.start(1);

    let mut c = f.client(&z, "a.test");
    assert_eq!(c.conn().alpn_protocol(), Some(&b"http/1.1"[..]), "ALPN");
    assert_eq!(c.leaf(), f.a, "a.test gets the default certificate");
    // Two requests on one TLS connection: keep-alive works through the TLS layer.
    for path in ["/first", "/second"] {
        let r = c.get(path);
        assert_eq!(r.status, 200, "{}", r.body_str());
        assert_eq!(r.body_str(), format!("backend=tls-backend path={path}\n"));
        assert_eq!(r.header("x-backend"), Some("tls-backend"));
    }
    // The upstream learns the client spoke HTTPS.
    let r = c.get("/headers");
    let echoed = r.body_str().to_ascii_lowercase();
    assert!(echoed.contains("x-forwarded-proto: https"), "{echoed}");
    assert!(echoed.contains("proto=https"), "Forwarded: {echoed}");
    // A body larger than one TLS record and than the proxy's buffers arrives intact.
    let n = 300_000;
    let r = c.get(&format!("/bytes/{n}"));
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), n);
    assert_eq!(r.body, pattern(n), "body bytes");

    // SNI: b.test and a name under its wildcard get the second certificate, the first one
    // again for an unknown name.
    for name in ["b.test", "x.b.test"] {
        let mut c = f.client(&z, name);
        assert_eq!(c.leaf(), f.b, "{name} gets b's certificate");
        assert_eq!(c.get("/sni").status, 200);
    }
    // An unknown name gets the default certificate, which the client then refuses: the
    // name is not on it. That refusal is the client's, after the server chose `a`.
    let err = TlsClient::try_connect(z.addr(), "unknown.test", default_client(&f.ca.der()))
        .err()
        .expect("a certificate for a.test must not verify as unknown.test");
    assert!(
        err.contains("not valid for name") && err.contains("a.test"),
        "{err}"
    );

    // ALPN: an h2-only client gets h2; one offering only protocols the proxy does not speak
    // is refused (no protocol in common).
    let mut h2_only = (*default_client(&f.ca.der())).clone();
    h2_only.alpn_protocols = vec![b"h2".to_vec()];
    let c = TlsClient::connect(z.addr(), "a.test", Arc::new(h2_only));
    assert_eq!(c.conn().alpn_protocol(), Some(&b"h2"[..]));
    let mut other = (*default_client(&f.ca.der())).clone();
    other.alpn_protocols = vec![b"spdy/3.1".to_vec()];
    let err = TlsClient::try_connect(z.addr(), "a.test", Arc::new(other))
        .err()
        .expect("a client with no protocol in common must fail");
    assert!(err.contains("NoApplicationProtocol"), "{err}");
}

#[test]
fn old_protocol_versions_are_refused() {
    let f = Fixture::new("tls-versions");
    let z = f.start(1);

    // TLS 1.2 and 1.3 both work.
    for v in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut c = TlsClient::connect(z.addr(), "a.test", client_config(&f.ca.der(), &[v]));
        assert_eq!(c.conn().protocol_version(), Some(v.version));
        assert_eq!(c.get("/v").status, 200);
    }

    // A hand-written TLS 1.1 ClientHello (rustls cannot speak it): the server answers with a
    // fatal protocol_version alert and closes.
    let mut hello = vec![0x03, 0x02]; // client_version TLS 1.1
    hello.extend_from_slice(&[0x5a; 32]); // random
    hello.push(0); // no session id
                   // Suites the server has (ECDHE-{ECDSA,RSA}-AES128-GCM), so only the version can be the
                   // reason for the refusal.
    hello.extend_from_slice(&[0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x2f]);
    hello.extend_from_slice(&[0x01, 0x00]); // null compression
                                            // signature_algorithms (ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256): without it rustls
                                            // stops before looking at the version.
    hello.extend_from_slice(&[
        0x00, 0x0a, 0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x03, 0x08, 0x04,
    ]);
    let mut handshake = vec![0x01, 0x00, 0x00, hello.len() as u8];
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x01, 0x00, handshake.len() as u8];
    record.extend_from_slice(&handshake);
    let mut s = TcpStream::connect(z.addr()).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(&record).unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    assert!(
        reply.len() >= 7 && reply[0] == 0x15 && reply[5] == 2 && reply[6] == 70,
        "expected a fatal protocol_version alert (15 03 0x 00 02 02 46), got {reply:02x?}"
    );

    // min-version "1.3": a TLS 1.2-only client is refused.
    let port = free_port();
    let config = f
        .config(port, 1)
        .replace("min-version \"1.2\"", "min-version \"1.3\"");
    let z13 = Zentinel::start(&config);
    let err = TlsClient::try_connect(
        z13.addr(),
        "a.test",
        client_config(&f.ca.der(), &[&rustls::version::TLS12]),
    )
    .err()
    .expect("TLS 1.2 client against min-version 1.3");
    assert!(
        err.contains("PeerIncompatible") || err.contains("alert"),
        "{err}"
    );
    let mut c = TlsClient::connect(z13.addr(), "a.test", default_client(&f.ca.der()));
    assert_eq!(
        c.conn().protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(c.get("/v13").status, 200);
}

#[test]
fn reload_serves_replaced_certificates_to_new_connections() {
    let f = Fixture::new("tls-reload");
    let z = f.start(2);
    let mut before = f.client(&z, "b.test");
    assert_eq!(before.leaf(), f.b);
    assert_eq!(before.get("/before").status, 200);

    // New files at the same paths, then a reload.
    let b2 = f.ca.issue(&f.dir.0, "b", &["b.test", "*.b.test"]);
    let a2 = f.ca.issue(&f.dir.0, "a", &["a.test"]);
    assert_ne!(b2, f.b);
    z.ctl(&["reload"])
        .assert_success("reload after replacing certificates");

    // Every worker serves the new certificates: several connections (they spread over the
    // workers) all see them.
    for i in 0..6 {
        let mut c = f.client(&z, "b.test");
        assert_eq!(
            c.leaf(),
            b2,
            "connection {i} after the reload: b's new certificate"
        );
        assert_eq!(c.get("/after").status, 200);
        assert_eq!(f.client(&z, "a.test").leaf(), a2, "a's new certificate");
    }
    // A connection opened before the reload keeps working.
    assert_eq!(before.get("/still").status, 200);

    // A certificate that breaks is refused by the reload, and the running one stays.
    fs::write(f.dir.0.join("b.crt"), "garbage\n").unwrap();
    let out = z.ctl(&["reload"]);
    assert!(
        !out.success(),
        "reload with a broken certificate succeeded: {out}"
    );
    assert!(
        out.said().contains(&f.path("b.crt")),
        "reload error names the file: {out}"
    );
    assert_eq!(
        f.client(&z, "b.test").leaf(),
        b2,
        "still the last good certificate"
    );
}

#[test]
fn check_names_a_bad_certificate_file() {
    let f = Fixture::new("tls-check");
    let config = f.config(free_port(), 1);
    let good = f.dir.0.join("good.kdl");
    fs::write(&good, &config).unwrap();
    let (code, out, err) = zentinel_check(Some(&good));
    assert_eq!(code, Some(0), "good config: {out}{err}");

    let missing = f.path("missing.crt");
    let bad = f.dir.0.join("bad.kdl");
    fs::write(&bad, config.replace(&f.path("b.crt"), &missing)).unwrap();
    let (code, out, err) = zentinel_check(Some(&bad));
    assert_ne!(
        code,
        Some(0),
        "--check accepted a missing certificate: {out}{err}"
    );
    let text = format!("{out}{err}");
    assert!(text.contains(&missing), "the file is named: {text}");
    let line = config
        .lines()
        .position(|l| l.contains("b.crt"))
        .map(|i| i + 1)
        .unwrap();
    assert!(
        text.contains(&format!("bad.kdl:{line}:")),
        "the line ({line}) is given: {text}"
    );

    // A key that is not the certificate's.
    let swapped = f.dir.0.join("swapped.kdl");
    fs::write(&swapped, config.replace(&f.path("b.key"), &f.path("a.key"))).unwrap();
    let (code, out, err) = zentinel_check(Some(&swapped));
    assert_ne!(code, Some(0));
    assert!(
        format!("{out}{err}").contains("does not match the certificate"),
        "{out}{err}"
    );
}

#[test]
fn curl_fetches_over_https() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("curl not installed: skipping the curl part of the TLS tests");
        return;
    }
    let f = Fixture::new("tls-curl");
    let z = f.start(1);
    let port = z.addr().port();
    for (name, want_leaf) in [("a.test", "a.test"), ("b.test", "b.test")] {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "--http1.1", "--cacert"])
            .arg(f.path("ca.pem"))
            .args(["--resolve", &format!("{name}:{port}:127.0.0.1")])
            .args(["-w", "\n%{http_code} %{ssl_verify_result}"])
            .arg(format!("https://{name}:{port}/curl"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "curl {name}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            stdout, "backend=tls-backend path=/curl\n\n200 0",
            "curl {name} (verified against the CA for {want_leaf})"
        );
    }
}

#[test]
fn rolling_upgrade_drains_tls_keepalive_clients() {
    let f = Fixture::new("tls-upgrade");
    let z = f.start(2);
    let copy = binary_copy("tls-upgrade");
    let _files = TempFiles(vec![copy.clone()]);
    let config = default_client(&f.ca.der());

    // A loop of TLS clients over keep-alive connections, reconnecting after `Connection:
    // close`: every request must get a complete 200.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let loop_handle = {
        let (stop, ok, config, addr) = (
            Arc::clone(&stop),
            Arc::clone(&ok),
            Arc::clone(&config),
            z.addr(),
        );
        thread::spawn(move || -> Result<u64, String> {
            let mut closes = 0;
            while !stop.load(Ordering::SeqCst) {
                let mut c = TlsClient::try_connect(addr, "b.test", Arc::clone(&config))?;
                loop {
                    let r = c.try_get("/loop")?;
                    if r.status != 200 || r.body_str() != "backend=tls-backend path=/loop\n" {
                        return Err(format!("bad response {} {:?}", r.status, r.body_str()));
                    }
                    ok.fetch_add(1, Ordering::SeqCst);
                    if r.closes() {
                        closes += 1;
                        c.expect_close_notify();
                        break;
                    }
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    thread::sleep(Duration::from_millis(5));
                }
            }
            Ok(closes)
        })
    };
    assert!(
        wait_until(DEADLINE, || ok.load(Ordering::SeqCst) >= 20),
        "the TLS loop made no progress"
    );

    // A keep-alive client with a request in flight when the upgrade starts.
    let mut c = f.client(&z, "a.test");
    assert_eq!(c.get("/warm").status, 200);
    let req = "GET /delay/1500 HTTP/1.1\r\nHost: a.test\r\n\r\n";
    c.io.get_mut().write_all(req.as_bytes()).unwrap();
    c.io.get_mut().flush().unwrap();
    let socket = z.control_socket();
    let binary = copy.display().to_string();
    let upgrade = thread::spawn(move || {
        ctl_within(
            &socket,
            &["upgrade", "--rolling", "--binary", &binary],
            UPGRADE_DEADLINE,
        )
    });
    let r = c.read_response().expect("the in-flight request finishes");
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "delayed 1500ms\n");
    // Until its worker drains, the connection keeps answering; then `Connection: close`,
    // and close_notify before the socket closes.
    let started = Instant::now();
    let mut last = r;
    while !last.closes() {
        assert!(
            started.elapsed() < UPGRADE_DEADLINE,
            "no `Connection: close` within {UPGRADE_DEADLINE:?}"
        );
        thread::sleep(Duration::from_millis(50));
        last = c.get("/after");
        assert_eq!(last.status, 200, "{}", last.body_str());
    }
    c.expect_close_notify();

    let out = upgrade.join().unwrap();
    assert!(out.success(), "upgrade --rolling: {out}\n{}", z.log());
    // The loop went on through the upgrade, on new workers too.
    let after_upgrade = ok.load(Ordering::SeqCst);
    assert!(
        wait_until(DEADLINE, || ok.load(Ordering::SeqCst) >= after_upgrade + 20),
        "the TLS loop made no progress after the upgrade"
    );
    stop.store(true, Ordering::SeqCst);
    let closes = loop_handle
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("a TLS request failed during the upgrade: {e}\n{}", z.log()));
    assert!(
        closes >= 1,
        "the loop's keep-alive connections never got `Connection: close` from a draining worker"
    );
    // New connections after the upgrade are served by the new workers with the certificates
    // they read themselves.
    let mut fresh = f.client(&z, "b.test");
    assert_eq!(fresh.leaf(), f.b);
    assert_eq!(fresh.get("/fresh").status, 200);
}

#[test]
fn stalled_handshakes_are_cut_at_the_request_timeout() {
    let f = Fixture::new("tls-handshake-timeout");
    let config = f.config(free_port(), 1).replace(
        "default-route \"app\"",
        "default-route \"app\"\n        request-timeout-secs 1",
    );
    let z = Zentinel::start(&config);
    // One client sends nothing, the other half a ClientHello record.
    let mut silent = TcpStream::connect(z.addr()).unwrap();
    let mut partial = TcpStream::connect(z.addr()).unwrap();
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x00, 0x80, 0x01])
        .unwrap();
    let started = Instant::now();
    for (what, s) in [("silent", &mut silent), ("partial", &mut partial)] {
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut buf = [0u8; 64];
        // Whatever the server says (nothing, or an alert) ends in EOF, not in our timeout.
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("{what}: not closed by the handshake timeout: {e}"),
            }
        }
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "handshakes cut after {waited:?}, expected about the 1 s request timeout"
    );
    // Meanwhile the listener serves others.
    let mut c = f.client(&z, "a.test");
    assert_eq!(c.get("/ok").status, 200);
}

/// A `static-files` body crosses the TLS layer whole, streamed (several buffers), and a Range
/// works the same as on plain HTTP.
#[test]
fn static_files_stream_over_https() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("curl not installed: skipping");
        return;
    }
    let f = Fixture::new("tls-static");
    let www = f.dir.0.join("www");
    fs::create_dir_all(&www).unwrap();
    let size = 3 * 1024 * 1024 + 7;
    fs::write(www.join("big.bin"), pattern(size)).unwrap();
    let port = free_port();
    let cfg = f.config(port, 1).replace(
        "route \"app\" {\n        upstream \"app\"\n    }",
        &format!(
            "route \"app\" {{\n        static-files {{ root \"{}\"; }}\n    }}",
            www.display()
        ),
    );
    assert!(cfg.contains("static-files"), "{cfg}");
    let z = Zentinel::start(&cfg);
    let curl = |extra: &[&str]| {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "20",
                "--http1.1",
                "-o",
                "/dev/null",
                "--cacert",
            ])
            .arg(f.path("ca.pem"))
            .args([
                "--resolve",
                &format!("a.test:{}:127.0.0.1", z.addr().port()),
            ])
            .args(["-w", "%{http_code} %{size_download}"])
            .args(extra)
            .arg(format!("https://a.test:{}/big.bin", z.addr().port()))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(curl(&[]), format!("200 {size}"));
    assert_eq!(curl(&["-r", "100-199"]), "206 100");
    // `compress` (on by default) over TLS: compressed chunks through the TLS layer.
    let js = "let answer = compute(42);\n".repeat(20_000);
    fs::write(www.join("app.js"), &js).unwrap();
    let out_file = f.path("app.js.out");
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "--http1.1",
            "--compressed",
            "--cacert",
        ])
        .arg(f.path("ca.pem"))
        .args([
            "--resolve",
            &format!("a.test:{}:127.0.0.1", z.addr().port()),
        ])
        .args(["-w", "%{http_code} %{size_download}", "-o"])
        .arg(&out_file)
        .arg(format!("https://a.test:{}/app.js", z.addr().port()))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let wire: usize = said
        .strip_prefix("200 ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{said}"));
    assert!(wire < js.len() / 10, "{said}: not compressed");
    assert_eq!(fs::read_to_string(&out_file).unwrap(), js);
}
