//! Where a body being streamed through ends: Content-Length counting, and the chunked framing
//! checked byte by byte (hex sizes without overflow, bounded extensions and trailers, CRLF
//! after every chunk), with decoding for HTTP/1.0 clients.

use super::request::is_forbidden_value_byte;
use super::BodyFraming;

/// Longest chunk extension accepted on one chunk-size line: extensions are not counted in the
/// body size, so unbounded ones would let a peer stream endless bytes into a "small" body.
pub(super) const MAX_CHUNK_EXT: usize = 4096;
/// Longest trailer section accepted, for the same reason.
pub(super) const MAX_TRAILERS: usize = 16 * 1024;
/// Hex digits in a chunk size: 16 fill a u64.
const MAX_CHUNK_SIZE_DIGITS: u8 = 16;

/// Finds the end of a body being streamed through, without changing its bytes.
#[derive(Debug, Clone)]
pub struct BodyTracker {
    framing: BodyFraming,
    max_body: u64,
    state: TrackState,
    /// Body bytes seen so far (decoded size for chunked bodies).
    body_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TrackState {
    /// Content-Length body with this many bytes left (0: complete).
    Length(u64),
    UntilClose,
    Chunked(Chunk),
    Failed(BodyError),
}

/// Position inside a chunked body (RFC 9112 7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Start of a chunk-size line: a hex digit must come.
    SizeStart,
    Size {
        size: u64,
        digits: u8,
    },
    /// Whitespace after the size: only `;` (an extension) may follow.
    SizeWs {
        size: u64,
    },
    Ext {
        size: u64,
        len: usize,
    },
    /// CR of the size line seen, LF must follow.
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// After the last chunk, at the start of a trailer line or the final empty line.
    TrailerStart {
        total: usize,
    },
    Trailer {
        total: usize,
    },
    TrailerLf {
        total: usize,
    },
    FinalLf,
    Done,
}

/// Result of feeding bytes to a [`BodyTracker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyProgress {
    /// How many of the fed bytes belong to the body (forward exactly these).
    pub consumed: usize,
    /// The body ended within those bytes (anything after `consumed` is the next message).
    pub complete: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("invalid chunked encoding: {0}")]
    InvalidChunk(&'static str),
    #[error("body larger than {0} bytes")]
    TooLarge(u64),
}

impl BodyTracker {
    /// `max_body` bounds the decoded body size (request bodies: `max_body_size_bytes`;
    /// responses: `u64::MAX`).
    pub fn new(framing: BodyFraming, max_body: u64) -> Self {
        let state = match framing {
            BodyFraming::Empty => TrackState::Length(0),
            BodyFraming::ContentLength(n) if n > max_body => {
                TrackState::Failed(BodyError::TooLarge(max_body))
            }
            BodyFraming::ContentLength(n) => TrackState::Length(n),
            BodyFraming::Chunked => TrackState::Chunked(Chunk::SizeStart),
            BodyFraming::UntilClose => TrackState::UntilClose,
        };
        BodyTracker {
            framing,
            max_body,
            state,
            body_bytes: 0,
        }
    }

    /// A Content-Length body's bytes still to come; None for other framings.
    pub fn length_left(&self) -> Option<u64> {
        match self.state {
            TrackState::Length(left) => Some(left),
            _ => None,
        }
    }

    /// A Content-Length body's next `n` bytes went through without being fed (moved by
    /// splice); at most what is left counts.
    pub fn passed(&mut self, n: u64) -> BodyProgress {
        let TrackState::Length(left) = self.state else {
            return BodyProgress {
                consumed: 0,
                complete: false,
            };
        };
        let take = n.min(left);
        self.state = TrackState::Length(left - take);
        self.body_bytes += take;
        BodyProgress {
            consumed: usize::try_from(take).unwrap_or(usize::MAX),
            complete: left == take,
        }
    }

    /// Feed the next bytes. Chunk-size lines, extensions and trailers are validated
    /// (hex digits only, no overflow, CRLF after each chunk).
    pub fn feed(&mut self, input: &[u8]) -> Result<BodyProgress, BodyError> {
        self.feed_into(input, None)
    }

