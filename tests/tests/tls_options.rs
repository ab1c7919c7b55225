//! A listener's TLS options end to end (issue 15), checked from outside with `openssl
//! s_client` (and the rustls client): `cipher-suites` offers exactly the suites named,
//! `max-version` caps the protocol, `session-resumption` on resumes and off never does,
//! `ocsp-response` is stapled and a reload staples its replacement, and a reload re-reads the
//! `ca-file` of mutual TLS.

use std::fs;
use std::sync::Arc;

use rustls::HandshakeKind;
use zentinel_tests::tls_support::*;
use zentinel_tests::*;

/// A CA (also as `ca.pem`/`ca.key`), its leaf `a` for `a.test`, a backend, and a config of
/// several https listeners, each with its own `tls` extras.
struct Fixture {
    dir: TempDir,
    ca: Ca,
    backend: Backend,
}

impl Fixture {
    fn new(label: &str) -> Fixture {
        let dir = TempDir::new(label);
        let ca = Ca::new();
        ca.issue(&dir.0, "a", &["a.test"]);
        ca.write_files(&dir.0);
        Fixture {
            dir,
            ca,
            backend: Backend::start(label),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.0.join(name).display().to_string()
    }

    /// One worker (a session cache is per worker), one listener per entry of `extras`.
    fn start(&self, extras: &[&str]) -> Zentinel {
        let mut listeners = String::new();
        for (i, extra) in extras.iter().enumerate() {
            listeners.push_str(&format!(
                "    listener \"l{i}\" {{\n        address \"127.0.0.1:{port}\"\n        protocol \
                 \"https\"\n        default-route \"app\"\n        tls {{\n            cert-file \
                 \"{crt}\"\n            key-file \"{key}\"\n            {extra}\n        }}\n    }}\n",
                port = free_port(),
                crt = self.path("a.crt"),
                key = self.path("a.key"),
            ));
        }
        Zentinel::start(&format!(
            "system {{\n    worker-processes 1\n}}\nlisteners {{\n{listeners}}}\nroutes {{\n    \
             route \"app\" {{ upstream \"app\"; }}\n}}\nupstreams {{\n    upstream \"app\" {{ \
             target \"{}\"; }}\n}}\n",
            self.backend.target()
        ))
    }
}

#[test]
fn cipher_suites_and_max_version_are_what_openssl_can_negotiate() {
    if openssl_missing() {
        return;
    }
    let f = Fixture::new("tls-suites");
    let z = f.start(&[
        // Upstream's spellings: an IANA TLS 1.3 name, an OpenSSL TLS 1.2 one.
        "cipher-suites \"TLS_AES_128_GCM_SHA256\" \"ECDHE-ECDSA-AES128-GCM-SHA256\"",
        "",
        "max-version \"TLS1.2\"",
    ]);
    let (limited, open, capped) = (z.listeners[0], z.listeners[1], z.listeners[2]);
    for (addr, args, want) in [
        // Offered: negotiated.
        (
            limited,
            &["-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"][..],
            Some("TLS_AES_128_GCM_SHA256"),
        ),
        (
            limited,
            &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"],
            Some("ECDHE-ECDSA-AES128-GCM-SHA256"),
        ),
        // Left out: the handshake fails, although the library has them...
        (
            limited,
            &["-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384"],
            None,
        ),
        (
            limited,
            &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384"],
            None,
        ),
        (
            limited,
            &["-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"],
            None,
        ),
        // ...as a listener without `cipher-suites` shows.
        (
            open,
            &["-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384"],
            Some("TLS_AES_256_GCM_SHA384"),
        ),
        (
            open,
            &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384"],
            Some("ECDHE-ECDSA-AES256-GCM-SHA384"),
        ),
    ] {
        let s = s_client(addr, &f.dir.0, args);
        assert_eq!(
            s.cipher().as_deref(),
            want,
            "{args:?} against {addr}:\n{}",
            s.out
        );
        assert_eq!(s.ok, want.is_some(), "{args:?}:\n{}", s.out);
        if want.is_some() {
            assert!(s.out.contains("HTTP/1.1 200 OK"), "{}", s.out);
        }
    }
    // max-version "TLS1.2": TLS 1.3 alone is refused, an open client gets TLS 1.2.
    let s = s_client(capped, &f.dir.0, &["-tls1_3"]);
    assert!(!s.ok && s.cipher().is_none(), "{}", s.out);
    let s = s_client(capped, &f.dir.0, &[]);
    assert_eq!(
        s.session().map(|(_, p, _)| p).as_deref(),
        Some("TLSv1.2"),
        "{}",
        s.out
    );
}

#[test]
fn session_resumption_on_resumes_and_off_never_does() {
    if openssl_missing() {
        return;
    }
    let f = Fixture::new("tls-resume");
    let z = f.start(&["session-resumption #true", "session-resumption #false"]);
    let (on, off) = (z.listeners[0], z.listeners[1]);
    for version in ["-tls1_2", "-tls1_3"] {
        let session = f.dir.0.join("session.pem");
        let session_arg = session.display().to_string();
        // On: the saved session resumes (a ticket sealed with the master's keys, both versions).
        let _ = fs::remove_file(&session);
        let first = s_client(on, &f.dir.0, &[version, "-sess_out", &session_arg]);
        assert!(first.ok && session.exists(), "{version}:\n{}", first.out);
        let again = s_client(on, &f.dir.0, &[version, "-sess_in", &session_arg]);
        assert_eq!(
            again.session().map(|(k, _, _)| k).as_deref(),
            Some("Reused"),
            "{version}, resumption on:\n{}",
            again.out
        );
        // Off: the server gives nothing to resume with (no session id, no ticket), so
        // openssl has no session to save; were one saved, it would not resume.
        let _ = fs::remove_file(&session);
        let first = s_client(off, &f.dir.0, &[version, "-sess_out", &session_arg]);
        assert!(first.ok, "{version}:\n{}", first.out);
        if session.exists() {
            let again = s_client(off, &f.dir.0, &[version, "-sess_in", &session_arg]);
            assert_eq!(
                again.session().map(|(k, _, _)| k).as_deref(),
                Some("New"),
                "{version}, resumption off:\n{}",
                again.out
            );
        }
    }
    // The same from rustls, whose client caches sessions by itself.
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        for (addr, want) in [(on, HandshakeKind::Resumed), (off, HandshakeKind::Full)] {
            let config: Arc<_> = client_config(&f.ca.der(), &[version]);
            let mut first = TlsClient::connect(addr, "a.test", Arc::clone(&config));
            // The request reads the TLS 1.3 tickets sent after the handshake.
            assert_eq!(first.get("/first").status, 200);
            let mut second = TlsClient::connect(addr, "a.test", config);
            assert_eq!(second.get("/second").status, 200);
            assert_eq!(
                second.conn().handshake_kind(),
                Some(want),
                "{:?} to {addr}",
                version.version
            );
        }
    }
}

