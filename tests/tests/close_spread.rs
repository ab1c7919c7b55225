//! Issue 16: `system { close-spread-time-secs }` on real processes. A draining worker closes its
//! idle keep-alive connections and its tunnels spread over the window before its deadline, not
//! at one instant, so their clients do not all reconnect at once; with 0 it closes them all at
//! once, as before. Each connection is watched on its own thread, and the moment the server
//! closes it is recorded.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use zentinel_tests::drain::close_times;
use zentinel_tests::*;

const DEADLINE: Duration = Duration::from_secs(10);
/// Timer and scheduling slack of a debug build on a busy machine.
const SLACK: Duration = Duration::from_millis(500);

/// `n` keep-alive connections, each idle after one answered request.
fn idle_clients(z: &Zentinel, n: usize) -> Vec<HttpClient> {
    (0..n)
        .map(|_| {
            let mut c = z.client();
            assert_eq!(c.get("/", "idle").status, 200);
            c
        })
        .collect()
}

/// Seconds after `t0` of each close, panicking for a connection never closed.
fn offsets(times: &[Option<Instant>], t0: Instant, what: &str) -> Vec<Duration> {
    let mut out: Vec<Duration> = times
        .iter()
        .enumerate()
        .map(|(i, at)| {
            at.unwrap_or_else(|| panic!("{what} {i} was never closed"))
                .saturating_duration_since(t0)
        })
        .collect();
    out.sort();
    out
}

