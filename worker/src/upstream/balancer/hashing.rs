//! Placement by hashing the client IP: plain IP hash, a consistent hash ring with virtual
//! nodes, and a Maglev lookup table.
//!
//! A key whose target is excluded (down, failed, at its cap) is placed again with a salted
//! hash, without rebuilding anything, so keys of the other targets never move while a target
//! is out. A reload that removes a target rebuilds: the ring then moves only that target's
//! keys; Maglev moves them plus a small fraction of others (its documented trade-off for an
//! O(1) lookup with near-perfect balance).

use super::{hash64, rehash};

/// Salted placement attempts before falling back to the first eligible target: with k of n
/// targets excluded, all 32 attempts miss with probability (k/n)^32.
const ATTEMPTS: u64 = 32;
/// Virtual nodes per unit of weight on the ring, and their cap per target.
const VNODES_PER_WEIGHT: usize = 160;
const MAX_VNODES: usize = 16_000;
/// Maglev table size for up to 655 targets (a prime, as the algorithm needs; upstream uses
/// the same). Larger pools get the next prime above 100 entries per target.
const MAGLEV_SIZE: usize = 65_537;

/// `h` reduced to `0..m` (`m > 0`).
fn reduce(h: u64, m: usize) -> usize {
    // The remainder is below `m`, a usize: the cast cannot truncate.
    #[allow(clippy::cast_possible_truncation)]
    let r = (h % m as u64) as usize;
    r
}

fn first_eligible(n: usize, eligible: impl Fn(usize) -> bool) -> Option<usize> {
    (0..n).find(|&i| eligible(i))
}

/// `hash % n`, then salted hashes while the target is excluded. Weights are not used (as
/// upstream): a client's target depends only on the client and the number of targets.
pub fn ip_hash(n: usize, h: u64, eligible: impl Fn(usize) -> bool) -> Option<usize> {
    if n == 0 {
        return None;
    }
    let mut h = h;
    for salt in 0..ATTEMPTS {
        let i = reduce(h, n);
        if eligible(i) {
            return Some(i);
        }
        h = rehash(h, salt + 1);
    }
    first_eligible(n, eligible)
}

/// Points on a 64-bit ring: each target owns `VNODES_PER_WEIGHT * weight` of them, placed by
/// hashing `address#i`; a key goes to the owner of the first point at or after its hash.
#[derive(Debug, Clone)]
pub struct HashRing {
    points: Vec<(u64, usize)>,
    targets: usize,
}

impl HashRing {
    pub fn new(targets: &[(&str, u32)]) -> Self {
        let mut points = Vec::new();
        for (idx, (addr, weight)) in targets.iter().enumerate() {
            let vnodes = (VNODES_PER_WEIGHT * (*weight).max(1) as usize).min(MAX_VNODES);
            for v in 0..vnodes {
                points.push((hash64(format!("{addr}#{v}").as_bytes()), idx));
            }
        }
        points.sort_unstable();
        HashRing {
            points,
            targets: targets.len(),
        }
    }

    pub fn pick(&self, h: u64, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let start = self.points.partition_point(|&(p, _)| p < h);
        // Walking on clockwise gives an excluded target's keys to its ring successors only.
        (0..self.points.len())
            .map(|k| self.points[(start + k) % self.points.len()].1)
            .find(|&i| eligible(i))
            .or_else(|| first_eligible(self.targets, eligible))
    }
}

/// Maglev (Eisenbud et al., NSDI 2016): every target fills table slots in the order of its own
/// permutation (offset, skip from two hashes of its address) until the table is full, so each
/// owns an equal share. A lookup is one index.
#[derive(Debug, Clone)]
pub struct MaglevTable {
    table: Vec<u32>,
    targets: usize,
}

impl MaglevTable {
    pub fn new(targets: &[(&str, u32)]) -> Self {
        let n = targets.len();
        if n == 0 {
            return MaglevTable {
                table: Vec::new(),
                targets: 0,
            };
        }
        let m = if n * 100 <= MAGLEV_SIZE {
            MAGLEV_SIZE
        } else {
            next_prime(n * 100)
        };
        let perms: Vec<(usize, usize)> = targets
            .iter()
            .map(|(addr, _)| {
                let offset = reduce(hash64(format!("offset:{addr}").as_bytes()), m);
                let skip = reduce(hash64(format!("skip:{addr}").as_bytes()), m - 1) + 1;
                (offset, skip)
            })
            .collect();
        let mut next = vec![0usize; n];
        let mut table = vec![u32::MAX; m];
        let mut filled = 0;
        'fill: loop {
            for (i, &(offset, skip)) in perms.iter().enumerate() {
                // Target i's next preferred slot that is still free.
                let mut slot = (offset + next[i] * skip) % m;
                while table[slot] != u32::MAX {
                    next[i] += 1;
                    slot = (offset + next[i] * skip) % m;
                }
                // A target index: the table holds at least 100 slots per target, so a pool
                // with u32::MAX targets could not be built in memory in the first place.
                #[allow(clippy::cast_possible_truncation)]
                let target = i as u32;
                table[slot] = target;
                next[i] += 1;
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
        MaglevTable { table, targets: n }
    }

    pub fn pick(&self, h: u64, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        let mut h = h;
        for salt in 0..ATTEMPTS {
            let i = self.table[reduce(h, self.table.len())] as usize;
            if eligible(i) {
                return Some(i);
            }
            h = rehash(h, salt + 1);
        }
        first_eligible(self.targets, eligible)
    }
}

fn next_prime(mut n: usize) -> usize {
    let is_prime = |k: usize| {
        k >= 2
            && (2..)
                .take_while(|d| d * d <= k)
                .all(|d| !k.is_multiple_of(d))
    };
    while !is_prime(n) {
        n += 1;
    }
    n
}
