//! `compress`: which files are compressed, with which coding (from `Accept-Encoding`), and
//! their levels. Negotiation and the streaming encoders are the compress filter's
//! (`filters::compress`), shared with proxied responses.
//!
//! Upstream Zentinel compresses text types of 1 KiB and more with br or gzip, in memory, up to
//! 10 MiB (larger files go out as they are). Here the body is compressed as it is sent, one
//! bounded piece per turn of the event loop, in `Transfer-Encoding: chunked` (the compressed
//! length is not known before the end): no whole file in memory, no stall of the worker.

use std::io;

use zentinel_protocol::config::CompressionAlgorithm;

use crate::filters::compress::{self, Coder, StreamSlot};

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

/// A content coding this build applies to files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    Brotli,
}

impl Coding {
    /// The `Content-Encoding` token.
    pub fn token(self) -> &'static str {
        self.algorithm().token()
    }

    fn algorithm(self) -> CompressionAlgorithm {
        match self {
            Coding::Gzip => CompressionAlgorithm::Gzip,
            Coding::Brotli => CompressionAlgorithm::Brotli,
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
/// commas), or None for the file as it is: the compress filter's negotiation
/// (`filters::compress::negotiate`), br preferred at equal weights (smaller output).
pub fn negotiate(accept_encoding: &str) -> Option<Coding> {
    const OFFERED: &[CompressionAlgorithm] =
        &[CompressionAlgorithm::Brotli, CompressionAlgorithm::Gzip];
    match compress::negotiate(accept_encoding, OFFERED)? {
        CompressionAlgorithm::Brotli => Some(Coding::Brotli),
        CompressionAlgorithm::Gzip => Some(Coding::Gzip),
        CompressionAlgorithm::Zstd | CompressionAlgorithm::Deflate => None,
    }
}

/// A file's streaming encoder (see `filters::compress::Coder`), holding one of the worker's
/// compressed-stream places while it lives.
pub struct Encoder {
    coder: Coder,
    _slot: StreamSlot,
}

impl Encoder {
    /// An encoder for a file of `size` bytes.
    pub fn new(coding: Coding, size: u64, slot: StreamSlot) -> io::Result<Self> {
        let level = match coding {
            Coding::Gzip => GZIP_LEVEL,
            Coding::Brotli => BROTLI_QUALITY,
        };
        Ok(Encoder {
            coder: Coder::new(coding.algorithm(), level, Some(size))?,
            _slot: slot,
        })
    }

    /// Compress `input`; the output so far is appended to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        self.coder.push(input, false, out)
    }

    /// End the stream; the rest of the output (trailer included) is appended to `out`.
    pub fn finish(self, out: &mut Vec<u8>) -> io::Result<()> {
        self.coder.finish(out)
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
        let mut enc = Encoder::new(coding, input.len() as u64, slot).expect("encoder");
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
