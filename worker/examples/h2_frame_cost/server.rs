//! A server-role HTTP/2 connection written over an HPACK crate (`hpack`: `loona-hpack`, the
//! way sozu's mux was, or `httlib-hpack`): the evaluation's "frame layer written here". It parses every frame the client sends (preface,
//! SETTINGS and ACK, HEADERS + CONTINUATION through HPACK, DATA with padding, WINDOW_UPDATE,
//! PING, PRIORITY, RST_STREAM, GOAWAY), keeps flow control per stream and connection with the
//! windows `worker/src/http2/conn.rs` gives h2, and writes responses as HEADERS + DATA within
//! the client's windows. Requests reach an [`App`] through callbacks; the app answers with
//! [`FrameConn::respond`].
//!
//! Not here (the product would need them, h2 has them): flood accounting, priorities,
//! server push, CONNECT, timeouts. The sending side is in `send.rs`.

use std::collections::HashMap;

use crate::frame::{self, Code, Head as FrameHead, *};
use crate::head::{self, Bad, Head};
use crate::hpack::Hpack;
use bytes::Bytes;

/// What `worker/src/http2/conn.rs` configures h2 with.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub max_concurrent_streams: u32,
    pub stream_window: u32,
    pub connection_window: u32,
    pub max_header_list: u32,
}

/// Where requests go.
pub trait App {
    /// A request head; `end` when it has no body.
    fn request(&mut self, stream: u32, head: &Head, end: bool);
    /// Request body bytes; `end` with the last (an empty slice after trailers).
    fn data(&mut self, stream: u32, data: &[u8], end: bool);
    /// The client reset the stream, or it was malformed mid-way.
    fn reset(&mut self, stream: u32);
}

/// The connection failed; its GOAWAY is in the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnError(pub Code, pub &'static str);

/// A header block spread over HEADERS and CONTINUATION frames.
struct Block {
    stream: u32,
    end_stream: bool,
    trailers: bool,
}

pub(crate) struct Stream {
    /// The client may still send (no END_STREAM yet).
    pub(crate) recv_open: bool,
    recv_window: i64,
    recv_unclaimed: u32,
    content_length: Option<u64>,
    received: u64,
    pub(crate) send_window: i64,
    /// The response body still to go out (from `sent`), once the head is out.
    pub(crate) body: Option<(Bytes, usize)>,
    pub(crate) send_done: bool,
}

pub struct FrameConn<H> {
    cfg: Config,
    preface_left: usize,
    settings_seen: bool,
    settings_acked: bool,
    rbuf: Vec<u8>,
    pub out: Vec<u8>,
    pub(crate) codec: H,
    head: Head,
    block: Vec<u8>,
    continuing: Option<Block>,
    pub(crate) streams: HashMap<u32, Stream>,
    /// Streams whose response body waits for window.
    pub(crate) sending: Vec<u32>,
    last_stream: u32,
    recv_window: i64,
    recv_unclaimed: u32,
    pub(crate) send_window: i64,
    peer_initial_window: i64,
    pub(crate) peer_max_frame: usize,
    goaway_received: bool,
    pub(crate) closed: Option<ConnError>,
}

/// Bytes of header block accepted across CONTINUATION frames before the connection is
/// refused (the CONTINUATION flood): twice the header list limit, HPACK's worst case
/// expansion being far below that.
const BLOCK_FACTOR: usize = 2;

impl<H: Hpack> FrameConn<H> {
    /// A connection whose server preface (SETTINGS, and the connection window raised) is
    /// already in `out`.
    pub fn new(cfg: Config) -> Self {
        let mut out = Vec::with_capacity(64 * 1024);
        frame::write_settings(
            &mut out,
            &[
                (SETTINGS_MAX_CONCURRENT_STREAMS, cfg.max_concurrent_streams),
                (SETTINGS_INITIAL_WINDOW_SIZE, cfg.stream_window),
                (SETTINGS_MAX_HEADER_LIST_SIZE, cfg.max_header_list),
            ],
        );
        let extra = cfg.connection_window.saturating_sub(DEFAULT_WINDOW);
        if extra > 0 {
            frame::write_window_update(&mut out, 0, extra);
        }
        FrameConn {
            cfg,
            preface_left: PREFACE.len(),
            settings_seen: false,
            settings_acked: false,
            rbuf: Vec::with_capacity(64 * 1024),
            out,
            codec: H::create(),
            head: Head::default(),
            block: Vec::new(),
            continuing: None,
            streams: HashMap::new(),
            sending: Vec::new(),
            last_stream: 0,
            recv_window: i64::from(cfg.connection_window.max(DEFAULT_WINDOW)),
            recv_unclaimed: 0,
            send_window: i64::from(DEFAULT_WINDOW),
            peer_initial_window: i64::from(DEFAULT_WINDOW),
            peer_max_frame: DEFAULT_MAX_FRAME,
            goaway_received: false,
            closed: None,
        }
    }

