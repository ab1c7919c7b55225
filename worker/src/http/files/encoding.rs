//! `compress`: which files are compressed, with which coding (from `Accept-Encoding`), and the
//! streaming encoders.
//!
//! Upstream Zentinel compresses text types of 1 KiB and more with br or gzip, in memory, up to
//! 10 MiB (larger files go out as they are). Here the body is compressed as it is sent, one
//! bounded piece per turn of the event loop, in `Transfer-Encoding: chunked` (the compressed
//! length is not known before the end): no whole file in memory, no stall of the worker.

use std::cell::Cell;
use std::io::{self, Write};

use flate2::write::GzEncoder;

/// Smaller files go out as they are (upstream's threshold): below about 1 KiB the gzip header
/// and trailer, the chunk framing and the extra headers eat most of the saving, and the whole
/// answer fits one TCP segment anyway, so no round trip is saved.
pub const MIN_SIZE: u64 = 1024;
/// Larger files go out as they are, by sendfile (upstream's threshold too). Compressing is
/// CPU work on the worker's only thread for every request; above this it would cost a GET
/// tenths of a second, and such files (logs, dumps, data) are rarely pages a browser waits on.
pub const MAX_SIZE: u64 = 10 * 1024 * 1024;
/// gzip level: flate2's default, as upstream.
const GZIP_LEVEL: u32 = 6;
/// brotli quality: upstream's, a good ratio at gzip-like speed.
const BROTLI_QUALITY: u32 = 4;
/// brotli's window is sized to the file, between these (log2 of bytes). Measured with this
/// crate on 1.5 MB of source text: a 256 KiB window costs 4% of output against 1 MiB, and
/// the stream's peak memory is 2.0 MiB instead of 3.5 MiB.
const BROTLI_WINDOW_MIN: u32 = 16;
const BROTLI_WINDOW_MAX: u32 = 18;
/// brotli's internal output buffer.
const BROTLI_BUFFER: usize = 4096;
/// brotli is flushed after this much input. Left alone, it gathers input for a metablock of
/// up to twice its window and keeps its commands in growing buffers: 11 MiB for a 4 MB file
/// with a 1 MiB window, and nothing reaches the client before the metablock ends. Flushing
/// bounds both, for under 1% of output.
const BROTLI_FLUSH_EVERY: usize = 64 * 1024;
/// Compressed bodies in progress at once on one worker. Each holds its encoder (about 2 MiB
/// for br, 0.4 MiB for gzip) until its client has taken the body; past this many, files go
/// out as they are (by sendfile), so slow clients cannot make a worker's memory grow
/// without bound.
pub const MAX_STREAMS: usize = 32;

thread_local! {
    /// Compressed bodies in progress on this thread's worker.
    static STREAMS: Cell<usize> = const { Cell::new(0) };
}

/// One of the worker's [`MAX_STREAMS`] places for a compressed body, given back on drop.
pub struct StreamSlot(());

impl StreamSlot {
    /// A place, unless all are taken.
    pub fn take() -> Option<StreamSlot> {
        STREAMS.with(|n| {
            let used = n.get();
            (used < MAX_STREAMS).then(|| {
                n.set(used + 1);
                StreamSlot(())
            })
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        STREAMS.with(|n| n.set(n.get().saturating_sub(1)));
    }
}

/// A content coding this build can apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    Brotli,
}

impl Coding {
    /// The `Content-Encoding` token.
    pub fn token(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Brotli => "br",
        }
    }

    /// The suffix that makes the encoded variant's ETag differ from the file's (RFC 9110 8.8.3:
    /// distinct representations have distinct tags).
    pub fn etag_suffix(self) -> &'static str {
        match self {
            Coding::Gzip => "-gz",
            Coding::Brotli => "-br",
        }
    }
}

/// Upstream's list of compressible types (the media type, parameters ignored).
pub fn compressible(content_type: &str) -> bool {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media.starts_with("text/")
        || media.contains("javascript")
        || media.contains("json")
        || media.contains("xml")
        || media.contains("svg")
        || media == "application/wasm"
}

/// The coding to use for an `Accept-Encoding` value (all of the request's lines, joined with
/// commas), or None for the file as it is. q-values count: the highest wins, a tie goes to
/// br (smaller output), `q=0` refuses, `*` stands for a coding not named. A malformed q-value
/// makes its entry not count, as if absent (the safe reading: identity is always acceptable).
pub fn negotiate(accept_encoding: &str) -> Option<Coding> {
    let mut gzip = None;
    let mut br = None;
    let mut any = None;
    for item in accept_encoding.split(',') {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        if coding.is_empty() {
            continue;
        }
        let mut q = Some(1000);
        for param in parts {
            if let Some((k, v)) = param.split_once('=') {
                if k.trim().eq_ignore_ascii_case("q") {
                    q = qvalue(v.trim());
                }
            }
        }
        let Some(q) = q else { continue };
        match coding.as_str() {
            "gzip" | "x-gzip" => gzip = Some(q),
            "br" => br = Some(q),
            "*" => any = Some(q),
            _ => {}
        }
    }
    let gzip = gzip.or(any).unwrap_or(0);
    let br = br.or(any).unwrap_or(0);
    if br == 0 && gzip == 0 {
        None
    } else if br >= gzip {
        Some(Coding::Brotli)
    } else {
        Some(Coding::Gzip)
    }
}

/// RFC 9110 12.4.2 qvalue in thousandths: `0`, `0.5`, `1`, `1.000`; anything else is None.
fn qvalue(v: &str) -> Option<u16> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_value = format!("{frac:0<3}").parse::<u16>().ok()?;
    match int {
        "0" => Some(frac_value),
        "1" if frac_value == 0 => Some(1000),
        _ => None,
    }
}

