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

    // The drain status, added later: a new last tag each way, its answer behind a pointer.
    let ask = rkyv::to_bytes::<rkyv::rancor::Error>(&ControlRequest::DrainStatus).unwrap();
    assert_eq!(ask.len(), 56);
    assert_eq!(ask[0], 8, "DrainStatus is the 9th request");
    let answer = ControlResponse::DrainStatus(Box::new(DrainStatusReport {
        max_draining_generations: 3,
        workers: vec![DrainingWorker {
            pid: 42,
            id: 1,
            generation: 7,
            connections: 12,
            drain_remaining_ms: Some(25_000),
            finishing: true,
        }],
    }));
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&answer).unwrap();
    let root = bytes.len() - size_of::<ArchivedControlResponse>();
    assert_eq!(bytes[root], 10, "DrainStatus is the 11th response");
    let back = rkyv::from_bytes::<ControlResponse, rkyv::rancor::Error>(&bytes).unwrap();
    assert_eq!(back, answer);
}

/// Since protocol 3 the configuration travels behind a pointer (`Box<ProxyConfig>`), so the
/// archived `MasterMessage` keeps one size however the configuration model grows: a worker of
/// this protocol finds `Drain`, `Stop` and `StatusRequest` from any later master where it
/// expects them. If this fails, a message layout changed: bump `PROTOCOL_VERSION` (and freeze
/// this one as `messages::v3` freezes protocol 3). Protocol 5 appended a variant without
/// changing the size (see `protocol_5_appends_finish_drain_to_protocol_4s_layout`).
#[test]
fn master_messages_keep_their_protocol_4_size() {
    use std::mem::{align_of, size_of};
    use zentinel_protocol::messages::ArchivedMasterMessage;
    let size = size_of::<ArchivedMasterMessage>();
    assert_eq!(align_of::<ArchivedMasterMessage>(), 8);
    let drain =
        rkyv::to_bytes::<rkyv::rancor::Error>(&MasterMessage::Drain { timeout_ms: 7 }).unwrap();
    assert_eq!(drain.len(), size);
    assert_eq!(size, 48, "archived MasterMessage size of protocol 4");
    assert_eq!(size_of::<ArchivedWorkerMessage>(), 120);
    assert_eq!(PROTOCOL_VERSION, 6);
}

/// Protocol 6 appended `FilterSegments` as the last tag, its payload one vector (8 bytes): the
/// archived size holds, an adopted protocol 5 (or 4) worker reads every earlier message as it
/// did and is never sent the new one.
#[test]
fn protocol_6_appends_filter_segments_to_protocol_5s_layout() {
    use zentinel_protocol::filter_shm::FilterSegmentHandle;
    use zentinel_protocol::messages::v4::for_protocol_4;
    use zentinel_protocol::messages::v5::for_protocol_5;
    let message = MasterMessage::FilterSegments(vec![
        FilterSegmentHandle {
            name: "api-limit".to_owned(),
            segment_bytes: 4096 + 16 * 1024,
        },
        FilterSegmentHandle {
            name: "cors".to_owned(),
            segment_bytes: 4096,
        },
    ]);
    let bytes = encode(&message);
    let root = bytes.len() - std::mem::size_of::<ArchivedMasterMessage>();
    assert_eq!(bytes[root], 8, "FilterSegments is the 9th variant");
    assert_eq!(std::mem::size_of::<ArchivedMasterMessage>(), 48);
    assert_eq!(
        rkyv::from_bytes::<MasterMessage, rkyv::rancor::Error>(&bytes).unwrap(),
        message
    );
    assert_eq!(message.kind(), "FilterSegments");
    let refused = for_protocol_5(&message).unwrap_err();
    assert!(refused.to_string().contains("FilterSegments"), "{refused}");
    assert!(for_protocol_4(&message).is_err());
    assert_eq!(
        for_protocol_5(&MasterMessage::FinishDrain).unwrap(),
        &MasterMessage::FinishDrain
    );
    let mut drain = padded(&[2], 48);
    drain[8..10].copy_from_slice(&1234u16.to_le_bytes());
    let same = for_protocol_5(&MasterMessage::Drain { timeout_ms: 1234 }).unwrap();
    assert_eq!(encode(same), drain);
}

