//! The shared session cache's table, on real memfd segments made as the master makes them:
//! stores and look-ups, single-use takes, expiry, sizes, eviction, busy and abandoned locks,
//! two threads on two mappings of one segment, and a second process.

use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};

use zentinel_protocol::session_cache::{
    create_segment, DEFAULT_SEGMENT_BYTES, DEFAULT_TIMEOUT_S, HEADER_BYTES, SLOT_BYTES,
};

use super::*;

/// A new segment of `bytes` whose sessions live `timeout_s`, and a cache mapping it.
fn cache_of(bytes: u64, timeout_s: u32) -> (OwnedFd, Arc<SharedSessionCache>) {
    let geometry = Geometry::for_segment(bytes, timeout_s).unwrap();
    let fd = create_segment(&geometry).unwrap();
    let cache = SharedSessionCache::open(fd.try_clone().unwrap(), bytes).unwrap();
    (fd, cache)
}

fn cache() -> Arc<SharedSessionCache> {
    cache_of(DEFAULT_SEGMENT_BYTES, DEFAULT_TIMEOUT_S).1
}

/// A segment of one bucket: every key shares it.
fn one_bucket() -> Arc<SharedSessionCache> {
    let bytes = (HEADER_BYTES + WAYS as usize * SLOT_BYTES) as u64;
    let (_, cache) = cache_of(bytes, DEFAULT_TIMEOUT_S);
    assert_eq!(cache.geometry.buckets, 1);
    cache
}

fn key(i: u32) -> Vec<u8> {
    let mut key = [0u8; 32];
    key[..4].copy_from_slice(&i.to_le_bytes());
    key[31] = 0xa5;
    key.to_vec()
}

/// A session value as long as `len`, every byte derived from `i` and `who`.
fn value(i: u32, who: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|n| (i as u8).wrapping_mul(31) ^ who ^ (n as u8))
        .collect()
}

/// The non-zero bytes of `key`'s bucket, lock words included.
fn bucket_residue(cache: &SharedSessionCache, key: &[u8]) -> usize {
    let bucket = bucket_of(key, cache.geometry.buckets);
    let start = cache.geometry.slot_offset(bucket, 0);
    let mut bytes = vec![0u8; WAYS as usize * SLOT_BYTES];
    cache.map.load_bytes(start, &mut bytes);
    bytes.iter().filter(|&&b| b != 0).count()
}

const NOW: u64 = 10_000;

#[test]
fn stores_finds_and_counts() {
    let cache = cache();
    assert!(cache.store(&key(1), &value(1, 0, 120), NOW));
    assert_eq!(cache.find(&key(1), NOW, false), Some(value(1, 0, 120)));
    // A look-up leaves it there.
    assert_eq!(cache.find(&key(1), NOW + 1, false), Some(value(1, 0, 120)));
    assert_eq!(cache.find(&key(2), NOW, false), None);
    assert_eq!(cache.find(b"", NOW, false), None);
    // The same key again replaces the session, in the same slot.
    assert!(cache.store(&key(1), &value(1, 9, 80), NOW + 2));
    assert_eq!(cache.find(&key(1), NOW + 2, false), Some(value(1, 9, 80)));
    let counters = cache.counters();
    assert_eq!(
        (counters.hits, counters.misses, counters.stores),
        (3, 2, 2),
        "{counters:?}"
    );
    assert_eq!(counters.evictions, 0);
    // Shown without a byte of any session.
    assert_eq!(
        format!("{cache:?}"),
        "SharedSessionCache { bytes: 16777216, slots: 4092, timeout_s: 300 }"
    );
}

#[test]
fn a_take_removes_the_session_and_zeroes_its_slot() {
    let cache = cache();
    cache.store(&key(7), &value(7, 1, 600), NOW);
    assert!(bucket_residue(&cache, &key(7)) > 600);
    assert_eq!(cache.find(&key(7), NOW, true), Some(value(7, 1, 600)));
    assert_eq!(bucket_residue(&cache, &key(7)), 0, "secrets left behind");
    // Single use: a TLS 1.3 stateful ticket resumes once.
    assert_eq!(cache.find(&key(7), NOW, true), None);
    assert_eq!(cache.counters().hits, 1);
}

#[test]
fn sessions_expire_after_the_timeout_and_are_zeroed() {
    let (_, cache) = cache_of(DEFAULT_SEGMENT_BYTES, 300);
    cache.store(&key(3), &value(3, 0, 200), NOW);
    assert!(cache.find(&key(3), NOW + 299, false).is_some());
    assert_eq!(cache.find(&key(3), NOW + 300, false), None);
    assert_eq!(bucket_residue(&cache, &key(3)), 0);
    let counters = cache.counters();
    assert_eq!((counters.expired, counters.misses), (1, 1), "{counters:?}");
}

