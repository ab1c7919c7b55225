//! The route-level WebSocket setting: upgrades are tunnelled unless the route says
//! `websocket #false`, which gets upstream Zentinel's refusal.

use crate::http::codec::{self, RequestHead};

/// The 403 for a WebSocket upgrade on a route with `websocket #false`, or `None` when the
/// request is no WebSocket upgrade (other upgrades are the upstream's business).
pub fn refused(req: &RequestHead) -> Option<Vec<u8>> {
    let upgrade = req.upgrade.as_deref()?;
    upgrade.trim().eq_ignore_ascii_case("websocket").then(|| {
        codec::local_response(
            403,
            Some("text/plain; charset=utf-8"),
            b"WebSocket not enabled for this route",
            true,
            req.is_head(),
        )
    })
}
