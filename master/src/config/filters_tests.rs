//! The top-level `filters` block and a route's `filters` references: upstream's spellings and
//! defaults, and located errors where upstream silently falls back.

use super::routes_tests::{doc, full, messages};
use zentinel_protocol::config::*;

/// A document with `filters { <defs> }` and a route `r` naming `refs`.
fn source(defs: &str, refs: &str) -> String {
    let routes = format!(
        "    route \"r\" {{\n        matches {{ path-prefix \"/old\"; }}\n        \
         static-response status=200\n        filters {refs}\n    }}\n"
    );
    format!("{}filters {{\n{defs}}}\n", doc(&routes))
}

fn filters(defs: &str, refs: &str) -> (Vec<FilterConfig>, Vec<String>) {
    let config = full(&source(defs, refs)).unwrap_or_else(|d| panic!("{}", messages(&d)));
    let refs = config.proxy.routes[0]
        .extras
        .as_ref()
        .map(|e| e.filters.clone())
        .unwrap_or_default();
    (config.proxy.filters, refs)
}

fn error_text(defs: &str, refs: &str) -> String {
    match full(&source(defs, refs)) {
        Ok(_) => panic!("expected an error for {defs}"),
        Err(d) => messages(&d),
    }
}

#[test]
fn upstreams_examples_parse_with_their_defaults() {
    let (defs, refs) = filters(
        r#"    filter "public-cors" { type "cors"; }
    filter "api-rate-limit" {
        type "rate-limit"
        max-rps 100
        burst 200
        key "client-ip"
        on-limit "reject"
        backend "local"
    }
    filter "redis-rate-limit" {
        type "rate-limit"
        max-rps 100
        backend "redis"
        redis-url "redis://127.0.0.1:6379"
        redis-prefix "zentinel:ratelimit:"
        redis-pool-size 10
        redis-timeout-ms 50
        redis-fallback-local #true
    }
"#,
        r#""public-cors" "api-rate-limit" "redis-rate-limit""#,
    );
    assert_eq!(refs, ["public-cors", "api-rate-limit", "redis-rate-limit"]);
    assert_eq!(defs[0].kind, FilterKind::Cors(CorsFilter::default()));
    let FilterKind::RateLimit(rl) = &defs[1].kind else {
        panic!("{:?}", defs[1]);
    };
    assert_eq!((rl.max_rps, rl.burst, rl.status_code), (100, 200, 429));
    assert_eq!(rl.backend, RateLimitBackend::Local);
    assert_eq!(rl.max_keys, 100_000);
    let FilterKind::RateLimit(redis) = &defs[2].kind else {
        panic!("{:?}", defs[2]);
    };
    assert_eq!(redis.burst, 10, "upstream's default burst");
    assert_eq!(
        redis.backend,
        RateLimitBackend::Redis(RedisBackend::default())
    );
}

