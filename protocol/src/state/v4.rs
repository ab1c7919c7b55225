//! State format version 4, frozen: the configuration as source text and the runtime facts as
//! they were before workers carried their drain deadline (format 5), the conversion to format
//! 5 (and on to the latest through [`super::v5`]), and back.
//!
//! Never edit these types: `tests/fixtures/state-v4.bin` was written with them. `ListenerFd`,
//! `PendingUpgrade`, `InheritedListener` and `MasterMetrics` are still shared with the latest
//! format; the day one of them changes, copy it here too (the frozen fixture test fails until
//! then). Formats 2 and 3 embed this module's `WorkerRecord` too.
//!
//! Format 4 is still **written**: a state in which no worker carries a drain deadline (no
//! retired worker is draining, the usual case) and no TLS session-ticket keys travel is
//! written as format 4, exactly as the previous release wrote it, so that release can still
//! take over (a rollback by upgrade).
//! See [`MasterStateV4::holding`].

#![allow(
    missing_docs,
    reason = "a frozen format: the fields are documented on the current types they mirror"
)]

use rkyv::{Archive, Deserialize, Serialize};

use super::{
    ConfigSource, InheritedListener, ListenerFd, MasterMetrics, MasterStateV5, PendingUpgrade,
};
use crate::control::WorkerState;
use crate::messages::WorkerCounters;

/// Format version 4.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct MasterStateV4 {
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

/// A worker as formats 2 to 4 recorded it: without its drain deadline.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct WorkerRecord {
    pub id: u32,
    pub pid: u32,
    pub generation: u64,
    pub channel_fd: i32,
    pub version: String,
    pub binary: String,
    pub started_at_unix_ms: u64,
    pub state: WorkerState,
    pub counters: WorkerCounters,
    pub protocol_version: u32,
}

impl From<WorkerRecord> for super::WorkerRecord {
    fn from(old: WorkerRecord) -> Self {
        super::WorkerRecord {
            id: old.id,
            pid: old.pid,
            generation: old.generation,
            channel_fd: old.channel_fd,
            version: old.version,
            binary: old.binary,
            started_at_unix_ms: old.started_at_unix_ms,
            state: old.state,
            counters: old.counters,
            protocol_version: old.protocol_version,
            // Not recorded: the master adopting it drains it on its own configuration.
            drain_deadline_monotonic_ms: None,
        }
    }
}

impl From<MasterStateV4> for MasterStateV5 {
    fn from(old: MasterStateV4) -> Self {
        MasterStateV5 {
            previous_master_pid: old.previous_master_pid,
            generation: old.generation,
            config_source: old.config_source,
            log_level: old.log_level,
            control_socket_path: old.control_socket_path,
            control_socket_fd: old.control_socket_fd,
            previous_binary: old.previous_binary,
            previous_executable_fd: old.previous_executable_fd,
            listeners: old.listeners,
            workers: old.workers.into_iter().map(Into::into).collect(),
            upgrade: old.upgrade,
            metrics_listener: old.metrics_listener,
            metrics: old.metrics,
        }
    }
}

/// Formats 1 to 3 reach format 5 through format 4.
impl From<super::MasterStateV3> for MasterStateV5 {
    fn from(old: super::MasterStateV3) -> Self {
        MasterStateV4::from(old).into()
    }
}

impl MasterStateV4 {
    /// `state` in format 4 when that format holds all of it (no worker carries a drain
    /// deadline), so it converts back to exactly `state`; `None` otherwise.
    pub fn holding(state: &MasterStateV5) -> Option<MasterStateV4> {
        if state
            .workers
            .iter()
            .any(|w| w.drain_deadline_monotonic_ms.is_some())
        {
            return None;
        }
        let state = state.clone();
        Some(MasterStateV4 {
            previous_master_pid: state.previous_master_pid,
            generation: state.generation,
            config_source: state.config_source,
            log_level: state.log_level,
            control_socket_path: state.control_socket_path,
            control_socket_fd: state.control_socket_fd,
            previous_binary: state.previous_binary,
            previous_executable_fd: state.previous_executable_fd,
            listeners: state.listeners,
            workers: state
                .workers
                .into_iter()
                .map(|w| WorkerRecord {
                    id: w.id,
                    pid: w.pid,
                    generation: w.generation,
                    channel_fd: w.channel_fd,
                    version: w.version,
                    binary: w.binary,
                    started_at_unix_ms: w.started_at_unix_ms,
                    state: w.state,
                    counters: w.counters,
                    protocol_version: w.protocol_version,
                })
                .collect(),
            upgrade: state.upgrade,
            metrics_listener: state.metrics_listener,
            metrics: state.metrics,
        })
    }
}
