//! A listener's `tls` beyond its certificates, as upstream spells it: `min-version` and
//! `max-version` in every spelling upstream takes, `cipher-suite(s)` in every form upstream's
//! parser and examples use, `session-resumption`, `ocsp-stapling` and the OCSP response files,
//! each bad value an error at its line naming what is accepted.

use std::path::PathBuf;
use std::process::Command;

use rcgen::{CertificateParams, KeyPair};

use super::*;
use zentinel_protocol::config::*;
use zentinel_worker::tls::Resumption;
use zentinel_worker::tls_tickets::SharedTicketer;

/// A directory with a CA (`ca.pem`, `ca.key`) and two leaves it issued, `a` and `b`
/// (`.crt`, `.key`); the configuration is `zentinel.kdl` in it.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn new(tag: &str) -> Files {
        let dir = crate::test_ca::fresh_dir("zentinel-tlsopt", tag);
        let (ca, ca_key) = crate::test_ca::write_ca(&dir, "tls options test CA");
        for stem in ["a", "b"] {
            let params = CertificateParams::new(vec![format!("{stem}.test")]).unwrap();
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
            std::fs::write(dir.join(format!("{stem}.crt")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
        }
        Files { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// A listener with certificate `a` and `body` in its `tls`; the body starts on line 7.
    fn parse(&self, body: &str) -> Result<FullConfig, Vec<ConfigDiagnostic>> {
        let source = format!(
            "listeners {{\n    listener \"s\" {{\n        address \"127.0.0.1:8443\"\n        \
             tls {{\n            cert-file \"a.crt\"\n            key-file \"a.key\"\n{body}\n        \
             }}\n    }}\n}}\n"
        );
        parse_full_config(&source, &self.path("zentinel.kdl"))
    }

    #[track_caller]
    fn ok(&self, body: &str) -> (TlsConfig, Vec<String>) {
        match self.parse(body) {
            Ok(c) => (
                c.proxy.listeners[0].tls.clone().expect("tls"),
                c.warnings.iter().map(located).collect(),
            ),
            Err(d) => panic!("{}", d.iter().map(located).collect::<Vec<_>>().join("\n")),
        }
    }

    /// Every error, as `line:column node: message`.
    #[track_caller]
    fn errors(&self, body: &str) -> Vec<String> {
        match self.parse(body) {
            Ok(_) => panic!("expected an error for:\n{body}"),
            Err(d) => d.iter().map(located).collect(),
        }
    }

    /// A DER OCSP response about `stem`'s certificate, signed by the CA with `openssl ocsp`;
    /// `None` when openssl is not installed.
    fn ocsp(&self, stem: &str, out: &str, revoked: bool) -> Option<String> {
        let openssl = |args: &[&str]| {
            Command::new("openssl")
                .args(args)
                .current_dir(&self.dir)
                .output()
        };
        let serial = openssl(&["x509", "-noout", "-serial", "-in", &format!("{stem}.crt")]).ok()?;
        let serial = String::from_utf8(serial.stdout).unwrap();
        let serial = serial.trim().trim_start_matches("serial=");
        let line = if revoked {
            format!("R\t300101000000Z\t250101000000Z\t{serial}\tunknown\t/CN={stem}\n")
        } else {
            format!("V\t300101000000Z\t\t{serial}\tunknown\t/CN={stem}\n")
        };
        std::fs::write(self.dir.join("index.txt"), line).unwrap();
        let crt = format!("{stem}.crt");
        for args in [
            &[
                "ocsp",
                "-issuer",
                "ca.pem",
                "-cert",
                &crt,
                "-no_nonce",
                "-reqout",
                "req.der",
            ][..],
            &[
                "ocsp",
                "-index",
                "index.txt",
                "-rsigner",
                "ca.pem",
                "-rkey",
                "ca.key",
                "-CA",
                "ca.pem",
                "-reqin",
                "req.der",
                "-respout",
                out,
                "-ndays",
                "1",
            ],
        ] {
            let o = openssl(args).unwrap();
            assert!(o.status.success(), "openssl {args:?}: {o:?}");
        }
        Some(self.path(out))
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn located(d: &ConfigDiagnostic) -> String {
    format!("{}:{} {}: {}", d.line, d.column, d.node, d.message)
}

#[track_caller]
fn has(list: &[String], at: &str, needle: &str) {
    assert!(
        list.iter()
            .any(|l| l.starts_with(&format!("{at} ")) && l.contains(needle)),
        "want {at} containing {needle:?}, got:\n{}",
        list.join("\n")
    );
}

#[test]
fn upstreams_example_block_is_applied() {
    // The `tls` of upstream's example configuration, as it is written there.
    let f = Files::new("example");
    let (tls, warnings) = f.ok(r#"            min-version "TLS1.2"
            ocsp-stapling #true
            session-resumption #true
            cipher-suites {
                - "TLS_AES_128_GCM_SHA256"
                - "TLS_AES_256_GCM_SHA384"
                - "TLS_CHACHA20_POLY1305_SHA256"
            }"#);
    assert_eq!(
        tls.cipher_suites,
        [
            "TLS13_AES_128_GCM_SHA256",
            "TLS13_AES_256_GCM_SHA384",
            "TLS13_CHACHA20_POLY1305_SHA256"
        ]
    );
    assert!(tls.session_resumption && tls.ocsp_stapling);
    assert_eq!(
        (tls.min_version, &tls.ocsp_response),
        (TlsVersion::Tls12, &None)
    );
    // Only TLS 1.3 suites while TLS 1.2 is allowed: applied, and said.
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    has(
        &warnings,
        "10:13",
        "no TLS 1.2 cipher suite is listed: TLS 1.2 clients are refused",
    );
    zentinel_worker::tls::server_config(
        &tls,
        &Resumption::new(SharedTicketer::new(&Default::default())),
    )
    .unwrap();

    // Nothing written: upstream's defaults, nothing to say.
    let (tls, warnings) = f.ok("");
    assert!(tls.session_resumption && tls.ocsp_stapling && tls.cipher_suites.is_empty());
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn every_version_spelling() {
    let f = Files::new("versions");
    for (text, want) in [
        ("1.2", TlsVersion::Tls12),
        ("TLS1.2", TlsVersion::Tls12),
        ("tls1.2", TlsVersion::Tls12),
        ("tlsv1.2", TlsVersion::Tls12),
        ("TLSv1.2", TlsVersion::Tls12),
        ("TLS 1.2", TlsVersion::Tls12),
        ("TLS_1_2", TlsVersion::Tls12),
        ("TLS12", TlsVersion::Tls12),
        ("1.3", TlsVersion::Tls13),
        ("TLS1.3", TlsVersion::Tls13),
        ("tlsv1.3", TlsVersion::Tls13),
        ("TLSv1_3", TlsVersion::Tls13),
    ] {
        let (tls, _) = f.ok(&format!("            min-version \"{text}\""));
        assert_eq!(tls.min_version, want, "{text}");
        let (tls, _) = f.ok(&format!("            max-version \"{text}\""));
        assert_eq!(tls.max_version, Some(want), "{text}");
    }
    let e = f.errors("            min-version \"TLSv1.1\"");
    has(
        &e,
        "7:25",
        "TLS 1.1 is not supported (insecure): use \"1.2\" or \"1.3\"",
    );
    for bad in ["SSLv3", "12", "1.4", ""] {
        let e = f.errors(&format!("            max-version \"{bad}\""));
        has(
            &e,
            "7:25",
            "expected \"1.2\" or \"1.3\" (also written \"TLS1.2\"",
        );
    }
    let e = f.errors("            min-version \"1.3\"\n            max-version \"TLS1.2\"");
    has(&e, "8:13", "max-version is older than min-version");
}

#[test]
fn cipher_suites_in_every_form_travel_as_rustls_names() {
    let f = Files::new("suites");
    // Upstream's parser: one `cipher-suite` per suite.
    let (tls, w) = f.ok(
        "            cipher-suite \"TLS_AES_256_GCM_SHA384\"\n            \
         cipher-suite \"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256\"",
    );
    assert_eq!(
        tls.cipher_suites,
        [
            "TLS13_AES_256_GCM_SHA384",
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"
        ]
    );
    assert!(w.is_empty(), "{w:?}");
    // Arguments, an OpenSSL list, rustls and lower-case spellings, a bare block, duplicates.
    let (tls, _) = f.ok("            cipher-suites \"tls13_aes_128_gcm_sha256\" \
         \"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305\"\n            \
         cipher-suite \"TLS_AES_128_GCM_SHA256\"");
    assert_eq!(
        tls.cipher_suites,
        [
            "TLS13_AES_128_GCM_SHA256",
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
        ]
    );
    let (tls, _) = f.ok(
        "            cipher-suites {\n                TLS_CHACHA20_POLY1305_SHA256\n                \
         - \"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256\"\n            }",
    );
    assert_eq!(
        tls.cipher_suites,
        [
            "TLS13_CHACHA20_POLY1305_SHA256",
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"
        ]
    );
    zentinel_worker::tls::server_config(
        &tls,
        &Resumption::new(SharedTicketer::new(&Default::default())),
    )
    .unwrap();
}

#[test]
fn bad_cipher_suites_are_errors_naming_the_accepted_ones() {
    let f = Files::new("suites-bad");
    let e = f.errors("            cipher-suite \"TLS_RSA_WITH_AES_128_CBC_SHA\"");
    assert_eq!(e.len(), 1, "{e:?}");
    has(
        &e,
        "7:26 cipher-suite:",
        "unknown or unsupported cipher suite \"TLS_RSA_WITH_AES_128_CBC_SHA\"",
    );
    has(
        &e,
        "7:26",
        "accepted: TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384",
    );
    has(
        &e,
        "7:26",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 (the TLS 1.3 ones",
    );
    let e = f.errors(
        "            cipher-suites {\n                - \"TLS_AES_128_GCM_SHA265\"\n            }",
    );
    has(
        &e,
        "8:19 cipher-suites:",
        "(did you mean `TLS_AES_128_GCM_SHA256`?)",
    );
    let e = f.errors("            cipher-suites 128");
    has(&e, "7:27", "expected a cipher suite name (a string), found");
    let e = f.errors("            cipher-suites");
    has(&e, "7:13", "`cipher-suites` names no suite");
    let e = f.errors("            cipher-suites { - \"TLS_AES_128_GCM_SHA256\" { }; }");
    has(&e, "7:29", "expected one suite per line");
    let e = f.errors(
        "            cipher-suites \"TLS_AES_128_GCM_SHA256\"\n            cipher-suites \"TLS_AES_256_GCM_SHA384\"",
    );
    has(&e, "8:13", "duplicate `cipher-suites`");
}

#[test]
fn suites_that_cannot_meet_the_versions_or_the_keys() {
    let f = Files::new("suites-versions");
    // Nothing usable: errors.
    let e = f.errors(
        "            min-version \"1.3\"\n            cipher-suite \"ECDHE-ECDSA-AES128-GCM-SHA256\"",
    );
    has(
        &e,
        "8:13",
        "no cipher suite listed can be used: they are all TLS 1.2 suites and min-version is 1.3",
    );
    let e = f.errors(
        "            max-version \"1.2\"\n            cipher-suites \"TLS_AES_128_GCM_SHA256\"",
    );
    has(
        &e,
        "8:13",
        "they are all TLS 1.3 suites and max-version is 1.2",
    );
    // Partly usable: warnings saying which part is not.
    let (tls, w) = f.ok(
        "            min-version \"1.3\"\n            cipher-suites \"TLS_AES_128_GCM_SHA256\" \
         \"ECDHE-ECDSA-AES128-GCM-SHA256\"",
    );
    assert_eq!(tls.cipher_suites.len(), 2);
    assert_eq!(w.len(), 1, "{w:?}");
    has(
        &w,
        "8:52",
        "`TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256` is never used: min-version is 1.3",
    );
    let (_, w) = f.ok("            cipher-suites \"ECDHE-ECDSA-AES128-GCM-SHA256\"");
    has(
        &w,
        "7:13",
        "no TLS 1.3 cipher suite is listed: TLS 1.3 is not offered",
    );
    // Upstream's example TLS 1.2 suites are RSA ones; the certificate here has an ECDSA key.
    let (_, w) = f.ok(
        "            cipher-suites \"TLS_AES_128_GCM_SHA256\" \"TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384\"",
    );
    assert_eq!(w.len(), 1, "{w:?}");
    has(
        &w,
        "5:23",
        "no TLS 1.2 cipher suite listed works with this certificate's ECDSA key",
    );
}

#[test]
fn session_resumption_and_ocsp_stapling_are_booleans() {
    let f = Files::new("bools");
    let (tls, w) = f.ok("            session-resumption #false\n            ocsp-stapling #false");
    assert!(!tls.session_resumption && !tls.ocsp_stapling);
    assert!(w.is_empty(), "{w:?}");
    let e = f.errors("            session-resumption \"off\"\n            ocsp-stapling");
    has(&e, "7:32", "expected a boolean (#true or #false)");
    has(&e, "8:13", "missing value");
    let e = f.errors("            ocsp-stapling #true\n            ocsp-stapling #false");
    has(&e, "8:13", "duplicate `ocsp-stapling`");
}

#[test]
fn ocsp_response_files_are_checked_against_their_certificate() {
    let f = Files::new("ocsp");
    let (Some(a), Some(b)) = (f.ocsp("a", "a.ocsp", false), f.ocsp("b", "b.ocsp", false)) else {
        eprintln!("openssl not installed: skipping the OCSP response checks");
        return;
    };
    // The default certificate's and an SNI certificate's, relative to the configuration.
    let sni = "            sni {\n                hostnames \"b.test\"\n                cert-file \
               \"b.crt\"\n                key-file \"b.key\"\n                ocsp-response \
               \"b.ocsp\"\n            }";
    let (tls, w) = f.ok(&format!("            ocsp-response \"a.ocsp\"\n{sni}"));
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(tls.ocsp_response.as_deref(), Some(a.as_str()));
    assert_eq!(
        tls.additional_certs[0].ocsp_response.as_deref(),
        Some(b.as_str())
    );
    zentinel_worker::tls::server_config(
        &tls,
        &Resumption::new(SharedTicketer::new(&Default::default())),
    )
    .unwrap();

    // Another certificate's response (a stale file after a renewal).
    let e = f.errors("            ocsp-response \"b.ocsp\"");
    assert_eq!(e.len(), 1, "{e:?}");
    has(&e, "7:27", "is not about this certificate (serial");
    // Not a response, no file.
    std::fs::write(f.dir.join("junk.der"), "-----BEGIN CERTIFICATE-----\n").unwrap();
    let e = f.errors("            ocsp-response \"junk.der\"");
    has(&e, "7:27", "is not a DER OCSP response");
    let e = f.errors("            ocsp-response \"none.der\"");
    has(&e, "7:27", "cannot read OCSP response");
    let e = f.errors("            ocsp-response \"\"");
    has(&e, "7:27", "path must not be empty");

    // Stapling off: the file is not used, and that is said.
    let (tls, w) = f.ok("            ocsp-stapling #false\n            ocsp-response \"a.ocsp\"");
    assert!(!tls.ocsp_stapling);
    has(
        &w,
        "8:27",
        "`ocsp-response` has no effect: `ocsp-stapling #false`",
    );

    // A revoked certificate's response is stapled (it is the truth), with a warning.
    f.ocsp("a", "revoked.ocsp", true).unwrap();
    let (_, w) = f.ok("            ocsp-response \"revoked.ocsp\"");
    has(&w, "7:27", "says the certificate is revoked");
}