/// Protocol 5 appended `FinishDrain` as the last tag, without payload: an adopted protocol 4
/// worker (which finds the root at `end - 48`) reads every earlier message byte for byte as
/// the protocol 4 build encoded it, and is never sent the new one.
#[test]
fn protocol_5_appends_finish_drain_to_protocol_4s_layout() {
    use zentinel_protocol::messages::v4::for_protocol_4;
    let encoded = |message: &MasterMessage| encode(for_protocol_4(message).unwrap());
    let mut drain = padded(&[2], 48);
    drain[8..10].copy_from_slice(&1234u16.to_le_bytes());
    assert_eq!(encoded(&MasterMessage::Drain { timeout_ms: 1234 }), drain);
    assert_eq!(encoded(&MasterMessage::Stop), padded(&[3], 48));
    let mut status = padded(&[4], 48);
    status[8] = 99;
    assert_eq!(
        encoded(&MasterMessage::StatusRequest { request_id: 99 }),
        status
    );
    let finish = encode(&MasterMessage::FinishDrain);
    assert_eq!(finish, padded(&[7], 48), "FinishDrain is the 8th variant");
    assert_eq!(
        rkyv::from_bytes::<MasterMessage, rkyv::rancor::Error>(&finish).unwrap(),
        MasterMessage::FinishDrain
    );
    let refused = for_protocol_4(&MasterMessage::FinishDrain).unwrap_err();
    assert!(refused.to_string().contains("FinishDrain"), "{refused}");
    use zentinel_protocol::messages::v2::MasterMessageV2;
    use zentinel_protocol::messages::v3::MasterMessageV3;
    assert!(MasterMessageV2::try_from(&MasterMessage::FinishDrain).is_err());
    assert!(MasterMessageV3::try_from(&MasterMessage::FinishDrain).is_err());
}

/// The ticket keys travel in `Start` (behind a pointer, like the configuration: the size
/// above holds) and, after a rotation, in `TicketKeys`, appended as the last tag so every
/// earlier one keeps its number. An adopted worker of protocol 3 or older is never sent them.
#[test]
fn ticket_keys_travel_in_start_and_in_their_own_message() {
    use zentinel_protocol::messages::v2::MasterMessageV2;
    use zentinel_protocol::messages::v3::MasterMessageV3;
    use zentinel_protocol::ticket_keys::{TicketKey, TicketKeys};
    let keys = TicketKeys {
        keys: vec![
            TicketKey {
                name: [7; 16],
                secret: [8; 32],
                created_unix_s: 1_700_000_000,
            },
            TicketKey {
                name: [9; 16],
                secret: [10; 32],
                created_unix_s: 1_699_956_800,
            },
        ],
        lifetime_s: 43_200,
    };
    let message = MasterMessage::TicketKeys(keys.clone());
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&message).unwrap();
    // The enum is the archive's root, at the end; its tag is its first byte.
    let root = bytes.len() - std::mem::size_of::<ArchivedMasterMessage>();
    assert_eq!(bytes[root], 6, "TicketKeys is the 7th variant");
    let back = rkyv::from_bytes::<MasterMessage, rkyv::rancor::Error>(&bytes).unwrap();
    assert_eq!(back, message);
    assert_eq!(message.kind(), "TicketKeys");
    assert!(!format!("{message:?}").contains("8, 8"), "{message:?}");
    for protocol in [2, 3] {
        let refused = match protocol {
            2 => MasterMessageV2::try_from(&message)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            _ => MasterMessageV3::try_from(&message)
                .map(|_| ())
                .map_err(|e| e.to_string()),
        };
        assert!(
            refused.as_ref().is_err_and(|e| e.contains("TicketKeys")),
            "protocol {protocol}: {refused:?}"
        );
    }
}

