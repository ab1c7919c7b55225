//! The binary upgrade: the old master handing over, the new master adopting, the rolling
//! replacement of workers, its canary and its rollback.
//!
//! - [`successor_process`]: the low-level pieces (state file place, checking the new binary,
//!   starting the successor master with exactly the fds it inherits, the readiness pipe,
//!   `pidfd` supervision of adopted workers).
//! - [`handover`]: the old master's state machine, from the request until the successor
//!   confirmed readiness or failed.
//! - [`adoption`]: the new master's state machine, from the adoption until it serves.
//! - [`rolling`]: the rolling replacement of workers and its rollback, a state machine;
//!   [`rolling_events`]: its events, commands and outcome.
//! - [`canary`]: the canary watch of a rolling upgrade, a state machine.
//! - [`error_rate`]: the canary's arithmetic, shared with `zentinel-ctl`.

pub mod adoption;
pub mod canary;
pub mod error_rate;
pub mod handover;
pub mod rolling;
pub mod rolling_events;
pub mod successor_process;

pub use successor_process::*;
