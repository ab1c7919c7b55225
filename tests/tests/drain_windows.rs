//! Issue 16, long-lived connections: separate drain windows for an upgrade and for a stop, and
//! `max-draining-generations`, on real processes.
//!
//! One worker, so that every connection of a test lands on the worker whose drain is watched.
//! A download is held open by its client (it stops reading), so its worker stays in flight for
//! as long as the test wants, then is let go and must arrive whole, or cut where a window ends.

use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use zentinel_tests::drain::{close_times, draining_of, upgrade_rolling, SlowDownload};
use zentinel_tests::*;

const DEADLINE: Duration = Duration::from_secs(10);
const UPGRADE_DEADLINE: Duration = Duration::from_secs(30);
/// What the master adds to a drain deadline before it kills (`DRAIN_KILL_GRACE`).
const KILL_GRACE: Duration = Duration::from_secs(2);
/// The held download: big enough that the worker is still writing when its client stops
/// reading (socket buffers hold a few MiB at most).
const SIZE: u64 = 32 * 1024 * 1024;
const RATE: u64 = 64 * 1024 * 1024;
const HOLD_AT: u64 = 2 * 1024 * 1024;

/// A download started on `z` and held after `HOLD_AT` bytes.
fn held_download(z: &Zentinel) -> SlowDownload {
    let dl = SlowDownload::start(z.addr(), SIZE, RATE, HOLD_AT);
    assert!(
        wait_until(DEADLINE, || dl.progress() >= HOLD_AT),
        "the download did not start ({} bytes)\n{}",
        dl.progress(),
        z.log()
    );
    dl
}

fn assert_whole(result: Result<(u64, u64, String), String>, what: &str, z: &Zentinel) {
    let (len, sum, header_sum) =
        result.unwrap_or_else(|e| panic!("{what}: the download failed: {e}\n{}", z.log()));
    assert_eq!(len, SIZE, "{what}: length");
    let expected = checksum_hex(pattern_checksum(SIZE));
    assert_eq!(checksum_hex(sum), expected, "{what}: body checksum");
    assert_eq!(header_sum, expected, "{what}: X-Body-Checksum");
}

fn running_pid(z: &Zentinel) -> u32 {
    let status = z.status();
    let running: Vec<u32> = workers_of(&status)
        .iter()
        .filter(|w| w["state"] == "running")
        .filter_map(|w| w["pid"].as_u64().map(|p| p as u32))
        .collect();
    assert_eq!(running.len(), 1, "one running worker: {status}");
    running[0]
}

/// The `draining` entry of `pid`, panicking with the status when there is none.
fn draining_entry(status: &Value, pid: u32) -> Value {
    draining_of(status)
        .into_iter()
        .find(|w| w["pid"].as_u64() == Some(u64::from(pid)))
        .unwrap_or_else(|| panic!("worker {pid} is not in `draining`: {status}"))
}

