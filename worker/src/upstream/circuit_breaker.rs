//! A circuit breaker per upstream target, per worker (`circuit-breaker { ... }`).
//!
//! The state machine is documented as a table in docs/design/circuit-breaker.md. It is kept
//! apart from I/O so it can be driven with made-up instants; the pool asks it whether a target
//! may be chosen ([`CircuitBreaker::allows`]), tells it when one is chosen
//! ([`CircuitBreaker::admit`]) and reports each attempt's outcome.

use std::time::{Duration, Instant};

use zentinel_protocol::config::CircuitBreakerConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Traffic flows; consecutive failures are counted.
    Closed,
    /// The target is skipped until `until`.
    Open { until: Instant },
    /// Trial requests: at most `half_open_max_requests` in flight at once.
    HalfOpen {
        /// Trials admitted and not yet reported.
        in_flight: u32,
        /// When the last trial was admitted: trials never reported (the client went away
        /// first) are forgotten after `timeout_seconds`, so the breaker cannot stick.
        last_admit: Instant,
    },
}

impl State {
    pub fn name(&self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open { .. } => "open",
            State::HalfOpen { .. } => "half-open",
        }
    }
}

/// A change of state, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub from: &'static str,
    pub to: &'static str,
}

#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    state: State,
    failures: u32,
    successes: u32,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker {
            state: State::Closed,
            failures: 0,
            successes: 0,
        }
    }
}

fn timeout(cfg: &CircuitBreakerConfig) -> Duration {
    Duration::from_secs(cfg.timeout_seconds.max(1))
}

impl CircuitBreaker {
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether the target may be chosen now (no state change: choosing is [`Self::admit`]).
    pub fn allows(&self, cfg: &CircuitBreakerConfig, now: Instant) -> bool {
        match self.state {
            State::Closed => true,
            State::Open { until } => now >= until,
            State::HalfOpen {
                in_flight,
                last_admit,
            } => in_flight < cfg.half_open_max_requests.max(1) || now >= last_admit + timeout(cfg),
        }
    }

    /// The target was chosen for an attempt (only after [`Self::allows`] said yes). An open
    /// breaker whose time is over becomes half-open and this attempt is its first trial.
    pub fn admit(&mut self, cfg: &CircuitBreakerConfig, now: Instant) -> Option<Change> {
        match self.state {
            State::Closed => None,
            State::Open { .. } => {
                self.successes = 0;
                self.state = State::HalfOpen {
                    in_flight: 1,
                    last_admit: now,
                };
                Some(Change {
                    from: "open",
                    to: "half-open",
                })
            }
            State::HalfOpen {
                in_flight,
                last_admit,
            } => {
                // Trials unreported for a whole timeout were lost: start counting again.
                let in_flight = if now >= last_admit + timeout(cfg) {
                    0
                } else {
                    in_flight
                };
                self.state = State::HalfOpen {
                    in_flight: in_flight.saturating_add(1),
                    last_admit: now,
                };
                None
            }
        }
    }

    /// An attempt on the target succeeded (a response below 500).
    pub fn on_success(&mut self, cfg: &CircuitBreakerConfig) -> Option<Change> {
        match self.state {
            State::Closed => {
                self.failures = 0;
                None
            }
            // A response to a request admitted before the breaker opened: it says nothing
            // about now, the timeout runs on.
            State::Open { .. } => None,
            State::HalfOpen {
                in_flight,
                last_admit,
            } => {
                self.successes = self.successes.saturating_add(1);
                if self.successes >= cfg.success_threshold.max(1) {
                    self.state = State::Closed;
                    self.failures = 0;
                    self.successes = 0;
                    return Some(Change {
                        from: "half-open",
                        to: "closed",
                    });
                }
                // The trial is over: its slot goes to the next one.
                self.state = State::HalfOpen {
                    in_flight: in_flight.saturating_sub(1),
                    last_admit,
                };
                None
            }
        }
    }

    /// An attempt on the target failed (connect failure or timeout, reset or close before a
    /// response, response timeout, or a response of 500 or more).
    pub fn on_failure(&mut self, cfg: &CircuitBreakerConfig, now: Instant) -> Option<Change> {
        match self.state {
            State::Closed => {
                self.successes = 0;
                self.failures = self.failures.saturating_add(1);
                if self.failures >= cfg.failure_threshold.max(1) {
                    self.open(cfg, now);
                    return Some(Change {
                        from: "closed",
                        to: "open",
                    });
                }
                None
            }
            // Already out; late failures do not extend the timeout.
            State::Open { .. } => None,
            State::HalfOpen { .. } => {
                self.open(cfg, now);
                Some(Change {
                    from: "half-open",
                    to: "open",
                })
            }
        }
    }

