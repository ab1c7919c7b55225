//! `rate-limit` filters with `backend "redis"` on real processes: Zentinel instances sharing
//! one limit through a real `redis-server` (started by each test on a loopback port with its
//! own data directory, killed after), Redis killed mid-test under each failure mode, Redis
//! restarted, a reservation in delay mode, and a rolling upgrade that keeps the counters.
//!
//! The client sends one request per connection, paced at a fixed rate and alternating over
//! the instances; "admitted" is a 200 from the backend, "refused" the filter's 429. A GCRA
//! limit of `rps` with `burst` admits `burst + rps * elapsed` from an idle key. The tests run
//! one at a time ([`serial`]): they measure rates and answer times, which a machine busy with
//! the others' processes would blur.

use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use zentinel_tests::redis_server::RedisServer;
use zentinel_tests::tls_sessions::{rolling_upgrade_to, running_workers};
use zentinel_tests::*;

/// `redis-timeout-ms` of every test: a debug build on a loaded machine answers well within it.
const REDIS_TIMEOUT_MS: u64 = 200;
/// How late past `redis-timeout-ms` an answer may come while Redis is down.
const PROMPT_SLACK: Duration = Duration::from_millis(200);
const LIMIT_MESSAGE: &str = "shared limit reached";

/// Held for the whole of a test: one test of this file at a time.
fn serial() -> MutexGuard<'static, ()> {
    static ONE: Mutex<()> = Mutex::new(());
    // A failed test poisoned it; the next one still runs.
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

struct Limit {
    rps: u32,
    burst: u32,
    /// Extra lines of the filter (`failure-mode`, `on-limit`...).
    extra: &'static str,
    workers: usize,
}

fn config(port: u16, backend: &Backend, redis: &RedisServer, prefix: &str, l: &Limit) -> String {
    let target = backend.target();
    let url = redis.url();
    let Limit {
        rps,
        burst,
        extra,
        workers,
    } = l;
    format!(
        r#"
system {{
    worker-processes {workers}
}}
listeners {{
    listener "http" {{
        address "127.0.0.1:{port}"
    }}
}}
filters {{
    filter "fleet-limit" {{
        type "rate-limit"
        max-rps {rps}
        burst {burst}
        key "client-ip"
        limit-message "{LIMIT_MESSAGE}"
        backend "redis"
        redis-url "{url}"
        redis-prefix "{prefix}"
        redis-pool-size 2
        redis-timeout-ms {REDIS_TIMEOUT_MS}
        {extra}
    }}
}}
routes {{
    route "api" {{
        matches {{ path-prefix "/"; }}
        upstream "b"
        filters "fleet-limit"
    }}
}}
upstreams {{
    upstream "b" {{
        target "{target}"
    }}
}}
"#
    )
}

/// A backend and `n` instances with the same filter (one Redis key prefix per test).
fn fleet(redis: &RedisServer, label: &str, n: usize, l: &Limit) -> (Backend, Vec<Zentinel>) {
    let backend = Backend::start(label);
    let prefix = format!("zt-{label}-{}:", std::process::id());
    let fleet = (0..n)
        .map(|_| Zentinel::start(&config(free_port(), &backend, redis, &prefix, l)))
        .collect();
    (backend, fleet)
}

/// One request on a connection of its own: status and how long the answer took.
fn hit(addr: SocketAddr) -> (u16, Duration) {
    let started = Instant::now();
    let mut c = HttpClient::connect(addr);
    c.send(b"GET /item HTTP/1.1\r\nHost: fleet.test\r\nConnection: close\r\n\r\n");
    let r = c.read_response();
    if r.status == 429 {
        assert_eq!(r.body_str(), LIMIT_MESSAGE, "a 429 not from the filter");
    }
    (r.status, started.elapsed())
}

#[derive(Debug, Default)]
struct Run {
    /// 200s per address, in the order given.
    admitted: Vec<u64>,
    refused: u64,
    /// Statuses other than 200 and 429.
    other: Vec<u16>,
    slowest: Duration,
    /// From the first request sent to the last.
    elapsed: Duration,
}

impl Run {
    fn total(&self) -> u64 {
        self.admitted.iter().sum()
    }
}

/// `rate` requests per second for `length`, alternating over `addrs`.
fn drive(addrs: &[SocketAddr], rate: f64, length: Duration) -> Run {
    let count = (rate * length.as_secs_f64()).round() as u64;
    let mut run = Run {
        admitted: vec![0; addrs.len()],
        ..Run::default()
    };
    let start = Instant::now();
    let mut last_sent = start;
    for i in 0..count {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        if let Some(wait) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        last_sent = Instant::now();
        let which = (i as usize) % addrs.len();
        let (status, took) = hit(addrs[which]);
        run.slowest = run.slowest.max(took);
        match status {
            200 => run.admitted[which] += 1,
            429 => run.refused += 1,
            s => run.other.push(s),
        }
    }
    run.elapsed = last_sent - start;
    run
}

