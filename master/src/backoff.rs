//! Restart delays for crashed workers.
//!
//! A worker that keeps crashing must not turn the master into a fork bomb, yet a worker that
//! crashed once after running fine should come back at once: its share of new connections
//! waits in the listen backlog meanwhile. So the first crash restarts at once, the next ones
//! wait 100 ms, doubling up to a cap, and the count starts over once a worker has stayed up
//! for a while.

use std::time::Duration;

/// Delay before the second restart in a row (the first one is immediate).
pub const INITIAL_DELAY: Duration = Duration::from_millis(100);
/// Longest delay between two restarts.
pub const MAX_DELAY: Duration = Duration::from_secs(10);
/// A worker that ran at least this long is considered healthy: its next crash starts the
/// backoff over.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(30);

/// Exponential backoff state for one worker slot.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    healthy_after: Duration,
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(INITIAL_DELAY, MAX_DELAY, HEALTHY_AFTER)
    }
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration, healthy_after: Duration) -> Self {
        Backoff {
            initial,
            max,
            healthy_after,
            next: Duration::ZERO,
        }
    }

    /// Record a failure of a worker that had been up for `ran_for` (zero if it never became
    /// ready) and return how long to wait before restarting it.
    pub fn on_failure(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= self.healthy_after {
            self.next = Duration::ZERO;
        }
        let delay = self.next;
        self.next = if delay.is_zero() {
            self.initial
        } else {
            delay.saturating_mul(2).min(self.max)
        };
        delay
    }

    /// The delay the next failure would get (unless the worker turns out healthy).
    pub fn peek(&self) -> Duration {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn immediate_then_doubles_from_100ms_and_caps_at_10s() {
        let mut backoff = Backoff::default();
        let delays: Vec<Duration> = (0..11).map(|_| backoff.on_failure(ms(0))).collect();
        assert_eq!(
            delays,
            vec![
                ms(0),
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1600),
                ms(3200),
                ms(6400),
                ms(10_000),
                ms(10_000),
                ms(10_000),
            ]
        );
    }

    #[test]
    fn resets_after_a_healthy_run() {
        let mut backoff = Backoff::default();
        for _ in 0..7 {
            backoff.on_failure(ms(50));
        }
        assert_eq!(backoff.peek(), ms(6400));
        assert_eq!(backoff.on_failure(HEALTHY_AFTER), ms(0));
        assert_eq!(backoff.on_failure(ms(0)), ms(100));
    }

    #[test]
    fn a_run_just_short_of_healthy_does_not_reset() {
        let mut backoff = Backoff::default();
        backoff.on_failure(ms(0));
        backoff.on_failure(ms(0));
        backoff.on_failure(ms(0));
        assert_eq!(backoff.on_failure(HEALTHY_AFTER - ms(1)), ms(400));
    }

    #[test]
    fn never_overflows() {
        let mut backoff = Backoff::new(Duration::MAX / 2, Duration::MAX, HEALTHY_AFTER);
        backoff.on_failure(ms(0));
        backoff.on_failure(ms(0));
        backoff.on_failure(ms(0));
        assert_eq!(backoff.on_failure(ms(0)), Duration::MAX);
    }
}