#[test]
fn too_large_sessions_and_keys_are_not_cached_and_are_counted() {
    let cache = cache();
    assert!(cache.store(&key(1), &value(1, 0, MAX_VALUE_BYTES), NOW));
    assert_eq!(
        cache.find(&key(1), NOW, false).map(|v| v.len()),
        Some(MAX_VALUE_BYTES)
    );
    assert!(!cache.store(&key(2), &value(2, 0, MAX_VALUE_BYTES + 1), NOW));
    assert!(!cache.store(&[1; MAX_KEY_BYTES + 1], b"v", NOW));
    assert!(!cache.store(b"", b"v", NOW));
    assert_eq!(cache.find(&key(2), NOW, false), None);
    assert_eq!(cache.find(&[1; MAX_KEY_BYTES + 1], NOW, false), None);
    let counters = cache.counters();
    assert_eq!(
        (counters.too_large, counters.stores),
        (3, 1),
        "{counters:?}"
    );
}

#[test]
fn a_full_bucket_overwrites_its_oldest_session_leaving_no_tail() {
    let cache = one_bucket();
    // Four sessions fill the bucket; the oldest one is the longest.
    for i in 0..WAYS {
        let len = if i == 0 { 3000 } else { 100 };
        assert!(cache.store(&key(i), &value(i, 0, len), NOW + u64::from(i)));
    }
    let before = bucket_residue(&cache, &key(0));
    // A fifth one replaces the oldest, and nothing of its 3000 bytes stays.
    assert!(cache.store(&key(9), &value(9, 0, 50), NOW + 10));
    assert_eq!(cache.find(&key(0), NOW + 10, false), None);
    for i in (1..WAYS).chain([9]) {
        assert!(cache.find(&key(i), NOW + 10, false).is_some(), "key {i}");
    }
    let after = bucket_residue(&cache, &key(0));
    assert!(after + 2900 < before, "{before} -> {after} bytes");
    let counters = cache.counters();
    assert_eq!(
        (counters.evictions, counters.stores),
        (1, 5),
        "{counters:?}"
    );
    // An expired session is overwritten before the oldest live one.
    let (_, cache) = cache_of((HEADER_BYTES + WAYS as usize * SLOT_BYTES) as u64, 10);
    for i in 0..WAYS {
        cache.store(&key(i), &value(i, 0, 10), NOW + u64::from(i) * 5);
    }
    // key(0) and key(1) have expired at NOW + 16; key(0) is the first free slot.
    assert!(cache.store(&key(8), &value(8, 0, 10), NOW + 16));
    assert!(cache.find(&key(2), NOW + 16, false).is_some());
    assert!(cache.find(&key(3), NOW + 16, false).is_some());
    assert_eq!(cache.counters().evictions, 0);
}

#[test]
fn stores_sweep_expired_sessions_out_of_other_buckets() {
    let (_, cache) = cache_of(DEFAULT_SEGMENT_BYTES, 10);
    cache.store(&key(1), &value(1, 0, 500), NOW);
    let bucket = bucket_of(&key(1), cache.geometry.buckets);
    // Later stores, long after it expired, sweep one bucket each: within a round of the
    // table, its bucket is swept without anyone looking it up.
    let mut i = 100;
    while bucket_residue(&cache, &key(1)) > 0 {
        assert!(
            i < 100 + 2 * cache.geometry.buckets,
            "never swept (bucket {bucket})"
        );
        let k = key(i);
        if bucket_of(&k, cache.geometry.buckets) != bucket {
            cache.store(&k, b"x", NOW + 60);
        }
        i += 1;
    }
    assert!(cache.counters().expired >= 1);
}

#[test]
fn a_busy_slot_is_skipped_and_a_dead_holders_lock_taken_over() {
    let cache = one_bucket();
    for i in 0..WAYS {
        cache.store(&key(i), &value(i, 0, 64), NOW);
    }
    let first = cache.geometry.slot_offset(0, 0);
    let lock = cache.map.u32_at(first + slot::LOCK);
    // Held by another thread of this process (our pid): never taken over, a miss.
    lock.store(cache.pid, Ordering::Relaxed);
    assert_eq!(cache.find(&key(0), NOW, false), None);
    assert!(cache.find(&key(1), NOW, false).is_some());
    assert!(cache.counters().contended >= 1);
    // Held by a live process (pid 1): the same.
    lock.store(1, Ordering::Relaxed);
    assert_eq!(cache.find(&key(0), NOW, false), None);
    // Held by a process that has exited: taken over, and the slot, maybe half written by it,
    // erased.
    let mut gone = Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    lock.store(dead, Ordering::Relaxed);
    assert_eq!(cache.find(&key(0), NOW, false), None);
    assert_eq!(lock.load(Ordering::Relaxed), 0, "released after use");
    assert!(cache.store(&key(5), &value(5, 0, 64), NOW));
    assert_eq!(cache.find(&key(5), NOW, false), Some(value(5, 0, 64)));
}

