//! A framed, fd-carrying channel over a Unix stream socket.
//!
//! Works on blocking sockets (the master's simple request/response paths) and on non-blocking
//! sockets driven by an edge-triggered `mio` loop (the worker, the master's supervision loop):
//! `recv` returns `Ok(None)` on `WouldBlock`, `send` queues what the socket does not take yet.
//!
//! Fd/frame pairing: a frame's fds are attached to the `sendmsg` that starts with the frame's
//! first header byte. Linux hands them out with the `recvmsg` that reads that byte's buffer,
//! and such a `recvmsg` ends at that buffer, so at most one fd batch arrives per read. The
//! channel records the stream range of the read that delivered each batch; a completed frame
//! announcing `n` fds takes the oldest batch, which must have arrived with the frame's first
//! byte and hold exactly `n` fds. Batches no frame can claim any more are closed and reported.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Portable, Serialize};
use zeroize::Zeroize;

use crate::fd_passing::{recv_with_fds_flags, send_vectored_with_fds, send_with_fds};
use crate::frame::{self, DecodedFrame, FrameDecoder, MAX_FDS_PER_FRAME};
use crate::ProtocolError;

/// Default upper bound of one frame's payload.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// Largest payloads one end of a channel sends and accepts. The two directions differ where
/// the peers do: a control client's requests are tiny and the master must not buffer much of
/// one, while the master's answers (a `status` of hundreds of workers, the running
/// configuration's text) are large.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest payload this end sends (a larger message fails to send).
    pub send: usize,
    /// Largest payload this end accepts (a larger frame breaks the channel).
    pub recv: usize,
}

impl FrameLimits {
    /// The same limit both ways.
    pub const fn both(max: usize) -> Self {
        FrameLimits {
            send: max,
            recv: max,
        }
    }

    /// The limits of the peer: what this end sends, it receives.
    pub const fn reversed(self) -> Self {
        FrameLimits {
            send: self.recv,
            recv: self.send,
        }
    }
}

/// Size of each read from the socket.
const READ_CHUNK: usize = 64 * 1024;

/// Most frames gathered into one `sendmsg`.
const MAX_IOVECS: usize = 64;

/// One complete frame: the payload in an aligned buffer (so it can be used in place as an
/// archived value) and the fds that came with it (CLOEXEC set).
#[derive(Debug)]
pub struct ReceivedFrame {
    /// The frame's payload, aligned for use in place as an rkyv archive.
    pub payload: AlignedVec,
    /// The fds the frame carried, in the order they were sent (exactly as many as its header
    /// announced).
    pub fds: Vec<OwnedFd>,
}

impl ReceivedFrame {
    /// Validate the payload as an archived `T` and return a reference into the buffer
    /// (zero-copy).
    pub fn access<T>(&self) -> Result<&T::Archived, ProtocolError>
    where
        T: Archive,
        T::Archived: Portable + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
    {
        frame::access::<T>(&self.payload)
    }

    /// Validate and deserialize into an owned `T` (for values that must outlive the buffer).
    pub fn deserialize<T>(&self) -> Result<T, ProtocolError>
    where
        T: Archive,
        T::Archived: Portable
            + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
            + Deserialize<T, HighDeserializer<rancor::Error>>,
    {
        frame::deserialize::<T>(&self.payload)
    }

    /// Take ownership of the fds that arrived with this frame.
    pub fn take_fds(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.fds)
    }
}

/// Some messages carry secrets (the TLS session-ticket keys): no frame leaves its bytes behind
/// in freed memory.
impl Drop for ReceivedFrame {
    fn drop(&mut self) {
        self.payload.as_mut_slice().zeroize();
    }
}

/// Fds delivered by one `recvmsg`, with the stream range `[start, end)` that call read.
#[derive(Debug)]
struct FdBatch {
    start: u64,
    end: u64,
    fds: Vec<OwnedFd>,
}

/// A frame waiting to be written. `fds` are our own duplicates, closed once the frame's
/// first byte (which carries them) has been sent.
#[derive(Debug)]
struct Outgoing {
    bytes: Vec<u8>,
    written: usize,
    fds: Vec<OwnedFd>,
}

/// Zeroed once written (or dropped unsent), like [`ReceivedFrame`].
impl Drop for Outgoing {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

/// A framed, fd-carrying channel over one end of a Unix stream socket. Not thread-safe by
/// design: one owner drives both directions (an event loop, or a blocking handshake).
#[derive(Debug)]
pub struct Channel {
    stream: UnixStream,
    /// Bounded by the receive limit.
    decoder: FrameDecoder,
    max_send: usize,
    read_buf: Box<[u8]>,
    fd_batches: VecDeque<FdBatch>,
    outgoing: VecDeque<Outgoing>,
    /// Set after `MSG_CTRUNC`: fds were lost and the bytes read with them are gone, so the
    /// stream can no longer be trusted.
    control_truncated: bool,
}

impl Channel {
    /// Wrap a connected stream with the default frame limit ([`DEFAULT_MAX_FRAME`]).
    pub fn new(stream: UnixStream) -> Self {
        Self::with_max_frame(stream, DEFAULT_MAX_FRAME)
    }

