//! One HTTP/2 stream bridged to the HTTP/1 session that serves it: the request body goes
//! into the pipe (as it is, or chunked, with trailers), the session's response comes out of
//! it as HEADERS, DATA within the client's flow-control window, and trailers.
//!
//! Backpressure both ways: DATA is taken from h2 (and its window given back to the client)
//! only while the pipe has room; response bytes are taken from the pipe only as fast as the
//! client's window lets them out.

use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::{HeaderMap, Response, StatusCode};
use tracing::debug;

use super::chunked::ChunkedDecoder;
use super::translate::{self, RequestBody, ResponseBody};
use crate::sock::pipe::{SharedPipe, PIPE_CAP};

/// Decoded response payload held for the client's window: a DATA frame's worth or so.
const SEND_CHUNK: usize = 16 * 1024;

enum Response_ {
    /// Waiting for the session's response head.
    Head,
    Body {
        framing: ResponseBody,
        /// `Length` bodies: bytes still to come.
        left: u64,
        chunked: ChunkedDecoder,
    },
    Done,
}

/// A stream's bridge. `finished` once nothing more goes either way.
pub struct StreamBridge {
    pub pipe: SharedPipe,
    recv: RecvStream,
    req_body: RequestBody,
    req_done: bool,
    respond: SendResponse<Bytes>,
    send: Option<SendStream<Bytes>>,
    head_request: bool,
    response: Response_,
    /// Payload decoded from the pipe, waiting for send capacity.
    pending: BytesMut,
    trailers: Option<HeaderMap>,
    finished: bool,
}

impl StreamBridge {
    pub fn new(
        pipe: SharedPipe,
        recv: RecvStream,
        req_body: RequestBody,
        respond: SendResponse<Bytes>,
        head_request: bool,
    ) -> Self {
        StreamBridge {
            pipe,
            recv,
            req_done: req_body == RequestBody::None,
            req_body,
            respond,
            send: None,
            head_request,
            response: Response_::Head,
            pending: BytesMut::new(),
            trailers: None,
            finished: false,
        }
    }

    /// Answer a stream with a status of the proxy's own (a request it cannot translate) and
    /// no body.
    pub fn refuse(mut respond: SendResponse<Bytes>, status: StatusCode) {
        let mut r = Response::new(());
        *r.status_mut() = status;
        let _ = respond.send_response(r, true);
    }

    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Cut the stream (the drain deadline, or the connection is going away).
    pub fn cut(&mut self, reason: Reason) {
        if self.finished {
            return;
        }
        match self.send.as_mut() {
            Some(s) => s.send_reset(reason),
            None => self.respond.send_reset(reason),
        }
        self.end(true);
    }

    /// Move whatever can move. Registers the connection's waker wherever it waits.
    pub fn pump(&mut self, cx: &mut Context<'_>) {
        if self.finished {
            return;
        }
        let reset = match self.send.as_mut() {
            Some(s) => s.poll_reset(cx),
            None => self.respond.poll_reset(cx),
        };
        if let Poll::Ready(r) = reset {
            debug!(reason = ?r.ok(), "HTTP/2 stream reset by the client");
            self.end(true);
            return;
        }
        self.pump_request(cx);
        if !self.finished {
            self.pump_response(cx);
        }
    }

    /// The stream is over: the session sees the end of its input (or a broken pipe).
    fn end(&mut self, broken: bool) {
        self.finished = true;
        let mut p = self.pipe.borrow_mut();
        p.to_session_eof = true;
        p.broken |= broken;
        p.wake_session();
    }

