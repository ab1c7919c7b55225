//! When a draining worker closes what: its drain as a state machine, without sockets or clocks
//! (`now` comes with every event), driven by `event_loop/drain.rs`.
//!
//! A drain ends at its deadline, where whatever is left is closed. Before it, the sessions
//! that would otherwise all be closed at one instant are closed **spread** over a window of
//! `spread`, so that their clients do not all reconnect at once (HAProxy's `close-spread-time`
//! is the idea; `system { close-spread-time-secs }` here):
//!
//! - an idle keep-alive connection is kept until near the deadline (a client that sends its
//!   next request meanwhile is served, with `Connection: close`), then half-closed and given
//!   `linger` to see its FIN before the deadline, so that a request racing with the close
//!   sees an EOF, not a reset;
//! - a tunnel (TCP listener, WebSocket) runs as long as it can, then is closed at its slot.
//!
//! With `n` sessions to spread, session `i` (0-based, in the order given) must be gone by
//! `deadline - spread + spread * (i + 1) / n`: tunnels are closed at that time, idle
//! connections half-closed `linger` earlier. The last slot is the deadline itself, so a lone
//! tunnel keeps its whole drain, and `spread` 0 is the behaviour from before the spread: idle
//! connections half-closed `linger` before the deadline, tunnels closed at it. The sessions
//! are listed once, when the earliest slot can come (`deadline - spread - linger`, or at the
//! start of a drain shorter than that): the ones that ended by then need no slot.
//!
//! `FinishNow` (the master's `FinishDrain`, past `max-draining-generations`) closes the idle
//! connections at once and drops their slots; tunnels and requests in flight keep theirs and
//! the deadline. A second drain with an earlier deadline (a stop during an upgrade's drain)
//! moves the deadline and plans the spread again; a later one changes nothing.
//!
//! The state and event table is in `docs/design/drain-deadlines.md`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The default spread is at most this long: 5 s of reconnects is a gentle ramp for the new
/// workers even for tens of thousands of connections, and a longer window only keeps old
/// workers around.
pub const MAX_DEFAULT_SPREAD: Duration = Duration::from_secs(5);

/// The default spread is at most this share of the drain (1/10): the window is taken from the
/// end of the drain, so a tunnel in an early slot loses at most a tenth of its drain.
pub const DEFAULT_SPREAD_DIVISOR: u32 = 10;

/// The spread of a drain of `timeout`: `configured` (`close-spread-time-secs`), else
/// min(`MAX_DEFAULT_SPREAD`, `timeout` / `DEFAULT_SPREAD_DIVISOR`); never longer than the
/// drain itself.
pub fn spread_for(configured: Option<Duration>, timeout: Duration) -> Duration {
    configured
        .unwrap_or_else(|| MAX_DEFAULT_SPREAD.min(timeout / DEFAULT_SPREAD_DIVISOR))
        .min(timeout)
}

/// What a session is to the spread, when the sessions are listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpreadKind {
    /// Between two requests: half-closed `linger` before its slot.
    Idle,
    /// A tunnel: closed at its slot.
    Tunnel,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Drain again within `timeout` from `now` (a second `Drain`).
    Drain { now: Instant, timeout: Duration },
    /// Close the idle connections now (`FinishDrain`).
    FinishNow,
    /// The timer fired: do what is due at `now`.
    Tick { now: Instant },
    /// The answer to [`Command::ListSessions`]: the sessions to spread, in the order their
    /// slots go (sessions in flight are left out: they end on their own or at the deadline).
    Sessions {
        now: Instant,
        sessions: Vec<(usize, SpreadKind)>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Say which sessions to spread now: answer with [`Event::Sessions`].
    ListSessions,
    /// Session `key`'s slot came: close it as `kind` says, if it still is one (an idle
    /// connection that took a request meanwhile is left alone).
    Close { key: usize, kind: SpreadKind },
    /// Half-close every idle connection now.
    CloseIdle,
    /// The deadline: close every session left, then exit.
    CloseAll,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    at: Instant,
    key: usize,
    kind: SpreadKind,
}

#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Before the earliest slot can come.
    Waiting,
    /// [`Command::ListSessions`] issued; the answer plans the slots.
    Listing,
    /// Slots planned, due ones closed as time passes.
    Spreading(VecDeque<Slot>),
    /// The deadline passed.
    Done,
}

#[derive(Debug)]
pub struct DrainSchedule {
    started: Instant,
    deadline: Instant,
    configured: Option<Duration>,
    spread: Duration,
    linger: Duration,
    finishing: bool,
    step: Step,
}

