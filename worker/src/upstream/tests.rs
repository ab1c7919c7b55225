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

fn pool_config(name: &str, addr: &str, max_idle: u32) -> UpstreamConfig {
    UpstreamConfig {
        name: name.into(),
        targets: vec![zentinel_protocol::config::UpstreamTarget {
            address: addr.into(),
            weight: 1,
        }],
        load_balancing: LoadBalancing::RoundRobin,
        sticky: None,
        pool: ConnectionPool {
            max_idle,
            ..ConnectionPool::default()
        },
        timeouts: UpstreamTimeouts::default(),
        health_check: None,
        passive_health: PassiveHealth::default(),
        circuit_breaker: None,
        tls: None,
        http: zentinel_protocol::config::UpstreamHttp::default(),
    }
}

/// The target picked for a plain request, if any.
fn pick(u: &mut Upstreams, pool: usize, failed: &[usize], now: Instant) -> Option<usize> {
    let req = PickRequest {
        client_ip: None,
        cookie: None,
    };
    match u.pick(pool, failed, now, &req) {
        Pick::Target(t) => Some(t),
        Pick::Wait | Pick::None | Pick::CircuitOpen => None,
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
fn a_reload_that_changes_tls_does_not_move_idle_connections() {
    let poll = mio::Poll::new().unwrap();
    let reg = poll.registry();
    let mut timers = Timers::new();
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let plain = pool_config("a", &backend.local_addr().unwrap().to_string(), 4);
    let mut u = Upstreams::new();
    let gen1 = u.install(pools(std::slice::from_ref(&plain)), &[], reg, &mut timers);
    let c = u.connect(gen1[0], 0, reg, Token(99)).unwrap();
    assert!(!c.sock.is_tls());
    u.release(c, true, reg, &mut timers, Instant::now());

    // Same target, now over TLS: the plain idle connection is not the new pool's to use.
    let mut tls = plain;
    tls.tls = Some(zentinel_protocol::config::UpstreamTls {
        insecure_skip_verify: true,
        ..Default::default()
    });
    let gen2 = u.install(pools(std::slice::from_ref(&tls)), &gen1, reg, &mut timers);
    assert_ne!(gen2[0], gen1[0]);
    assert!(u.pools[gen2[0]].targets[0].idle.is_empty());
    let fresh = u.checkout(gen2[0], 0, reg, Token(100)).unwrap();
    assert!(!fresh.reused && fresh.sock.is_tls(), "a new TLS connection");
    u.release(fresh, false, reg, &mut timers, Instant::now());

    // Unchanged on the next reload: the pool is kept, with the TLS files read again.
    let gen3 = u.install(pools(&[tls]), &gen2, reg, &mut timers);
    assert_eq!(gen3[0], gen2[0]);
    assert!(u.pools[gen3[0]].tls.is_some());
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
        assert_eq!(pick(&mut u, key, &[], t0), Some(1));
    }
    // Every target down: they are still tried (and a real attempt decides).
    u.report_failure(key, 1, t0, &"refused");
    u.report_failure(key, 1, t0, &"refused");
    assert!(!u.is_up(key, 1, t0));
    let picked: BTreeSet<usize> = (0..4).filter_map(|_| pick(&mut u, key, &[], t0)).collect();
    assert_eq!(picked, BTreeSet::from([0, 1]));
    assert_eq!(
        pick(&mut u, key, &[0], t0),
        Some(1),
        "failed targets stay excluded"
    );
    assert_eq!(pick(&mut u, key, &[0, 1], t0), None);
    // The fail timeout over, both are back.
    let later = t0 + Duration::from_secs(11);
    assert!(u.is_up(key, 0, later));
    let picked: BTreeSet<usize> = (0..4)
        .filter_map(|_| pick(&mut u, key, &[], later))
        .collect();
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

fn two_targets(lb: LoadBalancing) -> UpstreamConfig {
    let mut cfg = pool_config("p", "127.0.0.1:1", 4);
    cfg.targets.push(zentinel_protocol::config::UpstreamTarget {
        address: "127.0.0.1:2".into(),
        weight: 1,
    });
    cfg.load_balancing = lb;
    cfg
}

#[test]
fn sticky_cookie_round_trip() {
    let mut cfg = two_targets(LoadBalancing::Sticky);
    cfg.sticky = Some(zentinel_protocol::config::StickySession {
        cookie_name: "ZID".into(),
        cookie_ttl_secs: 60,
        ..Default::default()
    });
    let pool = Pool::from_config(&cfg).unwrap();
    let poll = mio::Poll::new().unwrap();
    let mut timers = Timers::new();
    let mut u = Upstreams::new();
    let key = u.install(vec![pool], &[], poll.registry(), &mut timers)[0];
    let now = Instant::now();
    let ask = |u: &mut Upstreams, cookie: Option<&str>| {
        let req = PickRequest {
            client_ip: None,
            cookie,
        };
        match u.pick(key, &[], now, &req) {
            Pick::Target(t) => t,
            other => panic!("{other:?}"),
        }
    };
    // No cookie: the fallback (round robin) chooses and a cookie naming its choice is set.
    let first = ask(&mut u, None);
    let header = u.pool(key).unwrap().set_cookie(first, None).unwrap();
    assert!(
        header.starts_with("ZID=")
            && header.contains("; Path=/; Max-Age=60; HttpOnly; Secure; SameSite=Lax"),
        "{header}"
    );
    let value = header["ZID=".len()..header.find(';').unwrap()].to_owned();
    // Sent back, it routes to the same target every time (round robin would alternate) and
    // is not set again.
    for _ in 0..5 {
        assert_eq!(ask(&mut u, Some(&value)), first);
    }
    assert_eq!(u.pool(key).unwrap().set_cookie(first, Some(&value)), None);
    // The same value names the same target in another worker and after a reload.
    let again = Pool::from_config(&cfg).unwrap();
    assert_eq!(again.set_cookie(first, None), Some(header.clone()));
    // A forged or stale value is not an index: it matches no target and the fallback chooses.
    for forged in ["999", "-1", "1.deadbeef", "", "ffffffffffffffff", "0"] {
        let t = ask(&mut u, Some(forged));
        assert!(t < 2);
        assert!(u.pool(key).unwrap().set_cookie(t, Some(forged)).is_some());
    }
    // A failed pinned target is skipped, and the client gets a new cookie.
    let req = PickRequest {
        client_ip: None,
        cookie: Some(&value),
    };
    assert_eq!(u.pick(key, &[first], now, &req), Pick::Target(1 - first));
}

#[test]
fn connection_cap_makes_picks_wait_and_a_release_wakes_the_waiters() {
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = backend.local_addr().unwrap().to_string();
    let mut cfg = pool_config("p", &addr, 4);
    cfg.pool.max_connections = Some(1);
    let poll = mio::Poll::new().unwrap();
    let reg = poll.registry();
    let mut timers = Timers::new();
    let mut u = Upstreams::new();
    let key = u.install(pools(&[cfg]), &[], reg, &mut timers)[0];
    let now = Instant::now();
    let req = PickRequest {
        client_ip: None,
        cookie: None,
    };
    assert_eq!(u.pick(key, &[], now, &req), Pick::Target(0));
    let c = u.checkout(key, 0, reg, Token(7)).unwrap();
    assert_eq!(u.pick(key, &[], now, &req), Pick::Wait, "at the cap");
    u.wait_for(key, Token(8));
    assert!(u.take_wakeups().is_empty());
    u.release(c, true, reg, &mut timers, now);
    assert_eq!(u.take_wakeups(), vec![Token(8)]);
    assert_eq!(u.pick(key, &[], now, &req), Pick::Target(0));
}

#[test]
fn http2_exchanges_share_a_connection_and_the_cap_counts_connections() {
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = backend.local_addr().unwrap().to_string();
    let mut cfg = pool_config("p", &addr, 4);
    cfg.pool.max_connections = Some(1);
    cfg.http.version = zentinel_protocol::config::UpstreamHttpVersion::Http2;
    cfg.http.max_h2_streams = 2;
    let poll = mio::Poll::new().unwrap();
    let reg = poll.registry();
    let mut timers = Timers::new();
    let mut u = Upstreams::new();
    let key = u.install(pools(&[cfg]), &[], reg, &mut timers)[0];
    let now = Instant::now();
    let req = PickRequest {
        client_ip: None,
        cookie: None,
    };
    let session = |k| tokens::session(k, tokens::Side::Upstream);
    let a = u.checkout(key, 0, reg, session(1)).unwrap();
    assert_eq!(
        u.pick(key, &[], now, &req),
        Pick::Target(0),
        "one stream left"
    );
    let b = u.checkout(key, 0, reg, session(2)).unwrap();
    assert!(matches!(a.sock, UpSock::Pipe(_)) && matches!(b.sock, UpSock::Pipe(_)));
    assert_eq!(a.id, b.id, "both streams on one connection");
    assert!(!a.reused, "the connection is still being established");
    assert_eq!(u.h2.len(), 1);
    assert_eq!(
        u.pick(key, &[], now, &req),
        Pick::Wait,
        "one connection (max-connections) of two streams (max-h2-streams)"
    );
    u.wait_for(key, Token(8));
    u.release(a, true, reg, &mut timers, now);
    assert_eq!(u.take_wakeups(), vec![Token(8)]);
    assert_eq!(u.pick(key, &[], now, &req), Pick::Target(0));
    u.release(b, false, reg, &mut timers, now);
    assert_eq!(u.idle_count(), 0, "streams are never pooled");
}

#[test]
fn max_lifetime_closes_old_connections_instead_of_reusing_them() {
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = backend.local_addr().unwrap().to_string();
    let mut cfg = pool_config("p", &addr, 4);
    cfg.pool.max_lifetime_secs = Some(1);
    let poll = mio::Poll::new().unwrap();
    let reg = poll.registry();
    let mut timers = Timers::new();
    let mut u = Upstreams::new();
    let key = u.install(pools(&[cfg]), &[], reg, &mut timers)[0];
    let c = u.checkout(key, 0, reg, Token(7)).unwrap();
    let young = Instant::now();
    u.release(c, true, reg, &mut timers, young);
    assert_eq!(u.idle_count(), 1, "young: pooled");
    let c = u.checkout(key, 0, reg, Token(7)).unwrap();
    assert!(c.reused);
    u.release(c, true, reg, &mut timers, young + Duration::from_secs(2));
    assert_eq!(u.idle_count(), 0, "older than max-lifetime: closed");
}

#[test]
fn host_name_targets_wait_for_their_first_answer_then_count_as_down() {
    let mut cfg = pool_config("p", "backend.invalid:80", 4);
    cfg.targets.push(zentinel_protocol::config::UpstreamTarget {
        address: "127.0.0.1:2".into(),
        weight: 1,
    });
    let pool = Pool::from_config(&cfg).unwrap();
    assert_eq!(pool.targets[0].addr, None);
    assert!(pool.targets[0].resolving);
    let poll = mio::Poll::new().unwrap();
    let mut timers = Timers::new();
    let mut u = Upstreams::new();
    let key = u.install(vec![pool], &[], poll.registry(), &mut timers)[0];
    let now = Instant::now();
    // Only the IP target is usable; with it failed, the request may wait for the name.
    for _ in 0..4 {
        assert_eq!(pick(&mut u, key, &[], now), Some(1));
    }
    let req = PickRequest {
        client_ip: None,
        cookie: None,
    };
    assert_eq!(u.pick(key, &[1], now, &req), Pick::Wait);
}
