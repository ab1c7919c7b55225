//! Answers the worker gives itself: `builtin-handler` routes (upstream Zentinel's status,
//! health, metrics, not-found, upstreams and config endpoints).
//!
//! Bodies follow upstream's keys. Objects built with `json!` come out with sorted keys, as
//! upstream's do; the status body keeps upstream's field order.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{json, Value};
use tracing::warn;
use zentinel_protocol::config::{
    BuiltinHandler, ErrorFormat, LoadBalancing, ProxyConfig, RouteAction, RouteMatch,
};
use zentinel_protocol::messages::WorkerCounters;

use crate::generation::Generation;
use crate::http::codec::{self, RequestHead};
use crate::upstream::Upstreams;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const JSON: &str = "application/json; charset=utf-8";
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Upstream sends this on its JSON endpoints so that no cache keeps a stale view.
const NO_CACHE: (&str, &str) = ("Cache-Control", "no-cache, no-store, must-revalidate");

/// When this worker process started, for `uptime`.
static STARTED: OnceLock<(Instant, SystemTime)> = OnceLock::new();
static WORKER_ID: AtomicU32 = AtomicU32::new(0);
/// Numbers the request ids made up for requests that brought none.
static REQUEST_SEQ: AtomicU64 = AtomicU64::new(0);

/// Called once the worker knows its identity: the start of its uptime.
pub fn mark_started(worker_id: u32) {
    STARTED.get_or_init(|| (Instant::now(), SystemTime::now()));
    WORKER_ID.store(worker_id, Ordering::Relaxed);
}

/// What the endpoints report on, borrowed from the worker for one request.
pub struct View<'a> {
    pub counters: &'a WorkerCounters,
    pub upstreams: &'a Upstreams,
    pub generation: &'a Generation,
    pub now: Instant,
}

/// The response to `handler` for `req`: status and bytes.
pub fn answer(
    handler: BuiltinHandler,
    req: &RequestHead,
    view: &View<'_>,
    close: bool,
) -> (u16, Vec<u8>) {
    let id = request_id(req);
    let head_only = req.is_head();
    let id_header = ("X-Request-Id", id.as_str());
    let json_body = |status: u16, value: &dyn erased::Body, cache: bool| {
        let body = value.pretty().unwrap_or_else(|e| {
            // Values built here always serialize; say so loudly if that ever changes.
            warn!(error = %e, "builtin handler body did not serialize");
            b"{}".to_vec()
        });
        let extra: &[(&str, &str)] = if cache {
            &[NO_CACHE, id_header]
        } else {
            &[id_header]
        };
        (
            status,
            codec::local_response_with(status, Some(JSON), extra, &body, close, head_only),
        )
    };
    match handler {
        BuiltinHandler::Status => json_body(200, &status_body(), true),
        BuiltinHandler::Health => {
            // Upstream sends this one compact.
            let body = json!({"status": "healthy", "timestamp": timestamp()}).to_string();
            let bytes = codec::local_response_with(
                200,
                Some(JSON),
                &[NO_CACHE, id_header],
                body.as_bytes(),
                close,
                head_only,
            );
            (200, bytes)
        }
        BuiltinHandler::NotFound => json_body(
            404,
            &json!({
                "error": "Not Found",
                "message": "The requested resource could not be found.",
                "request_id": id,
                "status": 404,
                "timestamp": timestamp(),
            }),
            false,
        ),
        BuiltinHandler::Metrics => {
            let body = metrics_text(view.counters);
            let bytes = codec::local_response_with(
                200,
                Some(PROMETHEUS),
                &[id_header],
                body.as_bytes(),
                close,
                head_only,
            );
            (200, bytes)
        }
        BuiltinHandler::Upstreams => json_body(200, &upstreams_body(view, &id), true),
        BuiltinHandler::Config => {
            let body = json!({
                "config": view.generation.config_view.as_ref(),
                "request_id": id,
                "timestamp": timestamp(),
            });
            json_body(200, &body, true)
        }
    }
}

/// Upstream's request id: the first non-empty of these request headers, else a new one.
pub(super) fn request_id(req: &RequestHead) -> String {
    for wanted in ["x-trace-id", "x-correlation-id", "x-request-id"] {
        let found = req
            .headers()
            .find(|h| h.name.eq_ignore_ascii_case(wanted.as_bytes()));
        if let Some(v) = found.and_then(|h| std::str::from_utf8(h.value).ok()) {
            // Echoed in a header: only printable ASCII may go back out.
            let v = v.trim();
            if !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()) {
                return v.to_owned();
            }
        }
    }
    new_request_id()
}

