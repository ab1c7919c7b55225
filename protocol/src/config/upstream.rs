//! Upstreams: targets and their addresses, load balancing, sticky sessions, health checks,
//! the connection pool and timeouts.

use rkyv::{Archive, Deserialize, Serialize};

use super::*;

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
    /// Name of the cookie that pins a client to a target.
    pub cookie_name: String,
    /// `Max-Age` of the cookie.
    pub cookie_ttl_secs: u64,
    /// `Path` of the cookie.
    pub cookie_path: String,
    /// Adds `Secure; HttpOnly` (upstream ties both to this one switch).
    pub cookie_secure: bool,
    /// `SameSite` of the cookie.
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

/// The sticky cookie's `SameSite` attribute.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
pub enum SameSite {
    /// `SameSite=Lax`.
    Lax,
    /// `SameSite=Strict`.
    Strict,
    /// `SameSite=None`.
    None,
}

/// One target of an upstream pool: an address and its weight.
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

/// One `upstream "name" { ... }`: a pool of targets, how one is chosen, and how connections to them
/// are kept and checked.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct UpstreamConfig {
    /// The name routes and TCP listeners refer to it by.
    pub name: String,
    /// The targets requests are spread over.
    pub targets: Vec<UpstreamTarget>,
    /// How a target is chosen for a request.
    pub load_balancing: LoadBalancing,
    /// Cookie settings; `Some` exactly when `load_balancing` is `Sticky`.
    pub sticky: Option<StickySession>,
    /// How connections to the targets are kept for reuse.
    pub pool: ConnectionPool,
    /// Connect, read, write and whole-exchange timeouts.
    pub timeouts: UpstreamTimeouts,
    /// Active checks probing every target; `None` means none (passive marking only).
    pub health_check: Option<HealthCheck>,
    /// Taking a target out of rotation after failures seen on real traffic.
    pub passive_health: PassiveHealth,
    /// A breaker per target; `None`: none (`circuit-breaker { enabled #false }`). The parser
    /// gives every upstream the defaults unless told otherwise, as upstream Zentinel.
    pub circuit_breaker: Option<CircuitBreakerConfig>,
    /// Speak TLS to every target (`tls { ... }`); `None`: plain TCP.
    pub tls: Option<UpstreamTls>,
    /// The HTTP version spoken to the targets (`http-version`), and HTTP/2's settings.
    pub http: UpstreamHttp,
}

/// Which HTTP version the proxy speaks to an upstream's targets (`http-version`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
pub enum UpstreamHttpVersion {
    /// HTTP/1.1 (ALPN `http/1.1` over TLS).
    #[default]
    Http1,
    /// HTTP/2 only: with prior knowledge (h2c) on plain connections, ALPN `h2` over TLS.
    Http2,
    /// Over TLS, ALPN offers `h2` and `http/1.1` and each target chooses; HTTP/1.1 on plain
    /// connections.
    Auto,
}

/// `http-version "2"`, or upstream Zentinel's `http-version { min-version 1; max-version 2;
/// max-h2-streams 100; h2-ping-interval 30 }`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct UpstreamHttp {
    /// The version (or the choice by ALPN).
    pub version: UpstreamHttpVersion,
    /// Streams one HTTP/2 connection carries at once, per worker (the target's
    /// SETTINGS_MAX_CONCURRENT_STREAMS may lower it): an exchange finding every connection to
    /// its target full opens another one. At least 1.
    pub max_h2_streams: u32,
    /// An HTTP/2 connection is sent a PING this often and closed when the answer does not come
    /// within as long again (a dead peer found out before a request waits on it). 0: never.
    pub h2_ping_interval_secs: u64,
}

/// Upstream Zentinel's `max-h2-streams` when none is given.
pub const DEFAULT_MAX_H2_STREAMS: u32 = 100;

