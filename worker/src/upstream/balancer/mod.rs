//! Target selection, independent of sockets: which target of a pool the next exchange goes to.

use zentinel_protocol::config::LoadBalancing;

/// Target selection, independent of sockets.
#[derive(Debug, Clone)]
pub struct Balancer {
    lb: LoadBalancing,
    weights: Vec<i64>,
    /// Smooth weighted round-robin state (nginx's algorithm): each pick adds every weight to
    /// its current value, takes the largest and subtracts the total from it. Spreads picks
    /// evenly (weights 5,1,1 give a a b a c a a, not a a a a a b c).
    current: Vec<i64>,
    /// Least-connections tie breaker, so equal targets share load instead of the first one
    /// taking every request on an idle pool.
    cursor: usize,
}

impl Balancer {
    pub fn new(lb: LoadBalancing, weights: &[u32]) -> Self {
        let weights: Vec<i64> = weights.iter().map(|&w| i64::from(w.max(1))).collect();
        Balancer {
            lb,
            current: vec![0; weights.len()],
            weights,
            cursor: 0,
        }
    }

    /// Pick a target not in `excluded` (targets that already failed for this request); None
    /// when every target is excluded. `active[i]` is the number of connections in use to
    /// target `i`.
    pub fn pick(&mut self, active: &[u32], excluded: &[usize]) -> Option<usize> {
        let n = self.weights.len();
        let eligible = |i: &usize| !excluded.contains(i);
        match self.lb {
            LoadBalancing::RoundRobin => {
                // nginx skips tried peers the same way: only eligible targets take part in the
                // round, and the winner gives back the total of those, so the state stays
                // balanced over the targets that are actually used.
                let mut best: Option<usize> = None;
                let mut total = 0;
                for i in (0..n).filter(eligible) {
                    self.current[i] += self.weights[i];
                    total += self.weights[i];
                    if best.is_none_or(|b| self.current[i] > self.current[b]) {
                        best = Some(i);
                    }
                }
                let best = best?;
                self.current[best] -= total;
                Some(best)
            }
            LoadBalancing::LeastConnections => {
                if n == 0 {
                    return None;
                }
                let mut best: Option<usize> = None;
                for i in (0..n).map(|off| (self.cursor + off) % n).filter(eligible) {
                    let a = i64::from(active.get(i).copied().unwrap_or(0));
                    best = match best {
                        None => Some(i),
                        Some(b) => {
                            let ab = i64::from(active.get(b).copied().unwrap_or(0));
                            // a/w_i < ab/w_b without division.
                            if a * self.weights[b] < ab * self.weights[i] {
                                Some(i)
                            } else {
                                Some(b)
                            }
                        }
                    };
                }
                self.cursor = (self.cursor + 1) % n;
                best
            }
        }
    }
}
