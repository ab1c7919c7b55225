//! The supervisor's side of the metrics: serving scrapes from its loop, and keeping the master
//! counters (exited workers' totals, drains, restarts, reloads, upgrades).

use std::cell::Cell;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use mio::Token;
use tracing::{info, warn};
use zentinel_protocol::config::MetricsConfig;
use zentinel_protocol::state::{InheritedListener, MasterMetrics};

use super::{Role, Supervisor, WorkerProcess};
use crate::metrics::{self, MetricsServer, Snapshot, WorkerSample};

/// What a reload does to the metrics endpoint, decided (and bound) before any worker switches.
#[derive(Debug)]
pub(super) enum MetricsPlan {
    /// Same address (or none before and after): at most the path changes.
    Keep(Option<MetricsConfig>),
    /// Another address, or switched on or off: the new server replaces the old one at commit.
    Replace(Option<MetricsServer>),
}

pub(super) fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Supervisor {
    pub(super) fn metrics_event(&mut self, token: Token) {
        let Some(server) = self.metrics.as_mut() else {
            return;
        };
        let scraped = Cell::new(false);
        let next_token = &mut self.next_token;
        let processes = &self.processes;
        let master = &self.master_metrics;
        let retired_http2 = &self.retired_http2;
        let generation = self.generation;
        let session_cache = self.session_cache.as_ref().and_then(|cache| {
            cache
                .counters()
                .map_err(|err| warn!(error = %err, "cannot read the TLS session cache's counters"))
                .ok()
        });
        let filters = self.filter_segments.counts(&self.config);
        let render = || {
            scraped.set(true);
            let workers = processes
                .values()
                .filter_map(|p| {
                    p.counters().map(|counters| WorkerSample {
                        worker_id: p.worker_id(),
                        pid: p.pid().as_raw(),
                        generation: p.generation(),
                        counters,
                        http2: p.http2(),
                    })
                })
                .collect();
            metrics::render(&Snapshot {
                workers,
                master,
                retired_http2,
                master_generation: generation,
                live_workers: processes.len(),
                session_cache,
                filters: filters.clone(),
            })
        };
        server.handle_event(
            self.poll.registry(),
            token,
            || Self::alloc_token(next_token),
            render,
            Instant::now(),
        );
        if scraped.get() {
            // Counters are polled every few seconds; a scrape also asks now, so the next
            // scrape sees fresh values.
            self.request_status();
        }
    }

    /// A worker process is gone: its last counters join the totals, a drained one's drain time
    /// joins the histogram.
    pub(super) fn metrics_worker_exited(&mut self, process: &WorkerProcess) {
        if let Some(counters) = &process.counters() {
            metrics::retire_counters(&mut self.master_metrics, counters);
        }
        self.retired_http2.add(process.http2());
        if let (Role::Retired, Some(started)) = (&process.role(), process.drain_started()) {
            metrics::observe_drain(&mut self.master_metrics, started.elapsed());
        }
    }

    /// A binary upgrade ended here (this master is the one that finishes it).
    pub(super) fn metrics_upgrade_finished(&mut self, ok: bool) {
        let m = &mut self.master_metrics;
        m.upgrades_total += 1;
        if !ok {
            m.upgrades_failed += 1;
        }
        if let Some(started) = m.upgrade_started_unix_ms.take() {
            m.last_upgrade_duration_ms = unix_ms_now().saturating_sub(started);
        }
    }

    pub(super) fn metrics_reload_finished(&mut self, ok: bool) {
        self.master_metrics.reloads_total += 1;
        if !ok {
            self.master_metrics.reloads_failed += 1;
        }
    }

    /// What a successor master inherits: the endpoint's socket and the counters (with the
    /// upgrade's start time).
    pub(super) fn metrics_handover(&self) -> (Option<InheritedListener>, MasterMetrics, Vec<i32>) {
        let mut m = self.master_metrics.clone();
        m.upgrade_started_unix_ms = Some(unix_ms_now());
        // Processes the successor will never hear of (exiting: the same test as in
        // `begin_upgrade`) leave their counts in the totals, which must not go down.
        for process in self.processes.values() {
            if process.channel().is_none() || process.killed() {
                if let Some(counters) = &process.counters() {
                    metrics::retire_counters(&mut m, counters);
                }
            }
        }
        match &self.metrics {
            Some(server) => (
                Some(InheritedListener {
                    address: server.local_address().to_string(),
                    fd: server.raw_fd(),
                }),
                m,
                vec![server.raw_fd()],
            ),
            None => (None, m, Vec::new()),
        }
    }

    /// Reload, before anything changes: bind the new address if it moved. An error refuses
    /// the reload.
    pub(super) fn metrics_plan(&self, new: Option<MetricsConfig>) -> Result<MetricsPlan, String> {
        let same_address = match (&self.metrics, &new) {
            (None, None) => true,
            (Some(server), Some(config)) => server.config().address == config.address,
            _ => false,
        };
        if same_address {
            return Ok(MetricsPlan::Keep(new));
        }
        match new {
            None => Ok(MetricsPlan::Replace(None)),
            Some(config) => MetricsServer::bind(config)
                .map(|server| MetricsPlan::Replace(Some(server)))
                .map_err(|e| e.to_string()),
        }
    }

    /// Reload committed: switch to the planned endpoint.
    pub(super) fn metrics_apply(&mut self, plan: MetricsPlan) {
        match plan {
            MetricsPlan::Keep(Some(config)) => {
                if let Some(server) = self.metrics.as_mut() {
                    if server.config().path != config.path {
                        info!(path = %config.path, "metrics path changed");
                        server.set_path(config.path);
                    }
                }
            }
            MetricsPlan::Keep(None) => {}
            MetricsPlan::Replace(new) => {
                if let Some(mut old) = self.metrics.take() {
                    old.shutdown(self.poll.registry());
                    info!(address = %old.local_address(), "metrics endpoint closed");
                }
                if let Some(mut server) = new {
                    let token = Self::alloc_token(&mut self.next_token);
                    match server.register(self.poll.registry(), token) {
                        Ok(()) => {
                            info!(address = %server.local_address(), path = %server.config().path, "metrics endpoint ready");
                            self.metrics = Some(server);
                        }
                        Err(e) => {
                            warn!(address = %server.local_address(), error = %e, "cannot poll the metrics endpoint; metrics are off");
                        }
                    }
                }
            }
        }
    }
}
