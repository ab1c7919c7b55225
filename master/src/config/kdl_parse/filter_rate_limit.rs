//! A `rate-limit` filter: `max-rps`, `burst`, `key`, `on-limit`, `status-code`,
//! `limit-message`, `max-delay-ms`, `max-keys` and the `backend` with its `redis-*` keys, as
//! upstream spells them. Upstream falls back to defaults on an unknown `key` or `on-limit`
//! value and ignores a misspelt `redis-*` key; here each is an error. `backend "memcached"` is
//! "not supported yet".

use zentinel_protocol::config::{
    RateLimitAction, RateLimitBackend, RateLimitFilter, RedisBackend, RedisFailureMode,
};

use super::filters::{filter_keys, quoted};
use super::policies::parse_rate_key;
use super::*;

pub(super) const RATE_LIMIT_FILTER_KEYS: &[&str] = &[
    "type",
    "max-rps",
    "burst",
    "key",
    "on-limit",
    "status-code",
    "limit-message",
    "message",
    "max-delay-ms",
    "max-keys",
    "backend",
    "redis-url",
    "redis-prefix",
    "redis-pool-size",
    "redis-timeout-ms",
    "redis-fallback",
    "redis-fallback-local",
    "failure-mode",
    "memcached-url",
    "memcached-prefix",
    "memcached-pool-size",
    "memcached-timeout-ms",
    "memcached-fallback",
    "memcached-fallback-local",
    "memcached-ttl",
    "memcached-ttl-secs",
];
const ACTIONS: &[(&str, RateLimitAction)] = &[
    ("reject", RateLimitAction::Reject),
    ("delay", RateLimitAction::Delay),
    ("log-only", RateLimitAction::LogOnly),
];
const BACKENDS: &[&str] = &["local", "redis"];
/// The most keys one filter may track (a slot is 16 bytes: 1 GiB of table at most).
const MAX_KEYS: u64 = 1 << 26;

