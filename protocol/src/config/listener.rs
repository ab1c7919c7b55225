//! Listeners: addresses, protocols, TLS termination, the access log and the metrics endpoint.

use rkyv::{Archive, Deserialize, Serialize};

/// What a listener speaks.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
pub enum ListenerProtocol {
    /// HTTP/1.x: requests are parsed, routed and answered or proxied.
    Http,
    /// Plain TCP: each connection is forwarded to `upstream` as it is.
    Tcp,
}

/// One `listener "name" { ... }`: a socket address, its protocol and per-connection settings.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ListenerConfig {
    /// The name it was given; a reload keeps a listener's socket (and its connections) when a
    /// listener of the same name, protocol and address remains.
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
    /// HTTP or plain TCP.
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
    /// The oldest protocol version offered.
    pub min_version: TlsVersion,
    /// `None`: the newest this build supports.
    pub max_version: Option<TlsVersion>,
    /// Client certificates (mutual TLS), verified against `ca_file`.
    pub client_auth: ClientAuth,
    /// PEM CA certificates that client certificates must chain to. Absolute.
    pub ca_file: Option<String>,
    /// `cipher-suite(s)`: the suites offered, by their rustls names (`TLS13_AES_128_GCM_SHA256`,
    /// `TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`), in the order written. Empty: the TLS
    /// library's defaults (every AEAD suite with forward secrecy it has).
    pub cipher_suites: Vec<String>,
    /// `session-resumption` (upstream's default: on): sessions are resumed from TLS 1.2 and
    /// 1.3 tickets sealed with the master's keys (any worker, any generation) and from a cache
    /// of this worker. Off: neither, every connection does a full handshake.
    pub session_resumption: bool,
    /// `ocsp-stapling` (upstream's default: on): the OCSP responses of `ocsp_response` (and of
    /// the SNI certificates) are stapled. Off: none is, whatever files are named.
    pub ocsp_stapling: bool,
    /// `ocsp-response`: a DER OCSP response for `cert_file`, stapled for clients that ask
    /// (status_request). Absolute; re-read by every reload like the certificate. Without one
    /// in the file, the master names the response it fetched from the certificate's responder.
    pub ocsp_response: Option<String>,
}

/// Whether a TLS listener asks clients for a certificate (upstream's `client-auth`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
pub enum ClientAuth {
    /// No client certificate is asked for.
    #[default]
    Off,
    /// Asked for; a client without one is served, one with an invalid one is refused.
    Optional,
    /// Without a certificate that verifies, the handshake fails.
    Required,
}

/// One `sni { ... }` entry: a certificate served to clients asking for one of its host names.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct SniCertificate {
    /// Lowercase names, exact (`example.com`) or one leading wildcard label (`*.example.com`).
    pub hostnames: Vec<String>,
    /// PEM certificate chain (leaf first). Absolute.
    pub cert_file: String,
    /// PEM private key of `cert_file`. Absolute.
    pub key_file: String,
    /// A DER OCSP response for `cert_file` (see [`TlsConfig::ocsp_response`]). Absolute.
    pub ocsp_response: Option<String>,
}

/// Protocol versions offered. Nothing older than TLS 1.2 exists here on purpose.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
pub enum TlsVersion {
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
}

/// The access log a worker writes (format expanded by the worker; see `zentinel-worker`'s
/// `access_log` module for the formats and variables).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct AccessLogConfig {
    /// Absolute path, opened with `O_APPEND` by every worker; reopened on reload.
    pub file: String,
    /// `json` (upstream's default), `combined` (also `common`, `clf`: upstream's one line with
    /// the trace id and duration appended), or a template with `$variables`. Any other name is
    /// written as `json`, as upstream does.
    pub format: String,
    /// `include-trace-id`: the trace id in `json` and `combined` lines (templates write it with
    /// `$trace_id`). Upstream's default: on.
    pub include_trace_id: bool,
    /// `buffer-size`: bytes each worker holds per file before writing them (also written after
    /// at most a second, and on reload, drain and stop). 0: every batch written at once.
    pub buffer_size: u32,
    /// `sample-rate` in millionths: 1_000_000 logs every request, 0 none (but see
    /// `sample_errors_always`).
    pub sample_per_million: u32,
    /// `sample-errors-always`: a request answered 4xx or 5xx is logged whatever the rate.
    pub sample_errors_always: bool,
    /// `fields { ... }`: which keys the `json` format writes.
    pub fields: AccessLogFields,
}

