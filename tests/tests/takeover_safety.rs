//! A new master that fails before it confirms readiness never hurts the running one (issue
//! 14): whatever it adopted stays the previous master's until it confirms, so failing — by an
//! error returned through the normal path, by a panic, or for lack of file descriptors — leaves
//! the old master serving on the same control socket file with every worker, and no request
//! under load fails. A new master that fails after asking the workers for their status leaves
//! answers the old master must not take for its own. Also: a state file naming one fd twice is
//! refused before any fd is taken, and the reverse failure, the old master dying before the new
//! one confirmed, is survived by the new one.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use zentinel_protocol::control::WorkerState;
use zentinel_protocol::messages::WorkerCounters;
use zentinel_protocol::state::{
    write_state_file, ConfigSource, ConfigSourceFile, ListenerFd, MasterMetrics, MasterState,
    PendingUpgrade, WorkerRecord,
};
use zentinel_tests::load::{Load, LoadConfig};
use zentinel_tests::*;

const DEADLINE: Duration = Duration::from_secs(10);
const UPGRADE_DEADLINE: Duration = Duration::from_secs(30);

/// Keep-alive and connection-per-request load, already flowing.
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

/// The control socket file's (device, inode): the old master's own file must survive.
fn socket_identity(path: &Path) -> (u64, u64) {
    let meta = std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("control socket {}: {e}", path.display()));
    (meta.dev(), meta.ino())
}

/// Running workers in `status --json`: pid -> requests_total.
fn running_workers(status: &serde_json::Value) -> BTreeMap<u32, u64> {
    workers_of(status)
        .iter()
        .filter(|w| w["state"] == "running")
        .map(|w| {
            let pid = w["pid"].as_u64().unwrap_or_else(|| panic!("pid in {w}"));
            let requests = w["requests_total"]
                .as_u64()
                .unwrap_or_else(|| panic!("requests_total in {w}"));
            (pid as u32, requests)
        })
        .collect()
}

/// What the old master looked like before the upgrade attempt.
struct Before {
    socket: std::path::PathBuf,
    identity: (u64, u64),
    workers: BTreeMap<u32, u64>,
}

fn before(z: &Zentinel) -> Before {
    let socket = z.control_socket();
    let status = z.status();
    assert_eq!(status["master"]["pid"].as_u64(), Some(u64::from(z.pid)));
    let workers = running_workers(&status);
    assert_eq!(workers.len(), 2, "{status}");
    Before {
        identity: socket_identity(&socket),
        socket,
        workers,
    }
}

/// After a failed upgrade: the old master answers `status` on the same socket file, is the only
/// master, keeps the same workers, and every one of them still serves new requests.
fn assert_old_master_intact(z: &Zentinel, before: &Before, what: &str) {
    assert_eq!(
        z.master_pids(),
        vec![z.pid],
        "{what}: the failed new master is still around\n{}",
        z.log()
    );
    assert_eq!(z.control_socket(), before.socket);
    assert_eq!(
        socket_identity(&before.socket),
        before.identity,
        "{what}: the control socket file was replaced or removed"
    );
    let leftovers: Vec<String> = std::fs::read_dir(&z.runtime_dir)
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.contains(".state"))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        leftovers.is_empty(),
        "{what}: upgrade state files left behind: {leftovers:?}"
    );
    let status = z
        .try_status()
        .unwrap_or_else(|e| panic!("{what}: status after the failed upgrade: {e}\n{}", z.log()));
    assert_eq!(
        status["master"]["pid"].as_u64(),
        Some(u64::from(z.pid)),
        "{what}: status must come from the old master: {status}"
    );
    let after = running_workers(&status);
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.workers.keys().collect::<Vec<_>>(),
        "{what}: the old master's workers changed: {status}"
    );
    // Each worker accepts and answers new requests (the load opens a connection per request
    // on half its clients, so every worker gets some).
    let start = after;
    let mut last = status;
    let all_served = wait_until(DEADLINE, || {
        let Ok(now) = z.try_status() else {
            return false;
        };
        last = now;
        let now = running_workers(&last);
        start
            .iter()
            .all(|(pid, n)| now.get(pid).is_some_and(|m| m > n))
    });
    assert!(
        all_served,
        "{what}: not every worker served a request after the failed upgrade: {last}"
    );
}

