//! State format version 1, frozen: the configuration types exactly as a version 1 master
//! archived them (before `UpstreamConfig` gained `health_check` and `passive_health`), and the
//! conversion to the latest state.
//!
//! Never edit these types: `tests/fixtures/state-v1.bin` was written with them. `ListenerFd` is
//! still shared with the latest format, and `PendingUpgrade` with version 2 (frozen in
//! [`super::v2`]); the day one of them changes, copy it here too (the frozen fixture test fails
//! until then). A version 1 state converts to version 2, which converts to the latest.

#![allow(
    missing_docs,
    reason = "a frozen format: the fields are documented on the current types they mirror"
)]

use rkyv::{Archive, Deserialize, Serialize};

use super::v2::{MasterStateV2, PendingUpgrade};
use super::v3_config as latest;
use super::ListenerFd;
use crate::control::WorkerState;
use crate::messages::WorkerCounters;

/// Format version 1.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct MasterStateV1 {
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
}

/// A worker as a version 1 master recorded it: one that speaks protocol version 1.
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
}

impl From<WorkerRecord> for super::v4::WorkerRecord {
    fn from(old: WorkerRecord) -> Self {
        super::v4::WorkerRecord {
            id: old.id,
            pid: old.pid,
            generation: old.generation,
            channel_fd: old.channel_fd,
            version: old.version,
            binary: old.binary,
            started_at_unix_ms: old.started_at_unix_ms,
            state: old.state,
            counters: old.counters,
            // Every binary that wrote format 1 spoke protocol 1.
            protocol_version: 1,
        }
    }
}

impl From<MasterStateV1> for MasterStateV2 {
    fn from(old: MasterStateV1) -> Self {
        MasterStateV2 {
            previous_master_pid: old.previous_master_pid,
            generation: old.generation,
            config: old.config.into(),
            config_path: old.config_path,
            log_level: old.log_level,
            control_socket_path: old.control_socket_path,
            control_socket_fd: old.control_socket_fd,
            previous_binary: old.previous_binary,
            previous_executable_fd: old.previous_executable_fd,
            listeners: old.listeners,
            workers: old.workers.into_iter().map(Into::into).collect(),
            upgrade: old.upgrade,
            metrics_listener: None,
            metrics: super::MasterMetrics::default(),
        }
    }
}

