//! End-to-end test harness for Zentinel: finds the binaries, starts real `zentinel` and
//! `zentinel-backend` processes on free loopback ports, waits for them with deadlines, and
//! talks to them with a small raw HTTP/1.1 client.
//!
//! Everything here panics on failure: it only runs inside tests.

pub mod backend_tls;
pub mod configs;
pub mod curl;
pub mod drain;
pub mod failure;
pub mod h2frames;
pub mod load;
pub mod load_run;
pub mod loadgen;
pub mod ocsp_responder;
pub mod redis_server;
pub mod response_head;
pub mod scripted;

pub use response_head::{parse_response_head, read_response_head};

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

// ---------------------------------------------------------------------------------------------
// Checksums and the deterministic body pattern (shared with the backend binary).
// ---------------------------------------------------------------------------------------------

/// Streaming FNV-1a 64.
#[derive(Clone, Copy, Debug)]
pub struct Fnv64(u64);

impl Fnv64 {
    pub const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    pub const PRIME: u64 = 0x0000_0100_0000_01b3;

    pub fn new() -> Self {
        Fnv64(Self::OFFSET)
    }

    pub fn update(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(Self::PRIME);
        }
        self.0 = h;
    }

    pub fn finish(&self) -> u64 {
        self.0
    }

    pub fn hex(&self) -> String {
        checksum_hex(self.0)
    }
}

impl Default for Fnv64 {
    fn default() -> Self {
        Self::new()
    }
}

/// FNV-1a 64 of `bytes`.
pub fn checksum(bytes: &[u8]) -> u64 {
    let mut h = Fnv64::new();
    h.update(bytes);
    h.finish()
}

/// The checksum as the backend prints it: 16 lowercase hex digits.
pub fn checksum_hex(sum: u64) -> String {
    format!("{sum:016x}")
}

/// Byte `i` of the deterministic body pattern. Its period, `PATTERN_PERIOD` (62.75 KiB), is
/// no multiple of the usual block sizes, so a dropped, duplicated or reordered block changes
/// the checksum.
pub fn pattern_byte(i: u64) -> u8 {
    ((i % 251) as u8) ^ ((i / 251) as u8).wrapping_mul(31)
}

/// The pattern repeats every 251 x 256 bytes (`i % 251` and `(i / 251) as u8` both do).
const PATTERN_PERIOD: usize = 251 * 256;

/// One period of the pattern, built on first use.
fn pattern_period() -> &'static [u8] {
    static PERIOD: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    PERIOD.get_or_init(|| (0..PATTERN_PERIOD as u64).map(pattern_byte).collect())
}

/// Fills `buf` with the pattern starting at absolute offset `offset`: copies from one period
/// rather than computing each byte, so the backend streams a 1 GiB body at memory speed (the
/// benchmarks' download and tunnel workloads measure the proxy, not this).
pub fn fill_pattern(offset: u64, buf: &mut [u8]) {
    let period = pattern_period();
    let mut at = (offset % PATTERN_PERIOD as u64) as usize;
    let mut done = 0;
    while done < buf.len() {
        let n = (PATTERN_PERIOD - at).min(buf.len() - done);
        buf[done..done + n].copy_from_slice(&period[at..at + n]);
        done += n;
        at = 0;
    }
}

/// The first `n` pattern bytes.
pub fn pattern(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    fill_pattern(0, &mut v);
    v
}

/// Checksum of the first `n` pattern bytes, computed in blocks (no n-byte allocation).
pub fn pattern_checksum(n: u64) -> u64 {
    let mut h = Fnv64::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut off = 0u64;
    while off < n {
        let len = (buf.len() as u64).min(n - off) as usize;
        fill_pattern(off, &mut buf[..len]);
        h.update(&buf[..len]);
        off += len as u64;
    }
    h.finish()
}

// ---------------------------------------------------------------------------------------------
// Binaries, ports, waiting.
// ---------------------------------------------------------------------------------------------

/// Finds a workspace binary: `$ENV_VAR`, else next to the test executable's profile dir
/// (`target/<profile>/deps/<test>` -> `target/<profile>/<name>`).
pub fn find_binary(name: &str, env_var: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env_var) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "{env_var}={} does not name an existing file",
            p.display()
        );
        return p;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut candidates = Vec::new();
    let mut dir = exe.parent();
    // deps/ -> <profile>/ ; also tolerate being one level off (e.g. a binary run from the
    // profile dir itself).
    for _ in 0..3 {
        let Some(d) = dir else { break };
        candidates.push(d.join(name));
        dir = d.parent();
    }
    for c in &candidates {
        if c.is_file() {
            return c.clone();
        }
    }
    panic!(
        "binary `{name}` not found (looked in {:?}; or set {env_var}). \
         Build it first: run `cargo build --workspace --bins` (scripts/test.sh does this).",
        candidates
    );
}

pub fn zentinel_bin() -> PathBuf {
    find_binary("zentinel", "ZENTINEL_BIN")
}

/// Panics, saying how to build it, unless the `zentinel` binary carries the test-only faults
/// (`ZENTINEL_FAULT_INJECTION`; the `fault-injection` feature in its `--version --json`). A
/// test that arms a fault calls this first: against a build without faults the fault would
/// silently not fire.
pub fn require_fault_injection() {
    let mut cmd = Command::new(zentinel_bin());
    cmd.args(["--version", "--json"]);
    let out = run_with_deadline(cmd, Duration::from_secs(10));
    assert!(out.success(), "zentinel --version --json: {out}");
    assert!(
        out.stdout.contains("\"fault-injection\""),
        "{} has no fault injection; build the binaries with `cargo build --workspace --bins \
         --features zentinel-master/fault-injection` (scripts/test.sh does): {out}",
        zentinel_bin().display()
    );
}

pub fn backend_bin() -> PathBuf {
    find_binary("zentinel-backend", "ZENTINEL_BACKEND_BIN")
}

pub fn ctl_bin() -> PathBuf {
    find_binary("zentinel-ctl", "ZENTINEL_CTL_BIN")
}

