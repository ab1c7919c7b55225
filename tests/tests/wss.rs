//! WebSocket over TLS (`wss://`) end to end (issue 15): a real WebSocket client (tests/src/
//! websocket.rs, over a rustls client) through a real `zentinel` https listener to the test
//! backend's WebSocket echo, plain or TLS (`zentinel-backend --tls`). The client side of the
//! tunnel stays the TLS session the upgrade came on; the upstream side is what its pool speaks.
//! Also: tunnels held across a rolling upgrade, and cut at the drain deadline with close_notify.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use zentinel_tests::tls_support::*;
use zentinel_tests::websocket::{Frame, WsClient, OP_BINARY, OP_PING, OP_PONG, OP_TEXT};
use zentinel_tests::*;

const DEADLINE: Duration = Duration::from_secs(10);
/// Reads and writes on a tunnel: 2 MiB echoed through a debug-build proxy on a loaded machine.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
const UPGRADE_DEADLINE: Duration = Duration::from_secs(30);
const BIG: usize = 2 * 1024 * 1024;

type Wss = WsClient<StreamOwned<ClientConnection, TcpStream>>;

/// A CA, the listener's certificate for `ws.test`, the backend's for `backend.test`, a plain
/// and a TLS backend (both speak WebSocket on `/ws-frames`).
struct Fixture {
    dir: TempDir,
    client: Arc<ClientConfig>,
    plain: Backend,
    tls: Backend,
}

impl Fixture {
    fn new(label: &str) -> Fixture {
        let dir = TempDir::new(label);
        let ca = Ca::new();
        ca.issue(&dir.0, "listener", &["ws.test"]);
        ca.issue(&dir.0, "backend", &["backend.test"]);
        fs::write(dir.0.join("ca.pem"), ca.cert.pem()).unwrap();
        let path = |name: &str| dir.0.join(name).display().to_string();
        let tls = Backend::start_args(
            "ws-tls",
            &["--tls", &path("backend.crt"), &path("backend.key")],
        );
        Fixture {
            client: default_client(&ca.der()),
            plain: Backend::start("ws-plain"),
            tls,
            dir,
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.0.join(name).display().to_string()
    }

    /// One https listener; `/tls/...` goes to the TLS backend, everything else to the plain one.
    fn config(&self, workers: u32, drain_secs: u32) -> String {
        format!(
            r#"system {{
    worker-processes {workers}
    graceful-shutdown-timeout-secs {drain_secs}
}}
listeners {{
    listener "https" {{
        address "127.0.0.1:{port}"
        protocol "https"
        default-route "plain"
        tls {{
            cert-file "{crt}"
            key-file "{key}"
        }}
    }}
}}
routes {{
    route "tls" {{
        matches {{ path-prefix "/tls/"; }}
        upstream "tls"
    }}
    route "plain" {{
        upstream "plain"
    }}
}}
upstreams {{
    upstream "plain" {{
        target "{plain}"
    }}
    upstream "tls" {{
        target "{tls}"
        tls {{
            sni "backend.test"
            ca-cert "{ca}"
        }}
    }}
}}
"#,
            port = free_port(),
            crt = self.path("listener.crt"),
            key = self.path("listener.key"),
            plain = self.plain.target(),
            tls = self.tls.target(),
            ca = self.path("ca.pem"),
        )
    }

    /// `wss://ws.test/PATH` through `z`, `early` frames sent with the upgrade request.
    fn connect(&self, z: &Zentinel, path: &str, early: &[Frame]) -> Wss {
        let sock = TcpStream::connect_timeout(&z.addr(), DEADLINE).expect("connect");
        sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        sock.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        let name = ServerName::try_from("ws.test").unwrap();
        let conn = ClientConnection::new(Arc::clone(&self.client), name).unwrap();
        WsClient::open(StreamOwned::new(conn, sock), "ws.test", path, early)
            .unwrap_or_else(|e| panic!("wss upgrade on {path}: {e}\n{}", z.log()))
    }
}

/// Message `i` of a run: text and binary, from empty to a few KiB (the 7- and 16-bit length
/// encodings), each different.
fn message(i: usize) -> Frame {
    if i.is_multiple_of(3) {
        let text = format!("message {i} ").repeat(i % 300);
        Frame::new(OP_TEXT, text.as_bytes())
    } else {
        let mut bytes = (i as u32).to_be_bytes().to_vec();
        bytes.extend(pattern((i * 131) % 5000));
        Frame::new(OP_BINARY, &bytes)
    }
}

