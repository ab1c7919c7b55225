//! Keys and answers without a server; the GCRA script's arithmetic and the client's outage
//! handling against a real `redis-server` (Debian's package, installed by
//! scripts/test-deps.sh), started on a free loopback port with its own data directory.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::client::{Backend, BackendKey, NotSent};
use super::script::{Call, Reply, Scripted};
use super::*;
use crate::http::codec::{parse_request, Parsed};

fn head(raw: &str) -> crate::http::codec::RequestHead {
    let limits = zentinel_protocol::config::Limits {
        max_header_size_bytes: 8192,
        max_header_count: 100,
        ..zentinel_protocol::config::Limits::default()
    };
    match parse_request(raw.as_bytes(), &limits) {
        Ok(Parsed::Complete(h)) => h,
        other => panic!("test request did not parse: {other:?}"),
    }
}

fn key_of(kind: &RateLimitKey, peer: IpAddr, raw: &str) -> String {
    let req = head(raw);
    let facts = RequestFacts {
        peer,
        req: &req,
        scheme: "http",
        trace_id: "t",
        now: Instant::now(),
        session: 0,
    };
    key("zl:", "api", kind, &facts)
}

#[test]
fn keys_name_route_kind_and_escaped_value() {
    let v4 = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
    let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped());
    let raw = "GET /a/b%20c:d?q=1 HTTP/1.1\r\nHost: x\r\nX-Api-Key: k:1 2\r\n\r\n";
    assert_eq!(
        key_of(&RateLimitKey::ClientIp, v4, raw),
        "zl:api:ip:192.0.2.7"
    );
    // One client whether it came over IPv4 or as an IPv4-mapped IPv6 address.
    assert_eq!(
        key_of(&RateLimitKey::ClientIp, mapped, raw),
        "zl:api:ip:192.0.2.7"
    );
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    assert_eq!(
        key_of(&RateLimitKey::ClientIp, v6, raw),
        "zl:api:ip:%3A%3A1"
    );
    assert_eq!(
        key_of(&RateLimitKey::Path, v4, raw),
        "zl:api:path:/a/b%2520c%3Ad"
    );
    assert_eq!(key_of(&RateLimitKey::Route, v4, raw), "zl:api:route");
    assert_eq!(
        key_of(&RateLimitKey::ClientIpAndPath, v4, raw),
        "zl:api:ip-path:192.0.2.7:/a/b%2520c%3Ad"
    );
    assert_eq!(
        key_of(&RateLimitKey::Header("x-api-key".into()), v4, raw),
        "zl:api:header:x-api-key:k%3A1%202"
    );
    // Without the header: one shared key.
    let bare = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(
        key_of(&RateLimitKey::Header("x-api-key".into()), v4, bare),
        "zl:api:header:x-api-key:"
    );
}

