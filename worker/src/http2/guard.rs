//! Flood detection the `h2` crate does not do: it answers every SETTINGS and PING, applies
//! every PRIORITY and WINDOW_UPDATE and skips every frame of an unknown type, without
//! counting. [`FrameGuard`] reads the frame headers of everything the client sends (and of
//! the DATA frames the server sends) before h2 parses it, counts them per connection, and
//! gives a [`Refusal`] when a count passes its threshold; the connection then ends with
//! GOAWAY(ENHANCE_YOUR_CALM) (`http2::conn`). The thresholds follow what nginx, Envoy and
//! gRPC ship with; `docs/design/http2.md` has the table.
//!
//! What h2 does count (rapid reset of streams it has not handed over yet, CONTINUATION runs,
//! decoded header lists far over the limit, runs of tiny DATA frames, streams it had to
//! reset) is refused by h2 itself; `http2::conn` only names and counts those.

use std::time::{Duration, Instant};

use zentinel_protocol::messages::Http2Refusals;

/// Why a connection was closed for abuse: the `kind` label of the refusal counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    RapidReset,
    ContinuationFlood,
    HeaderListTooLarge,
    SettingsFlood,
    PingFlood,
    EmptyFrames,
    PriorityFlood,
    WindowUpdateFlood,
    ControlFlood,
    StreamErrors,
    SlowRead,
    ProtocolError,
}

impl Refusal {
    pub fn name(self) -> &'static str {
        match self {
            Refusal::RapidReset => "rapid_reset",
            Refusal::ContinuationFlood => "continuation_flood",
            Refusal::HeaderListTooLarge => "header_list_too_large",
            Refusal::SettingsFlood => "settings_flood",
            Refusal::PingFlood => "ping_flood",
            Refusal::EmptyFrames => "empty_frames",
            Refusal::PriorityFlood => "priority_flood",
            Refusal::WindowUpdateFlood => "window_update_flood",
            Refusal::ControlFlood => "control_flood",
            Refusal::StreamErrors => "stream_errors",
            Refusal::SlowRead => "slow_read",
            Refusal::ProtocolError => "protocol_error",
        }
    }

    pub fn count(self, c: &mut Http2Refusals) {
        let field = match self {
            Refusal::RapidReset => &mut c.rapid_reset,
            Refusal::ContinuationFlood => &mut c.continuation_flood,
            Refusal::HeaderListTooLarge => &mut c.header_list_too_large,
            Refusal::SettingsFlood => &mut c.settings_flood,
            Refusal::PingFlood => &mut c.ping_flood,
            Refusal::EmptyFrames => &mut c.empty_frames,
            Refusal::PriorityFlood => &mut c.priority_flood,
            Refusal::WindowUpdateFlood => &mut c.window_update_flood,
            Refusal::ControlFlood => &mut c.control_flood,
            Refusal::StreamErrors => &mut c.stream_errors,
            Refusal::SlowRead => &mut c.slow_read,
            Refusal::ProtocolError => &mut c.protocol_error,
        };
        *field = field.saturating_add(1);
    }
}

