//! The `h2` crate's server connection driven the way `worker/src/http2/conn.rs` drives it:
//! the same builder settings, the product's own `Driver` (a flag waker, no runtime) and
//! `FrameGuard` (every byte read passes it, every byte written is shown to it), runs of at
//! most `MAX_PASSES` passes that poll the connection, accept streams and pump each stream
//! like `stream.rs`/`body.rs` do (request DATA taken and its window released; the response
//! head, then the body in 16 KiB pieces within `reserve_capacity`/`poll_capacity`).
//!
//! The socket is memory ([`MemWire`]): reads serve the bytes fed, at most `READ_CHUNK` at a
//! time like `io.rs`; writes go to a 64 KiB buffer (`BUF_CAP`) that is moved to `out` when
//! full or flushed, as `io.rs` hands its buffer to the socket.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use h2::server::{Connection, Handshake, SendResponse};
use h2::{RecvStream, SendStream};
use http::{Request, Response};
use slab::Slab;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::app::Answer;
use crate::client::Peer;
use crate::driver::{Driver, MAX_PASSES};
use crate::frame::PREFACE;
use crate::guard::FrameGuard;
use crate::server::Config;

/// `io.rs`: plaintext read per fill.
const READ_CHUNK: usize = 32 * 1024;
/// `sock::BUF_CAP`: the socket's write buffer.
const BUF_CAP: usize = 64 * 1024;
/// `body.rs`: decoded payload held for the peer's window.
const SEND_CHUNK: usize = 16 * 1024;
/// `conn.rs` values not in [`Config`].
pub const SEND_BUFFER: usize = 64 * 1024;
const MAX_PENDING_ACCEPT_RESETS: usize = 20;
const MAX_LOCAL_ERROR_RESETS: usize = 256;

/// How the h2 server is set up beyond [`Config`]: `conn.rs` runs it with the guard, a 64 KiB
/// send buffer and h2's default data-frame budget; the variants measure what each costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2Options {
    pub guard: bool,
    pub send_buffer: usize,
    pub data_frame_budget: Option<usize>,
}

impl H2Options {
    pub const PRODUCT: H2Options = H2Options {
        guard: true,
        send_buffer: SEND_BUFFER,
        data_frame_budget: None,
    };
}

/// A socket in memory, shared between the driver and h2's [`MemIo`].
pub struct MemWire {
    input: Bytes,
    pos: usize,
    wbuf: Vec<u8>,
    pub out: Vec<u8>,
    guard: Option<FrameGuard>,
    now: Instant,
}

pub type SharedWire = Rc<RefCell<MemWire>>;

impl MemWire {
    pub fn shared(guard: bool) -> SharedWire {
        let now = Instant::now();
        Rc::new(RefCell::new(MemWire {
            input: Bytes::new(),
            pos: 0,
            wbuf: Vec::with_capacity(BUF_CAP),
            out: Vec::new(),
            guard: guard.then(|| FrameGuard::new(PREFACE.len(), now)),
            now,
        }))
    }

    /// Bytes the peer sent: read before anything fed later.
    pub fn feed(&mut self, chunk: Bytes) {
        if self.pos < self.input.len() {
            let mut joined = self.input[self.pos..].to_vec();
            joined.extend_from_slice(&chunk);
            self.input = Bytes::from(joined);
        } else {
            self.input = chunk;
        }
        self.pos = 0;
    }

    pub fn input_left(&self) -> usize {
        self.input.len() - self.pos
    }

    fn flush(&mut self) {
        self.out.extend_from_slice(&self.wbuf);
        self.wbuf.clear();
    }

    /// Move everything written so far into `into` (the socket sends it).
    pub fn take_output(&mut self, into: &mut Vec<u8>) {
        into.extend_from_slice(&self.out);
        self.out.clear();
        into.extend_from_slice(&self.wbuf);
        self.wbuf.clear();
    }
}

/// h2's handle on a [`MemWire`].
pub struct MemIo(pub SharedWire);

