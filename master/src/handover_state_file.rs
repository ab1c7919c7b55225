//! Old-master side of a binary upgrade: the state file it wrote for its successor, removed
//! whenever this master gives the upgrade up (an error before the successor starts, the
//! successor failing, a stop, a panic): dropping the guard removes it, so no path leaves it
//! behind. After a successful handover the successor has removed it already (right after
//! reading it). Mode 0600: it may hold the TLS session-ticket keys, the only place they are
//! ever written to disk.

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
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use zentinel_protocol::state::{ConfigSource, MasterMetrics};
    use zentinel_protocol::ticket_keys::{TicketKey, TicketKeys};

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
            ticket_keys: TicketKeys {
                keys: vec![TicketKey {
                    name: [1; 16],
                    secret: [0x5e; 32],
                    created_unix_s: 1,
                }],
                lifetime_s: 43_200,
            },
            session_cache: None,
            filter_segments: Vec::new(),
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
        // It holds the TLS session-ticket keys: readable by this user alone.
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "state file mode {mode:o}");
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            bytes.windows(32).any(|w| w == [0x5e; 32]),
            "the keys are in it"
        );
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
