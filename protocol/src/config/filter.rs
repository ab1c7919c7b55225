//! Upstream Zentinel's named filters: `filters { filter "name" { type "..." ... } }` defined
//! once, referenced by routes (`filters "a" "b"`, order kept). Field names and defaults are
//! upstream's (`crates/config/src/filters.rs`); where upstream's parser ignores a field its
//! struct has (the CORS lists, compress `content-types`), this build reads it.

use rkyv::{Archive, Deserialize, Serialize};

use super::{HeaderModifications, RateLimitKey};

/// One named filter definition.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct FilterConfig {
    /// The name routes refer to it by.
    pub name: String,
    /// What it does.
    pub kind: FilterKind,
}

/// The built-in filter types (upstream's `geo` and `agent` are refused by the master).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum FilterKind {
    /// `type "headers"`.
    Headers(HeadersFilter),
    /// `type "cors"`.
    Cors(CorsFilter),
    /// `type "compress"`.
    Compress(CompressFilter),
    /// `type "redirect"`.
    Redirect(RedirectFilter),
    /// `type "url-rewrite"`.
    UrlRewrite(UrlRewriteFilter),
    /// `type "timeout"`.
    Timeout(TimeoutFilter),
    /// `type "log"`.
    Log(LogFilter),
    /// `type "rate-limit"`.
    RateLimit(RateLimitFilter),
}

impl FilterKind {
    /// Upstream's `type` spelling.
    pub fn type_name(&self) -> &'static str {
        match self {
            FilterKind::Headers(_) => "headers",
            FilterKind::Cors(_) => "cors",
            FilterKind::Compress(_) => "compress",
            FilterKind::Redirect(_) => "redirect",
            FilterKind::UrlRewrite(_) => "url-rewrite",
            FilterKind::Timeout(_) => "timeout",
            FilterKind::Log(_) => "log",
            FilterKind::RateLimit(_) => "rate-limit",
        }
    }
}

/// When a `headers` (or other phase-bound) filter runs.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
pub enum FilterPhase {
    /// On the request sent upstream (upstream's default).
    #[default]
    Request,
    /// On the response sent to the client.
    Response,
    /// On both.
    Both,
}

impl FilterPhase {
    /// Whether the filter runs on the request.
    pub fn on_request(self) -> bool {
        matches!(self, FilterPhase::Request | FilterPhase::Both)
    }

    /// Whether the filter runs on the response.
    pub fn on_response(self) -> bool {
        matches!(self, FilterPhase::Response | FilterPhase::Both)
    }
}

/// `type "headers"`: rename, set, add, remove, in that order (as a route's policies).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct HeadersFilter {
    /// `phase "request" | "response" | "both"` (default request).
    pub phase: FilterPhase,
    /// The changes.
    pub mods: HeaderModifications,
}

/// `type "cors"`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct CorsFilter {
    /// `allowed-origins`: `"*"`, exact origins, or patterns with one `*` standing for any
    /// run of characters (`"https://*.example.com"`). Default `"*"`, as upstream.
    pub allowed_origins: Vec<String>,
    /// `allowed-methods` (default upstream's GET POST PUT DELETE OPTIONS HEAD PATCH).
    pub allowed_methods: Vec<String>,
    /// `allowed-headers`; empty: a preflight's requested headers are echoed, as upstream.
    pub allowed_headers: Vec<String>,
    /// `exposed-headers`.
    pub exposed_headers: Vec<String>,
    /// `allow-credentials`.
    pub allow_credentials: bool,
    /// `max-age-secs` (default 86400).
    pub max_age_secs: u64,
}

impl Default for CorsFilter {
    fn default() -> Self {
        CorsFilter {
            allowed_origins: vec!["*".to_owned()],
            allowed_methods: ["GET", "POST", "PUT", "DELETE", "OPTIONS", "HEAD", "PATCH"]
                .iter()
                .map(|m| (*m).to_owned())
                .collect(),
            allowed_headers: Vec::new(),
            exposed_headers: Vec::new(),
            allow_credentials: false,
            max_age_secs: 86_400,
        }
    }
}

