//! mio token layout: fixed tokens for the master channel and the listener set, two tokens per
//! session slot (client side, upstream side), and a separate range for idle pooled upstream
//! connections.

use mio::Token;

pub const CHANNEL: Token = Token(0);
pub const LISTENERS: Token = Token(1);
const SESSION_BASE: usize = 16;
const IDLE_BIT: usize = 1 << (usize::BITS - 2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    Channel,
    Listeners,
    Session(usize, Side),
    Idle(usize),
    Unknown,
}

pub fn session(key: usize, side: Side) -> Token {
    Token(SESSION_BASE + key * 2 + usize::from(side == Side::Upstream))
}

pub fn idle(key: usize) -> Token {
    Token(IDLE_BIT | key)
}

pub fn decode(t: Token) -> Decoded {
    match t {
        CHANNEL => Decoded::Channel,
        LISTENERS => Decoded::Listeners,
        Token(n) if n & IDLE_BIT != 0 => Decoded::Idle(n & !IDLE_BIT),
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
            assert_eq!(decode(idle(k)), Decoded::Idle(k));
        }
        assert_eq!(decode(CHANNEL), Decoded::Channel);
        assert_eq!(decode(LISTENERS), Decoded::Listeners);
    }
}
