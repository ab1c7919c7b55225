//! Old-master side of a binary upgrade: the state file it wrote for its successor, removed
//! whenever this master gives the upgrade up (an error before the successor starts, the
//! successor failing, a stop, a panic): dropping the guard removes it, so no path leaves it
//! behind. After a successful handover the successor has removed it already.

use std::io;
use std::path::{Path, PathBuf};

use zentinel_protocol::state::{write_state_file, MasterState, StateError};

/// The state file of one upgrade, removed on drop.
#[derive(Debug)]
pub struct HandoverStateFile {
    path: PathBuf,
}

impl HandoverStateFile {
    /// Write `state` to `path` (atomically; nothing is left behind on error).
    pub fn write(path: &Path, state: &MasterState) -> Result<Self, StateError> {
        write_state_file(path, state)?;
        Ok(HandoverStateFile {
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for HandoverStateFile {
    fn drop(&mut self) {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            // The successor removes it once it has read it.
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => tracing::warn!(
                path = %self.path.display(),
                error = %err,
                "cannot remove the upgrade state file"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zentinel_protocol::state::{ConfigSource, MasterMetrics};

    fn state() -> MasterState {
        MasterState {
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
        }
    }

    #[test]
    fn dropping_the_guard_removes_the_file_unless_the_successor_did() {
        let dir = std::env::temp_dir().join(format!(
            "zentinel-handover-state-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("zentinel-upgrade-1.state");

        // Given up (the successor failed, say): the file goes with the guard.
        let file = HandoverStateFile::write(&path, &state()).unwrap();
        assert!(file.path().is_file());
        drop(file);
        assert!(!path.exists(), "state file left behind");

        // Handed over: the successor removed it; dropping the guard is quiet.
        let file = HandoverStateFile::write(&path, &state()).unwrap();
        std::fs::remove_file(&path).unwrap();
        drop(file);
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
