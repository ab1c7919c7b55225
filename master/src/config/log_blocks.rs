//! `logging { access-log { ... } error-log { ... } }`: every key upstream Zentinel reads, and the
//! access-log keys its documentation gives (`include-trace-id`, `sample-rate`,
//! `sample-errors-always`, `fields`), which its KDL reader leaves at their defaults but its
//! logger applies.

use kdl::{KdlNode, KdlValue};
use zentinel_protocol::config::{
    AccessLogConfig, AccessLogFields, DEFAULT_LOG_BUFFER_SIZE, SAMPLE_ALL,
};
use zentinel_worker::access_log::Format;

use super::kdl_parse::{
    block, describe, leaf_bool, leaf_int, leaf_string, name, name_at, single_arg, unknown,
    unknown_listing, Diagnostics, Seen,
};

const ACCESS_LOG_KEYS: &[&str] = &[
    "enabled",
    "file",
    "format",
    "include-trace-id",
    "sample-rate",
    "sample-errors-always",
    "buffer-size",
    "fields",
];
/// Upstream's field names, in KDL spelling.
const FIELD_KEYS: &[&str] = &[
    "timestamp",
    "trace-id",
    "method",
    "path",
    "query",
    "status",
    "latency-ms",
    "body-bytes-sent",
    "upstream-addr",
    "connection-reused",
    "rate-limit-hit",
    "geo-country",
    "user-agent",
    "referer",
    "client-ip",
];
const ERROR_LOG_KEYS: &[&str] = &["enabled", "file", "level", "buffer-size"];
/// Where upstream Zentinel writes the logs when `file` is not given.
const DEFAULT_ACCESS_LOG_FILE: &str = "/var/log/zentinel/access.log";
const DEFAULT_ERROR_LOG_FILE: &str = "/var/log/zentinel/error.log";
/// The largest `buffer-size`: each worker holds one such buffer per log file.
const MAX_BUFFER_SIZE: u64 = 64 * 1024 * 1024;

/// `access-log { ... }`; `None` when disabled or invalid (errors reported).
pub(super) fn parse_access_log(
    node: &KdlNode,
    diags: &mut Diagnostics<'_>,
) -> Option<AccessLogConfig> {
    let errors_before = diags.error_count();
    let mut seen = Seen::default();
    let mut enabled = true;
    let mut config = AccessLogConfig::with_file(DEFAULT_ACCESS_LOG_FILE.to_owned());
    let mut format_at = None;
    let mut fields_at = None;
    for child in block(node, diags) {
        if ACCESS_LOG_KEYS.contains(&name(child)) && !seen.check(child, diags) {
            continue;
        }
        match name(child) {
            "enabled" => {
                if let Some(b) = leaf_bool(child, diags) {
                    enabled = b;
                }
            }
            "file" => {
                if let Some(path) = log_file(child, "access-log", diags) {
                    config.file = path;
                }
            }
            "format" => {
                if let Some((text, at)) = leaf_string(child, diags) {
                    config.format = text;
                    format_at = Some(at);
                }
            }
            "include-trace-id" => {
                if let Some(b) = leaf_bool(child, diags) {
                    config.include_trace_id = b;
                }
            }
            "sample-rate" => {
                if let Some(rate) = sample_rate(child, diags) {
                    config.sample_per_million = rate;
                }
            }
            "sample-errors-always" => {
                if let Some(b) = leaf_bool(child, diags) {
                    config.sample_errors_always = b;
                }
            }
            "buffer-size" => {
                if let Some(size) = buffer_size(child, diags) {
                    config.buffer_size = size;
                }
            }
            "fields" => {
                fields_at = Some(name_at(child));
                parse_fields(child, &mut config.fields, diags);
            }
            _ => unknown(child, "access-log", ACCESS_LOG_KEYS, &[], diags),
        }
    }
    if let Some(at) = format_at {
        match Format::parse(&config.format, config.include_trace_id) {
            Err(e) => diags.error(at, "format", e),
            Ok(_) if Format::is_unknown_name(&config.format) => diags.warn(
                at,
                "format",
                format!(
                    "unknown access-log format {:?}: written as \"json\", as upstream Zentinel \
                     does (formats: \"json\", \"combined\" (also \"common\", \"clf\"), or a \
                     template with $variables)",
                    config.format
                ),
            ),
            Ok(Format::Template(_)) => {
                if let Some(at) = fields_at {
                    diags.warn(
                        at,
                        "fields",
                        "`fields` only chooses the keys of the \"json\" format; this log's format \
                         does not use it (as upstream)",
                    );
                }
            }
            Ok(Format::Json) => {}
        }
    }
    (enabled && diags.error_count() == errors_before).then_some(config)
}

