//! `retry-policy` (route) and `circuit-breaker` (upstream, and route: applied to the route's
//! upstream): every key, the examples' spellings, and a located error for each mistake.

use super::*;
use zentinel_protocol::config::*;

/// Lines 1-3: the listener; line 4 `upstreams {`; line 5 `upstream "u" {`; `up` from line 6.
/// Then the routes block; see [`route_line`].
fn doc(up: &[&str], route: &[&str]) -> String {
    let mut s = String::from(
        "listeners {\n    listener \"http\" { address \"127.0.0.1:8080\"; }\n}\nupstreams {\n    \
         upstream \"u\" {\n        target \"127.0.0.1:9001\"\n",
    );
    for l in up {
        s.push_str("        ");
        s.push_str(l);
        s.push('\n');
    }
    s.push_str("    }\n}\nroutes {\n    route \"r\" {\n        upstream \"u\"\n");
    for l in route {
        s.push_str("        ");
        s.push_str(l);
        s.push('\n');
    }
    s.push_str("    }\n}\n");
    s
}

/// Line of `up[i]` and of `route[i]` in [`doc`].
fn up_line(i: usize) -> usize {
    7 + i
}
fn route_line(up_len: usize, i: usize) -> usize {
    7 + up_len + 5 + i
}

fn messages(d: &[ConfigDiagnostic]) -> String {
    d.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[track_caller]
fn ok(up: &[&str], route: &[&str]) -> FullConfig {
    parse_full_config(&doc(up, route), "t.kdl").unwrap_or_else(|d| panic!("{}", messages(&d)))
}

/// The single error, as (line, column, message).
#[track_caller]
fn err(up: &[&str], route: &[&str]) -> (usize, usize, String) {
    match parse_full_config(&doc(up, route), "t.kdl") {
        Ok(_) => panic!("expected an error for {up:?} {route:?}"),
        Err(d) => {
            assert_eq!(d.len(), 1, "{}", messages(&d));
            (d[0].line, d[0].column, d[0].message.clone())
        }
    }
}

/// Column (1-based) of `marker` in a body line (indented by 8).
fn col(line: &str, marker: &str) -> usize {
    9 + line.find(marker).expect("marker in line")
}

#[track_caller]
fn route_error(route: &[&str], index: usize, marker: &str, needle: &str) {
    let (line, column, message) = err(&[], route);
    assert_eq!(
        (line, column),
        (route_line(0, index), col(route[index], marker)),
        "{message}"
    );
    assert!(message.contains(needle), "{message}");
}

#[track_caller]
fn up_error(up: &[&str], index: usize, marker: &str, needle: &str) {
    let (line, column, message) = err(up, &[]);
    assert_eq!(
        (line, column),
        (up_line(index), col(up[index], marker)),
        "{message}"
    );
    assert!(message.contains(needle), "{message}");
}

fn policy(c: &FullConfig) -> RetryPolicy {
    c.proxy.routes[0]
        .retry_policy
        .clone()
        .expect("a retry policy")
}

#[test]
fn retry_policy_every_key() {
    let c = ok(
        &[],
        &[
            "retry-policy {",
            "    max-attempts 4",
            "    timeout-ms 5000",
            "    backoff-base-ms 50",
            "    backoff-max-ms 2000",
            "    retryable-status-codes 502 503 504 429",
            "}",
        ],
    );
    assert_eq!(
        policy(&c),
        RetryPolicy {
            max_attempts: 4,
            timeout_ms: Some(5000),
            backoff_base_ms: 50,
            backoff_max_ms: 2000,
            retryable_status_codes: vec![502, 503, 504, 429],
        }
    );
}

#[test]
fn retry_policy_defaults_and_absence() {
    let c = ok(&[], &["retry-policy {", "}"]);
    assert_eq!(policy(&c), RetryPolicy::default());
    assert_eq!(policy(&c).max_attempts, 3, "upstream's default");
    let c = ok(&[], &["retry-policy { max-attempts 1; }"]);
    assert_eq!(policy(&c).max_attempts, 1);
    let c = ok(&[], &[]);
    assert_eq!(c.proxy.routes[0].retry_policy, None);
    let c = ok(
        &[],
        &["retry-policy { backoff-base-ms 0; backoff-max-ms 0; }"],
    );
    assert_eq!(
        (policy(&c).backoff_base_ms, policy(&c).backoff_max_ms),
        (0, 0)
    );
}

#[test]
fn the_examples_retry_policy_is_accepted() {
    // config/examples/load-balancer.kdl, which upstream itself rejects ("unknown key timeout-ms").
    let c = ok(
        &[],
        &[
            "retry-policy {",
            "    max-attempts 3",
            "    timeout-ms 10000",
            "    backoff-base-ms 100",
            "    retryable-status-codes 502 503 504",
            "}",
        ],
    );
    assert_eq!(policy(&c).timeout_ms, Some(10_000));
}

#[test]
fn retry_policy_errors_are_located() {
    let bad = "    max-attempt 3";
    route_error(
        &["retry-policy {", bad, "}"],
        1,
        "max-attempt",
        "unknown node `max-attempt` in `retry-policy` (did you mean `max-attempts`?); accepted: \
         `max-attempts`, `timeout-ms`, `backoff-base-ms`, `backoff-max-ms`, \
         `retryable-status-codes`",
    );
    let l = "    max-attempts 0";
    route_error(&["retry-policy {", l, "}"], 1, "0", "must be at least 1");
    let l = "    max-attempts 101";
    route_error(&["retry-policy {", l, "}"], 1, "101", "must be at most 100");
    let l = "    max-attempts \"3\"";
    route_error(
        &["retry-policy {", l, "}"],
        1,
        "\"3\"",
        "expected an integer",
    );
    let l = "    max-attempts";
    route_error(
        &["retry-policy {", l, "}"],
        1,
        "max-attempts",
        "missing value",
    );
    let l = "    timeout-ms 0";
    route_error(&["retry-policy {", l, "}"], 1, "0", "must be at least 1");
    let l = "    timeout-ms 1.5";
    route_error(&["retry-policy {", l, "}"], 1, "1.5", "expected an integer");
    let l = "    backoff-base-ms -1";
    route_error(&["retry-policy {", l, "}"], 1, "-1", "must be at least 0");
    let l = "    backoff-max-ms 3600001";
    route_error(
        &["retry-policy {", l, "}"],
        1,
        "3600001",
        "must be at most 3600000",
    );
    let lines = [
        "retry-policy {",
        "    backoff-base-ms 500",
        "    backoff-max-ms 100",
        "}",
    ];
    route_error(&lines, 2, "backoff-max-ms", "below backoff-base-ms");
    let l = "    retryable-status-codes 200";
    route_error(
        &["retry-policy {", l, "}"],
        1,
        "200",
        "must be at least 400",
    );
    let l = "    retryable-status-codes 502 600";
    route_error(&["retry-policy {", l, "}"], 1, "600", "must be at most 599");
    let l = "    retryable-status-codes";
    route_error(
        &["retry-policy {", l, "}"],
        1,
        "retryable",
        "one or more statuses",
    );
    let l = "    retryable-status-codes \"502\"";
    route_error(
        &["retry-policy {", l, "}"],
        1,
        "\"502\"",
        "expected an integer",
    );
    let lines = [
        "retry-policy {",
        "    max-attempts 2",
        "    max-attempts 3",
        "}",
    ];
    route_error(&lines, 2, "max-attempts", "duplicate `max-attempts`");
    let lines = [
        "retry-policy { max-attempts 2; }",
        "retry-policy { max-attempts 3; }",
    ];
    route_error(&lines, 1, "retry-policy", "duplicate `retry-policy`");
    let l = "retry-policy 3";
    route_error(&[l], 0, "3", "takes no arguments");
}

#[test]
fn duplicate_status_is_reported_at_the_repeat() {
    let l = "    retryable-status-codes 502 503 502";
    let (line, column, message) = err(&[], &["retry-policy {", l, "}"]);
    assert_eq!(
        (line, column),
        (route_line(0, 1), col(l, "502") + 8),
        "{message}"
    );
    assert!(message.contains("status 502 is listed twice"), "{message}");
}

fn breaker(c: &FullConfig) -> Option<CircuitBreakerConfig> {
    c.proxy.upstreams[0].circuit_breaker.clone()
}

#[test]
fn circuit_breaker_every_key_and_defaults() {
    let c = ok(
        &[
            "circuit-breaker {",
            "    failure-threshold 3",
            "    success-threshold 4",
            "    timeout-seconds 60",
            "    half-open-max-requests 2",
            "}",
        ],
        &[],
    );
    assert_eq!(
        breaker(&c),
        Some(CircuitBreakerConfig {
            failure_threshold: 3,
            success_threshold: 4,
            timeout_seconds: 60,
            half_open_max_requests: 2,
        })
    );
    let c = ok(&["circuit-breaker {", "}"], &[]);
    assert_eq!(breaker(&c), Some(CircuitBreakerConfig::default()));
    let d = CircuitBreakerConfig::default();
    assert_eq!(
        (
            d.failure_threshold,
            d.success_threshold,
            d.timeout_seconds,
            d.half_open_max_requests
        ),
        (5, 2, 30, 1),
        "upstream's defaults"
    );
    assert_eq!(
        breaker(&ok(&[], &[])),
        Some(CircuitBreakerConfig::default()),
        "no block: upstream's default breaker"
    );
}

#[test]
fn circuit_breaker_multi_file_spellings() {
    // config/example-multi-file: `timeout "30s"` and `enabled`.
    let c = ok(
        &[
            "circuit-breaker {",
            "    enabled #true",
            "    timeout \"30s\"",
            "}",
        ],
        &[],
    );
    assert_eq!(breaker(&c).map(|b| b.timeout_seconds), Some(30));
    let c = ok(&["circuit-breaker { timeout \"2m\"; }"], &[]);
    assert_eq!(breaker(&c).map(|b| b.timeout_seconds), Some(120));
    let c = ok(&["circuit-breaker { timeout 7; }"], &[]);
    assert_eq!(breaker(&c).map(|b| b.timeout_seconds), Some(7));
    let c = ok(
        &["circuit-breaker { enabled #false; failure-threshold 3; }"],
        &[],
    );
    assert_eq!(breaker(&c), None);
}

#[test]
fn circuit_breaker_errors_are_located() {
    let l = "    failure-treshold 3";
    up_error(
        &["circuit-breaker {", l, "}"],
        1,
        "failure-treshold",
        "(did you mean `failure-threshold`?); accepted: `failure-threshold`, \
         `success-threshold`, `timeout-seconds`, `timeout`, `half-open-max-requests`, `enabled`",
    );
    for key in [
        "failure-threshold",
        "success-threshold",
        "half-open-max-requests",
        "timeout-seconds",
    ] {
        let l = format!("    {key} 0");
        up_error(
            &["circuit-breaker {", &l, "}"],
            1,
            "0",
            "must be at least 1",
        );
        let l = format!("    {key} \"5\"");
        up_error(
            &["circuit-breaker {", &l, "}"],
            1,
            "\"5\"",
            "expected an integer",
        );
        let l = format!("    {key}");
        up_error(&["circuit-breaker {", &l, "}"], 1, key, "missing value");
    }
    let l = "    failure-threshold 1000001";
    up_error(
        &["circuit-breaker {", l, "}"],
        1,
        "1000001",
        "must be at most 1000000",
    );
    let l = "    timeout \"soon\"";
    up_error(
        &["circuit-breaker {", l, "}"],
        1,
        "\"soon\"",
        "invalid duration",
    );
    let l = "    timeout \"0s\"";
    up_error(
        &["circuit-breaker {", l, "}"],
        1,
        "\"0s\"",
        "at least 1 second",
    );
    let lines = [
        "circuit-breaker {",
        "    timeout-seconds 5",
        "    timeout \"5s\"",
        "}",
    ];
    up_error(&lines, 2, "timeout", "duplicate `timeout-seconds`");
    let l = "    enabled \"yes\"";
    up_error(
        &["circuit-breaker {", l, "}"],
        1,
        "\"yes\"",
        "expected a boolean",
    );
    let l = "    failure-conditions { }";
    up_error(
        &["circuit-breaker {", l, "}"],
        1,
        "failure-conditions",
        "; accepted: `",
    );
    let lines = ["circuit-breaker { }", "circuit-breaker { }"];
    up_error(&lines, 1, "circuit-breaker", "duplicate `circuit-breaker`");
    // In a route too (same parser).
    let l = "    half-open 1";
    route_error(
        &["circuit-breaker {", l, "}"],
        1,
        "half-open",
        "; accepted: `",
    );
}

#[test]
fn a_route_circuit_breaker_guards_the_routes_upstream() {
    let c = ok(
        &[],
        &["circuit-breaker { failure-threshold 3; timeout-seconds 60; }"],
    );
    assert!(c.warnings.is_empty(), "{}", messages(&c.warnings));
    assert_eq!(
        breaker(&c),
        Some(CircuitBreakerConfig {
            failure_threshold: 3,
            timeout_seconds: 60,
            ..CircuitBreakerConfig::default()
        })
    );
}

#[test]
fn the_upstreams_own_breaker_wins_over_a_routes_with_a_warning() {
    let c = ok(
        &["circuit-breaker { failure-threshold 9; }"],
        &["circuit-breaker { failure-threshold 3; }"],
    );
    assert_eq!(breaker(&c).map(|b| b.failure_threshold), Some(9));
    assert_eq!(c.warnings.len(), 1, "{}", messages(&c.warnings));
    let w = &c.warnings[0];
    assert_eq!((w.line, w.column), (route_line(1, 0), 9), "{w}");
    assert!(w.message.contains("has its own circuit-breaker"), "{w}");
}

#[test]
fn two_routes_disagreeing_on_one_upstreams_breaker_warn() {
    let mut text = doc(&[], &["circuit-breaker { failure-threshold 3; }"]);
    text.push_str(
        "routes {\n    route \"r2\" {\n        matches { path-prefix \"/x\"; }\n        upstream \"u\"\n        \
         circuit-breaker { failure-threshold 4; }\n    }\n}\n",
    );
    let c = parse_full_config(&text, "t.kdl").unwrap_or_else(|d| panic!("{}", messages(&d)));
    assert_eq!(
        breaker(&c).map(|b| b.failure_threshold),
        Some(3),
        "first one wins"
    );
    assert_eq!(c.warnings.len(), 1, "{}", messages(&c.warnings));
    assert!(c.warnings[0]
        .message
        .contains("already takes the circuit-breaker of route `r`"));
    assert_eq!(c.warnings[0].line, route_line(0, 0) + 7);
}

#[test]
fn a_breaker_on_a_route_without_upstream_is_warned_about() {
    let text = "listeners {\n    listener \"http\" { address \"127.0.0.1:8080\"; }\n}\nroutes {\n    \
                route \"r\" {\n        static-response status=200\n        circuit-breaker { }\n    \
                }\n}\n";
    let c = parse_full_config(text, "t.kdl").unwrap_or_else(|d| panic!("{}", messages(&d)));
    assert_eq!(c.warnings.len(), 1, "{}", messages(&c.warnings));
    assert_eq!((c.warnings[0].line, c.warnings[0].column), (7, 9));
    assert!(c.warnings[0].message.contains("has no upstream"));
}