fn ctl_upgrade(z: &Zentinel, binary: &Path, extra: &[&str]) -> CtlOutput {
    zentinel_tests::drain::upgrade_rolling(&z.control_socket(), binary, extra, UPGRADE_DEADLINE)
}

/// Upgrades to a copy of the binary armed with `fault` under load, and checks that the old
/// master came through exactly as it was. Returns the master's log.
fn failed_takeover_under_load(label: &str, fault: &str) -> String {
    require_fault_injection();
    let be = Backend::start(label);
    let mut files = TempFiles::default();
    let copy = files.add(binary_copy(label));
    let spec = format!("{fault}@{}", copy.display());
    let z = Zentinel::start_with_env(
        &configs::proxy_draining(2, free_port(), &be, 5),
        &[("ZENTINEL_FAULT_INJECTION", &spec)],
    );
    let load = start_load(&z);
    let before = before(&z);

    let out = ctl_upgrade(&z, &copy, &["--ready-timeout", "5s"]);
    assert!(
        !out.success() && out.said().contains("did not become ready"),
        "{fault}: the upgrade must fail with the new master not ready: {out}\n{}",
        z.log()
    );
    assert_old_master_intact(&z, &before, fault);
    assert!(
        load.wait_for_more(50, DEADLINE),
        "{fault}: no progress after the failed upgrade"
    );
    load.stop().assert_clean(
        100,
        &format!("load across a new master failing with {fault}"),
    );
    z.log_text()
}

#[test]
fn new_master_failing_before_it_confirms_leaves_the_old_one_intact() {
    let log = failed_takeover_under_load("takeover-fail", "takeover-fail");
    // The failure went through the normal error path: the adopted workers were dropped
    // without being killed, and the reason was said.
    assert!(
        log.contains("fault injection: takeover-fail"),
        "the fault did not fire:\n{log}"
    );
    assert!(
        log.contains("not killing it"),
        "the new master's drop never saw the adopted workers:\n{log}"
    );
}

#[test]
fn new_master_panicking_before_it_confirms_leaves_the_old_one_intact() {
    let log = failed_takeover_under_load("takeover-panic", "takeover-panic");
    assert!(
        log.contains("fault injection: takeover-panic"),
        "the fault did not fire:\n{log}"
    );
    // Unwinding dropped the adopted workers without killing them.
    assert!(
        log.contains("not killing it"),
        "the panic did not unwind through the adopted workers:\n{log}"
    );
}

/// Requests counted by the running workers in `status --json`.
fn requests_counted(status: &serde_json::Value) -> u64 {
    running_workers(status).values().sum()
}

