//! OCSP responses fetched by the master from the responder a certificate names (issue 15),
//! against a real `openssl ocsp` responder on a loopback port, checked from outside with
//! `openssl s_client -status`: fetched at start and at each reload, never stapled when
//! "revoked" (the response fetched before stays, as in nginx), fetched again after a failure
//! and half-way through a response's validity; a responder that is down or silent costs the
//! start at most the fetch bound, and `-t`/`validate` never ask it.

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use zentinel_tests::ocsp_responder::OcspResponder;
use zentinel_tests::tls_support::*;
use zentinel_tests::*;

/// What the test builds' master takes as its retry interval (`fault-injection` only).
const RETRY_ENV_VAR: &str = "ZENTINEL_TEST_OCSP_RETRY_MS";

/// A CA (`ca.pem`, `ca.key`), leaves `a` (`a.test`, the listener's default) and `b`
/// (`b.test`, an `sni` certificate) naming a responder on `port` (not started), and a backend.
struct Fixture {
    dir: TempDir,
    port: u16,
    backend: Backend,
}

impl Fixture {
    fn new(label: &str) -> Fixture {
        let dir = TempDir::new(label);
        let ca = Ca::new();
        ca.write_files(&dir.0);
        let port = free_port();
        let url = OcspResponder::url(port);
        ca.issue_with_responder(&dir.0, "a", &["a.test"], &url);
        ca.issue_with_responder(&dir.0, "b", &["b.test"], &url);
        Fixture {
            dir,
            port,
            backend: Backend::start(label),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.0.join(name).display().to_string()
    }

    fn url(&self) -> String {
        OcspResponder::url(self.port)
    }

    /// The responder, answering "good" or "revoked" about `a` and `b`; `valid_minutes` long.
    fn responder(&self, a_revoked: bool, b_revoked: bool, valid_minutes: u32) -> OcspResponder {
        OcspResponder::start(
            &self.dir.0,
            self.port,
            &[("a", a_revoked), ("b", b_revoked)],
            valid_minutes,
        )
        .expect("openssl ocsp")
    }

    /// One worker, one https listener stapling (no `ocsp-response` file anywhere).
    fn config(&self) -> String {
        format!(
            "system {{\n    worker-processes 1\n}}\nlisteners {{\n    listener \"s\" {{\n        \
             address \"127.0.0.1:{}\"\n        protocol \"https\"\n        default-route \"app\"\n        \
             tls {{\n            cert-file \"{}\"\n            key-file \"{}\"\n            \
             ocsp-stapling #true\n            sni {{\n                hostnames \"b.test\"\n                \
             cert-file \"{}\"\n                key-file \"{}\"\n            }}\n        }}\n    }}\n}}\n\
             routes {{\n    route \"app\" {{ upstream \"app\"; }}\n}}\nupstreams {{\n    upstream \
             \"app\" {{ target \"{}\"; }}\n}}\n",
            free_port(),
            self.path("a.crt"),
            self.path("a.key"),
            self.path("b.crt"),
            self.path("b.key"),
            self.backend.target()
        )
    }

    /// `openssl s_client -status` as `name`.
    fn status(&self, z: &Zentinel, name: &str) -> SClient {
        let s = s_client_named(z.addr(), &self.dir.0, name, "/", &["-status"]);
        assert!(s.ok && s.out.contains("HTTP/1.1 200"), "{name}:\n{}", s.out);
        s
    }
}

/// The stapled response, checked to say "good".
fn good_staple(s: &SClient) -> String {
    assert!(
        s.out.contains("OCSP Response Status: successful") && s.out.contains("Cert Status: good"),
        "{}",
        s.out
    );
    s.staple().expect("a stapled response")
}

fn unstapled(s: &SClient) -> bool {
    s.out.contains("OCSP response: no response sent")
}

/// The log's warnings about `cert` from `url`.
fn warnings_about(z: &Zentinel, cert: &str, url: &str) -> Vec<String> {
    z.log_text()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains(cert) && l.contains(url))
        .map(str::to_owned)
        .collect()
}

