//! Routes in upstream Zentinel's vocabulary: integer and named priorities, every `matches`
//! condition, `builtin-handler`, `service-type`, and an error at the right place for each
//! thing upstream would have ignored.

use super::*;
use zentinel_protocol::config::*;

const BASE: &str = "listeners {\n    listener \"http\" { address \"127.0.0.1:8080\"; }\n}\n\
                    upstreams {\n    upstream \"u\" { target \"127.0.0.1:1\"; }\n}\n";

/// `routes` starts on line 7, so the first route's name is on line 8.
pub(super) fn doc(routes: &str) -> String {
    format!("{BASE}routes {{\n{routes}}}\n")
}

pub(super) fn full(source: &str) -> Result<FullConfig, Vec<ConfigDiagnostic>> {
    parse_full_config(source, "test.kdl")
}

pub(super) fn messages(diagnostics: &[ConfigDiagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

pub(super) fn ok(routes: &str) -> FullConfig {
    full(&doc(routes)).unwrap_or_else(|d| panic!("{}", messages(&d)))
}

/// One route `r` whose body lines start on line 9, indented by 8 spaces.
pub(super) fn route(lines: &[&str]) -> String {
    let mut out = String::from("    route \"r\" {\n");
    for line in lines {
        out.push_str("        ");
        out.push_str(line);
        out.push('\n');
    }
    out.push_str("    }\n");
    out
}

/// The route of `lines` must fail with one error: on body line `index`, at the column where
/// `marker` starts, about `node`, containing `needle`.
#[track_caller]
pub(super) fn assert_error(lines: &[&str], index: usize, marker: &str, node: &str, needle: &str) {
    let errs = match full(&doc(&route(lines))) {
        Ok(_) => panic!("expected an error for {lines:?}"),
        Err(errs) => errs,
    };
    let line = 9 + index;
    let column = 9 + lines[index]
        .find(marker)
        .unwrap_or_else(|| panic!("{marker:?} not in {:?}", lines[index]));
    assert_eq!(errs.len(), 1, "{lines:?}:\n{}", messages(&errs));
    let e = &errs[0];
    assert_eq!(
        (e.line, e.column, e.node.as_str()),
        (line, column, node),
        "{lines:?}: {e}"
    );
    assert!(e.message.contains(needle), "{lines:?}: {e}");
    assert_eq!(e.file, "test.kdl");
}

#[test]
fn every_condition_form_parses() {
    let config = ok(&route(&[
        "priority 75",
        "matches {",
        "    host \"api.example.com\" \"*.api.example.com\"",
        "    host \"other.test\"",
        "    path-prefix \"/api\" \"/v2/\"",
        "    path \"/api/users\" \"/api/groups\"",
        "    path-regex \"^/api/[a-z]+$\"",
        "    method \"get\" \"POST\"",
        "    header \"X-Debug\"",
        "    header \"X-Tenant\" \"blue\"",
        "    header name=\"X-Prop\" value=\"v\"",
        "    query-param \"preview\"",
        "    query-param \"lang\" \"en\"",
        "}",
        "upstream \"u\"",
    ]));
    let r = &config.proxy.routes[0];
    assert_eq!(r.priority, 75);
    assert_eq!(r.service_type, ServiceType::Web);
    let header = |name: &str, value: Option<&str>| RouteMatch::Header {
        name: name.to_owned(),
        value: value.map(str::to_owned),
    };
    let query = |name: &str, value: Option<&str>| RouteMatch::QueryParam {
        name: name.to_owned(),
        value: value.map(str::to_owned),
    };
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        r.matches,
        vec![
            RouteMatch::Host("api.example.com".into()),
            RouteMatch::Host("*.api.example.com".into()),
            RouteMatch::Host("other.test".into()),
            RouteMatch::PathPrefix(strings(&["/api", "/v2/"])),
            RouteMatch::Path(strings(&["/api/users", "/api/groups"])),
            RouteMatch::PathRegex(strings(&["^/api/[a-z]+$"])),
            // Uppercased, as upstream does with the pattern.
            RouteMatch::Method(strings(&["GET", "POST"])),
            header("x-debug", None),
            header("x-tenant", Some("blue")),
            header("x-prop", Some("v")),
            query("preview", None),
            query("lang", Some("en")),
        ]
    );
}

#[test]
fn priorities_are_numbers_highest_first_ties_in_file_order() {
    let config = ok(&[
        "    route \"normal-name\" { static-response status=200; }\n",
        "    route \"low\" { priority \"LOW\"; static-response status=200; }\n",
        "    route \"crit-int\" { priority 1000; static-response status=200; }\n",
        "    route \"negative\" { priority -5; static-response status=200; }\n",
        "    route \"between\" { priority 75; static-response status=200; }\n",
        "    route \"crit-name\" { priority \"critical\"; static-response status=200; }\n",
        "    route \"normal-int\" { priority 50; static-response status=200; }\n",
        "    route \"high\" { priority \"High\"; static-response status=200; }\n",
    ]
    .concat());
    let order: Vec<(&str, i32)> = config
        .proxy
        .routes
        .iter()
        .map(|r| (r.name.as_str(), r.priority))
        .collect();
    assert_eq!(
        order,
        [
            ("crit-int", 1000),
            ("crit-name", 1000),
            ("high", 100),
            ("between", 75),
            ("normal-name", 50),
            ("normal-int", 50),
            ("low", 10),
            ("negative", -5),
        ]
    );
}

#[test]
fn builtin_handlers_and_their_aliases() {
    for (written, handler) in [
        ("status", BuiltinHandler::Status),
        ("health", BuiltinHandler::Health),
        ("metrics", BuiltinHandler::Metrics),
        ("not-found", BuiltinHandler::NotFound),
        ("not_found", BuiltinHandler::NotFound),
        ("upstreams", BuiltinHandler::Upstreams),
        ("config", BuiltinHandler::Config),
    ] {
        let config = ok(&route(&[
            "service-type \"builtin\"",
            &format!("builtin-handler \"{written}\""),
        ]));
        let r = &config.proxy.routes[0];
        assert_eq!(r.action, RouteAction::Builtin(handler), "{written}");
        assert_eq!(r.service_type, ServiceType::Builtin, "{written}");
        assert!(config.warnings.is_empty(), "{}", messages(&config.warnings));
    }
    // Without `service-type`, a builtin route is builtin (upstream derives it the same way).
    let config = ok(&route(&["builtin-handler \"health\""]));
    assert_eq!(config.proxy.routes[0].service_type, ServiceType::Builtin);
}

#[test]
fn service_types_are_kept() {
    for (written, t) in [
        ("web", ServiceType::Web),
        ("api", ServiceType::Api),
        ("static", ServiceType::Static),
        ("inference", ServiceType::Inference),
    ] {
        let config = ok(&route(&[
            &format!("service-type \"{written}\""),
            "upstream \"u\"",
        ]));
        assert_eq!(config.proxy.routes[0].service_type, t, "{written}");
    }
    let config = ok(&route(&["upstream \"u\""]));
    assert_eq!(config.proxy.routes[0].service_type, ServiceType::Web);
}

#[test]
fn a_builtin_route_stays_builtin_with_a_warning() {
    let config = ok(&route(&[
        "service-type \"api\"",
        "builtin-handler \"status\"",
    ]));
    assert_eq!(config.proxy.routes[0].service_type, ServiceType::Builtin);
    assert_eq!(config.warnings.len(), 1, "{}", messages(&config.warnings));
    let w = &config.warnings[0];
    assert_eq!((w.line, w.column, w.node.as_str()), (9, 22, "service-type"));
    assert!(w.message.contains("\"api\" ignored"), "{w}");
}

#[test]
fn priority_errors() {
    let action = "static-response status=200";
    assert_error(
        &["priority \"urgent\"", action],
        0,
        "\"urgent\"",
        "priority",
        "unknown priority \"urgent\": expected an integer (higher first) or \"critical\" (1000), \
         \"high\" (100), \"normal\" (50), \"low\" (10)",
    );
    assert_error(
        &["priority \"hig\"", action],
        0,
        "\"hig\"",
        "priority",
        "did you mean `high`?",
    );
    assert_error(
        &["priority \"100\"", action],
        0,
        "\"100\"",
        "priority",
        "write the number without quotes: `priority 100`",
    );
    assert_error(
        &["priority 1.5", action],
        0,
        "1.5",
        "priority",
        "found the number 1.5",
    );
    assert_error(
        &["priority 3000000000", action],
        0,
        "3000000000",
        "priority",
        "out of range",
    );
    assert_error(
        &["priority 1", "priority 2", action],
        1,
        "priority",
        "priority",
        "duplicate `priority` (first set at line 9)",
    );
}

#[test]
fn condition_errors() {
    let action = "upstream \"u\"";
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "matches { path-regex \"(\"; }",
            "\"(\"",
            "path-regex",
            "invalid path-regex \"(\": regex parse error",
        ),
        (
            "matches { method \"G T\"; }",
            "\"G T\"",
            "method",
            "invalid method \"G T\"",
        ),
        (
            "matches { method; }",
            "method",
            "method",
            "missing value: expected at least one argument, e.g. `method \"GET\" \"HEAD\"`",
        ),
        (
            "matches { method 1; }",
            "1",
            "method",
            "expected a string, found the integer 1",
        ),
        (
            "matches { path \"api\"; }",
            "\"api\"",
            "path",
            "path \"api\" must start with '/'",
        ),
        (
            "matches { path \"/a\" mode=\"x\"; }",
            "mode",
            "path",
            "unknown property `mode`",
        ),
        (
            "matches { header \"X-A\" \"1\" \"2\"; }",
            "\"2\"",
            "header",
            "too many values: expected a name and an optional value",
        ),
        (
            "matches { header; }",
            "header",
            "header",
            "missing name: expected `header \"X-Debug\"` or `header \"X-Debug\" \"1\"`",
        ),
        (
            "matches { header \"X A\"; }",
            "\"X A\"",
            "header",
            "invalid header name \"X A\"",
        ),
        (
            "matches { header name=\"X-A\" other=\"1\"; }",
            "other",
            "header",
            "unknown property `other`",
        ),
        (
            "matches { query-param \"\"; }",
            "\"\"",
            "query-param",
            "query-param name must not be empty",
        ),
        (
            "matches { query-param \"a\" 5; }",
            "5",
            "query-param",
            "expected a string, found the integer 5",
        ),
        (
            "matches { path-exact \"/a\"; }",
            "path-exact",
            "path-exact",
            "unknown node `path-exact` in `matches`",
        ),
        (
            "matches { host \"a.*.com\"; }",
            "\"a.*.com\"",
            "host",
            "invalid host \"a.*.com\"",
        ),
    ];
    for (line, marker, node, needle) in cases {
        assert_error(&[line, action], 0, marker, node, needle);
    }
}

