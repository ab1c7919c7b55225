//! State format version 7, frozen: the runtime facts, the TLS session-ticket keys and the
//! shared TLS session cache as they were before the filters' shared segments travelled (format
//! 8), the conversion to the latest state, and back.
//!
//! Never edit these types: `tests/fixtures/state-v7.bin` was written with them. `WorkerRecord`,
//! `ListenerFd`, `PendingUpgrade`, `InheritedListener`, `MasterMetrics`, `TicketKeys` and
//! `SessionCacheFd` are still shared with the latest format; the day one of them changes, copy
//! it here too (the frozen fixture test fails until then).
//!
//! Format 7 is still **written**: a state without filter segments to hand on (the successor
//! does not read format 8, or no filter keeps shared state) that carries the session cache is
//! written as format 7, exactly as the release that introduced it wrote it. See
//! [`MasterStateV7::holding`].

#![allow(
    missing_docs,
    reason = "a frozen format: the fields are documented on the current types they mirror"
)]

use rkyv::{Archive, Deserialize, Serialize};

use super::{
    ConfigSource, InheritedListener, ListenerFd, MasterMetrics, MasterStateV4, MasterStateV5,
    MasterStateV6, MasterStateV8, PendingUpgrade, SessionCacheFd, WorkerRecord,
};
use crate::ticket_keys::TicketKeys;

/// Format version 7.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct MasterStateV7 {
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
    pub session_cache: Option<SessionCacheFd>,
}

impl From<MasterStateV7> for MasterStateV8 {
    fn from(old: MasterStateV7) -> Self {
        MasterStateV8 {
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
            session_cache: old.session_cache,
            // None handed on: the new master makes fresh ones (rate limits start over).
            filter_segments: Vec::new(),
        }
    }
}

/// Format 6 reaches the latest through format 7.
impl From<MasterStateV6> for MasterStateV8 {
    fn from(old: MasterStateV6) -> Self {
        MasterStateV7::from(old).into()
    }
}

/// Format 5 reaches the latest through formats 6 and 7.
impl From<MasterStateV5> for MasterStateV8 {
    fn from(old: MasterStateV5) -> Self {
        MasterStateV7::from(old).into()
    }
}

/// Format 4 reaches the latest through formats 5 to 7.
impl From<MasterStateV4> for MasterStateV8 {
    fn from(old: MasterStateV4) -> Self {
        MasterStateV7::from(old).into()
    }
}

/// Formats 1 to 3 reach the latest through formats 4 to 7.
impl From<super::MasterStateV3> for MasterStateV8 {
    fn from(old: super::MasterStateV3) -> Self {
        MasterStateV7::from(old).into()
    }
}

impl MasterStateV7 {
    /// `state` in format 7 when that format holds all of it (no filter segments), so it
    /// converts back to exactly `state`; `None` otherwise.
    pub fn holding(state: &MasterStateV8) -> Option<MasterStateV7> {
        if !state.filter_segments.is_empty() {
            return None;
        }
        Some(MasterStateV7 {
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
            session_cache: state.session_cache.clone(),
        })
    }
}
