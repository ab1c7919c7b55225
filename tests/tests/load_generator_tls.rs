//! `zentinel-load --tls` tested on the real binaries against `zentinel-backend --tls` (rustls,
//! certificates from a test CA): keep-alive and connection-per-request runs count their
//! handshakes, `--resume` resumes sessions, a handshake that fails is a `tls-handshake`
//! failure, and the faults the backend injects are counted as the same kinds as over plain
//! TCP.
//!
//! Build first: `cargo build -p zentinel-tests --bins`.

use std::collections::BTreeMap;
use std::fs;

use zentinel_tests::load_run::{check_consistent, run_load, Run};
use zentinel_tests::tls_support::Ca;
use zentinel_tests::{Backend, TempDir};

/// A CA, a leaf for `a.test` and a TLS backend serving it, plus `extra` backend arguments.
struct Rig {
    dir: TempDir,
    backend: Backend,
}

impl Rig {
    fn new(label: &str, extra: &[&str]) -> Rig {
        let dir = TempDir::new(label);
        let ca = Ca::new();
        ca.issue(&dir.0, "a", &["a.test"]);
        fs::write(dir.0.join("ca.pem"), ca.cert.pem()).expect("write ca.pem");
        let (crt, key) = (dir.0.join("a.crt"), dir.0.join("a.key"));
        let mut args = vec![
            "--tls",
            crt.to_str().expect("utf-8 path"),
            key.to_str().expect("utf-8 path"),
        ];
        args.extend_from_slice(extra);
        let backend = Backend::start_args(label, &args);
        Rig { dir, backend }
    }

    fn ca(&self) -> String {
        self.dir.0.join("ca.pem").display().to_string()
    }

    /// `zentinel-load --addr BACKEND --tls --ca CA --sni a.test ARGS...`
    fn load(&self, args: &[&str]) -> Run {
        let addr = self.backend.target();
        let ca = self.ca();
        let mut all = vec![
            "--addr",
            &addr,
            "--tls",
            "--ca",
            &ca,
            "--sni",
            "a.test",
            "--timeout",
            "5s",
        ];
        all.extend_from_slice(args);
        let run = run_load(&all);
        check_consistent(&run);
        run
    }
}

fn negotiated(run: &Run) -> Vec<String> {
    run.json["tls"]["negotiated"]
        .as_array()
        .unwrap_or_else(|| panic!("no tls.negotiated in {}", run.json))
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn keepalive_and_close_runs_count_their_handshakes() {
    let rig = Rig::new("load-tls-basic", &[]);

    let run = rig.load(&["-n", "600", "-c", "8", "-t", "2"]);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(run.last_u64("requests"), 600);
    assert_eq!(run.json_u64(&["connections"]), 8, "{}", run.stdout);
    assert_eq!(run.last_u64("handshakes"), 8, "one per connection");
    assert_eq!(run.last_u64("resumed"), 0, "no --resume: all full");
    assert_eq!(
        negotiated(&run),
        ["TLSv1_3 TLS13_AES_256_GCM_SHA384 X25519"],
        "rustls server and client: TLS 1.3, their first suite and group"
    );
    assert!(run.stdout.contains("TLS (SNI a.test, verified against"));

    let run = rig.load(&["-n", "200", "-c", "4", "--mode", "close"]);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(run.last_u64("requests"), 200);
    assert_eq!(run.json_u64(&["connections"]), 200, "{}", run.stdout);
    assert_eq!(run.last_u64("handshakes"), 200, "a handshake per request");
    assert_eq!(run.last_u64("resumed"), 0, "{}", run.stdout);
    assert!(run.last_u64("hps") > 0);

    // Bodies spanning many TLS records, both ways.
    for args in [
        &["-n", "20", "-c", "2", "--body", "1048576"][..],
        &[
            "-n", "20", "-c", "2", "--method", "POST", "--body", "1048576",
        ],
    ] {
        let run = rig.load(args);
        assert_eq!(run.code, 0, "{args:?}: {}", run.stdout);
        assert_eq!(run.last_u64("requests"), 20, "{args:?}");
    }
}

#[test]
fn resume_resumes_sessions_of_earlier_connections() {
    let rig = Rig::new("load-tls-resume", &[]);
    let run = rig.load(&["-n", "200", "-c", "4", "--mode", "close", "--resume"]);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(run.last_u64("handshakes"), 200, "{}", run.stdout);
    // Only the first connections have no ticket yet: the backend (rustls) sends new ones on
    // every connection and keeps 256 sessions.
    let resumed = run.last_u64("resumed");
    assert!(
        resumed >= 150,
        "only {resumed} of 200 handshakes resumed:\n{}",
        run.stdout
    );
    assert!(run.stdout.contains("resuming sessions"), "{}", run.stdout);
}

#[test]
fn failed_handshakes_are_their_own_kind() {
    let rig = Rig::new("load-tls-fail", &[]);
    let other = TempDir::new("load-tls-other-ca");
    let other_ca = other.0.join("other-ca.pem");
    fs::write(&other_ca, Ca::new().cert.pem()).expect("write other-ca.pem");
    let other_ca = other_ca.display().to_string();
    let addr = rig.backend.target();
    let plain = Backend::start("load-tls-plain");
    let plain_addr = plain.target();
    let ca = rig.ca();
    let cases: [(&str, Vec<&str>); 3] = [
        (
            "a CA that did not issue the certificate",
            vec![
                "--addr", &addr, "--tls", "--ca", &other_ca, "--sni", "a.test",
            ],
        ),
        (
            "a name the certificate is not for",
            vec!["--addr", &addr, "--tls", "--ca", &ca, "--sni", "b.test"],
        ),
        (
            "a server that does not speak TLS",
            vec![
                "--addr",
                &plain_addr,
                "--tls",
                "--ca",
                &ca,
                "--sni",
                "a.test",
            ],
        ),
    ];
    for (what, mut args) in cases {
        args.extend_from_slice(&["-n", "30", "-c", "2", "--timeout", "5s"]);
        let run = run_load(&args);
        check_consistent(&run);
        assert_eq!(run.code, 1, "{what}: {}", run.stdout);
        assert_eq!(
            run.failures(),
            BTreeMap::from([("tls-handshake".to_owned(), 30)]),
            "{what}: {}",
            run.stdout
        );
        assert_eq!(run.last_u64("handshakes"), 0, "{what}");
    }

    // --insecure takes the certificate for any name (its signature still checked).
    let run = run_load(&[
        "--addr",
        &addr,
        "--tls",
        "--insecure",
        "--sni",
        "b.test",
        "-n",
        "30",
        "-c",
        "2",
    ]);
    check_consistent(&run);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert!(run.stdout.contains("certificate not verified"));
}

#[test]
fn faults_over_tls_are_counted_as_over_plain_tcp() {
    for (fault, kind) in [
        ("reset", "reset"),
        ("truncate", "truncated"),
        ("corrupt", "corrupt"),
        ("status500", "non-2xx"),
    ] {
        let rig = Rig::new(
            &format!("load-tls-fault-{fault}"),
            &["--fault", fault, "--fault-every", "10"],
        );
        let run = rig.load(&["-n", "300", "-c", "4"]);
        assert_eq!(run.code, 1, "{fault}: {}", run.stdout);
        assert_eq!(
            run.failures(),
            BTreeMap::from([(kind.to_owned(), 30)]),
            "{fault}: {}",
            run.stdout
        );
        assert_eq!(run.last_u64("requests"), 300, "{fault}");
    }
}
