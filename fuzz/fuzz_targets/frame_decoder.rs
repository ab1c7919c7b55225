//! Arbitrary bytes on a master/worker channel or the control socket: the frame decoder and the
//! validating deserialisers return messages or errors, never undefined behaviour or a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zentinel_protocol::control::{ControlRequest, ControlResponse};
use zentinel_protocol::frame::{self, FrameDecoder};
use zentinel_protocol::messages::{MasterMessage, WorkerMessage};

fuzz_target!(|data: &[u8]| {
    let mut decoder = FrameDecoder::new(64 * 1024);
    // Push in two pieces so frame boundaries inside a push are exercised too.
    let at = data.len() / 3;
    decoder.push(&data[..at]);
    decoder.push(&data[at..]);
    while let Ok(Some(decoded)) = decoder.next_frame() {
        let payload = decoded.payload.as_slice();
        let _ = frame::deserialize::<MasterMessage>(payload);
        let _ = frame::deserialize::<WorkerMessage>(payload);
        let _ = frame::deserialize::<ControlRequest>(payload);
        let _ = frame::deserialize::<ControlResponse>(payload);
    }
});
