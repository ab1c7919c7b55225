//! The top-level `filters { filter "name" { type "..." ... } }` block, in upstream Zentinel's
//! spelling (`crates/config/src/kdl/filters.rs`). Upstream's parser reads a few keys per type
//! and silently drops the rest (a `cors` filter's lists, a typo in any key, an unknown
//! `on-limit` falling back to reject); here every key either works or is an error naming what
//! the type accepts. `geo` and `agent` are "not supported yet". The `rate-limit` type is in
//! `filter_rate_limit`.

use zentinel_protocol::config::{
    CompressFilter, CompressionAlgorithm, CorsFilter, FilterConfig, FilterKind, FilterPhase,
    HeadersFilter, LogFilter, LogLevel, PathModifier, RedirectFilter, TimeoutFilter,
    UrlRewriteFilter,
};

use super::filter_rate_limit::parse_rate_limit_filter;
use super::limits::leaf_size;
use super::policies::{check_name, parse_header_op, HEADER_OPS};
use super::*;

/// Upstream's types this build implements.
const TYPES: &[&str] = &[
    "rate-limit",
    "headers",
    "cors",
    "compress",
    "timeout",
    "log",
    "redirect",
    "url-rewrite",
];
/// Upstream's types left for later (a GeoIP database, the agent protocol).
const TYPES_NOT_YET: &[&str] = &["geo", "agent"];

const HEADERS_KEYS: &[&str] = &["type", "phase", "rename", "set", "add", "remove"];
const CORS_KEYS: &[&str] = &[
    "type",
    "allowed-origins",
    "allowed-methods",
    "allowed-headers",
    "exposed-headers",
    "allow-credentials",
    "max-age-secs",
];
const COMPRESS_KEYS: &[&str] = &["type", "algorithms", "min-size", "content-types", "level"];
const REDIRECT_KEYS: &[&str] = &[
    "type",
    "status-code",
    "scheme",
    "hostname",
    "port",
    "replace-full-path",
    "replace-prefix-match",
];
const URL_REWRITE_KEYS: &[&str] = &[
    "type",
    "hostname",
    "replace-full-path",
    "replace-prefix-match",
];
const TIMEOUT_KEYS: &[&str] = &[
    "type",
    "request-timeout-secs",
    "upstream-timeout-secs",
    "connect-timeout-secs",
];
const LOG_KEYS: &[&str] = &[
    "type",
    "log-request",
    "log-response",
    "log-body",
    "max-body-log-size",
    "level",
    "fields",
];
const REDIRECT_STATUSES: &[u64] = &[301, 302, 303, 307, 308];
const ALGORITHMS: &[(&str, CompressionAlgorithm)] = &[
    ("gzip", CompressionAlgorithm::Gzip),
    ("br", CompressionAlgorithm::Brotli),
    ("brotli", CompressionAlgorithm::Brotli),
    ("zstd", CompressionAlgorithm::Zstd),
    ("deflate", CompressionAlgorithm::Deflate),
];
const LOG_LEVELS: &[(&str, LogLevel)] = &[
    ("trace", LogLevel::Trace),
    ("debug", LogLevel::Debug),
    ("info", LogLevel::Info),
    ("warn", LogLevel::Warn),
    ("error", LogLevel::Error),
];

/// A filter as written, with where its name was written.
pub(in crate::config) struct ParsedFilter {
    pub config: FilterConfig,
    pub name_at: usize,
    pub has_name: bool,
}

/// `filters { filter "name" { ... } ... }`: the definitions of one block.
pub(super) fn parse_filters(
    node: &KdlNode,
    out: &mut Vec<ParsedFilter>,
    not_supported: &mut Vec<String>,
    diags: &mut Diagnostics<'_>,
) {
    for child in block(node, diags) {
        match name(child) {
            "filter" => {
                if let Some(f) = parse_filter(child, not_supported, diags) {
                    out.push(f);
                }
            }
            _ => unknown(child, "filters", &["filter"], &[], diags),
        }
    }
}

