//! Every event in every state of the old master's hand-over, unlikely orders included.
//! `docs/design/lifecycle.md` names these tests in its table.

use super::*;

const PID: i32 = 4242;
const READY_TIMEOUT: Duration = Duration::from_secs(10);

fn t0() -> Instant {
    Instant::now()
}

fn new(now: Instant) -> Handover {
    Handover::new("/opt/new/zentinel".into(), 100, true, READY_TIMEOUT, now)
}

fn awaiting(now: Instant) -> Handover {
    let mut h = new(now);
    assert_eq!(h.handle(Event::Drained, now), vec![Command::SpawnSuccessor]);
    assert_eq!(
        h.handle(Event::Spawned { pid: PID }, now),
        vec![Command::Suspend]
    );
    h
}

fn killing(now: Instant) -> Handover {
    let mut h = awaiting(now);
    assert_eq!(h.handle(Event::PipeEof, now), vec![Command::KillSuccessor]);
    h
}

fn failed_message(commands: &[Command]) -> String {
    match commands.last() {
        Some(Command::Fail {
            message,
            tell_client: true,
        }) => message.clone(),
        other => panic!("expected a final Failed answer, got {other:?} in {commands:?}"),
    }
}

fn all_events() -> Vec<Event> {
    vec![
        Event::Drained,
        Event::Spawned { pid: PID },
        Event::SpawnFailed("cannot write the upgrade state: disk full; nothing changed".into()),
        Event::PipeBytes(format!("READY {PID}\n").into_bytes()),
        Event::PipeEof,
        Event::PipeError("EIO".into()),
        Event::SuccessorReaped {
            status: "exit code 70".into(),
        },
        Event::StopRequested,
        Event::ClientGone,
        Event::Tick,
    ]
}

#[test]
fn flushing_waits_for_drained_then_spawns_and_suspends_the_channels() {
    let now = t0();
    let mut h = new(now);
    assert!(h.flushing());
    assert_eq!(h.deadline(), Some(now + FLUSH_BUDGET));
    // Not drained yet, deadline not passed: nothing.
    assert!(h.handle(Event::Tick, now).is_empty());
    assert_eq!(h.handle(Event::Drained, now), vec![Command::SpawnSuccessor]);
    assert!(h.flushing(), "stays flushing until the start is reported");
    let later = now + Duration::from_millis(3);
    assert_eq!(
        h.handle(Event::Spawned { pid: PID }, later),
        vec![Command::Suspend]
    );
    assert_eq!(h.successor(), Some(PID));
    assert_eq!(h.deadline(), Some(later + READY_TIMEOUT));
}

#[test]
fn flushing_past_its_deadline_refuses_without_starting_anything() {
    let now = t0();
    let mut h = new(now);
    let commands = h.handle(Event::Tick, now + FLUSH_BUDGET);
    assert!(failed_message(&commands).contains("did not drain"));
    assert_eq!(commands.len(), 1, "no kill, no resume: {commands:?}");
    assert_eq!(h.state(), &State::Failed);
    assert!(h.finished());
}

#[test]
fn flushing_spawn_failure_and_stop_answer_failed_only() {
    let now = t0();
    let mut h = new(now);
    h.handle(Event::Drained, now);
    let commands = h.handle(
        Event::SpawnFailed("cannot start it; nothing changed".into()),
        now,
    );
    assert_eq!(
        failed_message(&commands),
        "cannot start it; nothing changed"
    );
    assert_eq!(commands.len(), 1);

    let mut h = new(now);
    let commands = h.handle(Event::StopRequested, now);
    assert!(failed_message(&commands).contains("the master is stopping"));
    assert_eq!(commands.len(), 1);
}

#[test]
fn flushing_ignores_pipe_and_reap_events_of_a_successor_that_does_not_exist() {
    let now = t0();
    for event in [
        Event::PipeBytes(b"READY 1\n".to_vec()),
        Event::PipeEof,
        Event::PipeError("x".into()),
        Event::SuccessorReaped {
            status: "exit code 0".into(),
        },
        Event::ClientGone,
    ] {
        let mut h = new(now);
        assert!(h.handle(event.clone(), now).is_empty(), "{event:?}");
        assert!(h.flushing(), "{event:?}");
    }
}

