//! Faults around the proxy: a worker or the master SIGKILLed under load. What may be lost is
//! bounded and counted, everything else keeps being served.

use std::fs;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use serde_json::Value;
use zentinel_tests::load::{Load, LoadConfig};
use zentinel_tests::*;

fn field(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .or_else(|| v["counters"][key].as_u64())
        .unwrap_or_else(|| panic!("`{key}` missing in {v}"))
}

fn worker_with_pid(status: &Value, pid: u32) -> Option<Value> {
    workers_of(status)
        .into_iter()
        .find(|w| field(w, "pid") == u64::from(pid))
}

/// Seconds since midnight UTC of a log line's timestamp (`2026-11-27T04:20:17.784300Z ...`).
fn log_time_of_day(line: &str) -> Option<f64> {
    let time = line
        .split_whitespace()
        .next()?
        .split('T')
        .nth(1)?
        .strip_suffix('Z')?;
    let mut parts = time.split(':');
    let hours: f64 = parts.next()?.parse().ok()?;
    let minutes: f64 = parts.next()?.parse().ok()?;
    let seconds: f64 = parts.next()?.parse().ok()?;
    Some(hours * 3600.0 + minutes * 60.0 + seconds)
}

fn time_of_day(t: SystemTime) -> f64 {
    let since_epoch = t.duration_since(UNIX_EPOCH).expect("clock after 1970");
    (since_epoch.as_secs() % 86_400) as f64 + f64::from(since_epoch.subsec_nanos()) / 1e9
}

/// Waits for the master to have a worker child other than `known`, and returns it with the
/// time from `killed_at` to the master's "worker spawned" log line for it. Both are read off
/// the wall clock, so the delay is the master's reaction, not how late this test's polling
/// thread got scheduled on a busy machine.
fn wait_for_new_worker(
    z: &Zentinel,
    known: &[u32],
    killed_at: SystemTime,
    timeout: Duration,
) -> Option<(u32, Duration)> {
    let master = z.pid;
    let start = Instant::now();
    let pid = loop {
        if start.elapsed() >= timeout {
            return None;
        }
        let children = fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
            .unwrap_or_default();
        if let Some(pid) = children
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
            .find(|p| !known.contains(p))
        {
            break pid;
        }
        thread::sleep(Duration::from_millis(1));
    };
    let needle = format!(" pid={pid} ");
    let mut spawned_at = None;
    wait_until(timeout, || {
        spawned_at = z
            .log_text()
            .lines()
            .find(|l| l.contains("worker spawned") && l.contains(&needle))
            .and_then(log_time_of_day);
        spawned_at.is_some()
    });
    let delay = (spawned_at? - time_of_day(killed_at)).rem_euclid(86_400.0);
    // Log timestamps have microseconds: a spawn logged "before" the kill is clock rounding.
    let delay = if delay > 43_200.0 { 0.0 } else { delay };
    Some((pid, Duration::from_secs_f64(delay)))
}