/// The window SETTINGS and PING frames are counted over.
const RATE_WINDOW: Duration = Duration::from_secs(10);
/// SETTINGS frames (not acks) a client may send per window. A client sends one at the
/// start and one per change of its own settings (gRPC's window tuning changes a few); each
/// one makes the server re-apply settings to every stream, so a flood costs work per stream.
const MAX_SETTINGS_PER_WINDOW: u32 = 100;
/// PING frames (not acks) a client may send per window: liveness checks and bandwidth
/// probes (hyper's, gRPC's) send at most a few per second. gRPC servers close a client that
/// pings more often than they allow with GOAWAY(ENHANCE_YOUR_CALM, "too_many_pings"); this
/// is far more lenient and only stops floods.
const MAX_PINGS_PER_WINDOW: u32 = 1000;
/// Consecutive frames with an empty payload (DATA without END_STREAM, HEADERS,
/// CONTINUATION) allowed: Envoy's `max_consecutive_inbound_frames_with_empty_payload`
/// default. Such a frame carries nothing and costs a frame's processing.
const MAX_CONSECUTIVE_EMPTY: u32 = 1;
/// PRIORITY frames allowed per stream the client opened (plus one): Envoy's
/// `max_inbound_priority_frames_per_stream` default. Priorities are advisory (RFC 9113
/// deprecates the scheme) and h2 ignores them.
const PRIORITY_PER_STREAM: u64 = 100;
/// WINDOW_UPDATE frames allowed per DATA frame sent: Envoy's
/// `max_inbound_window_update_frames_per_data_frame_sent` default, with its formula
/// `5 + 2 * (streams opened + 10 * DATA frames sent)`.
const WINDOW_UPDATES_PER_DATA_FRAME: u64 = 10;
/// nginx's "http2 flood detected" rule: everything read from a client, divided by eight, may
/// not exceed the payload (of DATA frames and header blocks) plus 1 MiB. Unlike nginx, acks
/// and WINDOW_UPDATEs are left out of "everything": they answer what the server sent (a long
/// download brings a steady trickle of them and no payload) and have their own limits. Catches floods of frame types nothing else counts (unknown types, RST_STREAM on
/// closed streams, GOAWAY) at a cost of a few bytes of accounting.
const CONTROL_RATIO: u64 = 8;
const CONTROL_SLACK: u64 = 1024 * 1024;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_ACK: u8 = 0x1;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
const HEADER_LEN: usize = 9;

/// One frame's header, with the pad length of a padded DATA or HEADERS frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub pad: u8,
}

impl FrameHead {
    /// What the frame carries besides padding and priority fields.
    fn payload(&self) -> u64 {
        let mut overhead = 0u64;
        if self.flags & FLAG_PADDED != 0 && matches!(self.kind, DATA | HEADERS) {
            overhead += 1 + u64::from(self.pad);
        }
        if self.kind == HEADERS && self.flags & FLAG_PRIORITY != 0 {
            overhead += 5;
        }
        u64::from(self.len).saturating_sub(overhead)
    }
}

/// Frame headers out of a byte stream fed in arbitrary pieces: the header (and the pad
/// length byte of a padded frame) is collected, the rest of each frame skipped (the first
/// bytes of GOAWAY frames kept, when asked).
#[derive(Debug, Default)]
pub struct FrameScanner {
    head: [u8; HEADER_LEN + 1],
    have: usize,
    /// Payload bytes still to skip.
    skip: u64,
    /// Keep GOAWAY payloads (code and debug data, up to `GOAWAY_KEPT` bytes).
    keep_goaway: bool,
    kept: Vec<u8>,
    keep_left: usize,
    /// The last GOAWAY's payload, once whole (or cut at `GOAWAY_KEPT`).
    last_goaway: Option<Vec<u8>>,
}

/// Bytes of a GOAWAY kept: the last stream id, the code and enough debug data to name the
/// reason h2 gave.
const GOAWAY_KEPT: usize = 8 + 56;

impl FrameScanner {
    /// A scanner that first skips `preface` bytes (the client connection preface).
    pub fn after(preface: usize) -> Self {
        FrameScanner {
            skip: preface as u64,
            ..FrameScanner::default()
        }
    }

