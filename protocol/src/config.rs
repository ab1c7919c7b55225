//! The proxy configuration as it travels from the master to the workers.
//!
//! The master parses KDL into this model (see `zentinel-master`); workers only ever see it as a
//! validated rkyv archive. Every cross-reference (route -> upstream, listener -> route) has been
//! checked by the master before a worker receives it, but workers still treat a dangling name as
//! an error rather than trusting it blindly.

use std::time::Duration;

use rkyv::{Archive, Deserialize, Serialize};

mod filter;
mod listener;
mod route;
mod upstream;

pub use filter::*;
pub use listener::*;
pub use route::*;
pub use upstream::*;

// rkyv's `Archive` derive gives the resolver of an enum with struct variants fields without
// docs. Resolvers are only ever named through `Archive::Resolver`: these named (private)
// imports shadow the globs above, so the two are not exported and `missing_docs` leaves them be.
#[allow(unused_imports, hidden_glob_reexports)]
use route::RouteMatchResolver;
#[allow(unused_imports, hidden_glob_reexports)]
use upstream::HealthCheckKindResolver;

/// The whole configuration handed to a worker.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ProxyConfig {
    /// `system { ... }`: process-wide settings.
    pub system: SystemConfig,
    /// `listeners { ... }`, in the order they were written.
    pub listeners: Vec<ListenerConfig>,
    /// Routes in evaluation order: sorted by priority (highest first), then file order.
    pub routes: Vec<RouteConfig>,
    /// `upstreams { ... }`: the pools routes send requests to, by name.
    pub upstreams: Vec<UpstreamConfig>,
    /// `limits { ... }`: request size and connection limits.
    pub limits: Limits,
    /// `filters { filter "name" { ... } }`: named filters routes refer to.
    pub filters: Vec<FilterConfig>,
}

/// `system { ... }`: how the master runs its workers, and where it keeps its control socket and pid
/// file.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct SystemConfig {
    /// 0 means one worker per CPU.
    pub worker_processes: u32,
    /// Per worker.
    pub max_connections: u32,
    /// Drain timeout of a stop (`zentinel-ctl stop`, SIGTERM, SIGQUIT), and of an upgrade
    /// unless `upgrade_drain_timeout_secs` is set.
    pub graceful_shutdown_timeout_secs: u64,
    /// `None` means the platform default (resolved by the master).
    pub control_socket: Option<String>,
    /// The master writes its pid here once it serves (a successor master after an upgrade
    /// rewrites it) and removes it when it stops. `None`: no pid file.
    pub pid_file: Option<String>,
    /// Workers run as this user (the master, which binds the listeners, stays as it was
    /// started). `None`: as the master.
    pub user: Option<String>,
    /// Workers run with this group; `None`: the user's primary group.
    pub group: Option<String>,
    /// How a request's trace id is made when it brings none (`trace-id-format`).
    pub trace_id_format: TraceIdFormat,
    /// `upgrade-drain-timeout-secs`: the drain timeout of a worker retired while the service
    /// goes on (a rolling upgrade, `worker restart`, a reload that shrinks the pool). `None`:
    /// `graceful_shutdown_timeout_secs`, as before the two were told apart.
    pub upgrade_drain_timeout_secs: Option<u64>,
    /// `close-spread-time-secs`, in milliseconds: the window over which a draining worker
    /// closes its idle keep-alive connections and its tunnels, instead of all at once (0: all
    /// at once). `None`: the worker's default for the drain it was given.
    pub close_spread_time_ms: Option<u64>,
    /// `max-draining-generations`: past this many generations of retired workers draining at
    /// once, the master asks the oldest to finish now (its idle connections close at once; its
    /// requests in flight keep their deadline).
    pub max_draining_generations: u32,
}

impl SystemConfig {
    /// The number of workers `worker-processes` asks for (0: one per CPU).
    pub fn worker_count(&self) -> u32 {
        if self.worker_processes > 0 {
            return self.worker_processes;
        }
        std::thread::available_parallelism()
            .ok()
            .and_then(|n| u32::try_from(n.get()).ok())
            .unwrap_or(1)
    }

    /// Default of [`SystemConfig::max_draining_generations`]. Three generations draining at
    /// once is an upgrade, a fix-forward and a rollback in quick succession: each keeps its
    /// whole drain. A fourth means upgrades come faster than drains end, and the oldest
    /// worker's idle connections only hold its memory and descriptors.
    pub const DEFAULT_MAX_DRAINING_GENERATIONS: u32 = 3;

    /// How long a worker drains when the master stops.
    pub fn stop_drain(&self) -> Duration {
        Duration::from_secs(self.graceful_shutdown_timeout_secs)
    }

    /// How long a worker drains when it is retired while the service goes on.
    pub fn upgrade_drain(&self) -> Duration {
        Duration::from_secs(
            self.upgrade_drain_timeout_secs
                .unwrap_or(self.graceful_shutdown_timeout_secs),
        )
    }

    /// The configured close-spread window, if any (see [`SystemConfig::close_spread_time_ms`]).
    pub fn close_spread(&self) -> Option<Duration> {
        self.close_spread_time_ms.map(Duration::from_millis)
    }
}

/// `system { trace-id-format }`: upstream Zentinel's two formats.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
pub enum TraceIdFormat {
    /// 11 Base58 characters: 3 of time, 8 random.
    #[default]
    TinyFlake,
    /// A random (version 4) UUID.
    Uuid,
}

impl Default for SystemConfig {
    fn default() -> Self {
        SystemConfig {
            worker_processes: 0,
            max_connections: 10_000,
            graceful_shutdown_timeout_secs: 30,
            control_socket: None,
            pid_file: None,
            user: None,
            group: None,
            trace_id_format: TraceIdFormat::TinyFlake,
            upgrade_drain_timeout_secs: None,
            close_spread_time_ms: None,
            max_draining_generations: SystemConfig::DEFAULT_MAX_DRAINING_GENERATIONS,
        }
    }
}

/// `limits { ... }`: how large a request may be, and how many connections a client or the whole
/// proxy may hold.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Limits {
    /// Whole request head (request line + headers); beyond it: 431 (or 414 if the request line
    /// alone is too long).
    pub max_header_size_bytes: u64,
    /// Header fields in a request head; beyond it: 431.
    pub max_header_count: u32,
    /// Request body; beyond it: 413.
    pub max_body_size_bytes: u64,
    /// Connections one client IP may hold open at once, per worker (0: no limit); beyond it
    /// a new connection is closed at once.
    pub max_connections_per_client: u32,
    /// Client connections across all workers (0: no limit). The master turns it into each
    /// worker's share of `SystemConfig::max_connections` before sending the configuration.
    pub max_total_connections: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_size_bytes: 8192,
            max_header_count: 100,
            max_body_size_bytes: 10 * 1024 * 1024,
            max_connections_per_client: 0,
            max_total_connections: 0,
        }
    }
}