#[test]
fn long_key_values_are_hashed_the_same_everywhere() {
    let v4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let long = "v".repeat(300);
    let raw = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Id: {long}\r\n\r\n");
    let k = key_of(&RateLimitKey::Header("x-id".into()), v4, &raw);
    let digest = ring::digest::digest(&ring::digest::SHA256, long.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(k, format!("zl:api:header:x-id:#{hex}"));
    let other = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Id: {long}w\r\n\r\n");
    assert_ne!(k, key_of(&RateLimitKey::Header("x-id".into()), v4, &other));
}

#[test]
fn answers_become_rate_fields() {
    let admitted = Reply {
        allowed: true,
        remaining: 4,
        retry_after_us: 0,
        reset_us: 1_500_001,
        delay_us: 0,
    };
    let d = decision(&admitted, 10);
    assert!(d.allowed);
    assert_eq!((d.limit, d.remaining, d.reset_secs), (10, 4, 2));
    let refused = Reply {
        allowed: false,
        remaining: 0,
        retry_after_us: 10,
        reset_us: 900_000,
        delay_us: 0,
    };
    let d = decision(&refused, 10);
    assert!(!d.allowed);
    // Retry-After is whole seconds, at least one.
    assert_eq!((d.retry_after_secs, d.reset_secs), (1, 1));
    let bad = redis::Value::Array(vec![redis::Value::Int(1)]);
    assert!(Reply::parse(&bad).is_err());
}

// ---------------------------------------------------------------------------------------------
// Against redis-server.
// ---------------------------------------------------------------------------------------------

/// A `redis-server` of its own: loopback, a free port, a temp dir, no persistence. Killed on
/// drop.
struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// `None` (with the reason printed) only when redis-server is missing and the run says
    /// it cannot be installed (`ZENTINEL_TEST_SKIP_REDIS=1`).
    fn start() -> Option<RedisServer> {
        let found = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            if std::env::var_os("ZENTINEL_TEST_SKIP_REDIS").is_some() {
                eprintln!("SKIPPED: redis-server is not installed (ZENTINEL_TEST_SKIP_REDIS)");
                return None;
            }
            panic!(
                "redis-server is not installed: run scripts/test-deps.sh (or set \
                 ZENTINEL_TEST_SKIP_REDIS=1 where it cannot be)"
            );
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let dir = std::env::temp_dir().join(format!(
            "zentinel-worker-redis-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("redis temp dir");
        let mut s = RedisServer {
            port,
            dir,
            child: None,
        };
        s.restart();
        Some(s)
    }

    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn connect(&self) -> Scripted {
        let client = redis::Client::open(self.url()).expect("client");
        Scripted::connect(&client, Duration::from_secs(2)).expect("connect")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn call(key: &str, rps: f64, burst: u32, max_delay_us: u64) -> Call {
    Call {
        key: key.to_owned(),
        interval_us: 1e6 / rps,
        burst,
        max_delay_us,
    }
}

fn one(con: &mut Scripted, c: &Call) -> Reply {
    let mut out = con.run(std::slice::from_ref(c)).expect("round trip");
    out.remove(0).expect("script answer")
}

#[test]
fn script_admits_a_burst_then_refuses_until_the_next_slot() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut con = server.connect();
    // 1 request/s, burst 3: three at once (2, 1, 0 left), then refused for about a second.
    let c = call("t:burst", 1.0, 3, 0);
    for left in [2, 1, 0] {
        let r = one(&mut con, &c);
        assert!(r.allowed, "{r:?}");
        assert_eq!(r.remaining, left, "{r:?}");
        assert_eq!(r.delay_us, 0);
    }
    let r = one(&mut con, &c);
    assert!(!r.allowed, "{r:?}");
    // The test's own requests took some microseconds: the next slot is just under 1 s away.
    assert!((900_000..=1_000_000).contains(&r.retry_after_us), "{r:?}");
    assert!((2_900_000..=3_000_000).contains(&r.reset_us), "{r:?}");
    // The key expires when idle again (about 3 s from now), not before, not much after.
    let pttl: i64 = redis::cmd("PTTL")
        .arg("t:burst")
        .query(&mut con.con)
        .expect("PTTL");
    assert!((2_800..=3_002).contains(&pttl), "PTTL {pttl}");
    // A refusal does not move the key: a retry at once is refused for the same wait.
    let again = one(&mut con, &c);
    assert!(
        !again.allowed && again.retry_after_us <= r.retry_after_us,
        "{again:?}"
    );
}

#[test]
fn script_reserves_late_slots_within_the_delay() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut con = server.connect();
    // 2 requests/s, burst 1, delays up to 1.2 s: now, +0.5 s, +1 s, then refused (+1.5 s).
    let c = call("t:delay", 2.0, 1, 1_200_000);
    let first = one(&mut con, &c);
    assert!(first.allowed && first.delay_us == 0, "{first:?}");
    let mut last = 0;
    for expected in [500_000u64, 1_000_000] {
        let r = one(&mut con, &c);
        assert!(r.allowed, "{r:?}");
        assert!(
            r.delay_us > last && r.delay_us <= expected && r.delay_us > expected - 100_000,
            "{r:?} (expected about {expected})"
        );
        last = r.delay_us;
    }
    let r = one(&mut con, &c);
    assert!(!r.allowed, "{r:?}");
    assert!((1_400_000..=1_500_000).contains(&r.retry_after_us), "{r:?}");
}

#[test]
fn script_pipelines_a_batch_and_survives_a_script_flush() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut con = server.connect();
    // Ten calls in one round trip on one key with burst 5 (1/s): exactly five admitted.
    let batch: Vec<Call> = (0..10).map(|_| call("t:batch", 1.0, 5, 0)).collect();
    let out = con.run(&batch).expect("batch");
    let admitted = out
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|r| r.allowed))
        .count();
    assert_eq!(admitted, 5, "{out:?}");
    // The server forgets the script: EVALSHA gets NOSCRIPT, the call goes again as EVAL.
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query(&mut con.con)
        .expect("SCRIPT FLUSH");
    let r = one(&mut con, &call("t:flushed", 1.0, 2, 0));
    assert!(r.allowed && r.remaining == 1, "{r:?}");
    // EVAL loaded it again: the next EVALSHA needs no second try.
    let r = one(&mut con, &call("t:flushed", 1.0, 2, 0));
    assert!(r.allowed && r.remaining == 0, "{r:?}");
}

