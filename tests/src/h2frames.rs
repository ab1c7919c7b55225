//! A raw HTTP/2 client over plain TCP (h2c with prior knowledge) that writes frames by hand,
//! so a test can send what no well-behaved client would (floods, resets, broken header
//! blocks) and read back exactly which frames the proxy answered with.
//!
//! Header blocks are written with HPACK literal fields without Huffman coding (and indexed
//! fields for the HPACK-bomb test); responses are not HPACK-decoded beyond the `:status` of
//! the static table (h2 writes `:status 200` as one indexed byte).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

pub const NO_ERROR: u32 = 0x0;
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const CANCEL: u32 = 0x8;
pub const REFUSED_STREAM: u32 = 0x7;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;

/// The largest stream id (2^31 - 1): the last stream of a connection, and what a first,
/// graceful GOAWAY carries.
pub const MAX_STREAM_ID: u32 = 0x7fff_ffff;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One frame as read off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// GOAWAY: (last stream id, error code).
    pub fn goaway(&self) -> Option<(u32, u32)> {
        (self.kind == GOAWAY && self.payload.len() >= 8).then(|| {
            (
                u32_at(&self.payload, 0) & MAX_STREAM_ID,
                u32_at(&self.payload, 4),
            )
        })
    }

    /// RST_STREAM: the error code.
    pub fn rst_code(&self) -> Option<u32> {
        (self.kind == RST_STREAM && self.payload.len() == 4).then(|| u32_at(&self.payload, 0))
    }

    /// A response HEADERS' `:status`, when h2 wrote it as an indexed field of the static
    /// table (200, 204, 206, 304, 400, 404, 500).
    pub fn status(&self) -> Option<u16> {
        if self.kind != HEADERS {
            return None;
        }
        let block = self.payload.first()?;
        match block {
            0x88 => Some(200),
            0x89 => Some(204),
            0x8a => Some(206),
            0x8b => Some(304),
            0x8c => Some(400),
            0x8d => Some(404),
            0x8e => Some(500),
            _ => None,
        }
    }

    pub fn end_stream(&self) -> bool {
        matches!(self.kind, DATA | HEADERS) && self.flags & END_STREAM != 0
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// One frame's bytes.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame payload fits 24 bits");
    assert!(len < 1 << 24, "frame payload of {len} bytes");
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & MAX_STREAM_ID).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

pub fn settings(params: &[(u16, u32)]) -> Vec<u8> {
    let mut p = Vec::new();
    for (id, value) in params {
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&value.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &p)
}

pub fn ping(data: [u8; 8], ack: bool) -> Vec<u8> {
    frame(PING, if ack { ACK } else { 0 }, 0, &data)
}

pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

pub fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

pub fn priority(stream: u32, depends_on: u32, weight: u8) -> Vec<u8> {
    let mut p = depends_on.to_be_bytes().to_vec();
    p.push(weight);
    frame(PRIORITY, 0, stream, &p)
}

/// An HPACK integer with an `n`-bit prefix, the prefix's other bits from `first`.
pub fn hpack_int(first: u8, n: u32, mut value: usize, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A literal field without indexing, new name, no Huffman coding.
pub fn literal(name: &str, value: &[u8], out: &mut Vec<u8>) {
    out.push(0x00);
    hpack_int(0, 7, name.len(), out);
    out.extend_from_slice(name.as_bytes());
    hpack_int(0, 7, value.len(), out);
    out.extend_from_slice(value);
}

/// A literal field with incremental indexing (it enters the dynamic table), new name.
pub fn literal_indexed(name: &str, value: &[u8], out: &mut Vec<u8>) {
    out.push(0x40);
    hpack_int(0, 7, name.len(), out);
    out.extend_from_slice(name.as_bytes());
    hpack_int(0, 7, value.len(), out);
    out.extend_from_slice(value);
}

/// An indexed field (static table 1..=61, dynamic table from 62).
pub fn indexed(index: usize, out: &mut Vec<u8>) {
    hpack_int(0x80, 7, index, out);
}

/// The header block of a request.
pub fn request_block(method: &str, path: &str, authority: &str) -> Vec<u8> {
    let mut b = Vec::new();
    literal(":method", method.as_bytes(), &mut b);
    literal(":scheme", b"http", &mut b);
    literal(":path", path.as_bytes(), &mut b);
    literal(":authority", authority.as_bytes(), &mut b);
    b
}

/// HEADERS with END_HEADERS for a GET of `path` (and END_STREAM).
pub fn get(stream: u32, path: &str) -> Vec<u8> {
    frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        stream,
        &request_block("GET", path, "h2.test"),
    )
}

/// How a read of frames ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The server closed the connection (EOF, or a reset after what was read).
    Closed,
    /// Nothing arrived before the deadline.
    TimedOut,
}

/// A raw HTTP/2 connection.
pub struct H2Conn {
    pub stream: TcpStream,
    rbuf: Vec<u8>,
    closed: bool,
    /// PING frames answered by [`H2Conn::read_frame`] (when `answer_pings` is on).
    pub pings_answered: usize,
    pub answer_pings: bool,
}