/// A streaming encoder writing into an in-memory vector that the caller drains after each
/// piece of input, so what it holds stays bounded by the codec's own buffers. It holds one of
/// the worker's stream places while it lives.
pub struct Encoder {
    codec: Codec,
    _slot: StreamSlot,
}

enum Codec {
    /// miniz_oxide emits a deflate block every few tens of KiB by itself.
    Gzip(GzEncoder<Vec<u8>>),
    /// With the input taken since the last flush.
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>, usize),
}

impl Encoder {
    /// An encoder for a body of `size` bytes.
    pub fn new(coding: Coding, size: u64, slot: StreamSlot) -> Self {
        let codec = match coding {
            Coding::Gzip => Codec::Gzip(GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(GZIP_LEVEL),
            )),
            Coding::Brotli => {
                let bits = 64 - size.saturating_sub(1).leading_zeros();
                let window = bits.clamp(BROTLI_WINDOW_MIN, BROTLI_WINDOW_MAX);
                let w = brotli::CompressorWriter::new(
                    Vec::new(),
                    BROTLI_BUFFER,
                    BROTLI_QUALITY,
                    window,
                );
                Codec::Brotli(Box::new(w), 0)
            }
        };
        Encoder { codec, _slot: slot }
    }

    /// Compress `input`; the output so far is appended to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        match &mut self.codec {
            Codec::Gzip(e) => {
                e.write_all(input)?;
                out.append(e.get_mut());
            }
            Codec::Brotli(e, unflushed) => {
                e.write_all(input)?;
                *unflushed += input.len();
                if *unflushed >= BROTLI_FLUSH_EVERY {
                    e.flush()?;
                    *unflushed = 0;
                }
                out.append(e.get_mut());
            }
        }
        Ok(())
    }

    /// End the stream; the rest of the output (trailer included) is appended to `out`.
    pub fn finish(self, out: &mut Vec<u8>) -> io::Result<()> {
        match self.codec {
            Codec::Gzip(e) => out.append(&mut e.finish()?),
            Codec::Brotli(e, _) => out.append(&mut e.into_inner()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn types_as_upstream() {
        for t in [
            "text/html; charset=utf-8",
            "text/css; charset=utf-8",
            "text/javascript; charset=utf-8",
            "application/json",
            "application/manifest+json",
            "application/xml",
            "image/svg+xml",
            "application/wasm",
        ] {
            assert!(compressible(t), "{t}");
        }
        for t in [
            "image/png",
            "application/octet-stream",
            "font/woff2",
            "application/gzip",
            "video/mp4",
        ] {
            assert!(!compressible(t), "{t}");
        }
    }

    #[test]
    fn negotiation_honours_q_values() {
        use Coding::*;
        let cases = [
            ("", None),
            ("identity", None),
            ("gzip", Some(Gzip)),
            ("x-gzip", Some(Gzip)),
            ("GZIP, deflate", Some(Gzip)),
            ("gzip, deflate, br", Some(Brotli)),
            ("br;q=0.5, gzip", Some(Gzip)),
            ("br;q=0.5, gzip;q=0.5", Some(Brotli)),
            ("gzip;q=0", None),
            ("br;q=0, gzip;q=0.001", Some(Gzip)),
            ("gzip ; q=0 , br ; q=0", None),
            ("*", Some(Brotli)),
            ("*;q=0.1, gzip", Some(Gzip)),
            ("*, br;q=0", Some(Gzip)),
            ("*;q=0", None),
            ("br;q=1.0, gzip;q=0.9", Some(Brotli)),
            // Malformed q-values do not count: here br is not accepted at all.
            ("br;q=2, gzip;q=0.3", Some(Gzip)),
            ("br;q=0.1234", None),
            ("br;q=abc", None),
            ("deflate, compress", None),
        ];
        for (header, want) in cases {
            assert_eq!(negotiate(header), want, "{header:?}");
        }
    }

    fn round_trip(coding: Coding, input: &[u8]) -> Vec<u8> {
        let slot = StreamSlot::take().expect("a free stream place");
        let mut enc = Encoder::new(coding, input.len() as u64, slot);
        let mut out = Vec::new();
        for piece in input.chunks(5000) {
            enc.push(piece, &mut out).expect("compress");
        }
        enc.finish(&mut out).expect("finish");
        assert!(out.len() < input.len() / 2, "{coding:?} did not compress");
        let mut back = Vec::new();
        match coding {
            Coding::Gzip => flate2::read::GzDecoder::new(&out[..])
                .read_to_end(&mut back)
                .expect("gunzip"),
            Coding::Brotli => brotli::Decompressor::new(&out[..], 4096)
                .read_to_end(&mut back)
                .expect("unbrotli"),
        };
        back
    }

    #[test]
    fn stream_places_are_capped_and_given_back() {
        // Thread-local: this test's thread starts with every place free.
        let held: Vec<StreamSlot> = (0..MAX_STREAMS).map_while(|_| StreamSlot::take()).collect();
        assert_eq!(held.len(), MAX_STREAMS);
        assert!(StreamSlot::take().is_none(), "past the cap");
        drop(held);
        assert!(StreamSlot::take().is_some(), "given back on drop");
    }

    #[test]
    fn encoders_stream_and_round_trip() {
        let text: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("line {} of some text\n", i % 977).into_bytes())
            .take(300_000)
            .collect();
        for coding in [Coding::Gzip, Coding::Brotli] {
            assert_eq!(round_trip(coding, &text), text, "{coding:?}");
        }
    }
}
