//! OCSP responses the master fetches: with `ocsp-stapling` on (upstream's default) and no
//! `ocsp-response` file for a certificate, the master asks the responder the certificate names
//! (its Authority Information Access extension) at start and at each reload, checks the
//! answer like a configured file (`zentinel_worker::ocsp::check`), writes it to a file of its
//! own and names that file as the certificate's `ocsp_response` in the configuration the
//! workers get. Workers staple it as they staple an operator's file: neither they nor the
//! configuration model know it was fetched.
//!
//! - Every certificate is asked at once, each on its own thread, and the master waits for
//!   them together for at most [`FETCH_TIMEOUT`] (a responder that does not answer costs that
//!   much, once, whatever the number of certificates).
//! - Only a response saying "good", current, about this certificate is kept. Anything else (no
//!   answer, an error, "revoked", "unknown") is a warning naming the certificate file, the
//!   responder and the reason, never a failure of the start or reload: the certificate keeps
//!   the response fetched before while that is current, else it is served without a staple.
//!   This is what nginx does with the responses it fetches (it never staples "revoked").
//! - A response is fetched again once half its validity (thisUpdate..nextUpdate) has passed;
//!   after a failure, [`RETRY`] later. The supervisor keeps that deadline and sends the
//!   workers the configuration again when a file changed (`supervisor::ocsp`).
//!
//! The files live in a directory next to the control socket ([`staple_dir`]), one per
//! certificate (named after its hash, so a renewed certificate gets a new file), replaced
//! atomically, 0644 (OCSP responses are public, and workers may run as another user).
//! `zentinel -t` and `validate` never fetch: they only load the configuration.

mod http;
mod request;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, info, warn};
use zentinel_protocol::config::ProxyConfig;
use zentinel_worker::ocsp::{self, CertStatus, OcspResponse};

pub use request::{HttpUrl, Target};

/// The longest one round of fetches (start, reload, refresh) waits for every responder
/// together.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(3);
/// After a failed fetch, the next try (nginx waits as long), and the shortest time between
/// two fetches for one certificate.
const RETRY: Duration = Duration::from_secs(300);
/// A response without nextUpdate ("newer information is always available"): fetched again
/// this often (nginx's longest wait).
const OPEN_ENDED_REFRESH: Duration = Duration::from_secs(3600);
/// How far in the future a response's thisUpdate may be (clocks differ; nginx allows as much).
const CLOCK_SKEW: Duration = Duration::from_secs(300);
/// Replaces [`RETRY`] in tests (milliseconds; `fault-injection` builds only).
pub const RETRY_ENV_VAR: &str = "ZENTINEL_TEST_OCSP_RETRY_MS";

/// [`RETRY`], or the test's value.
pub fn retry_interval() -> Duration {
    if !zentinel_worker::fault_injection::AVAILABLE {
        return RETRY;
    }
    std::env::var(RETRY_ENV_VAR)
        .ok()
        .and_then(|ms| ms.trim().parse::<u64>().ok())
        .map_or(RETRY, |ms| Duration::from_millis(ms.max(100)))
}

/// Where the master keeps fetched responses: next to its control socket, named after it
/// (`/run/zentinel/zentinel.sock` → `/run/zentinel/zentinel-ocsp/`), so two masters with two
/// sockets never share one, and a successor master of a binary upgrade (same socket) finds its
/// predecessor's.
pub fn staple_dir(control_socket: &Path) -> PathBuf {
    let socket = std::path::absolute(control_socket).unwrap_or_else(|_| control_socket.into());
    let stem = socket
        .file_stem()
        .map_or_else(|| "zentinel".into(), |s| s.to_string_lossy().into_owned());
    socket.with_file_name(format!("{stem}-ocsp"))
}

/// What one round did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// A response file was written: workers must load the configuration again to staple it.
    pub changed: bool,
    /// The warnings logged, for a reload's client.
    pub warnings: Vec<String>,
}

impl Outcome {
    fn warn(&mut self, message: String) {
        warn!("{message}");
        self.warnings.push(message);
    }
}

/// Which certificates a round asks about.
#[derive(Debug, Clone, Copy)]
enum Round {
    /// Start and reload: every one.
    All,
    /// Those due by then; the others keep what the configuration names.
    Due(Instant),
    /// None: the files fetched before, while current (a successor master taking over, which
    /// must not keep its predecessor waiting on a responder; it refreshes once it runs).
    Stored,
}

