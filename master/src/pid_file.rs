//! `system { pid-file "..." }`: the master's pid, for init scripts and monitoring that expect
//! one (nginx's and upstream Zentinel's habit).
//!
//! The file always names the master that serves: a fresh master writes it once its workers
//! run, a successor master of a binary upgrade rewrites it when it takes over (and a master
//! whose successor failed writes itself back), and a master that stops removes it, but only
//! while it still names that master.

use std::io::Write;
use std::path::Path;

/// Writes `pid` to `path` atomically (a temp file renamed over it). Errors are logged, not
/// fatal: a pid file is a convenience, never a reason to stop serving.
pub fn write(path: &str, pid: u32) {
    let target = Path::new(path);
    let temp = target.with_file_name(format!(
        ".{}.tmp.{pid}",
        target
            .file_name()
            .map_or_else(|| "pid".into(), |n| n.to_string_lossy())
    ));
    let result = std::fs::File::create(&temp)
        .and_then(|mut file| file.write_all(format!("{pid}\n").as_bytes()))
        .and_then(|()| std::fs::rename(&temp, target));
    match result {
        Ok(()) => tracing::info!(path, pid, "pid file written"),
        Err(err) => {
            let _ = std::fs::remove_file(&temp);
            tracing::error!(path, pid, error = %err, "cannot write the pid file");
        }
    }
}

/// Removes `path` if it still names `pid` (a successor may have written its own).
pub fn remove_if_ours(path: &str, pid: u32) {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim() == pid.to_string() => {
            if let Err(err) = std::fs::remove_file(path) {
                tracing::warn!(path, error = %err, "cannot remove the pid file");
            }
        }
        _ => {}
    }
}
