//! In-process integration: this test plays the master (socketpair channel, Hello, Start with a
//! real listening socket) and runs `zentinel_worker::run` in a thread, in front of a tiny real
//! backend. Every wait has a deadline.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use zentinel_protocol::config::*;
use zentinel_protocol::messages::*;
use zentinel_protocol::Channel;

const WAIT: Duration = Duration::from_secs(10);

/// A backend answering every request with `200`, body `path=<target>;xff=<X-Forwarded-For>`,
/// keep-alive. Reports each request head it saw on `seen`.
fn backend() -> (SocketAddr, mpsc::Receiver<(usize, String)>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for (conn_id, conn) in l.incoming().enumerate() {
            let Ok(mut c) = conn else { return };
            let tx = tx.clone();
            thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match c.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    buf.drain(..end);
                    let target = head.split(' ').nth(1).unwrap_or("").to_string();
                    let xff = head
                        .lines()
                        .find_map(|l| {
                            let (n, v) = l.split_once(':')?;
                            n.eq_ignore_ascii_case("x-forwarded-for")
                                .then(|| v.trim().to_string())
                        })
                        .unwrap_or_default();
                    let cl: usize = head
                        .lines()
                        .find_map(|l| {
                            let (n, v) = l.split_once(':')?;
                            n.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    while buf.len() < cl {
                        match c.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let req_body: Vec<u8> = buf.drain(..cl).collect();
                    if head.to_ascii_lowercase().contains("\r\nupgrade: echo\r\n") {
                        // Switch protocols, then echo raw bytes until EOF.
                        let _ = tx.send((conn_id, head));
                        let _ = c.write_all(
                            b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
                        );
                        let _ = c.write_all(&buf);
                        while let Ok(n) = c.read(&mut chunk) {
                            if n == 0 || c.write_all(&chunk[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = c.shutdown(std::net::Shutdown::Write);
                        return;
                    }
                    let _ = tx.send((conn_id, head));
                    let mut body = format!("path={target};xff={xff}");
                    if cl > 0 {
                        let sum: u64 = req_body.iter().map(|&b| u64::from(b)).sum();
                        body.push_str(&format!(";len={cl};sum={sum}"));
                    }
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{body}",
                        body.len()
                    );
                    if c.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// Echo server for the TCP listener: returns everything it read once the client half-closes,
/// then half-closes itself.
fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { return };
            thread::spawn(move || {
                let mut all = Vec::new();
                if c.read_to_end(&mut all).is_ok() {
                    let _ = c.write_all(&all);
                    let _ = c.shutdown(std::net::Shutdown::Write);
                }
            });
        }
    });
    addr
}

/// An address nothing listens on.
fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn upstream(name: &str, addr: SocketAddr) -> UpstreamConfig {
    UpstreamConfig {
        name: name.into(),
        targets: vec![UpstreamTarget {
            address: addr.to_string(),
            weight: 1,
        }],
        load_balancing: LoadBalancing::RoundRobin,
        sticky: None,
        pool: ConnectionPool::default(),
        timeouts: UpstreamTimeouts::default(),
        health_check: None,
        // Off: these tests count every failover attempt, which passive marking (on by
        // default) would cut short after a target's first failure.
        passive_health: zentinel_protocol::config::PassiveHealth {
            max_fails: 0,
            fail_timeout_secs: 10,
        },
        circuit_breaker: None,
        tls: None,
        http: UpstreamHttp::default(),
    }
}

fn config(listener: SocketAddr, tcp: SocketAddr, backend: SocketAddr) -> ProxyConfig {
    ProxyConfig {
        system: SystemConfig {
            graceful_shutdown_timeout_secs: 5,
            ..SystemConfig::default()
        },
        listeners: vec![
            ListenerConfig {
                route_scope: None,
                max_concurrent_streams: 100,
                keepalive_max_requests: 0,
                name: "web".into(),
                address: listener.to_string(),
                protocol: ListenerProtocol::Http,
                backlog: DEFAULT_BACKLOG,
                request_timeout_secs: 5,
                keepalive_timeout_secs: 30,
                default_route: None,
                upstream: None,
                access_log: None,
                tls: None,
            },
            ListenerConfig {
                route_scope: None,
                max_concurrent_streams: 100,
                keepalive_max_requests: 0,
                name: "tcp".into(),
                address: tcp.to_string(),
                protocol: ListenerProtocol::Tcp,
                backlog: DEFAULT_BACKLOG,
                request_timeout_secs: 5,
                keepalive_timeout_secs: 30,
                default_route: None,
                upstream: Some("echo".into()),
                access_log: None,
                tls: None,
            },
        ],
        routes: vec![
            RouteConfig {
                scope: None,
                extras: None,
                name: "static".into(),
                priority: PRIORITY_HIGH,
                service_type: ServiceType::Web,
                retry_policy: None,
                policies: Default::default(),
                matches: vec![RouteMatch::Path(vec!["/static".into()])],
                action: RouteAction::Static(StaticResponse {
                    status: 200,
                    body: "hello static".into(),
                    content_type: "text/plain".into(),
                }),
            },
            RouteConfig {
                scope: None,
                extras: None,
                name: "dead".into(),
                priority: PRIORITY_HIGH,
                service_type: ServiceType::Web,
                retry_policy: None,
                policies: Default::default(),
                matches: vec![RouteMatch::Host("dead.test".into())],
                action: RouteAction::Upstream("dead".into()),
            },
            RouteConfig {
                scope: None,
                extras: None,
                name: "app".into(),
                priority: PRIORITY_NORMAL,
                service_type: ServiceType::Web,
                retry_policy: None,
                policies: Default::default(),
                matches: vec![
                    RouteMatch::Host("app.test".into()),
                    RouteMatch::Host("*.app.test".into()),
                ],
                action: RouteAction::Upstream("backend".into()),
            },
        ],
        upstreams: vec![
            upstream("backend", backend),
            upstream("dead", dead_addr()),
            upstream("echo", echo_server()),
        ],
        limits: Limits::default(),
        filters: Vec::new(),
    }
}

struct Harness {
    master: Channel,
    worker: Option<JoinHandle<Result<(), String>>>,
    listen_addr: SocketAddr,
    tcp_addr: SocketAddr,
    /// (backend connection number, request head) per request the backend saw.
    backend_seen: mpsc::Receiver<(usize, String)>,
    /// The configuration sent with `Start` (a base for `Reconfigure`).
    config: ProxyConfig,
    /// `web` and `tcp`, kept open for the whole test, as the master would.
    listeners: [TcpListener; 2],
}

impl Harness {
    fn start() -> Harness {
        Harness::start_with(|_| {})
    }

    /// Start with the standard config changed by `tweak` (extra routes, upstreams, timeouts).
    fn start_with(tweak: impl FnOnce(&mut ProxyConfig)) -> Harness {
        let (backend_addr, backend_seen) = backend();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let listen_addr = listener.local_addr().unwrap();
        let tcp_listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp_addr = tcp_listener.local_addr().unwrap();
        let (master_end, worker_end) = UnixStream::pair().unwrap();
        let worker_fd: OwnedFd = worker_end.into();
        let worker =
            thread::spawn(move || zentinel_worker::run(worker_fd).map_err(|e| e.to_string()));
        let mut master = Channel::new(master_end);
        let frame = master.recv_timeout(WAIT).expect("worker hello");
        match frame.deserialize::<WorkerMessage>().unwrap() {
            WorkerMessage::Hello(h) => assert_eq!(h.protocol_version, PROTOCOL_VERSION),
            other => panic!("expected Hello, got {other:?}"),
        }
        master
            .send(
                &MasterMessage::Hello(Hello {
                    protocol_version: PROTOCOL_VERSION,
                    pid: std::process::id(),
                    software_version: "test".into(),
                }),
                &[],
            )
            .unwrap();
        let mut cfg = config(listen_addr, tcp_addr, backend_addr);
        tweak(&mut cfg);
        let start = WorkerStart {
            worker_id: 1,
            generation: 7,
            config: Box::new(cfg.clone()),
            listeners: vec![
                ListenerHandle {
                    name: "web".into(),
                    address: listen_addr.to_string(),
                },
                ListenerHandle {
                    name: "tcp".into(),
                    address: tcp_addr.to_string(),
                },
            ],
            ticket_keys: Box::default(),
            session_cache: None,
        };
        master
            .send(
                &MasterMessage::Start(start),
                &[listener.as_fd(), tcp_listener.as_fd()],
            )
            .unwrap();
        let frame = master.recv_timeout(WAIT).expect("worker ready");
        match frame.deserialize::<WorkerMessage>().unwrap() {
            WorkerMessage::Ready => {}
            other => panic!("expected Ready, got {other:?}"),
        }
        Harness {
            master,
            worker: Some(worker),
            listen_addr,
            tcp_addr,
            backend_seen,
            config: cfg,
            listeners: [listener, tcp_listener],
        }
    }

    fn recv(&mut self) -> WorkerMessage {
        self.master
            .recv_timeout(WAIT)
            .expect("message from worker")
            .deserialize::<WorkerMessage>()
            .unwrap()
    }

    /// Wait (bounded) for the worker thread to return.
    fn join(&mut self) -> Result<(), String> {
        let h = self.worker.take().expect("worker running");
        let deadline = Instant::now() + WAIT;
        while !h.is_finished() {
            assert!(Instant::now() < deadline, "worker did not exit in time");
            thread::sleep(Duration::from_millis(10));
        }
        h.join().expect("worker thread panicked")
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.listen_addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s
    }
}

struct Response {
    status: u16,
    head: String,
    /// Decoded.
    body: Vec<u8>,
    /// As received (chunked framing included).
    raw_body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// Read one Content-Length-framed response (what this test's backend and the proxy's own
/// responses use).
fn read_response(s: &mut TcpStream, pending: &mut Vec<u8>) -> Response {
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).expect("read response head");
        assert!(n > 0, "connection closed before a response head");
        pending.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(pending[..end].to_vec()).unwrap();
    pending.drain(..end);
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut resp = Response {
        status,
        head,
        body: Vec::new(),
        raw_body: Vec::new(),
    };
    let len: usize = resp
        .header("content-length")
        .map(|v| v.parse().unwrap())
        .unwrap_or(0);
    while pending.len() < len {
        let n = s.read(&mut chunk).expect("read response body");
        assert!(n > 0, "connection closed inside a response body");
        pending.extend_from_slice(&chunk[..n]);
    }
    resp.body = pending.drain(..len).collect();
    resp
}

fn assert_eof(s: &mut TcpStream) {
    let mut b = [0u8; 64];
    let n = s.read(&mut b).expect("read until EOF");
    assert_eq!(n, 0, "expected the proxy to close the connection");
}

#[test]
fn proxies_routes_and_drains() {
    let mut h = Harness::start();
    let mut c = h.connect();
    let mut pending = Vec::new();

    // Proxied, with forwarding headers; two requests pipelined on one connection.
    c.write_all(
        b"GET /one?x=1 HTTP/1.1\r\nHost: app.test\r\n\r\nGET /two HTTP/1.1\r\nHost: deep.sub.app.test:8080\r\n\r\n",
    )
    .unwrap();
    let r1 = read_response(&mut c, &mut pending);
    assert_eq!(r1.status, 200, "{}", r1.head);
    assert_eq!(
        String::from_utf8_lossy(&r1.body),
        "path=/one?x=1;xff=127.0.0.1"
    );
    let r2 = read_response(&mut c, &mut pending);
    assert_eq!(r2.status, 200);
    assert_eq!(String::from_utf8_lossy(&r2.body), "path=/two;xff=127.0.0.1");
    let (_, seen) = h.backend_seen.recv_timeout(WAIT).unwrap();
    assert!(seen.starts_with("GET /one?x=1 HTTP/1.1\r\n"), "{seen}");

    // Static route, and no route (bare suffix does not match `*.app.test`).
    c.write_all(b"GET /static HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let r = read_response(&mut c, &mut pending);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"hello static"[..]));
    c.write_all(b"GET /x HTTP/1.1\r\nHost: other.test\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut c, &mut pending).status, 404);

    // A malformed request gets its error status and the connection closes.
    let mut bad = h.connect();
    bad.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap(); // HTTP/1.1 without Host
    let mut bp = Vec::new();
    let r = read_response(&mut bad, &mut bp);
    assert_eq!(r.status, 400);
    assert_eof(&mut bad);
    drop(bad);

    // The closed connection ends its linger on our EOF: wait until only `c` remains.
    let deadline = Instant::now() + WAIT;
    loop {
        h.master
            .send(&MasterMessage::StatusRequest { request_id: 11 }, &[])
            .unwrap();
        match h.recv() {
            WorkerMessage::Status {
                request_id: 11,
                counters,
                ..
            } if counters.active_connections == 1 => break,
            WorkerMessage::Status { request_id: 11, .. } => {}
            other => panic!("expected Status, got {other:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "lingering connection never closed"
        );
        thread::sleep(Duration::from_millis(10));
    }

    h.master
        .send(&MasterMessage::StatusRequest { request_id: 12 }, &[])
        .unwrap();
    match h.recv() {
        WorkerMessage::Status {
            request_id: 12,
            counters: s,
            ..
        } => {
            assert_eq!(s.requests_total, 5, "{s:?}");
            assert_eq!(s.responses_2xx, 3, "{s:?}");
            assert_eq!(s.responses_4xx, 2, "{s:?}");
            assert_eq!(s.accepted_total, 2, "{s:?}");
            assert!(s.bytes_in > 0 && s.bytes_out > 0);
        }
        other => panic!("expected Status, got {other:?}"),
    }

    // Drain: the idle keep-alive connection stays usable; its next response says close.
    h.master
        .send(&MasterMessage::Drain { timeout_ms: 5000 }, &[])
        .unwrap();
    match h.recv() {
        WorkerMessage::Draining { active_connections } => assert_eq!(active_connections, 1),
        other => panic!("expected Draining, got {other:?}"),
    }
    c.write_all(b"GET /last HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .unwrap();
    let r = read_response(&mut c, &mut pending);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("connection").as_deref(),
        Some("close"),
        "{}",
        r.head
    );
    assert_eof(&mut c);
    drop(c);

    // No session left: run() returns well before the 5 s drain deadline.
    let t = Instant::now();
    h.join().expect("worker exits cleanly after draining");
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "exit waited for the deadline"
    );
}

#[test]
fn drain_deadline_ends_idle_connections() {
    let mut h = Harness::start();
    let mut c = h.connect();
    let mut pending = Vec::new();
    c.write_all(b"GET /a HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut c, &mut pending).status, 200);
    h.master
        .send(&MasterMessage::Drain { timeout_ms: 1500 }, &[])
        .unwrap();
    assert!(matches!(h.recv(), WorkerMessage::Draining { .. }));
    // The idle connection is half-closed shortly before the deadline: EOF, not a reset.
    assert_eof(&mut c);
    h.join().expect("worker exits at the drain deadline");
}

#[test]
fn stop_exits_at_once() {
    let mut h = Harness::start();
    let _c = h.connect();
    h.master.send(&MasterMessage::Stop, &[]).unwrap();
    h.join().expect("worker exits cleanly on Stop");
}

#[test]
fn master_gone_means_drain_then_exit() {
    let mut h = Harness::start();
    // Replace the channel with a dead one: dropping the old one is the master's EOF.
    let (dead, _other) = UnixStream::pair().unwrap();
    drop(std::mem::replace(&mut h.master, Channel::new(dead)));
    h.join().expect("worker exits after the master went away");
}

#[test]
fn request_body_streams_and_upstream_errors_are_502() {
    let mut h = Harness::start();
    let mut c = h.connect();
    let mut pending = Vec::new();
    // A body larger than one buffer, streamed through with Content-Length.
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let sum: u64 = body.iter().map(|&b| u64::from(b)).sum();
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes()).unwrap();
    c.write_all(&body).unwrap();
    let r = read_response(&mut c, &mut pending);
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        format!("path=/upload;xff=127.0.0.1;len={};sum={sum}", body.len())
    );
    // The upstream connection went back to the pool: the next request reuses it.
    c.write_all(b"GET /again HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut c, &mut pending).status, 200);
    let (first, h1) = h.backend_seen.recv_timeout(WAIT).unwrap();
    let (second, h2) = h.backend_seen.recv_timeout(WAIT).unwrap();
    assert!(h1.starts_with("POST /upload ") && h2.starts_with("GET /again "));
    assert_eq!(
        first, second,
        "the pooled upstream connection was not reused"
    );

    // Connection refused upstream: 502, and the client connection stays usable.
    c.write_all(b"GET / HTTP/1.1\r\nHost: dead.test\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut c, &mut pending).status, 502);
    c.write_all(b"GET /after HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut c, &mut pending).status, 200);

    h.master
        .send(&MasterMessage::StatusRequest { request_id: 13 }, &[])
        .unwrap();
    match h.recv() {
        WorkerMessage::Status {
            request_id: 13,
            counters: s,
            ..
        } => {
            assert_eq!(s.upstream_errors, 1, "{s:?}");
            assert_eq!(s.responses_5xx, 1, "{s:?}");
        }
        other => panic!("expected Status, got {other:?}"),
    }
    h.master.send(&MasterMessage::Stop, &[]).unwrap();
    h.join().unwrap();
}

#[test]
fn tcp_listener_relays_with_half_close() {
    let mut h = Harness::start();
    let mut c = TcpStream::connect(h.tcp_addr).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 13) as u8).collect();
    c.write_all(&data).unwrap();
    // Our FIN must reach the echo server through the proxy, and its FIN come back.
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data);
    h.master
        .send(&MasterMessage::Drain { timeout_ms: 5000 }, &[])
        .unwrap();
    assert!(matches!(h.recv(), WorkerMessage::Draining { .. }));
    h.join().unwrap();
}

#[test]
fn upgrade_becomes_a_tunnel_that_survives_drain() {
    let mut h = Harness::start();
    let mut c = h.connect();
    let mut pending = Vec::new();
    c.write_all(
        b"GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .unwrap();
    let r = read_response(&mut c, &mut pending);
    assert_eq!(r.status, 101, "{}", r.head);
    assert!(pending.is_empty());
    // Draining keeps tunnels until they end.
    h.master
        .send(&MasterMessage::Drain { timeout_ms: 5000 }, &[])
        .unwrap();
    assert!(matches!(
        h.recv(),
        WorkerMessage::Draining {
            active_connections: 1
        }
    ));
    c.write_all(b"hello through the tunnel").unwrap();
    let mut got = vec![0u8; 24];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello through the tunnel");
    c.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eof(&mut c);
    let t = Instant::now();
    h.join().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "exit waited for the deadline"
    );
}

// ---------------------------------------------------------------------------------------------
// A configurable backend and stream helpers for the tests below.

/// Buffered reads over a stream for the line/length oriented parsing both test ends need.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn new(s: TcpStream) -> Conn {
        Conn { s, buf: Vec::new() }
    }

    /// Read more bytes into `buf`. false: EOF or error.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.s.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    fn head(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..i + 4]).to_string();
                self.buf.drain(..i + 4);
                return Some(head);
            }
            if !self.fill() {
                return None;
            }
        }
    }

    /// One line, CRLF included.
    fn line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                return Some(self.buf.drain(..i + 2).collect());
            }
            if !self.fill() {
                return None;
            }
        }
    }

    fn exact(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill() {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    /// A chunked body: (the bytes as received, the decoded data).
    fn chunked(&mut self) -> Option<(Vec<u8>, Vec<u8>)> {
        let mut raw = Vec::new();
        let mut data = Vec::new();
        loop {
            let line = self.line()?;
            raw.extend_from_slice(&line);
            let text = String::from_utf8_lossy(&line);
            let size = text.trim_end().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
            if size == 0 {
                break;
            }
            let chunk = self.exact(size + 2)?;
            assert_eq!(&chunk[size..], b"\r\n", "chunk data not followed by CRLF");
            data.extend_from_slice(&chunk[..size]);
            raw.extend_from_slice(&chunk);
        }
        loop {
            let line = self.line()?;
            raw.extend_from_slice(&line);
            if line == b"\r\n" {
                return Some((raw, data));
            }
        }
    }

    fn read_to_end(&mut self) -> Vec<u8> {
        while self.fill() {}
        std::mem::take(&mut self.buf)
    }

    /// One response: framed by chunked, Content-Length, or the connection close.
    fn response(&mut self, request_was_head: bool) -> Response {
        let head = self
            .head()
            .expect("connection closed before a response head");
        let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
        let mut r = Response {
            status,
            head,
            body: Vec::new(),
            raw_body: Vec::new(),
        };
        let bodyless = request_was_head || (100..200).contains(&status) || status == 204;
        if bodyless {
            return r;
        }
        if r.header("transfer-encoding").as_deref() == Some("chunked") {
            let (raw, data) = self
                .chunked()
                .expect("connection closed inside a chunked body");
            r.raw_body = raw;
            r.body = data;
        } else if let Some(len) = r.header("content-length") {
            r.body = self
                .exact(len.parse().unwrap())
                .expect("connection closed inside a response body");
            r.raw_body = r.body.clone();
        } else {
            r.body = self.read_to_end();
            r.raw_body = r.body.clone();
        }
        r
    }

    fn assert_eof(&mut self) {
        assert!(self.buf.is_empty(), "unexpected bytes: {:?}", self.buf);
        assert!(!self.fill(), "expected the proxy to close the connection");
    }
}

fn header_of(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

fn byte_sum(b: &[u8]) -> u64 {
    b.iter().map(|&x| u64::from(x)).sum()
}

/// A chunked encoding of `n` deterministic bytes with chunk sizes from 1 byte to more than a
/// proxy buffer, an extension and a trailer: (encoded, data).
fn chunked_payload(n: usize) -> (Vec<u8>, Vec<u8>) {
    let data: Vec<u8> = (0..n).map(|i| (i * 7 % 251) as u8).collect();
    let sizes = [1usize, 17, 1000, 4096, 30_000, 65_539, 3];
    let mut raw = Vec::new();
    let mut at = 0;
    for (k, size) in sizes.iter().cycle().enumerate() {
        if at == data.len() {
            break;
        }
        let size = (*size).min(data.len() - at);
        if k == 2 {
            raw.extend_from_slice(format!("{size:X};name=value\r\n").as_bytes());
        } else {
            raw.extend_from_slice(format!("{size:x}\r\n").as_bytes());
        }
        raw.extend_from_slice(&data[at..at + size]);
        raw.extend_from_slice(b"\r\n");
        at += size;
    }
    raw.extend_from_slice(b"0\r\nX-Trailer: done\r\n\r\n");
    (raw, data)
}

type Hold = Arc<(Mutex<bool>, Condvar)>;

fn release(hold: &Hold) {
    *hold.0.lock().unwrap() = true;
    hold.1.notify_all();
}

/// What an [`app_backend`] connection does besides answering.
#[derive(Clone, Default)]
struct BackendOpts {
    name: &'static str,
    /// Close each connection right after its first response, without `Connection: close`:
    /// a keep-alive connection the backend drops while it sits idle in the proxy's pool.
    close_after_first: bool,
    /// Read the second request of a connection, then close it unanswered: the close races
    /// with the proxy reusing the pooled connection, as when an idle timeout hits.
    drop_second: bool,
    /// `/hold` requests are answered once this is released.
    hold: Option<Hold>,
}

/// (backend name, connection number, request head, decoded request body).
type Seen = (&'static str, usize, String, Vec<u8>);

/// A keep-alive HTTP/1.1 backend that reports each request on `seen` and answers by path:
/// `/chunked/N`: a chunked response of N bytes ([`chunked_payload`]); `/big/N`: N bytes
/// with Content-Length; `/hang`: never answers; `/hold`: answers once `opts.hold` is
/// released; anything else: `200` with body `name=..;path=..;len=..;sum=..` over the request
/// body. Request bodies may be chunked; `Expect: 100-continue` gets a `100 Continue` first.
fn app_backend(opts: BackendOpts, seen: mpsc::Sender<Seen>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for (conn_id, conn) in l.incoming().enumerate() {
            let Ok(s) = conn else { return };
            let (opts, seen) = (opts.clone(), seen.clone());
            thread::spawn(move || serve_app(Conn::new(s), conn_id, &opts, &seen));
        }
    });
    addr
}

fn serve_app(mut c: Conn, conn_id: usize, opts: &BackendOpts, seen: &mpsc::Sender<Seen>) {
    for nth in 0.. {
        let Some(head) = c.head() else { return };
        if nth == 1 && opts.drop_second {
            let _ = seen.send((opts.name, conn_id, head, Vec::new()));
            return;
        }
        if header_of(&head, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
            let _ = c.s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let body = if header_of(&head, "transfer-encoding").as_deref() == Some("chunked") {
            match c.chunked() {
                Some((_, data)) => data,
                None => return,
            }
        } else {
            let len = header_of(&head, "content-length").map_or(0, |v| v.parse().unwrap());
            match c.exact(len) {
                Some(b) => b,
                None => return,
            }
        };
        let target = head.split(' ').nth(1).unwrap_or("").to_string();
        let _ = seen.send((opts.name, conn_id, head, body.clone()));
        let ok = if let Some(n) = target.strip_prefix("/chunked/") {
            let (raw, _) = chunked_payload(n.parse().unwrap());
            c.s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                .and_then(|_| c.s.write_all(&raw))
        } else if let Some(n) = target.strip_prefix("/big/") {
            let n: usize = n.parse().unwrap();
            let block = [b'x'; 64 * 1024];
            let mut r =
                c.s.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n").as_bytes());
            let mut left = n;
            while r.is_ok() && left > 0 {
                let k = left.min(block.len());
                r = c.s.write_all(&block[..k]);
                left -= k;
            }
            r
        } else if target == "/hang" {
            // Hold the connection, silent, until the proxy gives up on it.
            c.read_to_end();
            return;
        } else {
            if target == "/hold" {
                if let Some(hold) = &opts.hold {
                    let mut released = hold.0.lock().unwrap();
                    while !*released {
                        released = hold.1.wait_timeout(released, WAIT).unwrap().0;
                    }
                }
            }
            let text = format!(
                "name={};path={target};len={};sum={}",
                opts.name,
                body.len(),
                byte_sum(&body)
            );
            c.s.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{text}",
                    text.len()
                )
                .as_bytes(),
            )
        };
        if ok.is_err() || opts.close_after_first {
            return;
        }
    }
}

