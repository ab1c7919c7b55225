//! The streaming encoders behind every compressed body the worker sends (the `compress` route
//! filter and `static-files`): gzip and deflate (flate2), br (brotli), zstd (libzstd), each
//! writing into a vector the caller drains after every piece of input, so what an encoder
//! holds stays bounded by its own window and buffers, never by the body.
//!
//! Each stream in progress holds one of the worker's [`MAX_STREAMS`] places
//! ([`StreamSlot`]); past that many, bodies go out as they are.

use std::cell::Cell;
use std::io::{self, Write};

use flate2::write::{GzEncoder, ZlibEncoder};
use zentinel_protocol::config::CompressionAlgorithm;

/// brotli's window is sized to the body when its length is known, between these (log2 of
/// bytes); unknown lengths get the largest. Measured with this crate on 1.5 MB of source
/// text: a 256 KiB window costs 4% of output against 1 MiB, and the stream's peak memory is
/// 2.0 MiB instead of 3.5 MiB.
const BROTLI_WINDOW_MIN: u32 = 16;
const BROTLI_WINDOW_MAX: u32 = 18;
/// brotli's internal output buffer.
const BROTLI_BUFFER: usize = 4096;
/// brotli is flushed after this much input. Left alone, it gathers input for a metablock of
/// up to twice its window and keeps its commands in growing buffers: 11 MiB for a 4 MB file
/// with a 1 MiB window, and nothing reaches the client before the metablock ends. Flushing
/// bounds both, for under 1% of output.
const BROTLI_FLUSH_EVERY: usize = 64 * 1024;
/// zstd's window (log2 of bytes): 1 MiB. The levels this build accepts (1 to 11) would pick
/// 2 to 8 MiB for large bodies; RFC 9659 caps the `zstd` coding at 8 MiB, and a smaller
/// window bounds each stream's memory. A body known to be smaller shrinks it further (its
/// length is pledged to zstd).
const ZSTD_WINDOW_LOG: u32 = 20;
/// Compressed bodies in progress at once on one worker. Each holds its encoder (about 2 MiB
/// for br, 0.4 MiB for gzip, 2 to 3 MiB for zstd) until its client has taken the body; past
/// this many, bodies go out as they are, so slow clients cannot make a worker's memory grow
/// without bound.
pub const MAX_STREAMS: usize = 32;

thread_local! {
    /// Compressed bodies in progress on this thread's worker.
    static STREAMS: Cell<usize> = const { Cell::new(0) };
}

/// One of the worker's [`MAX_STREAMS`] places for a compressed body, given back on drop.
#[derive(Debug)]
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

/// A `level` (1 to 11 in the configuration) on each coder's own scale: gzip and deflate
/// 1 to 9 (clamped), brotli's quality 0 to 11, zstd's level 1 to 22.
pub fn coder_level(alg: CompressionAlgorithm, level: u8) -> u32 {
    let level = u32::from(level);
    match alg {
        CompressionAlgorithm::Gzip | CompressionAlgorithm::Deflate => level.clamp(1, 9),
        CompressionAlgorithm::Brotli => level.min(11),
        CompressionAlgorithm::Zstd => level.clamp(1, 22),
    }
}

/// A streaming encoder (see the module docs).
pub struct Coder {
    codec: Codec,
    /// Input taken since the last flush.
    unflushed: usize,
}

impl std::fmt::Debug for Coder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.codec {
            Codec::Gzip(_) => "gzip",
            Codec::Deflate(_) => "deflate",
            Codec::Brotli(_) => "br",
            Codec::Zstd(_) => "zstd",
        };
        f.debug_struct("Coder")
            .field("codec", &name)
            .field("unflushed", &self.unflushed)
            .finish()
    }
}

