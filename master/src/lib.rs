//! The Zentinel master: configuration, listening sockets, worker supervision.
//!
//! - [`config`]: KDL parsing and validation into the protocol's `ProxyConfig`.
//! - [`listeners`]: binding the listening sockets the workers share.
//! - [`worker_process`]: spawning a worker from the master's own executable; the worker side's
//!   adoption of its channel fd.
//! - [`supervisor`]: the master's event loop (handshakes, restarts, signals, stop, control
//!   requests).
//! - [`control`]: the control socket `zentinel-ctl` talks to.
//! - [`control_socket_path`]: where that socket lives.
//! - [`upgrade`]: the binary upgrade: the successor process's low-level pieces, the rolling
//!   replacement and its canary as state machines.
//! - [`handover_state_file`]: the state file an old master hands over, removed when it gives
//!   the upgrade up.
//! - [`systemd`]: socket activation (`LISTEN_FDS`) and `sd_notify`, without libsystemd.
//! - [`ownership`]: tentative, then confirmed ownership of what a successor master adopts.
//! - [`draining_generations`]: `max-draining-generations`, which retired generations are
//!   asked to finish their drain now.
//! - [`drain_deadline`]: a retired worker's drain deadline across master hand-overs.
//! - [`backoff`]: restart delays.
//! - [`ticket_keys`]: the TLS session-ticket keys every worker shares, and their rotation.
//! - [`ocsp_fetch`]: OCSP responses fetched from each certificate's responder, for stapling.
//! - [`session_cache`]: the TLS session cache every worker shares (a memfd the master makes).
//! - [`filter_shm`]: the filters' counters and rate-limit tables every worker shares (a memfd
//!   per filter the master makes).
//! - [`request_ids`]: ids for requests to workers, unique across masters, and the matching of
//!   answers to them.
//! - [`gatherer`]: one round of questions to several workers, gathered by request id.
//! - [`logging`]: the tracing subscriber shared by master and workers.
//!
//! Raw libc calls are in one private module, `sys`, each behind a safe function; everywhere
//! else `unsafe` is refused.

// Raw libc calls live in `sys`, each with its `// SAFETY:` argument; `unsafe` anywhere else
// is refused.
#![deny(unsafe_code)]

pub mod backoff;
pub mod config;
pub mod control;
pub mod control_socket_path;
pub mod drain_deadline;
pub mod draining_generations;
pub mod error_log_file;
pub mod filter_shm;
pub mod gatherer;
pub mod handover_state_file;
pub mod listeners;
pub mod logging;
pub mod metrics;
pub mod ocsp_fetch;
pub mod ownership;
pub mod pid_file;
pub mod preflight;
pub mod request_ids;
pub mod session_cache;
pub mod supervisor;
#[allow(unsafe_code)]
mod sys;
pub mod systemd;
#[cfg(test)]
mod test_ca;
pub mod ticket_keys;
pub mod upgrade;
pub mod validate_command;
pub mod worker_process;
