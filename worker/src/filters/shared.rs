//! A filter's shared segment (`zentinel_protocol::filter_shm`, `docs/design/filters.md`):
//! its counters, and a rate limit's GCRA table, in memory every worker of the instance maps,
//! of this binary and of the next during a rolling upgrade.
//!
//! The table keeps one slot per key: the key's hash and its "theoretical arrival time" (TAT,
//! `CLOCK_MONOTONIC` nanoseconds, one clock for every process of the machine). A request
//! conforms when `max(TAT, now) + T <= now + B * T` (`T` the interval between requests at
//! `max-rps`, `B` the burst), and is then admitted by advancing the TAT to that value with a
//! compare-and-swap: no lock, no process ever waits for another, and two workers admitting the
//! same client's requests at the same instant admit each once. A key lives in one of
//! [`PROBE`] slots from its home slot on; a key new to a full window takes the slot of the
//! stalest key there (the smallest TAT: a key whose TAT has passed is as good as new, so
//! taking its slot loses nothing; taking a live one is counted in `evictions`).
//!
//! Every access goes through [`Mapping`]'s atomic views: no reference to shared memory is ever
//! made, and no `unsafe` is written here.

use std::hash::Hasher;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::time::{clock_gettime, ClockId};
use siphasher::sip::SipHasher13;
use zentinel_protocol::config::FilterConfig;
use zentinel_protocol::filter_shm::{
    check_segment, counter, create_segment, slot, FilterCounts, Geometry, COUNTERS, PROBE,
};

use crate::session_cache::shm::Mapping;

/// Compare-and-swap rounds one request may lose to other processes before it is refused: each
/// lost round is another process's request admitted, so this bounds the work, never the rate.
const MAX_ROUNDS: usize = 64;

/// One filter's segment, mapped.
pub struct FilterShm {
    map: Mapping,
    geometry: Geometry,
    hash_key: [u64; 2],
    /// The memfd's device and inode: the same segment handed again is not mapped twice.
    identity: (u64, u64),
    /// Made by this worker (no segment from the master): its counts are this worker's only.
    private: bool,
}

impl std::fmt::Debug for FilterShm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilterShm")
            .field("bytes", &self.geometry.segment_bytes)
            .field("slots", &self.geometry.slots)
            .field("private", &self.private)
            .finish_non_exhaustive()
    }
}

/// GCRA's two numbers for one `max-rps` and `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Nanoseconds between two requests at the limit (`T`).
    pub interval_ns: u64,
    /// How far ahead of now a key's TAT may run: `burst * T`.
    pub tolerance_ns: u64,
}

impl Gcra {
    pub fn new(max_rps: u32, burst: u32) -> Gcra {
        let interval_ns = 1_000_000_000 / u64::from(max_rps.max(1));
        Gcra {
            interval_ns,
            tolerance_ns: interval_ns.saturating_mul(u64::from(burst.max(1))),
        }
    }
}

/// What the table said of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Take {
    /// The request's place is taken (the key's TAT advanced): it may go now when `wait_ns`
    /// is 0, else after `wait_ns`.
    pub admitted: bool,
    /// How long until the request conforms (0: now).
    pub wait_ns: u64,
    /// The key's TAT after this request (unchanged when not admitted).
    pub tat: u64,
}

impl FilterShm {
    /// Map the master's segment `fd` of `segment_bytes` (checked first); the fd is closed on
    /// return, the mapping keeps the memory.
    pub fn open(fd: OwnedFd, segment_bytes: u64) -> Result<FilterShm, String> {
        let (geometry, hash_key) = check_segment(fd.as_fd(), segment_bytes)?;
        let identity = identity(&fd).map_err(|e| format!("fstat: {e}"))?;
        let len = usize::try_from(segment_bytes).map_err(|e| e.to_string())?;
        let map = Mapping::map(fd.as_fd(), len).map_err(|e| format!("mmap: {e}"))?;
        Ok(FilterShm {
            map,
            geometry,
            hash_key,
            identity,
            private: false,
        })
    }

