//! TLS to an upstream's targets (`upstream { tls { ... } }`): one rustls `ClientConfig` per
//! pool, with its own session cache, so every connection of the worker to that upstream can
//! resume a session another one established; and the server name each target is verified
//! against.
//!
//! The master builds the same configuration once to validate it (`-t`, start, reload, with
//! the line of the offending key); the workers build it again when they install the
//! configuration, so a reload re-reads the CA and client certificate files.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ClientConnection, RootCertStore, SignatureScheme};
use zentinel_protocol::config::UpstreamTls;

use crate::tls::{load_certified_key, TlsFile, ALPN_H2, ALPN_HTTP_1_1};
use crate::tls_verify::AcceptAnyCertificate;
use zentinel_protocol::config::UpstreamHttpVersion;

/// A problem with one key of a `tls` block, named as written so the master can point at its
/// line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTlsError {
    /// `sni`, `ca-cert`, `client-cert` or `client-key`; `tls` for the block as a whole (no
    /// `ca-cert` and no system trust store).
    pub key: &'static str,
    pub message: String,
}

impl fmt::Display for UpstreamTlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tls `{}`: {}", self.key, self.message)
    }
}

impl std::error::Error for UpstreamTlsError {}

fn error(key: &'static str, message: String) -> UpstreamTlsError {
    UpstreamTlsError { key, message }
}

fn provider() -> Arc<CryptoProvider> {
    // ring, as for TLS termination (see `crate::tls`).
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The system's trust store, read at most once per configuration install however many
/// upstreams use it (reading and parsing it costs milliseconds per upstream otherwise).
#[derive(Default)]
pub struct SystemRoots(Option<Result<Arc<RootCertStore>, String>>);

impl SystemRoots {
    fn get(&mut self) -> Result<Arc<RootCertStore>, String> {
        self.0.get_or_insert_with(load_system_roots).clone()
    }
}

/// The platform's CA certificates (on Linux the distribution's bundle, or `SSL_CERT_FILE` /
/// `SSL_CERT_DIR` when set), as OpenSSL-based proxies use by default.
fn load_system_roots() -> Result<Arc<RootCertStore>, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = match found.errors.first() {
            Some(e) => format!(": {e}"),
            None => String::new(),
        };
        return Err(format!(
            "no `ca-cert`, and no CA certificate found in the system trust store{why} \
             (install the ca-certificates package, set SSL_CERT_FILE, or name the CA with \
             `ca-cert`)"
        ));
    }
    Ok(Arc::new(roots))
}

/// CA certificates from a PEM file.
fn load_ca(path: &str) -> Result<Arc<RootCertStore>, UpstreamTlsError> {
    let err = |m: String| error("ca-cert", m);
    let pem = std::fs::read(path).map_err(|e| err(format!("cannot read CA file {path}: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("invalid PEM in CA file {path}: {e}")))?;
    if certs.is_empty() {
        return Err(err(format!(
            "no certificate (-----BEGIN CERTIFICATE-----) in CA file {path}"
        )));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| err(format!("unusable CA certificate in {path}: {e}")))?;
    }
    Ok(Arc::new(roots))
}

/// Builds the client configuration of one upstream: trust anchors (or none, with
/// `insecure-skip-verify`), the client certificate, ALPN `http/1.1`, and a session cache of
/// its own (rustls' default in-memory cache: TLS 1.3 tickets and TLS 1.2 session ids, 256
/// server names).
pub fn client_config(
    tls: &UpstreamTls,
    system: &mut SystemRoots,
) -> Result<Arc<ClientConfig>, UpstreamTlsError> {
    let provider = provider();
    // Loaded even when verification is off: a named file that is unusable is still a mistake.
    let roots = match &tls.ca_cert {
        Some(path) => Some(load_ca(path)?),
        None if tls.insecure_skip_verify => None,
        None => Some(system.get().map_err(|m| error("tls", m))?),
    };
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| error("tls", format!("TLS versions: {e}")))?;
    let builder = match roots {
        Some(roots) if !tls.insecure_skip_verify => builder.with_root_certificates(roots),
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate::new(provider))),
    };
    let mut config = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let certified = load_certified_key(cert, key).map_err(|e| {
                let key = match e.file {
                    TlsFile::Cert | TlsFile::Ca | TlsFile::Ocsp => "client-cert",
                    TlsFile::Key => "client-key",
                };
                error(key, e.message)
            })?;
            builder.with_client_cert_resolver(Arc::new(ClientCert(Arc::new(certified))))
        }
        (None, None) => builder.with_no_client_auth(),
        (Some(_), None) => {
            return Err(error(
                "client-cert",
                "`client-cert` needs its `client-key`".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(error(
                "client-key",
                "`client-key` needs its `client-cert`".into(),
            ))
        }
    };
    config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
    Ok(Arc::new(config))
}

/// The name a target's certificate is verified against, and sent as SNI: `sni` when set,
/// else the target's host name; an IP address (as `sni` or as the target) is verified
/// against the certificate's IP addresses and sends no SNI (RFC 6066 allows names only).
pub fn server_name(
    sni: Option<&str>,
    host: Option<&str>,
    ip: Option<IpAddr>,
) -> Result<ServerName<'static>, UpstreamTlsError> {
    if let Some(name) = sni.or(host) {
        let key = if sni.is_some() { "sni" } else { "tls" };
        return ServerName::try_from(name.trim_end_matches('.').to_owned())
            .map_err(|e| error(key, format!("invalid server name {name:?}: {e}")));
    }
    match ip {
        Some(ip) => Ok(ServerName::IpAddress(ip.into())),
        None => Err(error(
            "tls",
            "a target has neither a name nor an address".into(),
        )),
    }
}

