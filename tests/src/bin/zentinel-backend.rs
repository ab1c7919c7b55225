//! `zentinel-backend`: the HTTP/1.1 (or TCP echo) server the end-to-end tests proxy to.
//!
//! `zentinel-backend --listen ADDR [--name NAME] [--mode http|tcp-echo]
//!  [--fault reset|truncate|status500|close-after|corrupt --fault-every K]
//!  [--health-file PATH] [--fail-status NNN [--fail-file PATH]]
//!  [--tls CERT KEY [--client-ca CA]]`
//!
//! With `--tls`, every connection is TLS (the certificate and key in PEM; ALPN `http/1.1`);
//! with `--client-ca` as well, clients must present a certificate issued by CA (mTLS).
//!
//! Prints `listening on ADDR` (the real bound address, so `--listen 127.0.0.1:0` works) on
//! stdout once bound. A thread per connection: this is a test fixture, not a server under test.
//!
//! HTTP endpoints (every response carries `X-Backend: NAME` and `X-Connection-Id: N`, N unique
//! per accepted TCP connection):
//! - `GET /bytes/N` N pattern bytes with `X-Body-Checksum`; `?chunked=1` chunked, `?close=1`
//!   close-delimited.
//! - any request with a body: `len=N checksum=HEX` of the decoded body.
//! - `/status/NNN`, `/delay/MS`, `/headers` (echo of the request head), `/conn-id`,
//!   `/stats` (`requests=N connections=M`, not counting `/stats` requests themselves).
//! - `Expect: 100-continue` is honoured; `Connection: upgrade` + `Upgrade: websocket` switches
//!   to a raw echo tunnel after `101 Switching Protocols`; on a path ending in `/ws-frames`, to
//!   a real WebSocket echo (`Sec-WebSocket-Accept`, each message echoed whole, pings answered,
//!   close answered, then our write side shut: see `websocket::serve_echo`).
//! - with `--health-file PATH`: `/health` answers 200 while PATH exists and 500 otherwise
//!   (a health endpoint a test flips without restarting the backend); these requests are not
//!   counted by `/stats` nor subject to faults.
//! - `/tls`: `sni=NAME resumed=BOOL client-cert=BOOL alpn=PROTO` of this connection's TLS
//!   session (`plain` without TLS).
//! - anything else: `backend=NAME path=PATH\n`.
//! - with `--fail-status NNN`: every request counted by `/stats` is answered `NNN` (body
//!   `backend=NAME failing\n`, keep-alive kept) after its body was read, whatever its path;
//!   with `--fail-file PATH` as well, only while PATH exists (a test flips a backend between
//!   failing and healthy without restarting it).
//!
//! Fault injection (for the load generator's accounting tests): with `--fault KIND
//! --fault-every K`, every K-th request counted by `/stats` (over the whole backend, so the
//! count is deterministic whatever the connections) gets, after its body was read:
//! - `reset`: no response, the connection is closed with SO_LINGER 0 (a TCP reset);
//! - `truncate`: the head announces the full body, half of it is sent, then a normal close;
//! - `status500`: `500 Internal Server Error` (keep-alive kept);
//! - `close-after`: the normal response with `Connection: close`, then a close (not an error);
//! - `corrupt`: the normal response with one body byte changed (needs a non-empty body).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use nix::sys::socket::{setsockopt, sockopt};
use zentinel_tests::backend_tls::{self, BackendStream};
use zentinel_tests::websocket;
use zentinel_tests::{checksum, checksum_hex, fill_pattern, pattern, pattern_checksum, Fnv64};

const MAX_HEAD: usize = 256 * 1024;
const MAX_HEADERS: usize = 512;
/// `/bytes/N` bodies up to this size are built once (per size) and sent with their head in
/// one write; larger ones are streamed in blocks.
const CACHED_BODY_MAX: u64 = 1024 * 1024;
/// At most this many body sizes are cached.
const CACHED_SIZES_MAX: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FaultKind {
    Reset,
    Truncate,
    Status500,
    CloseAfter,
    Corrupt,
}

