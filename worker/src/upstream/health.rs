//! Upstream target health: passive marking from real traffic and active probes.
//!
//! Each worker keeps its own view (no shared memory between workers): a target taken out of
//! rotation by one worker's traffic or probes is still tried by the others until they see the
//! same failures. With nginx's default `max_fails=1` that costs at most one failed connect per
//! worker, and a failed connect moves on to another target anyway.
//!
//! The state machine ([`TargetHealth`]) is separate from the probe I/O ([`Probe`]) so it can be
//! tested with made-up instants; the parent module ties both to pools, tokens and timers.

use std::net::SocketAddr;
use std::time::Instant;

use zentinel_protocol::config::{HealthCheck, HealthCheckKind, PassiveHealth};

use crate::sock::{Buf, Ready, UpSock};
use crate::timers::TimerId;

/// Longest status line accepted from a probed target; a health endpoint that sends more
/// without a line end is not speaking HTTP.
const MAX_STATUS_LINE: usize = 4096;

/// What a health event did to a target's place in the rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Down,
    Up,
}

#[derive(Debug, Default)]
pub struct TargetHealth {
    /// Traffic failures counted in the current window (passive marking).
    fails: u32,
    window_start: Option<Instant>,
    /// Out of rotation until then (passive marking without active checks).
    down_until: Option<Instant>,
    /// Out of rotation until probes bring it back (`healthy_threshold` successes in a row).
    probe_down: bool,
    ok_streak: u32,
    fail_streak: u32,
    /// The probe schedule: when the next probe starts, or when the running one times out.
    pub timer: Option<TimerId>,
    /// The running probe (key in `Upstreams::probes`).
    pub probe: Option<usize>,
    pub probe_started: Option<Instant>,
}

impl TargetHealth {
    pub fn is_down(&self, now: Instant) -> bool {
        self.probe_down || self.down_until.is_some_and(|t| now < t)
    }

    /// Why the target is out of rotation now, if it is: active checks failed, or failures on
    /// real traffic (until the fail timeout ends).
    pub fn down_reason(&self, now: Instant) -> Option<&'static str> {
        if self.probe_down {
            Some("health-check")
        } else if self.down_until.is_some_and(|t| now < t) {
            Some("passive")
        } else {
            None
        }
    }

    /// Forget a passive mark whose time is over. True when that brought the target back.
    pub fn expire(&mut self, now: Instant) -> bool {
        match self.down_until {
            Some(t) if now >= t => {
                self.down_until = None;
                !self.probe_down
            }
            _ => false,
        }
    }

    /// A request to this target failed in a way that blames the target (connect refused or
    /// timed out, reset or closed before any response byte, no response in time).
    /// `checked`: the upstream has active checks, which then decide when it comes back.
    pub fn traffic_failure(
        &mut self,
        passive: &PassiveHealth,
        checked: bool,
        now: Instant,
    ) -> Option<Transition> {
        if passive.max_fails == 0 || self.is_down(now) {
            return None;
        }
        let window = std::time::Duration::from_secs(passive.fail_timeout_secs.max(1));
        if self.window_start.is_none_or(|s| now >= s + window) {
            self.window_start = Some(now);
            self.fails = 0;
        }
        self.fails += 1;
        if self.fails < passive.max_fails {
            return None;
        }
        self.fails = 0;
        self.window_start = None;
        if checked {
            self.probe_down = true;
            self.ok_streak = 0;
        } else {
            self.down_until = Some(now + window);
        }
        Some(Transition::Down)
    }

    /// A response came back: earlier failures were not a pattern.
    pub fn traffic_success(&mut self) {
        self.fails = 0;
        self.window_start = None;
    }

    /// The outcome of one active probe.
    pub fn probe_result(&mut self, healthy: bool, check: &HealthCheck) -> Option<Transition> {
        if healthy {
            self.fail_streak = 0;
            self.ok_streak = self.ok_streak.saturating_add(1);
            let marked = self.probe_down || self.down_until.is_some();
            if marked && self.ok_streak >= check.healthy_threshold.max(1) {
                self.probe_down = false;
                self.down_until = None;
                self.fails = 0;
                self.window_start = None;
                return Some(Transition::Up);
            }
            None
        } else {
            self.ok_streak = 0;
            self.fail_streak = self.fail_streak.saturating_add(1);
            if !self.probe_down && self.fail_streak >= check.unhealthy_threshold.max(1) {
                self.probe_down = true;
                return Some(Transition::Down);
            }
            None
        }
    }

    /// Carry the marks (not the probe in flight nor its timer) over to a pool rebuilt by a
    /// reload with the same targets. `checked`: the new pool has active checks; without them
    /// nothing would ever lift a probe mark, so it is dropped.
    pub fn carry_marks_from(&mut self, old: &TargetHealth, checked: bool) {
        self.fails = old.fails;
        self.window_start = old.window_start;
        self.down_until = old.down_until;
        self.probe_down = old.probe_down && checked;
        self.ok_streak = old.ok_streak;
        self.fail_streak = old.fail_streak;
    }
}