    fn pump_request(&mut self, cx: &mut Context<'_>) {
        while !self.req_done && self.pipe.borrow().to_session.len() < PIPE_CAP {
            match self.recv.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => {
                    // The window goes back as the bytes go into the bounded pipe.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    if data.is_empty() {
                        continue;
                    }
                    let mut p = self.pipe.borrow_mut();
                    if self.req_body == RequestBody::Chunked {
                        p.to_session
                            .extend(format!("{:x}\r\n", data.len()).as_bytes());
                        p.to_session.extend(&data);
                        p.to_session.extend(b"\r\n");
                    } else {
                        p.to_session.extend(&data);
                    }
                    p.wake_session();
                }
                Poll::Ready(Some(Err(e))) => {
                    debug!(error = %e, "HTTP/2 request body failed");
                    self.end(true);
                    return;
                }
                Poll::Ready(None) => {
                    if self.req_body == RequestBody::Chunked {
                        let trailers = match self.recv.poll_trailers(cx) {
                            Poll::Ready(Ok(t)) => t,
                            Poll::Ready(Err(e)) => {
                                debug!(error = %e, "HTTP/2 request trailers failed");
                                self.end(true);
                                return;
                            }
                            Poll::Pending => return,
                        };
                        let mut p = self.pipe.borrow_mut();
                        translate::write_last_chunk(trailers.as_ref(), &mut p.to_session);
                        p.wake_session();
                    }
                    self.req_done = true;
                }
                Poll::Pending => return,
            }
        }
    }

    fn pump_response(&mut self, cx: &mut Context<'_>) {
        loop {
            match &mut self.response {
                Response_::Head => {
                    if !self.take_head() {
                        return;
                    }
                }
                Response_::Body { .. } => {
                    if !self.send_body(cx) {
                        return;
                    }
                }
                Response_::Done => {
                    self.end(false);
                    return;
                }
            }
        }
    }

    /// Parse and send the response head. `true`: progress.
    fn take_head(&mut self) -> bool {
        let parsed = {
            let p = self.pipe.borrow();
            match translate::parse_response_head(p.from_session.as_slice(), self.head_request) {
                Ok(Some(parsed)) => parsed,
                Ok(None) if !p.from_session_done => return false,
                Ok(None) => {
                    drop(p);
                    // The session ended without a response (it cut the exchange short).
                    self.cut(Reason::INTERNAL_ERROR);
                    return false;
                }
                Err(e) => {
                    drop(p);
                    debug!(error = e, "unusable response head for an HTTP/2 stream");
                    self.cut(Reason::INTERNAL_ERROR);
                    return false;
                }
            }
        };
        {
            let mut p = self.pipe.borrow_mut();
            p.from_session.consume(parsed.head_len);
            p.wake_session();
        }
        let status = parsed.response.status();
        if status.is_informational() {
            // 100 Continue and friends: HTTP/2 clients do not wait for them here.
            return true;
        }
        let body = parsed.body;
        match self
            .respond
            .send_response(parsed.response, body == ResponseBody::None)
        {
            Ok(send) => self.send = Some(send),
            Err(e) => {
                debug!(error = %e, "cannot send an HTTP/2 response head");
                self.end(true);
                return false;
            }
        }
        self.response = match body {
            ResponseBody::None => Response_::Done,
            framing => Response_::Body {
                framing,
                left: match framing {
                    ResponseBody::Length(n) => n,
                    _ => 0,
                },
                chunked: ChunkedDecoder::default(),
            },
        };
        true
    }

    /// Decode and send body bytes. `true`: progress (run again).
    fn send_body(&mut self, cx: &mut Context<'_>) -> bool {
        let Response_::Body {
            framing,
            left,
            chunked,
        } = &mut self.response
        else {
            return false;
        };
        // Refill what waits for the window from the pipe.
        let (ended, truncated) = {
            let mut p = self.pipe.borrow_mut();
            if self.pending.len() < SEND_CHUNK && !p.from_session.is_empty() {
                let input = p.from_session.as_slice();
                let room = SEND_CHUNK.saturating_sub(self.pending.len());
                let used = match framing {
                    ResponseBody::Length(_) => {
                        let n = input
                            .len()
                            .min(room)
                            .min(usize::try_from(*left).unwrap_or(usize::MAX));
                        self.pending.extend_from_slice(&input[..n]);
                        *left -= n as u64;
                        Ok(n)
                    }
                    ResponseBody::Chunked => chunked.decode(input, &mut self.pending, SEND_CHUNK),
                    ResponseBody::UntilClose | ResponseBody::None => {
                        let n = input.len().min(room);
                        self.pending.extend_from_slice(&input[..n]);
                        Ok(n)
                    }
                };
                match used {
                    Ok(n) => {
                        p.from_session.consume(n);
                        if n > 0 {
                            p.wake_session();
                        }
                    }
                    Err(e) => {
                        drop(p);
                        debug!(
                            error = e,
                            "unusable chunked response body for an HTTP/2 stream"
                        );
                        self.cut(Reason::INTERNAL_ERROR);
                        return false;
                    }
                }
            }
            let drained = p.from_session_done && p.from_session.is_empty();
            let ended = match framing {
                ResponseBody::Length(_) => *left == 0,
                ResponseBody::Chunked => chunked.done(),
                ResponseBody::UntilClose | ResponseBody::None => drained,
            };
            (ended, drained && !ended)
        };
        if ended && *framing == ResponseBody::Chunked && self.trailers.is_none() {
            match chunked.trailers() {
                Ok(t) => self.trailers = t,
                Err(e) => {
                    debug!(error = e, "unusable response trailers for an HTTP/2 stream");
                    self.cut(Reason::INTERNAL_ERROR);
                    return false;
                }
            }
        }
        let Some(send) = self.send.as_mut() else {
            return false;
        };
        if !self.pending.is_empty() {
            send.reserve_capacity(self.pending.len());
            let mut capacity = send.capacity();
            if capacity == 0 {
                match send.poll_capacity(cx) {
                    Poll::Ready(Some(Ok(n))) => capacity = n,
                    Poll::Ready(Some(Err(_))) | Poll::Ready(None) => {
                        self.end(true);
                        return false;
                    }
                    Poll::Pending => return false,
                }
            }
            if capacity == 0 {
                return false;
            }
            let n = capacity.min(self.pending.len());
            let chunk = self.pending.split_to(n).freeze();
            let last = ended && self.pending.is_empty() && self.trailers.is_none();
            if send.send_data(chunk, last).is_err() {
                self.end(true);
                return false;
            }
            if last {
                self.response = Response_::Done;
            }
            return true;
        }
        if ended {
            let sent = match self.trailers.take() {
                Some(t) => send.send_trailers(t),
                None => send.send_data(Bytes::new(), true),
            };
            if sent.is_err() {
                self.end(true);
                return false;
            }
            self.response = Response_::Done;
            return true;
        }
        if truncated {
            // The session ended in the middle of the body: the client must not take a
            // truncated response for a whole one.
            self.cut(Reason::INTERNAL_ERROR);
        }
        false
    }
}
