//! systemd integration end to end (issue 7): socket activation with sockets the test binds
//! and passes itself, and the `Type=notify` protocol received on a real `NOTIFY_SOCKET`
//! through start-up, reloads, a rolling binary upgrade and a stop.

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::sys::socket::{getsockopt, sockopt};
use zentinel_tests::systemd::*;
use zentinel_tests::*;

const DEADLINE: Duration = Duration::from_secs(10);
const UPGRADE_DEADLINE: Duration = Duration::from_secs(30);

/// `workers` workers; one HTTP listener per `(name, address)`, each answering `200 served`.
fn config(workers: u32, listeners: &[(&str, SocketAddr)]) -> String {
    let listeners: String = listeners
        .iter()
        .map(|(name, address)| {
            format!(
                "    listener \"{name}\" {{\n        address \"{address}\"\n        \
                 protocol \"http\"\n        default-route \"hello\"\n    }}\n"
            )
        })
        .collect();
    format!(
        "system {{\n    worker-processes {workers}\n    graceful-shutdown-timeout-secs 5\n}}\n\
         listeners {{\n{listeners}}}\n\
         routes {{\n    route \"hello\" {{\n        static-response status=200 body=\"served\"\n    }}\n}}\n"
    )
}

fn assert_served(address: SocketAddr, what: &str, z: &Zentinel) {
    let mut client = HttpClient::try_connect(address)
        .unwrap_or_else(|e| panic!("{what}: cannot connect to {address}: {e}\n{}", z.log()));
    let response = client.get("/", "systemd.test");
    assert_eq!(response.status, 200, "{what}: {response:?}\n{}", z.log());
    assert_eq!(response.body_str(), "served", "{what}\n{}", z.log());
}

fn monotonic_now_usec() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the valid, exclusively borrowed `now`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    assert_eq!(rc, 0);
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

fn assert_no_listen_variables(pid: u32, who: &str) {
    let leaked: Vec<String> = process_environ(pid)
        .into_iter()
        .filter(|v| v.starts_with("LISTEN_"))
        .collect();
    assert!(leaked.is_empty(), "{who} (pid {pid}) still sees {leaked:?}");
}

