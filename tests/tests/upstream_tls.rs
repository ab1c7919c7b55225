//! TLS to upstreams end to end (issue 15): `upstream { tls { ... } }` against real
//! `zentinel-backend --tls` processes, with certificates generated here (rcgen): verification
//! against a test CA, pooled and resumed sessions, SNI, a certificate that does not verify
//! (502, logged, counted against the target), `insecure-skip-verify`, mTLS to a backend that
//! requires a client certificate, health checks over TLS, the system trust store, tunnels.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use zentinel_tests::tls_support::Ca;
use zentinel_tests::*;

const DEADLINE: Duration = Duration::from_secs(10);

/// A CA from `tls_support` whose certificate is written to `dir/stem.crt`.
fn ca_in(dir: &Path, stem: &str) -> Ca {
    let ca = Ca::new();
    fs::write(dir.join(format!("{stem}.crt")), ca.cert.pem()).unwrap();
    ca
}

/// A leaf for `names` (DNS names or IP addresses) written to `dir/stem.crt` and `.key`; returns
/// both paths.
fn issue(ca: &Ca, dir: &Path, stem: &str, names: &[&str]) -> (String, String) {
    ca.issue(dir, stem, names);
    let path = |ext: &str| dir.join(format!("{stem}.{ext}")).display().to_string();
    (path("crt"), path("key"))
}

/// A test directory with `ca` (the CA the proxy trusts), `rogue` (one it does not), and a
/// backend certificate `backend` from `ca` for `backend.test` and 127.0.0.1.
struct Pki {
    dir: TempDir,
    rogue: Ca,
}

impl Pki {
    fn new(label: &str) -> Pki {
        let dir = TempDir::new(label);
        let ca = ca_in(&dir.0, "ca");
        let rogue = ca_in(&dir.0, "rogue");
        issue(&ca, &dir.0, "backend", &["backend.test", "127.0.0.1"]);
        issue(&rogue, &dir.0, "impostor", &["backend.test", "127.0.0.1"]);
        Pki { dir, rogue }
    }

    fn path(&self, name: &str) -> String {
        self.dir.0.join(name).display().to_string()
    }

    /// A TLS backend serving certificate `stem`, with `extra` arguments.
    fn backend(&self, name: &str, stem: &str, extra: &[&str]) -> Backend {
        let (cert, key) = (
            self.path(&format!("{stem}.crt")),
            self.path(&format!("{stem}.key")),
        );
        let mut args = vec!["--tls", &cert, &key];
        args.extend_from_slice(extra);
        Backend::start_args(name, &args)
    }
}

/// One listener; each `(host, upstream body)` gets a route matching that Host header and an
/// upstream of the same name.
fn config(port: u16, upstreams: &[(&str, String)]) -> String {
    let routes: String = upstreams
        .iter()
        .map(|(host, _)| {
            format!(
                "    route \"{host}\" {{\n        matches {{ host \"{host}\"; }}\n        \
                 upstream \"{host}\"\n    }}\n"
            )
        })
        .collect();
    let ups: String = upstreams
        .iter()
        .map(|(host, body)| format!("    upstream \"{host}\" {{\n{body}\n    }}\n"))
        .collect();
    format!(
        "system {{\n    worker-processes 1\n}}\nlisteners {{\n    listener \"http\" {{\n        \
         address \"127.0.0.1:{port}\"\n        protocol \"http\"\n    }}\n}}\n\
         routes {{\n{routes}}}\nupstreams {{\n{ups}}}\n"
    )
}

/// The fields of the backend's `/tls` answer.
fn tls_fields(r: &Response) -> String {
    assert_eq!(r.status, 200, "{r:?}");
    r.body_str()
}

