//! `shadow { ... }` on routes: every key, upstream's spellings of the share, located errors.

use super::routes_tests::{assert_error, doc, full, messages, ok, route};
use zentinel_protocol::config::*;

fn shadow(lines: &[&str]) -> RouteShadow {
    let config = ok(&route(lines));
    config.proxy.routes[0]
        .extras
        .as_ref()
        .and_then(|e| e.shadow.clone())
        .expect("a shadow")
}

#[test]
fn every_key_parses() {
    let config = ok(&route(&[
        "upstream \"u\"",
        "shadow {",
        "    upstream \"u\"",
        "    percentage 12.5",
        "    sample-header \"X-Shadow-Test\" \"enabled\"",
        "    timeout-ms 250",
        "    buffer-body #true",
        "    max-body-bytes 1048576",
        "}",
    ]));
    let sh = config.proxy.routes[0]
        .extras
        .as_ref()
        .and_then(|e| e.shadow.clone())
        .expect("a shadow");
    assert_eq!(
        sh,
        RouteShadow {
            upstream: "u".into(),
            per_10000: 1250,
            sample_header: Some(("x-shadow-test".into(), "enabled".into())),
            timeout_ms: 250,
        }
    );
    let w = messages(&config.warnings);
    assert!(w.contains("`buffer-body` is accepted, no effect"), "{w}");
    assert!(w.contains("`max-body-bytes` is accepted, no effect"), "{w}");
}

#[test]
fn percentage_forms() {
    let pct = |v: &str| {
        shadow(&[
            "upstream \"u\"",
            &format!("shadow {{ upstream \"u\"; percentage {v}; }}"),
        ])
        .per_10000
    };
    assert_eq!(pct("10"), 1000);
    // Upstream reads a float as 100%; here it is what it says.
    assert_eq!(pct("10.0"), 1000);
    assert_eq!(pct("\"12.5\""), 1250);
    assert_eq!(pct("0"), 0);
    assert_eq!(pct("100"), 10_000);
    let sh = shadow(&["upstream \"u\"", "shadow { upstream \"u\"; }"]);
    assert_eq!(
        (sh.per_10000, sh.timeout_ms, sh.sample_header),
        (10_000, 5000, None)
    );
}

#[test]
fn mistakes_are_located() {
    assert_error(
        &["upstream \"u\"", "shadow {", "    percentage 10", "}"],
        1,
        "shadow",
        "shadow",
        "needs the upstream",
    );
    assert_error(
        &[
            "upstream \"u\"",
            "shadow {",
            "    upstream \"u\"",
            "    percentage 150",
            "}",
        ],
        3,
        "150",
        "percentage",
        "from 0 to 100",
    );
    assert_error(
        &[
            "upstream \"u\"",
            "shadow {",
            "    upstream \"u\"",
            "    percentage \"lots\"",
            "}",
        ],
        3,
        "\"lots\"",
        "percentage",
        "from 0 to 100",
    );
    assert_error(
        &[
            "upstream \"u\"",
            "shadow {",
            "    upstream \"u\"",
            "    sample-header \"X\"",
            "}",
        ],
        3,
        "sample-header",
        "sample-header",
        "header name and the value",
    );
    assert_error(
        &[
            "upstream \"u\"",
            "shadow {",
            "    upstream \"u\"",
            "    timeout 5",
            "}",
        ],
        3,
        "timeout",
        "timeout",
        "accepted: `upstream`, `percentage`, `sample-header`, `timeout-ms`",
    );
    let Err(errs) = full(&doc(&route(&[
        "upstream \"u\"",
        "shadow { upstream \"nope\"; }",
    ]))) else {
        panic!("an unknown shadow upstream must be an error");
    };
    assert_eq!(errs.len(), 1, "{}", messages(&errs));
    assert_eq!((errs[0].line, errs[0].column), (10, 27), "{}", errs[0]);
}
