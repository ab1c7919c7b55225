//! The error log file (`error-log { file; buffer-size }`): each process appends its warnings
//! and errors through a buffer of `buffer-size` bytes (upstream Zentinel's default, 8 KiB).
//!
//! The buffer is written, as whole lines in one `write(2)` on an `O_APPEND` descriptor (so the
//! master and its workers never interleave parts of lines), when the next line would not fit,
//! when its oldest line has waited [`FLUSH_INTERVAL`] (a small thread looks once per interval),
//! when the process exits ([`flush`], from `main`), and at once for an ERROR event: an error
//! may be the last thing a process says before it exits abnormally. `buffer-size 0` writes
//! every line as it comes.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// The longest a buffered warning waits for its write.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// The process's buffered error log, for [`flush`] (one per process: `init` runs once).
static INSTALLED: OnceLock<Arc<Shared>> = OnceLock::new();

struct Shared {
    state: Mutex<State>,
    cap: usize,
}

struct State {
    file: File,
    buf: Vec<u8>,
    /// When the oldest buffered line arrived.
    since: Option<Instant>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves whole lines behind: keep using them.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    fn write_buffer(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        // Nowhere to report a failure to write the error log but stderr, which has the same
        // lines already.
        let _ = self.file.write_all(&self.buf);
        self.buf.clear();
        self.since = None;
    }
}

/// The `MakeWriter` of the error-log layer.
#[derive(Clone)]
pub struct ErrorLogFile {
    shared: Arc<Shared>,
}

impl ErrorLogFile {
    /// Open `path` for appending (created if missing); `buffer_size` 0: no buffering.
    pub fn open(path: &str, buffer_size: usize) -> io::Result<ErrorLogFile> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                file,
                buf: Vec::with_capacity(buffer_size),
                since: None,
            }),
            cap: buffer_size,
        });
        Ok(ErrorLogFile { shared })
    }

    /// Make this the process's error log: written by [`flush`] and, when buffered, by a
    /// thread once its oldest line has waited [`FLUSH_INTERVAL`]. `path` is for messages.
    pub fn install(&self, path: &str) {
        if self.shared.cap == 0 || INSTALLED.set(Arc::clone(&self.shared)).is_err() {
            return;
        }
        let timer = Arc::clone(&self.shared);
        // Started after the master blocked its signals (logging starts later), so this
        // thread never takes a signal meant for the signalfd.
        let spawned = std::thread::Builder::new()
            .name("error-log".to_owned())
            .spawn(move || loop {
                std::thread::sleep(FLUSH_INTERVAL / 4);
                let mut state = timer.lock();
                if state.since.is_some_and(|s| s.elapsed() >= FLUSH_INTERVAL) {
                    state.write_buffer();
                }
            });
        if let Err(e) = spawned {
            eprintln!(
                "zentinel: cannot start the error-log flush thread ({e}); warnings reach {path} \
                 when the buffer fills, an error comes or the process exits"
            );
        }
    }
}

/// Write what this process's error log holds (called before the process exits).
pub fn flush() {
    if let Some(shared) = INSTALLED.get() {
        shared.lock().write_buffer();
    }
}

/// One event's bytes, handed to the buffer when the event is complete.
pub struct EventWriter<'a> {
    shared: &'a Shared,
    line: Vec<u8>,
    urgent: bool,
}

impl Write for EventWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for EventWriter<'_> {
    fn drop(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let cap = self.shared.cap;
        let mut state = self.shared.lock();
        if !state.buf.is_empty() && state.buf.len() + self.line.len() > cap {
            state.write_buffer();
        }
        if state.buf.is_empty() {
            state.since = Some(Instant::now());
        }
        state.buf.extend_from_slice(&self.line);
        if self.urgent || state.buf.len() >= cap {
            state.write_buffer();
        }
    }
}

impl<'a> MakeWriter<'a> for ErrorLogFile {
    type Writer = EventWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        EventWriter {
            shared: &self.shared,
            line: Vec::new(),
            urgent: true,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        EventWriter {
            shared: &self.shared,
            line: Vec::new(),
            urgent: *meta.level() == Level::ERROR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_wait_for_the_buffer_errors_do_not() {
        let path = std::env::temp_dir().join(format!("zt-error-log-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let log = ErrorLogFile::open(path.to_str().unwrap(), 64).unwrap();
        let size = || std::fs::metadata(&path).map_or(0, |m| m.len());
        let event = |urgent: bool, text: &[u8]| {
            let mut w = EventWriter {
                shared: &log.shared,
                line: Vec::new(),
                urgent,
            };
            w.write_all(text).unwrap();
        };
        event(false, b"warn one\n");
        event(false, b"warn two\n");
        assert_eq!(size(), 0);
        // An error takes what waits along with it.
        event(true, b"error\n");
        assert_eq!(size(), 24);
        // A full buffer is written before the line that would not fit.
        event(false, &[b'w'; 40]);
        event(false, &[b'x'; 40]);
        assert_eq!(size(), 64);
        log.shared.lock().write_buffer();
        assert_eq!(size(), 104);
        let _ = std::fs::remove_file(&path);
    }
}
