//! The `cors` filter: a preflight (`OPTIONS` with `Access-Control-Request-Method`) from an
//! allowed origin is answered by the proxy (204); any other request from an allowed origin is
//! proxied and its response carries `Access-Control-Allow-Origin` (the origin itself, never
//! `*`, so credentials work) and the exposed headers. A request from an origin not allowed
//! gets no `Access-Control-*` field at all: the browser then refuses the response, as the
//! specification intends. A preflight from such an origin goes to the upstream like any other
//! request (upstream does the same).
//!
//! Every response of the route says `Vary: Origin` (once), whatever the request's origin:
//! the answer depends on it, and a cache that kept the answer to a request without `Origin`
//! (or from another origin) must not hand it to an allowed origin. Upstream adds it only to
//! the allowed origins' responses.

use zentinel_protocol::config::CorsFilter;

use super::head_edit::HeadEdit;
use super::{header_value, unread_body, FilterCounters, RequestFacts, Verdict};
use crate::http::codec;

/// A `cors` filter with its field values joined once, not per request.
#[derive(Debug)]
pub struct Cors {
    config: CorsFilter,
    methods: String,
    /// `None`: echo what the preflight asks for.
    allowed_headers: Option<String>,
    exposed_headers: Option<String>,
    max_age: String,
}

impl Cors {
    pub(super) fn new(config: &CorsFilter) -> Self {
        let joined = |list: &[String]| (!list.is_empty()).then(|| list.join(", "));
        Cors {
            config: config.clone(),
            methods: config.allowed_methods.join(", "),
            allowed_headers: joined(&config.allowed_headers),
            exposed_headers: joined(&config.exposed_headers),
            max_age: config.max_age_secs.to_string(),
        }
    }
}

/// The request phase: remember an allowed origin; answer its preflight.
pub(super) fn on_request(
    cors: &Cors,
    facts: &RequestFacts<'_>,
    origin_out: &mut Option<String>,
    counters: &FilterCounters,
) -> Verdict {
    let Some(origin) = header_value(facts.req, "origin") else {
        return Verdict::Continue;
    };
    if !origin_allowed(origin, &cors.config.allowed_origins) {
        return Verdict::Continue;
    }
    *origin_out = Some(origin.to_owned());
    let requested_method = header_value(facts.req, "access-control-request-method");
    if facts.req.method.as_str() != "OPTIONS" || requested_method.is_none() {
        return Verdict::Continue;
    }
    FilterCounters::add(&counters.preflights, 1);
    // As upstream: with no list, the requested headers are allowed (echoed).
    let allow_headers = cors
        .allowed_headers
        .as_deref()
        .or_else(|| header_value(facts.req, "access-control-request-headers"));
    let mut extra: Vec<(&str, &str)> = vec![
        ("Access-Control-Allow-Origin", origin),
        ("Access-Control-Allow-Methods", &cors.methods),
    ];
    if let Some(h) = allow_headers {
        extra.push(("Access-Control-Allow-Headers", h));
    }
    if cors.config.allow_credentials {
        extra.push(("Access-Control-Allow-Credentials", "true"));
    }
    extra.push(("Access-Control-Max-Age", &cors.max_age));
    extra.push((
        "Vary",
        "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
    ));
    // A preflight's body is never read: the connection ends after the answer when one was
    // announced, or its bytes would be taken for the next request.
    let close = !facts.req.keep_alive || unread_body(facts.req);
    let bytes = codec::local_response_with(204, None, &extra, b"", close, false);
    Verdict::Respond {
        status: 204,
        bytes,
        close,
    }
}

/// The response head being edited: the CORS fields of an allowed `origin`, and `Vary: Origin`
/// in any case (unless the upstream's `Vary` already covers it).
pub(super) fn on_response<'a>(
    cors: &'a Cors,
    origin: Option<&'a str>,
    head: &[u8],
    edit: &mut HeadEdit<'a>,
) {
    if let Some(origin) = origin {
        edit.set(head, "Access-Control-Allow-Origin", origin);
        if cors.config.allow_credentials {
            edit.set(head, "Access-Control-Allow-Credentials", "true");
        }
        if let Some(exposed) = &cors.exposed_headers {
            edit.set(head, "Access-Control-Expose-Headers", exposed);
        }
    }
    if !edit.has_token(head, "vary", &["origin", "*"]) {
        edit.add("Vary", "Origin");
    }
}

/// `*`, an exact origin (ASCII case-insensitive), or a pattern whose one `*` stands for a
/// non-empty run of host characters (letters, digits, `-`, `.`): `https://*.example.com`
/// allows `https://a.b.example.com`, not `https://example.com`, `http://a.example.com` nor
/// `https://a.example.com:8443`. Upstream compares exactly (`*` alone aside).
pub(super) fn origin_allowed(origin: &str, allowed: &[String]) -> bool {
    allowed.iter().any(|a| {
        if a == "*" {
            return true;
        }
        match a.split_once('*') {
            None => a.eq_ignore_ascii_case(origin),
            Some((before, after)) => {
                origin.len() > before.len() + after.len()
                    && origin.is_char_boundary(before.len())
                    && origin.is_char_boundary(origin.len() - after.len())
                    && origin[..before.len()].eq_ignore_ascii_case(before)
                    && origin[origin.len() - after.len()..].eq_ignore_ascii_case(after)
                    && origin[before.len()..origin.len() - after.len()]
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            }
        }
    })
}
