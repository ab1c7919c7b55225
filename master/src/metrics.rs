//! The master's Prometheus endpoint: a tiny HTTP/1.1 server on the supervision loop, and the
//! text exposition of the workers' and the master's counters.
//!
//! The master never proxies traffic; it serves this one path itself, non-blocking on its mio
//! loop: a request head is at most [`MAX_REQUEST_BYTES`], a connection lives at most
//! [`CONNECTION_TIMEOUT`], at most [`MAX_CONNECTIONS`] are open at once, every answer carries
//! `Connection: close`. Other paths get 404, other methods 405.
//!
//! Counter semantics (see README "Metrics and access log"):
//! - `zentinel_worker_*{worker, pid, generation}`: one series per live worker process, as it
//!   last reported (polled every few seconds, and on every scrape for the next one). A replaced
//!   or restarted worker is a new series (new pid) starting from 0; the old one disappears.
//! - `zentinel_*` without worker labels: totals over every worker this master (and its
//!   predecessors across binary upgrades) ever ran: live workers plus the last counts of
//!   exited ones. They never go down.
//! - master counters (upgrades, reloads, restarts, drains) are carried across binary upgrades
//!   in the state file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use tracing::{debug, warn};
use zentinel_protocol::config::MetricsConfig;
use zentinel_protocol::messages::WorkerCounters;
use zentinel_protocol::state::{MasterMetrics, DRAIN_BUCKETS_SECONDS};

/// Longest request head accepted.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// A scrape connection is closed after this long, whatever its state.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections beyond this are closed on accept.
pub const MAX_CONNECTIONS: usize = 64;

struct Conn {
    stream: TcpStream,
    input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
    deadline: Instant,
    /// The response is queued (input is no longer read).
    responding: bool,
    writable_registered: bool,
}

/// The admin listener and its connections.
pub struct MetricsServer {
    listener: TcpListener,
    config: MetricsConfig,
    local: SocketAddr,
    token: Option<Token>,
    conns: BTreeMap<Token, Conn>,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("address", &self.local)
            .field("path", &self.config.path)
            .field("connections", &self.conns.len())
            .finish()
    }
}