#[test]
fn verified_against_a_test_ca_pooled_and_resumed() {
    let pki = Pki::new("uptls-ok");
    let b = pki.backend("tls", "backend", &[]);
    let upstream = format!(
        "        target \"{}\"\n        tls {{\n            sni \"backend.test\"\n            \
         ca-cert \"{}\"\n        }}",
        b.target(),
        pki.path("ca.crt")
    );
    let z = Zentinel::start(&config(free_port(), &[("api.test", upstream)]));
    let mut c = z.client();

    let r = c.get("/bytes/300000", "api.test");
    assert_eq!(r.status, 200, "{r:?}\n{}", z.log());
    r.assert_pattern_body(300_000);
    let first = tls_fields(&c.get("/tls", "api.test"));
    assert_eq!(
        first, "sni=backend.test resumed=false client-cert=false alpn=http/1.1",
        "the backend's view of the first session"
    );
    // Keep-alive requests reuse the pooled TLS connection.
    for i in 0..5 {
        let r = c.get(&format!("/n/{i}"), "api.test");
        assert_eq!(r.status, 200, "{r:?}");
    }
    let stats = c.get("/stats", "api.test").body_str();
    assert!(
        stats.ends_with("connections=1\n"),
        "one upstream connection for every request: {stats}"
    );
    // The backend closes that connection: the next one resumes the session (a ticket from
    // the first handshake, kept in the upstream's session cache).
    assert_eq!(c.get("/close", "api.test").status, 200);
    let second = tls_fields(&c.get("/tls", "api.test"));
    assert_eq!(
        second,
        "sni=backend.test resumed=true client-cert=false alpn=http/1.1"
    );
    let stats = c.get("/stats", "api.test").body_str();
    assert!(stats.ends_with("connections=2\n"), "{stats}");
}

#[test]
fn an_ip_target_without_sni_is_verified_by_its_address_and_sends_no_server_name() {
    let pki = Pki::new("uptls-ip");
    let b = pki.backend("tls", "backend", &[]);
    let upstream = format!(
        "        target \"{}\"\n        tls {{\n            ca-cert \"{}\"\n        }}",
        b.target(),
        pki.path("ca.crt")
    );
    let z = Zentinel::start(&config(free_port(), &[("ip.test", upstream)]));
    let fields = tls_fields(&z.client().get("/tls", "ip.test"));
    assert!(fields.starts_with("sni=- resumed=false"), "{fields}");
}

#[test]
fn a_certificate_that_does_not_verify_is_a_502_logged_and_counted_unless_verification_is_off() {
    let pki = Pki::new("uptls-rogue");
    let impostor = pki.backend("impostor", "impostor", &[]);
    let strict = format!(
        "        target \"{}\"\n        passive-health {{ max-fails 1; fail-timeout-secs 60; }}\n        \
         tls {{\n            sni \"backend.test\"\n            ca-cert \"{}\"\n        }}",
        impostor.target(),
        pki.path("ca.crt")
    );
    let lax = format!(
        "        target \"{}\"\n        tls {{\n            sni \"backend.test\"\n            \
         ca-cert \"{}\"\n            insecure-skip-verify #true\n        }}",
        impostor.target(),
        pki.path("ca.crt")
    );
    let z = Zentinel::start(&config(
        free_port(),
        &[("strict.test", strict), ("lax.test", lax)],
    ));
    // Loud at start.
    let log = z.log_text();
    assert!(
        log.contains("TLS certificate verification is DISABLED for upstream `lax.test`"),
        "{}",
        z.log()
    );

    let r = z.client().get("/x", "strict.test");
    assert_eq!(r.status, 502, "{r:?}");
    let target = impostor.target();
    assert!(
        wait_until(DEADLINE, || z.log_text().lines().any(|l| l
            .contains("upstream connect failed")
            && l.contains(&target)
            && l.contains("TLS handshake failed")
            && l.contains("UnknownIssuer"))),
        "a warning naming the target and the reason:\n{}",
        z.log()
    );
    // Counted like a refused connect: passive health took the target out of rotation.
    assert!(
        wait_until(DEADLINE, || z
            .log_text()
            .contains("upstream target out of rotation (passive)")),
        "{}",
        z.log()
    );
    let r = z.client().get("/tls", "lax.test");
    assert_eq!(
        r.status, 200,
        "insecure-skip-verify accepts the rogue CA: {r:?}"
    );
}

