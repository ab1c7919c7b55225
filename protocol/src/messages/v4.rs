//! What an adopted protocol 4 worker reads from its master.
//!
//! Protocol 5 only appended [`MasterMessage::FinishDrain`] (a variant without payload, so the
//! archived `MasterMessage` keeps protocol 4's 48 bytes and every earlier variant its tag and
//! bytes; `protocol/tests/roundtrip.rs` pins both). A protocol 4 worker therefore reads every
//! other message as sent today, and no frozen copy of the types is needed; it only must never
//! be sent the new tags (nor protocol 6's `FilterSegments`), which it would refuse as invalid
//! messages. Its answers are protocol 5's, unchanged.

use super::MasterMessage;

/// The protocol version this module speaks for.
pub const VERSION: u32 = 4;

/// A message a protocol 4 worker cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a protocol 4 worker cannot be sent {0} (it came with protocol 5 or later)")]
pub struct NotForProtocolV4(pub &'static str);

/// `message` as a protocol 4 worker reads it: unchanged, unless it came after protocol 4.
pub fn for_protocol_4(message: &MasterMessage) -> Result<&MasterMessage, NotForProtocolV4> {
    match message {
        MasterMessage::FinishDrain | MasterMessage::FilterSegments(_) => {
            Err(NotForProtocolV4(message.kind()))
        }
        other => Ok(other),
    }
}
