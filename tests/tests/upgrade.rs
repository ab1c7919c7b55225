//! Zero-downtime binary upgrades end to end (issue 4): `zentinel-ctl upgrade --rolling` and
//! SIGUSR2 on real processes under real load, with a second copy of the binary at another
//! path, a broken binary, corrupt or future-version state files, and a read-only or full
//! state directory.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use zentinel_protocol::state::STATE_MAGIC;
use zentinel_tests::drain::SlowDownload;
use zentinel_tests::load::{Load, LoadConfig};
use zentinel_tests::*;

const DEADLINE: Duration = Duration::from_secs(10);
/// How long one `zentinel-ctl upgrade` may take (each test must stay under a minute).
const UPGRADE_DEADLINE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Status snapshots.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct WorkerSnap {
    pid: u32,
    generation: u64,
    binary: String,
    state: String,
    active: u64,
}

#[derive(Debug, Clone)]
struct Snap {
    master_pid: u32,
    generation: u64,
    binary: String,
    workers: Vec<WorkerSnap>,
    raw: Value,
}

impl Snap {
    fn of(v: Value) -> Snap {
        let m = &v["master"];
        let num = |x: &Value, k: &str| -> u64 {
            x[k].as_u64()
                .unwrap_or_else(|| panic!("`{k}` missing or not a number in {x}"))
        };
        let text = |x: &Value, k: &str| -> String {
            x[k].as_str()
                .unwrap_or_else(|| panic!("`{k}` missing or not a string in {x}"))
                .to_owned()
        };
        let workers = v["workers"]
            .as_array()
            .unwrap_or_else(|| panic!("`workers` is not an array: {v}"))
            .iter()
            .map(|w| WorkerSnap {
                pid: num(w, "pid") as u32,
                generation: num(w, "generation"),
                binary: text(w, "binary"),
                state: text(w, "state"),
                active: w["active_connections"].as_u64().unwrap_or(0),
            })
            .collect();
        Snap {
            master_pid: num(m, "pid") as u32,
            generation: num(m, "generation"),
            binary: text(m, "binary"),
            workers,
            raw: v,
        }
    }

    fn running(&self) -> Vec<&WorkerSnap> {
        self.workers
            .iter()
            .filter(|w| w.state == "running")
            .collect()
    }

    fn running_pids(&self) -> BTreeSet<u32> {
        self.running().iter().map(|w| w.pid).collect()
    }

    fn draining(&self) -> Vec<&WorkerSnap> {
        self.workers
            .iter()
            .filter(|w| w.state == "draining")
            .collect()
    }
}

fn snap(z: &Zentinel) -> Snap {
    Snap::of(z.status())
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// `/proc/<pid>/exe` of a live process, as a string (`... (deleted)` if replaced on disk).
fn exe_of(pid: u32) -> String {
    process_exe(pid)
        .map(|p| path_str(&p))
        .unwrap_or_else(|| format!("<pid {pid} gone>"))
}

/// `zentinel-ctl upgrade --rolling --binary BINARY EXTRA...`, within `UPGRADE_DEADLINE`.
fn ctl_upgrade(z: &Zentinel, binary: &Path, extra: &[&str]) -> CtlOutput {
    ctl_upgrade_at(&z.control_socket(), binary, extra)
}

fn ctl_upgrade_at(socket: &Path, binary: &Path, extra: &[&str]) -> CtlOutput {
    zentinel_tests::drain::upgrade_rolling(socket, binary, extra, UPGRADE_DEADLINE)
}

/// [`ctl_upgrade`] on its own thread, for tests that act while the upgrade runs.
fn ctl_upgrade_in_background(
    z: &Zentinel,
    binary: &Path,
    extra: &[&str],
) -> thread::JoinHandle<CtlOutput> {
    let socket = z.control_socket();
    let binary = binary.to_path_buf();
    let extra: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
    thread::spawn(move || {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        ctl_upgrade_at(&socket, &binary, &extra)
    })
}

/// `master: pid A -> pid B ready in N ms (generation G, binary PATH)`.
fn master_line(out: &CtlOutput) -> (u32, u32, u64, String) {
    let line = out
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("master: pid "))
        .unwrap_or_else(|| panic!("no `master: pid A -> pid B ...` line: {out}"));
    let parse = || -> Option<(u32, u32, u64, String)> {
        let rest = line.trim_start().strip_prefix("master: pid ")?;
        let (old, rest) = rest.split_once(" -> pid ")?;
        let (new, rest) = rest.split_once(" ready in ")?;
        let (_, rest) = rest.split_once("(generation ")?;
        let (generation, rest) = rest.split_once(", binary ")?;
        let binary = rest.trim_end().strip_suffix(')')?;
        Some((
            old.trim().parse().ok()?,
            new.trim().parse().ok()?,
            generation.trim().parse().ok()?,
            binary.to_owned(),
        ))
    };
    parse().unwrap_or_else(|| panic!("malformed master line {line:?}: {out}"))
}