#[test]
fn every_type_reads_its_keys() {
    let (defs, _) = filters(
        r#"    filter "h" {
        type "headers"
        phase "both"
        set { X-A "1"; }
        add { X-B "2"; }
        remove "X-C"
        rename { X-D "X-E"; }
    }
    filter "c" {
        type "cors"
        allowed-origins "https://app.example.com" "https://*.example.org"
        allowed-methods "GET, POST"
        allowed-headers "Content-Type" "Authorization"
        exposed-headers "X-Total"
        allow-credentials #true
        max-age-secs 600
    }
    filter "rd" {
        type "redirect"
        status-code 301
        scheme "https"
        hostname "example.com"
        port 8443
        replace-prefix-match "/new"
    }
    filter "rw" { type "url-rewrite"; hostname "internal"; replace-full-path "/v2/$1"; }
    filter "t" { type "timeout"; upstream-timeout-secs 5; connect-timeout-secs 2; }
    filter "l" { type "log"; log-request #false; level "debug"; }
    filter "rl" {
        type "rate-limit"
        max-rps 5
        key "header:X-Api-Key"
        on-limit "delay"
        max-delay-ms 800
        max-keys 1000
        status-code 503
        limit-message "slow down"
    }
"#,
        r#""h""#,
    );
    let FilterKind::Headers(h) = &defs[0].kind else {
        panic!()
    };
    assert_eq!(h.phase, FilterPhase::Both);
    assert_eq!(h.mods.set, [("X-A".to_owned(), "1".to_owned())]);
    assert_eq!(h.mods.remove, ["X-C"]);
    let FilterKind::Cors(c) = &defs[1].kind else {
        panic!()
    };
    assert_eq!(c.allowed_origins.len(), 2);
    assert_eq!(c.allowed_methods, ["GET", "POST"]);
    assert_eq!(c.allowed_headers, ["Content-Type", "Authorization"]);
    assert!(c.allow_credentials);
    assert_eq!(c.max_age_secs, 600);
    assert_eq!(
        defs[2].kind,
        FilterKind::Redirect(RedirectFilter {
            status_code: 301,
            scheme: Some("https".into()),
            hostname: Some("example.com".into()),
            port: Some(8443),
            path: Some(PathModifier::ReplacePrefixMatch("/new".into())),
        })
    );
    assert_eq!(
        defs[3].kind,
        FilterKind::UrlRewrite(UrlRewriteFilter {
            hostname: Some("internal".into()),
            path: Some(PathModifier::ReplaceFullPath("/v2/$1".into())),
        })
    );
    let FilterKind::Timeout(t) = &defs[4].kind else {
        panic!()
    };
    assert_eq!(
        (
            t.upstream_timeout_secs,
            t.connect_timeout_secs,
            t.request_timeout_secs
        ),
        (Some(5), Some(2), None)
    );
    let FilterKind::Log(l) = &defs[5].kind else {
        panic!()
    };
    assert!(!l.log_request && l.log_response);
    assert_eq!(l.level, LogLevel::Debug);
    let FilterKind::RateLimit(rl) = &defs[6].kind else {
        panic!()
    };
    assert_eq!(rl.key, RateLimitKey::Header("x-api-key".into()));
    assert_eq!(rl.on_limit, RateLimitAction::Delay);
    assert_eq!(
        (rl.max_delay_ms, rl.max_keys, rl.status_code),
        (800, 1000, 503)
    );
    assert_eq!(rl.limit_message.as_deref(), Some("slow down"));
}

#[test]
fn compress_reads_its_keys_with_upstreams_defaults() {
    let (defs, refs) = filters(
        r#"    filter "plain" { type "compress"; }
    filter "gz" {
        type "compress"
        algorithms "zstd, br" "gzip" "brotli"
        min-size 256
        content-types "text/" "Application/JSON"
        level 9
    }
"#,
        r#""gz" "plain""#,
    );
    assert_eq!(refs, ["gz", "plain"]);
    assert_eq!(
        defs[0].kind,
        FilterKind::Compress(CompressFilter::default())
    );
    assert_eq!(
        defs[1].kind,
        FilterKind::Compress(CompressFilter {
            // Order kept (the server's preference), repeats dropped.
            algorithms: vec![
                CompressionAlgorithm::Zstd,
                CompressionAlgorithm::Brotli,
                CompressionAlgorithm::Gzip,
            ],
            min_size: 256,
            content_types: vec!["text/".into(), "application/json".into()],
            level: 9,
        })
    );
    for (defs, needle) in [
        (
            r#"    filter "x" { type "compress"; algorithms "gzip" "lz4"; }"#,
            "unknown compression algorithm \"lz4\"",
        ),
        (
            r#"    filter "x" { type "compress"; level 12; }"#,
            "must be at most 11, found 12",
        ),
        (
            r#"    filter "x" { type "compress"; min-sise 5; }"#,
            "did you mean `min-size`",
        ),
    ] {
        let text = error_text(&format!("{defs}\n"), "\"x\"");
        assert!(text.contains(needle), "{defs}: {text}");
        assert!(text.contains("test.kdl:"), "located: {text}");
    }
}

