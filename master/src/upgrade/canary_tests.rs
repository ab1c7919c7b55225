//! The canary watch driven without processes: each phase with its events, stale and late
//! answers, silent and vanishing workers.

use std::time::{Duration, Instant};

use mio::Token;
use zentinel_protocol::control::CanaryPolicy;
use zentinel_protocol::messages::WorkerCounters;

use super::*;

const CANARY: Token = Token(10);
const OLD: Token = Token(1);
const PEER_A: Token = Token(2);
const PEER_B: Token = Token(3);
const WINDOW: Duration = Duration::from_secs(10);

fn watch(old: Option<Token>) -> (CanaryWatch, Instant) {
    let now = Instant::now();
    let policy = CanaryPolicy {
        duration_ms: 10_000,
        max_excess_basis_points: 100,
    };
    let subject = CanarySubject {
        worker_id: 0,
        canary: CANARY,
        canary_pid: 1000,
        old,
        old_pid: 100,
        peers: vec![PEER_A, PEER_B],
    };
    (CanaryWatch::new(policy, subject, now), now)
}

fn counters(requests: u64, errors: u64) -> WorkerCounters {
    WorkerCounters {
        requests_total: requests,
        responses_5xx: errors,
        ..WorkerCounters::default()
    }
}

fn asked(watch: &mut CanaryWatch, worker: Token, request_id: u64, now: Instant) {
    let commands = watch.handle(CanaryEvent::StatusAsked { worker, request_id }, now);
    assert!(commands.is_empty(), "{commands:?}");
}

fn answered(
    watch: &mut CanaryWatch,
    worker: Token,
    request_id: u64,
    counters: WorkerCounters,
    now: Instant,
) -> Vec<CanaryCommand> {
    let event = CanaryEvent::StatusAnswered {
        worker,
        request_id,
        counters,
    };
    watch.handle(event, now)
}

/// The drain is over: the baseline requests are out, ids 1 (A), 2 (B), 3 (canary).
fn baseline() -> (CanaryWatch, Instant) {
    let (mut watch, now) = watch(None);
    let commands = watch.handle(CanaryEvent::Tick, now);
    assert_eq!(
        commands,
        vec![CanaryCommand::AskStatus(vec![PEER_A, PEER_B, CANARY])]
    );
    for (id, worker) in [(1, PEER_A), (2, PEER_B), (3, CANARY)] {
        asked(&mut watch, worker, id, now);
    }
    (watch, now)
}

/// The window runs from `now`.
fn observing() -> (CanaryWatch, Instant) {
    let (mut watch, now) = baseline();
    assert!(answered(&mut watch, PEER_A, 1, counters(100, 0), now).is_empty());
    assert!(answered(&mut watch, PEER_B, 2, counters(100, 0), now).is_empty());
    let commands = answered(&mut watch, CANARY, 3, counters(0, 0), now);
    assert!(
        matches!(&commands[..], [CanaryCommand::Report(m)] if m.contains("compared with 2 old workers")),
        "{commands:?}"
    );
    assert_eq!(watch.deadline(), Some(now + CANARY_REPORT_INTERVAL));
    (watch, now)
}

#[test]
fn waits_for_the_replaced_worker_and_reports_while_it_drains() {
    let (mut watch, now) = watch(Some(OLD));
    let commands = watch.handle(CanaryEvent::Tick, now);
    assert!(
        matches!(&commands[..], [CanaryCommand::Report(m)] if m.contains("pid 100 to drain (0 connections)")),
        "{commands:?}"
    );
    // Its counters come from any status answer (the periodic rounds).
    answered(&mut watch, OLD, 77, counters(5, 0), now);
    assert!(watch.handle(CanaryEvent::Tick, now).is_empty(), "not due");
    let later = now + CANARY_DRAIN_REPORT_INTERVAL;
    assert_eq!(watch.deadline(), Some(later));
    let commands = watch.handle(CanaryEvent::Tick, later);
    assert_eq!(commands.len(), 1);
    // Silenced is not gone: it still drains.
    assert!(watch
        .handle(CanaryEvent::WorkerSilenced { worker: OLD }, later)
        .is_empty());
    let commands = watch.handle(CanaryEvent::WorkerExited { worker: OLD }, later);
    assert_eq!(
        commands,
        vec![CanaryCommand::AskStatus(vec![PEER_A, PEER_B, CANARY])]
    );
}

#[test]
fn answers_to_requests_the_watch_did_not_send_complete_no_wait() {
    let (mut watch, now) = baseline();
    // A periodic round's answers (other ids) and a duplicate change nothing.
    for worker in [PEER_A, PEER_B, CANARY] {
        assert!(answered(&mut watch, worker, 999, counters(1, 0), now).is_empty());
    }
    assert!(answered(&mut watch, PEER_A, 1, counters(1, 0), now).is_empty());
    assert!(answered(&mut watch, PEER_A, 1, counters(1, 0), now).is_empty());
    assert!(answered(&mut watch, PEER_B, 2, counters(1, 0), now).is_empty());
    assert_eq!(
        answered(&mut watch, CANARY, 3, counters(1, 0), now).len(),
        1
    );
}