/// Every `worker I/N: pid X -> pid Y ready in M ms, old draining (K connections)` line:
/// (I, N, X, Y).
fn worker_lines(out: &CtlOutput) -> Vec<(u32, u32, u32, u32)> {
    out.stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("worker "))
        .map(|line| {
            let parse = || -> Option<(u32, u32, u32, u32)> {
                let rest = line.trim_start().strip_prefix("worker ")?;
                let (i, rest) = rest.split_once('/')?;
                let (n, rest) = rest.split_once(": pid ")?;
                let (old, rest) = rest.split_once(" -> pid ")?;
                let (new, rest) = rest.split_once(" ready in ")?;
                if !rest.contains(" ms, old draining (") || !rest.contains("connection") {
                    return None;
                }
                Some((
                    i.parse().ok()?,
                    n.parse().ok()?,
                    old.parse().ok()?,
                    new.parse().ok()?,
                ))
            };
            parse().unwrap_or_else(|| panic!("malformed worker line {line:?}: {out}"))
        })
        .collect()
}

fn start_load(z: &Zentinel) -> Load {
    let mut cfg = LoadConfig::new(z.addr());
    cfg.keep_alive_clients = 3;
    cfg.one_shot_clients = 3;
    let load = Load::start(cfg);
    assert!(
        load.wait_for_more(50, DEADLINE),
        "the load got fewer than 50 good responses in {DEADLINE:?} ({} failed)",
        load.failed()
    );
    load
}

/// Asserts the result of one successful rolling upgrade from `before` to `binary`.
fn check_upgraded(
    z: &Zentinel,
    out: &CtlOutput,
    before: &Snap,
    binary: &Path,
    ever_seen_workers: &BTreeSet<u32>,
) -> Snap {
    assert!(
        out.success(),
        "upgrade --rolling to {}: {out}\n{}",
        binary.display(),
        z.log()
    );
    let want_binary = path_str(binary);
    let (old, new, generation, printed_binary) = master_line(out);
    assert_eq!(old, before.master_pid, "old master pid in {out}");
    assert_ne!(
        new, before.master_pid,
        "the master pid did not change: {out}"
    );
    assert_eq!(generation, before.generation + 1, "generation in {out}");
    assert_eq!(printed_binary, want_binary, "binary in {out}");
    let lines = worker_lines(out);
    let total = before.running().len() as u32;
    assert_eq!(
        lines.iter().map(|l| (l.0, l.1)).collect::<Vec<_>>(),
        (1..=total).map(|i| (i, total)).collect::<Vec<_>>(),
        "one `worker i/{total}` line per worker, in order: {out}"
    );
    let printed_old: BTreeSet<u32> = lines.iter().map(|l| l.2).collect();
    assert_eq!(
        printed_old,
        before.running_pids(),
        "the old pids printed are not the workers that ran: {out}"
    );

    let now = snap(z);
    assert_eq!(
        now.master_pid, new,
        "status master pid vs printed: {:?}",
        now.raw
    );
    assert_eq!(now.generation, before.generation + 1, "{:?}", now.raw);
    assert_eq!(
        now.binary, want_binary,
        "master binary in status: {:?}",
        now.raw
    );
    let running = now.running();
    assert_eq!(
        running.len(),
        before.running().len(),
        "running workers after the upgrade: {:?}",
        now.raw
    );
    let printed_new: BTreeSet<u32> = lines.iter().map(|l| l.3).collect();
    assert_eq!(
        now.running_pids(),
        printed_new,
        "status vs printed new pids: {out}"
    );
    for w in &running {
        assert!(
            !ever_seen_workers.contains(&w.pid),
            "worker pid {} is not new: {:?}",
            w.pid,
            now.raw
        );
        assert_eq!(w.generation, now.generation, "{:?}", now.raw);
        assert_eq!(w.binary, want_binary, "{:?}", now.raw);
        assert!(is_alive(w.pid), "worker {} in status is not running", w.pid);
        // The kernel's view, not only the master's claim.
        assert_eq!(
            exe_of(w.pid),
            canonical(binary),
            "worker {} executable",
            w.pid
        );
    }
    assert_eq!(exe_of(new), canonical(binary), "new master executable");
    now
}

fn canonical(p: &Path) -> String {
    path_str(&fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()))
}

// ---------------------------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------------------------

