//! `matches { ... }` inside a route: one condition per node.
//!
//! Combination as upstream Zentinel: every `host` node is an alternative (any host), every
//! other node is one more condition that must hold (AND). The values written on one node are
//! alternatives (`method "GET" "HEAD"`, `path "/a" "/b"`); upstream reads only the first value
//! of such a node, silently, so a config that relied on that reading still means the same.

use super::*;

const MATCH_KEYS: &[&str] = &[
    "host",
    "path-prefix",
    "path",
    "path-regex",
    "method",
    "header",
    "query-param",
];

/// Regexes are compiled once by the master (to report errors here) and once per worker
/// configuration. A bound keeps one route from costing a worker unbounded memory.
pub(in crate::config) const REGEX_SIZE_LIMIT: usize = 1 << 20;

pub(super) fn parse_matches(
    node: &KdlNode,
    matches: &mut Vec<RouteMatch>,
    diags: &mut Diagnostics<'_>,
) {
    // Earlier nodes of a kind whose conditions cannot hold together with a later one.
    let mut exact_paths: Vec<(Vec<String>, usize)> = Vec::new();
    let mut methods: Vec<(Vec<String>, usize)> = Vec::new();
    for child in block(node, diags) {
        let kind = name(child);
        if !MATCH_KEYS.contains(&kind) {
            unknown(child, "matches", MATCH_KEYS, &[], diags);
            continue;
        }
        no_children(child, diags);
        if matches!(kind, "header" | "query-param") {
            matches.extend(named_condition(child, diags));
            continue;
        }
        let Some(values) = condition_values(child, diags) else {
            continue;
        };
        let at = name_at(child);
        match kind {
            // Kept one per entry: all the hosts of a route are alternatives anyway.
            "host" => matches.extend(values.into_iter().map(RouteMatch::Host)),
            "path" => {
                check_satisfiable(kind, &values, at, &mut exact_paths, diags);
                matches.push(RouteMatch::Path(values));
            }
            "method" => {
                check_satisfiable(kind, &values, at, &mut methods, diags);
                matches.push(RouteMatch::Method(values));
            }
            "path-prefix" => matches.push(RouteMatch::PathPrefix(values)),
            _ => matches.push(RouteMatch::PathRegex(values)),
        }
    }
}

/// `path`, `path-prefix`, `path-regex`, `method`, `host`: one or more string arguments,
/// checked and normalised. `None` when any is wrong (reported).
fn condition_values(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Option<Vec<String>> {
    let kind = name(node);
    for entry in props(node) {
        unknown_property(node, entry, &[], diags);
    }
    let mut values = Vec::new();
    let mut ok = true;
    let mut any = false;
    for entry in args(node) {
        any = true;
        let Some(value) = string_value(node, entry, diags) else {
            ok = false;
            continue;
        };
        match check_value(kind, &value) {
            Ok(v) => values.push(v),
            Err(problem) => {
                ok = false;
                diags.error(entry.span().offset(), kind, problem);
            }
        }
    }
    if !any {
        diags.error(
            name_at(node),
            kind,
            format!(
                "missing value: expected at least one argument, e.g. {}",
                example(kind)
            ),
        );
        return None;
    }
    ok.then_some(values)
}

fn example(kind: &str) -> &'static str {
    match kind {
        "host" => "`host \"api.example.com\"`",
        "path" => "`path \"/health\"`",
        "path-prefix" => "`path-prefix \"/api\"`",
        "path-regex" => "`path-regex \"^/v[0-9]+/\"`",
        "method" => "`method \"GET\" \"HEAD\"`",
        "header" => "`header \"X-Debug\"` or `header \"X-Debug\" \"1\"`",
        _ => "`query-param \"debug\"` or `query-param \"debug\" \"1\"`",
    }
}

/// The value as stored, or what is wrong with it.
fn check_value(kind: &str, value: &str) -> Result<String, String> {
    match kind {
        "host" => match host_problem(value) {
            Some(problem) => Err(format!("invalid host {value:?}: {problem}")),
            None => Ok(value.to_owned()),
        },
        "path" | "path-prefix" => {
            if value.starts_with('/') {
                Ok(value.to_owned())
            } else {
                Err(format!("{kind} {value:?} must start with '/'"))
            }
        }
        "path-regex" => match regex::RegexBuilder::new(value)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
        {
            Ok(_) => Ok(value.to_owned()),
            // The error text spans several lines (pattern, caret, reason): keep it on one.
            Err(e) => Err(format!(
                "invalid path-regex {value:?}: {}",
                e.to_string()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            )),
        },
        _ => {
            if !value.is_empty() && value.bytes().all(is_token_byte) {
                // Upstream uppercases the pattern and compares the request's method as sent.
                Ok(value.to_ascii_uppercase())
            } else {
                Err(format!(
                    "invalid method {value:?}: expected an HTTP method such as \"GET\""
                ))
            }
        }
    }
}

