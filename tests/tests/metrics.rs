//! The master's Prometheus endpoint end to end (issue 7, "Metrics and logs"): a real master,
//! its workers and a backend; scrapes with a real HTTP client over TCP; counters that move
//! with traffic, per worker and in total; a killed worker, a reload and a rolling binary
//! upgrade, with the endpoint scraped all through the upgrade.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use zentinel_tests::configs::Proxy;
use zentinel_tests::*;

const DEADLINE: Duration = Duration::from_secs(15);

/// A parsed exposition: `name{labels}` -> value, plus the HELP/TYPE lines seen.
#[derive(Debug, Default)]
struct Scrape {
    samples: BTreeMap<String, f64>,
    types: BTreeMap<String, String>,
    helps: BTreeMap<String, String>,
    text: String,
}

impl Scrape {
    fn get(&self, key: &str) -> f64 {
        *self
            .samples
            .get(key)
            .unwrap_or_else(|| panic!("no sample `{key}` in:\n{}", self.text))
    }

    fn try_get(&self, key: &str) -> Option<f64> {
        self.samples.get(key).copied()
    }

    /// Samples of `family` (with labels), e.g. every `zentinel_worker_requests_total{...}`.
    fn series(&self, family: &str) -> Vec<(&str, f64)> {
        let prefix = format!("{family}{{");
        self.samples
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| (k.as_str(), *v))
            .collect()
    }
}

/// One request with a plain client, read to the server's close: the answer's head and body.
fn http_get(addr: SocketAddr, request: &str) -> std::io::Result<(Response, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    // The server closes after each answer (Connection: close): read to EOF.
    stream.read_to_end(&mut raw)?;
    split_answer(&raw)
}

/// A whole answer read to EOF, as its head and its body.
fn split_answer(raw: &[u8]) -> std::io::Result<(Response, String)> {
    let (head, len) = parse_response_head(raw)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("no complete head in {:?}", String::from_utf8_lossy(raw)),
            )
        })?;
    Ok((head, String::from_utf8_lossy(&raw[len..]).into_owned()))
}

fn try_scrape(addr: SocketAddr, path: &str) -> std::io::Result<Scrape> {
    let (head, body) = http_get(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: metrics\r\nUser-Agent: test\r\n\r\n"),
    )?;
    if head.status != 200 {
        return Err(std::io::Error::other(format!(
            "status {}: {head:?}\n{body}",
            head.status
        )));
    }
    assert!(
        head.header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{head:?}"
    );
    assert!(head.connection_has("close"), "{head:?}");
    let mut scrape = Scrape {
        text: body.clone(),
        ..Default::default()
    };
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line");
            scrape.types.insert(name.to_owned(), kind.to_owned());
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP line");
            scrape.helps.insert(name.to_owned(), help.to_owned());
        } else if !line.is_empty() {
            let (key, value) = line.rsplit_once(' ').expect("sample line");
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}"));
            scrape.samples.insert(key.to_owned(), value);
        }
    }
    Ok(scrape)
}

fn scrape(addr: SocketAddr) -> Scrape {
    try_scrape(addr, "/metrics").unwrap_or_else(|e| panic!("scraping {addr}: {e}"))
}

/// Scrape until `cond` holds (counters are polled from the workers).
fn scrape_until(addr: SocketAddr, what: &str, cond: impl Fn(&Scrape) -> bool) -> Scrape {
    let mut last = None;
    let ok = wait_until(DEADLINE, || {
        let s = scrape(addr);
        let done = cond(&s);
        last = Some(s);
        done
    });
    let last = last.expect("scraped at least once");
    assert!(ok, "{what} never held; last scrape:\n{}", last.text);
    last
}

fn config(workers: u32, port: u16, metrics_port: u16, backend: &Backend) -> String {
    Proxy::new(workers, port, backend)
        .top_level(&format!(
            "observability {{\n    metrics {{\n        enabled #true\n        address \"127.0.0.1:{metrics_port}\"\n        path \"/metrics\"\n    }}\n}}"
        ))
        .build()
}

fn metrics_addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// `n` requests, each on its own connection (so both workers get some), to `path`.
fn requests(z: &Zentinel, n: usize, path: &str, expect: u16) {
    for _ in 0..n {
        let mut c = z.client();
        let r = c.get(path, "app");
        assert_eq!(r.status, expect, "{path}: {}", r.body_str());
    }
}