/// A content coding the `compress` filter can produce.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
pub enum CompressionAlgorithm {
    /// `gzip`.
    Gzip,
    /// `br` (`brotli`).
    Brotli,
    /// `zstd`.
    Zstd,
    /// `deflate` (zlib-wrapped, as RFC 9110 defines the coding).
    Deflate,
}

impl CompressionAlgorithm {
    /// The `Content-Encoding` token.
    pub fn token(self) -> &'static str {
        match self {
            CompressionAlgorithm::Gzip => "gzip",
            CompressionAlgorithm::Brotli => "br",
            CompressionAlgorithm::Zstd => "zstd",
            CompressionAlgorithm::Deflate => "deflate",
        }
    }
}

/// `type "compress"`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct CompressFilter {
    /// `algorithms "gzip,br"`: the server's preference order (default gzip, br).
    pub algorithms: Vec<CompressionAlgorithm>,
    /// `min-size` in bytes (default 1024): responses known to be smaller go as they are.
    pub min_size: u64,
    /// `content-types`: media types compressed (prefix match, parameters ignored).
    pub content_types: Vec<String>,
    /// `level` (default 6), mapped onto each coder's range.
    pub level: u8,
}

impl CompressFilter {
    /// Upstream's default `content-types`.
    pub fn default_content_types() -> Vec<String> {
        [
            "text/html",
            "text/css",
            "text/plain",
            "text/xml",
            "application/json",
            "application/javascript",
            "application/xml",
            "image/svg+xml",
        ]
        .iter()
        .map(|t| (*t).to_owned())
        .collect()
    }
}

impl Default for CompressFilter {
    fn default() -> Self {
        CompressFilter {
            algorithms: vec![CompressionAlgorithm::Gzip, CompressionAlgorithm::Brotli],
            min_size: 1024,
            content_types: CompressFilter::default_content_types(),
            level: 6,
        }
    }
}

/// How `redirect` and `url-rewrite` change the path.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum PathModifier {
    /// `replace-full-path "/new"`: `$1`..`$9` and `${name}` are a `path-regex` match's
    /// captures.
    ReplaceFullPath(String),
    /// `replace-prefix-match "/new"`: the route's matched `path-prefix` is replaced, the rest
    /// of the path kept.
    ReplacePrefixMatch(String),
}

/// `type "redirect"`: the proxy answers with a redirect to the rewritten URL.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct RedirectFilter {
    /// `status-code` (default 302; 301, 302, 303, 307, 308 accepted).
    pub status_code: u16,
    /// `scheme "https"`; `None`: the request's.
    pub scheme: Option<String>,
    /// `hostname`; `None`: the request's host (without its port).
    pub hostname: Option<String>,
    /// `port`; `None`: none in the Location (a default port is never written).
    pub port: Option<u16>,
    /// The path; `None`: the request's.
    pub path: Option<PathModifier>,
}

/// `type "url-rewrite"`: the request goes upstream with another path and/or host.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct UrlRewriteFilter {
    /// `hostname`: the `Host` sent upstream.
    pub hostname: Option<String>,
    /// The path; the query string is kept.
    pub path: Option<PathModifier>,
}

/// `type "timeout"`: overrides the upstream's timeouts on the routes that use it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct TimeoutFilter {
    /// `request-timeout-secs`: the whole exchange (head received to response ended).
    pub request_timeout_secs: Option<u64>,
    /// `upstream-timeout-secs`: the upstream's read timeout.
    pub upstream_timeout_secs: Option<u64>,
    /// `connect-timeout-secs`: the upstream connect timeout.
    pub connect_timeout_secs: Option<u64>,
}

/// The level of a `log` filter's lines.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
pub enum LogLevel {
    /// `"trace"`.
    Trace,
    /// `"debug"`.
    Debug,
    /// `"info"` (default).
    #[default]
    Info,
    /// `"warn"`.
    Warn,
    /// `"error"`.
    Error,
}