#[test]
fn client_gone_mid_handover_drops_the_answer_but_not_the_failure_handling() {
    let now = t0();
    // Gone while flushing: the flush stops waiting for it (the adapter stops counting its
    // output), and a failure answers nobody.
    let mut h = new(now);
    assert!(h.handle(Event::ClientGone, now).is_empty());
    let commands = h.handle(Event::Tick, now + FLUSH_BUDGET);
    assert!(
        matches!(
            &commands[..],
            [Command::Fail {
                tell_client: false,
                ..
            }]
        ),
        "{commands:?}"
    );
    assert_eq!(h.state(), &State::Failed);
    // Gone while the successor starts: it is still killed and the channels resumed.
    let mut h = awaiting(now);
    assert!(h.handle(Event::ClientGone, now).is_empty());
    assert_eq!(h.handle(Event::PipeEof, now), vec![Command::KillSuccessor]);
    let reaped = Event::SuccessorReaped {
        status: "killed by SIGKILL".into(),
    };
    let commands = h.handle(reaped, now);
    assert!(
        matches!(
            &commands[..],
            [
                Command::Resume,
                Command::Fail {
                    tell_client: false,
                    ..
                }
            ]
        ),
        "{commands:?}"
    );
    // Gone while it is being killed.
    let mut h = killing(now);
    assert!(h.handle(Event::ClientGone, now).is_empty());
    let reaped = Event::SuccessorReaped {
        status: "killed by SIGKILL".into(),
    };
    let commands = h.handle(reaped, now);
    assert!(
        matches!(
            &commands[..],
            [
                Command::Resume,
                Command::Fail {
                    tell_client: false,
                    ..
                }
            ]
        ),
        "{commands:?}"
    );
    // And confirming without a client still leaves.
    let mut h = awaiting(now);
    h.handle(Event::ClientGone, now);
    let ready = Event::PipeBytes(format!("READY {PID}\n").into_bytes());
    assert_eq!(h.handle(ready, now), vec![Command::Leave]);
}

#[test]
fn ready_line_in_pieces_hands_over() {
    let now = t0();
    let mut h = awaiting(now);
    for piece in ["RE", "ADY ", &PID.to_string()] {
        assert!(h
            .handle(Event::PipeBytes(piece.as_bytes().to_vec()), now)
            .is_empty());
    }
    assert_eq!(
        h.handle(Event::PipeBytes(b"\n".to_vec()), now),
        vec![Command::Leave]
    );
    assert_eq!(h.state(), &State::HandedOver);
    assert_eq!(h.deadline(), None);
}

#[test]
fn eof_after_ready_and_the_successor_exit_after_it_change_nothing() {
    let now = t0();
    let mut h = awaiting(now);
    let ready = Event::PipeBytes(format!("READY {PID}\n").into_bytes());
    assert_eq!(h.handle(ready, now), vec![Command::Leave]);
    for event in all_events() {
        assert!(h.handle(event.clone(), now).is_empty(), "{event:?}");
        assert_eq!(h.state(), &State::HandedOver);
    }
}

#[test]
fn wrong_pid_or_garbage_on_the_pipe_kills_the_successor() {
    let now = t0();
    let mut h = awaiting(now);
    assert_eq!(
        h.handle(Event::PipeBytes(b"READY 1\n".to_vec()), now),
        vec![Command::KillSuccessor]
    );
    let reaped = Event::SuccessorReaped {
        status: "killed by SIGKILL".into(),
    };
    let message = failed_message(&h.handle(reaped, now));
    assert!(
        message.contains("unexpected readiness line \"READY 1\""),
        "{message}"
    );
    assert!(
        message.contains("this master (pid 100) keeps serving"),
        "{message}"
    );

    let mut h = awaiting(now);
    assert_eq!(
        h.handle(Event::PipeBytes(vec![b'x'; 300]), now),
        vec![Command::KillSuccessor]
    );
    let reaped = Event::SuccessorReaped {
        status: "killed by SIGKILL".into(),
    };
    assert!(failed_message(&h.handle(reaped, now)).contains("garbage"));
}

#[test]
fn pipe_eof_kills_then_the_reap_resumes_and_says_how_it_ended() {
    let now = t0();
    let mut h = killing(now);
    assert_eq!(h.deadline(), Some(now + KILL_REAP_BUDGET));
    let reaped = Event::SuccessorReaped {
        status: "exit code 70".into(),
    };
    let commands = h.handle(reaped, now);
    assert_eq!(commands[0], Command::Resume);
    let message = failed_message(&commands);
    assert!(
        message.contains("closed the readiness pipe without confirming")
            && message.contains("it exited: exit code 70"),
        "{message}"
    );
}