    /// A segment of this worker's own for `filter` (the master sent none): the same table
    /// and counters, seen by this process only. `None` for a filter that keeps no state.
    pub fn private(filter: &FilterConfig) -> io::Result<Option<FilterShm>> {
        let Some(geometry) = Geometry::for_filter(filter) else {
            return Ok(None);
        };
        let mut key = [0u8; 16];
        getrandom::getrandom(&mut key).map_err(|e| io::Error::other(e.to_string()))?;
        let (k0, k1) = key.split_at(8);
        let hash_key = [word(k0), word(k1)];
        let fd = create_segment(&geometry, hash_key)?;
        let len = usize::try_from(geometry.segment_bytes).map_err(io::Error::other)?;
        let map = Mapping::map(fd.as_fd(), len)?;
        Ok(Some(FilterShm {
            map,
            geometry,
            hash_key,
            identity: identity(&fd)?,
            private: true,
        }))
    }

    /// Whether this segment is the one `filter` (as configured now) uses.
    pub fn serves(&self, filter: &FilterConfig) -> bool {
        self.geometry.serves(filter)
    }

    pub fn is_private(&self) -> bool {
        self.private
    }

    /// Counter `i` (`zentinel_protocol::filter_shm::counter`).
    pub fn counter(&self, i: usize) -> &AtomicU64 {
        self.map.u64_at(FilterCounts::offset(i.min(COUNTERS - 1)))
    }

    /// Every counter, as the master reads them.
    #[cfg(test)]
    pub fn counts(&self) -> FilterCounts {
        let mut bytes = [0u8; COUNTERS * 8];
        self.map.load_bytes(FilterCounts::offset(0), &mut bytes);
        FilterCounts::from_ne_bytes(&bytes)
    }

    /// The keyed hash of `parts` (each length-prefixed, so `("ab", "")` is not `("a", "b")`),
    /// never 0 (an empty slot).
    pub fn key_hash(&self, parts: &[&[u8]]) -> u64 {
        let mut h = SipHasher13::new_with_keys(self.hash_key[0], self.hash_key[1]);
        for part in parts {
            h.write(&(part.len() as u64).to_le_bytes());
            h.write(part);
        }
        h.finish().max(1)
    }

    /// One request of key `hash` at `now` (`CLOCK_MONOTONIC` ns): admitted when it conforms,
    /// or when it will within `max_wait_ns` (its place then reserved: the TAT advanced, so
    /// the requests after it wait behind it). A table-less segment admits everything.
    pub fn take(&self, hash: u64, now: u64, gcra: Gcra, max_wait_ns: u64) -> Take {
        if self.geometry.slots == 0 {
            return Take {
                admitted: true,
                wait_ns: 0,
                tat: now,
            };
        }
        for _ in 0..MAX_ROUNDS {
            let Some(at) = self.slot_of(hash, now) else {
                continue;
            };
            let cell = self.map.u64_at(at + slot::TAT);
            let mut tat = cell.load(Ordering::Acquire);
            for _ in 0..MAX_ROUNDS {
                let next = tat.max(now).saturating_add(gcra.interval_ns);
                let wait_ns = next.saturating_sub(gcra.tolerance_ns).saturating_sub(now);
                if wait_ns > max_wait_ns {
                    return Take {
                        admitted: false,
                        wait_ns,
                        tat,
                    };
                }
                match cell.compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => {
                        return Take {
                            admitted: true,
                            wait_ns,
                            tat: next,
                        }
                    }
                    Err(current) => tat = current,
                }
            }
            break;
        }
        // Lost every round to other processes (each of them admitting a request): refused.
        Take {
            admitted: false,
            wait_ns: gcra.interval_ns,
            tat: now,
        }
    }

    /// The offset of the slot holding `hash`, claimed if the key is new; `None` when another
    /// process changed the window meanwhile (look again).
    fn slot_of(&self, hash: u64, now: u64) -> Option<usize> {
        let mask = self.geometry.slots - 1;
        let home = hash & mask;
        let mut empty = None;
        // The stalest occupied slot: (offset, its hash, its TAT).
        let mut stalest: Option<(usize, u64, u64)> = None;
        for i in 0..PROBE as u64 {
            let at = self.geometry.slot_offset((home + i) & mask);
            let held = self.map.u64_at(at + slot::HASH).load(Ordering::Acquire);
            if held == hash {
                return Some(at);
            }
            if held == 0 {
                empty = empty.or(Some(at));
                continue;
            }
            let tat = self.map.u64_at(at + slot::TAT).load(Ordering::Acquire);
            if stalest.is_none_or(|(_, _, t)| tat < t) {
                stalest = Some((at, held, tat));
            }
        }
        let (at, held, tat) = match (empty, stalest) {
            (Some(at), _) => (
                at,
                0,
                self.map.u64_at(at + slot::TAT).load(Ordering::Acquire),
            ),
            (None, Some(victim)) => victim,
            (None, None) => return None,
        };
        self.map
            .u64_at(at + slot::HASH)
            .compare_exchange(held, hash, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        if held != 0 && tat > now {
            self.counter(counter::EVICTIONS)
                .fetch_add(1, Ordering::Relaxed);
        }
        // The new key starts afresh; if a request for it came in between, its TAT stands.
        let _ = self.map.u64_at(at + slot::TAT).compare_exchange(
            tat,
            0,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
        Some(at)
    }
}

#[cfg(test)]
#[path = "shared_tests.rs"]
mod tests;

fn word(bytes: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(w)
}

fn identity(fd: &OwnedFd) -> io::Result<(u64, u64)> {
    let st = nix::sys::stat::fstat(fd.as_fd())?;
    #[allow(
        clippy::useless_conversion,
        reason = "dev_t and ino_t differ by target"
    )]
    let id = (u64::from(st.st_dev), u64::from(st.st_ino));
    Ok(id)
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock every process of the machine shares, the
/// table's.
pub fn monotonic_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        let secs = u64::try_from(t.tv_sec()).unwrap_or(0);
        let nanos = u64::try_from(t.tv_nsec()).unwrap_or(0);
        secs.saturating_mul(1_000_000_000).saturating_add(nanos)
    })
}

