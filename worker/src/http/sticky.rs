//! Reading a pool's sticky cookie from a request.

use crate::http::codec::RequestHead;

/// The value of cookie `name` in the request's `Cookie` fields (RFC 6265 5.4: `a=1; b=2`,
/// possibly over several fields), if present. Only an exact name match counts.
pub fn request_cookie(req: &RequestHead, name: &str) -> Option<String> {
    req.headers()
        .filter(|h| h.name.eq_ignore_ascii_case(b"cookie"))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().trim_matches('"').to_owned())
}
