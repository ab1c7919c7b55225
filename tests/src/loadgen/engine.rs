//! The event loops: one mio `Poll` per thread, a state machine per connection.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use mio::{Events, Poll, Registry};

use super::conn::{Conn, Phase};
use super::report::{Report, ThreadStats};
use super::{Config, Method, Mode, Verify};
use crate::failure::{Failure, FailureKind};
use crate::{checksum, checksum_hex, fill_pattern, pattern, pattern_checksum};

/// Timeouts and backoffs are checked this often; also the longest poll wait, so a stop
/// request (signal, duration) is noticed within it.
const SWEEP: Duration = Duration::from_millis(10);

/// Up to this size the expected `/bytes/N` body is kept and compared byte for byte (memcmp is
/// far cheaper than FNV-1a); above it the body is hashed.
const MAX_PATTERN: u64 = 64 * 1024 * 1024;

/// What a complete response must carry to be a success.
pub(super) enum Expect {
    /// 2xx and complete framing.
    Status,
    /// `GET /bytes/N`: N pattern bytes and `X-Body-Checksum` of them.
    Download {
        len: u64,
        /// The expected body, when small enough to keep.
        pattern: Option<Vec<u8>>,
        sum: u64,
    },
    /// `POST /upload`: the backend's `len=N checksum=HEX` of what was sent.
    Upload { answer: Vec<u8> },
}

/// Read-only state shared by every thread.
pub(super) struct Plan<'a> {
    pub config: &'a Config,
    pub request: Vec<u8>,
    pub desc: String,
    pub expect: Expect,
    pub started: Instant,
    end: Option<Instant>,
    /// Requests started (closed loop with `-n`).
    issued: AtomicU64,
    stop: &'a AtomicBool,
}

impl Plan<'_> {
    /// Claims one request of the `-n` budget.
    fn take_budget(&self) -> bool {
        match self.config.requests {
            None => true,
            Some(n) => self.issued.fetch_add(1, Ordering::Relaxed) < n,
        }
    }
}

fn build_plan<'a>(config: &'a Config, stop: &'a AtomicBool) -> Plan<'a> {
    let path = config.request_path();
    let connection = match config.mode {
        Mode::KeepAlive => "",
        Mode::Close => "Connection: close\r\n",
    };
    let host = &config.host;
    let (request, expect) = match config.method {
        Method::Get => {
            let head = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{connection}\r\n");
            let expect = if config.verify == Verify::Status || config.path.is_some() {
                Expect::Status
            } else {
                let len = config.body;
                Expect::Download {
                    len,
                    pattern: (len <= MAX_PATTERN).then(|| pattern(len as usize)),
                    sum: pattern_checksum(len),
                }
            };
            (head.into_bytes(), expect)
        }
        Method::Post => {
            let n = config.body as usize;
            // Another stretch of the pattern than downloads use (as the in-process load client
            // does), so an upload answered with a download's bytes cannot pass.
            let mut body = vec![0u8; n];
            fill_pattern(7_919 * n as u64 + 13, &mut body);
            let answer = format!("len={n} checksum={}", checksum_hex(checksum(&body)));
            let mut request = format!(
                "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\n\
                 Content-Length: {n}\r\n{connection}\r\n"
            )
            .into_bytes();
            request.extend_from_slice(&body);
            let expect = if config.verify == Verify::Status || config.path.is_some() {
                Expect::Status
            } else {
                Expect::Upload {
                    answer: answer.into_bytes(),
                }
            };
            (request, expect)
        }
    };
    let started = Instant::now();
    Plan {
        config,
        request,
        desc: config.describe_request(),
        expect,
        started,
        end: config.duration.map(|d| started + d),
        issued: AtomicU64::new(0),
        stop,
    }
}

