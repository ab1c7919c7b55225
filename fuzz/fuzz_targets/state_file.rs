//! cargo-fuzz entry for `state_file`. The property lives in `checks/state_file.rs`, shared with
//! the short run inside `cargo test` (`tests/tests/fuzz_short.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/state_file.rs"]
mod check;

fuzz_target!(|data: &[u8]| check::check(data));
