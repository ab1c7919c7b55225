//! A small RFC 6455 WebSocket for the end-to-end tests: frames, the opening handshake's
//! accept value, a blocking client over any byte stream (plain TCP, or a rustls stream for
//! `wss://`), and the echo server the test backend speaks on `/ws-frames`.
//!
//! Only what the tests need: no extensions, no subprotocols, no UTF-8 check of text. The
//! client masks every frame (a proxy or server may refuse unmasked ones) and checks the
//! server's `Sec-WebSocket-Accept`; the server refuses unmasked frames and answers each
//! message whole (continuations put together), so a test sees message boundaries survive.

use std::io::{self, Read, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Largest message either side accepts (the tests send 2 MiB at most).
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// RFC 6455 section 1.3.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_for(key: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{ACCEPT_GUID}").as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn new(opcode: u8, payload: &[u8]) -> Frame {
        Frame {
            fin: true,
            opcode,
            payload: payload.to_vec(),
        }
    }
}

/// The wire form of `frame`, masked with `mask` (client to server) or not.
pub fn encode(frame: &Frame, mask: Option<[u8; 4]>) -> Vec<u8> {
    let len = frame.payload.len();
    let mut out = Vec::with_capacity(len + 14);
    out.push(u8::from(frame.fin) << 7 | (frame.opcode & 0x0F));
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match len {
        0..=125 => out.push(mask_bit | len as u8),
        126..=0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    match mask {
        None => out.extend_from_slice(&frame.payload),
        Some(m) => {
            out.extend_from_slice(&m);
            out.extend(frame.payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
    }
    out
}

/// A byte stream with bytes already read from it (what followed a head) served first.
struct Buffered<'a, S> {
    stream: &'a mut S,
    pending: &'a mut Vec<u8>,
}

impl<S: Read> Buffered<'_, S> {
    /// Exactly `n` bytes; `Ok(None)` on a clean EOF before the first of them when `eof_ok`.
    fn take(&mut self, n: usize, eof_ok: bool) -> io::Result<Option<Vec<u8>>> {
        let mut out = Vec::with_capacity(n);
        let from_pending = n.min(self.pending.len());
        out.extend(self.pending.drain(..from_pending));
        let mut chunk = vec![0u8; (n - out.len()).min(256 * 1024)];
        while out.len() < n {
            let want = (n - out.len()).min(chunk.len());
            match self.stream.read(&mut chunk[..want]) {
                Ok(0) if out.is_empty() && eof_ok => return Ok(None),
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("EOF after {} of {n} bytes of a frame", out.len()),
                    ))
                }
                Ok(k) => out.extend_from_slice(&chunk[..k]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Some(out))
    }
}

/// One frame and whether it was masked; `Ok(None)` on a clean EOF between frames.
pub fn read_frame<S: Read>(
    stream: &mut S,
    pending: &mut Vec<u8>,
) -> io::Result<Option<(Frame, bool)>> {
    let mut r = Buffered { stream, pending };
    let Some(head) = r.take(2, true)? else {
        return Ok(None);
    };
    let bad = |msg: String| io::Error::new(io::ErrorKind::InvalidData, msg);
    let need = |v: Option<Vec<u8>>| v.ok_or_else(|| bad("EOF inside a frame".into()));
    let (fin, opcode) = (head[0] & 0x80 != 0, head[0] & 0x0F);
    if head[0] & 0x70 != 0 {
        return Err(bad(format!("reserved bits set: {:#04x}", head[0])));
    }
    let masked = head[1] & 0x80 != 0;
    let len = match head[1] & 0x7F {
        126 => u64::from(u16::from_be_bytes(
            need(r.take(2, false)?)?
                .try_into()
                .map_err(|_| bad("length".into()))?,
        )),
        127 => u64::from_be_bytes(
            need(r.take(8, false)?)?
                .try_into()
                .map_err(|_| bad("length".into()))?,
        ),
        n => u64::from(n),
    };
    let len = usize::try_from(len)
        .ok()
        .filter(|&l| l <= MAX_MESSAGE)
        .ok_or_else(|| bad(format!("frame of {len} bytes is too large")))?;
    let mask = if masked {
        Some(need(r.take(4, false)?)?)
    } else {
        None
    };
    let mut payload = need(r.take(len, false)?)?;
    if let Some(m) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= m[i % 4];
        }
    }
    Ok(Some((
        Frame {
            fin,
            opcode,
            payload,
        },
        masked,
    )))
}