pub(super) fn parse_rate_limit_filter(
    node: &KdlNode,
    diags: &mut Diagnostics<'_>,
) -> Option<RateLimitFilter> {
    let children = filter_keys(node, "rate-limit", RATE_LIMIT_FILTER_KEYS, &[], diags);
    let mut filter = RateLimitFilter::default();
    let mut redis = RedisBackend::default();
    let mut backend: Option<(String, usize)> = None;
    let mut redis_keys: Vec<&KdlNode> = Vec::new();
    let mut message_at: Option<usize> = None;
    let mut fallback_at: Option<usize> = None;
    for child in children {
        match name(child) {
            "max-rps" => filter.max_rps = leaf_u32(child, 1, 100_000_000, diags).unwrap_or(100),
            "burst" => filter.burst = leaf_u32(child, 1, 100_000_000, diags).unwrap_or(10),
            "key" => {
                if let Some(k) = parse_rate_key(child, diags) {
                    filter.key = k;
                }
            }
            "on-limit" => {
                if let Some((text, at)) = leaf_string(child, diags) {
                    match ACTIONS.iter().find(|(n, _)| *n == text) {
                        Some((_, a)) => filter.on_limit = *a,
                        None => diags.error(
                            at,
                            "on-limit",
                            format!(
                                "unknown on-limit {text:?}{}: expected \"reject\", \"delay\" or \
                                 \"log-only\"",
                                did_you_mean(&text, ACTIONS.iter().map(|(n, _)| *n))
                            ),
                        ),
                    }
                }
            }
            "status-code" => {
                filter.status_code = leaf_int(child, 400, 599, diags)
                    .and_then(|s| u16::try_from(s).ok())
                    .unwrap_or(429)
            }
            key @ ("limit-message" | "message") => {
                if let Some(first) = message_at {
                    let line = diags.line_of(first);
                    diags.error(
                        name_at(child),
                        key,
                        format!(
                            "`limit-message` and `message` are one setting (already set at line \
                             {line})"
                        ),
                    );
                    continue;
                }
                message_at = Some(name_at(child));
                filter.limit_message = leaf_string(child, diags).map(|(m, _)| m);
            }
            "max-delay-ms" => {
                filter.max_delay_ms = leaf_int(child, 0, 3_600_000, diags).unwrap_or(5000)
            }
            "max-keys" => filter.max_keys = leaf_int(child, 1, MAX_KEYS, diags).unwrap_or(100_000),
            "backend" => backend = leaf_string(child, diags),
            "redis-url" => {
                redis_keys.push(child);
                if let Some((url, at)) = leaf_string(child, diags) {
                    if url.starts_with("redis://") {
                        redis.url = url;
                    } else {
                        diags.error(
                            at,
                            "redis-url",
                            format!(
                                "invalid redis-url {url:?}: expected \"redis://host:port\" \
                                 (optionally with /db)"
                            ),
                        );
                    }
                }
            }
            "redis-prefix" => {
                redis_keys.push(child);
                if let Some((prefix, _)) = leaf_string(child, diags) {
                    redis.key_prefix = prefix;
                }
            }
            "redis-pool-size" => {
                redis_keys.push(child);
                redis.pool_size = leaf_u32(child, 1, 1024, diags).unwrap_or(10);
            }
            "redis-timeout-ms" => {
                redis_keys.push(child);
                redis.timeout_ms = leaf_int(child, 1, 60_000, diags).unwrap_or(50);
            }
            key @ ("redis-fallback" | "redis-fallback-local" | "failure-mode") => {
                redis_keys.push(child);
                if let Some(first) = fallback_at {
                    let line = diags.line_of(first);
                    diags.error(
                        name_at(child),
                        key,
                        format!(
                            "`redis-fallback`, `redis-fallback-local` and `failure-mode` are one \
                             setting (already set at line {line})"
                        ),
                    );
                    continue;
                }
                fallback_at = Some(name_at(child));
                if let Some(mode) = parse_failure_mode(child, diags) {
                    redis.failure_mode = mode;
                }
            }
            key if key.starts_with("memcached-") => diags.error(
                name_at(child),
                key,
                format!("`{key}` is not supported yet (the memcached backend is not)"),
            ),
            _ => {}
        }
    }
    filter.backend = match backend {
        None => RateLimitBackend::Local,
        Some((b, _)) if b == "local" => RateLimitBackend::Local,
        Some((b, _)) if b == "redis" => RateLimitBackend::Redis(redis),
        Some((b, at)) if b == "memcached" || b == "memcache" => {
            diags.error(
                at,
                "backend",
                format!(
                    "backend {b:?} is not supported yet (this build has {})",
                    quoted(BACKENDS)
                ),
            );
            RateLimitBackend::Local
        }
        Some((b, at)) => {
            diags.error(
                at,
                "backend",
                format!(
                    "unknown rate-limit backend {b:?}{}: expected {}",
                    did_you_mean(&b, BACKENDS.iter().copied()),
                    quoted(BACKENDS)
                ),
            );
            RateLimitBackend::Local
        }
    };
    if !matches!(filter.backend, RateLimitBackend::Redis(_)) {
        for key in redis_keys {
            diags.warn(
                name_at(key),
                name(key),
                format!(
                    "`{}` has no effect: this filter's backend is \"local\" (add `backend \
                     \"redis\"`)",
                    name(key)
                ),
            );
        }
    }
    Some(filter)
}

/// `redis-fallback #true|#false` (upstream's key; its examples write `redis-fallback-local`)
/// or `failure-mode "open"|"closed"`.
fn parse_failure_mode(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Option<RedisFailureMode> {
    if name(node) == "failure-mode" {
        let (text, at) = leaf_string(node, diags)?;
        return match text.as_str() {
            "open" => Some(RedisFailureMode::Open),
            "closed" => Some(RedisFailureMode::Closed),
            "local" | "fallback-local" => Some(RedisFailureMode::FallbackLocal),
            _ => {
                diags.error(
                    at,
                    "failure-mode",
                    format!(
                        "unknown failure-mode {text:?}: expected \"open\", \"closed\" or \
                         \"local\" (the instance's own limit stands in)"
                    ),
                );
                None
            }
        };
    }
    // Upstream: with the fallback off, requests pass while Redis fails (fail open).
    leaf_bool(node, diags).map(|on| {
        if on {
            RedisFailureMode::FallbackLocal
        } else {
            RedisFailureMode::Open
        }
    })
}