impl FaultKind {
    fn parse(s: &str) -> Option<FaultKind> {
        Some(match s {
            "reset" => FaultKind::Reset,
            "truncate" => FaultKind::Truncate,
            "status500" => FaultKind::Status500,
            "close-after" => FaultKind::CloseAfter,
            "corrupt" => FaultKind::Corrupt,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug)]
struct Fault {
    kind: FaultKind,
    every: u64,
}

/// A `/bytes/N` body and its checksum, shared by every connection.
struct PatternBody {
    checksum_hex: String,
    bytes: Vec<u8>,
}

struct Shared {
    name: String,
    connections: AtomicU64,
    requests: AtomicU64,
    fault: Option<Fault>,
    health_file: Option<std::path::PathBuf>,
    fail_status: Option<u16>,
    fail_file: Option<std::path::PathBuf>,
    bodies: Mutex<HashMap<u64, Arc<PatternBody>>>,
    /// Checksums of streamed bodies (n > CACHED_BODY_MAX), by size: hashing 1 GiB takes about
    /// a second, once (a HEAD request computes it ahead of a timed download).
    big_checksums: Mutex<HashMap<u64, String>>,
}

impl Shared {
    /// The body of `/bytes/n` (n <= CACHED_BODY_MAX), built on first use.
    fn pattern_body(&self, n: u64) -> Arc<PatternBody> {
        let mut bodies = self.bodies.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = bodies.get(&n) {
            return Arc::clone(b);
        }
        let bytes = pattern(n as usize);
        let body = Arc::new(PatternBody {
            checksum_hex: checksum_hex(checksum(&bytes)),
            bytes,
        });
        if bodies.len() < CACHED_SIZES_MAX {
            bodies.insert(n, Arc::clone(&body));
        }
        body
    }

    /// The checksum of `/bytes/n` for a streamed body, computed on first use.
    fn big_checksum(&self, n: u64) -> String {
        let mut sums = self.big_checksums.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sum) = sums.get(&n) {
            return sum.clone();
        }
        let sum = checksum_hex(pattern_checksum(n));
        if sums.len() < CACHED_SIZES_MAX {
            sums.insert(n, sum.clone());
        }
        sum
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Http,
    TcpEcho,
}

fn main() -> ExitCode {
    let mut listen = None;
    let mut name = "backend".to_owned();
    let mut mode = Mode::Http;
    let mut fault_kind = None;
    let mut fault_every = 1u64;
    let mut health_file = None;
    let mut fail_status = None;
    let mut fail_file = None;
    let mut tls_files = None;
    let mut client_ca = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next(),
            "--name" => name = args.next().unwrap_or_default(),
            "--mode" => match args.next().as_deref() {
                Some("http") => mode = Mode::Http,
                Some("tcp-echo") => mode = Mode::TcpEcho,
                other => {
                    eprintln!("zentinel-backend: unknown --mode {other:?} (http|tcp-echo)");
                    return ExitCode::from(2);
                }
            },
            "--fault" => match args.next().as_deref().and_then(FaultKind::parse) {
                Some(k) => fault_kind = Some(k),
                None => {
                    eprintln!(
                        "zentinel-backend: --fault needs one of reset, truncate, status500, \
                         close-after, corrupt"
                    );
                    return ExitCode::from(2);
                }
            },
            "--fault-every" => match args.next().and_then(|v| v.parse::<u64>().ok()) {
                Some(k) if k > 0 => fault_every = k,
                _ => {
                    eprintln!("zentinel-backend: --fault-every needs a number >= 1");
                    return ExitCode::from(2);
                }
            },
            "--health-file" => match args.next() {
                Some(p) => health_file = Some(std::path::PathBuf::from(p)),
                None => {
                    eprintln!("zentinel-backend: --health-file needs a path");
                    return ExitCode::from(2);
                }
            },
            "--fail-status" => match args.next().and_then(|v| v.parse::<u16>().ok()) {
                Some(code) if (100..=599).contains(&code) => fail_status = Some(code),
                _ => {
                    eprintln!("zentinel-backend: --fail-status needs a status (100-599)");
                    return ExitCode::from(2);
                }
            },
            "--fail-file" => match args.next() {
                Some(p) => fail_file = Some(std::path::PathBuf::from(p)),
                None => {
                    eprintln!("zentinel-backend: --fail-file needs a path");
                    return ExitCode::from(2);
                }
            },
            "--tls" => match (args.next(), args.next()) {
                (Some(cert), Some(key)) => tls_files = Some((cert, key)),
                _ => {
                    eprintln!("zentinel-backend: --tls needs a certificate and a key file");
                    return ExitCode::from(2);
                }
            },
            "--client-ca" => match args.next() {
                Some(p) => client_ca = Some(p),
                None => {
                    eprintln!("zentinel-backend: --client-ca needs a path");
                    return ExitCode::from(2);
                }
            },
            "-h" | "--help" => {
                println!(
                    "usage: zentinel-backend --listen ADDR [--name NAME] [--mode http|tcp-echo] \
                     [--fault reset|truncate|status500|close-after|corrupt --fault-every K] \
                     [--health-file PATH] [--fail-status NNN [--fail-file PATH]] \
                     [--tls CERT KEY [--client-ca CA]]"
                );
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("zentinel-backend: unknown argument {other:?}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(listen) = listen else {
        eprintln!("zentinel-backend: --listen ADDR is required");
        return ExitCode::from(2);
    };
    let tls = match (&tls_files, &client_ca) {
        (None, Some(_)) => {
            eprintln!("zentinel-backend: --client-ca needs --tls");
            return ExitCode::from(2);
        }
        (None, None) => None,
        (Some((cert, key)), ca) => match backend_tls::server_config(cert, key, ca.as_deref()) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("zentinel-backend: --tls: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let listener = match TcpListener::bind(&listen) {
        Ok(l) => l,
        Err(err) => {
            eprintln!("zentinel-backend: cannot listen on {listen}: {err}");
            return ExitCode::from(1);
        }
    };
    let local = match listener.local_addr() {
        Ok(a) => a,
        Err(err) => {
            eprintln!("zentinel-backend: local_addr: {err}");
            return ExitCode::from(1);
        }
    };
    println!("listening on {local}");
    let _ = io::stdout().flush();

    let shared = Arc::new(Shared {
        name,
        connections: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        fault: fault_kind.map(|kind| Fault {
            kind,
            every: fault_every,
        }),
        health_file,
        fail_status,
        fail_file,
        bodies: Mutex::new(HashMap::new()),
        big_checksums: Mutex::new(HashMap::new()),
    });
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(err) => {
                eprintln!("zentinel-backend: accept: {err}");
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let id = shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
        let shared = Arc::clone(&shared);
        let tls = tls.clone();
        thread::spawn(move || {
            let _ = stream.set_nodelay(true);
            let result =
                BackendStream::new(stream, tls.as_ref()).and_then(|mut stream| match mode {
                    Mode::Http => HttpConn::new(stream, id, shared).serve(),
                    Mode::TcpEcho => echo(&mut stream),
                });
            if let Err(err) = result {
                if !matches!(
                    err.kind(),
                    io::ErrorKind::BrokenPipe
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::UnexpectedEof
                ) {
                    eprintln!("zentinel-backend: connection {id}: {err}");
                }
            }
        });
    }
    ExitCode::SUCCESS
}

/// Echoes until the peer half-closes, then half-closes our side: proves half-close handling.
fn echo(stream: &mut BackendStream) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        stream.write_all(&buf[..n])?;
    }
    stream.shutdown_write()
}

struct Request {
    method: String,
    path: String,
    query: String,
    minor_version: u8,
    headers: Vec<(String, String)>,
    raw_head: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn connection_has(&self, token: &str) -> bool {
        self.all("connection")
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    fn query_flag(&self, key: &str) -> bool {
        self.query
            .split('&')
            .any(|kv| kv == format!("{key}=1") || kv == key)
    }
}

enum Body {
    None,
    Length(u64),
    Chunked,
}

struct HttpConn {
    stream: BackendStream,
    buf: Vec<u8>,
    /// Read scratch space, reused (not a fresh zeroed array per read).
    tmp: Vec<u8>,
    /// Response being built, reused: a small response goes out in one write.
    out: Vec<u8>,
    id: u64,
    shared: Arc<Shared>,
    /// Fault to apply to the body of the current response (truncate, corrupt).
    body_fault: Option<FaultKind>,
    /// Close the connection after the current response whatever its head said.
    force_close: bool,
    /// Close at once, without shutdown or drain (the reset fault armed SO_LINGER 0).
    abort: bool,
}

impl HttpConn {
    fn new(stream: BackendStream, id: u64, shared: Arc<Shared>) -> Self {
        HttpConn {
            stream,
            buf: Vec::with_capacity(16 * 1024),
            tmp: vec![0u8; 64 * 1024],
            out: Vec::with_capacity(16 * 1024),
            id,
            shared,
            body_fault: None,
            force_close: false,
            abort: false,
        }
    }

    /// Reads more bytes into the buffer; Ok(false) on EOF.
    fn fill(&mut self) -> io::Result<bool> {
        let n = self.stream.read(&mut self.tmp)?;
        self.buf.extend_from_slice(&self.tmp[..n]);
        Ok(n > 0)
    }

    /// Writes `self.out[..head_len]` and the body after it, applying the body fault of the
    /// request (if any), in one write when possible.
    fn send_out(&mut self, head_len: usize) -> io::Result<()> {
        let body_len = self.out.len() - head_len;
        match self.body_fault.take() {
            Some(FaultKind::Truncate) => {
                self.out.truncate(head_len + body_len / 2);
                self.force_close = true;
            }
            Some(FaultKind::Corrupt) if body_len > 0 => {
                self.out[head_len + body_len / 2] ^= 0xff;
            }
            _ => {}
        }
        self.stream.write_all(&self.out)
    }

    fn serve(mut self) -> io::Result<()> {
        loop {
            let Some(req) = self.read_head()? else {
                return Ok(());
            };
            self.body_fault = None;
            self.force_close = false;
            let keep = self.handle(req)? && !self.force_close;
            if self.abort {
                // SO_LINGER 0 is set: dropping the socket sends a reset.
                return Ok(());
            }
            if !keep {
                let _ = self.stream.shutdown_write();
                // Drain what the peer still sends so the close is not turned into a reset
                // that could destroy the response in flight.
                let _ = self
                    .stream
                    .tcp()
                    .set_read_timeout(Some(Duration::from_secs(2)));
                let mut sink = [0u8; 4096];
                while matches!(self.stream.read(&mut sink), Ok(n) if n > 0) {}
                return Ok(());
            }
        }
    }

    /// Ok(None): clean EOF between requests.
    fn read_head(&mut self) -> io::Result<Option<Request>> {
        loop {
            if !self.buf.is_empty() {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut parsed = httparse::Request::new(&mut headers);
                match parsed.parse(&self.buf) {
                    Ok(httparse::Status::Complete(len)) => {
                        let target = parsed.path.unwrap_or("/").to_owned();
                        let (path, query) = match target.split_once('?') {
                            Some((p, q)) => (p.to_owned(), q.to_owned()),
                            None => (target, String::new()),
                        };
                        let req = Request {
                            method: parsed.method.unwrap_or("GET").to_owned(),
                            path,
                            query,
                            minor_version: parsed.version.unwrap_or(1),
                            headers: parsed
                                .headers
                                .iter()
                                .map(|h| {
                                    (
                                        h.name.to_owned(),
                                        String::from_utf8_lossy(h.value).into_owned(),
                                    )
                                })
                                .collect(),
                            raw_head: self.buf[..len].to_vec(),
                        };
                        self.buf.drain(..len);
                        return Ok(Some(req));
                    }
                    Ok(httparse::Status::Partial) => {
                        if self.buf.len() > MAX_HEAD {
                            self.simple(400, "Bad Request", b"head too large\n", false)?;
                            return Ok(None);
                        }
                    }
                    Err(err) => {
                        let msg = format!("bad request: {err}\n");
                        self.simple(400, "Bad Request", msg.as_bytes(), false)?;
                        return Ok(None);
                    }
                }
            }
            if !self.fill()? {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "EOF inside a request head",
                ));
            }
        }
    }

    fn body_kind(req: &Request) -> Result<Body, String> {
        let te_chunked = req
            .all("transfer-encoding")
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("chunked"));
        let lengths: Vec<&str> = req.all("content-length").collect();
        if te_chunked && !lengths.is_empty() {
            return Err("both Content-Length and Transfer-Encoding".into());
        }
        if te_chunked {
            return Ok(Body::Chunked);
        }
        match lengths.as_slice() {
            [] => Ok(Body::None),
            [one] => one
                .trim()
                .parse::<u64>()
                .map(Body::Length)
                .map_err(|_| format!("bad Content-Length {one:?}")),
            _ => Err("several Content-Length headers".into()),
        }
    }

