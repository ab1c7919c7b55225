//! Every message type survives serialization, framing and a real socketpair, both through
//! zero-copy access and full deserialization.

mod common;

use std::os::unix::net::UnixStream;

use proptest::prelude::*;
use zentinel_protocol::messages::*;
use zentinel_protocol::{Channel, ProtocolError};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn master_messages_roundtrip(msg in common::master_message()) {
        let (mut tx, mut rx) = common::nonblocking_pair();
        tx.send(&msg, &[]).unwrap();
        let frame = common::pump(&mut tx, &mut rx);
        prop_assert!(frame.fds.is_empty());
        let archived = frame.access::<MasterMessage>().unwrap();
        prop_assert_eq!(archived.kind(), msg.kind());
        prop_assert_eq!(frame.deserialize::<MasterMessage>().unwrap(), msg);
    }

    #[test]
    fn worker_messages_roundtrip(msg in common::worker_message()) {
        let (mut tx, mut rx) = common::nonblocking_pair();
        tx.send(&msg, &[]).unwrap();
        let frame = common::pump(&mut tx, &mut rx);
        let archived = frame.access::<WorkerMessage>().unwrap();
        prop_assert_eq!(archived.kind(), msg.kind());
        prop_assert_eq!(frame.deserialize::<WorkerMessage>().unwrap(), msg);
    }

    /// Several messages back to back on one blocking socketpair arrive in order.
    #[test]
    fn message_sequences_roundtrip(msgs in proptest::collection::vec(common::worker_message(), 1..8)) {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut tx, mut rx) = (Channel::new(a), Channel::new(b));
        for msg in &msgs {
            prop_assert!(tx.send(msg, &[]).unwrap());
        }
        for msg in &msgs {
            let frame = rx.recv().unwrap().expect("blocking recv yields a frame");
            prop_assert_eq!(&frame.deserialize::<WorkerMessage>().unwrap(), msg);
        }
    }
}

#[test]
fn zero_copy_access_reads_fields_in_place() {
    let (mut tx, mut rx) = common::nonblocking_pair();
    let msg = WorkerMessage::Draining {
        active_connections: 42,
    };
    tx.send(&msg, &[]).unwrap();
    let frame = common::pump(&mut tx, &mut rx);
    match frame.access::<WorkerMessage>().unwrap() {
        ArchivedWorkerMessage::Draining { active_connections } => {
            assert_eq!(active_connections.to_native(), 42)
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn corrupted_string_fails_validation() {
    let msg = WorkerMessage::Fatal {
        reason: "listener-address-mismatch".into(),
    };
    let payload = zentinel_protocol::frame::serialize(&msg).unwrap();
    let mut bytes = payload.to_vec();
    let at = bytes
        .windows(8)
        .position(|w| w == b"listener")
        .expect("string stored out of line");
    bytes[at] = 0xFF; // never valid UTF-8
    let mut aligned = rkyv::util::AlignedVec::<16>::new();
    aligned.extend_from_slice(&bytes);
    match zentinel_protocol::frame::access::<WorkerMessage>(&aligned) {
        Err(ProtocolError::Invalid(reason)) => assert!(!reason.is_empty()),
        other => panic!("corrupted payload accepted: {other:?}"),
    }
    // The untouched payload is fine.
    assert_eq!(
        zentinel_protocol::frame::deserialize::<WorkerMessage>(&payload).unwrap(),
        msg
    );
}

#[test]
fn version_mismatch_names_both_versions() {
    assert!(zentinel_protocol::channel::check_version(PROTOCOL_VERSION).is_ok());
    let theirs = PROTOCOL_VERSION + 41;
    let err = zentinel_protocol::channel::check_version(theirs).unwrap_err();
    assert!(matches!(
        err,
        ProtocolError::VersionMismatch { ours, theirs: t } if ours == PROTOCOL_VERSION && t == theirs
    ));
    let text = err.to_string();
    assert!(text.contains(&PROTOCOL_VERSION.to_string()), "{text}");
    assert!(text.contains(&theirs.to_string()), "{text}");
}

/// A `zentinel-ctl` newer than the master sends it requests of the same control protocol: an
/// archived enum is as large as its largest variant and rkyv finds the root at
/// `end - size_of(root)`, so a new variant must leave the archived size (and every earlier
/// tag) as control protocol 2 had them. 56 and 64 bytes were measured on the protocol 2 build.
#[test]
fn control_messages_keep_their_protocol_2_layout() {
    use std::mem::{align_of, size_of};
    use zentinel_protocol::control::*;
    assert_eq!(size_of::<ArchivedControlRequest>(), 56);
    assert_eq!(align_of::<ArchivedControlRequest>(), 8);
    assert_eq!(size_of::<ArchivedControlResponse>(), 64);
    assert_eq!(align_of::<ArchivedControlResponse>(), 8);
    let status = rkyv::to_bytes::<rkyv::rancor::Error>(&ControlRequest::Status).unwrap();
    assert_eq!(status.len(), 56);
    assert_eq!(status[0], 1, "Status keeps tag 1");

    // The variant added since then carries its options behind a pointer.
    let request = ControlRequest::UpgradeWith(Box::new(UpgradeRequest {
        binary: Some("/usr/local/bin/zentinel".to_owned()),
        rolling: true,
        drain_timeout_ms: Some(30_000),
        ready_timeout_ms: None,
        canary: Some(CanaryPolicy {
            duration_ms: 10_000,
            max_excess_basis_points: CanaryPolicy::DEFAULT_MAX_EXCESS_BASIS_POINTS,
        }),
    }));
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&request).unwrap();
    let back = rkyv::from_bytes::<ControlRequest, rkyv::rancor::Error>(&bytes).unwrap();
    assert_eq!(back, request);
}

/// Since protocol 3 the configuration travels behind a pointer (`Box<ProxyConfig>`), so the
/// archived `MasterMessage` keeps one size however the configuration model grows: a worker of
/// this protocol finds `Drain`, `Stop` and `StatusRequest` from any later master where it
/// expects them. If this fails, a message layout changed: bump `PROTOCOL_VERSION`.
#[test]
fn master_messages_keep_their_protocol_3_size() {
    use std::mem::{align_of, size_of};
    use zentinel_protocol::messages::ArchivedMasterMessage;
    let size = size_of::<ArchivedMasterMessage>();
    assert_eq!(align_of::<ArchivedMasterMessage>(), 8);
    let drain =
        rkyv::to_bytes::<rkyv::rancor::Error>(&MasterMessage::Drain { timeout_ms: 7 }).unwrap();
    assert_eq!(drain.len(), size);
    assert_eq!(size, 40, "archived MasterMessage size of protocol 3");
}
