//! The chunked decoder fed the same bytes whole or split at an arbitrary point must agree:
//! same decoded data, same verdict. Never panics, never consumes more than it was given.
//! The first input byte picks the split point; the rest is the body.
//!
//! Shared by the cargo-fuzz target (`fuzz_targets/chunked_body.rs`) and the short run inside
//! `cargo test` (`tests/tests/fuzz_short.rs`). Plain Rust only: no libFuzzer types.

use zentinel_worker::http::codec::{BodyFraming, BodyTracker};

const MAX_BODY: u64 = 1 << 20;

/// Feeds `parts` in order; returns the decoded bytes and whether it ended complete or failed.
fn decode(parts: &[&[u8]]) -> (Vec<u8>, Result<bool, ()>) {
    let mut tracker = BodyTracker::new(BodyFraming::Chunked, MAX_BODY);
    let mut out = Vec::new();
    for part in parts {
        let mut input = *part;
        while !input.is_empty() && !tracker.is_complete() {
            match tracker.feed_decoded(input, &mut out) {
                Ok(progress) => {
                    assert!(
                        progress.consumed <= input.len(),
                        "consumed {} of {} bytes",
                        progress.consumed,
                        input.len()
                    );
                    if progress.consumed == 0 {
                        break;
                    }
                    input = &input[progress.consumed..];
                }
                Err(_) => return (out, Err(())),
            }
        }
    }
    let complete = tracker.is_complete();
    (out, Ok(complete))
}

pub fn check(data: &[u8]) {
    let Some((&split, body)) = data.split_first() else {
        return;
    };
    let at = usize::from(split).min(body.len());
    let whole = decode(&[body]);
    let split = decode(&[&body[..at], &body[at..]]);
    assert_eq!(whole.1, split.1, "verdict differs when split at {at}");
    if whole.1.is_ok() {
        assert_eq!(whole.0, split.0, "decoded bytes differ when split at {at}");
    }
}
