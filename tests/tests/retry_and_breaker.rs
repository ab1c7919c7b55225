//! `retry-policy` and `circuit-breaker` on real processes: a retryable status hidden from the
//! client and retried on another target, `max-attempts` bounding the attempts, no retry of a
//! POST, and a breaker opening, half-opening after its timeout and closing again.

use std::time::{Duration, Instant};

use zentinel_tests::*;

const HOST: &str = "retry.test";

/// One worker (one balancer, one set of breakers: counts are exact), round robin over
/// `targets`; `route` and `upstream` are extra lines of the route and upstream blocks.
fn config(port: u16, targets: &[&Backend], route: &str, upstream: &str) -> String {
    let body = format!(
        "{}        load-balancing \"round_robin\"\n        passive-health {{\n            max-fails 0\n        }}\n{upstream}",
        configs::target_lines(targets)
    );
    configs::pool(1, port, route, &body)
}

fn hits(b: &Backend) -> u64 {
    b.stats().0
}

/// A backend answering every request with `status`.
fn failing(name: &str, status: u16) -> Backend {
    Backend::start_args(name, &["--fail-status", &status.to_string()])
}

#[test]
fn a_retryable_status_is_retried_on_another_target_and_hidden() {
    let a = failing("a", 503);
    let b = Backend::start("b");
    let z = Zentinel::start(&config(
        free_port(),
        &[&a, &b],
        "retry-policy { max-attempts 3; timeout-ms 5000; backoff-base-ms 10; \
         retryable-status-codes 502 503 504; }",
        "",
    ));
    // Several requests on one keep-alive connection: each gets one response, from b.
    let mut c = z.client();
    for i in 0..6 {
        let r = c.get(&format!("/r/{i}"), HOST);
        assert_eq!(r.status, 200, "{r:?}\n{}", z.log());
        assert_eq!(r.backend(), Some("b"), "{r:?}");
    }
    // Round robin sent about half of the first attempts to a; each was retried on b.
    let (ha, hb) = (hits(&a), hits(&b));
    assert!(ha >= 2, "a was tried: {ha}");
    assert_eq!(hb, 6, "b answered every request once");
    assert!(
        z.log().contains("retrying request"),
        "retries are logged:\n{}",
        z.log()
    );
}

#[test]
fn max_attempts_bounds_the_attempts_and_the_last_response_is_passed_on() {
    let a = failing("a", 503);
    let b = failing("b", 503);
    let c = failing("c", 503);
    let z = Zentinel::start(&config(
        free_port(),
        &[&a, &b, &c],
        "retry-policy { max-attempts 2; backoff-base-ms 5; retryable-status-codes 503; }",
        "",
    ));
    let r = z.client().get("/once", HOST);
    // The last upstream response, not a synthetic 502.
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.body_str().contains("failing"), "{r:?}");
    assert_eq!(hits(&a) + hits(&b) + hits(&c), 2, "two attempts in all");
    // Two different targets were tried.
    assert!([hits(&a), hits(&b), hits(&c)].iter().all(|&h| h <= 1));

    let r = z.client().get("/twice", HOST);
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(hits(&a) + hits(&b) + hits(&c), 4);
}

#[test]
fn a_single_target_is_retried_itself_with_backoff() {
    let a = failing("a", 502);
    let z = Zentinel::start(&config(
        free_port(),
        &[&a],
        "retry-policy { max-attempts 3; backoff-base-ms 100; backoff-max-ms 150; \
         retryable-status-codes 502; }",
        "",
    ));
    let started = Instant::now();
    let r = z.client().get("/x", HOST);
    let took = started.elapsed();
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(hits(&a), 3);
    // Waits of 100 and then 150 (capped) ms between the three attempts.
    assert!(took >= Duration::from_millis(250), "{took:?}");
}

