//! One run of a binary with a deadline: stdin closed, output captured up to a bound, and on
//! overrun its whole process group killed.

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
/// Default bound of one pre-flight run of a binary (`--version --json`, `--check`).
pub const DEFAULT_CHILD_TIMEOUT: Duration = Duration::from_secs(10);

/// Output kept from one child stream: an error message fits easily; a binary that floods its
/// output must not make the client buffer it all.
const MAX_CAPTURE: usize = 64 * 1024;

/// How long the output pipes may stay open after the child was reaped (a grandchild that
/// escaped its process group could hold them forever).
const PIPE_GRACE: Duration = Duration::from_secs(1);

/// What one bounded run produced.
#[derive(Debug, Clone)]
pub struct ChildOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl ChildOutput {
    /// `exit status 2`, `killed by signal 9`.
    pub fn status_text(&self) -> String {
        describe_status(self.status)
    }

    /// The child's own words: stderr, else stdout, trimmed, on one line.
    pub fn said(&self) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        shown(text)
    }
}

fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}

/// Text on one line for a message, `(nothing)` if empty.
pub(super) fn shown(text: &str) -> String {
    let line = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    if line.is_empty() {
        "(nothing)".to_owned()
    } else {
        line
    }
}

/// Run `binary args...` with stdin closed, capturing its output, for at most `timeout`. The
/// child gets its own process group, and on overrun the whole group is killed (a shell script
/// "binary" waits on its own children). `ZENTINEL_CONFIG` is removed from its environment: the
/// config checked must be the one on the command line, not whatever the caller's shell set.
pub fn run_bounded(binary: &Path, args: &[&str], timeout: Duration) -> Result<ChildOutput, String> {
    let shown_command = format!("{} {}", binary.display(), args.join(" "));
    let mut child = Command::new(binary)
        .args(args)
        .env_remove("ZENTINEL_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run `{shown_command}`: {e}"))?;
    let pid = child.id();
    let readers = [
        child.stdout.take().map(|s| capture(Box::new(s))),
        child.stderr.take().map(|s| capture(Box::new(s))),
    ];
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                kill_group(pid);
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "`{shown_command}` did not finish within {timeout:?} (killed)"
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                kill_group(pid);
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("cannot wait for `{shown_command}`: {e}"));
            }
        }
    };
    // Whatever the child left running in its group must not outlive the check.
    kill_group(pid);
    let [stdout, stderr] = readers.map(|reader| {
        reader
            .and_then(|rx| rx.recv_timeout(PIPE_GRACE).ok())
            .unwrap_or_default()
    });
    Ok(ChildOutput {
        status,
        stdout,
        stderr,
    })
}

fn kill_group(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        // ESRCH (the group is already gone) is the common, harmless case.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Read a child stream to its end on a thread, keeping the first [`MAX_CAPTURE`] bytes.
fn capture(mut stream: Box<dyn Read + Send>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = MAX_CAPTURE.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
            }
        }
        let _ = tx.send(String::from_utf8_lossy(&kept).into_owned());
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_run_kills_on_overrun_and_captures_output() {
        let sh = Path::new("/bin/sh");
        let started = Instant::now();
        let err = run_bounded(sh, &["-c", "sleep 30"], Duration::from_millis(300)).unwrap_err();
        assert!(err.contains("did not finish"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let out = run_bounded(
            sh,
            &["-c", "echo out; echo err >&2; exit 3"],
            DEFAULT_CHILD_TIMEOUT,
        )
        .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.said(), "err");
        assert!(run_bounded(
            Path::new("/nonexistent/zentinel"),
            &[],
            DEFAULT_CHILD_TIMEOUT
        )
        .is_err());
    }
}