#[test]
fn responses_are_fetched_at_start_and_reload_and_revoked_ones_never_stapled() {
    if openssl_missing() {
        return;
    }
    let f = Fixture::new("ocsp-fetch");
    let responder = f.responder(false, true, 24 * 60);

    // `-t` and `validate` load the configuration and ask no responder.
    let config_file = f.dir.0.join("zentinel.kdl");
    std::fs::write(&config_file, f.config()).unwrap();
    let (code, out, err) = zentinel_check(Some(&config_file));
    assert_eq!(code, Some(0), "{out}{err}");
    let mut validate = Command::new(zentinel_bin());
    validate
        .args(["validate", "--skip-network", "--config"])
        .arg(&config_file);
    let out = run_with_deadline(validate, Duration::from_secs(30));
    assert!(out.success(), "{out}");
    assert_eq!(responder.requests(), 0, "{}", responder.output());

    // Start: `a` is good and stapled; `b` is revoked, never stapled, and said so.
    let z = Zentinel::start(&f.config());
    assert!(responder.requests() >= 2, "{}", responder.output());
    let first = good_staple(&f.status(&z, "a.test"));
    for version in ["-tls1_2", "-tls1_3"] {
        let s = s_client_named(z.addr(), &f.dir.0, "a.test", "/", &[version, "-status"]);
        assert_eq!(good_staple(&s), first, "{version}");
    }
    let b = f.status(&z, "b.test");
    assert!(unstapled(&b), "{}", b.out);
    let said = warnings_about(&z, &f.path("b.crt"), &f.url());
    assert!(
        said.iter()
            .any(|l| l.contains("revoked") && l.contains("without a staple")),
        "{}",
        z.log()
    );
    assert!(
        warnings_about(&z, &f.path("a.crt"), &f.url()).is_empty(),
        "{}",
        z.log()
    );

    // A reload fetches again: a new response for `a`.
    let asked = responder.requests();
    z.ctl(&["reload"]).assert_success("reload");
    assert!(responder.requests() > asked, "{}", responder.output());
    let second = good_staple(&f.status(&z, "a.test"));
    assert_ne!(second, first);

    // `a` revoked, then a reload: the reload succeeds, says why nothing new is stapled, and
    // the response fetched before stays stapled until its nextUpdate (nginx's behaviour); a
    // "revoked" response is never stapled.
    drop(responder);
    let responder = f.responder(true, true, 24 * 60);
    let out = z.ctl(&["reload"]);
    out.assert_success("reload with a revoked certificate");
    assert!(
        out.said().contains(&f.path("a.crt")) && out.said().contains("revoked"),
        "{out}"
    );
    assert!(responder.requests() >= 2, "{}", responder.output());
    let s = f.status(&z, "a.test");
    assert!(!s.out.contains("Cert Status: revoked"), "{}", s.out);
    assert_eq!(good_staple(&s), second);

    // The responder gone: a reload still succeeds, with a warning; the staple stays.
    drop(responder);
    let out = z.ctl(&["reload"]);
    out.assert_success("reload without a responder");
    assert!(out.said().contains("cannot connect"), "{out}");
    assert_eq!(good_staple(&f.status(&z, "a.test")), second);
}

