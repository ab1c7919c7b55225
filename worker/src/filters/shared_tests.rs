//! The GCRA table on real segments, made as the master makes them.

use std::os::fd::{AsFd, OwnedFd};

use zentinel_protocol::config::{FilterConfig, FilterKind, RateLimitFilter};
use zentinel_protocol::filter_shm::{create_segment, read_counters, Geometry};

use super::*;

const MS: u64 = 1_000_000;
/// A `CLOCK_MONOTONIC` time well past any burst's tolerance.
const T0: u64 = 1_000_000 * 1_000_000_000;

fn filter(max_keys: u64) -> FilterConfig {
    FilterConfig {
        name: "rl".to_owned(),
        kind: FilterKind::RateLimit(RateLimitFilter {
            max_keys,
            ..RateLimitFilter::default()
        }),
    }
}

/// A segment as the master makes it, and one mapping of it.
fn segment(max_keys: u64) -> (OwnedFd, FilterShm) {
    let g = Geometry::for_filter(&filter(max_keys)).unwrap();
    let fd = create_segment(&g, [11, 22]).unwrap();
    let shm = FilterShm::open(fd.try_clone().unwrap(), g.segment_bytes).unwrap();
    (fd, shm)
}

#[test]
fn a_burst_then_refusals_then_one_request_per_interval() {
    let (_, shm) = segment(100);
    let gcra = Gcra::new(10, 5);
    assert_eq!(gcra.interval_ns, 100 * MS);
    let key = shm.key_hash(&[b"route", b"client"]);
    for i in 0..5 {
        let t = shm.take(key, T0, gcra, 0);
        assert!(t.admitted && t.wait_ns == 0, "request {i}: {t:?}");
    }
    // The sixth conforms one interval later: refused, with that wait.
    let t = shm.take(key, T0, gcra, 0);
    assert_eq!((t.admitted, t.wait_ns), (false, 100 * MS));
    assert_eq!(shm.take(key, T0 + 99 * MS, gcra, 0).wait_ns, MS);
    // Refill: one more per 100 ms, never more than the burst.
    assert!(shm.take(key, T0 + 100 * MS, gcra, 0).admitted);
    assert!(!shm.take(key, T0 + 100 * MS, gcra, 0).admitted);
    let later = T0 + 60_000 * MS;
    for _ in 0..5 {
        assert!(shm.take(key, later, gcra, 0).admitted);
    }
    assert!(!shm.take(key, later, gcra, 0).admitted);
    // Another key is another bucket; parts are length-prefixed.
    assert!(
        shm.take(shm.key_hash(&[b"route", b"other"]), later, gcra, 0)
            .admitted
    );
    assert_ne!(shm.key_hash(&[b"ab", b""]), shm.key_hash(&[b"a", b"b"]));
}

#[test]
fn a_delay_reserves_exact_turns_up_to_the_longest_wait() {
    let (_, shm) = segment(100);
    let gcra = Gcra::new(10, 2);
    let key = shm.key_hash(&[b"k"]);
    assert!(shm.take(key, T0, gcra, 350 * MS).wait_ns == 0);
    assert!(shm.take(key, T0, gcra, 350 * MS).wait_ns == 0);
    // Each later request gets the next free turn, 100 ms apart, its place taken.
    for turn in 1..=3 {
        let t = shm.take(key, T0, gcra, 350 * MS);
        assert!(t.admitted, "turn {turn}: {t:?}");
        assert_eq!(t.wait_ns, turn * 100 * MS);
    }
    // The fourth would wait 400 ms, past the limit: refused, nothing reserved.
    let t = shm.take(key, T0, gcra, 350 * MS);
    assert_eq!((t.admitted, t.wait_ns), (false, 400 * MS));
    // A request arriving when the first held one goes finds every place taken until then.
    let t = shm.take(key, T0 + 100 * MS, gcra, 0);
    assert_eq!((t.admitted, t.wait_ns), (false, 300 * MS));
}

#[test]
fn a_full_window_gives_the_stalest_slot_away_and_counts_live_evictions() {
    // max-keys 4: 8 slots, one probe window for the whole table.
    let (fd, shm) = segment(4);
    let gcra = Gcra::new(1, 1);
    for i in 0u64..8 {
        let t = shm.take(i + 100, T0 + i * MS, gcra, 0);
        assert!(t.admitted);
    }
    assert_eq!(read_counters(&fd).unwrap().evictions, 0);
    // A ninth live key evicts key 100 (admitted first: the smallest TAT), counted.
    assert!(shm.take(999, T0 + 10 * MS, gcra, 0).admitted);
    assert_eq!(read_counters(&fd).unwrap().evictions, 1);
    // Key 101 is still there and still limited; key 100 starts afresh.
    assert!(!shm.take(101, T0 + 10 * MS, gcra, 0).admitted);
    assert!(shm.take(100, T0 + 10 * MS, gcra, 0).admitted);
    assert_eq!(read_counters(&fd).unwrap().evictions, 2);
    // Once every key's TAT has passed, taking a slot loses nothing: not counted.
    let later = T0 + 10_000 * MS;
    assert!(shm.take(5000, later, gcra, 0).admitted);
    assert_eq!(shm.counts().evictions, 2);
}