#[test]
fn rolling_upgrade_under_load_three_times() {
    let be = Backend::start("up");
    let mut z = Zentinel::start(&configs::proxy_draining(2, free_port(), &be, 10));
    let mut files = TempFiles::default();
    let copies = [
        files.add(binary_copy("upgrade-a")),
        files.add(binary_copy("upgrade-b")),
    ];
    let load = start_load(&z);

    let mut before = snap(&z);
    assert_eq!(before.master_pid, z.pid);
    assert_eq!(before.running().len(), 2, "{:?}", before.raw);
    let mut old_workers: BTreeSet<u32> = before.running_pids();
    let mut old_masters = BTreeSet::from([z.pid]);
    for round in 0..3 {
        let binary = &copies[round % 2];
        let out = ctl_upgrade(&z, binary, &[]);
        let now = check_upgraded(&z, &out, &before, binary, &old_workers);
        if round == 0 {
            assert!(
                z.master_exited_after_upgrade(DEADLINE),
                "the original master did not exit 0 after handing over: {:?}\n{}",
                z.original_exit_status(),
                z.log()
            );
        }
        assert!(
            !old_masters.contains(&now.master_pid),
            "round {round}: master pid {} was used before",
            now.master_pid
        );
        assert_all_exit(
            &BTreeSet::from([before.master_pid]),
            DEADLINE,
            &format!("round {round}: the previous master"),
            &z,
        );
        old_masters.insert(now.master_pid);
        old_workers.extend(now.running_pids());
        assert!(
            load.wait_for_more(30, DEADLINE),
            "round {round}: the load made no progress after the upgrade ({} failed)\n{}",
            load.failed(),
            z.log()
        );
        before = now;
    }
    // Every worker of the first three generations drains and exits; only the last two run.
    let finals = before.running_pids();
    let retired: BTreeSet<u32> = old_workers.difference(&finals).copied().collect();
    assert_eq!(
        retired.len(),
        6,
        "three generations of two workers: {retired:?}"
    );
    assert_all_exit(&retired, Duration::from_secs(15), "drained old workers", &z);
    assert_eq!(
        z.worker_pids().into_iter().collect::<BTreeSet<_>>(),
        finals,
        "processes left in the group besides the last generation"
    );
    let report = load.stop();
    eprintln!("load: {report}");
    report.assert_clean(200, "load across three rolling upgrades");
}

/// Opens a WebSocket-style tunnel through the proxy to the backend's echo, proven by a round
/// trip.
fn open_ws_tunnel(z: &Zentinel) -> HttpClient {
    let mut c = z.client();
    c.upgrade_to_websocket();
    c.send(b"before the upgrade");
    assert_eq!(c.read_raw(18), b"before the upgrade");
    c
}

#[test]
fn long_download_and_tunnel_survive_upgrade() {
    const SIZE: u64 = 100 * 1024 * 1024;
    let be = Backend::start("long");
    let z = Zentinel::start(&configs::proxy_draining(2, free_port(), &be, 30));
    let mut files = TempFiles::default();
    let copy = files.add(binary_copy("long"));
    let before = snap(&z);

    let dl = SlowDownload::start(z.addr(), SIZE, 25 * 1024 * 1024, SIZE - 8 * 1024 * 1024);
    assert!(
        wait_until(DEADLINE, || dl.progress() >= 4 * 1024 * 1024),
        "the download did not start ({} bytes)",
        dl.progress()
    );
    let mut tunnel = open_ws_tunnel(&z);

    let out = ctl_upgrade(&z, &copy, &["--drain-timeout", "40s"]);
    let after = check_upgraded(&z, &out, &before, &copy, &before.running_pids());
    // The old workers hold the download and the tunnel: draining, not gone.
    let draining: BTreeSet<u32> = after.draining().iter().map(|w| w.pid).collect();
    let busy: u64 = after.draining().iter().map(|w| w.active).sum();
    assert!(
        !draining.is_empty() && draining.is_subset(&before.running_pids()) && busy >= 2,
        "status must show old workers draining with the download and the tunnel \
         (>= 2 connections): {:?}",
        after.raw
    );

    // The tunnel still echoes, big and small, then ends cleanly on our half-close.
    tunnel.send(b"after the upgrade");
    assert_eq!(tunnel.read_raw(17), b"after the upgrade");
    let data = pattern(1_000_000);
    let echoed = tunnel.echo_round(data.clone());
    assert!(
        echoed == data,
        "the tunnel echoed {} bytes, not the 1 MB sent",
        echoed.len()
    );

    dl.release.store(true, Ordering::SeqCst);
    let (len, sum, header_sum) = dl
        .handle
        .join()
        .expect("download thread panicked")
        .unwrap_or_else(|e| panic!("the download failed across the upgrade: {e}\n{}", z.log()));
    assert_eq!(len, SIZE);
    let expected = checksum_hex(pattern_checksum(SIZE));
    assert_eq!(checksum_hex(sum), expected, "download body checksum");
    assert_eq!(header_sum, expected, "X-Body-Checksum");

    // Nothing holds the old workers any more: they exit long before the 40 s drain timeout.
    assert_all_exit(&before.running_pids(), DEADLINE, "drained old workers", &z);
}

#[test]
fn drain_timeout_is_enforced() {
    let be = Backend::start("drain");
    let z = Zentinel::start(&configs::proxy_draining(2, free_port(), &be, 30));
    let mut files = TempFiles::default();
    let copy = files.add(binary_copy("drain"));
    let before = snap(&z);
    let mut tunnel = open_ws_tunnel(&z);

    let started = Instant::now();
    let upgrade = ctl_upgrade_in_background(&z, &copy, &["--drain-timeout", "1s"]);
    let closed = tunnel.server_closed_within(Duration::from_secs(20));
    let closed_after = started.elapsed();
    let out = upgrade.join().expect("upgrade thread");
    check_upgraded(&z, &out, &before, &copy, &before.running_pids());
    assert!(
        closed,
        "the tunnel was still open {closed_after:?} after an upgrade with --drain-timeout 1s\n{}",
        z.log()
    );
    assert!(
        closed_after >= Duration::from_millis(900),
        "the tunnel was closed after {closed_after:?}, before the 1 s drain timeout could pass"
    );
    assert!(
        closed_after <= Duration::from_secs(10),
        "the tunnel was closed only after {closed_after:?}"
    );
    assert_all_exit(
        &before.running_pids(),
        Duration::from_secs(5),
        "old workers after their 1 s drain timeout",
        &z,
    );
}

