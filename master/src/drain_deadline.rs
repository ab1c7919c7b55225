//! A retired worker's drain deadline, carried from master to master across binary upgrades
//! (issue 14, point 2; design: `docs/design/drain-deadlines.md`).
//!
//! A worker is retired with a drain timeout (`zentinel-ctl upgrade --drain-timeout`, or the
//! configuration's `graceful-shutdown-timeout-secs`); it closes what is left at that deadline
//! and the master kills it `DRAIN_KILL_GRACE` later if it is still there. The deadline is a
//! fact about the worker, not about the master that retired it: a later master adopting the
//! draining worker must keep it, not start a new drain of its own.
//!
//! The state file carries it as a reading of `CLOCK_MONOTONIC` (ms). That clock is
//! system-wide, it survives `exec`, and the new master is a forked child of the old one, so
//! both read the same clock (same boot, same time namespace). It is also the clock the worker
//! times its own drain with (`Instant`), so a wall-clock step (NTP, `date -s`) between the
//! retirement and the deadline moves neither the worker's deadline nor the master's kill. A
//! wall-clock deadline would be moved by such a step at every hand-over.
//!
//! `Instant` does not expose its clock reading, so each conversion samples both clocks
//! together ([`ClockPair`]) and maps one onto the other; the two samples are microseconds
//! apart, and values are rounded to the nearest millisecond, so a deadline does not drift
//! across any number of hand-overs.

use std::time::{Duration, Instant};

use nix::time::{clock_gettime, ClockId};

/// Longest remaining drain a state file can give (a bound, so that adding it to an `Instant`
/// cannot overflow): about 136 years.
const MAX_REMAINING: Duration = Duration::from_secs(u32::MAX as u64);

/// `Instant::now()` and `CLOCK_MONOTONIC` read together.
#[derive(Debug, Clone, Copy)]
pub struct ClockPair {
    instant: Instant,
    monotonic: Duration,
}

impl ClockPair {
    /// Both clocks now; `None` if `CLOCK_MONOTONIC` cannot be read (it always can on Linux;
    /// callers then fall back to the configuration's drain timeout).
    pub fn now() -> Option<ClockPair> {
        let instant = Instant::now();
        let spec = clock_gettime(ClockId::CLOCK_MONOTONIC).ok()?;
        Some(ClockPair {
            instant,
            monotonic: Duration::from(spec),
        })
    }

    /// A pair from explicit readings (tests).
    pub fn at(instant: Instant, monotonic: Duration) -> ClockPair {
        ClockPair { instant, monotonic }
    }

    /// The `CLOCK_MONOTONIC` time (ms, rounded) of `deadline`, for the state file. A deadline
    /// already passed gives a time before now (0 at the earliest).
    pub fn monotonic_ms(&self, deadline: Instant) -> u64 {
        let at = match deadline.checked_duration_since(self.instant) {
            Some(ahead) => self.monotonic.saturating_add(ahead),
            None => self
                .monotonic
                .saturating_sub(self.instant.duration_since(deadline)),
        };
        let ms = at.as_micros().saturating_add(500) / 1000;
        u64::try_from(ms).unwrap_or(u64::MAX)
    }

    /// This process's `Instant` of a `CLOCK_MONOTONIC` time (ms) from the state file. A time
    /// already passed gives an instant before now (now at the earliest this process can
    /// represent), so the deadline is acted on at once.
    pub fn instant_of(&self, monotonic_ms: u64) -> Instant {
        let at = Duration::from_millis(monotonic_ms);
        match at.checked_sub(self.monotonic) {
            Some(ahead) => self.instant + ahead.min(MAX_REMAINING),
            None => self
                .instant
                .checked_sub(self.monotonic - at)
                .unwrap_or(self.instant),
        }
    }
}

