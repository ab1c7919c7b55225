//! A route's `policies { ... }`: every form upstream files use, what upstream ignores made to
//! work or warned about, and a located error for everything else.

use super::*;
use zentinel_protocol::config::*;

const BASE: &str = "listeners {\n    listener \"http\" { address \"127.0.0.1:8080\"; }\n}\n\
                    upstreams {\n    upstream \"u\" { target \"127.0.0.1:1\"; }\n}\n";

/// The policies body lines start on line 11, indented by 12 spaces.
fn doc(lines: &[&str]) -> String {
    let mut out = format!(
        "{BASE}routes {{\n    route \"r\" {{\n        upstream \"u\"\n        policies {{\n"
    );
    for line in lines {
        out.push_str("            ");
        out.push_str(line);
        out.push('\n');
    }
    out.push_str("        }\n    }\n}\n");
    out
}

fn messages(diagnostics: &[ConfigDiagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

fn ok(lines: &[&str]) -> FullConfig {
    parse_full_config(&doc(lines), "test.kdl").unwrap_or_else(|d| panic!("{}", messages(&d)))
}

fn policies(lines: &[&str]) -> RoutePolicies {
    ok(lines).proxy.routes[0].policies.clone()
}

/// Line and column of `marker` in body line `index`.
fn place(lines: &[&str], index: usize, marker: &str) -> (usize, usize) {
    let column = 13
        + lines[index]
            .find(marker)
            .unwrap_or_else(|| panic!("{marker:?} not in {:?}", lines[index]));
    (11 + index, column)
}

#[track_caller]
fn assert_error(lines: &[&str], index: usize, marker: &str, node: &str, needle: &str) {
    let errs = match parse_full_config(&doc(lines), "test.kdl") {
        Ok(_) => panic!("expected an error for {lines:?}"),
        Err(errs) => errs,
    };
    assert_eq!(errs.len(), 1, "{lines:?}:\n{}", messages(&errs));
    let e = &errs[0];
    assert_eq!(
        ((e.line, e.column), e.node.as_str()),
        (place(lines, index, marker), node),
        "{lines:?}: {e}"
    );
    assert!(e.message.contains(needle), "{lines:?}: {e}");
}

#[track_caller]
fn assert_warning(lines: &[&str], index: usize, marker: &str, needle: &str) {
    let config = ok(lines);
    assert_eq!(config.warnings.len(), 1, "{}", messages(&config.warnings));
    let w = &config.warnings[0];
    assert_eq!((w.line, w.column), place(lines, index, marker), "{w}");
    assert!(w.message.contains(needle), "{w}");
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

#[test]
fn header_modifications_in_upstreams_grammar() {
    let p = policies(&[
        "request-headers {",
        "    rename { X-Old \"X-New\"; }",
        "    set { \"Host\" \"api.example.com\"; X-Api-Version \"v1\"; }",
        "    add { X-Tag \"a\"; }",
        "    remove \"Cookie\" \"X-Debug\"",
        // Repeated blocks add up (upstream reads only the first of each).
        "    add { X-Tag \"b\"; }",
        "    remove \"X-Other\"",
        "}",
        "response-headers { set { Cache-Control \"no-store\"; }; }",
        "response-headers { remove \"Server\"; }",
    ]);
    let req = &p.request_headers;
    assert_eq!(req.rename, pairs(&[("X-Old", "X-New")]));
    assert_eq!(
        req.set,
        pairs(&[("Host", "api.example.com"), ("X-Api-Version", "v1")])
    );
    assert_eq!(req.add, pairs(&[("X-Tag", "a"), ("X-Tag", "b")]));
    assert_eq!(req.remove, ["Cookie", "X-Debug", "X-Other"]);
    assert_eq!(
        p.response_headers.set,
        pairs(&[("Cache-Control", "no-store")])
    );
    assert_eq!(p.response_headers.remove, ["Server"]);
}

#[test]
fn timeout_body_size_and_rate_limit() {
    let p = policies(&[
        "timeout-secs 7",
        "max-body-size \"1MB\"",
        "rate-limit { requests-per-second 100; burst 200; key \"client_ip\"; }",
    ]);
    assert_eq!(p.timeout_secs, Some(7));
    assert_eq!(p.max_body_size_bytes, Some(1 << 20));
    assert_eq!(
        p.rate_limit,
        Some(RateLimit {
            requests_per_second: 100,
            burst: 200,
            key: RateLimitKey::ClientIp
        })
    );
    assert_eq!(
        policies(&["max-body-size 512"]).max_body_size_bytes,
        Some(512)
    );
    // Burst defaults to the rate; key to the client address.
    let keys = [
        ("\"client-ip\"", RateLimitKey::ClientIp),
        ("\"ip\"", RateLimitKey::ClientIp),
        ("\"path\"", RateLimitKey::Path),
        ("\"route\"", RateLimitKey::Route),
        ("\"client-ip-and-path\"", RateLimitKey::ClientIpAndPath),
        ("\"client_ip_and_path\"", RateLimitKey::ClientIpAndPath),
        (
            "\"header:X-Api-Key\"",
            RateLimitKey::Header("x-api-key".into()),
        ),
    ];
    for (text, key) in keys {
        let line = format!("rate-limit {{ requests-per-second 5; key {text}; }}");
        let r = policies(&[&line]).rate_limit;
        assert_eq!(
            r,
            Some(RateLimit {
                requests_per_second: 5,
                burst: 5,
                key
            }),
            "{text}"
        );
    }
    assert_eq!(
        policies(&["rate-limit { requests-per-second 5; }"])
            .rate_limit
            .map(|r| r.key),
        Some(RateLimitKey::ClientIp)
    );
}

#[test]
fn accepted_with_a_warning() {
    assert_warning(&["failure-mode \"open\""], 0, "failure-mode", "no agents");
    assert_warning(&["failure-mode \"closed\""], 0, "failure-mode", "no agents");
    assert_warning(&["cache { enabled #true; }"], 0, "cache", "ignored");
}

#[test]
fn buffering_switches() {
    let config = ok(&["buffer-requests #true", "buffer-responses #true"]);
    assert!(config.warnings.is_empty());
    let p = &config.proxy.routes[0].policies;
    assert!(p.buffer_requests && p.buffer_responses);
    let config = ok(&["buffer-requests #false"]);
    let p = &config.proxy.routes[0].policies;
    assert!(!p.buffer_requests && !p.buffer_responses);
}

#[test]
fn errors_are_located() {
    assert_error(
        &["timeout-sec 30"],
        0,
        "timeout-sec",
        "timeout-sec",
        "unknown node `timeout-sec` in `policies` (did you mean `timeout-secs`?); accepted: \
         `request-headers`, `response-headers`, `timeout-secs`",
    );
    assert_error(&["timeout-secs 0"], 0, "0", "timeout-secs", "at least 1");
    assert_error(
        &["timeout-secs \"30\""],
        0,
        "\"30\"",
        "timeout-secs",
        "integer",
    );
    assert_error(
        &["max-body-size \"10XB\""],
        0,
        "\"10XB\"",
        "max-body-size",
        "invalid size",
    );
    assert_error(
        &["failure-mode \"fail-open\""],
        0,
        "\"fail-open\"",
        "failure-mode",
        "expected \"open\" or \"closed\"",
    );
    assert_error(
        &["buffer-requests \"yes\""],
        0,
        "\"yes\"",
        "buffer-requests",
        "boolean",
    );
    assert_error(
        &["timeout-secs 1", "timeout-secs 2"],
        1,
        "timeout-secs",
        "timeout-secs",
        "duplicate `timeout-secs` (first set at line 11)",
    );
    assert_error(
        &["request-headers { replace { A \"b\"; }; }"],
        0,
        "replace",
        "replace",
        "accepted: `rename`, `set`, `add`, `remove`",
    );
    assert_error(
        &["request-headers { set { Content-Length \"5\"; }; }"],
        0,
        "Content-Length",
        "set",
        "cannot be changed by a policy",
    );
    assert_error(
        &["response-headers { remove \"Transfer-Encoding\"; }"],
        0,
        "\"Transfer-Encoding\"",
        "remove",
        "cannot be changed by a policy",
    );
    assert_error(
        &["request-headers { rename { X-A \"Connection\"; }; }"],
        0,
        "\"Connection\"",
        "rename",
        "cannot be changed by a policy",
    );
    assert_error(
        &["request-headers { remove \"Host\"; }"],
        0,
        "\"Host\"",
        "remove",
        "cannot be removed",
    );
    assert_error(
        &["request-headers { add { Host \"x\"; }; }"],
        0,
        "Host",
        "add",
        "use `set { Host",
    );
    assert_error(
        &["request-headers { set { \"Bad Name\" \"x\"; }; }"],
        0,
        "\"Bad Name\"",
        "set",
        "invalid header name",
    );
    assert_error(
        &["request-headers { set { X-A \"a\\nb\"; }; }"],
        0,
        "\"a\\nb\"",
        "set",
        "single line",
    );
    assert_error(
        &["request-headers { set { X-A #true; }; }"],
        0,
        "#true",
        "X-A",
        "expected a string",
    );
    assert_error(
        &["rate-limit { burst 5; }"],
        0,
        "rate-limit",
        "rate-limit",
        "missing `requests-per-second`",
    );
    assert_error(
        &["rate-limit { requests-per-second 0; }"],
        0,
        "0",
        "requests-per-second",
        "at least 1",
    );
    assert_error(
        &["rate-limit { requests-per-second 5; key \"user\"; }"],
        0,
        "\"user\"",
        "key",
        "unknown rate-limit key \"user\"",
    );
    assert_error(
        &["rate-limit { requests-per-second 5; per \"ip\"; }"],
        0,
        "per \"",
        "per",
        "accepted: `requests-per-second`, `burst`, `key`",
    );
}

#[test]
fn duplicate_policies_block_is_an_error() {
    let source = doc(&["timeout-secs 1"]).replace(
        "        upstream \"u\"\n",
        "        upstream \"u\"\n        policies { }\n",
    );
    let errs = parse_full_config(&source, "test.kdl")
        .err()
        .unwrap_or_default();
    assert_eq!(errs.len(), 1, "{}", messages(&errs));
    assert_eq!((errs[0].line, errs[0].column), (11, 9), "{}", errs[0]);
    assert!(errs[0].message.contains("duplicate `policies`"));
}
