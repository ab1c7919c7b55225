//! The load generator's own accounting, tested on the real binaries: `zentinel-load` against a
//! `zentinel-backend` that injects one kind of fault every K-th request must count exactly
//! those failures, of exactly that kind, and nothing else.
//!
//! Build first: `cargo build -p zentinel-tests --bins`.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use zentinel_tests::load_run::{check_consistent, finish, load_bin, run_load, spawn_load};
use zentinel_tests::{free_port, send_signal, temp_path, wait_until, Backend};

const N: u64 = 600;
const EVERY: u64 = 10;

/// A backend injecting `fault` into every `EVERY`-th request.
fn faulty_backend(fault: &str) -> Backend {
    Backend::start_args(
        &format!("fault-{fault}"),
        &["--fault", fault, "--fault-every", &EVERY.to_string()],
    )
}

/// One fault the backend injects every 10th request, and how `zentinel-load` must count it.
struct FaultCase {
    fault: &'static str,
    /// The failure kind all of the injected faults must be counted as.
    kind: &'static str,
    /// More `zentinel-load` arguments.
    extra: &'static [&'static str],
}

const FAULT_CASES: &[FaultCase] = &[
    FaultCase {
        fault: "reset",
        kind: "reset",
        extra: &[],
    },
    FaultCase {
        fault: "truncate",
        kind: "truncated",
        extra: &[],
    },
    // `--path` turns checksum checks off; the framing alone must show the truncation.
    FaultCase {
        fault: "truncate",
        kind: "truncated",
        extra: &["--path", "/bytes/3000?chunked=1"],
    },
    FaultCase {
        fault: "status500",
        kind: "non-2xx",
        extra: &[],
    },
    FaultCase {
        fault: "corrupt",
        kind: "corrupt",
        extra: &[],
    },
    // Uploads (POST) as well as downloads.
    FaultCase {
        fault: "corrupt",
        kind: "corrupt",
        extra: &["--method", "POST", "--body", "3000"],
    },
];

/// `-n 600 -c 8` against a backend failing every 10th request with `case.fault`: exactly 60
/// failures, all of kind `case.kind`.
fn fault_run(case: &FaultCase) {
    let FaultCase { fault, kind, extra } = case;
    let what = format!("fault {fault} {extra:?}");
    let backend = faulty_backend(fault);
    let addr = backend.target();
    let n = N.to_string();
    let mut args = vec!["--addr", &addr, "-n", &n, "-c", "8", "--timeout", "5s"];
    args.extend_from_slice(extra);
    let run = run_load(&args);
    check_consistent(&run);
    let expected = BTreeMap::from([(kind.to_string(), N / EVERY)]);
    assert_eq!(
        run.failures(),
        expected,
        "{what}: failures by kind:\n{}",
        run.stdout
    );
    assert_eq!(run.last_u64("requests"), N, "{what}: {}", run.stdout);
    assert_eq!(run.last_u64("failed"), N / EVERY, "{what}: {}", run.stdout);
    assert_eq!(run.json_u64(&["ok"]), N - N / EVERY, "{what}");
    assert_eq!(
        run.code, 1,
        "{what}: exit code with failures:\n{}",
        run.stdout
    );
    // Every request reached the backend exactly once.
    assert_eq!(
        backend.stats().0,
        N,
        "{what}: requests counted by the backend"
    );
}

#[test]
fn each_fault_is_counted_as_its_kind() {
    for case in FAULT_CASES {
        fault_run(case);
    }
}

#[test]
fn clean_run_counts_every_request() {
    let backend = Backend::start("clean");
    let addr = backend.target();
    let run = run_load(&["--addr", &addr, "-n", "600", "-c", "8", "-t", "2"]);
    check_consistent(&run);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(run.last_u64("requests"), 600);
    assert_eq!(run.last_u64("failed"), 0);
    assert_eq!(run.json_u64(&["ok"]), 600);
    assert_eq!(
        run.json_u64(&["connections"]),
        8,
        "keep-alive reuses connections"
    );
    // The backend also counts the connection of this /stats request.
    assert_eq!(backend.stats(), (600, 8 + 1));
}

#[test]
fn close_after_is_not_a_failure() {
    let backend = faulty_backend("close-after");
    let addr = backend.target();
    let run = run_load(&["--addr", &addr, "-n", "600", "-c", "8"]);
    check_consistent(&run);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(run.last_u64("failed"), 0);
    assert_eq!(run.last_u64("requests"), 600);
    assert_eq!(
        run.json_u64(&["closed_by_server"]),
        N / EVERY,
        "keep-alive connections ended with Connection: close"
    );
    let connections = run.json_u64(&["connections"]);
    assert!(
        connections > 8 && connections <= 8 + N / EVERY,
        "connections {connections}: the closed ones were replaced"
    );
    assert_eq!(
        backend.stats(),
        (600, connections + 1),
        "(+1: the /stats connection)"
    );
}

#[test]
fn close_mode_opens_a_connection_per_request() {
    let backend = Backend::start("close-mode");
    let addr = backend.target();
    let run = run_load(&["--addr", &addr, "-n", "200", "-c", "4", "--mode", "close"]);
    check_consistent(&run);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(run.last_u64("requests"), 200);
    assert_eq!(run.json_u64(&["connections"]), 200);
    assert_eq!(
        backend.stats(),
        (200, 200 + 1),
        "(+1: the /stats connection)"
    );
}

#[test]
fn post_run_verifies_uploads() {
    let backend = Backend::start("post");
    let addr = backend.target();
    let run = run_load(&[
        "--addr", &addr, "-n", "300", "-c", "4", "--method", "POST", "--body", "70000",
    ]);
    check_consistent(&run);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(run.json_u64(&["ok"]), 300);
    assert_eq!(backend.stats().0, 300);
}

