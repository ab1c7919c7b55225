//! `redirect` (the proxy answers with a `Location` built from the request) and `url-rewrite`
//! (the request goes upstream with another target or `Host`), sharing upstream's path
//! modifiers: `replace-full-path` (with `$1` / `${name}` captures of the route's `path-regex`)
//! and `replace-prefix-match` (the route's longest matching `path-prefix` replaced).

use zentinel_protocol::config::{PathModifier, RedirectFilter};

use super::{Chain, FilterCounters, RequestFacts, Verdict};
use crate::http::codec;

pub(super) fn redirect(
    r: &RedirectFilter,
    chain: &Chain,
    facts: &RequestFacts<'_>,
    counters: &FilterCounters,
) -> Verdict {
    let req = facts.req;
    let scheme = r.scheme.as_deref().unwrap_or(facts.scheme);
    let host = match (&r.hostname, &req.host) {
        (Some(h), _) => h.as_str(),
        (None, Some(h)) => h.as_str(),
        (None, None) => "localhost",
    };
    // As Gateway API's request redirect: a configured port; else the scheme's own port when
    // the scheme changes; else the port the client used (upstream drops it, sending a client
    // of `:8080` to port 80).
    let port = match (r.port, &r.scheme) {
        (Some(p), _) => Some(p),
        (None, Some(_)) => None,
        (None, None) => request_port(facts),
    };
    let port = match port {
        Some(80) if scheme == "http" => String::new(),
        Some(443) if scheme == "https" => String::new(),
        Some(p) => format!(":{p}"),
        None => String::new(),
    };
    let (path, query) = split_target(req.target());
    let path = match &r.path {
        Some(m) => modify_path(m, path, chain),
        None => path.to_owned(),
    };
    // The query string is kept (upstream drops it; nginx's `$request_uri` keeps it).
    let location = format!("{scheme}://{host}{port}{}", with_query(path, query));
    FilterCounters::add(&counters.redirects, 1);
    // A request body is not read: the connection closes after the answer when one follows.
    let close = !req.keep_alive || super::unread_body(req);
    let bytes = codec::local_response_with(
        r.status_code,
        None,
        &[("Location", location.as_str())],
        b"",
        close,
        req.is_head(),
    );
    Verdict::Respond {
        status: r.status_code,
        bytes,
        close,
    }
}

/// The port of the request's authority (absolute-form target, else `Host`), if it has one.
fn request_port(facts: &RequestFacts<'_>) -> Option<u16> {
    let target = facts.req.target();
    let authority = match target.find("://") {
        Some(i) => {
            let after = &target[i + 3..];
            &after[..after.find(['/', '?']).unwrap_or(after.len())]
        }
        None => super::header_value(facts.req, "host")?,
    };
    // `[v6]:port` or `name:port`; a bare IPv6 literal has no port outside its brackets.
    let after_host = match authority.rfind(']') {
        Some(i) => &authority[i + 1..],
        None => authority,
    };
    after_host.rsplit_once(':')?.1.parse().ok()
}

/// `path` with the request's `query`: appended after `&` when the new path has one already
/// (`replace-full-path "/v2?user=$1"`), after `?` otherwise.
pub(super) fn with_query(path: String, query: Option<&str>) -> String {
    match query {
        Some(q) if !q.is_empty() => {
            let sep = if path.contains('?') { '&' } else { '?' };
            format!("{path}{sep}{q}")
        }
        _ => path,
    }
}

/// The path and the query of an origin-form (or absolute-form) target.
pub(super) fn split_target(target: &str) -> (&str, Option<&str>) {
    let rest = match target.find("://") {
        Some(i) => {
            let after = &target[i + 3..];
            &after[after.find('/').unwrap_or(after.len())..]
        }
        None => target,
    };
    let rest = &rest[..rest.find('#').unwrap_or(rest.len())];
    match rest.split_once('?') {
        Some((p, q)) => (if p.is_empty() { "/" } else { p }, Some(q)),
        None => (if rest.is_empty() { "/" } else { rest }, None),
    }
}

/// Apply a path modifier to `path` on `chain`'s route.
pub(super) fn modify_path(m: &PathModifier, path: &str, chain: &Chain) -> String {
    match m {
        PathModifier::ReplaceFullPath(value) => {
            match chain.regexes.iter().find_map(|re| re.captures(path)) {
                Some(caps) if value.contains('$') => {
                    let mut out = String::new();
                    caps.expand(value, &mut out);
                    out
                }
                _ => value.clone(),
            }
        }
        PathModifier::ReplacePrefixMatch(value) => {
            let prefix = chain
                .prefixes
                .iter()
                .map(|p| p.trim_end_matches('/'))
                .filter(|p| path.starts_with(p))
                .max_by_key(|p| p.len())
                .unwrap_or("");
            let suffix = &path[prefix.len()..];
            let value = value.trim_end_matches('/');
            if suffix.is_empty() || suffix == "/" {
                format!("{value}/")
            } else if suffix.starts_with('/') {
                format!("{value}{suffix}")
            } else {
                format!("{value}/{suffix}")
            }
        }
    }
}

/// In a serialized request head (`METHOD target VERSION\r\n...`), replace the target.
pub(super) fn rewrite_target(head: &mut Vec<u8>, target: &str) {
    let line_end = head
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(head.len());
    let line = &head[..line_end];
    if let (Some(a), Some(b)) = (
        line.iter().position(|&c| c == b' '),
        line.iter().rposition(|&c| c == b' '),
    ) {
        if a < b {
            head.splice(a + 1..b, target.bytes());
        }
    }
}