/// Two threads, each with its own mapping of one segment (as two workers have), store and
/// look up the same keys with values of their own: every session found is whole, one
/// thread's or the other's, never a mix.
#[test]
fn two_mappings_written_at_once_never_show_a_torn_session() {
    let (fd, first) = cache_of(DEFAULT_SEGMENT_BYTES, DEFAULT_TIMEOUT_S);
    let second = SharedSessionCache::open(fd, DEFAULT_SEGMENT_BYTES).unwrap();
    const KEYS: u32 = 64;
    let run = |cache: Arc<SharedSessionCache>, who: u8| {
        std::thread::spawn(move || {
            let mut found = 0;
            for round in 0..200u32 {
                for i in 0..KEYS {
                    let len = 200 + ((i + round) % 7) as usize * 500;
                    cache.store(&key(i), &value(i, who, len), NOW);
                    if let Some(v) = cache.find(&key(i), NOW, false) {
                        let whole = [1u8, 2].iter().any(|&w| v == value(i, w, v.len()));
                        assert!(whole, "key {i}: a torn session of {} bytes", v.len());
                        found += 1;
                    }
                }
            }
            found
        })
    };
    let (a, b) = (run(first, 1), run(Arc::clone(&second), 2));
    let found = a.join().unwrap() + b.join().unwrap();
    let counters = second.counters();
    assert!(found > 0 && counters.hits == found, "{found}: {counters:?}");
    assert!(counters.stores > 0, "{counters:?}");
}

/// The child's side of the next test: set only in the process it starts.
const CHILD_ENV: &str = "ZENTINEL_TEST_SESSION_CACHE_SEGMENT";

/// Another process (this test binary again) maps the same memfd, through `/proc`: it finds
/// and takes what this one stored, and stores sessions this one then finds.
#[test]
fn a_second_process_resumes_what_the_first_stored() {
    if let Ok(path) = std::env::var(CHILD_ENV) {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let cache = SharedSessionCache::open(file.into(), DEFAULT_SEGMENT_BYTES).unwrap();
        for i in 0..50 {
            assert_eq!(cache.find(&key(i), NOW, true), Some(value(i, 1, 300)));
            assert!(cache.store(&key(100 + i), &value(i, 2, 300), NOW));
        }
        return;
    }
    let (fd, cache) = cache_of(DEFAULT_SEGMENT_BYTES, DEFAULT_TIMEOUT_S);
    for i in 0..50 {
        assert!(cache.store(&key(i), &value(i, 1, 300), NOW));
    }
    let path = format!("/proc/{}/fd/{}", std::process::id(), fd.as_raw_fd());
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "session_cache::tests::a_second_process_resumes_what_the_first_stored",
            "--exact",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the second process did not finish within 30 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "the second process failed: {status}");
    for i in 0..50 {
        assert_eq!(cache.find(&key(i), NOW, false), None, "taken by the other");
        assert_eq!(
            cache.find(&key(100 + i), NOW, false),
            Some(value(i, 2, 300))
        );
    }
    assert_eq!(cache.counters().hits, 100);
}

#[test]
fn the_fd_after_the_listeners_is_the_cache_and_a_bad_one_is_refused() {
    let (fd, _) = cache_of(DEFAULT_SEGMENT_BYTES, DEFAULT_TIMEOUT_S);
    let handle = SessionCacheHandle {
        segment_bytes: DEFAULT_SEGMENT_BYTES,
    };
    assert!(attach(Some(&handle), Some(fd.try_clone().unwrap())).is_some());
    assert!(attach(None, Some(fd.try_clone().unwrap())).is_none());
    assert!(attach(Some(&handle), None).is_none());
    let wrong = SessionCacheHandle {
        segment_bytes: 1 << 20,
    };
    assert!(attach(Some(&wrong), Some(fd)).is_none());
    let file = std::fs::File::open("/proc/self/exe").unwrap();
    let size = file.metadata().unwrap().len();
    assert!(SharedSessionCache::open(file.into(), size).is_err());
}
