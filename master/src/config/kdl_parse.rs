//! KDL text -> a located, not yet cross-checked configuration.
//!
//! This pass checks everything that can be judged node by node (names, argument types, ranges,
//! unknown nodes and properties) and remembers where each named thing was defined, so that
//! `validate` can report cross-reference problems at the right place.

use std::collections::HashMap;
use std::net::SocketAddr;

use kdl::{KdlDocument, KdlEntry, KdlNode, KdlValue};
use zentinel_protocol::config::{
    ConnectionPool, HealthCheck, HealthCheckKind, Limits, ListenerConfig, ListenerProtocol,
    LoadBalancing, PassiveHealth, RouteAction, RouteConfig, RouteMatch, RoutePriority,
    StaticResponse, SystemConfig, UpstreamConfig, UpstreamTarget, UpstreamTimeouts,
    DEFAULT_BACKLOG, DEFAULT_HEALTHY_THRESHOLD, DEFAULT_HEALTH_INTERVAL_SECS,
    DEFAULT_HEALTH_TIMEOUT_SECS, DEFAULT_UNHEALTHY_THRESHOLD,
};

use super::observability::{parse_observability, ParsedObservability};
use super::ConfigDiagnostic;

mod system;
mod tls;

/// Longest accepted duration in seconds. Far beyond any sensible timeout, and small enough that
/// converting to milliseconds or nanoseconds anywhere downstream cannot overflow.
const MAX_SECS: u64 = 365 * 24 * 3600;

const TOP_LEVEL: &[&str] = &[
    "schema-version",
    "system",
    "listeners",
    "routes",
    "upstreams",
    "limits",
    "observability",
];
/// Zentinel nodes this build does not implement yet: reported as such, not as typos.
const TOP_LEVEL_UNSUPPORTED: &[&str] = &[
    "policies",
    "filters",
    "agents",
    "waf",
    "tls",
    "cache",
    "rate-limit",
    "namespaces",
    "services",
];
const LISTENER_KEYS: &[&str] = &[
    "address",
    "protocol",
    "request-timeout-secs",
    "keepalive-timeout-secs",
    "backlog",
    "default-route",
    "upstream",
    "tls",
];
const LISTENER_UNSUPPORTED: &[&str] = &[];
const ROUTE_KEYS: &[&str] = &["priority", "matches", "upstream", "static-response"];
const ROUTE_UNSUPPORTED: &[&str] = &[
    "policies",
    "filters",
    "agents",
    "waf",
    "cache",
    "rate-limit",
];
const MATCH_KEYS: &[&str] = &["host", "path-prefix", "path"];
const UPSTREAM_KEYS: &[&str] = &[
    "target",
    "load-balancing",
    "connection-pool",
    "timeouts",
    "health-check",
    "passive-health",
];
const UPSTREAM_UNSUPPORTED: &[&str] = &["tls"];
const HEALTH_CHECK_KEYS: &[&str] = &[
    "type",
    "interval-secs",
    "timeout-secs",
    "healthy-threshold",
    "unhealthy-threshold",
];
const HTTP_CHECK_KEYS: &[&str] = &["path", "expected-status", "host"];
const PASSIVE_HEALTH_KEYS: &[&str] = &["max-fails", "fail-timeout-secs"];
/// More consecutive probes than this before a state change is a typo, not a policy.
const MAX_THRESHOLD: u32 = 1_000;
const POOL_KEYS: &[&str] = &["max-idle", "idle-timeout-secs"];
const TIMEOUT_KEYS: &[&str] = &["connect-secs", "read-secs"];
const LIMIT_KEYS: &[&str] = &[
    "max-header-size-bytes",
    "max-header-count",
    "max-body-size-bytes",
];

/// Collects diagnostics and turns parser byte offsets into 1-based line and column.
pub(super) struct Diagnostics<'a> {
    file: &'a str,
    source: &'a str,
    line_starts: Vec<usize>,
    /// Byte offsets in the parsed text where a `#` was inserted by `rewrite_v1_keywords`; the
    /// parser's spans are shifted by them relative to the file the operator wrote.
    inserted: Vec<usize>,
    list: Vec<ConfigDiagnostic>,
    /// Accepted, but worth telling the operator (a setting that has no effect here).
    warnings: Vec<ConfigDiagnostic>,
}