impl Default for UpstreamHttp {
    fn default() -> Self {
        UpstreamHttp {
            version: UpstreamHttpVersion::Http1,
            max_h2_streams: DEFAULT_MAX_H2_STREAMS,
            h2_ping_interval_secs: 0,
        }
    }
}

/// TLS to an upstream's targets. Like a listener's certificates, only paths travel: each
/// worker loads the files when it installs the configuration (the master loaded them once to
/// validate it), so a reload re-reads them.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct UpstreamTls {
    /// The server name sent (SNI) and verified. `None`: the target's host name, or no SNI and
    /// the IP address verified for an IP target.
    pub sni: Option<String>,
    /// PEM CA certificates the targets' certificates must chain to. Absolute. `None`: the
    /// system's trust store.
    pub ca_cert: Option<String>,
    /// PEM client certificate chain and its key, presented to targets that ask (mTLS).
    /// Absolute; both or neither.
    pub client_cert: Option<String>,
    /// PEM private key of `client_cert`. Absolute.
    pub client_key: Option<String>,
    /// Accept any certificate (the handshake signature is still checked). Testing only.
    pub insecure_skip_verify: bool,
}

/// Active health checks, run by every worker against every target of the upstream.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct HealthCheck {
    /// What a probe does.
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

/// Upstream Zentinel's `interval-secs` of a health check that sets none.
pub const DEFAULT_HEALTH_INTERVAL_SECS: u64 = 10;
/// Upstream Zentinel's `timeout-secs` of a health check that sets none.
pub const DEFAULT_HEALTH_TIMEOUT_SECS: u64 = 2;
/// Upstream Zentinel's `healthy-threshold` of a health check that sets none.
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;
/// Upstream Zentinel's `unhealthy-threshold` of a health check that sets none.
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;

/// What an active health probe does.
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
    /// The window failures are counted in, and how long a marked target stays out.
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

/// `connection-pool { ... }`: how connections to an upstream's targets are kept for reuse.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ConnectionPool {
    /// Connections (in use and idle) per upstream target, per worker. An exchange finding
    /// every target at the cap waits for a free connection up to the connect timeout, then
    /// gets a 503. `None`: no cap.
    pub max_connections: Option<u32>,
    /// Idle keep-alive connections kept per upstream target, per worker
    /// ([`ConnectionPool::NO_IDLE_CAP`] unless `max-idle` is written).
    pub max_idle: u32,
    /// An idle connection unused for this long is closed.
    pub idle_timeout_secs: u64,
    /// A connection older than this is closed instead of being reused. `None`: no limit.
    pub max_lifetime_secs: Option<u64>,
}

impl ConnectionPool {
    /// The default idle cap: none. Every connection the pool opened may wait idle for the
    /// next request, so the idle set is bounded by the peak of connections in use (and by
    /// `max-connections` when written) and shrinks by `idle-timeout`, as HAProxy and Envoy
    /// bound total connections rather than idle ones. A small idle cap (32 before) made a
    /// worker with 64 busy clients close and reopen upstream connections all the time: a
    /// third of the throughput lost on small bodies (issue 18's table: 0.70x nginx at the
    /// default against 1.04x with `max-idle 128`).
    pub const NO_IDLE_CAP: u32 = u32::MAX;
}

impl Default for ConnectionPool {
    fn default() -> Self {
        ConnectionPool {
            max_connections: None,
            max_idle: ConnectionPool::NO_IDLE_CAP,
            idle_timeout_secs: 60,
            max_lifetime_secs: None,
        }
    }
}

/// How often workers resolve the host names of upstream targets again.
pub const DNS_REFRESH_SECS: u64 = 30;

/// `timeouts { ... }` of an upstream.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct UpstreamTimeouts {
    /// Longest wait for a connection to a target to be established (then the next target is tried).
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

/// A target address as written: an IP socket address, or a host name and a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetAddress<'a> {
    /// An IP address and port.
    Ip(std::net::SocketAddr),
    /// A host name (resolved by the workers) and a port.
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
