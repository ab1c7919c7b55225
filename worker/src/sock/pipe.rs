//! An in-memory connection between an HTTP/1 session and one stream of an HTTP/2 connection.
//!
//! Each stream of a client's HTTP/2 connection is served by an ordinary HTTP/1 session
//! (routing, limits, retries, upstream pools, access log: everything HTTP/1 has), whose client
//! is one end of a pipe. Symmetrically, an exchange sent to an HTTP/2 upstream has one end of
//! a pipe as its upstream connection, the other end being a stream of a connection shared by
//! many exchanges (a health probe or a mirrored request may hold that end too). Either way the
//! session speaks HTTP/1.1 into the pipe and the HTTP/2 side translates (see `http2`).
//!
//! Bounded both ways ([`PIPE_CAP`]): a full pipe is backpressure exactly like a full socket.
//! Neither side gets a kernel event when the other moves bytes, so each side wakes the other
//! through [`crate::wakeups`].

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::rc::Rc;

use super::{Buf, ReadOutcome};
use crate::wakeups::{self, Wake};

/// Bytes one direction of a pipe holds. The HTTP/2 side stops reading DATA for the stream
/// (and so stops granting its peer flow-control window) while the session has not taken
/// them; the session stops reading its other side while the HTTP/2 side has not sent them.
pub const PIPE_CAP: usize = 64 * 1024;

/// Where the HTTP/2 connection under an upstream pipe stands. A client pipe is always
/// [`Connect::Ready`].
#[derive(Debug, Default)]
pub enum Connect {
    #[default]
    Ready,
    /// The shared connection is still being established (TCP, TLS, preface).
    Pending,
    /// It could not be: the exchange fails over like after a refused connect.
    Failed(io::ErrorKind, String),
}

/// What both ends share. "Session" is the HTTP/1 side whatever the direction: it reads
/// `to_session` (a request from a client stream, a response from an upstream stream) and
/// writes `from_session`.
#[derive(Default)]
pub struct PipeState {
    /// Bytes for the session to read.
    pub to_session: Buf,
    /// No more bytes will come for the session once `to_session` is empty.
    pub to_session_eof: bool,
    /// Bytes the session wrote.
    pub from_session: Buf,
    /// The session will write no more: it shut its write side or ended.
    pub from_session_done: bool,
    /// The session ended (its end was closed).
    pub session_gone: bool,
    /// The other side gave up (stream reset, connection closed): the session's I/O fails.
    pub broken: bool,
    /// With `broken`: the upstream did not process the stream (a GOAWAY beyond its id, or
    /// REFUSED_STREAM), so any request may be sent again on another connection.
    pub refused: bool,
    /// Upstream pipes: the shared connection's state.
    pub connect: Connect,
    /// The HTTP/2 side, woken when the session moves bytes.
    pub h2: Option<Wake>,
    /// The session's side, woken when the HTTP/2 side moves bytes (`None` until known).
    pub session: Option<Wake>,
    /// Client pipes: the HTTP/2 connection runs over TLS (the request's scheme is `https`).
    pub over_tls: bool,
    /// Client pipes: the verified client certificate's subject on that connection (mTLS).
    pub client_subject: Option<Rc<str>>,
}

impl PipeState {
    /// A client stream's pipe: `h2` is the client connection.
    pub fn new(h2: Wake, over_tls: bool, client_subject: Option<Rc<str>>) -> Self {
        PipeState {
            h2: Some(h2),
            over_tls,
            client_subject,
            ..PipeState::default()
        }
    }

    /// An upstream stream's pipe: `h2` is the upstream connection, `session` whoever sends the
    /// request (an exchange, a probe, a mirrored request).
    pub fn upstream(h2: Wake, session: Wake, connect: Connect) -> Self {
        PipeState {
            h2: Some(h2),
            session: Some(session),
            connect,
            ..PipeState::default()
        }
    }

    /// Room left in `from_session`.
    fn room(&self) -> usize {
        PIPE_CAP.saturating_sub(self.from_session.len())
    }

