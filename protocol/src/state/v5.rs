//! State format version 5, frozen: the runtime facts with each retired worker's drain deadline,
//! as they were before the TLS session-ticket keys travelled (format 6), the conversion to
//! format 6 (and on to the latest through [`super::v6`]), and back.
//!
//! Never edit these types: `tests/fixtures/state-v5.bin` was written with them. `WorkerRecord`,
//! `ListenerFd`, `PendingUpgrade`, `InheritedListener` and `MasterMetrics` are still shared with
//! the latest format; the day one of them changes, copy it here too (the frozen fixture test
//! fails until then).
//!
//! Format 5 is still **written**: a state without ticket keys to hand on (the successor does
//! not read format 6, or no TLS listener resumes sessions) in which a worker carries a drain
//! deadline is written as format 5, exactly as the release that introduced it wrote it. See
//! [`MasterStateV5::holding`].

#![allow(
    missing_docs,
    reason = "a frozen format: the fields are documented on the current types they mirror"
)]

use rkyv::{Archive, Deserialize, Serialize};

use super::{
    ConfigSource, InheritedListener, ListenerFd, MasterMetrics, MasterStateV4, MasterStateV6,
    PendingUpgrade, WorkerRecord,
};
use crate::ticket_keys::TicketKeys;

/// Format version 5.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct MasterStateV5 {
    pub previous_master_pid: u32,
    pub generation: u64,
    pub config_source: ConfigSource,
    pub log_level: String,
    pub control_socket_path: String,
    pub control_socket_fd: i32,
    pub previous_binary: String,
    pub previous_executable_fd: i32,
    pub listeners: Vec<ListenerFd>,
    pub workers: Vec<WorkerRecord>,
    pub upgrade: Option<PendingUpgrade>,
    pub metrics_listener: Option<InheritedListener>,
    pub metrics: MasterMetrics,
}

impl From<MasterStateV5> for MasterStateV6 {
    fn from(old: MasterStateV5) -> Self {
        MasterStateV6 {
            previous_master_pid: old.previous_master_pid,
            generation: old.generation,
            config_source: old.config_source,
            log_level: old.log_level,
            control_socket_path: old.control_socket_path,
            control_socket_fd: old.control_socket_fd,
            previous_binary: old.previous_binary,
            previous_executable_fd: old.previous_executable_fd,
            listeners: old.listeners,
            workers: old.workers,
            upgrade: old.upgrade,
            metrics_listener: old.metrics_listener,
            metrics: old.metrics,
            // None handed on: the new master makes fresh keys (a client's ticket from before
            // the upgrade costs it one full handshake).
            ticket_keys: TicketKeys::default(),
        }
    }
}

/// Format 4 reaches format 6 through format 5.
impl From<MasterStateV4> for MasterStateV6 {
    fn from(old: MasterStateV4) -> Self {
        MasterStateV5::from(old).into()
    }
}

/// Formats 1 to 3 reach format 6 through formats 4 and 5.
impl From<super::MasterStateV3> for MasterStateV6 {
    fn from(old: super::MasterStateV3) -> Self {
        MasterStateV5::from(old).into()
    }
}

impl MasterStateV5 {
    /// `state` in format 5 when that format holds all of it (no ticket keys: the default,
    /// empty ones), so it converts back to exactly `state`; `None` otherwise.
    pub fn holding(state: &MasterStateV6) -> Option<MasterStateV5> {
        if state.ticket_keys != TicketKeys::default() {
            return None;
        }
        Some(MasterStateV5 {
            previous_master_pid: state.previous_master_pid,
            generation: state.generation,
            config_source: state.config_source.clone(),
            log_level: state.log_level.clone(),
            control_socket_path: state.control_socket_path.clone(),
            control_socket_fd: state.control_socket_fd,
            previous_binary: state.previous_binary.clone(),
            previous_executable_fd: state.previous_executable_fd,
            listeners: state.listeners.clone(),
            workers: state.workers.clone(),
            upgrade: state.upgrade.clone(),
            metrics_listener: state.metrics_listener.clone(),
            metrics: state.metrics.clone(),
        })
    }
}