/// Issue 14: a new master that asked the adopted workers for their status and failed before
/// reading the answers leaves them on the shared channels, and the old master reads them when
/// it resumes. They answer requests it never sent: with answers matched by order they made its
/// next `status` finish at once, on the counters of before the failure. Matched by request id,
/// they are ignored (and logged), and `status` waits for the answers to its own requests.
#[test]
fn answers_to_a_failed_new_masters_requests_are_ignored_by_the_old_one() {
    require_fault_injection();
    let be = Backend::start("stale-answers");
    let mut files = TempFiles::default();
    let copy = files.add(binary_copy("stale-answers"));
    let spec = format!("takeover-fail-unanswered@{}", copy.display());
    let z = Zentinel::start_with_env(
        &configs::proxy_draining(2, free_port(), &be, 5),
        &[("ZENTINEL_FAULT_INJECTION", &spec)],
    );
    for _ in 0..5 {
        z.client()
            .get("/bytes/100", "stale.test")
            .assert_pattern_body(100);
    }
    let before = before(&z);
    let counted_before: u64 = before.workers.values().sum();
    assert!(counted_before >= 5, "{:?}", before.workers);

    let out = ctl_upgrade(&z, &copy, &["--ready-timeout", "5s"]);
    assert!(
        !out.success() && out.said().contains("did not become ready"),
        "the upgrade must fail with the new master not ready: {out}\n{}",
        z.log()
    );
    let log = z.log_text();
    assert!(
        log.contains("fault injection: takeover-fail-unanswered"),
        "the fault did not fire:\n{log}"
    );

    // New requests after the failure: the next status must count every one of them, not
    // report the counters the stale answers carried.
    const AFTER: u64 = 20;
    for _ in 0..AFTER {
        z.client()
            .get("/bytes/100", "stale.test")
            .assert_pattern_body(100);
    }
    let status = z.status();
    assert_eq!(
        status["master"]["pid"].as_u64(),
        Some(u64::from(z.pid)),
        "{status}"
    );
    let counted = requests_counted(&status);
    assert!(
        counted >= counted_before + AFTER,
        "status after the failed upgrade counts {counted} requests, but {counted_before} were \
         counted before it and {AFTER} made since: stale counters\n{status}\n{}",
        z.log()
    );
    // Every worker's answer to the failed master's request was recognised as stale.
    let log = z.log_text();
    let ignored = log.matches("ignoring a stale status answer").count();
    assert!(
        ignored >= before.workers.len(),
        "{ignored} stale answers ignored, expected one per worker ({}):\n{log}",
        before.workers.len()
    );
    assert_eq!(z.master_pids(), vec![z.pid], "{}", z.log());
}

/// The reproduction: a new binary that is a wrapper lowering the open-file limit (as a
/// changed systemd `LimitNOFILE` would), run without pre-flight. Limits from 8 up, one at a
/// time, make the new master fail at each step that opens a descriptor in turn (its state file,
/// its executable, its event loop, each adopted worker's pidfd...), until one fails inside the
/// supervisor, with every fd adopted (the control socket among them). After each, the old master
/// keeps its control socket file and keeps serving.
#[test]
fn new_master_short_of_file_descriptors_leaves_the_old_one_reachable() {
    let be = Backend::start("low-nofile");
    let mut files = TempFiles::default();
    let z = Zentinel::start(&configs::proxy_draining(2, free_port(), &be, 5));
    let load = start_load(&z);
    let before = before(&z);
    let mut tried = Vec::new();
    for limit in 8..=64 {
        let wrapper = files.add(temp_path(&format!("zentinel-nofile-{limit}.sh")));
        install_script(
            &wrapper,
            &format!(
                "#!/bin/sh\nulimit -n {limit}\nexec {} \"$@\"\n",
                zentinel_bin().display()
            ),
        );
        let out = ctl_upgrade(&z, &wrapper, &["--ready-timeout", "5s", "--no-preflight"]);
        assert!(
            !out.success() && out.said().contains("did not become ready"),
            "ulimit -n {limit} (after {tried:?} failed as they should): the new master must \
             fail before it is ready: {out}\n{}",
            z.log()
        );
        assert_old_master_intact(&z, &before, &format!("ulimit -n {limit}"));
        tried.push(limit);
        if z.log_text().contains("abandoning the takeover") {
            break; // failed with everything adopted: the deepest point before readiness
        }
    }
    let log = z.log_text();
    assert!(
        log.contains("abandoning the takeover"),
        "no limit in {tried:?} made the new master fail with everything adopted:\n{log}"
    );
    // Each new master said why before it went (not lost to the old master's kill): in its
    // last words, or (failing inside the supervisor) in its log line giving up.
    let reasons = log
        .matches("cannot take over from the previous master")
        .count()
        + log.matches("abandoning the takeover").count();
    assert!(
        reasons >= tried.len() && log.contains("Too many open files"),
        "{} failed new masters, {reasons} reasons given:\n{log}",
        tried.len()
    );
    load.stop()
        .assert_clean(100, "load across new masters short of file descriptors");
    // Nothing is stuck: a real upgrade still works afterwards.
    let copy = files.add(binary_copy("after-low-nofile"));
    let out = ctl_upgrade(&z, &copy, &[]);
    assert!(
        out.success(),
        "upgrade after the failed ones: {out}\n{}",
        z.log()
    );
}

