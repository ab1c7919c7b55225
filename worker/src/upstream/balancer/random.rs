//! Weighted random choice, and the small generator behind it and power of two choices.

use std::time::{SystemTime, UNIX_EPOCH};

/// xorshift64*: plenty for spreading load, no dependency, and each worker seeds its own.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn seeded() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            // Only the low 64 bits: enough to tell two starts apart.
            .map_or(0, |d| {
                u64::try_from(d.as_nanos() & u128::from(u64::MAX)).unwrap_or(0)
            });
        // Workers started in the same nanosecond still differ by pid.
        let seed = super::hash64(
            &[
                nanos.to_le_bytes(),
                u64::from(std::process::id()).to_le_bytes(),
            ]
            .concat(),
        );
        Rng(seed | 1)
    }

    #[cfg(test)]
    pub fn with_seed(seed: u64) -> Self {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0), by multiply-shift (no modulo bias worth caring about here).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// An eligible target with probability proportional to its weight.
pub fn weighted(rng: &mut Rng, weights: &[u32], eligible: impl Fn(usize) -> bool) -> Option<usize> {
    let total: u64 = (0..weights.len())
        .filter(|&i| eligible(i))
        .map(|i| u64::from(weights[i]))
        .sum();
    if total == 0 {
        return None;
    }
    let mut r = rng.below(total);
    for i in (0..weights.len()).filter(|&i| eligible(i)) {
        let w = u64::from(weights[i]);
        if r < w {
            return Some(i);
        }
        r -= w;
    }
    None
}
