//! One stream of an HTTP/2 upstream connection bridged to whoever sends the request through a
//! pipe (an exchange's session, a health probe, a mirrored request): the HTTP/1.1 request the
//! session writes goes out as HEADERS, DATA and trailers; the response comes back into the
//! pipe as an HTTP/1.1 head and a body (chunked when its length is unknown, trailers as the
//! trailer section), so requests and responses stream both ways at once (bidirectional gRPC).
//!
//! A stream the upstream did not process (refused, or beyond the last id of its GOAWAY) marks
//! the pipe `refused`: the session may send any request again on another connection.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use h2::{Reason, SendStream};
use http::uri::Scheme;
use http::Method;
use tracing::debug;

use super::body::{Framing, RecvBody, SendBody, SendError};
use super::up_translate::{self, CONTINUE, UNTRANSLATABLE};
use crate::sock::pipe::{Connect, SharedPipe};

/// What a stream needs of its connection for one pump.
pub struct UpCtx<'a> {
    pub send_request: &'a mut SendRequest<Bytes>,
    pub scheme: &'a Scheme,
    /// The target's address, for a request without `Host`.
    pub authority: &'a str,
    /// Set when the connection turned out to be going away (a GOAWAY was received, or it
    /// refuses new streams): no new stream goes to it.
    pub going_away: &'a mut bool,
}

/// The request went out: its body, and the response.
struct Sent {
    send: SendStream<Bytes>,
    request: SendBody,
    /// Until the response head arrived.
    response: Option<ResponseFuture>,
    body: Option<RecvBody>,
    head_request: bool,
}

pub struct UpStream {
    pub pipe: SharedPipe,
    sent: Option<Sent>,
    finished: bool,
}

impl UpStream {
    pub fn new(pipe: SharedPipe) -> Self {
        UpStream {
            pipe,
            sent: None,
            finished: false,
        }
    }

    pub fn finished(&self) -> bool {
        self.finished
    }

    /// The connection is established: the session may write.
    pub fn connected(&self) {
        let mut p = self.pipe.borrow_mut();
        p.connect = Connect::Ready;
        p.wake_session();
    }

    /// The connection could not be established: the session fails over (nothing was sent).
    pub fn connect_failed(&mut self, kind: std::io::ErrorKind, why: &str) {
        self.pipe.borrow_mut().connect = Connect::Failed(kind, why.to_owned());
        self.fail(true);
    }

    /// The connection ends with the stream open: reset it; the session sees a broken pipe (a
    /// request that never went out may go again elsewhere).
    pub fn cut(&mut self, reason: Reason) {
        if self.finished {
            return;
        }
        let refused = match self.sent.as_mut() {
            Some(s) => {
                s.send.send_reset(reason);
                false
            }
            None => true,
        };
        self.fail(refused);
    }

    fn fail(&mut self, refused: bool) {
        self.finished = true;
        let mut p = self.pipe.borrow_mut();
        p.broken = true;
        p.refused |= refused;
        p.to_session_eof = true;
        p.wake_session();
    }

    /// Move whatever can move. Registers the connection's waker wherever it waits.
    pub fn pump(&mut self, cx: &mut Context<'_>, up: &mut UpCtx<'_>) {
        if self.finished {
            return;
        }
        if self.pipe.borrow().session_gone && !self.complete() {
            // The exchange ended before the stream did (cut short, or the upstream answered
            // before the request body was all sent).
            if let Some(s) = self.sent.as_mut() {
                s.send.send_reset(Reason::CANCEL);
            }
            self.finished = true;
            return;
        }
        if self.sent.is_none() && !self.send_head(cx, up) {
            return;
        }
        self.pump_request(cx);
        if !self.finished {
            self.pump_response(cx);
        }
        if self.complete() {
            self.finished = true;
        }
    }

    fn complete(&self) -> bool {
        self.sent
            .as_ref()
            .is_some_and(|s| s.request.done() && s.body.as_ref().is_some_and(RecvBody::done))
    }