#[test]
fn mutual_tls_to_a_backend_that_requires_a_client_certificate() {
    let pki = Pki::new("uptls-mtls");
    let clients = ca_in(&pki.dir.0, "clients");
    let (cert, key) = issue(&clients, &pki.dir.0, "proxy-client", &["proxy.test"]);
    // A certificate from a CA the backend does not accept clients from.
    let (wrong_cert, wrong_key) = issue(&pki.rogue, &pki.dir.0, "wrong-client", &["proxy.test"]);
    let b = pki.backend(
        "mtls",
        "backend",
        &["--client-ca", &pki.path("clients.crt")],
    );
    let upstream = |client: &str| {
        format!(
            "        target \"{}\"\n        tls {{\n            sni \"backend.test\"\n            \
             ca-cert \"{}\"\n{client}        }}",
            b.target(),
            pki.path("ca.crt")
        )
    };
    let with = upstream(&format!(
        "            client-cert \"{cert}\"\n            client-key \"{key}\"\n"
    ));
    let wrong = upstream(&format!(
        "            client-cert \"{wrong_cert}\"\n            client-key \"{wrong_key}\"\n"
    ));
    let without = upstream("");
    let z = Zentinel::start(&config(
        free_port(),
        &[
            ("with.test", with),
            ("wrong.test", wrong),
            ("without.test", without),
        ],
    ));
    let fields = tls_fields(&z.client().get("/tls", "with.test"));
    assert!(fields.contains("client-cert=true"), "{fields}");
    for host in ["without.test", "wrong.test"] {
        let r = z.client().get("/x", host);
        assert_eq!(r.status, 502, "{host}: {r:?}\n{}", z.log());
    }
    assert!(
        wait_until(DEADLINE, || z.log_text().contains("CertificateRequired")),
        "the backend's refusal is logged:\n{}",
        z.log()
    );
}

#[test]
fn health_checks_over_tls_take_a_target_with_a_bad_certificate_out_of_rotation() {
    let pki = Pki::new("uptls-health");
    let good = pki.backend("good", "backend", &[]);
    let bad = pki.backend("bad", "impostor", &[]);
    let upstream = format!(
        "        target \"{}\"\n        target \"{}\"\n        health-check {{\n            \
         type \"http\" {{ path \"/health\"; expected-status 200; }}\n            \
         interval-secs 1\n            timeout-secs 1\n            unhealthy-threshold 1\n        \
         }}\n        tls {{\n            sni \"backend.test\"\n            ca-cert \"{}\"\n        }}",
        good.target(),
        bad.target(),
        pki.path("ca.crt")
    );
    let z = Zentinel::start(&config(free_port(), &[("hc.test", upstream)]));
    let bad_target = bad.target();
    let down = |log: &str| {
        log.lines().any(|l| {
            l.contains("out of rotation (health check)")
                && l.contains(&bad_target)
                && l.contains("TLS handshake failed")
        })
    };
    assert!(
        wait_until(DEADLINE, || down(&z.log_text())),
        "the probe's handshake fails and takes the target out:\n{}",
        z.log()
    );
    let good_target = good.target();
    assert!(
        !z.log_text()
            .lines()
            .any(|l| l.contains("out of rotation") && l.contains(&good_target)),
        "the good target probes healthy over TLS:\n{}",
        z.log()
    );
    for _ in 0..4 {
        let r = z.client().get("/x", "hc.test");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.backend(), Some("good"));
    }
}

#[test]
fn websocket_upgrade_tunnels_to_a_tls_upstream() {
    let pki = Pki::new("uptls-ws");
    let b = pki.backend("ws", "backend", &[]);
    let upstream = format!(
        "        target \"{}\"\n        tls {{\n            sni \"backend.test\"\n            \
         ca-cert \"{}\"\n        }}",
        b.target(),
        pki.path("ca.crt")
    );
    let z = Zentinel::start(&config(free_port(), &[("ws.test", upstream)]));
    let mut c = z.client();
    c.set_timeout(Duration::from_secs(15));
    c.upgrade_to_websocket();
    c.send(b"hello through TLS");
    assert_eq!(c.read_raw(17), b"hello through TLS");
    let data = pattern(300_000);
    let echoed = c.echo_round(data.clone());
    assert_eq!(echoed.len(), data.len());
    assert!(echoed == data, "the tunnel altered the bytes");
}