/// Runs the load described by `config` until its duration or request count is reached or
/// `stop` is set (e.g. from a signal handler), then merges every thread's figures.
pub fn run(config: &Config, stop: &AtomicBool) -> Report {
    let start_epoch_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let plan = build_plan(config, stop);
    let threads = config.threads.clamp(1, config.connections.max(1));
    let per = config.connections / threads;
    let extra = config.connections % threads;
    let results: Vec<ThreadStats> = thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let plan = &plan;
                let n = per + usize::from(t < extra);
                thread::Builder::new()
                    .name(format!("load-{t}"))
                    .spawn_scoped(scope, move || run_thread(plan, t, threads, n))
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(t, h)| match h {
                Ok(h) => h.join().unwrap_or_else(|_| {
                    let mut s = ThreadStats::new(plan.started);
                    s.error = Some(format!("load thread {t} panicked"));
                    s
                }),
                Err(e) => {
                    let mut s = ThreadStats::new(plan.started);
                    s.error = Some(format!("cannot spawn load thread {t}: {e}"));
                    s
                }
            })
            .collect()
    });
    Report::merge(
        results,
        plan.started,
        start_epoch_ms,
        stop.load(Ordering::SeqCst),
        config.tls.is_some(),
    )
}

/// Per-thread context handed to the connection state machines.
pub(super) struct Ctx<'p, 'a> {
    pub plan: &'p Plan<'a>,
    pub stats: ThreadStats,
    pub registry: Registry,
    /// Connections whose request ended, to be given their next one by the loop (never
    /// recursively, so a burst of instant failures cannot grow the stack).
    pub ready: Vec<usize>,
    /// Connections with a request in flight.
    pub active: usize,
    thread: usize,
    pub open_loop: bool,
}

impl Ctx<'_, '_> {
    pub fn record_failure(
        &mut self,
        conn: usize,
        kind: FailureKind,
        detail: impl FnOnce() -> String,
    ) {
        let now = Instant::now();
        let plan = self.plan;
        let thread = self.thread;
        self.stats.record_failure(now, kind, || Failure {
            kind,
            at: now.saturating_duration_since(plan.started),
            client: format!("t{thread}/c{conn}"),
            request: plan.desc.clone(),
            detail: detail(),
        });
    }
}

/// Open-loop schedule of one thread: global slot k is due at `started + k / rate`; thread t
/// of T takes slots t, t+T, t+2T...
struct Schedule {
    next: u64,
    thread: u64,
    threads: u64,
    rate: f64,
}

impl Schedule {
    fn slot(&self, j: u64) -> u64 {
        j * self.threads + self.thread
    }

    /// Due time of this thread's `j`-th slot, None when past `-n` or the duration.
    fn due(&self, plan: &Plan, j: u64) -> Option<Instant> {
        let k = self.slot(j);
        if plan.config.requests.is_some_and(|n| k >= n) {
            return None;
        }
        let due = plan.started + Duration::from_secs_f64(k as f64 / self.rate);
        match plan.end {
            Some(end) if due >= end => None,
            _ => Some(due),
        }
    }
}

/// Hands out work until nothing changes: next requests for the connections handed back
/// (closed loop), due requests for idle connections (open loop). A start may fail at once and
/// hand its connection back, hence the loop.
fn dispatch(
    conns: &mut [Conn],
    cx: &mut Ctx,
    idle: &mut Vec<usize>,
    mut schedule: Option<&mut Schedule>,
    stopped: bool,
    exhausted: &mut bool,
) {
    let plan = cx.plan;
    loop {
        while let Some(i) = cx.ready.pop() {
            let conn = &mut conns[i];
            if cx.open_loop {
                idle.push(i);
            } else if stopped || *exhausted {
                conn.phase = Phase::Done;
                conn.close();
            } else if !plan.take_budget() {
                *exhausted = true;
                conn.phase = Phase::Done;
                conn.close();
            } else {
                conn.start(cx, Instant::now());
            }
        }
        if let Some(s) = schedule.as_deref_mut() {
            if !stopped {
                let now = Instant::now();
                loop {
                    let Some(due) = s.due(plan, s.next) else {
                        *exhausted = true;
                        break;
                    };
                    if due > now {
                        break;
                    }
                    // Due but no idle connection: it waits, its latency growing.
                    let Some(i) = idle.pop() else { break };
                    s.next += 1;
                    conns[i].start(cx, due);
                }
            }
        }
        if cx.ready.is_empty() {
            return;
        }
    }
}