#[test]
fn ocsp_responses_are_stapled_and_a_reload_staples_the_new_file() {
    if openssl_missing() {
        return;
    }
    let f = Fixture::new("tls-ocsp");
    f.ca.ocsp_response(&f.dir.0, "a", "a.ocsp", 1, false)
        .expect("openssl ocsp");
    let response = f.path("a.ocsp");
    let z = f.start(&[
        &format!("ocsp-response \"{response}\""),
        "",
        &format!("ocsp-stapling #false\n            ocsp-response \"{response}\""),
    ]);
    let (stapled, none, off) = (z.listeners[0], z.listeners[1], z.listeners[2]);
    let mut first = None;
    for version in ["-tls1_2", "-tls1_3"] {
        let s = s_client(stapled, &f.dir.0, &[version, "-status"]);
        assert!(s.ok, "{}", s.out);
        assert!(s.out.contains("Cert Status: good"), "{version}:\n{}", s.out);
        first = Some(s.staple_next_update().expect("a stapled response"));
        for addr in [none, off] {
            let s = s_client(addr, &f.dir.0, &[version, "-status"]);
            assert!(
                s.ok && s.out.contains("OCSP response: no response sent"),
                "{}",
                s.out
            );
        }
    }
    // Said once at start, for the listener that staples nothing with stapling on; not for
    // the one with stapling off.
    let said = |z: &Zentinel| z.log_text().matches("no OCSP response is stapled").count();
    assert_eq!(said(&z), 1, "{}", z.log());

    // A new response (valid 3 days, not 1) at the same path, then a reload.
    f.ca.ocsp_response(&f.dir.0, "a", "a.ocsp", 3, false)
        .expect("openssl ocsp");
    z.ctl(&["reload"])
        .assert_success("reload after a new OCSP response");
    let s = s_client(stapled, &f.dir.0, &["-status"]);
    let second = s
        .staple_next_update()
        .expect("a stapled response after the reload");
    assert_ne!(Some(&second), first.as_ref(), "{}", s.out);
    assert_eq!(said(&z), 2, "once more for the reload:\n{}", z.log());

    // A response about another certificate is refused by the reload, naming the file; the
    // running one stays.
    f.ca.issue(&f.dir.0, "other", &["other.test"]);
    f.ca.ocsp_response(&f.dir.0, "other", "a.ocsp", 1, false)
        .expect("openssl ocsp");
    let out = z.ctl(&["reload"]);
    assert!(
        !out.success(),
        "reload with another certificate's response: {out}"
    );
    assert!(
        out.said().contains(&response) && out.said().contains("not about this certificate"),
        "{out}"
    );
    let s = s_client(stapled, &f.dir.0, &["-status"]);
    assert_eq!(s.staple_next_update(), Some(second), "{}", s.out);
}

