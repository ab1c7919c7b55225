//! Peak EWMA (Finagle's, also upstream Zentinel's): a latency estimate per target that jumps
//! up to any slower sample at once and decays towards faster ones with a 10 s time constant;
//! the target with the lowest estimate times (connections in use + 1), relative to weight,
//! wins.

use std::time::{Duration, Instant};

/// Decay time constant.
const TAU: Duration = Duration::from_secs(10);
/// Estimate of a target never measured: low, so new targets get tried (upstream: 1 ms).
const INITIAL_NS: f64 = 1_000_000.0;

#[derive(Debug, Clone)]
pub struct PeakEwma {
    /// Latency estimate in nanoseconds, and when it was last updated.
    estimate: Vec<(f64, Option<Instant>)>,
    /// Tie breaker, as for least connections.
    cursor: usize,
}

impl PeakEwma {
    pub fn new(n: usize) -> Self {
        PeakEwma {
            estimate: vec![(INITIAL_NS, None); n],
            cursor: 0,
        }
    }

    pub fn observe(&mut self, target: usize, rtt: Duration, now: Instant) {
        let Some((est, at)) = self.estimate.get_mut(target) else {
            return;
        };
        let sample = rtt.as_nanos() as f64;
        if sample > *est {
            *est = sample;
        } else {
            let elapsed = at.map_or(TAU, |t| now.saturating_duration_since(t));
            let w = (-elapsed.as_secs_f64() / TAU.as_secs_f64()).exp();
            *est = *est * w + sample * (1.0 - w);
        }
        *at = Some(now);
    }

    pub fn pick(
        &mut self,
        weights: &[u32],
        active: &[u32],
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let n = self.estimate.len().min(weights.len());
        if n == 0 {
            return None;
        }
        let score = |i: usize| {
            let load = f64::from(active.get(i).copied().unwrap_or(0)) + 1.0;
            self.estimate[i].0 * load / f64::from(weights[i].max(1))
        };
        let mut best: Option<(usize, f64)> = None;
        for i in (0..n)
            .map(|off| (self.cursor + off) % n)
            .filter(|&i| eligible(i))
        {
            let s = score(i);
            if best.is_none_or(|(_, b)| s < b) {
                best = Some((i, s));
            }
        }
        self.cursor = (self.cursor + 1) % n;
        best.map(|(i, _)| i)
    }

    #[cfg(test)]
    pub fn estimate_ns(&self, target: usize) -> f64 {
        self.estimate[target].0
    }
}