/// The most closes within any `width` of time.
fn densest(sorted: &[Duration], width: Duration) -> usize {
    (0..sorted.len())
        .map(|i| {
            sorted[i..]
                .iter()
                .take_while(|&&t| t - sorted[i] <= width)
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[test]
fn idle_connections_and_tunnels_are_closed_spread_over_the_window() {
    const DRAIN: Duration = Duration::from_secs(6);
    const SPREAD: Duration = Duration::from_secs(3);
    /// `LINGER`: an idle connection is half-closed this long before its slot.
    const LINGER: Duration = Duration::from_secs(1);
    const IDLE: usize = 16;
    const TUNNELS: usize = 4;
    let be = Backend::start("spread");
    let config = configs::Proxy::new(1, free_port(), &be)
        .drain_secs(DRAIN.as_secs() as u32)
        .system(&format!("close-spread-time-secs {}", SPREAD.as_secs()))
        .build();
    let mut z = Zentinel::start(&config);
    let idle = idle_clients(&z, IDLE);
    let tunnels: Vec<HttpClient> = (0..TUNNELS)
        .map(|i| {
            let mut c = z.client();
            c.upgrade_to_websocket();
            let hello = format!("tunnel {i}");
            c.send(hello.as_bytes());
            assert_eq!(c.read_raw(hello.len()), hello.as_bytes());
            c
        })
        .collect();

    let stopped = Instant::now();
    z.signal(Signal::SIGTERM);
    let watch_tunnels = std::thread::spawn(move || close_times(tunnels, DRAIN + DEADLINE));
    let idle_at = offsets(
        &close_times(idle, DRAIN + DEADLINE),
        stopped,
        "idle connection",
    );
    let tunnel_at = offsets(
        &watch_tunnels.join().expect("tunnel watcher"),
        stopped,
        "tunnel",
    );
    eprintln!("idle connections closed at {idle_at:?}\ntunnels closed at {tunnel_at:?}");

    // Idle connections: half-closed over [deadline - spread - linger, deadline - linger].
    let (first, last) = (idle_at[0], idle_at[IDLE - 1]);
    assert!(
        first + SLACK >= DRAIN - SPREAD - LINGER,
        "an idle connection was closed {first:?} into a {DRAIN:?} drain, before its window"
    );
    assert!(
        last <= DRAIN - LINGER + SLACK,
        "an idle connection was closed {last:?} into the drain, after its window"
    );
    assert!(
        last - first >= SPREAD / 2,
        "the idle connections were closed within {:?}, not spread over {SPREAD:?}: {idle_at:?}",
        last - first
    );
    let dense = densest(&idle_at, Duration::from_millis(100));
    assert!(
        dense <= IDLE / 4,
        "{dense} of {IDLE} idle connections closed within 100 ms: {idle_at:?}"
    );
    // Tunnels: closed over [deadline - spread, deadline].
    assert!(
        tunnel_at[0] + SLACK >= DRAIN - SPREAD,
        "a tunnel was closed {:?} into the drain, before the window",
        tunnel_at[0]
    );
    assert!(
        tunnel_at[TUNNELS - 1] <= DRAIN + SLACK,
        "a tunnel outlived the drain deadline: {tunnel_at:?}"
    );
    // Each has its own slot (where in the window depends on its place among all 20).
    assert!(
        densest(&tunnel_at, Duration::from_millis(50)) <= TUNNELS / 2,
        "the tunnels were closed at one instant: {tunnel_at:?}"
    );
    assert!(
        z.wait_exit(DEADLINE).is_some_and(|s| s.success()),
        "master exit\n{}",
        z.log()
    );
}

#[test]
fn without_a_spread_idle_connections_are_closed_at_once_a_linger_before_the_deadline() {
    const DRAIN: Duration = Duration::from_secs(3);
    const IDLE: usize = 12;
    let be = Backend::start("no-spread");
    let config = configs::Proxy::new(1, free_port(), &be)
        .drain_secs(DRAIN.as_secs() as u32)
        .system("close-spread-time-secs 0")
        .build();
    let mut z = Zentinel::start(&config);
    let idle = idle_clients(&z, IDLE);
    let stopped = Instant::now();
    z.signal(Signal::SIGTERM);
    let at = offsets(
        &close_times(idle, DRAIN + DEADLINE),
        stopped,
        "idle connection",
    );
    eprintln!("idle connections closed at {at:?}");
    assert!(
        at[0] + SLACK >= DRAIN - Duration::from_secs(1),
        "closed {:?} into the drain: before deadline - linger",
        at[0]
    );
    assert!(
        at[IDLE - 1] - at[0] <= Duration::from_millis(200),
        "with close-spread-time-secs 0 they close together: {at:?}"
    );
    assert!(
        z.wait_exit(DEADLINE).is_some_and(|s| s.success()),
        "master exit\n{}",
        z.log()
    );
}

/// An HTTP/2 (h2c) connection that opened no stream, with the moment its first GOAWAY arrived
/// recorded by a reader thread.
fn idle_h2_connection(z: &Zentinel, within: Duration) -> std::thread::JoinHandle<Option<Instant>> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(z.addr()).expect("connect");
    // The preface and an empty SETTINGS frame.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .expect("preface");
    s.set_read_timeout(Some(within)).expect("timeout");
    std::thread::spawn(move || {
        let mut head = [0u8; 9];
        loop {
            s.read_exact(&mut head).ok()?;
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            s.read_exact(&mut payload).ok()?;
            if head[3] == 0x7 {
                return Some(Instant::now());
            }
        }
    })
}

#[test]
fn idle_http2_connections_get_their_goaway_spread_over_the_window() {
    const DRAIN: Duration = Duration::from_secs(6);
    const SPREAD: Duration = Duration::from_secs(3);
    const LINGER: Duration = Duration::from_secs(1);
    const CONNECTIONS: usize = 12;
    let be = Backend::start("spread-h2");
    let config = configs::Proxy::new(1, free_port(), &be)
        .drain_secs(DRAIN.as_secs() as u32)
        .system(&format!("close-spread-time-secs {}", SPREAD.as_secs()))
        .build();
    let mut z = Zentinel::start(&config);
    let watchers: Vec<_> = (0..CONNECTIONS)
        .map(|_| idle_h2_connection(&z, DRAIN + DEADLINE))
        .collect();
    // Every connection is an HTTP/2 one before the drain: a request on a last one answers
    // only once the worker has taken the earlier ones.
    let mut probe = z.client();
    assert_eq!(probe.get("/", "probe").status, 200);
    drop(probe);
    let stopped = Instant::now();
    z.signal(Signal::SIGTERM);
    let times: Vec<Option<Instant>> = watchers
        .into_iter()
        .map(|w| w.join().unwrap_or(None))
        .collect();
    let at = offsets(&times, stopped, "HTTP/2 connection");
    eprintln!("GOAWAYs at {at:?}");
    let (first, last) = (at[0], at[CONNECTIONS - 1]);
    assert!(
        first + SLACK >= DRAIN - SPREAD - LINGER,
        "a GOAWAY came {first:?} into a {DRAIN:?} drain, before its window"
    );
    assert!(
        last <= DRAIN - LINGER + SLACK,
        "a GOAWAY came {last:?} into the drain, after its window"
    );
    assert!(
        last - first >= SPREAD / 2,
        "the GOAWAYs came within {:?}, not spread over {SPREAD:?}: {at:?}",
        last - first
    );
    assert!(
        z.wait_exit(DEADLINE).is_some_and(|s| s.success()),
        "master exit\n{}",
        z.log()
    );
}
