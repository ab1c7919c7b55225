//! A load client for end-to-end tests: client threads sending requests through the proxy until
//! told to stop, every response checked end to end, every failure counted by kind.
//!
//! Two kinds of client threads:
//! - keep-alive: one connection reused for request after request; a response carrying
//!   `Connection: close` ends it cleanly (the client reconnects, that is NOT a failure), but a
//!   connection closed or reset before a response to a sent request IS one;
//! - one-shot: a new connection per request (`Connection: close`), so connect errors (refused,
//!   lost in an accept queue) show.
//!
//! Requests alternate between downloads (`GET /bytes/N` of the test backend, plain or chunked,
//! body checked against the pattern's checksum and the backend's `X-Body-Checksum`) and uploads
//! (`POST` of N pattern-derived bytes; the backend answers `len=N checksum=HEX`, compared with
//! what was sent).
//!
//! Used by the upgrade tests; meant to be reused by a standalone load generator too, so it
//! panics only on programming errors, never on what the server does.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::{checksum, checksum_hex, fill_pattern, pattern_checksum, wait_until, HttpClient};

pub use crate::failure::{Failure, FailureKind};

/// What to send and how.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub addr: SocketAddr,
    /// `Host` header of every request.
    pub host: String,
    pub keep_alive_clients: usize,
    pub one_shot_clients: usize,
    /// Sizes `GET /bytes/N` picks from.
    pub download_sizes: Vec<u64>,
    /// Body sizes uploads pick from (empty: no uploads).
    pub upload_sizes: Vec<usize>,
    /// Connect, read and write timeout.
    pub io_timeout: Duration,
    /// Pause between two requests of one client thread (zero: back to back).
    pub pause: Duration,
}

impl LoadConfig {
    /// 2 keep-alive + 2 one-shot clients, small and medium bodies both ways, 10 s timeouts.
    pub fn new(addr: SocketAddr) -> LoadConfig {
        LoadConfig {
            addr,
            host: "load.test".to_owned(),
            keep_alive_clients: 2,
            one_shot_clients: 2,
            download_sizes: vec![0, 1, 1_000, 16_384, 100_000, 300_000],
            upload_sizes: vec![1, 5_000, 70_000],
            io_timeout: Duration::from_secs(10),
            pause: Duration::ZERO,
        }
    }
}

/// The outcome of a load run.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Requests whose response was complete and correct.
    pub ok: u64,
    /// Failures by kind (every kind present, zero or not).
    pub counts: BTreeMap<FailureKind, u64>,
    /// The first failures in detail (at most [`MAX_KEPT_FAILURES`]).
    pub failures: Vec<Failure>,
    /// Connections opened.
    pub connections: u64,
    /// Keep-alive connections the server ended cleanly with `Connection: close`.
    pub closed_by_server: u64,
    pub elapsed: Duration,
}

/// How many failures a report keeps in detail.
pub const MAX_KEPT_FAILURES: usize = 50;

impl LoadReport {
    pub fn failed(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Panics (with every count and the first failures) unless there was no failure at all
    /// and at least `min_ok` requests succeeded.
    pub fn assert_clean(&self, min_ok: u64, what: &str) {
        assert!(
            self.failed() == 0 && self.ok >= min_ok,
            "{what}: expected no failure and at least {min_ok} good requests, got:\n{self}"
        );
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} ok, {} failed in {:.2}s over {} connections ({} ended by the server with \
             `Connection: close`)",
            self.ok,
            self.failed(),
            self.elapsed.as_secs_f64(),
            self.connections,
            self.closed_by_server
        )?;
        for (kind, n) in &self.counts {
            if *n > 0 {
                writeln!(f, "  {kind}: {n}")?;
            }
        }
        for failure in &self.failures {
            writeln!(f, "  {failure}")?;
        }
        Ok(())
    }
}

struct Shared {
    config: LoadConfig,
    started: Instant,
    stop: AtomicBool,
    ok: AtomicU64,
    failed: AtomicU64,
    connections: AtomicU64,
    closed_by_server: AtomicU64,
    counts: Mutex<BTreeMap<FailureKind, u64>>,
    failures: Mutex<Vec<Failure>>,
    /// `(size, checksum)` of every download size.
    downloads: Vec<(u64, u64)>,
    /// `(body, checksum hex)` of every upload size.
    uploads: Vec<(Vec<u8>, String)>,
}

impl Shared {
    fn record(&self, client: &str, request: &str, kind: FailureKind, detail: String) {
        self.failed.fetch_add(1, Ordering::SeqCst);
        *self
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(kind)
            .or_insert(0) += 1;
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if failures.len() < MAX_KEPT_FAILURES {
            failures.push(Failure {
                kind,
                at: self.started.elapsed(),
                client: client.to_owned(),
                request: request.to_owned(),
                detail,
            });
        }
    }
}

/// A running load; stop it with [`Load::stop`] (dropping it stops the threads too).
pub struct Load {
    shared: Arc<Shared>,
    handles: Vec<thread::JoinHandle<()>>,
}

