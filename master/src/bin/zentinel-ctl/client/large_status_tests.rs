//! `zentinel-ctl`'s control connection against the master's real control server: a `status`
//! answer for 512 workers (far over the 64 KiB a request may have) arrives whole.

use std::time::Duration;

use mio::{Events, Poll, Token};
use zentinel_master::control::{ControlServer, ControlSocket};
use zentinel_protocol::control::{
    ControlRequest, ControlResponse, MasterStatus, StatusReport, WorkerState, WorkerStatus,
    MAX_CONTROL_REQUEST_FRAME,
};
use zentinel_protocol::messages::WorkerCounters;

use super::Connection;

const WORKERS: u32 = 512;

fn report() -> StatusReport {
    let binary = "/usr/local/lib/zentinel/releases/2026-12-01/bin/zentinel".to_owned();
    StatusReport {
        master: MasterStatus {
            pid: 99_999,
            version: "0.1.0".to_owned(),
            generation: 3,
            binary: binary.clone(),
            uptime_s: 86_400,
            config: "/etc/zentinel/zentinel.kdl".to_owned(),
        },
        workers: (0..WORKERS)
            .map(|id| WorkerStatus {
                id,
                pid: 100_000 + id,
                generation: 3,
                version: "0.1.0".to_owned(),
                binary: binary.clone(),
                state: WorkerState::Running,
                uptime_s: 86_400,
                counters: WorkerCounters {
                    requests_total: 1_000_000 + u64::from(id),
                    ..WorkerCounters::default()
                },
                stale: false,
                restarts: 1,
                next_restart_delay_ms: 100,
                last_exit: "killed by signal SIGKILL".to_owned(),
            })
            .collect(),
    }
}

/// A master's control plane and nothing else: answers every `Status` with [`report`] until
/// `done` is set.
fn serve(socket: ControlSocket, done: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    let mut poll = Poll::new().expect("poll");
    let mut server = ControlServer::new(socket, poll.registry(), Token(0)).expect("server");
    let mut next = 1;
    let mut events = Events::with_capacity(16);
    while !done.load(std::sync::atomic::Ordering::SeqCst) {
        poll.poll(&mut events, Some(Duration::from_millis(20)))
            .expect("poll");
        for event in events.iter() {
            if event.token() == Token(0) {
                server.accept_all(poll.registry(), || {
                    next += 1;
                    Token(next)
                });
                continue;
            }
            for request in server.handle_event(poll.registry(), event.token(), event.is_writable())
            {
                let answer = match request {
                    ControlRequest::Status => ControlResponse::Status(report()),
                    _ => ControlResponse::Failed {
                        message: "only status here".to_owned(),
                    },
                };
                server.finish(poll.registry(), event.token(), &answer);
            }
        }
    }
}

#[test]
fn a_status_answer_for_512_workers_reaches_the_client_whole() {
    let dir = std::env::temp_dir().join(format!(
        "zentinel-ctl-large-status-{}-{:?}",
        std::process::id(),
        std::time::SystemTime::now()
    ));
    let path = dir.join("z.sock");
    let socket = ControlSocket::bind(&path).expect("bind the control socket");
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let master = std::thread::spawn({
        let done = done.clone();
        move || serve(socket, done)
    });

    let mut conn = Connection::open(&path, Duration::from_secs(10)).expect("connect");
    let got = conn.status(Duration::from_secs(10));
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    master.join().expect("the master thread");
    let got = got.expect("status with 512 workers");
    assert_eq!(got, report());
    let size = zentinel_protocol::frame::encode(&ControlResponse::Status(got), 0, usize::MAX)
        .expect("encode")
        .len();
    assert!(size > MAX_CONTROL_REQUEST_FRAME, "only {size} bytes");
    let _ = std::fs::remove_dir_all(&dir);
}