    /// Feed `data`; `on_frame` sees each complete header and the offset in `data` where
    /// that frame began (0 if it began in an earlier piece), and may stop the scan by
    /// returning `false`. Returns whether the scan went through.
    pub fn feed(
        &mut self,
        data: &[u8],
        mut on_frame: impl FnMut(FrameHead, usize) -> bool,
    ) -> bool {
        let mut at = 0;
        while at < data.len() {
            if self.skip > 0 {
                let n = usize::try_from(self.skip)
                    .unwrap_or(usize::MAX)
                    .min(data.len() - at);
                if self.keep_left > 0 {
                    let k = n.min(self.keep_left);
                    self.kept.extend_from_slice(&data[at..at + k]);
                    self.keep_left -= k;
                    if self.keep_left == 0 {
                        self.last_goaway = Some(std::mem::take(&mut self.kept));
                    }
                }
                at += n;
                self.skip -= n as u64;
                continue;
            }
            let start = at.saturating_sub(self.have);
            let want = self.wanted();
            let n = (want - self.have).min(data.len() - at);
            self.head[self.have..self.have + n].copy_from_slice(&data[at..at + n]);
            self.have += n;
            at += n;
            if self.have < self.wanted() {
                continue;
            }
            let h = &self.head;
            let len = u32::from_be_bytes([0, h[0], h[1], h[2]]);
            let head = FrameHead {
                len,
                kind: h[3],
                flags: h[4],
                stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
                pad: if self.have > HEADER_LEN {
                    h[HEADER_LEN]
                } else {
                    0
                },
            };
            self.skip = u64::from(len) - (self.have - HEADER_LEN) as u64;
            self.have = 0;
            if self.keep_goaway && head.kind == GOAWAY {
                self.kept.clear();
                self.keep_left = usize::try_from(len).unwrap_or(usize::MAX).min(GOAWAY_KEPT);
                if self.keep_left == 0 {
                    self.last_goaway = Some(Vec::new());
                }
            }
            if !on_frame(head, start) {
                return false;
            }
        }
        true
    }

    /// Header bytes to collect: nine, or ten for a padded DATA or HEADERS frame with a
    /// payload (its first byte is the pad length).
    fn wanted(&self) -> usize {
        if self.have < HEADER_LEN {
            return HEADER_LEN;
        }
        let h = &self.head;
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]);
        if matches!(h[3], DATA | HEADERS) && h[4] & FLAG_PADDED != 0 && len > 0 {
            HEADER_LEN + 1
        } else {
            HEADER_LEN
        }
    }
}

/// A connection's frame counts and the first refusal they led to.
#[derive(Debug)]
pub struct FrameGuard {
    inbound: FrameScanner,
    outbound: FrameScanner,
    window_start: Instant,
    settings: u32,
    pings: u32,
    empty_run: u32,
    priorities: u64,
    window_updates: u64,
    streams_opened: u64,
    last_stream: u32,
    data_frames_sent: u64,
    total_bytes: u64,
    payload_bytes: u64,
    verdict: Option<Refusal>,
}

impl FrameGuard {
    /// `preface`: bytes of client connection preface still to come before the first frame.
    pub fn new(preface: usize, now: Instant) -> Self {
        FrameGuard {
            inbound: FrameScanner::after(preface),
            outbound: FrameScanner {
                keep_goaway: true,
                ..FrameScanner::default()
            },
            window_start: now,
            settings: 0,
            pings: 0,
            empty_run: 0,
            priorities: 0,
            window_updates: 0,
            streams_opened: 0,
            last_stream: 0,
            data_frames_sent: 0,
            total_bytes: 0,
            payload_bytes: 0,
            verdict: None,
        }
    }

    pub fn verdict(&self) -> Option<Refusal> {
        self.verdict
    }

    /// The last GOAWAY the server wrote: its error code and debug data. h2 names its own
    /// flood verdicts only there (`too_many_resets`...): the error it returns has neither.
    pub fn sent_goaway(&self) -> Option<(u32, &[u8])> {
        let p = self.outbound.last_goaway.as_deref()?;
        let code = u32::from_be_bytes(p.get(4..8)?.try_into().ok()?);
        Some((code, &p[8..]))
    }

