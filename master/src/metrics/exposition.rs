//! The Prometheus text exposition (format 0.0.4) of the workers' and the master's counters.

use std::fmt::Write as _;

use zentinel_protocol::messages::{Http2Refusals, WorkerCounters};
use zentinel_protocol::session_cache::CacheCounters;
use zentinel_protocol::state::{MasterMetrics, DRAIN_BUCKETS_SECONDS};

/// One live worker process as the exposition shows it.
pub struct WorkerSample<'a> {
    pub worker_id: u32,
    pub pid: i32,
    pub generation: u64,
    pub counters: &'a WorkerCounters,
    /// Its HTTP/2 refusals by kind.
    pub http2: &'a Http2Refusals,
}

/// Everything a scrape shows.
pub struct Snapshot<'a> {
    pub workers: Vec<WorkerSample<'a>>,
    pub master: &'a MasterMetrics,
    /// HTTP/2 refusals of the workers that exited under this master.
    pub retired_http2: &'a Http2Refusals,
    pub master_generation: u64,
    pub live_workers: usize,
    /// The shared TLS session cache's counters, when there is one.
    pub session_cache: Option<CacheCounters>,
    /// The counters of the running configuration's filters that keep some.
    pub filters: Vec<crate::filter_shm::FilterSample>,
}

type CacheField = fn(&CacheCounters) -> u64;

/// The shared TLS session cache's counters: (name, help, value). They live in the cache itself,
/// so they count for every worker that ever used it, across binary upgrades.
const CACHE_FAMILIES: &[(&str, &str, CacheField)] = &[
    (
        "hits_total",
        "Sessions resumed by id from the cache every worker shares.",
        |c| c.hits,
    ),
    (
        "misses_total",
        "Session ids looked up in vain (unknown, expired, evicted, or their slot busy).",
        |c| c.misses,
    ),
    ("stores_total", "Sessions stored.", |c| c.stores),
    (
        "too_large_total",
        "Sessions not stored: larger than a slot (a long client-certificate chain).",
        |c| c.too_large,
    ),
    (
        "evictions_total",
        "Live sessions overwritten by a store into their full bucket.",
        |c| c.evictions,
    ),
    (
        "contended_total",
        "Slots skipped because another worker held their lock.",
        |c| c.contended,
    ),
    ("expired_total", "Expired sessions found and erased.", |c| {
        c.expired
    }),
];

type Field = fn(&WorkerCounters) -> u64;

/// Worker counter families: (name without prefix, help, Prometheus type, value).
const WORKER_FAMILIES: &[(&str, &str, &str, Field)] = &[
    (
        "accepted_connections_total",
        "Client connections accepted.",
        "counter",
        |c| c.accepted_total,
    ),
    (
        "requests_total",
        "HTTP requests received (including rejected ones).",
        "counter",
        |c| c.requests_total,
    ),
    (
        "upstream_errors_total",
        "Upstream failures (connect refused or timed out, reset, bad response, timeout).",
        "counter",
        |c| c.upstream_errors,
    ),
    (
        "client_errors_total",
        "Client-side errors (malformed or oversized requests, clients gone mid-request).",
        "counter",
        |c| c.client_errors,
    ),
    (
        "accept_errors_total",
        "Failed accept(2) calls.",
        "counter",
        |c| c.accept_errors,
    ),
    (
        "received_bytes_total",
        "Bytes read from clients.",
        "counter",
        |c| c.bytes_in,
    ),
    (
        "sent_bytes_total",
        "Bytes written to clients.",
        "counter",
        |c| c.bytes_out,
    ),
];

