//! Connection counting: least connections (weighted, the same for `least_connections` and
//! `weighted_least_connections`) and power of two choices.

use super::random::{self, Rng};

/// Whether target `a` is less loaded than `b`: active/weight compared without division.
fn lighter(weights: &[u32], active: &[u32], a: usize, b: usize) -> bool {
    let load = |i: usize| u64::from(active.get(i).copied().unwrap_or(0));
    load(a) * u64::from(weights[b]) < load(b) * u64::from(weights[a])
}

/// The eligible target with the fewest connections in use relative to its weight. The scan
/// starts one further each time, so equal targets share an idle pool instead of the first one
/// taking every request.
pub fn least_loaded(
    weights: &[u32],
    active: &[u32],
    cursor: &mut usize,
    eligible: impl Fn(usize) -> bool,
) -> Option<usize> {
    let n = weights.len();
    if n == 0 {
        return None;
    }
    let mut best: Option<usize> = None;
    for i in (0..n)
        .map(|off| (*cursor + off) % n)
        .filter(|&i| eligible(i))
    {
        if best.is_none_or(|b| lighter(weights, active, i, b)) {
            best = Some(i);
        }
    }
    *cursor = (*cursor + 1) % n;
    best
}

/// Two weighted random draws among eligible targets; the less loaded wins (the first on a
/// tie). Nearly as good as least connections, without its herding when several balancers
/// (one per worker) see stale counts.
pub fn power_of_two(
    rng: &mut Rng,
    weights: &[u32],
    active: &[u32],
    eligible: impl Fn(usize) -> bool + Copy,
) -> Option<usize> {
    let a = random::weighted(rng, weights, eligible)?;
    let b = random::weighted(rng, weights, |i| i != a && eligible(i));
    match b {
        Some(b) if lighter(weights, active, b, a) => Some(b),
        _ => Some(a),
    }
}
