//! Upgrade pre-flight: what `zentinel-ctl upgrade` checks about a new binary before it asks the
//! master to replace anything (issue 8).
//!
//! Everything here runs in the client, from data any control client already gets (the status
//! report) plus local runs of the binaries: a new `zentinel-ctl` usually drives an older
//! running master, so the pre-flight must not need anything the master would have to learn.
//!
//! - [`VersionInfo`]: what `zentinel --version --json` prints, and how a binary built before
//!   that flag existed is recognised ([`query_version`]).
//! - [`run_bounded`]: one run of a binary with a deadline; on overrun its whole process group is
//!   killed, so a hung (or malicious) "new binary" cannot hang the upgrade command.
//! - [`check_state_format`], [`check_protocol`], [`check_feature`]: the compatibility rules.
//! - [`check_config`], [`check_running_source`]: the new binary's own verdict on the
//!   configuration it would be handed.

mod bounded_run;
mod compatibility;
mod config_check;
mod version;

pub use bounded_run::{run_bounded, ChildOutput, DEFAULT_CHILD_TIMEOUT};
pub use compatibility::{check_feature, check_protocol, check_state_format, TEXT_STATE_FORMAT};
pub use config_check::{check_config, check_running_source};
pub use version::{
    parse_version_output, query_version, VersionInfo, FEATURE_CANARY, FEATURE_FAULT_INJECTION,
    FEATURE_RUNNING_CONFIG, LEGACY_FORMAT, OLDEST_READABLE_STATE_FORMAT, VERSION_JSON_ARGS,
};