/// `fields { timestamp #true; user-agent #false; ... }`: each of upstream's fields on or off.
fn parse_fields(node: &KdlNode, fields: &mut AccessLogFields, diags: &mut Diagnostics<'_>) {
    let mut seen = Seen::default();
    for child in block(node, diags) {
        if FIELD_KEYS.contains(&name(child)) && !seen.check(child, diags) {
            continue;
        }
        let slot = match name(child) {
            "timestamp" => &mut fields.timestamp,
            "trace-id" => &mut fields.trace_id,
            "method" => &mut fields.method,
            "path" => &mut fields.path,
            "query" => &mut fields.query,
            "status" => &mut fields.status,
            "latency-ms" => &mut fields.latency_ms,
            "body-bytes-sent" => &mut fields.body_bytes_sent,
            "upstream-addr" => &mut fields.upstream_addr,
            "connection-reused" => &mut fields.connection_reused,
            "rate-limit-hit" => &mut fields.rate_limit_hit,
            "geo-country" => &mut fields.geo_country,
            "user-agent" => &mut fields.user_agent,
            "referer" => &mut fields.referer,
            "client-ip" => &mut fields.client_ip,
            _ => {
                unknown_listing(child, "fields", FIELD_KEYS, &[], diags);
                continue;
            }
        };
        if let Some(on) = leaf_bool(child, diags) {
            *slot = on;
        }
    }
}

/// `sample-rate 0.25`: a number from 0 to 1, kept in millionths.
fn sample_rate(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Option<u32> {
    let entry = single_arg(node, diags)?;
    let value = match entry.value() {
        KdlValue::Integer(i) => Some(*i as f64),
        KdlValue::Float(f) => Some(*f),
        _ => None,
    };
    match value {
        Some(v) if (0.0..=1.0).contains(&v) => Some((v * f64::from(SAMPLE_ALL)).round() as u32),
        _ => {
            diags.error(
                entry.span().offset(),
                "sample-rate",
                format!(
                    "`sample-rate` must be a number from 0.0 (only what `sample-errors-always` \
                     keeps) to 1.0 (every request), found {}",
                    describe(entry.value())
                ),
            );
            None
        }
    }
}

/// `buffer-size 8192`: bytes, 0 (no buffering) to 64 MiB.
fn buffer_size(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Option<u32> {
    leaf_int(node, 0, MAX_BUFFER_SIZE, diags).and_then(|v| u32::try_from(v).ok())
}

/// `error-log { enabled; file; level; buffer-size }`: warnings and errors (or errors only,
/// `level "error"`) appended to `file` by the master and every worker. Unlike upstream, nothing is
/// written without this block (upstream defaults to /var/log/zentinel/error.log even then).
pub(super) fn parse_error_log(
    node: &KdlNode,
    diags: &mut Diagnostics<'_>,
) -> Option<crate::logging::ErrorLog> {
    let errors_before = diags.error_count();
    let mut seen = Seen::default();
    let mut enabled = true;
    let mut log = crate::logging::ErrorLog {
        file: DEFAULT_ERROR_LOG_FILE.to_owned(),
        errors_only: false,
        buffer_size: DEFAULT_LOG_BUFFER_SIZE as usize,
    };
    for child in block(node, diags) {
        if ERROR_LOG_KEYS.contains(&name(child)) && !seen.check(child, diags) {
            continue;
        }
        match name(child) {
            "enabled" => {
                if let Some(b) = leaf_bool(child, diags) {
                    enabled = b;
                }
            }
            "file" => {
                if let Some(path) = log_file(child, "error-log", diags) {
                    log.file = path;
                }
            }
            "level" => match leaf_string(child, diags) {
                Some((level, _)) if level == "error" => log.errors_only = true,
                Some((level, _)) if level == "warn" || level == "warning" => {
                    log.errors_only = false;
                }
                // Upstream takes any other level as "warn".
                Some((level, at)) => {
                    log.errors_only = false;
                    diags.warn(
                        at,
                        "level",
                        format!(
                            "error-log level {level:?} logs warnings and errors, like \"warn\" \
                             (as upstream Zentinel); the levels are \"warn\" and \"error\""
                        ),
                    );
                }
                None => {}
            },
            "buffer-size" => {
                if let Some(size) = buffer_size(child, diags) {
                    log.buffer_size = size as usize;
                }
            }
            _ => unknown(child, "error-log", ERROR_LOG_KEYS, &[], diags),
        }
    }
    (enabled && diags.error_count() == errors_before).then_some(log)
}

/// The `file` of an access or error log: an absolute path (workers open it themselves and may
/// not share the master's working directory).
fn log_file(node: &KdlNode, log: &str, diags: &mut Diagnostics<'_>) -> Option<String> {
    let (path, at) = leaf_string(node, diags)?;
    if path.starts_with('/') {
        return Some(path);
    }
    diags.error(
        at,
        "file",
        format!(
            "{log} file {path:?} must be an absolute path (workers may not share the master's \
             working directory)"
        ),
    );
    None
}
