//! `redirect` (the proxy answers with a `Location` built from the request) and `url-rewrite`
//! (the request goes upstream with another target or `Host`), sharing upstream's path
//! modifiers: `replace-full-path` (with `$1` / `${name}` captures of the route's `path-regex`)
//! and `replace-prefix-match` (the route's longest matching `path-prefix` replaced).

use zentinel_protocol::config::{HeaderModifications, PathModifier, RedirectFilter};

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
    let port = match r.port {
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
    let location = match query {
        Some(q) => format!("{scheme}://{host}{port}{path}?{q}"),
        None => format!("{scheme}://{host}{port}{path}"),
    };
    FilterCounters::add(&counters.redirects, 1);
    // A request body is not read: the connection closes after the answer when one follows.
    let close = !req.keep_alive || !matches!(req.framing, codec::BodyFraming::Empty);
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

/// In a serialized request head (`METHOD target VERSION\r\n...`), replace the target and/or
/// the `Host` field's value.
pub(super) fn rewrite_head(head: &mut Vec<u8>, target: Option<&str>, host: Option<&str>) {
    if let Some(target) = target {
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
    if let Some(host) = host {
        let mods = HeaderModifications {
            set: vec![("Host".to_owned(), host.to_owned())],
            ..Default::default()
        };
        crate::http::apply_header_mods(&mods, head, 0);
    }
}