/// Route `host` to `up` (added to the config).
fn add_route(cfg: &mut ProxyConfig, host: &str, up: UpstreamConfig) {
    cfg.routes.push(RouteConfig {
        scope: None,
        extras: None,
        name: format!("to-{}", up.name),
        priority: PRIORITY_HIGH,
        service_type: ServiceType::Web,
        retry_policy: None,
        policies: Default::default(),
        matches: vec![RouteMatch::Host(host.into())],
        action: RouteAction::Upstream(up.name.clone()),
    });
    cfg.upstreams.push(up);
}

/// A fresh request id for each request these tests send, so that an answer echoing another
/// request's id fails them.
fn next_request_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn status(h: &mut Harness) -> WorkerCounters {
    let request_id = next_request_id();
    h.master
        .send(&MasterMessage::StatusRequest { request_id }, &[])
        .unwrap();
    match h.recv() {
        WorkerMessage::Status {
            request_id: echoed,
            counters,
            ..
        } if echoed == request_id => counters,
        other => panic!("expected Status {{ request_id: {request_id} }}, got {other:?}"),
    }
}

fn stop(mut h: Harness) {
    h.master.send(&MasterMessage::Stop, &[]).unwrap();
    h.join().unwrap();
}

/// A harness with `app_backend(opts)` behind host `<name>.test`.
fn harness_with_app(
    opts: BackendOpts,
    tweak: impl FnOnce(&mut ProxyConfig, &mut UpstreamConfig),
) -> (Harness, mpsc::Receiver<Seen>) {
    let (tx, rx) = mpsc::channel();
    let name = opts.name;
    let addr = app_backend(opts, tx);
    let h = Harness::start_with(|cfg| {
        let mut up = upstream(name, addr);
        tweak(cfg, &mut up);
        add_route(cfg, &format!("{name}.test"), up);
    });
    (h, rx)
}

