//! Hostile clients: smuggling attempts and invalid bytes, slowloris and slow readers,
//! connection floods and fd exhaustion. Each is refused or cut off without reaching the
//! backend, without growing the worker, and without hurting well-behaved clients.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use zentinel_tests::*;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn smuggling_and_invalid_bytes_are_refused_and_never_forwarded() {
    let be = Backend::start("hostile");
    let z = Zentinel::start(&configs::proxy(1, free_port(), &be, "", ""));
    let heads: &[(&str, &[u8])] = &[
        (
            "obfuscated Transfer-Encoding value",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "space before the colon",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "chunked not last",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        ),
        (
            "Transfer-Encoding twice",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "Content-Length with a sign",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\nhello",
        ),
        (
            "Content-Length with garbage",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5x\r\n\r\nhello",
        ),
        (
            "bare LF line ends",
            b"GET / HTTP/1.1\nHost: h\n\n",
        ),
        (
            "bare CR in a header value",
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\rb\r\n\r\n",
        ),
        (
            "NUL in a header value",
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\0b\r\n\r\n",
        ),
        (
            "obsolete line folding",
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n b\r\n\r\n",
        ),
        (
            "space in a header name",
            b"GET / HTTP/1.1\r\nHost: h\r\nX A: b\r\n\r\n",
        ),
        (
            "two Host headers",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        ),
        (
            "control byte in the request target",
            b"GET /a\x01b HTTP/1.1\r\nHost: h\r\n\r\n",
        ),
    ];
    for (what, raw) in heads {
        assert_refused(&z, raw, 400, what);
    }
    let (requests, _) = be.stats();
    assert_eq!(requests, 0, "a refused head reached the backend");

    // Invalid chunk sizes are only seen in the body, after the head went upstream: the client
    // gets 400 and the backend never receives a complete request.
    let bodies: &[(&str, &[u8])] = &[
        ("non-hex chunk size", b"zz\r\nhello\r\n0\r\n\r\n"),
        ("negative chunk size", b"-5\r\nhello\r\n0\r\n\r\n"),
        (
            "overflowing chunk size",
            b"fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        ),
        ("chunk size line with bare LF", b"5\nhello\r\n0\r\n\r\n"),
        (
            "chunk data longer than its size",
            b"3\r\nhello\r\n0\r\n\r\n",
        ),
    ];
    for (what, body) in bodies {
        let mut raw =
            b"POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        raw.extend_from_slice(body);
        assert_refused(&z, &raw, 400, what);
    }
    let (requests, _) = be.stats();
    assert_eq!(
        requests, 0,
        "a request with a broken chunked body was completed upstream"
    );

    // Good requests are unaffected.
    let r = HttpClient::connect(z.addr()).get("/bytes/100", "h");
    r.assert_pattern_body(100);
}

