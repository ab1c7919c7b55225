//! The control plane end to end: a real master, real workers, the real `zentinel-ctl`, and
//! hand-crafted clients on the control socket.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use zentinel_protocol::control::{
    ControlRequest, ControlResponse, CONTROL_PROTOCOL_VERSION, MAX_CONTROL_REQUEST_FRAME,
};
use zentinel_protocol::messages::Hello;
use zentinel_protocol::Channel;
use zentinel_tests::*;

const DEADLINE: Duration = Duration::from_secs(10);

/// An HTTP listener on `port` whose default route answers `body` itself.
fn static_config(workers: u32, port: u16, body: &str) -> String {
    static_config_ports(workers, &[port], body)
}

/// One HTTP listener per port (named `http0`, `http1`...), all answering `body`.
fn static_config_ports(workers: u32, ports: &[u16], body: &str) -> String {
    configs::static_response(workers, ports, body, 30)
}

/// HTTP (static `body`) on `http_port` plus a TCP listener on `tcp_port` to an echo backend.
fn http_and_tcp_config(workers: u32, http_port: u16, tcp_port: u16, echo: &Backend) -> String {
    format!(
        "system {{\n    worker-processes {workers}\n    graceful-shutdown-timeout-secs 30\n}}\n\
         listeners {{\n\
         \x20   listener \"http\" {{\n        address \"127.0.0.1:{http_port}\"\n        protocol \"http\"\n        default-route \"r\"\n    }}\n\
         \x20   listener \"tcp\" {{\n        address \"127.0.0.1:{tcp_port}\"\n        protocol \"tcp\"\n        upstream \"echo\"\n    }}\n\
         }}\n\
         routes {{\n    route \"r\" {{\n        static-response status=200 body=\"ok\"\n    }}\n}}\n\
         upstreams {{\n    upstream \"echo\" {{\n        target \"{}\"\n    }}\n}}\n",
        echo.target()
    )
}

/// `zentinel-ctl status --json`, parsed; panics (with the master's log) unless it succeeds.
fn status_json(z: &Zentinel) -> Value {
    let out = z.ctl(&["status", "--json"]);
    assert!(out.success(), "status --json failed: {out}\n{}", z.log());
    let trimmed = out.stdout.trim();
    assert_eq!(
        trimmed.lines().count(),
        1,
        "status --json must print exactly one line (one JSON object): {out}"
    );
    serde_json::from_str(trimmed)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {out}"))
}

fn u64_of(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("`{key}` missing or not an unsigned integer in {v}"))
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("`{key}` missing or not a string in {v}"))
}

fn sum_over_workers(status: &Value, key: &str) -> u64 {
    workers_of(status).iter().map(|w| u64_of(w, key)).sum()
}

fn pids_in_state(status: &Value, state: &str) -> BTreeSet<u32> {
    workers_of(status)
        .iter()
        .filter(|w| str_of(w, "state") == state)
        .map(|w| u64_of(w, "pid") as u32)
        .collect()
}

fn all_worker_pids(status: &Value) -> BTreeSet<u32> {
    workers_of(status)
        .iter()
        .map(|w| u64_of(w, "pid") as u32)
        .collect()
}

/// One GET with `Connection: close` on a fresh connection; the body, or why it failed.
fn try_get(addr: SocketAddr) -> Result<String, String> {
    let mut c = HttpClient::try_connect(addr).map_err(|e| format!("connect: {e}"))?;
    c.try_send(b"GET / HTTP/1.1\r\nHost: ctl\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let resp = c
        .try_read_response(true, false)
        .map_err(|e| format!("response: {e}"))?;
    if resp.status != 200 {
        return Err(format!("status {} body {:?}", resp.status, resp.body_str()));
    }
    Ok(resp.body_str())
}

/// When a request started, and its body or why it failed.
type Outcome = (Instant, Result<String, String>);

/// A client thread sending requests back to back (a fresh connection each) until stopped.
struct Traffic {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Outcome>>>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(addr: SocketAddr) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (s, l) = (stop.clone(), log.clone());
        let handle = thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let started = Instant::now();
                let result = try_get(addr);
                l.lock().unwrap().push((started, result));
            }
        });
        let t = Traffic {
            stop,
            log,
            handle: Some(handle),
        };
        assert!(
            wait_until(DEADLINE, || t.count() >= 5),
            "the client thread got no responses"
        );
        t
    }

    fn count(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// Stop, and return every (start time, outcome).
    fn finish(mut self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            h.join().expect("client thread panicked");
        }
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn assert_no_failures(log: &[Outcome], what: &str, z: &Zentinel) {
    let failures: Vec<&String> = log.iter().filter_map(|(_, r)| r.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{what}: {} of {} requests failed, first: {:?}\n{}",
        failures.len(),
        log.len(),
        failures.first(),
        z.log()
    );
}

/// A TCP connection through the proxy's TCP listener to the echo backend, proven
/// established end to end by an echo round trip.
fn open_tunnel(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect_timeout(&addr, DEADLINE).expect("connect to the tcp listener");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).expect("echo through the tunnel");
    assert_eq!(&buf, b"ping");
    s
}