    /// Wrap a connected stream; payloads above `max_frame` bytes are refused both ways.
    pub fn with_max_frame(stream: UnixStream, max_frame: usize) -> Self {
        Self::with_limits(stream, FrameLimits::both(max_frame))
    }

    /// Wrap a connected stream with separate limits for what it sends and what it accepts.
    pub fn with_limits(stream: UnixStream, limits: FrameLimits) -> Self {
        Channel {
            stream,
            decoder: FrameDecoder::new(limits.recv),
            max_send: limits.send,
            read_buf: vec![0u8; READ_CHUNK].into_boxed_slice(),
            fd_batches: VecDeque::new(),
            outgoing: VecDeque::new(),
            control_truncated: false,
        }
    }

    /// Wrap an inherited channel fd (e.g. the worker's `--channel-fd`). The fd must be a
    /// connected `AF_UNIX` stream socket; blocking mode is left as it is.
    pub fn from_owned_fd(fd: OwnedFd) -> Self {
        Self::new(UnixStream::from(fd))
    }

    /// The socket, e.g. to set non-blocking mode or register it with `mio` (via its fd).
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Largest payloads sent and accepted.
    pub fn limits(&self) -> FrameLimits {
        FrameLimits {
            send: self.max_send,
            recv: self.decoder.max_payload(),
        }
    }

