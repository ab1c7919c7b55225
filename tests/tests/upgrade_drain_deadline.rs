//! Issue 14, point 2: a worker retired with `zentinel-ctl upgrade --drain-timeout` keeps that
//! deadline across every later master hand-over. Before, each new master adopted a draining
//! worker with a fresh `graceful-shutdown-timeout-secs` (+ 2 s kill grace) counted from the
//! adoption, so overlapping upgrades killed exactly the long transfers the drain timeout was
//! raised for.
//!
//! On real processes: a configuration drain of 3 s, one worker serving a download read at a
//! fixed rate for ~20 s, then five rolling upgrades 2 s apart, the first with
//! `--drain-timeout 60s`. The download must arrive whole (length and checksum), although it
//! outlasts the configuration's drain many times over and ends well after the point where a
//! master that forgot the deadline kills its worker (last adoption + 3 s + 2 s).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};
use serde_json::Value;
use zentinel_tests::*;

const DEADLINE: Duration = Duration::from_secs(10);
/// How long one `zentinel-ctl upgrade` may take.
const UPGRADE_DEADLINE: Duration = Duration::from_secs(20);
/// The configuration's `graceful-shutdown-timeout-secs`.
const CONFIG_DRAIN: Duration = Duration::from_secs(3);
/// What the master adds to a drain deadline before it kills (`DRAIN_KILL_GRACE`).
const KILL_GRACE: Duration = Duration::from_secs(2);
/// The client's reading rate, and the transfer's length at that rate.
const RATE: u64 = 2 * 1024 * 1024;
const TRANSFER_SECS: u64 = 20;
const SIZE: u64 = RATE * TRANSFER_SECS;
const UPGRADES: u32 = 5;
/// Upgrade k starts `k * SPACING` after the first one (each takes ~1.5 s with one worker).
const SPACING: Duration = Duration::from_secs(2);

/// What the download thread ends with.
struct Downloaded {
    len: u64,
    checksum: u64,
    header_checksum: String,
    finished: Instant,
}

/// `GET /bytes/SIZE` read at `RATE` bytes/s on its own thread, through a socket whose receive
/// buffer is small from before it connects: the kernel absorbs little on the client's behalf,
/// so the serving worker writes the body until close to the end of the transfer.
struct Download {
    progress: Arc<AtomicU64>,
    handle: thread::JoinHandle<Result<Downloaded, String>>,
}

impl Download {
    fn start(addr: SocketAddr) -> Download {
        let progress = Arc::new(AtomicU64::new(0));
        let p = progress.clone();
        let handle = thread::spawn(move || read_throttled(addr, &p));
        Download { progress, handle }
    }

    fn progress(&self) -> u64 {
        self.progress.load(Ordering::SeqCst)
    }
}

fn small_buffer_connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let fd = socket::socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| format!("socket: {e}"))?;
    socket::setsockopt(&fd, sockopt::RcvBuf, &(64 * 1024)).map_err(|e| format!("rcvbuf: {e}"))?;
    let SocketAddr::V4(v4) = addr else {
        return Err(format!("{addr} is not an IPv4 listener"));
    };
    socket::connect(fd.as_raw_fd(), &SockaddrIn::from(v4)).map_err(|e| format!("connect: {e}"))?;
    Ok(TcpStream::from(fd))
}

