//! The writer thread: lines arrive through a bounded channel and are appended to their file,
//! held in a buffer of `buffer-size` bytes per file first.
//!
//! A buffer is written (one `write(2)` of whole lines on an `O_APPEND` descriptor, so workers
//! sharing a file never interleave parts of lines) when the next line would not fit, when its
//! oldest line has waited [`FLUSH_INTERVAL`], on a reopen (every configuration install: reload,
//! rotation) and on a sync (the worker's exit, after its drain). `buffer-size 0` writes what
//! each pass over the queue gathered at once.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use tracing::warn;

/// Lines queued for the writer thread before new ones are dropped.
const QUEUE_LINES: usize = 16_384;
/// Bytes taken from the queue in one pass before the buffers are looked at.
const PASS_BYTES: usize = 64 * 1024;
/// The longest a buffered line waits for its write.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// How often dropped lines are reported when nothing else happens.
const REPORT_INTERVAL: Duration = Duration::from_secs(1);

static DROPPED: AtomicU64 = AtomicU64::new(0);
static WRITER: OnceLock<Sender<Msg>> = OnceLock::new();

/// Where one access log's lines go.
#[derive(Debug)]
pub(super) struct Target {
    pub path: Arc<str>,
    /// `buffer-size`: bytes held before a write.
    pub buffer_size: usize,
}

enum Msg {
    Line {
        target: Arc<Target>,
        line: Vec<u8>,
    },
    /// Write every buffer and close every file; the next line reopens it by path (rotation).
    Reopen,
    /// Everything queued before this is written: answer.
    Sync(Sender<()>),
}

fn writer() -> Option<&'static Sender<Msg>> {
    if let Some(tx) = WRITER.get() {
        return Some(tx);
    }
    let (tx, rx) = bounded(QUEUE_LINES);
    let spawned = std::thread::Builder::new()
        .name("access-log".to_owned())
        .spawn(move || writer_thread(rx));
    match spawned {
        Ok(_) => Some(WRITER.get_or_init(|| tx)),
        Err(e) => {
            warn!(error = %e, "cannot start the access-log writer thread; access log lines are dropped");
            None
        }
    }
}

/// Queue one line; never blocks (a full queue drops the line, counted).
pub(super) fn send_line(target: &Arc<Target>, line: Vec<u8>) {
    send(Msg::Line {
        target: Arc::clone(target),
        line,
    });
}

fn send(msg: Msg) {
    let Some(tx) = writer() else {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return;
    };
    match tx.try_send(msg) {
        Ok(()) => {}
        Err(TrySendError::Full(Msg::Line { .. })) | Err(TrySendError::Disconnected(_)) => {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
        // A reopen or sync that did not fit: the writer is far behind; a reopen is retried by
        // the next reload, a sync caller times out.
        Err(TrySendError::Full(_)) => {}
    }
}

/// Log rotation: write what is buffered, then reopen every access-log file by path (called
/// when a configuration is installed). Only touches the writer when one runs.
pub fn reopen() {
    if WRITER.get().is_some() {
        send(Msg::Reopen);
    }
}

/// Wait (at most `budget`) until the lines queued or buffered so far are written: called
/// before the worker exits, so the last requests of a drain are not lost.
pub fn flush(budget: Duration) {
    let Some(tx) = WRITER.get() else {
        return;
    };
    let (ack_tx, ack_rx) = bounded(1);
    if tx.send_timeout(Msg::Sync(ack_tx), budget).is_ok() {
        let _ = ack_rx.recv_timeout(budget);
    }
}

pub(super) fn open(path: &str) -> std::io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

/// One file's descriptor and buffer.
#[derive(Default)]
struct Out {
    file: Option<File>,
    buf: Vec<u8>,
    /// When the oldest buffered line arrived.
    since: Option<Instant>,
    cap: usize,
}

struct Writer {
    outs: HashMap<Arc<str>, Out>,
    last_open_error: Option<Instant>,
}

fn writer_thread(rx: Receiver<Msg>) {
    let mut w = Writer {
        outs: HashMap::new(),
        last_open_error: None,
    };
    loop {
        let now = Instant::now();
        let wait = w
            .outs
            .values()
            .filter_map(|o| o.since)
            .min()
            .map_or(REPORT_INTERVAL, |oldest| {
                (oldest + FLUSH_INTERVAL).saturating_duration_since(now)
            });
        let mut pending = match rx.recv_timeout(wait) {
            Ok(msg) => Some(msg),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                w.write_all();
                return;
            }
        };
        let mut acks = Vec::new();
        let mut size = 0usize;
        while let Some(msg) = pending.take() {
            match msg {
                Msg::Line { target, line } => {
                    size += line.len();
                    w.push(&target, line);
                }
                Msg::Reopen => {
                    w.write_all();
                    // Closes every file; a path no longer configured is forgotten.
                    w.outs.clear();
                }
                Msg::Sync(ack) => acks.push(ack),
            }
            if size < PASS_BYTES {
                pending = rx.try_recv().ok();
            }
        }
        if acks.is_empty() {
            w.write_due(Instant::now());
        } else {
            w.write_all();
        }
        for ack in acks {
            let _ = ack.send(());
        }
        report_dropped();
    }
}