#[test]
fn a_reload_rereads_the_client_ca_file() {
    let dir = TempDir::new("tls-ca-reload");
    let server_ca = Ca::new();
    server_ca.issue(&dir.0, "server", &["a.test"]);
    let (old_ca, new_ca) = (Ca::new(), Ca::new());
    let ca_file = dir.0.join("clients.pem");
    fs::write(&ca_file, old_ca.cert.pem()).unwrap();
    let backend = Backend::start("tls-ca-reload");
    let path = |n: &str| dir.0.join(n).display().to_string();
    let z = Zentinel::start(&format!(
        "system {{\n    worker-processes 2\n}}\nlisteners {{\n    listener \"m\" {{\n        \
         address \"127.0.0.1:{}\"\n        protocol \"https\"\n        default-route \"app\"\n        \
         tls {{ cert-file \"{}\"; key-file \"{}\"; ca-file \"{}\"; client-auth #true; }}\n    }}\n}}\n\
         routes {{\n    route \"app\" {{ upstream \"app\"; }}\n}}\nupstreams {{\n    upstream \"app\" \
         {{ target \"{}\"; }}\n}}\n",
        free_port(),
        path("server.crt"),
        path("server.key"),
        path("clients.pem"),
        backend.target()
    ));
    let get = |ca: &Ca| {
        let (chain, key) = ca.issue_client("client", "Acme");
        let config = client_with_cert(&server_ca.der(), chain, key);
        // TLS 1.3 checks the client's certificate after the client's handshake ends: a
        // refusal shows on the first exchange.
        TlsClient::try_connect(z.listeners[0], "a.test", config)
            .and_then(|mut c| c.try_get("/ca").map(|r| r.status))
    };
    assert_eq!(get(&old_ca), Ok(200));
    assert!(get(&new_ca).is_err());

    // The CA file replaced (through a rename), then a reload: every worker verifies against
    // the new CA, for several connections spread over the two workers.
    let tmp = dir.0.join(".clients.pem.tmp");
    fs::write(&tmp, new_ca.cert.pem()).unwrap();
    fs::rename(&tmp, &ca_file).unwrap();
    z.ctl(&["reload"])
        .assert_success("reload after replacing the CA file");
    for i in 0..6 {
        assert_eq!(get(&new_ca), Ok(200), "connection {i}");
        assert!(get(&old_ca).is_err(), "connection {i}: the old CA's client");
    }
}
