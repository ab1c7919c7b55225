//! Zentinel's KDL configuration: parsing, validation and the embedded default.
//!
//! The output is `zentinel_protocol::config::ProxyConfig`, the model workers receive. Parsing
//! never stops at the first problem: every error found is returned, each located by file, line,
//! column and the KDL node it concerns, so an operator can fix a file in one pass.

mod include;
mod kdl_parse;
mod log_blocks;
mod observability;
mod validate;

#[cfg(test)]
mod error_pages_tests;
#[cfg(test)]
mod fallback_tests;
#[cfg(test)]
mod filters_tests;
#[cfg(test)]
mod include_tests;
#[cfg(test)]
mod legacy_state_tests;
#[cfg(test)]
mod log_blocks_tests;
#[cfg(test)]
mod namespace_tests;
#[cfg(test)]
mod policies_tests;
#[cfg(test)]
mod retry_breaker_tests;
#[cfg(test)]
mod routes_tests;
#[cfg(test)]
mod shadow_tests;
#[cfg(test)]
mod static_files_tests;
#[cfg(test)]
mod system_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tls_options_tests;
#[cfg(test)]
mod upstream_tls_tests;
#[cfg(test)]
mod upstreams_tests;
#[cfg(test)]
mod websocket_tests;

use std::fmt;
use std::path::Path;

pub use observability::LoggingConfig;
use zentinel_protocol::config::{MetricsConfig, ProxyConfig};
pub use zentinel_protocol::config_source::{ConfigSource, ConfigSourceFile};

/// The configuration used when no file is given on the command line.
pub const DEFAULT_CONFIG_KDL: &str = include_str!("default.kdl");

/// The file name reported for the embedded default in diagnostics and logs.
pub const DEFAULT_CONFIG_NAME: &str = "<embedded default>";

/// One problem found in a configuration file.
///
/// `line` and `column` are 1-based (the column counts characters, not bytes). Both are 0 when
/// the problem concerns the file as a whole (for example, it cannot be read); `node` is then
/// empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigDiagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub node: String,
    pub message: String,
}

impl fmt::Display for ConfigDiagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.node.is_empty() {
            write!(f, ": `{}`", self.node)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigDiagnostic {}

/// Parses and validates a configuration held in memory.
///
/// `file_name` only labels diagnostics. On success the routes are in evaluation order (priority,
/// then file order). On failure every diagnostic found is returned, sorted by position.
pub fn parse_config(source: &str, file_name: &str) -> Result<ProxyConfig, Vec<ConfigDiagnostic>> {
    parse_full_config(source, file_name).map(|full| full.proxy)
}

/// A whole configuration: what workers get, and what only the master uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullConfig {
    pub proxy: ProxyConfig,
    /// `observability { metrics { ... } }`; `None`: no metrics endpoint.
    pub metrics: Option<MetricsConfig>,
    /// `observability { logging { ... } }`: how the master and its workers log.
    pub logging: LoggingConfig,
    /// Settings accepted but worth telling the operator about (no effect here), in file order.
    pub warnings: Vec<ConfigDiagnostic>,
}

/// Like [`parse_config`], with the master-only parts.
/// `include` nodes resolve only against the text itself (nothing else is read): use
/// [`load_full_config`] for a file on disk.
pub fn parse_full_config(
    source: &str,
    file_name: &str,
) -> Result<FullConfig, Vec<ConfigDiagnostic>> {
    let only = ConfigSource {
        main_path: None,
        files: Vec::new(),
    };
    parse_with_includes(file_name, source, &mut include::Snapshot(&only))
}

/// Splices the includes of `main_text` (read from `store`), then parses and validates.
fn parse_with_includes(
    main_label: &str,
    main_text: &str,
    store: &mut dyn include::FileStore,
) -> Result<FullConfig, Vec<ConfigDiagnostic>> {
    let expanded = include::expand(main_label, main_text.to_owned(), store);
    if !expanded.errors.is_empty() {
        return Err(expanded.errors);
    }
    let source = expanded.text.as_str();
    let mut diags = kdl_parse::Diagnostics::with_map(source.len(), expanded.source_map());
    let parsed = kdl_parse::parse(source, &mut diags);
    let config = parsed.map(|parsed| validate::validate(parsed, &mut diags));
    let mut warnings = expanded.warnings.clone();
    warnings.extend(diags.take_warnings());
    match (config, diags.is_empty()) {
        (Some((proxy, metrics, logging)), true) => Ok(FullConfig {
            proxy,
            metrics,
            logging,
            warnings,
        }),
        _ => Err(diags.into_sorted()),
    }
}