/// The fetched responses of one master: where they are, and when each is fetched next.
#[derive(Debug)]
pub struct Stapler {
    dir: PathBuf,
    retry: Duration,
    timeout: Duration,
    /// By certificate file: when its response is fetched again.
    due: BTreeMap<String, Instant>,
    /// No refresh before this (one was due while the workers could not be sent it).
    not_before: Option<Instant>,
}

impl Stapler {
    pub fn new(dir: PathBuf) -> Stapler {
        Stapler {
            dir,
            retry: retry_interval(),
            timeout: FETCH_TIMEOUT,
            due: BTreeMap::new(),
            not_before: None,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// At start and reload: asks every responder (for at most [`FETCH_TIMEOUT`]) and points
    /// `config` at the responses.
    pub fn fetch_all(&mut self, config: &mut ProxyConfig) -> Outcome {
        self.run(config, Round::All)
    }

    /// Asks about the certificates due by `now` (at most [`FETCH_TIMEOUT`]).
    pub fn refresh_due(&mut self, config: &mut ProxyConfig, now: Instant) -> Outcome {
        self.not_before = None;
        self.run(config, Round::Due(now))
    }

    /// Points `config` at the responses fetched before, while current, without asking
    /// anyone; every certificate is due when its response is half through (or at once).
    pub fn use_stored(&mut self, config: &mut ProxyConfig) -> Outcome {
        self.run(config, Round::Stored)
    }

    /// When the next certificate is due.
    pub fn next_refresh(&self) -> Option<Instant> {
        let next = self.due.values().min().copied()?;
        Some(
            self.not_before
                .map_or(next, |not_before| next.max(not_before)),
        )
    }

    /// Nothing is refreshed before `until`.
    pub fn postpone(&mut self, until: Instant) {
        self.not_before = Some(until);
    }

    /// Forgets the certificates `config` (now running) no longer has, and deletes their files.
    pub fn remove_unused(&mut self, config: &ProxyConfig) {
        let certs = fetched_certs(config, &self.dir);
        self.due.retain(|cert, _| certs.contains(cert));
        let used: BTreeSet<PathBuf> = staple_paths(config).map(PathBuf::from).collect();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if is_staple_file(&path) && !used.contains(&path) {
                match std::fs::remove_file(&path) {
                    Ok(()) => debug!(path = %path.display(), "removed an unused OCSP response"),
                    Err(e) => {
                        debug!(path = %path.display(), error = %e, "cannot remove an unused OCSP response")
                    }
                }
            }
        }
    }

    fn run(&mut self, config: &mut ProxyConfig, round: Round) -> Outcome {
        let mut outcome = Outcome::default();
        let certs = fetched_certs(config, &self.dir);
        let refreshing = matches!(round, Round::Due(_));
        if refreshing {
            // The running configuration's certificates only (a reload that was rolled back
            // may have left others). A reload's round keeps the running ones' schedule.
            self.due.retain(|cert, _| certs.contains(cert));
        }
        // By certificate file: the response file to name, or `None` for no staple.
        let mut staples: BTreeMap<String, Option<String>> = BTreeMap::new();
        let mut targets = BTreeMap::new();
        for cert in &certs {
            match request::prepare(cert) {
                Ok(Some(target)) => {
                    targets.insert(cert.clone(), target);
                }
                Ok(None) => {
                    debug!(cert = %cert, "the certificate names no OCSP responder: nothing to fetch");
                    self.due.remove(cert);
                    staples.insert(cert.clone(), None);
                }
                Err(reason) => {
                    // Said when a configuration is loaded; a refresh says it only about a
                    // certificate it fetched for before (its file changed since).
                    if !refreshing || self.due.remove(cert).is_some() {
                        outcome.warn(format!(
                            "OCSP stapling of {cert}: {reason}; it is served without a staple"
                        ));
                        staples.insert(cert.clone(), None);
                    }
                }
            }
        }
        let asked: Vec<(String, HttpUrl, Vec<u8>)> = targets
            .iter()
            .filter(|(cert, _)| match round {
                Round::All => true,
                Round::Due(now) => self.due.get(*cert).is_some_and(|at| *at <= now),
                Round::Stored => false,
            })
            .map(|(cert, t)| (cert.clone(), t.responder.clone(), t.request.clone()))
            .collect();
        let mut answers = BTreeMap::new();
        if !asked.is_empty() {
            let created = std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&self.dir);
            answers = match created {
                Ok(()) => fetch_concurrently(asked, self.timeout),
                Err(e) => {
                    let reason = format!("cannot create {}: {e}", self.dir.display());
                    asked
                        .into_iter()
                        .map(|(c, _, _)| (c, Err(reason.clone())))
                        .collect()
                }
            };
        }
        let now = Instant::now();
        let now_sys = SystemTime::now();
        for (cert, target) in &targets {
            let path = self.dir.join(staple_name(&target.leaf));
            let staple = match answers.remove(cert) {
                Some(answer) => self.take(cert, target, &path, answer, &mut outcome),
                None if refreshing => continue, // not due: the configuration keeps its file
                None => {
                    let stored = stored(&path, &target.leaf, now_sys);
                    let at = stored
                        .as_ref()
                        .map_or(now, |r| refresh_at(r, now_sys, now, self.retry));
                    self.due.insert(cert.clone(), at);
                    stored.map(|_| path.clone())
                }
            };
            staples.insert(cert.clone(), staple.map(|p| p.display().to_string()));
        }
        assign(config, &self.dir, &staples);
        if let Round::Due(then) = round {
            // Whatever was due and could not even be asked waits for the next try, rather
            // than waking the loop at once again.
            for at in self.due.values_mut().filter(|at| **at <= then) {
                *at = now + self.retry;
            }
        }
        outcome
    }