    /// Read the request head from the pipe and send it. `true`: sent.
    fn send_head(&mut self, cx: &mut Context<'_>, up: &mut UpCtx<'_>) -> bool {
        let parsed = {
            let p = self.pipe.borrow();
            match up_translate::parse_request_head(
                p.from_session.as_slice(),
                up.scheme,
                up.authority,
            ) {
                Ok(Some(r)) => r,
                Ok(None) => {
                    let gone = p.from_session_done;
                    drop(p);
                    if gone {
                        // The session gave up before writing a whole head.
                        self.finished = true;
                    }
                    return false;
                }
                Err(why) => {
                    drop(p);
                    debug!(why, "request cannot be sent to the HTTP/2 upstream");
                    let mut p = self.pipe.borrow_mut();
                    p.to_session.extend(UNTRANSLATABLE);
                    p.to_session_eof = true;
                    p.wake_session();
                    drop(p);
                    self.finished = true;
                    return false;
                }
            }
        };
        match up.send_request.poll_ready(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => {
                debug!(error = %e, "HTTP/2 upstream connection takes no new stream");
                *up.going_away = true;
                self.fail(true);
                return false;
            }
            Poll::Pending => return false,
        }
        let head_request = parsed.request.method() == Method::HEAD;
        let eos = parsed.body == Framing::None;
        let (response, send) = match up.send_request.send_request(parsed.request, eos) {
            Ok(r) => r,
            Err(e) => {
                debug!(error = %e, "HTTP/2 upstream connection refused a new stream");
                *up.going_away = true;
                self.fail(true);
                return false;
            }
        };
        let mut p = self.pipe.borrow_mut();
        p.from_session.consume(parsed.head_len);
        if parsed.expect_continue {
            p.to_session.extend(CONTINUE);
        }
        p.wake_session();
        drop(p);
        self.sent = Some(Sent {
            send,
            request: SendBody::new(parsed.body),
            response: Some(response),
            body: None,
            head_request,
        });
        true
    }

    fn pump_request(&mut self, cx: &mut Context<'_>) {
        let Some(s) = self.sent.as_mut() else {
            return;
        };
        loop {
            match s.request.pump(cx, &self.pipe, &mut s.send) {
                Ok(true) if !s.request.done() => {}
                Ok(_) => return,
                // The stream failed: the response side reports how.
                Err(SendError::Stream) => return,
                Err(e) => {
                    debug!(error = %e, "unusable request body for an HTTP/2 upstream");
                    s.send.send_reset(Reason::CANCEL);
                    self.fail(false);
                    return;
                }
            }
        }
    }

    fn pump_response(&mut self, cx: &mut Context<'_>) {
        let Some(s) = self.sent.as_mut() else {
            return;
        };
        if let Some(fut) = s.response.as_mut() {
            match Pin::new(fut).poll(cx) {
                Poll::Ready(Ok(resp)) => {
                    s.response = None;
                    let (parts, recv) = resp.into_parts();
                    let eos = recv.is_end_stream();
                    let head = http::Response::from_parts(parts, ());
                    let mut p = self.pipe.borrow_mut();
                    let framing = up_translate::write_response_head(
                        &head,
                        eos,
                        s.head_request,
                        &mut p.to_session,
                    );
                    p.wake_session();
                    drop(p);
                    s.body = Some(RecvBody::new(
                        recv,
                        framing == Framing::Chunked,
                        framing == Framing::None,
                    ));
                }
                Poll::Ready(Err(e)) => {
                    // Not processed: beyond the last stream id of a GOAWAY, or refused.
                    let refused = (e.is_go_away() && e.is_remote())
                        || e.reason() == Some(Reason::REFUSED_STREAM);
                    debug!(error = %e, refused, "HTTP/2 upstream stream failed before its response");
                    self.fail(refused);
                    return;
                }
                Poll::Pending => return,
            }
        }
        let Some(body) = s.body.as_mut() else {
            return;
        };
        if let Err(e) = body.pump(cx, &self.pipe) {
            debug!(error = %e, "HTTP/2 upstream response body failed");
            self.fail(false);
            return;
        }
        if body.done() {
            let mut p = self.pipe.borrow_mut();
            if !p.to_session_eof {
                p.to_session_eof = true;
                p.wake_session();
            }
        }
    }
}
