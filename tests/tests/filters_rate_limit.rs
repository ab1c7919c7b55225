//! `rate-limit` filters on real processes: two workers share one limit per key (the master's
//! shared segments, `docs/design/filters.md`), measured with a client sending three times its
//! limit over fresh connections; `on-limit` reject, delay and log-only; the limit holding
//! across a reload and a rolling upgrade; the counters on `/metrics`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use zentinel_tests::drain::upgrade_rolling;
use zentinel_tests::*;

/// The measured filter: 20 requests a second, 5 at once.
const MAX_RPS: u32 = 20;
const BURST: u32 = 5;
/// The slow filter of the reload and upgrade test: one a second, 30 at once.
const SLOW_BURST: usize = 30;
const DEADLINE: Duration = Duration::from_secs(20);
const UPGRADE_DEADLINE: Duration = Duration::from_secs(60);

fn config(port: u16, metrics_port: u16, slow_max_keys: u64) -> String {
    let route = |name: &str| {
        format!(
            "    route \"{name}\" {{\n        matches {{ path-prefix \"/{name}\"; }}\n        \
             service-type \"builtin\"\n        builtin-handler \"status\"\n        filters \"{name}\"\n    }}\n"
        )
    };
    format!(
        r#"system {{
    worker-processes 2
    graceful-shutdown-timeout-secs 5
}}
listeners {{
    listener "http" {{
        address "127.0.0.1:{port}"
        protocol "http"
        default-route "status"
    }}
}}
observability {{
    metrics {{
        enabled #true
        address "127.0.0.1:{metrics_port}"
        path "/metrics"
    }}
}}
routes {{
{reject}{delay}{log}{slow}    route "status" {{
        matches {{ path "/status"; }}
        service-type "builtin"
        builtin-handler "status"
    }}
}}
filters {{
    filter "reject" {{
        type "rate-limit"
        max-rps {MAX_RPS}
        burst {BURST}
        on-limit "reject"
        status-code 503
        limit-message "slow down"
    }}
    filter "delay" {{
        type "rate-limit"
        max-rps 10
        burst 1
        on-limit "delay"
        max-delay-ms 1000
    }}
    filter "log" {{
        type "rate-limit"
        max-rps 1
        burst 1
        on-limit "log-only"
    }}
    filter "slow" {{
        type "rate-limit"
        max-rps 1
        burst {SLOW_BURST}
        max-keys {slow_max_keys}
    }}
}}
"#,
        reject = route("reject"),
        delay = route("delay"),
        log = route("log"),
        slow = route("slow"),
    )
}

struct Proxy {
    z: Zentinel,
    port: u16,
    metrics: SocketAddr,
}

fn start() -> Proxy {
    let (port, metrics_port) = (free_port(), free_port());
    let z = Zentinel::start(&config(port, metrics_port, 1000));
    Proxy {
        z,
        port,
        metrics: SocketAddr::from(([127, 0, 0, 1], metrics_port)),
    }
}

/// One GET on a connection of its own (so the kernel may hand it to either worker).
fn get(addr: SocketAddr, path: &str) -> Response {
    HttpClient::connect(addr).get(path, "limits.test")
}

/// The `"pid"` of a `builtin-handler "status"` answer: which worker served it.
fn served_by(resp: &Response) -> u32 {
    let body: serde_json::Value = serde_json::from_slice(&resp.body)
        .unwrap_or_else(|e| panic!("status answer is not JSON ({e}): {}", resp.body_str()));
    body["pid"].as_u64().expect("a pid in the status answer") as u32
}

