//! `fallback { ... }` on routes: upstream's keys, its example's `upstream` spelling, and
//! located errors.

use super::routes_tests::{assert_error, doc, full, messages, ok, route};
use zentinel_protocol::config::*;

fn fallback(lines: &[&str]) -> RouteFallback {
    let config = ok(&route(lines));
    let r = &config.proxy.routes[0];
    r.extras
        .as_ref()
        .and_then(|e| e.fallback.clone())
        .expect("a fallback")
}

#[test]
fn every_key_parses() {
    let config = ok(&route(&[
        "upstream \"u\"",
        "fallback {",
        "    max-attempts 2",
        "    triggers {",
        "        on-health-failure #false",
        "        on-connection-error #true",
        "        on-budget-exhausted #true",
        "        on-latency-threshold-ms 5000",
        "        on-error-codes 502 503",
        "    }",
        "    fallback-upstream \"u\" {",
        "        provider \"openai\"",
        "        skip-if-unhealthy #true",
        "    }",
        "    upstream \"u\"",
        "    model-mapping { \"a\" \"b\"; }",
        "}",
    ]));
    let f = config.proxy.routes[0]
        .extras
        .as_ref()
        .and_then(|e| e.fallback.clone())
        .expect("a fallback");
    assert_eq!(
        f,
        RouteFallback {
            upstreams: vec![
                FallbackUpstream {
                    name: "u".into(),
                    skip_if_unhealthy: true
                },
                FallbackUpstream {
                    name: "u".into(),
                    skip_if_unhealthy: false
                },
            ],
            max_attempts: 2,
            on_health_failure: false,
            on_connection_error: true,
        }
    );
    let w = messages(&config.warnings);
    for key in [
        "on-budget-exhausted",
        "on-latency-threshold-ms",
        "on-error-codes",
        "provider",
        "model-mapping",
    ] {
        assert!(
            w.contains(&format!("`{key}` is accepted, no effect")),
            "{key}: {w}"
        );
    }
}

#[test]
fn defaults_as_upstream() {
    let f = fallback(&["upstream \"u\"", "fallback { fallback-upstream \"u\"; }"]);
    assert_eq!(f.max_attempts, 3);
    assert!(f.on_health_failure && f.on_connection_error);
}

#[test]
fn mistakes_are_located() {
    assert_error(
        &["upstream \"u\"", "fallback {", "    max-attempts 3", "}"],
        1,
        "fallback",
        "fallback",
        "needs an upstream",
    );
    assert_error(
        &["upstream \"u\"", "fallback {", "    fallback-upstream", "}"],
        2,
        "fallback-upstream",
        "fallback-upstream",
        "needs an upstream name",
    );
    assert_error(
        &[
            "upstream \"u\"",
            "fallback {",
            "    upstream \"u\"",
            "    retries 2",
            "}",
        ],
        3,
        "retries",
        "retries",
        "unknown node `retries` in `fallback`",
    );
    assert_error(
        &[
            "upstream \"u\"",
            "fallback {",
            "    upstream \"u\"",
            "    triggers { on-health #true; }",
            "}",
        ],
        3,
        "on-health",
        "on-health",
        "unknown node `on-health` in `triggers`",
    );
    assert_error(
        &[
            "upstream \"u\"",
            "fallback {",
            "    upstream \"u\"",
            "    max-attempts 0",
            "}",
        ],
        3,
        "0",
        "max-attempts",
        "",
    );
    // The name must be an upstream.
    let Err(errs) = full(&doc(&route(&[
        "upstream \"u\"",
        "fallback { upstream \"nope\"; }",
    ]))) else {
        panic!("an unknown fallback upstream must be an error");
    };
    assert_eq!(errs.len(), 1, "{}", messages(&errs));
    assert_eq!((errs[0].line, errs[0].column), (10, 29), "{}", errs[0]);
    assert!(errs[0].message.contains("nope"), "{}", errs[0]);
}