#[test]
fn activated_socket_is_served_and_survives_reload_and_rolling_upgrade() {
    // The port is bound here, without SO_REUSEPORT: if zentinel bound the address itself it
    // would fail with EADDRINUSE instead of serving.
    let passed = TcpListener::bind("127.0.0.1:0").unwrap();
    assert!(!getsockopt(&passed, sockopt::ReusePort).unwrap());
    let activated: SocketAddr = passed.local_addr().unwrap();
    let inode = socket_inode(passed.as_fd());
    let own: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let full = config(2, &[("activated", activated), ("own", own)]);

    let mut z = Zentinel::start_activated(&full, &[passed.as_fd()], Some("web"), &[]);
    // From here on only zentinel holds the socket.
    drop(passed);
    assert_served(activated, "activated listener", &z);
    assert_served(own, "listener zentinel bound itself", &z);
    let log = z.log_text();
    assert!(
        log.contains("using the socket passed by systemd") && log.contains("fd=3"),
        "no adoption in the log:\n{log}"
    );

    // Exactly one listening socket on the port: the passed one, in the master and in every
    // worker.
    let held_everywhere = |z: &Zentinel, master: u32, what: &str| {
        assert_eq!(
            listening_inodes_on_port(activated.port()),
            [inode].into(),
            "{what}: listening sockets on {activated}\n{}",
            z.log()
        );
        assert!(
            socket_inodes(master).contains(&inode),
            "{what}: master {master} does not hold the passed socket"
        );
        let workers = z.worker_pids();
        assert_eq!(workers.len(), 2, "{what}: workers {workers:?}");
        for worker in workers {
            assert!(
                socket_inodes(worker).contains(&inode),
                "{what}: worker {worker} does not hold the passed socket\n{}",
                z.log()
            );
        }
    };
    held_everywhere(&z, z.pid, "after start");
    // The master consumed the variables: its children do not see them. (The master's own
    // /proc/PID/environ shows the block it was exec'd with, whatever it removed since.)
    for worker in z.worker_pids() {
        assert_no_listen_variables(worker, "worker");
    }

    // Reload without the activated listener: the workers let it go, the master keeps the
    // socket (systemd would too) ...
    let config_path = z.config_path.clone().unwrap();
    fs::write(&config_path, config(2, &[("own", own)])).unwrap();
    z.ctl(&["reload"])
        .assert_success("reload without the activated listener");
    assert!(
        wait_until(DEADLINE, || z
            .worker_pids()
            .iter()
            .all(|&w| !socket_inodes(w).contains(&inode))),
        "workers still hold the removed listener's socket\n{}",
        z.log()
    );
    assert_eq!(listening_inodes_on_port(activated.port()), [inode].into());
    assert!(socket_inodes(z.pid).contains(&inode));
    assert_served(own, "kept listener after the removal", &z);
    // ... so re-adding it serves the very same socket again (binding would hit EADDRINUSE
    // against systemd's copy).
    fs::write(&config_path, &full).unwrap();
    z.ctl(&["reload"])
        .assert_success("reload re-adding the activated listener");
    assert!(
        wait_until(DEADLINE, || z
            .worker_pids()
            .iter()
            .all(|&w| socket_inodes(w).contains(&inode))),
        "workers did not get the re-added socket\n{}",
        z.log()
    );
    assert_served(activated, "re-added activated listener", &z);
    held_everywhere(&z, z.pid, "after the reloads");

    // A rolling upgrade hands the socket over like any listener: same inode, new processes.
    let old_workers = z.worker_pids();
    let out = ctl_within(
        &z.control_socket(),
        &["upgrade", "--rolling"],
        UPGRADE_DEADLINE,
    );
    out.assert_success("rolling upgrade");
    let new_master = z.current_master_pid();
    assert_ne!(new_master, z.pid);
    assert!(
        z.master_exited_after_upgrade(DEADLINE),
        "old master did not exit 0\n{}",
        z.log()
    );
    assert!(
        wait_until(DEADLINE, || {
            let now = z.worker_pids();
            now.len() == 2 && now.iter().all(|w| !old_workers.contains(w))
        }),
        "old workers still running: {:?} (before: {old_workers:?})\n{}",
        z.worker_pids(),
        z.log()
    );
    assert_served(activated, "activated listener after the upgrade", &z);
    assert_served(own, "own listener after the upgrade", &z);
    held_everywhere(&z, new_master, "after the upgrade");
    assert_no_listen_variables(new_master, "the new master");

    z.signal(Signal::SIGTERM);
    assert!(z.wait_all_gone(Duration::from_secs(15)), "{}", z.log());
    assert!(
        listening_inodes_on_port(activated.port()).is_empty(),
        "the passed socket outlived every zentinel process"
    );
}

#[test]
fn activated_socket_without_a_matching_listener_is_a_clear_error() {
    let stray = TcpListener::bind("127.0.0.1:0").unwrap();
    let stray_addr = stray.local_addr().unwrap();
    let port = free_port();
    let configured: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut files = TempFiles(Vec::new());
    let config_path = files.add(temp_path("config.kdl"));
    fs::write(&config_path, config(1, &[("web", configured)])).unwrap();
    let runtime_dir = new_runtime_dir();
    let cmd = activated_command(
        &zentinel_bin(),
        &config_path,
        &runtime_dir,
        &[stray.as_fd()],
        Some("stray"),
    );
    let out = run_group_with_deadline(cmd, DEADLINE);
    let _ = fs::remove_dir_all(&runtime_dir);
    assert_eq!(out.code, Some(2), "{out}");
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with("zentinel: "))
        .unwrap_or_else(|| panic!("no error line: {out}"));
    for expected in [
        "socket activation: fd 3",
        "(name \"stray\")",
        &format!("listens on {stray_addr}"),
        &format!("\"web\" {configured}"),
    ] {
        assert!(line.contains(expected), "missing {expected:?} in {line:?}");
    }
    // It stopped before binding anything or starting a worker.
    assert!(!out.stderr.contains("worker spawned"), "{out}");
    assert!(TcpStream::connect(configured).is_err());
}

#[test]
fn sockets_meant_for_another_pid_are_ignored() {
    let foreign = TcpListener::bind("127.0.0.1:0").unwrap();
    let inode = socket_inode(foreign.as_fd());
    let own: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let z = Zentinel::start_activated(
        &config(1, &[("own", own)]),
        &[foreign.as_fd()],
        None,
        &[("ZENTINEL_TEST_LISTEN_PID", "1")],
    );
    assert_served(own, "own listener", &z);
    let log = z.log_text();
    assert!(
        log.contains("LISTEN_PID=1 is not our pid") && log.contains("LISTEN_FDS ignored"),
        "{log}"
    );
    for worker in z.worker_pids() {
        assert!(
            !socket_inodes(worker).contains(&inode),
            "worker {worker} got the foreign socket"
        );
        assert_no_listen_variables(worker, "worker");
    }
}

