//! The TLS session cache every worker shares (`docs/design/session-cache.md`): one shared-memory
//! segment (a memfd) that the master makes and hands to each worker with its listeners, and to
//! the next master across a binary upgrade. This module is the segment's layout, a contract
//! between binaries: the segment outlives the binary that made it, so workers of the next
//! release read the sessions this one's workers stored.
//!
//! Layout (offsets in bytes; every slot and every field naturally aligned):
//!
//! - `0..HEADER_BYTES`: the header. The first [`HEADER_FIELDS_BYTES`] are written once by the
//!   master, little-endian ([`encode_header`]); the cache's counters follow at
//!   [`COUNTERS_OFFSET`] (native-endian `u64` atomics, [`CacheCounters`]), then the sweep
//!   cursor at [`SWEEP_CURSOR_OFFSET`] (a `u32` atomic).
//! - then `buckets * WAYS` slots of [`SLOT_BYTES`], bucket by bucket. A key's bucket is
//!   [`bucket_of`]. A slot is its lock word (`u32` atomic: 0 free, else the holder's pid), the
//!   key and value lengths (`u32`; key length 0: empty), the insertion and expiry times
//!   (`u64`, `CLOCK_MONOTONIC` seconds, one clock for every process of the machine), the key
//!   (up to [`MAX_KEY_BYTES`]) at [`slot::KEY`] and the value (up to [`MAX_VALUE_BYTES`]) at
//!   [`slot::VALUE`].
//!
//! A change of any of this is a new [`LAYOUT_VERSION`]: a master never adopts, and a worker
//! never maps, a segment of another layout (the master makes a fresh one instead).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rkyv::{Archive, Deserialize, Serialize};

use crate::sealed_memfd;

/// The first 8 bytes of every segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"ZNTLSESS";
/// The layout described above. Bump it on any change.
pub const LAYOUT_VERSION: u32 = 1;

/// The segment's size. As many sessions as nginx's `ssl_session_cache shared:SSL:1m` example
/// holds (about 4,000), but each with room for a client-certificate chain (4 KiB), so mutual
/// TLS sessions resume too. A memfd's pages take memory only once written: the cost is one
/// page per session actually stored, at most this.
pub const DEFAULT_SEGMENT_BYTES: u64 = 16 << 20;
/// How long a stored session may be resumed: nginx's `ssl_session_timeout` default.
pub const DEFAULT_TIMEOUT_S: u32 = 300;

/// The header: one page, so that every slot starts on a page of its own.
pub const HEADER_BYTES: usize = 4096;
/// The fields the master writes at creation ([`encode_header`]).
pub const HEADER_FIELDS_BYTES: usize = 64;
/// Where the counters start ([`CacheCounters`], native-endian `u64` atomics).
pub const COUNTERS_OFFSET: usize = 64;
/// How many counters there are.
pub const COUNTERS: usize = 7;
/// The sweep cursor (`u32` atomic): the next bucket a store sweeps for expired sessions.
pub const SWEEP_CURSOR_OFFSET: usize = COUNTERS_OFFSET + COUNTERS * 8;

/// One slot: one page, so a session costs one page of memory and never shares a cache line
/// with another slot's lock.
pub const SLOT_BYTES: usize = 4096;
/// Slots per bucket: a key may sit in any of its bucket's slots; a store into a full bucket
/// overwrites the oldest.
pub const WAYS: u32 = 4;
/// The longest key stored (TLS 1.2 session ids and rustls's TLS 1.3 stateful ids: 32 bytes).
pub const MAX_KEY_BYTES: usize = 32;
/// The longest value stored: what a slot leaves after its fields. A larger session (a long
/// client-certificate chain) is not cached, and counted ([`CacheCounters::too_large`]).
pub const MAX_VALUE_BYTES: usize = SLOT_BYTES - slot::VALUE;

// The layout's own consistency, checked when this builds: the counters and the cursor fit the
// header, keys and values are copied by whole words (`& 7`: `is_multiple_of` is newer than
// our MSRV), slots start on pages of their own.
const _: () = assert!(
    SWEEP_CURSOR_OFFSET + 4 <= HEADER_BYTES
        && COUNTERS_OFFSET >= HEADER_FIELDS_BYTES
        && MAX_KEY_BYTES & 7 == 0
        && MAX_VALUE_BYTES & 7 == 0
        && slot::KEY + MAX_KEY_BYTES <= slot::VALUE
        && HEADER_BYTES == SLOT_BYTES
        && SLOT_BYTES & 4095 == 0
);