    fn open(&mut self, cfg: &CircuitBreakerConfig, now: Instant) {
        self.failures = 0;
        self.successes = 0;
        self.state = State::Open {
            until: now + timeout(cfg),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(failures: u32, successes: u32, secs: u64, half_open: u32) -> CircuitBreakerConfig {
        CircuitBreakerConfig {
            failure_threshold: failures,
            success_threshold: successes,
            timeout_seconds: secs,
            half_open_max_requests: half_open,
        }
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn closed_opens_after_threshold_consecutive_failures() {
        let c = cfg(3, 1, 10, 1);
        let t = Instant::now();
        let mut b = CircuitBreaker::default();
        assert_eq!(b.on_failure(&c, t), None);
        assert_eq!(b.on_failure(&c, t), None);
        assert!(b.allows(&c, t));
        let change = b.on_failure(&c, t);
        assert_eq!(change.map(|c| (c.from, c.to)), Some(("closed", "open")));
        assert!(!b.allows(&c, t));
        assert!(!b.allows(&c, t + 9 * S));
    }

    #[test]
    fn a_success_in_closed_resets_the_failure_count() {
        let c = cfg(2, 1, 10, 1);
        let t = Instant::now();
        let mut b = CircuitBreaker::default();
        b.on_failure(&c, t);
        assert_eq!(b.on_success(&c), None);
        assert_eq!(b.on_failure(&c, t), None, "not consecutive");
        assert!(b.on_failure(&c, t).is_some());
    }

    #[test]
    fn open_admits_a_trial_after_the_timeout_and_half_opens() {
        let c = cfg(1, 2, 10, 1);
        let t = Instant::now();
        let mut b = CircuitBreaker::default();
        b.on_failure(&c, t);
        // Late outcomes of requests admitted before opening change nothing.
        assert_eq!(b.on_success(&c), None);
        assert_eq!(b.on_failure(&c, t + 5 * S), None);
        assert!(!b.allows(&c, t + 9 * S));
        assert!(b.allows(&c, t + 10 * S));
        let change = b.admit(&c, t + 10 * S);
        assert_eq!(change.map(|c| (c.from, c.to)), Some(("open", "half-open")));
        // One trial at a time.
        assert!(!b.allows(&c, t + 10 * S));
    }

    #[test]
    fn half_open_closes_after_success_threshold_trials() {
        let c = cfg(1, 2, 10, 1);
        let t = Instant::now() + 10 * S;
        let mut b = CircuitBreaker::default();
        b.on_failure(&c, t - 10 * S);
        b.admit(&c, t);
        assert_eq!(b.on_success(&c), None);
        assert!(b.allows(&c, t), "the finished trial frees its slot");
        assert_eq!(b.admit(&c, t), None);
        let change = b.on_success(&c);
        assert_eq!(
            change.map(|c| (c.from, c.to)),
            Some(("half-open", "closed"))
        );
        assert_eq!(b.state(), State::Closed);
        // Fresh counts: it takes the whole threshold to open again.
        assert_eq!(
            b.on_failure(&c, t),
            Some(Change {
                from: "closed",
                to: "open"
            })
        );
    }

    #[test]
    fn half_open_reopens_on_a_failure() {
        let c = cfg(1, 3, 10, 2);
        let t = Instant::now() + 10 * S;
        let mut b = CircuitBreaker::default();
        b.on_failure(&c, t - 10 * S);
        b.admit(&c, t);
        b.on_success(&c);
        let change = b.on_failure(&c, t + S);
        assert_eq!(change.map(|c| (c.from, c.to)), Some(("half-open", "open")));
        assert!(
            !b.allows(&c, t + 10 * S),
            "the timeout restarts at the failure"
        );
        assert!(b.allows(&c, t + 11 * S));
    }

    #[test]
    fn half_open_limits_trials_in_flight() {
        let c = cfg(1, 5, 10, 2);
        let t = Instant::now() + 10 * S;
        let mut b = CircuitBreaker::default();
        b.on_failure(&c, t - 10 * S);
        b.admit(&c, t);
        assert!(b.allows(&c, t));
        b.admit(&c, t);
        assert!(!b.allows(&c, t), "two trials in flight");
        b.on_success(&c);
        assert!(b.allows(&c, t));
    }

    #[test]
    fn lost_trials_are_forgotten_after_the_timeout() {
        let c = cfg(1, 1, 10, 1);
        let t = Instant::now() + 10 * S;
        let mut b = CircuitBreaker::default();
        b.on_failure(&c, t - 10 * S);
        b.admit(&c, t);
        assert!(!b.allows(&c, t + 9 * S));
        assert!(b.allows(&c, t + 10 * S), "the trial never reported");
        b.admit(&c, t + 10 * S);
        assert!(!b.allows(&c, t + 10 * S));
        assert!(b.on_success(&c).is_some());
    }
}
