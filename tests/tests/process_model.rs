//! Master/worker process model: worker count, every worker serving, restart on crash,
//! graceful stop leaving no process behind.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use zentinel_tests::*;

fn ok_request(addr: SocketAddr) {
    let mut c = HttpClient::connect(addr);
    let r = c.get("/", "p.test");
    assert_eq!(r.status, 200, "{r:?}");
}

/// Server-side established sockets on `port` held by each of `pids`.
fn connections_per_process(pids: &[u32], port: u16) -> BTreeMap<u32, usize> {
    let established = established_inodes_on_port(port);
    pids.iter()
        .map(|&pid| (pid, socket_inodes(pid).intersection(&established).count()))
        .collect()
}

#[test]
fn worker_count_and_every_worker_serves_traffic() {
    let port = free_port();
    let z = Zentinel::start(&configs::static_response(3, &[port], "static ok", 5));
    let workers = z.worker_pids();
    assert_eq!(workers.len(), 3, "worker processes: {workers:?}");
    for &pid in &workers {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(
            cmdline.contains("worker"),
            "child {pid} is not a worker: {cmdline}"
        );
    }

    // Hold keep-alive connections (each served once) until every worker holds one.
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let per_worker = loop {
        for _ in 0..10 {
            let mut c = z.client();
            let r = c.get("/", "w.test");
            assert_eq!((r.status, r.body_str().as_str()), (200, "static ok"));
            held.push(c);
        }
        let per = connections_per_process(&workers, port);
        if per.values().all(|&n| n > 0) || Instant::now() >= deadline || held.len() >= 300 {
            break per;
        }
    };
    let total: usize = per_worker.values().sum();
    eprintln!("client connections per worker: {per_worker:?}");
    assert!(
        per_worker.values().all(|&n| n > 0),
        "not every worker serves traffic: established client sockets per worker {per_worker:?} \
         with {} client connections held",
        held.len()
    );
    assert_eq!(
        total,
        held.len(),
        "client connections not all held by workers: {per_worker:?}"
    );
    let master = connections_per_process(&[z.pid], port);
    assert_eq!(master[&z.pid], 0, "the master holds client connections");
    assert_eq!(z.worker_pids(), workers, "workers changed while serving");
}

#[test]
fn killed_worker_is_restarted() {
    let port = free_port();
    let z = Zentinel::start(&configs::static_response(2, &[port], "static ok", 5));
    let before = z.worker_pids();
    let victim = before[0];
    send_signal(victim, Signal::SIGKILL);
    let mut now = Vec::new();
    let restarted = wait_until(Duration::from_secs(10), || {
        now = z.worker_pids();
        now.len() == 2 && !now.contains(&victim)
    });
    assert!(
        restarted,
        "worker {victim} killed; workers after 10 s: {now:?} (before {before:?})\n{}",
        z.log()
    );
    assert!(
        now.contains(&before[1]),
        "the surviving worker was replaced too: {now:?}"
    );
    assert!(is_alive(z.pid), "master died");
    for _ in 0..20 {
        ok_request(z.addr());
    }
}

#[test]
fn sigterm_stops_everything_after_in_flight_requests() {
    let backend = Backend::start("slow");
    let port = free_port();
    let mut z = Zentinel::start(&configs::proxy_draining(2, port, &backend, 5));
    let workers = z.worker_pids();

    // An in-flight request must complete during the graceful stop.
    let addr = z.addr();
    let in_flight = thread::spawn(move || {
        let mut c = HttpClient::connect(addr);
        c.get("/delay/1500", "t")
    });
    assert!(
        wait_until(Duration::from_secs(5), || backend.stats().0 >= 1),
        "the delayed request never reached the backend"
    );
    let stop_at = Instant::now();
    z.signal(Signal::SIGTERM);
    let r = in_flight.join().expect("in-flight request thread");
    assert_eq!(
        r.status, 200,
        "in-flight request not completed during graceful stop: {r:?}"
    );
    assert_eq!(r.body_str(), "delayed 1500ms\n");
    assert!(
        r.connection_has("close"),
        "a response sent while draining should carry Connection: close: {r:?}"
    );

    let status = z.wait_exit(Duration::from_secs(10));
    let status =
        status.unwrap_or_else(|| panic!("master still running 10 s after SIGTERM\n{}", z.log()));
    assert!(
        status.success(),
        "master exit status after SIGTERM: {status}\n{}",
        z.log()
    );
    assert_all_exit(
        &workers,
        Duration::from_secs(5),
        "workers after the master exited",
        &z,
    );
    // graceful-shutdown-timeout-secs is 5: the stop must not have waited for it.
    assert!(
        stop_at.elapsed() < Duration::from_secs(4),
        "graceful stop took {:?} with a single 1.5 s request in flight\n{}",
        stop_at.elapsed(),
        z.log()
    );
}

