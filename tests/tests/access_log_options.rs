//! The access-log options of upstream Zentinel on real processes (issue 13): `sample-rate` with
//! `sample-errors-always`, `fields` choosing the keys of upstream's `json` line, and
//! `buffer-size`: lines held in a buffer reach the file within about a second, and none is lost
//! across `zentinel-ctl reload`, a rolling upgrade and a stop.

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use zentinel_tests::configs::Proxy;
use zentinel_tests::*;

const DEADLINE: Duration = Duration::from_secs(15);

fn config(workers: u32, port: u16, backend: &Backend, file: &Path, keys: &str) -> String {
    Proxy::new(workers, port, backend)
        .top_level(&format!(
            "observability {{\n    logging {{\n        access-log {{\n            file \"{}\"\n{keys}\n        }}\n    }}\n}}",
            file.display(),
        ))
        .build()
}

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    lines(path)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Wait until a line for `path` (the request path) is in the file; the lines so far.
fn wait_for_path(file: &Path, path: &str) -> Vec<serde_json::Value> {
    let found = wait_until(DEADLINE, || {
        json_lines(file).iter().any(|v| v["path"] == path)
    });
    let got = json_lines(file);
    assert!(found, "no line for {path} in {got:#?}");
    got
}

/// 20 requests on new connections (both workers serve), each answered 200; their paths are
/// added to `sent`. Quick enough (well under the one-second timer) that the lines are still
/// buffered when it returns.
fn batch(z: &Zentinel, label: &str, sent: &mut Vec<String>) {
    for i in 0..20 {
        let path = format!("/{label}/{i}");
        assert_eq!(z.client().get(&path, "a").status, 200);
        sent.push(path);
    }
}

#[test]
fn sample_rate_zero_keeps_only_errors() {
    let backend = Backend::start("al-sample0");
    let dir = TempDir::new("access-log-sample0");
    let file = dir.0.join("access.log");
    let port = free_port();
    // sample-errors-always is on by default, as upstream.
    let z = Zentinel::start(&config(1, port, &backend, &file, "sample-rate 0.0"));
    let mut c = z.client();
    for i in 0..50 {
        assert_eq!(c.get(&format!("/ok/{i}"), "a").status, 200);
    }
    assert_eq!(c.get("/status/404", "a").status, 404);
    assert_eq!(c.get("/ok/after", "a").status, 200);
    assert_eq!(c.get("/status/503", "a").status, 503);
    // One worker, one writer: the 503's line comes after everything requested before it.
    let got = wait_for_path(&file, "/status/503");
    let paths: Vec<&str> = got.iter().filter_map(|v| v["path"].as_str()).collect();
    assert_eq!(paths, ["/status/404", "/status/503"], "{got:#?}");
}

#[test]
fn sample_rate_half_keeps_about_half() {
    let backend = Backend::start("al-sample-half");
    let dir = TempDir::new("access-log-sample-half");
    let file = dir.0.join("access.log");
    let port = free_port();
    let z = Zentinel::start(&config(1, port, &backend, &file, "sample-rate 0.5"));
    let mut c = z.client();
    const N: usize = 400;
    for i in 0..N {
        assert_eq!(c.get(&format!("/half/{i}"), "a").status, 200);
    }
    // An error is always kept: once its line is there, every earlier draw has been written.
    assert_eq!(c.get("/status/404", "a").status, 404);
    let got = wait_for_path(&file, "/status/404");
    let kept = got.iter().filter(|v| v["status"] == 200).count();
    // Binomial(400, 0.5): mean 200, sd 10; 120..280 is 8 sd either way.
    assert!((120..=280).contains(&kept), "{kept} of {N} kept");
    assert_eq!(got.len(), kept + 1);
}