/// Whether `addr` refuses connections (nothing listens there any more).
fn refuses(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err()
}

// ---------------------------------------------------------------------------------------------

#[test]
fn status_table_and_json_show_the_real_processes() {
    let z = Zentinel::start(&static_config(2, free_port(), "A"));
    let children: BTreeSet<u32> = z.worker_pids().into_iter().collect();
    assert_eq!(children.len(), 2);

    let status = status_json(&z);
    let master = &status["master"];
    for key in [
        "pid",
        "version",
        "generation",
        "binary",
        "uptime_s",
        "config",
    ] {
        assert!(master.get(key).is_some(), "master lacks `{key}`: {status}");
    }
    assert_eq!(u64_of(master, "pid"), u64::from(z.pid));
    assert_eq!(str_of(master, "version"), env!("CARGO_PKG_VERSION"));
    let config_path = z.config_path.as_ref().unwrap().display().to_string();
    assert_eq!(str_of(master, "config"), config_path);
    assert!(
        str_of(master, "binary").contains("zentinel"),
        "master binary: {status}"
    );

    let workers = workers_of(&status);
    for w in &workers {
        for key in [
            "id",
            "pid",
            "generation",
            "version",
            "binary",
            "state",
            "uptime_s",
            "active_connections",
            "accepted_total",
            "requests_total",
            "errors_total",
        ] {
            assert!(w.get(key).is_some(), "worker lacks `{key}`: {w}");
        }
        assert_eq!(str_of(w, "state"), "running", "{w}");
        assert_eq!(str_of(w, "version"), env!("CARGO_PKG_VERSION"));
        assert_eq!(u64_of(w, "generation"), u64_of(master, "generation"));
    }
    let ids: BTreeSet<u64> = workers.iter().map(|w| u64_of(w, "id")).collect();
    assert_eq!(ids, BTreeSet::from([0, 1]), "worker ids: {status}");
    // Exactly the master's real children, read from /proc.
    assert_eq!(all_worker_pids(&status), children, "{status}");

    let table = z.ctl(&["status"]);
    assert!(table.success(), "status: {table}");
    assert!(
        table.stdout.contains(&format!("pid {}", z.pid)),
        "table lacks the master pid: {table}"
    );
    assert!(table.stdout.contains(&config_path), "{table}");
    let header = table
        .stdout
        .lines()
        .find(|l| l.starts_with("ID"))
        .unwrap_or_else(|| panic!("no worker header: {table}"));
    for column in [
        "PID", "GEN", "VERSION", "STATE", "UPTIME", "ACTIVE", "ACCEPTED", "REQUESTS", "ERRORS",
    ] {
        assert!(header.contains(column), "header lacks {column}: {header}");
    }
    let row_pids: BTreeSet<u32> = table
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("ID"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect();
    assert_eq!(row_pids, children, "table rows: {table}");
}

#[test]
fn requests_total_counts_exactly_the_requests_sent() {
    let z = Zentinel::start(&static_config(2, free_port(), "A"));
    let before = status_json(&z);
    let n = 37;
    // Keep-alive and one-shot connections both.
    let mut keep_alive = z.client();
    for i in 0..n {
        if i % 2 == 0 {
            let resp = keep_alive.get("/", "ctl");
            assert_eq!(resp.status, 200);
        } else {
            assert_eq!(try_get(z.addr()), Ok("A".to_owned()));
        }
    }
    drop(keep_alive);
    let after = status_json(&z);
    assert_eq!(
        sum_over_workers(&after, "requests_total") - sum_over_workers(&before, "requests_total"),
        n,
        "requests_total delta after {n} requests\nbefore: {before}\nafter: {after}"
    );
    assert!(
        sum_over_workers(&after, "accepted_total") > sum_over_workers(&before, "accepted_total"),
        "accepted_total did not move: {after}"
    );
    assert_eq!(
        sum_over_workers(&after, "errors_total"),
        sum_over_workers(&before, "errors_total"),
        "errors_total moved with only good requests: {after}"
    );
}

#[test]
fn active_connections_follow_open_connections() {
    let z = Zentinel::start(&static_config(2, free_port(), "A"));
    let active = || sum_over_workers(&status_json(&z), "active_connections");
    assert!(
        wait_until(DEADLINE, || active() == 0),
        "active_connections not 0 on an idle proxy: {}",
        status_json(&z)
    );
    // A served request proves each connection was accepted by a worker.
    let mut held: Vec<HttpClient> = (0..3).map(|_| z.client()).collect();
    for c in &mut held {
        assert_eq!(c.get("/", "ctl").status, 200);
    }
    let mut last = 0;
    assert!(
        wait_until(DEADLINE, || {
            last = active();
            last == 3
        }),
        "3 connections held open, active_connections sum = {last}"
    );
    drop(held);
    assert!(
        wait_until(DEADLINE, || {
            last = active();
            last == 0
        }),
        "connections closed, active_connections sum still {last}"
    );
}

#[test]
fn status_watch_redraws_until_interrupted() {
    let z = Zentinel::start(&static_config(1, free_port(), "A"));
    let mut command = Command::new(ctl_bin());
    command
        .arg("--socket")
        .arg(z.control_socket())
        .args(["status", "--json", "--watch", "0.2"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // Ctrl-C at a terminal: SIGINT with its default action. A test run started in the
    // background by a non-interactive shell inherits SIGINT ignored, which would make the
    // watch (rightly) survive it.
    // SAFETY: between fork and exec only signal(2), which is async-signal-safe, is called.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
    let mut child = command.spawn().expect("spawn zentinel-ctl");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut pids = Vec::new();
    for _ in 0..3 {
        let line = rx
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("--watch printed fewer than 3 reports"));
        let v: Value = serde_json::from_str(&line).expect("each --watch --json line is JSON");
        pids.push(u64_of(&v["master"], "pid"));
    }
    assert!(pids.iter().all(|p| *p == u64::from(z.pid)));
    assert!(
        child.try_wait().unwrap().is_none(),
        "--watch exited on its own"
    );
    send_signal(child.id(), nix::sys::signal::Signal::SIGINT);
    assert!(
        wait_until(DEADLINE, || child.try_wait().unwrap().is_some()),
        "--watch survived Ctrl-C"
    );
}

#[test]
fn socket_from_config_and_env() {
    let dir = new_runtime_dir();
    let socket = dir.join("custom.sock");
    let port = free_port();
    let config = static_config(1, port, "A").replace(
        "graceful-shutdown-timeout-secs 30",
        &format!(
            "graceful-shutdown-timeout-secs 30\n    control-socket \"{}\"",
            socket.display()
        ),
    );
    let z = Zentinel::start(&config);
    assert!(
        wait_until(DEADLINE, || socket.exists()),
        "the master did not create its configured control socket {}",
        socket.display()
    );
    // -c CONFIG: the socket comes from `system { control-socket }`.
    let mut cmd = Command::new(ctl_bin());
    cmd.arg("-c")
        .arg(z.config_path.as_ref().unwrap())
        .args(["status", "--json"]);
    let out = run_with_deadline(cmd, CTL_DEADLINE);
    assert!(out.success(), "ctl -c CONFIG status: {out}");
    assert!(out.stdout.contains(&format!("\"pid\":{}", z.pid)), "{out}");
    // ZENTINEL_SOCKET alone.
    let mut cmd = Command::new(ctl_bin());
    cmd.env("ZENTINEL_SOCKET", &socket).arg("status");
    let out = run_with_deadline(cmd, CTL_DEADLINE);
    assert!(out.success(), "ZENTINEL_SOCKET=... status: {out}");
    drop(z);
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn no_master_is_a_one_line_error_naming_the_socket() {
    let dir = new_runtime_dir();
    let socket = dir.join("zentinel.sock");
    let out = ctl(&socket, &["status"]);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stdout.is_empty(), "{out}");
    let line = out.stderr.trim_end();
    assert_eq!(line.lines().count(), 1, "one line expected: {out}");
    assert!(line.starts_with("zentinel-ctl: "), "{out}");
    assert!(line.contains(&socket.display().to_string()), "{out}");
    assert!(line.contains("--socket"), "no hint: {out}");
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn reload_switches_routing_without_a_failed_request() {
    let z = Zentinel::start(&static_config(2, free_port(), "A"));
    let port = z.addr().port();
    let traffic = Traffic::start(z.addr());
    let config_path = z.config_path.clone().unwrap();

    fs::write(&config_path, static_config(2, port, "B")).unwrap();
    let out = z.ctl(&["reload"]);
    assert!(out.success(), "reload: {out}\n{}", z.log());
    let reloaded_at = Instant::now();
    assert_eq!(try_get(z.addr()), Ok("B".to_owned()), "{}", z.log());
    let n = traffic.count();
    assert!(wait_until(DEADLINE, || traffic.count() >= n + 20));

    // `--config` with a relative path, from another working directory: sent absolute.
    let dir = new_runtime_dir();
    fs::write(dir.join("c.kdl"), static_config(2, port, "C")).unwrap();
    let mut cmd = Command::new(ctl_bin());
    cmd.current_dir(&dir)
        .arg("--socket")
        .arg(z.control_socket())
        .args(["reload", "--config", "c.kdl"]);
    let out = run_with_deadline(cmd, CTL_DEADLINE);
    assert!(out.success(), "reload --config c.kdl: {out}\n{}", z.log());
    let second_reload_at = Instant::now();
    assert_eq!(try_get(z.addr()), Ok("C".to_owned()));
    let n = traffic.count();
    assert!(wait_until(DEADLINE, || traffic.count() >= n + 20));
    let status = status_json(&z);
    assert_eq!(
        str_of(&status["master"], "config"),
        dir.join("c.kdl").display().to_string(),
        "status should name the config now running"
    );

    let log = traffic.finish();
    assert_no_failures(&log, "requests during reloads", &z);
    for (started, result) in &log {
        let body = result.as_ref().unwrap();
        if *started > second_reload_at {
            assert_eq!(body, "C", "a request started after the second reload");
        } else if *started > reloaded_at {
            assert!(body == "B" || body == "C", "after the first reload: {body}");
        }
    }
    assert!(log.iter().any(|(_, r)| r.as_deref() == Ok("A")));
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn bad_reload_names_the_key_and_keeps_the_old_config() {
    let z = Zentinel::start(&static_config(1, free_port(), "A"));
    let config_path = z.config_path.clone().unwrap();
    let good = fs::read_to_string(&config_path).unwrap();
    // Line of the bad key: after the `default-route` line of the listener.
    let bad = good.replacen(
        "default-route \"r\"\n",
        "default-route \"r\"\n        bogus-key 1\n",
        1,
    );
    let line = bad.lines().position(|l| l.contains("bogus-key")).unwrap() + 1;
    fs::write(&config_path, &bad).unwrap();
    let traffic = Traffic::start(z.addr());
    let out = z.ctl(&["reload"]);
    assert_eq!(out.code, Some(1), "a bad reload must fail: {out}");
    let err = out.stderr.trim_end();
    assert_eq!(err.lines().count(), 1, "one line: {out}");
    assert!(err.starts_with("zentinel-ctl: "), "{out}");
    assert!(err.contains("bogus-key"), "the key is not named: {out}");
    let location = format!("{}:{line}:9", config_path.display());
    assert!(err.contains(&location), "no {location} in: {out}");

    let n = traffic.count();
    assert!(wait_until(DEADLINE, || traffic.count() >= n + 20));
    let log = traffic.finish();
    assert_no_failures(&log, "requests around a failed reload", &z);
    assert!(
        log.iter().all(|(_, r)| r.as_deref() == Ok("A")),
        "the old config must keep serving"
    );
    assert!(z.ctl(&["status"]).success());
    assert_eq!(z.worker_pids().len(), 1);
}

#[test]
fn reload_adds_and_removes_listeners() {
    let (p1, p2) = (free_port(), free_port());
    let z = Zentinel::start(&static_config_ports(2, &[p1], "A"));
    let addr2: SocketAddr = format!("127.0.0.1:{p2}").parse().unwrap();
    assert!(refuses(addr2));
    let config_path = z.config_path.clone().unwrap();

    fs::write(&config_path, static_config_ports(2, &[p1, p2], "A")).unwrap();
    let out = z.ctl(&["reload"]);
    assert!(
        out.success(),
        "reload adding a listener: {out}\n{}",
        z.log()
    );
    for _ in 0..10 {
        assert_eq!(
            try_get(addr2),
            Ok("A".to_owned()),
            "new listener {addr2}\n{}",
            z.log()
        );
    }

    fs::write(&config_path, static_config_ports(2, &[p1], "A")).unwrap();
    let out = z.ctl(&["reload"]);
    assert!(
        out.success(),
        "reload removing a listener: {out}\n{}",
        z.log()
    );
    assert!(
        wait_until(DEADLINE, || refuses(addr2)),
        "removed listener {addr2} still accepts\n{}",
        z.log()
    );
    assert_eq!(try_get(z.addr()), Ok("A".to_owned()));
}

#[test]
fn worker_restart_replaces_one_worker_gracefully() {
    let echo = Backend::start_echo("echo");
    let (http, tcp) = (free_port(), free_port());
    let z = Zentinel::start(&http_and_tcp_config(1, http, tcp, &echo));
    let tcp_addr: SocketAddr = format!("127.0.0.1:{tcp}").parse().unwrap();
    let before = status_json(&z);
    let old_pid = u64_of(&workers_of(&before)[0], "pid") as u32;
    assert_eq!(z.worker_pids(), vec![old_pid]);

    // A tunnel on the only worker keeps it draining after the restart.
    let mut tunnel = open_tunnel(tcp_addr);
    let traffic = Traffic::start(z.addr());
    let out = z.ctl(&["worker", "restart", "0"]);
    assert!(out.success(), "worker restart 0: {out}\n{}", z.log());

    let after = status_json(&z);
    let current: Vec<Value> = workers_of(&after)
        .into_iter()
        .filter(|w| str_of(w, "state") == "running")
        .collect();
    assert_eq!(current.len(), 1, "one running worker: {after}");
    assert_eq!(u64_of(&current[0], "id"), 0);
    let new_pid = u64_of(&current[0], "pid") as u32;
    assert_ne!(
        new_pid, old_pid,
        "worker 0 has the same pid after a restart"
    );
    assert_eq!(
        pids_in_state(&after, "draining"),
        BTreeSet::from([old_pid]),
        "the old worker must be listed as draining: {after}"
    );
    let children: BTreeSet<u32> = z.worker_pids().into_iter().collect();
    assert_eq!(children, BTreeSet::from([old_pid, new_pid]), "{after}");
    // The draining worker still carries its tunnel.
    tunnel.write_all(b"pong").unwrap();
    let mut buf = [0u8; 4];
    tunnel
        .read_exact(&mut buf)
        .expect("tunnel through a draining worker");
    assert_eq!(&buf, b"pong");

    drop(tunnel);
    assert!(
        wait_until(DEADLINE, || !is_alive(old_pid)),
        "old worker {old_pid} did not exit after its last connection closed\n{}",
        z.log()
    );
    let mut last = Value::Null;
    assert!(
        wait_until(DEADLINE, || {
            last = status_json(&z);
            all_worker_pids(&last) == BTreeSet::from([new_pid])
        }),
        "status still lists the old worker: {last}"
    );
    let n = traffic.count();
    assert!(wait_until(DEADLINE, || traffic.count() >= n + 10));
    assert_no_failures(&traffic.finish(), "requests during worker restart", &z);
    assert_eq!(z.worker_pids(), vec![new_pid]);

    let out = z.ctl(&["worker", "restart", "7"]);
    assert_eq!(out.code, Some(1), "restart of a missing worker: {out}");
    assert!(out.stderr.contains('7'), "{out}");
}

#[test]
fn stop_drains_and_exits_with_nothing_left() {
    let z = Zentinel::start(&static_config(2, free_port(), "A"));
    stop_and_check(z, &["stop"], Duration::from_secs(15));
}

#[test]
fn stop_fast_drops_connections_at_once() {
    let echo = Backend::start_echo("echo");
    let (http, tcp) = (free_port(), free_port());
    let z = Zentinel::start(&http_and_tcp_config(2, http, tcp, &echo));
    let mut tunnel = open_tunnel(format!("127.0.0.1:{tcp}").parse().unwrap());
    let started = Instant::now();
    // The 30 s drain would hold the tunnel; --fast must not wait for it.
    stop_and_check(z, &["stop", "--fast"], Duration::from_secs(10));
    assert!(started.elapsed() < Duration::from_secs(10));
    let mut buf = [0u8; 1];
    tunnel.set_read_timeout(Some(DEADLINE)).unwrap();
    let read = tunnel.read(&mut buf);
    assert!(
        matches!(&read, Ok(0))
            || matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "the tunnel survived a fast stop: {read:?}"
    );
}

#[test]
fn stop_drain_timeout_bounds_the_drain() {
    let echo = Backend::start_echo("echo");
    let (http, tcp) = (free_port(), free_port());
    let z = Zentinel::start(&http_and_tcp_config(1, http, tcp, &echo));
    let _tunnel = open_tunnel(format!("127.0.0.1:{tcp}").parse().unwrap());
    let started = Instant::now();
    // The config says 30 s; the tunnel never ends on its own; 1 s must win.
    stop_and_check(
        z,
        &["stop", "--drain-timeout", "1s"],
        Duration::from_secs(10),
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "stopped in {took:?}: the tunnel was not drained"
    );
}

/// Run the stop command; the master must exit 0 within `within`, leave no worker behind and
/// remove its socket.
fn stop_and_check(mut z: Zentinel, args: &[&str], within: Duration) {
    let workers = z.worker_pids();
    assert!(!workers.is_empty());
    let out = z.ctl(args);
    assert!(out.success(), "{args:?}: {out}\n{}", z.log());
    let status = z.wait_exit(within);
    assert!(
        status.is_some_and(|s| s.success()),
        "master after {args:?}: {status:?}\n{}",
        z.log()
    );
    for pid in z.seen_workers() {
        assert!(
            wait_until(DEADLINE, || !is_alive(pid)),
            "worker {pid} outlived the master\n{}",
            z.log()
        );
    }
    assert!(
        !z.control_socket().exists(),
        "the master left its control socket behind"
    );
    let out = z.ctl(&["status"]);
    assert_eq!(out.code, Some(1), "status after stop: {out}");
}

#[test]
fn a_client_of_another_uid_is_refused() {
    let z = Zentinel::start(&static_config(1, free_port(), "A"));
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: not root, so cannot run a client as uid 65534");
        return;
    }
    let probe = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(ctl_bin())
        .arg("--version")
        .output();
    match probe {
        Err(e) => {
            eprintln!("skipped: setpriv is not available ({e})");
            return;
        }
        Ok(o) if !o.status.success() => {
            eprintln!(
                "skipped: uid 65534 cannot run {} ({})",
                ctl_bin().display(),
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return;
        }
        Ok(_) => {}
    }
    // Let the filesystem through, so only the master's peer-credential check can refuse.
    let socket = z.control_socket();
    fs::set_permissions(&z.runtime_dir, fs::Permissions::from_mode(0o711)).unwrap();
    let as_nobody = || {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(ctl_bin())
            .arg("--socket")
            .arg(&socket)
            .arg("status");
        run_with_deadline(cmd, CTL_DEADLINE)
    };
    // The socket's own mode (0600) stops uid 65534 first.
    let out = as_nobody();
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("permission denied"), "{out}");
    assert_eq!(out.stderr.lines().count(), 1, "{out}");
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_nobody();
    assert_ne!(out.code, Some(0), "uid 65534 was served: {out}");
    assert!(out.stdout.is_empty(), "{out}");
    assert!(out.stderr.starts_with("zentinel-ctl: "), "{out}");
    assert!(
        wait_until(DEADLINE, || z.log_text().contains("65534")),
        "the master log does not show the refusal of uid 65534\n{}",
        z.log()
    );
    assert!(z.ctl(&["status"]).success(), "{}", z.log());
    assert_eq!(try_get(z.addr()), Ok("A".to_owned()));
}

/// Connect and send a Hello with `protocol_version`.
fn hello_channel(socket: &Path, protocol_version: u32) -> Channel {
    let stream = UnixStream::connect(socket).expect("connect to the control socket");
    let mut channel = Channel::new(stream);
    channel
        .send(
            &ControlRequest::Hello(Hello {
                protocol_version,
                pid: std::process::id(),
                software_version: "test".to_owned(),
            }),
            &[],
        )
        .expect("send hello");
    channel
}

#[test]
fn protocol_version_mismatch_is_a_clean_failure() {
    let z = Zentinel::start(&static_config(1, free_port(), "A"));
    let mut channel = hello_channel(&z.control_socket(), 999);
    let frame = channel
        .recv_timeout(DEADLINE)
        .expect("an answer to the hello");
    match frame
        .deserialize::<ControlResponse>()
        .expect("a valid response")
    {
        ControlResponse::Failed { message } => {
            assert!(message.contains("999"), "{message}");
            assert!(
                message.contains(&CONTROL_PROTOCOL_VERSION.to_string()),
                "the master's version is not named: {message}"
            );
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    let end = channel.recv_timeout(DEADLINE);
    assert!(
        matches!(&end, Err(e) if e.is_closed()),
        "connection not closed after the mismatch: {end:?}"
    );
    // The right version on a fresh connection works, the master is unharmed.
    let mut channel = hello_channel(&z.control_socket(), CONTROL_PROTOCOL_VERSION);
    let frame = channel.recv_timeout(DEADLINE).expect("hello answer");
    assert!(matches!(
        frame.deserialize::<ControlResponse>().unwrap(),
        ControlResponse::Hello(_)
    ));
    channel.send(&ControlRequest::Status, &[]).unwrap();
    let frame = channel.recv_timeout(DEADLINE).expect("status answer");
    match frame.deserialize::<ControlResponse>().unwrap() {
        ControlResponse::Status(report) => assert_eq!(report.master.pid, z.pid),
        other => panic!("expected Status, got {other:?}"),
    }
    assert!(z.ctl(&["status"]).success());
    assert_eq!(try_get(z.addr()), Ok("A".to_owned()));
}

/// Writes `bytes` to a fresh control connection; true if the master closes it in time.
fn closed_after(socket: &Path, bytes: &[u8]) -> bool {
    let mut s = UnixStream::connect(socket).expect("connect to the control socket");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    // The master may close before taking everything: a failed write is fine.
    let _ = s.write_all(bytes);
    let deadline = Instant::now() + DEADLINE;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            // A best-effort `Failed` frame may come first.
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
    false
}

#[test]
fn garbage_on_the_control_socket_closes_only_that_connection() {
    let z = Zentinel::start(&static_config(1, free_port(), "A"));
    let socket = z.control_socket();
    // A length far above the request limit.
    assert!(
        closed_after(&socket, &[0xff; 64]),
        "huge frame length: connection not closed"
    );
    // A plausible length with a payload that is no archived request.
    let mut frame = Vec::new();
    frame.extend_from_slice(&32u32.to_le_bytes());
    frame.extend_from_slice(&0u32.to_le_bytes());
    frame.extend_from_slice(&[0xa5; 32]);
    assert!(
        closed_after(&socket, &frame),
        "invalid payload: connection not closed"
    );
    // HTTP on the control socket.
    assert!(
        closed_after(&socket, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        "HTTP bytes: connection not closed"
    );
    assert!(is_alive(z.pid), "the master died\n{}", z.log());
    let out = z.ctl(&["status"]);
    assert!(out.success(), "status after garbage: {out}\n{}", z.log());
    assert_eq!(try_get(z.addr()), Ok("A".to_owned()));
}

#[test]
fn oversized_truncated_silent_and_surplus_control_clients_never_hurt_the_master() {
    let z = Zentinel::start(&static_config(1, free_port(), "A"));
    let socket = z.control_socket();

    // A well-formed header announcing one byte more than the request limit, payload following.
    let len = MAX_CONTROL_REQUEST_FRAME + 1;
    let mut frame = Vec::new();
    frame.extend_from_slice(&(len as u32).to_le_bytes());
    frame.extend_from_slice(&0u32.to_le_bytes());
    frame.extend_from_slice(&vec![0u8; len]);
    assert!(
        closed_after(&socket, &frame),
        "oversized frame: connection not closed"
    );

    // A frame cut short: the header promises 100 bytes, 40 come, then the client half-closes.
    let mut s = UnixStream::connect(&socket).expect("connect");
    let mut frame = Vec::new();
    frame.extend_from_slice(&100u32.to_le_bytes());
    frame.extend_from_slice(&0u32.to_le_bytes());
    frame.extend_from_slice(&[0x11; 40]);
    s.write_all(&frame).expect("write a truncated frame");
    s.shutdown(std::net::Shutdown::Write).expect("half-close");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut rest = Vec::new();
    let read = s.read_to_end(&mut rest);
    assert!(
        read.is_ok()
            || read
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "truncated frame: connection not closed cleanly: {read:?}"
    );

    // A client that connects and never writes does not block anyone else...
    let silent_since = Instant::now();
    let mut silent = UnixStream::connect(&socket).expect("connect");
    let out = z.ctl(&["status"]);
    assert!(out.success(), "status beside a silent client: {out}");

    // ...and clients beyond the limit (128) are turned away at once, the others kept.
    let surplus_clients: Vec<UnixStream> = (0..140)
        .map_while(|_| UnixStream::connect(&socket).ok())
        .collect();
    for c in &surplus_clients {
        c.set_nonblocking(true).expect("non-blocking");
    }
    let closed = || {
        surplus_clients
            .iter()
            .filter(|c| {
                let mut c = *c;
                matches!(c.read(&mut [0u8; 64]), Ok(0))
            })
            .count()
    };
    // The silent client holds one of the 128 places.
    let surplus = surplus_clients.len() - (128 - 1);
    assert!(
        wait_until(Duration::from_secs(5), || closed() >= surplus),
        "only {} of {surplus} control clients beyond the limit were turned away",
        closed()
    );
    assert_eq!(
        closed(),
        surplus,
        "clients within the limit were closed too"
    );
    drop(surplus_clients);
    let out = z.ctl(&["status"]);
    assert!(
        out.success(),
        "status after the surplus clients left: {out}"
    );

    // The silent client is dropped by the idle timeout (10 s), not held forever.
    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let end = silent.read(&mut [0u8; 64]);
    assert!(
        matches!(end, Ok(0)),
        "silent client: expected the master to close it, got {end:?}"
    );
    let waited = silent_since.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(20),
        "silent client closed after {waited:?}, the idle timeout is 10 s"
    );
    assert!(is_alive(z.pid), "the master died\n{}", z.log());
    assert_eq!(try_get(z.addr()), Ok("A".to_owned()));
}

#[test]
fn a_second_master_on_the_same_socket_refuses_to_start() {
    let dir = new_runtime_dir();
    let z = Zentinel::start_in(&static_config(1, free_port(), "A"), &dir);
    let config2 = temp_path("second.kdl");
    fs::write(&config2, static_config(1, free_port(), "B")).unwrap();
    let out = run_with_deadline(master_command(Some(&config2), &dir), DEADLINE);
    assert_eq!(
        out.code,
        Some(1),
        "the second master must exit non-zero at once: {out}"
    );
    let all = out.said();
    assert!(
        all.contains(&z.control_socket().display().to_string()),
        "the message must name the socket: {out}"
    );
    assert!(
        all.to_lowercase().contains("already") || all.contains("another"),
        "the message must say a master is running: {out}"
    );
    let status = status_json(&z);
    assert_eq!(u64_of(&status["master"], "pid"), u64::from(z.pid));
    assert_eq!(try_get(z.addr()), Ok("A".to_owned()));
    drop(z);
    let _ = fs::remove_file(config2);
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn a_stale_socket_of_a_killed_master_is_replaced() {
    let dir = new_runtime_dir();
    let z = Zentinel::start_in(&static_config(1, free_port(), "A"), &dir);
    let socket = z.control_socket();
    assert!(socket.exists());
    // Drop SIGKILLs the master and its workers: nothing removes the socket file.
    drop(z);
    assert!(
        socket.exists(),
        "a SIGKILLed master cannot remove its socket"
    );
    let z = Zentinel::start_in(&static_config(1, free_port(), "B"), &dir);
    let status = status_json(&z);
    assert_eq!(u64_of(&status["master"], "pid"), u64::from(z.pid));
    assert_eq!(try_get(z.addr()), Ok("B".to_owned()));
    drop(z);
    let _ = fs::remove_dir_all(dir);
}