/// A loopback port that was free a moment ago (bind 127.0.0.1:0 and release it).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A fresh path in the temp dir: `zentinel-test-<pid>-<n>-<nanos>-<label>`.
pub fn temp_path(label: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!(
        "zentinel-test-{}-{}-{}-{}",
        std::process::id(),
        UNIQUE.fetch_add(1, Ordering::SeqCst),
        nanos,
        label
    ))
}

// ---------------------------------------------------------------------------------------------
// /proc helpers.
// ---------------------------------------------------------------------------------------------

/// The fields of /proc/<pid>/stat the tests look at.
struct ProcStat {
    state: char,
    ppid: u32,
    pgrp: u32,
}

impl ProcStat {
    fn read(pid: u32) -> Option<Self> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name may contain spaces and parentheses: parse after the last ')'.
        let rest = &stat[stat.rfind(')')? + 1..];
        // After the command name: state ppid pgrp ...
        let mut fields = rest.split_whitespace();
        let state = fields.next()?.chars().next()?;
        let ppid = fields.next()?.parse().ok()?;
        let pgrp = fields.next()?.parse().ok()?;
        Some(ProcStat { state, ppid, pgrp })
    }

    fn is_live(&self) -> bool {
        self.state != 'Z' && self.state != 'X'
    }
}

/// (state, ppid) of a process from /proc/<pid>/stat, None if it does not exist.
pub fn proc_state(pid: u32) -> Option<(char, u32)> {
    ProcStat::read(pid).map(|s| (s.state, s.ppid))
}

/// Whether `pid` exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    ProcStat::read(pid).is_some_and(|s| s.is_live())
}

/// Asserts every pid in `pids` is gone (exited, or a zombie) within `timeout`; a failure names
/// the ones still running and shows `z`'s log.
pub fn assert_all_exit<'a>(
    pids: impl IntoIterator<Item = &'a u32>,
    timeout: Duration,
    what: &str,
    z: &Zentinel,
) {
    let pids: Vec<u32> = pids.into_iter().copied().collect();
    let mut alive = Vec::new();
    let ok = wait_until(timeout, || {
        alive = pids.iter().copied().filter(|&p| is_alive(p)).collect();
        alive.is_empty()
    });
    assert!(
        ok,
        "{what}: {alive:?} still running after {timeout:?}\n{}",
        z.log()
    );
}

/// Sends `raw` on a new connection to `z`; asserts the proxy itself answers `status` (the
/// backend never sees the request) and closes the connection.
pub fn assert_refused(z: &Zentinel, raw: &[u8], status: u16, what: &str) {
    let mut c = z.client();
    // The proxy may answer (and close) before everything was sent.
    let _ = c.try_send(raw);
    let r = c
        .try_read_response(true, false)
        .unwrap_or_else(|e| panic!("{what}: no response: {e}"));
    assert_eq!(r.status, status, "{what}: {r:?}");
    assert_eq!(r.backend(), None, "{what}: the backend answered: {r:?}");
    assert!(
        c.server_closed_within(Duration::from_secs(3)),
        "{what}: connection left open after a refused request"
    );
}

/// The `workers` array of a `zentinel-ctl status --json` document.
pub fn workers_of(status: &serde_json::Value) -> Vec<serde_json::Value> {
    status["workers"]
        .as_array()
        .unwrap_or_else(|| panic!("`workers` is not an array: {status}"))
        .clone()
}

/// Live (non-zombie) processes whose /proc/<pid>/stat satisfies `select`, sorted.
fn live_processes(select: impl Fn(&ProcStat) -> bool) -> Vec<u32> {
    let mut out = BTreeSet::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if ProcStat::read(pid).is_some_and(|s| s.is_live() && select(&s)) {
                out.insert(pid);
            }
        }
    }
    out.into_iter().collect()
}

/// Live (non-zombie) children of `parent`, sorted.
pub fn children_of(parent: u32) -> Vec<u32> {
    live_processes(|s| s.ppid == parent)
}

/// Socket inodes open in process `pid` (from /proc/<pid>/fd links `socket:[N]`).
pub fn socket_inodes(pid: u32) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    if let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) {
        for entry in dir.flatten() {
            if let Ok(target) = fs::read_link(entry.path()) {
                let t = target.to_string_lossy();
                if let Some(n) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                    if let Ok(n) = n.parse() {
                        out.insert(n);
                    }
                }
            }
        }
    }
    out
}

/// Inodes of ESTABLISHED IPv4/IPv6 TCP sockets whose local port is `port`.
pub fn established_inodes_on_port(port: u16) -> BTreeSet<u64> {
    tcp_inodes_on_port(port, "01")
}

/// Inodes of IPv4/IPv6 TCP sockets on local port `port` in kernel state `state` (the hex code
/// of /proc/net/tcp: "01" established, "0A" listening), system-wide.
pub fn tcp_inodes_on_port(port: u16, state: &str) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let local_port = f[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) && f[3] == state {
                if let Ok(inode) = f[9].parse() {
                    out.insert(inode);
                }
            }
        }
    }
    out
}

/// Peak resident set size (VmHWM) of `pid` in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

pub fn send_signal(pid: u32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
}

// ---------------------------------------------------------------------------------------------
// Processes.
// ---------------------------------------------------------------------------------------------

/// Reads the first line of a child's stdout with a deadline.
fn first_stdout_line(child: &mut Child, timeout: Duration, what: &str) -> String {
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line);
        // Keep the pipe open (and drained) for the child's lifetime.
        let mut sink = Vec::new();
        let _ = reader.read_to_end(&mut sink);
    });
    match rx.recv_timeout(timeout) {
        Ok(line) => line,
        Err(_) => {
            let _ = child.kill();
            panic!("{what} did not print its first line within {timeout:?}");
        }
    }
}

/// A running `zentinel-backend` process, killed on drop.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    child: Child,
}

impl Backend {
    /// HTTP backend on a free loopback port.
    pub fn start(name: &str) -> Backend {
        Self::start_mode(name, "http")
    }

