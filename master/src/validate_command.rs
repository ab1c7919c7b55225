//! `zentinel validate`: `-t`, then the checks upstream Zentinel's `validate` makes of what the
//! configuration refers to. Every upstream target must accept a TCP connection (refused or
//! unresolvable: an error; no answer within the timeout: a warning, as the network may just be
//! slow), and every TLS certificate and key must load (which `-t` already does here: a missing
//! or mismatched file is a configuration error).

use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use crate::config;

/// How long one target may take to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Which checks run beyond parsing.
#[derive(Debug, Clone, Copy)]
pub struct Checks {
    pub network: bool,
    pub certificates: bool,
}

/// The outcome of one check.
enum Finding {
    Error(String),
    Warning(String),
}

/// Runs the command: 0 when every check passed (warnings allowed), 1 otherwise.
pub fn run(path: Option<&Path>, checks: Checks) -> ExitCode {
    let loaded = match config::load_full_config(path) {
        Ok(loaded) => loaded,
        Err(diagnostics) => {
            println!("✗ Configuration schema validation failed");
            for diagnostic in &diagnostics {
                println!("  ✗ {diagnostic}");
            }
            return ExitCode::from(1);
        }
    };
    println!("✓ Configuration schema valid");
    let mut findings = Vec::new();
    if checks.network {
        println!("Checking upstream connectivity...");
        for upstream in &loaded.config.proxy.upstreams {
            for target in &upstream.targets {
                findings.extend(check_target(&upstream.name, &target.address));
            }
        }
    }
    if checks.certificates {
        // Loading the configuration has loaded every certificate and key (and matched them).
        let count = loaded
            .config
            .proxy
            .listeners
            .iter()
            .filter(|l| l.tls.is_some())
            .count();
        println!("Validating TLS certificates... ({count} TLS listener(s), all loaded)");
    }
    let errors: Vec<&String> = findings
        .iter()
        .filter_map(|f| match f {
            Finding::Error(m) => Some(m),
            Finding::Warning(_) => None,
        })
        .collect();
    let warnings: Vec<&String> = findings
        .iter()
        .filter_map(|f| match f {
            Finding::Warning(m) => Some(m),
            Finding::Error(_) => None,
        })
        .collect();
    if errors.is_empty() {
        println!("✓ All validation checks passed");
    } else {
        println!("✗ Validation failed");
        println!("Errors:");
        for error in &errors {
            println!("  ✗ {error}");
        }
    }
    if !warnings.is_empty() {
        println!("Warnings:");
        for warning in &warnings {
            println!("  ⚠  {warning}");
        }
    }
    ExitCode::from(if errors.is_empty() { 0 } else { 1 })
}

fn check_target(upstream: &str, address: &str) -> Option<Finding> {
    let resolved = match address.to_socket_addrs() {
        Ok(addrs) => addrs.collect::<Vec<_>>(),
        Err(e) => {
            return Some(Finding::Error(format!(
                "upstream \"{upstream}\": target {address} does not resolve: {e}"
            )))
        }
    };
    let Some(first) = resolved.first() else {
        return Some(Finding::Error(format!(
            "upstream \"{upstream}\": target {address} resolves to no address"
        )));
    };
    match TcpStream::connect_timeout(first, CONNECT_TIMEOUT) {
        Ok(_) => None,
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Some(Finding::Warning(format!(
            "upstream \"{upstream}\": target {address} did not answer within {}s",
            CONNECT_TIMEOUT.as_secs()
        ))),
        Err(e) => Some(Finding::Error(format!(
            "upstream \"{upstream}\": target {address} is unreachable: {e}"
        ))),
    }
}
