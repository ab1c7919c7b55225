//! Test-only fault injection, so end-to-end tests can make a *real* build fail at one precise
//! step of an upgrade (the new master dying before it confirms readiness, a new worker dying
//! after it reported ready) or serve badly (a canary that answers 500) — failures a wrapper
//! script around the binary cannot produce.
//!
//! Armed by `ZENTINEL_FAULT_INJECTION=<fault>@<binary path>`. The fault fires only in
//! processes running from exactly that binary (canonical path of `/proc/self/exe`): a rolling
//! upgrade's old and new masters and workers share one environment, and only the new binary
//! must misbehave. Unset (always, in production) it costs one environment lookup at start-up.

use std::path::{Path, PathBuf};

/// The environment variable that arms a fault.
pub const ENV_VAR: &str = "ZENTINEL_FAULT_INJECTION";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A new master (upgrade successor) exits after adopting everything, before it confirms
    /// readiness to the old master.
    MasterExitBeforeReady,
    /// A worker aborts shortly after it told the master it is ready.
    WorkerAbortAfterReady,
    /// A worker answers every HTTP request with a 500 without asking the upstream: a build
    /// that starts and stays up but serves errors, for the upgrade canary to catch.
    Respond500,
}

impl Fault {
    fn parse(name: &str) -> Option<Fault> {
        match name {
            "master-exit-before-ready" => Some(Fault::MasterExitBeforeReady),
            "worker-abort-after-ready" => Some(Fault::WorkerAbortAfterReady),
            "respond-500" => Some(Fault::Respond500),
            _ => None,
        }
    }
}

/// The fault armed for this process's binary, if any.
pub fn armed() -> Option<Fault> {
    let spec = std::env::var(ENV_VAR).ok()?;
    let exe = std::fs::canonicalize("/proc/self/exe").ok()?;
    fault_for(&spec, &exe)
}

/// `spec` (`fault@path`) applied to a process running `exe`.
fn fault_for(spec: &str, exe: &Path) -> Option<Fault> {
    let (name, path) = spec.split_once('@')?;
    let target = std::fs::canonicalize(path).unwrap_or_else(|_| PathBuf::from(path));
    if target != exe {
        return None;
    }
    let fault = Fault::parse(name);
    if fault.is_none() {
        tracing::warn!(spec, "{ENV_VAR}: unknown fault, ignored");
    }
    fault
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_only_for_the_named_binary() {
        let exe = Path::new("/opt/zentinel/new/zentinel");
        assert_eq!(
            fault_for("worker-abort-after-ready@/opt/zentinel/new/zentinel", exe),
            Some(Fault::WorkerAbortAfterReady)
        );
        assert_eq!(
            fault_for("worker-abort-after-ready@/opt/zentinel/old/zentinel", exe),
            None
        );
        assert_eq!(
            fault_for("master-exit-before-ready@/opt/zentinel/new/zentinel", exe),
            Some(Fault::MasterExitBeforeReady)
        );
        assert_eq!(
            fault_for("respond-500@/opt/zentinel/new/zentinel", exe),
            Some(Fault::Respond500)
        );
        assert_eq!(
            fault_for("no-such-fault@/opt/zentinel/new/zentinel", exe),
            None
        );
        assert_eq!(fault_for("worker-abort-after-ready", exe), None);
    }
}