    /// TCP echo backend on a free loopback port.
    pub fn start_echo(name: &str) -> Backend {
        Self::start_mode(name, "tcp-echo")
    }

    pub fn start_mode(name: &str, mode: &str) -> Backend {
        Self::start_args(name, &["--mode", mode])
    }

    /// HTTP backend with extra command-line arguments (e.g. `--fault reset --fault-every 10`).
    pub fn start_args(name: &str, extra: &[&str]) -> Backend {
        let mut child = Command::new(backend_bin())
            .args(["--listen", "127.0.0.1:0", "--name", name])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn zentinel-backend");
        let line = first_stdout_line(&mut child, Duration::from_secs(10), "zentinel-backend");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!("zentinel-backend printed {line:?}, expected `listening on ADDR`")
            });
        Backend {
            name: name.to_owned(),
            addr,
            child,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `127.0.0.1:PORT`, for configs.
    pub fn target(&self) -> String {
        self.addr.to_string()
    }

    /// Requests served (excluding `/stats`) and connections accepted, asked directly.
    pub fn stats(&self) -> (u64, u64) {
        let resp = HttpClient::connect(self.addr).get("/stats", "backend");
        let body = resp.body_str();
        let field = |k: &str| -> u64 {
            body.split_whitespace()
                .find_map(|kv| kv.strip_prefix(k))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("backend /stats body {body:?} lacks {k}"))
        };
        (field("requests="), field("connections="))
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `zentinel` master (and its workers), all SIGKILLed on drop.
///
/// The master is started in its own process group (pgid = [`Zentinel::pid`]). Everything it
/// forks stays in that group, including a successor master after a binary upgrade (which
/// the original master forks and which outlives it, re-parented to init) and workers adopted
/// by that successor. So "every process of this Zentinel" is "every process of the group",
/// whichever master is current, and drop kills the whole group.
pub struct Zentinel {
    child: Option<Child>,
    /// The ORIGINAL master's pid (also the process group id). After an upgrade the current
    /// master is another process: see [`Zentinel::current_master_pid`].
    pub pid: u32,
    /// The executable the original master was started from.
    pub binary: PathBuf,
    /// The original master's exit status, once reaped.
    exit_status: Option<ExitStatus>,
    pub config_path: Option<PathBuf>,
    pub log_path: PathBuf,
    pub listeners: Vec<SocketAddr>,
    pub expected_workers: usize,
    /// This master's own `XDG_RUNTIME_DIR`, so its default control socket
    /// (`$XDG_RUNTIME_DIR/zentinel.sock`) never collides with a parallel test's.
    pub runtime_dir: PathBuf,
    /// Remove `runtime_dir` on drop (false when the test handed it in and owns it).
    owns_runtime_dir: bool,
    /// Every worker pid ever seen, so drop can kill stragglers of a failed test too.
    seen_workers: std::sync::Mutex<BTreeSet<u32>>,
    /// Every master pid ever seen (the original one and its successors).
    seen_masters: std::sync::Mutex<BTreeSet<u32>>,
}

/// Number of workers a config asks for: `worker-threads N` (or its alias `worker-processes`),
/// on a line of its own; 0 or absent = CPUs.
pub fn configured_workers(config: &str) -> usize {
    let n = config
        .lines()
        .map(|l| l.split("//").next().unwrap_or("").trim())
        .find_map(|l| {
            l.strip_prefix("worker-threads")
                .or_else(|| l.strip_prefix("worker-processes"))
        })
        .and_then(|v| v.trim().trim_end_matches(';').trim().parse::<usize>().ok())
        .unwrap_or(0);
    if n == 0 {
        thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        n
    }
}

/// Listener addresses in a config: every `address "..."` node.
pub fn configured_listeners(config: &str) -> Vec<SocketAddr> {
    config
        .lines()
        .map(|l| l.split("//").next().unwrap_or("").trim())
        .filter_map(|l| l.strip_prefix("address"))
        .filter_map(|v| {
            let v = v.trim().trim_end_matches(';').trim().trim_matches('"');
            v.parse().ok()
        })
        .collect()
}

impl Zentinel {
    /// Writes `config` to a temp file, starts `zentinel --config FILE`, and waits until every
    /// listener accepts and the configured number of workers exist.
    pub fn start(config: &str) -> Zentinel {
        Self::start_from_config(config, &zentinel_bin(), None, &[])
    }

    /// Like [`Zentinel::start`], running the master from `binary` (e.g. a [`binary_copy`]).
    pub fn start_with_binary(config: &str, binary: &Path) -> Zentinel {
        Self::start_from_config(config, binary, None, &[])
    }

    /// Like [`Zentinel::start`], with `XDG_RUNTIME_DIR` set to `runtime_dir` (which the caller
    /// owns and removes), e.g. to start a second master on the same default control socket.
    pub fn start_in(config: &str, runtime_dir: &Path) -> Zentinel {
        Self::start_from_config(
            config,
            &zentinel_bin(),
            Some(runtime_dir.to_path_buf()),
            &[],
        )
    }

    /// Like [`Zentinel::start`], with extra environment variables for the master (and so for
    /// every process it starts), e.g. `ZENTINEL_FAULT_INJECTION`.
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Zentinel {
        Self::start_from_config(config, &zentinel_bin(), None, env)
    }

    fn start_from_config(
        config: &str,
        binary: &Path,
        runtime_dir: Option<PathBuf>,
        env: &[(&str, &str)],
    ) -> Zentinel {
        let path = temp_path("config.kdl");
        fs::write(&path, config).expect("write temp config");
        let listeners = configured_listeners(config);
        assert!(
            !listeners.is_empty(),
            "config has no `address` listener:\n{config}"
        );
        Self::spawn(
            binary,
            Some(path),
            listeners,
            configured_workers(config),
            runtime_dir,
            env,
        )
    }

    /// Starts `zentinel` without `--config` (the embedded default on 127.0.0.1:8080).
    pub fn start_default() -> Zentinel {
        let workers = thread::available_parallelism().map_or(1, |n| n.get());
        Self::spawn(
            &zentinel_bin(),
            None,
            vec!["127.0.0.1:8080".parse().unwrap()],
            workers,
            None,
            &[],
        )
    }

    fn spawn(
        binary: &Path,
        config_path: Option<PathBuf>,
        listeners: Vec<SocketAddr>,
        workers: usize,
        runtime_dir: Option<PathBuf>,
        env: &[(&str, &str)],
    ) -> Zentinel {
        let owns_runtime_dir = runtime_dir.is_none();
        let runtime_dir = runtime_dir.unwrap_or_else(new_runtime_dir);
        let mut cmd = master_command_with(binary, config_path.as_deref(), &runtime_dir);
        cmd.envs(env.iter().copied());
        Self::launch(
            cmd,
            binary.to_path_buf(),
            config_path,
            listeners,
            workers,
            runtime_dir,
            owns_runtime_dir,
        )
    }

    /// Runs `cmd` (a master, possibly behind a wrapper that execs it) with its output in a
    /// fresh log file and waits until it serves.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn launch(
        mut cmd: Command,
        binary: PathBuf,
        config_path: Option<PathBuf>,
        listeners: Vec<SocketAddr>,
        workers: usize,
        runtime_dir: PathBuf,
        owns_runtime_dir: bool,
    ) -> Zentinel {
        let log_path = temp_path("zentinel.log");
        let log = File::create(&log_path).expect("create log file");
        // Its own process group, so drop can kill every process it ever forked (successor
        // masters included) with one kill(-pgid).
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let pid = child.id();
        let mut z = Zentinel {
            child: Some(child),
            pid,
            binary,
            exit_status: None,
            config_path,
            log_path,
            listeners,
            expected_workers: workers,
            runtime_dir,
            owns_runtime_dir,
            seen_workers: Default::default(),
            seen_masters: std::sync::Mutex::new(BTreeSet::from([pid])),
        };
        z.wait_ready(Duration::from_secs(10));
        z
    }

    /// Every worker in `zentinel-ctl status` is `running` (has reported ready).
    fn all_workers_running(&self) -> bool {
        self.try_status().is_ok_and(|status| {
            status["workers"].as_array().is_some_and(|workers| {
                workers.len() == self.expected_workers
                    && workers.iter().all(|w| w["state"] == "running")
            })
        })
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut pending: Vec<SocketAddr> = self.listeners.clone();
        loop {
            if let Some(status) = self.try_wait() {
                panic!(
                    "zentinel exited during start-up with {status}\n{}",
                    self.log()
                );
            }
            pending.retain(|a| TcpStream::connect_timeout(a, Duration::from_millis(200)).is_err());
            let workers = self.worker_pids();
            if pending.is_empty()
                && workers.len() == self.expected_workers
                && self.all_workers_running()
            {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "zentinel not ready within {timeout:?}: listeners not accepting {pending:?}, \
                     workers {workers:?} (expected {})\n{}",
                    self.expected_workers,
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Live (non-zombie) processes of this Zentinel's process group, sorted: the current
    /// master, a predecessor still exiting, and every worker (running or draining, adopted
    /// or not).
    pub fn group_pids(&self) -> Vec<u32> {
        processes_in_group(self.pid)
    }

    /// Live worker processes, sorted: every `zentinel worker` process of the group. Before an
    /// upgrade these are exactly the master's children; after one they include the workers
    /// the new master adopted (no longer anyone's child but init's) and draining ones.
    pub fn worker_pids(&self) -> Vec<u32> {
        let mut workers = Vec::new();
        let mut masters = Vec::new();
        for pid in self.group_pids() {
            match is_worker_process(pid) {
                Some(true) => workers.push(pid),
                Some(false) => masters.push(pid),
                None => {}
            }
        }
        lock(&self.seen_workers).extend(workers.iter().copied());
        lock(&self.seen_masters).extend(masters.iter().copied());
        workers
    }

    /// Live non-worker processes of the group: the master, and during an upgrade its
    /// predecessor or successor too.
    pub fn master_pids(&self) -> Vec<u32> {
        let masters: Vec<u32> = self
            .group_pids()
            .into_iter()
            .filter(|&p| is_worker_process(p) == Some(false))
            .collect();
        lock(&self.seen_masters).extend(masters.iter().copied());
        masters
    }

    /// `zentinel-ctl status --json`, parsed; `Err` (with the output) when it fails.
    pub fn try_status(&self) -> Result<serde_json::Value, String> {
        let out = self.ctl(&["status", "--json"]);
        if !out.success() {
            return Err(format!("status --json failed: {out}"));
        }
        let v: serde_json::Value = serde_json::from_str(out.stdout.trim())
            .map_err(|e| format!("status --json is not JSON ({e}): {out}"))?;
        if let Some(pid) = v["master"]["pid"].as_u64() {
            lock(&self.seen_masters).insert(pid as u32);
        }
        if let Some(ws) = v["workers"].as_array() {
            let mut seen = lock(&self.seen_workers);
            seen.extend(
                ws.iter()
                    .filter_map(|w| w["pid"].as_u64())
                    .map(|p| p as u32),
            );
        }
        Ok(v)
    }

    /// `zentinel-ctl status --json`, parsed; panics with the master's log on failure.
    pub fn status(&self) -> serde_json::Value {
        self.try_status()
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log()))
    }

    /// The pid of the master serving the control socket now (it changes with every binary
    /// upgrade), from `status --json`; `None` if no master answers.
    pub fn try_current_master_pid(&self) -> Option<u32> {
        self.try_status()
            .ok()
            .and_then(|v| v["master"]["pid"].as_u64())
            .map(|p| p as u32)
    }

    /// The pid of the current master (see [`Zentinel::try_current_master_pid`]); panics
    /// with the log when no master answers.
    pub fn current_master_pid(&self) -> u32 {
        match self.try_status() {
            Ok(v) => v["master"]["pid"]
                .as_u64()
                .unwrap_or_else(|| panic!("status has no master.pid: {v}"))
                as u32,
            Err(e) => panic!("no current master: {e}\n{}", self.log()),
        }
    }

    /// Every worker pid observed so far.
    pub fn seen_workers(&self) -> BTreeSet<u32> {
        self.seen_workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The first listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.listeners[0]
    }

    pub fn client(&self) -> HttpClient {
        HttpClient::connect(self.addr())
    }

    /// The master's control socket: the default under its private `XDG_RUNTIME_DIR`.
    /// The master's control socket: `system { control-socket }` of its config, else the
    /// default in its runtime dir.
    pub fn control_socket(&self) -> PathBuf {
        self.config_path
            .as_ref()
            .and_then(|p| fs::read_to_string(p).ok())
            .and_then(|config| {
                config
                    .lines()
                    .map(|l| l.split("//").next().unwrap_or("").trim())
                    .find_map(|l| l.strip_prefix("control-socket"))
                    .map(|v| PathBuf::from(v.trim().trim_end_matches(';').trim().trim_matches('"')))
            })
            .unwrap_or_else(|| self.runtime_dir.join("zentinel.sock"))
    }

    /// Runs `zentinel-ctl --socket <this master's socket> ARGS` (with a deadline).
    pub fn ctl(&self, args: &[&str]) -> CtlOutput {
        ctl(&self.control_socket(), args)
    }

    /// Every line the master's log has so far (raw, no banner).
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Reaps the ORIGINAL master if it exited (the status is kept: later calls return it
    /// too). After a binary upgrade the original master exits 0 while its successor serves:
    /// use [`Zentinel::master_exited_after_upgrade`] / [`Zentinel::current_master_pid`].
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exit_status.is_none() {
            self.exit_status = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
        }
        self.exit_status
    }

    /// Waits up to `timeout` for the ORIGINAL master to exit (see [`Zentinel::try_wait`]).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(timeout, || {
            status = self.try_wait();
            status.is_some()
        });
        status
    }

    /// The original master's exit status if it has exited (and been reaped).
    pub fn original_exit_status(&mut self) -> Option<ExitStatus> {
        self.try_wait()
    }

    /// Waits up to `timeout` for the original master to exit, and says whether it exited 0
    /// (what it must do once a successor confirmed readiness).
    pub fn master_exited_after_upgrade(&mut self, timeout: Duration) -> bool {
        matches!(self.wait_exit(timeout), Some(s) if s.success())
    }

    /// Waits up to `timeout` until no process of this Zentinel is left (master, successor
    /// masters, workers); returns whether that happened.
    pub fn wait_all_gone(&mut self, timeout: Duration) -> bool {
        wait_until(timeout, || {
            let _ = self.try_wait();
            self.group_pids().is_empty()
        })
    }

    /// Sends `signal` to the current master: the original one while it runs, else the
    /// master named by the control socket's status.
    pub fn signal(&mut self, signal: nix::sys::signal::Signal) {
        let pid = if self.try_wait().is_none() {
            self.pid
        } else {
            self.try_current_master_pid().unwrap_or(self.pid)
        };
        send_signal(pid, signal);
    }

    /// The master's and workers' combined stderr/stdout so far.
    pub fn log(&self) -> String {
        let text = fs::read_to_string(&self.log_path).unwrap_or_default();
        format!(
            "----- zentinel log ({}) -----\n{text}\n----- end of zentinel log -----",
            self.log_path.display()
        )
    }
}