    /// Client bytes about to go to h2: how many of them h2 may have (all, or up to the
    /// frame that tripped a threshold; none once a verdict is out).
    pub fn inbound(&mut self, data: &[u8], now: Instant) -> usize {
        if self.verdict.is_some() {
            return 0;
        }
        if now.duration_since(self.window_start) >= RATE_WINDOW {
            self.window_start = now;
            self.settings = 0;
            self.pings = 0;
        }
        let mut cut = data.len();
        let mut scanner = std::mem::take(&mut self.inbound);
        scanner.feed(data, |head, start| match self.frame(head) {
            Some(refusal) => {
                self.verdict = Some(refusal);
                cut = start;
                false
            }
            None => true,
        });
        self.inbound = scanner;
        cut
    }

    /// Server bytes h2 wrote: DATA frames sent make room for WINDOW_UPDATEs.
    pub fn outbound(&mut self, data: &[u8]) {
        let sent = &mut self.data_frames_sent;
        self.outbound.feed(data, |head, _| {
            if head.kind == DATA {
                *sent += 1;
            }
            true
        });
    }

    /// Count one client frame; `Some`: it is one too many.
    fn frame(&mut self, head: FrameHead) -> Option<Refusal> {
        let answer = head.kind == WINDOW_UPDATE
            || (matches!(head.kind, SETTINGS | PING) && head.flags & FLAG_ACK != 0);
        if !answer {
            self.total_bytes = self
                .total_bytes
                .saturating_add(HEADER_LEN as u64 + u64::from(head.len));
        }
        let payload = head.payload();
        let empty = match head.kind {
            DATA => payload == 0 && head.flags & FLAG_END_STREAM == 0,
            HEADERS => payload == 0 && head.flags & FLAG_END_STREAM == 0,
            CONTINUATION => payload == 0,
            _ => false,
        };
        if matches!(head.kind, DATA | HEADERS | CONTINUATION) {
            self.payload_bytes = self.payload_bytes.saturating_add(payload);
        }
        // Any frame with something in it ends a run of empty ones (Envoy's rule).
        if empty {
            self.empty_run += 1;
            if self.empty_run > MAX_CONSECUTIVE_EMPTY {
                return Some(Refusal::EmptyFrames);
            }
        } else {
            self.empty_run = 0;
        }
        match head.kind {
            HEADERS if head.stream > self.last_stream && head.stream % 2 == 1 => {
                self.last_stream = head.stream;
                self.streams_opened += 1;
            }
            PRIORITY => {
                self.priorities += 1;
                if self.priorities > PRIORITY_PER_STREAM * (1 + self.streams_opened) {
                    return Some(Refusal::PriorityFlood);
                }
            }
            SETTINGS if head.flags & FLAG_ACK == 0 => {
                self.settings += 1;
                if self.settings > MAX_SETTINGS_PER_WINDOW {
                    return Some(Refusal::SettingsFlood);
                }
            }
            PING if head.flags & FLAG_ACK == 0 => {
                self.pings += 1;
                if self.pings > MAX_PINGS_PER_WINDOW {
                    return Some(Refusal::PingFlood);
                }
            }
            WINDOW_UPDATE => {
                self.window_updates += 1;
                let budget = 5 + 2
                    * (self.streams_opened + WINDOW_UPDATES_PER_DATA_FRAME * self.data_frames_sent);
                if self.window_updates > budget {
                    return Some(Refusal::WindowUpdateFlood);
                }
            }
            _ => {}
        }
        if self.total_bytes / CONTROL_RATIO > self.payload_bytes.saturating_add(CONTROL_SLACK) {
            return Some(Refusal::ControlFlood);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = len.to_be_bytes()[1..].to_vec();
        out.extend([kind, flags]);
        out.extend(stream.to_be_bytes());
        out.extend(payload);
        out
    }

    #[test]
    fn scanner_finds_headers_across_any_split() {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(SETTINGS, 0, 0, &[0; 6]));
        bytes.extend(frame(HEADERS, FLAG_PADDED | 0x4, 1, &[3, 9, 9, 0, 0, 0]));
        bytes.extend(frame(DATA, FLAG_END_STREAM, 1, b"hello"));
        for piece in [1, 2, 7, 9, 10, 64] {
            let mut s = FrameScanner::after(24);
            let mut seen = Vec::new();
            for chunk in bytes.chunks(piece) {
                s.feed(chunk, |h, _| {
                    seen.push((h.kind, h.len, h.stream, h.pad, h.payload()));
                    true
                });
            }
            assert_eq!(
                seen,
                vec![
                    (SETTINGS, 6, 0, 0, 6),
                    (HEADERS, 6, 1, 3, 2),
                    (DATA, 5, 1, 0, 5)
                ],
                "pieces of {piece}"
            );
        }
    }

