//! The rolling upgrade driven without processes: every event in every step, including the
//! unlikely orders. Tokens: 1.. the workers before the upgrade, 10.. the successors.

use std::time::{Duration, Instant};

use mio::Token;
use zentinel_protocol::control::{CanaryPolicy, ControlResponse};
use zentinel_protocol::messages::WorkerCounters;

use super::*;

const DRAIN: Duration = Duration::from_secs(30);
const READY: Duration = Duration::from_secs(10);

fn plan(slots: u32, canary: Option<CanaryPolicy>) -> RollingPlan {
    RollingPlan {
        worker_ids: (0..slots).collect(),
        drain: DRAIN,
        ready_timeout: READY,
        canary,
        client: true,
    }
}

fn old(slot: u32) -> Token {
    Token(1 + slot as usize)
}

fn new(slot: u32) -> Token {
    Token(10 + slot as usize)
}

fn spawn(worker_id: u32, binary: WorkerBinary) -> RollingCommand {
    RollingCommand::Spawn {
        worker_id,
        binary,
        ready_timeout: READY,
    }
}

fn ready(slot: u32, replaced: bool, peers: Vec<Token>) -> RollingEvent {
    RollingEvent::SuccessorReady {
        successor: new(slot),
        pid: 1000 + slot,
        ready_ms: 5,
        replaced: replaced.then(|| Replaced {
            worker: old(slot),
            pid: 100 + slot,
            active_connections: 7,
        }),
        peers,
    }
}

/// A machine of `slots` slots whose slot 0 successor is starting.
fn starting(slots: u32, canary: Option<CanaryPolicy>) -> (RollingUpgrade, Instant) {
    let now = Instant::now();
    let (mut machine, commands) = RollingUpgrade::start(plan(slots, canary));
    assert_eq!(commands, vec![spawn(0, WorkerBinary::New)]);
    let spawned = RollingEvent::Spawned {
        worker_id: 0,
        successor: new(0),
    };
    assert!(machine.handle(spawned, now).is_empty());
    (machine, now)
}

/// Slot 0's successor is ready and its predecessor was told to drain.
fn awaiting_ack(slots: u32) -> (RollingUpgrade, Instant) {
    let (mut machine, now) = starting(slots, None);
    let commands = machine.handle(ready(0, true, vec![]), now);
    assert_eq!(
        commands,
        vec![
            RollingCommand::Promote {
                worker_id: 0,
                successor: new(0)
            },
            RollingCommand::Retire {
                worker: old(0),
                drain: DRAIN
            },
        ]
    );
    assert_eq!(machine.deadline(), Some(now + ACK_TIMEOUT));
    (machine, now)
}

/// Slot 0's predecessor acknowledged; the new worker settles.
fn settling(slots: u32) -> (RollingUpgrade, Instant) {
    let (mut machine, now) = awaiting_ack(slots);
    let ack = RollingEvent::Draining {
        worker: old(0),
        active_connections: Some(3),
    };
    assert!(machine.handle(ack, now).is_empty());
    assert_eq!(machine.deadline(), Some(now + SETTLE));
    (machine, now)
}

fn responses(commands: &[RollingCommand]) -> Vec<&ControlResponse> {
    commands
        .iter()
        .filter_map(|c| match c {
            RollingCommand::Respond { response, .. } => Some(response),
            _ => None,
        })
        .collect()
}

fn finished(commands: &[RollingCommand]) -> Option<&Outcome> {
    commands.iter().find_map(|c| match c {
        RollingCommand::Finished(outcome) => Some(outcome),
        _ => None,
    })
}

