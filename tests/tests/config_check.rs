//! `zentinel --check` and the embedded default configuration.

use std::fs;
use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use zentinel_tests::*;

const VALID: &str = r#"
system {
    worker-processes 2
}
listeners {
    listener "http" {
        address "127.0.0.1:18080"
        protocol "http"
        default-route "api"
    }
}
routes {
    route "api" {
        priority "high"
        matches {
            host "api.example.com"
            path-prefix "/api/"
        }
        upstream "backend"
    }
    route "health" {
        matches { path "/health"; }
        static-response status=200 body="ok" content-type="text/plain"
    }
}
upstreams {
    upstream "backend" {
        target "127.0.0.1:9001" weight=1
        target "127.0.0.1:9002" weight=2
        load-balancing "least_connections"
        connection-pool { max-idle 32; idle-timeout-secs 60; }
        timeouts { connect-secs 5; read-secs 30; }
    }
}
limits {
    max-header-size-bytes 8192
    max-header-count 100
    max-body-size-bytes 10485760
}
"#;

/// `zentinel --check` on `text` written to a temporary `name`: (exit code, stdout, stderr,
/// the path the messages name).
fn check_text(name: &str, text: &str) -> (Option<i32>, String, String, String) {
    let path = temp_path(name);
    fs::write(&path, text).unwrap();
    let (code, out, err) = zentinel_check(Some(&path));
    let _ = fs::remove_file(&path);
    (code, out, err, path.display().to_string())
}

#[test]
fn check_accepts_a_valid_config() {
    let (code, out, err, file) = check_text("valid.kdl", VALID);
    assert_eq!(
        code,
        Some(0),
        "valid config refused:\nstdout: {out}\nstderr: {err}"
    );
    // Upstream Zentinel's success line, naming the file as given.
    assert_eq!(
        out,
        format!("zentinel: configuration file {file} test is successful\n")
    );
}

/// The subcommands upstream users type: `zentinel test -c FILE` is `-t`; `zentinel validate`
/// also connects to every upstream target.
#[test]
fn test_and_validate_subcommands() {
    let path = temp_path("subcommands.kdl");
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend2 = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend2_addr = backend2.local_addr().unwrap().to_string();
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let backend_addr = backend.local_addr().unwrap().to_string();
    let reachable = VALID
        .replace("127.0.0.1:9001", &backend_addr)
        .replace("127.0.0.1:9002", &backend2_addr);
    let run = |args: &[&str], text: &str| {
        fs::write(&path, text).unwrap();
        let out = Command::new(zentinel_bin())
            .args(args)
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = run(&["test", "-c"], VALID);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("test is successful"), "{out}");
    let (code, out) = run(&["test", "-c"], &VALID.replace("protocol", "protocl"));
    assert_eq!(code, Some(1), "{out}");

    let (code, out) = run(&["validate", "-c"], &reachable);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("✓ Configuration schema valid")
            && out.contains("✓ All validation checks passed"),
        "{out}"
    );
    let unreachable = VALID
        .replace("127.0.0.1:9001", &backend_addr)
        .replace("127.0.0.1:9002", &closed_addr.to_string());
    let (code, out) = run(&["validate", "-c"], &unreachable);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("✗ Validation failed") && out.contains(&closed_addr.to_string()),
        "{out}"
    );
    let (code, out) = run(&["validate", "--skip-network", "-c"], &unreachable);
    assert_eq!(code, Some(0), "{out}");
    let _ = fs::remove_file(&path);
}

#[test]
fn check_accepts_the_embedded_default() {
    let (code, out, err) = zentinel_check(None);
    assert_eq!(
        code,
        Some(0),
        "embedded default refused:\nstdout: {out}\nstderr: {err}"
    );
}

/// (line, column), 1-based, of the first occurrence of `needle` in `text`.
fn position(text: &str, needle: &str) -> (usize, usize) {
    for (i, line) in text.lines().enumerate() {
        if let Some(col) = line.find(needle) {
            return (i + 1, col + 1);
        }
    }
    panic!("{needle:?} not in config");
}

#[test]
fn check_names_every_offending_key_with_position() {
    let bad = VALID
        .replace("protocol \"http\"", "protocl \"http\"")
        .replace("upstream \"backend\"\n    }", "upstream \"nope\"\n    }")
        .replace("max-header-count 100", "max-header-count \"many\"");
    assert_ne!(bad, VALID);
    let (code, out, err, file) = check_text("invalid.kdl", &bad);
    let all = format!("{out}{err}");
    // 1, like upstream Zentinel's `-t` and `nginx -t`.
    assert_eq!(code, Some(1), "invalid config: exit code\n{all}");

    let (line, col) = position(&bad, "protocl");
    assert!(
        all.contains(&format!("{file}:{line}:{col}")) && all.contains("protocl"),
        "unknown key `protocl` not reported at {file}:{line}:{col}:\n{all}"
    );
    let (line, _) = position(&bad, "upstream \"nope\"");
    assert!(
        all.contains(&format!("{file}:{line}:")) && all.contains("nope"),
        "route naming the missing upstream `nope` not reported at line {line}:\n{all}"
    );
    let (line, _) = position(&bad, "max-header-count");
    assert!(
        all.contains(&format!("{file}:{line}:")) && all.contains("max-header-count"),
        "wrong type for `max-header-count` not reported at line {line}:\n{all}"
    );
}

#[test]
fn check_rejects_duplicate_listener_address() {
    let bad = VALID.replace(
        "listeners {\n",
        "listeners {\n    listener \"dup\" {\n        address \"127.0.0.1:18080\"\n        protocol \"http\"\n    }\n",
    );
    let (code, out, err, _) = check_text("dup.kdl", &bad);
    let all = format!("{out}{err}");
    assert_eq!(code, Some(1), "duplicate address accepted:\n{all}");
    assert!(
        all.contains("127.0.0.1:18080"),
        "duplicate address not named:\n{all}"
    );
}

#[test]
fn running_with_an_invalid_config_exits_2() {
    let path = temp_path("run-invalid.kdl");
    fs::write(
        &path,
        "listeners {\n    listener \"x\" {\n        adress \"127.0.0.1:1\"\n    }\n}\n",
    )
    .unwrap();
    let out = Command::new(zentinel_bin())
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let _ = fs::remove_file(&path);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("adress"), "{err}");
}

#[test]
fn embedded_default_serves_static_response_on_8080() {
    match TcpListener::bind("127.0.0.1:8080") {
        Ok(l) => drop(l),
        Err(e) => {
            eprintln!("SKIPPED embedded_default_serves_static_response_on_8080: 127.0.0.1:8080 is busy ({e})");
            return;
        }
    }
    let z = Zentinel::start_default();
    let mut c = z.client();
    c.set_timeout(Duration::from_secs(5));
    let r = c.get("/", "localhost");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body_str(), "Zentinel is running\n");
    assert!(r
        .header("content-type")
        .unwrap_or("")
        .starts_with("text/plain"));
}