impl H2Conn {
    /// Connect, send the preface and an empty SETTINGS (and `settings`' parameters).
    pub fn connect(addr: SocketAddr, params: &[(u16, u32)]) -> H2Conn {
        let stream = TcpStream::connect(addr).expect("connect to the h2c listener");
        let _ = stream.set_nodelay(true);
        H2Conn::over(stream, params)
    }

    /// Start HTTP/2 on a connected stream.
    pub fn over(stream: TcpStream, params: &[(u16, u32)]) -> H2Conn {
        let mut c = H2Conn {
            stream,
            rbuf: Vec::new(),
            closed: false,
            pings_answered: 0,
            answer_pings: true,
        };
        let mut hello = PREFACE.to_vec();
        hello.extend(settings(params));
        c.send(&hello);
        c
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to the proxy");
    }

    /// Write, reporting failure (the server may have closed already).
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Stop sending (FIN), keep reading.
    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// The next frame before `deadline`. SETTINGS are acknowledged and PINGs answered on
    /// the way (and returned all the same).
    pub fn read_frame(&mut self, deadline: Instant) -> Result<Frame, End> {
        loop {
            if let Some(f) = self.parse() {
                if f.kind == SETTINGS && f.flags & ACK == 0 {
                    let _ = self.try_send(&frame(SETTINGS, ACK, 0, &[]));
                }
                if f.kind == PING && f.flags & ACK == 0 && self.answer_pings {
                    let mut data = [0u8; 8];
                    data.copy_from_slice(&f.payload[..8.min(f.payload.len())]);
                    if self.try_send(&ping(data, true)).is_ok() {
                        self.pings_answered += 1;
                    }
                }
                return Ok(f);
            }
            if self.closed {
                return Err(End::Closed);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(End::TimedOut);
            }
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .expect("set_read_timeout");
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => self.closed = true,
                Ok(n) => self.rbuf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => self.closed = true,
            }
        }
    }

    fn parse(&mut self) -> Option<Frame> {
        if self.rbuf.len() < 9 {
            return None;
        }
        let len = u32::from_be_bytes([0, self.rbuf[0], self.rbuf[1], self.rbuf[2]]) as usize;
        if self.rbuf.len() < 9 + len {
            return None;
        }
        let f = Frame {
            kind: self.rbuf[3],
            flags: self.rbuf[4],
            stream: u32_at(&self.rbuf, 5) & MAX_STREAM_ID,
            payload: self.rbuf[9..9 + len].to_vec(),
        };
        self.rbuf.drain(..9 + len);
        Some(f)
    }

    /// Every frame until the server closes (or `timeout` passes): the frames and how it
    /// ended.
    pub fn read_to_end(&mut self, timeout: Duration) -> (Vec<Frame>, End) {
        let deadline = Instant::now() + timeout;
        let mut frames = Vec::new();
        loop {
            match self.read_frame(deadline) {
                Ok(f) => frames.push(f),
                Err(end) => return (frames, end),
            }
        }
    }

    /// Frames until one matches `want` (returned last), the server closes, or `timeout`.
    pub fn read_until(
        &mut self,
        timeout: Duration,
        mut want: impl FnMut(&Frame) -> bool,
    ) -> Result<Vec<Frame>, (Vec<Frame>, End)> {
        let deadline = Instant::now() + timeout;
        let mut frames = Vec::new();
        loop {
            match self.read_frame(deadline) {
                Ok(f) => {
                    let done = want(&f);
                    frames.push(f);
                    if done {
                        return Ok(frames);
                    }
                }
                Err(end) => return Err((frames, end)),
            }
        }
    }

    /// A whole response on `stream`: its status (when indexed), its body, whether it ended
    /// with END_STREAM (rather than a reset), and every frame read meanwhile.
    pub fn response(&mut self, stream: u32, timeout: Duration) -> Response {
        let mut r = Response::default();
        let res = self.read_until(timeout, |f| {
            f.stream == stream && (f.end_stream() || f.kind == RST_STREAM)
        });
        let frames = match res {
            Ok(frames) => frames,
            Err((frames, end)) => {
                r.ended = Some(end);
                frames
            }
        };
        for f in &frames {
            if f.stream != stream {
                continue;
            }
            match f.kind {
                HEADERS if r.status.is_none() => r.status = f.status().or(Some(0)),
                DATA => r.body.extend_from_slice(&f.payload),
                RST_STREAM => r.reset = f.rst_code(),
                _ => {}
            }
            r.complete |= f.end_stream();
        }
        r.frames = frames;
        r
    }
}

/// What [`H2Conn::response`] read.
#[derive(Debug, Default)]
pub struct Response {
    /// `Some(0)`: a status not written as an indexed field.
    pub status: Option<u16>,
    pub body: Vec<u8>,
    pub complete: bool,
    pub reset: Option<u32>,
    pub ended: Option<End>,
    pub frames: Vec<Frame>,
}

/// The GOAWAYs among `frames`: (last stream id, error code).
pub fn goaways(frames: &[Frame]) -> Vec<(u32, u32)> {
    frames.iter().filter_map(Frame::goaway).collect()
}