#[test]
fn replaces_every_slot_in_order_then_completes() {
    let (mut machine, now) = settling(2);
    assert!(
        machine.handle(RollingEvent::Tick, now).is_empty(),
        "settles first"
    );
    let later = now + SETTLE;
    let commands = machine.handle(RollingEvent::Tick, later);
    assert_eq!(
        responses(&commands),
        vec![&ControlResponse::WorkerReplaced {
            index: 1,
            total: 2,
            worker_id: 0,
            old_pid: 100,
            new_pid: 1000,
            ready_ms: 5,
            old_active_connections: 3,
        }]
    );
    assert_eq!(commands.last(), Some(&spawn(1, WorkerBinary::New)));
    let spawned = RollingEvent::Spawned {
        worker_id: 1,
        successor: new(1),
    };
    assert!(machine.handle(spawned, later).is_empty());
    machine.handle(ready(1, true, vec![]), later);
    let ack = RollingEvent::Draining {
        worker: old(1),
        active_connections: Some(0),
    };
    machine.handle(ack, later);
    let commands = machine.handle(RollingEvent::Tick, later + SETTLE);
    assert_eq!(finished(&commands), Some(&Outcome::Completed { total: 2 }));
    assert!(machine
        .handle(RollingEvent::Tick, later + SETTLE)
        .is_empty());
    assert_eq!(machine.deadline(), None);
}

#[test]
fn a_slot_without_a_worker_is_done_at_once() {
    let (mut machine, now) = starting(1, None);
    let commands = machine.handle(ready(0, false, vec![]), now);
    assert!(matches!(commands[0], RollingCommand::Promote { .. }));
    assert!(matches!(
        responses(&commands)[0],
        ControlResponse::WorkerReplaced { old_pid: 0, .. }
    ));
    assert_eq!(finished(&commands), Some(&Outcome::Completed { total: 1 }));
}

#[test]
fn an_unacknowledged_drain_moves_on_at_its_deadline_with_the_last_known_count() {
    let (mut machine, now) = awaiting_ack(1);
    assert!(machine
        .handle(RollingEvent::Tick, now + ACK_TIMEOUT / 2)
        .is_empty());
    assert!(machine
        .handle(RollingEvent::Tick, now + ACK_TIMEOUT)
        .is_empty());
    let commands = machine.handle(RollingEvent::Tick, now + ACK_TIMEOUT + SETTLE);
    assert!(matches!(
        responses(&commands)[0],
        ControlResponse::WorkerReplaced {
            old_active_connections: 7,
            ..
        }
    ));
}

#[test]
fn a_predecessor_that_exits_before_acknowledging_counts_as_drained() {
    let (mut machine, now) = awaiting_ack(1);
    machine.handle(RollingEvent::WorkerExited { worker: old(0) }, now);
    assert_eq!(machine.deadline(), Some(now + SETTLE));
}

#[test]
fn a_predecessor_that_cannot_be_told_counts_as_drained() {
    let (mut machine, now) = awaiting_ack(1);
    let not_told = RollingEvent::Draining {
        worker: old(0),
        active_connections: None,
    };
    machine.handle(not_told, now);
    assert_eq!(machine.deadline(), Some(now + SETTLE));
}

#[test]
fn a_successor_that_cannot_be_spawned_fails_the_upgrade_with_nothing_to_roll_back() {
    let now = Instant::now();
    let (mut machine, _) = RollingUpgrade::start(plan(2, None));
    let failed = RollingEvent::SpawnFailed {
        worker_id: 0,
        reason: "EAGAIN".into(),
    };
    let commands = machine.handle(failed, now);
    match finished(&commands) {
        Some(Outcome::RolledBack { reason, restored }) => {
            assert!(reason.contains("worker 0: cannot start a new worker: EAGAIN"));
            assert_eq!(*restored, 0);
        }
        other => panic!("unexpected outcome {other:?}"),
    }
}

/// Slot 0 replaced, slot 1's successor starting.
fn second_slot_starting() -> (RollingUpgrade, Instant) {
    let (mut machine, now) = settling(2);
    let later = now + SETTLE;
    machine.handle(RollingEvent::Tick, later);
    let spawned = RollingEvent::Spawned {
        worker_id: 1,
        successor: new(1),
    };
    machine.handle(spawned, later);
    (machine, later)
}

