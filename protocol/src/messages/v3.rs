//! What an adopted protocol 3 worker reads from its master and sends back, frozen.
//!
//! A worker started by a protocol 3 binary stays under the new master after an upgrade until
//! it is replaced: the new master still sends it `Drain`, `Stop` and `StatusRequest`, and reads
//! its `Status`, `Draining` and `Fatal` messages. rkyv finds a message's root at
//! `end - size_of(archived root)`, so these must keep exactly the archived size and layout of
//! protocol 3's messages: [`MasterMessageV3`] (40 bytes, 8-aligned, whose largest variants held
//! a `WorkerStart`, the configuration boxed) and [`WorkerMessageV3`] (112 bytes, 8-aligned, the
//! size of its `Status`). The master variants it is never sent (`Hello`, `Start`,
//! `Reconfigure`: a reload waits until such a worker is replaced) are opaque placeholders of
//! the old sizes, only there to keep the tags and the size. The worker's messages are copied
//! whole, counters included, so that a change of today's types cannot move them.
//! `protocol/tests/roundtrip.rs` pins the bytes of each against what the protocol 3 build
//! sent.
//!
//! Protocol 3 answers carry no request id: the master matches them to its requests by order
//! (converted to today's messages, they carry [`NO_REQUEST_ID`]). Protocol 2 and 1 workers
//! send this same layout (only the master's messages changed in protocol 3), so the master
//! reads theirs as [`WorkerMessageV3`] too.

#![allow(
    missing_docs,
    reason = "a frozen format: the fields are documented on the current types they mirror"
)]

use rkyv::{Archive, Deserialize, Serialize};

use super::{Hello, MasterMessage, WorkerCounters, WorkerMessage, NO_REQUEST_ID};

/// The protocol version whose layout this module freezes.
pub const VERSION: u32 = 3;

/// Stands for a variant whose archived payload was 32 bytes, 8-aligned (protocol 3's
/// `WorkerStart`; `Hello`'s 16 bytes fit in it).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opaque32([u64; 4]);

/// Protocol 3's `MasterMessage`, as far as an adopted worker is concerned (same tags, same
/// archived size).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum MasterMessageV3 {
    Hello(Opaque32),
    Start(Opaque32),
    Drain { timeout_ms: u64 },
    Stop,
    StatusRequest,
    Reconfigure(Opaque32),
}

/// A message a protocol 3 worker cannot be sent (it carries a configuration or a hello).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a protocol 3 worker cannot be sent {0} by this master (only Drain, Stop and StatusRequest)"
)]
pub struct NotForProtocolV3(pub &'static str);

impl TryFrom<&MasterMessage> for MasterMessageV3 {
    type Error = NotForProtocolV3;

    fn try_from(message: &MasterMessage) -> Result<Self, NotForProtocolV3> {
        match message {
            MasterMessage::Drain { timeout_ms } => Ok(MasterMessageV3::Drain {
                timeout_ms: *timeout_ms,
            }),
            MasterMessage::Stop => Ok(MasterMessageV3::Stop),
            // The id stays here: the answer, without one, is matched by order.
            MasterMessage::StatusRequest { .. } => Ok(MasterMessageV3::StatusRequest),
            other => Err(NotForProtocolV3(other.kind())),
        }
    }
}

/// Protocol 3's `Hello`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct HelloV3 {
    pub protocol_version: u32,
    pub pid: u32,
    pub software_version: String,
}

/// Protocol 3's `WorkerCounters`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct CountersV3 {
    pub active_connections: u64,
    pub accepted_total: u64,
    pub requests_total: u64,
    pub responses_1xx: u64,
    pub responses_2xx: u64,
    pub responses_3xx: u64,
    pub responses_4xx: u64,
    pub responses_5xx: u64,
    pub upstream_errors: u64,
    pub client_errors: u64,
    pub accept_errors: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// Protocol 3's `WorkerMessage`: what an adopted worker of protocol 3 (or older) sends.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum WorkerMessageV3 {
    Hello(HelloV3),
    Ready,
    Status(CountersV3),
    Draining { active_connections: u64 },
    Fatal { reason: String },
    Reconfigured,
    ReconfigureFailed { reason: String },
}