fn remaining_ms(entry: &Value) -> u64 {
    entry["drain_remaining_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("no drain_remaining_ms in {entry}"))
}

#[test]
fn an_upgrade_drains_for_the_upgrade_window_and_a_stop_for_the_stop_window() {
    const STOP_WINDOW: Duration = Duration::from_secs(2);
    let be = Backend::start("windows");
    let config = configs::Proxy::new(1, free_port(), &be)
        .system("graceful-shutdown-timeout-secs 2")
        .system("upgrade-drain-timeout-secs 30")
        .build();
    let mut z = Zentinel::start(&config);
    let mut files = TempFiles::default();
    let copy = files.add(binary_copy("windows"));

    // The upgrade: the worker holding a download drains for 30 s, not 2.
    let holder = running_pid(&z);
    let download = held_download(&z);
    let out = upgrade_rolling(&z.control_socket(), &copy, &[], UPGRADE_DEADLINE);
    assert!(out.success(), "upgrade: {out}\n{}", z.log());
    let status = z.status();
    let entry = draining_entry(&status, holder);
    assert_eq!(entry["generation"], 1, "{entry}");
    assert!(entry["connections"].as_u64() >= Some(1), "{entry}");
    let left = remaining_ms(&entry);
    assert!(
        left > 20_000 && left <= 30_000,
        "the upgrade window is 30 s, the stop window 2 s: {left} ms left in {entry}"
    );
    // Past the stop window and the kill grace after it, by a margin: still there.
    assert!(
        !wait_until(STOP_WINDOW + KILL_GRACE + Duration::from_secs(2), || {
            !is_alive(holder)
        }),
        "the worker holding the download was gone before the upgrade window\n{}",
        z.log()
    );
    assert_whole(download.finish(), "across the upgrade", &z);
    assert_all_exit(&[holder], DEADLINE, "the drained worker", &z);

    // The stop: the new worker's held download is cut when the 2 s stop window ends.
    let worker = running_pid(&z);
    let download = held_download(&z);
    let socket = z.control_socket();
    let stopped_at = Instant::now();
    let stop = thread::spawn(move || ctl(&socket, &["stop"]));
    assert!(
        wait_until(STOP_WINDOW + KILL_GRACE + DEADLINE, || !is_alive(worker)),
        "worker {worker} outlived the stop window\n{}",
        z.log()
    );
    let gone_after = stopped_at.elapsed();
    assert!(
        gone_after >= STOP_WINDOW - Duration::from_millis(300),
        "the worker left {gone_after:?} after the stop, before its 2 s window could end"
    );
    assert!(
        gone_after <= STOP_WINDOW + KILL_GRACE + Duration::from_secs(2),
        "the worker left {gone_after:?} after the stop: not the 2 s stop window"
    );
    let cut = download.finish();
    assert!(
        cut.as_ref().is_err_and(|e| e.contains("EOF")),
        "the download held past the stop window must be cut there: {cut:?}"
    );
    let out = stop.join().expect("stop thread");
    assert!(out.success(), "stop: {out}");
    assert!(
        out.stdout.contains("drain timeout 2s"),
        "the stop must say its window: {out}"
    );
    assert!(
        z.wait_exit(DEADLINE).is_some_and(|s| s.success()),
        "master exit\n{}",
        z.log()
    );
}

#[test]
fn past_max_draining_generations_the_oldest_closes_its_idle_connections_and_keeps_its_download() {
    const IDLE: usize = 4;
    let be = Backend::start("generations");
    let config = configs::Proxy::new(1, free_port(), &be)
        .system("upgrade-drain-timeout-secs 30")
        .system("max-draining-generations 1")
        .build();
    let z = Zentinel::start(&config);
    let mut files = TempFiles::default();
    let copies = [
        files.add(binary_copy("generations-a")),
        files.add(binary_copy("generations-b")),
    ];

    let first = running_pid(&z);
    let download = held_download(&z);
    let mut idle: Vec<HttpClient> = (0..IDLE).map(|_| z.client()).collect();
    for c in &mut idle {
        assert_eq!(c.get("/", "idle").status, 200);
    }

    // First upgrade: generation 1 drains, within the limit. Its idle connections stay open
    // (the close spread keeps them until near its 30 s deadline): status counts them.
    let out = upgrade_rolling(&z.control_socket(), &copies[0], &[], UPGRADE_DEADLINE);
    assert!(out.success(), "upgrade 1: {out}\n{}", z.log());
    let status = z.status();
    assert_eq!(status["max_draining_generations"], 1, "{status}");
    let entry = draining_entry(&status, first);
    assert_eq!(entry["generation"], 1, "{entry}");
    assert_eq!(entry["finishing"], false, "{entry}");
    assert!(
        entry["connections"].as_u64() >= Some(1 + IDLE as u64),
        "the download and {IDLE} idle connections: {entry}"
    );

    // Second upgrade: generations 1 and 2 drain, one too many. Generation 1 is asked to
    // finish now: its idle connections close at once, the download goes on.
    let second = Instant::now();
    let out = upgrade_rolling(&z.control_socket(), &copies[1], &[], UPGRADE_DEADLINE);
    assert!(out.success(), "upgrade 2: {out}\n{}", z.log());
    let done = Instant::now();
    // Sent while the upgrade runs; the spread alone would close them ~26 s after the first.
    for (i, at) in close_times(idle, DEADLINE).into_iter().enumerate() {
        let at = at.unwrap_or_else(|| {
            panic!(
                "idle connection {i} of the oldest generation still open\n{}",
                z.log()
            )
        });
        assert!(
            at <= done + Duration::from_secs(2),
            "idle connection {i} closed {:?} after the second upgrade began, {:?} after it \
             ended",
            at - second,
            at.saturating_duration_since(done)
        );
    }
    assert!(is_alive(first), "the worker holding the download is gone");
    let status = z.status();
    let entry = draining_entry(&status, first);
    assert_eq!(entry["finishing"], true, "{entry}");
    assert_eq!(entry["generation"], 1, "{entry}");
    let left = remaining_ms(&entry);
    assert!(
        left > 10_000 && left < 30_000,
        "the download keeps its deadline: {left} ms left in {entry}"
    );
    assert!(
        z.log().contains("asking the oldest to finish now"),
        "{}",
        z.log()
    );

    assert_whole(download.finish(), "on the finishing generation", &z);
    assert_all_exit(&[first], DEADLINE, "the first generation's worker", &z);
}