#[test]
fn broken_binary_rolls_back() {
    let be = Backend::start("broken");
    let z = Zentinel::start(&configs::proxy_draining(2, free_port(), &be, 10));
    let mut files = TempFiles::default();
    let script = files.add(temp_path("broken-zentinel.sh"));
    install_script(&script, "#!/bin/sh\nexit 1\n");
    let load = start_load(&z);
    let before = snap(&z);

    let out = ctl_upgrade(&z, &script, &["--ready-timeout", "5s", "--no-preflight"]);
    assert!(
        !out.success() && out.code.is_some(),
        "upgrading to a binary that exits at once must fail: {out}"
    );
    let said = out.said();
    assert!(
        said.contains(&path_str(&script)),
        "the failure must name the binary that failed: {out}"
    );

    let after = snap(&z);
    assert_eq!(after.master_pid, before.master_pid, "{:?}", after.raw);
    assert_eq!(after.master_pid, z.pid);
    assert_eq!(after.generation, before.generation, "{:?}", after.raw);
    assert_eq!(after.binary, before.binary, "{:?}", after.raw);
    assert_eq!(
        after.running_pids(),
        before.running_pids(),
        "{:?}",
        after.raw
    );
    for w in after.running() {
        assert_eq!(w.binary, before.binary, "{:?}", after.raw);
        assert_eq!(w.generation, before.generation, "{:?}", after.raw);
    }
    assert_eq!(
        z.master_pids(),
        vec![z.pid],
        "a master besides the original is left"
    );
    assert!(
        load.wait_for_more(30, DEADLINE),
        "the load made no progress after the failed upgrade"
    );
    let report = load.stop();
    eprintln!("load: {report}");
    report.assert_clean(100, "load across a failed upgrade");

    // The failed attempt left nothing stuck: a real upgrade still works afterwards.
    let copy = files.add(binary_copy("after-broken"));
    let out = ctl_upgrade(&z, &copy, &[]);
    check_upgraded(&z, &out, &before, &copy, &before.running_pids());
}

/// A state file header: magic, format version, payload length, payload checksum (FNV-1a 64).
fn state_file(version: u32, payload: &[u8], claimed_len: u64) -> Vec<u8> {
    let mut v = STATE_MAGIC.to_vec();
    v.extend_from_slice(&version.to_le_bytes());
    v.extend_from_slice(&claimed_len.to_le_bytes());
    v.extend_from_slice(&checksum(payload).to_le_bytes());
    v.extend_from_slice(payload);
    v
}

#[test]
fn corrupt_or_future_state_is_refused() {
    let be = Backend::start("state");
    let z = Zentinel::start(&configs::proxy_draining(1, free_port(), &be, 10));
    let before = snap(&z);
    let mut files = TempFiles::default();
    let payload = pattern(300);
    let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        (
            "garbage",
            b"this is not a zentinel state file at all, just text\n".to_vec(),
            vec!["magic"],
        ),
        ("empty", Vec::new(), vec![]),
        (
            "truncated",
            state_file(1, &payload[..100], 300),
            vec!["corrupt"],
        ),
        (
            "bad-checksum",
            {
                let mut v = state_file(1, &payload, 300);
                let last = v.len() - 1;
                v[last] ^= 0xff;
                v
            },
            vec!["corrupt"],
        ),
        (
            "future-version",
            state_file(99, &payload, 300),
            vec!["99", "newer"],
        ),
    ];
    for (label, bytes, words) in cases {
        let file = files.add(temp_path(&format!("{label}.state")));
        fs::write(&file, &bytes).unwrap();
        let (ready_read, ready_write) = nix::unistd::pipe().expect("pipe");
        let mut cmd = Command::new(zentinel_bin());
        cmd.arg("--upgrade-from")
            .arg(&file)
            .arg("--upgrade-ready-fd")
            .arg(ready_write.as_raw_fd().to_string())
            .env("XDG_RUNTIME_DIR", &z.runtime_dir);
        let out = run_with_deadline(cmd, DEADLINE);
        drop(ready_write);
        assert!(
            matches!(out.code, Some(c) if c != 0),
            "{label}: the new master must refuse the state file and exit non-zero: {out}"
        );
        let err = out.stderr.to_lowercase();
        assert!(
            err.contains(&path_str(&file).to_lowercase()),
            "{label}: the error must name the state file: {out}"
        );
        for w in words {
            assert!(err.contains(w), "{label}: the error must say `{w}`: {out}");
        }
        // It never confirmed readiness. Non-blocking: another test's child may have inherited
        // the write end, so EOF is not guaranteed, but no byte may be there.
        nix::fcntl::fcntl(
            &ready_read,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .unwrap();
        let mut byte = [0u8; 16];
        let n = nix::unistd::read(&ready_read, &mut byte).unwrap_or(0);
        assert_eq!(n, 0, "{label}: readiness was confirmed on the pipe: {out}");

        // The running master is unharmed: same processes, still serving, socket still its.
        let now = snap(&z);
        assert_eq!(now.master_pid, before.master_pid, "{label}: {:?}", now.raw);
        assert_eq!(now.running_pids(), before.running_pids(), "{label}");
        let r = z.client().get("/bytes/1000", "state.test");
        r.assert_pattern_body(1000);
    }
    assert!(is_alive(z.pid));
}