impl<'a> Diagnostics<'a> {
    pub(super) fn new(source: &'a str, file: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(source.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Diagnostics {
            file,
            source,
            line_starts,
            inserted: Vec::new(),
            list: Vec::new(),
            warnings: Vec::new(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub(super) fn into_sorted(mut self) -> Vec<ConfigDiagnostic> {
        self.list.sort_by_key(|d| (d.line, d.column));
        self.list
    }

    /// The warnings, in file order.
    pub(super) fn take_warnings(&mut self) -> Vec<ConfigDiagnostic> {
        let mut warnings = std::mem::take(&mut self.warnings);
        warnings.sort_by_key(|d| (d.line, d.column));
        warnings
    }

    /// Maps a parser offset back to an offset in the original source.
    fn original_offset(&self, parsed_offset: usize) -> usize {
        let shift = self.inserted.partition_point(|&p| p < parsed_offset);
        parsed_offset.saturating_sub(shift).min(self.source.len())
    }

    /// 1-based line and column (in characters) of a parser offset.
    pub(super) fn position(&self, parsed_offset: usize) -> (usize, usize) {
        let offset = self.original_offset(parsed_offset);
        let line_index = self.line_starts.partition_point(|&s| s <= offset).max(1) - 1;
        let line_start = self.line_starts[line_index];
        let column = match self.source.get(line_start..offset) {
            Some(prefix) => prefix.chars().count(),
            None => offset - line_start,
        };
        (line_index + 1, column + 1)
    }

    pub(super) fn line_of(&self, parsed_offset: usize) -> usize {
        self.position(parsed_offset).0
    }

    pub(super) fn error(&mut self, parsed_offset: usize, node: &str, message: impl Into<String>) {
        let diagnostic = self.located(parsed_offset, node, message.into());
        self.list.push(diagnostic);
    }

    /// Something accepted that the operator should know about; not an error.
    pub(super) fn warn(&mut self, parsed_offset: usize, node: &str, message: impl Into<String>) {
        let diagnostic = self.located(parsed_offset, node, message.into());
        self.warnings.push(diagnostic);
    }

    fn located(&self, parsed_offset: usize, node: &str, message: String) -> ConfigDiagnostic {
        let (line, column) = self.position(parsed_offset);
        ConfigDiagnostic {
            file: self.file.to_owned(),
            line,
            column,
            node: node.to_owned(),
            message,
        }
    }
}

/// A listener as written, with the places its references were written.
pub(super) struct ParsedListener {
    pub config: ListenerConfig,
    /// Offset of the name argument (or of the node when the name is missing).
    pub name_at: usize,
    pub has_name: bool,
    pub address: Option<(SocketAddr, usize)>,
    pub default_route_at: Option<usize>,
    pub upstream_at: Option<usize>,
}

pub(super) struct ParsedRoute {
    pub config: RouteConfig,
    pub name_at: usize,
    pub has_name: bool,
    pub upstream_at: Option<usize>,
}

pub(super) struct ParsedUpstream {
    pub config: UpstreamConfig,
    pub name_at: usize,
    pub has_name: bool,
}

pub(super) struct ParsedConfig {
    pub system: SystemConfig,
    pub limits: Limits,
    pub listeners: Vec<ParsedListener>,
    /// Offset of the first `listeners` block, to place "no listener" errors.
    pub listeners_at: Option<usize>,
    pub routes: Vec<ParsedRoute>,
    pub upstreams: Vec<ParsedUpstream>,
    pub observability: ParsedObservability,
}

/// Parses KDL text and interprets it. Returns `None` when the text is not valid KDL (the syntax
/// errors are in `diags`); otherwise a configuration whose node-level errors are in `diags`.
pub(super) fn parse(source: &str, diags: &mut Diagnostics<'_>) -> Option<ParsedConfig> {
    let doc = parse_document(source, diags)?;
    let mut parsed = ParsedConfig {
        system: SystemConfig::default(),
        limits: Limits::default(),
        listeners: Vec::new(),
        listeners_at: None,
        routes: Vec::new(),
        upstreams: Vec::new(),
        observability: ParsedObservability::default(),
    };
    let mut seen = Seen::default();
    for node in doc.nodes() {
        match name(node) {
            "system" | "server" => {
                seen.check_as(node, "system", diags);
                system::parse_system(node, &mut parsed.system, diags);
            }
            "schema-version" | "version" => {
                seen.check_as(node, "schema-version", diags);
                system::parse_schema_version(node, diags);
            }
            "limits" => {
                seen.check(node, diags);
                parse_limits(node, &mut parsed.limits, diags);
            }
            "observability" => {
                seen.check(node, diags);
                parse_observability(node, &mut parsed.observability, diags);
            }
            // Collections may be split across several blocks; they simply add up.
            "listeners" => {
                parsed.listeners_at.get_or_insert(name_at(node));
                for child in block(node, diags) {
                    match name(child) {
                        "listener" => parsed.listeners.push(parse_listener(child, diags)),
                        _ => unknown(child, "listeners", &["listener"], &[], diags),
                    }
                }
            }
            "routes" => {
                for child in block(node, diags) {
                    match name(child) {
                        "route" => parsed.routes.push(parse_route(child, diags)),
                        _ => unknown(child, "routes", &["route"], &[], diags),
                    }
                }
            }
            "upstreams" => {
                for child in block(node, diags) {
                    match name(child) {
                        "upstream" => parsed.upstreams.push(parse_upstream(child, diags)),
                        _ => unknown(child, "upstreams", &["upstream"], &[], diags),
                    }
                }
            }
            _ => unknown(node, "", TOP_LEVEL, TOP_LEVEL_UNSUPPORTED, diags),
        }
    }
    Some(parsed)
}

/// Parses KDL v2, falling back to v1, and finally to a file mixing both (v1 bare `true`
/// alongside v2 `#true`), which neither parser accepts alone.
fn parse_document(source: &str, diags: &mut Diagnostics<'_>) -> Option<KdlDocument> {
    let err = match KdlDocument::parse(source) {
        Ok(doc) => return Some(doc),
        Err(err) => err,
    };
    if let Some((rewritten, inserted)) = rewrite_v1_keywords(source) {
        if let Ok(doc) = KdlDocument::parse_v2(&rewritten) {
            diags.inserted = inserted;
            return Some(doc);
        }
    }
    if err.diagnostics.is_empty() {
        diags.error(0, "", "invalid KDL document");
    }
    for d in &err.diagnostics {
        let offset = d.span.offset();
        let mut message = format!(
            "syntax error: {}",
            d.message.as_deref().unwrap_or("invalid KDL")
        );
        if let Some(label) = &d.label {
            message.push_str(&format!(" ({label})"));
        }
        if let Some(help) = &d.help {
            message.push_str(&format!("; help: {}", help.replace('\n', " ")));
        }
        let node = node_on_line(source, offset);
        diags.error(offset, &node, message);
    }
    None
}

/// The first word of the line holding `offset`: for syntax errors, where no parsed node exists,
/// it usually names the node being written.
fn node_on_line(source: &str, offset: usize) -> String {
    let offset = offset.min(source.len());
    let start = source
        .get(..offset)
        .and_then(|s| s.rfind('\n'))
        .map_or(0, |i| i + 1);
    let line = source[start..].lines().next().unwrap_or("");
    line.trim_start()
        .split(|c: char| c.is_whitespace() || "{};\"=()/".contains(c))
        .next()
        .unwrap_or("")
        .to_owned()
}

/// Rewrites KDL v1 bare keywords (`true`, `false`, `null`) to their v2 spelling (`#true`...),
/// skipping strings and comments. Returns the new text and the offsets (in the new text) of the
/// inserted `#`s, or `None` when there is nothing to rewrite.
pub(super) fn rewrite_v1_keywords(source: &str) -> Option<(String, Vec<usize>)> {
    fn is_delimiter(c: u8) -> bool {
        c.is_ascii_whitespace() || b"(){}[];=/\\\"#,<>".contains(&c)
    }
    /// Skips a raw string whose opening quote is at `quote` and which closes with `"` followed
    /// by `hashes` `#`s. Returns the offset after it.
    fn skip_raw(b: &[u8], quote: usize, hashes: usize) -> usize {
        let mut j = quote + 1;
        while j < b.len() {
            if b[j] == b'"'
                && b[j + 1..]
                    .iter()
                    .take(hashes)
                    .filter(|&&c| c == b'#')
                    .count()
                    == hashes
            {
                return j + 1 + hashes;
            }
            j += 1;
        }
        b.len()
    }
    fn skip_quoted(b: &[u8], quote: usize) -> usize {
        let multi = b[quote..].starts_with(b"\"\"\"");
        let mut j = quote + if multi { 3 } else { 1 };
        while j < b.len() {
            match b[j] {
                b'\\' => j += 2,
                b'"' if !multi => return j + 1,
                b'"' if b[j..].starts_with(b"\"\"\"") => return j + 3,
                _ => j += 1,
            }
        }
        b.len()
    }

    let b = source.as_bytes();
    let mut out = String::with_capacity(source.len() + 16);
    let mut inserted = Vec::new();
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if b[i..].starts_with(b"//") {
            i = b[i..]
                .iter()
                .position(|&c| c == b'\n')
                .map_or(b.len(), |p| i + p);
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0usize;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == b'"' {
            i = skip_quoted(b, i);
        } else if c == b'#' {
            let hashes = b[i..].iter().take_while(|&&c| c == b'#').count();
            if b.get(i + hashes) == Some(&b'"') {
                i = skip_raw(b, i + hashes, hashes);
            } else {
                // A v2 keyword such as `#true`: already in the target spelling.
                i += hashes;
                while i < b.len() && !is_delimiter(b[i]) {
                    i += 1;
                }
            }
        } else if c == b'r' && matches!(b.get(i + 1), Some(b'"') | Some(b'#')) && {
            let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
            b.get(i + 1 + hashes) == Some(&b'"')
        } {
            let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
            i = skip_raw(b, i + 1 + hashes, hashes);
        } else if is_delimiter(c) {
            i += 1;
        } else {
            let start = i;
            while i < b.len() && !is_delimiter(b[i]) {
                i += 1;
            }
            if matches!(&source[start..i], "true" | "false" | "null") {
                out.push_str(&source[copied..start]);
                inserted.push(out.len());
                out.push('#');
                copied = start;
            }
        }
    }
    if inserted.is_empty() {
        return None;
    }
    out.push_str(&source[copied..]);
    Some((out, inserted))
}

pub(super) fn name(node: &KdlNode) -> &str {
    node.name().value()
}

pub(super) fn name_at(node: &KdlNode) -> usize {
    node.name().span().offset()
}

fn args(node: &KdlNode) -> impl Iterator<Item = &KdlEntry> {
    node.entries().iter().filter(|e| e.name().is_none())
}

fn props(node: &KdlNode) -> impl Iterator<Item = &KdlEntry> {
    node.entries().iter().filter(|e| e.name().is_some())
}

fn describe(value: &KdlValue) -> String {
    match value {
        KdlValue::String(s) => format!("the string {s:?}"),
        KdlValue::Integer(i) => format!("the integer {i}"),
        KdlValue::Float(f) => format!("the number {f}"),
        KdlValue::Bool(b) => format!("the boolean #{b}"),
        KdlValue::Null => "#null".to_owned(),
    }
}

/// Tracks nodes that may appear once in a block.
#[derive(Default)]
pub(super) struct Seen {
    first: HashMap<String, usize>,
}

impl Seen {
    /// Reports a repeated node; returns whether this is the first occurrence.
    pub(super) fn check(&mut self, node: &KdlNode, diags: &mut Diagnostics<'_>) -> bool {
        self.check_as(node, name(node), diags)
    }

    /// Like [`Seen::check`], counting `node` as `key` (a node and its alias are one setting).
    pub(super) fn check_as(
        &mut self,
        node: &KdlNode,
        key: &str,
        diags: &mut Diagnostics<'_>,
    ) -> bool {
        if let Some(&first) = self.first.get(key) {
            let line = diags.line_of(first);
            diags.error(
                name_at(node),
                name(node),
                format!("duplicate `{key}` (first set at line {line})"),
            );
            false
        } else {
            self.first.insert(key.to_owned(), name_at(node));
            true
        }
    }
}

/// Closest candidate for a misspelled name, when it is plausibly a typo.
pub(super) fn suggestion<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (levenshtein(word, c), c))
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

pub(super) fn did_you_mean<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> String {
    suggestion(word, candidates)
        .map(|s| format!(" (did you mean `{s}`?)"))
        .unwrap_or_default()
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Reports a node that is not part of the vocabulary at this place. `parent` is empty at the
/// top level.
pub(super) fn unknown(
    node: &KdlNode,
    parent: &str,
    known: &[&str],
    unsupported: &[&str],
    diags: &mut Diagnostics<'_>,
) {
    let n = name(node);
    let message = if unsupported.contains(&n) {
        format!("`{n}` is not supported yet")
    } else if parent.is_empty() {
        format!(
            "unknown node `{n}` at the top level{}",
            did_you_mean(n, known.iter().copied())
        )
    } else {
        format!(
            "unknown node `{n}` in `{parent}`{}",
            did_you_mean(n, known.iter().copied())
        )
    };
    diags.error(name_at(node), n, message);
}

fn unknown_property(
    node: &KdlNode,
    entry: &KdlEntry,
    allowed: &[&str],
    diags: &mut Diagnostics<'_>,
) {
    let key = entry.name().map_or("", |k| k.value());
    let message = if allowed.is_empty() {
        format!(
            "unknown property `{key}`: `{}` takes no properties",
            name(node)
        )
    } else {
        format!(
            "unknown property `{key}`{}",
            did_you_mean(key, allowed.iter().copied())
        )
    };
    diags.error(entry.span().offset(), name(node), message);
}

/// The children of a block node (`system { ... }`), after checking it has no arguments.
/// The children of `node`'s block, each of `keys` that is repeated reported as a duplicate (all
/// diagnostics are sorted by position in the end, so reporting these first is harmless).
pub(super) fn keyed_block<'n>(
    node: &'n KdlNode,
    keys: &[&str],
    diags: &mut Diagnostics<'_>,
) -> &'n [KdlNode] {
    let children = block(node, diags);
    let mut seen = Seen::default();
    for child in children {
        if keys.contains(&name(child)) {
            seen.check(child, diags);
        }
    }
    children
}

