//! Logging set-up shared by the master and the worker processes.
//!
//! Logs go to stderr (workers inherit the master's stderr, so one stream carries both), as text
//! or as one JSON object per line, and optionally also to an error log file (warnings and
//! errors, or errors only; buffered, see [`crate::error_log_file`]). The level comes from `RUST_LOG` when it is set, else from an
//! explicit `--log-level`/`--verbose`, else from the configuration's `observability { logging
//! { level } }`, else `info`.
//!
//! The master decides the settings once, from its command line and configuration, and hands
//! them to every worker on the worker's command line ([`LogSettings::worker_args`]), so the
//! processes of one master always log alike. A reload that changes them takes effect at the
//! next start or binary upgrade (the reload says so).

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::error_log_file::ErrorLogFile;

/// Default for `--log-level`.
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// How logs are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// An `EnvFilter` directive (`info`, `zentinel_worker=debug,info`); `RUST_LOG` wins.
    pub level: String,
    /// One JSON object per line instead of text.
    pub json: bool,
    /// Each line starts with its time (`timestamps #false` leaves it to a journal that adds
    /// its own).
    pub timestamps: bool,
    /// Also append warnings and errors to this file.
    pub error_log: Option<ErrorLog>,
}

/// `observability { logging { error-log { file; level; buffer-size } } }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorLog {
    /// Absolute path, opened in append mode by the master and by every worker.
    pub file: String,
    /// Only errors (`level "error"`); otherwise warnings too.
    pub errors_only: bool,
    /// Bytes each process holds before writing (0: every line at once).
    pub buffer_size: usize,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            level: DEFAULT_LOG_LEVEL.to_owned(),
            json: false,
            timestamps: true,
            error_log: None,
        }
    }
}

impl LogSettings {
    /// The settings a master runs with: an explicit `--log-level` wins over the
    /// configuration's `level`, which wins over `info`.
    pub fn resolve(explicit_level: Option<&str>, config: &crate::config::LoggingConfig) -> Self {
        LogSettings {
            level: explicit_level
                .map(str::to_owned)
                .or_else(|| config.level.clone())
                .unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_owned()),
            json: config.json,
            timestamps: config.timestamps.unwrap_or(true),
            error_log: config.error_log.clone(),
        }
    }

    /// The arguments that make a worker log like this (see the worker's command line).
    pub fn worker_args(&self) -> Vec<String> {
        let mut args = vec!["--log-level".to_owned(), self.level.clone()];
        if self.json {
            args.extend(["--log-format".to_owned(), "json".to_owned()]);
        }
        if !self.timestamps {
            args.push("--log-no-timestamps".to_owned());
        }
        if let Some(error_log) = &self.error_log {
            args.extend(["--error-log".to_owned(), error_log.file.clone()]);
            if error_log.errors_only {
                args.push("--error-log-errors-only".to_owned());
            }
            args.extend([
                "--error-log-buffer-size".to_owned(),
                error_log.buffer_size.to_string(),
            ]);
        }
        args
    }
}

/// Writes the buffered error log when dropped: held by `main` so that every way out of the
/// process (but a crash) writes the last warnings.
pub struct FlushOnExit;

impl Drop for FlushOnExit {
    fn drop(&mut self) {
        crate::error_log_file::flush();
    }
}

/// Install the global subscriber.
pub fn init(settings: &LogSettings) -> Result<(), String> {
    let filter = match std::env::var(EnvFilter::DEFAULT_ENV) {
        Ok(value) if !value.trim().is_empty() => EnvFilter::try_new(&value)
            .map_err(|err| format!("invalid RUST_LOG \"{value}\": {err}"))?,
        _ => parse_log_level(&settings.level)?,
    };
    // Colour codes only help a person at a terminal; in files and journals they are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let stderr = output_layer(settings, std::io::stderr, ansi);
    let error_log = match &settings.error_log {
        Some(error_log) => {
            let file = ErrorLogFile::open(&error_log.file, error_log.buffer_size)
                .map_err(|err| format!("cannot open the error log {}: {err}", error_log.file))?;
            file.install(&error_log.file);
            let level = if error_log.errors_only {
                LevelFilter::ERROR
            } else {
                LevelFilter::WARN
            };
            Some(output_layer(settings, file, false).with_filter(level))
        }
        None => None,
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(error_log)
        .try_init()
        .map_err(|err| format!("cannot initialise logging: {err}"))
}

/// A text or JSON formatting layer writing to `writer`.
fn output_layer<S, W>(
    settings: &LogSettings,
    writer: W,
    ansi: bool,
) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi);
    match (settings.json, settings.timestamps) {
        (true, true) => layer.json().boxed(),
        (true, false) => layer.json().without_time().boxed(),
        (false, true) => layer.boxed(),
        (false, false) => layer.without_time().boxed(),
    }
}

/// A bare word must be a level: `EnvFilter` would otherwise take a typo such as `inf` for a
/// target name and silently log nothing.
fn parse_log_level(log_level: &str) -> Result<EnvFilter, String> {
    let invalid = |err: &dyn std::fmt::Display| format!("invalid log level \"{log_level}\": {err}");
    let is_directive_list = log_level.contains(['=', ',', '[']);
    if !is_directive_list {
        log_level
            .parse::<LevelFilter>()
            .map_err(|err| invalid(&err))?;
    }
    EnvFilter::try_new(log_level).map_err(|err| invalid(&err))
}

/// Whether `level` is one [`init`] accepts (for the configuration's `level`, checked at parse
/// time with its line).
pub fn check_level(level: &str) -> Result<(), String> {
    parse_log_level(level).map(|_| ())
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
        assert!(err.contains("log level \"inf\""), "{err}");
    }

    #[test]
    fn worker_args_carry_every_setting() {
        let settings = LogSettings {
            level: "debug".to_owned(),
            json: true,
            timestamps: false,
            error_log: Some(ErrorLog {
                file: "/var/log/zentinel/error.log".to_owned(),
                errors_only: true,
                buffer_size: 0,
            }),
        };
        assert_eq!(
            settings.worker_args(),
            [
                "--log-level",
                "debug",
                "--log-format",
                "json",
                "--log-no-timestamps",
                "--error-log",
                "/var/log/zentinel/error.log",
                "--error-log-errors-only",
                "--error-log-buffer-size",
                "0"
            ]
        );
        assert_eq!(
            LogSettings::default().worker_args(),
            ["--log-level", "info"]
        );
    }
}