#[test]
fn scrape_counts_traffic_per_worker_and_in_total() {
    let backend = Backend::start("m1");
    let port = free_port();
    let metrics_port = free_port();
    let z = Zentinel::start(&config(2, port, metrics_port, &backend));
    let addr = metrics_addr(metrics_port);

    // Before traffic: every family announced with HELP and TYPE, counters at 0.
    let s = scrape(addr);
    for family in [
        "zentinel_requests_total",
        "zentinel_responses_total",
        "zentinel_upstream_errors_total",
        "zentinel_client_errors_total",
        "zentinel_accept_errors_total",
        "zentinel_active_connections",
        "zentinel_sent_bytes_total",
        "zentinel_received_bytes_total",
        "zentinel_worker_requests_total",
        "zentinel_worker_responses_total",
        "zentinel_worker_active_connections",
        "zentinel_upgrades_total",
        "zentinel_upgrades_failed_total",
        "zentinel_last_upgrade_duration_seconds",
        "zentinel_drain_duration_seconds",
        "zentinel_worker_restarts_total",
        "zentinel_reloads_total",
        "zentinel_reloads_failed_total",
    ] {
        assert!(
            s.types.contains_key(family),
            "no TYPE for {family}:\n{}",
            s.text
        );
        assert!(s.helps.contains_key(family), "no HELP for {family}");
    }
    assert_eq!(s.types["zentinel_requests_total"], "counter");
    assert_eq!(s.types["zentinel_active_connections"], "gauge");
    assert_eq!(s.types["zentinel_drain_duration_seconds"], "histogram");
    assert_eq!(s.get("zentinel_requests_total"), 0.0);
    assert_eq!(s.get("zentinel_upgrades_total"), 0.0);

    requests(&z, 20, "/ok", 200);
    requests(&z, 3, "/status/404", 404);
    requests(&z, 2, "/status/503", 503);

    let s = scrape_until(addr, "25 requests counted", |s| {
        s.get("zentinel_requests_total") >= 25.0
    });
    assert_eq!(s.get("zentinel_requests_total"), 25.0);
    assert_eq!(s.get("zentinel_responses_total{class=\"2xx\"}"), 20.0);
    assert_eq!(s.get("zentinel_responses_total{class=\"4xx\"}"), 3.0);
    assert_eq!(s.get("zentinel_responses_total{class=\"5xx\"}"), 2.0);
    assert!(s.get("zentinel_sent_bytes_total") > 0.0);
    assert!(s.get("zentinel_accepted_connections_total") >= 25.0);

    // Per worker: one series per live worker pid, labelled worker/pid/generation, summing up
    // to the total (nothing retired yet).
    let pids = z.worker_pids();
    assert_eq!(pids.len(), 2);
    let per_worker = s.series("zentinel_worker_requests_total");
    assert_eq!(per_worker.len(), 2, "{per_worker:?}");
    for pid in &pids {
        assert!(
            per_worker
                .iter()
                .any(|(k, _)| k.contains(&format!("pid=\"{pid}\""))
                    && k.contains("generation=\"1\"")),
            "no series for worker pid {pid}: {per_worker:?}"
        );
    }
    for id in ["0", "1"] {
        assert!(per_worker
            .iter()
            .any(|(k, _)| k.contains(&format!("worker=\"{id}\""))));
    }
    let sum: f64 = per_worker.iter().map(|(_, v)| v).sum();
    assert_eq!(sum, 25.0);
    let classes = s.series("zentinel_worker_responses_total");
    assert_eq!(classes.len(), 10, "2 workers x 5 classes: {classes:?}");

    // A worker killed: restarted, counted; its requests stay in the totals (monotonic), its
    // series goes and the new worker's starts at 0.
    let victim = pids[0];
    send_signal(victim, nix::sys::signal::Signal::SIGKILL);
    let s = scrape_until(
        addr,
        "the restart counted and a new worker reporting",
        |s| {
            s.get("zentinel_worker_restarts_total") == 1.0
                && s.series("zentinel_worker_requests_total").len() == 2
                && !s.text.contains(&format!("pid=\"{victim}\""))
        },
    );
    assert_eq!(s.get("zentinel_requests_total"), 25.0, "{}", s.text);
    assert_eq!(s.get("zentinel_responses_total{class=\"2xx\"}"), 20.0);
    requests(&z, 4, "/after", 200);
    scrape_until(addr, "29 requests in total after the restart", |s| {
        s.get("zentinel_requests_total") == 29.0
    });

    // Only the configured path; answers close the connection.
    let (head, _) = http_get(addr, "GET /other HTTP/1.1\r\nHost: m\r\n\r\n").expect("GET /other");
    assert_eq!(head.status, 404, "{head:?}");
    assert!(head.connection_has("close"), "{head:?}");
    let (head, _) = http_get(
        addr,
        "POST /metrics HTTP/1.1\r\nHost: m\r\nContent-Length: 0\r\n\r\n",
    )
    .expect("POST");
    assert_eq!(head.status, 405, "{head:?}");
    let (head, body) = http_get(addr, "HEAD /metrics HTTP/1.1\r\nHost: m\r\n\r\n").expect("HEAD");
    assert_eq!((head.status, body.as_str()), (200, ""));
    // A client that half-closes right after its request still gets the answer.
    let mut half = TcpStream::connect(addr).expect("connect");
    half.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    half.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    half.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = Vec::new();
    half.read_to_end(&mut answer).expect("read the answer");
    let (head, body) = split_answer(&answer).expect("the answer");
    assert_eq!((head.minor_version, head.status), (1, 200), "{head:?}");
    assert!(body.contains("zentinel_requests_total "), "{body:.200}");
    // An oversized head is refused, not buffered without bound.
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    match http_get(addr, &huge) {
        Ok((head, _)) => assert_eq!(head.status, 431),
        // The server may close while the rest is still being sent (a reset): also a refusal.
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
            "{e}"
        ),
    }
    // A client that sends nothing holds no slot for long: the master closes it.
    let mut idle = TcpStream::connect(addr).expect("connect");
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 16];
    let started = std::time::Instant::now();
    let n = idle.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "{:?}",
        started.elapsed()
    );
    // Still serving after all that.
    scrape(addr);
}