/// Offsets of a slot's fields from the slot's start.
pub mod slot {
    /// The lock word (`u32` atomic): 0 free, else the pid of the process holding it.
    pub const LOCK: usize = 0;
    /// The key's length (`u32`); 0: the slot is empty.
    pub const KEY_LEN: usize = 4;
    /// The value's length (`u32`).
    pub const VALUE_LEN: usize = 8;
    /// When the session was stored (`u64`, `CLOCK_MONOTONIC` seconds).
    pub const INSERTED: usize = 16;
    /// When it expires (`u64`, `CLOCK_MONOTONIC` seconds).
    pub const EXPIRES: usize = 24;
    /// The key's bytes.
    pub const KEY: usize = 32;
    /// The value's bytes, up to the end of the slot.
    pub const VALUE: usize = 64;
}

/// How a segment of a given size is divided, and how long its sessions live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// The segment's size in bytes.
    pub segment_bytes: u64,
    /// Buckets of [`WAYS`] slots.
    pub buckets: u32,
    /// Seconds a session may be resumed after it was stored.
    pub timeout_s: u32,
}

impl Geometry {
    /// The geometry of a segment of `segment_bytes`, or `None` when it cannot hold the header
    /// and one bucket (or is too large to address).
    pub fn for_segment(segment_bytes: u64, timeout_s: u32) -> Option<Geometry> {
        let usable = usize::try_from(segment_bytes)
            .ok()?
            .checked_sub(HEADER_BYTES)?;
        let buckets = u32::try_from(usable / (SLOT_BYTES * WAYS as usize)).ok()?;
        (buckets > 0 && timeout_s > 0).then_some(Geometry {
            segment_bytes,
            buckets,
            timeout_s,
        })
    }

    /// Where slot `way` of `bucket` starts.
    pub fn slot_offset(&self, bucket: u32, way: u32) -> usize {
        HEADER_BYTES + (bucket as usize * WAYS as usize + way as usize) * SLOT_BYTES
    }

    /// How many sessions the segment holds.
    pub fn slots(&self) -> u64 {
        u64::from(self.buckets) * u64::from(WAYS)
    }
}

/// The bucket of `key`: FNV-1a 64 of its bytes, modulo the bucket count. Not keyed: every
/// process and every binary must agree on it, and the keys stored are random ids the server
/// drew (a client choosing the ids it asks for can only pick buckets to miss in).
pub fn bucket_of(key: &[u8], buckets: u32) -> u32 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = key.iter().fold(OFFSET_BASIS, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(PRIME)
    });
    // The remainder is below `buckets`, a u32.
    u32::try_from(hash % u64::from(buckets.max(1))).unwrap_or(0)
}

/// The header fields the master writes into a new segment (the rest of it is zero: counters
/// at 0, the sweep at bucket 0, every slot free and empty).
pub fn encode_header(geometry: &Geometry) -> [u8; HEADER_FIELDS_BYTES] {
    let mut header = [0u8; HEADER_FIELDS_BYTES];
    let mut put = |at: usize, bytes: &[u8]| header[at..at + bytes.len()].copy_from_slice(bytes);
    put(0, &SEGMENT_MAGIC);
    put(8, &LAYOUT_VERSION.to_le_bytes());
    put(12, &field(HEADER_BYTES).to_le_bytes());
    put(16, &field(SLOT_BYTES).to_le_bytes());
    put(20, &WAYS.to_le_bytes());
    put(24, &geometry.buckets.to_le_bytes());
    put(28, &geometry.timeout_s.to_le_bytes());
    put(32, &field(MAX_KEY_BYTES).to_le_bytes());
    put(36, &field(slot::VALUE).to_le_bytes());
    put(40, &geometry.segment_bytes.to_le_bytes());
    header
}

/// A layout constant as the `u32` the header stores (all are far below `u32::MAX`).
fn field(value: usize) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