fn parse_filter(
    node: &KdlNode,
    not_supported: &mut Vec<String>,
    diags: &mut Diagnostics<'_>,
) -> Option<ParsedFilter> {
    let named = block_name(node, diags);
    let children = node.children().map_or(&[][..], |c| c.nodes());
    let type_nodes: Vec<&KdlNode> = children.iter().filter(|c| name(c) == "type").collect();
    let Some(type_node) = type_nodes.first() else {
        diags.error(
            name_at(node),
            "filter",
            format!(
                "filter has no `type`: add `type \"...\"` (one of {})",
                quoted(TYPES)
            ),
        );
        return None;
    };
    for extra in &type_nodes[1..] {
        let line = diags.line_of(name_at(type_node));
        diags.error(
            name_at(extra),
            "type",
            format!("duplicate `type` (first set at line {line})"),
        );
    }
    let (kind_name, kind_at) = leaf_string(type_node, diags)?;
    let kind = match kind_name.as_str() {
        "headers" => parse_headers(node, diags).map(FilterKind::Headers),
        "cors" => parse_cors(node, diags).map(FilterKind::Cors),
        "compress" => parse_compress(node, diags).map(FilterKind::Compress),
        "redirect" => parse_redirect(node, diags).map(FilterKind::Redirect),
        "url-rewrite" => parse_url_rewrite(node, diags).map(FilterKind::UrlRewrite),
        "timeout" => parse_timeout(node, diags).map(FilterKind::Timeout),
        "log" => parse_log(node, diags).map(FilterKind::Log),
        "rate-limit" => parse_rate_limit_filter(node, diags).map(FilterKind::RateLimit),
        other if TYPES_NOT_YET.contains(&other) => {
            if let Some((name, _)) = &named {
                not_supported.push(name.clone());
            }
            diags.error(
                kind_at,
                "type",
                format!(
                    "filter type {other:?} is not supported yet (this build implements {})",
                    quoted(TYPES)
                ),
            );
            None
        }
        other => {
            diags.error(
                kind_at,
                "type",
                format!(
                    "unknown filter type {other:?}{}: expected one of {}",
                    did_you_mean(other, TYPES.iter().copied()),
                    quoted(TYPES)
                ),
            );
            None
        }
    }?;
    let (name, name_at_) = named.clone().unwrap_or_default();
    Some(ParsedFilter {
        config: FilterConfig { name, kind },
        name_at: if named.is_some() {
            name_at_
        } else {
            name_at(node)
        },
        has_name: named.is_some(),
    })
}

/// `"a", "b" or "c"`.
pub(super) fn quoted(list: &[&str]) -> String {
    let quoted: Vec<String> = list.iter().map(|t| format!("\"{t}\"")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => quoted.concat(),
    }
}

/// The children of a filter, `type` left out, each of `keys` checked for repetition; a child
/// not in `keys` is reported listing them. Returns the known children.
pub(super) fn filter_keys<'n>(
    node: &'n KdlNode,
    kind: &str,
    keys: &[&str],
    repeatable: &[&str],
    diags: &mut Diagnostics<'_>,
) -> Vec<&'n KdlNode> {
    let mut seen = Seen::default();
    let mut known = Vec::new();
    for child in node.children().map_or(&[][..], |c| c.nodes()) {
        let key = name(child);
        if key == "type" {
            continue;
        }
        if !keys.contains(&key) {
            unknown_listing(child, &format!("{kind} filter"), keys, &[], diags);
            continue;
        }
        if repeatable.contains(&key) || seen.check(child, diags) {
            known.push(child);
        }
    }
    known
}

