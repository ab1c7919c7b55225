//! An upgrade from a binary of master-worker protocol 3 (the last before request ids): the new
//! master talks to the adopted workers in their own layout (`messages::v3`), reads their
//! answers, which carry no request id, by order, and replaces them under a canary.
//!
//! Ignored by default: it needs a `zentinel` of protocol 3, a second build this test cannot
//! make itself, e.g. `git archive 92c4bad | tar -x -C /tmp/p3 && (cd /tmp/p3 && cargo build -p
//! zentinel-master --bins)`, then `ZENTINEL_PROTOCOL_3_BIN=/tmp/p3/target/debug/zentinel
//! cargo test -p zentinel-tests --test upgrade_from_protocol_3 -- --ignored`.

use std::path::Path;
use std::time::Duration;

use zentinel_tests::*;

const DEADLINE: Duration = Duration::from_secs(10);
const UPGRADE_DEADLINE: Duration = Duration::from_secs(60);

/// Requests counted by the running workers (pid -> requests) in `status --json`.
fn requests_by_worker(status: &serde_json::Value) -> Vec<(u64, u64)> {
    workers_of(status)
        .iter()
        .filter(|w| w["state"] == "running")
        .map(|w| {
            (
                w["pid"].as_u64().unwrap_or_default(),
                w["requests_total"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

fn serve(z: &Zentinel, n: usize) {
    for _ in 0..n {
        z.client()
            .get("/bytes/100", "p3.test")
            .assert_pattern_body(100);
    }
}

fn upgrade(z: &Zentinel, binary: &Path, extra: &[&str]) -> CtlOutput {
    let b = binary.display().to_string();
    let mut args = vec!["upgrade", "--binary", b.as_str()];
    args.extend_from_slice(extra);
    ctl_within(&z.control_socket(), &args, UPGRADE_DEADLINE)
}

#[test]
#[ignore = "needs ZENTINEL_PROTOCOL_3_BIN, a zentinel of master-worker protocol 3"]
fn protocol_3_workers_are_driven_then_replaced_by_this_build() {
    let previous = std::env::var_os("ZENTINEL_PROTOCOL_3_BIN")
        .expect("set ZENTINEL_PROTOCOL_3_BIN to a zentinel of protocol 3");
    let mut files = TempFiles::default();
    let prev = files.add(temp_path("protocol-3-zentinel"));
    install_binary(Path::new(&previous), &prev);
    let be = Backend::start("protocol-3");
    let z = Zentinel::start_with_binary(&configs::proxy_draining(2, free_port(), &be, 5), &prev);
    serve(&z, 4);
    let old_workers = requests_by_worker(&z.status());
    assert_eq!(old_workers.len(), 2, "{}", z.status());

    // The master alone: the protocol 3 workers stay, under this build's master.
    let current = files.add(binary_copy("from-protocol-3"));
    upgrade(&z, &current, &[]).assert_success("master-only upgrade from protocol 3");
    let master = z.current_master_pid();
    assert_ne!(master, z.pid);
    // Their status answers (no request id) are read in their layout and matched by order:
    // each status counts the requests made before it.
    for round in 1..=3 {
        let before: u64 = requests_by_worker(&z.status()).iter().map(|(_, n)| n).sum();
        serve(&z, 6);
        let status = z.status();
        let now = requests_by_worker(&status);
        assert_eq!(
            now.iter().map(|(pid, _)| *pid).collect::<Vec<_>>(),
            old_workers.iter().map(|(pid, _)| *pid).collect::<Vec<_>>(),
            "round {round}: the adopted protocol 3 workers must still serve: {status}"
        );
        let after: u64 = now.iter().map(|(_, n)| n).sum();
        assert!(
            after >= before + 6,
            "round {round}: {before} -> {after} requests: stale counters\n{status}\n{}",
            z.log()
        );
    }
    // A reload waits until they are replaced.
    let out = ctl_within(&z.control_socket(), &["reload"], DEADLINE);
    assert!(
        !out.success() && out.said().contains("protocol 3"),
        "a reload with protocol 3 workers must be refused: {out}"
    );

    // Rolling, under a canary: the adopted workers' counters feed the comparison.
    let again = files.add(binary_copy("from-protocol-3-rolling"));
    upgrade(&z, &again, &["--rolling", "--canary", "2s"])
        .assert_success("rolling upgrade from protocol 3 workers");
    let status = z.status();
    let replaced = requests_by_worker(&status);
    assert_eq!(replaced.len(), 2, "{status}");
    assert!(
        replaced
            .iter()
            .all(|(pid, _)| old_workers.iter().all(|(old, _)| old != pid)),
        "every worker replaced: {status}"
    );
    serve(&z, 4);
    let before: u64 = replaced.iter().map(|(_, n)| n).sum();
    let after: u64 = requests_by_worker(&z.status()).iter().map(|(_, n)| n).sum();
    assert!(after >= before + 4, "{before} -> {after}");
    let out = ctl_within(&z.control_socket(), &["reload"], DEADLINE);
    out.assert_success("reload once every worker speaks this build's protocol");
}
