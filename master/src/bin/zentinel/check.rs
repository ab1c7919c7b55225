//! `-t` / `zentinel test` and `--check-source`: a configuration checked and its errors
//! printed, without binding anything.

use std::path::Path;
use std::process::ExitCode;

use zentinel_master::config::{self, ConfigDiagnostic, DEFAULT_CONFIG_NAME};

use crate::{fail, EXIT_FAILURE, EXIT_INVALID_CONFIG};

fn config_name(path: Option<&Path>) -> String {
    path.map_or_else(
        || DEFAULT_CONFIG_NAME.to_owned(),
        |p| p.display().to_string(),
    )
}

pub(crate) fn print_diagnostics(path: Option<&Path>, diagnostics: &[ConfigDiagnostic]) {
    for diagnostic in diagnostics {
        eprintln!("{diagnostic}");
    }
    eprintln!(
        "zentinel: configuration {} is invalid ({} error{})",
        config_name(path),
        diagnostics.len(),
        if diagnostics.len() == 1 { "" } else { "s" }
    );
}

/// `-t`: like upstream Zentinel's and `nginx -t`. Parses and validates only; it does not
/// bind, so it also works next to a running instance. The success line is upstream's, naming
/// the file as given (`(embedded)` for the embedded default).
pub(crate) fn check(path: Option<&Path>) -> ExitCode {
    match config::load_full_config(path) {
        Ok(loaded) => {
            for warning in &loaded.config.warnings {
                eprintln!("warning: {warning}");
            }
            let name = path.map_or_else(|| "(embedded)".to_owned(), |p| p.display().to_string());
            println!("zentinel: configuration file {name} test is successful");
            ExitCode::SUCCESS
        }
        Err(diagnostics) => {
            print_diagnostics(path, &diagnostics);
            ExitCode::from(EXIT_INVALID_CONFIG)
        }
    }
}

/// `--check-source FILE`: `-t` on the source text a running master would hand over.
pub(crate) fn check_source(file: &Path) -> ExitCode {
    let source = match std::fs::read(file)
        .map_err(|e| e.to_string())
        .and_then(|bytes| config::ConfigSource::decode(&bytes))
    {
        Ok(source) => source,
        Err(err) => return fail(EXIT_FAILURE, format!("{}: {err}", file.display())),
    };
    let name = source
        .main()
        .map_or_else(String::new, |main| main.path.clone());
    match config::parse_config_source(source) {
        Ok(_) => {
            println!("zentinel: configuration file {name} test is successful (the running text)");
            ExitCode::SUCCESS
        }
        Err(diagnostics) => {
            print_diagnostics(Some(Path::new(&name)), &diagnostics);
            ExitCode::from(EXIT_INVALID_CONFIG)
        }
    }
}