/// Loads the configuration from `path`, or the embedded default when `path` is `None`.
///
/// Returns the configuration and the name of the file it came from (for logs).
pub fn load_config(path: Option<&Path>) -> Result<(ProxyConfig, String), Vec<ConfigDiagnostic>> {
    load_full_config(path).map(|loaded| (loaded.config.proxy, loaded.name))
}

/// A configuration as the master runs it: the parsed result and the text it was parsed from.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: FullConfig,
    /// The source, which a binary upgrade hands to the next master.
    pub source: ConfigSource,
    /// The main file's name for logs and status (`<embedded default>` without a file).
    pub name: String,
}

/// Like [`load_config`], with the master-only parts and the source text.
pub fn load_full_config(path: Option<&Path>) -> Result<LoadedConfig, Vec<ConfigDiagnostic>> {
    let source = read_config_source(path)?;
    parse_config_source(source)
}

/// Reads the configuration's text: the file at `path` (made absolute, so a reload finds it
/// whatever the current directory is then), or the embedded default.
pub fn read_config_source(path: Option<&Path>) -> Result<ConfigSource, Vec<ConfigDiagnostic>> {
    let Some(path) = path else {
        return Ok(ConfigSource {
            main_path: None,
            files: vec![ConfigSourceFile {
                path: DEFAULT_CONFIG_NAME.to_owned(),
                text: DEFAULT_CONFIG_KDL.to_owned(),
            }],
        });
    };
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    // Absolute: relative paths inside (certificates, includes) resolve against it, the same
    // for the master that read it and for a successor given its text.
    let file_name = absolute.display().to_string();
    let text = std::fs::read_to_string(&absolute).map_err(|err| {
        vec![ConfigDiagnostic {
            file: file_name.clone(),
            line: 0,
            column: 0,
            node: String::new(),
            message: format!("cannot read configuration file: {err}"),
        }]
    })?;
    // Every included file, as read now: the source the master runs and hands on.
    let mut disk = include::Disk::default();
    let expanded = include::expand(&file_name, text.clone(), &mut disk);
    if !expanded.errors.is_empty() {
        return Err(expanded.errors);
    }
    let mut files = vec![ConfigSourceFile {
        path: file_name.clone(),
        text,
    }];
    files.append(&mut disk.read);
    Ok(ConfigSource {
        main_path: Some(file_name),
        files,
    })
}

/// Parses a configuration from its source text: what a master does with the text it read at
/// start or reload, and what a new master does with the text its predecessor handed over in
/// the upgrade state (never re-reading the files from disk).
pub fn parse_config_source(source: ConfigSource) -> Result<LoadedConfig, Vec<ConfigDiagnostic>> {
    let Some(main) = source.main() else {
        return Err(vec![ConfigDiagnostic {
            file: source.main_path.clone().unwrap_or_default(),
            line: 0,
            column: 0,
            node: String::new(),
            message: "the configuration source holds no file".to_owned(),
        }]);
    };
    let config = parse_with_includes(&main.path, &main.text, &mut include::Snapshot(&source))?;
    let name = main.path.clone();
    Ok(LoadedConfig {
        config,
        source,
        name,
    })
}

/// `zentinel run -c PATH` with no file at PATH: like upstream Zentinel, write the embedded
/// default configuration there first (creating its directory), so a fresh install starts.
pub fn create_default_if_missing(path: &Path) -> Result<(), String> {
    if path.exists() {
        return Ok(());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create directory {}: {e}", dir.display()))?;
    }
    std::fs::write(path, DEFAULT_CONFIG_KDL.trim_start()).map_err(|e| {
        format!(
            "cannot write the default configuration to {}: {e}",
            path.display()
        )
    })?;
    tracing::info!(path = %path.display(), "wrote the embedded default configuration");
    Ok(())
}

/// Logs each warning of a configuration the master is about to run (start, reload, take-over).
pub fn log_warnings(warnings: &[ConfigDiagnostic]) {
    for warning in warnings {
        tracing::warn!(file = %warning.file, line = warning.line, "{warning}");
    }
}

/// Logs, once per configuration run, what it does that an operator might not expect but that
/// is no mistake: a TLS listener staples no OCSP response when it names no file and none was
/// fetched (its certificates name no responder, or none answered), although `ocsp-stapling` is
/// on (upstream's default). Called once the responses are fetched.
pub fn log_notes(config: &ProxyConfig) {
    for listener in &config.listeners {
        let Some(tls) = &listener.tls else { continue };
        let files = tls.ocsp_response.iter().count()
            + tls
                .additional_certs
                .iter()
                .filter(|c| c.ocsp_response.is_some())
                .count();
        if tls.ocsp_stapling && files == 0 {
            tracing::info!(
                listener = %listener.name,
                "listener `{}`: no OCSP response is stapled (ocsp-stapling is on, but no \
                 `ocsp-response` file is named and none was fetched from a responder its \
                 certificates name)",
                listener.name
            );
        }
    }
}