/// `type "log"`: a log line per request and/or response on the routes that use it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct LogFilter {
    /// `log-request` (default true).
    pub log_request: bool,
    /// `log-response` (default true).
    pub log_response: bool,
    /// `log-body` (default false): the first `max_body_log_size` bytes of the request body.
    pub log_body: bool,
    /// `max-body-log-size` (default 4096).
    pub max_body_log_size: u64,
    /// `level` (default info).
    pub level: LogLevel,
}

impl Default for LogFilter {
    fn default() -> Self {
        LogFilter {
            log_request: true,
            log_response: true,
            log_body: false,
            max_body_log_size: 4096,
            level: LogLevel::Info,
        }
    }
}

/// What a `rate-limit` filter does with a request over the limit.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
pub enum RateLimitAction {
    /// `"reject"` (default): `status-code` with `Retry-After`.
    #[default]
    Reject,
    /// `"delay"`: held until its turn, up to `max-delay-ms`, then rejected.
    Delay,
    /// `"log-only"`: counted and logged, let through.
    LogOnly,
}

/// What a Redis-backed limit does while Redis cannot answer.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
pub enum RedisFailureMode {
    /// `redis-fallback #true` (default): the instance's own shared limit stands in.
    #[default]
    FallbackLocal,
    /// `failure-mode "open"` / `redis-fallback #false`: requests pass, as upstream.
    Open,
    /// `failure-mode "closed"`: requests are refused as if over the limit.
    Closed,
}

/// `backend "redis"` and its `redis-*` keys.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct RedisBackend {
    /// `redis-url` (default `redis://127.0.0.1:6379`).
    pub url: String,
    /// `redis-prefix` (default `zentinel:ratelimit:`).
    pub key_prefix: String,
    /// `redis-pool-size` (default 10): connections to Redis per worker (capped at 4 there: each
    /// pipelines its share), with a queue of 256 checks per connection.
    pub pool_size: u32,
    /// `redis-timeout-ms` (default 50): past it a check counts as a Redis failure.
    pub timeout_ms: u64,
    /// What happens while Redis fails.
    pub failure_mode: RedisFailureMode,
}

impl Default for RedisBackend {
    fn default() -> Self {
        RedisBackend {
            url: "redis://127.0.0.1:6379".to_owned(),
            key_prefix: "zentinel:ratelimit:".to_owned(),
            pool_size: 10,
            timeout_ms: 50,
            failure_mode: RedisFailureMode::FallbackLocal,
        }
    }
}

/// Where a `rate-limit` filter's counters live.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub enum RateLimitBackend {
    /// `backend "local"` (default): shared by every worker of this instance.
    #[default]
    Local,
    /// `backend "redis"`: shared by every instance using the same Redis and prefix.
    Redis(RedisBackend),
}

/// `type "rate-limit"`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct RateLimitFilter {
    /// `max-rps` (default 100).
    pub max_rps: u32,
    /// `burst` (default 10).
    pub burst: u32,
    /// `key` (default client-ip).
    pub key: RateLimitKey,
    /// `on-limit` (default reject).
    pub on_limit: RateLimitAction,
    /// `status-code` (default 429).
    pub status_code: u16,
    /// `limit-message` (`message` accepted too): the refusal's body.
    pub limit_message: Option<String>,
    /// `max-delay-ms` (default 5000).
    pub max_delay_ms: u64,
    /// `max-keys` (default 100,000): live keys kept; past it the stalest is evicted.
    pub max_keys: u64,
    /// `backend`.
    pub backend: RateLimitBackend,
}

impl Default for RateLimitFilter {
    fn default() -> Self {
        RateLimitFilter {
            max_rps: 100,
            burst: 10,
            key: RateLimitKey::ClientIp,
            on_limit: RateLimitAction::Reject,
            status_code: 429,
            limit_message: None,
            max_delay_ms: 5000,
            max_keys: 100_000,
            backend: RateLimitBackend::Local,
        }
    }
}