#[test]
fn sigusr2_starts_a_rolling_upgrade() {
    let be = Backend::start("usr2");
    let mut files = TempFiles::default();
    let copy = files.add(binary_copy("usr2"));
    let mut z =
        Zentinel::start_with_binary(&configs::proxy_draining(2, free_port(), &be, 10), &copy);
    let load = start_load(&z);
    let before = snap(&z);
    assert_eq!(before.binary, path_str(&copy), "{:?}", before.raw);
    assert_eq!(exe_of(z.pid), canonical(&copy));

    // A new build lands at the same path (renamed over it, like a package manager does).
    install_binary(&zentinel_bin(), &copy);
    assert!(
        exe_of(z.pid).ends_with("(deleted)"),
        "the test did not replace the on-disk binary: {}",
        exe_of(z.pid)
    );
    z.signal(nix::sys::signal::Signal::SIGUSR2);

    let mut last = None;
    let done = wait_until(Duration::from_secs(30), || {
        let Ok(v) = z.try_status() else {
            return false;
        };
        let s = Snap::of(v);
        let ok = s.master_pid != before.master_pid
            && s.generation == before.generation + 1
            && s.running().len() == 2
            && s.running()
                .iter()
                .all(|w| !before.running_pids().contains(&w.pid) && w.generation == s.generation);
        last = Some(s);
        ok
    });
    assert!(
        done,
        "SIGUSR2 did not lead to a new master and two new workers within 30 s; last status: \
         {:?}\n{}",
        last.map(|s| s.raw),
        z.log()
    );
    let now = snap(&z);
    assert_eq!(now.binary, path_str(&copy), "{:?}", now.raw);
    // The new processes run the NEW file (the old one is deleted, its inode only open).
    assert_eq!(exe_of(now.master_pid), canonical(&copy), "new master");
    for w in now.running() {
        assert_eq!(exe_of(w.pid), canonical(&copy), "worker {}", w.pid);
        assert_eq!(w.binary, path_str(&copy), "{:?}", now.raw);
    }
    assert!(
        z.master_exited_after_upgrade(DEADLINE),
        "the original master did not exit 0: {:?}",
        z.original_exit_status()
    );
    assert_all_exit(
        &before.running_pids(),
        Duration::from_secs(15),
        "old workers",
        &z,
    );
    assert!(load.wait_for_more(30, DEADLINE));
    let report = load.stop();
    eprintln!("load: {report}");
    report.assert_clean(100, "load across a SIGUSR2 upgrade");
}

#[test]
fn load_client_counts_failures_by_kind() {
    // The load client itself: against a closed port every connect is refused and counted.
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut cfg = LoadConfig::new(addr);
    cfg.keep_alive_clients = 1;
    cfg.one_shot_clients = 1;
    let load = Load::start(cfg);
    assert!(wait_until(DEADLINE, || load.failed() >= 4));
    let report = load.stop();
    assert_eq!(report.ok, 0);
    assert!(report.counts[&zentinel_tests::load::FailureKind::ConnectRefused] >= 4);
    assert_eq!(
        report.failed(),
        report.counts[&zentinel_tests::load::FailureKind::ConnectRefused],
        "{report}"
    );

    // And against a real backend (no proxy): all good, none failed.
    let be = Backend::start("direct");
    let load = Load::start(LoadConfig::new(be.addr));
    assert!(
        load.wait_for_more(100, DEADLINE),
        "{} failed",
        load.failed()
    );
    load.stop()
        .assert_clean(100, "load straight to the backend");

    // Through the proxy with no upgrade: the baseline the upgrade tests compare against.
    let z = Zentinel::start(&configs::proxy_draining(2, free_port(), &be, 10));
    let load = start_load(&z);
    assert!(
        load.wait_for_more(300, DEADLINE),
        "{} failed",
        load.failed()
    );
    let report = load.stop();
    eprintln!("baseline load through the proxy: {report}");
    report.assert_clean(300, "load through the proxy, no upgrade");
}