#[test]
fn endpoint_follows_reloads() {
    let backend = Backend::start("m2");
    let port = free_port();
    let first = free_port();
    let z = Zentinel::start(&config(1, port, first, &backend));
    scrape(metrics_addr(first));

    // New path on the same address.
    let path = z.config_path.clone().expect("config path");
    let moved = config(1, port, first, &backend).replace("path \"/metrics\"", "path \"/prom\"");
    std::fs::write(&path, &moved).unwrap();
    z.ctl(&["reload"]).assert_success("reload (path)");
    let s = try_scrape(metrics_addr(first), "/prom").expect("scrape /prom");
    assert_eq!(s.get("zentinel_reloads_total"), 1.0);
    assert_eq!(s.get("zentinel_reloads_failed_total"), 0.0);
    let (head, _) = http_get(metrics_addr(first), "GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(head.status, 404);

    // New address: the old one is closed, the new one answers.
    let second = free_port();
    std::fs::write(&path, config(1, port, second, &backend)).unwrap();
    z.ctl(&["reload"]).assert_success("reload (address)");
    let s = scrape(metrics_addr(second));
    assert_eq!(s.get("zentinel_reloads_total"), 2.0);
    assert!(
        TcpStream::connect_timeout(&metrics_addr(first), Duration::from_secs(1)).is_err(),
        "old metrics address still accepting"
    );

    // A broken configuration: refused and counted; the endpoint stays.
    std::fs::write(&path, "listeners {").unwrap();
    assert!(!z.ctl(&["reload"]).success());
    let s = scrape(metrics_addr(second));
    assert_eq!(s.get("zentinel_reloads_total"), 3.0);
    assert_eq!(s.get("zentinel_reloads_failed_total"), 1.0);

    // Metrics switched off by a reload.
    std::fs::write(&path, Proxy::new(1, port, &backend).build()).unwrap();
    z.ctl(&["reload"]).assert_success("reload (metrics off)");
    assert!(wait_until(DEADLINE, || TcpStream::connect_timeout(
        &metrics_addr(second),
        Duration::from_secs(1)
    )
    .is_err()));
}

#[test]
fn rolling_upgrade_keeps_the_endpoint_and_counts_the_upgrade() {
    let backend = Backend::start("m3");
    let port = free_port();
    let metrics_port = free_port();
    let addr = metrics_addr(metrics_port);
    let mut files = TempFiles(Vec::new());
    let copy = files.add(binary_copy("metrics-upgrade"));
    let z = Zentinel::start(&config(2, port, metrics_port, &backend));
    requests(&z, 10, "/before", 200);
    let before = scrape_until(addr, "10 requests counted", |s| {
        s.get("zentinel_requests_total") == 10.0
    });
    let old_master = z.current_master_pid();
    let old_workers = z.worker_pids();

    // Scrape continuously while the upgrade runs: every scrape must be answered.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let scraper = {
        let stop = Arc::clone(&stop);
        let failures = Arc::clone(&failures);
        thread::spawn(move || {
            let mut scrapes = 0u64;
            let mut last_total = 0.0;
            while !stop.load(Ordering::Relaxed) {
                match try_scrape(addr, "/metrics") {
                    Ok(s) => {
                        scrapes += 1;
                        let total = s.try_get("zentinel_requests_total").unwrap_or(-1.0);
                        if total < last_total {
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("requests_total went down: {last_total} -> {total}"));
                        }
                        last_total = total;
                    }
                    Err(e) => failures.lock().unwrap().push(e.to_string()),
                }
                thread::sleep(Duration::from_millis(10));
            }
            scrapes
        })
    };
    let out = ctl_within(
        &z.control_socket(),
        &[
            "upgrade",
            "--rolling",
            "--binary",
            &copy.display().to_string(),
        ],
        Duration::from_secs(60),
    );
    out.assert_success("rolling upgrade");
    let s = scrape_until(
        addr,
        "the upgrade counted with both old workers drained",
        |s| {
            s.get("zentinel_upgrades_total") == 1.0
                && s.get("zentinel_drain_duration_seconds_count") == 2.0
        },
    );
    stop.store(true, Ordering::Relaxed);
    let scrapes = scraper.join().expect("scraper thread");
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} of {scrapes} scrapes failed during the upgrade: {failures:#?}\n{}",
        failures.len(),
        z.log()
    );
    assert!(scrapes >= 10, "only {scrapes} scrapes during the upgrade");

    assert_ne!(z.current_master_pid(), old_master);
    assert_eq!(s.get("zentinel_upgrades_failed_total"), 0.0);
    let duration = s.get("zentinel_last_upgrade_duration_seconds");
    assert!(duration > 0.0 && duration < 60.0, "{duration}");
    assert_eq!(s.get("zentinel_master_generation"), 2.0);
    assert_eq!(
        s.get("zentinel_drain_duration_seconds_bucket{le=\"+Inf\"}"),
        2.0
    );
    // The old workers' requests stayed in the totals; their series are gone, the new ones
    // (generation 2) start from 0.
    assert_eq!(
        s.get("zentinel_requests_total"),
        before.get("zentinel_requests_total")
    );
    for pid in old_workers {
        assert!(!s.text.contains(&format!("pid=\"{pid}\"")), "{}", s.text);
    }
    let per_worker = s.series("zentinel_worker_requests_total");
    assert_eq!(per_worker.len(), 2, "{per_worker:?}");
    assert!(per_worker
        .iter()
        .all(|(k, v)| k.contains("generation=\"2\"") && *v == 0.0));
    requests(&z, 5, "/after", 200);
    scrape_until(addr, "15 requests after the upgrade", |s| {
        s.get("zentinel_requests_total") == 15.0
    });
}

