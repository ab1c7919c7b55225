//! Upstream health end to end: a target that dies is failed over (idempotent requests retried,
//! others answered 502), passive marking takes it out of rotation, active health checks take a
//! target out and bring it back. Real `zentinel` and `zentinel-backend` processes on loopback.
//!
//! The 504 for an upstream that accepts and never answers is `http_proxy.rs`'s
//! `upstream_read_timeout_gives_504`.

use std::collections::BTreeSet;
use std::fs;
use std::time::{Duration, Instant};

use zentinel_tests::*;

const HOST: &str = "health.test";

/// `workers` workers, one HTTP listener proxying everything to upstream "pool" made of
/// `backends`; `upstream_extra` is spliced into the upstream block.
fn pool_config(workers: u32, port: u16, backends: &[&Backend], upstream_extra: &str) -> String {
    let body = format!(
        "{}        load-balancing \"round_robin\"\n        {upstream_extra}",
        configs::target_lines(backends)
    );
    configs::pool(workers, port, "", &body)
}

fn post(client: &mut HttpClient, path: &str) -> Response {
    client.send(
        format!("POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5\r\n\r\nhello")
            .as_bytes(),
    );
    client.read_response()
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

#[test]
fn killed_target_is_failed_over_then_taken_out_of_rotation() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let z = Zentinel::start(&pool_config(
        2,
        free_port(),
        &[&a, &b],
        "passive-health { max-fails 1; fail-timeout-secs 120; }",
    ));

    // Both targets serve while they are up.
    let mut keep = z.client();
    let mut seen = BTreeSet::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            let r = keep.get("/warm", HOST);
            assert_eq!(r.status, 200, "{r:?}");
            seen.insert(r.backend().unwrap_or_default().to_owned());
            seen.len() == 2
        }),
        "both backends should answer: {seen:?}\n{}",
        z.log()
    );

    // The keep-alive connection holds a pooled connection to `b` in its worker: it dies with
    // the process, and the next request to `b` meets a dead connection or a refused connect.
    drop(b);
    for i in 0..40 {
        let r = if i % 2 == 0 {
            keep.get(&format!("/get/{i}"), HOST)
        } else {
            z.client().get(&format!("/get/{i}"), HOST)
        };
        assert_eq!(r.status, 200, "GET {i} after the kill: {r:?}\n{}", z.log());
        assert_eq!(r.backend(), Some("a"), "GET {i}");
    }

    // A POST is never sent twice. A refused connect sent nothing, so it goes elsewhere too;
    // only a POST already written to the dying target may get a 502, at most once per
    // connection that was open to it.
    let mut bad_gateways = 0;
    let mut client = z.client();
    for i in 0..20 {
        let r = post(&mut client, &format!("/post/{i}"));
        match r.status {
            200 => assert_eq!(r.backend(), Some("a"), "POST {i}"),
            502 => {
                bad_gateways += 1;
                client = z.client();
            }
            other => panic!("POST {i}: status {other}: {r:?}\n{}", z.log()),
        }
    }
    eprintln!("POSTs answered 502 after the kill: {bad_gateways} of 20");
    assert!(
        bad_gateways <= 2,
        "{bad_gateways} POSTs got a 502 after the kill\n{}",
        z.log()
    );

    // Passive marking: every worker takes `b` out after its first failure. Fresh connections
    // spread over the workers until each has logged it.
    assert!(
        wait_until(Duration::from_secs(10), || {
            let r = z.client().get("/spread", HOST);
            assert_eq!(r.status, 200, "{r:?}");
            count(&z.log_text(), "upstream target out of rotation (passive)") >= 2
        }),
        "each worker should take the dead target out of rotation\n{}",
        z.log()
    );
    // Out of rotation means not even tried: no connect failure is logged any more.
    let failures = count(&z.log_text(), "upstream connect failed");
    for i in 0..30 {
        let r = if i % 2 == 0 {
            z.client().get(&format!("/after/{i}"), HOST)
        } else {
            post(&mut z.client(), &format!("/after/{i}"))
        };
        assert_eq!(r.status, 200, "request {i} once `b` is out: {r:?}");
        assert_eq!(r.backend(), Some("a"));
    }
    assert_eq!(
        count(&z.log_text(), "upstream connect failed"),
        failures,
        "a target out of rotation was tried again\n{}",
        z.log()
    );
}

#[test]
fn reset_before_response_retries_idempotent_requests_once_and_502s_the_others() {
    let a = Backend::start("a");
    // Resets every connection after reading the request, without answering.
    let r = Backend::start_args("r", &["--fault", "reset", "--fault-every", "1"]);
    // Passive marking off and a circuit breaker too patient to open (every upstream has one,
    // as in upstream Zentinel): the resetting target stays in rotation, so every other request
    // meets it (one worker: round-robin alternates deterministically).
    let z = Zentinel::start(&pool_config(
        1,
        free_port(),
        &[&a, &r],
        "passive-health { max-fails 0; }\ncircuit-breaker { failure-threshold 1000; }",
    ));

    let mut client = z.client();
    for i in 0..20 {
        let resp = client.get(&format!("/get/{i}"), HOST);
        assert_eq!(resp.status, 200, "GET {i}: {resp:?}\n{}", z.log());
        assert_eq!(resp.backend(), Some("a"), "GET {i}");
    }
    let (reset_gets, _) = r.stats();
    let retries = count(
        &z.log_text(),
        "upstream failed before responding; retrying on another target",
    );
    assert_eq!(
        retries as u64,
        reset_gets,
        "each reset GET retried once\n{}",
        z.log()
    );
    assert!(
        reset_gets >= 9,
        "round-robin should have sent about half the GETs to the resetting target first, \
         it saw {reset_gets}"
    );

    let (a_before, _) = a.stats();
    let mut bad_gateways = 0;
    let mut client = z.client();
    for i in 0..20 {
        let resp = post(&mut client, &format!("/post/{i}"));
        match resp.status {
            200 => assert_eq!(resp.backend(), Some("a")),
            502 => {
                bad_gateways += 1;
                client = z.client();
            }
            other => panic!("POST {i}: status {other}: {resp:?}"),
        }
    }
    let (a_after, _) = a.stats();
    let (reset_after, _) = r.stats();
    eprintln!(
        "GETs reset then retried: {reset_gets} of 20; POSTs answered 502: {bad_gateways} of 20"
    );
    assert!(bad_gateways >= 9, "only {bad_gateways} POSTs met the reset");
    // Each 502 is a POST the resetting target received and that went nowhere else.
    assert_eq!(reset_after - reset_gets, bad_gateways);
    assert_eq!(a_after - a_before, 20 - bad_gateways);
}

