//! Issue 16: a config reload never closes a WebSocket whose route still exists, and a rolling
//! upgrade leaves it on its draining worker, where it keeps echoing until it ends. On real
//! processes, with the RFC 6455 client of `tests/src/websocket.rs` against the backend's
//! WebSocket echo.
//!
//! The reload changes the upstream the tunnel goes through (its pool is rebuilt: the old one
//! must stay while the tunnel holds its connection) and adds a route; the rolling upgrade
//! replaces every worker.

use std::fs;
use std::net::TcpStream;
use std::time::Duration;

use zentinel_tests::drain::{draining_of, upgrade_rolling};
use zentinel_tests::websocket::{WsClient, OP_BINARY, OP_TEXT};
use zentinel_tests::*;

const DEADLINE: Duration = Duration::from_secs(10);
const UPGRADE_DEADLINE: Duration = Duration::from_secs(30);

fn open(z: &Zentinel) -> WsClient<TcpStream> {
    let stream = TcpStream::connect(z.addr()).unwrap_or_else(|e| panic!("connect: {e}"));
    stream.set_read_timeout(Some(DEADLINE)).ok();
    WsClient::open(stream, "ws.test", "/ws-frames", &[])
        .unwrap_or_else(|e| panic!("WebSocket handshake: {e}\n{}", z.log()))
}

/// A text and a 1 MiB binary message, each echoed whole.
fn echoes(ws: &mut WsClient<TcpStream>, when: &str, z: &Zentinel) {
    let text = format!("still here {when}");
    ws.send(OP_TEXT, text.as_bytes())
        .unwrap_or_else(|e| panic!("{when}: send: {e}\n{}", z.log()));
    let back = ws
        .recv()
        .unwrap_or_else(|e| panic!("{when}: no echo: {e}\n{}", z.log()));
    assert_eq!(
        (back.opcode, back.payload),
        (OP_TEXT, text.into_bytes()),
        "{when}"
    );
    let big = pattern(1024 * 1024);
    ws.send(OP_BINARY, &big)
        .unwrap_or_else(|e| panic!("{when}: send 1 MiB: {e}"));
    let back = ws
        .recv()
        .unwrap_or_else(|e| panic!("{when}: no 1 MiB echo: {e}\n{}", z.log()));
    assert!(
        back.opcode == OP_BINARY && back.payload == big,
        "{when}: the 1 MiB message came back as {} bytes",
        back.payload.len()
    );
}

#[test]
fn a_websocket_keeps_echoing_across_a_reload_and_a_rolling_upgrade() {
    let be = Backend::start("ws-reload");
    let port = free_port();
    let base = configs::Proxy::new(2, port, &be).system("upgrade-drain-timeout-secs 60");
    let z = Zentinel::start(&base.build());
    let mut files = TempFiles::default();
    let copy = files.add(binary_copy("ws-reload"));
    let mut ws = open(&z);
    echoes(&mut ws, "before the reload", &z);

    // A reload that rebuilds the tunnel's upstream pool and adds a route.
    let config_path = z.config_path.clone().expect("config path");
    let reloaded = base
        .upstream("timeouts { read-secs 45; }")
        .top_level("// reloaded")
        .build()
        .replace(
            "routes {\n",
            "routes {\n    route \"health\" {\n        matches { path \"/health\"; }\n        \
             static-response status=200 body=\"ok\"\n    }\n",
        );
    assert!(reloaded.contains("read-secs 45") && reloaded.contains("route \"health\""));
    fs::write(&config_path, reloaded).expect("write the new config");
    z.ctl(&["reload"]).assert_success("reload");
    assert_eq!(z.client().get("/health", "x").body_str(), "ok", "reloaded");
    echoes(&mut ws, "after the reload", &z);
    // New WebSockets use the new configuration.
    let mut fresh = open(&z);
    echoes(&mut fresh, "on a WebSocket opened after the reload", &z);
    fresh.close().expect("close handshake after the reload");
    drop(fresh);

    // A rolling upgrade: the tunnel stays on its worker, which drains.
    let before = z.worker_pids();
    let out = upgrade_rolling(&z.control_socket(), &copy, &[], UPGRADE_DEADLINE);
    assert!(out.success(), "upgrade: {out}\n{}", z.log());
    echoes(&mut ws, "after the rolling upgrade", &z);
    // The other old worker, with nothing open, is gone soon; this one holds the WebSocket.
    let mut status = z.status();
    assert!(
        wait_until(DEADLINE, || {
            status = z.status();
            draining_of(&status).len() == 1
        }),
        "one old worker drains, holding the WebSocket: {status}"
    );
    let holding = draining_of(&status);
    assert_eq!(holding[0]["connections"], 1, "{status}");
    assert!(
        holding[0]["drain_remaining_ms"].as_u64() > Some(50_000),
        "the upgrade window (60 s): {status}"
    );

    // The client ends it: the old workers have nothing left and exit.
    ws.close().expect("close handshake after the upgrade");
    drop(ws);
    assert_all_exit(
        &before,
        DEADLINE,
        "the old workers once the WebSocket ended",
        &z,
    );
}
