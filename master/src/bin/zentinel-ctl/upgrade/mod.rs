//! `zentinel-ctl upgrade`: the pre-flight checks ([`preflight`]) and the `--dry-run` plan
//! ([`plan`]) before anything changes, then the request and its progress ([`progress`]).

mod plan;
mod preflight;
mod progress;

use std::path::Path;

use zentinel_protocol::control::{CanaryPolicy, ControlRequest, UpgradeRequest};

use crate::cli::{absolute_config_path, Cli, UpgradeArgs};
use crate::client::Connection;
use crate::{millis, CtlResult, DEFAULT_READY, LONG_OPERATION_MARGIN};

/// `upgrade`: pre-flight (unless `--no-preflight`), the plan with `--dry-run`, else the
/// upgrade itself.
pub(crate) fn run(socket: &Path, cli: &Cli, args: &UpgradeArgs) -> CtlResult<()> {
    let binary = args
        .binary
        .as_deref()
        .map(|path| absolute_config_path(path).map_err(|e| e.replacen("config path", "binary", 1)))
        .transpose()?;
    if !args.no_preflight {
        // Its own connection: the pre-flight may take a while, and the upgrade request
        // goes on a fresh one the new master inherits.
        let report = Connection::open(socket, cli.timeout)?.status(cli.timeout)?;
        let fetch_source = || Connection::open(socket, cli.timeout)?.running_config(cli.timeout);
        let outcome = preflight::run(&report, binary.as_deref(), args, &fetch_source)?;
        if args.dry_run {
            return plan::print(&report, &outcome, args);
        }
    }
    let ready = args.ready_timeout.unwrap_or(DEFAULT_READY);
    let request = upgrade_request(args, binary);
    let mut conn = Connection::open(socket, cli.timeout)?;
    conn.upgrade(
        &request,
        cli.timeout.max(ready + LONG_OPERATION_MARGIN),
        args.json,
    )
    .map_err(|reason| {
        // Only reachable with --no-preflight: the pre-flight checks the master's
        // features first.
        if matches!(request, ControlRequest::UpgradeWith(_)) && reason.contains("invalid request") {
            format!(
                "{reason} (the running master predates --canary: upgrade without it \
                 first)"
            )
        } else {
            reason
        }
    })
}

/// The request for `args`: the protocol 2 `Upgrade` unless an option needs `UpgradeWith`,
/// so that a master predating those options still takes every upgrade it can carry out.
fn upgrade_request(args: &UpgradeArgs, binary: Option<String>) -> ControlRequest {
    let request = UpgradeRequest {
        binary,
        rolling: args.rolling,
        drain_timeout_ms: args.drain_timeout.map(millis),
        ready_timeout_ms: args.ready_timeout.map(millis),
        canary: args.canary.map(|window| CanaryPolicy {
            duration_ms: millis(window),
            max_excess_basis_points: args
                .max_error_rate
                .unwrap_or(CanaryPolicy::DEFAULT_MAX_EXCESS_BASIS_POINTS),
        }),
    };
    if request.canary.is_some() {
        return ControlRequest::UpgradeWith(Box::new(request));
    }
    ControlRequest::Upgrade {
        binary: request.binary,
        rolling: request.rolling,
        drain_timeout_ms: request.drain_timeout_ms,
        ready_timeout_ms: request.ready_timeout_ms,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;
    use zentinel_protocol::control::CanaryPolicy;

    use super::*;
    use crate::cli::Command;

    #[test]
    fn canary_goes_in_the_extended_request_only() {
        let args = |extra: &[&str]| {
            let mut argv = vec!["zentinel-ctl", "upgrade", "--rolling"];
            argv.extend_from_slice(extra);
            match Cli::try_parse_from(argv).unwrap().command {
                Command::Upgrade(args) => args,
                other => panic!("{other:?}"),
            }
        };
        // Without a canary, the request an older master understands.
        assert!(matches!(
            upgrade_request(&args(&[]), None),
            ControlRequest::Upgrade { rolling: true, .. }
        ));
        match upgrade_request(
            &args(&["--canary", "30s", "--max-error-rate", "0.25"]),
            None,
        ) {
            ControlRequest::UpgradeWith(request) => assert_eq!(
                request.canary,
                Some(CanaryPolicy {
                    duration_ms: 30_000,
                    max_excess_basis_points: 25,
                })
            ),
            other => panic!("{other:?}"),
        }
        match upgrade_request(&args(&["--canary", "5s"]), None) {
            ControlRequest::UpgradeWith(request) => assert_eq!(
                request.canary.map(|c| c.max_excess_basis_points),
                Some(CanaryPolicy::DEFAULT_MAX_EXCESS_BASIS_POINTS)
            ),
            other => panic!("{other:?}"),
        }
        // --canary needs --rolling; --max-error-rate needs --canary.
        assert!(Cli::try_parse_from(["zentinel-ctl", "upgrade", "--canary", "5s"]).is_err());
        assert!(Cli::try_parse_from([
            "zentinel-ctl",
            "upgrade",
            "--rolling",
            "--max-error-rate",
            "1"
        ])
        .is_err());
    }
}
