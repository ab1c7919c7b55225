//! The client side: the `h2` crate's client (hyper's, as reqwest and most Rust clients use it)
//! in lockstep with a server [`Peer`] in memory. Each batch opens `concurrency` streams, and
//! bytes go back and forth until every response arrived whole; every chunk the client wrote
//! can be recorded, to be fed again, byte for byte, to each server path being measured.
//!
//! The client announces browser-sized windows (6 MiB per stream, 15 MiB for the connection,
//! as Chrome does), so a batch's responses never wait for a WINDOW_UPDATE.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use h2::{RecvStream, SendStream};
use http::{Method, Request};

use crate::h2_path::{MemIo, MemWire, SharedWire};

const CLIENT_STREAM_WINDOW: u32 = 6 * 1024 * 1024;
const CLIENT_CONNECTION_WINDOW: u32 = 15 * 1024 * 1024;
/// Round trips a batch may take before the exchange is declared stuck.
const MAX_ROUND_TRIPS: usize = 64;

/// A server connection in memory.
pub trait Peer {
    /// Bytes from the client; processed at once.
    fn feed(&mut self, chunk: Bytes);
    /// Move what the server wrote since the last call into `into`.
    fn take_output(&mut self, into: &mut Vec<u8>);
}

/// What a case sends.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    pub requests: usize,
    pub concurrency: usize,
    /// 0: GET; otherwise a POST with a body of this many bytes.
    pub request_body: usize,
    /// DATA frames the request body is sent in (a gRPC client streaming small messages
    /// sends many).
    pub body_frames: usize,
    pub response_body: usize,
}

impl Workload {
    pub fn method(&self) -> &'static [u8] {
        if self.request_body == 0 {
            b"GET"
        } else {
            b"POST"
        }
    }
}

struct Exchange {
    response: Option<ResponseFuture>,
    body: Option<RecvStream>,
    got: usize,
    done: bool,
    _send: SendStream<Bytes>,
}

impl Exchange {
    fn poll(&mut self, cx: &mut Context<'_>, w: &Workload) -> Result<(), String> {
        if let Some(response) = self.response.as_mut() {
            match Pin::new(response).poll(cx) {
                Poll::Ready(Ok(r)) => {
                    let length = r
                        .headers()
                        .get(http::header::CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<usize>().ok());
                    if r.status() != 200 || length != Some(w.response_body) {
                        return Err(format!("response {} length {length:?}", r.status()));
                    }
                    self.response = None;
                    self.body = Some(r.into_body());
                }
                Poll::Ready(Err(e)) => return Err(format!("response: {e}")),
                Poll::Pending => return Ok(()),
            }
        }
        let Some(body) = self.body.as_mut() else {
            return Ok(());
        };
        loop {
            match body.poll_data(cx) {
                Poll::Ready(Some(Ok(d))) => {
                    self.got += d.len();
                    let _ = body.flow_control().release_capacity(d.len());
                }
                Poll::Ready(Some(Err(e))) => return Err(format!("response body: {e}")),
                Poll::Ready(None) => {
                    if self.got != w.response_body {
                        return Err(format!("response body of {} bytes", self.got));
                    }
                    self.done = true;
                    self.body = None;
                    return Ok(());
                }
                Poll::Pending => return Ok(()),
            }
        }
    }
}

