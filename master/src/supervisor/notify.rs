//! What the master tells outside: systemd (READY, RELOADING, STATUS) and the pid file.

use super::*;

impl Supervisor {
    /// `system { pid-file }`: this master serves from now on.
    pub(super) fn write_pid_file(&self) {
        if let Some(path) = &self.config.system.pid_file {
            crate::pid_file::write(path, std::process::id());
        }
    }

    /// systemd's `STATUS=` while serving.
    pub(super) fn serving_status(&self) -> String {
        format!(
            "serving: {} worker(s), generation {}, config {}",
            self.slots.len(),
            self.generation,
            self.config_name
        )
    }

    /// systemd: a reload is about to begin (RELOADING=1). Not when the master is busy: the
    /// request is refused then, and an upgrade in progress has its own RELOADING=1/READY=1.
    pub(super) fn reload_announce(&mut self) {
        if self.notify_reloading || self.busy_reason().is_some() {
            return;
        }
        self.notify_reloading = true;
        let what = self
            .config_source
            .main_path
            .clone()
            .unwrap_or_else(|| self.config_name.clone());
        systemd::reloading(&format!("reloading {what}"));
    }

    /// systemd: the announced reload is over, committed, rolled back or refused (READY=1;
    /// `zentinel-ctl reload`'s exit status says which). A stop that abandoned it said
    /// STOPPING=1 instead.
    pub(super) fn reload_notify_done(&mut self) {
        if !self.notify_reloading || self.reload.is_some() {
            return;
        }
        self.notify_reloading = false;
        if !matches!(self.phase, Phase::Stopping { .. }) {
            systemd::ready(&self.serving_status());
        }
    }
}
