//! Per-thread figures, their merge, and every output format (summary, final line, JSON, CSV).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::engine::new_histogram;
use super::{Config, Mode};
use crate::failure::{Failure, FailureKind};

/// Failures kept in detail per thread (all of them are counted).
const KEPT_PER_THREAD: usize = 20;
/// Failures shown in detail in the summary.
const SHOWN: usize = 10;
/// Width of a timeline bucket.
pub const BUCKET_MS: u64 = 100;

/// What one event-loop thread saw.
pub(super) struct ThreadStats {
    started: Instant,
    pub ok: u64,
    pub counts: [u64; FailureKind::ALL.len()],
    pub failures: Vec<Failure>,
    pub connections: u64,
    pub closed_by_server: u64,
    /// TLS handshakes completed, and how many of them resumed a session.
    pub handshakes: u64,
    pub resumed: u64,
    /// Each protocol version, cipher suite and key exchange group negotiated, once.
    pub negotiated: Vec<String>,
    pub histogram: Histogram<u64>,
    /// `[ok, failed]` per 100 ms since the start, by completion time.
    pub timeline: Vec<[u64; 2]>,
    pub unsent: u64,
    pub finished: Instant,
    pub error: Option<String>,
}

impl ThreadStats {
    pub fn new(started: Instant) -> ThreadStats {
        ThreadStats {
            started,
            ok: 0,
            counts: [0; FailureKind::ALL.len()],
            failures: Vec::with_capacity(KEPT_PER_THREAD),
            connections: 0,
            closed_by_server: 0,
            handshakes: 0,
            resumed: 0,
            negotiated: Vec::new(),
            histogram: new_histogram(),
            timeline: Vec::with_capacity(1024),
            unsent: 0,
            finished: started,
            error: None,
        }
    }

    fn bucket(&mut self, now: Instant) -> &mut [u64; 2] {
        let i =
            (now.saturating_duration_since(self.started).as_millis() as u64 / BUCKET_MS) as usize;
        if i >= self.timeline.len() {
            self.timeline.resize(i + 1, [0, 0]);
        }
        &mut self.timeline[i]
    }

    pub fn record_ok(&mut self, now: Instant, latency_us: u64) {
        self.ok += 1;
        self.histogram.saturating_record(latency_us.max(1));
        self.bucket(now)[0] += 1;
    }

    pub fn record_handshake(&mut self, resumed: bool, negotiated: &str) {
        self.handshakes += 1;
        self.resumed += u64::from(resumed);
        if !self.negotiated.iter().any(|n| n == negotiated) {
            self.negotiated.push(negotiated.to_owned());
        }
    }

    pub fn record_failure(
        &mut self,
        now: Instant,
        kind: FailureKind,
        failure: impl FnOnce() -> Failure,
    ) {
        self.counts[kind.index()] += 1;
        self.bucket(now)[1] += 1;
        if self.failures.len() < KEPT_PER_THREAD {
            self.failures.push(failure());
        }
    }
}

/// The outcome of a `zentinel-load` run.
pub struct Report {
    /// Verified successes.
    pub ok: u64,
    /// Failures by kind (every kind present).
    pub counts: BTreeMap<FailureKind, u64>,
    /// The first failures in detail, by time.
    pub failures: Vec<Failure>,
    /// TCP connections established.
    pub connections: u64,
    /// Keep-alive connections the server ended after a response with `Connection: close`.
    pub closed_by_server: u64,
    /// A `--tls` run: the TLS figures below are reported.
    pub tls: bool,
    /// TLS handshakes completed; of them, resumed sessions (the rest were full handshakes).
    pub handshakes: u64,
    pub resumed: u64,
    /// Protocol versions, cipher suites and key exchange groups negotiated
    /// (`TLSv1_3 TLS13_AES_128_GCM_SHA256 X25519`).
    pub negotiated: Vec<String>,
    pub elapsed: Duration,
    /// Latency of the successes, in microseconds.
    pub histogram: Histogram<u64>,
    /// `(ok, failed)` per 100 ms.
    pub timeline: Vec<(u64, u64)>,
    pub start_epoch_ms: u64,
    /// Open loop: requests that were due before the end but found no idle connection.
    pub unsent: u64,
    /// Stopped by SIGINT/SIGTERM.
    pub interrupted: bool,
    /// Errors of the generator itself (not of requests).
    pub errors: Vec<String>,
}

