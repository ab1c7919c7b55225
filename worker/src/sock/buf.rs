//! Byte buffers with a read cursor, their storage pooled per worker.

use std::cell::RefCell;
use std::io::{self, Read};

/// Cap of each direction's buffer: a full buffer stops reading from the source.
///
/// Measured (release binaries differing only here, 1 worker, `zentinel-load` 64 keep-alive
/// connections, 3 alternating rounds, medians; docs/design/data-path.md): 16 KiB lost 24 % of
/// the 64 KiB-body throughput (10,775 against 14,251 req/s: four reads and writes per body
/// instead of one) and 10 % on connection-per-request; 256 KiB gained nothing (12,205 req/s
/// on 64 KiB bodies, 38,814 against 38,763 on 1 KiB) for four times the memory a slow reader
/// may pin.
pub const BUF_CAP: usize = 64 * 1024;
/// Size of a buffer taken from the pool: a request or response head and a small body fit.
/// Buffers grow beyond it (up to the caller's cap) only while a large body streams.
///
/// Measured as [`BUF_CAP`]: 4 KiB blocks were level on 1 KiB bodies (40,987 against 38,763
/// req/s, within the rounds' spread) and 11 % slower on 64 KiB bodies (more growth steps).
pub(super) const BLOCK: usize = 16 * 1024;
/// Free buffers the worker keeps for reuse: enough for the connections busy at any one
/// moment to take theirs without calling the allocator, small next to the 10 MiB idle budget.
const POOL_MAX_BYTES: usize = 2 * 1024 * 1024;

/// The worker's free buffers. Every buffer is fully initialized (its `len` is its size), so
/// reads go straight into it without zeroing or unsafe code, and without a copy.
///
/// A connection holds buffers only while bytes wait in them: an idle keep-alive connection
/// owns none, so its cost is the session struct and the kernel socket.
struct BufPool {
    free: Vec<Vec<u8>>,
    bytes: usize,
}

thread_local! {
    static POOL: RefCell<BufPool> = const {
        RefCell::new(BufPool { free: Vec::new(), bytes: 0 })
    };
}

fn pool_get() -> Vec<u8> {
    POOL.try_with(|p| {
        let mut p = p.borrow_mut();
        let v = p.free.pop()?;
        p.bytes -= v.len();
        Some(v)
    })
    .ok()
    .flatten()
    .unwrap_or_else(|| vec![0; BLOCK])
}

fn pool_put(v: Vec<u8>) {
    if v.len() < BLOCK {
        return;
    }
    // Past the budget the buffer is freed: after a burst the pool shrinks back by itself.
    let _ = POOL.try_with(|p| {
        let mut p = p.borrow_mut();
        if p.bytes + v.len() <= POOL_MAX_BYTES {
            p.bytes += v.len();
            p.free.push(v);
        }
    });
}

/// Bytes waiting to be written (or parsed): `data[start..end]`. The storage comes from the
/// worker's pool when the first byte arrives and goes back as soon as the buffer is empty.
#[derive(Debug, Default)]
pub struct Buf {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl Drop for Buf {
    fn drop(&mut self) {
        pool_put(std::mem::take(&mut self.data));
    }
}

impl Buf {
    pub fn new() -> Self {
        Buf::default()
    }
    pub fn len(&self) -> usize {
        self.end - self.start
    }
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
    pub fn as_slice(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }
    /// Storage held (0 when empty): what this buffer costs its connection.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.data.len()
    }
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.clear();
        }
    }
    pub fn extend(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.reserve(bytes.len());
        self.data[self.end..self.end + bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
    }
    /// Empty the buffer and give its storage back to the pool.
    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
        pool_put(std::mem::take(&mut self.data));
    }
    /// Move everything into a new buffer, leaving this one empty.
    pub fn take(&mut self) -> Buf {
        std::mem::take(self)
    }
    /// Make room for at least `extra` more bytes after `end`.
    fn reserve(&mut self, extra: usize) {
        if self.data.len() - self.end >= extra {
            return;
        }
        if self.data.is_empty() {
            self.data = pool_get();
        }
        // Slide the pending bytes to the front when that makes enough room.
        if self.start > 0 && self.data.len() - self.len() >= extra {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let need = self.end + extra;
        if need > self.data.len() {
            self.data.resize(need.max(self.data.len() * 2), 0);
        }
    }
    /// One `read` from `r` into spare room (at most `max` bytes, `max > 0`): what the reader
    /// returns, with the bytes appended. For readers that are not a socket (TLS plaintext).
    pub fn read_from<R: Read>(&mut self, r: &mut R, max: usize) -> io::Result<usize> {
        let spare = self.spare(max);
        let n = r.read(spare)?;
        self.end += n;
        Ok(n)
    }
    /// `n` bytes were written into the room [`spare`](Self::spare) gave: they are data now.
    pub(super) fn filled(&mut self, n: usize) {
        self.end += n;
    }
    /// Spare room at the end, at most `max` bytes (and at least one when `max > 0`).
    pub(super) fn spare(&mut self, max: usize) -> &mut [u8] {
        let room = self.data.len() - self.end;
        if room == 0 {
            self.reserve(max.min(BLOCK));
        }
        let room = self.data.len() - self.end;
        let end = self.end;
        &mut self.data[end..end + room.min(max)]
    }
}