impl Load {
    /// Starts the client threads at once.
    pub fn start(config: LoadConfig) -> Load {
        assert!(
            config.keep_alive_clients + config.one_shot_clients > 0,
            "a load needs at least one client thread"
        );
        assert!(
            !config.download_sizes.is_empty() || !config.upload_sizes.is_empty(),
            "a load needs download or upload sizes"
        );
        let downloads = config
            .download_sizes
            .iter()
            .map(|&n| (n, pattern_checksum(n)))
            .collect();
        let uploads = config
            .upload_sizes
            .iter()
            .map(|&n| {
                // Another stretch of the pattern than downloads use, so an upload answered
                // with a download's bytes (or the reverse) cannot pass.
                let mut body = vec![0u8; n];
                fill_pattern(7_919 * n as u64 + 13, &mut body);
                let sum = checksum_hex(checksum(&body));
                (body, sum)
            })
            .collect();
        let shared = Arc::new(Shared {
            started: Instant::now(),
            stop: AtomicBool::new(false),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            closed_by_server: AtomicU64::new(0),
            counts: Mutex::new(FailureKind::ALL.iter().map(|&k| (k, 0)).collect()),
            failures: Mutex::new(Vec::new()),
            downloads,
            uploads,
            config,
        });
        let mut handles = Vec::new();
        for i in 0..shared.config.keep_alive_clients {
            let s = Arc::clone(&shared);
            handles.push(
                thread::Builder::new()
                    .name(format!("load-keep-alive-{i}"))
                    .spawn(move || client_loop(&s, format!("keep-alive-{i}"), true, i as u64))
                    .expect("spawn load thread"),
            );
        }
        for i in 0..shared.config.one_shot_clients {
            let s = Arc::clone(&shared);
            let seed = 1_000 + i as u64;
            handles.push(
                thread::Builder::new()
                    .name(format!("load-one-shot-{i}"))
                    .spawn(move || client_loop(&s, format!("one-shot-{i}"), false, seed))
                    .expect("spawn load thread"),
            );
        }
        Load { shared, handles }
    }

    /// Good responses so far.
    pub fn ok(&self) -> u64 {
        self.shared.ok.load(Ordering::SeqCst)
    }