#[test]
fn a_successor_dying_before_ready_rolls_back_the_replaced_slots() {
    let (mut machine, now) = second_slot_starting();
    let failed = RollingEvent::SuccessorFailed {
        successor: new(1),
        reason: "worker 1: exited".into(),
    };
    let commands = machine.handle(failed, now);
    assert_eq!(commands, vec![spawn(0, WorkerBinary::Previous)]);
    assert!(machine.rolling_back());
    // The rollback's successor replaces slot 0's new worker; no settling during a rollback.
    let spawned = RollingEvent::Spawned {
        worker_id: 0,
        successor: Token(20),
    };
    machine.handle(spawned, now);
    let rollback_ready = RollingEvent::SuccessorReady {
        successor: Token(20),
        pid: 2000,
        ready_ms: 4,
        replaced: Some(Replaced {
            worker: new(0),
            pid: 1000,
            active_connections: 1,
        }),
        peers: vec![],
    };
    machine.handle(rollback_ready, now);
    let ack = RollingEvent::Draining {
        worker: new(0),
        active_connections: Some(1),
    };
    let commands = machine.handle(ack, now);
    assert_eq!(
        responses(&commands)[0],
        &ControlResponse::WorkerRolledBack {
            worker_id: 0,
            failed_pid: 1000,
            restored_pid: 2000,
        }
    );
    match finished(&commands) {
        Some(Outcome::RolledBack { reason, restored }) => {
            assert_eq!(reason, "worker 1: exited");
            assert_eq!(*restored, 1);
        }
        other => panic!("unexpected outcome {other:?}"),
    }
}

#[test]
fn a_replaced_worker_dying_while_the_next_starts_rolls_back_and_retires_the_starting_one() {
    let (mut machine, now) = second_slot_starting();
    assert!(machine.claims_death(0, 1000));
    assert!(!machine.claims_death(1, 101), "slot 1 is not replaced yet");
    let died = RollingEvent::CurrentDied {
        worker_id: 0,
        pid: 1000,
        status: "killed by SIGSEGV".into(),
    };
    let commands = machine.handle(died, now);
    assert_eq!(
        commands,
        vec![
            RollingCommand::Retire {
                worker: new(1),
                drain: DRAIN
            },
            spawn(0, WorkerBinary::Previous),
        ]
    );
    assert!(
        !machine.claims_death(0, 1000),
        "a rollback restarts on its own"
    );
}

#[test]
fn a_successor_dying_while_its_predecessor_drains_rolls_its_own_slot_back_too() {
    for (name, (mut machine, now)) in [("awaiting ack", awaiting_ack(2)), ("settling", settling(2))]
    {
        assert!(machine.claims_death(0, 1000), "{name}");
        assert!(!machine.claims_death(0, 999), "{name}: another pid");
        let died = RollingEvent::CurrentDied {
            worker_id: 0,
            pid: 1000,
            status: "exit code 1".into(),
        };
        let commands = machine.handle(died, now);
        assert_eq!(commands, vec![spawn(0, WorkerBinary::Previous)], "{name}");
    }
}

#[test]
fn a_rollback_worker_failing_too_gives_its_slot_up_and_goes_on() {
    let (mut machine, now) = second_slot_starting();
    machine.handle(
        RollingEvent::SuccessorFailed {
            successor: new(1),
            reason: "first".into(),
        },
        now,
    );
    let failed = RollingEvent::SpawnFailed {
        worker_id: 0,
        reason: "no binary".into(),
    };
    let commands = machine.handle(failed, now);
    match finished(&commands) {
        Some(Outcome::RolledBack { reason, restored }) => {
            assert!(reason.starts_with("first; rollback: worker 0: cannot start"));
            assert_eq!(*restored, 0);
        }
        other => panic!("unexpected outcome {other:?}"),
    }
}

#[test]
fn abort_answers_the_client_and_finishes_in_every_step() {
    let now = Instant::now();
    let machines = [
        ("spawning", RollingUpgrade::start(plan(2, None)).0),
        ("starting", starting(2, None).0),
        ("awaiting ack", awaiting_ack(2).0),
        ("settling", settling(2).0),
        ("canary", canary_waiting_for_drain().0),
    ];
    for (name, mut machine) in machines {
        let abort = RollingEvent::Abort {
            reason: "the master is stopping".into(),
        };
        let commands = machine.handle(abort, now);
        assert!(
            matches!(
                commands.as_slice(),
                [
                    RollingCommand::Respond {
                        response: ControlResponse::Failed { .. },
                        last: true
                    },
                    RollingCommand::Finished(Outcome::Abandoned { .. })
                ]
            ),
            "{name}: {commands:?}"
        );
        assert!(machine.handle(RollingEvent::Tick, now).is_empty(), "{name}");
        assert_eq!(machine.deadline(), None, "{name}");
    }
}

