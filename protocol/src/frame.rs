//! Frame layout: `[u32 payload_len LE][u32 fd_count LE][payload]`.
//!
//! The payload is an rkyv archive; the `fd_count` fds travel with SCM_RIGHTS on the sendmsg
//! that carries the frame's first header byte (see [`crate::channel`]).
//!
//! [`FrameDecoder`] is push-based and incremental: feed it whatever the socket returned, pop
//! complete frames. The header is checked against the configured maximum *before* any payload
//! is buffered, so a hostile length costs nothing. Payloads are copied once into an
//! [`AlignedVec`], which lets [`access`] validate and read the archive in place.

use std::collections::VecDeque;

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Portable, Serialize};
use zeroize::Zeroize;

use crate::ProtocolError;

/// Size of the frame header.
pub const HEADER_LEN: usize = 8;

/// Most fds one frame may carry. Well under the kernel's `SCM_MAX_FD` (253); the receiver
/// sizes its control buffer for exactly this many, so a peer sending more is detected
/// (`MSG_CTRUNC`) rather than silently losing descriptors.
pub const MAX_FDS_PER_FRAME: usize = 64;

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Bytes of payload that follow the header.
    pub payload_len: u32,
    /// How many fds travel with the frame (at most [`MAX_FDS_PER_FRAME`]).
    pub fd_count: u32,
}

impl FrameHeader {
    /// The header's wire form: payload length, then fd count, each a little-endian `u32`.
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..4].copy_from_slice(&self.payload_len.to_le_bytes());
        out[4..].copy_from_slice(&self.fd_count.to_le_bytes());
        out
    }

    /// Decode the header's wire form (two little-endian `u32`s).
    pub fn from_bytes(bytes: [u8; HEADER_LEN]) -> Self {
        let [a, b, c, d, e, f, g, h] = bytes;
        FrameHeader {
            payload_len: u32::from_le_bytes([a, b, c, d]),
            fd_count: u32::from_le_bytes([e, f, g, h]),
        }
    }

    /// Check the header against the payload limit and [`MAX_FDS_PER_FRAME`].
    pub fn validate(self, max_payload: usize) -> Result<(), ProtocolError> {
        let len = self.payload_len as usize;
        if len > max_payload {
            return Err(ProtocolError::FrameTooLarge {
                len,
                max: max_payload,
            });
        }
        if self.fd_count as usize > MAX_FDS_PER_FRAME {
            return Err(too_many_fds(self.fd_count as usize));
        }
        Ok(())
    }
}

fn too_many_fds(count: usize) -> ProtocolError {
    ProtocolError::Invalid(format!(
        "frame carries {count} fds, more than the maximum of {MAX_FDS_PER_FRAME}"
    ))
}

/// Serialize `msg` into an rkyv archive.
pub fn serialize<T>(msg: &T) -> Result<AlignedVec, ProtocolError>
where
    T: for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
{
    rkyv::to_bytes::<rancor::Error>(msg)
        .map_err(|e| ProtocolError::Invalid(format!("cannot serialize message: {e}")))
}

/// Build a frame (header + payload) around an already serialized payload.
pub fn encode_payload(
    payload: &[u8],
    fd_count: usize,
    max_payload: usize,
) -> Result<Vec<u8>, ProtocolError> {
    let too_large = ProtocolError::FrameTooLarge {
        len: payload.len(),
        max: max_payload.min(u32::MAX as usize),
    };
    if payload.len() > max_payload {
        return Err(too_large);
    }
    let payload_len = u32::try_from(payload.len()).map_err(|_| too_large)?;
    if fd_count > MAX_FDS_PER_FRAME {
        return Err(too_many_fds(fd_count));
    }
    // Bounded by MAX_FDS_PER_FRAME just above.
    let fd_count = u32::try_from(fd_count).map_err(|_| too_many_fds(fd_count))?;
    let header = FrameHeader {
        payload_len,
        fd_count,
    };
    let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
    frame.extend_from_slice(&header.to_bytes());
    frame.extend_from_slice(payload);
    Ok(frame)
}

/// Serialize `msg` and frame it, announcing `fd_count` fds.
pub fn encode<T>(msg: &T, fd_count: usize, max_payload: usize) -> Result<Vec<u8>, ProtocolError>
where
    T: for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
{
    let mut payload = serialize(msg)?;
    let frame = encode_payload(&payload, fd_count, max_payload);
    // Some messages carry secrets (the TLS session-ticket keys): the copy in the frame is
    // zeroed by the channel once sent, this one now.
    payload.as_mut_slice().zeroize();
    frame
}

/// Validate `payload` as an archived `T` and return a reference into it (zero-copy).
/// `payload` must be aligned for `T::Archived` (an [`AlignedVec`] is); a misaligned buffer
/// is reported as invalid, never read.
pub fn access<T>(payload: &[u8]) -> Result<&T::Archived, ProtocolError>
where
    T: Archive,
    T::Archived: Portable + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
{
    rkyv::access::<T::Archived, rancor::Error>(payload)
        .map_err(|e| ProtocolError::Invalid(e.to_string()))
}

/// Validate `payload` as an archived `T` and deserialize it into an owned value.
pub fn deserialize<T>(payload: &[u8]) -> Result<T, ProtocolError>
where
    T: Archive,
    T::Archived: Portable
        + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
        + Deserialize<T, HighDeserializer<rancor::Error>>,
{
    let archived = access::<T>(payload)?;
    rkyv::deserialize::<T, rancor::Error>(archived)
        .map_err(|e| ProtocolError::Invalid(e.to_string()))
}

