//! The state file on disk: written atomically with mode 0600, read with a size bound.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use zeroize::Zeroizing;

use super::{decode_state, encode_state, MasterState, StateError};

/// A master state is a few KiB; anything this large is not one of ours, and refusing it before
/// reading keeps a wrong path (a disk image, /dev/zero) from exhausting memory.
const MAX_STATE_FILE_BYTES: u64 = 64 * 1024 * 1024;

fn io_error(path: &Path, source: io::Error) -> StateError {
    StateError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Prefix an error with what was being done, keeping its kind for callers that match on it.
fn with_context(source: io::Error, context: String) -> io::Error {
    io::Error::new(source.kind(), format!("{context}: {source}"))
}

/// Write the state to `path` atomically (temp file in the same directory, fsync, rename, fsync
/// of the directory), mode 0600. Errors name the path. On any error nothing is left behind:
/// neither the temp file nor, when a step after the rename fails, the file at `path`.
pub fn write_state_file(path: &std::path::Path, state: &MasterState) -> Result<(), StateError> {
    write_state_file_syncing(path, state, |dir| {
        File::open(dir).and_then(|d| d.sync_all())
    })
}

/// [`write_state_file`] with the directory fsync as a parameter (a test makes it fail).
fn write_state_file_syncing(
    path: &std::path::Path,
    state: &MasterState,
    sync_dir: impl FnOnce(&Path) -> io::Result<()>,
) -> Result<(), StateError> {
    static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

    let Some(file_name) = path.file_name() else {
        return Err(io_error(
            path,
            io::Error::new(io::ErrorKind::InvalidInput, "path does not name a file"),
        ));
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut temp_name = OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(format!(
        ".tmp.{}.{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let temp_path = dir.join(temp_name);

    let bytes = encode_state(state);
    // create_new: never follow or reuse whatever sits at the temp name (a stale file, a
    // symlink planted by someone else); mode 0600 because the state lists fd numbers and paths
    // and may hold the TLS session-ticket keys.
    let result = (|| -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp_path)
            .map_err(|e| {
                with_context(
                    e,
                    format!("cannot create temp file {}", temp_path.display()),
                )
            })?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| {
                with_context(e, format!("cannot write temp file {}", temp_path.display()))
            })?;
        drop(file);
        std::fs::rename(&temp_path, path).map_err(|e| {
            with_context(
                e,
                format!("cannot rename temp file {}", temp_path.display()),
            )
        })
    })();
    if let Err(e) = result {
        // Best effort: the temp file may not exist (create failed); the original error is
        // the one worth reporting.
        let _ = std::fs::remove_file(&temp_path);
        return Err(io_error(path, e));
    }
    // The rename is only durable once the directory entry is. A failure fails the write, so
    // the caller gives up the upgrade: the file it would never hand over must go too.
    sync_dir(dir).map_err(|e| {
        let mut context = format!("cannot fsync directory {}", dir.display());
        match std::fs::remove_file(path) {
            Ok(()) => context.push_str(" (the state file was removed)"),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => context.push_str(&format!(" (and cannot remove the state file: {err})")),
        }
        io_error(path, with_context(e, context))
    })
}

/// Read and check the state file at `path`, in any format this binary reads, converted to the
/// latest. Errors name the path; no content makes it panic.
pub fn read_state_file(path: &std::path::Path) -> Result<MasterState, StateError> {
    let file = File::open(path).map_err(|e| io_error(path, e))?;
    let len = file.metadata().map_err(|e| io_error(path, e))?.len();
    if len > MAX_STATE_FILE_BYTES {
        return Err(StateError::Corrupt {
            path: path.display().to_string(),
            reason: format!(
                "{len} bytes, larger than any state file (limit {MAX_STATE_FILE_BYTES})"
            ),
        });
    }
    // Only a size hint: `len` is at most MAX_STATE_FILE_BYTES. Sized to the file so that
    // reading does not reallocate, and zeroed when dropped: the state may hold the TLS
    // session-ticket keys.
    let mut bytes = Zeroizing::new(Vec::with_capacity(usize::try_from(len).unwrap_or(0)));
    // take(): the file may grow between metadata and read; never read past the limit.
    file.take(MAX_STATE_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_error(path, e))?;
    if bytes.len() as u64 > MAX_STATE_FILE_BYTES {
        return Err(StateError::Corrupt {
            path: path.display().to_string(),
            reason: format!("grew past the {MAX_STATE_FILE_BYTES}-byte limit while being read"),
        });
    }
    decode_state(&bytes, &path.display().to_string())
}

#[cfg(test)]
mod write_tests {
    use super::*;
    use crate::state::{ConfigSource, MasterMetrics};

    #[test]
    fn a_failed_directory_fsync_leaves_no_state_file_behind() {
        let dir = std::env::temp_dir().join(format!(
            "zentinel-state-dirsync-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("zentinel-upgrade-1.state");
        let state = MasterState {
            previous_master_pid: 1,
            generation: 2,
            config_source: ConfigSource {
                main_path: None,
                files: Vec::new(),
            },
            log_level: "info".to_owned(),
            control_socket_path: "/run/z.sock".to_owned(),
            control_socket_fd: 3,
            previous_binary: "/usr/bin/zentinel".to_owned(),
            previous_executable_fd: 4,
            listeners: Vec::new(),
            workers: Vec::new(),
            upgrade: None,
            metrics_listener: None,
            metrics: MasterMetrics::default(),
            ticket_keys: Default::default(),
            session_cache: None,
            filter_segments: Vec::new(),
        };
        let mut synced = None;
        let err = write_state_file_syncing(&path, &state, |d| {
            // The file is complete and in place when the directory is synced.
            synced = Some((d.to_owned(), path.exists()));
            Err(io::Error::other("input/output error (injected)"))
        })
        .unwrap_err();
        assert_eq!(synced, Some((dir.clone(), true)));
        let message = err.to_string();
        assert!(
            message.contains("cannot fsync directory")
                && message.contains("the state file was removed")
                && message.contains(&path.display().to_string()),
            "{message}"
        );
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
        std::fs::remove_dir_all(&dir).unwrap();

        // The same write with a working sync keeps the file.
        std::fs::create_dir_all(&dir).unwrap();
        write_state_file(&path, &state).unwrap();
        assert_eq!(read_state_file(&path).unwrap(), state);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
