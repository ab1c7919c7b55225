//! The new binary's own verdict on the configuration it would be handed: `--check` on a file,
//! or `--check-source` on the running master's source text.

use std::path::Path;
use std::time::Duration;

use super::bounded_run::{run_bounded, shown};

/// `BINARY --check [--config PATH]` (no path: the embedded default config), bounded by
/// `timeout`. Ok: the binary's own success line. For binaries or masters without
/// [`FEATURE_RUNNING_CONFIG`](super::FEATURE_RUNNING_CONFIG); otherwise
/// [`check_running_source`].
pub fn check_config(
    binary: &Path,
    config: Option<&Path>,
    timeout: Duration,
) -> Result<String, String> {
    let mut args = vec!["--check"];
    let config_text;
    if let Some(path) = config {
        config_text = path.display().to_string();
        args.push("--config");
        args.push(&config_text);
    }
    let out = run_bounded(binary, &args, timeout)?;
    if out.status.success() {
        Ok(shown(&out.stdout))
    } else {
        Err(format!(
            "{} rejects the running configuration {} ({}): {}",
            binary.display(),
            config.map_or_else(
                || "<embedded default>".to_owned(),
                |p| p.display().to_string()
            ),
            out.status_text(),
            out.said()
        ))
    }
}

/// `BINARY --check-source FILE` on the running master's source text (what the new master will
/// parse at take-over), bounded by `timeout`. Ok: the binary's own success line.
pub fn check_running_source(
    binary: &Path,
    source: &zentinel_protocol::config_source::ConfigSource,
    timeout: Duration,
) -> Result<String, String> {
    let file = std::env::temp_dir().join(format!(
        "zentinel-preflight-source-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let written = {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&file)
            .and_then(|mut f| f.write_all(&source.encode()))
    };
    if let Err(e) = written {
        let _ = std::fs::remove_file(&file);
        return Err(format!("cannot write {}: {e}", file.display()));
    }
    let file_arg = file.display().to_string();
    let out = run_bounded(binary, &["--check-source", &file_arg], timeout);
    let _ = std::fs::remove_file(&file);
    let out = out?;
    let name = source.main().map_or("", |main| main.path.as_str());
    if out.status.success() {
        Ok(shown(&out.stdout))
    } else {
        Err(format!(
            "{} rejects the running configuration {name} (the text the running master was \
             started or reloaded with) ({}): {}",
            binary.display(),
            out.status_text(),
            out.said()
        ))
    }
}