#[test]
fn a_silent_canary_fails_at_the_baseline_deadline() {
    let (mut watch, now) = baseline();
    answered(&mut watch, PEER_A, 1, counters(1, 0), now);
    answered(&mut watch, PEER_B, 2, counters(1, 0), now);
    assert!(watch.handle(CanaryEvent::Tick, now).is_empty());
    let deadline = now + CANARY_ANSWER_TIMEOUT;
    let commands = watch.handle(CanaryEvent::Tick, deadline);
    assert!(
        matches!(&commands[..], [CanaryCommand::Fail(m)] if m.contains("did not answer the master's status request within")),
        "{commands:?}"
    );
    // Concluded: a late answer changes nothing.
    assert!(answered(&mut watch, CANARY, 3, counters(1, 0), deadline).is_empty());
    assert_eq!(watch.deadline(), None);
}

#[test]
fn a_silent_peer_is_left_out_at_the_deadline() {
    let (mut watch, now) = baseline();
    answered(&mut watch, PEER_A, 1, counters(1, 0), now);
    answered(&mut watch, CANARY, 3, counters(1, 0), now);
    let commands = watch.handle(CanaryEvent::Tick, now + CANARY_ANSWER_TIMEOUT);
    assert!(
        matches!(&commands[..], [CanaryCommand::Report(m)] if m.contains("compared with 1 old worker ")),
        "{commands:?}"
    );
}

#[test]
fn a_worker_that_cannot_answer_completes_the_wait() {
    let (mut watch, now) = baseline();
    answered(&mut watch, PEER_A, 1, counters(1, 0), now);
    answered(&mut watch, CANARY, 3, counters(1, 0), now);
    let commands = watch.handle(CanaryEvent::WorkerSilenced { worker: PEER_B }, now);
    assert!(matches!(&commands[..], [CanaryCommand::Report(_)]));
}

#[test]
fn an_answer_arriving_after_its_wait_timed_out_does_not_complete_the_next_wait() {
    let (mut watch, now) = observing();
    let report = now + CANARY_REPORT_INTERVAL;
    assert_eq!(
        watch.handle(CanaryEvent::Tick, report),
        vec![CanaryCommand::AskStatus(vec![PEER_A, PEER_B, CANARY])]
    );
    for (id, worker) in [(11, PEER_A), (12, PEER_B), (13, CANARY)] {
        asked(&mut watch, worker, id, report);
    }
    // Nobody answers: the live report goes out half an interval later with what is known.
    let half = report + CANARY_REPORT_INTERVAL / 2;
    assert!(matches!(
        &watch.handle(CanaryEvent::Tick, half)[..],
        [CanaryCommand::Live { .. }]
    ));
    let next = report + CANARY_REPORT_INTERVAL;
    watch.handle(CanaryEvent::Tick, next);
    for (id, worker) in [(21, PEER_A), (22, PEER_B), (23, CANARY)] {
        asked(&mut watch, worker, id, next);
    }
    // The late answers of the previous round do not stand in for this one.
    for (id, worker) in [(11, PEER_A), (12, PEER_B), (13, CANARY)] {
        assert!(answered(&mut watch, worker, id, counters(5, 0), next).is_empty());
    }
    answered(&mut watch, PEER_A, 21, counters(6, 0), next);
    answered(&mut watch, PEER_B, 22, counters(6, 0), next);
    let commands = answered(&mut watch, CANARY, 23, counters(6, 0), next);
    assert!(
        matches!(
            &commands[..],
            [CanaryCommand::Live {
                canary: ErrorRate { requests: 6, .. },
                ..
            }]
        ),
        "{commands:?}"
    );
}

#[test]
fn a_peer_gone_during_the_window_is_left_out_of_the_verdict() {
    let (mut watch, now) = observing();
    watch.handle(CanaryEvent::WorkerExited { worker: PEER_B }, now);
    let end = now + WINDOW;
    assert_eq!(
        watch.handle(CanaryEvent::Tick, end),
        vec![CanaryCommand::AskStatus(vec![PEER_A, CANARY])]
    );
    asked(&mut watch, PEER_A, 31, end);
    asked(&mut watch, CANARY, 32, end);
    answered(&mut watch, PEER_A, 31, counters(1100, 10), end);
    let commands = answered(&mut watch, CANARY, 32, counters(1000, 10), end);
    assert!(
        matches!(&commands[..], [CanaryCommand::Pass(m)] if m.contains("old workers 1.00% errors (10 of 1000 requests)")),
        "{commands:?}"
    );
}

#[test]
fn a_canary_without_traffic_passes_unjudged_and_one_silent_at_the_end_fails() {
    let (mut watch, now) = observing();
    let end = now + WINDOW;
    watch.handle(CanaryEvent::Tick, end);
    for (id, worker) in [(41, PEER_A), (42, PEER_B), (43, CANARY)] {
        asked(&mut watch, worker, id, end);
    }
    answered(&mut watch, PEER_A, 41, counters(200, 0), end);
    answered(&mut watch, PEER_B, 42, counters(200, 0), end);
    let commands = answered(&mut watch, CANARY, 43, counters(0, 0), end);
    assert!(
        matches!(&commands[..], [CanaryCommand::Pass(m)] if m.contains("could not be judged")),
        "{commands:?}"
    );

    let (mut watch, now) = observing();
    let end = now + WINDOW;
    watch.handle(CanaryEvent::Tick, end);
    asked(&mut watch, CANARY, 53, end);
    let commands = watch.handle(CanaryEvent::Tick, end + CANARY_ANSWER_TIMEOUT);
    assert!(
        matches!(&commands[..], [CanaryCommand::Fail(m)] if m.contains("at the end of the window")),
        "{commands:?}"
    );
}
