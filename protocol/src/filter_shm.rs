//! The filters' shared state (`docs/design/filters.md`, "Rate limits shared by the workers"):
//! one shared-memory segment (a memfd) per filter definition that keeps counters, made by the
//! master and handed to every worker (`messages::MasterMessage::FilterSegments`, the fds after
//! the message) and to the next master across a binary upgrade (state format 8). A
//! `rate-limit` filter's segment also holds its GCRA table: one slot per key, so every worker
//! of the instance, of this binary and the next, enforces one limit.
//!
//! This module is the segment's layout, a contract between binaries (the segment outlives the
//! binary that made it):
//!
//! - `0..HEADER_BYTES`: the header. The first [`HEADER_FIELDS_BYTES`] are written once by the
//!   master, little-endian ([`encode_header`]): magic, layout version, the filter's kind,
//!   the segment's size, `max-keys`, the slot count, the probe window, the slot size, the
//!   keyed hash's two keys, the hash of the filter's name. The counters follow at
//!   [`COUNTERS_OFFSET`]: native-endian `u64` atomics ([`FilterCounts`], in the order of
//!   [`counter`]), with room for [`COUNTER_ROOM`] of them (later counters read 0 from an older
//!   segment).
//! - from [`HEADER_BYTES`]: the table, `slots` slots of [`SLOT_BYTES`]: the key's hash (`u64`
//!   atomic, 0: empty), then its GCRA "theoretical arrival time" (`u64` atomic, nanoseconds
//!   of `CLOCK_MONOTONIC`, one clock for every process of the machine). A key lives in one of
//!   the [`PROBE`] slots from `hash & (slots - 1)` on.
//!
//! A change of any of this is a new [`LAYOUT_VERSION`]: a master never adopts, and a worker
//! never maps, a segment of another layout (a fresh one is made instead).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rkyv::{Archive, Deserialize, Serialize};

use crate::config::{FilterConfig, FilterKind};
use crate::sealed_memfd;

/// The first 8 bytes of every segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"ZNFILTER";
/// The layout described above. Bump it on any change.
pub const LAYOUT_VERSION: u32 = 1;
/// The header: one page, so the table starts on a page of its own.
pub const HEADER_BYTES: usize = 4096;
/// The fields the master writes at creation ([`encode_header`]).
pub const HEADER_FIELDS_BYTES: usize = 128;
/// Where the counters start.
pub const COUNTERS_OFFSET: usize = 128;
/// How many counters this layout defines ([`counter`]).
pub const COUNTERS: usize = 12;
/// Counter words reserved: a later build may count more without a new layout.
pub const COUNTER_ROOM: usize = 32;
/// One table slot: the key's hash, then its theoretical arrival time.
pub const SLOT_BYTES: usize = 16;
/// Slots a key may occupy from its home slot on (two cache lines).
pub const PROBE: usize = 8;
/// The largest table (256 MiB of address space; a memfd's pages cost memory once written).
pub const MAX_SLOTS: u64 = 1 << 24;

const _: () = assert!(
    COUNTERS <= COUNTER_ROOM
        && COUNTERS_OFFSET >= HEADER_FIELDS_BYTES
        && COUNTERS_OFFSET + COUNTER_ROOM * 8 <= HEADER_BYTES
        && HEADER_BYTES & 4095 == 0
        && PROBE.is_power_of_two()
);

/// Offsets of a slot's fields from the slot's start.
pub mod slot {
    /// The key's hash (`u64` atomic): 0 empty.
    pub const HASH: usize = 0;
    /// The key's theoretical arrival time (`u64` atomic, `CLOCK_MONOTONIC` ns).
    pub const TAT: usize = 8;
}

/// Indices of the counters, in the order of [`FilterCounts`]'s fields.
pub mod counter {
    /// [`super::FilterCounts::limited`].
    pub const LIMITED: usize = 0;
    /// [`super::FilterCounts::delayed`].
    pub const DELAYED: usize = 1;
    /// [`super::FilterCounts::logged_only`].
    pub const LOGGED_ONLY: usize = 2;
    /// [`super::FilterCounts::evictions`].
    pub const EVICTIONS: usize = 3;
    /// [`super::FilterCounts::preflights`].
    pub const PREFLIGHTS: usize = 4;
    /// [`super::FilterCounts::redirects`].
    pub const REDIRECTS: usize = 5;
    /// [`super::FilterCounts::rewrites`].
    pub const REWRITES: usize = 6;
    /// [`super::FilterCounts::compressed`].
    pub const COMPRESSED: usize = 7;
    /// [`super::FilterCounts::compress_in`].
    pub const COMPRESS_IN: usize = 8;
    /// [`super::FilterCounts::compress_out`].
    pub const COMPRESS_OUT: usize = 9;
    /// [`super::FilterCounts::backend_errors`].
    pub const BACKEND_ERRORS: usize = 10;
    /// [`super::FilterCounts::fallbacks`].
    pub const FALLBACKS: usize = 11;
}