#[test]
fn a_client_gone_mid_upgrade_hears_nothing_more_and_the_upgrade_goes_on() {
    let (mut machine, now) = settling(1);
    assert!(machine.handle(RollingEvent::ClientGone, now).is_empty());
    let commands = machine.handle(RollingEvent::Tick, now + SETTLE);
    assert!(responses(&commands).is_empty());
    assert_eq!(finished(&commands), Some(&Outcome::Completed { total: 1 }));
}

/// Builds a machine in some step.
type Builder = fn() -> (RollingUpgrade, Instant);

/// Every event that names nobody this step waits for changes nothing, in every step.
#[test]
fn unrelated_events_change_nothing_in_any_step() {
    let stranger = Token(99);
    let unrelated = || {
        vec![
            RollingEvent::Tick,
            RollingEvent::Spawned {
                worker_id: 7,
                successor: stranger,
            },
            RollingEvent::SpawnFailed {
                worker_id: 7,
                reason: "x".into(),
            },
            RollingEvent::SuccessorReady {
                successor: stranger,
                pid: 9,
                ready_ms: 1,
                replaced: None,
                peers: vec![],
            },
            RollingEvent::SuccessorFailed {
                successor: stranger,
                reason: "x".into(),
            },
            RollingEvent::Draining {
                worker: stranger,
                active_connections: Some(1),
            },
            RollingEvent::StatusAsked {
                worker: stranger,
                request_id: 1,
            },
            RollingEvent::StatusAnswered {
                worker: stranger,
                request_id: 1,
                counters: WorkerCounters::default(),
            },
            RollingEvent::WorkerSilenced { worker: stranger },
            RollingEvent::WorkerExited { worker: stranger },
        ]
    };
    let builders: [(&str, Builder); 4] = [
        ("starting", || starting(2, None)),
        ("awaiting ack", || awaiting_ack(2)),
        ("settling", || settling(2)),
        ("canary", canary_waiting_for_drain),
    ];
    for (name, build) in builders {
        for event in unrelated() {
            let (mut machine, now) = build();
            let deadline = machine.deadline();
            let label = format!("{name}: {event:?}");
            // The canary reports its wait on its first tick; take that one first.
            machine.handle(RollingEvent::Tick, now);
            assert!(machine.handle(event, now).is_empty(), "{label}");
            assert!(machine.deadline() >= deadline, "{label}");
            assert!(!machine.rolling_back(), "{label}");
        }
    }
}

// ----- canary -----

fn policy() -> CanaryPolicy {
    CanaryPolicy {
        duration_ms: 10_000,
        max_excess_basis_points: 100,
    }
}

/// Slot 0 (of 3) replaced with a canary policy: the watch waits for old(0) to drain.
fn canary_waiting_for_drain() -> (RollingUpgrade, Instant) {
    let (mut machine, now) = starting(3, Some(policy()));
    machine.handle(ready(0, true, vec![old(1), old(2)]), now);
    machine.handle(
        RollingEvent::Draining {
            worker: old(0),
            active_connections: Some(2),
        },
        now,
    );
    let commands = machine.handle(RollingEvent::Tick, now + SETTLE);
    assert!(matches!(
        responses(&commands)[0],
        ControlResponse::WorkerReplaced { index: 1, .. }
    ));
    assert!(
        matches!(responses(&commands)[1], ControlResponse::Progress { message } if message.contains("waiting for the replaced worker pid 100")),
        "{commands:?}"
    );
    assert!(!commands
        .iter()
        .any(|c| matches!(c, RollingCommand::Spawn { .. })));
    (machine, now + SETTLE)
}