    /// Keeps a responder's `answer` when usable; the file `config` should name either way.
    fn take(
        &mut self,
        cert: &str,
        target: &Target,
        path: &Path,
        answer: Result<Vec<u8>, String>,
        outcome: &mut Outcome,
    ) -> Option<PathBuf> {
        let now_sys = SystemTime::now();
        let what = format!("the answer of {}", target.url);
        let checked = answer
            .and_then(|der| ocsp::check(der, &target.leaf, &what))
            .and_then(|response| usable(response, now_sys))
            .and_then(|response| {
                write_if_changed(path, &response.der)
                    .map(|changed| (response, changed))
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))
            });
        let now = Instant::now();
        match checked {
            Ok((response, changed)) => {
                outcome.changed |= changed;
                let at = refresh_at(&response, now_sys, now, self.retry);
                self.due.insert(cert.to_owned(), at);
                info!(
                    cert = %cert,
                    responder = %target.url,
                    next_update = %response.next_update.map_or_else(|| "none".to_owned(), ocsp::format_time),
                    refresh_in_s = at.saturating_duration_since(now).as_secs(),
                    "OCSP response fetched (certificate status good): stapled"
                );
                Some(path.to_owned())
            }
            Err(reason) => {
                self.due.insert(cert.to_owned(), now + self.retry);
                let previous = stored(path, &target.leaf, now_sys);
                let consequence = match previous.as_ref().and_then(|r| r.next_update) {
                    Some(until) => format!(
                        "the response fetched before stays stapled until its nextUpdate {}",
                        ocsp::format_time(until)
                    ),
                    None if previous.is_some() => {
                        "the response fetched before stays stapled".to_owned()
                    }
                    None => "it is served without a staple".to_owned(),
                };
                outcome.warn(format!(
                    "OCSP stapling of {cert}: no usable response from its responder {}: \
                     {reason}; {consequence}; next try in {}s",
                    target.url,
                    self.retry.as_secs()
                ));
                previous.map(|_| path.to_owned())
            }
        }
    }
}

/// A response worth stapling: "good", current, not from the future.
fn usable(response: OcspResponse, now: SystemTime) -> Result<OcspResponse, String> {
    if response.status != CertStatus::Good {
        return Err(format!(
            "the responder says the certificate is {}, which is never stapled",
            response.status.name()
        ));
    }
    if let Some(until) = response.next_update.filter(|_| response.expired_at(now)) {
        return Err(format!(
            "the response expired at {} (its nextUpdate)",
            ocsp::format_time(until)
        ));
    }
    if response.this_update > now + CLOCK_SKEW {
        return Err(format!(
            "the response is valid only from {} (its thisUpdate): a clock is wrong",
            ocsp::format_time(response.this_update)
        ));
    }
    Ok(response)
}

/// The response stored at `path` before, if it is still worth stapling for `leaf`.
fn stored(path: &Path, leaf: &[u8], now: SystemTime) -> Option<OcspResponse> {
    let path = path.to_str()?;
    ocsp::load(path, leaf)
        .ok()
        .and_then(|r| usable(r, now).ok())
}

/// When to fetch again: half-way through the response's validity, not sooner than `floor`.
pub(crate) fn refresh_at(
    response: &OcspResponse,
    now_sys: SystemTime,
    now: Instant,
    floor: Duration,
) -> Instant {
    let wait = match response.next_update {
        Some(next) => {
            let half = next
                .duration_since(response.this_update)
                .unwrap_or_default()
                / 2;
            (response.this_update + half)
                .duration_since(now_sys)
                .unwrap_or_default()
        }
        None => OPEN_ENDED_REFRESH,
    };
    now + wait.max(floor)
}

