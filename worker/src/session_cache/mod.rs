//! The TLS session cache every worker shares (`docs/design/session-cache.md`), nginx's
//! `ssl_session_cache shared:` in spirit: a client resuming by session id (TLS 1.2 without a
//! ticket, or TLS 1.3 stateful resumption when tickets are off) resumes on whichever worker
//! its connection lands on, and after a rolling upgrade on the new binary's workers, since
//! the master hands the same segment to every worker and to the next master.
//!
//! The segment is a memfd the master made (`zentinel_protocol::session_cache`, which also
//! describes its layout), mapped here once per process ([`shm`], this feature's only
//! `unsafe`). It is a table of fixed slots in buckets of `WAYS`; each slot has a lock word
//! that a process takes by writing its pid, with a bounded spin: the event loop never blocks
//! on another process. A slot that stays busy is skipped (a miss, or a store elsewhere in
//! the bucket), and counted. A lock left behind by a process that died holding it is taken
//! over once that process is gone, and its slot erased (it may be half written).
//!
//! Sessions are secrets (their master secret resumes the connection): a slot is zeroed when
//! its session is taken (TLS 1.3 stateful tickets are single-use), found expired, or
//! overwritten by a shorter one. Each store also sweeps the next bucket (a cursor shared by
//! every process) for expired sessions, so that none lingers long after its timeout.

#[allow(unsafe_code)]
pub(crate) mod shm;
#[cfg(test)]
mod tests;

use std::fmt;
use std::hint::spin_loop;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::time::{clock_gettime, ClockId};
use nix::unistd::Pid;
use tracing::{info, warn};
use zentinel_protocol::messages::WorkerStart;
use zentinel_protocol::session_cache::{
    bucket_of, check_segment, counter, slot, CacheCounters, Geometry, SessionCacheHandle,
    MAX_KEY_BYTES, MAX_VALUE_BYTES, SWEEP_CURSOR_OFFSET, WAYS,
};
use zeroize::Zeroize;

use shm::Mapping;

/// Attempts at a busy lock before giving up on the slot. A holder copies at most a few KiB,
/// well under a microsecond; a holder that takes longer was preempted, and waiting for it
/// would stall the event loop for a scheduler tick.
const SPINS: u32 = 64;

/// The shared session cache, as rustls's `StoresServerSessions`.
pub struct SharedSessionCache {
    map: Mapping,
    geometry: Geometry,
    /// What this process writes into a lock word it takes.
    pid: u32,
}

impl fmt::Debug for SharedSessionCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedSessionCache")
            .field("bytes", &self.geometry.segment_bytes)
            .field("slots", &self.geometry.slots())
            .field("timeout_s", &self.geometry.timeout_s)
            .finish()
    }
}

/// The memfd of the session cache that came with `ws`, taken from the end of `fds` (which
/// keeps the listeners' fds, in order). `None` when the master sent none.
pub fn split_fds(ws: &WorkerStart, fds: &mut Vec<OwnedFd>) -> Option<OwnedFd> {
    if ws.session_cache.is_some() && fds.len() > ws.listeners.len() {
        fds.pop()
    } else {
        None
    }
}

/// The cache `handle` and `fd` describe, mapped; `None` (logged) when there is none or it
/// cannot be used: TLS listeners then keep their sessions per process, as before the shared
/// cache, which costs clients landing on another worker a full handshake, nothing else.
pub fn attach(
    handle: Option<&SessionCacheHandle>,
    fd: Option<OwnedFd>,
) -> Option<Arc<SharedSessionCache>> {
    let (handle, fd) = match (handle, fd) {
        (Some(handle), Some(fd)) => (handle, fd),
        (None, _) => return None,
        (Some(_), None) => {
            warn!("the master announced a TLS session cache but sent no descriptor for it: sessions stay per worker");
            return None;
        }
    };
    match SharedSessionCache::open(fd, handle.segment_bytes) {
        Ok(cache) => {
            info!(cache = ?cache, "TLS session cache shared with every worker");
            Some(cache)
        }
        Err(reason) => {
            warn!(%reason, "cannot use the master's TLS session cache: sessions stay per worker");
            None
        }
    }
}

