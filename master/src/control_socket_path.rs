//! Where the master's control socket lives, shared by `zentinel` and `zentinel-ctl` so both
//! resolve the same default.

use std::path::PathBuf;

/// Environment variable that overrides the socket path for `zentinel-ctl`.
pub const SOCKET_ENV: &str = "ZENTINEL_SOCKET";

/// `$XDG_RUNTIME_DIR/zentinel.sock` when `XDG_RUNTIME_DIR` is set (and non-empty), else
/// `/run/zentinel/zentinel.sock`.
pub fn default_control_socket() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("zentinel.sock"),
        _ => PathBuf::from("/run/zentinel/zentinel.sock"),
    }
}

/// The master's socket: `system { control-socket }` from the config when set, else the default.
pub fn master_control_socket(configured: Option<&str>) -> PathBuf {
    configured.map_or_else(default_control_socket, PathBuf::from)
}