    /// Like [`feed`](Self::feed), and also append the body's payload to `out`: for chunked
    /// bodies only the chunk data (sizes, extensions, trailers dropped), for other framings
    /// the consumed bytes as they are. `progress.consumed` still counts input bytes.
    pub fn feed_decoded(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<BodyProgress, BodyError> {
        if matches!(self.state, TrackState::Chunked(_)) {
            return self.feed_into(input, Some(out));
        }
        let p = self.feed_into(input, None)?;
        out.extend_from_slice(&input[..p.consumed]);
        Ok(p)
    }

    fn feed_into(
        &mut self,
        input: &[u8],
        sink: Option<&mut Vec<u8>>,
    ) -> Result<BodyProgress, BodyError> {
        match &self.state {
            TrackState::Failed(e) => Err(e.clone()),
            &TrackState::Length(left) => {
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
                let left = left - take as u64;
                self.state = TrackState::Length(left);
                self.body_bytes += take as u64;
                Ok(BodyProgress {
                    consumed: take,
                    complete: left == 0,
                })
            }
            TrackState::UntilClose => {
                let total = self.body_bytes.saturating_add(input.len() as u64);
                if total > self.max_body {
                    return Err(self.fail(BodyError::TooLarge(self.max_body)));
                }
                self.body_bytes = total;
                Ok(BodyProgress {
                    consumed: input.len(),
                    complete: false,
                })
            }
            &TrackState::Chunked(chunk) => match self.feed_chunked(chunk, input, sink) {
                Ok((chunk, consumed)) => {
                    self.state = TrackState::Chunked(chunk);
                    Ok(BodyProgress {
                        consumed,
                        complete: chunk == Chunk::Done,
                    })
                }
                Err(e) => Err(self.fail(e)),
            },
        }
    }

    fn fail(&mut self, e: BodyError) -> BodyError {
        self.state = TrackState::Failed(e.clone());
        e
    }

    /// `sink`: where chunk data goes when decoding.
    fn feed_chunked(
        &mut self,
        mut st: Chunk,
        input: &[u8],
        mut sink: Option<&mut Vec<u8>>,
    ) -> Result<(Chunk, usize), BodyError> {
        use BodyError::InvalidChunk as Bad;
        let mut i = 0;
        while i < input.len() && st != Chunk::Done {
            if let Chunk::Data { left } = st {
                // Bulk path: chunk data is forwarded without looking at it.
                let take = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(input.len() - i);
                if let Some(out) = sink.as_deref_mut() {
                    out.extend_from_slice(&input[i..i + take]);
                }
                i += take;
                let left = left - take as u64;
                st = if left == 0 {
                    Chunk::DataCr
                } else {
                    Chunk::Data { left }
                };
                continue;
            }
            let b = input[i];
            i += 1;
            st = match st {
                Chunk::SizeStart => match hex_value(b) {
                    Some(d) => Chunk::Size {
                        size: u64::from(d),
                        digits: 1,
                    },
                    None => return Err(Bad("chunk size is not a hex number")),
                },
                Chunk::Size { size, digits } => match (hex_value(b), b) {
                    (Some(d), _) => {
                        if digits >= MAX_CHUNK_SIZE_DIGITS {
                            return Err(Bad("chunk size too long"));
                        }
                        let size = size
                            .checked_mul(16)
                            .and_then(|s| s.checked_add(u64::from(d)))
                            .ok_or(Bad("chunk size overflows"))?;
                        Chunk::Size {
                            size,
                            digits: digits + 1,
                        }
                    }
                    (None, b'\r') => Chunk::SizeLf { size },
                    (None, b';') => Chunk::Ext { size, len: 0 },
                    (None, b' ' | b'\t') => Chunk::SizeWs { size },
                    (None, b'\n') => return Err(Bad("bare LF after chunk size")),
                    (None, _) => return Err(Bad("invalid byte in chunk size")),
                },
                Chunk::SizeWs { size } => match b {
                    b' ' | b'\t' => Chunk::SizeWs { size },
                    b';' => Chunk::Ext { size, len: 0 },
                    _ => return Err(Bad("whitespace after chunk size not followed by `;`")),
                },
                Chunk::Ext { size, len } => match b {
                    b'\r' => Chunk::SizeLf { size },
                    _ if is_forbidden_value_byte(b) => {
                        return Err(Bad("control character in chunk extension"))
                    }
                    _ if len >= MAX_CHUNK_EXT => return Err(Bad("chunk extension too long")),
                    _ => Chunk::Ext { size, len: len + 1 },
                },
                Chunk::SizeLf { size } => {
                    if b != b'\n' {
                        return Err(Bad("chunk size line not ended by CRLF"));
                    }
                    let total = self
                        .body_bytes
                        .checked_add(size)
                        .filter(|&t| t <= self.max_body)
                        .ok_or(BodyError::TooLarge(self.max_body))?;
                    self.body_bytes = total;
                    if size == 0 {
                        Chunk::TrailerStart { total: 0 }
                    } else {
                        Chunk::Data { left: size }
                    }
                }
                Chunk::DataCr => match b {
                    b'\r' => Chunk::DataLf,
                    _ => return Err(Bad("chunk data not followed by CRLF")),
                },
                Chunk::DataLf => match b {
                    b'\n' => Chunk::SizeStart,
                    _ => return Err(Bad("chunk data not followed by CRLF")),
                },
                Chunk::TrailerStart { total } => match b {
                    b'\r' => Chunk::FinalLf,
                    b'\n' => return Err(Bad("bare LF in trailers")),
                    b' ' | b'\t' => return Err(Bad("obsolete line folding in trailers")),
                    _ if is_forbidden_value_byte(b) => {
                        return Err(Bad("control character in trailers"))
                    }
                    _ => Chunk::Trailer { total: total + 1 },
                },
                Chunk::Trailer { total } => match b {
                    b'\r' => Chunk::TrailerLf { total },
                    b'\n' => return Err(Bad("bare LF in trailers")),
                    _ if is_forbidden_value_byte(b) => {
                        return Err(Bad("control character in trailers"))
                    }
                    _ if total >= MAX_TRAILERS => return Err(Bad("trailers too large")),
                    _ => Chunk::Trailer { total: total + 1 },
                },
                Chunk::TrailerLf { total } => match b {
                    b'\n' => Chunk::TrailerStart { total },
                    _ => return Err(Bad("trailer line not ended by CRLF")),
                },
                Chunk::FinalLf => match b {
                    b'\n' => Chunk::Done,
                    _ => return Err(Bad("chunked body not ended by CRLF")),
                },
                Chunk::Data { .. } | Chunk::Done => st,
            };
        }
        Ok((st, i))
    }

    /// `UntilClose` bodies complete when the peer closes; for other framings an EOF before
    /// completion means a truncated body.
    pub fn is_complete(&self) -> bool {
        match &self.state {
            &TrackState::Length(left) => left == 0,
            TrackState::UntilClose => true,
            TrackState::Chunked(c) => *c == Chunk::Done,
            TrackState::Failed(_) => false,
        }
    }

    pub fn framing(&self) -> BodyFraming {
        self.framing
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}
