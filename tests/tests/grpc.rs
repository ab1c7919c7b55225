//! gRPC end to end through Zentinel (issue 16), with the real grpcio on both sides: a test
//! server with generic handlers on raw bytes (`tests/python/grpc_tool.py`, no code
//! generation) behind an upstream with `http-version "2"`, and a grpcio client on an h2c
//! listener. Unary calls, server streaming of 10,000 messages, client and bidirectional
//! streaming, a non-OK status with its details, a deadline; many calls multiplexed on one
//! upstream connection; and a server stream that stays in flight across three rolling
//! upgrades and completes with every message.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use serde_json::Value;
use zentinel_tests::python::{command, grpc_call, PyServer};
use zentinel_tests::*;

/// One client run (each is a new process and a new client connection).
const CALL_DEADLINE: Duration = Duration::from_secs(120);

fn config(port: u16, workers: u32, target: &str, drain_secs: u32) -> String {
    config_with(port, workers, target, drain_secs, "")
}

fn config_with(port: u16, workers: u32, target: &str, drain_secs: u32, listener: &str) -> String {
    format!(
        r#"system {{
    worker-processes {workers}
    graceful-shutdown-timeout-secs {drain_secs}
}}
listeners {{
    listener "grpc" {{
        address "127.0.0.1:{port}"
        protocol "h2"
        {listener}
    }}
}}
routes {{
    route "all" {{
        matches {{ path-prefix "/" }}
        upstream "grpc"
    }}
}}
upstreams {{
    upstream "grpc" {{
        target "{target}"
        http-version "2"
        timeouts {{ read 120 }}
    }}
}}
"#
    )
}

struct Setup {
    server: PyServer,
    z: Zentinel,
}

impl Setup {
    fn new(workers: u32) -> Setup {
        let server = PyServer::start("grpc_tool.py", &["serve"]);
        let z = Zentinel::start(&config(free_port(), workers, &server.target(), 60));
        Setup { server, z }
    }

    fn call(&self, args: &[&str]) -> Value {
        grpc_call(&self.z.addr().to_string(), args, CALL_DEADLINE)
    }
}

#[test]
fn unary_calls_statuses_and_deadlines() {
    let s = Setup::new(1);
    let r = s.call(&["unary", "hello"]);
    assert_eq!(r["reply"]["echo"], "hello", "{r}");
    assert_eq!(
        r["reply"]["deadline_seen"], true,
        "grpc-timeout reached the server: {r}"
    );
    assert_eq!(
        r["trailers"]["x-echo-trailer"], "done",
        "trailing metadata came back: {r}"
    );
    let r = s.call(&["fail"]);
    assert_eq!(r["code"], "NOT_FOUND", "the handler's status: {r}");
    assert_eq!(r["details"], "no such thing: widget-7", "{r}");
    let r = s.call(&["deadline", "300"]);
    assert_eq!(r["code"], "DEADLINE_EXCEEDED", "{r}");
    // Every call so far went over the one upstream connection.
    let r = s.call(&["unary", "again"]);
    assert_eq!(r["reply"]["peers"], 1, "one upstream connection: {r}");
    assert!(
        s.z.log_text().lines().all(|l| !l.contains(" ERROR ")),
        "{}",
        s.z.log()
    );
}

#[test]
fn server_streaming_ten_thousand_messages() {
    let s = Setup::new(1);
    let r = s.call(&["server-stream", "10000"]);
    assert_eq!(r["count"], 10000, "{r}");
}

#[test]
fn client_and_bidirectional_streaming() {
    let s = Setup::new(1);
    let r = s.call(&["client-stream", "2000"]);
    assert_eq!(r["reply"], "count=2000 bytes=218000", "{r}");
    let r = s.call(&["bidi", "500"]);
    assert_eq!(r["count"], 500, "every message echoed in lock-step: {r}");
}

#[test]
fn a_quiet_request_side_is_not_cut_while_the_response_flows() {
    // The listener's request timeout (1 s) bounds how long a request body may be waited for;
    // here the client sends one message and nothing more for 3 s while the server answers.
    let server = PyServer::start("grpc_tool.py", &["serve"]);
    let z = Zentinel::start(&config_with(
        free_port(),
        1,
        &server.target(),
        60,
        "request-timeout-secs 1",
    ));
    let r = grpc_call(
        &z.addr().to_string(),
        &["quiet-client", "30"],
        CALL_DEADLINE,
    );
    assert_eq!(r["count"], 30, "{r}\n{}", z.log());
}

