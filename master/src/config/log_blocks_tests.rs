//! `access-log` and `error-log`: every key upstream Zentinel reads or documents, with its
//! defaults, and errors located at the value.

use super::*;
use zentinel_protocol::config::{AccessLogConfig, AccessLogFields};

const LISTENER: &str = "listeners {\n    listener \"http\" { address \"127.0.0.1:8080\"; }\n}\n";

fn full(logging: &str) -> Result<FullConfig, Vec<ConfigDiagnostic>> {
    parse_full_config(
        &format!("{LISTENER}observability {{\n    logging {{\n{logging}\n    }}\n}}\n"),
        "test.kdl",
    )
}

fn messages(diagnostics: &[ConfigDiagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

fn access_log(logging: &str) -> (AccessLogConfig, String) {
    let config = full(logging).unwrap_or_else(|d| panic!("{}", messages(&d)));
    let log = config.proxy.listeners[0]
        .access_log
        .clone()
        .expect("an access log");
    (log, messages(&config.warnings))
}

#[test]
fn every_access_log_key_is_read() {
    // KDL v1 booleans, as upstream's examples write them, and v2.
    let (log, warnings) = access_log(
        "access-log {\n    enabled true\n    file \"/var/log/z/a.log\"\n    format \"json\"\n    \
         buffer-size 0\n    include-trace-id #false\n    sample-rate 0.25\n    \
         sample-errors-always false\n    fields {\n        user-agent #false\n        \
         latency-ms false\n        client-ip #true\n    }\n}",
    );
    assert_eq!(warnings, "");
    assert_eq!(
        log,
        AccessLogConfig {
            format: "json".to_owned(),
            include_trace_id: false,
            buffer_size: 0,
            sample_per_million: 250_000,
            sample_errors_always: false,
            fields: AccessLogFields {
                user_agent: false,
                latency_ms: false,
                ..AccessLogFields::default()
            },
            ..AccessLogConfig::with_file("/var/log/z/a.log".to_owned())
        }
    );
}

#[test]
fn access_log_defaults_are_upstreams() {
    let (log, _) = access_log("access-log { }");
    assert_eq!(
        log,
        AccessLogConfig::with_file("/var/log/zentinel/access.log".to_owned())
    );
    assert_eq!(
        (
            log.format.as_str(),
            log.buffer_size,
            log.sample_per_million,
            log.sample_errors_always,
            log.include_trace_id
        ),
        ("json", 8192, 1_000_000, true, true)
    );
    let (log, _) = access_log("access-log { sample-rate 0; }");
    assert_eq!(log.sample_per_million, 0);
    let (log, _) = access_log("access-log { sample-rate 1; }");
    assert_eq!(log.sample_per_million, 1_000_000);
}

#[test]
fn access_log_values_out_of_range_are_located() {
    let errs = full(
        "access-log {\n    sample-rate 1.5\n    buffer-size 100000000\n    \
         fields { user_agent #false; }\n}",
    )
    .unwrap_err();
    let text = messages(&errs);
    assert!(
        text.contains("test.kdl:7:17: `sample-rate`: `sample-rate` must be a number from 0.0"),
        "{text}"
    );
    assert!(text.contains("found the number 1.5"), "{text}");
    assert!(
        text.contains("test.kdl:8:17: `buffer-size`: must be at most 67108864"),
        "{text}"
    );
    assert!(text.contains("test.kdl:9:14: `user_agent`"), "{text}");
    assert!(text.contains("user-agent"), "a suggestion: {text}");
    let errs = full("access-log { sample-rate -0.1; }").unwrap_err();
    assert!(messages(&errs).contains("found the number -0.1"));
    let errs = full("access-log { sample-rate \"50%\"; }").unwrap_err();
    assert!(messages(&errs).contains("`sample-rate` must be a number"));
}

#[test]
fn unknown_format_names_are_json_with_a_warning() {
    let (log, warnings) = access_log("access-log { format \"custom\"; }");
    assert_eq!(log.format, "custom");
    assert!(
        warnings.contains("unknown access-log format \"custom\": written as \"json\""),
        "{warnings}"
    );
    // Fields shape only json.
    let (_, warnings) = access_log("access-log { format \"combined\"; fields { query #false; }; }");
    assert!(
        warnings.contains("`fields` only chooses the keys of the \"json\" format"),
        "{warnings}"
    );
    let (_, warnings) = access_log("access-log { format \"CLF\"; }");
    assert_eq!(warnings, "");
}

#[test]
fn error_log_keys_and_upstreams_defaults() {
    let config = full("error-log { }").unwrap_or_else(|d| panic!("{}", messages(&d)));
    assert_eq!(
        config.logging.error_log,
        Some(crate::logging::ErrorLog {
            file: "/var/log/zentinel/error.log".to_owned(),
            errors_only: false,
            buffer_size: 8192,
        })
    );
    let config =
        full("error-log {\n    file \"/tmp/e.log\"\n    level \"info\"\n    buffer-size 0\n}")
            .unwrap_or_else(|d| panic!("{}", messages(&d)));
    let log = config.logging.error_log.clone().unwrap();
    assert_eq!(
        (log.file.as_str(), log.errors_only, log.buffer_size),
        ("/tmp/e.log", false, 0)
    );
    // Upstream takes any level but "error" as "warn"; so does this build, saying so.
    assert!(
        messages(&config.warnings).contains("test.kdl:8:11: `level`: error-log level \"info\""),
        "{}",
        messages(&config.warnings)
    );
    let config = full("error-log { enabled #false; }").unwrap();
    assert_eq!(config.logging.error_log, None);
}