#[test]
fn failed_upgrade_is_counted_and_the_old_master_serves_again() {
    let backend = Backend::start("m4");
    let port = free_port();
    let metrics_port = free_port();
    let addr = metrics_addr(metrics_port);
    let mut files = TempFiles(Vec::new());
    // A "new binary" that fails after a while: the old master has paused its endpoint for
    // the hand-over meanwhile.
    let script = files.add(temp_path("broken-metrics-zentinel.sh"));
    install_script(&script, "#!/bin/sh\nsleep 1\nexit 1\n");
    let z = Zentinel::start(&config(1, port, metrics_port, &backend));
    let socket = z.control_socket();
    let script_arg = script.display().to_string();
    let upgrade = thread::spawn(move || {
        ctl_within(
            &socket,
            &[
                "upgrade",
                "--binary",
                &script_arg,
                "--ready-timeout",
                "10s",
                "--no-preflight",
            ],
            Duration::from_secs(30),
        )
    });
    assert!(
        wait_until(DEADLINE, || z.group_pids().iter().any(|&p| {
            process_argv(p).is_some_and(|a| a.iter().any(|x| x.contains("broken-metrics")))
        })),
        "the upgrade did not start the script\n{}",
        z.log()
    );
    // Paused, not closed: a scrape now waits in the backlog and is answered after the
    // failure, when the old master accepts again.
    let s = try_scrape(addr, "/metrics").expect("scrape during the failed hand-over");
    assert!(s.try_get("zentinel_upgrades_total").is_some());
    let out = upgrade.join().expect("upgrade thread");
    assert!(
        !out.success(),
        "upgrading to a failing script must fail: {out}"
    );
    let s = scrape(addr);
    assert_eq!(s.get("zentinel_upgrades_total"), 1.0, "{}", s.text);
    assert_eq!(s.get("zentinel_upgrades_failed_total"), 1.0);
    assert_eq!(s.get("zentinel_master_generation"), 1.0);
    assert_eq!(s.get("zentinel_last_upgrade_duration_seconds"), 0.0);
}
