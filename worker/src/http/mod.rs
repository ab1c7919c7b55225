//! HTTP/1.x: the codec (message heads, body framing) and the client session state machine.

pub mod codec;
pub(crate) mod session;
mod sticky;
