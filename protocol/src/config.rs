//! The proxy configuration as it travels from the master to the workers.
//!
//! The master parses KDL into this model (see `zentinel-master`); workers only ever see it as a
//! validated rkyv archive. Every cross-reference (route -> upstream, listener -> route) has been
//! checked by the master before a worker receives it, but workers still treat a dangling name as
//! an error rather than trusting it blindly.

use rkyv::{Archive, Deserialize, Serialize};

/// The whole configuration handed to a worker.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ProxyConfig {
    pub system: SystemConfig,
    pub listeners: Vec<ListenerConfig>,
    /// Routes in evaluation order: sorted by priority (highest first), then file order.
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
        }
    }
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
    /// The routes this listener serves: `None` the top-level ones, `Some("ns")` those of
    /// `namespace "ns"` (a listener defined there, or one with `namespace "ns"`), `Some("ns:svc")`
    /// those of a service.
    pub route_scope: Option<String>,
    /// HTTP/2 streams per connection (stored for HTTP/2; HTTP/1 has one at a time).
    pub max_concurrent_streams: u32,
    /// `keepalive-max-requests`: a client connection is closed (`Connection: close` on the
    /// response) after this many requests. 0: no limit.
    pub keepalive_max_requests: u32,
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
    /// A template with `$variables`, or a named format (`combined`, `common`, `json`).
    pub format: String,
    /// `include-trace-id`: the `json` format carries each request's trace id (other formats
    /// write it with `$trace_id`). Upstream's default: on.
    pub include_trace_id: bool,
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

pub const DEFAULT_METRICS_ADDRESS: &str = "127.0.0.1:9090";
pub const DEFAULT_METRICS_PATH: &str = "/metrics";
pub const DEFAULT_ACCESS_LOG_FORMAT: &str = "combined";

pub const DEFAULT_BACKLOG: u32 = 1024;
/// Upstream Zentinel's default `max-concurrent-streams`.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 100;

/// Route priorities by name, with upstream Zentinel's numbers (`priority "high"` is
/// `priority 100`). Higher is tried first.
pub const PRIORITY_CRITICAL: i32 = 1000;
pub const PRIORITY_HIGH: i32 = 100;
pub const PRIORITY_NORMAL: i32 = 50;
pub const PRIORITY_LOW: i32 = 10;

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct RouteConfig {
    pub name: String,
    /// Higher first; equal priorities keep file order. See the `PRIORITY_*` names.
    pub priority: i32,
    /// All `Host` conditions together are one condition (any of the hosts); every other
    /// condition must hold as well (AND), as in upstream Zentinel. No condition at all matches
    /// every request.
    pub matches: Vec<RouteMatch>,
    pub action: RouteAction,
    /// What kind of service the route fronts; decides the format of the proxy's own error
    /// responses (JSON for `Api`, `Builtin` and `Inference`, plain text otherwise).
    pub service_type: ServiceType,
    /// Where the route was defined: `None` at the top level, `Some("ns")` in `namespace "ns"`,
    /// `Some("ns:svc")` in its `service "svc"`. A listener serves only the routes of its own
    /// scope (`ListenerConfig::route_scope`). The route's name is qualified the same way.
    pub scope: Option<String>,
    /// `retry-policy { ... }`. `None`: an idempotent request whose fresh connection fails
    /// before any response byte goes once to another target, nothing more.
    pub retry_policy: Option<RetryPolicy>,
    /// `policies { ... }`: header changes, per-route timeout and body limit, rate limit.
    pub policies: RoutePolicies,
    /// Settings most routes leave alone (`websocket`, ...); `None` is every default. Boxed so
    /// that a plain route stays small.
    pub extras: Option<Box<RouteExtras>>,
}