#[test]
fn notify_protocol_through_start_reload_rolling_upgrade_and_stop() {
    let mut notify = NotifySocket::bind();
    let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = config(2, &[("web", address)]);
    let mut z = Zentinel::start_with_env(&cfg, &[("NOTIFY_SOCKET", &notify.address)]);
    let master = z.pid;
    let master_s = master.to_string();

    // Start: one READY=1 from the master, naming itself, once every worker is ready.
    let start = notify.until("READY=1 at start", DEADLINE, |n| n.has("READY=1"));
    assert_eq!(start.len(), 1, "{start:#?}");
    assert_eq!(start[0].sender_pid, Some(master), "{start:#?}");
    assert_eq!(start[0].get("MAINPID"), Some(master_s.as_str()));
    assert!(
        start[0]
            .get("STATUS")
            .is_some_and(|s| s.contains("2 worker")),
        "{start:#?}"
    );

    // Reload: RELOADING=1 (with a current MONOTONIC_USEC) and then READY=1.
    let before = monotonic_now_usec();
    z.ctl(&["reload"]).assert_success("reload");
    let reload = notify.until("READY=1 after the reload", DEADLINE, |n| n.has("READY=1"));
    assert_eq!(reload.len(), 2, "{reload:#?}");
    assert!(reload[0].has("RELOADING=1"), "{reload:#?}");
    let usec: u64 = reload[0]
        .get("MONOTONIC_USEC")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC: {reload:#?}"));
    assert!(
        (before..=monotonic_now_usec()).contains(&usec),
        "MONOTONIC_USEC={usec} is not the time of the reload"
    );
    assert_eq!(reload[1].get("MAINPID"), Some(master_s.as_str()));
    assert!(reload.iter().all(|n| n.sender_pid == Some(master)));

    // A refused reload (invalid file) still ends with READY=1: the old config serves on.
    let config_path = z.config_path.clone().unwrap();
    fs::write(&config_path, "listeners { oops").unwrap();
    assert!(!z.ctl(&["reload"]).success(), "an invalid config reloaded");
    let failed = notify.until("READY=1 after a failed reload", DEADLINE, |n| {
        n.has("READY=1")
    });
    assert_eq!(failed.len(), 2, "{failed:#?}");
    assert!(failed[0].has("RELOADING=1"), "{failed:#?}");
    fs::write(&config_path, &cfg).unwrap();
    assert_served(address, "after the failed reload", &z);

    // Rolling upgrade: the old master announces it (RELOADING=1); the NEW master moves
    // MAINPID to itself and says READY=1, from its own pid (NotifyAccess=all).
    let out = ctl_within(
        &z.control_socket(),
        &["upgrade", "--rolling"],
        UPGRADE_DEADLINE,
    );
    out.assert_success("rolling upgrade");
    let new_master = z.current_master_pid();
    assert_ne!(new_master, master);
    let new_s = new_master.to_string();
    let upgrade = notify.until("MAINPID from the new master", DEADLINE, |n| {
        n.has("READY=1")
    });
    assert_eq!(upgrade.len(), 2, "{upgrade:#?}");
    assert!(upgrade[0].has("RELOADING=1"), "{upgrade:#?}");
    assert!(upgrade[0].get("MONOTONIC_USEC").is_some(), "{upgrade:#?}");
    assert_eq!(upgrade[0].sender_pid, Some(master), "{upgrade:#?}");
    assert_eq!(
        upgrade[1].get("MAINPID"),
        Some(new_s.as_str()),
        "{upgrade:#?}"
    );
    assert_eq!(upgrade[1].sender_pid, Some(new_master), "{upgrade:#?}");
    assert!(
        z.master_exited_after_upgrade(DEADLINE),
        "old master did not exit 0\n{}",
        z.log()
    );
    // After the handover: only the new master speaks, and only to update its status (the
    // rolling replacement's outcome); the old one said nothing (no STOPPING=1, no MAINPID).
    let after = notify.drain(Duration::from_millis(300));
    assert!(
        after.iter().all(|n| n.sender_pid == Some(new_master)
            && !n.has("READY=1")
            && !n.has("STOPPING=1")
            && n.get("MAINPID").is_none()),
        "{after:#?}"
    );
    assert!(
        after.iter().any(|n| n
            .get("STATUS")
            .is_some_and(|s| s.contains("upgrade complete"))),
        "{after:#?}"
    );
    assert_served(address, "after the upgrade", &z);

    // A real stop: STOPPING=1 from the current master.
    z.signal(Signal::SIGTERM);
    let stop = notify.until("STOPPING=1", DEADLINE, |n| n.has("STOPPING=1"));
    assert_eq!(stop.len(), 1, "{stop:#?}");
    assert_eq!(stop[0].sender_pid, Some(new_master));
    assert!(z.wait_all_gone(Duration::from_secs(15)), "{}", z.log());
}

#[test]
fn notify_socket_in_the_abstract_namespace() {
    let mut notify = NotifySocket::bind_abstract();
    assert!(notify.address.starts_with('@'));
    let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let z = Zentinel::start_with_env(
        &config(1, &[("web", address)]),
        &[("NOTIFY_SOCKET", &notify.address)],
    );
    let ready = notify.until("READY=1", DEADLINE, |n| n.has("READY=1"));
    assert_eq!(ready.last().and_then(|n| n.sender_pid), Some(z.pid));
    assert_eq!(
        ready.last().and_then(|n| n.get("MAINPID")),
        Some(z.pid.to_string().as_str())
    );
}

#[test]
fn failed_upgrade_ends_with_the_old_master_ready_again() {
    require_fault_injection();
    let mut notify = NotifySocket::bind();
    let mut files = TempFiles::default();
    let copy = files.add(binary_copy("systemd-master-dies"));
    // The new master (running from `copy`) exits before it confirms readiness.
    let fault = format!("master-exit-before-ready@{}", copy.display());
    let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let z = Zentinel::start_with_env(
        &config(1, &[("web", address)]),
        &[
            ("NOTIFY_SOCKET", &notify.address),
            ("ZENTINEL_FAULT_INJECTION", &fault),
        ],
    );
    let master = z.pid;
    let master_s = master.to_string();
    notify.until("READY=1 at start", DEADLINE, |n| n.has("READY=1"));

    let binary = copy.display().to_string();
    let out = ctl_within(
        &z.control_socket(),
        &[
            "upgrade",
            "--rolling",
            "--binary",
            &binary,
            "--ready-timeout",
            "5s",
        ],
        UPGRADE_DEADLINE,
    );
    assert!(
        !out.success(),
        "the new master died, the upgrade must fail: {out}"
    );
    // RELOADING=1, then the old master claims MAINPID back and is READY again; nothing came
    // from the dead one.
    let failed = notify.until("READY=1 after the failed upgrade", DEADLINE, |n| {
        n.has("READY=1")
    });
    assert!(failed[0].has("RELOADING=1"), "{failed:#?}");
    assert!(
        failed.iter().all(|n| n.sender_pid == Some(master)),
        "{failed:#?}"
    );
    let last = failed.last().unwrap();
    assert_eq!(last.get("MAINPID"), Some(master_s.as_str()), "{failed:#?}");
    assert!(
        last.get("STATUS").is_some_and(|s| s.contains("failed")),
        "{failed:#?}"
    );
    assert_served(address, "after the failed upgrade", &z);
}

#[test]
fn notify_failures_are_logged_never_fatal() {
    let missing = temp_path("no-such-notify.sock");
    let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let missing_s = missing.display().to_string();
    let mut z = Zentinel::start_with_env(
        &config(1, &[("web", address)]),
        &[("NOTIFY_SOCKET", &missing_s)],
    );
    assert_served(address, "with a dead NOTIFY_SOCKET", &z);
    z.ctl(&["reload"])
        .assert_success("reload with a dead NOTIFY_SOCKET");
    assert_served(address, "after the reload", &z);
    let log = z.log_text();
    assert!(
        log.contains("cannot notify the service manager") && log.contains("READY=1"),
        "{log}"
    );
    z.signal(Signal::SIGTERM);
    assert!(
        matches!(z.wait_exit(Duration::from_secs(15)), Some(s) if s.success()),
        "a failed STOPPING=1 must not change the exit status\n{}",
        z.log()
    );
}