    /// The HTTP/2 side moved bytes: let the session look again.
    pub fn wake_session(&self) {
        if let Some(who) = self.session {
            wakeups::wake(who);
        }
    }

    fn wake_h2(&self) {
        if let Some(who) = self.h2 {
            wakeups::wake(who);
        }
    }

    fn error(&self) -> io::Error {
        if self.refused {
            io::Error::other(StreamRefused)
        } else {
            io::Error::new(io::ErrorKind::ConnectionReset, "HTTP/2 stream reset")
        }
    }
}

pub type SharedPipe = Rc<RefCell<PipeState>>;

/// The error of a session's I/O on a stream the upstream did not process.
#[derive(Debug)]
pub struct StreamRefused;

impl fmt::Display for StreamRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HTTP/2 stream refused by the upstream (not processed)")
    }
}

impl std::error::Error for StreamRefused {}

/// Whether a session's I/O error says the request was not processed (see
/// [`PipeState::refused`]).
pub fn is_refused(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<StreamRefused>())
}

/// The session's end of a pipe.
pub struct PipeEnd {
    pub shared: SharedPipe,
}

impl fmt::Debug for PipeEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.shared.borrow();
        f.debug_struct("PipeEnd")
            .field("to_session", &s.to_session.len())
            .field("from_session", &s.from_session.len())
            .field("broken", &s.broken)
            .finish()
    }
}

impl PipeEnd {
    /// Upstream pipes: `Ok(true)` once the shared connection is established.
    pub fn poll_connect(&self) -> io::Result<bool> {
        let s = self.shared.borrow();
        match &s.connect {
            Connect::Failed(kind, why) => Err(io::Error::new(*kind, why.clone())),
            _ if s.broken => Err(s.error()),
            Connect::Ready => Ok(true),
            Connect::Pending => Ok(false),
        }
    }

    pub fn fill(&mut self, buf: &mut Buf, cap: usize) -> io::Result<ReadOutcome> {
        let mut s = self.shared.borrow_mut();
        if s.broken {
            return Err(s.error());
        }
        let n = cap.saturating_sub(buf.len()).min(s.to_session.len());
        if n > 0 {
            buf.extend(&s.to_session.as_slice()[..n]);
            s.to_session.consume(n);
            s.wake_h2();
        }
        Ok(ReadOutcome {
            bytes: n,
            eof: s.to_session_eof && s.to_session.is_empty(),
        })
    }

    pub fn flush(&mut self, buf: &mut Buf) -> io::Result<usize> {
        let mut s = self.shared.borrow_mut();
        if s.broken {
            return Err(s.error());
        }
        let n = s.room().min(buf.len());
        if n > 0 {
            s.from_session.extend(&buf.as_slice()[..n]);
            buf.consume(n);
            s.wake_h2();
        }
        Ok(n)
    }

    pub fn readable(&self) -> bool {
        let s = self.shared.borrow();
        s.broken || !s.to_session.is_empty() || s.to_session_eof
    }

    /// The other side will send nothing more. Not while it broke the pipe: the next read
    /// reports how (a reset, or a stream the upstream refused).
    pub fn read_eof(&self) -> bool {
        let s = self.shared.borrow();
        !s.broken && s.to_session_eof && s.to_session.is_empty()
    }

    pub fn discard(&mut self) -> io::Result<bool> {
        let mut s = self.shared.borrow_mut();
        if !s.to_session.is_empty() {
            s.to_session.clear();
            s.wake_h2();
        }
        Ok(s.to_session_eof || s.broken)
    }

    pub fn shutdown_write(&mut self) {
        let mut s = self.shared.borrow_mut();
        if !s.from_session_done {
            s.from_session_done = true;
            s.wake_h2();
        }
    }

    /// The session ends: the HTTP/2 side finishes the stream with what it got.
    pub fn close(&mut self) {
        let mut s = self.shared.borrow_mut();
        s.from_session_done = true;
        s.session_gone = true;
        s.wake_h2();
    }
}
