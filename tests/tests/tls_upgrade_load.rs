//! TLS load through a rolling upgrade (issue 15): three real `zentinel-load --tls` runs (one
//! over keep-alive connections, one with a full handshake per request, one resuming sessions)
//! through a Zentinel TLS listener while `zentinel-ctl upgrade --rolling` replaces every
//! process. Not one request may fail, and sessions keep resuming across the upgrade.
//!
//! Each load has its own host, routed to its own backend, so the test can wait until each of
//! them is going (before the upgrade) and going on the new workers (after the old ones left).

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use zentinel_tests::load_run::{check_consistent, finish, spawn_load, Run};
use zentinel_tests::tls_support::Ca;
use zentinel_tests::*;

const DEADLINE: Duration = Duration::from_secs(20);
const UPGRADE_DEADLINE: Duration = Duration::from_secs(30);
/// Requests each backend must see before the upgrade, and again once only new workers run.
const PROGRESS: u64 = 50;
/// The one suite the listener offers: the loads must all negotiate it.
const SUITE: &str = "TLS_AES_128_GCM_SHA256";

/// One load: its host (and route, and backend) and its mode.
struct LoadSpec {
    name: &'static str,
    args: &'static [&'static str],
}

const LOADS: [LoadSpec; 3] = [
    LoadSpec {
        name: "keepalive",
        args: &["-c", "6", "--mode", "keepalive"],
    },
    LoadSpec {
        name: "close",
        args: &["-c", "3", "--mode", "close"],
    },
    LoadSpec {
        name: "resume",
        args: &["-c", "3", "--mode", "close", "--resume"],
    },
];

fn config(port: u16, dir: &Path, backends: &[Backend]) -> String {
    let path = |name: &str| dir.join(name).display().to_string();
    let mut routes = String::new();
    let mut upstreams = String::new();
    for (spec, backend) in LOADS.iter().zip(backends) {
        let name = spec.name;
        routes += &format!(
            "    route \"{name}\" {{\n        matches {{ host \"{name}.test\"; }}\n        \
             upstream \"{name}\"\n    }}\n"
        );
        upstreams += &format!(
            "    upstream \"{name}\" {{\n        target \"{}\"\n    }}\n",
            backend.target()
        );
    }
    format!(
        r#"system {{
    worker-processes 2
    graceful-shutdown-timeout-secs 15
}}
listeners {{
    listener "https" {{
        address "127.0.0.1:{port}"
        protocol "https"
        tls {{
            cert-file "{crt}"
            key-file "{key}"
            cipher-suites "{SUITE}"
        }}
    }}
}}
routes {{
{routes}}}
upstreams {{
{upstreams}}}
"#,
        crt = path("z.crt"),
        key = path("z.key"),
    )
}

/// Waits until every backend served `PROGRESS` more requests than `since`.
fn wait_progress(backends: &[Backend], since: &[u64], what: &str, z: &Zentinel) -> Vec<u64> {
    let mut now = vec![0; backends.len()];
    let ok = wait_until(DEADLINE, || {
        for (n, b) in now.iter_mut().zip(backends) {
            *n = b.stats().0;
        }
        now.iter().zip(since).all(|(n, s)| *n >= s + PROGRESS)
    });
    assert!(
        ok,
        "{what}: the loads made too little progress in {DEADLINE:?}: {since:?} -> {now:?} \
         requests (keepalive, close, resume)\n{}",
        z.log()
    );
    now
}