    /// Serialize `msg`, queue it with `fds` (sent with SCM_RIGHTS on the frame's first byte),
    /// and try to flush. `Ok(true)`: everything queued has been written; `Ok(false)`: the socket
    /// is non-blocking and full, call [`Channel::flush`] when it becomes writable.
    ///
    /// The fds are duplicated (CLOEXEC), so the caller may close its own right away.
    pub fn send<T>(&mut self, msg: &T, fds: &[BorrowedFd<'_>]) -> Result<bool, ProtocolError>
    where
        T: for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
    {
        if fds.len() > MAX_FDS_PER_FRAME {
            return Err(ProtocolError::Invalid(format!(
                "cannot send {} fds with one message (maximum {MAX_FDS_PER_FRAME})",
                fds.len()
            )));
        }
        let bytes = frame::encode(msg, fds.len(), self.max_send)?;
        let owned = fds
            .iter()
            .map(|fd| fd.try_clone_to_owned())
            .collect::<io::Result<Vec<_>>>()?;
        self.outgoing.push_back(Outgoing {
            bytes,
            written: 0,
            fds: owned,
        });
        self.flush()
    }

    /// Write queued output. `Ok(true)` when nothing is left queued.
    pub fn flush(&mut self) -> Result<bool, ProtocolError> {
        while let Some(front) = self.outgoing.front() {
            let result = if front.fds.is_empty() {
                self.write_plain_frames()
            } else {
                // Invariant: fds are dropped once any byte of their frame is written, so a
                // frame still holding fds is unwritten and this write starts at its first byte.
                let fds: Vec<BorrowedFd<'_>> = front.fds.iter().map(|fd| fd.as_fd()).collect();
                send_with_fds(self.stream.as_fd(), &front.bytes[front.written..], &fds)
            };
            match result {
                Ok(0) => {
                    return Err(ProtocolError::Io(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "channel socket accepted no bytes",
                    )))
                }
                Ok(n) => self.advance_output(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                    return Err(ProtocolError::Closed)
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }

    /// Gather the leading run of fd-free frames into one `sendmsg`. Stops before a frame
    /// with fds, which must start its own `sendmsg`.
    fn write_plain_frames(&self) -> io::Result<usize> {
        let slices: Vec<IoSlice<'_>> = self
            .outgoing
            .iter()
            .enumerate()
            .take_while(|(i, out)| *i == 0 || out.fds.is_empty())
            .take(MAX_IOVECS)
            .map(|(_, out)| IoSlice::new(&out.bytes[out.written..]))
            .collect();
        send_vectored_with_fds(self.stream.as_fd(), &slices, &[])
    }

    fn advance_output(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.outgoing.front_mut() else {
                return;
            };
            // The kernel took at least one byte of this frame, so its fds are in flight.
            front.fds.clear();
            let remaining = front.bytes.len() - front.written;
            if n < remaining {
                front.written += n;
                return;
            }
            n -= remaining;
            self.outgoing.pop_front();
        }
    }

    /// True while frames (or parts of one) wait for [`Channel::flush`]; register for
    /// writability while it holds.
    pub fn has_pending_output(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// Return the next complete frame. Frames already buffered are returned without reading.
    /// Non-blocking socket: `Ok(None)` when no full frame is available yet (call again after
    /// the next readiness event; with edge-triggered polling, call until `Ok(None)`).
    /// Blocking socket: waits for a full frame.
    /// `Err(Closed)` on EOF between frames, `Err(Truncated)` on EOF inside a frame.
    pub fn recv(&mut self) -> Result<Option<ReceivedFrame>, ProtocolError> {
        loop {
            if let Some(frame) = self.next_buffered()? {
                return Ok(Some(frame));
            }
            match self.read_once(0) {
                Ok(0) => return Err(self.decoder.eof_error()),
                Ok(_) => {}
                Err(ProtocolError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Wait (up to `timeout`) for the next frame, whatever the socket's blocking mode; for
    /// handshakes. Times out with an `io::ErrorKind::TimedOut` error.
    pub fn recv_timeout(
        &mut self,
        timeout: std::time::Duration,
    ) -> Result<ReceivedFrame, ProtocolError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(frame) = self.next_buffered()? {
                return Ok(frame);
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(ProtocolError::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no complete message from peer within {timeout:?}"),
                )));
            }
            if !self.wait_readable(remaining)? {
                continue;
            }
            // MSG_DONTWAIT: a blocking socket must not outlive the deadline in recvmsg.
            match self.read_once(libc::MSG_DONTWAIT) {
                Ok(0) => return Err(self.decoder.eof_error()),
                Ok(_) => {}
                Err(ProtocolError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// poll(2) for readability; `Ok(false)` on timeout.
    fn wait_readable(&self, timeout: Duration) -> Result<bool, ProtocolError> {
        // Round up so a sub-millisecond remainder does not spin with a zero timeout.
        let millis = timeout.as_micros().div_ceil(1000);
        let poll_timeout = PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(self.stream.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, poll_timeout) {
            Ok(n) => Ok(n > 0),
            Err(nix::errno::Errno::EINTR) => Ok(false),
            Err(errno) => Err(ProtocolError::Io(io::Error::from(errno))),
        }
    }

    /// One `recvmsg`: bytes go to the decoder, fds to the batch queue.
    fn read_once(&mut self, flags: libc::c_int) -> Result<usize, ProtocolError> {
        if self.control_truncated {
            return Err(ProtocolError::ControlTruncated);
        }
        let start = self.decoder.stream_offset();
        let mut fds = Vec::new();
        let n = match recv_with_fds_flags(self.stream.as_fd(), &mut self.read_buf, &mut fds, flags)
        {
            Ok(n) => n,
            Err(e) => {
                let err = ProtocolError::from(e);
                if matches!(err, ProtocolError::ControlTruncated) {
                    self.control_truncated = true;
                }
                return Err(err);
            }
        };
        if !fds.is_empty() {
            self.fd_batches.push_back(FdBatch {
                start,
                end: start + n as u64,
                fds,
            });
        }
        self.decoder.push(&self.read_buf[..n]);
        // The decoder has its copy; none is left in the read buffer (see `ReceivedFrame`).
        self.read_buf[..n].zeroize();
        Ok(n)
    }

    /// Pop the next decoded frame and pair it with its fds.
    fn next_buffered(&mut self) -> Result<Option<ReceivedFrame>, ProtocolError> {
        let Some(DecodedFrame {
            payload,
            fd_count,
            stream_offset,
        }) = self.decoder.next_frame()?
        else {
            return Ok(None);
        };

        // A batch read entirely before this frame belonged to an earlier frame that did not
        // announce it: the peer is confused, and the fds must not be handed to anyone.
        let mut orphaned = 0;
        while self
            .fd_batches
            .front()
            .is_some_and(|batch| batch.end <= stream_offset)
        {
            if let Some(batch) = self.fd_batches.pop_front() {
                orphaned += batch.fds.len();
            }
        }
        if orphaned > 0 {
            return Err(ProtocolError::Invalid(format!(
                "peer sent {orphaned} fds that no frame announced"
            )));
        }

        if fd_count == 0 {
            return Ok(Some(ReceivedFrame {
                payload,
                fds: Vec::new(),
            }));
        }
        let arrived_with_frame = self
            .fd_batches
            .front()
            .is_some_and(|batch| batch.start <= stream_offset && stream_offset < batch.end);
        let fds = if arrived_with_frame {
            self.fd_batches
                .pop_front()
                .map(|batch| batch.fds)
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        if fds.len() != fd_count {
            return Err(ProtocolError::FdCountMismatch {
                announced: fd_count,
                received: fds.len(),
            });
        }
        Ok(Some(ReceivedFrame { payload, fds }))
    }
}

impl AsRawFd for Channel {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

/// Check a worker's or master's hello version against ours ([`crate::PROTOCOL_VERSION`]).
pub fn check_version(theirs: u32) -> Result<(), ProtocolError> {
    check_version_of(crate::PROTOCOL_VERSION, theirs)
}

/// Check a peer's hello version against `ours` (each channel kind has its own version).
pub fn check_version_of(ours: u32, theirs: u32) -> Result<(), ProtocolError> {
    if theirs == ours {
        Ok(())
    } else {
        Err(ProtocolError::VersionMismatch { ours, theirs })
    }
}