/// The value of `series` (the whole sample name with its labels) in a scrape of `/metrics`.
fn metric(addr: SocketAddr, series: &str) -> Option<u64> {
    let text = HttpClient::connect(addr).get("/metrics", "m").body_str();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn limited(p: &Proxy, filter: &str) -> Option<u64> {
    metric(
        p.metrics,
        &format!("zentinel_filter_rate_limited_total{{filter=\"{filter}\"}}"),
    )
}

/// The running workers' pids and the requests each served, from the master's status.
fn worker_requests(z: &Zentinel) -> BTreeMap<u32, u64> {
    workers_of(&z.status())
        .iter()
        .filter(|w| w["state"] == "running")
        .filter_map(|w| Some((w["pid"].as_u64()? as u32, w["requests_total"].as_u64()?)))
        .collect()
}

#[test]
fn a_client_at_three_times_its_limit_through_two_workers_gets_its_limit() {
    let p = start();
    let addr = p.z.addr();
    let before = worker_requests(&p.z);
    assert_eq!(before.len(), 2, "two workers: {before:?}");
    let rate = 3 * MAX_RPS;
    let period = Duration::from_secs(1) / rate;
    let sent = 4 * rate as usize;
    let mut admitted_by: BTreeMap<u32, u64> = BTreeMap::new();
    let mut refused = 0u64;
    let mut refusal = None;
    let start = Instant::now();
    let mut last = start;
    for i in 0..sent {
        // A fixed-rate schedule: request i leaves at start + i * period.
        let due = start + period * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        last = Instant::now();
        let resp = get(addr, "/reject");
        match resp.status {
            200 => *admitted_by.entry(served_by(&resp)).or_default() += 1,
            503 => {
                refused += 1;
                refusal.get_or_insert(resp);
            }
            other => panic!("request {i}: status {other}: {resp:?}"),
        }
    }
    let elapsed = last.duration_since(start).as_secs_f64();
    let admitted: u64 = admitted_by.values().sum();
    // GCRA admits the burst at once, then one request per 1/max-rps.
    let expected = f64::from(BURST) + f64::from(MAX_RPS) * elapsed;
    let admitted_rate = (admitted as f64 - f64::from(BURST)) / elapsed;
    eprintln!(
        "sent {sent} at {rate}/s over {elapsed:.2}s: admitted {admitted} (expected {expected:.1}), \
         {admitted_rate:.2}/s beyond the burst against max-rps {MAX_RPS}; per worker {admitted_by:?}"
    );
    assert!(
        (admitted as f64 - expected).abs() <= 0.1 * expected,
        "admitted {admitted}, expected {expected:.1} within 10%\n{}",
        p.z.log()
    );
    assert!(
        (admitted_rate - f64::from(MAX_RPS)).abs() <= 0.1 * f64::from(MAX_RPS),
        "admitted {admitted_rate:.2}/s beyond the burst, max-rps {MAX_RPS}"
    );
    assert_eq!(admitted + refused, sent as u64);
    // Both workers served the client (their request counts moved), and both admitted some.
    let after = worker_requests(&p.z);
    let served: Vec<u64> = before
        .iter()
        .map(|(pid, n)| after.get(pid).copied().unwrap_or(0) - n)
        .collect();
    eprintln!("requests per worker: {served:?}");
    assert!(served.iter().all(|&n| n > 0), "per worker {served:?}");
    assert_eq!(admitted_by.len(), 2, "admitted per worker {admitted_by:?}");
    // The refusal: the configured status and message, the rate fields, an exact Retry-After.
    let r = refusal.expect("some requests were refused");
    assert_eq!(r.body_str(), "slow down");
    assert_eq!(r.header("retry-after"), Some("1"), "{r:?}");
    assert_eq!(r.header("x-ratelimit-limit"), Some("20"), "{r:?}");
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"), "{r:?}");
    assert!(r.header("x-ratelimit-reset").is_some(), "{r:?}");
    // Every refusal by either worker is counted once, in the segment the master reads.
    assert_eq!(limited(&p, "reject"), Some(refused));
}

#[test]
fn delay_holds_requests_until_their_turn_and_log_only_lets_all_through() {
    let p = start();
    let addr = p.z.addr();
    // 15 at once against 10/s, one at once, at most 1 s of delay: the first 11 (waits 0,
    // 100 ms .. 1000 ms) are served, each about 100 ms after the one before; the rest refused.
    let started = Instant::now();
    let clients: Vec<_> = (0..15)
        .map(|_| thread::spawn(move || (get(addr, "/delay"), started.elapsed())))
        .collect();
    let mut answers: Vec<(Response, Duration)> =
        clients.into_iter().map(|c| c.join().unwrap()).collect();
    answers.sort_by_key(|(_, t)| *t);
    let served: Vec<Duration> = answers
        .iter()
        .filter(|(r, _)| r.status == 200)
        .map(|(_, t)| *t)
        .collect();
    let refused = answers.iter().filter(|(r, _)| r.status == 429).count();
    eprintln!("delay: served after {served:?}, {refused} refused");
    assert_eq!(served.len() + refused, 15, "{answers:?}");
    assert!((11..=12).contains(&served.len()), "served {served:?}");
    // Held, not refused: the last served waited about a second, none much longer.
    let slowest = served.last().copied().unwrap_or_default();
    assert!(
        slowest >= Duration::from_millis(900) && slowest < Duration::from_millis(1600),
        "{served:?}"
    );
    assert!(served[0] < Duration::from_millis(500), "{served:?}");
    let delayed = metric(
        p.metrics,
        "zentinel_filter_rate_limit_delayed_total{filter=\"delay\"}",
    )
    .expect("the delayed counter");
    assert!(
        delayed + 2 >= served.len() as u64 && delayed <= served.len() as u64,
        "delayed {delayed}, served {}",
        served.len()
    );
    assert_eq!(limited(&p, "delay"), Some(refused as u64));

    // log-only: 10 quick requests against 1/s, every one served, the excess counted.
    for i in 0..10 {
        let resp = get(addr, "/log");
        assert_eq!(resp.status, 200, "request {i}: {resp:?}");
    }
    let logged = metric(
        p.metrics,
        "zentinel_filter_rate_limit_logged_total{filter=\"log\"}",
    )
    .expect("the log-only counter");
    assert!((8..=9).contains(&logged), "logged {logged}");
    assert_eq!(limited(&p, "log"), Some(0));
}

/// Sends `SLOW_BURST` requests to `/slow` at once and returns how many were served.
fn slow_round(addr: SocketAddr) -> usize {
    (0..SLOW_BURST)
        .filter(|_| {
            let resp = get(addr, "/slow");
            assert!(matches!(resp.status, 200 | 429), "{resp:?}");
            resp.status == 200
        })
        .count()
}

/// Requests `/slow` lets through `since` the key was last emptied: one a second, plus one.
fn refilled(since: Instant) -> usize {
    since.elapsed().as_secs() as usize + 1
}

#[test]
fn the_limit_holds_across_a_reload_and_a_rolling_upgrade() {
    let p = start();
    let addr = p.z.addr();
    let mut refused_total = 0u64;
    assert_eq!(slow_round(addr), SLOW_BURST, "a fresh key has its burst");
    assert_eq!(get(addr, "/slow").status, 429, "emptied");
    refused_total += 1;
    let mut emptied = Instant::now();

    // A reload keeping the filter (same name and max-keys) keeps its table.
    p.z.ctl(&["reload"]).assert_success("reload");
    let allowed = refilled(emptied);
    let served = slow_round(addr);
    eprintln!("after the reload: {served} served, {allowed} refilled");
    assert!(served <= allowed && served < SLOW_BURST, "served {served}");
    refused_total += (SLOW_BURST - served) as u64;
    emptied = Instant::now();
    assert_eq!(limited(&p, "slow"), Some(refused_total));

    // A rolling upgrade hands the table to the new master and its workers.
    let old: BTreeSet<u32> = worker_requests(&p.z).keys().copied().collect();
    let binary = binary_copy("filters-upgrade");
    let out = upgrade_rolling(&p.z.control_socket(), &binary, &[], UPGRADE_DEADLINE);
    assert!(out.success(), "upgrade --rolling: {out}\n{}", p.z.log());
    let mut now = BTreeSet::new();
    let replaced = wait_until(DEADLINE, || {
        now = worker_requests(&p.z).keys().copied().collect();
        now.len() == 2 && now.is_disjoint(&old)
    });
    assert!(replaced, "workers {now:?}, old {old:?}\n{}", p.z.log());
    let allowed = refilled(emptied);
    assert!(
        allowed < SLOW_BURST,
        "the upgrade took {allowed} s: too long to tell"
    );
    let served = slow_round(addr);
    eprintln!("after the rolling upgrade: {served} served, {allowed} refilled");
    assert!(served <= allowed, "served {served}, refilled {allowed}");
    refused_total += (SLOW_BURST - served) as u64;
    // The counters went over too: every refusal, before and after, in one series.
    assert_eq!(limited(&p, "slow"), Some(refused_total), "{}", p.z.log());
    assert!(
        p.z.log_text()
            .contains("filter segment taken over from the previous master"),
        "{}",
        p.z.log()
    );

    // A reload changing max-keys gives the filter a fresh table (and fresh counters).
    let path = p.z.config_path.clone().expect("a config file");
    let text = config(p.port, p.metrics.port(), 5000);
    std::fs::write(&path, text).expect("rewrite the config");
    p.z.ctl(&["reload"])
        .assert_success("reload with another max-keys");
    assert_eq!(
        slow_round(addr),
        SLOW_BURST,
        "a fresh table has the burst again"
    );
    assert_eq!(limited(&p, "slow"), Some(0));
}