/// A filter's counters, summed over every worker that ever used its segment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FilterCounts {
    /// Requests refused by a rate limit.
    pub limited: u64,
    /// Requests a rate limit held back (`on-limit "delay"`).
    pub delayed: u64,
    /// Requests over the limit let through (`on-limit "log-only"`).
    pub logged_only: u64,
    /// Live keys dropped from a full probe window of the rate-limit table.
    pub evictions: u64,
    /// CORS preflights answered by the proxy.
    pub preflights: u64,
    /// Redirects answered by the proxy.
    pub redirects: u64,
    /// Requests whose path or host was rewritten.
    pub rewrites: u64,
    /// Responses compressed.
    pub compressed: u64,
    /// Body bytes before compression.
    pub compress_in: u64,
    /// Body bytes after compression.
    pub compress_out: u64,
    /// `backend "redis"`: checks Redis did not answer (timeout, full queue, lost connection).
    pub backend_errors: u64,
    /// `backend "redis"`: requests the failure mode decided while Redis failed.
    pub fallbacks: u64,
}

impl FilterCounts {
    /// Counter `i`'s offset in the segment.
    pub fn offset(i: usize) -> usize {
        COUNTERS_OFFSET + 8 * i
    }

    /// The counters from the bytes at [`COUNTERS_OFFSET`] (native-endian, as the atomics
    /// store them: the segment never leaves the machine).
    pub fn from_ne_bytes(bytes: &[u8; COUNTERS * 8]) -> FilterCounts {
        let at = |i: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[8 * i..8 * i + 8]);
            u64::from_ne_bytes(word)
        };
        FilterCounts {
            limited: at(counter::LIMITED),
            delayed: at(counter::DELAYED),
            logged_only: at(counter::LOGGED_ONLY),
            evictions: at(counter::EVICTIONS),
            preflights: at(counter::PREFLIGHTS),
            redirects: at(counter::REDIRECTS),
            rewrites: at(counter::REWRITES),
            compressed: at(counter::COMPRESSED),
            compress_in: at(counter::COMPRESS_IN),
            compress_out: at(counter::COMPRESS_OUT),
            backend_errors: at(counter::BACKEND_ERRORS),
            fallbacks: at(counter::FALLBACKS),
        }
    }
}

/// The kind of filter a segment belongs to, as its header stores it.
pub fn kind_tag(kind: &FilterKind) -> u32 {
    match kind {
        FilterKind::Headers(_) => 1,
        FilterKind::Cors(_) => 2,
        FilterKind::Compress(_) => 3,
        FilterKind::Redirect(_) => 4,
        FilterKind::UrlRewrite(_) => 5,
        FilterKind::Timeout(_) => 6,
        FilterKind::Log(_) => 7,
        FilterKind::RateLimit(_) => 8,
    }
}

/// What a segment is made for: its filter's name (hashed), kind and table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// The segment's size in bytes.
    pub segment_bytes: u64,
    /// [`kind_tag`] of its filter.
    pub kind: u32,
    /// The filter's `max-keys` (0 for filters without a table).
    pub max_keys: u64,
    /// Table slots, a power of two (0: no table).
    pub slots: u64,
    /// [`name_hash`] of the filter's name.
    pub name_hash: u64,
}

impl Geometry {
    /// The segment `filter` wants, or `None` when it keeps no shared state (`headers`,
    /// `timeout`, `log`: nothing to count).
    pub fn for_filter(filter: &FilterConfig) -> Option<Geometry> {
        let max_keys = match &filter.kind {
            FilterKind::RateLimit(r) => r.max_keys,
            FilterKind::Cors(_)
            | FilterKind::Compress(_)
            | FilterKind::Redirect(_)
            | FilterKind::UrlRewrite(_) => 0,
            FilterKind::Headers(_) | FilterKind::Timeout(_) | FilterKind::Log(_) => return None,
        };
        let slots = match filter.kind {
            FilterKind::RateLimit(_) => slots_for(max_keys),
            _ => 0,
        };
        Some(Geometry {
            segment_bytes: segment_bytes_for(slots),
            kind: kind_tag(&filter.kind),
            max_keys,
            slots,
            name_hash: name_hash(&filter.name),
        })
    }

    /// Whether a segment made for `self` serves `filter` as it is configured now: same name,
    /// kind and `max-keys` (a reload changing `max-rps` or `burst` keeps the table).
    pub fn serves(&self, filter: &FilterConfig) -> bool {
        Geometry::for_filter(filter).is_some_and(|want| want == *self)
    }

    /// Where slot `i` starts.
    pub fn slot_offset(&self, i: u64) -> usize {
        // `i < slots <= MAX_SLOTS`: the product fits any 64-bit usize.
        HEADER_BYTES + usize::try_from(i).unwrap_or(0) * SLOT_BYTES
    }
}