impl DrainSchedule {
    /// A drain of `timeout` from `now`, spread over `configured` or the default for `timeout`.
    pub fn start(
        now: Instant,
        timeout: Duration,
        configured: Option<Duration>,
        linger: Duration,
    ) -> DrainSchedule {
        DrainSchedule {
            started: now,
            deadline: now + timeout,
            configured,
            spread: spread_for(configured, timeout),
            linger,
            finishing: false,
            step: Step::Waiting,
        }
    }

    /// When the drain ends.
    pub fn drain_deadline(&self) -> Instant {
        self.deadline
    }

    /// The window the closes are spread over.
    pub fn spread(&self) -> Duration {
        self.spread
    }

    /// The master asked this worker to finish now.
    pub fn finishing(&self) -> bool {
        self.finishing
    }

    /// When the next [`Event::Tick`] is due (`None` once done).
    pub fn deadline(&self) -> Option<Instant> {
        match &self.step {
            Step::Waiting => Some(self.plan_at().min(self.deadline)),
            Step::Listing => Some(self.deadline),
            Step::Spreading(slots) => Some(
                slots
                    .front()
                    .map_or(self.deadline, |slot| slot.at.min(self.deadline)),
            ),
            Step::Done => None,
        }
    }

    pub fn handle(&mut self, event: Event) -> Vec<Command> {
        if self.step == Step::Done {
            return Vec::new();
        }
        match event {
            Event::Drain { now, timeout } => {
                let deadline = now + timeout;
                if deadline < self.deadline {
                    self.deadline = deadline;
                    self.spread = spread_for(self.configured, timeout);
                    // Planned for the old deadline: list again when the new window opens.
                    self.step = Step::Waiting;
                }
                Vec::new()
            }
            Event::FinishNow => {
                self.finishing = true;
                if let Step::Spreading(slots) = &mut self.step {
                    slots.retain(|slot| slot.kind != SpreadKind::Idle);
                }
                vec![Command::CloseIdle]
            }
            Event::Tick { now } => self.tick(now),
            Event::Sessions { now, sessions } => {
                if self.step != Step::Listing {
                    return Vec::new();
                }
                self.step = Step::Spreading(self.plan(now, &sessions));
                self.due(now)
            }
        }
    }

    fn tick(&mut self, now: Instant) -> Vec<Command> {
        if now >= self.deadline {
            self.step = Step::Done;
            return vec![Command::CloseAll];
        }
        match self.step {
            Step::Waiting if now >= self.plan_at() => {
                self.step = Step::Listing;
                vec![Command::ListSessions]
            }
            Step::Spreading(_) => self.due(now),
            _ => Vec::new(),
        }
    }

    /// The earliest time a slot can come: the first idle connection's half-close.
    fn plan_at(&self) -> Instant {
        self.deadline
            .checked_sub(self.spread + self.linger)
            .map_or(self.started, |at| at.max(self.started))
    }

    fn plan(&self, now: Instant, sessions: &[(usize, SpreadKind)]) -> VecDeque<Slot> {
        let n = u32::try_from(sessions.len()).unwrap_or(u32::MAX).max(1);
        let window_start = self.deadline.checked_sub(self.spread).unwrap_or(now);
        let mut slots: Vec<Slot> = sessions
            .iter()
            .enumerate()
            .map(|(i, &(key, kind))| {
                let i = u32::try_from(i + 1).unwrap_or(u32::MAX);
                let share = self.spread.checked_mul(i).map_or(self.spread, |d| d / n);
                let gone_by = window_start + share;
                let at = match kind {
                    SpreadKind::Idle if self.finishing => now,
                    SpreadKind::Idle => gone_by.checked_sub(self.linger).unwrap_or(now),
                    SpreadKind::Tunnel => gone_by,
                };
                Slot {
                    at: at.max(now),
                    key,
                    kind,
                }
            })
            .collect();
        slots.sort_by_key(|slot| slot.at);
        slots.into()
    }

    fn due(&mut self, now: Instant) -> Vec<Command> {
        let Step::Spreading(slots) = &mut self.step else {
            return Vec::new();
        };
        let mut out = Vec::new();
        while let Some(slot) = slots.front().filter(|slot| slot.at <= now) {
            out.push(Command::Close {
                key: slot.key,
                kind: slot.kind,
            });
            slots.pop_front();
        }
        out
    }
}

#[cfg(test)]
#[path = "drain_schedule_tests.rs"]
mod tests;