/// What a GCRA limit admits from an idle key over `elapsed`.
fn expected(l: &Limit, elapsed: Duration) -> f64 {
    f64::from(l.burst) + f64::from(l.rps) * elapsed.as_secs_f64()
}

fn assert_within_10_percent(what: &str, admitted: u64, expected: f64, run: &Run) {
    let off = (admitted as f64 - expected).abs() / expected;
    eprintln!(
        "{what}: admitted {admitted}, expected {expected:.1} ({:+.1}%), refused {}, slowest \
         answer {:?}, over {:?}",
        (admitted as f64 - expected) / expected * 100.0,
        run.refused,
        run.slowest,
        run.elapsed
    );
    assert!(
        off <= 0.10,
        "{what}: admitted {admitted}, expected {expected:.1} within 10%: {run:?}"
    );
    assert!(run.other.is_empty(), "{what}: unexpected statuses {run:?}");
}

fn addrs(fleet: &[Zentinel]) -> Vec<SocketAddr> {
    fleet.iter().map(Zentinel::addr).collect()
}

fn occurrences(z: &Zentinel, needle: &str) -> usize {
    z.log_text().matches(needle).count()
}

const OUTAGE: &str = "Redis unreachable";
const BACK: &str = "Redis reachable again";

#[test]
fn two_instances_share_one_limit() {
    let _one = serial();
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let l = Limit {
        rps: 20,
        burst: 10,
        extra: "",
        workers: 2,
    };
    let (_backend, fleet) = fleet(&redis, "share", 2, &l);
    // Three times the limit for 3 s, alternating: each instance alone would admit about two
    // thirds of it; together they must admit the limit once.
    let run = drive(
        &addrs(&fleet),
        3.0 * f64::from(l.rps),
        Duration::from_secs(3),
    );
    assert_within_10_percent(
        "two instances, 2 workers each",
        run.total(),
        expected(&l, run.elapsed),
        &run,
    );
    assert!(
        run.admitted.iter().all(|&n| n > 0),
        "one instance admitted nothing: {run:?}"
    );
}

#[test]
fn redis_down_falls_back_to_each_instance_own_limit_then_shares_again() {
    let _one = serial();
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    // One worker per instance: the fallback is exactly "the instance's own limit".
    let l = Limit {
        rps: 20,
        burst: 10,
        extra: "redis-fallback #true",
        workers: 1,
    };
    let (_backend, fleet) = fleet(&redis, "fallback", 2, &l);
    let addrs = addrs(&fleet);
    let rate = 3.0 * f64::from(l.rps);
    let length = Duration::from_secs(3);

    let shared = drive(&addrs, rate, length);
    assert_within_10_percent(
        "shared",
        shared.total(),
        expected(&l, shared.elapsed),
        &shared,
    );

    redis.kill();
    let local = drive(&addrs, rate, length);
    for (i, &admitted) in local.admitted.iter().enumerate() {
        assert_within_10_percent(
            &format!("Redis down, instance {i} on its own limit"),
            admitted,
            expected(&l, local.elapsed),
            &local,
        );
    }
    let bound = Duration::from_millis(REDIS_TIMEOUT_MS) + PROMPT_SLACK;
    assert!(local.slowest <= bound, "an answer took {:?}", local.slowest);
    for z in &fleet {
        assert_eq!(
            occurrences(z, OUTAGE),
            1,
            "one warning per outage:\n{}",
            z.log()
        );
    }

    redis.restart();
    let back = wait_until(Duration::from_secs(10), || {
        fleet.iter().all(|z| occurrences(z, BACK) == 1)
    });
    assert!(back, "the instances did not reconnect:\n{}", fleet[0].log());
    let again = drive(&addrs, rate, length);
    assert_within_10_percent(
        "shared again after the restart",
        again.total(),
        expected(&l, again.elapsed),
        &again,
    );
}

