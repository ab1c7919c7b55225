use super::*;
use std::collections::BTreeSet;
use zentinel_protocol::config::LoadBalancing;

#[test]
fn only_failures_of_the_target_count_against_it() {
    let os = io::Error::from_raw_os_error;
    assert!(blames_target(&os(libc::ECONNREFUSED)));
    assert!(blames_target(&os(libc::ENETUNREACH)));
    assert!(blames_target(&io::Error::from(io::ErrorKind::TimedOut)));
    for local in [
        libc::EMFILE,
        libc::ENFILE,
        libc::ENOBUFS,
        libc::ENOMEM,
        libc::EADDRNOTAVAIL,
    ] {
        assert!(!blames_target(&os(local)), "errno {local}");
    }
}

fn picks(b: &mut Balancer, n: usize) -> Vec<usize> {
    (0..n).map(|_| b.pick(&[0, 0, 0], &[]).unwrap()).collect()
}

#[test]
fn smooth_weighted_round_robin() {
    let mut b = Balancer::new(LoadBalancing::RoundRobin, &[5, 1, 1]);
    // nginx's documented sequence for weights 5,1,1.
    assert_eq!(picks(&mut b, 7), vec![0, 0, 1, 0, 2, 0, 0]);
    // And it repeats with the same distribution.
    let next = picks(&mut b, 7);
    assert_eq!(next.iter().filter(|&&i| i == 0).count(), 5);
    assert_eq!(next.iter().filter(|&&i| i == 1).count(), 1);
}

#[test]
fn equal_weights_alternate() {
    let mut b = Balancer::new(LoadBalancing::RoundRobin, &[1, 1]);
    let p: Vec<usize> = (0..4).map(|_| b.pick(&[0, 0], &[]).unwrap()).collect();
    assert_eq!(p, vec![0, 1, 0, 1]);
}

#[test]
fn zero_weight_treated_as_one() {
    let mut b = Balancer::new(LoadBalancing::RoundRobin, &[0, 1]);
    let p: Vec<usize> = (0..4).map(|_| b.pick(&[0, 0], &[]).unwrap()).collect();
    assert_eq!(p.iter().filter(|&&i| i == 0).count(), 2);
}

#[test]
fn least_connections_prefers_fewest() {
    let mut b = Balancer::new(LoadBalancing::LeastConnections, &[1, 1, 1]);
    assert_eq!(b.pick(&[3, 1, 2], &[]), Some(1));
    assert_eq!(b.pick(&[0, 5, 5], &[]), Some(0));
    assert_eq!(b.pick(&[5, 5, 0], &[]), Some(2));
}

#[test]
fn least_connections_weighted_and_ties_rotate() {
    // Target 1 has weight 3: 3 active there equals 1 active on weight-1 target 0.
    let mut b = Balancer::new(LoadBalancing::LeastConnections, &[1, 3]);
    assert_eq!(b.pick(&[1, 2], &[]), Some(1));
    assert_eq!(b.pick(&[1, 4], &[]), Some(0));
    let mut b = Balancer::new(LoadBalancing::LeastConnections, &[1, 1]);
    let a = b.pick(&[0, 0], &[]).unwrap();
    let c = b.pick(&[0, 0], &[]).unwrap();
    assert_ne!(a, c, "ties must not always go to the same target");
}

#[test]
fn excluded_targets_are_skipped_until_none_is_left() {
    for lb in [LoadBalancing::RoundRobin, LoadBalancing::LeastConnections] {
        let mut b = Balancer::new(lb, &[1, 1, 1]);
        let mut failed = Vec::new();
        while let Some(t) = b.pick(&[0, 0, 0], &failed) {
            assert!(!failed.contains(&t), "{lb:?} picked {t} again: {failed:?}");
            failed.push(t);
        }
        failed.sort_unstable();
        assert_eq!(failed, vec![0, 1, 2], "{lb:?} must try every target once");
    }
}