#[test]
fn concurrent_calls_share_one_upstream_connection() {
    let s = Setup::new(1);
    let target = s.z.addr().to_string();
    let calls: Vec<_> = (0..12)
        .map(|i| {
            let target = target.clone();
            thread::spawn(move || {
                let args: &[&str] = match i % 3 {
                    0 => &["server-stream", "2000"],
                    1 => &["bidi", "200"],
                    _ => &["client-stream", "2000"],
                };
                (args.to_vec(), grpc_call(&target, args, CALL_DEADLINE))
            })
        })
        .collect();
    for c in calls {
        let (args, r) = c.join().expect("client thread");
        let ok = match args[0] {
            "client-stream" => r["reply"] == "count=2000 bytes=218000",
            _ => r["count"].as_u64() == args[1].parse().ok(),
        };
        assert!(ok, "{args:?}: {r}");
    }
    let r = s.call(&["unary", "after"]);
    assert_eq!(
        r["reply"]["peers"], 1,
        "12 concurrent calls multiplexed on one connection (max-h2-streams 100): {r}"
    );
    let _ = &s.server;
}

/// The client's lines, as they come.
fn lines_of(child: &mut std::process::Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    rx
}

#[test]
fn a_server_stream_survives_three_rolling_upgrades() {
    let mut s = Setup::new(2);
    let mut files = TempFiles::default();
    let copies = [
        files.add(binary_copy("grpc-upgrade-a")),
        files.add(binary_copy("grpc-upgrade-b")),
    ];
    // The server sends 100 messages, then waits for its gate: the stream stays open on the
    // worker that took it while every upgrade happens.
    let target = s.z.addr().to_string();
    let mut client = command(
        "grpc_tool.py",
        &["call", &target, "gated-stream", "10000", "100"],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .spawn()
    .expect("start the gRPC client");
    let lines = lines_of(&mut client);
    let started = lines.recv_timeout(CALL_DEADLINE);
    assert_eq!(
        started.as_deref(),
        Ok("STARTED"),
        "the stream did not start\n{}",
        s.z.log()
    );
    let mut workers_before: BTreeSet<u32> = s.z.worker_pids().into_iter().collect();
    for round in 0..3 {
        let binary = copies[round % 2].display().to_string();
        let out = ctl_within(
            &s.z.control_socket(),
            &["upgrade", "--rolling", "--binary", &binary],
            Duration::from_secs(60),
        );
        assert!(out.success(), "upgrade {round}: {out}\n{}", s.z.log());
        let now: BTreeSet<u32> = s.z.worker_pids().into_iter().collect();
        assert!(
            now.difference(&workers_before).count() >= 2,
            "upgrade {round} started new workers: {workers_before:?} -> {now:?}"
        );
        workers_before = now;
        // The call still runs after each upgrade (the gate is still closed).
        assert!(
            client.try_wait().expect("client status").is_none(),
            "the client ended during upgrade {round}: {:?}\n{}",
            lines.try_iter().collect::<Vec<_>>(),
            s.z.log()
        );
    }
    // A new call goes to the newest workers meanwhile.
    let r = s.call(&["unary", "after upgrades"]);
    assert_eq!(r["reply"]["echo"], "after upgrades", "{r}");
    s.server.send_line("GO");
    let done = lines.recv_timeout(CALL_DEADLINE).unwrap_or_else(|e| {
        panic!(
            "no result from the client after the gate opened: {e}\n{}",
            s.z.log()
        )
    });
    let r: Value = serde_json::from_str(&done).unwrap_or_else(|e| panic!("{done:?}: {e}"));
    assert_eq!(
        r["count"],
        10000,
        "every message of the stream across three upgrades: {r}\n{}",
        s.z.log()
    );
    let status = client.wait().expect("client exit");
    assert!(status.success(), "client: {status}");
}

#[test]
fn grpc_over_a_tls_upstream_with_alpn_h2() {
    use zentinel_tests::tls_support::Ca;
    let dir = TempDir::new("grpc-tls-upstream");
    let ca = Ca::new();
    ca.issue(&dir.0, "grpc", &["grpc.test"]);
    std::fs::write(dir.0.join("ca.pem"), ca.cert.pem()).expect("write the CA");
    let path = |f: &str| dir.0.join(f).display().to_string();
    let server = PyServer::start(
        "grpc_tool.py",
        &["serve", "--tls", &path("grpc.crt"), &path("grpc.key")],
    );
    let tls = format!(
        "http-version \"2\"\n        tls {{\n            sni \"grpc.test\"\n            ca-cert \"{}\"\n        }}",
        path("ca.pem")
    );
    let config =
        config(free_port(), 1, &server.target(), 60).replacen("http-version \"2\"", &tls, 1);
    let z = Zentinel::start(&config);
    let target = z.addr().to_string();
    let r = grpc_call(&target, &["unary", "over tls"], CALL_DEADLINE);
    assert_eq!(r["reply"]["echo"], "over tls", "{r}");
    let r = grpc_call(&target, &["server-stream", "2000"], CALL_DEADLINE);
    assert_eq!(r["count"], 2000, "{r}");
    let r = grpc_call(&target, &["bidi", "200"], CALL_DEADLINE);
    assert_eq!(r["count"], 200, "{r}");
    let r = grpc_call(&target, &["unary", "again"], CALL_DEADLINE);
    assert_eq!(r["reply"]["peers"], 1, "one TLS upstream connection: {r}");
}
