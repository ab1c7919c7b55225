//! The body of a file answer, sent by the session a bounded piece at a time.
//!
//! The file was opened when the head was chosen and stays open: a file replaced (renamed
//! over) while it is sent keeps going out as the version the head described. A file that
//! shrinks under the transfer cannot keep its announced length: the caller closes the
//! connection (the client sees a short body, never bytes of another version).
//!
//! Two ways out:
//! - on a plain socket: sendfile(2), file pages straight to the socket;
//! - over TLS: read into the connection's buffer, since the bytes must be encrypted.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::sock::{Buf, Sock};

/// File bytes a body may send per turn of the event loop before other connections get theirs
/// (see `Ctx::yield_turn`). sendfile costs the worker little per byte (the kernel copies page
/// to socket); over TLS each byte is read and encrypted.
/// Each budget is well under a millisecond of the worker's time on a loopback client.
const TURN_SENDFILE: usize = 1024 * 1024;
const TURN_BUFFERED: usize = 256 * 1024;

pub struct FileBody {
    file: File,
    /// For logs.
    path: PathBuf,
    /// Next file byte to send.
    offset: u64,
    /// File bytes still to send (from `offset`).
    remaining: u64,
    done: bool,
}

impl FileBody {
    /// `len` bytes of `file` from `offset`, as they are.
    pub fn identity(file: File, path: &Path, offset: u64, len: u64) -> Self {
        FileBody {
            file,
            path: path.to_owned(),
            offset,
            remaining: len,
            done: len == 0,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every byte was handed over (to the socket, or to the buffer given to `fill`).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// File bytes this body may send in one turn (`sendfile`: it goes out by sendfile).
    pub fn turn_budget(&self, sendfile: bool) -> usize {
        if sendfile {
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

    /// Over TLS: append the next piece to `out`, reading at most `budget` file bytes.
    /// Returns the bytes read.
    pub fn fill(&mut self, out: &mut Buf, budget: usize) -> io::Result<usize> {
        let max = usize::try_from(self.remaining).map_or(budget, |r| r.min(budget));
        if max == 0 {
            return Ok(0);
        }
        let mut at = At {
            file: &self.file,
            offset: self.offset,
        };
        let n = out.read_from(&mut at, max)?;
        if n == 0 {
            return Err(shrank());
        }
        self.offset += n as u64;
        self.remaining -= n as u64;
        self.done = self.remaining == 0;
        Ok(n)
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
