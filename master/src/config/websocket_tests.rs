//! `websocket` and `websocket-inspection` on routes: both forms, what they mean here, and
//! located errors.

use super::routes_tests::{assert_error, messages, ok, route};

fn websocket(lines: &[&str]) -> Option<bool> {
    let config = ok(&route(lines));
    config.proxy.routes[0].extras.as_ref().map(|e| e.websocket)
}

#[test]
fn forms_and_meaning() {
    assert_eq!(websocket(&["upstream \"u\""]), None, "default: tunnelled");
    assert_eq!(
        websocket(&["upstream \"u\"", "websocket #true"]),
        Some(true)
    );
    assert_eq!(
        websocket(&["upstream \"u\"", "websocket #false"]),
        Some(false)
    );
    // Upstream reads the block form as "off"; here it is on unless it says otherwise.
    assert_eq!(
        websocket(&[
            "upstream \"u\"",
            "websocket {",
            "    max-message-size-bytes 1048576",
            "}"
        ]),
        Some(true)
    );
    assert_eq!(
        websocket(&["upstream \"u\"", "websocket {", "    enabled #false", "}"]),
        Some(false)
    );
    let config = ok(&route(&[
        "upstream \"u\"",
        "websocket {",
        "    enabled #true",
        "    ping-interval-secs 30",
        "}",
        "websocket-inspection #true",
    ]));
    let w = messages(&config.warnings);
    assert!(
        w.contains("`ping-interval-secs` is accepted, no effect"),
        "{w}"
    );
    assert!(w.contains("`websocket-inspection` is accepted"), "{w}");
}

#[test]
fn mistakes_are_located() {
    assert_error(
        &["upstream \"u\"", "websocket \"yes\""],
        1,
        "\"yes\"",
        "websocket",
        "boolean",
    );
    assert_error(
        &["upstream \"u\"", "websocket {", "    enable #true", "}"],
        2,
        "enable",
        "enable",
        "did you mean `enabled`",
    );
    assert_error(
        &[
            "upstream \"u\"",
            "websocket {",
            "    ping-interval-secs 0",
            "}",
        ],
        2,
        "0",
        "ping-interval-secs",
        "",
    );
    assert_error(
        &["upstream \"u\"", "websocket #true", "websocket #false"],
        2,
        "websocket",
        "websocket",
        "duplicate `websocket`",
    );
    assert_error(
        &["upstream \"u\"", "api-schema { }"],
        1,
        "api-schema",
        "api-schema",
        "not supported yet",
    );
}
