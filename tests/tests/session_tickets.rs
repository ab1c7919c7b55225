//! TLS session resumption across workers and across binary upgrades (issue 15): the master makes
//! the session-ticket keys, every worker seals and opens tickets with them, and a rolling
//! upgrade hands them to the new master. Checked from outside with `openssl s_client -sess_out`
//! / `-sess_in` (TLS 1.3 and 1.2) and with the rustls client's own resumption store; which
//! worker served each connection is read from a `builtin-handler "status"` answer (its `pid`).

use std::collections::BTreeSet;

use rustls::HandshakeKind;
use zentinel_tests::tls_sessions::*;
use zentinel_tests::tls_support::*;
use zentinel_tests::*;

#[test]
fn a_session_resumes_on_every_worker_and_on_a_restarted_one() {
    if openssl_missing() {
        return;
    }
    let f = Fixture::new("tickets-workers");
    let z = f.start(2);
    let workers = running_workers(&z);
    assert_eq!(workers.len(), 2, "{}", z.log());
    let sessions = f.session_files();
    for (version, file) in &sessions {
        f.new_session(&z, version, file, LIFETIME_S);
        let tries = f.resume_on_each(&z, version, file, &workers);
        eprintln!("{version}: resumed on both workers within {tries} connections");
    }

    // A worker dies; the master starts another with the same keys: the sessions resume on it.
    let victim = *workers.iter().next().unwrap();
    send_signal(victim, nix::sys::signal::Signal::SIGKILL);
    let replaced = wait_until(DEADLINE, || {
        let now = running_workers(&z);
        now.len() == 2 && !now.contains(&victim)
    });
    assert!(replaced, "the killed worker was not replaced\n{}", z.log());
    let now = running_workers(&z);
    for (version, file) in &sessions {
        f.resume_on_each(&z, version, file, &now);
    }
}

#[test]
fn a_session_from_before_a_rolling_upgrade_resumes_on_the_new_workers() {
    if openssl_missing() {
        return;
    }
    let f = Fixture::new("tickets-upgrade");
    let z = f.start(2);
    let mut files = TempFiles::default();
    let copy = files.add(binary_copy("tickets-upgrade"));
    let old = running_workers(&z);
    let keys_before = master_keys(&z);
    let sessions = f.new_sessions(&z, LIFETIME_S);
    // The rustls client keeps its sessions in its config's resumption store.
    let rustls_clients = [
        ("TLS 1.3", f.rustls_client(&rustls::version::TLS13)),
        ("TLS 1.2", f.rustls_client(&rustls::version::TLS12)),
    ];
    for (version, config) in &rustls_clients {
        let (kind, pid) = rustls_status(&z, config);
        assert_eq!(kind, Some(HandshakeKind::Full), "{version}");
        assert!(old.contains(&pid), "{version}: {pid} not in {old:?}");
    }

    let new = rolling_upgrade_to(&z, &copy, &old, 2);
    let log = z.log_text();
    assert!(
        log.contains("upgrade: the TLS session-ticket keys go to the new master")
            && log.contains("state_format=7"),
        "{}",
        z.log()
    );
    assert_eq!(
        master_keys(&z),
        keys_before,
        "the new master must go on with the old master's keys"
    );

    for (version, file) in &sessions {
        let tries = f.resume_on_each(&z, version, file, &new);
        eprintln!("{version}: resumed on both new workers within {tries} connections");
    }
    // The first rustls connection after the upgrade can only use a ticket from before it.
    for (version, config) in &rustls_clients {
        let (kind, pid) = rustls_status(&z, config);
        assert_eq!(
            kind,
            Some(HandshakeKind::Resumed),
            "{version}: the rustls session from before the upgrade did not resume\n{}",
            z.log()
        );
        assert!(new.contains(&pid), "{version}: {pid} not in {new:?}");
    }
}

/// A new binary that says it reads state formats up to 5 only (a release from before the
/// keys travelled, as a rollback would meet): the master hands over in format 4 without the
/// keys, the new master makes its own, and the upgrade works as before this feature; a session
/// from before it gets a full handshake on the new workers. The "release" is a script that
/// answers `--version --json` like one and runs this build for everything else.
#[test]
fn a_binary_that_does_not_read_the_keys_format_takes_over_without_them() {
    if openssl_missing() {
        return;
    }
    let f = Fixture::new("tickets-older");
    let z = f.start(2);
    let mut files = TempFiles::default();
    let older = older_release(&files.add(temp_path("format-5-zentinel.sh")), 5);
    let old = running_workers(&z);
    let keys_before = master_keys(&z);
    let sessions = f.new_sessions(&z, LIFETIME_S);

    let new = rolling_upgrade_to(&z, &older, &old, 2);
    let log = z.log_text();
    assert!(
        log.contains(
            "upgrade: the new binary does not read the state format that carries the TLS \
             session-ticket keys"
        ) && log.contains("state_format=4"),
        "the previous release's format, without the keys:\n{}",
        z.log()
    );
    let keys_after = master_keys(&z);
    assert!(
        keys_after.len() == 1 && !keys_before.contains(&keys_after[0]),
        "fresh keys expected: {keys_before:?} -> {keys_after:?}"
    );
    for (version, file) in &sessions {
        let file_arg = file.display().to_string();
        let s = f.s_client(&z, &[version, "-sess_in", &file_arg]);
        assert!(s.ok, "{version}\n{}", s.out);
        assert_eq!(s.kind().as_deref(), Some("New"), "{version}\n{}", s.out);
        assert!(
            s.served_by().is_some_and(|pid| new.contains(&pid)),
            "{}",
            s.out
        );
    }
}