const CLASSES: &[(&str, Field)] = &[
    ("1xx", |c| c.responses_1xx),
    ("2xx", |c| c.responses_2xx),
    ("3xx", |c| c.responses_3xx),
    ("4xx", |c| c.responses_4xx),
    ("5xx", |c| c.responses_5xx),
];

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The Prometheus text exposition (format 0.0.4).
pub fn render(s: &Snapshot<'_>) -> String {
    let mut out = String::with_capacity(8192);
    let total = |f: Field| -> u64 {
        s.workers.iter().fold(f(&s.master.retired), |acc, w| {
            acc.saturating_add(f(w.counters))
        })
    };
    let labels = |w: &WorkerSample<'_>| {
        format!(
            "worker=\"{}\",pid=\"{}\",generation=\"{}\"",
            w.worker_id, w.pid, w.generation
        )
    };

    // Aggregates: every worker ever run, monotonic.
    for (name, help, kind, f) in WORKER_FAMILIES {
        let full = format!("zentinel_{name}");
        header(
            &mut out,
            &full,
            &format!("{help} All workers, including exited ones."),
            kind,
        );
        let _ = writeln!(out, "{full} {}", total(*f));
    }
    header(
        &mut out,
        "zentinel_responses_total",
        "Responses sent, by status class. All workers, including exited ones.",
        "counter",
    );
    for (class, f) in CLASSES {
        let _ = writeln!(
            out,
            "zentinel_responses_total{{class=\"{class}\"}} {}",
            total(*f)
        );
    }
    header(
        &mut out,
        "zentinel_active_connections",
        "Client connections open now, over all live workers.",
        "gauge",
    );
    let active: u64 = s
        .workers
        .iter()
        .map(|w| w.counters.active_connections)
        .sum();
    let _ = writeln!(out, "zentinel_active_connections {active}");

    // Per worker process: reset when the process is replaced.
    for (name, help, kind, f) in WORKER_FAMILIES {
        let full = format!("zentinel_worker_{name}");
        header(
            &mut out,
            &full,
            &format!("{help} Per worker process (a replaced worker starts a new series)."),
            kind,
        );
        for w in &s.workers {
            let _ = writeln!(out, "{full}{{{}}} {}", labels(w), f(w.counters));
        }
    }
    header(
        &mut out,
        "zentinel_worker_responses_total",
        "Responses sent, by status class. Per worker process.",
        "counter",
    );
    for w in &s.workers {
        for (class, f) in CLASSES {
            let _ = writeln!(
                out,
                "zentinel_worker_responses_total{{{},class=\"{class}\"}} {}",
                labels(w),
                f(w.counters)
            );
        }
    }
    header(
        &mut out,
        "zentinel_worker_active_connections",
        "Client connections open now. Per worker process.",
        "gauge",
    );
    for w in &s.workers {
        let _ = writeln!(
            out,
            "zentinel_worker_active_connections{{{}}} {}",
            labels(w),
            w.counters.active_connections
        );
    }

    http2_refusals(&mut out, s, &labels);

    // Master.
    let m = s.master;
    let counters: &[(&str, &str, u64)] = &[
        (
            "zentinel_upgrades_total",
            "Binary upgrades finished (successful or not).",
            m.upgrades_total,
        ),
        (
            "zentinel_upgrades_failed_total",
            "Binary upgrades that failed (the previous binary kept or put back).",
            m.upgrades_failed,
        ),
        (
            "zentinel_reloads_total",
            "Configuration reloads finished (successful or not).",
            m.reloads_total,
        ),
        (
            "zentinel_reloads_failed_total",
            "Configuration reloads that failed (invalid file, bind error, a worker refusing or not answering).",
            m.reloads_failed,
        ),
        (
            "zentinel_worker_restarts_total",
            "Serving workers that exited unexpectedly and were restarted.",
            m.worker_restarts,
        ),
    ];
    for (name, help, value) in counters {
        header(&mut out, name, help, "counter");
        let _ = writeln!(out, "{name} {value}");
    }
    header(
        &mut out,
        "zentinel_last_upgrade_duration_seconds",
        "Duration of the last finished binary upgrade (hand-over and worker replacement); 0 before the first.",
        "gauge",
    );
    let _ = writeln!(
        out,
        "zentinel_last_upgrade_duration_seconds {}",
        seconds(m.last_upgrade_duration_ms)
    );
    header(
        &mut out,
        "zentinel_drain_duration_seconds",
        "Time retired workers took from the drain order to their exit.",
        "histogram",
    );
    for (i, bound) in DRAIN_BUCKETS_SECONDS.iter().enumerate() {
        let count = m.drain_buckets.get(i).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "zentinel_drain_duration_seconds_bucket{{le=\"{bound}\"}} {count}"
        );
    }
    let _ = writeln!(
        out,
        "zentinel_drain_duration_seconds_bucket{{le=\"+Inf\"}} {}",
        m.drains
    );
    let _ = writeln!(
        out,
        "zentinel_drain_duration_seconds_sum {}",
        seconds(m.drain_sum_ms)
    );
    let _ = writeln!(out, "zentinel_drain_duration_seconds_count {}", m.drains);
    header(
        &mut out,
        "zentinel_workers",
        "Worker processes alive (serving, starting or draining).",
        "gauge",
    );
    let _ = writeln!(out, "zentinel_workers {}", s.live_workers);
    header(
        &mut out,
        "zentinel_master_generation",
        "Master generation (incremented by each binary upgrade).",
        "gauge",
    );
    let _ = writeln!(out, "zentinel_master_generation {}", s.master_generation);
    if let Some(cache) = &s.session_cache {
        for (name, help, f) in CACHE_FAMILIES {
            let full = format!("zentinel_tls_session_cache_{name}");
            header(&mut out, &full, help, "counter");
            let _ = writeln!(out, "{full} {}", f(cache));
        }
    }
    super::filters::render(&mut out, &s.filters);
    header(
        &mut out,
        "zentinel_build_info",
        "The master's build.",
        "gauge",
    );
    let _ = writeln!(
        out,
        "zentinel_build_info{{version=\"{}\",pid=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        std::process::id()
    );
    out
}