pub(super) fn new_request_id() -> String {
    let seq = REQUEST_SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{:x}-{:x}-{seq:x}", std::process::id(), start_wall_secs())
}

fn started() -> (Instant, SystemTime) {
    *STARTED.get_or_init(|| (Instant::now(), SystemTime::now()))
}

fn start_wall_secs() -> u64 {
    started()
        .1
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// This process's instance id (upstream reports a UUID per process): the pid and start time,
/// in hex. Shown by the status endpoint and in `json` access-log lines.
pub(crate) fn instance_id() -> String {
    format!("{:x}-{:x}", std::process::id(), start_wall_secs())
}

pub(super) fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn timestamp() -> String {
    let mut out = Vec::with_capacity(32);
    crate::access_log::write_time(&mut out, SystemTime::now(), true);
    String::from_utf8(out).unwrap_or_default()
}

/// Upstream's human form: "42s", "3m 5s", "1d 0h 0m 7s" (leading zero units dropped).
fn human_uptime(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m {s}s"),
        _ => format!("{d}d {h}h {m}m {s}s"),
    }
}

/// Serializing through a trait object: the status body is a struct (its field order is kept),
/// the others are `Value`s.
mod erased {
    pub trait Body {
        fn pretty(&self) -> serde_json::Result<Vec<u8>>;
    }

    impl<T: serde::Serialize> Body for T {
        fn pretty(&self) -> serde_json::Result<Vec<u8>> {
            serde_json::to_vec_pretty(self)
        }
    }
}

/// Upstream's status body, in its field order.
#[derive(Serialize)]
struct Status {
    status: &'static str,
    version: &'static str,
    uptime: String,
    uptime_secs: u64,
    instance_id: String,
    timestamp: String,
    /// Not in upstream: which worker process answered (each has its own uptime).
    worker_id: u32,
    pid: u32,
}

fn status_body() -> Status {
    let secs = started().0.elapsed().as_secs();
    Status {
        status: "ok",
        version: VERSION,
        uptime: human_uptime(secs),
        uptime_secs: secs,
        instance_id: instance_id(),
        timestamp: timestamp(),
        worker_id: WORKER_ID.load(Ordering::Relaxed),
        pid: std::process::id(),
    }
}

/// This worker's own counters (the master's metrics endpoint sums all workers), under the
/// master's `zentinel_worker_*` names, plus upstream's `zentinel_up` and build info.
fn metrics_text(c: &WorkerCounters) -> String {
    let labels = format!(
        "worker=\"{}\",pid=\"{}\"",
        WORKER_ID.load(Ordering::Relaxed),
        std::process::id()
    );
    let mut out = String::with_capacity(2048);
    let _ = writeln!(
        out,
        "# HELP zentinel_up Whether the proxy is up.\n# TYPE zentinel_up gauge\nzentinel_up 1"
    );
    let _ = writeln!(
        out,
        "# HELP zentinel_build_info Build information.\n# TYPE zentinel_build_info gauge\n\
         zentinel_build_info{{version=\"{VERSION}\"}} 1"
    );
    let families: [(&str, &str, &str, u64); 8] = [
        (
            "accepted_connections_total",
            "Client connections accepted.",
            "counter",
            c.accepted_total,
        ),
        (
            "requests_total",
            "HTTP requests received (including rejected ones).",
            "counter",
            c.requests_total,
        ),
        (
            "upstream_errors_total",
            "Upstream failures.",
            "counter",
            c.upstream_errors,
        ),
        (
            "client_errors_total",
            "Client-side errors.",
            "counter",
            c.client_errors,
        ),
        (
            "accept_errors_total",
            "Failed accept(2) calls.",
            "counter",
            c.accept_errors,
        ),
        (
            "received_bytes_total",
            "Bytes read from clients.",
            "counter",
            c.bytes_in,
        ),
        (
            "sent_bytes_total",
            "Bytes written to clients.",
            "counter",
            c.bytes_out,
        ),
        (
            "active_connections",
            "Client connections open now.",
            "gauge",
            c.active_connections,
        ),
    ];
    for (name, help, kind, value) in families {
        let _ = writeln!(
            out,
            "# HELP zentinel_worker_{name} {help} This worker process only.\n\
             # TYPE zentinel_worker_{name} {kind}\nzentinel_worker_{name}{{{labels}}} {value}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP zentinel_worker_responses_total Responses sent, by status class. This worker \
         process only.\n# TYPE zentinel_worker_responses_total counter"
    );
    for (class, value) in [
        ("1xx", c.responses_1xx),
        ("2xx", c.responses_2xx),
        ("3xx", c.responses_3xx),
        ("4xx", c.responses_4xx),
        ("5xx", c.responses_5xx),
    ] {
        let _ = writeln!(
            out,
            "zentinel_worker_responses_total{{{labels},class=\"{class}\"}} {value}"
        );
    }
    out
}

/// Upstream's Rust Debug names for the algorithm.
fn lb_name(lb: LoadBalancing) -> &'static str {
    match lb {
        LoadBalancing::RoundRobin => "RoundRobin",
        LoadBalancing::Weighted => "Weighted",
        LoadBalancing::LeastConnections => "LeastConnections",
        LoadBalancing::WeightedLeastConnections => "WeightedLeastConnections",
        LoadBalancing::Random => "Random",
        LoadBalancing::PowerOfTwoChoices => "PowerOfTwoChoices",
        LoadBalancing::IpHash => "IpHash",
        LoadBalancing::ConsistentHash => "ConsistentHash",
        LoadBalancing::Maglev => "Maglev",
        LoadBalancing::PeakEwma => "PeakEwma",
        LoadBalancing::Sticky => "Sticky",
    }
}

