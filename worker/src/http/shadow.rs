//! Mirror a share of a route's requests (`shadow { ... }`) to another upstream: the same
//! request head as the real one, plus `X-Shadow-Request: true` and `Connection: close`, sent
//! from this worker on a connection of its own (see `upstream::shadow`); the answer is
//! discarded. Requests with a body and protocol upgrades are not mirrored.

use tracing::debug;

use crate::ctx::Ctx;
use crate::http::codec::{self, BodyFraming, ForwardContext, RequestHead};
use crate::routing::Shadow;
use crate::upstream::{self, PickRequest};

pub fn mirror(sh: &Shadow, req: &RequestHead, fctx: &ForwardContext<'_>, ctx: &mut Ctx<'_>) {
    if !matches!(req.framing, BodyFraming::Empty) || req.upgrade.is_some() {
        return;
    }
    if let Some((name, value)) = &sh.sample_header {
        let carried = req
            .headers()
            .any(|h| h.name.eq_ignore_ascii_case(name.as_bytes()) && h.value == value.as_bytes());
        if !carried {
            return;
        }
    }
    if !sh.sample() {
        return;
    }
    let mut head = Vec::with_capacity(512);
    codec::write_upstream_request(req, fctx, &mut head);
    let head = shadow_head(head);
    let pick = PickRequest {
        client_ip: Some(fctx.client.ip()),
        cookie: None,
    };
    let shadow = upstream::ShadowRequest {
        pool: sh.pool,
        head,
        timeout: sh.timeout,
        pick: &pick,
    };
    let started = ctx
        .upstreams
        .start_shadow(shadow, ctx.registry, ctx.timers, ctx.now);
    if !started {
        debug!(
            path = req.path(),
            "shadow request dropped (no target, draining or at the cap)"
        );
    }
}

/// The forwarded head with the connection closed after the answer (so its end is EOF) and
/// the shadow marker upstream adds.
fn shadow_head(mut head: Vec<u8>) -> Vec<u8> {
    const KEEP: &[u8] = b"\r\nConnection: keep-alive\r\n";
    if let Some(at) = head.windows(KEEP.len()).position(|w| w == KEEP) {
        head.splice(
            at..at + KEEP.len(),
            b"\r\nConnection: close\r\n".iter().copied(),
        );
    }
    if head.ends_with(b"\r\n\r\n") {
        head.truncate(head.len() - 2);
        head.extend_from_slice(b"X-Shadow-Request: true\r\n\r\n");
    }
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_is_closed_and_marked() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n".to_vec();
        assert_eq!(
            shadow_head(head),
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-Shadow-Request: true\r\n\r\n"
        );
    }
}
