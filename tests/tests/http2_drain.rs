//! The graceful HTTP/2 drain (issue 16) on real processes, frame by frame with a raw h2c
//! client: on `zentinel-ctl upgrade --rolling` and on `zentinel-ctl stop`, a connection gets
//! the first GOAWAY (last stream id 2^31-1) and a PING, then, once the PING is answered, the
//! final GOAWAY with the real last stream id; the stream in flight finishes with its whole
//! body; a new connection goes to a new worker; only the drain deadline cuts a stream
//! (RST_STREAM CANCEL, logged). And h2load across three rolling upgrades: no stream fails.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use zentinel_tests::h2frames::*;
use zentinel_tests::*;

const DEADLINE: Duration = Duration::from_secs(20);
const UPGRADE_DEADLINE: Duration = Duration::from_secs(40);

fn config(port: u16, backend: &Backend, workers: u32, drain_secs: u32) -> String {
    format!(
        r#"system {{
    worker-processes {workers}
    graceful-shutdown-timeout-secs {drain_secs}
}}
listeners {{
    listener "main" {{
        address "127.0.0.1:{port}"
        protocol "h2"
        max-concurrent-streams 64
    }}
}}
routes {{
    route "status" {{
        priority "critical"
        matches {{ path "/_status" }}
        builtin-handler "status"
    }}
    route "all" {{
        matches {{ path-prefix "/" }}
        upstream "be"
    }}
}}
upstreams {{
    upstream "be" {{
        target "{target}"
    }}
}}
"#,
        target = backend.target()
    )
}

