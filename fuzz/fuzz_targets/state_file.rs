//! The upgrade state file is read by a freshly exec'd master: any bytes, including a truncated
//! or tampered file, give a state or an error naming the file, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zentinel_protocol::state;

fuzz_target!(|data: &[u8]| {
    if let Ok(decoded) = state::decode_state(data, "fuzz-input") {
        // Whatever decodes must encode back to something that decodes to the same state.
        let again = state::encode_state(&decoded);
        let reread = state::decode_state(&again, "fuzz-reencoded");
        assert_eq!(reread.ok(), Some(decoded));
    }
});