/// Each upstream of the running configuration with this worker's view of its targets.
fn upstreams_body(view: &View<'_>, id: &str) -> Value {
    let (mut healthy, mut unhealthy, mut total) = (0u64, 0u64, 0u64);
    let mut list = Vec::new();
    for &key in &view.generation.pools {
        let Some(pool) = view.upstreams.pool(key) else {
            continue;
        };
        let config = pool.config();
        let targets: Vec<Value> = pool
            .targets
            .iter()
            .zip(&config.targets)
            .map(|(t, c)| {
                total += 1;
                let down = t.health().down_reason(view.now);
                if down.is_some() {
                    unhealthy += 1;
                } else {
                    healthy += 1;
                }
                json!({
                    "address": c.address,
                    "weight": c.weight,
                    "status": if down.is_some() { "unhealthy" } else { "healthy" },
                    // Upstream reports a failure rate; this build marks targets by
                    // consecutive failures instead (see `down_reason`).
                    "failure_rate": Value::Null,
                    "last_error": Value::Null,
                    "down_reason": down,
                    // This worker's breaker; null when the upstream has none.
                    "circuit_breaker": config
                        .circuit_breaker
                        .as_ref()
                        .map(|_| t.breaker().state().name()),
                    "active_connections": t.active,
                })
            })
            .collect();
        list.push(json!({
            "id": pool.name,
            "load_balancing": lb_name(config.load_balancing),
            "health_check": config.health_check.is_some(),
            "targets": targets,
        }));
    }
    let mut body = json!({
        "request_id": id,
        "timestamp": timestamp(),
        "summary": {
            "healthy": healthy,
            "unhealthy": unhealthy,
            "unknown": 0,
            "total_targets": total,
            "total_upstreams": list.len(),
        },
        "upstreams": list,
    });
    if view.generation.pools.is_empty() {
        body["message"] = json!("No upstreams configured");
    }
    body
}