impl Report {
    pub(super) fn merge(
        threads: Vec<ThreadStats>,
        started: Instant,
        start_epoch_ms: u64,
        interrupted: bool,
        tls: bool,
    ) -> Report {
        let mut counts = [0u64; FailureKind::ALL.len()];
        let mut report = Report {
            ok: 0,
            counts: BTreeMap::new(),
            failures: Vec::new(),
            connections: 0,
            closed_by_server: 0,
            tls,
            handshakes: 0,
            resumed: 0,
            negotiated: Vec::new(),
            elapsed: Duration::ZERO,
            histogram: new_histogram(),
            timeline: Vec::new(),
            start_epoch_ms,
            unsent: 0,
            interrupted,
            errors: Vec::new(),
        };
        let mut finished = started;
        for t in threads {
            report.ok += t.ok;
            for (sum, n) in counts.iter_mut().zip(t.counts) {
                *sum += n;
            }
            report.failures.extend(t.failures);
            report.connections += t.connections;
            report.closed_by_server += t.closed_by_server;
            report.handshakes += t.handshakes;
            report.resumed += t.resumed;
            for n in t.negotiated {
                if !report.negotiated.contains(&n) {
                    report.negotiated.push(n);
                }
            }
            // Same bounds on both sides: cannot fail.
            let _ = report.histogram.add(&t.histogram);
            if report.timeline.len() < t.timeline.len() {
                report.timeline.resize(t.timeline.len(), (0, 0));
            }
            for (sum, [ok, failed]) in report.timeline.iter_mut().zip(t.timeline) {
                sum.0 += ok;
                sum.1 += failed;
            }
            report.unsent += t.unsent;
            report.errors.extend(t.error);
            finished = finished.max(t.finished);
        }
        report.counts = FailureKind::ALL
            .iter()
            .map(|&k| (k, counts[k.index()]))
            .collect();
        report.failures.sort_by_key(|f| f.at);
        report.negotiated.sort();
        report.elapsed = finished.saturating_duration_since(started);
        report
    }

