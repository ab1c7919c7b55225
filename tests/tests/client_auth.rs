//! Mutual TLS on listeners (`tls { ca-file; client-auth }`) with a real rustls client: required
//! certificates refuse clients without one (or with one from another CA), the verified subject
//! reaches the upstream as `X-Client-Cert-Subject` and routing can match it, a client's own
//! `X-Client-Cert-Subject` never gets through, and `client-auth "optional"` serves clients
//! without a certificate.

use std::fs;

use zentinel_tests::tls_support::*;
use zentinel_tests::*;

struct Fixture {
    dir: TempDir,
    server_ca: Ca,
    client_ca: Ca,
    _backend: Backend,
    z: Zentinel,
}

fn start() -> Fixture {
    let dir = TempDir::new("mtls");
    let server_ca = Ca::new();
    server_ca.issue(&dir.0, "server", &["mtls.test"]);
    let client_ca = Ca::new();
    fs::write(dir.0.join("clients-ca.pem"), client_ca.cert.pem()).expect("CA file");
    let backend = Backend::start("mtls");
    let path = |n: &str| dir.0.join(n).display().to_string();
    let tls = |mode: &str| {
        format!(
            "tls {{ cert-file \"{}\"; key-file \"{}\"; ca-file \"{}\"; client-auth {mode}; }}",
            path("server.crt"),
            path("server.key"),
            path("clients-ca.pem"),
        )
    };
    let config = format!(
        r#"
system {{
    worker-threads 1
}}
observability {{
    logging {{
        access-log {{
            file "{access_log}"
            format "json"
            buffer-size 0
        }}
    }}
}}
listeners {{
    listener "required" {{
        address "127.0.0.1:{required}"
        protocol "https"
        {required_tls}
    }}
    listener "optional" {{
        address "127.0.0.1:{optional}"
        protocol "https"
        {optional_tls}
    }}
}}
routes {{
    route "admins" {{
        priority "high"
        matches {{
            path-prefix "/admin"
            header "X-Client-Cert-Subject" "CN=admin,O=Acme"
        }}
        static-response status=200 body="admin area"
    }}
    route "rest" {{
        upstream "b"
    }}
}}
upstreams {{
    upstream "b" {{
        target "{target}"
    }}
}}
"#,
        required = free_port(),
        optional = free_port(),
        required_tls = tls("#true"),
        optional_tls = tls("\"optional\""),
        target = backend.target(),
        access_log = path("access.log"),
    );
    let z = Zentinel::start(&config);
    Fixture {
        dir,
        server_ca,
        client_ca,
        _backend: backend,
        z,
    }
}

impl Fixture {
    fn listener(&self, index: usize) -> std::net::SocketAddr {
        self.z.listeners[index]
    }

    fn with_cert(&self, index: usize, ca: &Ca, cn: &str) -> Result<TlsClient, String> {
        let (chain, key) = ca.issue_client(cn, "Acme");
        let config = client_with_cert(&self.server_ca.der(), chain, key);
        let mut c = TlsClient::try_connect(self.listener(index), "mtls.test", config)?;
        // TLS 1.3 verifies the client's certificate after the client's handshake ends: a
        // refusal shows on the first exchange.
        c.try_get("/headers").map(|_| c)
    }
}

fn echoed(r: &TlsResponse, name: &str) -> Vec<String> {
    let (_, seen) = parse_echoed_head(&r.body_str());
    seen.into_iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v)
        .collect()
}

#[test]
fn required_client_certificates() {
    let f = start();
    // No certificate: refused.
    let bare = TlsClient::try_connect(
        f.listener(0),
        "mtls.test",
        default_client(&f.server_ca.der()),
    )
    .and_then(|mut c| c.try_get("/headers"));
    assert!(bare.is_err(), "served without a client certificate");
    // A certificate from another CA: refused.
    assert!(f.with_cert(0, &Ca::new(), "mallory").is_err());

    let mut c = f
        .with_cert(0, &f.client_ca, "client one")
        .expect("a verified client");
    let r = c.get("/headers");
    assert_eq!(r.status, 200);
    assert_eq!(
        echoed(&r, "x-client-cert-subject"),
        ["CN=client one,O=Acme"]
    );

    // The client's own claim is dropped; the verified subject goes instead.
    let req = "GET /headers HTTP/1.1\r\nHost: mtls.test\r\nX-Client-Cert-Subject: CN=admin,O=Acme\r\n\r\n";
    std::io::Write::write_all(c.io.get_mut(), req.as_bytes()).expect("send");
    let r = c.read_response().expect("response");
    assert_eq!(
        echoed(&r, "x-client-cert-subject"),
        ["CN=client one,O=Acme"]
    );
    // Nor does it route: /admin needs the admin certificate.
    let r = c.get("/admin");
    assert_ne!(r.body_str(), "admin area");

    let mut admin = f.with_cert(0, &f.client_ca, "admin").expect("the admin");
    let r = admin.get("/admin");
    assert_eq!(r.body_str(), "admin area");

    // The access log names the certificate of each request.
    let log = f.dir.0.join("access.log");
    let logged = wait_until(std::time::Duration::from_secs(10), || {
        fs::read_to_string(&log).is_ok_and(|t| {
            t.lines().any(|l| {
                l.contains("\"client_cert_subject\":\"CN=admin,O=Acme\"") && l.contains("/admin")
            })
        })
    });
    assert!(logged, "{}", fs::read_to_string(&log).unwrap_or_default());
}

#[test]
fn optional_client_certificates() {
    let f = start();
    let mut bare = TlsClient::connect(
        f.listener(1),
        "mtls.test",
        default_client(&f.server_ca.der()),
    );
    let req = "GET /headers HTTP/1.1\r\nHost: mtls.test\r\nX-Client-Cert-Subject: CN=admin,O=Acme\r\n\r\n";
    std::io::Write::write_all(bare.io.get_mut(), req.as_bytes()).expect("send");
    let r = bare.read_response().expect("response");
    assert_eq!(r.status, 200);
    assert!(
        echoed(&r, "x-client-cert-subject").is_empty(),
        "{}",
        r.body_str()
    );

    let mut c = f
        .with_cert(1, &f.client_ca, "client two")
        .expect("a verified client");
    let r = c.get("/headers");
    assert_eq!(
        echoed(&r, "x-client-cert-subject"),
        ["CN=client two,O=Acme"]
    );
    // An invalid certificate is still refused.
    assert!(f.with_cert(1, &Ca::new(), "mallory").is_err());
}

#[test]
fn client_auth_without_a_ca_file_is_an_error() {
    let dir = TempDir::new("mtls-check");
    let ca = Ca::new();
    ca.issue(&dir.0, "server", &["mtls.test"]);
    let path = dir.0.join("zentinel.kdl");
    let text = "listeners {\n  listener \"h\" {\n    address \"127.0.0.1:1\"\n    protocol \"https\"\n    \
                tls {\n      cert-file \"server.crt\"\n      key-file \"server.key\"\n      client-auth #true\n    }\n  }\n}\n\
                routes { route \"r\" { static-response status=200 body=\"ok\"; } }\n";
    fs::write(&path, text).expect("config");
    let (code, _out, err) = zentinel_check(Some(&path));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(":8:7"),
        "line and column of client-auth: {err}"
    );
    assert!(err.contains("`client-auth` needs `ca-file`"), "{err}");
}
