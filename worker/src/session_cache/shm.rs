//! The worker's only `unsafe` for the shared session cache: the `MAP_SHARED` mapping of the
//! master's memfd, and atomic views of its words.
//!
//! Other processes (every worker, of this binary and the next) write the same memory at the
//! same time, so no plain reference to it is ever made: every access is an atomic load or store
//! of an aligned `u32` or `u64`. Bytes are copied word by word, relaxed; the slot's lock word
//! (acquire to take, release to give back, see the parent module) orders them.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// A shared, read-write mapping of a whole memfd; unmapped when dropped.
pub struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is memory like any other, shared with other processes; this type only
// hands out atomic views of it (`AtomicU32`/`AtomicU64` are `Sync`), so using it from several
// threads, or dropping it on another, is as sound as for those atomics.
unsafe impl Send for Mapping {}
// SAFETY: as for `Send` above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Map `len` bytes of `fd` from its start, shared and read-write. The caller has checked
    /// that the file is at least that large and cannot shrink (a sealed memfd), so no access
    /// within the mapping can fault.
    pub fn map(fd: BorrowedFd<'_>, len: usize) -> io::Result<Mapping> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty mapping"));
        }
        // SAFETY: a new mapping chosen by the kernel (null hint), over no existing memory;
        // `fd` is open for the call (borrowed). The result is checked before any use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null mapping"))?;
        Ok(Mapping { base, len })
    }

    /// The `u32` at `offset` (4-aligned, inside the mapping: a violation is a bug of the
    /// caller's layout arithmetic, and panics rather than touch memory outside).
    pub fn u32_at(&self, offset: usize) -> &AtomicU32 {
        assert!(
            offset & 3 == 0 && offset.checked_add(4).is_some_and(|end| end <= self.len),
            "u32 at {offset} outside a mapping of {}",
            self.len
        );
        // SAFETY: in bounds and 4-aligned (checked above; the base is page-aligned), so the
        // pointer is valid for an `AtomicU32` as long as `&self` lives (the mapping is only
        // removed by `drop`). Every access to this memory, here and in the other processes,
        // is atomic, which is what `from_ptr` requires of concurrent accesses.
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(offset).cast::<u32>()) }
    }

    /// The `u64` at `offset` (8-aligned, inside the mapping; as [`Mapping::u32_at`]).
    pub fn u64_at(&self, offset: usize) -> &AtomicU64 {
        assert!(
            offset & 7 == 0 && offset.checked_add(8).is_some_and(|end| end <= self.len),
            "u64 at {offset} outside a mapping of {}",
            self.len
        );
        // SAFETY: as in `u32_at`, for 8 bytes at an 8-aligned offset.
        unsafe { AtomicU64::from_ptr(self.base.as_ptr().add(offset).cast::<u64>()) }
    }

    /// Copy `out.len()` bytes from `offset` (8-aligned), word by word. The last word is read
    /// whole, so the words covering `offset..offset + out.len()` must be inside the mapping.
    pub fn load_bytes(&self, offset: usize, out: &mut [u8]) {
        for (i, chunk) in out.chunks_mut(8).enumerate() {
            let word = self.u64_at(offset + 8 * i).load(Ordering::Relaxed);
            chunk.copy_from_slice(&word.to_ne_bytes()[..chunk.len()]);
        }
    }

    /// Write `bytes` at `offset` (8-aligned), word by word; the rest of the last word is
    /// zeroed.
    pub fn store_bytes(&self, offset: usize, bytes: &[u8]) {
        for (i, chunk) in bytes.chunks(8).enumerate() {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.u64_at(offset + 8 * i)
                .store(u64::from_ne_bytes(word), Ordering::Relaxed);
        }
    }

    /// Zero `len` bytes from `offset` (8-aligned), rounded up to whole words.
    pub fn zero(&self, offset: usize, len: usize) {
        for i in 0..len.div_ceil(8) {
            self.u64_at(offset + 8 * i).store(0, Ordering::Relaxed);
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: exactly the range `map` created, unmapped once; no view of it outlives
        // `&self` (every reference handed out borrows the mapping).
        let rc = unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
        debug_assert_eq!(rc, 0, "munmap: {}", io::Error::last_os_error());
    }
}
