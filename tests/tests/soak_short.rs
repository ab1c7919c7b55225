//! Short soak inside `cargo test`: the real `scripts/soak.sh` on the binaries of this build, for
//! ~22 s of keep-alive load with a rolling upgrade every 6 s and a `kill -9` of a random worker
//! every 9 s. The long run (10 minutes, upgrade every 30 s, kill every 45 s) is the same script
//! run by hand; its figures are in docs/reliability.md.
//!
//! The script does the judging (exit 1 on a failed upgrade, a worker not back, a failed request
//! outside every kill's window, or a kill costing more requests than its victim's connections);
//! this test also reads its summary so that a run that did nothing (no upgrade, no kill, no
//! load) cannot pass.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use zentinel_tests::zentinel_bin;

const DURATION_S: u64 = 22;
const UPGRADE_EVERY_S: u64 = 6;
const KILL_EVERY_S: u64 = 9;
const RATE: u64 = 300;
const CONNECTIONS: u64 = 8;
/// Start-up, the load, the summary and stopping everything take ~30 s; an upgrade or a worker
/// restart that hangs is bounded by the script (120 s / 15 s), but this test must not hang
/// `cargo test` for that long on top.
const DEADLINE: Duration = Duration::from_secs(120);

/// Runs the script in its own process group, its stdout and stderr interleaved in one file.
/// Returns its exit status (None when it overran the deadline and was stopped) and its output.
fn run_soak(target_dir: &Path, profile: &str, log: &Path) -> (Option<ExitStatus>, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = File::create(log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    let err = out.try_clone().expect("dup log fd");
    let mut cmd = Command::new("bash");
    cmd.arg(root.join("scripts/soak.sh"))
        .args(["--duration", &DURATION_S.to_string()])
        .args(["--upgrade-every", &UPGRADE_EVERY_S.to_string()])
        .args(["--kill-every", &KILL_EVERY_S.to_string()])
        .args(["--rate", &RATE.to_string()])
        .args(["--connections", &CONNECTIONS.to_string()])
        .env("CARGO_TARGET_DIR", target_dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    if profile == "debug" {
        cmd.arg("--debug");
    } else {
        // A release test build: the release binaries are already there, do not rebuild.
        cmd.env("ZT_BUILT", "release");
    }
    let mut child = cmd.spawn().expect("spawn bash scripts/soak.sh");
    let pgid = Pid::from_raw(child.id() as i32);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for soak.sh") {
            break Some(status);
        }
        if started.elapsed() > DEADLINE {
            // SIGTERM first: the script's trap stops every process it started, including the
            // Zentinel instance in its own session; SIGKILL the group only if that hangs.
            let _ = killpg(pgid, Signal::SIGTERM);
            let grace = Instant::now();
            while child.try_wait().expect("wait for soak.sh").is_none()
                && grace.elapsed() < Duration::from_secs(20)
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = killpg(pgid, Signal::SIGKILL);
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output =
        std::fs::read_to_string(log).unwrap_or_else(|e| format!("(log {}: {e})", log.display()));
    (status, output)
}

/// The value after `prefix` on the summary line starting with it (leading spaces ignored).
fn summary_line<'a>(output: &'a str, prefix: &str) -> Option<&'a str> {
    output
        .lines()
        .rev()
        .find_map(|line| line.trim_start().strip_prefix(prefix))
}

