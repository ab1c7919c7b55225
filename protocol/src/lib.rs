//! The Zentinel master/worker protocol.
//!
//! - [`config`]: the configuration model that travels to workers.
//! - [`config_source`]: a configuration's source text, what crosses a binary upgrade.
//! - [`messages`]: master <-> worker messages and the protocol version.
//! - [`frame`]: length-prefixed frames carrying validated rkyv archives.
//! - [`fd_passing`]: SCM_RIGHTS send/receive of file descriptor batches.
//! - [`channel`]: a framed, fd-carrying, non-blocking-capable channel over a Unix stream socket.
//!
//! This crate depends on none of Zentinel's other crates.

pub mod channel;
pub mod config;
pub mod config_source;
pub mod control;
pub mod error;
pub mod fd_passing;
pub mod frame;
pub mod messages;
pub mod state;

pub use channel::{Channel, FrameLimits, ReceivedFrame};
pub use error::ProtocolError;
pub use messages::PROTOCOL_VERSION;
