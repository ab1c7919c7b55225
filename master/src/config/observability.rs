//! `observability { metrics { ... } logging { ... } }`, with Zentinel's key names.
//! Implemented: `metrics` (`enabled`, `address`, `path`), `logging { level; format;
//! timestamps; error-log { ... }; access-log { ... } }` (the log blocks: [`super::log_blocks`]).
//! Accepted with a warning (no effect here): `logging { file }` (logs go to stderr and the error
//! log), `audit-log` (nothing to audit without agents or a WAF).
//! `metrics { high-cardinality }` is accepted with a warning (the series are per worker and
//! listener only). `tracing` is reported "not supported yet".

use std::net::SocketAddr;

use kdl::KdlNode;
use zentinel_protocol::config::{
    AccessLogConfig, MetricsConfig, DEFAULT_METRICS_ADDRESS, DEFAULT_METRICS_PATH,
};

use super::kdl_parse::{
    block, leaf_bool, leaf_string, name, name_at, socket_addr, unknown, Diagnostics, Seen,
};
use super::log_blocks::{parse_access_log, parse_error_log};

const OBSERVABILITY_KEYS: &[&str] = &["metrics", "logging"];
const OBSERVABILITY_UNSUPPORTED: &[&str] = &["tracing"];
const METRICS_KEYS: &[&str] = &["enabled", "address", "path", "high-cardinality"];
const METRICS_WITHOUT_EFFECT: &str = "high-cardinality";
const LOGGING_KEYS: &[&str] = &[
    "access-log",
    "error-log",
    "audit-log",
    "level",
    "format",
    "timestamps",
    "file",
];
/// `observability { logging { level; format; timestamps; error-log } }`: how the master and
/// its workers log (see `crate::logging`). Master-only: workers get it on their command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoggingConfig {
    /// `None`: not configured (`info` unless the command line says otherwise).
    pub level: Option<String>,
    pub json: bool,
    /// `None`: not configured (timestamps on).
    pub timestamps: Option<bool>,
    pub error_log: Option<crate::logging::ErrorLog>,
}

/// What `observability` blocks configure, with the places `validate` needs.
#[derive(Default)]
pub(super) struct ParsedObservability {
    /// `None`: no admin listener (no `metrics` block, or `enabled #false`).
    pub metrics: Option<MetricsConfig>,
    /// The parsed metrics address and where it was written.
    pub metrics_address: Option<(SocketAddr, usize)>,
    pub access_log: Option<AccessLogConfig>,
    pub logging: LoggingConfig,
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
                        "error-log" => out.logging.error_log = parse_error_log(leaf, diags),
                        "level" => {
                            if let Some((level, at)) = leaf_string(leaf, diags) {
                                match crate::logging::check_level(&level) {
                                    Ok(()) => out.logging.level = Some(level),
                                    Err(e) => diags.error(
                                        at,
                                        "level",
                                        format!(
                                            "{e}; expected trace, debug, info, warn, error or off"
                                        ),
                                    ),
                                }
                            }
                        }
                        "format" => match leaf_string(leaf, diags) {
                            Some((format, _)) if format == "json" => out.logging.json = true,
                            Some((format, _)) if format == "text" || format == "pretty" => {
                                out.logging.json = false;
                            }
                            Some((format, at)) => diags.error(
                                at,
                                "format",
                                format!(
                                    "unknown log format {format:?}: expected \"json\" or \"text\""
                                ),
                            ),
                            None => {}
                        },
                        "timestamps" => out.logging.timestamps = leaf_bool(leaf, diags),
                        "file" => {
                            if leaf_string(leaf, diags).is_some() {
                                diags.warn(
                                    name_at(leaf),
                                    "file",
                                    "`logging { file }` has no effect (upstream Zentinel ignores \
                                     it too): logs go to stderr; use `error-log { file }` for a \
                                     file of warnings and errors",
                                );
                            }
                        }
                        "audit-log" => diags.warn(
                            name_at(leaf),
                            "audit-log",
                            "`audit-log` has no effect: there are no agent or WAF decisions to \
                             audit in this build",
                        ),
                        _ => unknown(leaf, "logging", LOGGING_KEYS, &[], diags),
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
            METRICS_WITHOUT_EFFECT => {
                if leaf_bool(child, diags) == Some(true) {
                    diags.warn(
                        name_at(child),
                        METRICS_WITHOUT_EFFECT,
                        "`high-cardinality #true` has no effect: series carry no per-route or \
                         per-upstream labels",
                    );
                }
            }
            _ => unknown(child, "metrics", METRICS_KEYS, &[], diags),
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