#[test]
fn upstreams_silent_fallbacks_are_errors_here() {
    for (defs, needle) in [
        (
            r#"    filter "x" { type "rate-limit"; on-limit "throttle"; }"#,
            "unknown on-limit \"throttle\"",
        ),
        (
            r#"    filter "x" { type "rate-limit"; key "cookie"; }"#,
            "unknown rate-limit key \"cookie\"",
        ),
        (
            r#"    filter "x" { type "rate-limit"; max-rsp 5; }"#,
            "did you mean `max-rps`",
        ),
        (
            r#"    filter "x" { type "cors"; allowed-origin "*"; }"#,
            "did you mean `allowed-origins`",
        ),
        (
            r#"    filter "x" { type "redirect"; status-code 200; }"#,
            "must be at least 300",
        ),
        (
            r#"    filter "x" { type "headers"; phase "upstream"; }"#,
            "unknown phase \"upstream\"",
        ),
        (
            r#"    filter "x" { type "gzip"; }"#,
            "unknown filter type \"gzip\"",
        ),
        (r#"    filter "x" { max-rps 5; }"#, "filter has no `type`"),
        (
            r#"    filter "x" { type "geo"; database-path "/x.mmdb"; }"#,
            "filter type \"geo\" is not supported yet",
        ),
        (
            r#"    filter "x" { type "rate-limit"; backend "memcached"; }"#,
            "backend \"memcached\" is not supported yet",
        ),
        (
            r#"    filter "x" { type "url-rewrite"; replace-full-path "/a"; replace-prefix-match "/b"; }"#,
            "exclude each other",
        ),
    ] {
        let text = error_text(&format!("{defs}\n"), "\"x\"");
        assert!(text.contains(needle), "{defs}: {text}");
        assert!(text.contains("test.kdl:"), "located: {text}");
    }
}

#[test]
fn references_must_name_a_defined_filter() {
    let text = error_text("    filter \"cors\" { type \"cors\"; }\n", "\"corz\"");
    assert!(
        text.contains("names filter `corz`, which is not defined") && text.contains("`cors`"),
        "{text}"
    );
    let text = error_text("    filter \"a\" { type \"cors\"; }\n", "\"a\" \"a\"");
    assert!(text.contains("listed twice"), "{text}");
    let text = error_text(
        "    filter \"a\" { type \"cors\"; }\n    filter \"a\" { type \"log\"; }\n",
        "\"a\"",
    );
    assert!(text.contains("duplicate filter name `a`"), "{text}");
}

/// A filter of a type not supported yet is reported once, where its type is: a route naming it
/// is not also told the filter is undefined (upstream's cors-headers example names its
/// `agent` filter from a route).
#[test]
fn a_route_naming_an_unsupported_filter_gets_one_error() {
    let text = error_text(
        "    filter \"auth\" { type \"agent\"; agent \"auth\"; }\n    filter \"c\" { type \"cors\"; }\n",
        "\"c\" \"auth\"",
    );
    assert!(
        text.contains("filter type \"agent\" is not supported yet"),
        "{text}"
    );
    assert!(!text.contains("not defined"), "{text}");
    // A name defined nowhere is still an error.
    let text = error_text(
        "    filter \"auth\" { type \"agent\"; agent \"auth\"; }\n",
        "\"auth\" \"nope\"",
    );
    assert!(
        text.contains("names filter `nope`, which is not defined"),
        "{text}"
    );
}

#[test]
fn log_body_is_accepted_with_a_warning() {
    let config = full(&source(
        "    filter \"l\" { type \"log\"; log-body #true; }\n",
        "\"l\"",
    ))
    .unwrap_or_else(|d| panic!("{}", messages(&d)));
    let w = messages(&config.warnings);
    assert!(w.contains("`log-body` is accepted without effect"), "{w}");
}