#[test]
fn chunked_bodies_stream_through_both_ways() {
    let (mut h, seen) = harness_with_app(
        BackendOpts {
            name: "chunky",
            ..BackendOpts::default()
        },
        |_, _| {},
    );
    let mut c = Conn::new(h.connect());
    // Upload: a chunked request body larger than the proxy's buffers.
    let (raw, data) = chunked_payload(300_000);
    c.s.write_all(b"POST /up HTTP/1.1\r\nHost: chunky.test\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    c.s.write_all(&raw).unwrap();
    let r = c.response(false);
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        format!(
            "name=chunky;path=/up;len={};sum={}",
            data.len(),
            byte_sum(&data)
        )
    );
    let (_, _, head, body) = seen.recv_timeout(WAIT).unwrap();
    assert_eq!(
        header_of(&head, "transfer-encoding").as_deref(),
        Some("chunked")
    );
    assert!(body == data);

    // Download: a chunked response reaches an HTTP/1.1 client byte for byte.
    c.s.write_all(b"GET /chunked/250000 HTTP/1.1\r\nHost: chunky.test\r\n\r\n")
        .unwrap();
    let r = c.response(false);
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.header("content-length"), None);
    let (raw, data) = chunked_payload(250_000);
    assert!(r.raw_body == raw, "chunked response not forwarded as is");
    assert_eq!(byte_sum(&r.body), byte_sum(&data));
    assert!(r.header("connection").is_none(), "{}", r.head);

    // The connection stays in step for the next request.
    c.s.write_all(b"GET /after HTTP/1.1\r\nHost: chunky.test\r\n\r\n")
        .unwrap();
    let r = c.response(false);
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        "name=chunky;path=/after;len=0;sum=0"
    );
    assert_eq!(status(&mut h).client_errors, 0);
    stop(h);
}

