//! A listener's rustls `ServerConfig`: its certificates chosen by SNI, each with its OCSP
//! staple, and the settings of its `tls` block (protocol versions, cipher suites, client
//! authentication, session resumption). Built by every worker when it installs a
//! configuration, so a reload re-reads every file.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig};
use rustls::sign::CertifiedKey;
use zentinel_protocol::config::{TlsConfig, TlsVersion};

use crate::client_cert;
use crate::ocsp::{self, Stapled};
use crate::session_cache::SharedSessionCache;
use crate::tls::{load_with, TlsFile, TlsFileError, ALPN_H2, ALPN_HTTP_1_1};
use crate::tls_tickets::SharedTicketer;

/// What every TLS listener of a worker resumes sessions with, of every configuration
/// generation: one of each per process.
#[derive(Debug, Clone)]
pub struct Resumption {
    /// Seals and opens session tickets with the master's keys.
    pub ticketer: Arc<SharedTicketer>,
    /// The session cache every worker shares (session ids, and TLS 1.3 stateful tickets when
    /// tickets are off). `None`: each `ServerConfig` keeps rustls's own, per process.
    pub cache: Option<Arc<SharedSessionCache>>,
}

impl Resumption {
    /// Tickets sealed by `ticketer`; sessions cached per process.
    pub fn new(ticketer: Arc<SharedTicketer>) -> Self {
        Resumption {
            ticketer,
            cache: None,
        }
    }
}

/// Loads every certificate of `tls` (with its OCSP response) and builds the listener's server
/// configuration: its protocol versions, cipher suites, client authentication and session
/// resumption, with session tickets sealed by the resumption's ticketer (the master's keys,
/// shared by every worker) and sessions kept in its shared cache, unless resumption is off.
pub fn server_config(
    tls: &TlsConfig,
    resumption: &Resumption,
) -> Result<Arc<ServerConfig>, TlsFileError> {
    let provider =
        crate::tls_options::provider(&tls.cipher_suites).map_err(|message| TlsFileError {
            file: TlsFile::Cert,
            message,
        })?;
    let now = SystemTime::now();
    let load = |cert: &str, key: &str, ocsp: &Option<String>| {
        let staple = ocsp.as_deref().filter(|_| tls.ocsp_stapling);
        load_stapled(cert, key, staple, &provider, now)
    };
    let default = load(&tls.cert_file, &tls.key_file, &tls.ocsp_response)?;
    let mut resolver = SniResolver {
        exact: HashMap::new(),
        wildcard: HashMap::new(),
        default,
    };
    for sni in &tls.additional_certs {
        let served = load(&sni.cert_file, &sni.key_file, &sni.ocsp_response)?;
        for name in &sni.hostnames {
            let name = name.to_ascii_lowercase();
            match name.strip_prefix("*.") {
                // The first certificate named for a host wins, as in the file order.
                Some(suffix) => resolver
                    .wildcard
                    .entry(suffix.to_owned())
                    .or_insert_with(|| served.clone()),
                None => resolver.exact.entry(name).or_insert_with(|| served.clone()),
            };
        }
    }
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| *v >= tls.min_version && tls.max_version.is_none_or(|max| *v <= max))
    .map(|(_, v)| v)
    .collect();
    let client_verifier = client_cert::verifier(
        tls.client_auth,
        tls.ca_file.as_deref(),
        Arc::clone(&provider),
    )
    .map_err(|message| TlsFileError {
        file: TlsFile::Ca,
        message,
    })?;
    // Fails when no suite offered belongs to an allowed version (the master refuses such a
    // configuration first).
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| TlsFileError {
            file: TlsFile::Cert,
            message: format!("TLS versions and cipher suites: {e}"),
        })?;
    let builder = match client_verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    // HTTP/2 first, as every browser and peer proxy prefers it; HTTP/1.1 for the others.
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP_1_1.to_vec()];
    config.ticketer = Arc::clone(&resumption.ticketer) as Arc<dyn rustls::server::ProducesTickets>;
    // Tickets and the cache together, as rustls does: a TLS 1.2 session is stored under its
    // id even when a ticket is issued too (a client may resume by either).
    if let Some(cache) = &resumption.cache {
        config.session_storage = Arc::clone(cache) as Arc<dyn rustls::server::StoresServerSessions>;
    }
    // After the ticketer and the cache: `session-resumption #false` replaces both.
    crate::tls_options::apply_session_resumption(&mut config, tls.session_resumption);
    Ok(Arc::new(config))
}

/// A certificate and key, with the OCSP response of `ocsp` stapled (when it has not expired).
fn load_stapled(
    cert_file: &str,
    key_file: &str,
    ocsp: Option<&str>,
    provider: &CryptoProvider,
    now: SystemTime,
) -> Result<Stapled, TlsFileError> {
    let key = load_with(cert_file, key_file, provider)?;
    let response = match (ocsp, key.end_entity_cert()) {
        (Some(path), Ok(leaf)) => Some(ocsp::load(path, leaf).map_err(|message| TlsFileError {
            file: TlsFile::Ocsp,
            message,
        })?),
        _ => None,
    };
    Ok(Stapled::new(key, response.as_ref(), now))
}