#[test]
fn sigterm_drain_serves_idle_keep_alive_clients_then_closes_them_cleanly_by_the_deadline() {
    // The design rule (docs/design/upgrades.md, "Draining a worker"): a draining worker must not
    // close an idle keep-alive connection under a client that may be sending its next request
    // right now. It answers the next request with `Connection: close`, and closes connections
    // that stay idle only shortly before the drain deadline (1 s, `LINGER`), with a write
    // shutdown first (a FIN, not an RST).
    let backend = Backend::start("idle");
    let port = free_port();
    let mut z = Zentinel::start(&configs::proxy_draining(1, port, &backend, 5));
    let mut returning = z.client();
    let mut silent = z.client();
    assert_eq!(returning.get("/", "t").status, 200);
    assert_eq!(silent.get("/", "t").status, 200);
    let stop_at = Instant::now();
    z.signal(Signal::SIGTERM);

    // A client that comes back during the drain is served, and told to go away.
    assert!(
        wait_until(Duration::from_secs(2), || z.log().contains("draining")),
        "no worker reported draining\n{}",
        z.log()
    );
    let again = returning.get("/", "t");
    assert_eq!(
        again.status, 200,
        "request on a draining keep-alive connection failed"
    );
    assert!(
        again.connection_has("close"),
        "response during drain lacks Connection: close: {:?}",
        again.headers
    );
    assert!(
        returning.server_closed_within(Duration::from_secs(2)),
        "connection not closed after the Connection: close response"
    );

    // The silent client is closed by the deadline (graceful-shutdown-timeout-secs 5).
    assert!(
        silent.server_closed_within(Duration::from_secs(8)),
        "idle keep-alive connection still open after the drain deadline\n{}",
        z.log()
    );
    assert!(
        stop_at.elapsed() >= Duration::from_secs(2),
        "idle connection closed {:?} after SIGTERM: far before the drain deadline",
        stop_at.elapsed()
    );
    drop(silent);
    drop(returning);
    let status = z.wait_exit(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "master did not exit cleanly after the drain: {status:?}\n{}",
        z.log()
    );
}

#[test]
fn sigint_fast_stop_leaves_no_process() {
    let port = free_port();
    let mut z = Zentinel::start(&configs::static_response(2, &[port], "static ok", 5));
    let workers = z.worker_pids();
    ok_request(z.addr());
    z.signal(Signal::SIGINT);
    let status = z.wait_exit(Duration::from_secs(5));
    assert!(
        status.is_some(),
        "master still running 5 s after SIGINT\n{}",
        z.log()
    );
    assert_all_exit(&workers, Duration::from_secs(5), "workers after SIGINT", &z);
}

/// `system { pid-file }` (upstream Zentinel's spelling, `worker-threads` with it): the file
/// names the master that serves, a rolling upgrade's successor rewrites it, and a stop
/// removes it.
#[test]
fn pid_file_follows_the_serving_master_across_an_upgrade() {
    let be = Backend::start("pid-file");
    let pid_file = temp_path("zentinel.pid");
    let config = configs::Proxy::new(2, free_port(), &be)
        .system(&format!("pid-file \"{}\"", pid_file.display()))
        .build()
        .replace("worker-processes", "worker-threads");
    assert!(config.contains("worker-threads 2"), "{config}");
    let mut files = TempFiles::default();
    let copy = files.add(binary_copy("pid-file"));
    let mut z = Zentinel::start(&config);
    let names =
        |pid: u32| std::fs::read_to_string(&pid_file).ok().as_deref() == Some(&format!("{pid}\n"));
    assert!(
        wait_until(Duration::from_secs(10), || names(z.pid)),
        "pid file {} does not name the master {}",
        pid_file.display(),
        z.pid
    );
    let out = z.ctl(&[
        "upgrade",
        "--rolling",
        "--binary",
        &copy.display().to_string(),
    ]);
    out.assert_success("rolling upgrade with a pid file");
    let successor = z.current_master_pid();
    assert_ne!(successor, z.pid);
    assert!(
        wait_until(Duration::from_secs(10), || names(successor)),
        "pid file does not name the successor {successor}"
    );
    ok_request(z.addr());
    z.ctl(&["stop"]).assert_success("stop");
    assert!(z.wait_all_gone(Duration::from_secs(20)), "processes left");
    assert!(!pid_file.exists(), "pid file left after a stop");
}

/// `system { user "nobody" }` (upstream Zentinel's key): workers run as that user while the
/// master keeps the listeners it bound as root, and they still serve and upgrade. Needs root
/// (CI runs as root); elsewhere it says so and checks nothing.
#[test]
fn workers_drop_privileges_to_the_configured_user() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED workers_drop_privileges_to_the_configured_user: needs root");
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody")
        .ok()
        .flatten()
        .expect("a `nobody` user");
    let be = Backend::start("privileges");
    let config = configs::Proxy::new(2, free_port(), &be)
        .system("user \"nobody\"")
        .build();
    let z = Zentinel::start(&config);
    ok_request(z.addr());
    let uid_of = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
            })
            .and_then(|effective| effective.parse::<u32>().ok())
    };
    let workers = z.worker_pids();
    assert_eq!(workers.len(), 2);
    for pid in &workers {
        assert_eq!(uid_of(*pid), Some(nobody.uid.as_raw()), "worker {pid}");
    }
    assert_eq!(uid_of(z.pid), Some(0), "the master stays root");
}