/// How a route's requests are attempted again on another target (see the README, "Retries").
/// Only idempotent requests whose whole body is still held for replay are retried.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct RetryPolicy {
    /// Attempts in total, the first one included. At least 1.
    pub max_attempts: u32,
    /// Each attempt must produce its response head within this time (504 otherwise, which is
    /// retried while attempts remain). `None`: only the upstream's own timeouts apply.
    pub timeout_ms: Option<u64>,
    /// Wait before retry n (n = 0 for the first): `backoff_base_ms * 2^n`, at most
    /// `backoff_max_ms`. 0: retry at once.
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Response statuses that are not passed on while attempts remain: the request goes to
    /// another target instead. Empty: only connection failures and timeouts are retried.
    pub retryable_status_codes: Vec<u16>,
}

/// Upstream Zentinel's `max-attempts` when the block is written without it.
pub const DEFAULT_RETRY_MAX_ATTEMPTS: u32 = 3;
/// Upstream Zentinel's fixed backoff base (100 ms, doubled at each attempt).
pub const DEFAULT_RETRY_BACKOFF_BASE_MS: u64 = 100;
pub const DEFAULT_RETRY_BACKOFF_MAX_MS: u64 = 10_000;

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: DEFAULT_RETRY_MAX_ATTEMPTS,
            timeout_ms: None,
            backoff_base_ms: DEFAULT_RETRY_BACKOFF_BASE_MS,
            backoff_max_ms: DEFAULT_RETRY_BACKOFF_MAX_MS,
            retryable_status_codes: Vec::new(),
        }
    }
}

/// `circuit-breaker { ... }`: one breaker per target, per worker (see
/// docs/design/circuit-breaker.md for the state machine).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct CircuitBreakerConfig {
    /// Consecutive failures that open a closed breaker. At least 1.
    pub failure_threshold: u32,
    /// Consecutive successful trials that close a half-open breaker. At least 1.
    pub success_threshold: u32,
    /// How long an open breaker keeps its target out before trial requests. At least 1.
    pub timeout_seconds: u64,
    /// Trial requests in flight at once while half-open. At least 1.
    pub half_open_max_requests: u32,
}

impl Default for CircuitBreakerConfig {
    /// Upstream Zentinel's defaults.
    fn default() -> Self {
        CircuitBreakerConfig {
            failure_threshold: 5,
            success_threshold: 2,
            timeout_seconds: 30,
            half_open_max_requests: 1,
        }
    }
}

/// Upstream Zentinel's per-route `policies` block, as far as this build acts on it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct RoutePolicies {
    /// Applied to the request head sent upstream.
    pub request_headers: HeaderModifications,
    /// Applied to the head of responses that come from the upstream (not to the proxy's own
    /// error, static or builtin responses, as upstream).
    pub response_headers: HeaderModifications,
    /// Overrides the upstream's read timeout (`UpstreamTimeouts::read_secs`) on this route.
    pub timeout_secs: Option<u64>,
    /// Overrides `Limits::max_body_size_bytes` on this route (413 beyond it).
    pub max_body_size_bytes: Option<u64>,
    /// Token bucket per key, per worker process.
    pub rate_limit: Option<RateLimit>,
}

/// Header changes, applied in upstream's order: every rename, then every set, every add,
/// every remove (each list in file order). Names are matched case-insensitively. The master
/// refuses names that would change a message's framing or connection handling.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct HeaderModifications {
    /// (old name, new name): every field named `old` is renamed, its value kept.
    pub rename: Vec<(String, String)>,
    /// (name, value): replaces every field of that name by one, or appends it.
    pub set: Vec<(String, String)>,
    /// (name, value): appends one more field.
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

impl HeaderModifications {
    pub fn is_empty(&self) -> bool {
        self.rename.is_empty()
            && self.set.is_empty()
            && self.add.is_empty()
            && self.remove.is_empty()
    }
}

/// `rate-limit { requests-per-second N; burst N; key "..." }`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct RateLimit {
    /// Tokens added per second. At least 1.
    pub requests_per_second: u32,
    /// Bucket capacity (requests admitted at once after a quiet period). At least 1.
    pub burst: u32,
    pub key: RateLimitKey,
}