/// Checks a `tls` block as a worker would load it, without keeping anything: what the master
/// runs for `-t`, start and reload. Target names are checked by [`server_name`].
pub fn check(tls: &UpstreamTls) -> Result<(), UpstreamTlsError> {
    if let Some(sni) = &tls.sni {
        server_name(Some(sni), None, None)?;
    }
    client_config(tls, &mut SystemRoots::default()).map(|_| ())
}

/// A pool's TLS: its client configuration and the server name of each target.
pub struct PoolTls {
    /// ALPN as the pool's `http-version` says: `http/1.1`, `h2`, or both (`"auto"`).
    config: Arc<ClientConfig>,
    /// `"auto"` only: the same with `http/1.1` alone, for what speaks HTTP/1.1 on its own
    /// connection (health probes, mirrored requests). Same session cache.
    http1: Option<Arc<ClientConfig>>,
    /// Indexed like the pool's targets.
    names: Vec<ServerName<'static>>,
}

impl fmt::Debug for PoolTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolTls")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl PoolTls {
    /// `config` as [`client_config`] built it (ALPN `http/1.1`), for a pool of `version`.
    pub fn new(
        config: Arc<ClientConfig>,
        version: UpstreamHttpVersion,
        names: Vec<ServerName<'static>>,
    ) -> Self {
        let with_alpn = |alpn: &[&[u8]]| {
            let mut c = (*config).clone();
            c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Arc::new(c)
        };
        let (config, http1) = match version {
            UpstreamHttpVersion::Http1 => (config, None),
            UpstreamHttpVersion::Http2 => (with_alpn(&[ALPN_H2]), None),
            UpstreamHttpVersion::Auto => (with_alpn(&[ALPN_H2, ALPN_HTTP_1_1]), Some(config)),
        };
        PoolTls {
            config,
            http1,
            names,
        }
    }

    /// A new client session to target `target`, its ClientHello ready to go; `http1`: offering
    /// `http/1.1` alone.
    pub fn session(&self, target: usize, http1: bool) -> Result<ClientConnection, rustls::Error> {
        let name = self
            .names
            .get(target)
            .cloned()
            .ok_or_else(|| rustls::Error::General("unknown upstream target".into()))?;
        let config = match (&self.http1, http1) {
            (Some(c), true) => c,
            _ => &self.config,
        };
        ClientConnection::new(Arc::clone(config), name)
    }
}

/// The one client certificate of an upstream, offered whatever the server's hints: a backend
/// that asks for a certificate gets this one.
#[derive(Debug)]
struct ClientCert(Arc<CertifiedKey>);

impl ResolvesClientCert for ClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("zentinel-uptls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn server_names_come_from_sni_then_host_and_ip_targets_send_none() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let n = server_name(Some("api.example.com"), None, Some(ip)).unwrap();
        assert_eq!(n.to_str(), "api.example.com");
        let n = server_name(None, Some("backend.internal."), None).unwrap();
        assert_eq!(n.to_str(), "backend.internal");
        assert!(matches!(
            server_name(None, None, Some(ip)).unwrap(),
            ServerName::IpAddress(_)
        ));
        let e = server_name(Some("bad name!"), None, None).unwrap_err();
        assert_eq!(e.key, "sni");
    }

    #[test]
    fn files_are_checked_and_named() {
        let d = dir("files");
        let ck = rcgen::generate_simple_self_signed(vec!["c.test".to_owned()]).unwrap();
        let (cert, key) = (d.join("c.crt"), d.join("c.key"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
        let (cert, key) = (cert.display().to_string(), key.display().to_string());
        let base = UpstreamTls {
            ca_cert: Some(cert.clone()),
            ..UpstreamTls::default()
        };
        check(&base).unwrap();
        let with_client = UpstreamTls {
            client_cert: Some(cert.clone()),
            client_key: Some(key.clone()),
            ..base.clone()
        };
        check(&with_client).unwrap();
        let missing = UpstreamTls {
            ca_cert: Some("/nonexistent/ca.pem".into()),
            ..UpstreamTls::default()
        };
        let e = check(&missing).unwrap_err();
        assert_eq!(e.key, "ca-cert");
        assert!(e.message.contains("/nonexistent/ca.pem"), "{e}");
        // The key file given as the CA: no certificate in it.
        let not_ca = UpstreamTls {
            ca_cert: Some(key.clone()),
            ..UpstreamTls::default()
        };
        assert_eq!(check(&not_ca).unwrap_err().key, "ca-cert");
        let half = UpstreamTls {
            client_cert: Some(cert.clone()),
            ..base.clone()
        };
        assert_eq!(check(&half).unwrap_err().key, "client-cert");
        let swapped = UpstreamTls {
            client_cert: Some(key),
            client_key: Some(cert),
            ..base
        };
        assert_eq!(check(&swapped).unwrap_err().key, "client-cert");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn alpn_is_http_1_1_and_insecure_needs_no_roots() {
        let insecure = UpstreamTls {
            insecure_skip_verify: true,
            ..UpstreamTls::default()
        };
        let c = client_config(&insecure, &mut SystemRoots::default()).unwrap();
        assert_eq!(c.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }
}
