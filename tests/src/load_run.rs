//! Running the real `zentinel-load` binary from a test: spawn it with `--json`, wait for it with
//! a deadline, and read its final line and JSON report (shared by the load generator's own
//! tests and the end-to-end tests that put it in front of Zentinel).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

use serde_json::Value;

use crate::{find_binary, temp_path, wait_until};

pub fn load_bin() -> PathBuf {
    find_binary("zentinel-load", "ZENTINEL_LOAD_BIN")
}

/// One finished `zentinel-load` run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    /// key=value pairs of the last line.
    pub last: BTreeMap<String, String>,
    pub json: Value,
}

impl Run {
    pub fn last_u64(&self, key: &str) -> u64 {
        self.last
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no integer {key}= in the last line:\n{}", self.stdout))
    }

    pub fn json_u64(&self, path: &[&str]) -> u64 {
        let mut v = &self.json;
        for p in path {
            v = &v[*p];
        }
        v.as_u64()
            .unwrap_or_else(|| panic!("JSON {path:?} is not an integer: {}", self.json))
    }

    /// Failures by kind from the JSON, only the non-zero ones.
    pub fn failures(&self) -> BTreeMap<String, u64> {
        self.json["failures"]
            .as_object()
            .unwrap_or_else(|| panic!("JSON without failures: {}", self.json))
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().expect("failure count")))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

pub fn spawn_load(args: &[&str], json: &PathBuf) -> Child {
    Command::new(load_bin())
        .args(args)
        .arg("--json")
        .arg(json)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn zentinel-load")
}

/// Waits for a `zentinel-load` child with a deadline (killed and failed past it).
pub fn finish(mut child: Child, json: PathBuf, timeout: Duration) -> Run {
    let mut stdout_pipe = child.stdout.take().expect("stdout piped");
    let reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout_pipe.read_to_string(&mut s);
        s
    });
    let mut status = None;
    let exited = wait_until(timeout, || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
        panic!("zentinel-load did not finish within {timeout:?}");
    }
    let stdout = reader.join().expect("stdout reader");
    let code = status.and_then(|s| s.code()).unwrap_or(-1);
    let last = stdout
        .lines()
        .last()
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let json = std::fs::read_to_string(&json)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    Run {
        code,
        stdout,
        last,
        json,
    }
}

pub fn run_load(args: &[&str]) -> Run {
    let json = temp_path("load.json");
    let child = spawn_load(args, &json);
    let run = finish(child, json.clone(), Duration::from_secs(30));
    let _ = std::fs::remove_file(json);
    run
}

/// The final line's shape, and that it agrees with the JSON report (with `--tls`, the
/// handshake figures too).
pub fn check_consistent(run: &Run) {
    let last_line = run.stdout.lines().last().unwrap_or("");
    let keys: Vec<&str> = run.last.keys().map(String::as_str).collect();
    let tls = run.json["tls"].is_object();
    let expected: &[&str] = if tls {
        &[
            "failed",
            "handshakes",
            "hps",
            "max_ms",
            "p50_ms",
            "p99_ms",
            "requests",
            "resumed",
            "rps",
        ]
    } else {
        &["failed", "max_ms", "p50_ms", "p99_ms", "requests", "rps"]
    };
    assert_eq!(keys, expected, "last line {last_line:?}");
    if tls {
        assert_eq!(
            run.last_u64("handshakes"),
            run.json_u64(&["tls", "handshakes"])
        );
        assert_eq!(run.last_u64("resumed"), run.json_u64(&["tls", "resumed"]));
        assert_eq!(
            run.json_u64(&["tls", "handshakes"]),
            run.json_u64(&["tls", "full"]) + run.json_u64(&["tls", "resumed"]),
            "handshakes = full + resumed"
        );
        assert!(
            run.json_u64(&["tls", "handshakes"]) <= run.json_u64(&["connections"]),
            "at most one handshake per connection"
        );
    }
    assert!(
        last_line.starts_with("requests="),
        "last line {last_line:?}"
    );
    for k in ["p50_ms", "p99_ms", "max_ms"] {
        let v = &run.last[k];
        assert!(
            v.split_once('.').is_some_and(|(_, d)| d.len() == 2),
            "{k}={v} has not 2 decimals"
        );
    }
    assert_eq!(run.last_u64("requests"), run.json_u64(&["requests"]));
    assert_eq!(run.last_u64("failed"), run.json_u64(&["failed"]));
    assert_eq!(
        run.json_u64(&["requests"]),
        run.json_u64(&["ok"]) + run.json_u64(&["failed"]),
        "requests = ok + failed"
    );
    let by_kind: u64 = run.failures().values().sum();
    assert_eq!(
        by_kind,
        run.json_u64(&["failed"]),
        "failures by kind add up"
    );
}