fn read_throttled(addr: SocketAddr, progress: &AtomicU64) -> Result<Downloaded, String> {
    let mut s = small_buffer_connect(addr)?;
    s.set_read_timeout(Some(DEADLINE)).ok();
    s.write_all(format!("GET /bytes/{SIZE} HTTP/1.1\r\nHost: dl\r\n\r\n").as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = vec![0u8; 16 * 1024];
    let (head, mut pending) = read_response_head(&mut s)?;
    if head.status != 200 {
        return Err(format!("status {}", head.status));
    }
    let content_length = head.content_length().ok_or("no Content-Length")?;
    let header_checksum = head
        .header("x-body-checksum")
        .unwrap_or_default()
        .to_owned();
    let mut hash = Fnv64::new();
    let mut got = 0u64;
    let started = Instant::now();
    loop {
        hash.update(&pending);
        got += pending.len() as u64;
        pending.clear();
        progress.store(got, Ordering::SeqCst);
        if got >= content_length {
            break;
        }
        // Never ahead of RATE.
        let due = Duration::from_secs_f64(got as f64 / RATE as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            thread::sleep(wait.min(Duration::from_millis(50)));
            continue;
        }
        let want = ((content_length - got) as usize).min(buf.len());
        let n = s
            .read(&mut buf[..want])
            .map_err(|e| format!("body after {got} of {content_length} bytes: {e}"))?;
        if n == 0 {
            return Err(format!("EOF after {got} of {content_length} body bytes"));
        }
        pending.extend_from_slice(&buf[..n]);
    }
    Ok(Downloaded {
        len: got,
        checksum: hash.finish(),
        header_checksum,
        finished: Instant::now(),
    })
}

/// The pids of the workers `status` lists in `state` (`running`, `draining`).
fn pids_in(status: &Value, state: &str) -> Vec<u32> {
    workers_of(status)
        .iter()
        .filter(|w| w["state"].as_str() == Some(state))
        .filter_map(|w| w["pid"].as_u64().and_then(|p| u32::try_from(p).ok()))
        .collect()
}

fn upgrade(z: &Zentinel, binary: &Path, extra: &[&str]) -> CtlOutput {
    zentinel_tests::drain::upgrade_rolling(&z.control_socket(), binary, extra, UPGRADE_DEADLINE)
}

#[test]
fn a_drain_timeout_given_to_an_upgrade_survives_later_hand_overs() {
    let be = Backend::start("deadline");
    let z = Zentinel::start(&configs::proxy_draining(
        1,
        free_port(),
        &be,
        CONFIG_DRAIN.as_secs() as u32,
    ));
    let mut files = TempFiles::default();
    let copies = [
        files.add(binary_copy("deadline-a")),
        files.add(binary_copy("deadline-b")),
    ];
    let serving = pids_in(&z.status(), "running");
    assert_eq!(serving.len(), 1, "one worker: {}", z.status());
    let holder = serving[0];

    let download = Download::start(z.addr());
    assert!(
        wait_until(DEADLINE, || download.progress() >= RATE / 2),
        "the download did not start ({} bytes)\n{}",
        download.progress(),
        z.log()
    );

    let first = Instant::now();
    let mut retired_at = None;
    let mut last_handover = first;
    for round in 0..UPGRADES {
        // Pacing, not synchronisation: each upgrade has finished (the command returned)
        // before the next one starts; this only spreads the hand-overs out in time.
        if let Some(wait) = (first + SPACING * round).checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let binary = &copies[round as usize % 2];
        let extra: &[&str] = if round == 0 {
            &["--drain-timeout", "60s"]
        } else {
            &[]
        };
        last_handover = Instant::now();
        let out = upgrade(&z, binary, extra);
        assert!(
            out.success(),
            "upgrade {} of {UPGRADES}: {out}\n{}",
            round + 1,
            z.log()
        );
        retired_at.get_or_insert_with(Instant::now);
        // The new master adopted the retired worker: still draining, still alive.
        let status = z.status();
        assert!(
            pids_in(&status, "draining").contains(&holder) && is_alive(holder),
            "after upgrade {}: worker {holder} (holding the download) is not draining: \
             {status}\n{}",
            round + 1,
            z.log()
        );
        assert!(
            !pids_in(&status, "running").contains(&holder),
            "worker {holder} still serves after upgrade {}: {status}",
            round + 1
        );
    }
    let retired_at = retired_at.unwrap_or(first);

    let got = download
        .handle
        .join()
        .expect("download thread panicked")
        .unwrap_or_else(|e| {
            panic!(
                "the download retired with --drain-timeout 60s was cut after {UPGRADES} \
                 hand-overs: {e}\n{}",
                z.log()
            )
        });
    assert_eq!(got.len, SIZE, "download length");
    let expected = checksum_hex(pattern_checksum(SIZE));
    assert_eq!(
        checksum_hex(got.checksum),
        expected,
        "download body checksum"
    );
    assert_eq!(got.header_checksum, expected, "X-Body-Checksum");

    // The test proves something only if the transfer outlived what a master that forgot the
    // deadline allows: the configuration's drain plus the kill grace after the last adoption,
    // and the configuration's drain many times over since the worker was retired.
    let forgetful_kill = last_handover + CONFIG_DRAIN + KILL_GRACE;
    assert!(
        got.finished > forgetful_kill + Duration::from_secs(2),
        "the download ended {:?} after the last hand-over, too early to tell a carried \
         deadline from a forgotten one (slow the transfer down)",
        got.finished - last_handover
    );
    let drained = got.finished - retired_at;
    assert!(
        drained > CONFIG_DRAIN * 4,
        "drained only {drained:?} after its retirement"
    );
    eprintln!(
        "download: {SIZE} bytes intact, {drained:?} after its worker was retired, {:?} after \
         the last of {UPGRADES} hand-overs",
        got.finished - last_handover
    );

    // Idle now, the worker leaves on its own, long before its 60 s deadline; nobody killed it.
    assert_all_exit(
        &[holder],
        DEADLINE,
        "the drained worker after the download",
        &z,
    );
    let log = z.log();
    assert!(
        !log.contains("still running at its drain deadline"),
        "a retired worker was killed at a drain deadline:\n{log}"
    );
}