/// Where a probe stands after an I/O round.
#[derive(Debug, PartialEq, Eq)]
pub enum ProbeStatus {
    Pending,
    Healthy,
    Unhealthy(String),
}

/// One active health probe: a non-blocking connect (and, for a TLS upstream, the handshake:
/// a certificate that does not verify is a failed probe), then for HTTP a `GET` with
/// `Connection: close` and the status line of the answer. To an HTTP/2 upstream the `GET` goes
/// on a stream of a connection to the target (its socket is then a pipe, see `upstream::h2`).
#[derive(Debug)]
pub struct Probe {
    /// Key in the upstream connection table (its token); `None` for a stream.
    pub conn: Option<usize>,
    pub sock: UpSock,
    pub pool: usize,
    pub target: usize,
    connected: bool,
    request: Buf,
    response: Buf,
    expected_status: Option<u16>,
}

impl Probe {
    /// A probe over `sock`, a connection to `addr` just started (and registered).
    pub fn new(
        sock: UpSock,
        addr: SocketAddr,
        check: &HealthCheck,
        conn: Option<usize>,
        pool: usize,
        target: usize,
    ) -> Probe {
        let (request, expected_status) = match &check.kind {
            HealthCheckKind::Tcp => (Vec::new(), None),
            HealthCheckKind::Http {
                path,
                expected_status,
                host,
            } => {
                let host = host.clone().unwrap_or_else(|| addr.to_string());
                let request = format!(
                    "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: zentinel-health-check\r\n\
                     Accept: */*\r\nConnection: close\r\n\r\n"
                );
                (request.into_bytes(), Some(*expected_status))
            }
        };
        let mut out = Buf::new();
        out.extend(&request);
        Probe {
            conn,
            sock,
            pool,
            target,
            connected: false,
            request: out,
            response: Buf::new(),
            expected_status,
        }
    }

    /// Drive the probe after a readiness event (edge-triggered: go until it would block).
    pub fn advance(&mut self) -> ProbeStatus {
        // Events are not told apart here: trying both directions is harmless.
        self.sock.on_ready(Ready {
            readable: true,
            writable: true,
            read_closed: false,
        });
        if !self.connected {
            match self.sock.poll_connect() {
                Ok(true) => self.connected = true,
                Ok(false) => return ProbeStatus::Pending,
                Err(e) => return ProbeStatus::Unhealthy(format!("connect: {e}")),
            }
        }
        let Some(expected) = self.expected_status else {
            return ProbeStatus::Healthy;
        };
        if !self.request.is_empty() {
            if let Err(e) = self.sock.flush(&mut self.request) {
                return ProbeStatus::Unhealthy(format!("send: {e}"));
            }
            if !self.request.is_empty() {
                return ProbeStatus::Pending;
            }
        }
        loop {
            if let Some(status) = status_of(self.response.as_slice()) {
                return match status {
                    Ok(s) if s == expected => ProbeStatus::Healthy,
                    Ok(s) => ProbeStatus::Unhealthy(format!("status {s}, expected {expected}")),
                    Err(why) => ProbeStatus::Unhealthy(why.to_owned()),
                };
            }
            if self.response.len() > MAX_STATUS_LINE {
                return ProbeStatus::Unhealthy("no HTTP status line".into());
            }
            match self.sock.fill(&mut self.response, MAX_STATUS_LINE + 1) {
                Ok(r) if r.bytes > 0 => {}
                Ok(r) if r.eof || self.sock.read_eof() => {
                    return ProbeStatus::Unhealthy("connection closed before a response".into())
                }
                Ok(_) => return ProbeStatus::Pending,
                Err(e) => return ProbeStatus::Unhealthy(format!("receive: {e}")),
            }
        }
    }
}