#[test]
fn chunked_response_to_http10_client_is_decoded() {
    let (h, _seen) = harness_with_app(
        BackendOpts {
            name: "chunky",
            ..BackendOpts::default()
        },
        |_, _| {},
    );
    for keep_alive in ["", "Connection: keep-alive\r\n"] {
        let mut c = Conn::new(h.connect());
        c.s.write_all(
            format!("GET /chunked/200000 HTTP/1.0\r\nHost: chunky.test\r\n{keep_alive}\r\n")
                .as_bytes(),
        )
        .unwrap();
        let head = c.head().expect("response head");
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        assert_eq!(header_of(&head, "transfer-encoding"), None, "{head}");
        assert_eq!(header_of(&head, "content-length"), None, "{head}");
        // The close is the only end-of-body marker left, whatever the client asked for.
        assert_eq!(header_of(&head, "connection").as_deref(), Some("close"));
        let body = c.read_to_end();
        let (_, data) = chunked_payload(200_000);
        assert_eq!(body.len(), data.len());
        assert!(body == data, "decoded body differs");
    }
    stop(h);
}

#[test]
fn expect_100_continue_is_relayed_before_the_body() {
    let (h, seen) = harness_with_app(
        BackendOpts {
            name: "cont",
            ..BackendOpts::default()
        },
        |_, _| {},
    );
    let mut c = Conn::new(h.connect());
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 199) as u8).collect();
    c.s.write_all(
        format!(
            "POST /form HTTP/1.1\r\nHost: cont.test\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    // Nothing of the body is sent until the interim response arrives: a proxy that held the
    // 100 back would block here until the read timeout.
    let r = c.response(false);
    assert_eq!(r.status, 100, "{}", r.head);
    c.s.write_all(&body).unwrap();
    let r = c.response(false);
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        format!(
            "name=cont;path=/form;len={};sum={}",
            body.len(),
            byte_sum(&body)
        )
    );
    let (_, _, head, _) = seen.recv_timeout(WAIT).unwrap();
    assert_eq!(header_of(&head, "expect").as_deref(), Some("100-continue"));
    // Keep-alive still works after the interim response.
    c.s.write_all(b"GET /next HTTP/1.1\r\nHost: cont.test\r\n\r\n")
        .unwrap();
    assert_eq!(c.response(false).status, 200);
    stop(h);
}