fn parse_phase(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Option<FilterPhase> {
    let (text, at) = leaf_string(node, diags)?;
    match text.as_str() {
        "request" => Some(FilterPhase::Request),
        "response" => Some(FilterPhase::Response),
        "both" => Some(FilterPhase::Both),
        _ => {
            diags.error(
                at,
                "phase",
                format!("unknown phase {text:?}: expected \"request\", \"response\" or \"both\""),
            );
            None
        }
    }
}

fn parse_headers(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Option<HeadersFilter> {
    let mut filter = HeadersFilter::default();
    let errors = diags.error_count();
    for child in filter_keys(node, "headers", HEADERS_KEYS, HEADER_OPS, diags) {
        if name(child) == "phase" {
            filter.phase = parse_phase(child, diags).unwrap_or_default();
        } else {
            parse_header_op(child, &mut filter.mods, diags);
        }
    }
    if filter.mods.is_empty() && diags.error_count() == errors {
        diags.warn(
            name_at(node),
            "filter",
            "this headers filter changes nothing (no rename, set, add or remove)",
        );
    }
    Some(filter)
}

/// The string arguments of `node`, each also split at commas (`"GET, POST"` is two).
fn string_list(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Vec<(String, usize)> {
    no_children(node, diags);
    for entry in props(node) {
        unknown_property(node, entry, &[], diags);
    }
    let mut out = Vec::new();
    for entry in args(node) {
        let Some(text) = string_value(node, entry, diags) else {
            continue;
        };
        let at = entry.span().offset();
        out.extend(
            text.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| (s.to_owned(), at)),
        );
    }
    if out.is_empty() && args(node).next().is_none() {
        diags.error(
            name_at(node),
            name(node),
            "missing value: expected one or more strings",
        );
    }
    out
}

fn parse_cors(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Option<CorsFilter> {
    let mut cors = CorsFilter::default();
    for child in filter_keys(node, "cors", CORS_KEYS, &[], diags) {
        match name(child) {
            "allowed-origins" => {
                cors.allowed_origins = Vec::new();
                for (origin, at) in string_list(child, diags) {
                    if origin.matches('*').count() > 1 || (origin != "*" && !origin.contains("://"))
                    {
                        diags.error(
                            at,
                            "allowed-origins",
                            format!(
                                "invalid origin {origin:?}: expected \"*\", an origin such as \
                                 \"https://app.example.com\", or a pattern with one `*` such as \
                                 \"https://*.example.com\""
                            ),
                        );
                        continue;
                    }
                    cors.allowed_origins.push(origin);
                }
            }
            "allowed-methods" => {
                cors.allowed_methods = Vec::new();
                for (method, at) in string_list(child, diags) {
                    if method.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-') {
                        cors.allowed_methods.push(method.to_ascii_uppercase());
                    } else {
                        diags.error(at, "allowed-methods", format!("invalid method {method:?}"));
                    }
                }
            }
            key @ ("allowed-headers" | "exposed-headers") => {
                let mut list = Vec::new();
                for (header, at) in string_list(child, diags) {
                    if header == "*" || check_name(&header, at, child, diags) {
                        list.push(header);
                    }
                }
                if key == "allowed-headers" {
                    cors.allowed_headers = list;
                } else {
                    cors.exposed_headers = list;
                }
            }
            "allow-credentials" => {
                cors.allow_credentials = leaf_bool(child, diags).unwrap_or(false);
            }
            "max-age-secs" => {
                cors.max_age_secs = leaf_int(child, 0, MAX_SECS, diags).unwrap_or(86_400);
            }
            _ => {}
        }
    }
    Some(cors)
}

fn parse_compress(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Option<CompressFilter> {
    let mut compress = CompressFilter::default();
    let mut ok = true;
    for child in filter_keys(node, "compress", COMPRESS_KEYS, &[], diags) {
        match name(child) {
            "algorithms" => {
                compress.algorithms = Vec::new();
                for (token, at) in string_list(child, diags) {
                    match ALGORITHMS
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case(&token))
                    {
                        Some((_, a)) if !compress.algorithms.contains(a) => {
                            compress.algorithms.push(*a)
                        }
                        Some(_) => {}
                        None => {
                            ok = false;
                            diags.error(
                                at,
                                "algorithms",
                                format!(
                                    "unknown compression algorithm {token:?}{}: expected \
                                     \"gzip\", \"br\", \"zstd\" or \"deflate\"",
                                    did_you_mean(&token, ALGORITHMS.iter().map(|(n, _)| *n))
                                ),
                            );
                        }
                    }
                }
                if compress.algorithms.is_empty() && ok {
                    diags.error(
                        name_at(child),
                        "algorithms",
                        "a compress filter needs at least one algorithm",
                    );
                }
            }
            "min-size" => {
                compress.min_size = leaf_size(child, 0, u64::MAX >> 1, diags).unwrap_or(1024)
            }
            "content-types" => {
                compress.content_types = string_list(child, diags)
                    .into_iter()
                    .map(|(t, _)| t.to_ascii_lowercase())
                    .collect();
            }
            "level" => {
                compress.level = leaf_int(child, 1, 11, diags)
                    .and_then(|l| u8::try_from(l).ok())
                    .unwrap_or(6)
            }
            _ => {}
        }
    }
    Some(compress)
}

/// `replace-full-path` / `replace-prefix-match`, at most one of them.
fn path_modifier(children: &[&KdlNode], diags: &mut Diagnostics<'_>) -> Option<PathModifier> {
    let mut found: Option<(PathModifier, usize)> = None;
    for child in children {
        let make = match name(child) {
            "replace-full-path" => PathModifier::ReplaceFullPath,
            "replace-prefix-match" => PathModifier::ReplacePrefixMatch,
            _ => continue,
        };
        let Some((path, at)) = leaf_string(child, diags) else {
            continue;
        };
        if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            diags.error(
                at,
                name(child),
                format!("invalid path {path:?}: expected an absolute path such as \"/new\""),
            );
            continue;
        }
        if let Some((_, first)) = &found {
            let line = diags.line_of(*first);
            diags.error(
                name_at(child),
                name(child),
                format!(
                    "`replace-full-path` and `replace-prefix-match` exclude each other (one was \
                     set at line {line})"
                ),
            );
            continue;
        }
        found = Some((make(path), name_at(child)));
    }
    found.map(|(m, _)| m)
}

fn hostname(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Option<String> {
    let (host, at) = leaf_string(node, diags)?;
    let valid = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b));
    if !valid {
        diags.error(
            at,
            "hostname",
            format!("invalid hostname {host:?}: letters, digits, '-', '.' and a port only"),
        );
        return None;
    }
    Some(host)
}