#[test]
fn fields_turned_off_are_absent_from_the_json_line() {
    let backend = Backend::start("al-fields");
    let dir = TempDir::new("access-log-fields");
    let file = dir.0.join("access.log");
    let port = free_port();
    let z = Zentinel::start(&config(
        1,
        port,
        &backend,
        &file,
        "fields {\n    user-agent #false\n    query #false\n    latency-ms #false\n    \
         trace-id #false\n}",
    ));
    let mut c = z.client();
    c.send(
        b"GET /bytes/10?x=1 HTTP/1.1\r\nHost: a\r\nUser-Agent: ua/1\r\nReferer: http://r/\r\n\r\n",
    );
    let r = c.read_response();
    assert_eq!(r.status, 200);
    let got = wait_for_path(&file, "/bytes/10");
    let line = got[0].as_object().expect("an object");
    for key in ["user_agent", "query", "duration_ms", "trace_id"] {
        assert!(!line.contains_key(key), "{key} is off: {line:?}");
    }
    assert_eq!(line["method"], "GET");
    assert_eq!(line["status"], 200);
    assert_eq!(line["client_ip"], "127.0.0.1");
    assert_eq!(line["referer"], "http://r/");
    assert_eq!(line["body_bytes_sent"], r.body.len() as u64);
    assert_eq!(line["upstream_addr"], backend.target().as_str());
    assert_eq!(line["connection_reused"], false);
    assert_eq!(line["rate_limit_hit"], false);
    assert_eq!(line["route_id"], "all");
    assert_eq!(line["upstream"], "b");
    assert!(line["timestamp"]
        .as_str()
        .is_some_and(|t| t.ends_with("+00:00")));
    assert!(line["instance_id"].is_string());
    // The second request on the same client connection reuses the pooled upstream one.
    assert_eq!(c.get("/bytes/11", "a").status, 200);
    let got = wait_for_path(&file, "/bytes/11");
    assert_eq!(got[1]["connection_reused"], true, "{got:#?}");
}

#[test]
fn buffered_lines_arrive_within_a_second_and_survive_reload_upgrade_and_stop() {
    let backend = Backend::start("al-buffer");
    let dir = TempDir::new("access-log-buffer");
    let file = dir.0.join("access.log");
    let port = free_port();
    // Far larger than what this test writes: only the timer, a reload, a drain or a stop
    // writes the buffer.
    let mut z = Zentinel::start(&config(
        2,
        port,
        &backend,
        &file,
        "format \"$path $status\"\nbuffer-size 1048576",
    ));

    // Held, then written by the timer.
    assert_eq!(z.client().get("/first", "a").status, 200);
    let answered = Instant::now();
    assert!(wait_until(DEADLINE, || lines(&file).len() == 1));
    let waited = answered.elapsed();
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(5),
        "the line took {waited:?}: buffered, then written by the one-second timer"
    );

    let mut sent = vec!["/first".to_owned()];
    let check = |sent: &[String], when: &str| {
        let mut got: Vec<String> = lines(&file)
            .iter()
            .map(|l| l.trim_end_matches(" 200").to_owned())
            .collect();
        got.sort();
        let mut want = sent.to_vec();
        want.sort();
        assert_eq!(got, want, "{when}");
    };

    // A reload writes both workers' buffers before reopening the file.
    batch(&z, "before-reload", &mut sent);
    assert!(
        lines(&file).len() < sent.len(),
        "the lines should still be buffered"
    );
    z.ctl(&["reload"]).assert_success("reload");
    assert!(
        wait_until(DEADLINE, || lines(&file).len() >= sent.len()),
        "lines lost by the reload"
    );
    check(&sent, "after the reload");

    // A rolling upgrade under traffic: the old workers write what they buffered before they
    // exit.
    let stop = Arc::new(AtomicBool::new(false));
    let addr = z.addr();
    let traffic = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let mut served = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let path = format!("/during-upgrade/{n}");
                n += 1;
                if HttpClient::connect(addr).get(&path, "a").status == 200 {
                    served.push(path);
                }
            }
            served
        })
    };
    let copy = dir.0.join("zentinel-copy");
    install_binary(&zentinel_bin(), &copy);
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
    stop.store(true, Ordering::Relaxed);
    let served = traffic.join().expect("traffic thread");
    out.assert_success("rolling upgrade");
    assert!(served.len() > 20, "only {} requests", served.len());
    sent.extend(served);
    assert!(
        wait_until(DEADLINE, || lines(&file).len() >= sent.len()),
        "lines lost by the upgrade"
    );
    check(&sent, "after the rolling upgrade");

    // A stop drains the workers, which write their buffers before exiting.
    batch(&z, "before-stop", &mut sent);
    assert!(
        lines(&file).len() < sent.len(),
        "the lines should still be buffered"
    );
    z.ctl(&["stop"]).assert_success("stop");
    assert!(z.wait_all_gone(DEADLINE), "{}", z.log());
    check(&sent, "after the stop");
}
