//! What an adopted protocol 2 worker reads from its master, frozen.
//!
//! A worker started by a protocol 2 binary stays under the new master after an upgrade until
//! it is replaced, and the new master still sends it `Drain`, `Stop` and `StatusRequest`. rkyv
//! finds a message's root at `end - size_of(archived root)`, so these must have exactly the
//! archived size and layout of protocol 2's `MasterMessage` (112 bytes, 8-aligned, whose
//! largest variants held the configuration inline). [`MasterMessageV2`] has that layout: the
//! variants it never carries (`Hello`, `Start`, `Reconfigure`) are opaque placeholders of the
//! old sizes, only there to keep the tags and the size. `protocol/tests/roundtrip.rs` pins the
//! bytes of each message against what the protocol 2 build sent.

#![allow(
    missing_docs,
    reason = "a frozen format: the fields are documented on the current types they mirror"
)]

use rkyv::{Archive, Serialize};

use super::MasterMessage;

/// Stands for a variant whose archived payload was 104 bytes, 8-aligned.
#[derive(Archive, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opaque104([u64; 13]);

/// Protocol 2's `MasterMessage`, as far as an adopted worker is concerned (same tags, same
/// archived size).
#[derive(Archive, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum MasterMessageV2 {
    Hello(Opaque104),
    Start(Opaque104),
    Drain { timeout_ms: u64 },
    Stop,
    StatusRequest,
    Reconfigure(Opaque104),
}

/// A message a protocol 2 worker cannot be sent (it carries a configuration or a hello).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a protocol 2 worker cannot be sent {0} by this master (only Drain, Stop and StatusRequest)"
)]
pub struct NotForProtocolV2(pub &'static str);

impl TryFrom<&MasterMessage> for MasterMessageV2 {
    type Error = NotForProtocolV2;

    fn try_from(message: &MasterMessage) -> Result<Self, NotForProtocolV2> {
        match message {
            MasterMessage::Drain { timeout_ms } => Ok(MasterMessageV2::Drain {
                timeout_ms: *timeout_ms,
            }),
            MasterMessage::Stop => Ok(MasterMessageV2::Stop),
            // A protocol 2 worker's answers carry no id: the master matches them by order.
            MasterMessage::StatusRequest { .. } => Ok(MasterMessageV2::StatusRequest),
            other => Err(NotForProtocolV2(other.kind())),
        }
    }
}