/// Check the header fields of a segment of `segment_bytes` (its size as the kernel reports
/// it) against this build's layout; the geometry to use, or why the segment is not one this
/// build can share.
pub fn decode_header(header: &[u8], segment_bytes: u64) -> Result<Geometry, String> {
    let Some(header) = header.get(..HEADER_FIELDS_BYTES) else {
        return Err(format!("header of {} bytes", header.len()));
    };
    if header[..8] != SEGMENT_MAGIC {
        return Err("not a Zentinel session cache (bad magic number)".to_owned());
    }
    let u32_at = |at: usize| {
        let mut bytes = [0u8; 4];
        bytes.copy_from_slice(&header[at..at + 4]);
        u32::from_le_bytes(bytes)
    };
    let mut size = [0u8; 8];
    size.copy_from_slice(&header[40..48]);
    let recorded_bytes = u64::from_le_bytes(size);
    let version = u32_at(8);
    if version != LAYOUT_VERSION {
        return Err(format!(
            "layout version {version}, this build shares version {LAYOUT_VERSION}"
        ));
    }
    if recorded_bytes != segment_bytes {
        return Err(format!(
            "made for {recorded_bytes} bytes, but the segment has {segment_bytes}"
        ));
    }
    let geometry = Geometry::for_segment(segment_bytes, u32_at(28))
        .ok_or_else(|| format!("a segment of {segment_bytes} bytes holds no bucket"))?;
    let expected = [
        (12, field(HEADER_BYTES), "header size"),
        (16, field(SLOT_BYTES), "slot size"),
        (20, WAYS, "slots per bucket"),
        (24, geometry.buckets, "bucket count"),
        (32, field(MAX_KEY_BYTES), "key size"),
        (36, field(slot::VALUE), "value offset"),
    ];
    for (at, want, what) in expected {
        let found = u32_at(at);
        if found != want {
            return Err(format!("{what} {found}, expected {want}"));
        }
    }
    Ok(geometry)
}

/// The cache's counters, over every process that ever used the segment (they live in it, so
/// they survive worker restarts and binary upgrades along with the sessions).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheCounters {
    /// Look-ups that found the session.
    pub hits: u64,
    /// Look-ups that did not (never stored, expired, evicted, or its slot busy).
    pub misses: u64,
    /// Sessions stored.
    pub stores: u64,
    /// Sessions not stored: larger than [`MAX_VALUE_BYTES`] (or a key over
    /// [`MAX_KEY_BYTES`]).
    pub too_large: u64,
    /// Live sessions overwritten by a store into their full bucket (the oldest goes).
    pub evictions: u64,
    /// Slots skipped because another process held their lock longer than a bounded spin.
    pub contended: u64,
    /// Expired sessions found and erased.
    pub expired: u64,
}

/// Indices of the counters in the segment ([`CacheCounters::offset`]), in the order of
/// [`CacheCounters`]'s fields.
pub mod counter {
    /// [`super::CacheCounters::hits`].
    pub const HITS: usize = 0;
    /// [`super::CacheCounters::misses`].
    pub const MISSES: usize = 1;
    /// [`super::CacheCounters::stores`].
    pub const STORES: usize = 2;
    /// [`super::CacheCounters::too_large`].
    pub const TOO_LARGE: usize = 3;
    /// [`super::CacheCounters::evictions`].
    pub const EVICTIONS: usize = 4;
    /// [`super::CacheCounters::contended`].
    pub const CONTENDED: usize = 5;
    /// [`super::CacheCounters::expired`].
    pub const EXPIRED: usize = 6;
}

impl CacheCounters {
    /// Counter `i`'s offset in the segment, in the order of the fields above.
    pub fn offset(i: usize) -> usize {
        COUNTERS_OFFSET + 8 * i
    }

    /// The counters from the bytes at [`COUNTERS_OFFSET`] (native-endian, as the atomics
    /// store them; the segment never leaves the machine).
    pub fn from_ne_bytes(bytes: &[u8; COUNTERS * 8]) -> CacheCounters {
        let at = |i: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[8 * i..8 * i + 8]);
            u64::from_ne_bytes(word)
        };
        CacheCounters {
            hits: at(0),
            misses: at(1),
            stores: at(2),
            too_large: at(3),
            evictions: at(4),
            contended: at(5),
            expired: at(6),
        }
    }
}

/// A new, empty segment of `geometry`: an anonymous memfd (close-on-exec; it lives in memory
/// only and is never written to a file), sized with `ftruncate` (zero-filled: every slot free
/// and empty, the counters at 0), its header written, then sealed (see `sealed_memfd`). What the master
/// calls before it starts any worker.
pub fn create_segment(geometry: &Geometry) -> io::Result<OwnedFd> {
    let header = encode_header(geometry);
    sealed_memfd::create(
        "zentinel-tls-sessions",
        geometry.segment_bytes,
        &header,
        "session cache",
    )
}