fn parse_redirect(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Option<RedirectFilter> {
    let children = filter_keys(node, "redirect", REDIRECT_KEYS, &[], diags);
    let mut redirect = RedirectFilter {
        status_code: 302,
        scheme: None,
        hostname: None,
        port: None,
        path: path_modifier(&children, diags),
    };
    for child in children {
        match name(child) {
            "status-code" => {
                if let Some(entry) = single_arg(child, diags) {
                    match int_value(child, entry, 300, 399, diags) {
                        Some(s) if REDIRECT_STATUSES.contains(&s) => {
                            redirect.status_code = s as u16
                        }
                        Some(s) => diags.error(
                            entry.span().offset(),
                            "status-code",
                            format!(
                                "a redirect status must be 301, 302, 303, 307 or 308, found {s}"
                            ),
                        ),
                        None => {}
                    }
                }
            }
            "scheme" => {
                if let Some((scheme, at)) = leaf_string(child, diags) {
                    match scheme.to_ascii_lowercase().as_str() {
                        s @ ("http" | "https") => redirect.scheme = Some(s.to_owned()),
                        _ => diags.error(
                            at,
                            "scheme",
                            format!("unknown scheme {scheme:?}: expected \"http\" or \"https\""),
                        ),
                    }
                }
            }
            "hostname" => redirect.hostname = hostname(child, diags),
            "port" => {
                redirect.port =
                    leaf_int(child, 1, 65_535, diags).and_then(|p| u16::try_from(p).ok())
            }
            _ => {}
        }
    }
    Some(redirect)
}

fn parse_url_rewrite(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Option<UrlRewriteFilter> {
    let children = filter_keys(node, "url-rewrite", URL_REWRITE_KEYS, &[], diags);
    let mut rewrite = UrlRewriteFilter {
        hostname: None,
        path: path_modifier(&children, diags),
    };
    for child in children {
        if name(child) == "hostname" {
            rewrite.hostname = hostname(child, diags);
        }
    }
    if rewrite.hostname.is_none() && rewrite.path.is_none() {
        diags.warn(
            name_at(node),
            "filter",
            "this url-rewrite filter changes nothing (no hostname, replace-full-path or \
             replace-prefix-match)",
        );
    }
    Some(rewrite)
}

fn parse_timeout(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Option<TimeoutFilter> {
    let mut timeout = TimeoutFilter::default();
    for child in filter_keys(node, "timeout", TIMEOUT_KEYS, &[], diags) {
        let value = leaf_int(child, 1, MAX_SECS, diags);
        match name(child) {
            "request-timeout-secs" => timeout.request_timeout_secs = value,
            "upstream-timeout-secs" => timeout.upstream_timeout_secs = value,
            "connect-timeout-secs" => timeout.connect_timeout_secs = value,
            _ => {}
        }
    }
    Some(timeout)
}

fn parse_log(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Option<LogFilter> {
    let mut log = LogFilter::default();
    for child in filter_keys(node, "log", LOG_KEYS, &[], diags) {
        match name(child) {
            "log-request" => log.log_request = leaf_bool(child, diags).unwrap_or(true),
            "log-response" => log.log_response = leaf_bool(child, diags).unwrap_or(true),
            "log-body" => {
                log.log_body = leaf_bool(child, diags).unwrap_or(false);
                if log.log_body {
                    diags.warn(
                        name_at(child),
                        "log-body",
                        "`log-body` is accepted without effect (upstream's proxy never logs \
                         bodies either): a log filter's lines carry the method, path, client, \
                         status and duration",
                    );
                }
            }
            "max-body-log-size" => {
                log.max_body_log_size = leaf_size(child, 0, 1 << 20, diags).unwrap_or(4096)
            }
            "level" => {
                if let Some((text, at)) = leaf_string(child, diags) {
                    match LOG_LEVELS
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case(&text))
                    {
                        Some((_, l)) => log.level = *l,
                        None => diags.error(
                            at,
                            "level",
                            format!(
                                "unknown log level {text:?}: expected \"trace\", \"debug\", \
                                 \"info\", \"warn\" or \"error\""
                            ),
                        ),
                    }
                }
            }
            "fields" => diags.warn(
                name_at(child),
                "fields",
                "`fields` is ignored (upstream's parser never reads it either): a log filter's \
                 lines carry the method, path, client, status and duration",
            ),
            _ => {}
        }
    }
    Some(log)
}
