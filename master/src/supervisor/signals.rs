//! Signals, read from the signalfd: stop (graceful or fast), reload, rolling upgrade.

use super::*;

impl Supervisor {
    pub(super) fn handle_signals(&mut self) {
        loop {
            let info = match self.signals.read_signal() {
                Ok(Some(info)) => info,
                Ok(None) => return,
                Err(Errno::EINTR) => continue,
                Err(err) => {
                    error!(error = %err, "cannot read the signalfd");
                    return;
                }
            };
            let signal = i32::try_from(info.ssi_signo)
                .ok()
                .and_then(|n| Signal::try_from(n).ok());
            match signal {
                Some(Signal::SIGCHLD) => {} // reaped after the event batch
                Some(signal @ (Signal::SIGTERM | Signal::SIGQUIT | Signal::SIGINT))
                    if self.tentative() =>
                {
                    self.adoption_stop(format!("{} (from pid {})", signal.as_str(), info.ssi_pid));
                }
                Some(signal @ (Signal::SIGTERM | Signal::SIGQUIT)) => {
                    info!(
                        signal = signal.as_str(),
                        sender_pid = info.ssi_pid,
                        "graceful stop requested"
                    );
                    self.begin_stop(StopKind::Graceful, None, None);
                }
                Some(Signal::SIGINT) => {
                    info!(sender_pid = info.ssi_pid, "fast stop requested (SIGINT)");
                    self.begin_stop(StopKind::Fast, None, None);
                }
                Some(Signal::SIGHUP) => {
                    info!(
                        sender_pid = info.ssi_pid,
                        "configuration reload requested (SIGHUP)"
                    );
                    self.reload_announce();
                    self.begin_reload(None, None);
                }
                Some(Signal::SIGUSR2) => {
                    info!(
                        sender_pid = info.ssi_pid,
                        "rolling binary upgrade requested (SIGUSR2)"
                    );
                    self.begin_upgrade(
                        None,
                        zentinel_protocol::control::UpgradeRequest {
                            binary: None,
                            rolling: true,
                            drain_timeout_ms: None,
                            ready_timeout_ms: None,
                            canary: None,
                        },
                    );
                }
                _ => debug!(signo = info.ssi_signo, "ignoring unexpected signal"),
            }
        }
    }
}