impl From<ProxyConfig> for latest::ProxyConfig {
    fn from(old: ProxyConfig) -> Self {
        latest::ProxyConfig {
            system: latest::SystemConfig {
                worker_processes: old.system.worker_processes,
                max_connections: old.system.max_connections,
                graceful_shutdown_timeout_secs: old.system.graceful_shutdown_timeout_secs,
                control_socket: old.system.control_socket,
            },
            listeners: old
                .listeners
                .into_iter()
                .map(|l| latest::ListenerConfig {
                    name: l.name,
                    address: l.address,
                    protocol: match l.protocol {
                        ListenerProtocol::Http => latest::ListenerProtocol::Http,
                        ListenerProtocol::Tcp => latest::ListenerProtocol::Tcp,
                    },
                    backlog: l.backlog,
                    request_timeout_secs: l.request_timeout_secs,
                    keepalive_timeout_secs: l.keepalive_timeout_secs,
                    default_route: l.default_route,
                    upstream: l.upstream,
                    access_log: None,
                    tls: None,
                })
                .collect(),
            routes: old
                .routes
                .into_iter()
                .map(|r| latest::RouteConfig {
                    name: r.name,
                    priority: match r.priority {
                        RoutePriority::Critical => latest::RoutePriority::Critical,
                        RoutePriority::High => latest::RoutePriority::High,
                        RoutePriority::Normal => latest::RoutePriority::Normal,
                        RoutePriority::Low => latest::RoutePriority::Low,
                    },
                    matches: r
                        .matches
                        .into_iter()
                        .map(|m| match m {
                            RouteMatch::Host(h) => latest::RouteMatch::Host(h),
                            RouteMatch::PathPrefix(p) => latest::RouteMatch::PathPrefix(p),
                            RouteMatch::Path(p) => latest::RouteMatch::Path(p),
                        })
                        .collect(),
                    action: match r.action {
                        RouteAction::Upstream(u) => latest::RouteAction::Upstream(u),
                        RouteAction::Static(s) => {
                            latest::RouteAction::Static(latest::StaticResponse {
                                status: s.status,
                                body: s.body,
                                content_type: s.content_type,
                            })
                        }
                    },
                })
                .collect(),
            upstreams: old
                .upstreams
                .into_iter()
                .map(|u| latest::UpstreamConfig {
                    name: u.name,
                    targets: u
                        .targets
                        .into_iter()
                        .map(|t| latest::UpstreamTarget {
                            address: t.address,
                            weight: t.weight,
                        })
                        .collect(),
                    load_balancing: match u.load_balancing {
                        LoadBalancing::RoundRobin => latest::LoadBalancing::RoundRobin,
                        LoadBalancing::LeastConnections => latest::LoadBalancing::LeastConnections,
                    },
                    pool: latest::ConnectionPool {
                        max_idle: u.pool.max_idle,
                        idle_timeout_secs: u.pool.idle_timeout_secs,
                    },
                    timeouts: latest::UpstreamTimeouts {
                        connect_secs: u.timeouts.connect_secs,
                        read_secs: u.timeouts.read_secs,
                    },
                    // Version 1 had neither; the running config gets what a config file
                    // without the keys gets today.
                    health_check: None,
                    passive_health: latest::PassiveHealth::default(),
                })
                .collect(),
            limits: latest::Limits {
                max_header_size_bytes: old.limits.max_header_size_bytes,
                max_header_count: old.limits.max_header_count,
                max_body_size_bytes: old.limits.max_body_size_bytes,
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// `crate::config` as of state format version 1 (commit fd52b27), doc comments trimmed.
// ---------------------------------------------------------------------------------------------

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ProxyConfig {
    pub system: SystemConfig,
    pub listeners: Vec<ListenerConfig>,
    pub routes: Vec<RouteConfig>,
    pub upstreams: Vec<UpstreamConfig>,
    pub limits: Limits,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct SystemConfig {
    pub worker_processes: u32,
    pub max_connections: u32,
    pub graceful_shutdown_timeout_secs: u64,
    pub control_socket: Option<String>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
pub enum ListenerProtocol {
    Http,
    Tcp,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ListenerConfig {
    pub name: String,
    pub address: String,
    pub protocol: ListenerProtocol,
    pub backlog: u32,
    pub request_timeout_secs: u64,
    pub keepalive_timeout_secs: u64,
    pub default_route: Option<String>,
    pub upstream: Option<String>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
pub enum RoutePriority {
    Critical,
    High,
    Normal,
    Low,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct RouteConfig {
    pub name: String,
    pub priority: RoutePriority,
    pub matches: Vec<RouteMatch>,
    pub action: RouteAction,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum RouteMatch {
    Host(String),
    PathPrefix(String),
    Path(String),
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum RouteAction {
    Upstream(String),
    Static(StaticResponse),
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct StaticResponse {
    pub status: u16,
    pub body: String,
    pub content_type: String,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
pub enum LoadBalancing {
    RoundRobin,
    LeastConnections,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct UpstreamTarget {
    pub address: String,
    pub weight: u32,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct UpstreamConfig {
    pub name: String,
    pub targets: Vec<UpstreamTarget>,
    pub load_balancing: LoadBalancing,
    pub pool: ConnectionPool,
    pub timeouts: UpstreamTimeouts,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ConnectionPool {
    pub max_idle: u32,
    pub idle_timeout_secs: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct UpstreamTimeouts {
    pub connect_secs: u64,
    pub read_secs: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Limits {
    pub max_header_size_bytes: u64,
    pub max_header_count: u32,
    pub max_body_size_bytes: u64,
}
