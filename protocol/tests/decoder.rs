//! The decoder and validator never panic: arbitrary bytes and mutated valid frames either
//! decode or fail with a typed error.

mod common;

use proptest::prelude::*;
use zentinel_protocol::frame::{self, FrameDecoder};
use zentinel_protocol::messages::{MasterMessage, WorkerMessage};
use zentinel_protocol::ProtocolError;

/// Push `bytes` in `chunk`-sized pieces, then drain and validate every frame.
fn feed(bytes: &[u8], chunk: usize) -> Result<usize, ProtocolError> {
    let mut decoder = FrameDecoder::new(64 * 1024);
    let mut frames = 0;
    for piece in bytes.chunks(chunk.max(1)) {
        decoder.push(piece);
        while let Some(f) = decoder.next_frame()? {
            frames += 1;
            // Validation of garbage must be an error, not a crash.
            let _ = frame::access::<MasterMessage>(&f.payload);
            let _ = frame::deserialize::<WorkerMessage>(&f.payload);
        }
    }
    if !decoder.is_between_frames() {
        return Err(decoder.eof_error());
    }
    Ok(frames)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096), chunk in 1usize..64) {
        let _ = feed(&bytes, chunk);
    }

    #[test]
    fn mutated_frames_never_panic(
        msg in common::master_message(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        chunk in 1usize..256,
    ) {
        let mut bytes = frame::encode(&msg, 0, 1 << 20).unwrap();
        let original = bytes.clone();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        match feed(&bytes, chunk) {
            Ok(_) | Err(ProtocolError::FrameTooLarge { .. })
            | Err(ProtocolError::Truncated { .. })
            | Err(ProtocolError::Invalid(_)) => {}
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
        // The unmutated frame decodes back to the message whatever the chunking.
        let mut decoder = FrameDecoder::new(1 << 20);
        for piece in original.chunks(chunk) {
            decoder.push(piece);
        }
        let f = decoder.next_frame().unwrap().expect("complete frame");
        prop_assert_eq!(frame::deserialize::<MasterMessage>(&f.payload).unwrap(), msg);
        prop_assert!(decoder.is_between_frames());
    }

    /// Payloads that are valid frames but garbage archives fail validation.
    #[test]
    fn random_payloads_fail_or_validate(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
        let bytes = frame::encode_payload(&payload, 0, 1024).unwrap();
        let mut decoder = FrameDecoder::new(1024);
        decoder.push(&bytes);
        let f = decoder.next_frame().unwrap().expect("complete frame");
        prop_assert_eq!(&f.payload[..], &payload[..]);
        match frame::access::<MasterMessage>(&f.payload) {
            Ok(_) | Err(ProtocolError::Invalid(_)) => {}
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }
}

#[test]
fn stream_offsets_track_frame_starts() {
    let a = frame::encode(&WorkerMessage::Ready, 0, 1024).unwrap();
    let b = frame::encode(&WorkerMessage::Ready, 3, 1024).unwrap();
    let mut all = a.clone();
    all.extend(&b);
    let mut decoder = FrameDecoder::new(1024);
    for byte in &all {
        decoder.push(std::slice::from_ref(byte));
    }
    let first = decoder.next_frame().unwrap().unwrap();
    let second = decoder.next_frame().unwrap().unwrap();
    assert_eq!((first.stream_offset, first.fd_count), (0, 0));
    assert_eq!((second.stream_offset, second.fd_count), (a.len() as u64, 3));
    assert!(decoder.next_frame().unwrap().is_none());
    assert!(matches!(decoder.eof_error(), ProtocolError::Closed));
}

#[test]
fn too_many_fds_in_header_is_invalid() {
    let header = frame::FrameHeader {
        payload_len: 0,
        fd_count: (frame::MAX_FDS_PER_FRAME + 1) as u32,
    };
    let mut decoder = FrameDecoder::new(1024);
    decoder.push(&header.to_bytes());
    assert!(matches!(
        decoder.next_frame(),
        Err(ProtocolError::Invalid(_))
    ));
}
