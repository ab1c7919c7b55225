//! Test-only fault injection, so end-to-end tests can make a *real* build fail at one precise
//! step of an upgrade (the new master failing or dying before it confirms readiness, a new
//! worker dying after it reported ready) or serve badly (a canary that answers 500) — failures
//! a wrapper script around the binary cannot produce.
//!
//! Compiled in only with the `fault-injection` cargo feature (`cargo build --features
//! zentinel-master/fault-injection`, as `scripts/test.sh` builds the binaries the end-to-end
//! tests run). Without it there is no `Fault` and no `armed`, every fault site is compiled out
//! (`#[cfg(feature = "fault-injection")]`), [`respond_500`] is a constant `false`, and a set
//! `ZENTINEL_FAULT_INJECTION` is only reported ([`report_unavailable`]).
//!
//! Armed by `ZENTINEL_FAULT_INJECTION=<fault>@<binary path>`. The fault fires only in
//! processes running from exactly that binary (canonical path of `/proc/self/exe`): a rolling
//! upgrade's old and new masters and workers share one environment, and only the new binary
//! must misbehave. The target must be a *copy* of the binary: a symlink canonicalizes to the
//! file it names, which the old processes run too.

/// The environment variable that arms a fault.
pub const ENV_VAR: &str = "ZENTINEL_FAULT_INJECTION";

/// Whether this build carries the faults (the `fault-injection` feature).
pub const AVAILABLE: bool = cfg!(feature = "fault-injection");

#[cfg(feature = "fault-injection")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A new master (upgrade successor) exits (`process::exit`, no destructors) after adopting
    /// everything, before it confirms readiness to the old master.
    MasterExitBeforeReady,
    /// A new master fails at the same point through its normal error path: `take_over` returns
    /// an error and every adopted resource is dropped (tentatively owned: nothing destroyed).
    TakeoverFail,
    /// A new master panics at the same point (unwinding runs the same destructors).
    TakeoverPanic,
    /// A new master holds its confirmation, in its event loop, until the previous master is
    /// gone (or its adoption deadline passes): the window in which a test kills the old one.
    TakeoverDelay,
    /// The same hold for a fixed 5 s, without watching the previous master: its death before
    /// the confirmation shows only as EPIPE on the readiness pipe.
    TakeoverDelayUnwatched,
    /// A new master fails through the normal error path right after it asked the adopted
    /// workers for their status, before it reads any answer: the answers are left on the
    /// channels for the old master, which never asked (stale answers it must ignore).
    TakeoverFailUnanswered,
    /// A worker aborts shortly after it told the master it is ready.
    WorkerAbortAfterReady,
    /// A worker answers every HTTP request with a 500 without asking the upstream: a build
    /// that starts and stays up but serves errors, for the upgrade canary to catch.
    Respond500,
}

/// The fault armed for this process's binary, if any.
#[cfg(feature = "fault-injection")]
pub fn armed() -> Option<Fault> {
    let spec = std::env::var(ENV_VAR).ok()?;
    let exe = std::fs::canonicalize("/proc/self/exe").ok()?;
    armed_impl::fault_for(&spec, &exe)
}

/// The `respond-500` fault is armed (a worker's flag, read once at start): always `false`
/// without the feature.
pub fn respond_500() -> bool {
    #[cfg(feature = "fault-injection")]
    {
        armed() == Some(Fault::Respond500)
    }
    #[cfg(not(feature = "fault-injection"))]
    {
        false
    }
}

/// Without the feature, say once (at start-up, after logging is set up) that a set
/// `ZENTINEL_FAULT_INJECTION` does nothing here: a test run against a build without faults
/// then fails with this line in the log instead of a puzzling pass of the faulty step.
pub fn report_unavailable() {
    if !AVAILABLE {
        if let Ok(spec) = std::env::var(ENV_VAR) {
            tracing::warn!(
                spec,
                "{ENV_VAR} is set, but this build has no fault injection (built without the \
                 `fault-injection` feature); ignored"
            );
        }
    }
}

#[cfg(feature = "fault-injection")]
mod armed_impl {
    use super::{Fault, ENV_VAR};
    use std::path::{Path, PathBuf};

    fn parse(name: &str) -> Option<Fault> {
        match name {
            "master-exit-before-ready" => Some(Fault::MasterExitBeforeReady),
            "takeover-fail" => Some(Fault::TakeoverFail),
            "takeover-panic" => Some(Fault::TakeoverPanic),
            "takeover-delay" => Some(Fault::TakeoverDelay),
            "takeover-delay-unwatched" => Some(Fault::TakeoverDelayUnwatched),
            "takeover-fail-unanswered" => Some(Fault::TakeoverFailUnanswered),
            "worker-abort-after-ready" => Some(Fault::WorkerAbortAfterReady),
            "respond-500" => Some(Fault::Respond500),
            _ => None,
        }
    }

    /// `spec` (`fault@path`) applied to a process running `exe`.
    pub(super) fn fault_for(spec: &str, exe: &Path) -> Option<Fault> {
        let (name, path) = spec.split_once('@')?;
        let target = std::fs::canonicalize(path).unwrap_or_else(|_| PathBuf::from(path));
        if target != exe {
            return None;
        }
        let fault = parse(name);
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
                fault_for("takeover-fail@/opt/zentinel/new/zentinel", exe),
                Some(Fault::TakeoverFail)
            );
            assert_eq!(
                fault_for("takeover-panic@/opt/zentinel/new/zentinel", exe),
                Some(Fault::TakeoverPanic)
            );
            assert_eq!(
                fault_for("takeover-delay@/opt/zentinel/new/zentinel", exe),
                Some(Fault::TakeoverDelay)
            );
            assert_eq!(
                fault_for("takeover-delay-unwatched@/opt/zentinel/new/zentinel", exe),
                Some(Fault::TakeoverDelayUnwatched)
            );
            assert_eq!(
                fault_for("takeover-fail-unanswered@/opt/zentinel/new/zentinel", exe),
                Some(Fault::TakeoverFailUnanswered)
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
}
