//! TLS for the test backend (`zentinel-backend --tls CERT KEY [--client-ca CA]`): a blocking
//! rustls server stream in place of the plain TCP one, and what the backend tells about the
//! session (`GET /tls`: the server name the client sent, whether the session was resumed,
//! whether it presented a certificate).

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{HandshakeKind, RootCertStore, ServerConfig, ServerConnection, StreamOwned};

/// The server configuration of a TLS backend: `cert`/`key` PEM files; with `client_ca`, a
/// client certificate issued by that CA is required (mTLS).
pub fn server_config(
    cert: &str,
    key: &str,
    client_ca: Option<&str>,
) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let read = |path: &str| std::fs::read(path).map_err(|e| format!("{path}: {e}"));
    let chain = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{cert}: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|e| format!("{key}: {e}"))?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&read(ca)?) {
                roots
                    .add(c.map_err(|e| format!("{ca}: {e}"))?)
                    .map_err(|e| format!("{ca}: {e}"))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| e.to_string())?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A backend connection: plain TCP, or TLS over it (the handshake runs on the first read).
pub enum BackendStream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ServerConnection, TcpStream>>),
}

impl BackendStream {
    pub fn new(tcp: TcpStream, tls: Option<&Arc<ServerConfig>>) -> io::Result<Self> {
        Ok(match tls {
            None => BackendStream::Plain(tcp),
            Some(config) => {
                let conn = ServerConnection::new(Arc::clone(config)).map_err(io::Error::other)?;
                BackendStream::Tls(Box::new(StreamOwned::new(conn, tcp)))
            }
        })
    }

    pub fn tcp(&self) -> &TcpStream {
        match self {
            BackendStream::Plain(s) => s,
            BackendStream::Tls(t) => &t.sock,
        }
    }

    /// TLS: close_notify first, so the peer sees the end of the stream, not a truncation.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        if let BackendStream::Tls(t) = self {
            t.conn.send_close_notify();
            t.flush()?;
        }
        self.tcp().shutdown(Shutdown::Write)
    }

    /// `sni=NAME resumed=BOOL client-cert=BOOL alpn=PROTO` for a TLS connection, `plain`
    /// otherwise.
    pub fn describe(&self) -> String {
        let BackendStream::Tls(t) = self else {
            return "plain".into();
        };
        let c = &t.conn;
        format!(
            "sni={} resumed={} client-cert={} alpn={}",
            c.server_name().unwrap_or("-"),
            c.handshake_kind() == Some(HandshakeKind::Resumed),
            c.peer_certificates().is_some_and(|p| !p.is_empty()),
            c.alpn_protocol()
                .map_or("-".into(), |p| String::from_utf8_lossy(p).into_owned()),
        )
    }
}

impl Read for BackendStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            BackendStream::Plain(s) => s.read(buf),
            BackendStream::Tls(t) => t.read(buf),
        }
    }
}

impl Write for BackendStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            BackendStream::Plain(s) => s.write(buf),
            BackendStream::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            BackendStream::Plain(s) => s.flush(),
            BackendStream::Tls(t) => t.flush(),
        }
    }
}