    pub fn closed(&self) -> Option<ConnError> {
        self.closed
    }

    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// Parse what the client sent (any split: partial frames wait for the rest).
    pub fn feed(&mut self, input: &[u8], app: &mut impl App) -> Result<(), ConnError> {
        if let Some(e) = self.closed {
            return Err(e);
        }
        self.rbuf.extend_from_slice(input);
        let mut rbuf = std::mem::take(&mut self.rbuf);
        let result = self.parse(&rbuf, app);
        match result {
            Ok(used) => {
                rbuf.drain(..used);
                self.rbuf = rbuf;
                self.flush_data();
                Ok(())
            }
            Err(e) => {
                frame::write_goaway(&mut self.out, self.last_stream, e.0);
                self.closed = Some(e);
                Err(e)
            }
        }
    }

    /// Parse whole frames from `buf`; returns the bytes used.
    fn parse(&mut self, buf: &[u8], app: &mut impl App) -> Result<usize, ConnError> {
        let mut at = 0;
        if self.preface_left > 0 {
            let want = &PREFACE[PREFACE.len() - self.preface_left..];
            let n = want.len().min(buf.len());
            if buf[..n] != want[..n] {
                return Err(ConnError(Code::PROTOCOL_ERROR, "bad connection preface"));
            }
            self.preface_left -= n;
            at = n;
        }
        while let Some(head) = FrameHead::parse(&buf[at..]) {
            if head.len > DEFAULT_MAX_FRAME {
                return Err(ConnError(Code::FRAME_SIZE_ERROR, "frame over max size"));
            }
            let end = at + HEADER_LEN + head.len;
            if buf.len() < end {
                break;
            }
            self.frame(head, &buf[at + HEADER_LEN..end], app)?;
            at = end;
        }
        Ok(at)
    }

    fn frame(&mut self, h: FrameHead, p: &[u8], app: &mut impl App) -> Result<(), ConnError> {
        if !self.settings_seen && (h.kind != SETTINGS || h.has(ACK)) {
            return Err(ConnError(Code::PROTOCOL_ERROR, "preface without SETTINGS"));
        }
        if self.continuing.is_some() && h.kind != CONTINUATION {
            return Err(ConnError(Code::PROTOCOL_ERROR, "header block interrupted"));
        }
        match h.kind {
            DATA => self.on_data(h, p, app),
            HEADERS => self.on_headers(h, p, app),
            CONTINUATION => self.on_continuation(h, p, app),
            PRIORITY => match (h.stream, p.len()) {
                (0, _) => Err(ConnError(Code::PROTOCOL_ERROR, "PRIORITY on stream 0")),
                (_, 5) => Ok(()),
                _ => Err(ConnError(Code::FRAME_SIZE_ERROR, "PRIORITY size")),
            },
            RST_STREAM => self.on_rst(h, p, app),
            SETTINGS => self.on_settings(h, p),
            PUSH_PROMISE => Err(ConnError(
                Code::PROTOCOL_ERROR,
                "PUSH_PROMISE from a client",
            )),
            PING => match (h.stream, p.len()) {
                (0, 8) if h.has(ACK) => Ok(()),
                (0, 8) => {
                    frame::write_ping_ack(&mut self.out, p);
                    Ok(())
                }
                (0, _) => Err(ConnError(Code::FRAME_SIZE_ERROR, "PING size")),
                _ => Err(ConnError(Code::PROTOCOL_ERROR, "PING on a stream")),
            },
            GOAWAY => match (h.stream, p.len()) {
                (0, 8..) => {
                    self.goaway_received = true;
                    Ok(())
                }
                (0, _) => Err(ConnError(Code::FRAME_SIZE_ERROR, "GOAWAY size")),
                _ => Err(ConnError(Code::PROTOCOL_ERROR, "GOAWAY on a stream")),
            },
            WINDOW_UPDATE => self.on_window_update(h, p, app),
            // Unknown frame types are ignored (RFC 9113 4.1).
            _ => Ok(()),
        }
    }

