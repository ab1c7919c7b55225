//! cargo-fuzz entry for `frame_decoder`. The property lives in `checks/frame_decoder.rs`,
//! shared with the short run inside `cargo test` (`tests/tests/fuzz_short.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/frame_decoder.rs"]
mod check;

fuzz_target!(|data: &[u8]| check::check(data));