impl Writer {
    fn push(&mut self, target: &Target, line: Vec<u8>) {
        let out = self.outs.entry(Arc::clone(&target.path)).or_default();
        // A reload may change the size; the latest line's configuration counts.
        out.cap = target.buffer_size;
        if out.cap > 0 && !out.buf.is_empty() && out.buf.len() + line.len() > out.cap {
            write_out(&target.path, out, &mut self.last_open_error);
        }
        if out.buf.is_empty() {
            out.since = Some(Instant::now());
        }
        out.buf.extend_from_slice(&line);
    }

    /// Write the buffers that are full, unbuffered, or waited long enough.
    fn write_due(&mut self, now: Instant) {
        for (path, out) in &mut self.outs {
            let due = out.buf.len() >= out.cap
                || out
                    .since
                    .is_some_and(|s| now.saturating_duration_since(s) >= FLUSH_INTERVAL);
            if due && !out.buf.is_empty() {
                write_out(path, out, &mut self.last_open_error);
            }
        }
    }

    fn write_all(&mut self) {
        for (path, out) in &mut self.outs {
            if !out.buf.is_empty() {
                write_out(path, out, &mut self.last_open_error);
            }
        }
    }
}

/// Write and empty `out`'s buffer (its lines are dropped, counted, when the file cannot be
/// opened or written).
fn write_out(path: &Arc<str>, out: &mut Out, last_open_error: &mut Option<Instant>) {
    let buf = std::mem::take(&mut out.buf);
    out.since = None;
    if out.file.is_none() {
        match open(path) {
            Ok(f) => out.file = Some(f),
            Err(e) => {
                if last_open_error.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                    warn!(file = %path, error = %e, "cannot open the access log; lines are dropped");
                    *last_open_error = Some(Instant::now());
                }
                let lines = buf.iter().filter(|&&b| b == b'\n').count() as u64;
                DROPPED.fetch_add(lines, Ordering::Relaxed);
                return;
            }
        }
    }
    if let Some(file) = out.file.as_mut() {
        // One write for the whole buffer of whole lines: O_APPEND places it at the end of the
        // file atomically with respect to other workers' writes.
        if let Err(e) = file.write_all(&buf) {
            warn!(file = %path, error = %e, "cannot write the access log; reopening on the next line");
            out.file = None;
        }
    }
    // Keep the allocation for the next lines.
    out.buf = buf;
    out.buf.clear();
}

fn report_dropped() {
    let dropped = DROPPED.swap(0, Ordering::Relaxed);
    if dropped > 0 {
        warn!(
            dropped,
            "access log lines dropped (writer behind or file not writable)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_is_written_when_full_when_due_or_at_once_when_unbuffered() {
        let path = std::env::temp_dir().join(format!("zt-access-buffer-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let size = || std::fs::metadata(&path).map_or(0, |m| m.len());
        let target = Target {
            path: Arc::from(path.to_str().unwrap()),
            buffer_size: 100,
        };
        let mut w = Writer {
            outs: HashMap::new(),
            last_open_error: None,
        };
        let line = |c: u8| {
            let mut l = vec![c; 39];
            l.push(b'\n');
            l
        };
        w.push(&target, line(b'a'));
        w.push(&target, line(b'b'));
        w.write_due(Instant::now());
        assert_eq!(size(), 0, "80 bytes fit in a 100-byte buffer");
        // The third line does not fit: the first two are written, it waits.
        w.push(&target, line(b'c'));
        assert_eq!(size(), 80);
        // Its time is up after the flush interval.
        w.write_due(Instant::now() + FLUSH_INTERVAL);
        assert_eq!(size(), 120);
        // Unbuffered: written by the end of the pass.
        let unbuffered = Target {
            buffer_size: 0,
            ..target
        };
        w.push(&unbuffered, line(b'd'));
        w.write_due(Instant::now());
        assert_eq!(size(), 160);
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let firsts: String = text.lines().map(|l| &l[..1]).collect();
        assert_eq!(firsts, "abcd");
    }
}