/// Where an adopted draining worker's drain ends: the deadline its state record carries
/// (`recorded`, `CLOCK_MONOTONIC` ms), kept whatever this master's configuration says; or, for
/// a record without one (a predecessor from before format 5), `config_drain` from now, as
/// before.
pub fn adopted_drain_deadline(
    recorded: Option<u64>,
    clocks: Option<ClockPair>,
    config_drain: Duration,
) -> Instant {
    match (recorded, clocks) {
        (Some(ms), Some(clocks)) => clocks.instant_of(ms),
        (_, Some(clocks)) => clocks.instant + config_drain,
        (_, None) => Instant::now() + config_drain,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    /// Equal within the millisecond the state file rounds to.
    fn assert_close(got: Duration, want: Duration) {
        let error = got.abs_diff(want);
        assert!(error <= Duration::from_millis(1), "{got:?} vs {want:?}");
    }

    /// The clocks of a master that took over `after` the one sampled in `pair`.
    fn later(pair: ClockPair, after: Duration) -> ClockPair {
        ClockPair::at(pair.instant + after, pair.monotonic + after)
    }

    /// The clocks of the first master, with `CLOCK_MONOTONIC` at an arbitrary uptime.
    fn first_master() -> ClockPair {
        ClockPair::at(
            Instant::now(),
            Duration::from_millis(86_400_123) + Duration::from_nanos(456_789),
        )
    }

    #[test]
    fn a_deadline_keeps_its_instant_across_many_hand_overs() {
        // Retired with --drain-timeout 230s; hand-overs every 4 s (the reproduction:
        // 40 upgrades, configuration drain 10 s).
        let mut clocks = first_master();
        let deadline = clocks.instant + 230 * SEC;
        let mut recorded = clocks.monotonic_ms(deadline);
        for hand_over in 1..=40u32 {
            let next = later(
                clocks,
                4 * SEC + Duration::from_micros(u64::from(hand_over) * 37),
            );
            let adopted = adopted_drain_deadline(Some(recorded), Some(next), 10 * SEC);
            let error = if adopted > deadline {
                adopted - deadline
            } else {
                deadline - adopted
            };
            assert!(
                error <= Duration::from_millis(1),
                "hand-over {hand_over}: deadline moved by {error:?}"
            );
            assert_eq!(
                next.monotonic_ms(adopted),
                recorded,
                "hand-over {hand_over}: the recorded time drifted"
            );
            recorded = next.monotonic_ms(adopted);
            clocks = next;
        }
        // 160 s in: 70 s of the 230 s drain left, not the configuration's 10 s.
        let left = deadline.saturating_duration_since(clocks.instant);
        assert!(left > 69 * SEC && left <= 70 * SEC, "{left:?} left");
    }

    #[test]
    fn a_deadline_shorter_than_the_configuration_is_kept_too() {
        // --drain-timeout 1s, configuration 30 s: the new master must not extend it.
        let clocks = first_master();
        let deadline = clocks.instant + SEC;
        let next = later(clocks, Duration::from_millis(200));
        let adopted =
            adopted_drain_deadline(Some(clocks.monotonic_ms(deadline)), Some(next), 30 * SEC);
        assert_close(
            adopted.duration_since(next.instant),
            Duration::from_millis(800),
        );
    }

    #[test]
    fn a_deadline_that_passed_during_the_hand_over_is_due_at_once() {
        let clocks = first_master();
        let deadline = clocks.instant + 2 * SEC;
        let recorded = clocks.monotonic_ms(deadline);
        let next = later(clocks, 5 * SEC);
        let adopted = adopted_drain_deadline(Some(recorded), Some(next), 10 * SEC);
        assert!(
            adopted <= next.instant,
            "due at once: {adopted:?} vs {:?}",
            next.instant
        );
        assert_close(next.instant - adopted, 3 * SEC);
        // Written again by that master, it stays in the past.
        assert_eq!(next.monotonic_ms(adopted), recorded);
    }

    #[test]
    fn a_record_without_a_deadline_gets_the_configuration_drain_from_now() {
        let clocks = first_master();
        let adopted = adopted_drain_deadline(None, Some(clocks), 10 * SEC);
        assert_eq!(adopted, clocks.instant + 10 * SEC);
        let before = Instant::now();
        let unreadable_clock = adopted_drain_deadline(Some(1), None, 10 * SEC);
        assert!(unreadable_clock >= before + 10 * SEC);
    }

    #[test]
    fn extreme_recorded_times_neither_overflow_nor_panic() {
        let clocks = first_master();
        let far = adopted_drain_deadline(Some(u64::MAX), Some(clocks), SEC);
        assert_eq!(far, clocks.instant + MAX_REMAINING);
        let zero = adopted_drain_deadline(Some(0), Some(clocks), SEC);
        assert!(zero <= clocks.instant);
        // A deadline before the clock's origin is written as 0.
        let early = ClockPair::at(clocks.instant, Duration::from_millis(5));
        assert_eq!(early.monotonic_ms(clocks.instant - SEC), 0);
    }

    #[test]
    fn the_real_clocks_map_now_onto_now() {
        let clocks = ClockPair::now().expect("CLOCK_MONOTONIC");
        let now = clocks.monotonic_ms(clocks.instant);
        let again = ClockPair::now().expect("CLOCK_MONOTONIC");
        let deadline = again.instant_of(now + 5_000);
        let left = deadline.saturating_duration_since(again.instant);
        // At most 5 s (plus the half millisecond of rounding): the second reading is later.
        assert!(
            left <= 5 * SEC + Duration::from_micros(500) && left > 4 * SEC,
            "{left:?}"
        );
    }
}