#[test]
fn close_delimited_and_chunked_responses_are_complete() {
    let backend = Backend::start("framing");
    let addr = backend.target();
    // (path, JSON counter, its value): every close-delimited body ends its connection; chunked
    // bodies keep the 4 connections alive.
    for (path, counter, want) in [
        ("/bytes/5000?close=1", "closed_by_server", 100),
        ("/bytes/70000?chunked=1", "connections", 4),
    ] {
        let run = run_load(&["--addr", &addr, "-n", "100", "-c", "4", "--path", path]);
        check_consistent(&run);
        assert_eq!(run.code, 0, "{path}: {}", run.stdout);
        assert_eq!(run.json_u64(&[counter]), want, "{path}: {counter}");
    }
}

#[test]
fn slow_responses_count_as_timeouts() {
    let backend = Backend::start("slow");
    let addr = backend.target();
    let started = Instant::now();
    let run = run_load(&[
        "--addr",
        &addr,
        "-n",
        "4",
        "-c",
        "2",
        "--path",
        "/delay/3000",
        "--timeout",
        "200ms",
    ]);
    check_consistent(&run);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert_eq!(run.failures(), BTreeMap::from([("timeout".to_owned(), 4)]));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "timeouts were not enforced: {:?}",
        started.elapsed()
    );
}

#[test]
fn connect_refused_is_counted() {
    // Nothing listens on a port that was free a moment ago.
    let addr = format!("127.0.0.1:{}", free_port());
    let run = run_load(&["--addr", &addr, "-n", "20", "-c", "2"]);
    check_consistent(&run);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert_eq!(
        run.failures(),
        BTreeMap::from([("connect-refused".to_owned(), 20)])
    );
    assert_eq!(run.json_u64(&["connections"]), 0);
}

#[test]
fn open_loop_delivers_the_rate() {
    let backend = Backend::start("rate");
    let addr = backend.target();
    let started = Instant::now();
    let run = run_load(&["--addr", &addr, "--rate", "200", "-d", "1s", "-c", "4"]);
    let took = started.elapsed();
    check_consistent(&run);
    assert_eq!(run.code, 0, "{}", run.stdout);
    let requests = run.last_u64("requests");
    let unsent = run.json_u64(&["unsent"]);
    // Slots are due at k/200 s for k < 200: every one is either made or reported unsent.
    assert_eq!(requests + unsent, 200, "{}", run.stdout);
    // The exact account above is the contract; how many slots a busy machine lets the
    // generator keep is not (a shared 2-core box under a parallel test suite has delivered
    // 160): most of them, the rest reported unsent.
    assert!(requests >= 100, "{requests} requests at 200/s for 1 s");
    assert!(
        took >= Duration::from_millis(990),
        "an open-loop run of 1 s took {took:?}"
    );
    assert_eq!(backend.stats().0, requests);
}

#[test]
fn sigint_stops_early_and_still_reports() {
    let backend = Backend::start("sigint");
    let addr = backend.target();
    let json = temp_path("sigint.json");
    let child = spawn_load(&["--addr", &addr, "-d", "60s", "-c", "4"], &json);
    let pid = child.id();
    assert!(
        wait_until(Duration::from_secs(10), || backend.stats().0 >= 200),
        "the load did not get going"
    );
    send_signal(pid, nix::sys::signal::Signal::SIGINT);
    let started = Instant::now();
    let run = finish(child, json.clone(), Duration::from_secs(10));
    let _ = std::fs::remove_file(json);
    assert!(started.elapsed() < Duration::from_secs(5));
    check_consistent(&run);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(run.json["interrupted"], Value::Bool(true));
    assert!(run.last_u64("requests") >= 200);
    // Every request the backend saw was accounted for (the /stats calls are not counted).
    assert_eq!(backend.stats().0, run.last_u64("requests"));
}

#[test]
fn timeline_csv_matches_the_report() {
    let backend = Backend::start("csv");
    let addr = backend.target();
    let csv = temp_path("timeline.csv");
    let csv_arg = csv.to_string_lossy().into_owned();
    let run = run_load(&[
        "--addr",
        &addr,
        "-n",
        "500",
        "-c",
        "4",
        "--timeline",
        "--timeline-csv",
        &csv_arg,
    ]);
    let text = std::fs::read_to_string(&csv).expect("timeline CSV written");
    let _ = std::fs::remove_file(&csv);
    assert_eq!(run.code, 0, "{}", run.stdout);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("t_ms,epoch_ms,ok,failed"));
    let mut ok = 0;
    let start = run.json_u64(&["start_epoch_ms"]);
    for (i, line) in lines.enumerate() {
        let f: Vec<u64> = line
            .split(',')
            .map(|x| x.parse().expect("number"))
            .collect();
        assert_eq!(f.len(), 4, "{line}");
        assert_eq!(f[0], i as u64 * 100);
        assert_eq!(f[1], start + f[0]);
        ok += f[2];
        assert_eq!(f[3], 0);
    }
    assert_eq!(ok, 500);
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &[][..],
        &["--addr", "127.0.0.1:1", "--mode", "sideways"][..],
        &["--addr", "127.0.0.1:1", "--frobnicate"][..],
        &["--addr", "127.0.0.1:1", "-d", "ten"][..],
    ] {
        let out = Command::new(load_bin())
            .args(args)
            .output()
            .expect("run zentinel-load");
        assert_eq!(out.status.code(), Some(2), "args {args:?}");
    }
}
