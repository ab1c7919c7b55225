//! The TLS session cache every worker shares (`docs/design/session-cache.md`): the master makes
//! the shared-memory segment (a memfd) before it starts any worker, when some TLS listener
//! resumes sessions, and keeps it for its whole life. Each worker gets it in its `Start` and
//! every `Reconfigure` (the fd after the listeners'), the next master in the hand-over state
//! (format 7, the fd inherited across the exec like the listeners'), so the sessions cached
//! before a rolling upgrade resume on the new workers after it.
//!
//! The master never maps the segment and never reads a session: it reads the cache's counters
//! for `/metrics` with `pread`. Everything here goes through safe wrappers (`nix`): no
//! `unsafe`.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use tracing::{error, info, warn};
use zentinel_protocol::config::ProxyConfig;
use zentinel_protocol::session_cache::{
    check_segment, create_segment, read_counters, CacheCounters, Geometry, SessionCacheHandle,
    DEFAULT_SEGMENT_BYTES, DEFAULT_TIMEOUT_S,
};
use zentinel_protocol::state::SessionCacheFd;

/// The segment, owned by this master.
#[derive(Debug)]
pub struct SessionCache {
    fd: OwnedFd,
    geometry: Geometry,
}

impl SessionCache {
    /// A new, empty segment of the default size and session timeout.
    pub fn create() -> io::Result<SessionCache> {
        let geometry = Geometry::for_segment(DEFAULT_SEGMENT_BYTES, DEFAULT_TIMEOUT_S)
            .ok_or_else(|| io::Error::other("the default session cache holds no bucket"))?;
        Ok(SessionCache {
            fd: create_segment(&geometry)?,
            geometry,
        })
    }

    /// The segment a previous master handed over (`fd`, of `segment_bytes`), if this build
    /// shares its layout; why not otherwise.
    pub fn adopt(fd: OwnedFd, segment_bytes: u64) -> Result<SessionCache, String> {
        let geometry = check_segment(fd.as_fd(), segment_bytes)?;
        Ok(SessionCache { fd, geometry })
    }

    /// What a worker's `Start` or `Reconfigure` says of it (its fd rides after the listeners').
    pub fn handle(&self) -> SessionCacheHandle {
        SessionCacheHandle {
            segment_bytes: self.geometry.segment_bytes,
        }
    }

    /// What the hand-over state says of it (the fd is inherited by the next master).
    pub fn record(&self) -> SessionCacheFd {
        SessionCacheFd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&self.fd),
            segment_bytes: self.geometry.segment_bytes,
        }
    }

    /// The memfd, to send or to inherit.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The counters of every worker that ever used the segment, of this master and the ones
    /// before it.
    pub fn counters(&self) -> io::Result<CacheCounters> {
        read_counters(&self.fd)
    }

    fn log_made(&self, why: &str) {
        info!(
            bytes = self.geometry.segment_bytes,
            sessions = self.geometry.slots(),
            timeout_s = self.geometry.timeout_s,
            why,
            "TLS session cache made: every worker shares it"
        );
    }
}

/// `cache`, when a frame carrying `listeners` fds has room for its fd too (a frame carries at
/// most `MAX_FDS_PER_FRAME`); without room the workers keep their sessions per process.
pub fn with_room(cache: Option<&SessionCache>, listeners: usize) -> Option<&SessionCache> {
    cache.filter(|_| listeners < zentinel_protocol::frame::MAX_FDS_PER_FRAME)
}

/// Whether some TLS listener of `config` resumes sessions (`session-resumption`, on unless
/// turned off): the only use of the cache.
pub fn wanted(config: &ProxyConfig) -> bool {
    config.listeners.iter().any(|listener| {
        listener
            .tls
            .as_ref()
            .is_some_and(|tls| tls.session_resumption)
    })
}

/// The cache to run `config` with: `current` when there is one (a cache is kept for the
/// master's life, even when a reload turns resumption off: the workers keep it mapped anyway),
/// else a new one when `config` wants it. A failure to make one is logged, not fatal: each
/// worker then keeps its own sessions, as without the shared cache.
pub fn ensure(
    current: Option<SessionCache>,
    config: &ProxyConfig,
    why: &str,
) -> Option<SessionCache> {
    if current.is_some() || !wanted(config) {
        return current;
    }
    match SessionCache::create() {
        Ok(cache) => {
            cache.log_made(why);
            Some(cache)
        }
        Err(err) => {
            error!(
                error = %err,
                "cannot make the shared TLS session cache: each worker keeps its own sessions"
            );
            None
        }
    }
}