/// Picks a certificate by the server name of the ClientHello: an exact name first, then the
/// wildcard covering exactly one more label (`*.example.com` for `a.example.com`, as RFC 6125
/// allows), else the listener's default certificate (also for clients sending no SNI).
#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Stapled>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<String, Stapled>,
    default: Stapled,
}

impl SniResolver {
    fn pick(&self, server_name: Option<&str>) -> &Stapled {
        let Some(name) = server_name else {
            return &self.default;
        };
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        if let Some(key) = self.exact.get(name) {
            return key;
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(key) = self.wildcard.get(parent) {
                return key;
            }
        }
        &self.default
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(client_hello.server_name()).at(SystemTime::now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::load_certified_key;
    use rustls::server::ProducesTickets;
    use zentinel_protocol::ticket_keys::{TicketKey, TicketKeys};

    fn write_cert(dir: &std::path::Path, stem: &str, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let ck = rcgen::generate_simple_self_signed(names).unwrap();
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
        (cert.display().to_string(), key.display().to_string())
    }

    #[test]
    fn sni_picks_exact_then_one_label_wildcard_then_default() {
        let dir = std::env::temp_dir().join(format!("zentinel-tls-sni-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (dc, dk) = write_cert(&dir, "default", &["default.test"]);
        let (ec, ek) = write_cert(&dir, "exact", &["www.example.com"]);
        let (wc, wk) = write_cert(&dir, "wild", &["*.example.com"]);
        let now = SystemTime::now();
        let load = |c: &str, k: &str| Stapled::new(load_certified_key(c, k).unwrap(), None, now);
        let (default, exact, wild) = (load(&dc, &dk), load(&ec, &ek), load(&wc, &wk));
        let resolver = SniResolver {
            exact: HashMap::from([("www.example.com".to_owned(), exact.clone())]),
            wildcard: HashMap::from([("example.com".to_owned(), wild.clone())]),
            default: default.clone(),
        };
        let (default, exact, wild) = (default.key, exact.key, wild.key);
        let picks = |name: Option<&str>, want: &Arc<CertifiedKey>| {
            assert!(Arc::ptr_eq(&resolver.pick(name).at(now), want), "{name:?}");
        };
        picks(Some("www.example.com"), &exact);
        picks(Some("WWW.Example.COM"), &exact);
        picks(Some("api.example.com"), &wild);
        // A wildcard covers exactly one label.
        picks(Some("example.com"), &default);
        picks(Some("a.b.example.com"), &default);
        picks(Some("other.test"), &default);
        picks(None, &default);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn impossible_version_ranges_are_refused_and_alpn_offers_h2_then_http_1_1() {
        let dir = std::env::temp_dir().join(format!("zentinel-tls-ver-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert_file, key_file) = write_cert(&dir, "c", &["v.test"]);
        let tls = |min, max| TlsConfig {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            additional_certs: vec![],
            min_version: min,
            max_version: max,
            client_auth: zentinel_protocol::config::ClientAuth::Off,
            ca_file: None,
            cipher_suites: vec![],
            session_resumption: true,
            ocsp_stapling: true,
            ocsp_response: None,
        };
        // The worker's shared ticketer, with one of the master's keys.
        let ticketer = SharedTicketer::new(&TicketKeys {
            keys: vec![TicketKey {
                name: [1; 16],
                secret: [2; 32],
                created_unix_s: 3,
            }],
            lifetime_s: 60,
        });
        let resumption = Resumption::new(Arc::clone(&ticketer));
        let config = |min, max| server_config(&tls(min, max), &resumption);
        let ok = config(TlsVersion::Tls12, None).unwrap();
        assert_eq!(
            ok.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert!(ok.session_storage.can_cache() && ok.send_tls13_tickets > 0);
        // Tickets are sealed with the shared keys, so any worker opens them.
        assert!(ok.ticketer.enabled() && ok.ticketer.lifetime() == 60);
        let ticket = ok.ticketer.encrypt(b"session").unwrap();
        assert_eq!(ticketer.decrypt(&ticket).as_deref(), Some(&b"session"[..]));
        config(TlsVersion::Tls13, Some(TlsVersion::Tls13)).unwrap();
        // The master refuses this range; a worker handed it anyway fails cleanly.
        assert!(config(TlsVersion::Tls13, Some(TlsVersion::Tls12)).is_err());
        // Likewise for suites of none of the versions allowed.
        let mut only12 = tls(TlsVersion::Tls13, None);
        only12.cipher_suites = vec!["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".to_owned()];
        assert!(server_config(&only12, &resumption).is_err());
        let mut off = tls(TlsVersion::Tls12, None);
        off.session_resumption = false;
        let off = server_config(&off, &resumption).unwrap();
        assert!(!off.session_storage.can_cache());
        // Off wins over the shared keys: no ticket of any kind.
        assert!(!off.ticketer.enabled() && off.send_tls13_tickets == 0);
        assert_eq!(off.ticketer.encrypt(b"session"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
