//! What an adopted protocol 5 worker reads from its master.
//!
//! Protocol 6 only appended [`MasterMessage::FilterSegments`] (its payload a vector, so the
//! archived `MasterMessage` keeps protocol 5's 48 bytes and every earlier variant its tag and
//! bytes; `protocol/tests/roundtrip.rs` pins both). A protocol 5 worker reads every other
//! message as sent today; it must never be sent the new tag, which it would refuse as an
//! invalid message. Its rate limits stay per worker until it is replaced.

use super::MasterMessage;

/// The protocol version this module speaks for.
pub const VERSION: u32 = 5;

/// A message a protocol 5 worker cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a protocol 5 worker cannot be sent {0} (it came with protocol 6)")]
pub struct NotForProtocolV5(pub &'static str);

/// `message` as a protocol 5 worker reads it: unchanged, unless it came after protocol 5.
pub fn for_protocol_5(message: &MasterMessage) -> Result<&MasterMessage, NotForProtocolV5> {
    match message {
        MasterMessage::FilterSegments(_) => Err(NotForProtocolV5(message.kind())),
        other => Ok(other),
    }
}