/// A rolling upgrade whose new worker crashes is rolled back: the new master (which took the
/// keys over) starts the replaced worker from the previous binary again, with its keys, so a
/// session from before the upgrade resumes on it (and on the old worker it kept).
#[test]
fn a_session_resumes_on_the_workers_a_failed_upgrade_rolls_back_to() {
    if openssl_missing() {
        return;
    }
    require_fault_injection();
    let f = Fixture::new("tickets-rollback");
    let mut files = TempFiles::default();
    let copy = files.add(binary_copy("tickets-rollback"));
    let fault = format!("worker-abort-after-ready@{}", copy.display());
    let z = Zentinel::start_with_env(&f.config(2), &[("ZENTINEL_FAULT_INJECTION", &fault)]);
    let old = running_workers(&z);
    let sessions = f.new_sessions(&z, LIFETIME_S);

    let copy_arg = copy.display().to_string();
    let out = ctl_within(
        &z.control_socket(),
        &[
            "upgrade",
            "--rolling",
            "--binary",
            &copy_arg,
            "--ready-timeout",
            "5s",
        ],
        UPGRADE_DEADLINE,
    );
    assert!(
        !out.success() && out.said().contains("rolled back"),
        "the new workers crash: the upgrade must be rolled back: {out}\n{}",
        z.log()
    );
    let original = z.binary.canonicalize().expect("the original binary");
    let mut back = BTreeSet::new();
    let settled = wait_until(DEADLINE, || {
        back = running_workers(&z);
        back.len() == 2
            && back.difference(&old).count() == 1
            && back
                .iter()
                .all(|&pid| process_exe(pid).as_deref() == Some(original.as_path()))
    });
    assert!(
        settled,
        "workers {back:?} (old {old:?}): not one rolled back to {}\n{}",
        original.display(),
        z.log()
    );
    for (version, file) in &sessions {
        f.resume_on_each(&z, version, file, &back);
    }
}

/// Waits until the master has logged a key list other than `previous` and every one of
/// `workers` workers has applied it; returns it (newest first).
fn wait_for_rotation(z: &Zentinel, previous: &[String], workers: usize) -> Vec<String> {
    let applied_before = z.log_text().matches(KEYS_APPLIED).count();
    let mut keys = Vec::new();
    let rotated = wait_until(DEADLINE, || {
        keys = master_keys(z);
        keys != previous && z.log_text().matches(KEYS_APPLIED).count() >= applied_before + workers
    });
    assert!(rotated, "no rotation after {previous:?}\n{}", z.log());
    keys
}

/// What a worker logs when it gets new keys (`worker/src/event_loop/control.rs`).
const KEYS_APPLIED: &str = "TLS session-ticket keys replaced";

/// The rotation, shortened for the test (`ZENTINEL_TEST_TICKET_KEY_ROTATION_MS`, honoured by
/// test builds only): the master makes a new sealing key and sends it to both workers; a
/// ticket sealed before resumes on both after it (the previous key still opens), and the
/// tickets issued then carry the new key; one rotation later the old key is gone, and the
/// ticket sealed with it no longer resumes (a full handshake instead).
#[test]
fn rotated_keys_reach_every_worker_and_the_previous_key_still_opens() {
    if openssl_missing() {
        return;
    }
    require_fault_injection();
    const ROTATION_S: u32 = 6;
    let f = Fixture::new("tickets-rotation");
    let rotation_ms = (ROTATION_S * 1000).to_string();
    let z = Zentinel::start_with_env(
        &f.config(2),
        &[("ZENTINEL_TEST_TICKET_KEY_ROTATION_MS", &rotation_ms)],
    );
    let workers = running_workers(&z);
    let first = master_keys(&z);
    assert_eq!(first.len(), 1, "{first:?}");
    let sessions = f.new_sessions(&z, ROTATION_S);

    let second = wait_for_rotation(&z, &first, workers.len());
    assert_eq!(second.len(), 2, "{second:?}");
    assert_eq!(second[1], first[0], "the previous key is kept");
    assert!(z.log_text().contains("why=\"rotated\""), "{}", z.log());
    for (version, file) in &sessions {
        let file_arg = file.display().to_string();
        let mut seen = BTreeSet::new();
        for attempt in 1..=MAX_ATTEMPTS {
            let s = f.s_client(&z, &[version, "-sess_in", &file_arg]);
            assert_eq!(
                s.kind().as_deref(),
                Some("Reused"),
                "{version}: connection {attempt} after the rotation\n{}\n{}",
                s.out,
                z.log()
            );
            // TLS 1.3 issues new tickets after a resumption: sealed with the new key.
            if *version == "-tls1_3" {
                let names: Vec<String> = s.tickets().into_iter().map(|(_, n)| n).collect();
                assert!(
                    !names.is_empty() && names.iter().all(|n| *n == second[0]),
                    "{version}: tickets {names:?}, newest key {}\n{}",
                    second[0],
                    s.out
                );
            }
            seen.extend(s.served_by());
            if seen == workers {
                break;
            }
        }
        assert_eq!(seen, workers, "{version}: served by");
    }

    // One more rotation: the first key is dropped. A TLS 1.2 client still offers its ticket
    // (a TLS 1.3 one would not: its lifetime is over), and the server cannot open it.
    let third = wait_for_rotation(&z, &second, workers.len());
    assert!(!third.contains(&first[0]), "{third:?}");
    let file_arg = sessions[1].1.display().to_string();
    let s = f.s_client(&z, &["-tls1_2", "-sess_in", &file_arg]);
    assert!(s.ok, "{}", s.out);
    assert_eq!(
        s.kind().as_deref(),
        Some("New"),
        "a ticket of a dropped key resumed\n{}",
        s.out
    );
}