#[test]
fn http10_clients_with_and_without_keep_alive() {
    let mut h = Harness::start();
    // Without keep-alive: the response says close and the connection ends.
    let mut c = Conn::new(h.connect());
    c.s.write_all(b"GET /ten HTTP/1.0\r\nHost: app.test\r\n\r\n")
        .unwrap();
    let r = c.response(false);
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    assert_eq!(String::from_utf8_lossy(&r.body), "path=/ten;xff=127.0.0.1");
    c.assert_eof();
    let (_, up_head) = h.backend_seen.recv_timeout(WAIT).unwrap();
    assert!(up_head.starts_with("GET /ten HTTP/1.1\r\n"), "{up_head}");

    // With keep-alive: said back to the client, and the connection serves several requests.
    let mut k = Conn::new(h.connect());
    for path in ["/k1", "/k2"] {
        k.s.write_all(
            format!("GET {path} HTTP/1.0\r\nHost: app.test\r\nConnection: keep-alive\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
        let r = k.response(false);
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("connection").as_deref(),
            Some("keep-alive"),
            "{}",
            r.head
        );
        assert_eq!(
            String::from_utf8_lossy(&r.body),
            format!("path={path};xff=127.0.0.1")
        );
    }
    // A 1.0 request without keep-alive ends it.
    k.s.write_all(b"GET /k3 HTTP/1.0\r\nHost: app.test\r\n\r\n")
        .unwrap();
    let r = k.response(false);
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    k.assert_eof();
    // Locally generated responses follow the same rules.
    let mut l = Conn::new(h.connect());
    l.s.write_all(b"GET /static HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap();
    let r = l.response(false);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"hello static"[..]));
    assert_eq!(r.header("connection").as_deref(), Some("keep-alive"));
    assert_eq!(status(&mut h).client_errors, 0);
    stop(h);
}

#[test]
fn silent_upstream_is_504_after_the_read_timeout() {
    let (mut h, _seen) = harness_with_app(
        BackendOpts {
            name: "slow",
            ..BackendOpts::default()
        },
        |_, up| up.timeouts.read_secs = 1,
    );
    let mut c = Conn::new(h.connect());
    let t = Instant::now();
    c.s.write_all(b"GET /hang HTTP/1.1\r\nHost: slow.test\r\n\r\n")
        .unwrap();
    let r = c.response(false);
    let took = t.elapsed();
    assert_eq!(r.status, 504, "{}", r.head);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "504 after {took:?}"
    );
    // The client connection stays usable (the request was complete).
    c.s.write_all(b"GET /fine HTTP/1.1\r\nHost: slow.test\r\n\r\n")
        .unwrap();
    let r = c.response(false);
    assert_eq!(r.status, 200, "{}", r.head);
    let s = status(&mut h);
    assert_eq!((s.upstream_errors, s.responses_5xx), (1, 1), "{s:?}");
    stop(h);
}

#[test]
fn dead_pooled_upstream_connection_is_retried() {
    let (tx, seen) = mpsc::channel();
    let closer = app_backend(
        BackendOpts {
            name: "closer",
            close_after_first: true,
            ..BackendOpts::default()
        },
        tx.clone(),
    );
    let dropper = app_backend(
        BackendOpts {
            name: "dropper",
            drop_second: true,
            ..BackendOpts::default()
        },
        tx,
    );
    let mut h = Harness::start_with(|cfg| {
        add_route(cfg, "closer.test", upstream("closer", closer));
        add_route(cfg, "dropper.test", upstream("dropper", dropper));
    });
    let mut c = Conn::new(h.connect());

    // The backend closes its keep-alive connection after each response.
    for path in ["/1", "/2", "/3"] {
        c.s.write_all(format!("GET {path} HTTP/1.1\r\nHost: closer.test\r\n\r\n").as_bytes())
            .unwrap();
        let r = c.response(false);
        assert_eq!(r.status, 200, "{}", r.head);
        assert_eq!(
            String::from_utf8_lossy(&r.body),
            format!("name=closer;path={path};len=0;sum=0")
        );
    }
    let conns: Vec<usize> = (0..3).map(|_| seen.recv_timeout(WAIT).unwrap().1).collect();
    assert_eq!(conns, vec![0, 1, 2]);

    // The pooled connection is still open when reused, and the backend closes it on the
    // request: the GET is sent again on a fresh connection.
    c.s.write_all(b"GET /a HTTP/1.1\r\nHost: dropper.test\r\n\r\n")
        .unwrap();
    assert_eq!(c.response(false).status, 200);
    c.s.write_all(b"GET /b HTTP/1.1\r\nHost: dropper.test\r\n\r\n")
        .unwrap();
    let r = c.response(false);
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        "name=dropper;path=/b;len=0;sum=0"
    );
    let got: Vec<(usize, String)> = (0..3)
        .map(|_| {
            let (_, conn, head, _) = seen.recv_timeout(WAIT).unwrap();
            (conn, head.split(' ').nth(1).unwrap().to_string())
        })
        .collect();
    assert_eq!(
        got,
        vec![(0, "/a".into()), (0, "/b".into()), (1, "/b".into())]
    );
    assert_eq!(status(&mut h).upstream_errors, 0);

    // A POST is not idempotent: it is never sent twice, the client gets 502 instead.
    c.s.write_all(b"POST /c HTTP/1.1\r\nHost: dropper.test\r\nContent-Length: 5\r\n\r\nhello")
        .unwrap();
    let r = c.response(false);
    assert_eq!(r.status, 502, "{}", r.head);
    let (_, conn, head, _) = seen.recv_timeout(WAIT).unwrap();
    assert!(head.starts_with("POST /c ") && conn == 1, "{conn} {head}");
    assert!(
        seen.recv_timeout(Duration::from_millis(300)).is_err(),
        "the POST was replayed"
    );
    assert_eq!(status(&mut h).upstream_errors, 1);
    // Not even without a body: the backend may have acted on it before closing.
    c.s.write_all(b"GET /d HTTP/1.1\r\nHost: dropper.test\r\n\r\n")
        .unwrap();
    assert_eq!(c.response(false).status, 200);
    c.s.write_all(b"POST /e HTTP/1.1\r\nHost: dropper.test\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    let r = c.response(false);
    assert_eq!(r.status, 502, "{}", r.head);
    let got: Vec<(usize, String)> = (0..2)
        .map(|_| {
            let (_, conn, head, _) = seen.recv_timeout(WAIT).unwrap();
            (conn, head.split(' ').nth(1).unwrap().to_string())
        })
        .collect();
    assert_eq!(got, vec![(2, "/d".into()), (2, "/e".into())]);
    assert!(
        seen.recv_timeout(Duration::from_millis(300)).is_err(),
        "the POST was replayed"
    );
    assert_eq!(status(&mut h).upstream_errors, 2);
    stop(h);
}