pub(super) fn block<'n>(node: &'n KdlNode, diags: &mut Diagnostics<'_>) -> &'n [KdlNode] {
    for entry in node.entries() {
        diags.error(
            entry.span().offset(),
            name(node),
            format!(
                "`{}` takes no arguments or properties, only a `{{ ... }}` block",
                name(node)
            ),
        );
    }
    node.children().map_or(&[], |c| c.nodes())
}

fn no_children(node: &KdlNode, diags: &mut Diagnostics<'_>) {
    if let Some(children) = node.children() {
        diags.error(
            children.span().offset(),
            name(node),
            format!("`{}` does not take a `{{ ... }}` block", name(node)),
        );
    }
}

/// The single argument of a leaf node such as `backlog 1024`.
pub(super) fn single_arg<'n>(
    node: &'n KdlNode,
    diags: &mut Diagnostics<'_>,
) -> Option<&'n KdlEntry> {
    no_children(node, diags);
    for entry in props(node) {
        unknown_property(node, entry, &[], diags);
    }
    let mut args = args(node);
    let first = args.next();
    if let Some(extra) = args.next() {
        diags.error(
            extra.span().offset(),
            name(node),
            format!("expected exactly one value, found {}", 2 + args.count()),
        );
        return None;
    }
    if first.is_none() {
        diags.error(
            name_at(node),
            name(node),
            "missing value: expected one argument",
        );
    }
    first
}

