//! The access log end to end (issue 7, "Metrics and logs"): real workers write one line per
//! request in the configured format, two workers append to one file without interleaving under
//! concurrent load, nothing is written (no writer thread even) by default, and
//! `zentinel-ctl reload` reopens the file after a rename (log rotation).

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::thread;
use std::time::Duration;

use zentinel_tests::configs::Proxy;
use zentinel_tests::*;

const DEADLINE: Duration = Duration::from_secs(15);

fn config(workers: u32, port: u16, backend: &Backend, file: &Path, format: &str) -> String {
    Proxy::new(workers, port, backend)
        .top_level(&format!(
            "observability {{\n    logging {{\n        access-log {{\n            enabled #true\n            file \"{}\"\n            format \"{}\"\n        }}\n    }}\n}}",
            file.display(),
            format.replace('\\', "\\\\").replace('"', "\\\"")
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

/// Wait until `path` holds exactly `n` lines (more is a failure: one line per request).
fn wait_lines(path: &Path, n: usize) -> Vec<String> {
    let ok = wait_until(DEADLINE, || lines(path).len() >= n);
    let got = lines(path);
    assert!(
        ok,
        "{} lines in {}, expected {n}",
        got.len(),
        path.display()
    );
    // Give a stray extra line a moment to show up before concluding there is none.
    thread::sleep(Duration::from_millis(200));
    let got = lines(path);
    assert_eq!(got.len(), n, "{got:#?}");
    got
}

#[test]
fn one_line_per_request_in_the_configured_format() {
    let backend = Backend::start("al1");
    let dir = TempDir::new("access-log-format");
    let file = dir.0.join("access.log");
    let port = free_port();
    let format = "$remote_addr|$method|$path|$protocol|$status|$bytes|$duration_ms|$upstream|$worker_id|$host|$user_agent|${listener}";
    let z = Zentinel::start(&config(1, port, &backend, &file, format));

    let mut c = z.client();
    let ok = c.get("/hello?x=1", "app.example");
    assert_eq!(ok.status, 200);
    let missing = c.get("/status/404", "app.example");
    assert_eq!(missing.status, 404);
    // A header with a quote and a non-ASCII byte (obs-text): escaped, still one line.
    c.send(b"GET /ua HTTP/1.0\r\nHost: app\r\nUser-Agent: evil\"agent\xe9\r\n\r\n");
    let ua = c.read_response();
    assert_eq!(ua.status, 200);
    // A request the proxy itself refuses (no Host on HTTP/1.1): logged, with its status.
    let mut bad = z.client();
    bad.send(b"GET /nohost HTTP/1.1\r\n\r\n");
    let refused = bad.read_response();
    assert_eq!(refused.status, 400);

    let got = wait_lines(&file, 4);
    let fields: Vec<Vec<&str>> = got.iter().map(|l| l.split('|').collect()).collect();
    for f in &fields {
        assert_eq!(f.len(), 12, "{f:?}");
        assert_eq!(f[0], "127.0.0.1");
        assert_eq!(f[8], "0", "worker id");
        assert_eq!(f[11], "http", "listener");
        assert!(f[6].parse::<u64>().is_ok(), "duration_ms {f:?}");
    }
    let by_path = |p: &str| {
        fields
            .iter()
            .find(|f| f[2] == p)
            .unwrap_or_else(|| panic!("no line for {p}: {got:#?}"))
    };
    let f = by_path("/hello?x=1");
    assert_eq!(
        (f[1], f[3], f[4], f[7], f[9]),
        (
            "GET",
            "HTTP/1.1",
            "200",
            backend.target().as_str(),
            "app.example"
        )
    );
    // $bytes counts what the client received for this response.
    let sent: u64 = f[5].parse().unwrap();
    assert!(sent > ok.body.len() as u64, "{sent}");
    assert_eq!(by_path("/status/404")[4], "404");
    let f = by_path("/ua");
    assert_eq!((f[3], f[10]), ("HTTP/1.0", "evil\\x22agent\\xE9"));
    // A refused head shows its request line.
    let f = by_path("/nohost");
    assert_eq!((f[1], f[3], f[4], f[7]), ("GET", "HTTP/1.1", "400", "-"));
}

#[test]
fn json_is_the_default_format_and_combined_is_upstreams_line() {
    let backend = Backend::start("al2");
    let dir = TempDir::new("access-log-default");
    let file = dir.0.join("access.log");
    let combined = dir.0.join("combined.log");
    let port = free_port();
    let cfg = Proxy::new(1, port, &backend)
        .top_level(&format!(
            "observability {{ logging {{ access-log {{ file \"{}\"; }} }} }}",
            file.display()
        ))
        .build();
    let z = Zentinel::start(&cfg);
    let request =
        b"GET /c?q=1 HTTP/1.1\r\nHost: a\r\nReferer: http://r/\r\nUser-Agent: ua/1\r\n\r\n";
    let mut c = z.client();
    c.send(request);
    let r = c.read_response();
    assert_eq!(r.status, 200);
    let trace_id = r.header("x-correlation-id").expect("a trace id").to_owned();
    let got = wait_lines(&file, 1);
    // Upstream's JSON object.
    let line: serde_json::Value = serde_json::from_str(&got[0]).expect("a JSON line");
    assert_eq!(line["trace_id"], trace_id.as_str(), "{line}");
    assert_eq!(
        (
            &line["method"],
            &line["path"],
            &line["query"],
            &line["status"]
        ),
        (
            &serde_json::json!("GET"),
            &serde_json::json!("/c"),
            &serde_json::json!("q=1"),
            &serde_json::json!(200)
        ),
        "{line}"
    );
    assert_eq!(line["user_agent"], "ua/1", "{line}");

    // `combined`: nginx's line, then upstream's trace id and duration.
    let config_path = z.config_path.clone().expect("config path");
    fs::write(
        &config_path,
        cfg.replace(
            &format!("file \"{}\";", file.display()),
            &format!("file \"{}\"; format \"combined\";", combined.display()),
        ),
    )
    .unwrap();
    z.ctl(&["reload"]).assert_success("reload");
    let mut c = z.client();
    c.send(request);
    let r = c.read_response();
    assert_eq!(r.status, 200);
    let trace_id = r.header("x-correlation-id").expect("a trace id").to_owned();
    let got = wait_lines(&combined, 1);
    let line = &got[0];
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    let tail = format!(
        "] \"GET /c?q=1 HTTP/1.1\" 200 {} \"http://r/\" \"ua/1\" {trace_id} ",
        r.body.len()
    );
    assert!(line.contains(&tail), "{line} lacks {tail}");
    assert!(line.ends_with("ms"), "{line}");
}

#[test]
fn off_by_default() {
    let backend = Backend::start("al3");
    let port = free_port();
    let z = Zentinel::start(&Proxy::new(2, port, &backend).build());
    for _ in 0..10 {
        assert_eq!(z.client().get("/x", "a").status, 200);
    }
    // No access log: the writer thread (started on the first line) never exists.
    for pid in z.worker_pids() {
        let tasks = fs::read_dir(format!("/proc/{pid}/task")).expect("worker tasks");
        for task in tasks.flatten() {
            let comm = fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            assert_ne!(
                comm.trim(),
                "access-log",
                "worker {pid} runs an access-log writer"
            );
        }
    }
}

#[test]
fn two_workers_never_interleave_lines_under_concurrent_load() {
    let backend = Backend::start("al4");
    let dir = TempDir::new("access-log-load");
    let file = dir.0.join("access.log");
    let port = free_port();
    let z = Zentinel::start(&config(
        2,
        port,
        &backend,
        &file,
        "$worker_id $status $path $bytes end",
    ));
    const THREADS: usize = 8;
    const PER_THREAD: usize = 250;
    // Long paths: lines of ~1 KiB, so a torn write would show.
    let pad = "p".repeat(900);
    let addr = z.addr();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let pad = pad.clone();
            thread::spawn(move || {
                // A few connections per thread, keep-alive within each: both workers serve.
                for chunk in 0..5 {
                    let mut c = HttpClient::connect(addr);
                    for i in 0..PER_THREAD / 5 {
                        let n = chunk * (PER_THREAD / 5) + i;
                        let r = c.get(&format!("/t{t}/{n}/{pad}"), "load");
                        assert_eq!(r.status, 200);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client thread");
    }
    let total = THREADS * PER_THREAD;
    let got = wait_lines(&file, total);
    let mut seen = BTreeSet::new();
    let mut workers = BTreeSet::new();
    for line in &got {
        let parts: Vec<&str> = line.split(' ').collect();
        assert_eq!(parts.len(), 5, "torn or merged line: {line:.200}");
        assert_eq!(parts[1], "200", "{line:.200}");
        assert_eq!(parts[4], "end", "{line:.200}");
        let path: Vec<&str> = parts[2].split('/').collect();
        assert_eq!(path.len(), 4, "{line:.200}");
        assert_eq!(path[3], pad, "path mangled: {line:.200}");
        assert!(
            seen.insert((path[1].to_owned(), path[2].to_owned())),
            "duplicate line {line:.200}"
        );
        workers.insert(parts[0].to_owned());
    }
    assert_eq!(seen.len(), total);
    assert_eq!(
        workers,
        BTreeSet::from(["0".to_owned(), "1".to_owned()]),
        "both workers wrote"
    );
}

#[test]
fn reload_reopens_the_file_after_a_rename() {
    let backend = Backend::start("al5");
    let dir = TempDir::new("access-log-rotate");
    let file = dir.0.join("access.log");
    let rotated = dir.0.join("access.log.1");
    let port = free_port();
    let z = Zentinel::start(&config(2, port, &backend, &file, "$path $status"));
    for i in 0..4 {
        assert_eq!(z.client().get(&format!("/before/{i}"), "a").status, 200);
    }
    wait_lines(&file, 4);

    fs::rename(&file, &rotated).unwrap();
    // Until the reload, the workers still write to the renamed file (same inode).
    assert_eq!(z.client().get("/between", "a").status, 200);
    wait_lines(&rotated, 5);
    assert!(!file.exists());

    z.ctl(&["reload"]).assert_success("reload");
    for i in 0..4 {
        assert_eq!(z.client().get(&format!("/after/{i}"), "a").status, 200);
    }
    let fresh = wait_lines(&file, 4);
    assert!(fresh.iter().all(|l| l.starts_with("/after/")), "{fresh:#?}");
    let old = lines(&rotated);
    assert_eq!(old.len(), 5, "{old:#?}");
    assert!(old.iter().all(|l| !l.starts_with("/after/")), "{old:#?}");

    // A file that cannot be opened fails the reload, naming it; logging goes on as before.
    let missing = dir.0.join("no-such-dir").join("access.log");
    let config_path = z.config_path.clone().expect("config path");
    fs::write(
        &config_path,
        config(2, port, &backend, &missing, "$path $status"),
    )
    .unwrap();
    let out = z.ctl(&["reload"]);
    assert!(!out.success(), "{out}");
    assert!(
        out.said().contains(&missing.display().to_string()),
        "the failure must name the file: {out}"
    );
    assert_eq!(z.client().get("/still", "a").status, 200);
    let after = wait_lines(&file, 5);
    assert_eq!(after[4], "/still 200");
}
