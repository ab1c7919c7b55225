//! What a route's conditions look at and how each is matched: host patterns (exact or
//! `*.suffix`), exact paths, segment prefixes, regexes, methods, headers and query parameters.

use regex::Regex;

use super::strip_port;

/// What routing looks at in a request. The host is already normalized (lowercase, no port).
pub trait RouteRequest {
    fn host(&self) -> Option<&str>;
    /// Without the query string.
    fn path(&self) -> &str;
    fn method(&self) -> &str;
    /// The raw query string (after `?`, before any `#`), if any.
    fn query(&self) -> Option<&str>;
    /// Whether a field named `name` (lowercase) is present with a value accepted by `want`.
    fn has_header(&self, name: &str, want: &dyn Fn(&[u8]) -> bool) -> bool;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum HostPattern {
    Exact(String),
    /// `*.example.com` stored as `.example.com`: any subdomain depth, not the bare domain.
    Suffix(String),
}

impl HostPattern {
    /// Hosts are compared case-insensitively (RFC 9110); upstream compares them as sent.
    pub(super) fn parse(p: &str) -> Self {
        let p = p.trim().to_ascii_lowercase();
        match p.strip_prefix('*') {
            Some(rest) if rest.starts_with('.') => HostPattern::Suffix(rest.to_string()),
            _ => HostPattern::Exact(strip_port(&p).to_string()),
        }
    }

    pub(super) fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        }
    }
}

/// One non-host condition; the values inside are alternatives.
#[derive(Debug, Clone)]
pub(super) enum Condition {
    Path(Vec<String>),
    Prefix(Vec<String>),
    Regex(Vec<Regex>),
    Method(Vec<String>),
    Header { name: String, value: Option<String> },
    Query { name: String, value: Option<String> },
}

impl Condition {
    pub(super) fn holds(&self, req: &dyn RouteRequest) -> bool {
        match self {
            Condition::Path(paths) => paths.iter().any(|p| p == req.path()),
            Condition::Prefix(prefixes) => prefixes.iter().any(|p| prefix_matches(p, req.path())),
            Condition::Regex(res) => res.iter().any(|r| r.is_match(req.path())),
            Condition::Method(methods) => methods.iter().any(|m| m == req.method()),
            Condition::Header { name, value } => req.has_header(name, &|v| {
                value.as_ref().is_none_or(|want| want.as_bytes() == v)
            }),
            Condition::Query { name, value } => req
                .query()
                .is_some_and(|q| query_has(q, name, value.as_deref())),
        }
    }
}

/// Upstream's segment rule: `/api` matches `/api` and `/api/x`, not `/apix`; a prefix ending
/// in `/` (or `/` itself) is a plain prefix.
pub(super) fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix)
        && (prefix.ends_with('/')
            || path.len() == prefix.len()
            || path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

/// Whether the query string has parameter `name` (with exactly `value`, if given), both
/// compared after form decoding (`%XX`, `+` as space).
pub(super) fn query_has(query: &str, name: &str, value: Option<&str>) -> bool {
    query.split('&').filter(|p| !p.is_empty()).any(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        form_decode(k) == name.as_bytes()
            && value.is_none_or(|want| form_decode(v) == want.as_bytes())
    })
}

fn form_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    out
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}