#[test]
fn pipe_error_kills_the_successor() {
    let now = t0();
    let mut h = awaiting(now);
    assert_eq!(
        h.handle(Event::PipeError("EIO".into()), now),
        vec![Command::KillSuccessor]
    );
    assert!(matches!(h.state(), State::Killing { reason, .. } if reason.contains("EIO")));
}

#[test]
fn successor_reaped_while_waiting_resumes_without_a_kill() {
    let now = t0();
    let mut h = awaiting(now);
    let reaped = Event::SuccessorReaped {
        status: "exit code 1".into(),
    };
    let commands = h.handle(reaped, now);
    assert_eq!(commands[0], Command::Resume);
    assert!(failed_message(&commands).contains("it exited (exit code 1)"));
}

#[test]
fn successor_reaped_with_the_readiness_line_half_read_fails() {
    let now = t0();
    let mut h = awaiting(now);
    assert!(h
        .handle(Event::PipeBytes(b"READY 42".to_vec()), now)
        .is_empty());
    let reaped = Event::SuccessorReaped {
        status: "killed by SIGSEGV".into(),
    };
    let commands = h.handle(reaped, now);
    assert_eq!(
        commands[0],
        Command::Resume,
        "no kill: it is reaped already"
    );
    let message = failed_message(&commands);
    assert!(
        message.contains("it exited (killed by SIGSEGV)")
            && message.contains("after writing only \"READY 42\""),
        "{message}"
    );
}

#[test]
fn no_confirmation_by_the_deadline_kills_and_a_late_ready_is_ignored() {
    let now = t0();
    let mut h = awaiting(now);
    assert!(h.handle(Event::Tick, now + READY_TIMEOUT / 2).is_empty());
    let late = now + READY_TIMEOUT;
    assert_eq!(h.handle(Event::Tick, late), vec![Command::KillSuccessor]);
    // The answer after the deadline: too late, the kill is sent.
    let ready = Event::PipeBytes(format!("READY {PID}\n").into_bytes());
    assert!(h.handle(ready, late).is_empty());
    assert!(matches!(h.state(), State::Killing { .. }));
    let reaped = Event::SuccessorReaped {
        status: "killed by SIGKILL".into(),
    };
    let message = failed_message(&h.handle(reaped, late));
    assert!(
        message.contains("no readiness confirmation in time"),
        "{message}"
    );
}

#[test]
fn stop_while_waiting_kills_the_successor_then_resumes() {
    let now = t0();
    let mut h = awaiting(now);
    assert_eq!(
        h.handle(Event::StopRequested, now),
        vec![Command::KillSuccessor]
    );
    let reaped = Event::SuccessorReaped {
        status: "killed by SIGKILL".into(),
    };
    assert!(failed_message(&h.handle(reaped, now)).contains("the master is stopping"));
}

#[test]
fn killing_ignores_everything_but_the_reap_and_its_deadline() {
    let now = t0();
    for event in all_events() {
        if matches!(event, Event::SuccessorReaped { .. }) {
            continue;
        }
        let mut h = killing(now);
        assert!(h.handle(event.clone(), now).is_empty(), "{event:?}");
        assert!(matches!(h.state(), State::Killing { .. }), "{event:?}");
    }
    // Never reaped: resume anyway once the budget is spent (it can run no code after SIGKILL).
    let mut h = killing(now);
    let commands = h.handle(Event::Tick, now + KILL_REAP_BUDGET);
    assert_eq!(commands[0], Command::Resume);
    assert!(failed_message(&commands).contains("not reaped"));
}

#[test]
fn awaiting_ignores_events_of_the_flushing_step() {
    let now = t0();
    for event in [
        Event::Drained,
        Event::Spawned { pid: 1 },
        Event::SpawnFailed("x".into()),
        Event::Tick,
    ] {
        let mut h = awaiting(now);
        assert!(h.handle(event.clone(), now).is_empty(), "{event:?}");
        assert_eq!(h.successor(), Some(PID), "{event:?}");
    }
}

#[test]
fn after_a_failure_every_event_is_ignored() {
    let now = t0();
    let mut h = awaiting(now);
    h.handle(
        Event::SuccessorReaped {
            status: "exit code 1".into(),
        },
        now,
    );
    for event in all_events() {
        assert!(h.handle(event.clone(), now).is_empty(), "{event:?}");
        assert_eq!(h.state(), &State::Failed);
    }
    assert_eq!(h.deadline(), None);
}