    #[test]
    fn floods_trip_their_thresholds_and_cut_before_the_frame() {
        let now = Instant::now();
        let mut g = FrameGuard::new(0, now);
        let ping = frame(PING, 0, 0, &[0; 8]);
        let mut bytes = Vec::new();
        for _ in 0..MAX_PINGS_PER_WINDOW + 5 {
            bytes.extend(&ping);
        }
        let cut = g.inbound(&bytes, now);
        assert_eq!(g.verdict(), Some(Refusal::PingFlood));
        assert_eq!(cut, ping.len() * MAX_PINGS_PER_WINDOW as usize);
        assert_eq!(g.inbound(&ping, now), 0, "nothing more once refused");

        // The window resets the rate counts.
        let mut g = FrameGuard::new(0, now);
        for round in 0..3 {
            let at = now + RATE_WINDOW * round;
            for _ in 0..MAX_SETTINGS_PER_WINDOW {
                g.inbound(&frame(SETTINGS, 0, 0, &[]), at);
            }
        }
        assert_eq!(g.verdict(), None);
        g.inbound(&frame(SETTINGS, 0, 0, &[]), now + RATE_WINDOW * 2);
        assert_eq!(g.verdict(), Some(Refusal::SettingsFlood));

        let mut g = FrameGuard::new(0, now);
        g.inbound(&frame(DATA, 0, 1, b""), now);
        g.inbound(&frame(DATA, FLAG_END_STREAM, 1, b""), now);
        g.inbound(&frame(DATA, 0, 1, b""), now);
        assert_eq!(g.verdict(), None, "END_STREAM is not empty");
        g.inbound(&frame(CONTINUATION, 0, 1, b""), now);
        assert_eq!(g.verdict(), Some(Refusal::EmptyFrames));

        let mut g = FrameGuard::new(0, now);
        let wu = frame(WINDOW_UPDATE, 0, 0, &[0, 0, 1, 0]);
        for _ in 0..5 {
            g.inbound(&wu, now);
        }
        assert_eq!(g.verdict(), None);
        g.inbound(&wu, now);
        assert_eq!(g.verdict(), Some(Refusal::WindowUpdateFlood));
        let mut g = FrameGuard::new(0, now);
        g.outbound(&frame(DATA, 0, 1, &[1; 100]));
        for _ in 0..25 {
            g.inbound(&wu, now);
        }
        assert_eq!(
            g.verdict(),
            None,
            "a DATA frame sent makes room for 20 more"
        );

        let mut g = FrameGuard::new(0, now);
        let mut goaway = vec![0, 0, 0, 5, 0, 0, 0, 11];
        goaway.extend_from_slice(b"too_many_resets");
        let bytes = frame(GOAWAY, 0, 0, &goaway);
        for piece in bytes.chunks(3) {
            g.outbound(piece);
        }
        assert_eq!(g.sent_goaway(), Some((11, &b"too_many_resets"[..])));

        let mut g = FrameGuard::new(0, now);
        let unknown = frame(0xfa, 0, 0, &[0; 16 * 1024]);
        let mut n = 0;
        while g.verdict().is_none() {
            g.inbound(&unknown, now);
            n += 1;
        }
        assert_eq!(g.verdict(), Some(Refusal::ControlFlood));
        assert!(n > 500, "1 MiB of slack and 8x the payload: {n}");
    }
}
