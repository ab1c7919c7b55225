//! Upstream Zentinel's `upstreams` vocabulary on real processes: weighted shares, host-name
//! targets, sticky cookies, least connections preferring an idle target, and the
//! `max-connections` cap (waiting for a free connection, then 503).

use std::collections::BTreeMap;
use std::thread;
use std::time::{Duration, Instant};

use zentinel_tests::*;

const HOST: &str = "vocab.test";

/// One listener routing everything to upstream "pool"; `upstream` is its block's body.
fn config(workers: u32, port: u16, upstream: &str) -> String {
    configs::pool(workers, port, "", upstream)
}

/// Which backend answered each of `n` requests, each on a fresh connection.
fn tally(z: &Zentinel, n: usize, path: &str) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for i in 0..n {
        let r = z.client().get(&format!("{path}/{i}"), HOST);
        assert_eq!(r.status, 200, "{r:?}\n{}", z.log());
        *seen
            .entry(r.backend().unwrap_or("?").to_owned())
            .or_insert(0) += 1;
    }
    seen
}

#[test]
fn weighted_targets_get_their_share() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    // One worker: one balancer, so the split is exact (smooth weighted round robin).
    let z = Zentinel::start(&config(
        1,
        free_port(),
        &format!(
            "        target \"{}\" weight=3\n        target address=\"{}\" weight=1\n        \
             load-balancing \"weighted_round_robin\"",
            a.target(),
            b.target()
        ),
    ));
    let seen = tally(&z, 40, "/w");
    assert_eq!(seen.get("a"), Some(&30), "{seen:?}");
    assert_eq!(seen.get("b"), Some(&10), "{seen:?}");
}

#[test]
fn host_name_targets_are_resolved() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let z = Zentinel::start(&config(
        2,
        free_port(),
        &format!(
            "        targets {{\n            target \"localhost:{}\"\n            target {{ address \
             \"127.0.0.1:{}\"; }}\n        }}\n        load-balancing \"round-robin\"\n        \
             timeouts {{ connect 2; request-secs 10; }}",
            a.port(),
            b.port()
        ),
    ));
    let seen = tally(&z, 20, "/dns");
    assert!(
        seen.get("a").is_some_and(|&n| n >= 5) && seen.get("b").is_some_and(|&n| n >= 5),
        "both the host-name and the IP target serve: {seen:?}\n{}",
        z.log()
    );
    assert!(
        z.log_text().contains("upstream host name resolved"),
        "{}",
        z.log()
    );
}

#[test]
fn unresolvable_host_name_is_a_down_target_not_a_failed_start() {
    let a = Backend::start("a");
    let z = Zentinel::start(&config(
        1,
        free_port(),
        &format!(
            "        target \"no-such-host.invalid:80\"\n        target \"{}\"",
            a.target()
        ),
    ));
    let seen = tally(&z, 6, "/down");
    assert_eq!(seen.get("a"), Some(&6), "{seen:?}");
    assert!(
        z.log_text().contains("cannot resolve upstream host name"),
        "{}",
        z.log()
    );
}

fn set_cookie(r: &Response) -> Option<String> {
    r.header_all("set-cookie")
        .into_iter()
        .find(|v| v.starts_with("ZSTICKY="))
        .map(str::to_owned)
}