enum Codec {
    /// miniz_oxide emits a deflate block every few tens of KiB by itself.
    Gzip(GzEncoder<Vec<u8>>),
    /// RFC 9110's `deflate`: the zlib format.
    Deflate(ZlibEncoder<Vec<u8>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    /// libzstd emits a block every 128 KiB of input by itself.
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Coder {
    /// An encoder for `alg` at `level` (already on the coder's scale: [`coder_level`]), for
    /// a body of `size` bytes when known.
    pub fn new(alg: CompressionAlgorithm, level: u32, size: Option<u64>) -> io::Result<Self> {
        let codec = match alg {
            CompressionAlgorithm::Gzip => {
                Codec::Gzip(GzEncoder::new(Vec::new(), flate2::Compression::new(level)))
            }
            CompressionAlgorithm::Deflate => Codec::Deflate(ZlibEncoder::new(
                Vec::new(),
                flate2::Compression::new(level),
            )),
            CompressionAlgorithm::Brotli => {
                let window = size.map_or(BROTLI_WINDOW_MAX, |s| {
                    (64 - s.saturating_sub(1).leading_zeros())
                        .clamp(BROTLI_WINDOW_MIN, BROTLI_WINDOW_MAX)
                });
                let w = brotli::CompressorWriter::new(Vec::new(), BROTLI_BUFFER, level, window);
                Codec::Brotli(Box::new(w))
            }
            CompressionAlgorithm::Zstd => {
                let level = i32::try_from(level).unwrap_or(3);
                let mut e = zstd::stream::write::Encoder::new(Vec::new(), level)?;
                e.window_log(ZSTD_WINDOW_LOG)?;
                // The body's length sizes zstd's tables to it (a 2 KB body does not get
                // tables for a 1 MiB window). It is pledged: the body is tracked to exactly
                // its Content-Length, and a body cut short never reaches `finish`.
                e.set_pledged_src_size(size)?;
                Codec::Zstd(e)
            }
        };
        Ok(Coder {
            codec,
            unflushed: 0,
        })
    }

    /// Compress `input`, appending the output so far to `out`. With `flush`, everything
    /// taken so far is in the output (a sync flush: the client can decode it all now).
    pub fn push(&mut self, input: &[u8], flush: bool, out: &mut Vec<u8>) -> io::Result<()> {
        self.unflushed += input.len();
        let flush = flush && self.unflushed > 0;
        match &mut self.codec {
            Codec::Gzip(e) => {
                e.write_all(input)?;
                if flush {
                    e.flush()?;
                }
                out.append(e.get_mut());
            }
            Codec::Deflate(e) => {
                e.write_all(input)?;
                if flush {
                    e.flush()?;
                }
                out.append(e.get_mut());
            }
            Codec::Brotli(e) => {
                e.write_all(input)?;
                if flush || self.unflushed >= BROTLI_FLUSH_EVERY {
                    e.flush()?;
                    self.unflushed = 0;
                }
                out.append(e.get_mut());
            }
            Codec::Zstd(e) => {
                e.write_all(input)?;
                if flush {
                    e.flush()?;
                }
                out.append(e.get_mut());
            }
        }
        if flush {
            self.unflushed = 0;
        }
        Ok(())
    }

    /// End the stream; the rest of the output (trailer included) is appended to `out`.
    pub fn finish(self, out: &mut Vec<u8>) -> io::Result<()> {
        match self.codec {
            Codec::Gzip(e) => out.append(&mut e.finish()?),
            Codec::Deflate(e) => out.append(&mut e.finish()?),
            Codec::Brotli(e) => out.append(&mut e.into_inner()),
            Codec::Zstd(e) => out.append(&mut e.finish()?),
        }
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::io::Read;
    use CompressionAlgorithm::{Brotli, Deflate, Gzip, Zstd};

    /// A whole stream of `alg` decoded.
    pub(in crate::filters) fn decode(alg: CompressionAlgorithm, bytes: &[u8]) -> Vec<u8> {
        let mut back = Vec::new();
        let r = match alg {
            Gzip => flate2::read::GzDecoder::new(bytes).read_to_end(&mut back),
            Deflate => flate2::read::ZlibDecoder::new(bytes).read_to_end(&mut back),
            Brotli => brotli::Decompressor::new(bytes, 4096).read_to_end(&mut back),
            Zstd => {
                zstd::stream::read::Decoder::new(bytes).and_then(|mut d| d.read_to_end(&mut back))
            }
        };
        if let Err(e) = r {
            panic!("{alg:?}: invalid stream: {e}");
        }
        back
    }

    fn text(n: usize) -> Vec<u8> {
        (0u32..)
            .flat_map(|i| format!("line {} of some text\n", i % 977).into_bytes())
            .take(n)
            .collect()
    }

    #[test]
    fn every_coding_round_trips_at_every_level() {
        let input = text(300_000);
        for alg in [Gzip, Deflate, Brotli, Zstd] {
            for level in [1, 6, 11] {
                let mut c = Coder::new(alg, coder_level(alg, level), Some(input.len() as u64))
                    .expect("coder");
                let mut out = Vec::new();
                for piece in input.chunks(5000) {
                    c.push(piece, false, &mut out).expect("compress");
                }
                c.finish(&mut out).expect("finish");
                assert!(
                    out.len() < input.len() / 4,
                    "{alg:?} {level}: {}",
                    out.len()
                );
                assert!(decode(alg, &out) == input, "{alg:?} level {level}");
            }
        }
    }

    /// After a flushed push, the output so far decodes to all the input so far: a client
    /// reading a slow stream sees every byte the upstream sent.
    #[test]
    fn a_flush_makes_everything_so_far_decodable() {
        let input = text(50_000);
        for alg in [Gzip, Deflate, Brotli, Zstd] {
            let mut c = Coder::new(alg, coder_level(alg, 6), None).expect("coder");
            let mut out = Vec::new();
            let mut sent = 0;
            for piece in input.chunks(7_000) {
                c.push(piece, true, &mut out).expect("compress");
                sent += piece.len();
                let got = decode_prefix(alg, &out);
                assert_eq!(got.len(), sent, "{alg:?}: decodable after a flush");
                assert!(got[..] == input[..sent]);
            }
            // Without a flush the coder may hold input back; a flush with nothing new adds
            // nothing.
            let before = out.len();
            c.push(b"", true, &mut out).expect("empty push");
            assert_eq!(out.len(), before, "{alg:?}: an empty flush writes nothing");
            c.finish(&mut out).expect("finish");
            assert!(decode(alg, &out) == input);
        }
    }

    /// What a streaming decoder gets out of an unfinished stream.
    fn decode_prefix(alg: CompressionAlgorithm, bytes: &[u8]) -> Vec<u8> {
        let mut back = Vec::new();
        let _ = match alg {
            Gzip => flate2::read::GzDecoder::new(bytes).read_to_end(&mut back),
            Deflate => flate2::read::ZlibDecoder::new(bytes).read_to_end(&mut back),
            Brotli => brotli::Decompressor::new(bytes, 4096).read_to_end(&mut back),
            Zstd => {
                zstd::stream::read::Decoder::new(bytes).and_then(|mut d| d.read_to_end(&mut back))
            }
        };
        back
    }

    #[test]
    fn levels_map_onto_each_coders_range() {
        assert_eq!(coder_level(Gzip, 11), 9);
        assert_eq!(coder_level(Deflate, 1), 1);
        assert_eq!(coder_level(Gzip, 0), 1);
        assert_eq!(coder_level(Brotli, 11), 11);
        assert_eq!(coder_level(Brotli, 4), 4);
        assert_eq!(coder_level(Zstd, 11), 11);
        assert_eq!(coder_level(Zstd, 0), 1);
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
}