#[test]
fn least_connections_prefers_the_less_busy_backend() {
    let hold: Hold = Arc::new((Mutex::new(false), Condvar::new()));
    let (tx, seen) = mpsc::channel();
    let mut targets = Vec::new();
    for name in ["a", "b"] {
        let addr = app_backend(
            BackendOpts {
                name,
                hold: Some(hold.clone()),
                ..BackendOpts::default()
            },
            tx.clone(),
        );
        targets.push(UpstreamTarget {
            address: addr.to_string(),
            weight: 1,
        });
    }
    let h = Harness::start_with(|cfg| {
        let mut up = upstream("lc", dead_addr());
        up.targets = targets;
        up.load_balancing = LoadBalancing::LeastConnections;
        add_route(cfg, "lc.test", up);
    });

    let mut busy = Conn::new(h.connect());
    busy.s
        .write_all(b"GET /hold HTTP/1.1\r\nHost: lc.test\r\n\r\n")
        .unwrap();
    let (busy_name, _, _, _) = seen.recv_timeout(WAIT).unwrap();
    let other = if busy_name == "a" { "b" } else { "a" };

    // While one backend holds a request, every new one goes to the other (round-robin
    // would alternate).
    let mut c = Conn::new(h.connect());
    for i in 0..3 {
        let mut fresh;
        let conn = if i == 2 {
            fresh = Conn::new(h.connect());
            &mut fresh
        } else {
            &mut c
        };
        conn.s
            .write_all(format!("GET /q{i} HTTP/1.1\r\nHost: lc.test\r\n\r\n").as_bytes())
            .unwrap();
        let r = conn.response(false);
        assert_eq!(r.status, 200, "{}", r.head);
        assert_eq!(
            String::from_utf8_lossy(&r.body),
            format!("name={other};path=/q{i};len=0;sum=0")
        );
    }

    release(&hold);
    let r = busy.response(false);
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        format!("name={busy_name};path=/hold;len=0;sum=0")
    );
    stop(h);
}

#[test]
fn slowloris_request_head_is_cut_off() {
    let mut h = Harness::start_with(|cfg| cfg.listeners[0].request_timeout_secs = 1);
    let mut c = h.connect();
    let t = Instant::now();
    c.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n")
        .unwrap();
    // Trickle one header byte every 50 ms: each byte is progress, none completes the head.
    let stop_trickle = Arc::new(AtomicBool::new(false));
    let mut w = c.try_clone().unwrap();
    let flag = stop_trickle.clone();
    let trickler = thread::spawn(move || {
        for &b in b"X-Slow: yes\r\n".iter().cycle() {
            if flag.load(Ordering::Relaxed) || w.write_all(&[b]).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
    });
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    let closed_or_answered = loop {
        match c.read(&mut chunk) {
            Ok(0) => break "closed",
            Ok(n) => {
                got.extend_from_slice(&chunk[..n]);
                if got.windows(4).any(|w| w == b"\r\n\r\n") {
                    break "answered";
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break "closed",
            Err(e) => panic!("no answer and no close: {e}"),
        }
    };
    let took = t.elapsed();
    stop_trickle.store(true, Ordering::Relaxed);
    trickler.join().unwrap();
    if closed_or_answered == "answered" {
        let head = String::from_utf8_lossy(&got);
        assert!(head.starts_with("HTTP/1.1 408 "), "{head}");
        assert_eq!(header_of(&head, "connection").as_deref(), Some("close"));
    }
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "cut off after {took:?}"
    );
    assert_eq!(status(&mut h).client_errors, 1);
    stop(h);
}

#[test]
fn client_that_stops_reading_is_cut_off() {
    let (mut h, seen) = harness_with_app(
        BackendOpts {
            name: "big",
            ..BackendOpts::default()
        },
        |cfg, _| cfg.listeners[0].request_timeout_secs = 1,
    );
    const SIZE: usize = 256 * 1024 * 1024;
    let mut c = Conn::new(h.connect());
    c.s.write_all(format!("GET /big/{SIZE} HTTP/1.1\r\nHost: big.test\r\n\r\n").as_bytes())
        .unwrap();
    seen.recv_timeout(WAIT).unwrap();
    // Read nothing: socket buffers fill up, then the proxy makes no progress writing to us.
    let deadline = Instant::now() + WAIT;
    while status(&mut h).active_connections > 0 {
        assert!(
            Instant::now() < deadline,
            "a client that reads nothing kept its connection"
        );
        thread::sleep(Duration::from_millis(20));
    }
    // What the client does get is a truncated response, then the end of the connection.
    let head = c.head().expect("response head");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let rest = c.read_to_end();
    assert!(rest.len() < SIZE, "the whole body arrived");
    let s = status(&mut h);
    assert_eq!(s.client_errors, 1, "{s:?}");
    assert_eq!(s.upstream_errors, 0, "{s:?}");
    stop(h);
}

#[test]
fn slow_reader_is_not_mistaken_for_a_silent_upstream() {
    let (mut h, _seen) = harness_with_app(
        BackendOpts {
            name: "big",
            ..BackendOpts::default()
        },
        |_, up| up.timeouts.read_secs = 1,
    );
    const SIZE: usize = 64 * 1024 * 1024;
    let mut c = Conn::new(h.connect());
    c.s.write_all(format!("GET /big/{SIZE} HTTP/1.1\r\nHost: big.test\r\n\r\n").as_bytes())
        .unwrap();
    let head = c.head().expect("response head");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    // A pause longer than the upstream read timeout (but shorter than the client's request
    // timeout): every buffer fills, the proxy stops reading the upstream, which is then
    // silent through no fault of its own.
    thread::sleep(Duration::from_millis(2500));
    let body = c.exact(SIZE).expect("the whole body");
    assert!(body.iter().all(|&b| b == b'x'));
    let s = status(&mut h);
    assert_eq!((s.upstream_errors, s.client_errors), (0, 0), "{s:?}");
    stop(h);
}

/// `up` with `targets` instead of its own, weight 1 each.
fn with_targets(mut up: UpstreamConfig, targets: &[SocketAddr]) -> UpstreamConfig {
    up.targets = targets
        .iter()
        .map(|a| UpstreamTarget {
            address: a.to_string(),
            weight: 1,
        })
        .collect();
    up
}

#[test]
fn connect_failure_fails_over_to_another_target() {
    let (tx, seen) = mpsc::channel();
    let live = app_backend(
        BackendOpts {
            name: "live",
            ..BackendOpts::default()
        },
        tx,
    );
    let dead = dead_addr();
    let mut h = Harness::start_with(|cfg| {
        // The refused target first: round-robin picks it for the very first request.
        let mixed = with_targets(upstream("mixed", live), &[dead, live]);
        add_route(cfg, "mixed.test", mixed);
        let all_dead = with_targets(upstream("alldead", dead), &[dead, dead_addr()]);
        add_route(cfg, "alldead.test", all_dead);
    });
    let mut c = Conn::new(h.connect());
    // Nothing was sent to a target that refused the connect, so even a POST goes elsewhere.
    for i in 0..6 {
        let req = if i % 2 == 0 {
            format!("GET /{i} HTTP/1.1\r\nHost: mixed.test\r\n\r\n")
        } else {
            format!("POST /{i} HTTP/1.1\r\nHost: mixed.test\r\nContent-Length: 5\r\n\r\nhello")
        };
        c.s.write_all(req.as_bytes()).unwrap();
        let r = c.response(false);
        assert_eq!(r.status, 200, "request {i}: {}", r.head);
        let (len, sum) = if i % 2 == 0 { (0, 0) } else { (5, 532) };
        assert_eq!(
            String::from_utf8_lossy(&r.body),
            format!("name=live;path=/{i};len={len};sum={sum}")
        );
        let (_, _, head, _) = seen.recv_timeout(WAIT).unwrap();
        assert!(head.contains(&format!(" /{i} ")), "{head}");
    }
    assert!(
        seen.recv_timeout(Duration::from_millis(200)).is_err(),
        "a request reached the backend twice"
    );
    // Equal weights alternate, so the refused target was tried for every other request,
    // each failure counted once; no client saw a 5xx.
    let s = status(&mut h);
    assert_eq!((s.upstream_errors, s.responses_5xx), (3, 0), "{s:?}");

    // Only when every target of the pool has been tried once is the answer 502, and the
    // client connection stays usable.
    c.s.write_all(b"GET /x HTTP/1.1\r\nHost: alldead.test\r\n\r\n")
        .unwrap();
    assert_eq!(c.response(false).status, 502);
    let s = status(&mut h);
    assert_eq!((s.upstream_errors, s.responses_5xx), (5, 1), "{s:?}");
    c.s.write_all(b"GET /y HTTP/1.1\r\nHost: mixed.test\r\n\r\n")
        .unwrap();
    assert_eq!(c.response(false).status, 200);
    stop(h);
}

/// A listener whose accept queue is full: further SYNs are dropped, so connects to it hang
/// until they time out. Keep the returned sockets (the listener and the connections filling
/// its queue) for as long as it must hang: a closed listener refuses instead.
fn blackhole() -> (SocketAddr, socket2::Socket, Vec<TcpStream>) {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    loop {
        assert!(fillers.len() < 64, "the accept queue never filled up");
        match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(s) => fillers.push(s),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => break,
            Err(e) => panic!("filling the accept queue: {e}"),
        }
    }
    (addr, sock, fillers)
}

#[test]
fn connect_timeout_fails_over_to_another_target() {
    let (tx, seen) = mpsc::channel();
    let live = app_backend(
        BackendOpts {
            name: "live",
            ..BackendOpts::default()
        },
        tx,
    );
    let (hole, _listener, _fillers) = blackhole();
    let mut h = Harness::start_with(|cfg| {
        let mut up = with_targets(upstream("slow", live), &[hole, live]);
        up.timeouts.connect_secs = 1;
        add_route(cfg, "slow.test", up);
    });
    let mut c = Conn::new(h.connect());
    let started = Instant::now();
    c.s.write_all(b"POST /t HTTP/1.1\r\nHost: slow.test\r\nContent-Length: 2\r\n\r\nok")
        .unwrap();
    let r = c.response(false);
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        "name=live;path=/t;len=2;sum=218"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "answered before the connect timeout: the first target was not the hanging one"
    );
    assert!(seen.recv_timeout(WAIT).is_ok());
    let s = status(&mut h);
    assert_eq!((s.upstream_errors, s.responses_5xx), (1, 0), "{s:?}");
    stop(h);
}