/// The next whole message (continuations joined), or a control frame. The server
/// (`server`: frames must be masked) answers pings itself and reads on; the client gets pings
/// and pongs returned. `Ok(None)` on a clean EOF between messages.
fn read_message<S: Read + Write>(
    stream: &mut S,
    pending: &mut Vec<u8>,
    server: bool,
) -> io::Result<Option<Frame>> {
    let bad = |msg: String| io::Error::new(io::ErrorKind::InvalidData, msg);
    let mut message: Option<Frame> = None;
    loop {
        let Some((frame, masked)) = read_frame(stream, pending)? else {
            return match message {
                None => Ok(None),
                Some(_) => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "EOF inside a fragmented message",
                )),
            };
        };
        if masked != server {
            return Err(bad(format!("frame masked={masked}, expected {server}")));
        }
        if frame.opcode >= OP_CLOSE {
            if server && frame.opcode == OP_PING {
                stream.write_all(&encode(&Frame::new(OP_PONG, &frame.payload), None))?;
                stream.flush()?;
                continue;
            }
            if server && frame.opcode == OP_PONG {
                continue;
            }
            return Ok(Some(frame));
        }
        match (&mut message, frame.opcode) {
            (None, OP_TEXT | OP_BINARY) => message = Some(frame),
            (Some(m), OP_CONTINUATION) => {
                if m.payload.len() + frame.payload.len() > MAX_MESSAGE {
                    return Err(bad("message too large".into()));
                }
                m.payload.extend_from_slice(&frame.payload);
                m.fin = frame.fin;
            }
            (_, op) => return Err(bad(format!("unexpected opcode {op:#x}"))),
        }
        if message.as_ref().is_some_and(|m| m.fin) {
            return Ok(message);
        }
    }
}

/// The backend's side after its `101`: every data message echoed whole as one unmasked frame
/// of its type, pings answered, a close answered with a close (then the caller shuts its
/// write side). `pending`: bytes the client sent right after its request head.
pub fn serve_echo<S: Read + Write>(stream: &mut S, mut pending: Vec<u8>) -> io::Result<()> {
    while let Some(message) = read_message(stream, &mut pending, true)? {
        let reply = Frame::new(message.opcode, &message.payload);
        stream.write_all(&encode(&reply, None))?;
        stream.flush()?;
        if message.opcode == OP_CLOSE {
            break;
        }
    }
    Ok(())
}

/// A blocking WebSocket client over `S`.
pub struct WsClient<S> {
    pub stream: S,
    /// Bytes read past what was parsed (the rest of the 101's segment, a partial frame).
    pending: Vec<u8>,
    rng: u64,
}

impl<S: Read + Write> WsClient<S> {
    /// The opening handshake for `path` on `host`. `early` frames go in the same write as the
    /// request, before any `101` (bytes a proxy must carry into the tunnel, not drop). The
    /// `101` is checked: `Upgrade: websocket` and the right `Sec-WebSocket-Accept`.
    pub fn open(mut stream: S, host: &str, path: &str, early: &[Frame]) -> Result<Self, String> {
        let mut rng = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0x9E37_79B9_7F4A_7C15, |d| d.as_nanos() as u64)
            | 1;
        let key_bytes: Vec<u8> = (0..16).map(|_| next(&mut rng) as u8).collect();
        let key = base64::engine::general_purpose::STANDARD.encode(key_bytes);
        let mut bytes = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .into_bytes();
        for f in early {
            bytes.extend(encode(f, Some(mask(&mut rng))));
        }
        stream
            .write_all(&bytes)
            .and_then(|()| stream.flush())
            .map_err(|e| format!("sending the upgrade request: {e}"))?;
        // Frames may follow the 101 in the same read: they start the tunnel.
        let (head, pending) =
            crate::read_response_head(&mut stream).map_err(|e| format!("reading the 101: {e}"))?;
        if head.status != 101 {
            return Err(format!("no 101: {head:?}"));
        }
        if !head
            .header("upgrade")
            .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
        {
            return Err(format!("no `Upgrade: websocket` in {head:?}"));
        }
        if head.header("sec-websocket-accept") != Some(accept_for(&key).as_str()) {
            return Err(format!(
                "wrong Sec-WebSocket-Accept for key {key}: {head:?}"
            ));
        }
        Ok(WsClient {
            stream,
            pending,
            rng,
        })
    }

    /// Frames sent in one write (pipelined: their answers are read afterwards).
    pub fn send_all(&mut self, frames: &[Frame]) -> io::Result<()> {
        let mut bytes = Vec::new();
        for f in frames {
            bytes.extend(encode(f, Some(mask(&mut self.rng))));
        }
        self.stream.write_all(&bytes)?;
        self.stream.flush()
    }

    pub fn send(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        self.send_all(&[Frame::new(opcode, payload)])
    }

    /// The next message (a pong, a close, or a data message whole); EOF is an error.
    pub fn recv(&mut self) -> io::Result<Frame> {
        read_message(&mut self.stream, &mut self.pending, false)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed without a close frame",
            )
        })
    }

    /// The closing handshake: a close (1000) sent, the server's close read back.
    pub fn close(&mut self) -> io::Result<()> {
        self.send(OP_CLOSE, &1000u16.to_be_bytes())?;
        loop {
            let f = self.recv()?;
            if f.opcode == OP_CLOSE {
                return Ok(());
            }
        }
    }
}

/// xorshift64: masking keys need not be secret here, only varied.
fn next(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

fn mask(rng: &mut u64) -> [u8; 4] {
    (next(rng) as u32).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_matches_the_rfc_example() {
        assert_eq!(
            accept_for("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn frames_round_trip_at_every_length_encoding() {
        for len in [0, 1, 125, 126, 65535, 65536, 300_000] {
            let f = Frame::new(OP_BINARY, &crate::pattern(len));
            for m in [None, Some([1, 2, 3, 4])] {
                let mut wire = encode(&f, m);
                let mut empty: &[u8] = &[];
                let (got, masked) = read_frame(&mut empty, &mut wire).unwrap().unwrap();
                assert_eq!((got, masked), (f.clone(), m.is_some()), "{len}");
            }
        }
    }
}
