//! Routes: priorities, conditions, actions, and the per-route policies, retries, circuit
//! breakers, fallback and shadow settings.

use rkyv::{Archive, Deserialize, Serialize};

/// Route priorities by name, with upstream Zentinel's numbers (`priority "high"` is
/// `priority 100`). Higher is tried first.
pub const PRIORITY_CRITICAL: i32 = 1000;
/// `priority "high"`.
pub const PRIORITY_HIGH: i32 = 100;
/// `priority "normal"`.
pub const PRIORITY_NORMAL: i32 = 50;
/// `priority "low"`.
pub const PRIORITY_LOW: i32 = 10;

/// One `route "name" { ... }`: its conditions, what it does with a request that meets them, and its
/// policies.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct RouteConfig {
    /// The route's name, qualified by its namespace and service (`ns:svc:name`) when it has them.
    pub name: String,
    /// Higher first; equal priorities keep file order. See the `PRIORITY_*` names.
    pub priority: i32,
    /// All `Host` conditions together are one condition (any of the hosts); every other
    /// condition must hold as well (AND), as in upstream Zentinel. No condition at all matches
    /// every request.
    pub matches: Vec<RouteMatch>,
    /// What the route does with a request it takes.
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
    /// The longest wait between two attempts.
    pub backoff_max_ms: u64,
    /// Response statuses that are not passed on while attempts remain: the request goes to
    /// another target instead. Empty: only connection failures and timeouts are retried.
    pub retryable_status_codes: Vec<u16>,
}

/// Upstream Zentinel's `max-attempts` when the block is written without it.
pub const DEFAULT_RETRY_MAX_ATTEMPTS: u32 = 3;
/// Upstream Zentinel's fixed backoff base (100 ms, doubled at each attempt).
pub const DEFAULT_RETRY_BACKOFF_BASE_MS: u64 = 100;
/// Upstream Zentinel's longest wait between two attempts (10 s).
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
    /// The whole request body is read before an upstream connection is taken (slow clients
    /// never hold an upstream connection; a body held whole can be replayed on a retry).
    pub buffer_requests: bool,
    /// The response is read ahead of the client (up to a bound), so the upstream connection
    /// goes back to the pool while a slow client is still reading.
    pub buffer_responses: bool,
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
    /// Names of fields removed.
    pub remove: Vec<String>,
}

impl HeaderModifications {
    /// Whether there is nothing to change.
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
    /// What one bucket counts.
    pub key: RateLimitKey,
}

/// What one bucket counts.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum RateLimitKey {
    /// One bucket per client IP address.
    ClientIp,
    /// One bucket per request path.
    Path,
    /// One bucket for the whole route.
    Route,
    /// One bucket per client IP address and path.
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
    /// How the proxy's own error responses on this route look, and which upstream error
    /// statuses it replaces with its own page.
    pub error_pages: Option<ErrorPages>,
    /// `filters "a" "b"`: names of `ProxyConfig::filters`, applied in this order.
    pub filters: Vec<String>,
}

impl Default for RouteExtras {
    fn default() -> Self {
        RouteExtras {
            websocket: true,
            fallback: None,
            shadow: None,
            error_pages: None,
            filters: Vec::new(),
        }
    }
}

/// A route's `error-pages { default-format "json"; pages { 404 { … } } }`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct ErrorPages {
    /// The format of statuses without a page of their own; `None` keeps the service type's.
    pub default_format: Option<ErrorFormat>,
    /// Sorted by status, one page per status.
    pub pages: Vec<ErrorPage>,
}

/// One status's page. A page also replaces an upstream response with that status.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ErrorPage {
    /// The status the page is for.
    pub status: u16,
    /// `None`: the block's default format (then the service type's).
    pub format: Option<ErrorFormat>,
    /// Replaces the status's standard message.
    pub message: Option<String>,
    /// The template file's text, read when the configuration is loaded; `{{status}}`,
    /// `{{title}}`, `{{message}}`, `{{request_id}}` and `{{timestamp}}` are filled in.
    pub template: Option<String>,
    /// Extra response headers, in file order.
    pub headers: Vec<(String, String)>,
}

/// Upstream Zentinel's error formats.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
pub enum ErrorFormat {
    /// An HTML page.
    Html,
    /// A JSON object.
    Json,
    /// Plain text.
    Text,
    /// An XML document.
    Xml,
}

impl ErrorFormat {
    /// The name as written in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            ErrorFormat::Html => "html",
            ErrorFormat::Json => "json",
            ErrorFormat::Text => "text",
            ErrorFormat::Xml => "xml",
        }
    }
}

/// `shadow { upstream "id"; percentage N; sample-header "Name" "value"; timeout-ms N }`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct RouteShadow {
    /// Name of the upstream pool that gets the copies.
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

/// One upstream of a route's `fallback`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct FallbackUpstream {
    /// Name of the upstream pool.
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
    Header {
        /// The field name.
        name: String,
        /// The exact value wanted; `None`: any value.
        value: Option<String>,
    },
    /// A query-string parameter (name and value compared after percent-decoding): present,
    /// or with exactly `value`.
    QueryParam {
        /// The parameter name.
        name: String,
        /// The exact value wanted; `None`: any value, or none.
        value: Option<String>,
    },
}

/// What a route does with a request it takes.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum RouteAction {
    /// Name of an upstream pool.
    Upstream(String),
    /// A fixed response written by the proxy.
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
    /// Compress text types with gzip or br as the client accepts (upstream's default: on).
    pub compress: bool,
    /// File (relative to `root`) answered with 200 when the requested file does not exist:
    /// single-page applications.
    pub fallback: Option<String>,
}

/// Upstream Zentinel's `builtin-handler` names this build answers.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
pub enum BuiltinHandler {
    /// Process and build information as JSON.
    Status,
    /// `{"status": "healthy"}`: the proxy is up.
    Health,
    /// The worker's counters in the Prometheus text format.
    Metrics,
    /// A 404 with upstream's JSON body.
    NotFound,
    /// Every upstream pool and the health of its targets, as JSON.
    Upstreams,
    /// The running configuration, as JSON.
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
    /// Web pages: the proxy's errors are plain text (or HTML pages when configured).
    #[default]
    Web,
    /// An API: the proxy's errors are JSON.
    Api,
    /// Static content.
    Static,
    /// Answered by the proxy itself (builtin handlers): errors are JSON.
    Builtin,
    /// Model inference endpoints: errors are JSON.
    Inference,
}

impl ServiceType {
    /// The name as written in the configuration.
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

/// A route's fixed response (`static-response { status ...; body ...; content-type ... }`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct StaticResponse {
    /// The status sent.
    pub status: u16,
    /// The body sent, as written.
    pub body: String,
    /// The `Content-Type` sent with it (left out when empty or not a valid field value).
    pub content_type: String,
}