#[test]
fn tcp_listener_fails_over_to_another_target() {
    let dead = dead_addr();
    let mut h = Harness::start_with(|cfg| {
        for up in cfg.upstreams.iter_mut().filter(|u| u.name == "echo") {
            let echo: SocketAddr = up.targets[0].address.parse().unwrap();
            *up = with_targets(up.clone(), &[dead, echo]);
        }
    });
    for i in 0..3u8 {
        let mut c = TcpStream::connect(h.tcp_addr).unwrap();
        c.set_read_timeout(Some(WAIT)).unwrap();
        let data = vec![i; 1000];
        c.write_all(&data).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut back = Vec::new();
        c.read_to_end(&mut back).unwrap();
        assert!(back == data, "connection {i}: {} bytes echoed", back.len());
    }
    // Round-robin tried the refused target first for connections 0 and 2.
    assert_eq!(status(&mut h).upstream_errors, 2);
    stop(h);
}

// ---- Reconfigure (reload) -------------------------------------------------------------------

/// Send `Reconfigure` as the master would (fds attached in the order of `handles`) and return
/// the worker's answer, checked to carry the request's id.
fn reconfigure_with(
    h: &mut Harness,
    worker_id: u32,
    config: ProxyConfig,
    handles: Vec<ListenerHandle>,
    fds: &[&TcpListener],
) -> WorkerMessage {
    let fds: Vec<_> = fds.iter().map(|l| l.as_fd()).collect();
    let request_id = next_request_id();
    h.master
        .send(
            &MasterMessage::Reconfigure {
                request_id,
                start: WorkerStart {
                    worker_id,
                    generation: 8,
                    config: Box::new(config),
                    listeners: handles,
                    ticket_keys: Box::default(),
                    session_cache: None,
                },
            },
            &fds,
        )
        .unwrap();
    let answer = h.recv();
    match &answer {
        WorkerMessage::Reconfigured { request_id: echoed }
        | WorkerMessage::ReconfigureFailed {
            request_id: echoed, ..
        } => assert_eq!(*echoed, request_id, "{answer:?}"),
        other => panic!("expected a Reconfigure answer, got {other:?}"),
    }
    answer
}

/// `Reconfigure` with `config` and exactly `listeners` (named, each announced at its real
/// address).
fn reconfigure(
    h: &mut Harness,
    config: ProxyConfig,
    listeners: &[(&str, &TcpListener)],
) -> WorkerMessage {
    let handles = listeners
        .iter()
        .map(|(name, l)| ListenerHandle {
            name: (*name).into(),
            address: l.local_addr().unwrap().to_string(),
        })
        .collect();
    let fds: Vec<&TcpListener> = listeners.iter().map(|(_, l)| *l).collect();
    let worker_id = 1;
    reconfigure_with(h, worker_id, config, handles, &fds)
}

/// The standard config's listeners and fds, unchanged.
fn same_listeners(h: &Harness) -> (TcpListener, TcpListener) {
    (
        h.listeners[0].try_clone().unwrap(),
        h.listeners[1].try_clone().unwrap(),
    )
}

/// A high-priority static route answering `GET /which` with `body`.
fn which_route(body: &str) -> RouteConfig {
    RouteConfig {
        scope: None,
        extras: None,
        name: "which".into(),
        priority: PRIORITY_CRITICAL,
        service_type: ServiceType::Web,
        retry_policy: None,
        policies: Default::default(),
        matches: vec![RouteMatch::Path(vec!["/which".into()])],
        action: RouteAction::Static(StaticResponse {
            status: 200,
            body: body.into(),
            content_type: "text/plain".into(),
        }),
    }
}

fn get(c: &mut Conn, host: &str, path: &str) -> Response {
    c.s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .unwrap();
    c.response(false)
}

fn body_text(r: &Response) -> String {
    String::from_utf8_lossy(&r.body).to_string()
}

#[test]
fn reload_switches_routing_while_keep_alive_connections_keep_working() {
    let mut h = Harness::start_with(|cfg| cfg.routes.insert(0, which_route("A")));
    let mut kept = Conn::new(h.connect());
    let r = get(&mut kept, "x.test", "/which");
    assert_eq!((r.status, body_text(&r)), (200, "A".to_string()));

    let mut cfg = h.config.clone();
    cfg.routes[0] = which_route("B");
    let (web, tcp) = same_listeners(&h);
    let answer = reconfigure(&mut h, cfg, &[("web", &web), ("tcp", &tcp)]);
    assert!(
        matches!(answer, WorkerMessage::Reconfigured { .. }),
        "{answer:?}"
    );

    // The open keep-alive connection goes on, with the new routing from its next request.
    let r = get(&mut kept, "x.test", "/which");
    assert_eq!((r.status, body_text(&r)), (200, "B".to_string()));
    assert_eq!(
        r.header("connection").as_deref(),
        Some("keep-alive"),
        "{}",
        r.head
    );
    // New connections get the new configuration, other routes still work.
    let mut fresh = Conn::new(h.connect());
    let r = get(&mut fresh, "x.test", "/which");
    assert_eq!((r.status, body_text(&r)), (200, "B".to_string()));
    let r = get(&mut fresh, "app.test", "/p");
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(body_text(&r).starts_with("path=/p;"), "{}", body_text(&r));
    let r = get(&mut kept, "x.test", "/static");
    assert_eq!((r.status, body_text(&r)), (200, "hello static".to_string()));
    stop(h);
}

