//! The known HTTP/2 attacks against a real worker (issue 16, "Protection"): a raw client
//! writes the frames by hand over h2c and reads back what the proxy answered. Each attack
//! ends with GOAWAY and the right error code, is counted by kind in `/metrics`, and is
//! logged with the peer; memory stays bounded where the attack is about memory.

use std::io::Read;
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use zentinel_tests::h2frames::*;
use zentinel_tests::*;

const DEADLINE: Duration = Duration::from_secs(15);
const MAX_STREAMS: u32 = 64;
/// The listener's request timeout: how long a response may wait on a client that does not
/// read it.
const REQUEST_TIMEOUT_SECS: u64 = 2;

struct Rig {
    _backend: Backend,
    z: Zentinel,
    metrics: SocketAddr,
}

fn rig(label: &str) -> Rig {
    let backend = Backend::start(label);
    let port = free_port();
    let metrics_port = free_port();
    let config = configs::Proxy::new(1, port, &backend)
        .protocol("h2")
        .listener(&format!(
            "max-concurrent-streams {MAX_STREAMS}\nrequest-timeout-secs {REQUEST_TIMEOUT_SECS}"
        ))
        .top_level(&format!(
            "observability {{\n    metrics {{\n        enabled #true\n        address \"127.0.0.1:{metrics_port}\"\n        path \"/metrics\"\n    }}\n}}"
        ))
        .build();
    let z = Zentinel::start(&config);
    Rig {
        _backend: backend,
        z,
        metrics: SocketAddr::from(([127, 0, 0, 1], metrics_port)),
    }
}

impl Rig {
    fn connect(&self) -> H2Conn {
        H2Conn::connect(self.z.addr(), &[])
    }

