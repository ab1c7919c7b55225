//! The filters' shared segments (`docs/design/filters.md`, "Rate limits shared by the
//! workers"): one memfd per filter definition that keeps state (its counters; a rate limit's
//! GCRA table too), made by the master before any worker runs the configuration that names the
//! filter, handed to every worker before each `Start` and `Reconfigure`
//! (`MasterMessage::FilterSegments`, the fds riding with it) and to the next master in the
//! hand-over state (format 8), so a limit holds for the whole instance, across reloads that
//! keep the filter and across rolling upgrades.
//!
//! A reload keeps the segment of a filter whose name, type and `max-keys` did not change (its
//! counters and keys go on); any other filter gets a fresh one, and segments no configuration
//! uses any more are closed once the reload is committed (the workers of the old generation
//! keep their mappings until they go). The master never maps a segment: it reads the counters
//! with `pread` for `/metrics`.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use tracing::{error, info, warn};
use zentinel_protocol::config::{FilterConfig, ProxyConfig};
use zentinel_protocol::filter_shm::{
    check_segment, create_segment, read_counters, FilterCounts, FilterSegmentHandle, Geometry,
};
use zentinel_protocol::frame::MAX_FDS_PER_FRAME;
use zentinel_protocol::messages::MasterMessage;
use zentinel_protocol::state::FilterSegmentFd;

/// One filter's segment, owned by this master.
#[derive(Debug)]
pub struct FilterSegment {
    name: String,
    geometry: Geometry,
    fd: OwnedFd,
}

impl FilterSegment {
    fn create(filter: &FilterConfig, geometry: Geometry) -> io::Result<FilterSegment> {
        let mut key = [0u8; 16];
        getrandom::getrandom(&mut key).map_err(|e| io::Error::other(e.to_string()))?;
        let (a, b) = key.split_at(8);
        let word = |s: &[u8]| {
            let mut w = [0u8; 8];
            w.copy_from_slice(s);
            u64::from_le_bytes(w)
        };
        Ok(FilterSegment {
            name: filter.name.clone(),
            geometry,
            fd: create_segment(&geometry, [word(a), word(b)])?,
        })
    }

    /// What a worker is told of it (its fd rides with the message).
    pub fn handle(&self) -> FilterSegmentHandle {
        FilterSegmentHandle {
            name: self.name.clone(),
            segment_bytes: self.geometry.segment_bytes,
        }
    }

    /// The memfd, to send or to inherit.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Every segment this master holds: those of the running configuration, and during a reload
/// those of the configuration being sent.
#[derive(Debug, Default)]
pub struct FilterSegments {
    list: Vec<FilterSegment>,
}

impl FilterSegments {
    /// The segments `config` needs, made now (before any worker starts).
    pub fn for_start(config: &ProxyConfig) -> FilterSegments {
        let mut segments = FilterSegments::default();
        segments.ensure(config, "start");
        segments
    }

    /// Make the segments `config`'s filters need that are not here yet. A failure is logged,
    /// not fatal: that filter then keeps its counters and rate limit per worker.
    pub fn ensure(&mut self, config: &ProxyConfig, why: &str) {
        for filter in &config.filters {
            let Some(geometry) = Geometry::for_filter(filter) else {
                continue;
            };
            if self.find(filter).is_some() {
                continue;
            }
            match FilterSegment::create(filter, geometry) {
                Ok(segment) => {
                    info!(
                        filter = %filter.name,
                        kind = filter.kind.type_name(),
                        bytes = geometry.segment_bytes,
                        slots = geometry.slots,
                        why,
                        "filter segment made: every worker shares its counters and rate limit"
                    );
                    self.list.push(segment);
                }
                Err(err) => error!(
                    filter = %filter.name,
                    error = %err,
                    "cannot make the filter's shared segment: each worker keeps its own \
                     counters and rate limit for it"
                ),
            }
        }
    }