/// The running configuration in upstream's `config` endpoint shape. Only paths of key and
/// certificate files appear, never their contents (workers do not keep those as text).
pub fn config_view(config: &ProxyConfig) -> Value {
    let listeners: Vec<Value> = config
        .listeners
        .iter()
        .map(|l| {
            json!({
                "id": l.name,
                "address": l.address,
                "protocol": match l.protocol {
                    zentinel_protocol::config::ListenerProtocol::Http if l.tls.is_some() => "https",
                    zentinel_protocol::config::ListenerProtocol::Http => "http",
                    zentinel_protocol::config::ListenerProtocol::Tcp => "tcp",
                },
                "default_route": l.default_route,
                "upstream": l.upstream,
                "request_timeout_secs": l.request_timeout_secs,
                "keepalive_timeout_secs": l.keepalive_timeout_secs,
                "tls_enabled": l.tls.is_some(),
                "tls": l.tls.as_ref().map(|t| json!({
                    "cert_file": t.cert_file,
                    "key_file": t.key_file,
                    "sni": t.additional_certs.iter().map(|s| json!({
                        "hostnames": s.hostnames,
                        "cert_file": s.cert_file,
                        "key_file": s.key_file,
                    })).collect::<Vec<_>>(),
                })),
            })
        })
        .collect();
    let routes: Vec<Value> = config
        .routes
        .iter()
        .map(|r| {
            let (upstream, builtin) = match &r.action {
                RouteAction::Upstream(u) => (Some(u.as_str()), None),
                RouteAction::Builtin(b) => (None, Some(b.name())),
                RouteAction::Static(_) | RouteAction::Files(_) => (None, None),
            };
            json!({
                "id": r.name,
                "priority": r.priority,
                "matches": r.matches.iter().map(match_view).collect::<Vec<_>>(),
                "upstream": upstream,
                "service_type": r.service_type.name(),
                "builtin_handler": builtin,
                "static_response": match &r.action {
                    RouteAction::Static(s) => json!({
                        "status": s.status,
                        "content_type": s.content_type,
                    }),
                    _ => Value::Null,
                },
                "static_files": match &r.action {
                    RouteAction::Files(f) => json!({
                        "root": f.root,
                        "index": f.index,
                        "directory_listing": f.directory_listing,
                        "cache_control": f.cache_control,
                        "compress": f.compress,
                        "fallback": f.fallback,
                    }),
                    _ => Value::Null,
                },
                "error_pages": r.extras.as_ref().and_then(|e| e.error_pages.as_ref()).map(|p| json!({
                    "default_format": p.default_format.map(ErrorFormat::name),
                    "pages": p.pages.iter().map(|page| (page.status.to_string(), json!({
                        "format": page.format.map(ErrorFormat::name),
                        "message": page.message,
                        "template": page.template.is_some(),
                        "headers": page.headers.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
                    }))).collect::<serde_json::Map<_, _>>(),
                })),
                "filters": [],
                "waf_enabled": false,
            })
        })
        .collect();
    let upstreams: Vec<Value> = config
        .upstreams
        .iter()
        .map(|u| {
            json!({
                "id": u.name,
                "targets": u.targets.iter().map(|t| json!({
                    "address": t.address,
                    "weight": t.weight,
                })).collect::<Vec<_>>(),
                "load_balancing": lb_name(u.load_balancing),
                "health_check": u.health_check.as_ref().map(|h| json!({
                    "interval_secs": h.interval_secs,
                    "timeout_secs": h.timeout_secs,
                    "healthy_threshold": h.healthy_threshold,
                    "unhealthy_threshold": h.unhealthy_threshold,
                })),
                "tls_enabled": false,
            })
        })
        .collect();
    let s = &config.system;
    json!({
        "server": {
            "worker_threads": s.worker_processes,
            "max_connections": s.max_connections,
            "graceful_shutdown_timeout_secs": s.graceful_shutdown_timeout_secs,
        },
        "listeners": listeners,
        "routes": routes,
        "upstreams": upstreams,
        "limits": {
            "max_header_size_bytes": config.limits.max_header_size_bytes,
            "max_header_count": config.limits.max_header_count,
            "max_body_size_bytes": config.limits.max_body_size_bytes,
        },
        "agents": [],
        "filters": [],
        "waf": Value::Null,
    })
}

/// Upstream's serde form of a condition (`{"path_prefix": "/api"}`); values written on one
/// node appear as a list when there are several.
fn match_view(m: &RouteMatch) -> Value {
    let one_or_list = |v: &Vec<String>| match v.as_slice() {
        [one] => json!(one),
        _ => json!(v),
    };
    match m {
        RouteMatch::Host(h) => json!({ "host": h }),
        RouteMatch::Path(p) => json!({ "path": one_or_list(p) }),
        RouteMatch::PathPrefix(p) => json!({ "path_prefix": one_or_list(p) }),
        RouteMatch::PathRegex(p) => json!({ "path_regex": one_or_list(p) }),
        RouteMatch::Method(m) => json!({ "method": m }),
        RouteMatch::Header { name, value } => {
            json!({ "header": { "name": name, "value": value } })
        }
        RouteMatch::QueryParam { name, value } => {
            json!({ "query_param": { "name": name, "value": value } })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_drops_leading_zero_units() {
        assert_eq!(human_uptime(42), "42s");
        assert_eq!(human_uptime(185), "3m 5s");
        assert_eq!(human_uptime(3600), "1h 0m 0s");
        assert_eq!(human_uptime(86_407), "1d 0h 0m 7s");
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let c = WorkerCounters {
            requests_total: 7,
            responses_2xx: 5,
            ..Default::default()
        };
        let text = metrics_text(&c);
        assert!(text.contains("zentinel_up 1\n"), "{text}");
        assert!(text.contains("zentinel_worker_requests_total{worker=\"0\",pid=\""));
        assert!(text.contains(",class=\"2xx\"} 5\n"), "{text}");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
