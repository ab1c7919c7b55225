//! The `system` section in upstream Zentinel's vocabulary, `schema-version`, and the warnings
//! for settings that are accepted without effect.

use super::*;

fn full(source: &str) -> Result<FullConfig, Vec<ConfigDiagnostic>> {
    parse_full_config(source, "test.kdl")
}

const LISTENER: &str = "listeners {\n    listener \"http\" { address \"127.0.0.1:8080\"; }\n}\n";

fn messages(diagnostics: &[ConfigDiagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn upstream_spellings_parse_as_upstream_means_them() {
    let source = format!(
        "schema-version \"1.0\"\nsystem {{\n    worker-threads 4\n    max-connections 5000\n    \
         graceful-shutdown-timeout-secs 12\n    pid-file \"/run/zentinel.pid\"\n    \
         route-cache-size 500\n    trace-id-format \"uuid\"\n    daemon #false\n}}\n{LISTENER}"
    );
    let config = full(&source).unwrap_or_else(|d| panic!("{}", messages(&d)));
    assert!(config.warnings.is_empty(), "{}", messages(&config.warnings));
    let system = &config.proxy.system;
    assert_eq!(system.worker_processes, 4);
    assert_eq!(system.max_connections, 5000);
    assert_eq!(system.graceful_shutdown_timeout_secs, 12);
    assert_eq!(system.pid_file.as_deref(), Some("/run/zentinel.pid"));
}

#[test]
fn worker_processes_stays_an_alias_but_not_both() {
    let config = full(&format!("system {{ worker-processes 3; }}\n{LISTENER}")).unwrap();
    assert_eq!(config.proxy.system.worker_processes, 3);
    let errs = full(&format!(
        "system {{\n    worker-threads 2\n    worker-processes 3\n}}\n{LISTENER}"
    ))
    .unwrap_err();
    assert_eq!(errs.len(), 1, "{}", messages(&errs));
    assert_eq!((errs[0].line, errs[0].column), (3, 5));
    assert!(
        errs[0].message.contains("already set by `worker-threads`"),
        "{}",
        errs[0]
    );
}

#[test]
fn settings_without_effect_warn_instead_of_failing() {
    let config = full(&format!(
        "server {{\n    workers 8\n    daemon #true\n}}\n{LISTENER}"
    ))
    .unwrap_or_else(|d| panic!("{}", messages(&d)));
    // `workers` is not the worker count (upstream ignores it too): the default stays.
    assert_eq!(config.proxy.system.worker_processes, 0);
    let text = messages(&config.warnings);
    assert_eq!(config.warnings.len(), 3, "{text}");
    assert!(
        text.contains("test.kdl:1:1: `server`: `server` is the deprecated spelling"),
        "{text}"
    );
    assert!(
        text.contains("test.kdl:2:5: `workers`: `workers` has no effect"),
        "{text}"
    );
    assert!(
        text.contains("test.kdl:3:5: `daemon`: `daemon #true`: zentinel stays in the foreground"),
        "{text}"
    );
}

#[test]
fn system_and_server_are_one_block() {
    let errs = full(&format!("system {{ }}\nserver {{ }}\n{LISTENER}")).unwrap_err();
    assert!(
        errs.iter()
            .any(|e| e.line == 2 && e.message.contains("duplicate `system`")),
        "{}",
        messages(&errs)
    );
}

#[test]
fn schema_version_is_checked() {
    assert!(full(&format!("schema-version \"1.0\"\n{LISTENER}")).is_ok());
    assert!(full(&format!("version \"1.0\"\n{LISTENER}")).is_ok());
    let newer = full(&format!("schema-version \"1.3\"\n{LISTENER}")).unwrap();
    assert!(
        messages(&newer.warnings).contains("newer than the supported 1.0"),
        "{}",
        messages(&newer.warnings)
    );
    for (value, needle) in [
        ("\"0.9\"", "older than the oldest supported"),
        ("\"one\"", "expected major.minor"),
        ("1.0", "expected a string"),
    ] {
        let errs = full(&format!("schema-version {value}\n{LISTENER}")).unwrap_err();
        assert!(
            errs.len() == 1 && errs[0].line == 1 && errs[0].message.contains(needle),
            "{value}: {}",
            messages(&errs)
        );
    }
}

#[test]
fn unimplemented_system_keys_are_reported_as_such() {
    let errs = full(&format!(
        "system {{\n    auto-reload #true\n    trace-id-format \"snowflake\"\n}}\n{LISTENER}"
    ))
    .unwrap_err();
    let text = messages(&errs);
    assert!(
        text.contains("test.kdl:2:5: `auto-reload`: `auto-reload` is not supported yet"),
        "{text}"
    );
    assert!(
        text.contains("test.kdl:3:21: `trace-id-format`: unknown trace id format"),
        "{text}"
    );
}

#[test]
fn run_creates_a_missing_file_with_the_embedded_default() {
    let dir = std::env::temp_dir().join(format!("zentinel-run-default-{}", std::process::id()));
    let path = dir.join("etc/zentinel.kdl");
    let _ = std::fs::remove_dir_all(&dir);
    create_default_if_missing(&path).unwrap();
    let written = std::fs::read_to_string(&path).unwrap();
    assert_eq!(written, DEFAULT_CONFIG_KDL.trim_start());
    // An existing file is left alone.
    std::fs::write(&path, "// mine\n").unwrap();
    create_default_if_missing(&path).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "// mine\n");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn limits_in_upstream_spelling_with_our_aliases() {
    let config = full(&format!(
        "limits {{\n    max-header-size 16384\n    max-header-count 64\n    max-body-size \"2MB\"\n    \
         max-connections-per-client 20\n    max-total-connections 5000\n}}\n{LISTENER}"
    ))
    .unwrap_or_else(|d| panic!("{}", messages(&d)));
    let limits = &config.proxy.limits;
    assert_eq!(limits.max_header_size_bytes, 16384);
    assert_eq!(limits.max_header_count, 64);
    assert_eq!(limits.max_body_size_bytes, 2 << 20);
    assert_eq!(limits.max_connections_per_client, 20);
    assert_eq!(limits.max_total_connections, 5000);

    // This project's names still work; giving both spellings is one key set twice.
    let config = full(&format!(
        "limits {{ max-header-size-bytes 4096; max-body-size-bytes 1048576; }}\n{LISTENER}"
    ))
    .unwrap();
    assert_eq!(config.proxy.limits.max_header_size_bytes, 4096);
    assert_eq!(config.proxy.limits.max_body_size_bytes, 1 << 20);
    let errs = full(&format!(
        "limits {{\n    max-body-size 10\n    max-body-size-bytes 20\n}}\n{LISTENER}"
    ))
    .unwrap_err();
    assert!(
        errs.len() == 1
            && errs[0].line == 3
            && errs[0].message.contains("duplicate `max-body-size`"),
        "{}",
        messages(&errs)
    );
    let errs = full(&format!(
        "limits {{\n    max-body-size \"ten MB\"\n}}\n{LISTENER}"
    ))
    .unwrap_err();
    assert!(
        errs.len() == 1 && errs[0].message.contains("invalid size \"ten MB\""),
        "{}",
        messages(&errs)
    );
    let warned = full(&format!(
        "limits {{ max-in-flight-requests 100; }}\n{LISTENER}"
    ))
    .unwrap();
    assert!(messages(&warned.warnings).contains("not enforced yet"));
}

#[test]
fn logging_settings_parse_and_resolve() {
    let config = full(&format!(
        "observability {{\n    logging {{\n        level \"debug\"\n        format \"json\"\n        \
         timestamps #false\n        error-log {{ file \"/var/log/z/error.log\"; level \"error\"; }}\n        \
         access-log {{ include-trace-id #false; sample-rate 0.5; }}\n    }}\n}}\n{LISTENER}"
    ))
    .unwrap_or_else(|d| panic!("{}", messages(&d)));
    let logging = &config.logging;
    assert_eq!(logging.level.as_deref(), Some("debug"));
    assert!(logging.json);
    assert_eq!(logging.timestamps, Some(false));
    let settings = crate::logging::LogSettings::resolve(None, logging);
    assert_eq!(settings.level, "debug");
    assert!(settings.json && !settings.timestamps);
    assert_eq!(
        settings.error_log,
        Some(crate::logging::ErrorLog {
            file: "/var/log/z/error.log".to_owned(),
            errors_only: true,
            buffer_size: 8192,
        })
    );
    // An explicit --log-level wins over the file.
    assert_eq!(
        crate::logging::LogSettings::resolve(Some("warn"), logging).level,
        "warn"
    );
    // Upstream's default access-log file; the rate in millionths.
    let access_log = config.proxy.listeners[0].access_log.as_ref().unwrap();
    assert_eq!(access_log.file, "/var/log/zentinel/access.log");
    assert!(!access_log.include_trace_id);
    assert_eq!(access_log.sample_per_million, 500_000);
    assert!(config.warnings.is_empty(), "{}", messages(&config.warnings));
}

#[test]
fn user_and_group_must_exist() {
    let config = full(&format!(
        "system {{\n    user \"root\"\n    group \"root\"\n}}\n{LISTENER}"
    ))
    .unwrap_or_else(|d| panic!("{}", messages(&d)));
    assert_eq!(config.proxy.system.user.as_deref(), Some("root"));
    assert_eq!(config.proxy.system.group.as_deref(), Some("root"));
    let errs = full(&format!(
        "system {{\n    user \"no-such-user-zt\"\n    group \"no-such-group-zt\"\n}}\n{LISTENER}"
    ))
    .unwrap_err();
    let text = messages(&errs);
    assert!(
        text.contains("test.kdl:2:10: `user`: no user \"no-such-user-zt\""),
        "{text}"
    );
    assert!(
        text.contains("test.kdl:3:11: `group`: no group \"no-such-group-zt\""),
        "{text}"
    );
}

#[test]
fn upstream_fields_its_kdl_parser_never_reads_are_warned_about() {
    let config = full(&format!(
        "limits {{\n    max-body-buffer-bytes 1048576\n    max-decompression-ratio 50.0\n}}\n\
         observability {{\n    metrics {{ high-cardinality #true; }}\n}}\n{LISTENER}"
    ))
    .unwrap_or_else(|d| panic!("{}", messages(&d)));
    let text = messages(&config.warnings);
    assert!(
        text.contains(
            "test.kdl:2:5: `max-body-buffer-bytes`: `max-body-buffer-bytes` has no effect"
        ),
        "{text}"
    );
    assert!(
        text.contains("test.kdl:3:5: `max-decompression-ratio`"),
        "{text}"
    );
    assert!(text.contains("test.kdl:6:15: `high-cardinality`"), "{text}");
    let errs = full(&format!(
        "limits {{\n    max-body-buffer-bytes \"big\"\n}}\n{LISTENER}"
    ))
    .unwrap_err();
    assert!(
        messages(&errs).contains("expected a number"),
        "{}",
        messages(&errs)
    );
}

#[test]
fn drain_windows_close_spread_and_draining_generations() {
    let config = full(&format!(
        "system {{ graceful-shutdown-timeout-secs 20; }}\n{LISTENER}"
    ))
    .unwrap_or_else(|d| panic!("{}", messages(&d)));
    let system = &config.proxy.system;
    // Unset: an upgrade drains as long as a stop, the close spread is the worker's default.
    assert_eq!(system.upgrade_drain_timeout_secs, None);
    assert_eq!(system.upgrade_drain(), std::time::Duration::from_secs(20));
    assert_eq!(system.stop_drain(), std::time::Duration::from_secs(20));
    assert_eq!(system.close_spread_time_ms, None);
    assert_eq!(system.max_draining_generations, 3);

    let config = full(&format!(
        "system {{\n    graceful-shutdown-timeout-secs 10\n    upgrade-drain-timeout-secs 600\n    \
         close-spread-time-secs 4\n    max-draining-generations 1\n}}\n{LISTENER}"
    ))
    .unwrap_or_else(|d| panic!("{}", messages(&d)));
    assert!(config.warnings.is_empty(), "{}", messages(&config.warnings));
    let system = &config.proxy.system;
    assert_eq!(system.upgrade_drain(), std::time::Duration::from_secs(600));
    assert_eq!(system.stop_drain(), std::time::Duration::from_secs(10));
    assert_eq!(system.close_spread_time_ms, Some(4000));
    assert_eq!(system.max_draining_generations, 1);

    // 0 is "all at once" and "every retired worker finishes at once": both accepted.
    let config = full(&format!(
        "system {{ close-spread-time-secs 0; max-draining-generations 0; }}\n{LISTENER}"
    ))
    .unwrap_or_else(|d| panic!("{}", messages(&d)));
    assert_eq!(config.proxy.system.close_spread_time_ms, Some(0));
    assert_eq!(config.proxy.system.max_draining_generations, 0);
}

#[test]
fn a_close_spread_longer_than_a_drain_warns_and_bad_values_fail() {
    let config = full(&format!(
        "system {{\n    graceful-shutdown-timeout-secs 5\n    upgrade-drain-timeout-secs 60\n    \
         close-spread-time-secs 8\n}}\n{LISTENER}"
    ))
    .unwrap_or_else(|d| panic!("{}", messages(&d)));
    let text = messages(&config.warnings);
    assert!(
        text.contains(
            "test.kdl:4:5: `close-spread-time-secs`: longer than the shortest drain window (5 s)"
        ),
        "{text}"
    );
    for bad in [
        "upgrade-drain-timeout-secs -1",
        "close-spread-time-secs \"5s\"",
        "max-draining-generations 1001",
    ] {
        let errs = full(&format!("system {{ {bad}; }}\n{LISTENER}")).unwrap_err();
        assert_eq!(errs.len(), 1, "{bad}: {}", messages(&errs));
    }
}