/// What one bucket counts.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum RateLimitKey {
    ClientIp,
    Path,
    /// One bucket for the whole route.
    Route,
    ClientIpAndPath,
    /// The value of this request header (lowercase name); requests without it share a bucket.
    Header(String),
}

/// The less common settings of a route.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct RouteExtras {
    /// WebSocket upgrades are tunnelled to the upstream; `websocket #false` (or a block with
    /// `enabled #false`) answers them 403 instead, as upstream does for routes without it.
    pub websocket: bool,
    /// Other upstreams to use when the route's own cannot serve the request.
    pub fallback: Option<RouteFallback>,
    /// A copy of a share of the requests sent to another upstream, answers discarded.
    pub shadow: Option<RouteShadow>,
}

impl Default for RouteExtras {
    fn default() -> Self {
        RouteExtras {
            websocket: true,
            fallback: None,
            shadow: None,
        }
    }
}

/// `shadow { upstream "id"; percentage N; sample-header "Name" "value"; timeout-ms N }`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct RouteShadow {
    pub upstream: String,
    /// Share of the eligible requests mirrored, in hundredths of a percent (0..=10000).
    pub per_10000: u32,
    /// Only requests carrying this header (name, exact value) are mirrored.
    pub sample_header: Option<(String, String)>,
    /// A mirrored exchange still open after this long is dropped.
    pub timeout_ms: u64,
}

/// `fallback { fallback-upstream "b"; triggers { ... }; max-attempts N }`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct RouteFallback {
    /// Tried in order.
    pub upstreams: Vec<FallbackUpstream>,
    /// How many fallback upstreams one request may go to.
    pub max_attempts: u32,
    /// Go to a fallback upstream first when the route's upstream has no target in rotation.
    pub on_health_failure: bool,
    /// Go to the next fallback upstream when every target of the current one failed to
    /// connect (no request byte was sent, so any method may go).
    pub on_connection_error: bool,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct FallbackUpstream {
    pub name: String,
    /// Pass over this upstream while it has no target in rotation.
    pub skip_if_unhealthy: bool,
}

/// One condition of a route. A `Vec` holds the values written on one node: any of them
/// satisfies the condition (`method "GET" "HEAD"`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum RouteMatch {
    /// Exact host (case-insensitive, port ignored) or `*.example.com` wildcard suffix. All
    /// the host conditions of a route are alternatives.
    Host(String),
    /// A prefix on a segment boundary: `/api` matches `/api`, `/api/x`, not `/apix`.
    PathPrefix(Vec<String>),
    /// Exact path (query string ignored).
    Path(Vec<String>),
    /// Unanchored regular expressions (Rust `regex` syntax) on the path, checked by the master.
    PathRegex(Vec<String>),
    /// Request methods, uppercase; the request's method is compared exactly.
    Method(Vec<String>),
    /// A request header (name compared case-insensitively): present, or with exactly `value`.
    Header { name: String, value: Option<String> },
    /// A query-string parameter (name and value compared after percent-decoding): present,
    /// or with exactly `value`.
    QueryParam { name: String, value: Option<String> },
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum RouteAction {
    /// Name of an upstream pool.
    Upstream(String),
    Static(StaticResponse),
    /// Answered by the worker itself.
    Builtin(BuiltinHandler),
    /// Files served by the worker from a directory (`static-files { ... }`).
    Files(Box<StaticFiles>),
}

/// `static-files { root ...; index ...; ... }`: what a route serves from disk.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct StaticFiles {
    /// Absolute directory; the master checked that it exists. The path served is the request
    /// path with the route's matched `path-prefix` removed, relative to this directory.
    pub root: String,
    /// File names tried, in order, when the request names a directory.
    pub index: Vec<String>,
    /// Answer a directory without an index with an HTML listing (otherwise 403).
    pub directory_listing: bool,
    /// `Cache-Control` on 200 and 206 answers (upstream's default "public, max-age=3600").
    pub cache_control: String,
    /// File (relative to `root`) answered with 200 when the requested file does not exist:
    /// single-page applications.
    pub fallback: Option<String>,
}