impl MetricsServer {
    /// Bind `config.address` (SO_REUSEADDR, non-blocking, close-on-exec). Not polled yet.
    pub fn bind(config: MetricsConfig) -> io::Result<MetricsServer> {
        let addr: SocketAddr = config.address.parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("metrics address {:?} is not IP:port", config.address),
            )
        })?;
        let listener = TcpListener::bind(addr).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot bind the metrics address {addr}: {e}"),
            )
        })?;
        let local = listener.local_addr()?;
        Ok(MetricsServer {
            listener,
            config,
            local,
            token: None,
            conns: BTreeMap::new(),
        })
    }

    /// Take over the listening socket inherited from the previous master, after checking it
    /// listens on the address the state file recorded.
    pub fn from_fd(
        fd: OwnedFd,
        config: MetricsConfig,
        expected_address: &str,
    ) -> io::Result<MetricsServer> {
        let listening = nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::AcceptConn)
            .map_err(|e| {
                io::Error::other(format!("inherited metrics socket {expected_address}: {e}"))
            })?;
        if !listening {
            return Err(io::Error::other(format!(
                "inherited metrics socket {expected_address} is not listening"
            )));
        }
        let std_listener = std::net::TcpListener::from(fd);
        std_listener.set_nonblocking(true)?;
        let local = std_listener.local_addr()?;
        if local.to_string() != expected_address {
            return Err(io::Error::other(format!(
                "inherited metrics socket is bound to {local}, expected {expected_address}"
            )));
        }
        Ok(MetricsServer {
            listener: TcpListener::from_std(std_listener),
            config,
            local,
            token: None,
            conns: BTreeMap::new(),
        })
    }

    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(&mut self.listener, token, Interest::READABLE)?;
        self.token = Some(token);
        Ok(())
    }

    pub fn config(&self) -> &MetricsConfig {
        &self.config
    }

    /// A reload keeping the address may change the path.
    pub fn set_path(&mut self, path: String) {
        self.config.path = path;
    }

    pub fn local_address(&self) -> SocketAddr {
        self.local
    }

    /// The listening fd, inherited by a successor master.
    pub fn raw_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// Binary upgrade: stop accepting (connections wait in the kernel backlog for the new
    /// master, which polls the same socket) while finishing the ones already accepted, so
    /// that no scrape is cut when this master leaves.
    pub fn pause(&mut self, registry: &Registry) {
        if self.token.is_some() {
            let _ = registry.deregister(&mut self.listener);
        }
    }

    /// The upgrade failed: accept again.
    pub fn resume(&mut self, registry: &Registry) {
        if let Some(token) = self.token {
            if let Err(e) = registry.register(&mut self.listener, token, Interest::READABLE) {
                warn!(address = %self.local, error = %e, "metrics: cannot poll the endpoint again");
            }
        }
    }

    pub fn owns(&self, token: Token) -> bool {
        self.token == Some(token) || self.conns.contains_key(&token)
    }

    /// Deregister everything and close the connections (the listener closes on drop).
    pub fn shutdown(&mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.listener);
        for (_, mut conn) in std::mem::take(&mut self.conns) {
            let _ = registry.deregister(&mut conn.stream);
        }
        self.token = None;
    }

    /// Handle readiness of `token` (the listener or a connection). `render` builds the
    /// exposition, called only when a valid scrape asks for it.
    pub fn handle_event(
        &mut self,
        registry: &Registry,
        token: Token,
        mut alloc: impl FnMut() -> Token,
        render: impl FnOnce() -> String,
        now: Instant,
    ) {
        if self.token == Some(token) {
            self.accept_all(registry, &mut alloc, now);
            return;
        }
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let keep = drive(conn, registry, token, &self.config.path, render);
        if !keep {
            if let Some(mut conn) = self.conns.remove(&token) {
                let _ = registry.deregister(&mut conn.stream);
            }
        }
    }

    fn accept_all(&mut self, registry: &Registry, alloc: &mut impl FnMut() -> Token, now: Instant) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, peer)) => {
                    if self.conns.len() >= MAX_CONNECTIONS {
                        debug!(%peer, "metrics: too many scrape connections; closing");
                        continue;
                    }
                    let token = alloc();
                    if let Err(e) = registry.register(&mut stream, token, Interest::READABLE) {
                        warn!(%peer, error = %e, "metrics: cannot poll a scrape connection");
                        continue;
                    }
                    self.conns.insert(
                        token,
                        Conn {
                            stream,
                            input: Vec::new(),
                            output: Vec::new(),
                            written: 0,
                            deadline: now + CONNECTION_TIMEOUT,
                            responding: false,
                            writable_registered: false,
                        },
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ECONNABORTED, EMFILE...: the next readiness retries.
                    warn!(address = %self.local, error = %e, "metrics: accept failed");
                    return;
                }
            }
        }
    }

    /// Close connections past their deadline.
    pub fn expire(&mut self, registry: &Registry, now: Instant) {
        let expired: Vec<Token> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for token in expired {
            if let Some(mut conn) = self.conns.remove(&token) {
                debug!("metrics: scrape connection timed out");
                let _ = registry.deregister(&mut conn.stream);
            }
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.conns.values().map(|c| c.deadline).min()
    }
}

