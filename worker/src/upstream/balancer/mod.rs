//! Target selection, independent of sockets: which target of a pool the next exchange goes to.
//!
//! One file per family: smooth weighted round robin, connection counting (least connections,
//! power of two choices), random, hashing (IP hash, consistent hash ring, Maglev) and peak
//! EWMA. Every algorithm gets the targets to avoid (failed for this exchange, out of rotation,
//! unresolved, at their connection cap) and never returns one of them.
//!
//! Hash-based algorithms hash target *addresses*, not indices, so every worker (each a process
//! with its own balancer) sends a client to the same target, and a target taken out of rotation
//! moves only the clients it had.

mod ewma;
mod hashing;
mod least_conn;
mod random;
mod round_robin;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use zentinel_protocol::config::LoadBalancing;

use self::ewma::PeakEwma;
use self::hashing::{HashRing, MaglevTable};
pub(crate) use self::random::Rng;
use self::round_robin::SmoothWeighted;

/// What a request offers to choose by.
#[derive(Debug, Clone, Copy)]
pub struct PickKey {
    /// The client's address (port excluded: a client opens many connections).
    pub client_ip: Option<IpAddr>,
}

#[derive(Debug, Clone)]
enum Kind {
    RoundRobin(SmoothWeighted),
    LeastConnections { cursor: usize },
    Random(Rng),
    PowerOfTwo(Rng),
    IpHash,
    Ring(HashRing),
    Maglev(MaglevTable),
    PeakEwma(PeakEwma),
}

/// A pool's selection state. `Sticky` pools build theirs from the sticky fallback: the cookie
/// is looked at before the balancer is asked.
#[derive(Debug, Clone)]
pub struct Balancer {
    kind: Kind,
    /// At least 1 each.
    weights: Vec<u32>,
}

impl Balancer {
    /// `targets`: (address as configured, weight), in configuration order.
    pub fn new(lb: LoadBalancing, targets: &[(&str, u32)]) -> Self {
        let weights: Vec<u32> = targets.iter().map(|(_, w)| (*w).max(1)).collect();
        let kind = match lb {
            LoadBalancing::RoundRobin | LoadBalancing::Weighted | LoadBalancing::Sticky => {
                Kind::RoundRobin(SmoothWeighted::new(weights.len()))
            }
            LoadBalancing::LeastConnections | LoadBalancing::WeightedLeastConnections => {
                Kind::LeastConnections { cursor: 0 }
            }
            LoadBalancing::Random => Kind::Random(Rng::seeded()),
            LoadBalancing::PowerOfTwoChoices => Kind::PowerOfTwo(Rng::seeded()),
            LoadBalancing::IpHash => Kind::IpHash,
            LoadBalancing::ConsistentHash => Kind::Ring(HashRing::new(targets)),
            LoadBalancing::Maglev => Kind::Maglev(MaglevTable::new(targets)),
            LoadBalancing::PeakEwma => Kind::PeakEwma(PeakEwma::new(weights.len())),
        };
        Balancer { kind, weights }
    }

    /// Pick a target not in `excluded`; None when every target is excluded. `active[i]` is
    /// the number of connections in use to target `i`.
    pub fn pick(&mut self, active: &[u32], excluded: &[usize], key: &PickKey) -> Option<usize> {
        let n = self.weights.len();
        if excluded.len() >= n && (0..n).all(|i| excluded.contains(&i)) {
            return None;
        }
        let eligible = |i: usize| !excluded.contains(&i);
        let weights = &self.weights;
        match &mut self.kind {
            Kind::RoundRobin(rr) => rr.pick(weights, eligible),
            Kind::LeastConnections { cursor } => {
                least_conn::least_loaded(weights, active, cursor, eligible)
            }
            Kind::Random(rng) => random::weighted(rng, weights, eligible),
            Kind::PowerOfTwo(rng) => least_conn::power_of_two(rng, weights, active, eligible),
            Kind::IpHash => hashing::ip_hash(n, key_hash(key), eligible),
            Kind::Ring(ring) => ring.pick(key_hash(key), eligible),
            Kind::Maglev(table) => table.pick(key_hash(key), eligible),
            Kind::PeakEwma(e) => e.pick(weights, active, eligible),
        }
    }

    /// Target `i` answered (response head received) `rtt` after the exchange started.
    pub fn observe_latency(&mut self, target: usize, rtt: Duration, now: Instant) {
        if let Kind::PeakEwma(e) = &mut self.kind {
            e.observe(target, rtt, now);
        }
    }
}

/// The request's hash key: its client IP. Without one (cannot happen for TCP clients) every
/// request hashes alike, which at least keeps them together.
fn key_hash(key: &PickKey) -> u64 {
    match key.client_ip {
        Some(IpAddr::V4(v4)) => hash64(&v4.octets()),
        Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => hash64(&v4.octets()),
            None => hash64(&v6.octets()),
        },
        None => hash64(b""),
    }
}

/// A fixed, well-mixed 64-bit hash (FNV-1a, then murmur3's finaliser for avalanche): the same
/// in every worker and every build, unlike `DefaultHasher`, so placements agree across
/// processes and upgrades.
pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// `hash64` of `h` and a small salt: the next probe position for a key whose target is
/// excluded.
fn rehash(h: u64, salt: u64) -> u64 {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&h.to_le_bytes());
    bytes[8..].copy_from_slice(&salt.to_le_bytes());
    hash64(&bytes)
}