fn int_value(
    node: &KdlNode,
    entry: &KdlEntry,
    min: u64,
    max: u64,
    diags: &mut Diagnostics<'_>,
) -> Option<u64> {
    let at = entry.span().offset();
    let what = value_label(entry);
    match entry.value() {
        KdlValue::Integer(i) if *i < i128::from(min) => {
            diags.error(
                at,
                name(node),
                format!("{what}must be at least {min}, found {i}"),
            );
            None
        }
        KdlValue::Integer(i) if *i > i128::from(max) => {
            diags.error(
                at,
                name(node),
                format!("{what}must be at most {max}, found {i}"),
            );
            None
        }
        KdlValue::Integer(i) => u64::try_from(*i).ok(),
        other => {
            diags.error(
                at,
                name(node),
                format!("{what}expected an integer, found {}", describe(other)),
            );
            None
        }
    }
}

/// Message prefix naming a property; empty for an argument, which the node name already names.
fn value_label(entry: &KdlEntry) -> String {
    entry
        .name()
        .map_or_else(String::new, |k| format!("property `{}` ", k.value()))
}

fn string_value(node: &KdlNode, entry: &KdlEntry, diags: &mut Diagnostics<'_>) -> Option<String> {
    match entry.value() {
        KdlValue::String(s) => Some(s.clone()),
        other => {
            let what = value_label(entry);
            diags.error(
                entry.span().offset(),
                name(node),
                format!("{what}expected a string, found {}", describe(other)),
            );
            None
        }
    }
}

fn leaf_int(node: &KdlNode, min: u64, max: u64, diags: &mut Diagnostics<'_>) -> Option<u64> {
    let entry = single_arg(node, diags)?;
    int_value(node, entry, min, max, diags)
}

fn leaf_u32(node: &KdlNode, min: u32, max: u32, diags: &mut Diagnostics<'_>) -> Option<u32> {
    leaf_int(node, u64::from(min), u64::from(max), diags).and_then(|v| u32::try_from(v).ok())
}

/// A leaf boolean (`#true` / `#false`).
pub(super) fn leaf_bool(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Option<bool> {
    let entry = single_arg(node, diags)?;
    match entry.value() {
        KdlValue::Bool(b) => Some(*b),
        _ => {
            diags.error(
                entry.span().offset(),
                name(node),
                "expected a boolean (#true or #false)",
            );
            None
        }
    }
}

/// A leaf string with its offset.
pub(super) fn leaf_string(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Option<(String, usize)> {
    let entry = single_arg(node, diags)?;
    string_value(node, entry, diags).map(|s| (s, entry.span().offset()))
}

pub(super) fn socket_addr(
    node: &KdlNode,
    text: &str,
    at: usize,
    diags: &mut Diagnostics<'_>,
) -> Option<SocketAddr> {
    match text.parse::<SocketAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => {
            diags.error(
                at,
                name(node),
                format!(
                    "invalid socket address {text:?}: expected IP:port such as \
                     \"127.0.0.1:8080\" or \"[::1]:8080\""
                ),
            );
            None
        }
    }
}

/// The first argument of `node`, and whether more followed. A missing one is reported with
/// `missing`, the first extra one with `extra`; the caller decides whether to go on.
fn only_arg<'n>(
    node: &'n KdlNode,
    missing: &str,
    extra: &str,
    diags: &mut Diagnostics<'_>,
) -> Option<(&'n KdlEntry, bool)> {
    let mut args = args(node);
    let Some(first) = args.next() else {
        diags.error(name_at(node), name(node), missing);
        return None;
    };
    let more = args.next();
    if let Some(more) = more {
        diags.error(more.span().offset(), name(node), extra);
    }
    Some((first, more.is_some()))
}