/// `header "Name"` / `header "Name" "value"`, and the same for `query-param`. Upstream reads
/// the first and second entries whatever their form, so `name=` and `value=` properties are
/// accepted too.
fn named_condition(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Option<RouteMatch> {
    let kind = name(node);
    let mut name_entry = None;
    let mut value_entry = None;
    let mut ok = true;
    for entry in node.entries() {
        let slot = match entry.name().map(|k| k.value()) {
            Some("name") => &mut name_entry,
            Some("value") => &mut value_entry,
            Some(_) => {
                unknown_property(node, entry, &["name", "value"], diags);
                ok = false;
                continue;
            }
            None if name_entry.is_none() => &mut name_entry,
            None => &mut value_entry,
        };
        if slot.is_some() {
            diags.error(
                entry.span().offset(),
                kind,
                format!(
                    "too many values: expected a name and an optional value, e.g. {}",
                    example(kind)
                ),
            );
            ok = false;
            continue;
        }
        *slot = Some(entry);
    }
    let Some(name_entry) = name_entry else {
        diags.error(
            name_at(node),
            kind,
            format!("missing name: expected {}", example(kind)),
        );
        return None;
    };
    let field = string_value(node, name_entry, diags);
    let value = match value_entry {
        Some(e) => Some(string_value(node, e, diags)?),
        None => None,
    };
    let field = field?;
    if kind == "header" && (field.is_empty() || !field.bytes().all(is_token_byte)) {
        diags.error(
            name_entry.span().offset(),
            kind,
            format!("invalid header name {field:?}: expected a field name such as \"X-Debug\""),
        );
        return None;
    }
    if kind == "query-param" && field.is_empty() {
        diags.error(
            name_entry.span().offset(),
            kind,
            "query-param name must not be empty",
        );
        return None;
    }
    if !ok {
        return None;
    }
    Some(if kind == "header" {
        // Field names are case-insensitive; stored lowercase for the worker's comparison.
        RouteMatch::Header {
            name: field.to_ascii_lowercase(),
            value,
        }
    } else {
        RouteMatch::QueryParam { name: field, value }
    })
}

/// Two nodes of an exact kind (`path`, `method`) are both required; with no value in common
/// no request can match, which upstream accepts silently (its embedded default config has
/// such a route). Such a file still runs, as it does upstream (the route matches nothing);
/// a warning says so, with the way to write alternatives.
fn check_satisfiable(
    kind: &str,
    values: &[String],
    at: usize,
    earlier: &mut Vec<(Vec<String>, usize)>,
    diags: &mut Diagnostics<'_>,
) {
    for (prev, prev_at) in earlier.iter() {
        if !values.iter().any(|v| prev.contains(v)) {
            let line = diags.line_of(*prev_at);
            let all: Vec<String> = prev
                .iter()
                .chain(values)
                .map(|v| format!("{v:?}"))
                .collect();
            diags.warn(
                at,
                kind,
                format!(
                    "this `{kind}` and the one at line {line} must both hold (conditions in \
                     `matches` are ANDed, as upstream Zentinel), so no request can match this \
                     route; for alternatives list them on one node: `{kind} {}`",
                    all.join(" ")
                ),
            );
            return;
        }
    }
    earlier.push((values.to_vec(), at));
}

/// RFC 9110 token characters (method and field names).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn host_problem(host: &str) -> Option<&'static str> {
    let rest = host.strip_prefix("*.").unwrap_or(host);
    if rest.is_empty() {
        return Some("empty host name");
    }
    if rest.contains('*') {
        return Some("a wildcard is only allowed as a leading `*.`, e.g. \"*.example.com\"");
    }
    if rest
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || "/?#@".contains(c))
    {
        return Some("not a host name (no scheme, path or spaces)");
    }
    None
}