#[test]
fn round_robin_stays_balanced_around_an_excluded_target() {
    // Target 0 always fails and is excluded after its turn: the others still share the
    // load evenly (the exclusion does not skew the smooth weighted state).
    let mut b = Balancer::new(LoadBalancing::RoundRobin, &[1, 1, 1]);
    let mut served = [0u32; 3];
    for _ in 0..300 {
        let mut t = b.pick(&[0, 0, 0], &[]).unwrap();
        if t == 0 {
            t = b.pick(&[0, 0, 0], &[0]).unwrap();
        }
        served[t] += 1;
    }
    assert_eq!(served[0], 0);
    assert!(served[1].abs_diff(served[2]) <= 1, "{served:?}");
}

fn pool_config(name: &str, addr: &str, max_idle: u32) -> UpstreamConfig {
    UpstreamConfig {
        name: name.into(),
        targets: vec![zentinel_protocol::config::UpstreamTarget {
            address: addr.into(),
            weight: 1,
        }],
        load_balancing: LoadBalancing::RoundRobin,
        pool: ConnectionPool {
            max_idle,
            ..ConnectionPool::default()
        },
        timeouts: UpstreamTimeouts::default(),
        health_check: None,
        passive_health: PassiveHealth::default(),
    }
}

fn pools(cfgs: &[UpstreamConfig]) -> Vec<Pool> {
    cfgs.iter().map(|c| Pool::from_config(c).unwrap()).collect()
}

#[test]
fn reload_keeps_unchanged_pools_moves_idle_connections_and_retires_unused_pools() {
    let poll = mio::Poll::new().unwrap();
    let reg = poll.registry();
    let mut timers = Timers::new();
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = backend.local_addr().unwrap().to_string();
    let (a, b) = (pool_config("a", &addr, 4), pool_config("b", &addr, 4));
    let mut u = Upstreams::new();
    let gen1 = u.install(pools(&[a.clone(), b.clone()]), &[], reg, &mut timers);
    let c = u.connect(gen1[0], 0, reg, Token(99)).unwrap();
    u.release(c, true, reg, &mut timers, Instant::now());
    assert_eq!(u.pools[gen1[0]].targets[0].idle.len(), 1);

    // `a` unchanged: same pool, idle connection kept. `b` changed (not its targets): a
    // new pool. `c` new.
    let b2 = pool_config("b", &addr, 8);
    let c = pool_config("c", &addr, 4);
    let gen2 = u.install(pools(&[a.clone(), b2, c]), &gen1, reg, &mut timers);
    assert_eq!(gen2[0], gen1[0]);
    assert_ne!(gen2[1], gen1[1]);
    assert_eq!(u.pools[gen2[0]].targets[0].idle.len(), 1);
    assert_eq!(u.retire_unused(|k| gen2.contains(&k), reg, &mut timers), 0);
    assert_eq!(u.pool_count(), 3, "the old `b` is gone");

    // `a` with other settings, same targets: its idle connection moves to the new pool.
    let mut a2 = a.clone();
    a2.timeouts.read_secs += 1;
    let gen3 = u.install(pools(&[a2]), &gen2, reg, &mut timers);
    assert_ne!(gen3[0], gen2[0]);
    assert_eq!(u.pools[gen2[0]].targets[0].idle.len(), 0);
    assert_eq!(u.pools[gen3[0]].targets[0].idle.len(), 1);
    let reused = u.checkout(gen3[0], 0, reg, Token(100)).unwrap();
    assert!(reused.reused, "the moved idle connection is handed out");

    // A pool with a checked-out connection outlives its configuration until released.
    assert_eq!(u.retire_unused(|_| false, reg, &mut timers), 1);
    assert_eq!(u.pool_count(), 1);
    u.release(reused, true, reg, &mut timers, Instant::now());
    assert_eq!(u.retire_unused(|_| false, reg, &mut timers), 0);
    assert_eq!(u.pool_count(), 0);
    assert!(
        u.idle.is_empty(),
        "idle connections of removed pools are closed"
    );
}

