//! cargo-fuzz entry for `chunked_body`. The property lives in `checks/chunked_body.rs`, shared with
//! the short run inside `cargo test` (`tests/tests/fuzz_short.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/chunked_body.rs"]
mod check;

fuzz_target!(|data: &[u8]| check::check(data));
