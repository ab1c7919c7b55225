//! Arbitrary bytes on a master/worker channel or the control socket: the frame decoder and the
//! validating deserialisers return messages or errors, never undefined behaviour or a panic.
//!
//! Shared by the cargo-fuzz target (`fuzz_targets/frame_decoder.rs`) and the short run inside
//! `cargo test` (`tests/tests/fuzz_short.rs`). Plain Rust only: no libFuzzer types.

use zentinel_protocol::control::{ControlRequest, ControlResponse};
use zentinel_protocol::frame::{self, FrameDecoder};
use zentinel_protocol::messages::v3::WorkerMessageV3;
use zentinel_protocol::messages::{MasterMessage, WorkerMessage};

pub fn check(data: &[u8]) {
    let mut decoder = FrameDecoder::new(64 * 1024);
    // Push in two pieces so frame boundaries inside a push are exercised too.
    let at = data.len() / 3;
    decoder.push(&data[..at]);
    decoder.push(&data[at..]);
    while let Ok(Some(decoded)) = decoder.next_frame() {
        let payload = decoded.payload.as_slice();
        let _ = frame::deserialize::<MasterMessage>(payload);
        let _ = frame::deserialize::<WorkerMessage>(payload);
        // What the master reads from an adopted protocol 3 worker.
        let _ = frame::deserialize::<WorkerMessageV3>(payload);
        let _ = frame::deserialize::<ControlRequest>(payload);
        let _ = frame::deserialize::<ControlResponse>(payload);
    }
}
