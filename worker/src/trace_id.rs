//! Each proxied request's trace id, as upstream Zentinel makes it: the one the request brings
//! (`X-Trace-Id`, else `X-Correlation-Id`, else `X-Request-Id`), or a new one in the
//! configured format (`system { trace-id-format }`): TinyFlake, 11 Base58 characters (3 from the
//! time, 8 random), or a random UUID. It goes upstream as `X-Trace-Id`, back to the client as
//! `X-Correlation-Id`, and into the access log (`$trace_id`).
//!
//! The random part needs no cryptographic quality (it tells requests apart in logs): the
//! balancers' generator, one per thread, seeded from the clock and the pid.

use std::cell::RefCell;
use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use zentinel_protocol::config::TraceIdFormat;

use crate::http::codec::RequestHead;
use crate::upstream::Rng;

const BASE58: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
/// Upstream's time component: seconds modulo 58^3 (about 2.3 days), 3 characters.
const TIME_MODULO: u64 = 195_112;
/// An incoming id longer than this, or with bytes outside visible ASCII, is not reused.
const MAX_INCOMING: usize = 128;
/// Length of a generated UUID, the longest generated id.
const UUID_LEN: usize = 36;
const INCOMING: [&[u8]; 3] = [b"x-trace-id", b"x-correlation-id", b"x-request-id"];

thread_local! {
    static RNG: RefCell<Rng> = RefCell::new(Rng::seeded());
}

/// The worker thread's generator (also behind access-log sampling).
pub(crate) fn next_random() -> u64 {
    RNG.with(|rng| rng.borrow_mut().next_u64())
}

/// The request's own trace id, else a new one, written over `out` (a connection's id string
/// is reused from request to request: no allocation once it has room).
pub fn for_request(req: &RequestHead, format: TraceIdFormat, out: &mut String) {
    out.clear();
    // A connection's first id allocates once, with room for the longest generated one.
    out.reserve(UUID_LEN);
    for name in INCOMING {
        let found = req
            .headers()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.trim_ascii())
            .filter(|v| {
                !v.is_empty() && v.len() <= MAX_INCOMING && v.iter().all(|b| b.is_ascii_graphic())
            });
        if let Some(value) = found {
            // Visible ASCII only (checked above).
            out.extend(value.iter().map(|&b| char::from(b)));
            return;
        }
    }
    generate(format, out);
}

/// A new id in `format`, appended to `out`.
pub fn generate(format: TraceIdFormat, out: &mut String) {
    match format {
        TraceIdFormat::TinyFlake => tinyflake(out),
        TraceIdFormat::Uuid => uuid4(out),
    }
}

fn tinyflake(out: &mut String) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    push_base58(secs % TIME_MODULO, 3, out);
    // 48 random bits, as upstream.
    push_base58(next_random() & 0xffff_ffff_ffff, 8, out);
}

fn push_base58(mut value: u64, width: usize, out: &mut String) {
    let mut digits = [0u8; 16];
    for d in digits.iter_mut().take(width) {
        *d = BASE58[(value % 58) as usize];
        value /= 58;
    }
    for &d in digits[..width].iter().rev() {
        out.push(char::from(d));
    }
}

fn uuid4(out: &mut String) {
    let mut b16 = [0u8; 16];
    b16[..8].copy_from_slice(&next_random().to_be_bytes());
    b16[8..].copy_from_slice(&next_random().to_be_bytes());
    b16[6] = (b16[6] & 0x0f) | 0x40; // version 4
    b16[8] = (b16[8] & 0x3f) | 0x80; // RFC 4122 variant
    for (i, b) in b16.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        let new = |format| {
            let mut s = String::new();
            generate(format, &mut s);
            s
        };
        let t = new(TraceIdFormat::TinyFlake);
        assert_eq!(t.len(), 11);
        assert!(t.bytes().all(|b| BASE58.contains(&b)), "{t}");
        assert_ne!(t, new(TraceIdFormat::TinyFlake));
        let u = new(TraceIdFormat::Uuid);
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4", "{u}");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"), "{u}");
        assert_eq!(u.matches('-').count(), 4);
    }
}