#[test]
fn a_second_upgrade_is_refused_while_one_runs() {
    let be = Backend::start("twice");
    let z = Zentinel::start(&configs::proxy_draining(1, free_port(), &be, 10));
    let mut files = TempFiles::default();
    // A "new binary" that takes 3 s to fail: the first upgrade is provably still pending
    // while the second request arrives.
    let slow = files.add(temp_path("slow-broken-zentinel.sh"));
    install_script(&slow, "#!/bin/sh\nsleep 3\nexit 1\n");
    let copy = files.add(binary_copy("twice"));
    let before = snap(&z);

    let first = ctl_upgrade_in_background(&z, &slow, &["--ready-timeout", "10s", "--no-preflight"]);
    // The first request is in: the master forked the script.
    assert!(
        wait_until(DEADLINE, || z.group_pids().iter().any(
            |&p| process_argv(p).is_some_and(|a| a.iter().any(|x| x.contains("slow-broken")))
        )),
        "the first upgrade did not start the new binary\n{}",
        z.log()
    );
    let second = ctl_upgrade(&z, &copy, &[]);
    assert!(
        !second.success() && second.code.is_some(),
        "a second upgrade while one runs must be refused: {second}"
    );
    let said = second.said().to_lowercase();
    assert!(
        said.contains("in progress") || said.contains("already"),
        "the refusal must say an upgrade is already in progress: {second}"
    );
    let first = first.join().expect("first upgrade thread");
    assert!(
        !first.success(),
        "the slow broken binary must fail: {first}"
    );
    assert_nothing_replaced(&z, &before);
    // Once the first is over, upgrading works again.
    let out = ctl_upgrade(&z, &copy, &[]);
    check_upgraded(&z, &out, &before, &copy, &before.running_pids());
}

/// After a failed upgrade: the same master and the same running workers as `before`.
fn assert_nothing_replaced(z: &Zentinel, before: &Snap) {
    let after = snap(z);
    assert_eq!(after.master_pid, before.master_pid, "{:?}", after.raw);
    assert_eq!(
        after.running_pids(),
        before.running_pids(),
        "{:?}",
        after.raw
    );
}

/// A small tmpfs mounted for one test (the upgrade state file goes beside the control socket,
/// so a master whose runtime dir is on it writes its state there); unmounted on drop.
struct ScratchFs {
    dir: std::path::PathBuf,
}