/// The name of `listener "x" { }`, `route "x" { }`, `upstream "x" { }`.
fn block_name(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Option<(String, usize)> {
    for entry in props(node) {
        unknown_property(node, entry, &[], diags);
    }
    // With extra names, the first one still names the block (fewer follow-on errors).
    let (first, _) = only_arg(
        node,
        &format!("missing name: write `{} \"name\" {{ ... }}`", name(node)),
        &format!("`{}` takes exactly one name", name(node)),
        diags,
    )?;
    let text = string_value(node, first, diags)?;
    if text.is_empty() {
        diags.error(first.span().offset(), name(node), "name must not be empty");
        return None;
    }
    Some((text, first.span().offset()))
}

fn parse_limits(node: &KdlNode, limits: &mut Limits, diags: &mut Diagnostics<'_>) {
    for child in keyed_block(node, LIMIT_KEYS, diags) {
        match name(child) {
            "max-header-size-bytes" => {
                // Below a few hundred bytes no real request line + Host header fits.
                if let Some(v) = leaf_int(child, 256, 1 << 30, diags) {
                    limits.max_header_size_bytes = v;
                }
            }
            "max-header-count" => {
                if let Some(v) = leaf_u32(child, 1, 100_000, diags) {
                    limits.max_header_count = v;
                }
            }
            "max-body-size-bytes" => {
                if let Some(v) = leaf_int(child, 0, u64::MAX >> 1, diags) {
                    limits.max_body_size_bytes = v;
                }
            }
            _ => unknown(child, "limits", LIMIT_KEYS, &[], diags),
        }
    }
}

fn parse_listener(node: &KdlNode, diags: &mut Diagnostics<'_>) -> ParsedListener {
    let named = block_name(node, diags);
    let mut listener = ParsedListener {
        config: ListenerConfig {
            name: named.as_ref().map(|(n, _)| n.clone()).unwrap_or_default(),
            address: String::new(),
            protocol: ListenerProtocol::Http,
            backlog: DEFAULT_BACKLOG,
            request_timeout_secs: 60,
            keepalive_timeout_secs: 75,
            default_route: None,
            upstream: None,
            // Set for every HTTP listener by `validate` from `observability`.
            access_log: None,
            tls: None,
        },
        name_at: named.as_ref().map_or(name_at(node), |(_, at)| *at),
        has_name: named.is_some(),
        address: None,
        default_route_at: None,
        upstream_at: None,
    };
    let mut seen = Seen::default();
    let mut address_written = false;
    let mut protocol_known = true;
    let mut default_route_node: Option<&KdlNode> = None;
    let mut upstream_node: Option<&KdlNode> = None;
    let mut tls_node: Option<&KdlNode> = None;
    let mut https_at: Option<usize> = None;
    let children = node.children().map_or(&[][..], |c| c.nodes());
    for child in children {
        if LISTENER_KEYS.contains(&name(child)) {
            seen.check(child, diags);
        }
        match name(child) {
            "address" => {
                address_written = true;
                if let Some((text, at)) = leaf_string(child, diags) {
                    if let Some(addr) = socket_addr(child, &text, at, diags) {
                        listener.address = Some((addr, at));
                    }
                    listener.config.address = text;
                }
            }
            "protocol" => match leaf_string(child, diags) {
                Some((p, _)) if p == "http" => listener.config.protocol = ListenerProtocol::Http,
                Some((p, _)) if p == "tcp" => listener.config.protocol = ListenerProtocol::Tcp,
                // Zentinel's spelling of an http listener with TLS: the `tls` block is required.
                Some((p, at)) if p == "https" => {
                    listener.config.protocol = ListenerProtocol::Http;
                    https_at = Some(at);
                }
                Some((p, at)) => {
                    protocol_known = false;
                    diags.error(
                        at,
                        "protocol",
                        format!("unknown protocol {p:?}: expected \"http\", \"https\" or \"tcp\""),
                    );
                }
                None => protocol_known = false,
            },
            "request-timeout-secs" => {
                if let Some(v) = leaf_int(child, 1, MAX_SECS, diags) {
                    listener.config.request_timeout_secs = v;
                }
            }
            "keepalive-timeout-secs" => {
                if let Some(v) = leaf_int(child, 1, MAX_SECS, diags) {
                    listener.config.keepalive_timeout_secs = v;
                }
            }
            "backlog" => {
                // listen(2) takes a C int.
                if let Some(v) = leaf_u32(child, 1, i32::MAX as u32, diags) {
                    listener.config.backlog = v;
                }
            }
            "default-route" => {
                default_route_node = Some(child);
                if let Some((route, at)) = leaf_string(child, diags) {
                    listener.config.default_route = Some(route);
                    listener.default_route_at = Some(at);
                }
            }
            "upstream" => {
                upstream_node = Some(child);
                if let Some((upstream, at)) = leaf_string(child, diags) {
                    listener.config.upstream = Some(upstream);
                    listener.upstream_at = Some(at);
                }
            }
            "tls" => {
                tls_node = Some(child);
                let label = listener_label(&listener.config.name);
                listener.config.tls = tls::parse_tls(child, &label, diags);
            }
            _ => unknown(
                child,
                "listener",
                LISTENER_KEYS,
                LISTENER_UNSUPPORTED,
                diags,
            ),
        }
    }
    let label = listener_label(&listener.config.name);
    if !address_written {
        diags.error(
            name_at(node),
            "listener",
            format!("{label} has no `address` (required, e.g. address \"0.0.0.0:8080\")"),
        );
    }
    if let (Some(at), None) = (https_at, tls_node) {
        diags.error(
            at,
            "protocol",
            format!("{label} is \"https\" but has no `tls {{ cert-file ... key-file ... }}` block"),
        );
    }
    if protocol_known {
        match listener.config.protocol {
            ListenerProtocol::Http => {
                if let Some(up) = upstream_node {
                    diags.error(
                        name_at(up),
                        "upstream",
                        format!(
                            "`upstream` is only valid on tcp listeners; {label} is http and \
                             routes requests through `routes` (use `default-route`)"
                        ),
                    );
                    listener.upstream_at = None;
                }
            }
            ListenerProtocol::Tcp => {
                if let Some(t) = tls_node {
                    diags.error(
                        name_at(t),
                        "tls",
                        format!("`tls` is only supported on http listeners yet; {label} is tcp"),
                    );
                }
                if let Some(dr) = default_route_node {
                    diags.error(
                        name_at(dr),
                        "default-route",
                        format!("`default-route` is only valid on http listeners; {label} is tcp"),
                    );
                    listener.default_route_at = None;
                }
                if upstream_node.is_none() {
                    diags.error(
                        name_at(node),
                        "listener",
                        format!("tcp {label} has no `upstream` (required for tcp listeners)"),
                    );
                }
            }
        }
    } else {
        listener.default_route_at = None;
        listener.upstream_at = None;
    }
    listener
}

fn listener_label(name: &str) -> String {
    if name.is_empty() {
        "listener".to_owned()
    } else {
        format!("listener `{name}`")
    }
}

fn parse_route(node: &KdlNode, diags: &mut Diagnostics<'_>) -> ParsedRoute {
    let named = block_name(node, diags);
    let route_name = named.as_ref().map(|(n, _)| n.clone()).unwrap_or_default();
    let mut priority = RoutePriority::Normal;
    let mut matches = Vec::new();
    let mut action: Option<RouteAction> = None;
    let mut action_node: Option<&KdlNode> = None;
    let mut action_missing_value = false;
    let mut upstream_at = None;
    let mut seen = Seen::default();
    let children = node.children().map_or(&[][..], |c| c.nodes());
    for child in children {
        if name(child) == "priority" {
            seen.check(child, diags);
        }
        match name(child) {
            "priority" => {
                if let Some((p, at)) = leaf_string(child, diags) {
                    match p.as_str() {
                        "critical" => priority = RoutePriority::Critical,
                        "high" => priority = RoutePriority::High,
                        "normal" => priority = RoutePriority::Normal,
                        "low" => priority = RoutePriority::Low,
                        _ => diags.error(
                            at,
                            "priority",
                            format!(
                                "unknown priority {p:?}: expected \"critical\", \"high\", \
                             \"normal\" or \"low\""
                            ),
                        ),
                    }
                }
            }
            "matches" => parse_matches(child, &mut matches, diags),
            "upstream" | "static-response" => {
                if let Some(first) = action_node {
                    let line = diags.line_of(name_at(first));
                    diags.error(
                        name_at(child),
                        name(child),
                        format!(
                            "route `{route_name}` already has an action (`{}` at line {line}): \
                             a route takes exactly one of `upstream` or `static-response`",
                            name(first)
                        ),
                    );
                    continue;
                }
                action_node = Some(child);
                if name(child) == "upstream" {
                    match leaf_string(child, diags) {
                        Some((up, at)) => {
                            action = Some(RouteAction::Upstream(up));
                            upstream_at = Some(at);
                        }
                        None => action_missing_value = true,
                    }
                } else {
                    match parse_static_response(child, diags) {
                        Some(resp) => action = Some(RouteAction::Static(resp)),
                        None => action_missing_value = true,
                    }
                }
            }
            _ => unknown(child, "route", ROUTE_KEYS, ROUTE_UNSUPPORTED, diags),
        }
    }
    if action_node.is_none() && !action_missing_value {
        diags.error(
            name_at(node),
            "route",
            format!(
                "route `{route_name}` has no action: add `upstream \"name\"` or \
                 `static-response status=200`"
            ),
        );
    }
    ParsedRoute {
        config: RouteConfig {
            name: route_name,
            priority,
            matches,
            // Only reached through an error already reported, so the config is never used.
            action: action.unwrap_or_else(|| RouteAction::Upstream(String::new())),
        },
        name_at: named.as_ref().map_or(name_at(node), |(_, at)| *at),
        has_name: named.is_some(),
        upstream_at,
    }
}

fn parse_matches(node: &KdlNode, matches: &mut Vec<RouteMatch>, diags: &mut Diagnostics<'_>) {
    for child in block(node, diags) {
        let kind = name(child);
        if !MATCH_KEYS.contains(&kind) {
            unknown(child, "matches", MATCH_KEYS, &[], diags);
            continue;
        }
        no_children(child, diags);
        for entry in props(child) {
            unknown_property(child, entry, &[], diags);
        }
        // Several values on one node are alternatives, like several nodes of the same kind.
        let mut any = false;
        for entry in args(child) {
            any = true;
            let Some(value) = string_value(child, entry, diags) else {
                continue;
            };
            let at = entry.span().offset();
            match kind {
                "host" => {
                    if let Some(problem) = host_problem(&value) {
                        diags.error(at, kind, format!("invalid host {value:?}: {problem}"));
                    } else {
                        matches.push(RouteMatch::Host(value));
                    }
                }
                _ => {
                    if !value.starts_with('/') {
                        diags.error(at, kind, format!("{kind} {value:?} must start with '/'"));
                    } else if kind == "path" {
                        matches.push(RouteMatch::Path(value));
                    } else {
                        matches.push(RouteMatch::PathPrefix(value));
                    }
                }
            }
        }
        if !any {
            diags.error(
                name_at(child),
                kind,
                "missing value: expected at least one argument",
            );
        }
    }
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

fn parse_static_response(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Option<StaticResponse> {
    const ALLOWED: &[&str] = &["status", "body", "content-type"];
    no_children(node, diags);
    let mut ok = true;
    for entry in args(node) {
        ok = false;
        diags.error(
            entry.span().offset(),
            "static-response",
            "`static-response` takes properties only, e.g. status=200 body=\"ok\" \
             content-type=\"text/plain\"",
        );
    }
    let mut status = None;
    let mut body = String::new();
    let mut content_type = "text/plain".to_owned();
    for entry in props(node) {
        match entry.name().map_or("", |k| k.value()) {
            "status" => match int_value(node, entry, 100, 599, diags) {
                Some(s) => status = u16::try_from(s).ok(),
                None => ok = false,
            },
            "body" => match string_value(node, entry, diags) {
                Some(s) => body = s,
                None => ok = false,
            },
            "content-type" => match string_value(node, entry, diags) {
                Some(s) if s.is_empty() || s.contains(['\r', '\n']) => {
                    ok = false;
                    diags.error(
                        entry.span().offset(),
                        "static-response",
                        "`content-type` must be a non-empty single-line value",
                    );
                }
                Some(s) => content_type = s,
                None => ok = false,
            },
            _ => {
                ok = false;
                unknown_property(node, entry, ALLOWED, diags);
            }
        }
    }
    if status.is_none() && !props(node).any(|e| e.name().is_some_and(|k| k.value() == "status")) {
        diags.error(
            name_at(node),
            "static-response",
            "missing `status` property (100..=599), e.g. status=200",
        );
    }
    match status {
        Some(status) if ok => Some(StaticResponse {
            status,
            body,
            content_type,
        }),
        _ => None,
    }
}

fn parse_upstream(node: &KdlNode, diags: &mut Diagnostics<'_>) -> ParsedUpstream {
    let named = block_name(node, diags);
    let upstream_name = named.as_ref().map(|(n, _)| n.clone()).unwrap_or_default();
    let mut config = UpstreamConfig {
        name: upstream_name.clone(),
        targets: Vec::new(),
        load_balancing: LoadBalancing::RoundRobin,
        pool: ConnectionPool::default(),
        timeouts: UpstreamTimeouts::default(),
        health_check: None,
        passive_health: PassiveHealth::default(),
    };
    let mut seen = Seen::default();
    let mut target_seen: HashMap<SocketAddr, usize> = HashMap::new();
    let mut target_written = false;
    let children = node.children().map_or(&[][..], |c| c.nodes());
    for child in children {
        if matches!(
            name(child),
            "load-balancing" | "connection-pool" | "timeouts" | "health-check" | "passive-health"
        ) {
            seen.check(child, diags);
        }
        match name(child) {
            "target" => {
                target_written = true;
                if let Some(target) = parse_target(child, &mut target_seen, diags) {
                    config.targets.push(target);
                }
            }
            "load-balancing" => {
                if let Some((lb, at)) = leaf_string(child, diags) {
                    match lb.as_str() {
                        "round_robin" | "round-robin" => {
                            config.load_balancing = LoadBalancing::RoundRobin
                        }
                        "least_connections" | "least-connections" => {
                            config.load_balancing = LoadBalancing::LeastConnections
                        }
                        _ => diags.error(
                            at,
                            "load-balancing",
                            format!(
                                "unknown load-balancing {lb:?}: expected \"round_robin\" or \
                             \"least_connections\""
                            ),
                        ),
                    }
                }
            }
            "connection-pool" => {
                for c in keyed_block(child, POOL_KEYS, diags) {
                    match name(c) {
                        "max-idle" => {
                            if let Some(v) = leaf_u32(c, 0, 1_000_000, diags) {
                                config.pool.max_idle = v;
                            }
                        }
                        "idle-timeout-secs" => {
                            if let Some(v) = leaf_int(c, 1, MAX_SECS, diags) {
                                config.pool.idle_timeout_secs = v;
                            }
                        }
                        _ => unknown(c, "connection-pool", POOL_KEYS, &[], diags),
                    }
                }
            }
            "timeouts" => {
                for c in keyed_block(child, TIMEOUT_KEYS, diags) {
                    match name(c) {
                        "connect-secs" => {
                            if let Some(v) = leaf_int(c, 1, MAX_SECS, diags) {
                                config.timeouts.connect_secs = v;
                            }
                        }
                        "read-secs" => {
                            if let Some(v) = leaf_int(c, 1, MAX_SECS, diags) {
                                config.timeouts.read_secs = v;
                            }
                        }
                        _ => unknown(c, "timeouts", TIMEOUT_KEYS, &[], diags),
                    }
                }
            }
            "health-check" => config.health_check = parse_health_check(child, diags),
            "passive-health" => {
                for c in keyed_block(child, PASSIVE_HEALTH_KEYS, diags) {
                    match name(c) {
                        "max-fails" => {
                            if let Some(v) = leaf_u32(c, 0, 1_000_000, diags) {
                                config.passive_health.max_fails = v;
                            }
                        }
                        "fail-timeout-secs" => {
                            if let Some(v) = leaf_int(c, 1, MAX_SECS, diags) {
                                config.passive_health.fail_timeout_secs = v;
                            }
                        }
                        _ => unknown(c, "passive-health", PASSIVE_HEALTH_KEYS, &[], diags),
                    }
                }
            }
            _ => unknown(
                child,
                "upstream",
                UPSTREAM_KEYS,
                UPSTREAM_UNSUPPORTED,
                diags,
            ),
        }
    }
    if !target_written {
        diags.error(
            name_at(node),
            "upstream",
            format!(
                "upstream `{upstream_name}` has no `target` (at least one is required, e.g. \
                 target \"127.0.0.1:9001\")"
            ),
        );
    }
    ParsedUpstream {
        config,
        name_at: named.as_ref().map_or(name_at(node), |(_, at)| *at),
        has_name: named.is_some(),
    }
}

/// `health-check { type "http" { path "/health"; expected-status 200; }; interval-secs 5; }`
fn parse_health_check(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Option<HealthCheck> {
    let mut ok = true;
    let mut kind = None;
    let mut check = HealthCheck {
        kind: HealthCheckKind::Tcp,
        interval_secs: DEFAULT_HEALTH_INTERVAL_SECS,
        timeout_secs: DEFAULT_HEALTH_TIMEOUT_SECS,
        healthy_threshold: DEFAULT_HEALTHY_THRESHOLD,
        unhealthy_threshold: DEFAULT_UNHEALTHY_THRESHOLD,
    };
    let mut seen = Seen::default();
    let errors_before = diags.list.len();
    for c in block(node, diags) {
        if HEALTH_CHECK_KEYS.contains(&name(c)) {
            seen.check(c, diags);
        }
        match name(c) {
            "type" => kind = parse_check_type(c, diags),
            "interval-secs" => match leaf_int(c, 1, MAX_SECS, diags) {
                Some(v) => check.interval_secs = v,
                None => ok = false,
            },
            "timeout-secs" => match leaf_int(c, 1, MAX_SECS, diags) {
                Some(v) => check.timeout_secs = v,
                None => ok = false,
            },
            "healthy-threshold" => match leaf_u32(c, 1, MAX_THRESHOLD, diags) {
                Some(v) => check.healthy_threshold = v,
                None => ok = false,
            },
            "unhealthy-threshold" => match leaf_u32(c, 1, MAX_THRESHOLD, diags) {
                Some(v) => check.unhealthy_threshold = v,
                None => ok = false,
            },
            _ => {
                ok = false;
                unknown(c, "health-check", HEALTH_CHECK_KEYS, &[], diags);
            }
        }
    }
    if !seen.first.contains_key("type") {
        diags.error(
            name_at(node),
            "health-check",
            "missing `type`: expected `type \"http\" { path \"/health\"; }` or `type \"tcp\"`",
        );
        return None;
    }
    check.kind = kind?;
    (ok && diags.list.len() == errors_before).then_some(check)
}

/// `type "http" { path "/health"; expected-status 200; host "example.com"; }` or `type "tcp"`.
fn parse_check_type(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Option<HealthCheckKind> {
    for entry in props(node) {
        unknown_property(node, entry, &[], diags);
    }
    let (first, extra) = only_arg(
        node,
        "missing check type: expected \"http\" or \"tcp\"",
        "expected exactly one check type",
        diags,
    )?;
    if extra {
        return None;
    }
    let kind = string_value(node, first, diags)?;
    match kind.as_str() {
        "tcp" => {
            no_children(node, diags);
            Some(HealthCheckKind::Tcp)
        }
        "http" => {
            let mut path = None;
            let mut expected_status = 200u16;
            let mut host = None;
            let mut ok = true;
            let mut seen = Seen::default();
            for c in node.children().map_or(&[][..], |c| c.nodes()) {
                if HTTP_CHECK_KEYS.contains(&name(c)) {
                    seen.check(c, diags);
                }
                match name(c) {
                    "path" => match leaf_string(c, diags) {
                        Some((p, _)) if p.starts_with('/') && is_request_target(&p) => {
                            path = Some(p)
                        }
                        Some((p, at)) => {
                            ok = false;
                            diags.error(
                                at,
                                "path",
                                format!(
                                    "invalid health check path {p:?}: it must start with `/` \
                                     and contain no spaces or control characters"
                                ),
                            );
                        }
                        None => ok = false,
                    },
                    "expected-status" => match leaf_int(c, 100, 599, diags) {
                        Some(v) => expected_status = u16::try_from(v).unwrap_or(200),
                        None => ok = false,
                    },
                    "host" => match leaf_string(c, diags) {
                        Some((h, at)) if h.is_empty() || !is_request_target(&h) => {
                            ok = false;
                            diags.error(
                                at,
                                "host",
                                format!(
                                    "invalid health check host {h:?}: expected a non-empty \
                                     host name without spaces or control characters"
                                ),
                            );
                        }
                        Some((h, _)) => host = Some(h),
                        None => ok = false,
                    },
                    _ => {
                        ok = false;
                        unknown(c, "type \"http\"", HTTP_CHECK_KEYS, &[], diags);
                    }
                }
            }
            if path.is_none() && ok && !seen.first.contains_key("path") {
                diags.error(
                    name_at(node),
                    "type",
                    "an http health check needs a `path`, e.g. `type \"http\" { path \"/health\"; }`",
                );
            }
            let path = path?;
            ok.then_some(HealthCheckKind::Http {
                path,
                expected_status,
                host,
            })
        }
        other => {
            diags.error(
                first.span().offset(),
                "type",
                format!("unknown health check type {other:?}: expected \"http\" or \"tcp\""),
            );
            None
        }
    }
}

/// What can go on a request line or into a header value verbatim.
fn is_request_target(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic())
}

fn parse_target(
    node: &KdlNode,
    seen: &mut HashMap<SocketAddr, usize>,
    diags: &mut Diagnostics<'_>,
) -> Option<UpstreamTarget> {
    no_children(node, diags);
    let mut weight = Some(1u32);
    for entry in props(node) {
        match entry.name().map_or("", |k| k.value()) {
            "weight" => {
                weight = int_value(node, entry, 1, u64::from(u16::MAX), diags)
                    .and_then(|w| u32::try_from(w).ok());
            }
            _ => unknown_property(node, entry, &["weight"], diags),
        }
    }
    let (first, extra) = only_arg(
        node,
        "missing address: expected e.g. target \"127.0.0.1:9001\"",
        "`target` takes one address; write one `target` node per backend",
        diags,
    )?;
    if extra {
        return None;
    }
    let text = string_value(node, first, diags)?;
    let at = first.span().offset();
    let addr = socket_addr(node, &text, at, diags)?;
    if let Some(&prev) = seen.get(&addr) {
        let line = diags.line_of(prev);
        diags.error(
            at,
            "target",
            format!("duplicate target {text:?} (first at line {line}); use `weight` instead"),
        );
        return None;
    }
    seen.insert(addr, at);
    Some(UpstreamTarget {
        address: text,
        weight: weight?,
    })
}
