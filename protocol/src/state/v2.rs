//! State format version 2, frozen: the state exactly as a version 2 master archived it (before
//! `PendingUpgrade` gained `canary`), the conversion to the latest state, and the conversion
//! back for writing a state that format 2 holds (what keeps a downgrade possible).
//!
//! Never edit these types: `tests/fixtures/state-v2.bin` was written with them. The types it
//! embeds from the rest of the crate (`ProxyConfig`, `WorkerRecord`, `ListenerFd`,
//! `MetricsListenerFd`, `MasterMetrics`) are still shared with the latest format; the day one of
//! them changes, copy it here too (the frozen fixture test fails until then).

use rkyv::{Archive, Deserialize, Serialize};

use super::{ListenerFd, MasterMetrics, MasterStateV3, MetricsListenerFd, WorkerRecord};
use crate::config::ProxyConfig;

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

/// A state that format 2 cannot hold: its pending upgrade has a canary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the pending upgrade has a canary, which state format 2 cannot hold")]
pub struct NeedsNewerFormat;

/// Whether format 2 holds `state` losslessly: everything but a canary-gated upgrade. What
/// [`super::format_for`] reports; the conversion below refuses exactly the other states
/// (`protocol/tests/state.rs` checks that the two agree).
pub fn holds(state: &MasterStateV3) -> bool {
    state
        .upgrade
        .as_ref()
        .is_none_or(|upgrade| upgrade.canary.is_none())
}

/// Down-conversion for writing: the state exactly as a version 2 master would have archived
/// it, so the previous release can take over (see the module doc of `state`).
impl TryFrom<MasterStateV3> for MasterStateV2 {
    type Error = NeedsNewerFormat;

    fn try_from(state: MasterStateV3) -> Result<Self, NeedsNewerFormat> {
        // Destructured so that a field added to the latest state fails to compile here
        // instead of being silently dropped from format 2 files.
        let MasterStateV3 {
            previous_master_pid,
            generation,
            config,
            config_path,
            log_level,
            control_socket_path,
            control_socket_fd,
            previous_binary,
            previous_executable_fd,
            listeners,
            workers,
            upgrade,
            metrics_listener,
            metrics,
        } = state;
        let upgrade = match upgrade {
            None => None,
            Some(super::PendingUpgrade {
                rolling,
                drain_timeout_ms,
                ready_timeout_ms,
                client_fd,
                canary: None,
            }) => Some(PendingUpgrade {
                rolling,
                drain_timeout_ms,
                ready_timeout_ms,
                client_fd,
            }),
            Some(super::PendingUpgrade {
                canary: Some(_), ..
            }) => return Err(NeedsNewerFormat),
        };
        Ok(MasterStateV2 {
            previous_master_pid,
            generation,
            config,
            config_path,
            log_level,
            control_socket_path,
            control_socket_fd,
            previous_binary,
            previous_executable_fd,
            listeners,
            workers,
            upgrade,
            metrics_listener,
            metrics,
        })
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