impl ScratchFs {
    fn mount(size: &str) -> ScratchFs {
        let dir = temp_path("scratch-fs");
        fs::create_dir_all(&dir).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test needs to mount a tmpfs (root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ScratchFs { dir }
    }

    fn remount(&self, mode: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(&self.dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "remount {mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for ScratchFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = fs::remove_dir(&self.dir);
    }
}

#[test]
fn unwritable_or_full_state_dir_fails_the_upgrade_cleanly() {
    let be = Backend::start("state-dir");
    let scratch = ScratchFs::mount("1m");
    let z = Zentinel::start_in(
        &configs::proxy_draining(2, free_port(), &be, 5),
        &scratch.dir,
    );
    let mut files = TempFiles::default();
    let copy = files.add(binary_copy("state-dir"));
    let load = start_load(&z);
    let before = snap(&z);

    // Read-only: the state file cannot be created.
    scratch.remount("ro");
    let out = ctl_upgrade(&z, &copy, &[]);
    assert!(!out.success(), "upgrade with a read-only state dir: {out}");
    let said = out.said();
    assert!(
        said.contains("cannot write the upgrade state") && said.contains("Read-only"),
        "the error must say what failed and why: {out}"
    );
    scratch.remount("rw");

    // Full: the state file cannot be written whole.
    let filler = scratch.dir.join("filler");
    let mut f = fs::File::create(&filler).unwrap();
    let block = vec![0u8; 64 * 1024];
    while f.write_all(&block).is_ok() {}
    drop(f);
    let out = ctl_upgrade(&z, &copy, &[]);
    assert!(!out.success(), "upgrade with a full state dir: {out}");
    let said = out.said();
    assert!(
        said.contains("cannot write the upgrade state") && said.contains("space"),
        "the error must say the disk is full: {out}"
    );
    let leftovers: Vec<_> = fs::read_dir(&scratch.dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "filler" && !n.ends_with(".sock"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "partial state files left: {leftovers:?}"
    );

    // Nothing changed, nothing was lost, and once there is room the upgrade works.
    assert_nothing_replaced(&z, &before);
    fs::remove_file(&filler).unwrap();
    let out = ctl_upgrade(&z, &copy, &[]);
    check_upgraded(&z, &out, &before, &copy, &before.running_pids());
    let report = load.stop();
    report.assert_clean(100, "load across failed and successful upgrades");
}

/// A backend, Zentinel (2 workers, 5 s drain) in front of it, and a copy of the binary to
/// upgrade to. With `fault`, `ZENTINEL_FAULT_INJECTION` arms it in processes running from that
/// copy only. Bind the parts to named locals: they stop the processes and delete the copy when
/// dropped (Zentinel first).
fn upgrade_rig(label: &str, fault: Option<&str>) -> (Backend, TempFiles, PathBuf, Zentinel) {
    if fault.is_some() {
        require_fault_injection();
    }
    let be = Backend::start(label);
    let mut files = TempFiles::default();
    let copy = files.add(binary_copy(label));
    let spec = fault.map(|fault| format!("{fault}@{}", path_str(&copy)));
    let env: Vec<(&str, &str)> = spec
        .as_deref()
        .map(|spec| ("ZENTINEL_FAULT_INJECTION", spec))
        .into_iter()
        .collect();
    let z = Zentinel::start_with_env(&configs::proxy_draining(2, free_port(), &be, 5), &env);
    (be, files, copy, z)
}

/// Waits until `z` runs two workers, all from `binary` (status and `/proc/PID/exe`).
fn wait_workers_on(z: &Zentinel, binary: &str) -> Snap {
    let mut now = snap(z);
    let settled = wait_until(DEADLINE, || {
        now = snap(z);
        now.running().len() == 2
            && now
                .running()
                .iter()
                .all(|w| exe_of(w.pid) == binary && w.binary == binary)
    });
    assert!(settled, "workers not all on {binary}: {:?}", now.raw);
    now
}

#[test]
fn new_master_dying_before_it_is_ready_leaves_the_old_one_serving() {
    let (_be, _files, copy, z) = upgrade_rig("master-dies", Some("master-exit-before-ready"));
    let load = start_load(&z);
    let before = snap(&z);

    let out = ctl_upgrade(&z, &copy, &["--ready-timeout", "5s"]);
    assert!(
        !out.success(),
        "the new master died, the upgrade must fail: {out}"
    );
    let said = out.said();
    assert!(
        said.contains("exit status 70") || said.contains("exited"),
        "the error must say how the new master ended: {out}"
    );
    assert_nothing_replaced(&z, &before);
    assert_eq!(z.master_pids(), vec![z.pid], "a second master is left");
    assert!(
        load.wait_for_more(50, DEADLINE),
        "no progress after the failed upgrade"
    );
    // The old master still owns its workers: it can still replace them.
    let out = z.ctl(&["worker", "restart", "0"]);
    assert!(
        out.success(),
        "worker restart after the failed upgrade: {out}"
    );
    load.stop()
        .assert_clean(100, "load across a new master dying before ready");
}

#[test]
fn new_worker_dying_after_it_is_ready_rolls_the_upgrade_back() {
    let (_be, _files, copy, z) = upgrade_rig("worker-dies", Some("worker-abort-after-ready"));
    let original = path_str(&z.binary);
    let load = start_load(&z);
    let before = snap(&z);

    let out = ctl_upgrade(&z, &copy, &["--ready-timeout", "5s"]);
    assert!(
        !out.success(),
        "new workers crash, the upgrade must fail: {out}"
    );
    let said = out.said();
    assert!(
        said.contains("died after it was ready") && said.contains("rolled back"),
        "the error must say what happened: {out}"
    );
    // Every worker serves from the original binary again (the new master stays: it is
    // healthy, only its workers were not).
    let now = wait_workers_on(&z, &original);
    assert_ne!(now.master_pid, before.master_pid);
    assert!(
        load.wait_for_more(50, DEADLINE),
        "no progress after the rollback"
    );
    let report = load.stop();
    // The crashed worker's own connections may be cut (at most the 6 load clients); nothing
    // else fails.
    assert!(report.failed() <= 6, "{report}");
    assert!(report.ok >= 100, "{report}");
}

// ---------------------------------------------------------------------------------------------
// Canary gating.
// ---------------------------------------------------------------------------------------------

/// The live comparison lines a canary prints: `canary: 1s/3s: new ..., old ...`.
fn canary_live_lines(out: &CtlOutput) -> Vec<&str> {
    out.stdout
        .lines()
        .filter(|l| l.starts_with("canary: ") && l.contains(": new ") && l.contains(", old "))
        .collect()
}

#[test]
fn canary_passes_a_healthy_build_and_the_upgrade_completes_without_a_failed_request() {
    let (_be, _files, copy, z) = upgrade_rig("canary-ok", None);
    let load = start_load(&z);
    let before = snap(&z);
    let seen = z.seen_workers();

    let out = ctl_upgrade(&z, &copy, &["--canary", "3s"]);
    check_upgraded(&z, &out, &before, &copy, &seen);
    let live = canary_live_lines(&out);
    assert!(
        live.len() >= 2,
        "the canary must report the live comparison each second: {out}"
    );
    let passed = out
        .stdout
        .lines()
        .find(|l| l.starts_with("canary passed after "))
        .unwrap_or_else(|| panic!("no `canary passed` line: {out}"));
    assert!(
        passed.contains("0.00% errors") && passed.contains("old workers "),
        "the verdict must give both rates: {out}"
    );
    // The canary held the second worker back: its line comes after the verdict.
    let order: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("worker ") || l.starts_with("canary passed"))
        .collect();
    assert!(
        order.len() == 3
            && order[0].starts_with("worker 1/2")
            && order[2].starts_with("worker 2/2"),
        "worker 1, then the canary verdict, then worker 2: {out}"
    );
    assert!(
        load.wait_for_more(50, DEADLINE),
        "no progress after the upgrade"
    );
    load.stop()
        .assert_clean(100, "load across a canary-gated rolling upgrade");
}

#[test]
fn canary_rolls_back_a_build_that_answers_500() {
    let (_be, _files, copy, z) = upgrade_rig("canary-500", Some("respond-500"));
    let original = path_str(&z.binary);
    let load = start_load(&z);
    let before = snap(&z);

    let out = ctl_upgrade(&z, &copy, &["--canary", "3s", "--max-error-rate", "5"]);
    assert!(
        !out.success(),
        "a canary answering 500 must fail the upgrade: {out}\n{}",
        z.log()
    );
    let said = out.said();
    assert!(
        said.contains("canary failed")
            && said.contains("100.00% errors")
            && said.contains("more than the 5.00 allowed")
            && said.contains("rolled back"),
        "the error must give the figures that triggered the rollback: {out}"
    );
    assert!(
        !canary_live_lines(&out).is_empty(),
        "the live comparison must be shown: {out}"
    );
    assert!(
        out.stdout.contains("rollback: worker "),
        "the rollback must be reported: {out}"
    );
    assert!(
        !out.stdout.contains("worker 2/2"),
        "no other worker may be replaced after a failed canary: {out}"
    );
    // Every worker serves from the original binary again.
    let now = wait_workers_on(&z, &original);
    assert_ne!(now.master_pid, before.master_pid);
    // The 500s stop with the rollback: from now on nothing fails.
    let failed_during_canary = load.failed();
    assert!(
        failed_during_canary > 0,
        "the load never met the canary's 500s; the test proves nothing"
    );
    assert!(
        load.wait_for_more(100, DEADLINE),
        "no progress after the rollback"
    );
    assert_eq!(
        load.failed(),
        failed_during_canary,
        "requests still fail after the rollback"
    );
    let report = load.stop();
    assert!(report.ok >= 100, "{report}");

    // A worker that crashes now is restarted from the original binary, not from the build the
    // canary just rejected (the master itself still runs that build).
    let victim = now.running()[0].pid;
    send_signal(victim, nix::sys::signal::Signal::SIGKILL);
    let mut after = snap(&z);
    let restarted = wait_until(DEADLINE, || {
        after = snap(&z);
        after.running().len() == 2 && !after.running_pids().contains(&victim)
    });
    assert!(restarted, "worker {victim} not restarted: {:?}", after.raw);
    for w in after.running() {
        assert_eq!(
            exe_of(w.pid),
            original,
            "restarted worker {}: {:?}",
            w.pid,
            after.raw
        );
        assert_eq!(w.binary, original, "{:?}", after.raw);
    }
}

/// Starts a canary-gated upgrade to `copy` with a `window`, sends `signal` to the canary once the
/// master logged the window's start, and checks what any failed canary must give: the command
/// fails, no second worker is replaced, and every worker runs `z`'s binary again. Returns the
/// command's output and the canary's pid.
fn upset_canary(
    z: &Zentinel,
    copy: &Path,
    window: &str,
    signal: nix::sys::signal::Signal,
) -> (CtlOutput, u32) {
    let upgrade = ctl_upgrade_in_background(z, copy, &["--canary", window]);
    assert!(
        wait_until(UPGRADE_DEADLINE, || z
            .log_text()
            .contains(&format!("on the new binary for {window}"))),
        "the canary window never started:\n{}",
        z.log()
    );
    let canary = snap(z)
        .running()
        .iter()
        .find(|w| w.binary == path_str(copy))
        .map(|w| w.pid)
        .expect("a running worker on the new binary");
    send_signal(canary, signal);
    let out = upgrade.join().expect("upgrade thread");
    assert!(
        !out.success(),
        "the canary got {signal}, the upgrade must fail: {out}"
    );
    assert!(
        out.said().contains("rolled back"),
        "the error must say the canary was rolled back: {out}"
    );
    assert!(
        !out.stdout.contains("worker 2/2"),
        "no other worker may be replaced: {out}"
    );
    wait_workers_on(z, &path_str(&z.binary));
    (out, canary)
}

#[test]
fn canary_that_dies_during_its_window_is_rolled_back() {
    let (_be, _files, copy, z) = upgrade_rig("canary-dies", None);
    let load = start_load(&z);
    let (out, canary) = upset_canary(&z, &copy, "20s", nix::sys::signal::Signal::SIGKILL);
    assert!(
        out.said().contains(&format!(
            "new worker pid {canary} died after it was ready during the canary"
        )),
        "the error must say the canary died: {out}"
    );
    assert!(
        load.wait_for_more(50, DEADLINE),
        "no progress after the rollback"
    );
    let report = load.stop();
    // The killed canary's own connections may be cut (at most the 6 load clients).
    assert!(report.failed() <= 6, "{report}");
}

#[test]
fn canary_that_stops_answering_the_master_is_rolled_back() {
    let (_be, _files, copy, z) = upgrade_rig("canary-silent", None);
    let load = start_load(&z);
    // Frozen: alive, its channel open, but it answers nothing (no figures is no verdict).
    let (out, canary) = upset_canary(&z, &copy, "3s", nix::sys::signal::Signal::SIGSTOP);
    assert!(
        out.said()
            .contains(&format!("(pid {canary}) did not answer")),
        "the error must say the canary went silent: {out}"
    );
    // The frozen canary is killed at its drain deadline like any stuck retired worker.
    assert!(
        wait_until(Duration::from_secs(15), || !is_alive(canary)),
        "the frozen canary {canary} was never killed"
    );
    assert!(
        load.wait_for_more(50, DEADLINE),
        "no progress after the rollback"
    );
    let report = load.stop();
    // Requests on the frozen canary's connections fail (at most the 6 load clients').
    assert!(report.ok >= 100, "{report}");
}
