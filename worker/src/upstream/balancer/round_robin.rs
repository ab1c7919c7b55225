//! Smooth weighted round robin (nginx's algorithm), for `round_robin` and `weighted`.

/// Each pick adds every eligible weight to its current value, takes the largest and subtracts
/// the total from it. Spreads picks evenly: weights 5,1,1 give a a b a c a a, not
/// a a a a a b c.
#[derive(Debug, Clone)]
pub struct SmoothWeighted {
    current: Vec<i64>,
}

impl SmoothWeighted {
    pub fn new(n: usize) -> Self {
        SmoothWeighted {
            current: vec![0; n],
        }
    }

    pub fn pick(&mut self, weights: &[u32], eligible: impl Fn(usize) -> bool) -> Option<usize> {
        // nginx skips tried peers the same way: only eligible targets take part in the round,
        // and the winner gives back the total of those, so the state stays balanced over the
        // targets that are actually used.
        let mut best: Option<usize> = None;
        let mut total = 0i64;
        for i in (0..weights.len()).filter(|&i| eligible(i)) {
            let w = i64::from(weights[i]);
            self.current[i] += w;
            total += w;
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let best = best?;
        self.current[best] -= total;
        Some(best)
    }
}