/// `count` messages, pipelined a window at a time, each echoed back whole and in order.
fn echo_messages(ws: &mut Wss, count: usize, what: &str) {
    const WINDOW: usize = 16;
    let mut next = 0;
    while next < count {
        let batch: Vec<Frame> = (next..count.min(next + WINDOW)).map(message).collect();
        ws.send_all(&batch)
            .unwrap_or_else(|e| panic!("{what}: sending messages from {next}: {e}"));
        for (k, sent) in batch.iter().enumerate() {
            let got = ws
                .recv()
                .unwrap_or_else(|e| panic!("{what}: echo of message {}: {e}", next + k));
            assert!(
                got == *sent,
                "{what}: message {} came back as opcode {:#x}, {} bytes (sent {:#x}, {} bytes)",
                next + k,
                got.opcode,
                got.payload.len(),
                sent.opcode,
                sent.payload.len()
            );
        }
        next += batch.len();
    }
}

/// One 2 MiB binary message (one frame, 64-bit length) echoed whole, then a ping answered.
fn echo_big_and_ping(ws: &mut Wss, what: &str) {
    let data = pattern(BIG);
    ws.send(OP_BINARY, &data)
        .unwrap_or_else(|e| panic!("{what}: sending 2 MiB: {e}"));
    let got = ws
        .recv()
        .unwrap_or_else(|e| panic!("{what}: echo of 2 MiB: {e}"));
    assert_eq!(got.opcode, OP_BINARY, "{what}");
    assert_eq!(got.payload.len(), BIG, "{what}: length of the big echo");
    assert!(
        got.payload == data,
        "{what}: the big message came back altered"
    );
    ws.send(OP_PING, b"still there?").unwrap();
    let pong = ws.recv().unwrap_or_else(|e| panic!("{what}: pong: {e}"));
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (OP_PONG, &b"still there?"[..])
    );
}

/// The closing handshake, then our close_notify; the proxy must end its side of the tunnel
/// with close_notify too (a clean EOF, not a bare FIN, which rustls reports as UnexpectedEof).
fn close_cleanly(mut ws: Wss, what: &str) {
    ws.close()
        .unwrap_or_else(|e| panic!("{what}: closing handshake: {e}"));
    ws.stream.conn.send_close_notify();
    ws.stream.flush().unwrap();
    expect_close_notify(&mut ws, what);
}

/// Reads to the end of the stream: it must be close_notify, with nothing before it.
fn expect_close_notify(ws: &mut Wss, what: &str) {
    let mut rest = Vec::new();
    match ws.stream.read_to_end(&mut rest) {
        Ok(_) => assert!(
            rest.is_empty(),
            "{what}: {} bytes before the end",
            rest.len()
        ),
        Err(e) => panic!(
            "{what}: the tunnel did not end with close_notify: {e} ({:?})",
            e.kind()
        ),
    }
}

/// Upgrade with a first message in the same write (it must reach the backend, not be lost
/// between the HTTP session and the tunnel), then 1,000 messages, 2 MiB, a ping, a clean close.
fn full_echo(f: &Fixture, z: &Zentinel, path: &str, what: &str) {
    let early = Frame::new(OP_TEXT, b"sent with the upgrade request");
    let mut ws = f.connect(z, path, std::slice::from_ref(&early));
    let got = ws
        .recv()
        .unwrap_or_else(|e| panic!("{what}: echo of the early message: {e}\n{}", z.log()));
    assert_eq!(got, early, "{what}: the message sent with the request");
    echo_messages(&mut ws, 1000, what);
    echo_big_and_ping(&mut ws, what);
    close_cleanly(ws, what);
}

#[test]
fn wss_echo_to_a_plain_upstream() {
    let f = Fixture::new("wss-plain");
    let z = Zentinel::start(&f.config(1, 10));
    full_echo(&f, &z, "/ws-frames", "wss to a plain upstream");
}

#[test]
fn wss_echo_to_a_tls_upstream() {
    let f = Fixture::new("wss-tls");
    let z = Zentinel::start(&f.config(1, 10));
    full_echo(&f, &z, "/tls/ws-frames", "wss to a TLS upstream");
}

/// Six wss tunnels at once on one worker, half to each upstream: their messages do not mix.
#[test]
fn concurrent_wss_tunnels_stay_apart() {
    let f = Arc::new(Fixture::new("wss-many"));
    let z = Arc::new(Zentinel::start(&f.config(1, 10)));
    let handles: Vec<_> = (0..6u32)
        .map(|i| {
            let (f, z) = (Arc::clone(&f), Arc::clone(&z));
            thread::spawn(move || {
                let path = if i.is_multiple_of(2) {
                    "/ws-frames"
                } else {
                    "/tls/ws-frames"
                };
                let what = format!("tunnel {i} on {path}");
                let mut ws = f.connect(&z, path, &[]);
                echo_messages(&mut ws, 300, &what);
                close_cleanly(ws, &what);
            })
        })
        .collect();
    for h in handles {
        h.join().expect("a tunnel thread failed");
    }
}

