//! State format version 6, frozen: the runtime facts and the TLS session-ticket keys as they
//! were before the shared TLS session cache travelled (format 7), the conversion to the latest
//! state, and back.
//!
//! Never edit these types: `tests/fixtures/state-v6.bin` was written with them. `WorkerRecord`,
//! `ListenerFd`, `PendingUpgrade`, `InheritedListener`, `MasterMetrics` and `TicketKeys` are
//! still shared with the latest format; the day one of them changes, copy it here too (the
//! frozen fixture test fails until then).
//!
//! Format 6 is still **written**: a state without a session cache to hand on (the successor
//! does not read format 7, or no TLS listener resumes sessions) that carries ticket keys is
//! written as format 6, exactly as the release that introduced it wrote it. See
//! [`MasterStateV6::holding`].

#![allow(
    missing_docs,
    reason = "a frozen format: the fields are documented on the current types they mirror"
)]

use rkyv::{Archive, Deserialize, Serialize};

use super::{
    ConfigSource, InheritedListener, ListenerFd, MasterMetrics, MasterStateV4, MasterStateV5,
    MasterStateV7, PendingUpgrade, WorkerRecord,
};
use crate::ticket_keys::TicketKeys;

/// Format version 6.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct MasterStateV6 {
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
    pub ticket_keys: TicketKeys,
}

impl From<MasterStateV6> for MasterStateV7 {
    fn from(old: MasterStateV6) -> Self {
        MasterStateV7 {
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
            ticket_keys: old.ticket_keys,
            // None handed on: the new master makes a fresh, empty one (a client resuming by
            // session id from before the upgrade pays one full handshake).
            session_cache: None,
        }
    }
}

/// Format 5 reaches the latest through format 6.
impl From<MasterStateV5> for MasterStateV7 {
    fn from(old: MasterStateV5) -> Self {
        MasterStateV6::from(old).into()
    }
}

/// Format 4 reaches the latest through formats 5 and 6.
impl From<MasterStateV4> for MasterStateV7 {
    fn from(old: MasterStateV4) -> Self {
        MasterStateV6::from(old).into()
    }
}

/// Formats 1 to 3 reach the latest through formats 4 to 6.
impl From<super::MasterStateV3> for MasterStateV7 {
    fn from(old: super::MasterStateV3) -> Self {
        MasterStateV6::from(old).into()
    }
}

impl MasterStateV6 {
    /// `state` in format 6 when that format holds all of it (no session cache), so it
    /// converts back to exactly `state`; `None` otherwise.
    pub fn holding(state: &MasterStateV7) -> Option<MasterStateV6> {
        if state.session_cache.is_some() {
            return None;
        }
        Some(MasterStateV6 {
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
            ticket_keys: state.ticket_keys.clone(),
        })
    }
}