/// HTTP/2 connections closed for abuse, by kind: the total and per worker process.
fn http2_refusals(
    out: &mut String,
    s: &Snapshot<'_>,
    labels: &dyn Fn(&WorkerSample<'_>) -> String,
) {
    let name = "zentinel_http2_refused_connections_total";
    header(
        out,
        name,
        "HTTP/2 client connections closed for abuse (GOAWAY), by kind. All workers, including \
         those that exited under this master (a binary upgrade's new master counts exited \
         workers from zero).",
        "counter",
    );
    let mut total = s.retired_http2.clone();
    for w in &s.workers {
        total.add(w.http2);
    }
    for (kind, value) in total.kinds() {
        let _ = writeln!(out, "{name}{{kind=\"{kind}\"}} {value}");
    }
    let name = "zentinel_worker_http2_refused_connections_total";
    header(
        out,
        name,
        "HTTP/2 client connections closed for abuse (GOAWAY), by kind. Per worker process.",
        "counter",
    );
    for w in &s.workers {
        for (kind, value) in w.http2.kinds() {
            let _ = writeln!(out, "{name}{{{},kind=\"{kind}\"}} {value}", labels(w));
        }
    }
}

fn seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{observe_drain, retire_counters};
    use std::time::Duration;

    #[test]
    fn exposition_has_help_type_and_totals_include_retired() {
        let mut master = MasterMetrics::default();
        let gone = WorkerCounters {
            requests_total: 5,
            responses_2xx: 4,
            ..Default::default()
        };
        retire_counters(&mut master, &gone);
        observe_drain(&mut master, Duration::from_millis(700));
        let live = WorkerCounters {
            requests_total: 7,
            responses_2xx: 7,
            active_connections: 2,
            ..Default::default()
        };
        let retired_http2 = Http2Refusals {
            ping_flood: 2,
            ..Default::default()
        };
        let live_http2 = Http2Refusals {
            ping_flood: 1,
            rapid_reset: 3,
            ..Default::default()
        };
        let text = render(&Snapshot {
            workers: vec![WorkerSample {
                worker_id: 0,
                pid: 42,
                generation: 3,
                counters: &live,
                http2: &live_http2,
            }],
            master: &master,
            retired_http2: &retired_http2,
            master_generation: 3,
            live_workers: 1,
            session_cache: Some(CacheCounters {
                hits: 9,
                ..Default::default()
            }),
            filters: vec![crate::filter_shm::FilterSample {
                name: "api".to_owned(),
                kind: "rate-limit",
                counts: Default::default(),
            }],
        });
        assert!(text.contains("zentinel_filter_rate_limited_total{filter=\"api\"} 0\n"));
        assert!(
            text.contains("zentinel_tls_session_cache_hits_total 9\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE zentinel_requests_total counter\nzentinel_requests_total 12\n"),
            "{text}"
        );
        assert!(
            text.contains("zentinel_responses_total{class=\"2xx\"} 11\n"),
            "{text}"
        );
        assert!(text.contains(
            "zentinel_worker_requests_total{worker=\"0\",pid=\"42\",generation=\"3\"} 7\n"
        ));
        assert!(text.contains("zentinel_drain_duration_seconds_bucket{le=\"0.5\"} 0\n"));
        assert!(text.contains("zentinel_drain_duration_seconds_bucket{le=\"1\"} 1\n"));
        assert!(text.contains("zentinel_drain_duration_seconds_sum 0.700\n"));
        assert!(text.contains("zentinel_http2_refused_connections_total{kind=\"ping_flood\"} 3\n"));
        assert!(text.contains("zentinel_http2_refused_connections_total{kind=\"slow_read\"} 0\n"));
        assert!(text.contains(
            "zentinel_worker_http2_refused_connections_total{worker=\"0\",pid=\"42\",generation=\"3\",kind=\"rapid_reset\"} 3\n"
        ));
        // Every sample line belongs to a family announced by HELP and TYPE.
        let mut typed = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.insert(rest.split(' ').next().unwrap().to_owned());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let family = name
                    .strip_suffix("_bucket")
                    .or_else(|| name.strip_suffix("_sum"))
                    .or_else(|| name.strip_suffix("_count"))
                    .filter(|f| typed.contains(*f))
                    .unwrap_or(name);
                assert!(typed.contains(family), "{line} has no TYPE");
            }
        }
    }
}