/// Check that `fd` is a segment this build can share: a memfd of exactly `segment_bytes`,
/// sealed against shrinking, with this build's layout in its header. Its geometry, or why not.
/// The master checks an inherited segment with it, and each worker before it maps one.
pub fn check_segment(fd: BorrowedFd<'_>, segment_bytes: u64) -> Result<Geometry, String> {
    let header = sealed_memfd::read_header::<HEADER_FIELDS_BYTES>(fd, segment_bytes)?;
    decode_header(&header, segment_bytes)
}

/// The counters of the segment behind `fd`, read with `pread` (the master never maps it). A
/// counter may be read while a worker adds to it: each is one aligned word, and a scrape only
/// needs a recent value.
pub fn read_counters(fd: impl AsFd) -> io::Result<CacheCounters> {
    let bytes =
        sealed_memfd::read_at::<{ COUNTERS * 8 }>(fd, COUNTERS_OFFSET, "session cache counters")?;
    Ok(CacheCounters::from_ne_bytes(&bytes))
}

/// The session cache a worker is handed in its `Start` and each `Reconfigure`: its memfd is
/// the last fd of the frame, after the listeners'.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct SessionCacheHandle {
    /// The segment's size (the worker checks the fd against it before mapping it).
    pub segment_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::uio::pwrite;

    #[test]
    fn the_default_segment_holds_a_few_thousand_sessions_of_a_page_each() {
        let g = Geometry::for_segment(DEFAULT_SEGMENT_BYTES, DEFAULT_TIMEOUT_S).unwrap();
        assert_eq!(g.buckets, 1023);
        assert_eq!(g.slots(), 4092);
        let last = g.slot_offset(g.buckets - 1, WAYS - 1) + SLOT_BYTES;
        assert!(last as u64 <= DEFAULT_SEGMENT_BYTES);
        assert_eq!(MAX_VALUE_BYTES, 4032);
        assert!(Geometry::for_segment(HEADER_BYTES as u64, 300).is_none());
        assert!(Geometry::for_segment(DEFAULT_SEGMENT_BYTES, 0).is_none());
    }

    #[test]
    fn a_header_decodes_only_for_its_own_size_and_layout() {
        let g = Geometry::for_segment(1 << 20, 60).unwrap();
        let header = encode_header(&g);
        assert_eq!(decode_header(&header, 1 << 20), Ok(g));
        assert!(decode_header(&header, 2 << 20)
            .unwrap_err()
            .contains("made for 1048576 bytes"));
        let mut other = header;
        other[8] = 2;
        assert!(decode_header(&other, 1 << 20)
            .unwrap_err()
            .contains("layout version 2"));
        let mut other = header;
        other[17] = 0;
        assert!(decode_header(&other, 1 << 20)
            .unwrap_err()
            .contains("slot size"));
        assert!(decode_header(&[0; 64], 1 << 20)
            .unwrap_err()
            .contains("magic"));
        assert!(decode_header(&header[..10], 1 << 20).is_err());
    }

    #[test]
    fn a_new_segment_is_sealed_checked_and_counts_from_zero() {
        let g = Geometry::for_segment(1 << 20, 60).unwrap();
        let fd = create_segment(&g).unwrap();
        assert_eq!(check_segment(fd.as_fd(), 1 << 20), Ok(g));
        assert!(check_segment(fd.as_fd(), 2 << 20)
            .unwrap_err()
            .contains("announced as 2097152"));
        assert_eq!(read_counters(&fd).unwrap(), CacheCounters::default());
        // Sealed: it can neither shrink nor grow.
        assert!(nix::unistd::ftruncate(&fd, 4096).is_err());
        assert!(nix::unistd::ftruncate(&fd, 2 << 20).is_err());
        // A counter written in place is read back.
        let offset = i64::try_from(CacheCounters::offset(counter::STORES)).unwrap();
        pwrite(&fd, &7u64.to_ne_bytes(), offset).unwrap();
        assert_eq!(read_counters(&fd).unwrap().stores, 7);
        // Any other file is refused.
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        let size = file.metadata().unwrap().len();
        assert!(check_segment(file.as_fd(), size).is_err());
    }

    #[test]
    fn buckets_spread_and_stay_in_range() {
        let mut used = std::collections::BTreeSet::new();
        for i in 0u32..4000 {
            let key = i.to_le_bytes().repeat(8);
            let b = bucket_of(&key, 1023);
            assert!(b < 1023);
            used.insert(b);
        }
        assert!(used.len() > 900, "{} buckets used", used.len());
        assert_eq!(bucket_of(b"anything", 1), 0);
    }
}