    /// A stream the client has not opened yet (RFC 9113 5.1 "idle").
    fn idle(&self, stream: u32) -> bool {
        stream > self.last_stream
    }

    fn on_data(&mut self, h: FrameHead, p: &[u8], app: &mut impl App) -> Result<(), ConnError> {
        if h.stream == 0 || self.idle(h.stream) {
            return Err(ConnError(Code::PROTOCOL_ERROR, "DATA on stream 0 or idle"));
        }
        // The whole payload counts against the windows, padding included (RFC 9113 6.9.1).
        let len = i64::try_from(p.len()).unwrap_or(i64::MAX);
        self.recv_window -= len;
        if self.recv_window < 0 {
            return Err(ConnError(
                Code::FLOW_CONTROL_ERROR,
                "connection window exceeded",
            ));
        }
        self.give_back_connection(p.len());
        let data = frame::unpad(&h, p).ok_or(ConnError(Code::PROTOCOL_ERROR, "bad padding"))?;
        let end = h.has(END_STREAM);
        let Some(s) = self.streams.get_mut(&h.stream).filter(|s| s.recv_open) else {
            frame::write_rst(&mut self.out, h.stream, Code::STREAM_CLOSED);
            return Ok(());
        };
        s.recv_window -= len;
        s.received += data.len() as u64;
        let stream_error = if s.recv_window < 0 {
            Some(Code::FLOW_CONTROL_ERROR)
        } else if s
            .content_length
            .is_some_and(|cl| s.received > cl || (end && s.received != cl))
        {
            Some(Code::PROTOCOL_ERROR)
        } else {
            None
        };
        if let Some(code) = stream_error {
            self.reset_stream(h.stream, code, app);
            return Ok(());
        }
        // The app consumed the bytes in the callback: the window goes back at once.
        app.data(h.stream, data, end);
        if end {
            s.recv_open = false;
            self.finish_if_done(h.stream);
        } else {
            s.recv_unclaimed += u32::try_from(p.len()).unwrap_or(u32::MAX);
            if s.recv_unclaimed >= self.cfg.stream_window / 2 {
                frame::write_window_update(&mut self.out, h.stream, s.recv_unclaimed);
                s.recv_window += i64::from(s.recv_unclaimed);
                s.recv_unclaimed = 0;
            }
        }
        Ok(())
    }

    /// Give the connection window back once half of it was used (h2's threshold).
    fn give_back_connection(&mut self, n: usize) {
        self.recv_unclaimed += u32::try_from(n).unwrap_or(u32::MAX);
        if self.recv_unclaimed >= self.cfg.connection_window / 2 {
            frame::write_window_update(&mut self.out, 0, self.recv_unclaimed);
            self.recv_window += i64::from(self.recv_unclaimed);
            self.recv_unclaimed = 0;
        }
    }

    fn on_headers(&mut self, h: FrameHead, p: &[u8], app: &mut impl App) -> Result<(), ConnError> {
        // `& 1`: `is_multiple_of` is newer than our MSRV.
        if h.stream & 1 == 0 {
            return Err(ConnError(
                Code::PROTOCOL_ERROR,
                "HEADERS on stream 0 or even",
            ));
        }
        let mut frag = frame::unpad(&h, p).ok_or(ConnError(Code::PROTOCOL_ERROR, "bad padding"))?;
        if h.has(PRIORITY_FLAG) {
            if frag.len() < 5 {
                return Err(ConnError(Code::FRAME_SIZE_ERROR, "HEADERS priority size"));
            }
            frag = &frag[5..];
        }
        let trailers = if self.idle(h.stream) {
            if self.goaway_received {
                return Err(ConnError(Code::PROTOCOL_ERROR, "new stream after GOAWAY"));
            }
            self.last_stream = h.stream;
            false
        } else if self.streams.get(&h.stream).is_some_and(|s| s.recv_open) {
            if !h.has(END_STREAM) {
                return Err(ConnError(
                    Code::PROTOCOL_ERROR,
                    "trailers without END_STREAM",
                ));
            }
            true
        } else {
            return Err(ConnError(Code::STREAM_CLOSED, "HEADERS on a closed stream"));
        };
        self.block.clear();
        self.block.extend_from_slice(frag);
        let block = Block {
            stream: h.stream,
            end_stream: h.has(END_STREAM),
            trailers,
        };
        if h.has(END_HEADERS) {
            self.end_block(&block, app)
        } else {
            self.continuing = Some(block);
            Ok(())
        }
    }

