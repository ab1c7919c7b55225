//! Every event in every state of the new master's adoption, unlikely orders included.
//! `docs/design/lifecycle.md` names these tests in its table.

use std::time::Duration;

use super::*;

const TIMEOUT: Duration = Duration::from_secs(10);

fn new(now: Instant, rolling: bool) -> Adoption {
    let waiting = BTreeMap::from([
        (3, "worker 0 (pid 11)".to_owned()),
        (5, "worker 1 (pid 12)".to_owned()),
    ]);
    Adoption::new(waiting, now + TIMEOUT, rolling, true)
}

fn preparing(now: Instant) -> Adoption {
    let mut a = new(now, false);
    a.handle(Event::WorkerAnswered(3), now);
    assert_eq!(
        a.handle(Event::WorkerAnswered(5), now),
        vec![Command::Prepare]
    );
    a
}

fn confirming(now: Instant) -> Adoption {
    let mut a = preparing(now);
    assert_eq!(
        a.handle(Event::Prepared, now),
        vec![Command::ConfirmReadiness]
    );
    a
}

fn serving_commands(confirmed: bool, rolling: bool) -> Vec<Command> {
    vec![
        Command::TakeOwnership { confirmed },
        Command::AnswerReplaced,
        if rolling {
            Command::BeginRolling
        } else {
            Command::AnswerDone
        },
    ]
}

fn all_events() -> Vec<Event> {
    vec![
        Event::WorkerAnswered(3),
        Event::WorkerExited(5),
        Event::PreviousMasterGone,
        Event::StopRequested("SIGTERM (from pid 1)".into()),
        Event::ClientGone,
        Event::Prepared,
        Event::PrepareFailed("EMFILE".into()),
        Event::ReadyWritten,
        Event::ReadyFailed {
            peer_gone: true,
            reason: "EPIPE".into(),
        },
        Event::Tick,
    ]
}

#[test]
fn every_answer_then_prepare_confirm_and_serve() {
    let now = t();
    let mut a = new(now, false);
    assert_eq!(a.deadline(), Some(now + TIMEOUT));
    assert!(a.handle(Event::WorkerAnswered(3), now).is_empty());
    assert_eq!(a.waiting(), vec![5]);
    // A worker answering twice, or one not adopted, changes nothing.
    assert!(a.handle(Event::WorkerAnswered(3), now).is_empty());
    assert!(a.handle(Event::WorkerAnswered(99), now).is_empty());
    assert_eq!(
        a.handle(Event::WorkerAnswered(5), now),
        vec![Command::Prepare]
    );
    assert_eq!(a.deadline(), None);
    assert_eq!(
        a.handle(Event::Prepared, now),
        vec![Command::ConfirmReadiness]
    );
    assert_eq!(
        a.handle(Event::ReadyWritten, now),
        serving_commands(true, false)
    );
    assert!(a.finished());
    assert!(!a.previous_gone());
}

#[test]
fn rolling_upgrade_begins_rolling_once_serving() {
    let now = t();
    let mut a = new(now, true);
    a.handle(Event::WorkerAnswered(3), now);
    a.handle(Event::WorkerAnswered(5), now);
    a.handle(Event::Prepared, now);
    assert_eq!(
        a.handle(Event::ReadyWritten, now),
        serving_commands(true, true)
    );
}

#[test]
fn a_worker_that_exits_counts_as_answered() {
    let now = t();
    let mut a = new(now, false);
    assert!(a.handle(Event::WorkerExited(5), now).is_empty());
    assert_eq!(
        a.handle(Event::WorkerExited(3), now),
        vec![Command::Prepare]
    );
}

#[test]
fn no_adopted_worker_prepares_on_the_first_tick() {
    let now = t();
    let mut a = Adoption::new(BTreeMap::new(), now + TIMEOUT, false, false);
    assert_eq!(a.handle(Event::Tick, now), vec![Command::Prepare]);
    a.handle(Event::Prepared, now);
    // No client: nothing is answered but the upgrade is still finished (counted).
    assert_eq!(
        a.handle(Event::ReadyWritten, now),
        vec![
            Command::TakeOwnership { confirmed: true },
            Command::AnswerDone
        ]
    );
}

#[test]
fn silent_workers_at_the_deadline_abandon_and_a_late_answer_is_ignored() {
    let now = t();
    let mut a = new(now, false);
    a.handle(Event::WorkerAnswered(3), now);
    assert!(a.handle(Event::Tick, now + TIMEOUT / 2).is_empty());
    let commands = a.handle(Event::Tick, now + TIMEOUT);
    assert_eq!(
        commands,
        vec![Command::Abandon(
            "adopted workers did not answer in time: worker 1 (pid 12)".into()
        )]
    );
    // The answer after the deadline.
    assert!(a.handle(Event::WorkerAnswered(5), now + TIMEOUT).is_empty());
    assert_eq!(a.state(), &State::Abandoned);
}

#[test]
fn stop_before_the_confirmation_abandons() {
    let now = t();
    for mut a in [new(now, false), preparing(now), confirming(now)] {
        let commands = a.handle(Event::StopRequested("SIGTERM (from pid 1)".into()), now);
        assert_eq!(
            commands,
            vec![Command::Abandon(
                "SIGTERM (from pid 1) before the takeover was confirmed".into()
            )]
        );
    }
}

#[test]
fn prepare_or_write_failing_abandons() {
    let now = t();
    let mut a = preparing(now);
    assert_eq!(
        a.handle(
            Event::PrepareFailed("cannot poll the control socket".into()),
            now
        ),
        vec![Command::Abandon("cannot poll the control socket".into())]
    );
    let mut a = confirming(now);
    let failed = Event::ReadyFailed {
        peer_gone: false,
        reason: "EBADF".into(),
    };
    assert_eq!(
        a.handle(failed, now),
        vec![Command::Abandon("cannot confirm readiness: EBADF".into())]
    );
}

