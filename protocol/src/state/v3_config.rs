//! The configuration model exactly as state formats 1 to 3 archived it (their `config`
//! field), frozen: format 4 carries the configuration's source text instead, so the live
//! model in `crate::config` may change freely. A state of format 1 to 3 is decoded with these
//! types and its configuration rendered back to KDL text ([`super::legacy_kdl`]).
//!
//! Never edit these types: `tests/fixtures/state-v{1,2,3}.bin` were written with them.

#![allow(
    missing_docs,
    reason = "a frozen format: the fields are documented on the current types they mirror"
)]

use rkyv::{Archive, Deserialize, Serialize};

/// The whole configuration handed to a worker.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ProxyConfig {
    pub system: SystemConfig,
    pub listeners: Vec<ListenerConfig>,
    /// Routes in evaluation order: sorted by priority (critical first), then file order.
    pub routes: Vec<RouteConfig>,
    pub upstreams: Vec<UpstreamConfig>,
    pub limits: Limits,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct SystemConfig {
    /// 0 means one worker per CPU.
    pub worker_processes: u32,
    /// Per worker.
    pub max_connections: u32,
    /// Drain timeout for graceful stop and upgrade.
    pub graceful_shutdown_timeout_secs: u64,
    /// `None` means the platform default (resolved by the master).
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
    /// A socket address as `std::net::SocketAddr` parses it: `127.0.0.1:8080` or `[::1]:8080`.
    pub address: String,
    pub protocol: ListenerProtocol,
    /// Listen backlog passed to `listen(2)`.
    pub backlog: u32,
    /// Time allowed to receive a whole request head (slow clients are cut off), and the idle
    /// time allowed while a request body is being received.
    pub request_timeout_secs: u64,
    /// How long an idle keep-alive client connection is kept open.
    pub keepalive_timeout_secs: u64,
    /// HTTP: the route used when none matches. `None` means 404.
    pub default_route: Option<String>,
    /// TCP: the upstream pool to forward to.
    pub upstream: Option<String>,
    /// HTTP: one line per request (`observability { logging { access-log { ... } } }`, the same
    /// for every listener). Kept per listener, inside the `listeners` Vec, so the archived
    /// `ProxyConfig` (inline in `MasterMessage::Start`) keeps the size adopted workers of the
    /// previous protocol read every message with.
    pub access_log: Option<AccessLogConfig>,
    /// HTTP: terminate TLS on this listener. `None` means plain HTTP.
    pub tls: Option<TlsConfig>,
}

/// TLS termination on a listener. Only paths travel: each worker reads the files itself when
/// it installs the configuration, so a reload re-reads them and the workers of an upgraded
/// binary read them again. The master has already loaded every file once to validate it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct TlsConfig {
    /// PEM certificate chain (leaf first) served when no SNI certificate matches. Absolute.
    pub cert_file: String,
    /// PEM private key of `cert_file` (PKCS#8, PKCS#1 or SEC1). Absolute.
    pub key_file: String,
    /// Certificates chosen by the server name the client sends (SNI).
    pub additional_certs: Vec<SniCertificate>,
    pub min_version: TlsVersion,
    /// `None`: the newest this build supports.
    pub max_version: Option<TlsVersion>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct SniCertificate {
    /// Lowercase names, exact (`example.com`) or one leading wildcard label (`*.example.com`).
    pub hostnames: Vec<String>,
    pub cert_file: String,
    pub key_file: String,
}

/// Protocol versions offered. Nothing older than TLS 1.2 exists here on purpose.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// The access log a worker writes (format expanded by the worker; see `zentinel-worker`'s
/// `access_log` module for the variables).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct AccessLogConfig {
    /// Absolute path, opened with `O_APPEND` by every worker; reopened on reload.
    pub file: String,
    /// A template with `$variables`, or a named format (`combined`, `common`).
    pub format: String,
}

/// The Prometheus endpoint (`observability { metrics { ... } }`). Master-only: it never travels
/// to workers (not part of `ProxyConfig`), it goes to a successor master in the state file.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct MetricsConfig {
    /// A socket address the master binds (the admin listener).
    pub address: String,
    /// The only path served; anything else is 404.
    pub path: String,
}

pub const DEFAULT_METRICS_PATH: &str = "/metrics";

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
    /// All conditions must hold (AND across kinds); several conditions of the same kind are
    /// alternatives (OR within a kind). No condition at all matches every request.
    pub matches: Vec<RouteMatch>,
    pub action: RouteAction,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum RouteMatch {
    /// Exact host (case-insensitive, port ignored) or `*.example.com` wildcard suffix.
    Host(String),
    PathPrefix(String),
    /// Exact path (query string ignored).
    Path(String),
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum RouteAction {
    /// Name of an upstream pool.
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
    /// `host:port` socket address (IPv4 or `[IPv6]:port`).
    pub address: String,
    /// Relative weight, at least 1.
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
    /// Active checks probing every target; `None` means none (passive marking only).
    pub health_check: Option<HealthCheck>,
    /// Taking a target out of rotation after failures seen on real traffic.
    pub passive_health: PassiveHealth,
}

/// Active health checks, run by every worker against every target of the upstream.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct HealthCheck {
    pub kind: HealthCheckKind,
    /// Time between the start of two probes of the same target. At least 1.
    pub interval_secs: u64,
    /// A probe not finished within this time failed. At least 1.
    pub timeout_secs: u64,
    /// Consecutive successful probes that bring a down target back. At least 1.
    pub healthy_threshold: u32,
    /// Consecutive failed probes that take a target out of rotation. At least 1.
    pub unhealthy_threshold: u32,
}

pub const DEFAULT_HEALTH_TIMEOUT_SECS: u64 = 2;
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum HealthCheckKind {
    /// `GET path` over HTTP/1.1 (`Connection: close`); healthy when the status is
    /// `expected_status`.
    Http {
        /// Starts with `/`.
        path: String,
        /// 100..=599.
        expected_status: u16,
        /// `Host` header; `None` sends the target's address.
        host: Option<String>,
    },
    /// Healthy when a TCP connection is established.
    Tcp,
}

/// nginx-style passive marking: `max_fails` failures (connect refused or timed out, reset or
/// closed before any response byte, response timeout) within `fail_timeout_secs` take the
/// target out of rotation for `fail_timeout_secs` (or until an active check brings it back).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct PassiveHealth {
    /// 0 disables passive marking.
    pub max_fails: u32,
    pub fail_timeout_secs: u64,
}

impl Default for PassiveHealth {
    /// nginx's defaults (`max_fails=1 fail_timeout=10s`).
    fn default() -> Self {
        PassiveHealth {
            max_fails: 1,
            fail_timeout_secs: 10,
        }
    }
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ConnectionPool {
    /// Idle keep-alive connections kept per upstream target, per worker.
    pub max_idle: u32,
    pub idle_timeout_secs: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct UpstreamTimeouts {
    pub connect_secs: u64,
    /// Longest wait for upstream bytes once a request was sent (504 when exceeded before the
    /// response head).
    pub read_secs: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Limits {
    /// Whole request head (request line + headers); beyond it: 431 (or 414 if the request line
    /// alone is too long).
    pub max_header_size_bytes: u64,
    pub max_header_count: u32,
    /// Request body; beyond it: 413.
    pub max_body_size_bytes: u64,
}