/// One complete frame as the decoder yields it.
#[derive(Debug)]
pub struct DecodedFrame {
    /// The payload, aligned for in-place access.
    pub payload: AlignedVec,
    /// Number of fds the header announced.
    pub fd_count: usize,
    /// Offset of the frame's first header byte in the byte stream (counted from 0 for the
    /// first byte ever pushed); lets the channel match fd batches to frames.
    pub stream_offset: u64,
}

/// A frame whose header has been read and whose payload is still arriving.
#[derive(Debug)]
struct Partial {
    payload: AlignedVec,
    expected: usize,
    fd_count: usize,
    stream_offset: u64,
}

/// Why the decoder stopped; the stream cannot be resynchronized after a bad header.
#[derive(Debug, Clone, Copy)]
enum Failure {
    TooLarge { len: usize, max: usize },
    TooManyFds { count: usize },
}

impl Failure {
    fn to_error(self) -> ProtocolError {
        match self {
            Failure::TooLarge { len, max } => ProtocolError::FrameTooLarge { len, max },
            Failure::TooManyFds { count } => too_many_fds(count),
        }
    }
}

/// Incremental frame decoder.
#[derive(Debug)]
pub struct FrameDecoder {
    max_payload: usize,
    header: [u8; HEADER_LEN],
    header_len: usize,
    /// Stream offset of the first byte of the frame being decoded.
    frame_start: u64,
    partial: Option<Partial>,
    ready: VecDeque<DecodedFrame>,
    /// Total bytes pushed so far.
    offset: u64,
    failure: Option<Failure>,
}

impl FrameDecoder {
    /// A decoder that refuses frames whose payload is larger than `max_payload` bytes.
    pub fn new(max_payload: usize) -> Self {
        FrameDecoder {
            max_payload,
            header: [0; HEADER_LEN],
            header_len: 0,
            frame_start: 0,
            partial: None,
            ready: VecDeque::new(),
            offset: 0,
            failure: None,
        }
    }

    /// Largest payload this decoder accepts; a larger frame is an error
    /// ([`ProtocolError::FrameTooLarge`]).
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Total number of bytes pushed so far (the stream offset of the next byte).
    pub fn stream_offset(&self) -> u64 {
        self.offset
    }

    /// Feed bytes from the stream. Complete frames queue up for [`FrameDecoder::next_frame`];
    /// a bad header stops decoding for good (reported by `next_frame` after the frames that
    /// preceded it).
    pub fn push(&mut self, mut data: &[u8]) {
        while !data.is_empty() && self.failure.is_none() {
            let taken = match self.partial.as_mut() {
                None => {
                    if self.header_len == 0 {
                        self.frame_start = self.offset;
                    }
                    let take = (HEADER_LEN - self.header_len).min(data.len());
                    self.header[self.header_len..self.header_len + take]
                        .copy_from_slice(&data[..take]);
                    self.header_len += take;
                    if self.header_len == HEADER_LEN {
                        self.start_frame();
                    }
                    take
                }
                Some(partial) => {
                    let take = (partial.expected - partial.payload.len()).min(data.len());
                    partial.payload.extend_from_slice(&data[..take]);
                    take
                }
            };
            self.offset += taken as u64;
            data = &data[taken..];
            self.complete_if_done();
        }
    }

    /// A full header has arrived: check it and start buffering the payload.
    fn start_frame(&mut self) {
        let header = FrameHeader::from_bytes(self.header);
        let len = header.payload_len as usize;
        let fd_count = header.fd_count as usize;
        if len > self.max_payload {
            self.failure = Some(Failure::TooLarge {
                len,
                max: self.max_payload,
            });
            return;
        }
        if fd_count > MAX_FDS_PER_FRAME {
            self.failure = Some(Failure::TooManyFds { count: fd_count });
            return;
        }
        self.partial = Some(Partial {
            // Bounded by max_payload, checked above.
            payload: AlignedVec::with_capacity(len),
            expected: len,
            fd_count,
            stream_offset: self.frame_start,
        });
    }

    fn complete_if_done(&mut self) {
        let done = self
            .partial
            .as_ref()
            .is_some_and(|p| p.payload.len() == p.expected);
        if done {
            if let Some(p) = self.partial.take() {
                self.ready.push_back(DecodedFrame {
                    payload: p.payload,
                    fd_count: p.fd_count,
                    stream_offset: p.stream_offset,
                });
            }
            self.header_len = 0;
        }
    }

    /// The next complete frame, `Ok(None)` if none is complete yet, or the error that stopped
    /// the decoder once the frames before it have been taken.
    pub fn next_frame(&mut self) -> Result<Option<DecodedFrame>, ProtocolError> {
        if let Some(frame) = self.ready.pop_front() {
            return Ok(Some(frame));
        }
        match self.failure {
            Some(failure) => Err(failure.to_error()),
            None => Ok(None),
        }
    }

    /// Number of complete frames waiting to be taken.
    pub fn ready_frames(&self) -> usize {
        self.ready.len()
    }

    /// True when no frame is partially buffered (EOF here would be clean).
    pub fn is_between_frames(&self) -> bool {
        self.header_len == 0 && self.partial.is_none()
    }

    /// The error to report when the stream ends: the decoding failure if any, `Truncated` if
    /// a frame was partially received, else `Closed`. Complete frames still queued are not
    /// considered: take them first.
    pub fn eof_error(&self) -> ProtocolError {
        if let Some(failure) = self.failure {
            return failure.to_error();
        }
        match &self.partial {
            Some(p) => ProtocolError::Truncated {
                got: HEADER_LEN + p.payload.len(),
                expected: HEADER_LEN + p.expected,
            },
            None if self.header_len > 0 => ProtocolError::Truncated {
                got: self.header_len,
                expected: HEADER_LEN,
            },
            None => ProtocolError::Closed,
        }
    }
}
