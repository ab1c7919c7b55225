//! Selection logic of every algorithm, without sockets.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use super::*;

const NO_KEY: PickKey = PickKey { client_ip: None };

const ALL: [LoadBalancing; 10] = [
    LoadBalancing::RoundRobin,
    LoadBalancing::Weighted,
    LoadBalancing::LeastConnections,
    LoadBalancing::WeightedLeastConnections,
    LoadBalancing::Random,
    LoadBalancing::PowerOfTwoChoices,
    LoadBalancing::IpHash,
    LoadBalancing::ConsistentHash,
    LoadBalancing::Maglev,
    LoadBalancing::PeakEwma,
];

fn addrs(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("10.0.0.{}:80", i + 1)).collect()
}

fn bal(lb: LoadBalancing, weights: &[u32]) -> Balancer {
    let a = addrs(weights.len());
    let t: Vec<(&str, u32)> = a
        .iter()
        .map(String::as_str)
        .zip(weights.iter().copied())
        .collect();
    Balancer::new(lb, &t)
}

fn client(i: u32) -> PickKey {
    PickKey {
        client_ip: Some(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))),
    }
}

/// Share of `picks` per target (fractions of the total).
fn shares(b: &mut Balancer, n: usize, picks: usize) -> Vec<f64> {
    let active = vec![0u32; n];
    let mut count = vec![0usize; n];
    for i in 0..picks {
        let key = client(i as u32);
        count[b.pick(&active, &[], &key).unwrap()] += 1;
    }
    count.iter().map(|&c| c as f64 / picks as f64).collect()
}

fn assert_shares(got: &[f64], want: &[f64], tolerance: f64, what: &str) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tolerance,
            "{what}: target {i} got {g:.3}, want {w:.3} ± {tolerance}: {got:?}"
        );
    }
}

fn picks(b: &mut Balancer, n: usize) -> Vec<usize> {
    (0..n)
        .map(|_| b.pick(&[0, 0, 0], &[], &NO_KEY).unwrap())
        .collect()
}

#[test]
fn smooth_weighted_round_robin() {
    let mut b = bal(LoadBalancing::RoundRobin, &[5, 1, 1]);
    // nginx's documented sequence for weights 5,1,1.
    assert_eq!(picks(&mut b, 7), vec![0, 0, 1, 0, 2, 0, 0]);
    // And it repeats with the same distribution.
    let next = picks(&mut b, 7);
    assert_eq!(next.iter().filter(|&&i| i == 0).count(), 5);
    assert_eq!(next.iter().filter(|&&i| i == 1).count(), 1);
}

#[test]
fn equal_weights_alternate() {
    let mut b = bal(LoadBalancing::RoundRobin, &[1, 1]);
    let p: Vec<usize> = (0..4)
        .map(|_| b.pick(&[0, 0], &[], &NO_KEY).unwrap())
        .collect();
    assert_eq!(p, vec![0, 1, 0, 1]);
}

#[test]
fn zero_weight_treated_as_one() {
    let mut b = bal(LoadBalancing::RoundRobin, &[0, 1]);
    let p: Vec<usize> = (0..4)
        .map(|_| b.pick(&[0, 0], &[], &NO_KEY).unwrap())
        .collect();
    assert_eq!(p.iter().filter(|&&i| i == 0).count(), 2);
}

#[test]
fn least_connections_prefers_fewest() {
    let mut b = bal(LoadBalancing::LeastConnections, &[1, 1, 1]);
    assert_eq!(b.pick(&[3, 1, 2], &[], &NO_KEY), Some(1));
    assert_eq!(b.pick(&[0, 5, 5], &[], &NO_KEY), Some(0));
    assert_eq!(b.pick(&[5, 5, 0], &[], &NO_KEY), Some(2));
}

#[test]
fn least_connections_weighted_and_ties_rotate() {
    // Target 1 has weight 3: 3 active there equals 1 active on weight-1 target 0.
    let mut b = bal(LoadBalancing::LeastConnections, &[1, 3]);
    assert_eq!(b.pick(&[1, 2], &[], &NO_KEY), Some(1));
    assert_eq!(b.pick(&[1, 4], &[], &NO_KEY), Some(0));
    let mut b = bal(LoadBalancing::LeastConnections, &[1, 1]);
    let a = b.pick(&[0, 0], &[], &NO_KEY).unwrap();
    let c = b.pick(&[0, 0], &[], &NO_KEY).unwrap();
    assert_ne!(a, c, "ties must not always go to the same target");
}