#[test]
fn shadow_copies_and_tcp_listeners_reach_a_tls_upstream() {
    let pki = Pki::new("uptls-more");
    let primary = Backend::start("primary");
    let mirror = pki.backend("mirror", "backend", &[]);
    let echo = pki.backend("echo", "backend", &["--mode", "tcp-echo"]);
    let (http, tcp) = (free_port(), free_port());
    let tls = format!(
        "tls {{ sni \"backend.test\"; ca-cert \"{}\"; }}",
        pki.path("ca.crt")
    );
    let z = Zentinel::start(&format!(
        r#"
system {{
    worker-processes 1
}}
listeners {{
    listener "http" {{
        address "127.0.0.1:{http}"
        protocol "http"
    }}
    listener "tcp" {{
        address "127.0.0.1:{tcp}"
        protocol "tcp"
        upstream "echo"
    }}
}}
routes {{
    route "mirrored" {{
        matches {{ host "p.test"; }}
        upstream "primary"
        shadow {{
            upstream "mirror"
            timeout-ms 2000
        }}
    }}
    route "mirror" {{
        matches {{ host "m.test"; }}
        upstream "mirror"
    }}
}}
upstreams {{
    upstream "primary" {{
        target "{}"
    }}
    upstream "mirror" {{
        target "{}"
        {tls}
    }}
    upstream "echo" {{
        target "{}"
        {tls}
    }}
}}
"#,
        primary.target(),
        mirror.target(),
        echo.target()
    ));
    for i in 0..3 {
        let r = z.client().get(&format!("/copy/{i}"), "p.test");
        assert_eq!(r.backend(), Some("primary"), "{r:?}");
    }
    // The mirror counts every request but `/stats`: the three copies, sent over TLS.
    assert!(
        wait_until(DEADLINE, || z
            .client()
            .get("/stats", "m.test")
            .body_str()
            .starts_with("requests=3 ")),
        "{}",
        z.log()
    );

    let mut c = HttpClient::connect(SocketAddr::from(([127, 0, 0, 1], tcp)));
    c.set_timeout(Duration::from_secs(15));
    let data = pattern(200_000);
    let echoed = c.echo_round(data.clone());
    assert!(
        echoed == data,
        "echo through TLS: {} bytes back",
        echoed.len()
    );
}

/// `zentinel --check` on `config` written to `dir`, with `env`; (exit code, combined output).
fn check(dir: &Path, config: &str, env: &[(&str, String)]) -> (Option<i32>, String) {
    let path: PathBuf = dir.join("zentinel.kdl");
    fs::write(&path, config).unwrap();
    let out = Command::new(zentinel_bin())
        .arg("--check")
        .arg("--config")
        .arg(&path)
        .env_remove("ZENTINEL_CONFIG")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run zentinel --check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// The environment that makes `file` the whole system trust store (the platform's store is
/// read only when neither variable is set; an empty directory adds nothing).
fn system_store(pki: &Pki, file: &str) -> [(&'static str, String); 2] {
    let dir = pki.dir.0.join("empty-cert-dir");
    fs::create_dir_all(&dir).unwrap();
    [
        ("SSL_CERT_FILE", file.to_owned()),
        ("SSL_CERT_DIR", dir.display().to_string()),
    ]
}

#[test]
fn check_loads_the_files_and_the_system_trust_store() {
    let pki = Pki::new("uptls-check");
    let upstream = |tls: &str| {
        vec![(
            "u.test",
            format!("        target \"127.0.0.1:9443\"\n        tls {{\n{tls}\n        }}"),
        )]
    };
    // Relative to the configuration file; a missing file fails with its line.
    let (code, out) = check(
        &pki.dir.0,
        &config(
            free_port(),
            &upstream("            ca-cert \"missing.crt\""),
        ),
        &[],
    );
    assert_ne!(code, Some(0), "{out}");
    assert!(
        out.contains("zentinel.kdl:20") && out.contains("missing.crt"),
        "{out}"
    );
    let (code, out) = check(
        &pki.dir.0,
        &config(free_port(), &upstream("            ca-cert \"ca.crt\"")),
        &[],
    );
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = check(
        &pki.dir.0,
        &config(
            free_port(),
            &upstream("            insecure-skip-verify #true"),
        ),
        &[],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("DISABLED for upstream `u.test`"), "{out}");
    // Without `ca-cert`: the system's store, here an empty one.
    let empty = pki.path("empty.pem");
    fs::write(&empty, "").unwrap();
    let (code, out) = check(
        &pki.dir.0,
        &config(free_port(), &upstream("            sni \"backend.test\"")),
        &system_store(&pki, &empty),
    );
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("system trust store"), "{out}");
}

#[test]
fn without_ca_cert_the_system_trust_store_verifies() {
    let pki = Pki::new("uptls-system");
    let b = pki.backend("sys", "backend", &[]);
    let upstream = format!(
        "        target \"{}\"\n        tls {{\n            sni \"backend.test\"\n        }}",
        b.target()
    );
    // The test CA stands for the system's store.
    let env = system_store(&pki, &pki.path("ca.crt"));
    let z = Zentinel::start_with_env(
        &config(free_port(), &[("sys.test", upstream)]),
        &env.each_ref().map(|(k, v)| (*k, v.as_str())),
    );
    let r = z.client().get("/x", "sys.test");
    assert_eq!(r.status, 200, "{r:?}\n{}", z.log());
}
