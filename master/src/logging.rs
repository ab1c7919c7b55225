//! Logging set-up shared by the master and the worker processes.
//!
//! Logs go to stderr (workers inherit the master's stderr, so one stream carries both). The
//! filter comes from `RUST_LOG` when it is set, else from `--log-level`.

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::EnvFilter;

/// Default for `--log-level`.
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// Install the global subscriber. `log_level` is the `--log-level` value (an `EnvFilter`
/// directive such as `info` or `zentinel_worker=debug,info`), used when `RUST_LOG` is unset.
pub fn init(log_level: &str) -> Result<(), String> {
    let filter = match std::env::var(EnvFilter::DEFAULT_ENV) {
        Ok(value) if !value.trim().is_empty() => EnvFilter::try_new(&value)
            .map_err(|err| format!("invalid RUST_LOG \"{value}\": {err}"))?,
        _ => parse_log_level(log_level)?,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only help a person at a terminal; in files and journals they are noise.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init()
        .map_err(|err| format!("cannot initialise logging: {err}"))
}

/// A bare word must be a level: `EnvFilter` would otherwise take a typo such as `inf` for a
/// target name and silently log nothing.
fn parse_log_level(log_level: &str) -> Result<EnvFilter, String> {
    let invalid =
        |err: &dyn std::fmt::Display| format!("invalid --log-level \"{log_level}\": {err}");
    let is_directive_list = log_level.contains(['=', ',', '[']);
    if !is_directive_list {
        log_level
            .parse::<LevelFilter>()
            .map_err(|err| invalid(&err))?;
    }
    EnvFilter::try_new(log_level).map_err(|err| invalid(&err))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_directives_are_accepted() {
        for level in ["info", "DEBUG", "off", "zentinel_worker=debug,info"] {
            assert!(parse_log_level(level).is_ok(), "{level}");
        }
    }

    #[test]
    fn a_misspelt_level_is_refused() {
        let err = parse_log_level("inf").unwrap_err();
        assert!(err.contains("--log-level \"inf\""), "{err}");
    }
}
