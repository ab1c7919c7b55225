//! `observability { logging { format; error-log } }` in upstream Zentinel's spelling, wired
//! into what the master and its workers write: JSON lines on stderr, and warnings and errors
//! appended to the error log by every process.

use std::time::Duration;

use zentinel_tests::*;

#[test]
fn json_format_and_error_log_reach_master_and_workers() {
    let be = Backend::start("logging");
    let error_log = temp_path("error.log");
    let mut files = TempFiles::default();
    files.add(error_log.clone());
    let config = configs::Proxy::new(2, free_port(), &be)
        // Accepted without effect: a warning, which must land in the error log.
        .system("workers 4")
        .top_level(&format!(
            "observability {{\n    logging {{\n        level \"info\"\n        format \"json\"\n        \
             error-log {{\n            file \"{}\"\n            level \"warn\"\n        }}\n    }}\n}}\n",
            error_log.display()
        ))
        .build();
    let z = Zentinel::start(&config);
    let mut c = z.client();
    assert_eq!(c.get("/bytes/10", "logging.test").status, 200);

    // Every line on stderr is one JSON object, from the master and from the workers.
    let log = z.log_text();
    let mut objects = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}\nwhole log:\n{log}"));
        assert!(value["level"].is_string(), "{line}");
        assert!(value["timestamp"].is_string(), "{line}");
        objects += 1;
    }
    assert!(objects > 0, "no log lines:\n{log}");
    assert!(
        log.contains("\"zentinel started\""),
        "the master's start line is missing:\n{log}"
    );
    assert!(
        log.contains("zentinel_worker"),
        "no worker line in the JSON log:\n{log}"
    );

    // The config warning (a WARN line) is in the error log, as JSON too.
    assert!(
        wait_until(Duration::from_secs(5), || std::fs::read_to_string(
            &error_log
        )
        .is_ok_and(|text| text.contains("`workers` has no effect"))),
        "no warning in the error log {}",
        error_log.display()
    );
    let text = std::fs::read_to_string(&error_log).unwrap_or_default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            value["level"] == "WARN" || value["level"] == "ERROR",
            "only warnings and errors belong in the error log: {line}"
        );
    }
}

#[test]
fn invalid_logging_settings_are_located() {
    let path = temp_path("logging-invalid.kdl");
    let mut files = TempFiles::default();
    files.add(path.clone());
    std::fs::write(
        &path,
        "listeners {\n    listener \"h\" { address \"127.0.0.1:1\"; }\n}\nobservability {\n    \
         logging {\n        level \"loud\"\n        format \"xml\"\n        error-log { buffer-size -1; }\n    }\n}\n",
    )
    .unwrap();
    let (code, out, err) = zentinel_check(Some(&path));
    let all = format!("{out}{err}");
    assert_eq!(code, Some(1), "{all}");
    let file = path.display().to_string();
    for needle in [
        format!("{file}:6:15: `level`: invalid log level \"loud\""),
        format!("{file}:7:16: `format`: unknown log format \"xml\""),
        format!("{file}:8:33: `buffer-size`: must be at least 0, found -1"),
    ] {
        assert!(all.contains(&needle), "missing {needle:?} in:\n{all}");
    }
}

/// Trace ids as upstream Zentinel makes them: the one a request brings (`X-Request-Id` here),
/// or a new TinyFlake; sent upstream as `X-Trace-Id`, returned as `X-Correlation-Id`, and in
/// the JSON access log (`include-trace-id`, on by default).
#[test]
fn trace_ids_reach_the_backend_the_client_and_the_access_log() {
    let be = Backend::start("trace");
    let access_log = temp_path("trace-access.log");
    let mut files = TempFiles::default();
    files.add(access_log.clone());
    let config = configs::Proxy::new(1, free_port(), &be)
        .top_level(&format!(
            "observability {{\n    logging {{\n        access-log {{\n            file \"{}\"\n            format \"json\"\n        }}\n    }}\n}}\n",
            access_log.display()
        ))
        .build();
    let z = Zentinel::start(&config);

    // Brought by the client: kept.
    let mut c = z.client();
    c.send(b"GET /headers HTTP/1.1\r\nHost: trace.test\r\nX-Request-Id: req-42\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.header("x-correlation-id"), Some("req-42"), "{r:?}");
    let (_, seen) = parse_echoed_head(&r.body_str());
    assert!(
        seen.iter().any(|(n, v)| n == "x-trace-id" && v == "req-42"),
        "{seen:?}"
    );

    // Made by the proxy: an 11-character TinyFlake, the same on both sides.
    let r = c.get("/headers", "trace.test");
    let id = r.header("x-correlation-id").expect("a trace id").to_owned();
    assert_eq!(id.len(), 11, "{id}");
    let (_, seen) = parse_echoed_head(&r.body_str());
    assert!(
        seen.iter().any(|(n, v)| n == "x-trace-id" && *v == id),
        "{seen:?}"
    );

    assert!(
        wait_until(Duration::from_secs(5), || std::fs::read_to_string(
            &access_log
        )
        .is_ok_and(|t| t.contains(&format!("\"trace_id\":\"{id}\""))
            && t.contains("\"trace_id\":\"req-42\""))),
        "access log without the trace ids: {:?}",
        std::fs::read_to_string(&access_log)
    );
}

/// `error-log { buffer-size }`: a worker's warning waits in the buffer, reaches the file within
/// about a second, and one still buffered when the proxy stops is written before the exit.
#[test]
fn buffered_error_log_lines_arrive_within_a_second_and_survive_a_stop() {
    let error_log = temp_path("buffered-error.log");
    let mut files = TempFiles::default();
    files.add(error_log.clone());
    // Nothing listens on the target: every request is a 502 and a worker warning.
    let dead = format!("127.0.0.1:{}", free_port());
    let config = configs::Proxy::to_targets(1, free_port(), &[dead])
        .top_level(&format!(
            "observability {{\n    logging {{\n        error-log {{\n            file \"{}\"\n            \
             buffer-size 1048576\n        }}\n    }}\n}}\n",
            error_log.display()
        ))
        .build();
    let mut z = Zentinel::start(&config);
    const WARNING: &str = "upstream connect failed";
    let count = || {
        std::fs::read_to_string(&error_log)
            .unwrap_or_default()
            .matches(WARNING)
            .count()
    };
    assert_eq!(z.client().get("/a", "x").status, 502);
    let answered = std::time::Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || count() == 1),
        "{}",
        z.log()
    );
    let waited = answered.elapsed();
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(5),
        "the warning took {waited:?}: buffered, then written by the one-second timer"
    );
    assert_eq!(z.client().get("/b", "x").status, 502);
    assert_eq!(count(), 1, "the second warning should still be buffered");
    z.ctl(&["stop"]).assert_success("stop");
    assert!(z.wait_all_gone(Duration::from_secs(15)), "{}", z.log());
    assert_eq!(count(), 2, "{}", z.log());
}