#[test]
fn excluded_targets_are_skipped_until_none_is_left() {
    for lb in ALL {
        let mut b = bal(lb, &[1, 1, 1]);
        let mut failed = Vec::new();
        while let Some(t) = b.pick(&[0, 0, 0], &failed, &NO_KEY) {
            assert!(!failed.contains(&t), "{lb:?} picked {t} again: {failed:?}");
            failed.push(t);
        }
        failed.sort_unstable();
        assert_eq!(failed, vec![0, 1, 2], "{lb:?} must try every target once");
    }
}

#[test]
fn round_robin_stays_balanced_around_an_excluded_target() {
    // Target 0 always fails and is excluded after its turn: the others still share the
    // load evenly (the exclusion does not skew the smooth weighted state).
    let mut b = bal(LoadBalancing::RoundRobin, &[1, 1, 1]);
    let mut served = [0u32; 3];
    for _ in 0..300 {
        let mut t = b.pick(&[0, 0, 0], &[], &NO_KEY).unwrap();
        if t == 0 {
            t = b.pick(&[0, 0, 0], &[0], &NO_KEY).unwrap();
        }
        served[t] += 1;
    }
    assert_eq!(served[0], 0);
    assert!(served[1].abs_diff(served[2]) <= 1, "{served:?}");
}

#[test]
fn weighted_shares_follow_weights() {
    let want = [0.5, 0.25, 0.125, 0.125];
    for lb in [LoadBalancing::RoundRobin, LoadBalancing::Weighted] {
        let mut b = bal(lb, &[4, 2, 1, 1]);
        assert_shares(&shares(&mut b, 4, 8000), &want, 0.0001, &format!("{lb:?}"));
    }
    for lb in [LoadBalancing::Random, LoadBalancing::PowerOfTwoChoices] {
        let mut b = bal(lb, &[4, 2, 1, 1]);
        // Idle targets: power of two choices keeps its first (weighted) draw.
        assert_shares(&shares(&mut b, 4, 40_000), &want, 0.02, &format!("{lb:?}"));
    }
}

#[test]
fn random_generator_is_uniform_enough() {
    let mut rng = random::Rng::with_seed(42);
    let mut count = [0u32; 8];
    for _ in 0..80_000 {
        count[rng.below(8) as usize] += 1;
    }
    for c in count {
        assert!((9_000..11_000).contains(&c), "{count:?}");
    }
}

#[test]
fn weighted_least_connections_is_least_connections_by_weight() {
    let mut b = bal(LoadBalancing::WeightedLeastConnections, &[1, 4]);
    // 3 in use on weight 4 is lighter than 1 on weight 1.
    assert_eq!(b.pick(&[1, 3], &[], &NO_KEY), Some(1));
    assert_eq!(b.pick(&[1, 5], &[], &NO_KEY), Some(0));
}

#[test]
fn power_of_two_choices_prefers_the_lighter_draw() {
    let mut b = bal(LoadBalancing::PowerOfTwoChoices, &[1, 1]);
    // With two targets both are always drawn: the idle one always wins.
    for _ in 0..100 {
        assert_eq!(b.pick(&[5, 0], &[], &NO_KEY), Some(1));
    }
}

/// Which target each of `keys` clients goes to.
fn placement(b: &mut Balancer, n: usize, keys: u32, excluded: &[usize]) -> Vec<usize> {
    let active = vec![0u32; n];
    (0..keys)
        .map(|k| b.pick(&active, excluded, &client(k)).unwrap())
        .collect()
}

#[test]
fn hashing_keeps_a_client_on_one_target_and_spreads_clients() {
    for lb in [
        LoadBalancing::IpHash,
        LoadBalancing::ConsistentHash,
        LoadBalancing::Maglev,
    ] {
        let mut b = bal(lb, &[1, 1, 1, 1]);
        let first = placement(&mut b, 4, 4000, &[]);
        assert_eq!(
            first,
            placement(&mut b, 4, 4000, &[]),
            "{lb:?} is not stable"
        );
        let mut count = [0usize; 4];
        for &t in &first {
            count[t] += 1;
        }
        for c in count {
            assert!((700..1300).contains(&c), "{lb:?} spreads badly: {count:?}");
        }
        // The port is not part of the key, and every worker (a new balancer) agrees.
        let mut other = bal(lb, &[1, 1, 1, 1]);
        assert_eq!(
            first,
            placement(&mut other, 4, 4000, &[]),
            "{lb:?} differs between balancers"
        );
    }
}

