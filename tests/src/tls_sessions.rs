//! What the TLS session-resumption tests share (`tests/tests/session_tickets.rs`,
//! `tests/tests/session_cache.rs`): an https listener with a `/status` route that says which
//! worker served, `openssl s_client` sessions saved and resumed on every worker, the workers
//! and ticket keys a master runs with, and a stand-in for an older release.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConfig, HandshakeKind};

use crate::tls_support::*;
use crate::*;

pub const DEADLINE: Duration = Duration::from_secs(20);
/// How long one `zentinel-ctl upgrade` may take.
pub const UPGRADE_DEADLINE: Duration = Duration::from_secs(60);
/// Connections tried before concluding that some worker never gets one: which worker accepts
/// is the kernel's choice, so a test connects until every worker has served.
pub const MAX_ATTEMPTS: usize = 80;
/// The ticket lifetime clients are told: the rotation period (12 h).
pub const LIFETIME_S: u32 = 12 * 3600;
/// What the master logs with the key names (`master/src/supervisor/tickets.rs`).
pub const KEYS_LOGGED: &str = "TLS session-ticket keys (newest first)";

/// A CA (also as `ca.pem`), its leaf for `a.test`, a backend, and a config of one https listener
/// with a `/status` route answered by the worker itself.
pub struct Fixture {
    pub dir: TempDir,
    pub ca: Ca,
    pub backend: Backend,
}

