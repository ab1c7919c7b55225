//! State format version 2, frozen: the state exactly as a version 2 master archived it (before
//! `PendingUpgrade` gained `canary`), and its conversion to format 3.
//!
//! Never edit these types: `tests/fixtures/state-v2.bin` was written with them. The types it
//! embeds from the rest of the crate (`ProxyConfig`, `MetricsListenerFd` from format 3,
//! `WorkerRecord` from format 4, `ListenerFd`, `MasterMetrics` from the latest) are still shared;
//! the day one of them changes, copy it here too (the frozen fixture test fails until then).

#![allow(
    missing_docs,
    reason = "a frozen format: the fields are documented on the current types they mirror"
)]

use rkyv::{Archive, Deserialize, Serialize};

use super::v3::{MasterStateV3, MetricsListenerFd};
use super::v3_config::ProxyConfig;
use super::v4::WorkerRecord;
use super::{ListenerFd, MasterMetrics};

/// Format version 2.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct MasterStateV2 {
    pub previous_master_pid: u32,
    pub generation: u64,
    pub config: ProxyConfig,
    pub config_path: Option<String>,
    pub log_level: String,
    pub control_socket_path: String,
    pub control_socket_fd: i32,
    pub previous_binary: String,
    pub previous_executable_fd: i32,
    pub listeners: Vec<ListenerFd>,
    pub workers: Vec<WorkerRecord>,
    pub upgrade: Option<PendingUpgrade>,
    pub metrics_listener: Option<MetricsListenerFd>,
    pub metrics: MasterMetrics,
}

/// An upgrade as versions 1 and 2 handed it on: no canary.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct PendingUpgrade {
    pub rolling: bool,
    pub drain_timeout_ms: u64,
    pub ready_timeout_ms: u64,
    pub client_fd: Option<i32>,
}

impl From<PendingUpgrade> for super::PendingUpgrade {
    fn from(old: PendingUpgrade) -> Self {
        super::PendingUpgrade {
            rolling: old.rolling,
            drain_timeout_ms: old.drain_timeout_ms,
            ready_timeout_ms: old.ready_timeout_ms,
            client_fd: old.client_fd,
            canary: None,
        }
    }
}

impl From<MasterStateV2> for MasterStateV3 {
    fn from(old: MasterStateV2) -> Self {
        MasterStateV3 {
            previous_master_pid: old.previous_master_pid,
            generation: old.generation,
            config: old.config,
            config_path: old.config_path,
            log_level: old.log_level,
            control_socket_path: old.control_socket_path,
            control_socket_fd: old.control_socket_fd,
            previous_binary: old.previous_binary,
            previous_executable_fd: old.previous_executable_fd,
            listeners: old.listeners,
            workers: old.workers,
            upgrade: old.upgrade.map(Into::into),
            metrics_listener: old.metrics_listener,
            metrics: old.metrics,
        }
    }
}