/// `access-log { fields { ... } }`, upstream's selection of `json` keys (all on by default).
/// `timestamp`, `trace-id`, ... in KDL; the JSON keys are upstream's (`latency-ms` writes
/// `duration_ms`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct AccessLogFields {
    /// `timestamp`: the time the request arrived (RFC 3339, milliseconds).
    pub timestamp: bool,
    /// `trace-id`: the request's trace id (`trace_id`; also needs `include_trace_id`).
    pub trace_id: bool,
    /// `method`: the request method.
    pub method: bool,
    /// `path`: the request path, without the query.
    pub path: bool,
    /// `query`: the query string (left out when the request has none).
    pub query: bool,
    /// `status`: the status sent to the client.
    pub status: bool,
    /// `latency-ms`: the time from request to the last response byte (`duration_ms`).
    pub latency_ms: bool,
    /// `body-bytes-sent`: response body bytes sent to the client.
    pub body_bytes_sent: bool,
    /// `upstream-addr`: the target that answered (left out for local answers).
    pub upstream_addr: bool,
    /// `connection-reused`: whether the upstream connection came from the idle pool.
    pub connection_reused: bool,
    /// `rate-limit-hit`: whether the answer was a 429.
    pub rate_limit_hit: bool,
    /// `geo-country`: accepted for upstream's configurations, never written (no GeoIP here).
    pub geo_country: bool,
    /// `user-agent`: the request's `User-Agent` (left out when absent).
    pub user_agent: bool,
    /// `referer`: the request's `Referer` (left out when absent).
    pub referer: bool,
    /// `client-ip`: the client's address.
    pub client_ip: bool,
}

impl Default for AccessLogFields {
    fn default() -> Self {
        AccessLogFields {
            timestamp: true,
            trace_id: true,
            method: true,
            path: true,
            query: true,
            status: true,
            latency_ms: true,
            body_bytes_sent: true,
            upstream_addr: true,
            connection_reused: true,
            rate_limit_hit: true,
            geo_country: true,
            user_agent: true,
            referer: true,
            client_ip: true,
        }
    }
}

impl AccessLogConfig {
    /// Upstream Zentinel's defaults for a log written to `file`.
    pub fn with_file(file: String) -> Self {
        AccessLogConfig {
            file,
            format: DEFAULT_ACCESS_LOG_FORMAT.to_owned(),
            include_trace_id: true,
            buffer_size: DEFAULT_LOG_BUFFER_SIZE,
            sample_per_million: SAMPLE_ALL,
            sample_errors_always: true,
            fields: AccessLogFields::default(),
        }
    }
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

/// Where the metrics endpoint listens when `metrics` names no address.
pub const DEFAULT_METRICS_ADDRESS: &str = "127.0.0.1:9090";
/// The metrics endpoint's path when `metrics` names none.
pub const DEFAULT_METRICS_PATH: &str = "/metrics";
/// Upstream Zentinel's default access-log format.
pub const DEFAULT_ACCESS_LOG_FORMAT: &str = "json";
/// Upstream Zentinel's default `buffer-size` of the access and error logs.
pub const DEFAULT_LOG_BUFFER_SIZE: u32 = 8192;
/// `sample_per_million` of `sample-rate 1.0`.
pub const SAMPLE_ALL: u32 = 1_000_000;

/// `listen(2)` backlog of a listener that sets none (Linux caps it at `net.core.somaxconn`,
/// 4096 by default).
///
/// Measured with 1,000 clients each opening a connection per request (2 workers, loopback):
/// on a 2-core machine every backlog from 128 to 4096 saw SYN retransmits (p99 1.2-2.7 s), the
/// workers and not the queue being the limit, so the measurement does not tell them apart.
/// 1024: room for a burst of a thousand connections per listener while the workers catch up
/// (nginx's default is 511); a longer queue only makes more clients wait longer.
pub const DEFAULT_BACKLOG: u32 = 1024;
/// Upstream Zentinel's default `max-concurrent-streams`.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 100;