/// The old master dies (SIGKILL: no destructor, no clean-up) while the new one holds its
/// confirmation in its event loop (test fault `fault`, armed in the new binary only). The new
/// master must confirm to nobody, take full ownership and serve: `status` answers from it, the
/// upgrade's client gets its answers from it, the rolling upgrade replaces the workers, and no
/// request fails. Returns the log.
fn old_master_killed_while_the_new_one_holds(label: &str, fault: &str) -> String {
    require_fault_injection();
    let be = Backend::start(label);
    let mut files = TempFiles::default();
    let copy = files.add(binary_copy(label));
    let spec = format!("{fault}@{}", copy.display());
    let mut z = Zentinel::start_with_env(
        &configs::proxy_draining(2, free_port(), &be, 5),
        &[("ZENTINEL_FAULT_INJECTION", &spec)],
    );
    let load = start_load(&z);
    let before = before(&z);

    let socket = z.control_socket();
    let binary = copy.display().to_string();
    let upgrade = std::thread::spawn(move || {
        let args = [
            "upgrade",
            "--rolling",
            "--binary",
            binary.as_str(),
            "--ready-timeout",
            "30s",
        ];
        ctl_within(&socket, &args, UPGRADE_DEADLINE)
    });
    let held = wait_until(DEADLINE, || {
        z.log_text().contains(&format!(
            "fault injection: {fault}: holding the confirmation"
        ))
    });
    assert!(
        held,
        "the new master never held its confirmation\n{}",
        z.log()
    );
    let new_master = z
        .master_pids()
        .into_iter()
        .find(|&pid| pid != z.pid)
        .unwrap_or_else(|| panic!("no new master next to {}\n{}", z.pid, z.log()));

    send_signal(z.pid, nix::sys::signal::Signal::SIGKILL);
    let exit = z.wait_exit(DEADLINE);
    assert!(
        exit.is_some_and(|s| !s.success()),
        "the old master did not die: {exit:?}"
    );

    let out = upgrade
        .join()
        .unwrap_or_else(|_| panic!("the upgrade client thread panicked"));
    assert!(
        out.success(),
        "the new master must finish the upgrade on its own: {out}\n{}",
        z.log()
    );
    assert!(
        out.stdout
            .contains(&format!("master: pid {} -> pid {new_master}", z.pid)),
        "the client was not told who took over: {out}"
    );
    let log = z.log_text();
    assert!(
        log.contains("readiness confirmed to nobody"),
        "the new master did not say it confirmed to nobody:\n{log}"
    );
    let status = z.status();
    assert_eq!(
        status["master"]["pid"].as_u64(),
        Some(u64::from(new_master)),
        "status must come from the new master: {status}"
    );
    assert_eq!(
        z.master_pids(),
        vec![new_master],
        "exactly one master must be left\n{}",
        z.log()
    );
    // The rolling upgrade replaced every worker (the old master's are gone or draining), and
    // each new one serves new requests.
    let start = running_workers(&status);
    assert_eq!(start.len(), 2, "{status}");
    assert!(
        start.keys().all(|pid| !before.workers.contains_key(pid)),
        "the workers were not replaced: {status}"
    );
    let mut last = status;
    let all_served = wait_until(DEADLINE, || {
        let Ok(now) = z.try_status() else {
            return false;
        };
        last = now;
        let now = running_workers(&last);
        start
            .iter()
            .all(|(pid, n)| now.get(pid).is_some_and(|m| m > n))
    });
    assert!(all_served, "not every new worker served: {last}");
    assert!(
        load.wait_for_more(50, DEADLINE),
        "no progress after the takeover"
    );
    load.stop()
        .assert_clean(100, "load across the old master dying mid-hand-over");
    z.log_text()
}

