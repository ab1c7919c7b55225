//! The upgrade state file is read by a freshly exec'd master: any bytes, including a truncated
//! or tampered file, give a state or an error naming the file, never a panic.
//!
//! Shared by the cargo-fuzz target (`fuzz_targets/state_file.rs`) and the short run inside
//! `cargo test` (`tests/tests/fuzz_short.rs`). Plain Rust only: no libFuzzer types.

use zentinel_protocol::state;

pub fn check(data: &[u8]) {
    if let Ok(decoded) = state::decode_state(data, "fuzz-input") {
        // Whatever decodes must encode back to something that decodes to the same state.
        let again = state::encode_state(&decoded);
        let reread = state::decode_state(&again, "fuzz-reencoded");
        assert_eq!(
            reread.ok(),
            Some(decoded),
            "re-encoded state decodes differently"
        );
    }
}
