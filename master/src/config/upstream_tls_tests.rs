//! `upstream { tls { ... } }` in upstream Zentinel's spelling: every key, paths relative to
//! the configuration file, files loaded at parse time with located errors, and the loud
//! warning of `insecure-skip-verify`.

use std::path::{Path, PathBuf};

use super::*;
use zentinel_protocol::config::*;

const LISTENER: &str = "listeners {\n    listener \"http\" { address \"127.0.0.1:8080\"; }\n}\n";

/// A directory with `ca.crt` (a self-signed certificate, used as the CA) and a client
/// certificate `client.crt`/`client.key`; `zentinel.kdl` is the configuration's path in it.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn new(tag: &str) -> Files {
        let dir = std::env::temp_dir().join(format!("zentinel-uptls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (stem, name) in [("ca", "ca.test"), ("client", "client.test")] {
            let ck = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
            std::fs::write(dir.join(format!("{stem}.crt")), ck.cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{stem}.key")), ck.key_pair.serialize_pem()).unwrap();
        }
        Files { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// The upstream "u" with `target` and a `tls` block of `body`; `tls {` is on line 7.
    fn parse(&self, target: &str, body: &str) -> Result<FullConfig, Vec<ConfigDiagnostic>> {
        let source = format!(
            "{LISTENER}upstreams {{\n    upstream \"u\" {{\n        target \"{target}\"\n        \
             tls {{\n{body}\n        }}\n    }}\n}}\n"
        );
        parse_full_config(&source, &self.path("zentinel.kdl"))
    }

    fn tls(&self, body: &str) -> UpstreamTls {
        match self.parse("10.0.0.1:443", body) {
            Ok(c) => c.proxy.upstreams[0].tls.clone().expect("tls"),
            Err(d) => panic!("{}", list(&d)),
        }
    }

    /// The single error of `body`, as `line:column node: message`.
    #[track_caller]
    fn error(&self, body: &str) -> String {
        self.error_with("10.0.0.1:443", body)
    }

    #[track_caller]
    fn error_with(&self, target: &str, body: &str) -> String {
        match self.parse(target, body) {
            Ok(_) => panic!("expected an error for:\n{body}"),
            Err(d) => {
                assert_eq!(d.len(), 1, "{}", list(&d));
                format!(
                    "{}:{} {}: {}",
                    d[0].line, d[0].column, d[0].node, d[0].message
                )
            }
        }
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn list(d: &[ConfigDiagnostic]) -> String {
    d.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[track_caller]
fn assert_starts(got: &str, at: &str, needle: &str) {
    assert!(
        got.starts_with(&format!("{at} ")) && got.contains(needle),
        "want {at} containing {needle:?}, got {got}"
    );
}

#[test]
fn every_key_upstream_reads_with_paths_from_the_config_directory() {
    let f = Files::new("full");
    let tls = f.tls(
        "            sni \"backend.example.com\"\n            insecure-skip-verify #false\n            \
         client-cert \"client.crt\"\n            client-key \"client.key\"\n            \
         ca-cert \"ca.crt\"",
    );
    assert_eq!(
        tls,
        UpstreamTls {
            sni: Some("backend.example.com".into()),
            ca_cert: Some(f.path("ca.crt")),
            client_cert: Some(f.path("client.crt")),
            client_key: Some(f.path("client.key")),
            insecure_skip_verify: false,
        }
    );
    assert!(Path::new(tls.ca_cert.as_deref().unwrap()).is_absolute());
    // The minimal form of upstream's example: only the server name (system trust store).
    // Whether this machine has a trust store is not the parser's business: only the
    // spelling is checked here, with verification off.
    let tls = f.tls("            sni \"api.example.com\"\n            insecure-skip-verify #true");
    assert_eq!(tls.sni.as_deref(), Some("api.example.com"));
    assert!(tls.insecure_skip_verify);
}

#[test]
fn insecure_skip_verify_is_a_loud_located_warning() {
    let f = Files::new("insecure");
    let config = f
        .parse(
            "localhost:8443",
            "            ca-cert \"ca.crt\"\n            insecure-skip-verify #true",
        )
        .unwrap_or_else(|d| panic!("{}", list(&d)));
    let warnings: Vec<String> = config
        .warnings
        .iter()
        .map(|w| format!("{}:{} {}", w.line, w.column, w.message))
        .collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].starts_with("8:21 ") && warnings[0].contains("no effect"));
    assert!(
        warnings[1].starts_with("9:13 ") && warnings[1].contains("DISABLED for upstream `u`"),
        "{warnings:?}"
    );
}

#[test]
fn files_that_cannot_be_used_fail_at_their_line() {
    let f = Files::new("errors");
    assert_starts(
        &f.error("            ca-cert \"missing.pem\""),
        "8:21",
        "ca-cert: cannot read CA file",
    );
    // A key is not a CA certificate.
    assert_starts(
        &f.error("            ca-cert \"client.key\""),
        "8:21",
        "ca-cert: no certificate",
    );
    // The CA's key does not belong to the client certificate.
    assert_starts(
        &f.error(
            "            ca-cert \"ca.crt\"\n            client-cert \"client.crt\"\n            \
             client-key \"ca.key\"",
        ),
        "10:24",
        "client-key: private key",
    );
    assert_starts(
        &f.error("            ca-cert \"ca.crt\"\n            client-cert \"client.crt\""),
        "9:25",
        "needs its `client-key`",
    );
    assert_starts(
        &f.error("            ca-cert \"ca.crt\"\n            client-key \"client.key\""),
        "9:24",
        "needs its `client-cert`",
    );
}

#[test]
fn spelling_mistakes_are_located() {
    let f = Files::new("spelling");
    assert_starts(
        &f.error("            ca-certs \"ca.crt\""),
        "8:13",
        "did you mean `ca-cert`?",
    );
    assert_starts(
        &f.error("            ca-cert \"ca.crt\"\n            ca-cert \"ca.crt\""),
        "9:13",
        "duplicate `ca-cert`",
    );
    assert_starts(
        &f.error("            sni \"not a name\"\n            ca-cert \"ca.crt\""),
        "8:17",
        "sni: invalid server name",
    );
    assert_starts(
        &f.error("            sni \"\"\n            ca-cert \"ca.crt\""),
        "8:17",
        "must not be empty",
    );
    assert_starts(
        &f.error("            insecure-skip-verify \"yes\""),
        "8:34",
        "expected a boolean",
    );
}

#[test]
fn ip_and_host_name_targets_are_verified_by_what_they_are() {
    let f = Files::new("names");
    let ok = f.parse("[::1]:8443", "            ca-cert \"ca.crt\"");
    assert!(
        ok.is_ok(),
        "{}",
        ok.err().map(|d| list(&d)).unwrap_or_default()
    );
    let ok = f.parse("backend.internal:443", "            ca-cert \"ca.crt\"");
    assert!(
        ok.is_ok(),
        "{}",
        ok.err().map(|d| list(&d)).unwrap_or_default()
    );
}