fn run_thread(plan: &Plan, thread: usize, threads: usize, nconns: usize) -> ThreadStats {
    let mut stats = ThreadStats::new(plan.started);
    let (mut poll, registry) = match Poll::new().and_then(|p| {
        let r = p.registry().try_clone()?;
        Ok((p, r))
    }) {
        Ok(x) => x,
        Err(e) => {
            stats.error = Some(format!("creating an event loop: {e}"));
            return stats;
        }
    };
    let now = Instant::now();
    let mut conns: Vec<Conn> = (0..nconns).map(|i| Conn::new(i, now)).collect();
    let open_loop = plan.config.rate.is_some();
    let mut cx = Ctx {
        plan,
        stats,
        registry,
        ready: (0..nconns).rev().collect(),
        active: 0,
        thread,
        open_loop,
    };
    let mut schedule = plan.config.rate.map(|rate| Schedule {
        next: 0,
        thread: thread as u64,
        threads: threads as u64,
        rate,
    });
    let mut idle: Vec<usize> = Vec::with_capacity(nconns);
    let mut events = Events::with_capacity(1024);
    // When a stop (signal or end of the duration) was noticed.
    let mut stopped_at: Option<Instant> = None;
    // No request will ever be started again (budget spent, schedule over).
    let mut exhausted = false;
    let mut last_sweep = now;

    loop {
        let now = Instant::now();
        if stopped_at.is_none() {
            let ended = plan.end.is_some_and(|e| now >= e);
            if plan.stop.load(Ordering::Relaxed) || ended {
                stopped_at = Some(match plan.end {
                    Some(e) if ended => e,
                    _ => now,
                });
            }
        }
        dispatch(
            &mut conns,
            &mut cx,
            &mut idle,
            schedule.as_mut(),
            stopped_at.is_some(),
            &mut exhausted,
        );
        if (stopped_at.is_some() || exhausted) && cx.active == 0 {
            break;
        }

        let now = Instant::now();
        let mut timeout = SWEEP.saturating_sub(now.saturating_duration_since(last_sweep));
        if let Some(s) = schedule.as_ref() {
            if stopped_at.is_none() && !idle.is_empty() {
                if let Some(due) = s.due(plan, s.next) {
                    timeout = timeout.min(due.saturating_duration_since(now));
                }
            }
        }
        if let (None, Some(end)) = (stopped_at, plan.end) {
            timeout = timeout.min(end.saturating_duration_since(now));
        }
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                cx.stats.error = Some(format!("event loop: {e}"));
                break;
            }
        }
        for event in events.iter() {
            if let Some(conn) = conns.get_mut(event.token().0) {
                conn.on_event(&mut cx);
            }
        }
        // Next requests go out after the whole batch of events was read (as wrk does it, on
        // the next loop turn): the writes of a batch then reach the server together.
        let now = Instant::now();
        if now.saturating_duration_since(last_sweep) >= SWEEP {
            last_sweep = now;
            for conn in conns.iter_mut() {
                match conn.phase {
                    p if p.in_request() && now >= conn.deadline => {
                        let timeout = plan.config.timeout;
                        let (kind, what) = match p {
                            Phase::Connecting => (FailureKind::ConnectTimeout, "connect"),
                            Phase::Handshake => (FailureKind::TlsHandshake, "TLS handshake"),
                            _ => (FailureKind::Timeout, "response"),
                        };
                        conn.fail(&mut cx, kind, || {
                            format!("no complete {what} within {timeout:?}")
                        });
                    }
                    Phase::Backoff(until) if now >= until => {
                        conn.phase = Phase::Idle;
                        cx.ready.push(conn.index);
                    }
                    _ => {}
                }
            }
        }
    }

    // Open loop: requests that were due before the stop but never found an idle connection.
    if let (Some(s), Some(stop)) = (schedule.as_ref(), stopped_at) {
        let mut j = s.next;
        while let Some(due) = s.due(plan, j) {
            if due >= stop {
                break;
            }
            cx.stats.unsent += 1;
            j += 1;
        }
    }
    let mut stats = cx.stats;
    stats.finished = Instant::now();
    stats
}

/// A fresh latency histogram: 1 µs to 1 h, 3 significant digits.
pub(super) fn new_histogram() -> Histogram<u64> {
    // Only fails for invalid bounds, and these are constants.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant histogram bounds")
}
