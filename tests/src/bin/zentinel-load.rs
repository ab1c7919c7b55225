//! `zentinel-load`: an HTTP/1.1 load generator (plain or TLS) with exact accounting. See
//! `zentinel_tests::loadgen` and `zentinel-load --help`.
//!
//! Prints a human summary, then as the LAST line
//! `requests=N failed=N rps=N p50_ms=X p99_ms=X max_ms=X`.
//! Exit: 0 no failure, 1 failures, 2 usage error, 3 no request could be made.

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use zentinel_tests::loadgen;

/// Set by SIGINT/SIGTERM; the event loops check it at least every 10 ms.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() -> Result<(), nix::Error> {
    let action = SigAction::new(
        SigHandler::Handler(on_stop_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to a static AtomicBool, which is async-signal-safe,
        // and replaces no handler another part of this program relies on.
        unsafe { sigaction(signal, &action) }?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let config = match loadgen::parse_args(std::env::args().skip(1)) {
        Ok(Some(c)) => c,
        Ok(None) => {
            println!("{}", loadgen::usage());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("zentinel-load: {e}\n{}", loadgen::usage());
            return ExitCode::from(2);
        }
    };
    if let Err(e) = install_signal_handlers() {
        eprintln!("zentinel-load: cannot install SIGINT/SIGTERM handlers: {e}");
        return ExitCode::from(3);
    }

    let report = loadgen::run(&config, &STOP);
    let mut code = report.exit_code();

    if let Some(path) = &config.json {
        let text = serde_json::to_string_pretty(&report.json(&config)).unwrap_or_default();
        if let Err(e) = std::fs::write(path, text + "\n") {
            eprintln!("zentinel-load: writing --json {}: {e}", path.display());
            code = code.max(3);
        }
    }
    if let Some(path) = &config.timeline_csv {
        if let Err(e) = std::fs::write(path, report.csv()) {
            eprintln!(
                "zentinel-load: writing --timeline-csv {}: {e}",
                path.display()
            );
            code = code.max(3);
        }
    }
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "{}", report.summary(&config));
    let _ = writeln!(out, "{}", report.final_line());
    let _ = out.flush();
    ExitCode::from(code)
}