    fn on_continuation(
        &mut self,
        h: FrameHead,
        p: &[u8],
        app: &mut impl App,
    ) -> Result<(), ConnError> {
        let Some(block) = self.continuing.take().filter(|b| b.stream == h.stream) else {
            return Err(ConnError(Code::PROTOCOL_ERROR, "CONTINUATION out of place"));
        };
        self.block.extend_from_slice(p);
        if self.block.len() > self.cfg.max_header_list as usize * BLOCK_FACTOR {
            return Err(ConnError(Code::ENHANCE_YOUR_CALM, "header block too large"));
        }
        if h.has(END_HEADERS) {
            self.end_block(&block, app)
        } else {
            self.continuing = Some(block);
            Ok(())
        }
    }

    /// A whole header block: decode it (always, to keep the HPACK table in step), then open
    /// the stream or end it with its trailers.
    fn end_block(&mut self, b: &Block, app: &mut impl App) -> Result<(), ConnError> {
        let max_list = self.cfg.max_header_list as usize;
        let decoded = head::decode(
            &mut self.codec,
            &self.block,
            &mut self.head,
            b.trailers,
            max_list,
        );
        match decoded {
            Err(Bad::Compression) => {
                return Err(ConnError(Code::COMPRESSION_ERROR, "HPACK decoding failed"))
            }
            Err(Bad::Malformed(_) | Bad::TooLarge) => {
                if b.trailers {
                    self.reset_stream(b.stream, Code::PROTOCOL_ERROR, app);
                } else {
                    frame::write_rst(&mut self.out, b.stream, Code::PROTOCOL_ERROR);
                }
                return Ok(());
            }
            Ok(()) => {}
        }
        if b.trailers {
            if let Some(s) = self.streams.get_mut(&b.stream) {
                s.recv_open = false;
                if s.content_length.is_some_and(|cl| cl != s.received) {
                    self.reset_stream(b.stream, Code::PROTOCOL_ERROR, app);
                    return Ok(());
                }
            }
            app.data(b.stream, &[], true);
            self.finish_if_done(b.stream);
            return Ok(());
        }
        let limit = self.cfg.max_concurrent_streams as usize;
        if self.streams.len() >= limit {
            frame::write_rst(&mut self.out, b.stream, Code::REFUSED_STREAM);
            return Ok(());
        }
        let content_length = self.head.content_length;
        if b.end_stream && content_length.is_some_and(|n| n != 0) {
            frame::write_rst(&mut self.out, b.stream, Code::PROTOCOL_ERROR);
            return Ok(());
        }
        let recv_window = if self.settings_acked {
            self.cfg.stream_window
        } else {
            DEFAULT_WINDOW
        };
        self.streams.insert(
            b.stream,
            Stream {
                recv_open: !b.end_stream,
                recv_window: i64::from(recv_window),
                recv_unclaimed: 0,
                content_length,
                received: 0,
                send_window: self.peer_initial_window,
                body: None,
                send_done: false,
            },
        );
        app.request(b.stream, &self.head, b.end_stream);
        Ok(())
    }

    fn on_rst(&mut self, h: FrameHead, p: &[u8], app: &mut impl App) -> Result<(), ConnError> {
        if p.len() != 4 {
            return Err(ConnError(Code::FRAME_SIZE_ERROR, "RST_STREAM size"));
        }
        if h.stream == 0 || self.idle(h.stream) {
            return Err(ConnError(
                Code::PROTOCOL_ERROR,
                "RST_STREAM on stream 0 or idle",
            ));
        }
        if self.streams.remove(&h.stream).is_some() {
            self.sending.retain(|&id| id != h.stream);
            app.reset(h.stream);
        }
        Ok(())
    }

