//! Every event of the drain schedule in every step (table in docs/design/drain-deadlines.md).

use super::*;

const SEC: Duration = Duration::from_secs(1);
const LINGER: Duration = SEC;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Tick at `at`; if the sessions are asked for, answer with `sessions`.
fn tick(s: &mut DrainSchedule, at: Instant, sessions: &[(usize, SpreadKind)]) -> Vec<Command> {
    let mut out = s.handle(Event::Tick { now: at });
    if out == vec![Command::ListSessions] {
        out = s.handle(Event::Sessions {
            now: at,
            sessions: sessions.to_vec(),
        });
    }
    out
}

/// Tick at every wake-up until `until`, collecting (time since `t0`, command).
fn run_until(
    s: &mut DrainSchedule,
    t0: Instant,
    until: Instant,
    sessions: &[(usize, SpreadKind)],
) -> Vec<(Duration, Command)> {
    let mut seen = Vec::new();
    while let Some(at) = s.deadline().filter(|&at| at <= until) {
        for command in tick(s, at, sessions) {
            seen.push((at - t0, command));
        }
    }
    seen
}

fn close(key: usize, kind: SpreadKind) -> Command {
    Command::Close { key, kind }
}

#[test]
fn the_default_spread_is_a_tenth_of_the_drain_up_to_five_seconds() {
    assert_eq!(spread_for(None, 30 * SEC), 3 * SEC);
    assert_eq!(spread_for(None, 100 * SEC), 5 * SEC);
    assert_eq!(spread_for(None, SEC), ms(100));
    assert_eq!(spread_for(None, Duration::ZERO), Duration::ZERO);
    assert_eq!(spread_for(Some(2 * SEC), 30 * SEC), 2 * SEC);
    assert_eq!(spread_for(Some(Duration::ZERO), 30 * SEC), Duration::ZERO);
    // Never longer than the drain.
    assert_eq!(spread_for(Some(60 * SEC), 10 * SEC), 10 * SEC);
}

#[test]
fn without_a_spread_idle_connections_go_a_linger_before_the_deadline_and_tunnels_at_it() {
    let t0 = Instant::now();
    let mut s = DrainSchedule::start(t0, 5 * SEC, Some(Duration::ZERO), LINGER);
    assert_eq!(
        s.deadline(),
        Some(t0 + 4 * SEC),
        "listed at deadline - linger"
    );
    assert!(tick(&mut s, t0 + 2 * SEC, &[]).is_empty(), "nothing early");
    let sessions = [
        (3, SpreadKind::Idle),
        (5, SpreadKind::Tunnel),
        (8, SpreadKind::Idle),
    ];
    let seen = run_until(&mut s, t0, t0 + 10 * SEC, &sessions);
    assert_eq!(
        seen,
        vec![
            (4 * SEC, close(3, SpreadKind::Idle)),
            (4 * SEC, close(8, SpreadKind::Idle)),
            // The tunnel's slot is the deadline itself: closed with the rest.
            (5 * SEC, Command::CloseAll),
        ]
    );
    assert_eq!(s.deadline(), None);
    assert!(tick(&mut s, t0 + 11 * SEC, &sessions).is_empty(), "done");
}

#[test]
fn idle_connections_are_half_closed_evenly_over_the_window_before_the_deadline() {
    let t0 = Instant::now();
    let mut s = DrainSchedule::start(t0, 20 * SEC, Some(4 * SEC), LINGER);
    // The window is [16 s, 20 s]; idle connections go a linger earlier: [15 s, 19 s].
    assert_eq!(s.deadline(), Some(t0 + 15 * SEC));
    let sessions: Vec<(usize, SpreadKind)> = (0..4).map(|k| (k, SpreadKind::Idle)).collect();
    let seen = run_until(&mut s, t0, t0 + 20 * SEC, &sessions);
    assert_eq!(
        seen,
        vec![
            (16 * SEC, close(0, SpreadKind::Idle)),
            (17 * SEC, close(1, SpreadKind::Idle)),
            (18 * SEC, close(2, SpreadKind::Idle)),
            (19 * SEC, close(3, SpreadKind::Idle)),
            (20 * SEC, Command::CloseAll),
        ]
    );
}