#[test]
fn sticky_cookie_pins_a_client_to_its_target() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let z = Zentinel::start(&config(
        2,
        free_port(),
        &format!(
            "        target \"{}\"\n        target \"{}\"\n        load-balancing \"sticky\" {{\n            \
             cookie-name \"ZSTICKY\"\n            cookie-ttl \"2h\"\n            cookie-secure #false\n            \
             fallback \"round_robin\"\n        }}",
            a.target(),
            b.target()
        ),
    ));
    let first = z.client().get("/", HOST);
    assert_eq!(first.status, 200, "{first:?}");
    let header = set_cookie(&first).unwrap_or_else(|| panic!("no Set-Cookie: {first:?}"));
    assert!(
        header.contains("; Path=/; Max-Age=7200; SameSite=Lax") && !header.contains("Secure"),
        "{header}"
    );
    let pinned = first.backend().unwrap_or("?").to_owned();
    let cookie = header.split(';').next().unwrap_or_default().to_owned();
    // Fresh connections spread over both workers: every one honours the cookie.
    for i in 0..12 {
        let mut c = z.client();
        c.send(
            format!("GET /s/{i} HTTP/1.1\r\nHost: {HOST}\r\nCookie: other=1; {cookie}\r\n\r\n")
                .as_bytes(),
        );
        let r = c.read_response();
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.backend(), Some(pinned.as_str()), "request {i}");
        assert_eq!(set_cookie(&r), None, "a valid cookie is not set again");
    }
    // A forged value is not trusted: the fallback chooses and a real cookie is set.
    let mut c = z.client();
    c.send(format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nCookie: ZSTICKY=7\r\n\r\n").as_bytes());
    let r = c.read_response();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(set_cookie(&r).is_some(), "{r:?}");
}

#[test]
fn least_connections_prefers_the_idle_target() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let z = Zentinel::start(&config(
        1,
        free_port(),
        &format!(
            "        target \"{}\"\n        target \"{}\"\n        load-balancing \"least-connections\"",
            a.target(),
            b.target()
        ),
    ));
    let mut slow = z.client();
    slow.send(format!("GET /delay/3000 HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes());
    // The slow request holds a connection once a backend has it.
    assert!(
        wait_until(Duration::from_secs(5), || a.stats().0 + b.stats().0 >= 1),
        "the slow request never reached a backend\n{}",
        z.log()
    );
    let busy = if a.stats().0 == 1 { "a" } else { "b" };
    let seen = tally(&z, 10, "/quick");
    let idle = if busy == "a" { "b" } else { "a" };
    assert_eq!(seen.get(idle), Some(&10), "busy: {busy}, {seen:?}");
    let r = slow.read_response();
    assert_eq!(r.backend(), Some(busy));
}

#[test]
fn max_connections_queues_then_answers_503() {
    let a = Backend::start("a");
    let z = Zentinel::start(&config(
        1,
        free_port(),
        &format!(
            "        target \"{}\"\n        connection-pool {{ max-connections 1; }}\n        \
             timeouts {{ connect 2; }}",
            a.target()
        ),
    ));
    // Within the wait: the second request waits for the first one's connection.
    let mut first = z.client();
    first.send(format!("GET /delay/800 HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes());
    assert!(wait_until(Duration::from_secs(5), || a.stats().0 >= 1));
    let started = Instant::now();
    let (first_resp, second) = thread::scope(|s| {
        let h = s.spawn(|| z.client().get("/second", HOST));
        let r = first.read_response();
        (r, h.join().expect("second request thread"))
    });
    assert_eq!(first_resp.status, 200, "{first_resp:?}");
    assert_eq!(second.status, 200, "{second:?}\n{}", z.log());
    assert!(started.elapsed() < Duration::from_secs(2));
    // Without the cap the second request would have opened its own upstream connection.
    assert_eq!(
        second.header("x-connection-id"),
        first_resp.header("x-connection-id"),
        "the cap allowed a second upstream connection"
    );

    // Longer than the connect timeout: 503.
    let mut hog = z.client();
    hog.send(format!("GET /delay/4000 HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes());
    assert!(wait_until(Duration::from_secs(5), || a.stats().0 >= 3));
    let started = Instant::now();
    let r = z.client().get("/too-late", HOST);
    assert_eq!(r.status, 503, "{r:?}\n{}", z.log());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(4),
        "waited {waited:?}"
    );
    assert!(z.log_text().contains("max-connections"), "{}", z.log());
    assert_eq!(hog.read_response().status, 200);
}