fn pids_in(status: &serde_json::Value, state: &str) -> BTreeSet<u32> {
    workers_of(status)
        .iter()
        .filter(|w| w["state"] == state)
        .filter_map(|w| w["pid"].as_u64())
        .map(|p| p as u32)
        .collect()
}

fn upgrade_args(binary: &std::path::Path, drain: &str) -> Vec<String> {
    ["upgrade", "--rolling", "--binary"]
        .iter()
        .map(|s| s.to_string())
        .chain([
            binary.display().to_string(),
            "--drain-timeout".into(),
            drain.into(),
        ])
        .collect()
}

/// wss tunnels opened before a rolling upgrade keep their old worker draining, keep echoing
/// (small and big messages) afterwards, and end cleanly; then the old workers leave long
/// before their drain timeout.
#[test]
fn wss_tunnels_survive_a_rolling_upgrade() {
    let f = Fixture::new("wss-upgrade");
    let z = Zentinel::start(&f.config(2, 30));
    let copy = binary_copy("wss-upgrade");
    let _files = TempFiles(vec![copy.clone()]);
    let before = pids_in(&z.status(), "running");

    let mut tunnels: Vec<(Wss, &str)> = [
        ("/ws-frames", "plain-upstream tunnel"),
        ("/tls/ws-frames", "TLS-upstream tunnel"),
    ]
    .iter()
    .map(|(path, what)| {
        let mut ws = f.connect(&z, path, &[]);
        echo_messages(&mut ws, 50, what);
        (ws, *what)
    })
    .collect();

    let args = upgrade_args(&copy, "40s");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ctl_within(&z.control_socket(), &args, UPGRADE_DEADLINE);
    assert!(out.success(), "upgrade --rolling: {out}\n{}", z.log());
    let status = z.status();
    let draining = pids_in(&status, "draining");
    let busy: u64 = workers_of(&status)
        .iter()
        .filter(|w| w["state"] == "draining")
        .filter_map(|w| w["active_connections"].as_u64())
        .sum();
    assert!(
        !draining.is_empty() && draining.is_subset(&before) && busy >= 2,
        "old workers must be draining with the two tunnels: {status}"
    );
    assert!(
        pids_in(&status, "running").is_disjoint(&before),
        "the running workers are not new: {status}"
    );

    for (ws, what) in &mut tunnels {
        echo_messages(ws, 200, what);
        echo_big_and_ping(ws, what);
    }
    for (ws, what) in tunnels {
        close_cleanly(ws, what);
    }
    assert_all_exit(
        &before,
        DEADLINE,
        "old workers once their tunnels closed",
        &z,
    );
    // The new workers tunnel too.
    full_echo(&f, &z, "/tls/ws-frames", "wss after the upgrade");
}

/// A wss tunnel still open at the drain deadline is closed then, no earlier, and with
/// close_notify (the worker closes its sessions before it exits).
#[test]
fn wss_tunnels_get_close_notify_at_the_drain_deadline() {
    let f = Fixture::new("wss-deadline");
    let z = Zentinel::start(&f.config(1, 30));
    let copy = binary_copy("wss-deadline");
    let _files = TempFiles(vec![copy.clone()]);
    let before = pids_in(&z.status(), "running");
    let mut tunnels: Vec<Wss> = ["/ws-frames", "/tls/ws-frames"]
        .iter()
        .map(|path| {
            let mut ws = f.connect(&z, path, &[]);
            echo_messages(&mut ws, 20, path);
            ws
        })
        .collect();

    let started = Instant::now();
    let socket = z.control_socket();
    let args = upgrade_args(&copy, "1s");
    let upgrade = thread::spawn(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ctl_within(&socket, &args, UPGRADE_DEADLINE)
    });
    for (i, ws) in tunnels.iter_mut().enumerate() {
        let what = format!("tunnel {i} at the drain deadline");
        let mut byte = [0u8; 1];
        match ws.stream.read(&mut byte) {
            Ok(0) => {}
            Ok(_) => panic!("{what}: unexpected bytes"),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                panic!(
                    "{what}: closed with a bare FIN, no close_notify\n{}",
                    z.log()
                )
            }
            Err(e) => panic!(
                "{what}: not closed cleanly: {e} ({:?})\n{}",
                e.kind(),
                z.log()
            ),
        }
    }
    let closed_after = started.elapsed();
    let out = upgrade.join().expect("upgrade thread");
    assert!(out.success(), "upgrade --rolling: {out}\n{}", z.log());
    assert!(
        closed_after >= Duration::from_millis(900),
        "the tunnels were closed after {closed_after:?}, before the 1 s drain timeout"
    );
    assert!(
        closed_after <= DEADLINE,
        "the tunnels were closed only after {closed_after:?}"
    );
    assert_all_exit(
        &before,
        Duration::from_secs(5),
        "old worker after its drain",
        &z,
    );
}