/// Redis killed under `extra`'s failure mode: every answer is `want` and prompt; Redis back:
/// `resumed` holds of some answer again.
fn outage_under(label: &str, extra: &'static str, want: u16, resumed: u16) {
    let _one = serial();
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let l = Limit {
        rps: 5,
        burst: 5,
        extra,
        workers: 1,
    };
    let (_backend, fleet) = fleet(&redis, label, 1, &l);
    let addrs = addrs(&fleet);
    let rate = 3.0 * f64::from(l.rps);
    let before = drive(&addrs, rate, Duration::from_secs(2));
    assert_within_10_percent(
        &format!("{label}: Redis up"),
        before.total(),
        expected(&l, before.elapsed),
        &before,
    );

    redis.kill();
    let down = drive(&addrs, rate, Duration::from_secs(2));
    let statuses = (down.total(), down.refused);
    let sent = down.total() + down.refused;
    let all_want = if want == 200 {
        statuses == (sent, 0)
    } else {
        statuses == (0, sent)
    };
    assert!(
        all_want,
        "{label}: with Redis down every answer should be {want}: {down:?}"
    );
    let bound = Duration::from_millis(REDIS_TIMEOUT_MS) + PROMPT_SLACK;
    eprintln!(
        "{label}: Redis down, {sent} requests all {want}, slowest answer {:?}",
        down.slowest
    );
    assert!(
        down.slowest <= bound,
        "{label}: an answer took {:?}",
        down.slowest
    );
    assert_eq!(occurrences(&fleet[0], OUTAGE), 1, "{}", fleet[0].log());

    redis.restart();
    let ok = wait_until(Duration::from_secs(10), || {
        (0..10).any(|_| hit(addrs[0]).0 == resumed)
    });
    assert!(
        ok,
        "{label}: the limit did not resume with Redis back:\n{}",
        fleet[0].log()
    );
}

#[test]
fn redis_down_with_failure_mode_closed_refuses_promptly() {
    outage_under("closed", r#"failure-mode "closed""#, 429, 200);
}

#[test]
fn redis_down_with_failure_mode_open_lets_everything_through() {
    outage_under("open", r#"failure-mode "open""#, 200, 429);
}

#[test]
fn delay_mode_reserves_slots_in_redis_across_instances() {
    let _one = serial();
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // 10/s, burst 1, delays up to 2 s: ten requests at once over two instances are all
    // admitted, the k-th about k * 100 ms late (the slots are handed out by Redis, once).
    let l = Limit {
        rps: 10,
        burst: 1,
        extra: "on-limit \"delay\"\n        max-delay-ms 2000",
        workers: 2,
    };
    let (_backend, fleet) = fleet(&redis, "delay", 2, &l);
    let addrs = addrs(&fleet);
    let threads: Vec<_> = (0..10)
        .map(|i| {
            let addr = addrs[i % 2];
            std::thread::spawn(move || hit(addr))
        })
        .collect();
    let mut answers: Vec<(u16, Duration)> = threads
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .collect();
    answers.sort_by_key(|a| a.1);
    eprintln!(
        "delay mode: answers after {:?}",
        answers.iter().map(|a| a.1).collect::<Vec<_>>()
    );
    assert!(answers.iter().all(|a| a.0 == 200), "{answers:?}");
    let last = answers[9].1;
    assert!(
        last >= Duration::from_millis(850) && last <= Duration::from_millis(1600),
        "ten slots at 10/s end about 0.9 s later: {answers:?}"
    );
    // Spread out, not all at the end: the fifth answer came near 0.4 s.
    assert!(
        answers[4].1 >= Duration::from_millis(300) && answers[4].1 <= Duration::from_millis(900),
        "{answers:?}"
    );
}

#[test]
fn a_limit_survives_a_rolling_upgrade() {
    let _one = serial();
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // 1/s with a burst of 20: the burst spent before the upgrade stays spent after it (new
    // workers with their own buckets would admit 20 again).
    let l = Limit {
        rps: 1,
        burst: 20,
        extra: "",
        workers: 2,
    };
    let (_backend, fleet) = fleet(&redis, "upgrade", 1, &l);
    let z = &fleet[0];
    let spent = Instant::now();
    let before: Vec<u16> = (0..21).map(|_| hit(z.addr()).0).collect();
    assert_eq!(
        before.iter().filter(|&&s| s == 200).count(),
        20,
        "{before:?}"
    );
    assert_eq!(before[20], 429, "{before:?}");

    let mut files = TempFiles::default();
    let copy = files.add(binary_copy("redis-upgrade"));
    let old = running_workers(z);
    rolling_upgrade_to(z, &copy, &old, 2);
    let after: Vec<u16> = (0..20).map(|_| hit(z.addr()).0).collect();
    let admitted = after.iter().filter(|&&s| s == 200).count() as u64;
    // What one token a second gave back since the burst was spent, plus rounding.
    let regained = spent.elapsed().as_secs() + 1;
    eprintln!(
        "rolling upgrade: {admitted} of 20 admitted after it, {regained} tokens regained at most"
    );
    assert!(
        admitted <= regained && admitted < 20,
        "the new workers did not see the spent burst: {admitted} admitted, {after:?}"
    );
}
