//! Every event in every situation of `DrainingGenerations` (table in
//! docs/design/drain-deadlines.md).

use super::*;

type D = DrainingGenerations<u32>;

fn retired(worker: u32, generation: u64) -> Event<u32> {
    Event::Retired { worker, generation }
}

fn finish(worker: u32, generation: u64) -> Command<u32> {
    Command::FinishNow { worker, generation }
}

#[test]
fn within_the_limit_nothing_is_asked() {
    let mut d = D::new(3);
    for (worker, generation) in [(1, 1), (2, 1), (3, 2), (4, 3)] {
        assert!(d.handle(retired(worker, generation)).is_empty());
    }
    assert_eq!(d.unfinished_generations(), BTreeSet::from([1, 2, 3]));
    assert!(!d.finishing(1));
}

#[test]
fn one_generation_too_many_asks_every_worker_of_the_oldest_to_finish() {
    let mut d = D::new(2);
    d.handle(retired(10, 1));
    d.handle(retired(11, 1));
    d.handle(retired(20, 2));
    assert!(d.handle(retired(21, 2)).is_empty(), "same generation");
    assert_eq!(d.handle(retired(30, 3)), vec![finish(10, 1), finish(11, 1)]);
    assert!(d.finishing(10) && d.finishing(11) && !d.finishing(20));
    assert_eq!(d.unfinished_generations(), BTreeSet::from([2, 3]));
    // The next upgrade asks the next oldest; generation 1 is not asked again.
    assert_eq!(d.handle(retired(40, 4)), vec![finish(20, 2), finish(21, 2)]);
}

#[test]
fn the_issue_case_max_one_two_upgrades_in_a_row() {
    // Generation 1 holds a long download: the first upgrade retires it, the second retires
    // generation 2, and with max 1 generation 1 is asked to finish.
    let mut d = D::new(1);
    assert!(d.handle(retired(1, 1)).is_empty());
    assert_eq!(d.handle(retired(2, 2)), vec![finish(1, 1)]);
    assert!(d.finishing(1));
}

#[test]
fn a_generation_gone_frees_its_place() {
    let mut d = D::new(1);
    d.handle(retired(1, 1));
    assert!(d.handle(Event::Exited { worker: 1 }).is_empty());
    assert!(d.handle(retired(2, 2)).is_empty(), "generation 1 exited");
    // Exits of unknown or already removed workers change nothing.
    assert!(d.handle(Event::Exited { worker: 99 }).is_empty());
    assert!(d.handle(Event::Exited { worker: 1 }).is_empty());
    assert_eq!(d.unfinished_generations(), BTreeSet::from([2]));
}

#[test]
fn a_worker_joining_a_finishing_generation_finishes_too() {
    let mut d = D::new(1);
    d.handle(retired(1, 5));
    assert_eq!(d.handle(retired(2, 6)), vec![finish(1, 5)]);
    // An adopted draining worker of generation 5 shows up after (confirmation order).
    assert_eq!(d.handle(retired(3, 5)), vec![finish(3, 5)]);
    // A worker reported twice is counted once and not asked twice.
    assert!(d.handle(retired(3, 5)).is_empty());
}

#[test]
fn adopted_generations_older_than_the_limit_allows_are_all_asked() {
    // A new master confirms its takeover with four draining generations and a limit of 2.
    let mut d = D::new(2);
    let mut asked = Vec::new();
    for (worker, generation) in [(4, 4), (1, 1), (3, 3), (2, 2)] {
        asked.extend(d.handle(retired(worker, generation)));
    }
    assert_eq!(asked, vec![finish(1, 1), finish(2, 2)]);
    assert_eq!(d.unfinished_generations(), BTreeSet::from([3, 4]));
}

#[test]
fn a_reload_lowering_the_limit_asks_at_once_raising_it_asks_nothing() {
    let mut d = D::new(3);
    for (worker, generation) in [(1, 1), (2, 2), (3, 3)] {
        d.handle(retired(worker, generation));
    }
    assert_eq!(d.handle(Event::Limit(1)), vec![finish(1, 1), finish(2, 2)]);
    assert_eq!(d.limit(), 1);
    assert!(d.handle(Event::Limit(5)).is_empty());
    // Finishing is not undone by a higher limit.
    assert!(d.finishing(1) && d.finishing(2) && !d.finishing(3));
}

#[test]
fn limit_zero_asks_every_retired_worker_at_once() {
    let mut d = D::new(0);
    assert_eq!(d.handle(retired(1, 1)), vec![finish(1, 1)]);
    assert_eq!(d.handle(retired(2, 1)), vec![finish(2, 1)]);
    assert_eq!(d.handle(retired(3, 2)), vec![finish(3, 2)]);
}
