//! cargo-fuzz entry for `http_request`. The property lives in `checks/http_request.rs`, shared with
//! the short run inside `cargo test` (`tests/tests/fuzz_short.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/http_request.rs"]
mod check;

fuzz_target!(|data: &[u8]| check::check(data));
