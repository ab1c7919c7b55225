//! mio token layout: fixed tokens for the master channel and the listener set, two tokens per
//! session slot (client side, upstream side), and a separate range for upstream connections.
//!
//! An upstream connection keeps one token for its whole life, whether it is pooled or checked
//! out by a session: the pool records who owns it, so moving it between the pool and a
//! session costs no `epoll_ctl`.

use mio::Token;

pub const CHANNEL: Token = Token(0);
pub const LISTENERS: Token = Token(1);
/// The helper threads' waker: DNS lookups (`upstream::resolution`) and Redis checks
/// (`filters::redis_limit`), see `wakeups::helper_waker`.
pub const RESOLVER: Token = Token(2);
const SESSION_BASE: usize = 16;
const UPSTREAM_BIT: usize = 1 << (usize::BITS - 2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    Channel,
    Listeners,
    Resolver,
    Session(usize, Side),
    /// An upstream connection, by its key in the pool's connection table.
    Upstream(usize),
    Unknown,
}

pub fn session(key: usize, side: Side) -> Token {
    Token(SESSION_BASE + key * 2 + usize::from(side == Side::Upstream))
}

pub fn upstream(key: usize) -> Token {
    Token(UPSTREAM_BIT | key)
}

pub fn decode(t: Token) -> Decoded {
    match t {
        CHANNEL => Decoded::Channel,
        LISTENERS => Decoded::Listeners,
        RESOLVER => Decoded::Resolver,
        Token(n) if n & UPSTREAM_BIT != 0 => Decoded::Upstream(n & !UPSTREAM_BIT),
        Token(n) if n >= SESSION_BASE => {
            let k = n - SESSION_BASE;
            let side = if k & 1 == 0 {
                Side::Client
            } else {
                Side::Upstream
            };
            Decoded::Session(k / 2, side)
        }
        _ => Decoded::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        for k in [0usize, 1, 2, 1000] {
            assert_eq!(
                decode(session(k, Side::Client)),
                Decoded::Session(k, Side::Client)
            );
            assert_eq!(
                decode(session(k, Side::Upstream)),
                Decoded::Session(k, Side::Upstream)
            );
            assert_eq!(decode(upstream(k)), Decoded::Upstream(k));
        }
        assert_eq!(decode(CHANNEL), Decoded::Channel);
        assert_eq!(decode(LISTENERS), Decoded::Listeners);
        assert_eq!(decode(RESOLVER), Decoded::Resolver);
    }
}