/// The leading whole number of `s`.
fn leading_number(s: &str) -> Option<u64> {
    let digits: String = s
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

#[test]
fn short_soak_with_upgrades_and_worker_kills() {
    // The binaries next to this build's zentinel: their profile dir's parent is the target dir
    // the script must use (it looks for CARGO_TARGET_DIR/<profile>/<binary>).
    let zentinel = zentinel_bin();
    let profile_dir = zentinel.parent().expect("zentinel binary has a directory");
    let profile = profile_dir
        .file_name()
        .and_then(|name| name.to_str())
        .expect("profile dir name")
        .to_owned();
    assert!(
        profile == "debug" || profile == "release",
        "{}: soak.sh only knows the debug and release profiles",
        zentinel.display()
    );
    let target_dir: PathBuf = profile_dir.parent().expect("target dir").to_path_buf();
    let log = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("soak_short-{}.log", std::process::id()));

    let started = Instant::now();
    let (status, output) = run_soak(&target_dir, &profile, &log);
    let elapsed = started.elapsed();
    let fail = |why: String| -> ! {
        panic!(
            "short soak: {why} (after {elapsed:.1?}; log {})\n\
             ---------------- scripts/soak.sh output ----------------\n{output}\n\
             --------------------------------------------------------",
            log.display()
        )
    };

    match status {
        None => fail(format!("still running after {DEADLINE:?}: stopped")),
        Some(status) if !status.success() => fail(format!("scripts/soak.sh exited with {status}")),
        Some(_) => {}
    }
    if !output.lines().any(|line| line.trim() == "soak passed") {
        fail("no 'soak passed' line".into());
    }

    // "upgrades: N done, M failed": events every 6 s until 3 s before the end of 22 s are due
    // at 6, 12 and 18 s; one may slip past the cut-off on a starved machine.
    let upgrades =
        summary_line(&output, "upgrades: ").unwrap_or_else(|| fail("no 'upgrades:' line".into()));
    let done =
        leading_number(upgrades).unwrap_or_else(|| fail(format!("upgrades line: {upgrades:?}")));
    let failed = upgrades
        .split(", ")
        .nth(1)
        .and_then(leading_number)
        .unwrap_or_else(|| fail(format!("upgrades line: {upgrades:?}")));
    if done < 2 || failed != 0 {
        fail(format!(
            "expected >= 2 upgrades done and 0 failed, got {upgrades:?}"
        ));
    }

    // "kills: K (...)": due at 9 and 18 s.
    let kills_line =
        summary_line(&output, "kills: ").unwrap_or_else(|| fail("no 'kills:' line".into()));
    let kills =
        leading_number(kills_line).unwrap_or_else(|| fail(format!("kills line: {kills_line:?}")));
    if kills < 1 {
        fail(format!("expected >= 1 worker kill, got {kills_line:?}"));
    }

    // "failed requests: T; in a kill's window: W; elsewhere: E": every failure on a kill.
    let failures = summary_line(&output, "failed requests: ")
        .unwrap_or_else(|| fail("no 'failed requests:' line".into()));
    let fields: Option<Vec<u64>> = failures
        .split("; ")
        .map(|part| part.rsplit(": ").next().and_then(leading_number))
        .collect();
    let Some(&[total, near_kills, elsewhere]) = fields.as_deref() else {
        fail(format!("failed requests line: {failures:?}"));
    };
    if elsewhere != 0 || total != near_kills {
        fail(format!("failures not explained by kills: {failures:?}"));
    }

    // "per kill (failed in window / connections the victim held): t=9.0s 0/4 t=18.1s 2/4":
    // one entry per kill, none costing more than its victim's connections.
    let per_kill = summary_line(
        &output,
        "per kill (failed in window / connections the victim held):",
    )
    .unwrap_or_else(|| fail("no 'per kill' line".into()));
    let entries: Vec<(u64, u64)> = per_kill
        .split_whitespace()
        .filter_map(|entry| {
            let (lost, held) = entry.split_once('/')?;
            Some((lost.parse().ok()?, held.parse().ok()?))
        })
        .collect();
    if entries.len() as u64 != kills {
        fail(format!("{kills} kills but per-kill entries {per_kill:?}"));
    }
    if let Some((lost, held)) = entries.iter().find(|(lost, held)| lost > held) {
        fail(format!(
            "a kill cost {lost} requests with {held} connections held: {per_kill:?}"
        ));
    }

    // The load ran for the whole duration: zentinel-load's final
    // `requests=N failed=N rps=...` line, at least half of the open-loop rate.
    let requests = output
        .lines()
        .rev()
        .find_map(|line| line.trim_start().strip_prefix("requests="))
        .and_then(leading_number)
        .unwrap_or_else(|| fail("no zentinel-load 'requests=' summary".into()));
    if requests < RATE * DURATION_S / 2 {
        fail(format!(
            "only {requests} requests in {DURATION_S} s at {RATE} req/s"
        ));
    }

    println!(
        "short soak passed in {elapsed:.1?}: {upgrades}; kills: {kills_line}; failed requests: {failures}; \
         {requests} requests"
    );
    // Kept only when the run failed (the message names it).
    let _ = std::fs::remove_file(&log);
}
