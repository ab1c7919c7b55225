//! `websocket #true` / `websocket { enabled ...; ... }` and `websocket-inspection` on a route.
//!
//! Upgrades are tunnelled on every proxied route here, so these settings only matter to turn
//! WebSocket off: `websocket #false` (or `enabled #false` in the block) answers upgrade
//! requests 403, as upstream does. Upstream reads only the boolean form and treats the block
//! form its own examples use as "off"; here a block means what it says (on unless
//! `enabled #false`). The tuning keys of the block are accepted with a warning: this build
//! tunnels the bytes and does not look at frames.

use super::*;

const BLOCK_KEYS: &[&str] = &[
    "enabled",
    "max-message-size-bytes",
    "max-frame-size-bytes",
    "ping-interval-secs",
    "ping-timeout-secs",
    "max-connections-per-ip",
];

/// Whether WebSocket upgrades are allowed on the route; `None` after an error.
pub(super) fn parse_websocket(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Option<bool> {
    if node.children().is_none() {
        return leaf_bool(node, diags);
    }
    let children = keyed_block(node, BLOCK_KEYS, diags);
    let mut enabled = Some(true);
    for child in children {
        match name(child) {
            "enabled" => enabled = leaf_bool(child, diags),
            "max-message-size-bytes"
            | "max-frame-size-bytes"
            | "ping-interval-secs"
            | "ping-timeout-secs"
            | "max-connections-per-ip" => {
                if leaf_int(child, 1, u64::from(u32::MAX), diags).is_some() {
                    diags.warn(
                        name_at(child),
                        name(child),
                        format!(
                            "`{}` is accepted, no effect: WebSocket connections are tunnelled \
                             as bytes, frames are not inspected",
                            name(child)
                        ),
                    );
                }
            }
            _ => unknown_listing(child, "websocket", BLOCK_KEYS, &[], diags),
        }
    }
    enabled
}

/// `websocket-inspection #true` would send frames to agents, which this build does not have.
pub(super) fn parse_inspection(node: &KdlNode, diags: &mut Diagnostics<'_>) {
    if let Some(true) = leaf_bool(node, diags) {
        diags.warn(
            name_at(node),
            "websocket-inspection",
            "`websocket-inspection` is accepted, no effect: this build has no agents to \
             inspect frames",
        );
    }
}