impl SharedSessionCache {
    /// Map the segment `fd` of `segment_bytes`, after checking it (`check_segment`: its size,
    /// its seal against shrinking, its layout). The fd is closed on return; the mapping keeps
    /// the memory.
    pub fn open(fd: OwnedFd, segment_bytes: u64) -> Result<Arc<Self>, String> {
        let geometry = check_segment(fd.as_fd(), segment_bytes)?;
        let len = usize::try_from(segment_bytes).map_err(|e| e.to_string())?;
        let map = Mapping::map(fd.as_fd(), len).map_err(|e| format!("mmap: {e}"))?;
        Ok(Arc::new(SharedSessionCache {
            map,
            geometry,
            pid: std::process::id(),
        }))
    }

    /// The counters every process has added to so far.
    pub fn counters(&self) -> CacheCounters {
        let mut bytes = [0u8; zentinel_protocol::session_cache::COUNTERS * 8];
        self.map
            .load_bytes(CacheCounters::offset(0), bytes.as_mut_slice());
        CacheCounters::from_ne_bytes(&bytes)
    }

    fn count(&self, which: usize) {
        self.map
            .u64_at(CacheCounters::offset(which))
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Store `value` under `key` at `now` (`CLOCK_MONOTONIC` seconds): into the slot of its
    /// bucket that holds `key` already, else a free or expired one, else over the oldest
    /// session. False when not stored: too large, or every slot of the bucket busy.
    fn store(&self, key: &[u8], value: &[u8], now: u64) -> bool {
        if key.is_empty() || key.len() > MAX_KEY_BYTES || value.len() > MAX_VALUE_BYTES {
            self.count(counter::TOO_LARGE);
            return false;
        }
        let bucket = bucket_of(key, self.geometry.buckets);
        // The best slot so far, still locked: at most two locks are held at once, each taken
        // without waiting, so two processes never wait on each other.
        let mut best: Option<(Held<'_>, Rank)> = None;
        for way in 0..WAYS {
            let Some(held) = self.lock(self.geometry.slot_offset(bucket, way), SPINS) else {
                self.count(counter::CONTENDED);
                continue;
            };
            let rank = match held.state(now) {
                SlotState::Live { .. } if held.holds(key) => {
                    drop(best);
                    return self.write(held, key, value, now, bucket);
                }
                SlotState::Live { inserted } => Rank::Live(inserted),
                SlotState::Expired => {
                    held.erase();
                    self.count(counter::EXPIRED);
                    Rank::Free
                }
                SlotState::Corrupt => {
                    held.erase_all();
                    Rank::Free
                }
                SlotState::Empty => Rank::Free,
            };
            if best.as_ref().is_none_or(|(_, r)| rank < *r) {
                best = Some((held, rank));
            }
        }
        let Some((held, rank)) = best else {
            return false;
        };
        if let Rank::Live(_) = rank {
            self.count(counter::EVICTIONS);
        }
        self.write(held, key, value, now, bucket)
    }

    fn write(&self, held: Held<'_>, key: &[u8], value: &[u8], now: u64, bucket: u32) -> bool {
        let expires = now.saturating_add(u64::from(self.geometry.timeout_s));
        held.write(key, value, now, expires);
        drop(held);
        self.count(counter::STORES);
        self.sweep(bucket, now);
        true
    }

    /// The session stored under `key`, if it has not expired; removed (zeroed) when `take`.
    fn find(&self, key: &[u8], now: u64, take: bool) -> Option<Vec<u8>> {
        if !key.is_empty() && key.len() <= MAX_KEY_BYTES {
            let bucket = bucket_of(key, self.geometry.buckets);
            for way in 0..WAYS {
                let Some(held) = self.lock(self.geometry.slot_offset(bucket, way), SPINS) else {
                    self.count(counter::CONTENDED);
                    continue;
                };
                match held.state(now) {
                    SlotState::Live { .. } if held.holds(key) => {
                        let value = held.value();
                        if take {
                            held.erase();
                        }
                        self.count(counter::HITS);
                        return Some(value);
                    }
                    SlotState::Expired => {
                        held.erase();
                        self.count(counter::EXPIRED);
                    }
                    SlotState::Corrupt => held.erase_all(),
                    SlotState::Live { .. } | SlotState::Empty => {}
                }
            }
        }
        self.count(counter::MISSES);
        None
    }

    /// Erase the expired sessions of the next bucket of the shared cursor (unless it is
    /// `just_done`); slots busy now are left for the next round.
    fn sweep(&self, just_done: u32, now: u64) {
        let cursor = self
            .map
            .u32_at(SWEEP_CURSOR_OFFSET)
            .fetch_add(1, Ordering::Relaxed);
        let bucket = cursor % self.geometry.buckets;
        if bucket == just_done {
            return;
        }
        for way in 0..WAYS {
            if let Some(held) = self.lock(self.geometry.slot_offset(bucket, way), 1) {
                match held.state(now) {
                    SlotState::Expired => {
                        held.erase();
                        self.count(counter::EXPIRED);
                    }
                    SlotState::Corrupt => held.erase_all(),
                    SlotState::Live { .. } | SlotState::Empty => {}
                }
            }
        }
    }

    /// Take the lock of the slot at `at`, trying `spins` times. A lock still held by a
    /// process that no longer exists is taken over, and its slot erased.
    fn lock(&self, at: usize, spins: u32) -> Option<Held<'_>> {
        let word = self.map.u32_at(at + slot::LOCK);
        for _ in 0..spins {
            if word
                .compare_exchange_weak(0, self.pid, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return Some(Held { cache: self, at });
            }
            spin_loop();
        }
        let holder = word.load(Ordering::Relaxed);
        // Our own pid: another thread of this process holds it (never a lock of ours left
        // behind: every one is released when its `Held` drops, panics included).
        if holder == 0 || holder == self.pid || process_exists(holder) {
            return None;
        }
        word.compare_exchange(holder, self.pid, Ordering::Acquire, Ordering::Relaxed)
            .ok()?;
        // Its holder may have died half-way through a write: nothing in it can be trusted,
        // and a longer value it was writing may lie past the recorded length.
        let held = Held { cache: self, at };
        held.erase_all();
        Some(held)
    }
}

/// Whether process `pid` exists (a signal 0 reaches it, or it is someone else's).
fn process_exists(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return true; // not a pid: leave the lock alone
    };
    !matches!(kill(Pid::from_raw(raw), None), Err(Errno::ESRCH))
}

