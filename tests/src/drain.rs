//! What the drain tests share: a download held open on the worker serving it, a rolling
//! upgrade through `zentinel-ctl`, the `draining` part of `status --json`, and the moments
//! connections are closed by the server.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::{ctl_within, read_response_head, CtlOutput, Fnv64, HttpClient};

const CONNECT_DEADLINE: Duration = Duration::from_secs(10);

/// A GET read at a throttled rate on its own thread: bytes read so far, and at the end
/// (length, checksum, X-Body-Checksum) or the error.
pub struct SlowDownload {
    pub progress: Arc<AtomicU64>,
    /// Set to let the reader go on past `hold_at`, at full speed.
    pub release: Arc<AtomicBool>,
    pub handle: thread::JoinHandle<Result<(u64, u64, String), String>>,
}

impl SlowDownload {
    /// Reads `GET /bytes/{size}` at `rate` bytes/s; stops reading past `hold_at` bytes until
    /// released, so the transfer provably spans whatever happens before the release.
    pub fn start(addr: SocketAddr, size: u64, rate: u64, hold_at: u64) -> SlowDownload {
        let progress = Arc::new(AtomicU64::new(0));
        let release = Arc::new(AtomicBool::new(false));
        let (p, r) = (progress.clone(), release.clone());
        let handle = thread::spawn(move || -> Result<(u64, u64, String), String> {
            let mut s =
                TcpStream::connect_timeout(&addr, CONNECT_DEADLINE).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(30))).ok();
            s.write_all(format!("GET /bytes/{size} HTTP/1.1\r\nHost: dl\r\n\r\n").as_bytes())
                .map_err(|e| format!("send: {e}"))?;
            let mut buf = vec![0u8; 64 * 1024];
            let (head, mut body_start) = read_response_head(&mut s)?;
            if head.status != 200 {
                return Err(format!("status {}", head.status));
            }
            let content_length = head.content_length().ok_or("no Content-Length")?;
            let header_sum = head
                .header("x-body-checksum")
                .unwrap_or_default()
                .to_owned();
            let mut hash = Fnv64::new();
            let mut got = 0u64;
            let started = Instant::now();
            loop {
                if !body_start.is_empty() {
                    hash.update(&body_start);
                    got += body_start.len() as u64;
                    body_start.clear();
                }
                p.store(got, Ordering::SeqCst);
                if got >= content_length {
                    break;
                }
                if !r.load(Ordering::SeqCst) {
                    if got >= hold_at {
                        thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    // Throttle: never ahead of `rate`.
                    let due = Duration::from_secs_f64(got as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        thread::sleep(wait.min(Duration::from_millis(100)));
                        continue;
                    }
                }
                let want = ((content_length - got) as usize).min(buf.len());
                let n = s
                    .read(&mut buf[..want])
                    .map_err(|e| format!("body after {got} bytes: {e}"))?;
                if n == 0 {
                    return Err(format!("EOF after {got} of {content_length} body bytes"));
                }
                body_start.extend_from_slice(&buf[..n]);
            }
            Ok((got, hash.finish(), header_sum))
        });
        SlowDownload {
            progress,
            release,
            handle,
        }
    }

    pub fn progress(&self) -> u64 {
        self.progress.load(Ordering::SeqCst)
    }

    /// Let the reader go on, and wait for its end: (length, checksum, X-Body-Checksum) or
    /// why it failed.
    pub fn finish(self) -> Result<(u64, u64, String), String> {
        self.release.store(true, Ordering::SeqCst);
        self.handle
            .join()
            .unwrap_or_else(|_| Err("the download thread panicked".to_owned()))
    }
}

/// `zentinel-ctl upgrade --rolling --binary BINARY EXTRA...` on `socket`, killed after
/// `deadline`.
pub fn upgrade_rolling(
    socket: &Path,
    binary: &Path,
    extra: &[&str],
    deadline: Duration,
) -> CtlOutput {
    let b = binary.display().to_string();
    let mut args = vec!["upgrade", "--rolling", "--binary", b.as_str()];
    args.extend_from_slice(extra);
    ctl_within(socket, &args, deadline)
}

/// The `draining` array of a `status --json` document (every draining worker with its
/// generation, connections and remaining drain time); panics when it is missing.
pub fn draining_of(status: &serde_json::Value) -> Vec<serde_json::Value> {
    status["draining"]
        .as_array()
        .unwrap_or_else(|| panic!("`draining` is not an array: {status}"))
        .clone()
}

/// Watches every client on its own thread until the server closes it (EOF or reset), for at
/// most `within`: when each was closed, `None` for those still open then.
pub fn close_times(clients: Vec<HttpClient>, within: Duration) -> Vec<Option<Instant>> {
    let watchers: Vec<_> = clients
        .into_iter()
        .map(|mut c| thread::spawn(move || c.server_closed_within(within).then(Instant::now)))
        .collect();
    watchers
        .into_iter()
        .map(|w| w.join().unwrap_or(None))
        .collect()
}