impl Fixture {
    pub fn new(label: &str) -> Fixture {
        let dir = TempDir::new(label);
        let ca = Ca::new();
        ca.issue(&dir.0, "a", &["a.test"]);
        ca.write_files(&dir.0);
        Fixture {
            dir,
            ca,
            backend: Backend::start(label),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.0.join(name)
    }

    pub fn config(&self, workers: usize) -> String {
        format!(
            r#"system {{
    worker-processes {workers}
    graceful-shutdown-timeout-secs 5
}}
listeners {{
    listener "https" {{
        address "127.0.0.1:{port}"
        protocol "https"
        default-route "app"
        tls {{
            cert-file "{crt}"
            key-file "{key}"
        }}
    }}
}}
routes {{
    route "status" {{
        priority "critical"
        matches {{ path "/status"; }}
        service-type "builtin"
        builtin-handler "status"
    }}
    route "app" {{ upstream "app"; }}
}}
upstreams {{
    upstream "app" {{ target "{target}"; }}
}}
"#,
            port = free_port(),
            crt = self.path("a.crt").display(),
            key = self.path("a.key").display(),
            target = self.backend.target(),
        )
    }

    pub fn start(&self, workers: usize) -> Zentinel {
        Zentinel::start(&self.config(workers))
    }

    /// One `openssl s_client` asking for `/status`.
    pub fn s_client(&self, z: &Zentinel, args: &[&str]) -> SClient {
        s_client_get(z.addr(), &self.dir.0, "/status", args)
    }

    /// A new session saved to `file` (TLS version flag `version`): the handshake is full and
    /// the server's tickets carry the master's newest key and `lifetime_s`.
    /// Where the TLS 1.3 and the TLS 1.2 sessions are saved, with s_client's version switch.
    pub fn session_files(&self) -> [(&'static str, PathBuf); 2] {
        [
            ("-tls1_3", self.path("session-tls13.pem")),
            ("-tls1_2", self.path("session-tls12.pem")),
        ]
    }

    /// A new TLS 1.3 and a new TLS 1.2 session, saved to `session_files`.
    pub fn new_sessions(&self, z: &Zentinel, lifetime_s: u32) -> [(&'static str, PathBuf); 2] {
        let sessions = self.session_files();
        for (version, file) in &sessions {
            self.new_session(z, version, file, lifetime_s);
        }
        sessions
    }

    pub fn new_session(
        &self,
        z: &Zentinel,
        version: &str,
        file: &Path,
        lifetime_s: u32,
    ) -> SClient {
        let _ = std::fs::remove_file(file);
        let file_arg = file.display().to_string();
        let s = self.s_client(z, &[version, "-sess_out", &file_arg]);
        assert!(
            s.ok && file.exists() && s.kind().as_deref() == Some("New"),
            "{version}: first connection\n{}\n{}",
            s.out,
            z.log()
        );
        let newest = master_keys(z)[0].clone();
        let tickets = s.tickets();
        assert!(!tickets.is_empty(), "{version}: no ticket\n{}", s.out);
        for (hint, key_name) in &tickets {
            assert_eq!(*hint, lifetime_s, "{version}: lifetime hint\n{}", s.out);
            assert_eq!(
                key_name, &newest,
                "{version}: the ticket is not sealed with the master's newest key\n{}",
                s.out
            );
        }
        s
    }

    /// Resume the session in `file` until every worker of `workers` has served one: every
    /// connection must be resumed, and served by one of them. Returns the connections made.
    pub fn resume_on_each(
        &self,
        z: &Zentinel,
        version: &str,
        file: &Path,
        workers: &BTreeSet<u32>,
    ) -> usize {
        self.resume_on_each_with(z, &[version], file, workers)
    }

    /// [`Fixture::resume_on_each`] with s_client's `flags` (a version switch, `-no_ticket`).
    pub fn resume_on_each_with(
        &self,
        z: &Zentinel,
        flags: &[&str],
        file: &Path,
        workers: &BTreeSet<u32>,
    ) -> usize {
        let version = flags.join(" ");
        let file_arg = file.display().to_string();
        let mut seen = BTreeSet::new();
        for attempt in 1..=MAX_ATTEMPTS {
            let mut args = flags.to_vec();
            args.extend(["-sess_in", file_arg.as_str()]);
            let s = self.s_client(z, &args);
            let pid = s.served_by();
            assert_eq!(
                s.kind().as_deref(),
                Some("Reused"),
                "{version}: connection {attempt} (worker pid {pid:?}) did not resume\n{}\n{}",
                s.out,
                z.log()
            );
            let pid = pid.unwrap_or_else(|| panic!("{version}: no status answer\n{}", s.out));
            assert!(
                workers.contains(&pid),
                "{version}: served by pid {pid}, not one of {workers:?}"
            );
            seen.insert(pid);
            if seen == *workers {
                return attempt;
            }
        }
        panic!(
            "{version}: after {MAX_ATTEMPTS} resumed connections only {seen:?} of {workers:?} \
             served"
        );
    }

    /// A rustls client of one TLS version, whose resumption store keeps its sessions.
    pub fn rustls_client(
        &self,
        version: &'static rustls::SupportedProtocolVersion,
    ) -> Arc<ClientConfig> {
        client_config(&self.ca.der(), &[version])
    }
}

/// The running workers' pids, from the master's status.
pub fn running_workers(z: &Zentinel) -> BTreeSet<u32> {
    workers_of(&z.status())
        .iter()
        .filter(|w| w["state"] == "running")
        .filter_map(|w| w["pid"].as_u64())
        .map(|pid| pid as u32)
        .collect()
}

/// The key names the current master logged last, newest first (hex).
pub fn master_keys(z: &Zentinel) -> Vec<String> {
    all_key_lines(z)
        .pop()
        .unwrap_or_else(|| panic!("no `{KEYS_LOGGED}` line\n{}", z.log()))
}

/// Every `keys=` list logged, in order.
pub fn all_key_lines(z: &Zentinel) -> Vec<Vec<String>> {
    z.log_text()
        .lines()
        .filter(|l| l.contains(KEYS_LOGGED))
        .filter_map(|l| {
            let at = l.find("keys=")? + "keys=".len();
            let list = l[at..].split_whitespace().next()?;
            Some(list.split(',').map(str::to_owned).collect())
        })
        .collect()
}

/// One request over a rustls connection: how its handshake went and which worker served.
pub fn rustls_status(z: &Zentinel, config: &Arc<ClientConfig>) -> (Option<HandshakeKind>, u32) {
    let mut client = TlsClient::connect(z.addr(), "a.test", Arc::clone(config));
    // Reading the answer also reads the TLS 1.3 tickets sent after the handshake.
    let answer = client.get("/status");
    assert_eq!(answer.status, 200, "{}", answer.body_str());
    let body: serde_json::Value =
        serde_json::from_slice(&answer.body).expect("the status answer is JSON");
    let pid = body["pid"].as_u64().expect("a pid in the status answer") as u32;
    (client.conn().handshake_kind(), pid)
}

/// `zentinel-ctl upgrade --rolling --binary binary`, which must succeed; then waits until `z`
/// runs `count` workers none of which is in `old`, and returns them.
pub fn rolling_upgrade_to(
    z: &Zentinel,
    binary: &Path,
    old: &BTreeSet<u32>,
    count: usize,
) -> BTreeSet<u32> {
    let out = crate::drain::upgrade_rolling(&z.control_socket(), binary, &[], UPGRADE_DEADLINE);
    assert!(out.success(), "upgrade --rolling: {out}\n{}", z.log());
    wait_for_new_workers(z, old, count)
}

/// Waits until `z` runs `count` workers none of which is in `old`.
pub fn wait_for_new_workers(z: &Zentinel, old: &BTreeSet<u32>, count: usize) -> BTreeSet<u32> {
    let mut now = BTreeSet::new();
    let ok = wait_until(DEADLINE, || {
        now = running_workers(z);
        now.len() == count && now.is_disjoint(old)
    });
    assert!(ok, "running workers {now:?}, old {old:?}\n{}", z.log());
    now
}

/// A stand-in for a release that reads state formats up to `newest` only (as a rollback would
/// meet): a script at `path` that answers `--version --json` like one and runs this build for
/// everything else.
pub fn older_release(path: &Path, newest: u32) -> PathBuf {
    let out = std::process::Command::new(zentinel_bin())
        .args(["--version", "--json"])
        .output()
        .expect("zentinel --version --json");
    let mut info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("version JSON");
    info["state_format_version"] = newest.into();
    info["readable_state_formats"] = (1..=newest).collect::<Vec<u32>>().into();
    if let Some(object) = info.as_object_mut() {
        for (field, format) in [
            ("ticket_keys_state_format", 6),
            ("session_cache_state_format", 7),
            ("filter_segments_state_format", 8),
        ] {
            if format > newest {
                object.remove(field);
            }
        }
    }
    install_script(
        path,
        &format!(
            "#!/bin/sh\nif [ \"$1\" = --version ] && [ \"$2\" = --json ]; then echo '{info}'; \
             exit 0; fi\nexec '{}' \"$@\"\n",
            zentinel_bin().display()
        ),
    );
    path.to_path_buf()
}
