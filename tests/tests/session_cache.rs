//! The TLS session cache every worker shares (issue 15, `docs/design/session-cache.md`): a
//! client that resumes by session id, without a ticket (`openssl s_client -no_ticket
//! -tls1_2`), resumes on every worker, on a worker restarted after a crash, and on the new
//! binary's workers after a rolling upgrade, which hands the cache (a memfd) to the new master
//! in state format 7. A new binary that does not read format 7 gets the keys but starts with an
//! empty cache. Fixtures shared with `session_tickets.rs` (`zentinel_tests::tls_sessions`).

use std::path::Path;

use zentinel_tests::tls_sessions::*;
use zentinel_tests::tls_support::*;
use zentinel_tests::*;

/// s_client's switches for a session that resumes by id alone: TLS 1.2, and no session ticket
/// asked for (so the server issues none, and the client offers none).
const BY_ID: [&str; 2] = ["-tls1_2", "-no_ticket"];

/// What the new master logs when it adopts its predecessor's cache
/// (`master/src/session_cache.rs`).
const CACHE_TAKEN_OVER: &str = "TLS session cache taken over from the previous master";
/// What a master logs when it makes one.
const CACHE_MADE: &str = "TLS session cache made: every worker shares it";

/// A new session that can only resume by its id, saved to `file`: a full handshake, a session
/// id, and no ticket.
fn new_session_by_id(f: &Fixture, z: &Zentinel, file: &Path) {
    let _ = std::fs::remove_file(file);
    let file_arg = file.display().to_string();
    let mut args = BY_ID.to_vec();
    args.extend(["-sess_out", file_arg.as_str()]);
    let s = f.s_client(z, &args);
    assert!(
        s.ok && file.exists() && s.kind().as_deref() == Some("New"),
        "first connection\n{}\n{}",
        s.out,
        z.log()
    );
    assert!(s.tickets().is_empty(), "a ticket was issued\n{}", s.out);
    let id = s
        .out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Session-ID: "))
        .unwrap_or_default();
    assert!(id.len() == 64, "no 32-byte session id\n{}", s.out);
}

/// One connection resuming `file` by id: how it went, and which worker served.
fn resume_once(f: &Fixture, z: &Zentinel, file: &Path) -> (Option<String>, Option<u32>) {
    let file_arg = file.display().to_string();
    let mut args = BY_ID.to_vec();
    args.extend(["-sess_in", file_arg.as_str()]);
    let s = f.s_client(z, &args);
    assert!(s.ok, "{}", s.out);
    (s.kind(), s.served_by())
}

#[test]
fn a_session_id_resumes_on_every_worker_and_on_a_restarted_one() {
    if openssl_missing() {
        return;
    }
    let f = Fixture::new("sesscache-workers");
    let z = f.start(2);
    let workers = running_workers(&z);
    assert_eq!(workers.len(), 2, "{}", z.log());
    assert_eq!(
        z.log_text().matches(CACHE_MADE).count(),
        1,
        "one cache, made once by the master\n{}",
        z.log()
    );
    let file = f.path("session-by-id.pem");
    new_session_by_id(&f, &z, &file);
    // Before the shared cache, only the worker that made the session knew its id.
    let tries = f.resume_on_each_with(&z, &BY_ID, &file, &workers);
    eprintln!("resumed by id on both workers within {tries} connections");

    // A worker dies; its replacement maps the same cache, and the session resumes on it.
    let victim = *workers.iter().next().unwrap();
    send_signal(victim, nix::sys::signal::Signal::SIGKILL);
    let replaced = wait_until(DEADLINE, || {
        let now = running_workers(&z);
        now.len() == 2 && !now.contains(&victim)
    });
    assert!(replaced, "the killed worker was not replaced\n{}", z.log());
    let now = running_workers(&z);
    f.resume_on_each_with(&z, &BY_ID, &file, &now);
}

#[test]
fn a_session_id_from_before_a_rolling_upgrade_resumes_on_the_new_workers() {
    if openssl_missing() {
        return;
    }
    let f = Fixture::new("sesscache-upgrade");
    let z = f.start(2);
    let mut files = TempFiles::default();
    let copy = files.add(binary_copy("sesscache-upgrade"));
    let old = running_workers(&z);
    let file = f.path("session-by-id.pem");
    new_session_by_id(&f, &z, &file);
    // Resumed on the old workers first: the session is in the cache, not only in a worker.
    f.resume_on_each_with(&z, &BY_ID, &file, &old);

    let new = rolling_upgrade_to(&z, &copy, &old, 2);
    let log = z.log_text();
    assert!(
        log.contains("upgrade: the shared TLS session cache goes to the new master")
            && log.contains("state_format=7")
            && log.contains(CACHE_TAKEN_OVER)
            && log.matches(CACHE_MADE).count() == 1,
        "the cache goes over in format 7, and no new one is made\n{}",
        z.log()
    );
    // Every connection after the upgrade lands on a new worker: each resumes.
    let tries = f.resume_on_each_with(&z, &BY_ID, &file, &new);
    eprintln!("resumed by id on both new workers within {tries} connections");
}

/// A new binary that says it reads state formats up to 6 only (a release with the shared
/// ticket keys but without the shared cache): the master hands the keys over in format 6 and
/// keeps the cache, the new master makes a fresh, empty one. A session saved with a ticket
/// resumes on the new workers; one that resumes by id alone gets a full handshake once, and
/// the session it gets then resumes on every new worker.
#[test]
fn a_binary_that_does_not_read_the_cache_format_starts_an_empty_cache() {
    if openssl_missing() {
        return;
    }
    let f = Fixture::new("sesscache-older");
    let z = f.start(2);
    let mut files = TempFiles::default();
    let older = older_release(&files.add(temp_path("format-6-zentinel.sh")), 6);
    let old = running_workers(&z);
    let by_id = f.path("session-by-id.pem");
    new_session_by_id(&f, &z, &by_id);
    let ticket = f.path("session-ticket.pem");
    f.new_session(&z, "-tls1_2", &ticket, LIFETIME_S);

    let new = rolling_upgrade_to(&z, &older, &old, 2);
    let log = z.log_text();
    assert!(
        log.contains(
            "upgrade: the new binary does not read the state format that carries the shared \
             TLS session cache"
        ) && log.contains("state_format=6")
            && !log.contains(CACHE_TAKEN_OVER)
            && log.matches(CACHE_MADE).count() == 2,
        "format 6, the keys without the cache, and a fresh cache\n{}",
        z.log()
    );
    f.resume_on_each(&z, "-tls1_2", &ticket, &new);
    let (kind, pid) = resume_once(&f, &z, &by_id);
    assert_eq!(kind.as_deref(), Some("New"), "{}", z.log());
    assert!(pid.is_some_and(|pid| new.contains(&pid)), "{pid:?}");
    // The fresh cache is shared like the first one.
    new_session_by_id(&f, &z, &by_id);
    f.resume_on_each_with(&z, &BY_ID, &by_id, &new);
}