    fn on_settings(&mut self, h: FrameHead, p: &[u8]) -> Result<(), ConnError> {
        if h.stream != 0 {
            return Err(ConnError(Code::PROTOCOL_ERROR, "SETTINGS on a stream"));
        }
        if h.has(ACK) {
            if !p.is_empty() {
                return Err(ConnError(
                    Code::FRAME_SIZE_ERROR,
                    "SETTINGS ACK with payload",
                ));
            }
            if !self.settings_acked {
                // Our INITIAL_WINDOW_SIZE applies from now on: open streams get the difference.
                self.settings_acked = true;
                let delta = i64::from(self.cfg.stream_window) - i64::from(DEFAULT_WINDOW);
                for s in self.streams.values_mut() {
                    s.recv_window += delta;
                }
            }
            return Ok(());
        }
        if !p.chunks_exact(6).remainder().is_empty() {
            return Err(ConnError(Code::FRAME_SIZE_ERROR, "SETTINGS size"));
        }
        self.settings_seen = true;
        for setting in p.chunks_exact(6) {
            let id = u16::from_be_bytes([setting[0], setting[1]]);
            let value = frame::u32_at(&setting[2..]);
            match id {
                SETTINGS_HEADER_TABLE_SIZE => self.codec.limit_encoder_table(value as usize),
                SETTINGS_ENABLE_PUSH if value > 1 => {
                    return Err(ConnError(Code::PROTOCOL_ERROR, "ENABLE_PUSH not 0 or 1"))
                }
                SETTINGS_INITIAL_WINDOW_SIZE => {
                    if i64::from(value) > MAX_WINDOW {
                        return Err(ConnError(Code::FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE"));
                    }
                    let delta = i64::from(value) - self.peer_initial_window;
                    self.peer_initial_window = i64::from(value);
                    for s in self.streams.values_mut() {
                        s.send_window += delta;
                        if s.send_window > MAX_WINDOW {
                            return Err(ConnError(Code::FLOW_CONTROL_ERROR, "window overflow"));
                        }
                    }
                }
                SETTINGS_MAX_FRAME_SIZE => {
                    if !(16_384..=16_777_215).contains(&value) {
                        return Err(ConnError(Code::PROTOCOL_ERROR, "MAX_FRAME_SIZE"));
                    }
                    self.peer_max_frame = value as usize;
                }
                _ => {}
            }
        }
        frame::write_settings_ack(&mut self.out);
        Ok(())
    }

    fn on_window_update(
        &mut self,
        h: FrameHead,
        p: &[u8],
        app: &mut impl App,
    ) -> Result<(), ConnError> {
        if p.len() != 4 {
            return Err(ConnError(Code::FRAME_SIZE_ERROR, "WINDOW_UPDATE size"));
        }
        let inc = i64::from(frame::u32_at(p) & 0x7fff_ffff);
        if h.stream == 0 {
            if inc == 0 {
                return Err(ConnError(Code::PROTOCOL_ERROR, "WINDOW_UPDATE of 0"));
            }
            self.send_window += inc;
            if self.send_window > MAX_WINDOW {
                return Err(ConnError(
                    Code::FLOW_CONTROL_ERROR,
                    "connection window overflow",
                ));
            }
            return Ok(());
        }
        if self.idle(h.stream) {
            return Err(ConnError(
                Code::PROTOCOL_ERROR,
                "WINDOW_UPDATE on an idle stream",
            ));
        }
        // A stream closed here may still get the client's updates: ignored.
        let Some(s) = self.streams.get_mut(&h.stream) else {
            return Ok(());
        };
        s.send_window += inc;
        if inc == 0 {
            self.reset_stream(h.stream, Code::PROTOCOL_ERROR, app);
        } else if s.send_window > MAX_WINDOW {
            self.reset_stream(h.stream, Code::FLOW_CONTROL_ERROR, app);
        }
        Ok(())
    }

    fn reset_stream(&mut self, stream: u32, code: Code, app: &mut impl App) {
        frame::write_rst(&mut self.out, stream, code);
        if self.streams.remove(&stream).is_some() {
            self.sending.retain(|&id| id != stream);
            app.reset(stream);
        }
    }
}