/// Asks every responder at once, each on its own thread; waits for them all until `timeout`
/// has passed, and takes the ones still out for failures. A late thread ends by itself (its
/// socket has the same deadline; a name lookup ends when the resolver gives up) and its answer
/// goes nowhere.
fn fetch_concurrently(
    asked: Vec<(String, HttpUrl, Vec<u8>)>,
    timeout: Duration,
) -> BTreeMap<String, Result<Vec<u8>, String>> {
    let deadline = Instant::now() + timeout;
    let (tx, rx) = mpsc::channel();
    let mut answers = BTreeMap::new();
    let mut waiting = BTreeSet::new();
    for (cert, url, body) in asked {
        let tx = tx.clone();
        let key = cert.clone();
        // Threads inherit the master's signal mask: the signals it reads from its signalfd
        // stay blocked here too, so none is delivered to this thread instead.
        let spawned = std::thread::Builder::new()
            .name("ocsp-fetch".to_owned())
            .spawn(move || {
                let answer = http::post(&url, &body, deadline);
                let _ = tx.send((key, answer));
            });
        match spawned {
            Ok(_) => {
                waiting.insert(cert);
            }
            Err(e) => {
                answers.insert(cert, Err(format!("cannot start a thread to ask it: {e}")));
            }
        }
    }
    drop(tx);
    while !waiting.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((cert, answer)) => {
                waiting.remove(&cert);
                answers.insert(cert, answer);
            }
            Err(_) => break,
        }
    }
    for cert in waiting {
        answers.insert(
            cert,
            Err(format!("no answer within {}s", timeout.as_secs_f32())),
        );
    }
    answers
}

/// `<hash of the certificate>.der`: a renewed certificate never reads its predecessor's
/// response.
fn staple_name(leaf: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, leaf);
    let hex: String = digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{hex}.der")
}

fn is_staple_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".der"))
        .is_some_and(|stem| stem.len() == 32 && stem.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Writes `der` to `path` through a temporary file and a rename (a worker never reads half a
/// response), unless it holds those bytes already. True when it wrote.
fn write_if_changed(path: &Path, der: &[u8]) -> std::io::Result<bool> {
    if std::fs::read(path).is_ok_and(|old| old == der) {
        return Ok(false);
    }
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let temp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&temp)
        .and_then(|mut file| file.write_all(der))
        .and_then(|()| std::fs::rename(&temp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written.map(|()| true)
}

/// A certificate's `ocsp_response` is this master's to set: none, or one it fetched.
fn ours(response: Option<&String>, dir: &Path) -> bool {
    response.is_none_or(|p| Path::new(p).parent() == Some(dir))
}

/// The certificate files (default and `sni`) of the listeners that staple, whose response
/// this master fetches.
fn fetched_certs(config: &ProxyConfig, dir: &Path) -> BTreeSet<String> {
    let mut certs = BTreeSet::new();
    for tls in config.listeners.iter().filter_map(|l| l.tls.as_ref()) {
        if !tls.ocsp_stapling {
            continue;
        }
        if ours(tls.ocsp_response.as_ref(), dir) {
            certs.insert(tls.cert_file.clone());
        }
        for sni in &tls.additional_certs {
            if ours(sni.ocsp_response.as_ref(), dir) {
                certs.insert(sni.cert_file.clone());
            }
        }
    }
    certs
}

/// Every `ocsp_response` `config` names.
fn staple_paths(config: &ProxyConfig) -> impl Iterator<Item = &String> {
    config
        .listeners
        .iter()
        .filter_map(|l| l.tls.as_ref())
        .flat_map(|tls| {
            tls.ocsp_response.iter().chain(
                tls.additional_certs
                    .iter()
                    .filter_map(|c| c.ocsp_response.as_ref()),
            )
        })
}

/// Names each certificate's file of `staples` in `config` (where the file is ours to name).
fn assign(config: &mut ProxyConfig, dir: &Path, staples: &BTreeMap<String, Option<String>>) {
    for tls in config.listeners.iter_mut().filter_map(|l| l.tls.as_mut()) {
        if !tls.ocsp_stapling {
            continue;
        }
        if ours(tls.ocsp_response.as_ref(), dir) {
            if let Some(staple) = staples.get(&tls.cert_file) {
                tls.ocsp_response.clone_from(staple);
            }
        }
        for sni in &mut tls.additional_certs {
            if ours(sni.ocsp_response.as_ref(), dir) {
                if let Some(staple) = staples.get(&sni.cert_file) {
                    sni.ocsp_response.clone_from(staple);
                }
            }
        }
    }
}