/// Upstream Zentinel's `builtin-handler` names this build answers.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
pub enum BuiltinHandler {
    Status,
    Health,
    Metrics,
    NotFound,
    Upstreams,
    Config,
}

impl BuiltinHandler {
    /// The canonical spelling (the `config` dump uses upstream's snake_case form).
    pub fn name(self) -> &'static str {
        match self {
            BuiltinHandler::Status => "status",
            BuiltinHandler::Health => "health",
            BuiltinHandler::Metrics => "metrics",
            BuiltinHandler::NotFound => "not_found",
            BuiltinHandler::Upstreams => "upstreams",
            BuiltinHandler::Config => "config",
        }
    }
}

/// Upstream Zentinel's service types.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
pub enum ServiceType {
    #[default]
    Web,
    Api,
    Static,
    Builtin,
    Inference,
}

impl ServiceType {
    pub fn name(self) -> &'static str {
        match self {
            ServiceType::Web => "web",
            ServiceType::Api => "api",
            ServiceType::Static => "static",
            ServiceType::Builtin => "builtin",
            ServiceType::Inference => "inference",
        }
    }

    /// Whether the proxy's own error responses on this route are JSON (as upstream).
    pub fn json_errors(self) -> bool {
        matches!(
            self,
            ServiceType::Api | ServiceType::Builtin | ServiceType::Inference
        )
    }
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct StaticResponse {
    pub status: u16,
    pub body: String,
    pub content_type: String,
}

/// How a pool chooses the target of the next exchange. Every algorithm skips targets that are
/// out of rotation, failed for this exchange, unresolved or at their connection cap.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
pub enum LoadBalancing {
    /// Smooth weighted round robin (nginx's): weights 5,1,1 give a a b a c a a.
    RoundRobin,
    /// Same algorithm as `RoundRobin`; kept apart so `-t` output names what was written.
    Weighted,
    /// Fewest connections in use relative to weight; ties rotate.
    LeastConnections,
    /// Same as `LeastConnections` (which already divides by weight).
    WeightedLeastConnections,
    /// Weighted random choice.
    Random,
    /// Two weighted random draws, the one with fewer connections in use (relative to weight).
    PowerOfTwoChoices,
    /// Hash of the client IP address (port excluded) over the targets.
    IpHash,
    /// Ring of virtual nodes keyed by the client IP address.
    ConsistentHash,
    /// Maglev lookup table keyed by the client IP address.
    Maglev,
    /// Lowest latency estimate (peak-sensitive EWMA) times connections in use.
    PeakEwma,
    /// A cookie names the target; without a valid one `UpstreamConfig::sticky`'s fallback
    /// chooses and the cookie is set on the response.
    Sticky,
}

/// `load-balancing "sticky" { ... }`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct StickySession {
    pub cookie_name: String,
    /// `Max-Age` of the cookie.
    pub cookie_ttl_secs: u64,
    pub cookie_path: String,
    /// Adds `Secure; HttpOnly` (upstream ties both to this one switch).
    pub cookie_secure: bool,
    pub same_site: SameSite,
    /// Chooses when the request carries no valid cookie. Never `Sticky`.
    pub fallback: LoadBalancing,
}