    /// Close the segments none of `configs` uses (after a reload is committed or rolled
    /// back). Workers that map one keep it until their generation goes.
    pub fn retain_for(&mut self, configs: &[&ProxyConfig]) {
        let before = self.list.len();
        self.list.retain(|s| {
            configs.iter().any(|c| {
                c.filters
                    .iter()
                    .any(|f| f.name == s.name && s.geometry.serves(f))
            })
        });
        if self.list.len() != before {
            info!(
                closed = before - self.list.len(),
                kept = self.list.len(),
                "filter segments no configuration uses closed"
            );
        }
    }

    fn find(&self, filter: &FilterConfig) -> Option<&FilterSegment> {
        self.list
            .iter()
            .find(|s| s.name == filter.name && s.geometry.serves(filter))
    }

    /// The segments of `config`'s filters, in its order.
    pub fn of<'a>(&'a self, config: &ProxyConfig) -> Vec<&'a FilterSegment> {
        config.filters.iter().filter_map(|f| self.find(f)).collect()
    }

    /// The `FilterSegments` messages that go before a `Start` or `Reconfigure` of `config`,
    /// each with its fds (at most a frame's worth each). None when no filter keeps state.
    pub fn messages<'a>(
        &'a self,
        config: &ProxyConfig,
    ) -> Vec<(MasterMessage, Vec<BorrowedFd<'a>>)> {
        self.of(config)
            .chunks(MAX_FDS_PER_FRAME)
            .map(|chunk| {
                (
                    MasterMessage::FilterSegments(chunk.iter().map(|s| s.handle()).collect()),
                    chunk.iter().map(|s| s.fd()).collect(),
                )
            })
            .collect()
    }

    /// What the hand-over state says of `config`'s segments (their fds are inherited by the
    /// next master).
    pub fn record(&self, config: &ProxyConfig) -> Vec<FilterSegmentFd> {
        self.of(config)
            .into_iter()
            .map(|s| FilterSegmentFd {
                name: s.name.clone(),
                fd: s.fd.as_raw_fd(),
                segment_bytes: s.geometry.segment_bytes,
            })
            .collect()
    }

    /// A successor master's segments: those its predecessor handed over (`inherited`: name,
    /// fd already taken, size) that this build shares and `config` still uses, then fresh ones
    /// for the rest ([`FilterSegments::ensure`]).
    pub fn inherited(
        inherited: Vec<(String, OwnedFd, u64)>,
        config: &ProxyConfig,
    ) -> FilterSegments {
        let mut segments = FilterSegments::default();
        for (name, fd, segment_bytes) in inherited {
            let geometry = match check_segment(fd.as_fd(), segment_bytes) {
                Ok((geometry, _)) => geometry,
                Err(reason) => {
                    warn!(
                        filter = %name,
                        %reason,
                        "the previous master's filter segment is not one this binary shares: \
                         a fresh one is made (its rate limit starts over)"
                    );
                    continue;
                }
            };
            let used = config
                .filters
                .iter()
                .any(|f| f.name == name && geometry.serves(f));
            if !used {
                warn!(filter = %name, "a filter segment handed over that the configuration does not use: closed");
                continue;
            }
            info!(filter = %name, bytes = segment_bytes, "filter segment taken over from the previous master: its counters and rate limit go on");
            segments.list.push(FilterSegment { name, geometry, fd });
        }
        segments.ensure(config, "none handed over by the previous master");
        segments
    }

    /// The counters of `config`'s filters that have a segment, in its order, for `/metrics`.
    pub fn counts(&self, config: &ProxyConfig) -> Vec<FilterSample> {
        config
            .filters
            .iter()
            .filter_map(|f| {
                let segment = self.find(f)?;
                match read_counters(&segment.fd) {
                    Ok(counts) => Some(FilterSample {
                        name: f.name.clone(),
                        kind: f.kind.type_name(),
                        counts,
                    }),
                    Err(err) => {
                        warn!(filter = %f.name, error = %err, "cannot read the filter's counters");
                        None
                    }
                }
            })
            .collect()
    }

    /// How many segments this master holds.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// One filter's counters as `/metrics` shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterSample {
    /// The filter's name (the `filter` label).
    pub name: String,
    /// Its `type`.
    pub kind: &'static str,
    /// Its counters, over every worker that ever used its segment.
    pub counts: FilterCounts,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> ProxyConfig {
        crate::config::parse_config(
            &format!(
                r#"listeners {{ listener "h" {{ address "127.0.0.1:0"; protocol "http"; default-route "r"; }}; }}
routes {{ route "r" {{ static-response status=200 body="ok"; }}; }}
filters {{ {text} }}"#
            ),
            "test.kdl",
        )
        .unwrap()
    }

    #[test]
    fn made_for_stateful_filters_kept_while_unchanged_and_handed_over() {
        let first = config(
            r#"filter "rl" { type "rate-limit"; max-rps 5; max-keys 1000; }
               filter "c" { type "cors"; }
               filter "h" { type "headers"; }"#,
        );
        let mut segments = FilterSegments::for_start(&first);
        // Headers keep nothing.
        assert_eq!(segments.len(), 2);
        let messages = segments.messages(&first);
        assert_eq!(messages.len(), 1);
        assert!(matches!(&messages[0].0, MasterMessage::FilterSegments(h) if h.len() == 2));
        assert_eq!(messages[0].1.len(), 2);
        let rl_fd = segments.record(&first)[0].fd;
        // A reload changing max-rps keeps the table; changing max-keys makes a new one.
        let faster = config(
            r#"filter "rl" { type "rate-limit"; max-rps 50; max-keys 1000; }
               filter "c" { type "cors"; }"#,
        );
        segments.ensure(&faster, "reload");
        assert_eq!(segments.len(), 2);
        assert_eq!(segments.record(&faster)[0].fd, rl_fd);
        let bigger = config(r#"filter "rl" { type "rate-limit"; max-keys 5000; }"#);
        segments.ensure(&bigger, "reload");
        assert_eq!(segments.len(), 3);
        assert_ne!(segments.record(&bigger)[0].fd, rl_fd);
        // Committed: what the new configuration does not use is closed.
        segments.retain_for(&[&bigger]);
        assert_eq!(segments.len(), 1);
        // Counters read with pread, zero for a fresh segment.
        let counts = segments.counts(&bigger);
        assert_eq!(counts.len(), 1);
        assert_eq!(
            (counts[0].name.as_str(), counts[0].kind),
            ("rl", "rate-limit")
        );
        assert_eq!(counts[0].counts, FilterCounts::default());
        // A successor adopts what it still uses and shares, and makes the rest.
        let record = segments.record(&bigger);
        let dup = segments.list[0].fd.try_clone().unwrap();
        let wrong = segments.list[0].fd.try_clone().unwrap();
        let both = config(
            r#"filter "rl" { type "rate-limit"; max-keys 5000; }
               filter "r2" { type "redirect"; hostname "x"; }"#,
        );
        let adopted = FilterSegments::inherited(
            vec![
                ("rl".to_owned(), dup, record[0].segment_bytes),
                ("gone".to_owned(), wrong, record[0].segment_bytes),
            ],
            &both,
        );
        assert_eq!(adopted.len(), 2);
        assert_eq!(
            adopted.list[0].geometry, segments.list[0].geometry,
            "the handed-over table"
        );
        // Many filters: one message per frame's worth of fds.
        let many: String = (0..70)
            .map(|i| format!("filter \"c{i}\" {{ type \"cors\"; }}\n"))
            .collect();
        let many = config(&many);
        let segments = FilterSegments::for_start(&many);
        let sizes: Vec<usize> = segments
            .messages(&many)
            .iter()
            .map(|(_, f)| f.len())
            .collect();
        assert_eq!(sizes, vec![64, 6]);
    }
}
