//! Zentinel's KDL configuration: parsing, validation and the embedded default.
//!
//! The output is `zentinel_protocol::config::ProxyConfig`, the model workers receive. Parsing
//! never stops at the first problem: every error found is returned, each located by file, line,
//! column and the KDL node it concerns, so an operator can fix a file in one pass.

mod kdl_parse;
mod observability;
mod validate;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::Path;

use zentinel_protocol::config::{MetricsConfig, ProxyConfig};

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
}

/// Like [`parse_config`], with the master-only parts.
pub fn parse_full_config(
    source: &str,
    file_name: &str,
) -> Result<FullConfig, Vec<ConfigDiagnostic>> {
    let mut diags = kdl_parse::Diagnostics::new(source, file_name);
    let parsed = kdl_parse::parse(source, &mut diags);
    let config = parsed.map(|parsed| validate::validate(parsed, &mut diags));
    match (config, diags.is_empty()) {
        (Some((proxy, metrics)), true) => Ok(FullConfig { proxy, metrics }),
        _ => Err(diags.into_sorted()),
    }
}

/// Loads the configuration from `path`, or the embedded default when `path` is `None`.
///
/// Returns the configuration and the name of the file it came from (for logs).
pub fn load_config(path: Option<&Path>) -> Result<(ProxyConfig, String), Vec<ConfigDiagnostic>> {
    load_full_config(path).map(|(full, name)| (full.proxy, name))
}

/// Like [`load_config`], with the master-only parts.
pub fn load_full_config(
    path: Option<&Path>,
) -> Result<(FullConfig, String), Vec<ConfigDiagnostic>> {
    let Some(path) = path else {
        let config = parse_full_config(DEFAULT_CONFIG_KDL, DEFAULT_CONFIG_NAME)?;
        return Ok((config, DEFAULT_CONFIG_NAME.to_owned()));
    };
    let file_name = path.display().to_string();
    let source = std::fs::read_to_string(path).map_err(|err| {
        vec![ConfigDiagnostic {
            file: file_name.clone(),
            line: 0,
            column: 0,
            node: String::new(),
            message: format!("cannot read configuration file: {err}"),
        }]
    })?;
    let config = parse_full_config(&source, &file_name)?;
    Ok((config, file_name))
}