impl AsyncRead for MemIo {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut w = self.0.borrow_mut();
        let w = &mut *w;
        if w.guard.as_ref().and_then(FrameGuard::verdict).is_some() {
            return Poll::Pending;
        }
        let left = w.input.len() - w.pos;
        if left == 0 {
            // The socket's next event brings more.
            return Poll::Pending;
        }
        let n = buf.remaining().min(left).min(READ_CHUNK);
        let chunk = &w.input[w.pos..w.pos + n];
        let now = w.now;
        let n = match w.guard.as_mut() {
            Some(g) => g.inbound(chunk, now),
            None => n,
        };
        if n == 0 {
            return Poll::Pending;
        }
        buf.put_slice(&w.input[w.pos..w.pos + n]);
        w.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for MemIo {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut w = self.0.borrow_mut();
        if w.wbuf.len() >= BUF_CAP {
            w.flush();
        }
        let n = data.len().min(BUF_CAP - w.wbuf.len());
        w.wbuf.extend_from_slice(&data[..n]);
        if let Some(g) = w.guard.as_mut() {
            g.outbound(&data[..n]);
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.borrow_mut().flush();
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}

enum State {
    Handshaking(Pin<Box<Handshake<MemIo, Bytes>>>),
    Open(Box<Connection<MemIo, Bytes>>),
    Closed,
}

/// One stream, as `StreamBridge` moves it.
struct Stream {
    id: u32,
    recv: RecvStream,
    request_done: bool,
    respond: SendResponse<Bytes>,
    send: Option<SendStream<Bytes>>,
    /// The body still to send, and the piece waiting for capacity.
    body: Bytes,
    pending: Bytes,
    finished: bool,
}

pub struct H2Server {
    state: State,
    pub wire: SharedWire,
    driver: Driver,
    streams: Slab<Stream>,
    pub answer: Answer,
    pub error: Option<String>,
}

impl H2Server {
    pub fn new(cfg: Config, opts: H2Options, answer: Answer) -> Self {
        let wire = MemWire::shared(opts.guard);
        let mut builder = h2::server::Builder::new();
        builder
            .max_concurrent_streams(cfg.max_concurrent_streams)
            .initial_window_size(cfg.stream_window)
            .initial_connection_window_size(cfg.connection_window)
            .max_header_list_size(cfg.max_header_list)
            .max_send_buffer_size(opts.send_buffer)
            .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
            .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS));
        if let Some(budget) = opts.data_frame_budget {
            builder.data_frame_budget(budget);
        }
        let handshake = Box::pin(builder.handshake::<MemIo, Bytes>(MemIo(Rc::clone(&wire))));
        H2Server {
            state: State::Handshaking(handshake),
            wire,
            driver: Driver::default(),
            streams: Slab::new(),
            answer,
            error: None,
        }
    }

    /// Bytes from the client: run until h2 read them all and has nothing left to do (the
    /// event loop's runs on the readable event and the `yield_turn`s after it).
    pub fn feed(&mut self, chunk: Bytes) {
        self.wire.borrow_mut().feed(chunk);
        loop {
            let before = self.wire.borrow().input_left();
            let again = self.run();
            if matches!(self.state, State::Closed) {
                return;
            }
            let left = self.wire.borrow().input_left();
            // Done once h2 read everything, or stopped reading (the guard's verdict).
            if !again && (left == 0 || left == before) {
                return;
            }
        }
    }

    /// `conn.rs`'s `run`. `true`: passes left over (the event loop yields and runs again).
    fn run(&mut self) -> bool {
        let waker = self.driver.waker();
        let mut cx = Context::from_waker(&waker);
        for _ in 0..MAX_PASSES {
            self.driver.start_pass();
            if !self.poll_connection(&mut cx) {
                return false;
            }
            for (_, s) in self.streams.iter_mut() {
                s.pump(&mut cx, &mut self.answer);
            }
            self.streams.retain(|_, s| !s.finished);
            if !self.driver.again() {
                return false;
            }
        }
        true
    }