/// The segments the master handed for the configuration to come, by filter name: mapped
/// as they arrive (`MasterMessage::FilterSegments`), taken by the next `Start` or
/// `Reconfigure`. A segment this worker maps already (the same memfd, handed again at each
/// reload that keeps the filter) is not mapped twice.
#[derive(Debug, Default)]
pub struct Segments {
    by_name: Vec<(String, Rc<FilterShm>)>,
}

impl Segments {
    /// Add the segments of one `FilterSegments` message: `handles` and their `fds`, in order.
    /// `mapped` are the segments this worker uses now. A segment that cannot be used is
    /// logged and left out: its filter keeps its state in this worker alone.
    pub fn add(
        &mut self,
        handles: &[zentinel_protocol::filter_shm::FilterSegmentHandle],
        fds: Vec<OwnedFd>,
        mapped: &[Rc<FilterShm>],
    ) {
        if handles.len() != fds.len() {
            tracing::warn!(
                segments = handles.len(),
                fds = fds.len(),
                "filter segments announced and descriptors received differ: their filters keep \
                 their counters and rate limits in this worker"
            );
            return;
        }
        for (handle, fd) in handles.iter().zip(fds) {
            let known = identity(&fd).ok().and_then(|id| {
                mapped
                    .iter()
                    .chain(self.by_name.iter().map(|(_, shm)| shm))
                    .find(|m| m.identity == id)
                    .cloned()
            });
            let shm = match known {
                Some(shm) => shm,
                None => match FilterShm::open(fd, handle.segment_bytes) {
                    Ok(shm) => Rc::new(shm),
                    Err(reason) => {
                        tracing::warn!(
                            filter = %handle.name,
                            %reason,
                            "cannot use the master's segment for this filter: its counters and \
                             rate limit stay in this worker"
                        );
                        continue;
                    }
                },
            };
            self.by_name.retain(|(n, _)| *n != handle.name);
            self.by_name.push((handle.name.clone(), shm));
        }
    }

    /// The segment handed for `filter`, when it is the one the filter (as configured) uses.
    pub fn get(&self, filter: &FilterConfig) -> Option<Rc<FilterShm>> {
        self.by_name
            .iter()
            .find(|(n, shm)| *n == filter.name && shm.serves(filter))
            .map(|(_, shm)| Rc::clone(shm))
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }
}