/// Seconds of `CLOCK_MONOTONIC`: one clock for every process of the machine, unmoved by
/// changes of the wall clock.
fn monotonic_s() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(|t| u64::try_from(t.tv_sec()).unwrap_or(0))
        .unwrap_or(0)
}

/// Which slot a store prefers: a free one, else the oldest session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    Free,
    Live(u64),
}

enum SlotState {
    Empty,
    /// Lengths no writer would leave: erased on sight.
    Corrupt,
    Expired,
    Live {
        inserted: u64,
    },
}

/// A slot whose lock this process holds; released when dropped.
struct Held<'a> {
    cache: &'a SharedSessionCache,
    at: usize,
}

impl Held<'_> {
    fn u32(&self, field: usize) -> u32 {
        self.cache
            .map
            .u32_at(self.at + field)
            .load(Ordering::Relaxed)
    }

    fn u64(&self, field: usize) -> u64 {
        self.cache
            .map
            .u64_at(self.at + field)
            .load(Ordering::Relaxed)
    }

    fn set_u32(&self, field: usize, value: u32) {
        self.cache
            .map
            .u32_at(self.at + field)
            .store(value, Ordering::Relaxed);
    }

    fn set_u64(&self, field: usize, value: u64) {
        self.cache
            .map
            .u64_at(self.at + field)
            .store(value, Ordering::Relaxed);
    }

    fn state(&self, now: u64) -> SlotState {
        let (key_len, value_len) = (self.u32(slot::KEY_LEN), self.u32(slot::VALUE_LEN));
        if key_len == 0 {
            SlotState::Empty
        } else if key_len as usize > MAX_KEY_BYTES || value_len as usize > MAX_VALUE_BYTES {
            SlotState::Corrupt
        } else if now >= self.u64(slot::EXPIRES) {
            SlotState::Expired
        } else {
            SlotState::Live {
                inserted: self.u64(slot::INSERTED),
            }
        }
    }

    /// Whether the slot holds `key` (its lengths checked by `state` first).
    fn holds(&self, key: &[u8]) -> bool {
        if self.u32(slot::KEY_LEN) as usize != key.len() {
            return false;
        }
        let mut stored = [0u8; MAX_KEY_BYTES];
        self.cache
            .map
            .load_bytes(self.at + slot::KEY, &mut stored[..key.len()]);
        stored[..key.len()] == *key
    }

    fn value(&self) -> Vec<u8> {
        let len = (self.u32(slot::VALUE_LEN) as usize).min(MAX_VALUE_BYTES);
        let mut value = vec![0u8; len];
        self.cache.map.load_bytes(self.at + slot::VALUE, &mut value);
        value
    }

    /// Fill the slot; what a longer previous value left after the new one is zeroed.
    fn write(&self, key: &[u8], value: &[u8], inserted: u64, expires: u64) {
        let map = &self.cache.map;
        let before = (self.u32(slot::VALUE_LEN) as usize).min(MAX_VALUE_BYTES);
        let mut padded = [0u8; MAX_KEY_BYTES];
        padded[..key.len()].copy_from_slice(key);
        map.store_bytes(self.at + slot::KEY, &padded);
        map.store_bytes(self.at + slot::VALUE, value);
        let written = value.len().next_multiple_of(8);
        if before > written {
            map.zero(self.at + slot::VALUE + written, before - written);
        }
        // Both lengths fit a u32: checked against the maxima by `store`.
        self.set_u32(slot::KEY_LEN, u32::try_from(key.len()).unwrap_or(0));
        self.set_u32(slot::VALUE_LEN, u32::try_from(value.len()).unwrap_or(0));
        self.set_u64(slot::INSERTED, inserted);
        self.set_u64(slot::EXPIRES, expires);
    }

    /// Zero the slot: key, value (as long as recorded), lengths and times.
    fn erase(&self) {
        self.erase_value((self.u32(slot::VALUE_LEN) as usize).min(MAX_VALUE_BYTES));
    }

    /// Zero the slot, its whole value area included: for a slot whose lengths cannot be
    /// trusted.
    fn erase_all(&self) {
        self.erase_value(MAX_VALUE_BYTES);
    }

    fn erase_value(&self, value_len: usize) {
        let map = &self.cache.map;
        map.zero(self.at + slot::KEY, MAX_KEY_BYTES);
        map.zero(self.at + slot::VALUE, value_len);
        self.set_u32(slot::KEY_LEN, 0);
        self.set_u32(slot::VALUE_LEN, 0);
        self.set_u64(slot::INSERTED, 0);
        self.set_u64(slot::EXPIRES, 0);
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.cache
            .map
            .u32_at(self.at + slot::LOCK)
            .store(0, Ordering::Release);
    }
}

impl rustls::server::StoresServerSessions for SharedSessionCache {
    fn put(&self, key: Vec<u8>, mut value: Vec<u8>) -> bool {
        let stored = self.store(&key, &value, monotonic_s());
        // Our copy of the session's secrets: the cache holds the only one from now on.
        value.zeroize();
        stored
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.find(key, monotonic_s(), false)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.find(key, monotonic_s(), true)
    }

    fn can_cache(&self) -> bool {
        true
    }
}