impl From<CountersV3> for WorkerCounters {
    fn from(old: CountersV3) -> Self {
        WorkerCounters {
            active_connections: old.active_connections,
            accepted_total: old.accepted_total,
            requests_total: old.requests_total,
            responses_1xx: old.responses_1xx,
            responses_2xx: old.responses_2xx,
            responses_3xx: old.responses_3xx,
            responses_4xx: old.responses_4xx,
            responses_5xx: old.responses_5xx,
            upstream_errors: old.upstream_errors,
            client_errors: old.client_errors,
            accept_errors: old.accept_errors,
            bytes_in: old.bytes_in,
            bytes_out: old.bytes_out,
        }
    }
}

/// Answers get [`NO_REQUEST_ID`]: the master matches them by order.
impl From<WorkerMessageV3> for WorkerMessage {
    fn from(old: WorkerMessageV3) -> Self {
        match old {
            WorkerMessageV3::Hello(hello) => WorkerMessage::Hello(Hello {
                protocol_version: hello.protocol_version,
                pid: hello.pid,
                software_version: hello.software_version,
            }),
            WorkerMessageV3::Ready => WorkerMessage::Ready,
            WorkerMessageV3::Status(counters) => WorkerMessage::Status {
                http2: None,
                request_id: NO_REQUEST_ID,
                counters: counters.into(),
            },
            WorkerMessageV3::Draining { active_connections } => {
                WorkerMessage::Draining { active_connections }
            }
            WorkerMessageV3::Fatal { reason } => WorkerMessage::Fatal { reason },
            WorkerMessageV3::Reconfigured => WorkerMessage::Reconfigured {
                request_id: NO_REQUEST_ID,
            },
            WorkerMessageV3::ReconfigureFailed { reason } => WorkerMessage::ReconfigureFailed {
                request_id: NO_REQUEST_ID,
                reason,
            },
        }
    }
}

/// What a protocol 3 worker would send for today's message (for tests standing in for such a
/// worker): the answers' request ids, which that layout cannot carry, are dropped.
impl From<&WorkerMessage> for WorkerMessageV3 {
    fn from(message: &WorkerMessage) -> Self {
        match message {
            WorkerMessage::Hello(hello) => WorkerMessageV3::Hello(HelloV3 {
                protocol_version: hello.protocol_version,
                pid: hello.pid,
                software_version: hello.software_version.clone(),
            }),
            WorkerMessage::Ready => WorkerMessageV3::Ready,
            WorkerMessage::Status { counters, .. } => WorkerMessageV3::Status(CountersV3 {
                active_connections: counters.active_connections,
                accepted_total: counters.accepted_total,
                requests_total: counters.requests_total,
                responses_1xx: counters.responses_1xx,
                responses_2xx: counters.responses_2xx,
                responses_3xx: counters.responses_3xx,
                responses_4xx: counters.responses_4xx,
                responses_5xx: counters.responses_5xx,
                upstream_errors: counters.upstream_errors,
                client_errors: counters.client_errors,
                accept_errors: counters.accept_errors,
                bytes_in: counters.bytes_in,
                bytes_out: counters.bytes_out,
            }),
            WorkerMessage::Draining { active_connections } => WorkerMessageV3::Draining {
                active_connections: *active_connections,
            },
            WorkerMessage::Fatal { reason } => WorkerMessageV3::Fatal {
                reason: reason.clone(),
            },
            WorkerMessage::Reconfigured { .. } => WorkerMessageV3::Reconfigured,
            WorkerMessage::ReconfigureFailed { reason, .. } => WorkerMessageV3::ReconfigureFailed {
                reason: reason.clone(),
            },
        }
    }
}
