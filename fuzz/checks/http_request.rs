//! The request-head parser must answer every byte string with a head, "need more" or a
//! classified error: no panic, and a parsed head never claims more bytes than it was given.
//!
//! Shared by the cargo-fuzz target (`fuzz_targets/http_request.rs`) and the short run inside
//! `cargo test` (`tests/tests/fuzz_short.rs`), so both check exactly the same property. Plain
//! Rust only: no libFuzzer types, since the test build has no libFuzzer.

use zentinel_protocol::config::Limits;
use zentinel_worker::http::codec::{self, Parsed};

pub fn check(data: &[u8]) {
    let limits = Limits {
        max_header_size_bytes: 4096,
        max_header_count: 32,
        max_body_size_bytes: 1 << 20,
        ..Limits::default()
    };
    match codec::parse_request(data, &limits) {
        Ok(Parsed::Complete(head)) => assert!(
            head.head_len <= data.len(),
            "head_len {} > input length {}",
            head.head_len,
            data.len()
        ),
        Ok(Parsed::Partial) => {}
        Err(e) => assert!(
            matches!(e.status(), 400 | 413 | 414 | 431 | 505),
            "unexpected error status {}",
            e.status()
        ),
    }
}