    /// Reads the body announced by the head, hashing it as it streams in.
    fn read_body(&mut self, kind: &Body) -> io::Result<(u64, Fnv64)> {
        let mut hash = Fnv64::new();
        let mut total = 0u64;
        match kind {
            Body::None => {}
            Body::Length(n) => {
                self.take_exact(*n, &mut hash)?;
                total = *n;
            }
            Body::Chunked => loop {
                let line = self.read_line()?;
                let size_str = line.split(';').next().unwrap_or("").trim();
                let size = u64::from_str_radix(size_str, 16).map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad chunk size line {line:?}"),
                    )
                })?;
                if size == 0 {
                    // Trailers until the empty line.
                    while !self.read_line()?.is_empty() {}
                    break;
                }
                self.take_exact(size, &mut hash)?;
                total += size;
                let crlf = self.read_line()?;
                if !crlf.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "chunk data not followed by CRLF",
                    ));
                }
            },
        }
        Ok((total, hash))
    }

    fn take_exact(&mut self, mut n: u64, hash: &mut Fnv64) -> io::Result<()> {
        while n > 0 {
            if self.buf.is_empty() && !self.fill()? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "EOF inside a request body",
                ));
            }
            let take = (self.buf.len() as u64).min(n) as usize;
            hash.update(&self.buf[..take]);
            self.buf.drain(..take);
            n -= take as u64;
        }
        Ok(())
    }

    fn read_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..pos]).into_owned();
                self.buf.drain(..pos + 2);
                return Ok(line);
            }
            if self.buf.len() > 64 * 1024 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
            }
            if !self.fill()? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "EOF inside a chunked body",
                ));
            }
        }
    }

    fn common_headers(&self, keep_alive: bool, http10: bool) -> String {
        let mut h = String::new();
        self.push_common_headers(&mut h, keep_alive, http10);
        h
    }

    fn push_common_headers(&self, h: &mut String, keep_alive: bool, http10: bool) {
        h.push_str("X-Backend: ");
        h.push_str(&self.shared.name);
        h.push_str("\r\nX-Connection-Id: ");
        h.push_str(&self.id.to_string());
        h.push_str("\r\n");
        if !keep_alive {
            h.push_str("Connection: close\r\n");
        } else if http10 {
            h.push_str("Connection: keep-alive\r\n");
        }
    }

    fn simple(&mut self, status: u16, reason: &str, body: &[u8], keep: bool) -> io::Result<()> {
        let head = format!(
            "HTTP/1.1 {status} {reason}\r\n{}Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
            self.common_headers(keep, false),
            body.len()
        );
        self.out.clear();
        self.out.extend_from_slice(head.as_bytes());
        self.out.extend_from_slice(body);
        self.send_out(head.len())
    }

    /// The fault for this request, if it is one of the every-K-th (`count` is its number).
    fn fault_for(&self, count: u64) -> Option<FaultKind> {
        self.shared
            .fault
            .filter(|f| count.is_multiple_of(f.every))
            .map(|f| f.kind)
    }

    /// Handles one request; returns whether the connection stays open.
    fn handle(&mut self, req: Request) -> io::Result<bool> {
        let http10 = req.minor_version == 0;
        let mut keep = if http10 {
            req.connection_has("keep-alive")
        } else {
            !req.connection_has("close")
        };
        let is_stats = req.path == "/stats";
        if req.path == "/health" {
            if let Some(file) = self.shared.health_file.clone() {
                if file.exists() {
                    self.simple(200, "OK", b"healthy\n", keep)?;
                } else {
                    self.simple(500, "Internal Server Error", b"unhealthy\n", keep)?;
                }
                return Ok(keep);
            }
        }
        let mut fault = None;
        if !is_stats {
            let count = self.shared.requests.fetch_add(1, Ordering::SeqCst) + 1;
            fault = self.fault_for(count);
        }

        if req.connection_has("upgrade")
            && req
                .header("upgrade")
                .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
        {
            return self.upgrade(&req).map(|()| false);
        }

        let kind = match Self::body_kind(&req) {
            Ok(k) => k,
            Err(msg) => {
                self.simple(400, "Bad Request", format!("{msg}\n").as_bytes(), false)?;
                return Ok(false);
            }
        };
        let has_body = match kind {
            Body::None => false,
            Body::Length(n) => n > 0,
            Body::Chunked => true,
        };
        let expects = req
            .header("expect")
            .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"));
        if expects && has_body && !http10 {
            self.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let (body_len, body_hash) = self.read_body(&kind)?;
        if let Some(code) = self.shared.fail_status.filter(|_| !is_stats) {
            if self.shared.fail_file.as_ref().is_none_or(|f| f.exists()) {
                let body = format!("backend={} failing\n", self.shared.name);
                self.simple(code, "Failing", body.as_bytes(), keep)?;
                return Ok(keep);
            }
        }

        match fault {
            Some(FaultKind::Reset) => {
                let linger = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                setsockopt(self.stream.tcp(), sockopt::Linger, &linger).map_err(io::Error::from)?;
                self.abort = true;
                return Ok(false);
            }
            Some(FaultKind::Status500) => {
                self.simple(500, "Internal Server Error", b"injected fault\n", keep)?;
                return Ok(keep);
            }
            Some(FaultKind::CloseAfter) => keep = false,
            Some(k @ (FaultKind::Truncate | FaultKind::Corrupt)) => self.body_fault = Some(k),
            None => {}
        }

        let path = req.path.clone();
        if let Some(n) = path.strip_prefix("/bytes/") {
            let Ok(n) = n.parse::<u64>() else {
                self.simple(400, "Bad Request", b"bad length\n", keep)?;
                return Ok(keep);
            };
            return self.send_bytes(&req, n, keep, http10);
        }
        if let Some(code) = path.strip_prefix("/status/") {
            let code = code.parse::<u16>().unwrap_or(500);
            let body = format!("status {code}\n");
            let bodyless = code == 204 || code == 304 || (100..200).contains(&code);
            let head = format!(
                "HTTP/1.1 {code} Status\r\n{}{}\r\n",
                self.common_headers(keep, http10),
                if bodyless {
                    String::new()
                } else {
                    format!("Content-Length: {}\r\n", body.len())
                }
            );
            self.out.clear();
            self.out.extend_from_slice(head.as_bytes());
            if !bodyless && req.method != "HEAD" {
                self.out.extend_from_slice(body.as_bytes());
            }
            self.send_out(head.len())?;
            return Ok(keep);
        }
        if let Some(ms) = path.strip_prefix("/delay/") {
            let ms = ms.parse::<u64>().unwrap_or(0);
            thread::sleep(Duration::from_millis(ms));
            let body = format!("delayed {ms}ms\n");
            self.respond_ok(&req, body.as_bytes(), keep, http10)?;
            return Ok(keep);
        }
        match path.as_str() {
            "/headers" => {
                let raw = req.raw_head.clone();
                self.respond_ok(&req, &raw, keep, http10)?;
            }
            "/tls" => {
                let body = self.stream.describe();
                self.respond_ok(&req, body.as_bytes(), keep, http10)?;
            }
            "/conn-id" => {
                let body = self.id.to_string();
                self.respond_ok(&req, body.as_bytes(), keep, http10)?;
            }
            "/stats" => {
                let body = format!(
                    "requests={} connections={}\n",
                    self.shared.requests.load(Ordering::SeqCst),
                    self.shared.connections.load(Ordering::SeqCst)
                );
                self.respond_ok(&req, body.as_bytes(), keep, http10)?;
            }
            "/close" => {
                keep = false;
                let body = format!("backend={} path=/close\n", self.shared.name);
                self.respond_ok(&req, body.as_bytes(), keep, http10)?;
            }
            _ if has_body => {
                let body = format!("len={body_len} checksum={}", body_hash.hex());
                self.respond_ok(&req, body.as_bytes(), keep, http10)?;
            }
            _ => {
                let body = format!("backend={} path={}\n", self.shared.name, req.path);
                self.respond_ok(&req, body.as_bytes(), keep, http10)?;
            }
        }
        Ok(keep)
    }

    fn respond_ok(
        &mut self,
        req: &Request,
        body: &[u8],
        keep: bool,
        http10: bool,
    ) -> io::Result<()> {
        let head = format!(
            "HTTP/1.1 200 OK\r\n{}Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
            self.common_headers(keep, http10),
            body.len()
        );
        self.out.clear();
        self.out.extend_from_slice(head.as_bytes());
        if req.method != "HEAD" {
            self.out.extend_from_slice(body);
        }
        self.send_out(head.len())
    }

    fn send_bytes(&mut self, req: &Request, n: u64, keep: bool, http10: bool) -> io::Result<bool> {
        let cached = (n <= CACHED_BODY_MAX).then(|| self.shared.pattern_body(n));
        let checksum = match &cached {
            Some(body) => body.checksum_hex.clone(),
            None => self.shared.big_checksum(n),
        };
        let close = req.query_flag("close");
        // HTTP/1.0 clients cannot receive chunked: fall back to read-until-close.
        let chunked = req.query_flag("chunked") && !http10;
        let close_delimited = close || (req.query_flag("chunked") && http10);
        let keep = keep && !close_delimited;
        let framing = if close_delimited {
            String::new()
        } else if chunked {
            "Transfer-Encoding: chunked\r\n".to_owned()
        } else {
            format!("Content-Length: {n}\r\n")
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\n{}Content-Type: application/octet-stream\r\nX-Body-Checksum: {checksum}\r\nX-Body-Length: {n}\r\n{framing}\r\n",
            self.common_headers(keep, http10),
        );
        if req.method == "HEAD" {
            self.stream.write_all(head.as_bytes())?;
            return Ok(keep);
        }
        if let (Some(body), false) = (&cached, chunked) {
            // The common case: head and body in one write.
            self.out.clear();
            self.out.extend_from_slice(head.as_bytes());
            self.out.extend_from_slice(&body.bytes);
            self.send_out(head.len())?;
            return Ok(keep);
        }
        self.stream.write_all(head.as_bytes())?;
        let fault = self.body_fault.take();
        let stop_at = if fault == Some(FaultKind::Truncate) {
            self.force_close = true;
            n / 2
        } else {
            n
        };
        let corrupt_at = (fault == Some(FaultKind::Corrupt)).then_some(n / 2);
        // Various chunk sizes, including tiny ones, to exercise chunk parsing in the proxy.
        const SIZES: [usize; 8] = [1, 7, 100, 4096, 65536, 13, 16384, 3];
        let mut buf = std::mem::take(&mut self.tmp);
        let mut offset = 0u64;
        let mut i = 0usize;
        let result = (|| {
            while offset < stop_at {
                let want = if chunked {
                    SIZES[i % SIZES.len()]
                } else {
                    buf.len()
                };
                i += 1;
                let len = (want as u64).min(stop_at - offset) as usize;
                match &cached {
                    Some(body) => {
                        let start = offset as usize;
                        buf[..len].copy_from_slice(&body.bytes[start..start + len]);
                    }
                    None => fill_pattern(offset, &mut buf[..len]),
                }
                if let Some(at) =
                    corrupt_at.filter(|&at| (offset..offset + len as u64).contains(&at))
                {
                    buf[(at - offset) as usize] ^= 0xff;
                }
                if chunked {
                    self.out.clear();
                    let _ = write!(self.out, "{len:x}\r\n");
                    self.out.extend_from_slice(&buf[..len]);
                    self.out.extend_from_slice(b"\r\n");
                    self.stream.write_all(&self.out)?;
                } else {
                    self.stream.write_all(&buf[..len])?;
                }
                offset += len as u64;
            }
            if chunked && stop_at == n {
                self.stream.write_all(b"0\r\n\r\n")?;
            }
            Ok(())
        })();
        self.tmp = buf;
        result.map(|()| keep)
    }

    fn upgrade(&mut self, req: &Request) -> io::Result<()> {
        // `/ws-frames`: a real WebSocket server; anything else: a raw byte echo.
        let frames = req.path.ends_with("/ws-frames");
        let accept = match req.header("sec-websocket-key") {
            Some(key) if frames => format!(
                "Sec-WebSocket-Accept: {}\r\n",
                websocket::accept_for(key.trim())
            ),
            _ => String::new(),
        };
        let head = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{accept}X-Backend: {}\r\nX-Connection-Id: {}\r\n\r\n",
            self.shared.name, self.id
        );
        self.stream.write_all(head.as_bytes())?;
        // Bytes the client sent right after the head belong to the tunnel.
        let pending = std::mem::take(&mut self.buf);
        if frames {
            self.stream.flush()?;
            websocket::serve_echo(&mut self.stream, pending)?;
            return self.stream.shutdown_write();
        }
        if !pending.is_empty() {
            self.stream.write_all(&pending)?;
        }
        echo(&mut self.stream)
    }
}