impl Default for StickySession {
    /// Upstream Zentinel's defaults.
    fn default() -> Self {
        StickySession {
            cookie_name: "SERVERID".into(),
            cookie_ttl_secs: 3600,
            cookie_path: "/".into(),
            cookie_secure: true,
            same_site: SameSite::Lax,
            fallback: LoadBalancing::RoundRobin,
        }
    }
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
pub enum SameSite {
    Lax,
    Strict,
    None,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct UpstreamTarget {
    /// `IP:port` (`[IPv6]:port`) or `hostname:port`. Workers resolve host names when they
    /// start and again every [`DNS_REFRESH_SECS`]; a name that does not resolve is a target
    /// out of rotation, not a failed start.
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
    /// Cookie settings; `Some` exactly when `load_balancing` is `Sticky`.
    pub sticky: Option<StickySession>,
    pub pool: ConnectionPool,
    pub timeouts: UpstreamTimeouts,
    /// Active checks probing every target; `None` means none (passive marking only).
    pub health_check: Option<HealthCheck>,
    /// Taking a target out of rotation after failures seen on real traffic.
    pub passive_health: PassiveHealth,
    /// A breaker per target; `None`: none (unlike upstream Zentinel, where every target has
    /// one with the defaults).
    pub circuit_breaker: Option<CircuitBreakerConfig>,
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

pub const DEFAULT_HEALTH_INTERVAL_SECS: u64 = 10;
pub const DEFAULT_HEALTH_TIMEOUT_SECS: u64 = 2;
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;
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
    /// Connections (in use and idle) per upstream target, per worker. An exchange finding
    /// every target at the cap waits for a free connection up to the connect timeout, then
    /// gets a 503. `None`: no cap.
    pub max_connections: Option<u32>,
    /// Idle keep-alive connections kept per upstream target, per worker.
    pub max_idle: u32,
    pub idle_timeout_secs: u64,
    /// A connection older than this is closed instead of being reused. `None`: no limit.
    pub max_lifetime_secs: Option<u64>,
}

impl Default for ConnectionPool {
    fn default() -> Self {
        ConnectionPool {
            max_connections: None,
            max_idle: 32,
            idle_timeout_secs: 60,
            max_lifetime_secs: None,
        }
    }
}

/// How often workers resolve the host names of upstream targets again.
pub const DNS_REFRESH_SECS: u64 = 30;

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct UpstreamTimeouts {
    pub connect_secs: u64,
    /// Longest wait for upstream bytes once a request was sent (504 when exceeded before the
    /// response head).
    pub read_secs: u64,
    /// Longest time the upstream may take to accept request bytes (504 before the response
    /// head). `None`: only the read timeout applies.
    pub write_secs: Option<u64>,
    /// Deadline for the whole exchange, from the first connect to the end of the response
    /// head (504). `None`: none.
    pub request_secs: Option<u64>,
}

impl Default for UpstreamTimeouts {
    fn default() -> Self {
        UpstreamTimeouts {
            connect_secs: 5,
            read_secs: 30,
            write_secs: None,
            request_secs: None,
        }
    }
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

/// A target address as written: an IP socket address, or a host name and a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetAddress<'a> {
    Ip(std::net::SocketAddr),
    Name(&'a str, u16),
}

/// Parse `IP:port`, `[IPv6]:port` or `hostname:port` (port 1-65535). The master checks every
/// target with this (so `-t` needs no network) and workers split names from ports with it.
/// Err: why the text is not a target address.
pub fn parse_target_address(text: &str) -> Result<TargetAddress<'_>, &'static str> {
    if let Ok(addr) = text.parse::<std::net::SocketAddr>() {
        if addr.port() == 0 {
            return Err("port 0 cannot be connected to");
        }
        return Ok(TargetAddress::Ip(addr));
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err("missing `:port`");
    };
    if host.starts_with('[') || host.contains(':') {
        return Err("invalid IPv6 address (write it as \"[2001:db8::1]:8080\")");
    }
    let port = match port.parse::<u16>() {
        Ok(0) => return Err("port 0 cannot be connected to"),
        Ok(p) => p,
        Err(_) => return Err("the port must be a number from 1 to 65535"),
    };
    if !is_host_name(host) {
        return Err("invalid host name (letters, digits, `-`, `_` and `.` only, labels of 1 to 63 characters)");
    }
    // A dotted quad that failed to parse as an IP (e.g. 300.1.1.1) is a typo, not a name.
    if host
        .split('.')
        .all(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("invalid IPv4 address");
    }
    Ok(TargetAddress::Name(host, port))
}

/// RFC 1123 host name syntax (underscores allowed: they occur in service names).
fn is_host_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}