/// Read the head, queue the answer, write it. Returns false when the connection is done.
fn drive(
    conn: &mut Conn,
    registry: &Registry,
    token: Token,
    path: &str,
    render: impl FnOnce() -> String,
) -> bool {
    if !conn.responding {
        let mut buf = [0u8; 2048];
        let mut eof = false;
        loop {
            match conn.stream.read(&mut buf) {
                // A client may half-close right after its request: answer what arrived.
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    conn.input.extend_from_slice(&buf[..n]);
                    if conn.input.len() > MAX_REQUEST_BYTES {
                        conn.output = simple(431, "request head too large\n");
                        conn.responding = true;
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        if !conn.responding {
            let Some(end) = head_end(&conn.input) else {
                // Wait for the rest (bounded by size and deadline), unless none can come.
                return !eof;
            };
            conn.output = answer(&conn.input[..end], path, render);
            conn.responding = true;
        }
    }
    loop {
        match conn.stream.write(&conn.output[conn.written..]) {
            Ok(0) => return false,
            Ok(n) => {
                conn.written += n;
                if conn.written == conn.output.len() {
                    let _ = conn.stream.shutdown(Shutdown::Write);
                    return false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !conn.writable_registered {
                    if registry
                        .reregister(&mut conn.stream, token, Interest::WRITABLE)
                        .is_err()
                    {
                        return false;
                    }
                    conn.writable_registered = true;
                }
                return true;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}

fn head_end(input: &[u8]) -> Option<usize> {
    if let Some(i) = input.windows(4).position(|w| w == b"\r\n\r\n") {
        return Some(i + 4);
    }
    input.windows(2).position(|w| w == b"\n\n").map(|i| i + 2)
}

fn answer(head: &[u8], path: &str, render: impl FnOnce() -> String) -> Vec<u8> {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = String::from_utf8_lossy(&head[..line_end]);
    let mut parts = line.trim_end().split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return simple(400, "bad request\n");
    };
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return simple(400, "bad request\n");
    }
    let target_path = target.split('?').next().unwrap_or("");
    if target_path != path {
        return simple(404, "not found\n");
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return simple(405, "method not allowed\n"),
    };
    let body = render();
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

fn simple(status: u16, body: &str) -> Vec<u8> {
    let reason = match status {
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    };
    let allow = if status == 405 {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n{allow}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

// ---------------------------------------------------------------------------------------------
// Master-side bookkeeping
// ---------------------------------------------------------------------------------------------

/// Add a worker's last counters to the retired totals (it exited).
pub fn retire_counters(m: &mut MasterMetrics, c: &WorkerCounters) {
    let r = &mut m.retired;
    r.accepted_total = r.accepted_total.saturating_add(c.accepted_total);
    r.requests_total = r.requests_total.saturating_add(c.requests_total);
    r.responses_1xx = r.responses_1xx.saturating_add(c.responses_1xx);
    r.responses_2xx = r.responses_2xx.saturating_add(c.responses_2xx);
    r.responses_3xx = r.responses_3xx.saturating_add(c.responses_3xx);
    r.responses_4xx = r.responses_4xx.saturating_add(c.responses_4xx);
    r.responses_5xx = r.responses_5xx.saturating_add(c.responses_5xx);
    r.upstream_errors = r.upstream_errors.saturating_add(c.upstream_errors);
    r.client_errors = r.client_errors.saturating_add(c.client_errors);
    r.accept_errors = r.accept_errors.saturating_add(c.accept_errors);
    r.bytes_in = r.bytes_in.saturating_add(c.bytes_in);
    r.bytes_out = r.bytes_out.saturating_add(c.bytes_out);
}

/// Record how long a retired worker took from `Drain` to exit.
pub fn observe_drain(m: &mut MasterMetrics, took: Duration) {
    if m.drain_buckets.len() != DRAIN_BUCKETS_SECONDS.len() {
        m.drain_buckets.resize(DRAIN_BUCKETS_SECONDS.len(), 0);
    }
    let secs = took.as_secs_f64();
    for (bound, count) in DRAIN_BUCKETS_SECONDS.iter().zip(m.drain_buckets.iter_mut()) {
        if secs <= *bound {
            *count += 1;
        }
    }
    m.drains += 1;
    m.drain_sum_ms = m
        .drain_sum_ms
        .saturating_add(u64::try_from(took.as_millis()).unwrap_or(u64::MAX));
}

/// One live worker process as the exposition shows it.
pub struct WorkerSample<'a> {
    pub worker_id: u32,
    pub pid: i32,
    pub generation: u64,
    pub counters: &'a WorkerCounters,
}

/// Everything a scrape shows.
pub struct Snapshot<'a> {
    pub workers: Vec<WorkerSample<'a>>,
    pub master: &'a MasterMetrics,
    pub master_generation: u64,
    pub live_workers: usize,
}

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

fn seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let text = render(&Snapshot {
            workers: vec![WorkerSample {
                worker_id: 0,
                pid: 42,
                generation: 3,
                counters: &live,
            }],
            master: &master,
            master_generation: 3,
            live_workers: 1,
        });
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

    #[test]
    fn answers() {
        let ok = String::from_utf8(answer(
            b"GET /metrics?x HTTP/1.1\r\n\r\n",
            "/metrics",
            || "a 1\n".into(),
        ))
        .unwrap();
        assert!(
            ok.starts_with("HTTP/1.1 200 OK\r\n") && ok.ends_with("\r\n\r\na 1\n"),
            "{ok}"
        );
        assert!(ok.contains("Connection: close\r\n"));
        let head = String::from_utf8(answer(
            b"HEAD /metrics HTTP/1.1\r\n\r\n",
            "/metrics",
            || "a 1\n".into(),
        ))
        .unwrap();
        assert!(
            head.ends_with(
                "Content-Length: 4\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
            ),
            "{head}"
        );
        let nf = String::from_utf8(answer(
            b"GET / HTTP/1.1\r\n\r\n",
            "/metrics",
            || unreachable!(),
        ))
        .unwrap();
        assert!(nf.starts_with("HTTP/1.1 404 "));
        let na = String::from_utf8(answer(
            b"POST /metrics HTTP/1.1\r\n\r\n",
            "/metrics",
            || unreachable!(),
        ))
        .unwrap();
        assert!(na.starts_with("HTTP/1.1 405 "));
        let bad =
            String::from_utf8(answer(b"garbage\r\n\r\n", "/metrics", || unreachable!())).unwrap();
        assert!(bad.starts_with("HTTP/1.1 400 "));
    }
}