#[test]
fn conditions_that_can_never_hold_together_are_warned_about() {
    let action = "upstream \"u\"";
    // Upstream ANDs them, so its own embedded default has a route no request reaches: such a
    // file still runs (the route matches nothing, as upstream), with a located warning.
    let config = ok(&route(&[
        "matches {",
        "    path \"/health\"",
        "    path \"/healthz\"",
        "}",
        action,
    ]));
    let warnings = messages(&config.warnings);
    assert!(
        warnings.contains(
            "test.kdl:11:13: `path`: this `path` and the one at line 10 must both hold \
             (conditions in `matches` are ANDed, as upstream Zentinel), so no request can match \
             this route; for alternatives list them on one node: `path \"/health\" \"/healthz\"`"
        ),
        "{warnings}"
    );
    let config = ok(&route(&[
        "matches { method \"GET\"; method \"POST\"; }",
        action,
    ]));
    assert!(
        messages(&config.warnings).contains("`method \"GET\" \"POST\"`"),
        "{}",
        messages(&config.warnings)
    );
    // A value in common is satisfiable: accepted without a warning.
    let config = ok(&route(&[
        "matches { method \"GET\" \"POST\"; method \"POST\"; path \"/a\"; path \"/b\" \"/a\"; }",
        action,
    ]));
    assert_eq!(config.proxy.routes[0].matches.len(), 4);
    assert!(config.warnings.is_empty(), "{}", messages(&config.warnings));
}

