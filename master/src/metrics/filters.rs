//! The filters' counters in the exposition: one series per filter (`filter="name"`) of the
//! type each family counts. They live in the filters' shared segments (`crate::filter_shm`),
//! so they count for every worker that ever used the segment, across reloads that keep the
//! filter and across binary upgrades; a filter removed or changed by a reload starts a new
//! series.

use std::fmt::Write as _;

use zentinel_protocol::filter_shm::FilterCounts;

use crate::filter_shm::FilterSample;

type Field = fn(&FilterCounts) -> u64;

/// (metric name, help, the filter type it applies to, value).
const FAMILIES: &[(&str, &str, &str, Field)] = &[
    (
        "zentinel_filter_rate_limited_total",
        "Requests refused by a rate-limit filter, over every worker.",
        "rate-limit",
        |c| c.limited,
    ),
    (
        "zentinel_filter_rate_limit_delayed_total",
        "Requests a rate-limit filter held back until their turn (on-limit delay).",
        "rate-limit",
        |c| c.delayed,
    ),
    (
        "zentinel_filter_rate_limit_logged_total",
        "Requests over a rate limit let through (on-limit log-only).",
        "rate-limit",
        |c| c.logged_only,
    ),
    (
        "zentinel_filter_rate_limit_evictions_total",
        "Live keys dropped from a rate-limit table's full probe window (max-keys too small).",
        "rate-limit",
        |c| c.evictions,
    ),
    (
        "zentinel_filter_rate_limit_backend_errors_total",
        "Rate-limit checks Redis did not answer (timeout, full queue, lost connection).",
        "rate-limit",
        |c| c.backend_errors,
    ),
    (
        "zentinel_filter_rate_limit_fallbacks_total",
        "Requests a Redis rate limit's failure mode decided while Redis failed.",
        "rate-limit",
        |c| c.fallbacks,
    ),
    (
        "zentinel_filter_cors_preflights_total",
        "CORS preflights answered by the proxy.",
        "cors",
        |c| c.preflights,
    ),
    (
        "zentinel_filter_compressed_responses_total",
        "Responses compressed by a compress filter.",
        "compress",
        |c| c.compressed,
    ),
    (
        "zentinel_filter_compress_bytes_in_total",
        "Response body bytes a compress filter read.",
        "compress",
        |c| c.compress_in,
    ),
    (
        "zentinel_filter_compress_bytes_out_total",
        "Compressed body bytes a compress filter wrote.",
        "compress",
        |c| c.compress_out,
    ),
    (
        "zentinel_filter_redirects_total",
        "Redirects answered by a redirect filter.",
        "redirect",
        |c| c.redirects,
    ),
    (
        "zentinel_filter_rewrites_total",
        "Requests whose path or host a url-rewrite filter rewrote.",
        "url-rewrite",
        |c| c.rewrites,
    ),
];

/// Append the families that have a filter of their type.
pub fn render(out: &mut String, filters: &[FilterSample]) {
    for (name, help, kind, field) in FAMILIES {
        let mut series = filters.iter().filter(|f| f.kind == *kind).peekable();
        if series.peek().is_none() {
            continue;
        }
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        for f in series {
            let _ = writeln!(
                out,
                "{name}{{filter=\"{}\"}} {}",
                escape(&f.name),
                field(&f.counts)
            );
        }
    }
}

/// A label value as the text format wants it: backslash, double quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_series_per_filter_of_the_family_type() {
        let filters = vec![
            FilterSample {
                name: "api".to_owned(),
                kind: "rate-limit",
                counts: FilterCounts {
                    limited: 7,
                    evictions: 2,
                    ..Default::default()
                },
            },
            FilterSample {
                name: "we\"ird".to_owned(),
                kind: "cors",
                counts: FilterCounts {
                    preflights: 3,
                    ..Default::default()
                },
            },
        ];
        let mut out = String::new();
        render(&mut out, &filters);
        assert!(out.contains("zentinel_filter_rate_limited_total{filter=\"api\"} 7\n"));
        assert!(out.contains("zentinel_filter_rate_limit_evictions_total{filter=\"api\"} 2\n"));
        assert!(out.contains("zentinel_filter_cors_preflights_total{filter=\"we\\\"ird\"} 3\n"));
        assert!(out.contains("# TYPE zentinel_filter_rate_limit_delayed_total counter\n"));
        // No compress or redirect filter: no such family.
        assert!(!out.contains("compress"), "{out}");
        assert!(!out.contains("redirects"), "{out}");
        assert!(
            !out.contains("cors_preflights_total{filter=\"api\"}"),
            "{out}"
        );
    }
}
