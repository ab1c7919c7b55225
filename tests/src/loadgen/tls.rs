//! `--tls`: the rustls client configuration every connection of a run shares, built once from
//! the command line (so a bad `--ca` file is a usage error, not a run of failed handshakes).

use std::fmt;
use std::sync::Arc;
use zentinel_worker::tls_verify::AcceptAnyCertificate;

use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

use super::cli::CliError;

/// Sessions the `--resume` store keeps. rustls keys it by server name (one here) and keeps up
/// to 8 TLS 1.3 tickets per name, each used once; a server sends new ones on every
/// connection, so the store refills as fast as connections use it.
const SESSION_STORE: usize = 256;

/// How the server's certificate is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsVerify {
    /// Against the CA certificates of this PEM file (`--ca`).
    Ca(String),
    /// Not at all (`--insecure`); the handshake signature is still verified, so a handshake
    /// costs the client what it costs with `--ca`.
    Insecure,
}

/// The TLS side of a run.
#[derive(Clone)]
pub struct TlsSetup {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
    /// The name as given (`--sni`, or the host without its port).
    pub sni: String,
    pub verify: TlsVerify,
    /// New connections resume earlier sessions (`--resume`).
    pub resume: bool,
}

impl fmt::Debug for TlsSetup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSetup")
            .field("sni", &self.sni)
            .field("verify", &self.verify)
            .field("resume", &self.resume)
            .finish_non_exhaustive()
    }
}

impl TlsSetup {
    /// `TLS (SNI a.test, verified against ca.pem, resumption)` for the summary.
    pub fn describe(&self) -> String {
        let sni = match self.server_name {
            ServerName::DnsName(_) => format!("SNI {}", self.sni),
            _ => format!("no SNI, IP {}", self.sni),
        };
        let verify = match &self.verify {
            TlsVerify::Ca(file) => format!("verified against {file}"),
            TlsVerify::Insecure => "certificate not verified".to_owned(),
        };
        let resume = if self.resume {
            "resuming sessions"
        } else {
            "a full handshake per connection"
        };
        format!("TLS ({sni}, {verify}, {resume})")
    }
}

/// The host part of a `Host` value or address: `a.test:8443` -> `a.test`, `[::1]:443` -> `::1`.
pub fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(h, _)| h);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Builds the client configuration: TLS 1.2 and 1.3 with rustls' (ring) suites, ALPN
/// `http/1.1`, and a session store only with `resume`.
pub fn setup(sni: &str, verify: TlsVerify, resume: bool) -> Result<TlsSetup, CliError> {
    let server_name = ServerName::try_from(sni.to_owned())
        .map_err(|e| CliError(format!("--sni {sni:?}: not a DNS name or IP address ({e})")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| CliError(format!("--tls: {e}")))?;
    let mut config = match &verify {
        TlsVerify::Ca(file) => {
            let mut roots = RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(file)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| CliError(format!("--ca {file}: {e}")))?;
            if certs.is_empty() {
                return Err(CliError(format!("--ca {file}: no PEM certificate in it")));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| CliError(format!("--ca {file}: {e}")))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        TlsVerify::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate::new(provider)))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // rustls resumes by default (a store shared by every connection of this configuration);
    // without `--resume` every connection must cost a full handshake.
    config.resumption = if resume {
        Resumption::in_memory_sessions(SESSION_STORE)
    } else {
        Resumption::disabled()
    };
    Ok(TlsSetup {
        config: Arc::new(config),
        server_name,
        sni: sni.to_owned(),
        verify,
        resume,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names() {
        assert_eq!(host_name("a.test:8443"), "a.test");
        assert_eq!(host_name("a.test"), "a.test");
        assert_eq!(host_name("127.0.0.1:9"), "127.0.0.1");
        assert_eq!(host_name("[::1]:443"), "::1");
        assert_eq!(host_name("::1"), "::1");
    }

    #[test]
    fn bad_names_and_files_are_usage_errors() {
        assert!(setup("not a name", TlsVerify::Insecure, false).is_err());
        assert!(setup("a.test", TlsVerify::Ca("/nonexistent/ca.pem".into()), false).is_err());
        let s = setup("127.0.0.1", TlsVerify::Insecure, true).unwrap();
        assert!(matches!(s.server_name, ServerName::IpAddress(_)));
        assert!(s.describe().contains("no SNI"));
    }
}
