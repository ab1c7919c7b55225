//! State format version 3, frozen: the last format that archived the parsed configuration
//! model (frozen in [`super::v3_config`]) instead of its source text, and the conversion to
//! the latest state (the model is rendered back to KDL text by [`super::legacy_kdl`]).
//!
//! Never edit these types: `tests/fixtures/state-v3.bin` was written with them. `ListenerFd`,
//! `PendingUpgrade` and `MasterMetrics` are still shared with the latest format, and
//! `WorkerRecord` with format 4 (frozen in [`super::v4`]); the day one of them changes, copy it
//! here too (the frozen fixture test fails until then). A format 3 state converts to format 4,
//! which converts to the latest.

#![allow(
    missing_docs,
    reason = "a frozen format: the fields are documented on the current types they mirror"
)]

use rkyv::{Archive, Deserialize, Serialize};

use super::v3_config::{MetricsConfig, ProxyConfig};
use super::v4::{MasterStateV4, WorkerRecord};
use super::{
    legacy_kdl, ConfigSource, ConfigSourceFile, InheritedListener, ListenerFd, MasterMetrics,
    PendingUpgrade,
};

/// Format version 3.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct MasterStateV3 {
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

/// The metrics listener as formats 2 and 3 handed it on: with its configuration.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct MetricsListenerFd {
    pub config: MetricsConfig,
    pub address: String,
    pub fd: i32,
}

/// The label of the configuration text rendered for a predecessor that ran on its embedded
/// default (formats 1 to 3 did not say which text that was).
pub const LEGACY_EMBEDDED_DEFAULT_LABEL: &str = "<embedded default of the previous master>";

impl From<MasterStateV3> for MasterStateV4 {
    fn from(old: MasterStateV3) -> Self {
        let text = legacy_kdl::render(
            &old.config,
            old.metrics_listener.as_ref().map(|m| &m.config),
        );
        let label = old
            .config_path
            .clone()
            .unwrap_or_else(|| LEGACY_EMBEDDED_DEFAULT_LABEL.to_owned());
        MasterStateV4 {
            previous_master_pid: old.previous_master_pid,
            generation: old.generation,
            config_source: ConfigSource {
                main_path: old.config_path,
                files: vec![ConfigSourceFile { path: label, text }],
            },
            log_level: old.log_level,
            control_socket_path: old.control_socket_path,
            control_socket_fd: old.control_socket_fd,
            previous_binary: old.previous_binary,
            previous_executable_fd: old.previous_executable_fd,
            listeners: old.listeners,
            workers: old.workers,
            upgrade: old.upgrade,
            metrics_listener: old.metrics_listener.map(|m| InheritedListener {
                address: m.address,
                fd: m.fd,
            }),
            metrics: old.metrics,
        }
    }
}