#[test]
fn a_responder_down_at_start_costs_nothing_and_is_asked_again() {
    if openssl_missing() {
        return;
    }
    require_fault_injection();
    let f = Fixture::new("ocsp-down");
    // Nobody listens: the start is not held up, nothing is stapled, and the log says why.
    let z = Zentinel::start_with_env(&f.config(), &[(RETRY_ENV_VAR, "1000")]);
    for name in ["a.test", "b.test"] {
        let s = f.status(&z, name);
        assert!(unstapled(&s), "{}", s.out);
    }
    for cert in ["a.crt", "b.crt"] {
        let said = warnings_about(&z, &f.path(cert), &f.url());
        assert!(
            said.iter()
                .any(|l| l.contains("cannot connect") && l.contains("without a staple")),
            "{cert}:\n{}",
            z.log()
        );
    }
    // Once it answers, the next try (a second later here, five minutes by default) staples:
    // the workers get the new responses without a reload.
    let responder = f.responder(false, false, 24 * 60);
    let stapled = wait_until(Duration::from_secs(20), || {
        f.status(&z, "a.test").staple().is_some()
    });
    assert!(stapled, "{}\n{}", z.log(), responder.output());
    good_staple(&f.status(&z, "b.test"));
    assert!(z
        .log_text()
        .contains("refreshed OCSP responses sent to the workers"));
    assert!(!z.log_text().contains("reloaded"), "a refresh is no reload");
}

#[test]
fn a_silent_responder_delays_the_start_by_the_bound_only_and_responses_are_refreshed() {
    if openssl_missing() {
        return;
    }
    require_fault_injection();
    let f = Fixture::new("ocsp-refresh");
    // Accepts connections (the kernel does) but never answers.
    let silent = TcpListener::bind(("127.0.0.1", f.port)).expect("bind the responder's port");
    let started = Instant::now();
    let z = Zentinel::start_with_env(&f.config(), &[(RETRY_ENV_VAR, "1000")]);
    let took = started.elapsed();
    // The fetch bound is 3 s for every certificate together; the rest is the start itself.
    assert!(took < Duration::from_secs(8), "start took {took:?}");
    assert!(unstapled(&f.status(&z, "a.test")));
    let said = warnings_about(&z, &f.path("a.crt"), &f.url());
    assert!(said.iter().any(|l| l.contains("no answer")), "{}", z.log());
    drop(silent);

    // Responses valid one minute: fetched by the next try, then again half-way through.
    let responder = f.responder(false, false, 1);
    let mut first = None;
    let fetched = wait_until(Duration::from_secs(20), || {
        first = f.status(&z, "a.test").staple();
        first.is_some()
    });
    assert!(fetched, "{}\n{}", z.log(), responder.output());
    let first_seen = Instant::now();
    let mut second = None;
    let refreshed = wait_until(Duration::from_secs(50), || {
        second = f.status(&z, "a.test").staple();
        second.is_some() && second != first
    });
    assert!(
        refreshed,
        "still {first:?} after 50 s\n{}\n{}",
        z.log(),
        responder.output()
    );
    // Half of the minute, not the next try after a failure.
    let after = first_seen.elapsed();
    assert!(after > Duration::from_secs(20), "refreshed after {after:?}");
}

#[test]
fn a_rolling_upgrade_staples_the_responses_fetched_before_without_asking_again() {
    if openssl_missing() {
        return;
    }
    let f = Fixture::new("ocsp-upgrade");
    let responder = f.responder(false, false, 24 * 60);
    let z = Zentinel::start(&f.config());
    let before = good_staple(&f.status(&z, "a.test"));
    let old: Vec<u32> = z.worker_pids();
    let asked = responder.requests();

    let mut files = TempFiles::default();
    let copy = files.add(binary_copy("ocsp-upgrade"));
    let copy_arg = copy.display().to_string();
    let out = ctl_within(
        &z.control_socket(),
        &["upgrade", "--rolling", "--binary", &copy_arg],
        Duration::from_secs(60),
    );
    assert!(out.success(), "upgrade --rolling: {out}\n{}", z.log());
    let replaced = wait_until(Duration::from_secs(20), || {
        let now = z.worker_pids();
        !now.is_empty() && now.iter().all(|pid| !old.contains(pid))
    });
    assert!(replaced, "{}", z.log());
    // The new master's new worker staples the response its predecessor fetched: the new
    // master took it from the file, without keeping its predecessor waiting on a responder.
    assert_eq!(good_staple(&f.status(&z, "a.test")), before);
    assert_eq!(responder.requests(), asked, "{}", responder.output());
}