#[test]
fn tunnels_are_closed_over_the_last_window_the_last_at_the_deadline() {
    let t0 = Instant::now();
    let mut s = DrainSchedule::start(t0, 30 * SEC, None, LINGER);
    assert_eq!(s.spread(), 3 * SEC);
    let sessions: Vec<(usize, SpreadKind)> = (0..3).map(|k| (k, SpreadKind::Tunnel)).collect();
    let seen = run_until(&mut s, t0, t0 + 30 * SEC, &sessions);
    assert_eq!(
        seen,
        vec![
            (28 * SEC, close(0, SpreadKind::Tunnel)),
            (29 * SEC, close(1, SpreadKind::Tunnel)),
            (30 * SEC, Command::CloseAll),
        ],
        "the last tunnel's slot is the deadline: CloseAll takes it"
    );
}

#[test]
fn a_lone_tunnel_keeps_its_whole_drain() {
    let t0 = Instant::now();
    let mut s = DrainSchedule::start(t0, SEC, None, LINGER);
    let seen = run_until(&mut s, t0, t0 + 2 * SEC, &[(0, SpreadKind::Tunnel)]);
    assert_eq!(seen, vec![(SEC, Command::CloseAll)]);
}

#[test]
fn a_drain_shorter_than_window_and_linger_lists_at_once_and_keeps_slots_after_now() {
    let t0 = Instant::now();
    let mut s = DrainSchedule::start(t0, 2 * SEC, Some(2 * SEC), LINGER);
    assert_eq!(s.deadline(), Some(t0), "listed at the start");
    let sessions = [
        (1, SpreadKind::Idle),
        (2, SpreadKind::Idle),
        (3, SpreadKind::Tunnel),
    ];
    let seen = run_until(&mut s, t0, t0 + 3 * SEC, &sessions);
    // Gone by 0.67 s, 1.33 s, 2 s; idle ones a linger earlier, never before now.
    let at = |d: Duration| d.as_millis();
    let got: Vec<(u128, Command)> = seen.into_iter().map(|(d, c)| (at(d), c)).collect();
    assert_eq!(
        got,
        vec![
            (0, close(1, SpreadKind::Idle)),
            (333, close(2, SpreadKind::Idle)),
            (2000, Command::CloseAll),
        ]
    );
}

#[test]
fn finish_now_closes_idle_connections_at_once_and_keeps_the_tunnels_slots() {
    let t0 = Instant::now();
    let mut s = DrainSchedule::start(t0, 20 * SEC, Some(4 * SEC), LINGER);
    let sessions = [
        (0, SpreadKind::Idle),
        (1, SpreadKind::Tunnel),
        (2, SpreadKind::Idle),
    ];
    // Listed at 15 s; at 15.5 s the master asks to finish now.
    assert_eq!(tick(&mut s, t0 + 15 * SEC, &sessions), Vec::new());
    assert_eq!(s.handle(Event::FinishNow), vec![Command::CloseIdle]);
    assert!(s.finishing());
    let seen = run_until(&mut s, t0, t0 + 20 * SEC, &sessions);
    assert_eq!(
        seen,
        vec![
            // Second of three: gone by 16 s + 4 s * 2/3.
            (
                Duration::from_nanos(18_666_666_666),
                close(1, SpreadKind::Tunnel)
            ),
            (20 * SEC, Command::CloseAll)
        ],
        "the idle slots are gone, the tunnel keeps its own"
    );
}

#[test]
fn finish_now_before_the_window_makes_later_idle_slots_immediate() {
    let t0 = Instant::now();
    let mut s = DrainSchedule::start(t0, 20 * SEC, Some(4 * SEC), LINGER);
    assert_eq!(s.handle(Event::FinishNow), vec![Command::CloseIdle]);
    assert_eq!(s.deadline(), Some(t0 + 15 * SEC), "the deadline stays");
    // Idle by then anyway (a request that ended with keep-alive before FinishNow was read).
    let seen = run_until(
        &mut s,
        t0,
        t0 + 20 * SEC,
        &[(4, SpreadKind::Tunnel), (5, SpreadKind::Idle)],
    );
    assert_eq!(
        seen,
        vec![
            (15 * SEC, close(5, SpreadKind::Idle)),
            (18 * SEC, close(4, SpreadKind::Tunnel)),
            (20 * SEC, Command::CloseAll),
        ]
    );
    // Again: idempotent.
    assert_eq!(
        DrainSchedule::start(t0, SEC, None, LINGER).handle(Event::FinishNow),
        vec![Command::CloseIdle]
    );
}