/// Wait for `slot` (no event loop here: poll it).
fn answer(slot: &Slot) -> Result<Reply, String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(a) = slot.get() {
            return a.clone();
        }
        assert!(Instant::now() < deadline, "no answer from the Redis thread");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn backend_marks_an_outage_once_and_reconnects() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let backend = Backend::get(&BackendKey {
        url: server.url(),
        pool_size: 2,
        timeout_ms: 100,
    });
    let deadline = || Instant::now() + Duration::from_secs(5);
    let slot = backend
        .send(call("t:b", 100.0, 10, 0), deadline(), 1)
        .expect("queued");
    assert!(answer(&slot).is_ok_and(|r| r.allowed));

    server.kill();
    // Each thread finds its connection gone at its next batch; then the backend is down and
    // checks are not even queued.
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        match backend.send(call("t:b", 100.0, 10, 0), deadline(), 1) {
            Err(NotSent::Down) => break,
            Err(NotSent::QueueFull) => panic!("queue full with two idle threads"),
            Ok(slot) => assert!(answer(&slot).is_err(), "answered with Redis killed"),
        }
        assert!(Instant::now() < until, "the backend was never marked down");
    }

    server.restart();
    // The threads retry with backoff (at most 2 s apart): checks go through again.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(slot) = backend.send(call("t:b", 100.0, 10, 0), deadline(), 1) {
            if answer(&slot).is_ok_and(|r| r.allowed) {
                break;
            }
        }
        assert!(
            Instant::now() < until,
            "no reconnection after Redis came back"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A filter with `mode` (burst 2 for the local fallback) on a "Redis" that never answers: a
/// socket that listens (the kernel completes connections) but is never read. The Redis
/// threads' connection setup waits for its I/O timeout (500 ms): checks sent meanwhile are
/// queued and time out, then the backend is down.
fn silent_redis_filter(mode: RedisFailureMode) -> (Filter, TcpListener) {
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind a silent listener");
    let port = silent.local_addr().expect("local_addr").port();
    let config = RateLimitFilter {
        max_rps: 1,
        burst: 2,
        backend: zentinel_protocol::config::RateLimitBackend::Redis(RedisBackend {
            url: format!("redis://127.0.0.1:{port}"),
            timeout_ms: 100,
            failure_mode: mode,
            ..RedisBackend::default()
        }),
        ..RateLimitFilter::default()
    };
    let definition = zentinel_protocol::config::FilterConfig {
        name: "fleet".into(),
        kind: zentinel_protocol::config::FilterKind::RateLimit(config.clone()),
    };
    let table = crate::filters::FilterShm::private(&definition)
        .expect("a private table")
        .expect("rate-limit filters keep state");
    let filter = Filter {
        name: "fleet".into(),
        kind: crate::filters::Kind::RateLimit(RateLimiter::new(
            "fleet",
            &config,
            std::rc::Rc::new(table),
        )),
        counters: FilterCounters::default(),
        shm: None,
    };
    (filter, silent)
}

/// Run `filter` on a request the way the chain does: the check, and again with the answer
/// (or its absence) when the session would resume. `Hold` is returned only for a check
/// queued while the backend was not yet known to be down, whose `pending` is dropped
/// unanswered (never counted).
fn run_check(filter: &Filter, resume: bool) -> Verdict {
    let crate::filters::Kind::RateLimit(limiter) = &filter.kind else {
        panic!("not a rate limit");
    };
    let req = head("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let facts = RequestFacts {
        peer: IpAddr::V4(Ipv4Addr::LOCALHOST),
        req: &req,
        scheme: "http",
        trace_id: "t",
        now: Instant::now(),
        session: 0,
    };
    let (mut rate, mut pending) = (None, None);
    let v = limiter.check(filter, "api", &facts, &mut rate, &mut pending);
    if resume && pending.is_some() {
        // The deadline came without an answer.
        return limiter.check(filter, "api", &facts, &mut rate, &mut pending);
    }
    v
}

/// Checks until the backend is known down (a check decided at once, without a hold).
fn until_down(filter: &Filter) -> Verdict {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = run_check(filter, false);
        if !matches!(v, Verdict::Hold { .. }) {
            return v;
        }
        assert!(Instant::now() < deadline, "the backend never went down");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn counts(filter: &Filter) -> (u64, u64) {
    (
        filter.counters.backend_errors.get(),
        filter.counters.fallbacks.get(),
    )
}

#[test]
fn failure_modes_decide_without_redis_and_are_counted() {
    // Closed: a check that timed out is a backend error and a refusal; once the backend is
    // down (its connections timed out), refusals come at once (a fallback, no new backend
    // error).
    let (closed, _silent) = silent_redis_filter(RedisFailureMode::Closed);
    assert!(matches!(
        run_check(&closed, true),
        Verdict::Respond { status: 429, .. }
    ));
    assert_eq!(counts(&closed), (1, 1));
    assert!(matches!(
        until_down(&closed),
        Verdict::Respond { status: 429, .. }
    ));
    assert_eq!(counts(&closed), (1, 2));

    let (open, _silent) = silent_redis_filter(RedisFailureMode::Open);
    assert!(matches!(run_check(&open, true), Verdict::Continue));
    assert!(matches!(until_down(&open), Verdict::Continue));
    assert_eq!(counts(&open), (1, 2));

    // The local fallback: this instance's burst of 2, then refusals.
    let (local, _silent) = silent_redis_filter(RedisFailureMode::FallbackLocal);
    assert!(matches!(until_down(&local), Verdict::Continue));
    assert!(matches!(run_check(&local, true), Verdict::Continue));
    assert!(matches!(
        run_check(&local, true),
        Verdict::Respond { status: 429, .. }
    ));
    assert_eq!(counts(&local), (0, 3));
    assert_eq!(local.counters.limited.get(), 1);
}
