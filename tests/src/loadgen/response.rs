//! The response side of a connection: parsing the head, following the framing
//! (Content-Length, chunked, until close) and verifying what arrived against what was asked.

use super::conn::{Conn, Phase};
use super::engine::{Ctx, Expect};
use crate::checksum_hex;
use crate::failure::FailureKind;

/// How much of an upload answer is kept (it is `len=N checksum=HEX`, about 40 bytes).
pub(super) const MAX_ANSWER: usize = 256;
/// Longest chunk-size or trailer line accepted.
const MAX_LINE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    Empty,
    Length(u64),
    Chunked(Chunk),
    UntilClose,
}

pub(super) enum Progress {
    /// The response needs more bytes.
    More,
    /// The request ended (success or failure), the connection is handed back.
    Finished,
}

fn find_crlf(data: &[u8]) -> Option<usize> {
    data.windows(2).position(|w| w == b"\r\n")
}

fn parse_hex_u64(v: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(v).ok()?.trim();
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

/// What the head says, extracted before the buffer is touched again.
struct Head {
    len: usize,
    status: u16,
    close: bool,
    framing: Framing,
    header_sum: Option<u64>,
    header_sum_raw: bool,
}

fn parse_head(data: &[u8]) -> Result<Option<Head>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(data) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => {
            return Err(format!(
                "unparsable response head ({e}): {:?}",
                String::from_utf8_lossy(&data[..data.len().min(200)])
            ))
        }
    };
    let status = resp.code.unwrap_or(0);
    let http10 = resp.version == Some(0);
    let mut close = http10;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut header_sum = None;
    let mut header_sum_raw = false;
    for h in resp.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    format!("bad Content-Length {:?}", String::from_utf8_lossy(h.value))
                })?;
            if length.is_some_and(|l| l != v) {
                return Err("conflicting Content-Length headers".into());
            }
            length = Some(v);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = h
                .value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case("connection") {
            for t in h.value.split(|&b| b == b',') {
                let t = t.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if http10 && t.eq_ignore_ascii_case(b"keep-alive") {
                    close = false;
                }
            }
        } else if name.eq_ignore_ascii_case("x-body-checksum") {
            header_sum_raw = true;
            header_sum = parse_hex_u64(h.value);
        }
    }
    let framing = if status == 204 || status == 304 {
        Framing::Empty
    } else if chunked {
        Framing::Chunked(Chunk::Size)
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        close = true;
        Framing::UntilClose
    };
    Ok(Some(Head {
        len,
        status,
        close,
        framing,
        header_sum,
        header_sum_raw,
    }))
}

impl Conn {
    /// Parses what the buffer holds.
    pub(super) fn process(&mut self, cx: &mut Ctx) -> Progress {
        while self.phase == Phase::Head {
            match parse_head(&self.buf[self.rpos..self.end]) {
                Ok(None) => return Progress::More,
                Err(msg) => {
                    self.fail(cx, FailureKind::BadResponse, || msg);
                    return Progress::Finished;
                }
                Ok(Some(head)) => {
                    self.rpos += head.len;
                    // Interim responses (100 Continue...) precede the real one.
                    if (100..200).contains(&head.status) && head.status != 101 {
                        continue;
                    }
                    self.status = head.status;
                    self.server_close = head.close;
                    self.framing = if head.status == 101 {
                        Framing::Empty
                    } else {
                        head.framing
                    };
                    self.header_sum = head.header_sum;
                    self.header_sum_raw = head.header_sum_raw;
                    self.phase = Phase::Body;
                }
            }
        }
        loop {
            let avail = self.end - self.rpos;
            match self.framing {
                Framing::Empty => return self.complete(cx),
                Framing::Length(0) => return self.complete(cx),
                Framing::Length(rem) => {
                    if avail == 0 {
                        return Progress::More;
                    }
                    let take = (avail as u64).min(rem) as usize;
                    self.consume(cx, take);
                    self.framing = Framing::Length(rem - take as u64);
                }
                Framing::UntilClose => {
                    if avail > 0 {
                        self.consume(cx, avail);
                    }
                    // Compact eagerly: nothing but body bytes ever sits in the buffer.
                    self.rpos = 0;
                    self.end = 0;
                    return Progress::More;
                }
                Framing::Chunked(state) => match state {
                    Chunk::Size | Chunk::Trailer => {
                        let data = &self.buf[self.rpos..self.end];
                        let Some(pos) = find_crlf(data) else {
                            if data.len() > MAX_LINE {
                                self.fail(cx, FailureKind::BadResponse, || {
                                    "chunk-size or trailer line too long".to_owned()
                                });
                                return Progress::Finished;
                            }
                            return Progress::More;
                        };
                        if state == Chunk::Trailer {
                            self.rpos += pos + 2;
                            if pos == 0 {
                                return self.complete(cx);
                            }
                            continue;
                        }
                        let line = &data[..pos];
                        let size_part = line.split(|&b| b == b';').next().unwrap_or(line);
                        let Some(size) = parse_hex_u64(size_part) else {
                            let shown = String::from_utf8_lossy(line).into_owned();
                            self.fail(cx, FailureKind::BadResponse, || {
                                format!("bad chunk-size line {shown:?}")
                            });
                            return Progress::Finished;
                        };
                        self.rpos += pos + 2;
                        self.framing = Framing::Chunked(if size == 0 {
                            Chunk::Trailer
                        } else {
                            Chunk::Data(size)
                        });
                    }
                    Chunk::Data(rem) => {
                        if avail == 0 {
                            return Progress::More;
                        }
                        let take = (avail as u64).min(rem) as usize;
                        self.consume(cx, take);
                        let left = rem - take as u64;
                        self.framing = Framing::Chunked(if left == 0 {
                            Chunk::DataEnd
                        } else {
                            Chunk::Data(left)
                        });
                    }
                    Chunk::DataEnd => {
                        if avail < 2 {
                            return Progress::More;
                        }
                        if &self.buf[self.rpos..self.rpos + 2] != b"\r\n" {
                            self.fail(cx, FailureKind::BadResponse, || {
                                "chunk data not followed by CRLF".to_owned()
                            });
                            return Progress::Finished;
                        }
                        self.rpos += 2;
                        self.framing = Framing::Chunked(Chunk::Size);
                    }
                },
            }
        }
    }

