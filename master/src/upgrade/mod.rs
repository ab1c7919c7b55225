//! The binary upgrade: the old master handing over, the new master adopting, the rolling
//! replacement of workers, its canary and its rollback.
//!
//! - [`successor_process`]: the low-level pieces (state file place, checking the new binary,
//!   starting the successor master with exactly the fds it inherits, the readiness pipe,
//!   `pidfd` supervision of adopted workers).
//! - [`handover`]: the old master's state machine, from the request until the successor
//!   confirmed readiness or failed.
//! - [`adoption`]: the new master's state machine, from the adoption until it serves.

pub mod adoption;
pub mod handover;
pub mod successor_process;

pub use successor_process::*;