    /// `zentinel_http2_refused_connections_total{kind="KIND"}` as scraped now.
    fn refused(&self, kind: &str) -> Option<u64> {
        let mut s = std::net::TcpStream::connect(self.metrics).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        use std::io::Write;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: m\r\n\r\n")
            .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let key = format!("zentinel_http2_refused_connections_total{{kind=\"{kind}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.trim().parse().ok())
    }

    /// The refusal is counted (the master polls the workers; each scrape asks again) and
    /// logged with the peer and the kind.
    fn assert_refused(&self, kind: &str, at_least: u64, peer: SocketAddr) {
        let counted = wait_until(DEADLINE, || self.refused(kind) >= Some(at_least));
        assert!(
            counted,
            "{kind}: counter at {:?}, expected >= {at_least}",
            self.refused(kind)
        );
        let logged = wait_until(DEADLINE, || {
            self.z.log_text().lines().any(|l| {
                l.contains("HTTP/2 connection refused")
                    && l.contains(kind)
                    && l.contains(&peer.to_string())
            })
        });
        assert!(
            logged,
            "{kind}: no warning naming {peer}:\n{}",
            self.z.log()
        );
    }
}

/// Read until the server's GOAWAY and its close: the GOAWAY (last stream id, code).
fn goaway_then_close(c: &mut H2Conn, what: &str) -> (u32, u32) {
    let (frames, end) = c.read_to_end(DEADLINE);
    let g = goaways(&frames);
    assert_eq!(
        end,
        End::Closed,
        "{what}: the server did not close: {frames:?}"
    );
    assert_eq!(g.len(), 1, "{what}: one GOAWAY: {frames:?}");
    g[0]
}

fn assert_calm(c: &mut H2Conn, what: &str) {
    let (_, code) = goaway_then_close(c, what);
    assert_eq!(code, ENHANCE_YOUR_CALM, "{what}: GOAWAY code");
}

#[test]
fn rapid_reset_in_one_burst_is_refused() {
    let r = rig("h2-rr-burst");
    let mut c = r.connect();
    let peer = c.stream.local_addr().unwrap();
    let mut burst = Vec::new();
    for i in 0..1000u32 {
        let id = 2 * i + 1;
        burst.extend(get(id, "/delay/1000"));
        burst.extend(rst_stream(id, CANCEL));
    }
    let _ = c.try_send(&burst);
    assert_calm(&mut c, "HEADERS+RST_STREAM burst");
    r.assert_refused("rapid_reset", 1, peer);
}

/// Each stream is reset only once the proxy has taken it (a PING round trip after its
/// HEADERS), so h2's count of streams reset before they were taken never moves: the
/// premature-reset rule (at least half of 500 streams reset within 1 s) catches it.
#[test]
fn rapid_reset_paced_past_h2s_own_count_is_refused() {
    let r = rig("h2-rr-paced");
    let mut c = r.connect();
    let peer = c.stream.local_addr().unwrap();
    let mut refused = None;
    for i in 0..700u32 {
        let id = 2 * i + 1;
        let mut out = get(id, "/delay/3000");
        out.extend(ping(i.to_be_bytes().repeat(2).try_into().unwrap(), false));
        if c.try_send(&out).is_err() {
            break;
        }
        let got = c.read_until(DEADLINE, |f| {
            f.kind == PING && f.flags & ACK != 0 || f.kind == GOAWAY
        });
        let frames = match got {
            Ok(frames) => frames,
            Err((frames, _)) => frames,
        };
        if let Some(g) = goaways(&frames).first() {
            refused = Some((i, *g));
            break;
        }
        if c.try_send(&rst_stream(id, CANCEL)).is_err() {
            break;
        }
    }
    let (i, (_, code)) = refused.unwrap_or_else(|| {
        let (frames, _) = c.read_to_end(DEADLINE);
        let g = goaways(&frames);
        assert!(
            !g.is_empty(),
            "no GOAWAY after 700 paced resets: {frames:?}"
        );
        (700, g[0])
    });
    assert_eq!(code, ENHANCE_YOUR_CALM);
    assert!(
        (499..=600).contains(&i),
        "refused after {i} streams, expected right after the 500th"
    );
    r.assert_refused("rapid_reset", 1, peer);
}

#[test]
fn continuation_flood_is_refused() {
    let r = rig("h2-cont");
    let mut c = r.connect();
    let peer = c.stream.local_addr().unwrap();
    let mut out = frame(
        HEADERS,
        END_STREAM,
        1,
        &request_block("GET", "/", "h2.test"),
    );
    for i in 0..200 {
        let mut block = Vec::new();
        literal(&format!("x-c{i}"), b"v", &mut block);
        out.extend(frame(CONTINUATION, 0, 1, &block));
    }
    let _ = c.try_send(&out);
    assert_calm(&mut c, "CONTINUATION without END_HEADERS");
    r.assert_refused("continuation_flood", 1, peer);
}

/// A 12 KiB header block that decodes to 16 MB: one 4000-byte field entered into the HPACK
/// dynamic table, then referenced 4000 times. h2 stops storing fields past the header list
/// limit and gives up past four times it; the worker's memory does not move.
#[test]
fn hpack_bomb_is_refused_with_memory_bounded() {
    let r = rig("h2-bomb");
    // One header a bit over the limit (8 KiB by default): 431 for that stream only.
    let mut c = r.connect();
    let mut block = request_block("GET", "/", "h2.test");
    literal("x-big", &[b'a'; 10_000], &mut block);
    c.send(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &block));
    let first = c.response(1, DEADLINE);
    assert!(
        first.status.is_some() && first.status != Some(200),
        "an oversized header list is answered (431), not served: {first:?}"
    );
    c.send(&get(3, "/after"));
    let second = c.response(3, DEADLINE);
    assert_eq!(
        second.status,
        Some(200),
        "the connection goes on: {second:?}"
    );

    let worker = r.z.worker_pids()[0];
    let before = peak_rss_kib(worker).unwrap();
    for _ in 0..20 {
        let mut c = r.connect();
        let peer = c.stream.local_addr().unwrap();
        let mut block = request_block("GET", "/", "h2.test");
        literal_indexed("x-bomb", &[b'b'; 4000], &mut block);
        for _ in 0..4000 {
            indexed(62, &mut block);
        }
        let _ = c.try_send(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &block));
        assert_calm(&mut c, "HPACK bomb");
        r.assert_refused("header_list_too_large", 1, peer);
    }
    let after = peak_rss_kib(worker).unwrap();
    assert!(
        after.saturating_sub(before) < 16 * 1024,
        "20 HPACK bombs of 16 MB each grew the worker's peak RSS from {before} KiB to {after} KiB"
    );
}