/// A successor master's cache: the one its predecessor handed over (`inherited`, already
/// taken from its fd number), when this build shares its layout; else a fresh one per
/// [`ensure`]. The sessions of a refused segment stay with the old workers that map it.
pub fn inherited(inherited: Option<(OwnedFd, u64)>, config: &ProxyConfig) -> Option<SessionCache> {
    let adopted = inherited.and_then(|(fd, segment_bytes)| {
        match SessionCache::adopt(fd, segment_bytes) {
            Ok(cache) => {
                info!(
                    bytes = segment_bytes,
                    "TLS session cache taken over from the previous master: its sessions resume here"
                );
                Some(cache)
            }
            Err(reason) => {
                warn!(
                    %reason,
                    "the previous master's TLS session cache is not one this binary shares: \
                     making a fresh one (sessions cached before the upgrade pay one full \
                     handshake)"
                );
                None
            }
        }
    });
    ensure(adopted, config, "none handed over by the previous master")
}

#[cfg(test)]
mod tests {
    use super::*;
    use zentinel_protocol::config::{ClientAuth, TlsConfig, TlsVersion};

    fn tls(session_resumption: bool) -> TlsConfig {
        TlsConfig {
            cert_file: "a.crt".to_owned(),
            key_file: "a.key".to_owned(),
            additional_certs: vec![],
            min_version: TlsVersion::Tls12,
            max_version: None,
            client_auth: ClientAuth::Off,
            ca_file: None,
            cipher_suites: vec![],
            session_resumption,
            ocsp_stapling: true,
            ocsp_response: None,
        }
    }

    #[test]
    fn made_once_a_tls_listener_resumes_sessions_then_kept() {
        let mut config = crate::config::parse_config(
            r#"listeners { listener "h" { address "127.0.0.1:0"; protocol "http"; default-route "r"; }; }
routes { route "r" { static-response status=200 body="ok"; }; }"#,
            "test.kdl",
        )
        .unwrap();
        // Plain HTTP, or TLS with resumption off: no use for it.
        assert!(ensure(None, &config, "test").is_none());
        config.listeners[0].tls = Some(tls(false));
        assert!(ensure(None, &config, "test").is_none());
        config.listeners[0].tls = Some(tls(true));
        let made = ensure(None, &config, "test").unwrap();
        let record = made.record();
        // Kept, the same one, whatever a later configuration says.
        config.listeners[0].tls = None;
        let kept = ensure(Some(made), &config, "test").unwrap();
        assert_eq!(kept.record(), record);
        // A successor adopts the one handed over, and makes its own when none was.
        let dup = kept.fd.try_clone().unwrap();
        let adopted = inherited(Some((dup, record.segment_bytes)), &config).unwrap();
        assert_eq!(adopted.geometry, kept.geometry);
        assert!(inherited(None, &config).is_none());
        config.listeners[0].tls = Some(tls(true));
        assert!(inherited(None, &config).is_some());
        // A frame of 64 listener fds has no room for it.
        assert!(with_room(Some(&kept), 63).is_some());
        assert!(with_room(Some(&kept), 64).is_none());
    }

    #[test]
    fn made_adopted_and_refused() {
        let cache = SessionCache::create().unwrap();
        assert_eq!(cache.handle().segment_bytes, DEFAULT_SEGMENT_BYTES);
        assert_eq!(cache.counters().unwrap(), CacheCounters::default());
        let record = cache.record();
        let dup = cache.fd.try_clone().unwrap();
        let adopted = SessionCache::adopt(dup, record.segment_bytes).unwrap();
        assert_eq!(adopted.geometry, cache.geometry);
        // A file that is not a segment, or a segment of another size, is refused.
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        let size = file.metadata().unwrap().len();
        assert!(SessionCache::adopt(file.into(), size).is_err());
        let dup = cache.fd.try_clone().unwrap();
        assert!(SessionCache::adopt(dup, 1 << 20)
            .unwrap_err()
            .contains("announced as"));
    }
}