/// Accept one connection from a non-blocking listener, waiting at most [`WAIT`].
fn accept_within(l: &TcpListener) -> Option<TcpStream> {
    let deadline = Instant::now() + WAIT;
    loop {
        match l.accept() {
            Ok((s, _)) => return Some(s),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return None;
                }
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

#[test]
fn reload_adds_a_listener_and_stops_polling_a_removed_one() {
    let mut h = Harness::start();
    let web2 = TcpListener::bind("127.0.0.1:0").unwrap();
    let web2_addr = web2.local_addr().unwrap();
    let mut cfg = h.config.clone();
    let mut l2 = cfg.listeners[0].clone();
    l2.name = "web2".into();
    l2.address = web2_addr.to_string();
    // `tcp` is gone, `web2` is new; the set's order changes too.
    cfg.listeners = vec![l2, cfg.listeners[0].clone()];
    let (web, _) = same_listeners(&h);
    let before = status(&mut h).accepted_total;
    let answer = reconfigure(&mut h, cfg, &[("web2", &web2), ("web", &web)]);
    assert!(
        matches!(answer, WorkerMessage::Reconfigured { .. }),
        "{answer:?}"
    );

    // The new listener serves.
    let s = TcpStream::connect(web2_addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let r = get(&mut Conn::new(s), "x.test", "/static");
    assert_eq!((r.status, body_text(&r)), (200, "hello static".to_string()));

    // A connection to the removed listener is queued by the kernel (the master still holds
    // the socket) but this worker no longer takes it. It was queued before the request
    // below was sent, so a worker still polling `tcp` would have accepted it by the time it
    // answers that request (the accept loop takes every ready listener).
    let _queued = TcpStream::connect(h.tcp_addr).unwrap();
    let r = get(&mut Conn::new(h.connect()), "x.test", "/static");
    assert_eq!(r.status, 200);
    assert_eq!(
        status(&mut h).accepted_total,
        before + 2,
        "only the web2 and web connections are accepted"
    );
    // Still in the backlog: the "master" can take it.
    assert!(
        accept_within(&h.listeners[1]).is_some(),
        "the connection to the removed listener should still be queued"
    );
    stop(h);
}

#[test]
fn bad_reconfigure_is_refused_and_the_old_config_keeps_serving() {
    let mut h = Harness::start_with(|cfg| cfg.routes.insert(0, which_route("A")));
    let mut kept = Conn::new(h.connect());
    let r = get(&mut kept, "x.test", "/which");
    assert_eq!(body_text(&r), "A");

    let mut cfg = h.config.clone();
    cfg.routes[0] = which_route("B");
    // `web` announced at its address, but the fd is another socket.
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let (_, tcp) = same_listeners(&h);
    let handles = vec![
        ListenerHandle {
            name: "web".into(),
            address: h.listen_addr.to_string(),
        },
        ListenerHandle {
            name: "tcp".into(),
            address: h.tcp_addr.to_string(),
        },
    ];
    match reconfigure_with(&mut h, 1, cfg.clone(), handles.clone(), &[&other, &tcp]) {
        WorkerMessage::ReconfigureFailed { reason, .. } => {
            assert!(reason.contains("web"), "{reason}");
            assert!(
                reason.contains(&other.local_addr().unwrap().to_string()),
                "{reason}"
            );
        }
        m => panic!("expected ReconfigureFailed, got {m:?}"),
    }
    // Another worker's Reconfigure.
    let (web, _) = same_listeners(&h);
    match reconfigure_with(&mut h, 2, cfg.clone(), handles.clone(), &[&web, &tcp]) {
        WorkerMessage::ReconfigureFailed { reason, .. } => {
            assert!(reason.contains("worker 2"), "{reason}")
        }
        m => panic!("expected ReconfigureFailed, got {m:?}"),
    }
    // A route to an upstream that does not exist.
    let mut dangling = cfg.clone();
    dangling.routes[0].action = RouteAction::Upstream("nowhere".into());
    match reconfigure_with(&mut h, 1, dangling, handles.clone(), &[&web, &tcp]) {
        WorkerMessage::ReconfigureFailed { reason, .. } => {
            assert!(reason.contains("nowhere"), "{reason}")
        }
        m => panic!("expected ReconfigureFailed, got {m:?}"),
    }

    // Nothing changed: same routing on the old and on new connections; both listeners work.
    let r = get(&mut kept, "x.test", "/which");
    assert_eq!(body_text(&r), "A");
    let r = get(&mut Conn::new(h.connect()), "x.test", "/which");
    assert_eq!(body_text(&r), "A");
    let mut t = TcpStream::connect(h.tcp_addr).unwrap();
    t.set_read_timeout(Some(WAIT)).unwrap();
    t.write_all(b"ping").unwrap();
    t.shutdown(std::net::Shutdown::Write).unwrap();
    let mut echoed = Vec::new();
    t.read_to_end(&mut echoed).unwrap();
    assert_eq!(echoed, b"ping");

    // While draining, a reload is refused (the idle keep-alive connection keeps the worker
    // alive until shortly before the drain deadline).
    h.master
        .send(&MasterMessage::Drain { timeout_ms: 5_000 }, &[])
        .unwrap();
    assert!(matches!(h.recv(), WorkerMessage::Draining { .. }));
    match reconfigure_with(&mut h, 1, cfg, handles, &[&web, &tcp]) {
        WorkerMessage::ReconfigureFailed { reason, .. } => {
            assert_eq!(reason, "worker is draining")
        }
        m => panic!("expected ReconfigureFailed, got {m:?}"),
    }
    stop(h);
}

#[test]
fn request_in_flight_during_reload_completes_on_the_old_config() {
    // A backend driven by the test itself: it answers when the test says so, and shows when
    // the proxy closes its pooled connection.
    let slow = TcpListener::bind("127.0.0.1:0").unwrap();
    let slow_addr = slow.local_addr().unwrap();
    slow.set_nonblocking(true).unwrap();
    let mut h = Harness::start_with(|cfg| add_route(cfg, "slow.test", upstream("slow", slow_addr)));
    let mut client = Conn::new(h.connect());
    client
        .s
        .write_all(b"GET /slow HTTP/1.1\r\nHost: slow.test\r\n\r\n")
        .unwrap();
    let b = accept_within(&slow).expect("the proxy connects to the slow backend");
    b.set_nonblocking(false).unwrap();
    b.set_read_timeout(Some(WAIT)).unwrap();
    let mut b = Conn::new(b);
    let head = b.head().expect("request head at the backend");
    assert!(head.starts_with("GET /slow "), "{head}");

    // Reload while the request is in flight: route and upstream `slow` are gone.
    let base = h.config.clone();
    let mut cfg = base.clone();
    cfg.routes.retain(|r| r.name != "to-slow");
    cfg.upstreams.retain(|u| u.name != "slow");
    let (web, tcp) = same_listeners(&h);
    let answer = reconfigure(&mut h, cfg, &[("web", &web), ("tcp", &tcp)]);
    assert!(
        matches!(answer, WorkerMessage::Reconfigured { .. }),
        "{answer:?}"
    );

    // The exchange finishes on the configuration it started with.
    b.s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow")
        .unwrap();
    let r = client.response(false);
    assert_eq!((r.status, body_text(&r)), (200, "slow".to_string()));
    // Its next request uses the new routing: no route for slow.test any more.
    let r = get(&mut client, "slow.test", "/again");
    assert_eq!(r.status, 404, "{}", r.head);
    // Nothing refers to pool `slow` any more: its pooled connection gets closed.
    assert!(b.buf.is_empty(), "unexpected bytes at the backend");
    let mut byte = [0u8; 1];
    match b.s.read(&mut byte) {
        Ok(0) => {}
        other => panic!("the removed pool's idle connection should be closed, got {other:?}"),
    }
    stop(h);
}
