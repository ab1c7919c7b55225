//! The Zentinel master/worker protocol.
//!
//! - [`config`]: the configuration model that travels to workers.
//! - [`config_source`]: a configuration's source text, what crosses a binary upgrade.
//! - [`messages`]: master <-> worker messages and the protocol version.
//! - [`frame`]: length-prefixed frames carrying validated rkyv archives.
//! - [`fd_passing`]: SCM_RIGHTS send/receive of file descriptor batches.
//! - [`channel`]: a framed, fd-carrying, non-blocking-capable channel over a Unix stream socket.
//! - [`ticket_keys`]: TLS session-ticket keys the master shares with every worker.
//! - [`session_cache`]: the layout of the TLS session cache every worker shares (a memfd).
//! - [`filter_shm`]: the layout of the filters' counters and rate-limit tables every worker
//!   shares (a memfd per filter).
//! - [`niche`]: how an optional box fits in an archived struct's padding.
//!
//! This crate depends on none of Zentinel's other crates. Its raw libc calls are in one
//! private module, `sys`, and the niche of [`niche::ZeroOffset`]; everywhere else `unsafe` is
//! refused.

// The wire contract between master, workers and `zentinel-ctl`: every public item says what
// it carries.
#![warn(missing_docs)]
#![deny(unsafe_code)]
// Lengths and counts cross the wire here: a cast that could truncate one is spelled out.
#![warn(clippy::cast_possible_truncation)]
#![cfg_attr(test, allow(clippy::cast_possible_truncation))]
// Raw pointers to locals taken with `&raw`, never through a reference.
#![warn(clippy::borrow_as_ptr)]

pub mod channel;
pub mod config;
pub mod config_source;
pub mod control;
/// [`ProtocolError`]: every way a frame or message can be bad.
pub mod error;
pub mod fd_passing;
pub mod filter_shm;
pub mod frame;
pub mod messages;
#[allow(unsafe_code)]
pub mod niche;
mod sealed_memfd;
pub mod session_cache;
pub mod state;
#[allow(unsafe_code)]
mod sys;
pub mod ticket_keys;

pub use channel::{Channel, FrameLimits, ReceivedFrame};
pub use error::ProtocolError;
pub use messages::PROTOCOL_VERSION;
