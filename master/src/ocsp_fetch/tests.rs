//! The request against `openssl ocsp -reqout`, the responder URL out of the certificate, the
//! refresh schedule, and one round of fetches against a responder on a loopback socket.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;

use rcgen::{CertificateParams, CustomExtension, KeyPair};
use x509_parser::prelude::{FromDer, X509Certificate};
use zentinel_protocol::config::ProxyConfig;

use super::request::{prepare, request, tlv};
use super::*;

/// A directory with a CA (`ca.pem`, `ca.key`).
struct Dir {
    path: PathBuf,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Dir {
    fn new(tag: &str) -> Dir {
        let path = crate::test_ca::fresh_dir("zentinel-ocspfetch", tag);
        let (ca, ca_key) = crate::test_ca::write_ca(&path, "ocsp fetch test CA");
        Dir { path, ca, ca_key }
    }

    fn file(&self, name: &str) -> String {
        self.path.join(name).display().to_string()
    }

    /// `stem.crt` (the leaf, then the CA when `chain`) and `stem.key`, the leaf naming
    /// `ocsp_urls` as its responders; returns the leaf's DER.
    fn issue(&self, stem: &str, ocsp_urls: &[&str], chain: bool) -> Vec<u8> {
        let mut params = CertificateParams::new(vec![format!("{stem}.test")]).unwrap();
        if !ocsp_urls.is_empty() {
            params.custom_extensions.push(aia(ocsp_urls));
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let mut pem = cert.pem();
        if chain {
            pem.push_str(&self.ca.pem());
        }
        std::fs::write(self.path.join(format!("{stem}.crt")), pem).unwrap();
        std::fs::write(self.path.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
        cert.der().to_vec()
    }

    /// `openssl ocsp` run in this directory; `None` when openssl is missing.
    fn openssl(&self, args: &[&str]) -> Option<std::process::Output> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&self.path)
            .output()
            .ok()?;
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
        Some(out)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// An Authority Information Access extension: one OCSP access description per URL, after a
/// caIssuers one (which must be skipped).
fn aia(ocsp_urls: &[&str]) -> CustomExtension {
    const OCSP: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01];
    const CA_ISSUERS: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x02];
    let description = |method: &[u8], uri: &str| {
        tlv(
            0x30,
            &[tlv(0x06, method), tlv(0x86, uri.as_bytes())].concat(),
        )
    };
    let mut descriptions = description(CA_ISSUERS, "http://ca.example/ca.der");
    for url in ocsp_urls {
        descriptions.extend(description(OCSP, url));
    }
    CustomExtension::from_oid_content(&[1, 3, 6, 1, 5, 5, 7, 1, 1], tlv(0x30, &descriptions))
}

#[test]
fn the_request_is_the_one_openssl_sends() {
    let dir = Dir::new("request");
    let leaf = dir.issue("a", &["http://127.0.0.1:1/"], true);
    let Some(_) = dir.openssl(&[
        "ocsp",
        "-issuer",
        "ca.pem",
        "-cert",
        "a.crt",
        "-no_nonce",
        "-reqout",
        "a.req",
    ]) else {
        eprintln!("openssl not installed: skipping");
        return;
    };
    let expected = std::fs::read(dir.path.join("a.req")).unwrap();
    let (_, leaf) = X509Certificate::from_der(&leaf).unwrap();
    let ca_der = dir.ca.der().to_vec();
    let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
    assert_eq!(request(&leaf, &ca), expected);
    let target = prepare(&dir.file("a.crt")).unwrap().unwrap();
    assert_eq!(target.request, expected);
}

#[test]
fn the_responder_is_the_first_http_ocsp_url() {
    let dir = Dir::new("aia");
    dir.issue(
        "a",
        &["http://ocsp.example:8080/ocsp?x", "http://second.example/"],
        true,
    );
    let target = prepare(&dir.file("a.crt")).unwrap().unwrap();
    assert_eq!(target.url, "http://ocsp.example:8080/ocsp?x");
    assert_eq!(
        target.responder,
        HttpUrl {
            host: "ocsp.example".into(),
            port: 8080,
            authority: "ocsp.example:8080".into(),
            path: "/ocsp?x".into(),
        }
    );
    dir.issue("b", &["ldap://ocsp.example/", "HTTP://Ocsp.Example"], true);
    let target = prepare(&dir.file("b.crt")).unwrap().unwrap();
    assert_eq!(target.url, "HTTP://Ocsp.Example");
    assert_eq!(
        (target.responder.port, target.responder.path.as_str()),
        (80, "/")
    );
    // No AIA at all, or a caIssuers entry only: nothing to ask, no error.
    dir.issue("none", &[], true);
    assert!(prepare(&dir.file("none.crt")).unwrap().is_none());
    // Only responders that are not http: an error naming it.
    dir.issue("tls", &["https://ocsp.example/"], true);
    let err = prepare(&dir.file("tls.crt")).unwrap_err();
    assert!(
        err.contains("https://ocsp.example/ is not an http:// URL"),
        "{err}"
    );
    // The issuer is needed: a lone leaf, or a chain in the wrong order, is an error.
    dir.issue("alone", &["http://ocsp.example/"], false);
    let err = prepare(&dir.file("alone.crt")).unwrap_err();
    assert!(
        err.contains("no issuer certificate after the leaf"),
        "{err}"
    );
    let mut wrong = std::fs::read_to_string(dir.file("a.crt")).unwrap();
    wrong.push_str(&std::fs::read_to_string(dir.file("alone.crt")).unwrap());
    let swapped: String = {
        let leaf_end = wrong.find("-----END CERTIFICATE-----\n").unwrap() + 26;
        let (_, rest) = wrong.split_at(leaf_end);
        let ca_end = rest.find("-----END CERTIFICATE-----\n").unwrap() + 26;
        // The leaf of `alone`, then a.crt's leaf (which did not issue it).
        format!("{}{}", &rest[ca_end..], &wrong[..leaf_end])
    };
    std::fs::write(dir.file("swapped.crt"), swapped).unwrap();
    let err = prepare(&dir.file("swapped.crt")).unwrap_err();
    assert!(err.contains("did not issue the leaf"), "{err}");
}

#[test]
fn urls_parse() {
    let url = HttpUrl::parse("http://[::1]:8888/a/b#frag").unwrap();
    assert_eq!(
        (
            url.host.as_str(),
            url.port,
            url.authority.as_str(),
            url.path.as_str()
        ),
        ("::1", 8888, "[::1]:8888", "/a/b")
    );
    let url = HttpUrl::parse("http://r3.o.lencr.org").unwrap();
    assert_eq!((url.port, url.path.as_str()), (80, "/"));
    let url = HttpUrl::parse("http://h?q").unwrap();
    assert_eq!(url.path, "/?q");
    for bad in [
        "https://h/",
        "http://",
        "http://u@h/",
        "http://h:99999/",
        "http://[::1/",
    ] {
        assert!(HttpUrl::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn a_response_is_fetched_again_half_way_through() {
    let now = Instant::now();
    let now_sys = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let response = |this_update, next_update| OcspResponse {
        der: Vec::new(),
        status: CertStatus::Good,
        this_update,
        next_update,
    };
    let floor = Duration::from_secs(300);
    // Valid 4 days from an hour ago: 47 hours from now.
    let r = response(now_sys - hour, Some(now_sys + 95 * hour));
    assert_eq!(refresh_at(&r, now_sys, now, floor), now + 47 * hour);
    // Past half already: the floor.
    let r = response(now_sys - 10 * hour, Some(now_sys + hour));
    assert_eq!(refresh_at(&r, now_sys, now, floor), now + floor);
    // No nextUpdate: hourly.
    let r = response(now_sys, None);
    assert_eq!(refresh_at(&r, now_sys, now, floor), now + hour);
}

/// A responder on `listener` answering each request with the next of `answers`, then gone.
fn responder(listener: TcpListener, answers: Vec<Vec<u8>>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for answer in answers {
            let (mut conn, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            // The head, then Content-Length bytes of request.
            loop {
                let n = conn.read(&mut buf).unwrap();
                assert!(n > 0, "the request ended early");
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).into_owned();
                let Some(at) = text.find("\r\n\r\n") else {
                    continue;
                };
                let len: usize = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap();
                if got.len() >= at + 4 + len {
                    break;
                }
            }
            let head = format!(
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n",
                answer.len()
            );
            conn.write_all(&[head.as_bytes(), &answer].concat())
                .unwrap();
        }
    })
}

/// One https listener serving `a.crt` of `dir`, stapling by default.
fn listener_config(dir: &Dir) -> ProxyConfig {
    let source = format!(
        "listeners {{\n    listener \"s\" {{\n        address \"127.0.0.1:8443\"\n        tls {{ \
         cert-file \"{}\"; key-file \"{}\"; }}\n    }}\n}}\n",
        dir.file("a.crt"),
        dir.file("a.key")
    );
    crate::config::parse_config(&source, "test.kdl").unwrap()
}

fn staple(config: &ProxyConfig) -> Option<String> {
    config.listeners[0]
        .tls
        .as_ref()
        .unwrap()
        .ocsp_response
        .clone()
}

/// `openssl ocsp` as a responder of one request about `a.crt`: "good" or "revoked".
fn answer(dir: &Dir, revoked: bool) -> Option<Vec<u8>> {
    let serial = dir.openssl(&["x509", "-noout", "-serial", "-in", "a.crt"])?;
    let serial = String::from_utf8(serial.stdout).unwrap();
    let serial = serial.trim().trim_start_matches("serial=");
    let line = if revoked {
        format!("R\t300101000000Z\t250101000000Z\t{serial}\tunknown\t/CN=a\n")
    } else {
        format!("V\t300101000000Z\t\t{serial}\tunknown\t/CN=a\n")
    };
    std::fs::write(dir.path.join("index.txt"), line).unwrap();
    dir.openssl(&[
        "ocsp",
        "-issuer",
        "ca.pem",
        "-cert",
        "a.crt",
        "-no_nonce",
        "-reqout",
        "a.req",
    ])?;
    dir.openssl(&[
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
        "a.req",
        "-respout",
        "a.resp",
        "-ndays",
        "1",
    ])?;
    Some(std::fs::read(dir.path.join("a.resp")).unwrap())
}

#[test]
fn good_answers_are_stored_and_named_and_others_keep_what_was_stored() {
    let dir = Dir::new("round");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    dir.issue("a", &[&url], true);
    let Some(good) = answer(&dir, false) else {
        eprintln!("openssl not installed: skipping");
        return;
    };
    let revoked = answer(&dir, true).unwrap();
    let mut server = Some(responder(
        listener,
        vec![good.clone(), revoked, b"junk".to_vec()],
    ));
    let mut stapler = Stapler::new(dir.path.join("staples"));
    let cert = dir.file("a.crt");

    // Good: stored, named, due again half-way through its day.
    let mut config = listener_config(&dir);
    let outcome = stapler.fetch_all(&mut config);
    assert!(
        outcome.changed && outcome.warnings.is_empty(),
        "{outcome:?}"
    );
    let stored = staple(&config).expect("a response file named");
    assert!(
        stored.starts_with(&stapler.dir().display().to_string()),
        "{stored}"
    );
    assert_eq!(std::fs::read(&stored).unwrap(), good);
    let due = stapler.next_refresh().unwrap();
    let half_day = Duration::from_secs(12 * 3600);
    assert!(
        due > Instant::now() + half_day - Duration::from_secs(60),
        "{due:?}"
    );

    // Revoked, then junk, then nobody: a warning naming the certificate, the responder and
    // the reason; the good response stays stored and named, due again after the retry.
    for reason in [
        "certificate is revoked",
        "not a DER OCSP response",
        "cannot connect",
    ] {
        let mut config = listener_config(&dir);
        let outcome = stapler.fetch_all(&mut config);
        assert!(!outcome.changed, "{reason}");
        let [warning] = &outcome.warnings[..] else {
            panic!("{reason}: {:?}", outcome.warnings);
        };
        for said in [
            &cert,
            &url,
            reason,
            "the response fetched before stays stapled",
        ] {
            assert!(warning.contains(said), "{said:?} in {warning}");
        }
        assert_eq!(staple(&config).as_ref(), Some(&stored));
        assert_eq!(std::fs::read(&stored).unwrap(), good);
        assert!(stapler.next_refresh().unwrap() <= Instant::now() + RETRY);
        if reason == "not a DER OCSP response" {
            // Its three answers given, the responder is gone: the next connection is refused.
            if let Some(server) = server.take() {
                server.join().unwrap();
            }
        }
    }

    // A successor master, which asks nobody: the stored response, due half-way through.
    let mut successor = Stapler::new(dir.path.join("staples"));
    let mut config = listener_config(&dir);
    let outcome = successor.use_stored(&mut config);
    assert!(
        !outcome.changed && outcome.warnings.is_empty(),
        "{outcome:?}"
    );
    assert_eq!(staple(&config).as_ref(), Some(&stored));
    assert!(
        successor.next_refresh().unwrap() > Instant::now() + half_day - Duration::from_secs(60)
    );

    // Nothing stored: no staple.
    std::fs::remove_file(&stored).unwrap();
    let mut config = listener_config(&dir);
    let outcome = stapler.fetch_all(&mut config);
    assert!(
        outcome.warnings[0].contains("it is served without a staple"),
        "{outcome:?}"
    );
    assert_eq!(staple(&config), None);

    // Files no certificate of the running configuration names are removed; others stay.
    std::fs::write(&stored, &good).unwrap();
    let stray = stapler.dir().join(format!("{}.der", "0".repeat(32)));
    std::fs::write(&stray, b"old").unwrap();
    let mut config = listener_config(&dir);
    config.listeners[0].tls.as_mut().unwrap().ocsp_response = Some(stored.clone());
    stapler.remove_unused(&config);
    assert!(!stray.exists());
    assert!(std::path::Path::new(&stored).exists());
}

#[test]
fn an_operators_file_or_stapling_off_is_left_alone() {
    let dir = Dir::new("alone");
    dir.issue("a", &["http://127.0.0.1:1/"], true);
    let mut stapler = Stapler::new(dir.path.join("staples"));
    let mut config = listener_config(&dir);
    let tls = config.listeners[0].tls.as_mut().unwrap();
    tls.ocsp_response = Some(dir.file("mine.der"));
    let before = config.clone();
    let outcome = stapler.fetch_all(&mut config);
    assert!(outcome.warnings.is_empty() && config == before);
    config.listeners[0].tls.as_mut().unwrap().ocsp_response = None;
    config.listeners[0].tls.as_mut().unwrap().ocsp_stapling = false;
    let before = config.clone();
    let outcome = stapler.fetch_all(&mut config);
    assert!(outcome.warnings.is_empty() && config == before);
    assert_eq!(stapler.next_refresh(), None);
    assert!(
        !stapler.dir().exists(),
        "nothing fetched, no directory made"
    );
}

#[test]
fn a_refresh_leaves_nothing_due_behind_it() {
    let dir = Dir::new("due");
    // Nothing listens on port 1: refused at once.
    dir.issue("a", &["http://127.0.0.1:1/"], true);
    let mut stapler = Stapler::new(dir.path.join("staples"));
    let mut config = listener_config(&dir);
    let outcome = stapler.fetch_all(&mut config);
    assert!(
        outcome.warnings[0].contains("cannot connect"),
        "{outcome:?}"
    );
    assert_eq!(staple(&config), None);
    let retry = stapler.next_refresh().unwrap();
    // Due: asked again, and due again one retry later.
    let late = retry + Duration::from_secs(1);
    let outcome = stapler.refresh_due(&mut config, late);
    assert_eq!(outcome.warnings.len(), 1, "{outcome:?}");
    assert!(stapler.next_refresh().unwrap() > Instant::now() + RETRY / 2);
    // Postponed: not before then.
    let later = late + RETRY * 10;
    stapler.postpone(later);
    assert_eq!(stapler.next_refresh(), Some(later));
    // Its certificate replaced by one naming no responder: nothing left to fetch.
    dir.issue("a", &[], true);
    let outcome = stapler.refresh_due(&mut config, later);
    assert!(
        !outcome.changed && outcome.warnings.is_empty(),
        "{outcome:?}"
    );
    assert_eq!(stapler.next_refresh(), None);
}
