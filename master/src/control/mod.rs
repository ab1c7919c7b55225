//! The master's control plane: the Unix socket `zentinel-ctl` talks to.
//!
//! - [`socket`]: the socket file (stale/live detection, mode 0600, removal on exit).
//! - [`server`]: client connections (SO_PEERCRED check, Hello handshake, bounded frames,
//!   idle/write timeouts, bounded output). Requests are carried out by the supervisor
//!   (`crate::supervisor`), inside its event loop, so no client can stall supervision.
//!
//! # Conversation
//! The client sends `ControlRequest::Hello`; the master answers `ControlResponse::Hello`, or
//! `Failed` (naming both protocol versions) and closes. Then requests, one at a time per
//! connection; each gets zero or more `Progress` and exactly one final `Status`, `Done` or
//! `Failed`. A second request sent before the first finished gets `Failed` at once.
//! An invalid frame gets `Failed` (best effort) and the connection is closed. A client with
//! no request in progress that sends nothing complete for 10 s is closed.
//!
//! - `Status`: every live worker (current, starting, draining) is asked for fresh counters;
//!   the answer comes when all replied, or after 1 s with the last known counters of the
//!   silent ones marked `stale`.
//! - `Stop`: answered with one `Progress` at once. The connection stays open; right before
//!   the master exits it sends `Done` (best effort) and then the connection closes. A client
//!   treats `Done` or EOF after the `Progress` as "the master has stopped".
//! - `WorkerRestart`: `Progress` lines, then `Done` once the successor is ready and the old
//!   worker has acknowledged its drain, or `Failed` (the old worker keeps serving).
//! - `Reload`: `Progress`, then `Done` with a summary or `Failed` with every diagnostic
//!   (nothing changed). SIGHUP runs the same reload, with the outcome only logged.
//! - `Upgrade`: the master starts the new binary, which inherits this connection with the
//!   listeners, the workers and the control socket. The *new* master continues the
//!   conversation: `MasterReplaced`, then (rolling) one `WorkerReplaced` per worker, or
//!   `WorkerRolledBack` lines and `Failed` after a failed worker; `Done` at the end. If the new
//!   master never confirms readiness, the old one answers `Failed` itself and keeps running.
//!   SIGUSR2 runs a rolling upgrade from the on-disk binary, with the outcome only logged.
//! - `UpgradeWith`: the same, with a canary: after the first `WorkerReplaced`, `Progress` lines
//!   with the live comparison, then the verdict (`Progress` and on to the other workers, or
//!   `WorkerRolledBack` and `Failed` with the figures).

pub mod server;
pub mod socket;

pub use server::{peer_allowed, ControlServer};
pub use socket::{ControlSocket, ControlSocketError};