/// The status code of a complete status line at the start of `bytes`; None until the line
/// end arrived.
fn status_of(bytes: &[u8]) -> Option<Result<u16, &'static str>> {
    let end = bytes.iter().position(|&b| b == b'\n')?;
    let line = &bytes[..end];
    let parsed = (|| {
        let rest = line.strip_prefix(b"HTTP/1.")?;
        let (&minor, rest) = rest.split_first()?;
        if !minor.is_ascii_digit() || rest.first() != Some(&b' ') {
            return None;
        }
        let code = rest.get(1..4)?;
        if !code.iter().all(u8::is_ascii_digit)
            || rest.get(4).is_some_and(|&b| b != b' ' && b != b'\r')
        {
            return None;
        }
        code.iter()
            .try_fold(0u16, |acc, &d| Some(acc * 10 + u16::from(d - b'0')))
    })();
    Some(parsed.ok_or("invalid HTTP status line"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn check(healthy: u32, unhealthy: u32) -> HealthCheck {
        HealthCheck {
            kind: HealthCheckKind::Tcp,
            interval_secs: 1,
            timeout_secs: 1,
            healthy_threshold: healthy,
            unhealthy_threshold: unhealthy,
        }
    }

    #[test]
    fn passive_marking_without_checks_lasts_fail_timeout() {
        let passive = PassiveHealth {
            max_fails: 2,
            fail_timeout_secs: 10,
        };
        let t0 = Instant::now();
        let mut h = TargetHealth::default();
        assert_eq!(h.traffic_failure(&passive, false, t0), None);
        assert!(!h.is_down(t0));
        assert_eq!(
            h.traffic_failure(&passive, false, t0 + Duration::from_secs(1)),
            Some(Transition::Down)
        );
        assert!(h.is_down(t0 + Duration::from_secs(10)));
        assert!(!h.expire(t0 + Duration::from_secs(10)));
        assert!(!h.is_down(t0 + Duration::from_secs(11)));
        assert!(h.expire(t0 + Duration::from_secs(11)));
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let passive = PassiveHealth {
            max_fails: 2,
            fail_timeout_secs: 5,
        };
        let t0 = Instant::now();
        let mut h = TargetHealth::default();
        assert_eq!(h.traffic_failure(&passive, false, t0), None);
        assert_eq!(
            h.traffic_failure(&passive, false, t0 + Duration::from_secs(6)),
            None
        );
        h.traffic_success();
        assert_eq!(
            h.traffic_failure(&passive, false, t0 + Duration::from_secs(7)),
            None
        );
        assert!(!h.is_down(t0 + Duration::from_secs(7)));
    }

    #[test]
    fn max_fails_zero_disables_passive_marking() {
        let passive = PassiveHealth {
            max_fails: 0,
            fail_timeout_secs: 5,
        };
        let mut h = TargetHealth::default();
        let now = Instant::now();
        for _ in 0..10 {
            assert_eq!(h.traffic_failure(&passive, false, now), None);
        }
        assert!(!h.is_down(now));
    }

    #[test]
    fn probes_take_out_and_bring_back_with_thresholds() {
        let c = check(2, 3);
        let now = Instant::now();
        let mut h = TargetHealth::default();
        assert_eq!(h.probe_result(false, &c), None);
        assert_eq!(h.probe_result(false, &c), None);
        assert_eq!(
            h.probe_result(true, &c),
            None,
            "a success resets the streak"
        );
        assert_eq!(h.probe_result(false, &c), None);
        assert_eq!(h.probe_result(false, &c), None);
        assert_eq!(h.probe_result(false, &c), Some(Transition::Down));
        assert!(h.is_down(now));
        assert_eq!(h.probe_result(false, &c), None);
        assert_eq!(h.probe_result(true, &c), None);
        assert!(h.is_down(now));
        assert_eq!(h.probe_result(true, &c), Some(Transition::Up));
        assert!(!h.is_down(now));
        assert_eq!(h.probe_result(true, &c), None);
    }

    #[test]
    fn passive_mark_with_checks_waits_for_probes() {
        let passive = PassiveHealth::default();
        let c = check(2, 3);
        let t0 = Instant::now();
        let mut h = TargetHealth::default();
        // Earlier successes do not count towards coming back.
        assert_eq!(h.probe_result(true, &c), None);
        assert_eq!(
            h.traffic_failure(&passive, true, t0),
            Some(Transition::Down)
        );
        assert!(h.is_down(t0 + Duration::from_secs(3600)), "no timeout");
        assert_eq!(h.probe_result(true, &c), None);
        assert_eq!(h.probe_result(true, &c), Some(Transition::Up));
        assert!(!h.is_down(t0));
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_of(b"HTTP/1.1 200 OK\r\n"), Some(Ok(200)));
        assert_eq!(status_of(b"HTTP/1.0 503\r\n"), Some(Ok(503)));
        assert_eq!(status_of(b"HTTP/1.1 204 No Content\n"), Some(Ok(204)));
        assert_eq!(status_of(b"HTTP/1.1 200 O"), None);
        assert!(matches!(status_of(b"SSH-2.0-OpenSSH\r\n"), Some(Err(_))));
        assert!(matches!(status_of(b"HTTP/1.1 20 OK\r\n"), Some(Err(_))));
        assert!(matches!(status_of(b"HTTP/1.1 2000 OK\r\n"), Some(Err(_))));
    }

    /// A plain probe to `addr`, unregistered (the tests drive it by polling).
    fn start(addr: SocketAddr, check: &HealthCheck) -> std::io::Result<Probe> {
        let stream = mio::net::TcpStream::connect(addr)?;
        Ok(Probe::new(
            UpSock::connecting(stream, None),
            addr,
            check,
            Some(0),
            0,
            0,
        ))
    }

    #[test]
    fn http_probe_against_a_real_listener() {
        use std::io::{BufRead, BufReader, Write};
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let http = HealthCheck {
            kind: HealthCheckKind::Http {
                path: "/health".into(),
                expected_status: 200,
                host: Some("svc.local".into()),
            },
            ..check(1, 1)
        };
        for (answer, expect_healthy) in [
            ("HTTP/1.1 200 OK\r\n\r\n", true),
            ("HTTP/1.1 500 Oops\r\n\r\n", false),
        ] {
            let mut probe = start(addr, &http).unwrap();
            let (conn, _) = server.accept().unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            while !probe.request.is_empty() {
                assert_eq!(probe.advance(), ProbeStatus::Pending);
                assert!(
                    Instant::now() < deadline,
                    "the probe never sent its request"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut head = Vec::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" {
                    break;
                }
                head.push(line);
            }
            assert_eq!(head[0], "GET /health HTTP/1.1\r\n");
            assert!(head.contains(&"Host: svc.local\r\n".to_owned()), "{head:?}");
            assert!(
                head.contains(&"Connection: close\r\n".to_owned()),
                "{head:?}"
            );
            (&conn).write_all(answer.as_bytes()).unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            let status = loop {
                match probe.advance() {
                    ProbeStatus::Pending if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    other => break other,
                }
            };
            assert_eq!(status == ProbeStatus::Healthy, expect_healthy, "{status:?}");
        }
    }

    #[test]
    fn tcp_probe_to_a_closed_port_is_unhealthy() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        match start(addr, &check(1, 1)) {
            Err(_) => {}
            Ok(mut probe) => loop {
                match probe.advance() {
                    ProbeStatus::Pending if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    ProbeStatus::Unhealthy(_) => break,
                    other => panic!("{other:?}"),
                }
            },
        }
    }
}