impl Drop for Zentinel {
    fn drop(&mut self) {
        // Whatever is in the group now, plus every pid ever seen (in case one left the group).
        let mut pids: BTreeSet<u32> = self.group_pids().into_iter().collect();
        pids.extend(lock(&self.seen_workers).iter().copied());
        pids.extend(lock(&self.seen_masters).iter().copied());
        // The group first: one syscall, no window in which a master forks a worker we miss.
        // ESRCH (group empty) is fine. The pgid cannot name another group while any of ours
        // lives (the kernel never hands out a pid equal to a live pgid).
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for pid in pids {
            if pid == self.pid {
                continue;
            }
            // Only pids we saw as ours; a recycled pid in this short window is practically
            // impossible, but check it still looks like zentinel (a worker, or a master whose
            // executable path we started: copies are named `...zentinel...`).
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains("zentinel")
                || is_worker_process(pid) == Some(true)
            {
                send_signal(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
        // Let the kernel finish tearing them down (sockets released) before the next test.
        wait_until(Duration::from_secs(2), || {
            processes_in_group(self.pid).is_empty()
        });
        if thread::panicking() {
            eprintln!("{}", self.log());
        } else {
            let _ = fs::remove_file(&self.log_path);
        }
        if let Some(p) = &self.config_path {
            let _ = fs::remove_file(p);
        }
        if self.owns_runtime_dir {
            let _ = fs::remove_dir_all(&self.runtime_dir);
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Live (non-zombie) processes whose process group is `pgid`, sorted.
pub fn processes_in_group(pgid: u32) -> Vec<u32> {
    live_processes(|s| s.pgrp == pgid)
}

/// The argv of a process (`None` if it is gone or a zombie with no cmdline).
pub fn process_argv(pid: u32) -> Option<Vec<String>> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if raw.is_empty() {
        return None;
    }
    Some(
        raw.split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// Whether `pid` is a `zentinel worker ...` process (argv[1] == "worker"); `None` if gone.
pub fn is_worker_process(pid: u32) -> Option<bool> {
    process_argv(pid).map(|argv| argv.get(1).map(String::as_str) == Some("worker"))
}

/// Where `/proc/<pid>/exe` points (`... (deleted)` once the file was replaced or removed).
pub fn process_exe(pid: u32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/exe")).ok()
}

/// A second copy of the `zentinel` binary at a fresh temp path (mode 755), for upgrades
/// "to another binary". The file is not removed automatically: hold a [`TempFiles`].
pub fn binary_copy(label: &str) -> PathBuf {
    let dest = temp_path(&format!("{label}-zentinel"));
    install_binary(&zentinel_bin(), &dest);
    dest
}

/// Puts a copy of `src` at `dest` (mode 755) atomically: written to a sibling temp file,
/// then renamed over `dest`. Writing in place would fail with ETXTBSY while a process runs
/// `dest`, and a half-written file must never be exec'ed.
pub fn install_binary(src: &Path, dest: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = dest.with_file_name(format!(
        ".{}.tmp-{}",
        dest.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        UNIQUE.fetch_add(1, Ordering::SeqCst)
    ));
    // Copied by a `cp` child, not in this process: a write fd open here would be inherited by
    // whatever another test thread forks meanwhile, and exec of the copy fails with ETXTBSY
    // while any process holds it open for writing (until that child execs).
    let copied = Command::new("cp")
        .arg(src)
        .arg(&tmp)
        .status()
        .unwrap_or_else(|e| panic!("run cp {} {}: {e}", src.display(), tmp.display()));
    assert!(
        copied.success(),
        "cp {} {}: {copied}",
        src.display(),
        tmp.display()
    );
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod 755 {}: {e}", tmp.display()));
    fs::rename(&tmp, dest).unwrap_or_else(|e| {
        let _ = fs::remove_file(&tmp);
        panic!("rename {} to {}: {e}", tmp.display(), dest.display())
    });
}

/// Puts an executable script with `text` at `dest`, the same way as [`install_binary`] (the
/// text is written to a scratch file first, which is never executed).
pub fn install_script(dest: &Path, text: &str) {
    let scratch = temp_path("script-source");
    fs::write(&scratch, text).unwrap_or_else(|e| panic!("write {}: {e}", scratch.display()));
    install_binary(&scratch, dest);
    let _ = fs::remove_file(&scratch);
}

/// A scratch directory (under the test temp dir), removed with its contents on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        let dir = temp_path(label);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Files removed on drop (binary copies, scripts, state files of a test).
#[derive(Default)]
pub struct TempFiles(pub Vec<PathBuf>);

impl TempFiles {
    pub fn add(&mut self, path: PathBuf) -> PathBuf {
        self.0.push(path.clone());
        path
    }
}

impl Drop for TempFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

/// What one `zentinel-ctl` run produced.
#[derive(Debug, Clone)]
pub struct CtlOutput {
    /// `None` when killed by a signal (or by the harness's deadline).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CtlOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Both streams, stdout first: what the command said, wherever it said it.
    pub fn said(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// Panics with both streams unless the command exited 0.
    pub fn assert_success(&self, what: &str) -> &Self {
        assert!(self.success(), "{what}: zentinel-ctl failed: {self}");
        self
    }
}

impl std::fmt::Display for CtlOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// How long one `zentinel-ctl` run may take before the harness kills it.
pub const CTL_DEADLINE: Duration = Duration::from_secs(60);

/// Runs `zentinel-ctl --socket SOCKET ARGS`, killing it after [`CTL_DEADLINE`].
pub fn ctl(socket: &Path, args: &[&str]) -> CtlOutput {
    ctl_within(socket, args, CTL_DEADLINE)
}

/// Like [`ctl`] with another deadline.
pub fn ctl_within(socket: &Path, args: &[&str], deadline: Duration) -> CtlOutput {
    let mut cmd = Command::new(ctl_bin());
    cmd.arg("--socket").arg(socket).args(args);
    run_with_deadline(cmd, deadline)
}

/// Runs `cmd` (no stdin, both streams captured), killing it if it outlives `deadline`.
/// `ZENTINEL_SOCKET`/`ZENTINEL_CONFIG` of the test environment are not inherited unless `cmd`
/// sets them itself.
pub fn run_with_deadline(mut cmd: Command, deadline: Duration) -> CtlOutput {
    for var in ["ZENTINEL_SOCKET", "ZENTINEL_CONFIG"] {
        if !cmd.get_envs().any(|(k, _)| k == var) {
            cmd.env_remove(var);
        }
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .map(|stream| {
        thread::spawn(move || {
            let mut out = Vec::new();
            if let Some(mut s) = stream {
                let _ = s.read_to_end(&mut out);
            }
            String::from_utf8_lossy(&out).into_owned()
        })
    })
    .collect();
    let mut status = None;
    if !wait_until(deadline, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    }) {
        let _ = child.kill();
        status = child.wait().ok();
        eprintln!("{cmd:?} outlived its {deadline:?} deadline and was killed");
    }
    let mut outs = readers.into_iter().map(|h| h.join().unwrap_or_default());
    let stdout = outs.next().unwrap_or_default();
    let stderr = outs.next().unwrap_or_default();
    CtlOutput {
        code: status.and_then(|s| s.code()),
        stdout,
        stderr,
    }
}

/// A fresh private directory (mode 0700, like a real `XDG_RUNTIME_DIR`) for one master.
pub fn new_runtime_dir() -> PathBuf {
    use std::os::unix::fs::DirBuilderExt;
    let dir = temp_path("xdg-runtime");
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .expect("create runtime dir");
    dir
}

/// The `zentinel` command a test master runs with: `--config` when given, no inherited
/// `ZENTINEL_CONFIG`/`ZENTINEL_SOCKET`, `XDG_RUNTIME_DIR=runtime_dir`, info logging unless
/// `RUST_LOG` says otherwise.
pub fn master_command(config_path: Option<&Path>, runtime_dir: &Path) -> Command {
    master_command_with(&zentinel_bin(), config_path, runtime_dir)
}

/// [`master_command`] running `binary` instead of the built `zentinel`.
pub fn master_command_with(
    binary: &Path,
    config_path: Option<&Path>,
    runtime_dir: &Path,
) -> Command {
    let mut cmd = Command::new(binary);
    if let Some(p) = config_path {
        cmd.arg("--config").arg(p);
    }
    cmd.env_remove("ZENTINEL_CONFIG")
        .env_remove("ZENTINEL_SOCKET")
        .env("XDG_RUNTIME_DIR", runtime_dir);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.args(["--log-level", "info"]);
    }
    cmd
}

/// Runs `zentinel --check [--config PATH]`; returns (exit code, stdout, stderr).
pub fn zentinel_check(config_path: Option<&Path>) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(zentinel_bin());
    cmd.arg("--check").env_remove("ZENTINEL_CONFIG");
    if let Some(p) = config_path {
        cmd.arg("--config").arg(p);
    }
    let out = cmd.output().expect("run zentinel --check");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1.1 client.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Response {
    pub minor_version: u8,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    /// The body when collected (empty when only hashed).
    pub body: Vec<u8>,
    pub body_len: u64,
    pub body_checksum: u64,
    /// The body was delimited by the server closing the connection.
    pub close_delimited: bool,
    /// The body was chunked.
    pub chunked: bool,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Whether a `Connection` header lists `token`.
    pub fn connection_has(&self, token: &str) -> bool {
        self.header_all("connection")
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// The `Content-Length` header's value, if there is one and it is a number.
    pub fn content_length(&self) -> Option<u64> {
        self.header("content-length")
            .and_then(|v| v.trim().parse().ok())
    }

    /// `X-Backend` of the response (which backend served it).
    pub fn backend(&self) -> Option<&str> {
        self.header("x-backend")
    }

    /// Asserts the body matches the backend's `X-Body-Checksum` and the expected length.
    pub fn assert_pattern_body(&self, expected_len: u64) {
        assert_eq!(self.status, 200, "status of a /bytes response: {self:?}");
        assert_eq!(self.body_len, expected_len, "body length");
        let expected = checksum_hex(pattern_checksum(expected_len));
        assert_eq!(
            checksum_hex(self.body_checksum),
            expected,
            "body checksum (computed by the client) vs the pattern's"
        );
        if let Some(h) = self.header("x-body-checksum") {
            assert_eq!(h, expected, "X-Body-Checksum header vs the pattern's");
        }
    }
}

pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(10);

/// One client connection: send raw bytes, read responses one by one.
pub struct HttpClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

impl HttpClient {
    pub fn connect(addr: SocketAddr) -> HttpClient {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        Self::from_stream(stream)
    }

    pub fn try_connect(addr: SocketAddr) -> io::Result<HttpClient> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        Ok(Self::from_stream(stream))
    }

    pub fn from_stream(stream: TcpStream) -> HttpClient {
        stream.set_read_timeout(Some(DEFAULT_IO_TIMEOUT)).ok();
        stream.set_write_timeout(Some(DEFAULT_IO_TIMEOUT)).ok();
        stream.set_nodelay(true).ok();
        HttpClient {
            stream,
            buf: Vec::new(),
            eof: false,
        }
    }

    pub fn set_timeout(&self, timeout: Duration) {
        self.stream.set_read_timeout(Some(timeout)).ok();
        self.stream.set_write_timeout(Some(timeout)).ok();
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("sending {} bytes: {e}", bytes.len()));
    }

    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Half-closes the sending side.
    pub fn shutdown_write(&self) {
        self.stream
            .shutdown(Shutdown::Write)
            .expect("shutdown(Write)");
    }

    /// Bytes received but not consumed by a parsed response (e.g. tunnel data).
    pub fn take_buffered(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    fn fill(&mut self) -> io::Result<usize> {
        let mut tmp = [0u8; 64 * 1024];
        let n = self.stream.read(&mut tmp)?;
        if n == 0 {
            self.eof = true;
        }
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    /// A simple GET with `Host` on this (keep-alive) connection.
    pub fn get(&mut self, path: &str, host: &str) -> Response {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
        self.read_response()
    }

    /// Reads one response (1xx included), collecting its body.
    pub fn read_response(&mut self) -> Response {
        self.try_read_response(true, false)
            .unwrap_or_else(|e| panic!("reading a response: {e}"))
    }

    /// Reads one response, only hashing its body (for large bodies).
    pub fn read_response_hashed(&mut self) -> Response {
        self.try_read_response(false, false)
            .unwrap_or_else(|e| panic!("reading a response: {e}"))
    }

    /// Reads one response; `head_request` means no body follows whatever the headers say.
    pub fn try_read_response(&mut self, collect: bool, head_request: bool) -> io::Result<Response> {
        let (mut resp, head_len) = loop {
            if let Some(parsed) = parse_response_head(&self.buf)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
            {
                break parsed;
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed before a complete response head (got {:?})",
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
        };
        self.buf.drain(..head_len);
        let mut hash = Fnv64::new();
        let mut sink = |resp: &mut Response, bytes: &[u8]| {
            hash.update(bytes);
            resp.body_len += bytes.len() as u64;
            if collect {
                resp.body.extend_from_slice(bytes);
            }
        };
        let status = resp.status;
        let bodyless =
            head_request || (100..200).contains(&status) || status == 204 || status == 304;
        let chunked = resp
            .header_all("transfer-encoding")
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("chunked"));
        let length = resp
            .header("content-length")
            .map(|v| v.trim().parse::<u64>())
            .transpose()
            .map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("Content-Length: {e}"))
            })?;
        if bodyless {
        } else if chunked {
            resp.chunked = true;
            loop {
                let line = self.read_line()?;
                let size = u64::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|_| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("bad chunk line {line:?}"),
                        )
                    })?;
                if size == 0 {
                    while !self.read_line()?.is_empty() {}
                    break;
                }
                self.take(size, &mut resp, &mut sink)?;
                let crlf = self.read_line()?;
                if !crlf.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("chunk not followed by CRLF: {crlf:?}"),
                    ));
                }
            }
        } else if let Some(n) = length {
            self.take(n, &mut resp, &mut sink)?;
        } else {
            resp.close_delimited = true;
            loop {
                if !self.buf.is_empty() {
                    let bytes = std::mem::take(&mut self.buf);
                    sink(&mut resp, &bytes);
                }
                if self.fill()? == 0 {
                    break;
                }
            }
        }
        resp.body_checksum = hash.finish();
        Ok(resp)
    }

    fn take(
        &mut self,
        mut n: u64,
        resp: &mut Response,
        sink: &mut impl FnMut(&mut Response, &[u8]),
    ) -> io::Result<()> {
        while n > 0 {
            if self.buf.is_empty() && self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed with {n} body bytes missing"),
                ));
            }
            let k = (self.buf.len() as u64).min(n) as usize;
            sink(resp, &self.buf[..k]);
            self.buf.drain(..k);
            n -= k as u64;
        }
        Ok(())
    }

    fn read_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..pos]).into_owned();
                self.buf.drain(..pos + 2);
                return Ok(line);
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside a chunked body",
                ));
            }
        }
    }

    /// Whether the server closes the connection within `timeout` (EOF or reset). Unread bytes
    /// that arrive meanwhile are kept in the buffer.
    pub fn server_closed_within(&mut self, timeout: Duration) -> bool {
        if self.eof {
            return true;
        }
        let deadline = Instant::now() + timeout;
        let old = self.stream.read_timeout().ok().flatten();
        let result = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break false;
            }
            self.stream.set_read_timeout(Some(left)).ok();
            match self.fill() {
                Ok(0) => break true,
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    break false
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break true,
            }
        };
        self.stream.set_read_timeout(old).ok();
        result
    }

    /// Reads exactly `n` raw bytes (tunnel data), using what is buffered first.
    pub fn read_raw(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            match self.fill() {
                Ok(0) => panic!(
                    "connection closed after {} of {n} raw bytes",
                    self.buf.len()
                ),
                Ok(_) => {}
                Err(e) => panic!("reading raw bytes ({} of {n}): {e}", self.buf.len()),
            }
        }
        self.buf.drain(..n).collect()
    }

    /// Asks for a WebSocket upgrade (the backend then echoes raw bytes) and asserts the
    /// proxy passed the backend's `101` and `Upgrade: websocket` on: the connection is a
    /// tunnel from here on.
    pub fn upgrade_to_websocket(&mut self) -> Response {
        self.send(
            b"GET /ws HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        );
        let r = self.read_response();
        assert_eq!(r.status, 101, "WebSocket upgrade: {r:?}");
        assert_eq!(
            r.header("upgrade").map(str::to_ascii_lowercase).as_deref(),
            Some("websocket"),
            "WebSocket upgrade: {r:?}"
        );
        r
    }

    /// Sends `data` from another thread (a peer that echoes while it reads cannot deadlock
    /// us), half-closes (we are done sending but still want every echoed byte), and returns
    /// everything read until EOF.
    pub fn echo_round(&mut self, data: Vec<u8>) -> Vec<u8> {
        let mut writer = self
            .stream
            .try_clone()
            .unwrap_or_else(|e| panic!("cloning the client socket: {e}"));
        let sender = thread::spawn(move || {
            writer
                .write_all(&data)
                .unwrap_or_else(|e| panic!("sending {} bytes: {e}", data.len()));
            writer
                .shutdown(Shutdown::Write)
                .unwrap_or_else(|e| panic!("half-close: {e}"));
        });
        let received = self.read_to_eof();
        sender.join().expect("sender thread");
        received
    }

    /// Reads raw bytes until EOF.
    pub fn read_to_eof(&mut self) -> Vec<u8> {
        while !self.eof {
            if let Err(e) = self.fill() {
                panic!("reading until EOF ({} bytes so far): {e}", self.buf.len());
            }
        }
        std::mem::take(&mut self.buf)
    }
}