/// Table slots for `max_keys` live keys: twice as many, as a power of two, so that a probe
/// window is rarely full before `max_keys` keys live (bounded by [`MAX_SLOTS`]).
pub fn slots_for(max_keys: u64) -> u64 {
    max_keys
        .max(1)
        .saturating_mul(2)
        .checked_next_power_of_two()
        .unwrap_or(MAX_SLOTS)
        .clamp(PROBE as u64, MAX_SLOTS)
}

/// The size of a segment with `slots` slots: the header and the table, in whole pages.
pub fn segment_bytes_for(slots: u64) -> u64 {
    (HEADER_BYTES as u64 + slots * SLOT_BYTES as u64).next_multiple_of(4096)
}

/// FNV-1a 64 of a filter's name: the header's check that a segment is the named filter's.
pub fn name_hash(name: &str) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    name.bytes().fold(OFFSET_BASIS, |hash, b| {
        (hash ^ u64::from(b)).wrapping_mul(PRIME)
    })
}

/// The header fields of a new segment; `hash_key` keys the hash of the table's keys (drawn at
/// random by whoever makes the segment, so clients cannot aim their keys at one window).
pub fn encode_header(g: &Geometry, hash_key: [u64; 2]) -> [u8; HEADER_FIELDS_BYTES] {
    let mut header = [0u8; HEADER_FIELDS_BYTES];
    let mut put = |at: usize, bytes: &[u8]| header[at..at + bytes.len()].copy_from_slice(bytes);
    put(0, &SEGMENT_MAGIC);
    put(8, &LAYOUT_VERSION.to_le_bytes());
    put(12, &g.kind.to_le_bytes());
    put(16, &g.segment_bytes.to_le_bytes());
    put(24, &g.max_keys.to_le_bytes());
    put(32, &g.slots.to_le_bytes());
    put(40, &field(PROBE).to_le_bytes());
    put(44, &field(SLOT_BYTES).to_le_bytes());
    put(48, &hash_key[0].to_le_bytes());
    put(56, &hash_key[1].to_le_bytes());
    put(64, &g.name_hash.to_le_bytes());
    header
}

/// A layout constant as the `u32` the header stores (all are far below `u32::MAX`).
fn field(value: usize) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

/// Check the header fields of a segment of `segment_bytes` (its size as the kernel reports
/// it) against this build's layout: its geometry and hash key, or why it cannot be shared.
pub fn decode_header(header: &[u8], segment_bytes: u64) -> Result<(Geometry, [u64; 2]), String> {
    let Some(header) = header.get(..HEADER_FIELDS_BYTES) else {
        return Err(format!("header of {} bytes", header.len()));
    };
    if header[..8] != SEGMENT_MAGIC {
        return Err("not a Zentinel filter segment (bad magic number)".to_owned());
    }
    let u32_at = |at: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&header[at..at + 4]);
        u32::from_le_bytes(b)
    };
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&header[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let version = u32_at(8);
    if version != LAYOUT_VERSION {
        return Err(format!(
            "layout version {version}, this build shares version {LAYOUT_VERSION}"
        ));
    }
    let g = Geometry {
        segment_bytes: u64_at(16),
        kind: u32_at(12),
        max_keys: u64_at(24),
        slots: u64_at(32),
        name_hash: u64_at(64),
    };
    if g.segment_bytes != segment_bytes {
        return Err(format!(
            "made for {} bytes, but the segment has {segment_bytes}",
            g.segment_bytes
        ));
    }
    if u32_at(40) != field(PROBE) || u32_at(44) != field(SLOT_BYTES) {
        return Err(format!(
            "probe window {} and slot size {}, expected {PROBE} and {SLOT_BYTES}",
            u32_at(40),
            u32_at(44)
        ));
    }
    if g.slots > MAX_SLOTS
        || (g.slots != 0 && !g.slots.is_power_of_two())
        || segment_bytes_for(g.slots) != segment_bytes
    {
        return Err(format!(
            "{} slots do not fit a segment of {segment_bytes} bytes",
            g.slots
        ));
    }
    Ok((g, [u64_at(48), u64_at(56)]))
}

/// A new segment of `geometry`: an anonymous memfd (close-on-exec, never written to a file),
/// sized with `ftruncate` (zero-filled: counters at 0, every slot empty), its header written,
/// then sealed.
pub fn create_segment(geometry: &Geometry, hash_key: [u64; 2]) -> io::Result<OwnedFd> {
    let header = encode_header(geometry, hash_key);
    sealed_memfd::create(
        "zentinel-filter",
        geometry.segment_bytes,
        &header,
        "filter segment",
    )
}

