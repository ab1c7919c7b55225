//! One client HTTP/2 stream bridged to the HTTP/1 session that serves it: the request body
//! goes into the pipe (as it is, or chunked, with trailers), the session's response comes out
//! of it as HEADERS, DATA within the client's flow-control window, and trailers (the bodies'
//! moves are in `body`).

use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::{Response, StatusCode};
use tracing::debug;

use super::body::{Framing, RecvBody, SendBody, SendError};
use super::translate::{self, RequestBody};
use crate::sock::pipe::SharedPipe;

enum Response_ {
    /// Waiting for the session's response head.
    Head,
    Body(SendBody),
    Done,
}

/// A stream's bridge. `finished` once nothing more goes either way.
pub struct StreamBridge {
    pub pipe: SharedPipe,
    request: RecvBody,
    respond: SendResponse<Bytes>,
    send: Option<SendStream<Bytes>>,
    head_request: bool,
    response: Response_,
    finished: bool,
    /// When the stream was taken from h2 (rapid-reset accounting).
    opened: Instant,
    /// The client reset the stream.
    reset_by_client: bool,
    /// DATA went out since the connection last asked (slow-read accounting).
    progressed: bool,
}

impl StreamBridge {
    pub fn new(
        pipe: SharedPipe,
        recv: RecvStream,
        req_body: RequestBody,
        respond: SendResponse<Bytes>,
        head_request: bool,
        opened: Instant,
    ) -> Self {
        let request = RecvBody::new(
            recv,
            req_body == RequestBody::Chunked,
            req_body == RequestBody::None,
        );
        StreamBridge {
            pipe,
            request,
            respond,
            send: None,
            head_request,
            response: Response_::Head,
            finished: false,
            opened,
            reset_by_client: false,
            progressed: false,
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

    pub fn opened(&self) -> Instant {
        self.opened
    }

    pub fn reset_by_client(&self) -> bool {
        self.reset_by_client
    }

    /// Whether DATA went out since the last call.
    pub fn take_progress(&mut self) -> bool {
        std::mem::take(&mut self.progressed)
    }

    /// Response payload is ready but the client's window (or h2's send buffer, full while
    /// the socket takes nothing) has no room for it.
    pub fn waiting_for_window(&self) -> bool {
        !self.finished && matches!(&self.response, Response_::Body(b) if b.has_pending())
    }

    /// The connection is gone: the session sees a broken pipe.
    pub fn abandon(&mut self) {
        if !self.finished {
            self.end(true);
        }
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
            self.reset_by_client = true;
            self.end(true);
            return;
        }
        if let Err(e) = self.request.pump(cx, &self.pipe) {
            debug!(error = %e, "HTTP/2 request body failed");
            self.end(true);
            return;
        }
        self.pump_response(cx);
    }

    /// The stream is over: the session sees the end of its input (or a broken pipe).
    fn end(&mut self, broken: bool) {
        self.finished = true;
        let mut p = self.pipe.borrow_mut();
        p.to_session_eof = true;
        p.broken |= broken;
        p.wake_session();
    }

    fn pump_response(&mut self, cx: &mut Context<'_>) {
        loop {
            match &mut self.response {
                Response_::Head => {
                    if !self.take_head() {
                        return;
                    }
                }
                Response_::Body(body) => {
                    let Some(send) = self.send.as_mut() else {
                        return;
                    };
                    match body.pump(cx, &self.pipe, send) {
                        Ok(sent) => {
                            self.progressed |= sent;
                            if body.done() {
                                self.response = Response_::Done;
                            } else if !sent {
                                return;
                            }
                        }
                        Err(SendError::Stream) => {
                            self.end(true);
                            return;
                        }
                        Err(e) => {
                            // A malformed or truncated body: the client must not take it
                            // for a whole response.
                            debug!(error = %e, "unusable response body for an HTTP/2 stream");
                            self.cut(Reason::INTERNAL_ERROR);
                            return;
                        }
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
            .send_response(parsed.response, body == Framing::None)
        {
            Ok(send) => self.send = Some(send),
            Err(e) => {
                debug!(error = %e, "cannot send an HTTP/2 response head");
                self.end(true);
                return false;
            }
        }
        self.response = match body {
            Framing::None => Response_::Done,
            framing => Response_::Body(SendBody::new(framing)),
        };
        true
    }
}
