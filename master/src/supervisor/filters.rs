//! The filters' shared segments at a hand-over (`crate::filter_shm`,
//! `docs/design/filters.md`): what the next master is handed, so that a rate limit holds across
//! a rolling upgrade, old and new workers counting in one table.

use std::path::Path;

use zentinel_protocol::state::{FilterSegmentFd, FILTER_SEGMENTS_STATE_FORMAT};

use super::*;

/// Longest wait for `NEW_BINARY --version --json` at a hand-over (as for the TLS keys).
const SUCCESSOR_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

impl Supervisor {
    /// The segments of the running configuration's filters, for a successor `binary` that
    /// says it reads the state format that carries them (learnt by running it once, bounded);
    /// none for any other: its master makes fresh ones, and the limits start over at the
    /// upgrade (the old workers keep the old tables until they exit).
    pub(super) fn filter_segments_for_successor(&self, binary: &str) -> Vec<FilterSegmentFd> {
        if self.filter_segments.is_empty() {
            return Vec::new();
        }
        match crate::preflight::query_version(Path::new(binary), SUCCESSOR_PROBE_TIMEOUT) {
            Ok(info) if info.reads_state_format(FILTER_SEGMENTS_STATE_FORMAT) => {
                let record = self.filter_segments.record(&self.config);
                info!(
                    format = FILTER_SEGMENTS_STATE_FORMAT,
                    segments = record.len(),
                    "upgrade: the filters' shared segments go to the new master"
                );
                record
            }
            Ok(info) => {
                warn!(
                    new_version = %info.version,
                    formats = %info.readable_formats_text(),
                    "upgrade: the new binary does not read the state format that carries the \
                     filters' shared segments: its workers start their rate limits and filter \
                     counters afresh"
                );
                Vec::new()
            }
            Err(reason) => {
                warn!(
                    %reason,
                    "upgrade: cannot learn which state formats the new binary reads: the \
                     filters' shared segments stay here, and its workers start their rate \
                     limits afresh"
                );
                Vec::new()
            }
        }
    }
}
