//! A connection already queued on the listening socket when workers start draining is served,
//! not left behind. The listeners are registered with `EPOLLEXCLUSIVE` (edge-triggered): an
//! arrival wakes one waiting worker only, so a worker that handles its drain message before its
//! listener event must take what is queued itself, or nothing wakes another worker for it.
//!
//! Made deterministic with SIGSTOP: both workers are stopped while waiting, so the queued
//! connection's wakeup goes to a stopped worker; the stop's drain messages are then waiting
//! for them too, and on SIGCONT each sees both events together.

use std::thread;
use std::time::Duration;

use nix::sys::signal::Signal;
use zentinel_tests::configs::Proxy;
use zentinel_tests::*;

#[test]
fn a_connection_queued_before_a_stop_is_served() {
    let backend = Backend::start("queued");
    let z = Zentinel::start(&Proxy::new(2, free_port(), &backend).build());
    let workers = z.worker_pids();
    assert_eq!(workers.len(), 2, "{workers:?}");
    for &pid in &workers {
        send_signal(pid, Signal::SIGSTOP);
    }
    assert!(
        wait_until(Duration::from_secs(5), || workers
            .iter()
            .all(|&pid| proc_state(pid).is_some_and(|(s, _)| s == 'T'))),
        "workers not stopped"
    );
    // Queued in the kernel: no worker can accept it now.
    let mut client = z.client();
    client.send(b"GET /queued HTTP/1.1\r\nHost: q.test\r\n\r\n");

    let socket = z.control_socket();
    let stopper = thread::spawn(move || ctl_within(&socket, &["stop"], Duration::from_secs(30)));
    // The master sends the drain messages as it takes the request (they wait in the stopped
    // workers' channels).
    assert!(
        wait_until(Duration::from_secs(10), || z
            .log_text()
            .contains("stop requested over the control socket")),
        "{}",
        z.log()
    );
    for &pid in &workers {
        send_signal(pid, Signal::SIGCONT);
    }
    let r = client.read_response();
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.backend(), Some("queued"));
    assert!(
        r.connection_has("close"),
        "a draining worker closes after answering"
    );
    stopper.join().expect("stop thread").assert_success("stop");
}