#[test]
fn slowloris_and_slow_readers_are_cut_off_with_bounded_memory() {
    let be = Backend::start("slow");
    let z = Zentinel::start(&configs::proxy_with_listener(
        1,
        free_port(),
        &be,
        "",
        "request-timeout-secs 2\n        keepalive-timeout-secs 2",
        "",
    ));
    let worker = z.worker_pids()[0];

    // Slowloris: a head trickled one byte every 300 ms is cut by the request timeout, which
    // counts from the first byte, not from the last.
    let addr = z.addr();
    let trickler = thread::spawn(move || {
        let mut s = TcpStream::connect(addr).expect("connect");
        let started = Instant::now();
        for b in
            b"GET / HTTP/1.1\r\nHost: slow\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n"
        {
            if s.write_all(&[*b]).is_err() {
                return Some(started.elapsed());
            }
            thread::sleep(Duration::from_millis(300));
        }
        None
    });
    let cut_after = trickler.join().expect("trickler thread");
    let cut_after = cut_after.expect("a trickled head was never cut off (26 s of trickling)");
    assert!(
        cut_after < Duration::from_secs(5),
        "slowloris cut off after {cut_after:?}, request-timeout-secs is 2"
    );

    // Slow readers: 40 clients ask for 8 MiB each and never read. The worker's buffers per
    // connection are bounded, so its memory must not grow by the bodies' size.
    let before = rss_kib(worker);
    let readers: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut s = TcpStream::connect(z.addr()).expect("connect");
            s.write_all(b"GET /bytes/8388608 HTTP/1.1\r\nHost: slow\r\n\r\n")
                .expect("send");
            s
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(10), || be.stats().0 >= 40),
        "the slow readers' requests did not reach the backend"
    );
    thread::sleep(Duration::from_millis(500)); // let every buffer fill up
    let grown = rss_kib(worker).saturating_sub(before);
    assert!(
        grown < 40 * 1024,
        "worker RSS grew by {grown} KiB for 40 stalled 8 MiB downloads (should be bounded by \
         its per-connection buffers)"
    );
    // Others are still served meanwhile.
    let r = HttpClient::connect(z.addr()).get("/bytes/1000", "ok");
    r.assert_pattern_body(1000);
    drop(readers);
}

#[test]
fn connection_flood_beyond_max_connections_is_shed() {
    let be = Backend::start("flood");
    let z = Zentinel::start(&configs::proxy(
        1,
        free_port(),
        &be,
        "max-connections 50",
        "",
    ));
    let worker = z.worker_pids()[0];

    // A keep-alive client established before the flood.
    let mut regular = z.client();
    assert_eq!(regular.get("/bytes/10", "r").status, 200);
    let before = rss_kib(worker);

    let flood: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect_timeout(&z.addr(), Duration::from_secs(2)).ok())
        .collect();
    // Served connections stay at the limit: everything beyond it is closed at once or left in
    // the backlog, never accepted and held.
    let mut held = 0;
    assert!(
        wait_until(Duration::from_secs(5), || {
            held = z.status()["workers"][0]["active_connections"]
                .as_u64()
                .unwrap_or(u64::MAX);
            held <= 50
        }),
        "{held} connections held by a worker with max-connections 50"
    );
    let r = regular.get("/bytes/1000", "r");
    r.assert_pattern_body(1000);
    let grown = rss_kib(worker).saturating_sub(before);
    assert!(
        grown < 8 * 1024,
        "worker RSS grew by {grown} KiB during the flood"
    );

    // When the flood goes away, new clients are served again.
    drop(flood);
    assert!(
        wait_until(Duration::from_secs(10), || {
            TcpStream::connect(z.addr())
                .ok()
                .and_then(|s| {
                    let mut c = HttpClient::from_stream(s);
                    c.set_timeout(Duration::from_secs(2));
                    c.try_send(b"GET /bytes/5 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                        .ok()?;
                    c.try_read_response(true, false).ok()
                })
                .is_some_and(|r| r.status == 200)
        }),
        "no new client served after the flood ended"
    );
}