#[test]
fn post_is_not_retried() {
    let a = failing("a", 503);
    let b = Backend::start("b");
    let z = Zentinel::start(&config(
        free_port(),
        &[&a, &b],
        "retry-policy { max-attempts 3; backoff-base-ms 1; retryable-status-codes 503; }",
        "",
    ));
    let mut statuses = Vec::new();
    for i in 0..4 {
        let mut c = z.client();
        let body = format!("payload {i}");
        c.send(
            format!(
                "POST /p HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        statuses.push(c.read_response().status);
    }
    assert_eq!(hits(&a) + hits(&b), 4, "one attempt per POST: {statuses:?}");
    assert_eq!(
        statuses.iter().filter(|&&s| s == 503).count() as u64,
        hits(&a),
        "a's 503s reach the client: {statuses:?}"
    );
}

#[test]
fn the_circuit_opens_half_opens_and_closes() {
    let fail_file = temp_path("a-fails");
    std::fs::write(&fail_file, b"").expect("create the fail file");
    let a = Backend::start_args(
        "a",
        &[
            "--fail-status",
            "500",
            "--fail-file",
            fail_file.to_str().expect("utf-8 path"),
        ],
    );
    let b = Backend::start("b");
    let z = Zentinel::start(&config(
        free_port(),
        &[&a, &b],
        "",
        "        circuit-breaker { failure-threshold 2; success-threshold 2; \
         timeout-seconds 2; half-open-max-requests 1; }",
    ));
    // Closed: a gets its share and fails; after 2 consecutive failures it opens.
    assert!(
        wait_until(Duration::from_secs(10), || {
            z.client().get("/warm", HOST);
            hits(&a) >= 2
        }),
        "a never got two requests"
    );
    let opened = Instant::now();
    assert_eq!(hits(&a), 2);
    // Open: a receives nothing; b answers everything.
    for i in 0..8 {
        let r = z.client().get(&format!("/open/{i}"), HOST);
        assert_eq!((r.status, r.backend()), (200, Some("b")), "{r:?}");
    }
    assert_eq!(hits(&a), 2, "no traffic to an open breaker");
    assert!(
        opened.elapsed() < Duration::from_secs(2),
        "the test was too slow to check Open"
    );
    assert!(z.log().contains("circuit breaker opened"), "{}", z.log());

    // a recovers; after the timeout trial requests reach it, and two successes close it.
    std::fs::remove_file(&fail_file).expect("remove the fail file");
    assert!(
        wait_until(Duration::from_secs(10), || {
            z.client().get("/trial", HOST);
            hits(&a) >= 3
        }),
        "no trial request after the timeout"
    );
    assert!(
        opened.elapsed() >= Duration::from_secs(2),
        "trial before the timeout"
    );
    // Closed again: a gets its round-robin share.
    assert!(
        wait_until(Duration::from_secs(10), || {
            let before = hits(&a);
            for _ in 0..4 {
                z.client().get("/closed", HOST);
            }
            hits(&a) >= before + 2
        }),
        "a did not get its share back\n{}",
        z.log()
    );
    assert!(
        z.log().contains("to=\"closed\"") || z.log().contains("to=closed"),
        "{}",
        z.log()
    );
}

#[test]
fn every_breaker_open_answers_503_at_once() {
    let a = failing("a", 500);
    let z = Zentinel::start(&config(
        free_port(),
        &[&a],
        // In the route: applies to the route's upstream, as the examples write it.
        "        circuit-breaker { failure-threshold 1; timeout-seconds 60; }",
        "",
    ));
    let r = z.client().get("/first", HOST);
    assert_eq!(r.status, 500, "the upstream's own answer: {r:?}");
    let started = Instant::now();
    let r = z.client().get("/second", HOST);
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.backend(), None, "answered by the proxy: {r:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(hits(&a), 1);
}

/// As upstream Zentinel: an upstream without a `circuit-breaker` block still has one breaker
/// per target, with upstream's defaults (5 consecutive failures open it for 30 s).
#[test]
fn without_a_block_every_target_has_upstreams_default_breaker() {
    let a = failing("a", 500);
    let b = Backend::start("b");
    let z = Zentinel::start(&config(free_port(), &[&a, &b], "", ""));
    // Round robin: every other request meets a, which fails each time.
    assert!(
        wait_until(Duration::from_secs(10), || {
            z.client().get("/warm", HOST);
            hits(&a) >= 5
        }),
        "a never got five requests"
    );
    assert_eq!(hits(&a), 5);
    for i in 0..10 {
        let r = z.client().get(&format!("/open/{i}"), HOST);
        assert_eq!((r.status, r.backend()), (200, Some("b")), "{r:?}");
    }
    assert_eq!(hits(&a), 5, "no traffic to a target whose breaker opened");
    assert!(z.log().contains("circuit breaker opened"), "{}", z.log());
}