#[test]
fn settings_flood_is_refused() {
    let r = rig("h2-settings");
    let mut c = r.connect();
    let peer = c.stream.local_addr().unwrap();
    let mut out = Vec::new();
    for _ in 0..500 {
        out.extend(settings(&[(SETTINGS_INITIAL_WINDOW_SIZE, 65_535)]));
    }
    let _ = c.try_send(&out);
    assert_calm(&mut c, "SETTINGS flood");
    r.assert_refused("settings_flood", 1, peer);
}

#[test]
fn ping_flood_is_refused() {
    let r = rig("h2-ping");
    let mut c = r.connect();
    let peer = c.stream.local_addr().unwrap();
    let mut out = Vec::new();
    for i in 0..5000u64 {
        out.extend(ping(i.to_be_bytes(), false));
    }
    let _ = c.try_send(&out);
    assert_calm(&mut c, "PING flood");
    r.assert_refused("ping_flood", 1, peer);
}

#[test]
fn empty_frame_floods_are_refused() {
    let r = rig("h2-empty");
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        ("zero-length DATA without END_STREAM", "empty_frames", {
            let mut out = frame(
                HEADERS,
                END_HEADERS,
                1,
                &request_block("POST", "/upload", "h2.test"),
            );
            for _ in 0..50 {
                out.extend(frame(DATA, 0, 1, &[]));
            }
            out
        }),
        ("empty HEADERS and CONTINUATION", "empty_frames", {
            let mut out = frame(HEADERS, 0, 1, &[]);
            for _ in 0..50 {
                out.extend(frame(CONTINUATION, 0, 1, &[]));
            }
            out
        }),
        ("PRIORITY storm", "priority_flood", {
            let mut out = Vec::new();
            for i in 0..500u32 {
                out.extend(priority(2 * i + 1, 0, 16));
            }
            out
        }),
        ("WINDOW_UPDATE storm", "window_update_flood", {
            let mut out = Vec::new();
            for _ in 0..500 {
                out.extend(window_update(0, 1));
            }
            out
        }),
    ];
    for (what, kind, out) in cases {
        let mut c = r.connect();
        let peer = c.stream.local_addr().unwrap();
        let _ = c.try_send(&out);
        assert_calm(&mut c, what);
        r.assert_refused(kind, 1, peer);
    }
}

#[test]
fn stream_ids_at_the_end_of_the_space_are_served_then_exhausted() {
    let r = rig("h2-ids");
    let mut c = r.connect();
    let peer = c.stream.local_addr().unwrap();
    c.send(&get(MAX_STREAM_ID, "/last"));
    let last = c.response(MAX_STREAM_ID, DEADLINE);
    assert_eq!(last.status, Some(200), "stream 2^31-1 is served: {last:?}");
    assert!(last.complete, "{last:?}");
    // No stream id is left above it: any new stream is a protocol error.
    let _ = c.try_send(&get(MAX_STREAM_ID - 2, "/again"));
    let (last_id, code) = goaway_then_close(&mut c, "a stream after 2^31-1");
    assert_eq!(code, PROTOCOL_ERROR);
    assert_eq!(last_id, MAX_STREAM_ID);
    r.assert_refused("protocol_error", 1, peer);
}

/// Streams opened past `max-concurrent-streams` are refused one by one (RST_STREAM
/// REFUSED_STREAM); a client that goes on opening them is refused as a whole.
#[test]
fn ever_increasing_stream_ids_past_the_concurrency_limit_are_refused() {
    let r = rig("h2-maxconc");
    let mut c = r.connect();
    let peer = c.stream.local_addr().unwrap();
    // Let the SETTINGS (and its limit) reach the client first.
    c.read_until(DEADLINE, |f| f.kind == SETTINGS && f.flags & ACK != 0)
        .expect("SETTINGS ack");
    let mut out = Vec::new();
    for i in 0..MAX_STREAMS {
        out.extend(get(2 * i + 1, "/delay/5000"));
    }
    c.send(&out);
    let mut out = Vec::new();
    for i in MAX_STREAMS..MAX_STREAMS + 400 {
        out.extend(get(2 * i + 1, "/delay/5000"));
    }
    let _ = c.try_send(&out);
    let (frames, end) = c.read_to_end(DEADLINE);
    let refusals = frames
        .iter()
        .filter(|f| f.rst_code() == Some(REFUSED_STREAM))
        .count();
    assert!(refusals >= 200, "{refusals} streams refused one by one");
    assert_eq!(end, End::Closed);
    let g = goaways(&frames);
    assert_eq!(g.len(), 1, "{frames:?}");
    assert_eq!(g[0].1, ENHANCE_YOUR_CALM);
    r.assert_refused("stream_errors", 1, peer);
}