/// The worker pid a `builtin-handler "status"` body names.
fn pid_in(body: &[u8]) -> Option<u32> {
    let text = String::from_utf8_lossy(body);
    let at = text.find("\"pid\":")? + "\"pid\":".len();
    text[at..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

/// Which worker serves a new connection.
fn served_by(addr: SocketAddr) -> u32 {
    let mut c = H2Conn::connect(addr, &[]);
    c.send(&get(1, "/_status"));
    let r = c.response(1, DEADLINE);
    assert_eq!(r.status, Some(200), "{r:?}");
    pid_in(&r.body).unwrap_or_else(|| panic!("no pid in {:?}", String::from_utf8_lossy(&r.body)))
}

fn upgrade_in_background(
    z: &Zentinel,
    binary: &Path,
    drain: &str,
) -> thread::JoinHandle<CtlOutput> {
    let socket = z.control_socket();
    let binary = binary.display().to_string();
    let drain = drain.to_owned();
    thread::spawn(move || {
        ctl_within(
            &socket,
            &[
                "upgrade",
                "--rolling",
                "--binary",
                &binary,
                "--drain-timeout",
                &drain,
            ],
            UPGRADE_DEADLINE,
        )
    })
}

fn stop_in_background(z: &Zentinel, extra: &[&str]) -> thread::JoinHandle<CtlOutput> {
    let socket = z.control_socket();
    let mut args = vec!["stop".to_owned()];
    args.extend(extra.iter().map(|a| a.to_string()));
    thread::spawn(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ctl_within(&socket, &args, UPGRADE_DEADLINE)
    })
}

/// The two-step GOAWAY among `frames`, in order: GOAWAY(2^31-1, NO_ERROR), the server's
/// PING (answered by the client), GOAWAY(`last`, NO_ERROR).
fn assert_two_step_goaway(frames: &[Frame], last: u32, what: &str) {
    let first = frames
        .iter()
        .position(|f| f.goaway() == Some((MAX_STREAM_ID, NO_ERROR)));
    let ping = frames
        .iter()
        .position(|f| f.kind == PING && f.flags & ACK == 0);
    let last_goaway = frames
        .iter()
        .position(|f| f.goaway() == Some((last, NO_ERROR)));
    match (first, ping, last_goaway) {
        (Some(a), Some(b), Some(c)) if a < b && b < c => {}
        _ => panic!(
            "{what}: expected GOAWAY({MAX_STREAM_ID}), PING, GOAWAY({last}) in that order: \
             {frames:?}"
        ),
    }
    let goaways = goaways(frames);
    assert_eq!(goaways.len(), 2, "{what}: exactly two GOAWAYs: {goaways:?}");
}

/// A stream in flight when the drain starts finishes with its whole body, after the
/// two-step GOAWAY; the connection then closes (`frames`, `end`: all that was read).
fn assert_drained_gracefully(frames: &[Frame], end: End, stream: u32, delay_ms: u64, what: &str) {
    assert_eq!(
        end,
        End::Closed,
        "{what}: the connection did not close: {frames:?}"
    );
    assert_two_step_goaway(frames, stream, what);
    assert!(
        !frames.iter().any(|f| f.kind == RST_STREAM),
        "{what}: no stream is cut: {frames:?}"
    );
    let body: Vec<u8> = frames
        .iter()
        .filter(|f| f.kind == DATA && f.stream == stream)
        .flat_map(|f| f.payload.clone())
        .collect();
    assert_eq!(
        String::from_utf8_lossy(&body),
        format!("delayed {delay_ms}ms\n"),
        "{what}: the stream's whole body"
    );
    assert!(
        frames.iter().any(|f| f.stream == stream && f.end_stream()),
        "{what}: END_STREAM"
    );
}

#[test]
fn rolling_upgrade_drains_an_http2_connection_in_two_steps() {
    let backend = Backend::start("h2drain");
    let z = Zentinel::start(&config(free_port(), &backend, 1, 30));
    let mut files = TempFiles::default();
    let copy = files.add(binary_copy("h2drain"));
    let mut c = H2Conn::connect(z.addr(), &[]);
    c.send(&get(1, "/_status"));
    let r = c.response(1, DEADLINE);
    let old = pid_in(&r.body).expect("old worker pid");
    c.send(&get(3, "/delay/3000"));

    let upgrade = upgrade_in_background(&z, &copy, "30s");
    let first = c.read_until(DEADLINE, |f| f.goaway().is_some());
    let mut frames = first.unwrap_or_else(|(f, e)| panic!("no GOAWAY ({e:?}): {f:?}"));
    assert_eq!(
        frames.last().and_then(Frame::goaway),
        Some((MAX_STREAM_ID, NO_ERROR)),
        "the first GOAWAY announces the largest stream id"
    );
    // The old worker stopped accepting when it sent it: a new connection is a new worker's.
    let new = served_by(z.addr());
    assert_ne!(
        new, old,
        "a connection opened after the GOAWAY went to the old worker"
    );
    assert!(z.worker_pids().contains(&new));

    let (rest, end) = c.read_to_end(DEADLINE);
    frames.extend(rest);
    assert_drained_gracefully(&frames, end, 3, 3000, "rolling upgrade");
    let out = upgrade.join().expect("upgrade thread");
    assert!(out.success(), "{out}\n{}", z.log());
    assert!(
        wait_until(DEADLINE, || !is_alive(old)),
        "the old worker exits once its last stream is done"
    );
}

#[test]
fn stop_drains_an_http2_connection_in_two_steps() {
    let backend = Backend::start("h2stop");
    let mut z = Zentinel::start(&config(free_port(), &backend, 1, 30));
    let mut c = H2Conn::connect(z.addr(), &[]);
    c.send(&get(1, "/delay/2000"));
    // The stream is in flight (the backend saw it) before the stop.
    assert!(wait_until(DEADLINE, || backend.stats().0 >= 1));
    let stop = stop_in_background(&z, &[]);
    let (frames, end) = c.read_to_end(DEADLINE);
    assert_drained_gracefully(&frames, end, 1, 2000, "stop");
    stop.join().expect("stop thread").assert_success("stop");
    assert!(z.wait_exit(DEADLINE).is_some_and(|s| s.success()));
}

/// Only the drain deadline cuts a stream: RST_STREAM(CANCEL) on it, and a log line.
fn assert_cut_at_deadline(c: &mut H2Conn, z: &Zentinel, started: Instant, what: &str) {
    let (frames, end) = c.read_to_end(DEADLINE);
    let took = started.elapsed();
    assert_eq!(end, End::Closed, "{what}: {frames:?}");
    assert_two_step_goaway(&frames, 1, what);
    let cut = frames
        .iter()
        .find(|f| f.kind == RST_STREAM)
        .unwrap_or_else(|| panic!("{what}: no RST_STREAM: {frames:?}\n{}", z.log()));
    assert_eq!((cut.stream, cut.rst_code()), (1, Some(CANCEL)), "{what}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "{what}: cut after {took:?}, the drain deadline is 1 s"
    );
    assert!(
        !frames.iter().any(|f| f.end_stream()),
        "{what}: the cut stream did not end normally"
    );
    assert!(
        wait_until(DEADLINE, || z
            .log_text()
            .contains("HTTP/2 streams cut (RST_STREAM CANCEL)")),
        "{what}: no log line for the cut stream\n{}",
        z.log()
    );
}

#[test]
fn the_drain_deadline_cuts_a_stream_with_rst_stream_on_upgrade_and_on_stop() {
    let backend = Backend::start("h2cut");
    let z = Zentinel::start(&config(free_port(), &backend, 1, 30));
    let mut files = TempFiles::default();
    let copy = files.add(binary_copy("h2cut"));
    let mut c = H2Conn::connect(z.addr(), &[]);
    c.send(&get(1, "/delay/20000"));
    assert!(wait_until(DEADLINE, || backend.stats().0 >= 1));
    let started = Instant::now();
    let upgrade = upgrade_in_background(&z, &copy, "1s");
    assert_cut_at_deadline(&mut c, &z, started, "upgrade --drain-timeout 1s");
    let out = upgrade.join().expect("upgrade thread");
    assert!(out.success(), "{out}");

    let mut c = H2Conn::connect(z.addr(), &[]);
    c.send(&get(1, "/delay/20000"));
    assert!(wait_until(DEADLINE, || backend.stats().0 >= 2));
    let started = Instant::now();
    let stop = stop_in_background(&z, &["--drain-timeout", "1s"]);
    assert_cut_at_deadline(&mut c, &z, started, "stop --drain-timeout 1s");
    stop.join().expect("stop thread").assert_success("stop");
}

/// A connection accepted before the drain that speaks HTTP/2 only after it began gets the
/// GOAWAY at once, and its stream is still served.
#[test]
fn a_connection_turning_http2_during_the_drain_gets_the_goaway_at_once() {
    let backend = Backend::start("h2late");
    let z = Zentinel::start(&config(free_port(), &backend, 1, 30));
    let workers = z.worker_pids();
    let worker = workers[0];
    // Held in the accept queue while the worker is stopped; the drain takes it in.
    send_signal(worker, Signal::SIGSTOP);
    assert!(wait_until(DEADLINE, || proc_state(worker)
        .is_some_and(|(s, _)| s == 'T')));
    let tcp = std::net::TcpStream::connect(z.addr()).unwrap();
    let stop = stop_in_background(&z, &[]);
    assert!(
        wait_until(DEADLINE, || z
            .log_text()
            .contains("stop requested over the control socket")),
        "{}",
        z.log()
    );
    send_signal(worker, Signal::SIGCONT);
    assert!(
        wait_until(DEADLINE, || z.log_text().contains("draining")),
        "{}",
        z.log()
    );
    let started = Instant::now();
    let mut c = H2Conn::over(tcp, &[]);
    c.send(&get(1, "/delay/500"));
    let first = c
        .read_until(DEADLINE, |f| f.goaway().is_some())
        .unwrap_or_else(|(f, e)| panic!("no GOAWAY ({e:?}): {f:?}"));
    assert_eq!(
        first.last().and_then(Frame::goaway),
        Some((MAX_STREAM_ID, NO_ERROR))
    );
    assert!(
        first.iter().all(|f| f.kind != DATA),
        "the GOAWAY came before the stream's answer, at once: {first:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(500));
    let (rest, end) = c.read_to_end(DEADLINE);
    let mut frames = first;
    frames.extend(rest);
    assert_eq!(end, End::Closed);
    assert_two_step_goaway(&frames, 1, "late HTTP/2");
    let body: Vec<u8> = frames
        .iter()
        .filter(|f| f.kind == DATA)
        .flat_map(|f| f.payload.clone())
        .collect();
    assert_eq!(body, b"delayed 500ms\n");
    stop.join().expect("stop thread").assert_success("stop");
}

/// h2load (1.52, and still upstream) never opens a new connection after an HTTP/2 GOAWAY: it
/// reconnects only after an HTTP/1 `Connection: close`. Once a GOAWAY arrives, a client with
/// `-n` counts every request it has not sent yet as failed, and one with `-D` just stops
/// sending (0 failures reported, and no traffic left after the first upgrade, which proves
/// nothing about the next two). So here each client sends all its requests at once
/// (`-n/-c` <= `-m`), clients keep coming (`-r`, one rate period apart) across three
/// rolling upgrades, and each request is slow enough to be in flight when its worker
/// drains: every one must succeed.
#[test]
fn h2load_across_three_rolling_upgrades_has_no_failed_stream() {
    let backend = Backend::start("h2load3");
    let z = Zentinel::start(&config(free_port(), &backend, 2, 30));
    let mut files = TempFiles::default();
    let copies = [
        files.add(binary_copy("h2load3-a")),
        files.add(binary_copy("h2load3-b")),
    ];
    let log = files.add(temp_path("h2load3.log"));
    let (clients, per_client) = (60, 10);
    let total = clients * per_client;
    let mut h2load = Command::new("h2load")
        .args(["-n", &total.to_string(), "-c", &clients.to_string()])
        .args([
            "-m",
            &per_client.to_string(),
            "-r",
            "3",
            "--rate-period",
            "1s",
        ])
        .arg("--log-file")
        .arg(&log)
        .arg(format!("http://{}/delay/700", z.addr()))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("h2load runs (scripts/test-deps.sh installs nghttp2-client)");
    // Let the first clients connect to the first generation.
    assert!(wait_until(DEADLINE, || backend.stats().0 >= 20));
    for round in 0..3 {
        let out = upgrade_in_background(&z, &copies[round % 2], "30s")
            .join()
            .expect("upgrade thread");
        assert!(out.success(), "round {round}: {out}\n{}", z.log());
        assert!(
            h2load.try_wait().expect("h2load status").is_none(),
            "round {round}: h2load ended before the upgrade did: in flight across three \
             upgrades means longer"
        );
    }
    let out = h2load.wait_with_output().expect("h2load output");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "h2load: {text}");
    assert!(
        text.contains(&format!(
            "{total} total, {total} started, {total} done, {total} succeeded, 0 failed, 0 errored"
        )),
        "h2load: {text}\n{}",
        z.log()
    );
    assert!(text.contains(&format!("{total} 2xx")), "h2load: {text}");
    // Every stream, one line each in the log: status 200.
    let lines = std::fs::read_to_string(&log).expect("h2load log");
    let statuses: Vec<&str> = lines.lines().filter_map(|l| l.split('\t').nth(1)).collect();
    assert_eq!(statuses.len(), total, "one log line per stream");
    assert!(statuses.iter().all(|s| *s == "200"), "{lines}");
}