fn counters(requests: u64, errors: u64) -> WorkerCounters {
    WorkerCounters {
        requests_total: requests,
        responses_5xx: errors,
        ..WorkerCounters::default()
    }
}

/// Answer an `AskStatus` command: ids from `first_id`, counters per worker.
fn answer(
    machine: &mut RollingUpgrade,
    commands: &[RollingCommand],
    first_id: u64,
    now: Instant,
    counters_of: impl Fn(Token) -> WorkerCounters,
) -> Vec<RollingCommand> {
    let workers = commands
        .iter()
        .find_map(|c| match c {
            RollingCommand::AskStatus(workers) => Some(workers.clone()),
            _ => None,
        })
        .expect("an AskStatus command");
    let mut out = Vec::new();
    for (n, worker) in workers.iter().enumerate() {
        let request_id = first_id + n as u64;
        out.extend(machine.handle(
            RollingEvent::StatusAsked {
                worker: *worker,
                request_id,
            },
            now,
        ));
    }
    for (n, worker) in workers.iter().enumerate() {
        let event = RollingEvent::StatusAnswered {
            worker: *worker,
            request_id: first_id + n as u64,
            counters: counters_of(*worker),
        };
        out.extend(machine.handle(event, now));
    }
    out
}

/// Run the canary window; `canary_errors` of 1000 canary requests fail (old workers: 1 in
/// 1000).
fn run_canary(canary_errors: u64) -> Vec<RollingCommand> {
    let (mut machine, now) = canary_waiting_for_drain();
    let commands = machine.handle(RollingEvent::WorkerExited { worker: old(0) }, now);
    assert_eq!(
        commands,
        vec![RollingCommand::AskStatus(vec![old(1), old(2), new(0)])]
    );
    let commands = answer(&mut machine, &commands, 1, now, |_| counters(0, 0));
    assert!(
        matches!(responses(&commands)[0], ControlResponse::Progress { message } if message.contains("compared with 2 old workers")),
        "{commands:?}"
    );
    let end = now + Duration::from_millis(policy().duration_ms);
    let commands = machine.handle(RollingEvent::Tick, end);
    answer(&mut machine, &commands, 10, end, |worker| {
        if worker == new(0) {
            counters(1000, canary_errors)
        } else {
            counters(1000, 1)
        }
    })
}

#[test]
fn a_canary_that_does_as_well_as_the_old_workers_passes_and_the_rest_are_replaced() {
    let commands = run_canary(1);
    assert!(
        matches!(responses(&commands)[0], ControlResponse::Progress { message } if message.starts_with("canary passed")),
        "{commands:?}"
    );
    assert_eq!(commands.last(), Some(&spawn(1, WorkerBinary::New)));
}

#[test]
fn a_canary_with_more_errors_than_allowed_is_rolled_back() {
    let commands = run_canary(50);
    assert_eq!(commands, vec![spawn(0, WorkerBinary::Previous)]);
}

#[test]
fn a_canary_dying_during_its_window_is_rolled_back() {
    let (mut machine, now) = canary_waiting_for_drain();
    assert!(machine.claims_death(0, 1000));
    let died = RollingEvent::CurrentDied {
        worker_id: 0,
        pid: 1000,
        status: "killed by SIGKILL".into(),
    };
    assert_eq!(
        machine.handle(died, now),
        vec![spawn(0, WorkerBinary::Previous)]
    );
}

#[test]
fn live_comparisons_come_once_answered_or_half_an_interval_later() {
    let (mut machine, now) = canary_waiting_for_drain();
    let commands = machine.handle(RollingEvent::WorkerExited { worker: old(0) }, now);
    answer(&mut machine, &commands, 1, now, |_| counters(0, 0));
    let report = now + super::super::canary::CANARY_REPORT_INTERVAL;
    let commands = machine.handle(RollingEvent::Tick, report);
    let commands = answer(&mut machine, &commands, 20, report, |_| counters(10, 0));
    assert!(
        matches!(
            responses(&commands)[0],
            ControlResponse::CanaryComparison {
                new_requests: 10,
                old_requests: 20,
                ..
            }
        ),
        "{commands:?}"
    );
}