#[test]
fn down_targets_are_skipped_unless_every_target_is_down() {
    let poll = mio::Poll::new().unwrap();
    let mut timers = Timers::new();
    let mut cfg = pool_config("p", "127.0.0.1:1", 4);
    cfg.targets.push(zentinel_protocol::config::UpstreamTarget {
        address: "127.0.0.1:2".into(),
        weight: 1,
    });
    cfg.passive_health = PassiveHealth {
        max_fails: 2,
        fail_timeout_secs: 10,
    };
    let mut u = Upstreams::new();
    let key = u.install(pools(&[cfg]), &[], poll.registry(), &mut timers)[0];
    let t0 = Instant::now();
    u.report_failure(key, 0, t0, &"refused");
    assert!(u.is_up(key, 0, t0), "one failure of two allowed");
    u.report_failure(key, 0, t0, &"refused");
    assert!(!u.is_up(key, 0, t0));
    for _ in 0..6 {
        assert_eq!(u.pick(key, &[], t0), Some(1));
    }
    // Every target down: they are still tried (and a real attempt decides).
    u.report_failure(key, 1, t0, &"refused");
    u.report_failure(key, 1, t0, &"refused");
    assert!(!u.is_up(key, 1, t0));
    let picked: BTreeSet<usize> = (0..4).filter_map(|_| u.pick(key, &[], t0)).collect();
    assert_eq!(picked, BTreeSet::from([0, 1]));
    assert_eq!(
        u.pick(key, &[0], t0),
        Some(1),
        "failed targets stay excluded"
    );
    assert_eq!(u.pick(key, &[0, 1], t0), None);
    // The fail timeout over, both are back.
    let later = t0 + Duration::from_secs(11);
    assert!(u.is_up(key, 0, later));
    let picked: BTreeSet<usize> = (0..4).filter_map(|_| u.pick(key, &[], later)).collect();
    assert_eq!(picked, BTreeSet::from([0, 1]));
}

#[test]
fn reload_carries_health_marks_but_not_probe_marks_without_checks() {
    let poll = mio::Poll::new().unwrap();
    let reg = poll.registry();
    let mut timers = Timers::new();
    let mut checked = pool_config("p", "127.0.0.1:1", 4);
    checked.health_check = Some(HealthCheck {
        kind: zentinel_protocol::config::HealthCheckKind::Tcp,
        interval_secs: 5,
        timeout_secs: 1,
        healthy_threshold: 1,
        unhealthy_threshold: 1,
    });
    let mut u = Upstreams::new();
    let gen1 = u.install(pools(&[checked.clone()]), &[], reg, &mut timers);
    let now = Instant::now();
    // A passive mark on a checked pool waits for the probes.
    u.report_failure(gen1[0], 0, now, &"refused");
    assert!(!u.is_up(gen1[0], 0, now));
    // Other settings, same targets, still checked: the mark stays.
    let mut slower = checked.clone();
    slower.timeouts.read_secs += 1;
    let gen2 = u.install(pools(&[slower.clone()]), &gen1, reg, &mut timers);
    assert_ne!(gen2[0], gen1[0]);
    assert!(!u.is_up(gen2[0], 0, now));
    // Checks removed: nothing could lift the mark any more, so it goes.
    let mut unchecked = slower;
    unchecked.health_check = None;
    let gen3 = u.install(pools(&[unchecked]), &gen2, reg, &mut timers);
    assert!(u.is_up(gen3[0], 0, now));
    assert_eq!(u.retire_unused(|k| gen3.contains(&k), reg, &mut timers), 0);
}

#[test]
fn empty_pool_picks_none() {
    let mut b = Balancer::new(LoadBalancing::RoundRobin, &[]);
    assert_eq!(b.pick(&[], &[]), None);
}