#[test]
fn hashing_moves_only_the_keys_of_an_excluded_target() {
    for lb in [
        LoadBalancing::IpHash,
        LoadBalancing::ConsistentHash,
        LoadBalancing::Maglev,
    ] {
        let mut b = bal(lb, &[1, 1, 1, 1]);
        let before = placement(&mut b, 4, 4000, &[]);
        let after = placement(&mut b, 4, 4000, &[2]);
        let mut moved_to: HashMap<usize, usize> = HashMap::new();
        for (k, (&x, &y)) in before.iter().zip(&after).enumerate() {
            if x == 2 {
                assert_ne!(y, 2, "{lb:?}: key {k} still on the excluded target");
                *moved_to.entry(y).or_default() += 1;
            } else {
                assert_eq!(x, y, "{lb:?}: key {k} of target {x} moved to {y}");
            }
        }
        // Its keys spread over the others rather than all landing on one.
        assert!(moved_to.len() >= 2, "{lb:?}: {moved_to:?}");
    }
}

#[test]
fn ring_rebuilt_without_a_target_moves_only_its_keys() {
    let a = addrs(4);
    let all: Vec<(&str, u32)> = a.iter().map(|s| (s.as_str(), 1)).collect();
    let without: Vec<(&str, u32)> = all.iter().copied().filter(|(s, _)| *s != a[1]).collect();
    for lb in [LoadBalancing::ConsistentHash, LoadBalancing::Maglev] {
        let mut full = Balancer::new(lb, &all);
        let mut less = Balancer::new(lb, &without);
        let before = placement(&mut full, 4, 4000, &[]);
        let after: Vec<&str> = placement(&mut less, 3, 4000, &[])
            .into_iter()
            .map(|i| without[i].0)
            .collect();
        let moved = before
            .iter()
            .zip(&after)
            .filter(|(&x, &y)| x != 1 && all[x].0 != y)
            .count();
        // The ring is exact; Maglev moves a small fraction of other keys by design.
        let allowed = if lb == LoadBalancing::ConsistentHash {
            0
        } else {
            4000 / 50
        };
        assert!(
            moved <= allowed,
            "{lb:?}: {moved} keys of remaining targets moved"
        );
    }
}

#[test]
fn maglev_table_gives_each_target_an_equal_share() {
    let a = addrs(5);
    let t: Vec<(&str, u32)> = a.iter().map(|s| (s.as_str(), 1)).collect();
    let mut b = Balancer::new(LoadBalancing::Maglev, &t);
    let got = shares(&mut b, 5, 50_000);
    assert_shares(&got, &[0.2; 5], 0.03, "maglev");
}

#[test]
fn peak_ewma_avoids_the_slow_target_and_forgets_a_spike() {
    let mut e = ewma::PeakEwma::new(2);
    let t0 = Instant::now();
    e.observe(0, Duration::from_millis(5), t0);
    e.observe(1, Duration::from_millis(100), t0);
    let picked: Vec<usize> = (0..10)
        .filter_map(|_| e.pick(&[1, 1], &[0, 0], |_| true))
        .collect();
    assert!(picked.iter().all(|&i| i == 0), "{picked:?}");
    // Busy enough, the fast target stops winning: 5 ms x 30 > 100 ms x 1.
    assert_eq!(e.pick(&[1, 1], &[30, 0], |_| true), Some(1));
    // A spike counts at once...
    e.observe(0, Duration::from_millis(500), t0);
    assert!(e.estimate_ns(0) >= 500e6);
    // ...and fades with faster answers (10 s time constant).
    e.observe(0, Duration::from_millis(5), t0 + Duration::from_secs(30));
    assert!(e.estimate_ns(0) < 40e6, "{}", e.estimate_ns(0));
}

#[test]
fn every_algorithm_returns_none_when_everything_is_excluded() {
    for lb in ALL {
        let mut b = bal(lb, &[1, 1]);
        assert_eq!(b.pick(&[0, 0], &[0, 1], &client(1)), None, "{lb:?}");
        assert_eq!(b.pick(&[0, 0], &[0], &client(1)), Some(1), "{lb:?}");
        let mut empty = bal(lb, &[]);
        assert_eq!(empty.pick(&[], &[], &client(1)), None, "{lb:?}");
    }
}
