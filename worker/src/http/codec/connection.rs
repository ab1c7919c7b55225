//! Hop-by-hop fields: the ones that describe one connection, and what a message's
//! `Connection` fields say (close, keep-alive, upgrade, and other fields to strip).

use super::head::{Header, Headers};
use super::request::list_elements;

/// Headers that describe one connection, never the message: not forwarded by a proxy.
/// (`Transfer-Encoding` is hop-by-hop too, but bodies are forwarded byte-for-byte, so the
/// framing header must travel with them.)
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// Headers a `Connection` list can never strip: removing them would change the framing or the
/// target of the message as the next hop sees it (a known smuggling trick:
/// `Connection: Content-Length`).
const NEVER_CONNECTION_NAMED: &[&str] = &["host", "content-length", "transfer-encoding"];

/// Header names are compared without allocating a lowercased copy (this runs for every header
/// of every message).
pub(super) fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| h.as_bytes().eq_ignore_ascii_case(name))
}

/// [`ConnectionTokens`] without the other option names, kept in a parsed head: most messages
/// name no other option, and then rewriting the head needs no new pass over its fields.
#[derive(Debug, Clone, Copy)]
pub(super) struct ConnectionSummary {
    pub(super) close: bool,
    pub(super) keep_alive: bool,
    pub(super) upgrade: bool,
    other_names: bool,
}

impl ConnectionSummary {
    pub(super) fn tokens<'a>(self, headers: Headers<'a>) -> ConnectionTokens<'a> {
        if self.other_names {
            return ConnectionTokens::of(headers);
        }
        ConnectionTokens {
            close: self.close,
            keep_alive: self.keep_alive,
            upgrade: self.upgrade,
            names: Vec::new(),
        }
    }
}

/// What the `Connection` fields of a message say.
#[derive(Debug, Default)]
pub(super) struct ConnectionTokens<'a> {
    pub(super) close: bool,
    pub(super) keep_alive: bool,
    pub(super) upgrade: bool,
    /// The other options, as received (compared ignoring case): these headers are hop-by-hop
    /// too. (The three above are options as well; kept as flags, they cost no allocation on
    /// the common path.)
    names: Vec<&'a [u8]>,
}

impl<'a> ConnectionTokens<'a> {
    pub(super) fn summary(&self) -> ConnectionSummary {
        ConnectionSummary {
            close: self.close,
            keep_alive: self.keep_alive,
            upgrade: self.upgrade,
            other_names: !self.names.is_empty(),
        }
    }

    pub(super) fn of(headers: impl IntoIterator<Item = Header<'a>>) -> Self {
        let mut t = ConnectionTokens::default();
        for h in headers {
            if !h.name.eq_ignore_ascii_case(b"connection") {
                continue;
            }
            for token in list_elements(h.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    t.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    t.keep_alive = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    t.upgrade = true;
                } else {
                    t.names.push(token);
                }
            }
        }
        t
    }

    /// Whether the header `name` (any case) must not be forwarded because a `Connection`
    /// field names it.
    pub(super) fn strips(&self, name: &[u8]) -> bool {
        let named = (self.close && name.eq_ignore_ascii_case(b"close"))
            || (self.keep_alive && name.eq_ignore_ascii_case(b"keep-alive"))
            || (self.upgrade && name.eq_ignore_ascii_case(b"upgrade"))
            || self.names.iter().any(|n| n.eq_ignore_ascii_case(name));
        named
            && !NEVER_CONNECTION_NAMED
                .iter()
                .any(|n| n.as_bytes().eq_ignore_ascii_case(name))
    }
}