#[test]
fn previous_master_gone_while_adopting_serves_without_waiting_or_confirming() {
    let now = t();
    let mut a = new(now, true);
    a.handle(Event::WorkerAnswered(3), now);
    assert_eq!(
        a.handle(Event::PreviousMasterGone, now),
        vec![Command::Prepare]
    );
    assert!(a.previous_gone());
    assert_eq!(
        a.deadline(),
        None,
        "no deadline: nobody left to fall back on"
    );
    assert_eq!(
        a.handle(Event::Prepared, now),
        serving_commands(false, true)
    );
    // The last worker's answer comes later: the adoption is over.
    assert!(a.handle(Event::WorkerAnswered(5), now).is_empty());
}

#[test]
fn previous_master_gone_while_preparing_skips_the_pipe() {
    let now = t();
    let mut a = preparing(now);
    assert!(a.handle(Event::PreviousMasterGone, now).is_empty());
    assert_eq!(
        a.handle(Event::Prepared, now),
        serving_commands(false, false)
    );
}

#[test]
fn previous_master_gone_and_prepare_failing_still_serves() {
    let now = t();
    let mut a = new(now, false);
    a.handle(Event::PreviousMasterGone, now);
    assert_eq!(
        a.handle(Event::PrepareFailed("EMFILE".into()), now),
        serving_commands(false, false)
    );
}

#[test]
fn epipe_on_the_readiness_pipe_means_the_previous_master_is_gone() {
    let now = t();
    let mut a = confirming(now);
    let failed = Event::ReadyFailed {
        peer_gone: true,
        reason: "Broken pipe".into(),
    };
    assert_eq!(a.handle(failed, now), serving_commands(false, false));
    assert!(a.previous_gone());
}

#[test]
fn previous_master_gone_while_confirming_then_any_write_outcome_serves() {
    let now = t();
    let mut a = confirming(now);
    assert!(a.handle(Event::PreviousMasterGone, now).is_empty());
    let failed = Event::ReadyFailed {
        peer_gone: false,
        reason: "EIO".into(),
    };
    assert_eq!(a.handle(failed, now), serving_commands(false, false));
    // And a stop then is an ordinary master's stop (not an abandon).
    let mut a = confirming(now);
    a.handle(Event::PreviousMasterGone, now);
    assert!(a
        .handle(Event::StopRequested("SIGTERM".into()), now)
        .is_empty());
    assert_eq!(
        a.handle(Event::ReadyWritten, now),
        serving_commands(true, false)
    );
}

#[test]
fn the_previous_master_leaving_after_ready_changes_nothing() {
    let now = t();
    let mut a = confirming(now);
    a.handle(Event::ReadyWritten, now);
    assert!(a.handle(Event::PreviousMasterGone, now).is_empty());
    assert!(!a.previous_gone(), "it left because it read READY");
    for event in all_events() {
        assert!(a.handle(event.clone(), now).is_empty(), "{event:?}");
        assert_eq!(a.state(), &State::Serving);
    }
}

#[test]
fn client_gone_before_serving_answers_nobody() {
    let now = t();
    let mut a = new(now, false);
    assert!(a.handle(Event::ClientGone, now).is_empty());
    a.handle(Event::WorkerAnswered(3), now);
    a.handle(Event::WorkerAnswered(5), now);
    a.handle(Event::Prepared, now);
    assert_eq!(
        a.handle(Event::ReadyWritten, now),
        vec![
            Command::TakeOwnership { confirmed: true },
            Command::AnswerDone
        ]
    );
}

#[test]
fn steps_not_started_are_ignored_in_each_state() {
    let now = t();
    // Adopting: results of later steps.
    for event in [
        Event::Prepared,
        Event::PrepareFailed("x".into()),
        Event::ReadyWritten,
        Event::ReadyFailed {
            peer_gone: false,
            reason: "x".into(),
        },
    ] {
        let mut a = new(now, false);
        assert!(a.handle(event.clone(), now).is_empty(), "{event:?}");
        assert!(matches!(a.state(), State::Adopting { .. }), "{event:?}");
    }
    // Preparing and Confirming: worker events, ticks and the other step's results.
    for event in [
        Event::WorkerAnswered(3),
        Event::WorkerExited(5),
        Event::Tick,
        Event::ReadyWritten,
    ] {
        let mut a = preparing(now);
        assert!(
            a.handle(event.clone(), now + TIMEOUT).is_empty(),
            "{event:?}"
        );
        assert_eq!(a.state(), &State::Preparing, "{event:?}");
    }
    for event in [
        Event::WorkerAnswered(3),
        Event::WorkerExited(5),
        Event::Tick,
        Event::Prepared,
        Event::PrepareFailed("x".into()),
    ] {
        let mut a = confirming(now);
        assert!(
            a.handle(event.clone(), now + TIMEOUT).is_empty(),
            "{event:?}"
        );
        assert_eq!(a.state(), &State::Confirming, "{event:?}");
    }
}

#[test]
fn after_abandoning_every_event_is_ignored() {
    let now = t();
    let mut a = new(now, false);
    a.handle(Event::Tick, now + TIMEOUT);
    for event in all_events() {
        assert!(a.handle(event.clone(), now).is_empty(), "{event:?}");
        assert_eq!(a.state(), &State::Abandoned);
    }
    assert!(!a.previous_gone());
}

fn t() -> Instant {
    Instant::now()
}