/// The new master sees the old one die through its pidfd.
#[test]
fn old_master_dying_before_the_new_one_confirms_is_survived_by_the_new_one() {
    let log = old_master_killed_while_the_new_one_holds("old-master-dies", "takeover-delay");
    assert!(
        !log.contains("cannot write READY"),
        "the pidfd should have told, not the pipe:\n{log}"
    );
}

/// Without a pidfd on the old master, writing `READY` fails with EPIPE: the same outcome.
#[test]
fn old_master_dying_unwatched_shows_as_epipe_and_is_survived_by_the_new_one() {
    let log = old_master_killed_while_the_new_one_holds(
        "old-master-dies-unwatched",
        "takeover-delay-unwatched",
    );
    assert!(
        log.contains("cannot write READY") && log.contains("Broken pipe"),
        "the new master did not meet EPIPE on the readiness pipe:\n{log}"
    );
}

// ---------------------------------------------------------------------------------------------
// A state file that names one fd twice.
// ---------------------------------------------------------------------------------------------

fn record(id: u32, channel_fd: i32) -> WorkerRecord {
    WorkerRecord {
        id,
        pid: 1,
        generation: 1,
        channel_fd,
        version: "0.1.0".to_owned(),
        binary: "/usr/bin/zentinel".to_owned(),
        started_at_unix_ms: 0,
        state: WorkerState::Running,
        counters: WorkerCounters::default(),
        protocol_version: 1,
        drain_deadline_monotonic_ms: None,
    }
}

#[test]
fn state_naming_one_fd_twice_is_refused_before_any_fd_is_taken() {
    let runtime = TempDir::new("dup-fds");
    let state_path = runtime.0.join("dup.state");
    let state = MasterState {
        previous_master_pid: 1,
        generation: 2,
        config_source: ConfigSource {
            main_path: None,
            files: vec![ConfigSourceFile {
                path: "<embedded default>".to_owned(),
                text: String::new(),
            }],
        },
        log_level: "info".to_owned(),
        control_socket_path: runtime.0.join("z.sock").display().to_string(),
        control_socket_fd: 40,
        previous_binary: "/usr/bin/zentinel".to_owned(),
        previous_executable_fd: 41,
        listeners: vec![ListenerFd {
            name: "http".to_owned(),
            address: "127.0.0.1:1".to_owned(),
            fd: 42,
        }],
        // Worker 1's channel has the listener's number.
        workers: vec![record(0, 43), record(1, 42)],
        upgrade: Some(PendingUpgrade {
            rolling: true,
            drain_timeout_ms: 1000,
            ready_timeout_ms: 1000,
            client_fd: None,
            canary: None,
        }),
        metrics_listener: None,
        metrics: MasterMetrics::default(),
        ticket_keys: Default::default(),
        session_cache: None,
        filter_segments: Vec::new(),
    };
    write_state_file(&state_path, &state).expect("write the state file");
    let (ready_read, ready_write) = nix::unistd::pipe().expect("pipe");
    let mut cmd = Command::new(zentinel_bin());
    cmd.arg("--upgrade-from")
        .arg(&state_path)
        .arg("--upgrade-ready-fd")
        .arg(ready_write.as_raw_fd().to_string())
        .env("XDG_RUNTIME_DIR", &runtime.0);
    let out = run_with_deadline(cmd, DEADLINE);
    drop(ready_write);
    assert!(
        matches!(out.code, Some(c) if c != 0),
        "a state naming fd 42 twice must be refused: {out}"
    );
    assert!(
        out.stderr.contains("fd 42 is named twice")
            && out.stderr.contains("listener \"http\"")
            && out.stderr.contains("channel of worker 1")
            && out.stderr.contains("no fd was taken")
            && out.stderr.contains(&state_path.display().to_string()),
        "the error must name the fd, both holders and the state file: {out}"
    );
    nix::fcntl::fcntl(
        &ready_read,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .expect("O_NONBLOCK");
    let mut buf = [0u8; 16];
    let n = nix::unistd::read(&ready_read, &mut buf).unwrap_or(0);
    assert_eq!(n, 0, "readiness was confirmed: {out}");
}
