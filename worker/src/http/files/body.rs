//! The body of a file answer, sent by the session a bounded piece at a time.
//!
//! The file was opened when the head was chosen and stays open: a file replaced (renamed
//! over) while it is sent keeps going out as the version the head described. A file that
//! shrinks under the transfer cannot keep its announced length: the caller closes the
//! connection (the client sees a short body, never bytes of another version).
//!
//! Three ways out:
//! - identity on a plain socket: sendfile(2), file pages straight to the socket;
//! - identity over TLS: read into the connection's buffer, since the bytes must be encrypted;
//! - compressed (gzip, br): read, compressed, framed as chunks in the connection's buffer.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::encoding::Encoder;
use crate::sock::{Buf, Sock};

/// File bytes a body may send per turn of the event loop before other connections get theirs
/// (see `Ctx::yield_turn`). sendfile costs the worker little per byte (the kernel copies page
/// to socket: about 1 GB/s to a loopback client, release build); over TLS each byte is read
/// and encrypted; compressing costs the most (release build, source text: gzip about 20 MB/s,
/// br about 30 MB/s). Each budget is about a millisecond or two of the worker's time.
const TURN_SENDFILE: usize = 1024 * 1024;
const TURN_BUFFERED: usize = 256 * 1024;
const TURN_COMPRESSED: usize = 32 * 1024;
/// File bytes read per read(2) on the buffered paths.
const READ_CHUNK: usize = 16 * 1024;
/// Compressed output is framed as a chunk once this much is ready (or at the end): fewer,
/// larger chunks than one per read.
const CHUNK_MIN: usize = 8 * 1024;

pub struct FileBody {
    file: File,
    /// For logs.
    path: PathBuf,
    /// Next file byte to send.
    offset: u64,
    /// File bytes still to send (from `offset`).
    remaining: u64,
    /// Compressed bodies only.
    encoded: Option<Box<Encoded>>,
    done: bool,
}

struct Encoded {
    /// None once finished.
    encoder: Option<Encoder>,
    /// Compressed bytes waiting to be framed.
    out: Vec<u8>,
    /// File bytes waiting to be compressed.
    scratch: Vec<u8>,
}

impl FileBody {
    /// `len` bytes of `file` from `offset`, as they are.
    pub fn identity(file: File, path: &Path, offset: u64, len: u64) -> Self {
        FileBody {
            file,
            path: path.to_owned(),
            offset,
            remaining: len,
            encoded: None,
            done: len == 0,
        }
    }

    /// The whole file (`size` bytes), compressed by `encoder`, as a chunked body.
    pub fn compressed(file: File, path: &Path, size: u64, encoder: Encoder) -> Self {
        FileBody {
            file,
            path: path.to_owned(),
            offset: 0,
            remaining: size,
            encoded: Some(Box::new(Encoded {
                encoder: Some(encoder),
                out: Vec::new(),
                scratch: Vec::new(),
            })),
            done: false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every byte was handed over (to the socket, or to the buffer given to `fill`).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The bytes go out as they are on disk, so sendfile can send them.
    pub fn zero_copy(&self) -> bool {
        self.encoded.is_none()
    }

    /// File bytes this body may send in one turn (`sendfile`: it goes out by sendfile).
    pub fn turn_budget(&self, sendfile: bool) -> usize {
        if self.encoded.is_some() {
            TURN_COMPRESSED
        } else if sendfile {
            TURN_SENDFILE
        } else {
            TURN_BUFFERED
        }
    }

    /// Identity bodies on a plain socket: sendfile up to `budget` bytes. Returns the bytes
    /// sent; 0 when the socket is not writable.
    pub fn send_to(&mut self, sock: &mut Sock, budget: usize) -> io::Result<usize> {
        let count = usize::try_from(self.remaining).map_or(budget, |r| r.min(budget));
        let n = sock.send_file(&self.file, &mut self.offset, count)?;
        self.remaining -= n as u64;
        self.done = self.remaining == 0;
        Ok(n)
    }

    /// The buffered paths: append the next piece to `out`, reading at most `budget` file
    /// bytes (and at least one read's worth). Returns the file bytes read. Afterwards `out`
    /// holds something to send, or the body is done.
    pub fn fill(&mut self, out: &mut Buf, budget: usize) -> io::Result<usize> {
        let budget = budget.max(1);
        match self.encoded.take() {
            None => {
                let max = usize::try_from(self.remaining).map_or(budget, |r| r.min(budget));
                let mut at = At {
                    file: &self.file,
                    offset: self.offset,
                };
                let n = if max == 0 {
                    0
                } else {
                    out.read_from(&mut at, max)?
                };
                if n == 0 && max > 0 {
                    return Err(shrank());
                }
                self.offset += n as u64;
                self.remaining -= n as u64;
                self.done = self.remaining == 0;
                Ok(n)
            }
            Some(mut enc) => {
                let r = self.fill_encoded(&mut enc, out, budget);
                self.encoded = Some(enc);
                r
            }
        }
    }

    fn fill_encoded(
        &mut self,
        enc: &mut Encoded,
        out: &mut Buf,
        budget: usize,
    ) -> io::Result<usize> {
        let mut read = 0;
        while self.remaining > 0 && read < budget && enc.out.len() < CHUNK_MIN {
            let want = usize::try_from(self.remaining)
                .map_or(READ_CHUNK, |r| r.min(READ_CHUNK))
                .min(budget - read);
            enc.scratch.resize(want, 0);
            let n = self.file.read_at(&mut enc.scratch, self.offset)?;
            if n == 0 {
                return Err(shrank());
            }
            self.offset += n as u64;
            self.remaining -= n as u64;
            read += n;
            if let Some(e) = enc.encoder.as_mut() {
                e.push(&enc.scratch[..n], &mut enc.out)?;
            }
        }
        if self.remaining == 0 {
            if let Some(e) = enc.encoder.take() {
                e.finish(&mut enc.out)?;
            }
            // The scratch buffer is not needed any more.
            enc.scratch = Vec::new();
        }
        if !enc.out.is_empty() && (enc.out.len() >= CHUNK_MIN || self.remaining == 0) {
            out.extend(format!("{:x}\r\n", enc.out.len()).as_bytes());
            out.extend(&enc.out);
            out.extend(b"\r\n");
            enc.out.clear();
        }
        if self.remaining == 0 && enc.out.is_empty() {
            out.extend(b"0\r\n\r\n");
            self.done = true;
        }
        Ok(read)
    }
}

fn shrank() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "file shrank while it was being sent",
    )
}

/// Positioned reads (pread) as a `Read`: the body keeps its own offset, whatever the fd's.
struct At<'a> {
    file: &'a File,
    offset: u64,
}

impl io::Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.offset)?;
        self.offset += n as u64;
        Ok(n)
    }
}