#[test]
fn an_earlier_second_drain_moves_the_deadline_and_plans_again_a_later_one_does_not() {
    let t0 = Instant::now();
    let mut s = DrainSchedule::start(t0, 60 * SEC, None, LINGER);
    assert_eq!(s.spread(), 5 * SEC);
    assert!(s
        .handle(Event::Drain {
            now: t0 + SEC,
            timeout: 120 * SEC
        })
        .is_empty());
    assert_eq!(
        s.drain_deadline(),
        t0 + 60 * SEC,
        "a later deadline is ignored"
    );
    // Planned for 60 s: the window is [55 s, 60 s].
    let sessions = [(0, SpreadKind::Tunnel), (1, SpreadKind::Tunnel)];
    assert!(tick(&mut s, t0 + 54 * SEC, &sessions).is_empty());
    // A stop with a 2 s drain arrives at 56 s: the deadline moves to 58 s.
    assert!(s
        .handle(Event::Drain {
            now: t0 + 56 * SEC,
            timeout: 2 * SEC
        })
        .is_empty());
    assert_eq!(s.drain_deadline(), t0 + 58 * SEC);
    assert_eq!(s.spread(), ms(200), "the default for the new drain");
    assert_eq!(s.deadline(), Some(t0 + ms(56_800)), "listed again");
    let seen = run_until(&mut s, t0, t0 + 60 * SEC, &sessions);
    assert_eq!(
        seen,
        vec![
            (ms(57_900), close(0, SpreadKind::Tunnel)),
            (58 * SEC, Command::CloseAll)
        ]
    );
}

#[test]
fn sessions_outside_the_listing_step_and_ticks_before_anything_is_due_are_ignored() {
    let t0 = Instant::now();
    let mut s = DrainSchedule::start(t0, 10 * SEC, Some(2 * SEC), LINGER);
    let stray = Event::Sessions {
        now: t0,
        sessions: vec![(1, SpreadKind::Idle)],
    };
    assert!(s.handle(stray.clone()).is_empty(), "waiting");
    assert!(tick(&mut s, t0 + SEC, &[]).is_empty());
    assert_eq!(
        s.handle(Event::Tick { now: t0 + 7 * SEC }),
        vec![Command::ListSessions]
    );
    // Listing: a tick before the answer does nothing but the deadline.
    assert!(s.handle(Event::Tick { now: t0 + 7 * SEC }).is_empty());
    assert_eq!(s.deadline(), Some(t0 + 10 * SEC));
    assert!(s
        .handle(Event::Sessions {
            now: t0 + 7 * SEC,
            sessions: Vec::new()
        })
        .is_empty());
    // Spreading (with nothing to close): a second answer is ignored too.
    assert!(s.handle(stray).is_empty());
    assert_eq!(s.deadline(), Some(t0 + 10 * SEC));
    assert_eq!(
        s.handle(Event::Tick { now: t0 + 10 * SEC }),
        vec![Command::CloseAll]
    );
    // Done: every event is ignored.
    assert!(s.handle(Event::FinishNow).is_empty());
    assert!(s
        .handle(Event::Drain {
            now: t0,
            timeout: Duration::ZERO
        })
        .is_empty());
}

#[test]
fn a_hundred_connections_get_a_hundred_distinct_slots_within_the_window() {
    let t0 = Instant::now();
    let mut s = DrainSchedule::start(t0, 30 * SEC, Some(3 * SEC), LINGER);
    let sessions: Vec<(usize, SpreadKind)> = (0..100).map(|k| (k, SpreadKind::Idle)).collect();
    let seen = run_until(&mut s, t0, t0 + 29 * SEC, &sessions);
    let times: Vec<Duration> = seen.iter().map(|(d, _)| *d).collect();
    assert_eq!(times.len(), 100);
    assert!(times.windows(2).all(|w| w[1] - w[0] == ms(30)), "{times:?}");
    assert_eq!(times[0], ms(26_030));
    assert_eq!(times[99], 29 * SEC);
}