#[test]
fn active_checks_take_a_target_out_and_bring_it_back() {
    let flag = temp_path("healthy");
    let _ = fs::remove_file(&flag);
    let a = Backend::start("a");
    let flag_arg = flag.display().to_string();
    let b = Backend::start_args("b", &["--health-file", &flag_arg]);
    let (interval, healthy) = (1u64, 2u64);
    let z = Zentinel::start(&pool_config(
        2,
        free_port(),
        &[&a, &b],
        &format!(
            r#"health-check {{ type "http" {{ path "/health"; expected-status 200; }}; interval-secs {interval}; timeout-secs 1; healthy-threshold {healthy}; unhealthy-threshold 2; }}"#
        ),
    ));

    // `/health` answers 500: each worker takes `b` out after two probes, with no traffic.
    assert!(
        wait_until(Duration::from_secs(10), || count(
            &z.log_text(),
            "upstream target out of rotation (health check)"
        ) >= 2),
        "both workers should take `b` out\n{}",
        z.log()
    );
    let (b_before, _) = b.stats();
    for i in 0..20 {
        let r = z.client().get(&format!("/out/{i}"), HOST);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            r.backend(),
            Some("a"),
            "request {i} went to a target out of rotation"
        );
    }
    assert_eq!(
        b.stats().0,
        b_before,
        "`b` got traffic while out of rotation"
    );

    // Healthy again: back within interval * healthy-threshold (plus a probe in flight and
    // slack for a loaded machine).
    fs::write(&flag, b"ok").unwrap();
    let since = Instant::now();
    let deadline = Duration::from_secs(interval * (healthy + 1) + 5);
    assert!(
        wait_until(deadline, || {
            let r = z.client().get("/back", HOST);
            assert_eq!(r.status, 200, "{r:?}");
            r.backend() == Some("b")
        }),
        "`b` not back in rotation within {deadline:?}\n{}",
        z.log()
    );
    eprintln!("target back in rotation after {:?}", since.elapsed());
    assert!(z.log_text().contains("upstream target back in rotation"));
    let _ = fs::remove_file(&flag);
}

#[test]
fn tcp_check_follows_a_target_that_stops_and_starts_again() {
    let a = Backend::start("a");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let b = Backend::start_args("b", &["--listen", &listen]);
    let z = Zentinel::start(&pool_config(
        1,
        free_port(),
        &[&a, &b],
        r#"health-check { type "tcp"; interval-secs 1; timeout-secs 1; healthy-threshold 1; unhealthy-threshold 1; }
        passive-health { max-fails 0; }"#,
    ));
    drop(b);
    assert!(
        wait_until(Duration::from_secs(10), || count(
            &z.log_text(),
            "upstream target out of rotation (health check)"
        ) >= 1),
        "{}",
        z.log()
    );
    let failures = count(&z.log_text(), "upstream connect failed");
    for _ in 0..10 {
        assert_eq!(z.client().get("/", HOST).backend(), Some("a"));
    }
    assert_eq!(count(&z.log_text(), "upstream connect failed"), failures);

    let b = Backend::start_args("b", &["--listen", &listen]);
    assert!(
        wait_until(Duration::from_secs(10), || z
            .client()
            .get("/", HOST)
            .backend()
            == Some("b")),
        "{}",
        z.log()
    );
    drop(b);
}

#[test]
fn check_accepts_health_check_config_and_rejects_bad_values_with_their_line() {
    let a = Backend::start("a");
    let good = temp_path("health.kdl");
    fs::write(
        &good,
        pool_config(
            1,
            free_port(),
            &[&a],
            r#"health-check { type "http" { path "/health"; expected-status 200; }; interval-secs 5; }
        passive-health { max-fails 3; fail-timeout-secs 30; }"#,
        ),
    )
    .unwrap();
    let (code, out, err) = zentinel_check(Some(&good));
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");

    let bad = temp_path("bad-health.kdl");
    let text = pool_config(
        1,
        free_port(),
        &[&a],
        r#"health-check { type "http" { path "health"; expected-status 700; }; interval-secs 0; }"#,
    );
    let line = text
        .lines()
        .position(|l| l.contains("health-check"))
        .unwrap()
        + 1;
    fs::write(&bad, &text).unwrap();
    let (code, out, err) = zentinel_check(Some(&bad));
    assert_ne!(code, Some(0), "stdout: {out}\nstderr: {err}");
    let all = format!("{out}{err}");
    for needle in [
        "must start with `/`",
        "must be at most 599",
        "must be at least 1",
    ] {
        assert!(all.contains(needle), "{needle:?} missing from:\n{all}");
    }
    assert!(
        all.contains(&format!(":{line}:")),
        "line {line} not named:\n{all}"
    );
    let _ = fs::remove_file(&good);
    let _ = fs::remove_file(&bad);
}
