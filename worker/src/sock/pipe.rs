//! An in-memory connection between an HTTP/1 session and an HTTP/2 connection: each stream of
//! an HTTP/2 connection is served by an ordinary HTTP/1 session (routing, limits, retries,
//! upstream pools, access log: everything HTTP/1 has), whose client is one end of a pipe.
//! The HTTP/2 side writes the stream's request into the pipe as HTTP/1.1 and reads the
//! response back out of it (see `h2::stream`).
//!
//! Bounded both ways ([`PIPE_CAP`]): a full pipe is backpressure exactly like a full socket.
//! Neither side gets a kernel event when the other moves bytes, so each side wakes the other
//! through [`crate::wakeups`].

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::rc::Rc;

use super::{Buf, ReadOutcome};
use crate::wakeups;

/// Bytes one direction of a pipe holds. The HTTP/2 side stops reading DATA for the stream
/// (and so stops granting the client flow-control window) while the session has not taken
/// them; the session stops reading its upstream while the HTTP/2 side has not sent them.
pub const PIPE_CAP: usize = 64 * 1024;

/// What both ends share.
#[derive(Default)]
pub struct PipeState {
    /// Bytes for the session to read (an HTTP/1.1 request).
    pub to_session: Buf,
    /// No more bytes will come for the session once `to_session` is empty.
    pub to_session_eof: bool,
    /// Bytes the session wrote (an HTTP/1.1 response).
    pub from_session: Buf,
    /// The session will write no more: it shut its write side or ended.
    pub from_session_done: bool,
    /// The session ended (its slab entry is gone).
    pub session_gone: bool,
    /// The other side gave up (stream reset, connection closed): the session's I/O fails.
    pub broken: bool,
    /// The HTTP/2 connection's slab key, woken when the session moves bytes.
    pub h2_key: usize,
    /// The session's slab key, woken when the HTTP/2 side moves bytes (`None` until it is in
    /// the slab).
    pub session_key: Option<usize>,
    /// The HTTP/2 connection runs over TLS (the request's scheme is `https`).
    pub over_tls: bool,
    /// The verified client certificate's subject on that connection (mutual TLS).
    pub client_subject: Option<Rc<str>>,
}

impl PipeState {
    pub fn new(h2_key: usize, over_tls: bool, client_subject: Option<Rc<str>>) -> Self {
        PipeState {
            h2_key,
            over_tls,
            client_subject,
            ..PipeState::default()
        }
    }

    /// Room left in `from_session`.
    fn room(&self) -> usize {
        PIPE_CAP.saturating_sub(self.from_session.len())
    }

    /// The HTTP/2 side moved bytes: let the session look again.
    pub fn wake_session(&self) {
        if let Some(key) = self.session_key {
            wakeups::wake(key);
        }
    }
}

pub type SharedPipe = Rc<RefCell<PipeState>>;

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

fn broken() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "HTTP/2 stream reset")
}

impl PipeEnd {
    pub fn fill(&mut self, buf: &mut Buf, cap: usize) -> io::Result<ReadOutcome> {
        let mut s = self.shared.borrow_mut();
        if s.broken {
            return Err(broken());
        }
        let n = cap.saturating_sub(buf.len()).min(s.to_session.len());
        if n > 0 {
            buf.extend(&s.to_session.as_slice()[..n]);
            s.to_session.consume(n);
            wakeups::wake(s.h2_key);
        }
        Ok(ReadOutcome {
            bytes: n,
            eof: s.to_session_eof && s.to_session.is_empty(),
        })
    }

    pub fn flush(&mut self, buf: &mut Buf) -> io::Result<usize> {
        let mut s = self.shared.borrow_mut();
        if s.broken {
            return Err(broken());
        }
        let n = s.room().min(buf.len());
        if n > 0 {
            s.from_session.extend(&buf.as_slice()[..n]);
            buf.consume(n);
            wakeups::wake(s.h2_key);
        }
        Ok(n)
    }

    pub fn readable(&self) -> bool {
        let s = self.shared.borrow();
        s.broken || !s.to_session.is_empty() || s.to_session_eof
    }

    pub fn read_eof(&self) -> bool {
        let s = self.shared.borrow();
        s.to_session_eof && s.to_session.is_empty()
    }

    pub fn discard(&mut self) -> io::Result<bool> {
        let mut s = self.shared.borrow_mut();
        s.to_session.clear();
        Ok(s.to_session_eof || s.broken)
    }

    pub fn shutdown_write(&mut self) {
        let mut s = self.shared.borrow_mut();
        if !s.from_session_done {
            s.from_session_done = true;
            wakeups::wake(s.h2_key);
        }
    }

    /// The session ends: the HTTP/2 side finishes the stream with what it got.
    pub fn close(&mut self) {
        let mut s = self.shared.borrow_mut();
        s.from_session_done = true;
        s.session_gone = true;
        wakeups::wake(s.h2_key);
    }
}
