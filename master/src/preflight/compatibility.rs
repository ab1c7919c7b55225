//! The compatibility rules between the running master and a new binary: the state format one
//! writes and the other reads, the master-worker protocol, optional features.

use super::version::VersionInfo;

/// The first state format that carries the configuration as source text: releases that read
/// only older formats cannot take over from one that writes it.
pub const TEXT_STATE_FORMAT: u32 = 4;

/// The new master reads the state file the running master writes: format
/// [`VersionInfo::writes_state_format`] for this upgrade (`canary`: `--canary` was asked for;
/// `draining`: how many retired workers the running master's status lists as draining). A
/// running master writes the oldest format that holds its state, so an upgrade to the previous
/// release (a rollback) passes where one needing a newer format (drain deadlines to carry, or
/// a canary for masters from before format 5) is refused, saying what to do instead.
///
/// A worker retired between this check and the upgrade request makes the running master write
/// the newer format after all: a new binary that cannot read it refuses the state file at
/// take-over, and the running master keeps serving.
///
/// A new binary that predates `--version --json` (a downgrade, or a rollback to an older
/// build) cannot say what it reads; it is let through, because its master refuses a state file
/// of a format it does not know at take-over (`read_state_file`: "future version") before
/// confirming readiness, and the running master then keeps serving. Refusing it here would
/// block every rollback to a build older than this check.
pub fn check_state_format(
    running: &VersionInfo,
    new: &VersionInfo,
    canary: bool,
    draining: usize,
) -> Result<(), String> {
    let needed = running.writes_state_format(canary, draining > 0);
    if new.legacy || new.reads_state_format(needed) {
        return Ok(());
    }
    let calm = running.writes_state_format(canary, false);
    if draining > 0 && new.reads_state_format(calm) {
        return Err(format!(
            "the new binary (zentinel {}) reads upgrade state formats {}, but the running master \
             (zentinel {}) has {draining} retired worker(s) draining and writes format {needed} \
             while they do (it carries their drain deadlines): it could not take over; wait \
             until they have exited (`zentinel-ctl status` lists them as draining), then retry \
             (the master then writes format {calm})",
            new.version,
            new.readable_formats_text(),
            running.version,
        ));
    }
    let plain = running.writes_state_format(false, draining > 0);
    if canary && new.reads_state_format(plain) {
        return Err(format!(
            "the new binary (zentinel {}) reads upgrade state formats {}, but the running master \
             (zentinel {}) writes format {needed} for an upgrade with --canary: it could not take \
             over; upgrade to it without --canary (the master then writes format {plain})",
            new.version,
            new.readable_formats_text(),
            running.version,
        ));
    }
    let advice = if needed >= TEXT_STATE_FORMAT && !new.reads_state_format(TEXT_STATE_FORMAT) {
        "; a release from before format 4 (the configuration handed over as text) cannot take \
         over from this one by an upgrade: to go back to it, restart the service on it \
         (replace the binary, then `systemctl restart zentinel`), which closes open connections"
    } else {
        ""
    };
    Err(format!(
        "the new binary (zentinel {}) reads upgrade state formats {}, but the running master \
         (zentinel {}) writes format {needed}{}: it could not take over{advice}",
        new.version,
        new.readable_formats_text(),
        running.version,
        if canary {
            " for an upgrade with --canary"
        } else {
            ""
        },
    ))
}

/// The new master configures the running workers it adopts, so it must speak at least their
/// protocol (a newer one keeps the layouts adopted workers receive; see
/// `zentinel_protocol::messages::PROTOCOL_VERSION`).
///
/// Not checked for a new binary that predates `--version --json` (see [`check_state_format`]).
pub fn check_protocol(running: &VersionInfo, new: &VersionInfo) -> Result<(), String> {
    if new.legacy || new.protocol_version >= running.protocol_version {
        Ok(())
    } else {
        Err(format!(
            "the new binary (zentinel {}) speaks master-worker protocol {}, older than the \
             running workers' {} (zentinel {}): it could not drive them",
            new.version, new.protocol_version, running.protocol_version, running.version
        ))
    }
}