    fn poll_connection(&mut self, cx: &mut Context<'_>) -> bool {
        if let State::Handshaking(hs) = &mut self.state {
            match hs.as_mut().poll(cx) {
                Poll::Ready(Ok(conn)) => self.state = State::Open(Box::new(conn)),
                Poll::Ready(Err(e)) => {
                    self.error = Some(format!("handshake: {e}"));
                    self.state = State::Closed;
                    return false;
                }
                Poll::Pending => return true,
            }
        }
        let State::Open(conn) = &mut self.state else {
            return false;
        };
        let mut accepted = Vec::new();
        let open = loop {
            match conn.poll_accept(cx) {
                Poll::Ready(Some(Ok(stream))) => accepted.push(stream),
                Poll::Ready(Some(Err(e))) => {
                    self.error = Some(format!("connection: {e}"));
                    break false;
                }
                Poll::Ready(None) => break false,
                Poll::Pending => break true,
            }
        };
        for (req, respond) in accepted {
            self.accept(req, respond);
        }
        if !open {
            self.state = State::Closed;
        }
        open
    }

    fn accept(&mut self, req: Request<RecvStream>, respond: SendResponse<Bytes>) {
        let id = u32::from(respond.stream_id());
        let (parts, recv) = req.into_parts();
        let request_done = recv.is_end_stream();
        let path = parts.uri.path_and_query().map_or("", |p| p.as_str());
        let content_length = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        self.answer.request(
            id,
            parts.method.as_str().as_bytes(),
            path.as_bytes(),
            content_length,
        );
        if request_done {
            self.answer.body(id, 0, true);
        }
        self.streams.insert(Stream {
            id,
            recv,
            request_done,
            respond,
            send: None,
            body: Bytes::new(),
            pending: Bytes::new(),
            finished: false,
        });
    }
}

impl Peer for H2Server {
    fn feed(&mut self, chunk: Bytes) {
        H2Server::feed(self, chunk);
    }

    fn take_output(&mut self, into: &mut Vec<u8>) {
        self.wire.borrow_mut().take_output(into);
    }
}

impl Stream {
    fn pump(&mut self, cx: &mut Context<'_>, answer: &mut Answer) {
        if self.finished {
            return;
        }
        let reset = match self.send.as_mut() {
            Some(s) => s.poll_reset(cx),
            None => self.respond.poll_reset(cx),
        };
        if reset.is_ready() {
            self.finished = true;
            return;
        }
        while !self.request_done {
            match self.recv.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    answer.body(self.id, data.len(), false);
                }
                Poll::Ready(Some(Err(_))) => {
                    self.finished = true;
                    return;
                }
                Poll::Ready(None) => {
                    self.request_done = true;
                    answer.body(self.id, 0, true);
                }
                Poll::Pending => return,
            }
        }
        if self.send.is_none() {
            let body = answer.body_bytes();
            let mut head = Response::builder().status(200);
            for (name, value) in answer.fields() {
                head = head.header(name, value);
            }
            let Ok(head) = head.body(()) else {
                self.finished = true;
                return;
            };
            match self.respond.send_response(head, body.is_empty()) {
                Ok(send) => self.send = Some(send),
                Err(_) => {
                    self.finished = true;
                    return;
                }
            }
            if body.is_empty() {
                self.finished = true;
                return;
            }
            self.body = body;
        }
        self.pump_body(cx);
    }

    /// `body.rs`'s `SendBody::pump`, in a loop as `stream.rs` runs it.
    fn pump_body(&mut self, cx: &mut Context<'_>) {
        let Some(send) = self.send.as_mut() else {
            return;
        };
        loop {
            if self.pending.is_empty() {
                let n = self.body.len().min(SEND_CHUNK);
                self.pending = self.body.split_to(n);
            }
            send.reserve_capacity(self.pending.len());
            let mut capacity = send.capacity();
            if capacity == 0 {
                match send.poll_capacity(cx) {
                    Poll::Ready(Some(Ok(n))) => capacity = n,
                    Poll::Ready(Some(Err(_)) | None) => {
                        self.finished = true;
                        return;
                    }
                    Poll::Pending => return,
                }
            }
            if capacity == 0 {
                return;
            }
            let n = capacity.min(self.pending.len());
            let chunk = self.pending.split_to(n);
            let last = self.pending.is_empty() && self.body.is_empty();
            if send.send_data(chunk, last).is_err() || last {
                self.finished = true;
                return;
            }
        }
    }
}