    /// Checks `take` body bytes at the read position against what is expected, and moves on.
    fn consume(&mut self, cx: &Ctx, take: usize) {
        let bytes = &self.buf[self.rpos..self.rpos + take];
        match &cx.plan.expect {
            Expect::Download {
                pattern: Some(p), ..
            } => {
                if self.mismatch.is_none() {
                    let off = self.body_len as usize;
                    let expected = p.get(off..).unwrap_or(&[]);
                    let n = bytes.len().min(expected.len());
                    if bytes[..n] != expected[..n] {
                        let k = bytes
                            .iter()
                            .zip(expected)
                            .position(|(a, b)| a != b)
                            .unwrap_or(0);
                        self.mismatch = Some(self.body_len + k as u64);
                    }
                    // Bytes past the expected length are caught by the length check.
                }
            }
            Expect::Download { pattern: None, .. } => self.hash.update(bytes),
            Expect::Upload { .. } => {
                let room = MAX_ANSWER.saturating_sub(self.answer.len());
                self.answer
                    .extend_from_slice(&bytes[..bytes.len().min(room)]);
            }
            Expect::Status => {}
        }
        self.body_len += take as u64;
        self.rpos += take;
    }

    pub(super) fn verify(&self, cx: &Ctx) -> Result<(), (FailureKind, String)> {
        if !(200..300).contains(&self.status) {
            return Err((FailureKind::Non2xx, format!("status {}", self.status)));
        }
        match &cx.plan.expect {
            Expect::Status => Ok(()),
            Expect::Download { len, pattern, sum } => {
                let (len, sum) = (*len, *sum);
                if self.body_len < len {
                    return Err((
                        FailureKind::Truncated,
                        format!("{} of {len} body bytes", self.body_len),
                    ));
                }
                if self.body_len > len {
                    return Err((
                        FailureKind::Corrupt,
                        format!("{} body bytes, {len} expected", self.body_len),
                    ));
                }
                if pattern.is_some() {
                    if let Some(at) = self.mismatch {
                        return Err((
                            FailureKind::Corrupt,
                            format!("body differs from the pattern at byte {at}"),
                        ));
                    }
                } else if self.hash.finish() != sum {
                    return Err((
                        FailureKind::Corrupt,
                        format!(
                            "body checksum {} != pattern's {}",
                            self.hash.hex(),
                            checksum_hex(sum)
                        ),
                    ));
                }
                if self.header_sum != Some(sum) {
                    return Err((
                        FailureKind::Corrupt,
                        if self.header_sum_raw {
                            format!("X-Body-Checksum is not the pattern's {}", checksum_hex(sum))
                        } else {
                            "no X-Body-Checksum header (use --verify status for another \
                             server)"
                                .to_owned()
                        },
                    ));
                }
                Ok(())
            }
            Expect::Upload { answer } => {
                if self.answer.trim_ascii() == answer.as_slice() {
                    Ok(())
                } else {
                    Err((
                        FailureKind::Corrupt,
                        format!(
                            "upload answer {:?}, expected {:?}",
                            String::from_utf8_lossy(&self.answer),
                            String::from_utf8_lossy(answer)
                        ),
                    ))
                }
            }
        }
    }
}