/// The shared TLS session cache's handle travels in `Start` and `Reconfigure` (its memfd after
/// the listener fds), niched into the padding after `worker_id`: with it or without it, the
/// archived `WorkerStart` keeps its size and `Reconfigure` its 48 bytes.
#[test]
fn the_session_cache_handle_travels_in_start_without_growing_it() {
    use proptest::strategy::ValueTree;
    use zentinel_protocol::session_cache::SessionCacheHandle;
    let config = common::proxy_config()
        .new_tree(&mut proptest::test_runner::TestRunner::deterministic())
        .unwrap()
        .current();
    let start = |cache: Option<u64>| WorkerStart {
        worker_id: 3,
        generation: 9,
        config: Box::new(config.clone()),
        listeners: vec![ListenerHandle {
            name: "https".to_owned(),
            address: "127.0.0.1:8443".to_owned(),
        }],
        ticket_keys: Box::default(),
        session_cache: cache.map(|segment_bytes| Box::new(SessionCacheHandle { segment_bytes })),
    };
    assert_eq!(std::mem::size_of::<ArchivedWorkerStart>(), 32);
    for cache in [None, Some(16 << 20)] {
        let message = MasterMessage::Reconfigure {
            request_id: 5,
            start: start(cache),
        };
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&message).unwrap();
        let back = rkyv::from_bytes::<MasterMessage, rkyv::rancor::Error>(&bytes).unwrap();
        assert_eq!(back, message, "{cache:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// The frozen protocol 3 layout (`messages::v3`), spoken with adopted protocol 3 workers
// ---------------------------------------------------------------------------------------------

/// `prefix` followed by zeros up to `len` bytes.
fn padded(prefix: &[u8], len: usize) -> Vec<u8> {
    let mut bytes = prefix.to_vec();
    bytes.resize(len, 0);
    bytes
}

fn encode<T>(value: &T) -> Vec<u8>
where
    T: for<'a> rkyv::Serialize<
        rkyv::api::high::HighSerializer<
            rkyv::util::AlignedVec,
            rkyv::ser::allocator::ArenaHandle<'a>,
            rkyv::rancor::Error,
        >,
    >,
{
    rkyv::to_bytes::<rkyv::rancor::Error>(value)
        .unwrap()
        .to_vec()
}

/// A protocol 3 worker reads the master's messages at `end - 40`: `MasterMessageV3` encodes
/// `Drain`, `Stop` and `StatusRequest` byte for byte as the protocol 3 build did (captured
/// from it), and refuses what such a worker is never sent.
#[test]
fn adopted_protocol_3_workers_get_their_own_layout() {
    use std::mem::{align_of, size_of};
    use zentinel_protocol::messages::v3::{ArchivedMasterMessageV3, MasterMessageV3};
    assert_eq!(size_of::<ArchivedMasterMessageV3>(), 40);
    assert_eq!(align_of::<ArchivedMasterMessageV3>(), 8);
    let encoded = |message: &MasterMessage| encode(&MasterMessageV3::try_from(message).unwrap());
    let mut drain = padded(&[2], 40);
    drain[8..10].copy_from_slice(&1234u16.to_le_bytes());
    assert_eq!(encoded(&MasterMessage::Drain { timeout_ms: 1234 }), drain);
    assert_eq!(encoded(&MasterMessage::Stop), padded(&[3], 40));
    // The request id stays with the master: the answer is matched by order.
    assert_eq!(
        encoded(&MasterMessage::StatusRequest { request_id: 99 }),
        padded(&[4], 40)
    );
    let hello = MasterMessage::Hello(Hello {
        protocol_version: 3,
        pid: 1,
        software_version: String::new(),
    });
    assert!(MasterMessageV3::try_from(&hello).is_err());
}

/// Counters with a distinct value in each field (1 to 13), to pin their order.
fn numbered_counters() -> WorkerCounters {
    WorkerCounters {
        active_connections: 1,
        accepted_total: 2,
        requests_total: 3,
        responses_1xx: 4,
        responses_2xx: 5,
        responses_3xx: 6,
        responses_4xx: 7,
        responses_5xx: 8,
        upstream_errors: 9,
        client_errors: 10,
        accept_errors: 11,
        bytes_in: 12,
        bytes_out: 13,
    }
}

/// `WorkerMessage` as protocol 4 had it before `Status` carried the HTTP/2 refusals: the
/// layout an older master reads and an older worker writes.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
enum WorkerMessageBeforeHttp2 {
    Hello(Hello),
    Ready,
    Status {
        request_id: u64,
        counters: WorkerCounters,
    },
    Draining {
        active_connections: u64,
    },
    Fatal {
        reason: String,
    },
    Reconfigured {
        request_id: u64,
    },
    ReconfigureFailed {
        request_id: u64,
        reason: String,
    },
}

/// The refusal counts ride in the padding after `Status`'s tag: the archived message keeps its
/// 120 bytes, a `Status` without them is byte for byte what the older layout wrote, an older
/// worker's `Status` reads as one without them, and an older master reads a `Status` with
/// them as the counters it always read.
#[test]
fn http2_refusals_ride_in_the_status_padding() {
    use std::mem::size_of;
    assert_eq!(size_of::<ArchivedWorkerMessage>(), 120);
    assert_eq!(size_of::<ArchivedWorkerMessageBeforeHttp2>(), 120);
    let old = WorkerMessageBeforeHttp2::Status {
        request_id: 77,
        counters: numbered_counters(),
    };
    let without = WorkerMessage::Status {
        http2: None,
        request_id: 77,
        counters: numbered_counters(),
    };
    let old_bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&old).unwrap();
    let new_bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&without).unwrap();
    assert_eq!(old_bytes.as_slice(), new_bytes.as_slice());
    let read = rkyv::from_bytes::<WorkerMessage, rkyv::rancor::Error>(&old_bytes).unwrap();
    assert_eq!(read, without, "an older worker's Status");

    let with = WorkerMessage::Status {
        http2: Some(Box::new(common::refusals(std::array::from_fn(|i| {
            100 + i as u64
        })))),
        request_id: 77,
        counters: numbered_counters(),
    };
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&with).unwrap();
    let back = rkyv::from_bytes::<WorkerMessage, rkyv::rancor::Error>(&bytes).unwrap();
    assert_eq!(back, with);
    let older_master =
        rkyv::from_bytes::<WorkerMessageBeforeHttp2, rkyv::rancor::Error>(&bytes).unwrap();
    assert_eq!(older_master, old, "what a master from before reads");
}