#[test]
fn two_mappings_of_one_memfd_share_keys_and_counters() {
    let (fd, first) = segment(100);
    let g = Geometry::for_filter(&filter(100)).unwrap();
    let second = FilterShm::open(fd.try_clone().unwrap(), g.segment_bytes).unwrap();
    let gcra = Gcra::new(10, 3);
    let key = first.key_hash(&[b"client"]);
    assert_eq!(
        second.key_hash(&[b"client"]),
        key,
        "one hash key in the header"
    );
    assert!(first.take(key, T0, gcra, 0).admitted);
    assert!(second.take(key, T0, gcra, 0).admitted);
    assert!(first.take(key, T0, gcra, 0).admitted);
    assert!(!second.take(key, T0, gcra, 0).admitted);
    first
        .counter(counter::LIMITED)
        .fetch_add(2, Ordering::Relaxed);
    second
        .counter(counter::LIMITED)
        .fetch_add(3, Ordering::Relaxed);
    assert_eq!(read_counters(fd.as_fd()).unwrap().limited, 5);
    assert_eq!(second.counts().limited, 5);
}

#[test]
fn concurrent_takes_from_two_mappings_admit_exactly_the_burst() {
    let (fd, _) = segment(100);
    let g = Geometry::for_filter(&filter(100)).unwrap();
    let gcra = Gcra::new(1, 50);
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let fd = fd.try_clone().unwrap();
            std::thread::spawn(move || {
                let shm = FilterShm::open(fd, g.segment_bytes).unwrap();
                let key = shm.key_hash(&[b"one client"]);
                (0..1000)
                    .filter(|_| shm.take(key, T0, gcra, 0).admitted)
                    .count()
            })
        })
        .collect();
    let admitted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(admitted, 50);
}

#[test]
fn a_worker_without_the_masters_segment_keeps_its_own() {
    let shm = FilterShm::private(&filter(10)).unwrap().unwrap();
    assert!(shm.is_private());
    assert!(shm.serves(&filter(10)));
    assert!(!shm.serves(&filter(11)));
    let gcra = Gcra::new(1, 1);
    assert!(shm.take(7, T0, gcra, 0).admitted);
    assert!(!shm.take(7, T0, gcra, 0).admitted);
    let headers = FilterConfig {
        name: "h".to_owned(),
        kind: FilterKind::Headers(Default::default()),
    };
    assert!(FilterShm::private(&headers).unwrap().is_none());
}

#[test]
fn handed_segments_are_matched_by_name_and_mapped_once() {
    use zentinel_protocol::filter_shm::FilterSegmentHandle;
    let (fd, _) = segment(100);
    let bytes = Geometry::for_filter(&filter(100)).unwrap().segment_bytes;
    let handle = FilterSegmentHandle {
        name: "rl".to_owned(),
        segment_bytes: bytes,
    };
    let mut set = Segments::default();
    set.add(
        std::slice::from_ref(&handle),
        vec![fd.try_clone().unwrap()],
        &[],
    );
    let first = set.get(&filter(100)).unwrap();
    assert!(!first.is_private());
    // Another max-keys is another table: not this one.
    assert!(set.get(&filter(5)).is_none());
    // The same memfd handed again (a reload keeping the filter) reuses the mapping.
    let mut again = Segments::default();
    again.add(
        std::slice::from_ref(&handle),
        vec![fd.try_clone().unwrap()],
        std::slice::from_ref(&first),
    );
    assert!(Rc::ptr_eq(&again.get(&filter(100)).unwrap(), &first));
    // A count mismatch or a wrong size leaves the filter without one.
    let mut bad = Segments::default();
    bad.add(std::slice::from_ref(&handle), vec![], &[]);
    assert_eq!(bad.len(), 0);
    let wrong = FilterSegmentHandle {
        name: "rl".to_owned(),
        segment_bytes: bytes + 4096,
    };
    bad.add(&[wrong], vec![fd.try_clone().unwrap()], &[]);
    assert_eq!(bad.len(), 0);
}
