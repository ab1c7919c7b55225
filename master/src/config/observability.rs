//! `observability { metrics { ... } logging { access-log { ... } } }`, with Zentinel's key
//! names. Implemented: `metrics` (`enabled`, `address`, `path`) and `logging { access-log
//! { enabled, file, format } }`; the rest of the vocabulary (`tracing`, `high-cardinality`,
//! `logging { level, format, ... }`, `buffer-size`) is reported "not supported yet".

use std::net::SocketAddr;

use kdl::KdlNode;
use zentinel_protocol::config::{
    AccessLogConfig, MetricsConfig, DEFAULT_ACCESS_LOG_FORMAT, DEFAULT_METRICS_ADDRESS,
    DEFAULT_METRICS_PATH,
};

use super::kdl_parse::{
    block, leaf_bool, leaf_string, name, name_at, socket_addr, unknown, Diagnostics, Seen,
};

const OBSERVABILITY_KEYS: &[&str] = &["metrics", "logging"];
const OBSERVABILITY_UNSUPPORTED: &[&str] = &["tracing"];
const METRICS_KEYS: &[&str] = &["enabled", "address", "path"];
const METRICS_UNSUPPORTED: &[&str] = &["high-cardinality"];
const LOGGING_KEYS: &[&str] = &["access-log"];
const LOGGING_UNSUPPORTED: &[&str] = &["level", "format", "timestamps", "file"];
const ACCESS_LOG_KEYS: &[&str] = &["enabled", "file", "format"];
const ACCESS_LOG_UNSUPPORTED: &[&str] = &["buffer-size"];

/// What `observability` blocks configure, with the places `validate` needs.
#[derive(Default)]
pub(super) struct ParsedObservability {
    /// `None`: no admin listener (no `metrics` block, or `enabled #false`).
    pub metrics: Option<MetricsConfig>,
    /// The parsed metrics address and where it was written.
    pub metrics_address: Option<(SocketAddr, usize)>,
    pub access_log: Option<AccessLogConfig>,
}

pub(super) fn parse_observability(
    node: &KdlNode,
    out: &mut ParsedObservability,
    diags: &mut Diagnostics<'_>,
) {
    let mut seen = Seen::default();
    for child in block(node, diags) {
        if OBSERVABILITY_KEYS.contains(&name(child)) {
            seen.check(child, diags);
        }
        match name(child) {
            "metrics" => parse_metrics(child, out, diags),
            "logging" => {
                let mut seen = Seen::default();
                for leaf in block(child, diags) {
                    if LOGGING_KEYS.contains(&name(leaf)) {
                        seen.check(leaf, diags);
                    }
                    match name(leaf) {
                        "access-log" => out.access_log = parse_access_log(leaf, diags),
                        _ => unknown(leaf, "logging", LOGGING_KEYS, LOGGING_UNSUPPORTED, diags),
                    }
                }
            }
            _ => unknown(
                child,
                "observability",
                OBSERVABILITY_KEYS,
                OBSERVABILITY_UNSUPPORTED,
                diags,
            ),
        }
    }
}

/// `enabled #true` / `enabled true` (KDL v1).
fn parse_metrics(node: &KdlNode, out: &mut ParsedObservability, diags: &mut Diagnostics<'_>) {
    let mut seen = Seen::default();
    let mut enabled = true;
    let mut config = MetricsConfig {
        address: DEFAULT_METRICS_ADDRESS.to_owned(),
        path: DEFAULT_METRICS_PATH.to_owned(),
    };
    let mut address = None;
    for child in block(node, diags) {
        if METRICS_KEYS.contains(&name(child)) {
            seen.check(child, diags);
        }
        match name(child) {
            "enabled" => {
                if let Some(b) = leaf_bool(child, diags) {
                    enabled = b;
                }
            }
            "address" => {
                if let Some((text, at)) = leaf_string(child, diags) {
                    if let Some(addr) = socket_addr(child, &text, at, diags) {
                        address = Some((addr, at));
                        config.address = text;
                    }
                }
            }
            "path" => {
                if let Some((path, at)) = leaf_string(child, diags) {
                    if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
                        diags.error(
                            at,
                            "path",
                            format!("metrics path {path:?} must start with `/` and hold no query"),
                        );
                    } else {
                        config.path = path;
                    }
                }
            }
            _ => unknown(child, "metrics", METRICS_KEYS, METRICS_UNSUPPORTED, diags),
        }
    }
    if enabled {
        out.metrics_address = Some(address.unwrap_or_else(|| {
            // The default is a valid literal.
            (
                DEFAULT_METRICS_ADDRESS
                    .parse()
                    .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9090))),
                name_at(node),
            )
        }));
        out.metrics = Some(config);
    } else {
        out.metrics = None;
        out.metrics_address = None;
    }
}

fn parse_access_log(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Option<AccessLogConfig> {
    let mut seen = Seen::default();
    let mut enabled = true;
    let mut file = None;
    let mut format = DEFAULT_ACCESS_LOG_FORMAT.to_owned();
    let mut ok = true;
    for child in block(node, diags) {
        if ACCESS_LOG_KEYS.contains(&name(child)) {
            seen.check(child, diags);
        }
        match name(child) {
            "enabled" => {
                if let Some(b) = leaf_bool(child, diags) {
                    enabled = b;
                }
            }
            "file" => match leaf_string(child, diags) {
                Some((path, at)) if !path.starts_with('/') => {
                    diags.error(
                        at,
                        "file",
                        format!(
                            "access-log file {path:?} must be an absolute path (workers may \
                             not share the master's working directory)"
                        ),
                    );
                    ok = false;
                }
                Some((path, _)) => file = Some(path),
                None => ok = false,
            },
            "format" => match leaf_string(child, diags) {
                Some((text, at)) => match zentinel_worker::access_log::Template::parse(&text) {
                    Ok(_) => format = text,
                    Err(e) => {
                        diags.error(at, "format", e);
                        ok = false;
                    }
                },
                None => ok = false,
            },
            _ => unknown(
                child,
                "access-log",
                ACCESS_LOG_KEYS,
                ACCESS_LOG_UNSUPPORTED,
                diags,
            ),
        }
    }
    if !enabled {
        return None;
    }
    match file {
        Some(file) => Some(AccessLogConfig { file, format }),
        None => {
            if ok {
                diags.error(
                    name_at(node),
                    "access-log",
                    "missing `file`: write `access-log { file \"/var/log/zentinel/access.log\"; }`",
                );
            }
            None
        }
    }
}