/// Both masters of the upgrade support `feature` (an option of the upgrade request).
pub fn check_feature(
    running: &VersionInfo,
    new: &VersionInfo,
    feature: &str,
) -> Result<(), String> {
    let has = |info: &VersionInfo| info.features.iter().any(|f| f == feature);
    if !has(running) {
        return Err(format!(
            "the running master (zentinel {}) predates --{feature}: upgrade without it first, \
             then use --{feature} from that build on",
            running.version
        ));
    }
    if !has(new) {
        return Err(format!(
            "the new binary (zentinel {}) cannot run a {feature} (it predates --{feature})",
            new.version
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preflight::{parse_version_output, FEATURE_CANARY};

    #[test]
    fn compatibility_rules() {
        let current = VersionInfo::current();
        let legacy = VersionInfo::legacy("0.0.9");
        // Any current binary takes over from a legacy master...
        assert!(check_state_format(&legacy, &current, false, 0).is_ok());
        assert!(check_protocol(&legacy, &current).is_ok());
        // ...and a legacy binary cannot say what it reads: its own take-over check decides.
        assert!(check_state_format(&current, &legacy, false, 0).is_ok());
        assert!(check_state_format(&current, &legacy, true, 3).is_ok());
        assert!(check_protocol(&current, &legacy).is_ok());
        // A binary that says it cannot read the running format, or speaks an older protocol.
        let mut older = current.clone();
        older.readable_state_formats = vec![1];
        older.version = "0.0.8".into();
        let mut running = current.clone();
        running.state_format_version = 2;
        running.plain_upgrade_state_format = None;
        running.draining_state_format = None;
        let err = check_state_format(&running, &older, false, 0).unwrap_err();
        assert!(err.contains("reads upgrade state formats 1,"), "{err}");
        assert!(err.contains("writes format 2"), "{err}");
        running.protocol_version = 2;
        older.protocol_version = 1;
        assert!(check_protocol(&running, &older).is_err());
        let mut gaps = current.clone();
        gaps.readable_state_formats = vec![1, 3];
        assert_eq!(gaps.readable_formats_text(), "1, 3");
        gaps.readable_state_formats = vec![1, 2, 3];
        assert_eq!(gaps.readable_formats_text(), "1..=3");
    }

    /// A rollback to the release before format 4 (the configuration as text): it reads formats
    /// 1 to 3 only, so the pre-flight refuses, saying what the operator does instead.
    #[test]
    fn release_before_the_text_state_cannot_take_over() {
        let current = VersionInfo::current();
        let previous = VersionInfo {
            version: "0.0.9".into(),
            state_format_version: 3,
            plain_upgrade_state_format: Some(2),
            draining_state_format: None,
            readable_state_formats: vec![1, 2, 3],
            features: vec![FEATURE_CANARY.to_owned()],
            ..current.clone()
        };
        for canary in [false, true] {
            let err = check_state_format(&current, &previous, canary, 0).unwrap_err();
            assert!(
                err.contains("zentinel 0.0.9")
                    && err.contains("reads upgrade state formats 1..=3")
                    && err.contains("writes format 4")
                    && err.contains("restart"),
                "{err}"
            );
        }
        // This build takes over from the previous release (plain or canary), and from itself.
        assert_eq!(check_state_format(&previous, &current, false, 0), Ok(()));
        assert_eq!(check_state_format(&previous, &current, true, 0), Ok(()));
        assert_eq!(check_state_format(&current, &current, true, 2), Ok(()));
    }

    /// This build writes format 4 (the previous release's) unless retired workers drain: then
    /// format 5 carries their deadlines, and a rollback to the release that reads up to 4
    /// waits for them, whatever the canary.
    #[test]
    fn the_format_4_release_takes_over_unless_workers_drain() {
        let current = VersionInfo::current();
        // 6 carries the TLS session-ticket keys, 7 the shared session cache too, 8 the
        // filters' shared segments, each written only to a binary that reads it.
        assert_eq!(current.state_format_version, 8);
        assert_eq!(current.ticket_keys_state_format, Some(6));
        assert_eq!(current.session_cache_state_format, Some(7));
        assert_eq!(current.filter_segments_state_format, Some(8));
        assert_eq!(current.writes_state_format(false, false), 4);
        assert_eq!(current.writes_state_format(true, false), 4);
        assert_eq!(current.writes_state_format(false, true), 5);
        assert_eq!(current.writes_state_format(true, true), 5);
        assert_eq!(
            current.written_formats_text(),
            "format 4 (5 while retired workers drain)"
        );
        // What the format 4 release prints: no `draining_state_format`.
        let json = r#"{"name":"zentinel","version":"0.1.0","protocol_version":3,"state_format_version":4,"plain_upgrade_state_format":4,"readable_state_formats":[1,2,3,4],"control_protocol_version":2,"features":["canary","running-config"]}"#;
        let previous = parse_version_output(json).unwrap();
        assert_eq!(previous.draining_state_format, None);
        assert_eq!(previous.writes_state_format(true, true), 4);
        assert_eq!(previous.written_formats_text(), "format 4");
        for canary in [false, true] {
            assert_eq!(check_state_format(&current, &previous, canary, 0), Ok(()));
            let err = check_state_format(&current, &previous, canary, 2).unwrap_err();
            assert!(
                err.contains("reads upgrade state formats 1..=4")
                    && err.contains("2 retired worker(s) draining")
                    && err.contains("writes format 5")
                    && err.contains("wait until they have exited")
                    && err.contains("then writes format 4"),
                "{err}"
            );
            // The other way round: this build reads everything the release writes.
            assert_eq!(check_state_format(&previous, &current, canary, 2), Ok(()));
        }
    }

    /// The JSON of a build that always wrote its latest format has no
    /// `plain_upgrade_state_format` (nor `draining_state_format`): it still parses, and that
    /// format is needed either way.
    #[test]
    fn version_json_without_plain_format_still_parses() {
        let current = VersionInfo::current();
        let mut json: serde_json::Value = serde_json::from_str(&current.to_json()).unwrap();
        assert_eq!(json["plain_upgrade_state_format"], 4);
        assert_eq!(json["draining_state_format"], 5);
        assert_eq!(json["ticket_keys_state_format"], 6);
        assert_eq!(json["session_cache_state_format"], 7);
        assert_eq!(json["filter_segments_state_format"], 8);
        let object = json.as_object_mut().unwrap();
        object.remove("filter_segments_state_format");
        object.remove("plain_upgrade_state_format");
        object.remove("draining_state_format");
        object.remove("ticket_keys_state_format");
        object.remove("session_cache_state_format");
        object.insert("state_format_version".into(), 4.into());
        let before = parse_version_output(&json.to_string()).unwrap();
        assert_eq!(before.plain_upgrade_state_format, None);
        assert_eq!(before.draining_state_format, None);
        for (canary, draining) in [(false, false), (true, false), (true, true)] {
            assert_eq!(before.writes_state_format(canary, draining), 4);
        }
        let mut reads_three = current.clone();
        reads_three.readable_state_formats = vec![1, 2, 3];
        assert!(check_state_format(&before, &reads_three, false, 0).is_err());
    }

    #[test]
    fn canary_needs_both_masters_to_support_it() {
        let current = VersionInfo::current();
        assert!(check_feature(&current, &current, FEATURE_CANARY).is_ok());
        // The JSON of a build from before the field existed has no `features`.
        let mut json: serde_json::Value = serde_json::from_str(&current.to_json()).unwrap();
        json.as_object_mut().unwrap().remove("features");
        let before = parse_version_output(&json.to_string()).unwrap();
        assert!(before.features.is_empty());
        let err = check_feature(&before, &current, FEATURE_CANARY).unwrap_err();
        assert!(
            err.contains("running master") && err.contains("predates --canary"),
            "{err}"
        );
        let err = check_feature(&current, &before, FEATURE_CANARY).unwrap_err();
        assert!(err.contains("new binary"), "{err}");
        let legacy = VersionInfo::legacy("0.0.9");
        assert!(check_feature(&current, &legacy, FEATURE_CANARY).is_err());
    }
}