/// A client that keeps its flow-control window shut: the response waits, the connection is
/// refused after the request timeout.
#[test]
fn slow_read_with_a_zero_window_is_refused_after_the_request_timeout() {
    let r = rig("h2-zerowin");
    let mut c = H2Conn::connect(r.z.addr(), &[(SETTINGS_INITIAL_WINDOW_SIZE, 0)]);
    let peer = c.stream.local_addr().unwrap();
    let started = Instant::now();
    c.send(&get(1, "/bytes/10000000"));
    let (frames, end) = c.read_to_end(Duration::from_secs(20));
    let took = started.elapsed();
    assert_eq!(end, End::Closed, "{frames:?}");
    assert!(
        frames
            .iter()
            .any(|f| f.stream == 1 && f.status() == Some(200)),
        "the response head goes out (it needs no window): {frames:?}"
    );
    assert!(
        !frames
            .iter()
            .any(|f| f.kind == DATA && !f.payload.is_empty()),
        "no DATA through a zero window"
    );
    let g = goaways(&frames);
    assert_eq!(g.len(), 1, "{frames:?}");
    assert_eq!(g[0].1, ENHANCE_YOUR_CALM);
    let timeout = Duration::from_secs(REQUEST_TIMEOUT_SECS);
    assert!(
        took >= timeout && took < timeout + Duration::from_secs(6),
        "refused after {took:?}, the request timeout is {timeout:?}"
    );
    r.assert_refused("slow_read", 1, peer);
}

/// A client with every window open that never reads the socket: a 300 MB response stops at
/// what the buffers hold, the worker's memory does not follow it, and the connection is
/// closed after the request timeout.
#[test]
fn slow_read_of_a_large_response_keeps_memory_bounded_and_is_closed() {
    let r = rig("h2-noread");
    let stream = std::net::TcpStream::connect(r.z.addr()).unwrap();
    nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::RcvBuf, &(64 * 1024)).unwrap();
    let mut c = H2Conn::over(stream, &[(SETTINGS_INITIAL_WINDOW_SIZE, MAX_STREAM_ID)]);
    let peer = c.stream.local_addr().unwrap();
    let worker = r.z.worker_pids()[0];
    let before = peak_rss_kib(worker).unwrap();
    let mut out = window_update(0, MAX_STREAM_ID - 65_535);
    out.extend(get(1, "/bytes/300000000"));
    c.send(&out);
    let started = Instant::now();
    // Not reading: the server's side fills up, then nothing moves.
    thread::sleep(Duration::from_secs(REQUEST_TIMEOUT_SECS + 2));
    let during = peak_rss_kib(worker).unwrap();
    assert!(
        during.saturating_sub(before) < 32 * 1024,
        "a 300 MB response to a client that reads nothing grew the worker's peak RSS from \
         {before} KiB to {during} KiB"
    );
    r.assert_refused("slow_read", 1, peer);
    // The connection is gone on the server's side: reading drains what the kernel held,
    // then ends.
    let (frames, end) = c.read_to_end(Duration::from_secs(30));
    assert_eq!(end, End::Closed);
    let body: usize = frames
        .iter()
        .filter(|f| f.kind == DATA)
        .map(|f| f.payload.len())
        .sum();
    assert!(
        body < 100_000_000,
        "{body} bytes arrived: the response was not stopped"
    );
    assert!(started.elapsed() < Duration::from_secs(40));
}