/// Parses the `/headers` echo body into (name, value) pairs, lowercased names; the first
/// element is the request line.
pub fn parse_echoed_head(body: &str) -> (String, Vec<(String, String)>) {
    let mut lines = body.split("\r\n");
    let request_line = lines.next().unwrap_or("").to_owned();
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (request_line, headers)
}

/// Parses the backend's upload answer `len=N checksum=HEX`.
pub fn parse_upload_answer(body: &str) -> (u64, String) {
    let mut len = None;
    let mut sum = None;
    for kv in body.split_whitespace() {
        if let Some(v) = kv.strip_prefix("len=") {
            len = v.parse().ok();
        } else if let Some(v) = kv.strip_prefix("checksum=") {
            sum = Some(v.to_owned());
        }
    }
    match (len, sum) {
        (Some(l), Some(s)) => (l, s),
        _ => panic!("backend upload answer {body:?} is not `len=N checksum=HEX`"),
    }
}

// ---------------------------------------------------------------------------------------------
// systemd: socket activation and sd_notify, as systemd would do them (tests/tests/systemd.rs).
// ---------------------------------------------------------------------------------------------

pub mod systemd;
pub mod tls_sessions;
pub mod tls_support;
pub mod websocket;

// ---------------------------------------------------------------------------------------------
// Python peers: a gRPC server and client on grpcio, an HTTP/2 server on h2 (tests/python/).
// ---------------------------------------------------------------------------------------------

pub mod python;

#[cfg(test)]
mod pattern_tests {
    use super::*;

    #[test]
    fn fill_pattern_matches_pattern_byte_across_period_boundaries() {
        for offset in [
            0u64,
            1,
            250,
            251,
            64_255,
            64_256,
            64_257,
            3 * 64_256 - 7,
            1 << 30,
        ] {
            let mut buf = vec![0u8; 3 * PATTERN_PERIOD + 11];
            fill_pattern(offset, &mut buf);
            for (k, &b) in buf.iter().enumerate() {
                assert_eq!(b, pattern_byte(offset + k as u64), "offset {offset} + {k}");
            }
        }
    }

    #[test]
    fn pattern_period_is_the_real_period() {
        for i in [0u64, 1, 250, 251, 9_999, 64_255] {
            assert_eq!(pattern_byte(i), pattern_byte(i + PATTERN_PERIOD as u64));
        }
        assert_ne!(pattern_byte(0), pattern_byte(251));
    }
}
