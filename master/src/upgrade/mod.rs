//! The binary upgrade: the old master handing over, the new master adopting, the rolling
//! replacement of workers, its canary and its rollback.
//!
//! - [`successor_process`]: the low-level pieces (state file place, checking the new binary,
//!   starting the successor master with exactly the fds it inherits, the readiness pipe,
//!   `pidfd` supervision of adopted workers).

pub mod successor_process;

pub use successor_process::*;