/// Run `w` against `peer`; with `record`, keep every chunk the client wrote. Returns the
/// responses received whole and as expected.
pub fn exchange(
    w: &Workload,
    peer: &mut dyn Peer,
    mut record: Option<&mut Vec<Bytes>>,
) -> Result<usize, String> {
    let wire = MemWire::shared(false);
    let mut builder = h2::client::Builder::new();
    builder
        .initial_window_size(CLIENT_STREAM_WINDOW)
        .initial_connection_window_size(CLIENT_CONNECTION_WINDOW)
        .enable_push(false);
    let mut cx = Context::from_waker(Waker::noop());
    let mut handshake = Box::pin(builder.handshake::<MemIo, Bytes>(MemIo(Rc::clone(&wire))));
    let (mut send, mut conn) = match handshake.as_mut().poll(&mut cx) {
        Poll::Ready(Ok(pair)) => pair,
        Poll::Ready(Err(e)) => return Err(format!("client handshake: {e}")),
        Poll::Pending => return Err("client handshake pending".into()),
    };
    let request_body = Bytes::from(vec![b'q'; w.request_body]);
    let mut done = 0;
    let mut next = 0;
    while next < w.requests {
        let batch = w.concurrency.min(w.requests - next);
        let mut exchanges = Vec::with_capacity(batch);
        for _ in 0..batch {
            exchanges.push(open(w, &mut send, &mut conn, &mut cx, next, &request_body)?);
            next += 1;
        }
        let mut trips = 0;
        while !exchanges.iter().all(|e| e.done) {
            trips += 1;
            if trips > MAX_ROUND_TRIPS {
                return Err(format!("batch ending at request {next} stuck"));
            }
            round_trip(&wire, &mut conn, &mut cx, peer, record.as_deref_mut())?;
            for e in &mut exchanges {
                e.poll(&mut cx, w)?;
            }
        }
        done += exchanges.len();
    }
    // The last WINDOW_UPDATEs, so the server sees everything a real client would send.
    round_trip(&wire, &mut conn, &mut cx, peer, record)?;
    Ok(done)
}

fn open(
    w: &Workload,
    send: &mut SendRequest<Bytes>,
    conn: &mut h2::client::Connection<MemIo, Bytes>,
    cx: &mut Context<'_>,
    n: usize,
    body: &Bytes,
) -> Result<Exchange, String> {
    if send.poll_ready(cx).is_pending() {
        let _ = Pin::new(&mut *conn).poll(cx);
        if send.poll_ready(cx).is_pending() {
            return Err(format!("request {n}: no stream available"));
        }
    }
    let method = if w.request_body == 0 {
        Method::GET
    } else {
        Method::POST
    };
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://bench.example/items/{n}"))
        .header("user-agent", "h2-frame-cost/1")
        .header("accept", "*/*");
    if w.request_body > 0 {
        req = req
            .header("content-type", "application/octet-stream")
            .header("content-length", w.request_body);
    }
    let req = req.body(()).map_err(|e| e.to_string())?;
    let (response, mut stream) = send
        .send_request(req, w.request_body == 0)
        .map_err(|e| format!("request {n}: {e}"))?;
    if w.request_body > 0 {
        let frames = w.body_frames.max(1);
        let piece = body.len().div_ceil(frames);
        let mut left = body.clone();
        while !left.is_empty() {
            let part = left.split_to(piece.min(left.len()));
            stream
                .send_data(part, left.is_empty())
                .map_err(|e| format!("request {n} body: {e}"))?;
        }
    }
    Ok(Exchange {
        response: Some(response),
        body: None,
        got: 0,
        done: false,
        _send: stream,
    })
}

/// The client writes what it has, the server takes it and answers, the client reads.
fn round_trip(
    wire: &SharedWire,
    conn: &mut h2::client::Connection<MemIo, Bytes>,
    cx: &mut Context<'_>,
    peer: &mut dyn Peer,
    record: Option<&mut Vec<Bytes>>,
) -> Result<(), String> {
    poll_client(conn, cx)?;
    let chunk = {
        let mut wire = wire.borrow_mut();
        let mut chunk = Vec::new();
        wire.take_output(&mut chunk);
        Bytes::from(chunk)
    };
    if !chunk.is_empty() {
        if let Some(record) = record {
            record.push(chunk.clone());
        }
        peer.feed(chunk);
    }
    let mut answer = Vec::new();
    peer.take_output(&mut answer);
    if !answer.is_empty() {
        wire.borrow_mut().feed(Bytes::from(answer));
    }
    poll_client(conn, cx)
}

fn poll_client(
    conn: &mut h2::client::Connection<MemIo, Bytes>,
    cx: &mut Context<'_>,
) -> Result<(), String> {
    match Pin::new(conn).poll(cx) {
        Poll::Ready(Ok(())) => Err("the server closed the connection".into()),
        Poll::Ready(Err(e)) => Err(format!("client connection: {e}")),
        Poll::Pending => Ok(()),
    }
}
