//! The `cors` filter: a preflight (`OPTIONS` with `Access-Control-Request-Method`) from an
//! allowed origin is answered by the proxy (204); any other request from an allowed origin is
//! proxied and its response carries `Access-Control-Allow-Origin` (the origin itself, never
//! `*`, so credentials work), `Vary: Origin` and the exposed headers. A request from an origin
//! not allowed gets no CORS header at all: the browser then refuses the response, as the
//! specification intends. A preflight from such an origin goes to the upstream like any other
//! request (upstream does the same).

use zentinel_protocol::config::CorsFilter;

use super::{header_value, FilterCounters, RequestFacts, Verdict};
use crate::http::codec;

/// The request phase: remember an allowed origin; answer its preflight.
pub(super) fn on_request(
    cors: &CorsFilter,
    facts: &RequestFacts<'_>,
    origin_out: &mut Option<String>,
    counters: &FilterCounters,
) -> Verdict {
    let Some(origin) = header_value(facts.req, "origin") else {
        return Verdict::Continue;
    };
    if !origin_allowed(origin, &cors.allowed_origins) {
        return Verdict::Continue;
    }
    *origin_out = Some(origin.to_owned());
    let requested_method = header_value(facts.req, "access-control-request-method");
    if facts.req.method.as_str() != "OPTIONS" || requested_method.is_none() {
        return Verdict::Continue;
    }
    FilterCounters::add(&counters.preflights, 1);
    let methods = cors.allowed_methods.join(", ");
    let requested_headers = header_value(facts.req, "access-control-request-headers");
    let allow_headers = if cors.allowed_headers.is_empty() {
        // As upstream: with no list, the requested headers are allowed (echoed).
        requested_headers.map(str::to_owned)
    } else {
        Some(cors.allowed_headers.join(", "))
    };
    let max_age = cors.max_age_secs.to_string();
    let mut extra: Vec<(&str, &str)> = vec![
        ("Access-Control-Allow-Origin", origin),
        ("Access-Control-Allow-Methods", &methods),
    ];
    if let Some(h) = &allow_headers {
        extra.push(("Access-Control-Allow-Headers", h));
    }
    if cors.allow_credentials {
        extra.push(("Access-Control-Allow-Credentials", "true"));
    }
    extra.push(("Access-Control-Max-Age", &max_age));
    extra.push((
        "Vary",
        "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
    ));
    let close = !facts.req.keep_alive;
    let bytes = codec::local_response_with(204, None, &extra, b"", close, false);
    Verdict::Respond {
        status: 204,
        bytes,
        close,
    }
}

/// The response head at `head[start..]` gets the CORS fields of an allowed origin.
pub(super) fn on_response(cors: &CorsFilter, origin: &str, head: &mut Vec<u8>, start: usize) {
    let mut mods = zentinel_protocol::config::HeaderModifications::default();
    mods.set
        .push(("Access-Control-Allow-Origin".to_owned(), origin.to_owned()));
    if cors.allow_credentials {
        mods.set.push((
            "Access-Control-Allow-Credentials".to_owned(),
            "true".to_owned(),
        ));
    }
    if !cors.exposed_headers.is_empty() {
        mods.set.push((
            "Access-Control-Expose-Headers".to_owned(),
            cors.exposed_headers.join(", "),
        ));
    }
    mods.add.push(("Vary".to_owned(), "Origin".to_owned()));
    crate::http::apply_header_mods(&mods, head, start);
}

/// `*`, an exact origin (ASCII case-insensitive), or a pattern whose one `*` stands for any
/// run of characters that does not cross into the scheme (`https://*.example.com` allows
/// `https://a.b.example.com`, not `https://example.com` nor `http://a.example.com`).
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
                    && !origin[before.len()..origin.len() - after.len()].contains('/')
            }
        }
    })
}