    pub fn failed(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Requests made: successes plus failures.
    pub fn requests(&self) -> u64 {
        self.ok + self.failed()
    }

    pub fn rps(&self) -> u64 {
        self.per_second(self.requests())
    }

    /// TLS handshakes per second (a connection-per-request run: new connections per second).
    pub fn handshakes_per_second(&self) -> u64 {
        self.per_second(self.handshakes)
    }

    fn per_second(&self, n: u64) -> u64 {
        let secs = self.elapsed.as_secs_f64();
        if secs <= 0.0 {
            return 0;
        }
        (n as f64 / secs).round() as u64
    }

    /// Latency of the successes at quantile `q` (0..=1), in ms; 0 without a success.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.histogram.is_empty() {
            return 0.0;
        }
        self.histogram.value_at_quantile(q) as f64 / 1000.0
    }

    pub fn max_ms(&self) -> f64 {
        if self.histogram.is_empty() {
            return 0.0;
        }
        self.histogram.max() as f64 / 1000.0
    }

    /// 0: no failure; 1: failures; 3: no request made at all, or the generator itself failed.
    pub fn exit_code(&self) -> u8 {
        if self.failed() > 0 {
            1
        } else if self.requests() == 0 || !self.errors.is_empty() {
            3
        } else {
            0
        }
    }

    /// `requests=N failed=N rps=N p50_ms=X p99_ms=X max_ms=X`, and with `--tls`
    /// ` handshakes=N resumed=N hps=N` (handshakes completed, resumed ones, per second).
    pub fn final_line(&self) -> String {
        let mut line = format!(
            "requests={} failed={} rps={} p50_ms={:.2} p99_ms={:.2} max_ms={:.2}",
            self.requests(),
            self.failed(),
            self.rps(),
            self.quantile_ms(0.50),
            self.quantile_ms(0.99),
            self.max_ms()
        );
        if self.tls {
            let _ = write!(
                line,
                " handshakes={} resumed={} hps={}",
                self.handshakes,
                self.resumed,
                self.handshakes_per_second()
            );
        }
        line
    }

    /// The human summary (without the final line).
    pub fn summary(&self, config: &Config) -> String {
        let mut out = String::new();
        let limit = match (config.duration, config.requests) {
            (Some(d), Some(n)) => format!("{:.2}s or {n} requests", d.as_secs_f64()),
            (Some(d), None) => format!("{:.2}s", d.as_secs_f64()),
            (None, Some(n)) => format!("{n} requests"),
            (None, None) => "no limit".to_owned(),
        };
        let lp = match config.rate {
            Some(r) => format!("open loop at {r} req/s"),
            None => "closed loop".to_owned(),
        };
        let mode = match config.mode {
            Mode::KeepAlive => "keep-alive",
            Mode::Close => "connection per request",
        };
        let _ = writeln!(
            out,
            "zentinel-load: {} -> {} (Host: {}), {} connections on {} threads, {mode}, {lp}, {limit}",
            config.describe_request(),
            config.addr,
            config.host,
            config.connections,
            config.threads
        );
        if let Some(tls) = &config.tls {
            let _ = writeln!(out, "{}", tls.describe());
        }
        if self.interrupted {
            let _ = writeln!(out, "interrupted by a signal: stopped early");
        }
        for e in &self.errors {
            let _ = writeln!(out, "generator error: {e}");
        }
        let _ = writeln!(
            out,
            "requests: {} in {:.3}s ({} ok, {} failed), {} req/s",
            self.requests(),
            self.elapsed.as_secs_f64(),
            self.ok,
            self.failed(),
            self.rps()
        );
        let _ = writeln!(
            out,
            "connections: {} opened, {} ended by the server with `Connection: close`",
            self.connections, self.closed_by_server
        );
        if self.tls {
            let negotiated = if self.negotiated.is_empty() {
                "none".to_owned()
            } else {
                self.negotiated.join(", ")
            };
            let _ = writeln!(
                out,
                "tls: {} handshakes ({} full, {} resumed), {}/s; negotiated: {negotiated}",
                self.handshakes,
                self.handshakes - self.resumed,
                self.resumed,
                self.handshakes_per_second()
            );
        }
        if self.unsent > 0 {
            let _ = writeln!(
                out,
                "unsent: {} requests were due but found no idle connection before the end",
                self.unsent
            );
        }
        if self.failed() > 0 {
            let _ = writeln!(out, "failures by kind:");
            for (kind, n) in &self.counts {
                if *n > 0 {
                    let _ = writeln!(out, "  {kind}: {n}");
                }
            }
            let _ = writeln!(out, "first failures:");
            for f in self.failures.iter().take(SHOWN) {
                let _ = writeln!(out, "  {f}");
            }
        } else {
            let _ = writeln!(out, "failures: none");
        }
        let _ = writeln!(
            out,
            "latency of successes (ms): p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  mean {:.2}",
            self.quantile_ms(0.50),
            self.quantile_ms(0.90),
            self.quantile_ms(0.99),
            self.quantile_ms(0.999),
            self.max_ms(),
            if self.histogram.is_empty() { 0.0 } else { self.histogram.mean() / 1000.0 }
        );
        let per = if config.timeline_full { 1 } else { 10 };
        let _ = writeln!(
            out,
            "timeline ({}, by completion time):",
            if per == 1 { "per 100 ms" } else { "per second" }
        );
        for (i, group) in self.timeline.chunks(per).enumerate() {
            let (ok, failed) = group.iter().fold((0, 0), |(a, b), (o, f)| (a + o, b + f));
            let t_ms = i as u64 * per as u64 * BUCKET_MS;
            let _ = writeln!(
                out,
                "  t={:>7.1}s ok={ok:<8} failed={failed}",
                t_ms as f64 / 1000.0
            );
        }
        out
    }

    /// `t_ms,epoch_ms,ok,failed`, one row per 100 ms.
    pub fn csv(&self) -> String {
        let mut out = String::from("t_ms,epoch_ms,ok,failed\n");
        for (i, (ok, failed)) in self.timeline.iter().enumerate() {
            let t_ms = i as u64 * BUCKET_MS;
            let _ = writeln!(out, "{t_ms},{},{ok},{failed}", self.start_epoch_ms + t_ms);
        }
        out
    }

    pub fn json(&self, config: &Config) -> serde_json::Value {
        let failures: serde_json::Map<String, serde_json::Value> = self
            .counts
            .iter()
            .map(|(k, n)| (k.as_str().to_owned(), serde_json::Value::from(*n)))
            .collect();
        let round2 = |x: f64| (x * 100.0).round() / 100.0;
        serde_json::json!({
            "requests": self.requests(),
            "ok": self.ok,
            "failed": self.failed(),
            "rps": self.rps(),
            "elapsed_s": self.elapsed.as_secs_f64(),
            "p50_ms": round2(self.quantile_ms(0.50)),
            "p90_ms": round2(self.quantile_ms(0.90)),
            "p99_ms": round2(self.quantile_ms(0.99)),
            "p999_ms": round2(self.quantile_ms(0.999)),
            "max_ms": round2(self.max_ms()),
            "connections": self.connections,
            "closed_by_server": self.closed_by_server,
            "tls": self.tls.then(|| serde_json::json!({
                "handshakes": self.handshakes,
                "full": self.handshakes - self.resumed,
                "resumed": self.resumed,
                "handshakes_per_s": self.handshakes_per_second(),
                "negotiated": self.negotiated,
            })),
            "unsent": self.unsent,
            "interrupted": self.interrupted,
            "start_epoch_ms": self.start_epoch_ms,
            "failures": failures,
            "first_failures": self.failures.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
            "errors": self.errors,
            "config": {
                "addr": config.addr.to_string(),
                "host": config.host,
                "request": config.describe_request(),
                "connections": config.connections,
                "threads": config.threads,
                "mode": match config.mode { Mode::KeepAlive => "keepalive", Mode::Close => "close" },
                "rate": config.rate,
                "duration_s": config.duration.map(|d| d.as_secs_f64()),
                "requests": config.requests,
                "timeout_s": config.timeout.as_secs_f64(),
                "tls": config.tls.as_ref().map(|t| t.describe()),
            },
        })
    }
}