/// What the protocol 3 build sent for each worker message (captured from it), what
/// `WorkerMessageV3` encodes, and what the master reads from those bytes: today's message,
/// answers without a request id.
#[test]
fn protocol_3_worker_messages_keep_their_layout() {
    use std::mem::{align_of, size_of};
    use zentinel_protocol::messages::v3::{ArchivedWorkerMessageV3, WorkerMessageV3};
    assert_eq!(size_of::<ArchivedWorkerMessageV3>(), 112);
    assert_eq!(align_of::<ArchivedWorkerMessageV3>(), 8);
    let mut status = padded(&[2], 112);
    for (i, value) in (1u8..=13).enumerate() {
        status[8 + 8 * i] = value;
    }
    let cases: Vec<(WorkerMessage, WorkerMessage, Vec<u8>)> = vec![
        (
            WorkerMessage::Ready,
            WorkerMessage::Ready,
            padded(&[1], 112),
        ),
        (
            WorkerMessage::Status {
                http2: Some(Box::new(common::refusals([7; 12]))),
                request_id: 5,
                counters: numbered_counters(),
            },
            WorkerMessage::Status {
                http2: None,
                request_id: NO_REQUEST_ID,
                counters: numbered_counters(),
            },
            status,
        ),
        (
            WorkerMessage::Draining {
                active_connections: 42,
            },
            WorkerMessage::Draining {
                active_connections: 42,
            },
            padded(&[3, 0, 0, 0, 0, 0, 0, 0, 42], 112),
        ),
        (
            WorkerMessage::Fatal {
                reason: "listener gone".into(),
            },
            WorkerMessage::Fatal {
                reason: "listener gone".into(),
            },
            padded(
                &[
                    108, 105, 115, 116, 101, 110, 101, 114, 32, 103, 111, 110, 101, 0, 0, 0, 4, 0,
                    0, 0, 141, 0, 0, 0, 236, 255, 255, 255,
                ],
                128,
            ),
        ),
        (
            WorkerMessage::Reconfigured { request_id: 6 },
            WorkerMessage::Reconfigured {
                request_id: NO_REQUEST_ID,
            },
            padded(&[5], 112),
        ),
        (
            WorkerMessage::ReconfigureFailed {
                request_id: 7,
                reason: "bad upstream".into(),
            },
            WorkerMessage::ReconfigureFailed {
                request_id: NO_REQUEST_ID,
                reason: "bad upstream".into(),
            },
            padded(
                &[
                    98, 97, 100, 32, 117, 112, 115, 116, 114, 101, 97, 109, 0, 0, 0, 0, 6, 0, 0, 0,
                    140, 0, 0, 0, 236, 255, 255, 255,
                ],
                128,
            ),
        ),
        (
            WorkerMessage::Hello(Hello {
                protocol_version: 3,
                pid: 4321,
                software_version: "0.1.0".into(),
            }),
            WorkerMessage::Hello(Hello {
                protocol_version: 3,
                pid: 4321,
                software_version: "0.1.0".into(),
            }),
            padded(
                &[
                    0, 0, 0, 0, 3, 0, 0, 0, 225, 16, 0, 0, 48, 46, 49, 46, 48, 255, 255, 255,
                ],
                112,
            ),
        ),
    ];
    for (sent, read, bytes) in cases {
        let legacy = WorkerMessageV3::from(&sent);
        assert_eq!(encode(&legacy), bytes, "{sent:?}");
        let mut aligned = rkyv::util::AlignedVec::<16>::new();
        aligned.extend_from_slice(&bytes);
        let decoded = zentinel_protocol::frame::deserialize::<WorkerMessageV3>(&aligned).unwrap();
        assert_eq!(decoded, legacy);
        assert_eq!(WorkerMessage::from(decoded), read);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The frozen layouts survive a real channel both ways: what the master sends an adopted
    /// protocol 3 worker, and what such a worker sends back (read as today's message, with no
    /// request id).
    #[test]
    fn protocol_3_layout_roundtrips(
        master in common::master_message(),
        worker in common::worker_message(),
    ) {
        use zentinel_protocol::messages::v3::{MasterMessageV3, WorkerMessageV3};
        let (mut tx, mut rx) = common::nonblocking_pair();
        if let Ok(legacy) = MasterMessageV3::try_from(&master) {
            tx.send(&legacy, &[]).unwrap();
            let frame = common::pump(&mut tx, &mut rx);
            let archived = frame.access::<MasterMessageV3>().unwrap();
            prop_assert_eq!(
                rkyv::deserialize::<MasterMessageV3, rkyv::rancor::Error>(archived).unwrap(),
                legacy
            );
        }
        let legacy = WorkerMessageV3::from(&worker);
        tx.send(&legacy, &[]).unwrap();
        let frame = common::pump(&mut tx, &mut rx);
        let read = WorkerMessage::from(frame.deserialize::<WorkerMessageV3>().unwrap());
        let expected = match worker {
            WorkerMessage::Status { counters, .. } => WorkerMessage::Status {
                http2: None,
                request_id: NO_REQUEST_ID,
                counters,
            },
            WorkerMessage::Reconfigured { .. } => WorkerMessage::Reconfigured {
                request_id: NO_REQUEST_ID,
            },
            WorkerMessage::ReconfigureFailed { reason, .. } => WorkerMessage::ReconfigureFailed {
                request_id: NO_REQUEST_ID,
                reason,
            },
            other => other,
        };
        prop_assert_eq!(read, expected);
    }
}