#[test]
fn builtin_and_service_type_errors() {
    assert_error(
        &["builtin-handler \"cache-purge\""],
        0,
        "\"cache-purge\"",
        "builtin-handler",
        "builtin-handler \"cache-purge\" is not supported yet (this build has no response \
         cache); supported: \"status\", \"health\", \"metrics\", \"not-found\", \"not_found\", \
         \"upstreams\", \"config\"",
    );
    assert_error(
        &["builtin-handler \"cache_stats\""],
        0,
        "\"cache_stats\"",
        "builtin-handler",
        "is not supported yet",
    );
    assert_error(
        &["builtin-handler \"helth\""],
        0,
        "\"helth\"",
        "builtin-handler",
        "unknown builtin-handler \"helth\" (did you mean `health`?): expected one of \"status\"",
    );
    assert_error(
        &["builtin-handler \"health\"", "upstream \"u\""],
        1,
        "upstream",
        "upstream",
        "already has an action (`builtin-handler` at line 9): a route takes exactly one of",
    );
    assert_error(
        &["service-type \"grpc\"", "upstream \"u\""],
        0,
        "\"grpc\"",
        "service-type",
        "unknown service-type \"grpc\": expected one of \"web\", \"api\", \"static\", \
         \"builtin\", \"inference\"",
    );
    assert_error(
        &["service-type \"builtin\"", "upstream \"u\""],
        0,
        "\"builtin\"",
        "service-type",
        "is service-type \"builtin\" but has no `builtin-handler`",
    );
    assert_error(
        &[
            "matches { path \"/a\"; }",
            "matches { path \"/b\"; }",
            "upstream \"u\"",
        ],
        1,
        "matches",
        "matches",
        "duplicate `matches` (first set at line 9)",
    );
    assert_error(
        &["inference { }", "upstream \"u\""],
        0,
        "inference",
        "inference",
        "`inference` is not supported yet",
    );
}