#[test]
fn worker_killed_under_load_loses_at_most_its_own_connections() {
    let backend = Backend::start("b");
    let z = Zentinel::start(&configs::proxy(2, free_port(), &backend, "", ""));
    let workers = z.worker_pids();
    assert_eq!(workers.len(), 2);

    // Keep-alive clients only: each holds one connection on one worker for the whole run, so
    // the victim's active connections just before the kill bound what can be lost.
    let mut load_config = LoadConfig::new(z.addr());
    load_config.keep_alive_clients = 8;
    load_config.one_shot_clients = 0;
    load_config.download_sizes = vec![100, 20_000];
    load_config.upload_sizes = vec![3_000];
    let load = Load::start(load_config);
    assert!(
        load.wait_for_more(300, Duration::from_secs(20)),
        "load did not get going:\n{}",
        z.log()
    );
    let victim = workers[0];
    let status = z.status();
    let victim_status = worker_with_pid(&status, victim)
        .unwrap_or_else(|| panic!("worker {victim} not in status {status}"));
    let victim_connections = field(&victim_status, "active_connections");

    let killed_at = SystemTime::now();
    send_signal(victim, Signal::SIGKILL);
    let (replacement, took) = wait_for_new_worker(&z, &workers, killed_at, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no replacement for worker {victim}\n{}", z.log()));
    assert!(
        took <= Duration::from_millis(100),
        "the master started a replacement {took:?} after the kill (limit 100 ms)\n{}",
        z.log()
    );
    assert!(
        wait_until(Duration::from_secs(10), || z.worker_pids().len() == 2
            && z.worker_pids().contains(&replacement)),
        "replacement {replacement} never became a worker: {:?}\n{}",
        z.worker_pids(),
        z.log()
    );
    assert!(
        load.wait_for_more(300, Duration::from_secs(20)),
        "load did not continue after the kill:\n{}",
        z.log()
    );
    let report = load.stop();
    assert!(
        report.failed() <= victim_connections,
        "{} requests failed, but only {victim_connections} connections were on the killed \
         worker:\n{report}",
        report.failed()
    );
    for failure in &report.failures {
        assert!(
            matches!(
                failure.kind,
                load::FailureKind::Reset
                    | load::FailureKind::ClosedBeforeResponse
                    | load::FailureKind::Truncated
            ),
            "a failure other than a cut connection: {failure}"
        );
    }

    // The crash is visible to operators.
    let status = z.status();
    let restarted = workers_of(&status)
        .into_iter()
        .find(|w| field(w, "pid") == u64::from(replacement))
        .unwrap_or_else(|| panic!("replacement not in status {status}"));
    assert_eq!(field(&restarted, "restarts"), 1, "status: {status}");
    let ctl = z.ctl(&["status"]);
    assert!(
        ctl.stdout.contains("restarts"),
        "`zentinel-ctl status` does not show restarts:\n{}",
        ctl.stdout
    );
}

#[test]
fn crash_loop_backs_off_exponentially_and_shows_in_status() {
    let backend = Backend::start("b");
    let z = Zentinel::start(&configs::proxy(1, free_port(), &backend, "", ""));
    let mut known = z.worker_pids();
    let mut delays = Vec::new();
    for _ in 0..4 {
        let victim = *known.last().expect("a worker");
        let killed_at = SystemTime::now();
        send_signal(victim, Signal::SIGKILL);
        let (next, took) = wait_for_new_worker(&z, &known, killed_at, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no restart after killing {victim}\n{}", z.log()));
        delays.push(took);
        known.push(next);
        // Kill it only once it is serving, so each round is a crash of a ready worker.
        assert!(
            wait_until(Duration::from_secs(10), || z.worker_pids() == vec![next]),
            "restarted worker {next} not ready\n{}",
            z.log()
        );
    }
    // Restart delays: at once, then 100 ms, 200 ms, 400 ms (backoff doubles, capped).
    assert!(delays[0] < Duration::from_millis(100), "delays {delays:?}");
    for (i, min) in [(1, 100), (2, 200), (3, 400)] {
        assert!(
            delays[i] >= Duration::from_millis(min),
            "restart {i} came after {:?}, backoff expects >= {min} ms: {delays:?}",
            delays[i]
        );
    }
    let status = z.status();
    let worker = &workers_of(&status)[0];
    assert_eq!(field(worker, "restarts"), 4, "status: {status}");
    assert!(
        field(worker, "next_restart_delay_ms") >= 800,
        "status does not show the next backoff: {status}"
    );
    assert_eq!(
        HttpClient::connect(z.addr()).get("/bytes/10", "t").status,
        200
    );
}

#[test]
fn killed_master_leaves_workers_serving_then_exiting_and_restart_works_at_once() {
    let backend = Backend::start("b");
    let port = free_port();
    let config = configs::proxy_draining(2, port, &backend, 3);
    let dir = new_runtime_dir();
    let z = Zentinel::start_in(&config, &dir);
    let workers = z.worker_pids();
    let mut held = HttpClient::connect(z.addr());
    assert_eq!(held.get("/bytes/10", "t").status, 200);

    send_signal(z.pid, Signal::SIGKILL);
    assert!(
        wait_until(Duration::from_secs(5), || !is_alive(z.pid)),
        "master survived SIGKILL"
    );

    // A client that was connected before the master died is still served, and told to go.
    let r = held.get("/bytes/1000", "t");
    r.assert_pattern_body(1000);
    assert!(
        r.connection_has("close"),
        "expected Connection: close: {r:?}"
    );

    // A new master on the same config and control socket starts at once.
    let started = Instant::now();
    let again = Zentinel::start_in(&config, &dir);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "restart took {:?}\n{}",
        started.elapsed(),
        again.log()
    );
    let r = HttpClient::connect(again.addr()).get("/bytes/500", "t");
    r.assert_pattern_body(500);

    // The orphaned workers exit by their drain deadline: none is left running.
    assert_all_exit(&workers, Duration::from_secs(8), "orphaned workers", &again);
    drop(again);
    drop(z);
    let _ = fs::remove_dir_all(dir);
}