    /// Failures so far.
    pub fn failed(&self) -> u64 {
        self.shared.failed.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` more good responses than now arrived; false on timeout.
    pub fn wait_for_more(&self, n: u64, timeout: Duration) -> bool {
        let target = self.ok() + n;
        wait_until(timeout, || self.ok() >= target)
    }

    /// Stops every client thread (each finishes its current request) and reports.
    pub fn stop(mut self) -> LoadReport {
        self.shared.stop.store(true, Ordering::SeqCst);
        for h in self.handles.drain(..) {
            if h.join().is_err() {
                self.shared.record(
                    "load",
                    "-",
                    FailureKind::ReadError,
                    "a client thread panicked".to_owned(),
                );
            }
        }
        let s = &self.shared;
        LoadReport {
            ok: s.ok.load(Ordering::SeqCst),
            counts: s.counts.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            failures: s.failures.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            connections: s.connections.load(Ordering::SeqCst),
            closed_by_server: s.closed_by_server.load(Ordering::SeqCst),
            elapsed: s.started.elapsed(),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

/// xorshift64*: tiny, deterministic, no dependency; picks requests here and mutations in
/// tests/tests/fuzz_short.rs.
pub struct Rng(u64);

impl Rng {
    /// Any seed (xorshift must never hold 0).
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform enough in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// A position in `0..=len` (an insertion or cut point).
    pub fn at(&mut self, len: usize) -> usize {
        self.below(len + 1)
    }

    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
}

enum Request {
    Download { index: usize, chunked: bool },
    Upload { index: usize },
}

fn pick(shared: &Shared, rng: &mut Rng) -> Request {
    let downloads = shared.downloads.len();
    let uploads = shared.uploads.len();
    let k = rng.below(downloads + uploads);
    if k < downloads {
        Request::Download {
            index: k,
            chunked: rng.below(4) == 0,
        }
    } else {
        Request::Upload {
            index: k - downloads,
        }
    }
}

fn connect(shared: &Shared) -> Result<HttpClient, (FailureKind, String)> {
    let timeout = shared.config.io_timeout;
    match TcpStream::connect_timeout(&shared.config.addr, timeout) {
        Ok(stream) => {
            shared.connections.fetch_add(1, Ordering::SeqCst);
            let client = HttpClient::from_stream(stream);
            client.set_timeout(timeout);
            Ok(client)
        }
        Err(e) => {
            let kind = match e.kind() {
                io::ErrorKind::ConnectionRefused => FailureKind::ConnectRefused,
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => FailureKind::ConnectTimeout,
                _ => FailureKind::ConnectError,
            };
            Err((kind, format!("connect to {}: {e}", shared.config.addr)))
        }
    }
}

fn client_loop(shared: &Shared, name: String, keep_alive: bool, seed: u64) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (seed.wrapping_add(1)).wrapping_mul(0x1234_5679));
    let mut conn: Option<HttpClient> = None;
    while !shared.stop.load(Ordering::SeqCst) {
        if conn.is_none() {
            match connect(shared) {
                Ok(c) => conn = Some(c),
                Err((kind, detail)) => {
                    shared.record(&name, "connect", kind, detail);
                    // Do not spin on a dead address.
                    thread::sleep(Duration::from_millis(10));
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let request = pick(shared, &mut rng);
        match exchange(shared, c, &request, keep_alive) {
            Ok(server_closes) => {
                shared.ok.fetch_add(1, Ordering::SeqCst);
                if server_closes || !keep_alive {
                    if keep_alive {
                        shared.closed_by_server.fetch_add(1, Ordering::SeqCst);
                    }
                    conn = None;
                }
            }
            Err((kind, what, detail)) => {
                shared.record(&name, &what, kind, detail);
                conn = None;
            }
        }
        if !shared.config.pause.is_zero() {
            thread::sleep(shared.config.pause);
        }
    }
}

fn classify_write(e: &io::Error) -> FailureKind {
    match e.kind() {
        io::ErrorKind::ConnectionReset => FailureKind::Reset,
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => FailureKind::Timeout,
        _ => FailureKind::WriteError,
    }
}

fn classify_read(e: &io::Error) -> FailureKind {
    match e.kind() {
        io::ErrorKind::ConnectionReset => FailureKind::Reset,
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => FailureKind::Timeout,
        io::ErrorKind::InvalidData => FailureKind::BadResponse,
        io::ErrorKind::UnexpectedEof => {
            // HttpClient says exactly this when EOF came before a byte of the head.
            if e.to_string()
                .contains("before a complete response head (got \"\")")
            {
                FailureKind::ClosedBeforeResponse
            } else {
                FailureKind::Truncated
            }
        }
        _ => FailureKind::ReadError,
    }
}

/// One request and its response on `c`; `Ok(server_closes)` when the response is complete and
/// correct, where `server_closes` says the server ends the connection after it.
fn exchange(
    shared: &Shared,
    c: &mut HttpClient,
    request: &Request,
    keep_alive: bool,
) -> Result<bool, (FailureKind, String, String)> {
    let host = &shared.config.host;
    let connection = if keep_alive {
        ""
    } else {
        "Connection: close\r\n"
    };
    let (what, head, body): (String, String, &[u8]) = match *request {
        Request::Download { index, chunked } => {
            let n = shared.downloads[index].0;
            let query = if chunked { "?chunked=1" } else { "" };
            let what = format!("GET /bytes/{n}{query}");
            (
                what.clone(),
                format!("{what} HTTP/1.1\r\nHost: {host}\r\n{connection}\r\n"),
                &[],
            )
        }
        Request::Upload { index } => {
            let body = &shared.uploads[index].0;
            let what = format!("POST /upload ({} bytes)", body.len());
            (
                what,
                format!(
                    "POST /upload HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\
                     Content-Type: application/octet-stream\r\n{connection}\r\n",
                    body.len()
                ),
                body.as_slice(),
            )
        }
    };
    let fail = |kind: FailureKind, detail: String| (kind, what.clone(), detail);
    let mut message = head.into_bytes();
    message.extend_from_slice(body);
    c.try_send(&message)
        .map_err(|e| fail(classify_write(&e), format!("sending: {e}")))?;
    let collect = matches!(request, Request::Upload { .. });
    let resp = c
        .try_read_response(collect, false)
        .map_err(|e| fail(classify_read(&e), format!("reading: {e}")))?;
    if !(200..300).contains(&resp.status) {
        return Err(fail(
            FailureKind::Non2xx,
            format!("status {} {}", resp.status, resp.reason),
        ));
    }
    match *request {
        Request::Download { index, .. } => {
            let (n, sum) = shared.downloads[index];
            if resp.body_len != n {
                return Err(fail(
                    FailureKind::Truncated,
                    format!("{} of {n} body bytes", resp.body_len),
                ));
            }
            if resp.body_checksum != sum {
                return Err(fail(
                    FailureKind::Corrupt,
                    format!(
                        "body checksum {} != pattern's {}",
                        checksum_hex(resp.body_checksum),
                        checksum_hex(sum)
                    ),
                ));
            }
            if resp.header("x-body-checksum") != Some(checksum_hex(sum).as_str()) {
                return Err(fail(
                    FailureKind::Corrupt,
                    format!(
                        "X-Body-Checksum {:?} != pattern's {}",
                        resp.header("x-body-checksum"),
                        checksum_hex(sum)
                    ),
                ));
            }
        }
        Request::Upload { index } => {
            let (body, sum) = &shared.uploads[index];
            let expected = format!("len={} checksum={sum}", body.len());
            let answer = resp.body_str();
            if answer.trim() != expected {
                return Err(fail(
                    FailureKind::Corrupt,
                    format!("upload answer {answer:?}, expected {expected:?}"),
                ));
            }
        }
    }
    let server_closes = resp.connection_has("close") || resp.close_delimited;
    Ok(server_closes)
}