#[test]
fn fd_exhaustion_backs_off_keeps_serving_and_recovers() {
    let be = Backend::start("fds");
    let port = free_port();
    let config_path = temp_path("fds.kdl");
    std::fs::write(&config_path, configs::proxy(1, port, &be, "", "")).unwrap();
    let runtime = new_runtime_dir();
    let log_path = temp_path("fds.log");
    let log = std::fs::File::create(&log_path).unwrap();
    // 64 fds in all (hard limit too, so nothing can raise it): the worker runs out long
    // before the client does.
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(r#"ulimit -n 64 && exec "$0" --config "$1" --log-level info"#)
        .arg(zentinel_bin())
        .arg(&config_path)
        .env("XDG_RUNTIME_DIR", &runtime)
        .env_remove("ZENTINEL_CONFIG")
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let mut master = cmd.spawn().expect("spawn zentinel");
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || TcpStream::connect(addr).is_ok()),
        "zentinel with 64 fds did not start"
    );
    let log_text = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let mut regular = HttpClient::connect(addr);
    assert_eq!(regular.get("/bytes/10", "r").status, 200, "{}", log_text());

    // 150 connections: the worker cannot accept them all.
    let mut flood: Vec<TcpStream> = (0..150)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok())
        .collect();
    for s in &mut flood {
        let _ = s.write_all(b"GET /bytes/10 HTTP/1.1\r\nHost: f\r\n\r\n");
    }
    // The worker stops accepting where its fd budget ends (two per session): before accept
    // fails with EMFILE, and before an upstream connect would, which would cost an accepted
    // client a 502. EMFILE from accept itself is backed off the same way.
    assert!(
        wait_until(Duration::from_secs(10), || {
            let log = log_text();
            log.contains("open-file limit reached") || log.contains("Too many open files")
        }),
        "nothing logged while out of fds:\n{}",
        log_text()
    );
    // The connection it already had still works.
    let r = regular.get("/bytes/1000", "r");
    r.assert_pattern_body(1000);
    // Backed off, not spinning: the worker is not burning a CPU while out of fds.
    let worker = children_of(master.id())[0];
    let cpu = |pid: u32| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                let after = s.rsplit(')').next()?.to_owned();
                let f: Vec<&str> = after.split_whitespace().collect();
                Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
            })
            .unwrap_or(0)
    };
    let t0 = cpu(worker);
    thread::sleep(Duration::from_secs(1));
    let ticks = cpu(worker) - t0;
    assert!(
        ticks < 50,
        "worker used {ticks} ticks of CPU in 1 s while out of fds"
    );

    // Free the fds: the waiting clients are accepted and served.
    let mut answered = 0;
    for mut s in flood.drain(..).take(20) {
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let mut buf = [0u8; 64];
        if matches!(s.read(&mut buf), Ok(n) if n > 0) {
            answered += 1;
        }
    }
    drop(flood);
    let r = HttpClient::connect(addr).get("/bytes/100", "after");
    r.assert_pattern_body(100);
    assert!(answered > 0, "none of the queued clients was ever answered");
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(master.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = master.wait();
    let _ = std::fs::remove_dir_all(runtime);
}

/// `limits { max-connections-per-client 2 }` (upstream Zentinel's key): a client IP holds at
/// most two connections in a worker; a third is closed at once while the first two keep
/// working, and a freed slot admits a new one.
#[test]
fn max_connections_per_client_closes_the_extra_connection() {
    let be = Backend::start("per-client");
    let config = configs::Proxy::new(1, free_port(), &be)
        .top_level("limits {\n    max-connections-per-client 2\n}\n")
        .build();
    let z = Zentinel::start(&config);
    let mut first = z.client();
    let mut second = z.client();
    assert_eq!(first.get("/bytes/10", "limit.test").status, 200);
    assert_eq!(second.get("/bytes/10", "limit.test").status, 200);

    let mut third = z.client();
    let _ = third.try_send(b"GET /bytes/10 HTTP/1.1\r\nHost: limit.test\r\n\r\n");
    assert!(
        third.server_closed_within(Duration::from_secs(5)),
        "the third connection of the same client was not closed"
    );
    // The first two are unaffected.
    assert_eq!(first.get("/bytes/10", "limit.test").status, 200);
    assert_eq!(second.get("/bytes/10", "limit.test").status, 200);

    drop(first);
    // The slot frees once the worker has seen the close: retry until it has, bounded.
    let admitted = wait_until(Duration::from_secs(5), || {
        let mut again = z.client();
        again.set_timeout(Duration::from_secs(2));
        again
            .try_send(b"GET /bytes/10 HTTP/1.1\r\nHost: limit.test\r\n\r\n")
            .and_then(|()| again.try_read_response(true, false))
            .is_ok_and(|r| r.status == 200)
    });
    assert!(admitted, "a freed slot did not admit a new connection");
}