#[test]
fn tls_keepalive_and_new_connection_loads_see_no_failure_across_a_rolling_upgrade() {
    let dir = TempDir::new("tls-upgrade-load");
    let ca = Ca::new();
    let hosts: Vec<String> = LOADS.iter().map(|l| format!("{}.test", l.name)).collect();
    let names: Vec<&str> = hosts.iter().map(String::as_str).collect();
    ca.issue(&dir.0, "z", &names);
    let ca_file = dir.0.join("ca.pem");
    fs::write(&ca_file, ca.cert.pem()).expect("write ca.pem");
    let ca_file = ca_file.display().to_string();
    let backends: Vec<Backend> = LOADS
        .iter()
        .map(|l| Backend::start(&format!("tls-{}", l.name)))
        .collect();
    let z = Zentinel::start(&config(free_port(), &dir.0, &backends));
    let copy = binary_copy("tls-upgrade-load");
    let _files = TempFiles(vec![copy.clone()]);
    let addr = z.addr().to_string();

    // Stopped by SIGINT once the upgrade is over; the duration only bounds a test gone wrong.
    let mut loads: Vec<(Child, std::path::PathBuf)> = Vec::new();
    for (spec, host) in LOADS.iter().zip(&hosts) {
        let json = temp_path(&format!("tls-upgrade-{}.json", spec.name));
        let mut args = vec![
            "--addr",
            &addr,
            "--host",
            host,
            "--tls",
            "--ca",
            &ca_file,
            "-t",
            "1",
            "-d",
            "120s",
            "--timeout",
            "10s",
        ];
        args.extend_from_slice(spec.args);
        loads.push((spawn_load(&args, &json), json));
    }
    let zero = vec![0; backends.len()];
    let before_counts = wait_progress(&backends, &zero, "before the upgrade", &z);

    let old_workers: BTreeSet<u32> = z.worker_pids().into_iter().collect();
    assert_eq!(old_workers.len(), 2, "{}", z.log());
    let old_master = z.current_master_pid();
    let started = Instant::now();
    let out = ctl_within(
        &z.control_socket(),
        &[
            "upgrade",
            "--rolling",
            "--binary",
            &copy.display().to_string(),
        ],
        UPGRADE_DEADLINE,
    );
    assert!(out.success(), "upgrade --rolling: {out}\n{}", z.log());
    let upgrade_took = started.elapsed();
    assert_ne!(z.current_master_pid(), old_master, "{out}");
    // The old workers drain (their keep-alive connections get `Connection: close`) and exit;
    // from then on only the new generation serves.
    assert_all_exit(&old_workers, DEADLINE, "the old workers", &z);
    let new_workers: BTreeSet<u32> = z.worker_pids().into_iter().collect();
    assert_eq!(new_workers.len(), 2, "{}", z.log());
    assert!(new_workers.is_disjoint(&old_workers), "{new_workers:?}");
    wait_progress(&backends, &before_counts, "on the new workers", &z);

    let mut runs: Vec<Run> = Vec::new();
    for (child, json) in loads {
        send_signal(child.id(), Signal::SIGINT);
        runs.push(finish(child, json.clone(), DEADLINE));
        let _ = fs::remove_file(json);
    }
    for (spec, run) in LOADS.iter().zip(&runs) {
        let name = spec.name;
        eprintln!(
            "{name}: {} | connections {} closed_by_server {} (upgrade took {upgrade_took:?})",
            run.stdout.lines().last().unwrap_or(""),
            run.json_u64(&["connections"]),
            run.json_u64(&["closed_by_server"]),
        );
        check_consistent(run);
        assert_eq!(
            run.last_u64("failed"),
            0,
            "{name}: {}\n{}",
            run.stdout,
            z.log()
        );
        assert_eq!(run.code, 0, "{name}: {}", run.stdout);
        assert_eq!(run.json["interrupted"], serde_json::Value::Bool(true));
        assert!(run.last_u64("requests") >= 2 * PROGRESS, "{name}");
        let negotiated = &run.json["tls"]["negotiated"];
        assert_eq!(
            negotiated,
            &serde_json::json!(["TLSv1_3 TLS13_AES_128_GCM_SHA256 X25519"]),
            "{name}: the listener offers {SUITE} only"
        );
    }
    let [keepalive, close, resume] = &runs[..] else {
        unreachable!("three loads")
    };
    // Keep-alive: the draining workers closed connections, which were opened again.
    assert!(
        keepalive.json_u64(&["closed_by_server"]) >= 1,
        "{}",
        keepalive.stdout
    );
    assert_eq!(
        keepalive.last_u64("handshakes"),
        keepalive.json_u64(&["connections"])
    );
    // A handshake for every request: all full without --resume; with it, all but the first
    // few resumed, the upgrade included (every worker, old or new, opens the tickets any of
    // them issued: the ticket keys are handed over).
    for run in [close, resume] {
        assert_eq!(run.last_u64("handshakes"), run.last_u64("requests"));
    }
    assert_eq!(close.last_u64("resumed"), 0, "{}", close.stdout);
    let (resumed, handshakes) = (resume.last_u64("resumed"), resume.last_u64("handshakes"));
    assert!(
        resumed * 10 >= handshakes * 9,
        "only {resumed} of {handshakes} handshakes resumed:\n{}",
        resume.stdout
    );
}