/// Check that `fd` is a segment this build can share: a memfd of exactly `segment_bytes`,
/// sealed against shrinking, with this build's layout. Its geometry and hash key, or why not.
pub fn check_segment(
    fd: BorrowedFd<'_>,
    segment_bytes: u64,
) -> Result<(Geometry, [u64; 2]), String> {
    let header = sealed_memfd::read_header::<HEADER_FIELDS_BYTES>(fd, segment_bytes)?;
    decode_header(&header, segment_bytes)
}

/// The counters of the segment behind `fd`, read with `pread` (the master never maps it). Each
/// counter is one aligned word: a scrape reads a recent value of each.
pub fn read_counters(fd: impl AsFd) -> io::Result<FilterCounts> {
    let bytes = sealed_memfd::read_at::<{ COUNTERS * 8 }>(fd, COUNTERS_OFFSET, "filter counters")?;
    Ok(FilterCounts::from_ne_bytes(&bytes))
}

/// One filter's segment as a worker is handed it: its fd travels with the message, in the
/// order of these entries.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct FilterSegmentHandle {
    /// The filter's name in the configuration.
    pub name: String,
    /// The segment's size (the worker checks the fd against it before mapping it).
    pub segment_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CorsFilter, HeadersFilter, RateLimitFilter};
    use nix::sys::uio::pwrite;

    fn filter(name: &str, kind: FilterKind) -> FilterConfig {
        FilterConfig {
            name: name.to_owned(),
            kind,
        }
    }

    fn limit(max_keys: u64) -> FilterKind {
        FilterKind::RateLimit(RateLimitFilter {
            max_keys,
            ..RateLimitFilter::default()
        })
    }

    #[test]
    fn geometry_follows_kind_and_max_keys() {
        let g = Geometry::for_filter(&filter("rl", limit(100_000))).unwrap();
        assert_eq!(g.slots, 262_144);
        assert_eq!(g.segment_bytes, 4096 + 262_144 * 16);
        assert_eq!(slots_for(0), 8);
        assert_eq!(slots_for(3), 8);
        assert_eq!(slots_for(u64::MAX), MAX_SLOTS);
        let cors = Geometry::for_filter(&filter("c", FilterKind::Cors(CorsFilter::default())));
        assert_eq!(cors.map(|g| (g.slots, g.segment_bytes)), Some((0, 4096)));
        let headers = filter("h", FilterKind::Headers(HeadersFilter::default()));
        assert_eq!(Geometry::for_filter(&headers), None);
        // Kept across a reload only with the same name, kind and max-keys.
        assert!(g.serves(&filter("rl", limit(100_000))));
        assert!(!g.serves(&filter("rl", limit(1000))));
        assert!(!g.serves(&filter("other", limit(100_000))));
        let faster = FilterKind::RateLimit(RateLimitFilter {
            max_rps: 5,
            ..RateLimitFilter::default()
        });
        assert!(g.serves(&filter("rl", faster)));
    }

    #[test]
    fn a_header_decodes_only_for_its_own_size_and_layout() {
        let g = Geometry::for_filter(&filter("rl", limit(10))).unwrap();
        let header = encode_header(&g, [1, 2]);
        assert_eq!(decode_header(&header, g.segment_bytes), Ok((g, [1, 2])));
        assert!(decode_header(&header, g.segment_bytes + 4096)
            .unwrap_err()
            .contains("made for"));
        let mut other = header;
        other[8] = 9;
        assert!(decode_header(&other, g.segment_bytes)
            .unwrap_err()
            .contains("layout version 9"));
        let mut other = header;
        other[32] = 7;
        assert!(decode_header(&other, g.segment_bytes)
            .unwrap_err()
            .contains("slots"));
        assert!(decode_header(&[0; 128], 4096)
            .unwrap_err()
            .contains("magic"));
        assert!(decode_header(&header[..10], 4096).is_err());
    }

    #[test]
    fn a_new_segment_is_sealed_checked_and_counts_from_zero() {
        let g = Geometry::for_filter(&filter("rl", limit(10))).unwrap();
        let fd = create_segment(&g, [3, 4]).unwrap();
        assert_eq!(check_segment(fd.as_fd(), g.segment_bytes), Ok((g, [3, 4])));
        assert!(check_segment(fd.as_fd(), 1 << 20)
            .unwrap_err()
            .contains("announced as"));
        assert_eq!(read_counters(&fd).unwrap(), FilterCounts::default());
        assert!(nix::unistd::ftruncate(&fd, 4096).is_err());
        let offset = i64::try_from(FilterCounts::offset(counter::EVICTIONS)).unwrap();
        pwrite(&fd, &5u64.to_ne_bytes(), offset).unwrap();
        assert_eq!(read_counters(&fd).unwrap().evictions, 5);
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        let size = file.metadata().unwrap().len();
        assert!(check_segment(file.as_fd(), size).is_err());
    }
}
