//! TLS termination: certificates loaded from the paths in the configuration, one rustls
//! `ServerConfig` per listener (shared by its sessions), and [`TlsSock`], a TLS connection
//! driven over the non-blocking socket: a client's session (the proxy is the server), or a TLS
//! upstream's (the proxy is the client, see `upstream::tls`).
//!
//! The master loads every file once to validate a configuration (`--check`, start, reload);
//! the workers load them again when they install it, so a reload re-reads certificates that
//! were replaced on disk and the workers of an upgraded binary read them for themselves.

use std::fmt;
use std::io::{self, Read, Write};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, ServerConnection};
use rustls::sign::CertifiedKey;
use rustls::{ClientConnection, Connection};

use crate::client_cert;
use crate::sock::{Buf, ReadOutcome, Ready, Sock, BUF_CAP};
pub use crate::tls_listener::{server_config, Resumption};

/// ALPN protocol id of HTTP/1.1 over TLS.
pub const ALPN_HTTP_1_1: &[u8] = b"http/1.1";
/// ALPN protocol id of HTTP/2 over TLS.
pub const ALPN_H2: &[u8] = b"h2";

/// Which of the two files of a certificate a loading error is about, so the master can point
/// at the right line of the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    Cert,
    Key,
    /// The `ca-file` client certificates are verified against.
    Ca,
    /// An `ocsp-response` file.
    Ocsp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFileError {
    pub file: TlsFile,
    pub message: String,
}

impl fmt::Display for TlsFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TlsFileError {}

fn provider() -> Arc<CryptoProvider> {
    // ring: it builds with the C compiler alone (aws-lc-rs needs cmake and nasm).
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM certificate chain and its private key, and checks that they belong together.
pub fn load_certified_key(cert_file: &str, key_file: &str) -> Result<CertifiedKey, TlsFileError> {
    load_with(cert_file, key_file, &provider())
}

pub(crate) fn load_with(
    cert_file: &str,
    key_file: &str,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsFileError> {
    let cert_err = |message: String| TlsFileError {
        file: TlsFile::Cert,
        message,
    };
    let key_err = |message: String| TlsFileError {
        file: TlsFile::Key,
        message,
    };
    let cert_pem = std::fs::read(cert_file)
        .map_err(|e| cert_err(format!("cannot read certificate file {cert_file}: {e}")))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(format!("invalid PEM in certificate file {cert_file}: {e}")))?;
    if chain.is_empty() {
        return Err(cert_err(format!(
            "no certificate (-----BEGIN CERTIFICATE-----) in {cert_file}"
        )));
    }
    let key_pem = std::fs::read(key_file)
        .map_err(|e| key_err(format!("cannot read key file {key_file}: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        key_err(format!(
            "no usable private key (PKCS#8, PKCS#1 or SEC1 PEM) in {key_file}: {e}"
        ))
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => key_err(format!(
            "private key {key_file} does not match the certificate in {cert_file}"
        )),
        rustls::Error::InvalidCertificate(_) | rustls::Error::InvalidCertRevocationList(_) => {
            cert_err(format!("invalid certificate in {cert_file}: {e}"))
        }
        other => key_err(format!("unusable private key in {key_file}: {other}")),
    })
}

/// A TLS connection: the same operations as [`Sock`], on plaintext.
///
/// Ciphertext rustls has produced but the socket did not take yet (a full send buffer) is
/// pushed again by every later operation, each of which runs on the socket's next event.
/// The plaintext rustls accepts is bounded ([`BUF_CAP`]) and is taken only once the previous
/// ciphertext left, so a client that stops reading still backs up into the session's buffer,
/// where the session's stall timeout sees it.
pub(crate) struct TlsSock {
    pub sock: Sock,
    conn: Connection,
    /// An upstream connection whose TCP connect is not confirmed yet (see `poll_connect`).
    tcp_pending: bool,
    /// The client closed the TLS session (close_notify) or the TCP connection.
    plain_eof: bool,
    /// Decrypted bytes may wait inside rustls (the caller's buffer was full).
    plain_pending: bool,
    /// Our close_notify is queued; the TCP write side is shut once it has left.
    closing: bool,
}

impl fmt::Debug for TlsSock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSock")
            .field("sock", &self.sock)
            .field("handshaking", &self.conn.is_handshaking())
            .field("plain_eof", &self.plain_eof)
            .field("closing", &self.closing)
            .finish()
    }
}

impl TlsSock {
    pub fn new(sock: Sock, config: Arc<ServerConfig>) -> Result<Self, rustls::Error> {
        Ok(Self::over(
            sock,
            ServerConnection::new(config)?.into(),
            false,
        ))
    }

    /// The proxy's side of a TLS upstream connection whose TCP connect was just started.
    pub fn client(sock: Sock, conn: ClientConnection) -> Self {
        Self::over(sock, conn.into(), true)
    }

    fn over(sock: Sock, mut conn: Connection, tcp_pending: bool) -> Self {
        conn.set_buffer_limit(Some(BUF_CAP));
        TlsSock {
            sock,
            conn,
            tcp_pending,
            plain_eof: false,
            plain_pending: false,
            closing: false,
        }
    }

    /// Drive an upstream connection's connect, then its handshake. `Ok(true)` once the
    /// handshake is complete: the request may go. A handshake failure (a certificate that does
    /// not verify, an alert from the server) is an error saying why.
    pub fn poll_connect(&mut self) -> io::Result<bool> {
        if self.tcp_pending {
            if !self.sock.poll_connect()? {
                return Ok(false);
            }
            self.tcp_pending = false;
        }
        let failed = |e: io::Error| io::Error::new(e.kind(), format!("TLS handshake failed: {e}"));
        loop {
            self.push().map_err(failed)?;
            if !self.conn.is_handshaking() {
                return Ok(true);
            }
            if !self.read_tls().map_err(failed)? {
                if self.sock.read_eof {
                    return Err(failed(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed by the server",
                    )));
                }
                return Ok(false);
            }
        }
    }

    /// A pooled upstream connection handed to a new exchange (see [`Sock::reuse`]).
    pub fn reuse(&mut self) {
        self.sock.reuse();
        self.plain_pending = false;
    }

    /// Readiness on a pooled upstream connection: `true` while it is still good for a request.
    /// Handshake messages that arrive late (TLS 1.3 session tickets, key updates) are taken in;
    /// application bytes, a close_notify, an EOF or an error make it unusable.
    pub fn idle_ok(&mut self) -> bool {
        self.sock.readable = true;
        let mut scratch = Buf::new();
        match self.fill(&mut scratch, 1) {
            Ok(r) => scratch.is_empty() && !r.eof && !self.sock.read_eof,
            Err(_) => false,
        }
    }

    pub fn on_ready(&mut self, r: Ready) {
        self.sock.on_ready(r);
    }

    /// The subject of the certificate the client presented (verified during the handshake),
    /// once the handshake is done.
    pub fn client_subject(&self) -> Option<String> {
        let leaf = self.conn.peer_certificates()?.first()?;
        client_cert::subject(leaf)
    }

    pub fn read_eof(&self) -> bool {
        self.plain_eof
    }

    /// The handshake is done and chose HTTP/2 (ALPN `h2`).
    pub fn negotiated_h2(&self) -> bool {
        !self.conn.is_handshaking() && self.conn.alpn_protocol() == Some(ALPN_H2)
    }

    /// More plaintext may be had without waiting for an event.
    pub fn readable(&self) -> bool {
        !self.plain_eof && (self.sock.readable || self.plain_pending)
    }

    /// Decrypt into `buf` until the socket is drained, EOF, or `buf` holds `cap` bytes. The
    /// handshake runs inside: it yields no plaintext until it is done.
    pub fn fill(&mut self, buf: &mut Buf, cap: usize) -> io::Result<ReadOutcome> {
        let mut out = ReadOutcome::default();
        self.push()?;
        loop {
            self.plain_pending = false;
            while !self.plain_eof && buf.len() < cap {
                match buf.read_from(&mut self.conn.reader(), cap - buf.len()) {
                    // close_notify: the client will send nothing more.
                    Ok(0) => {
                        self.plain_eof = true;
                        out.eof = true;
                    }
                    Ok(n) => out.bytes += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // A TCP EOF without close_notify: what plain HTTP calls an EOF (the HTTP
                    // framing tells a complete request from a truncated one).
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        self.plain_eof = true;
                        out.eof = true;
                    }
                    Err(e) => return Err(e),
                }
            }
            if self.plain_eof {
                break;
            }
            if buf.len() >= cap {
                self.plain_pending = true;
                break;
            }
            if !self.read_tls()? {
                break;
            }
        }
        // Handshake messages, alerts and key updates answer what was just read.
        self.push()?;
        if buf.is_empty() {
            buf.clear();
        }
        Ok(out)
    }

    /// One read of ciphertext, processed. `Ok(false)`: nothing more to read for now.
    fn read_tls(&mut self) -> io::Result<bool> {
        if !self.sock.readable || self.sock.read_eof || !self.conn.wants_read() {
            return Ok(false);
        }
        match self.conn.read_tls(&mut self.sock.drain_reader()) {
            Ok(0) => self.sock.read_eof = true,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.sock.readable = false;
                return Ok(false);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(true),
            Err(e) => return Err(e),
        }
        if let Err(e) = self.conn.process_new_packets() {
            // rustls queued an alert telling the client why: best effort to send it.
            let _ = self.push();
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        Ok(true)
    }

    /// Write pending ciphertext until the socket would block; shut the TCP write side once a
    /// queued close_notify has left.
    fn push(&mut self) -> io::Result<()> {
        while self.sock.writable && self.conn.wants_write() {
            match self.conn.write_tls(&mut self.sock.stream) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.sock.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.closing && !self.conn.wants_write() {
            self.sock.shutdown_write();
        }
        Ok(())
    }

    /// Encrypt as much of `buf` as the connection takes and write it. Returns the plaintext
    /// bytes taken.
    pub fn flush(&mut self, buf: &mut Buf) -> io::Result<usize> {
        let mut total = 0;
        loop {
            self.push()?;
            // Ciphertext still waiting: keep the rest in `buf` (backpressure).
            if buf.is_empty() || self.closing || self.conn.wants_write() {
                break;
            }
            let n = self.conn.writer().write(buf.as_slice())?;
            if n == 0 {
                break;
            }
            buf.consume(n);
            total += n;
        }
        Ok(total)
    }

    /// Read and throw away a closing connection's late input; pushes out what is pending.
    /// `Ok(true)` at EOF.
    pub fn discard(&mut self) -> io::Result<bool> {
        self.push()?;
        let mut chunk = [0u8; 4096];
        loop {
            loop {
                match self.conn.reader().read(&mut chunk) {
                    Ok(0) => {
                        self.plain_eof = true;
                        break;
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        self.plain_eof = true;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            // After the client's close_notify rustls reads no more: the raw bytes (nothing
            // but a FIN, normally) are drained directly.
            if self.plain_eof || self.sock.read_eof || !self.read_tls()? {
                break;
            }
        }
        self.push()?;
        if self.plain_eof && !self.sock.read_eof {
            return self.sock.discard();
        }
        Ok(self.sock.read_eof)
    }

    /// Ciphertext rustls produced that the socket has not taken yet (a full send buffer).
    pub fn write_pending(&self) -> bool {
        self.conn.wants_write()
    }

    /// Queue close_notify and shut the TCP write side once it is out: the client learns that
    /// the response ended there, not that the connection broke.
    pub fn shutdown_write(&mut self) {
        if !self.closing {
            self.closing = true;
            self.conn.send_close_notify();
        }
        let _ = self.push();
    }

    /// The connection is being dropped: a last attempt to send what is pending and a
    /// close_notify, without waiting.
    pub fn close(&mut self) {
        self.shutdown_write();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_are_named() {
        let err = load_certified_key("/nonexistent/cert.pem", "/nonexistent/key.pem").unwrap_err();
        assert_eq!(err.file, TlsFile::Cert);
        assert!(err.message.contains("/nonexistent/cert.pem"), "{err}");
    }

    #[test]
    fn a_file_without_pem_is_refused() {
        let dir = std::env::temp_dir().join(format!("zentinel-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = dir.join("cert.pem");
        std::fs::write(&cert, "not a certificate\n").unwrap();
        let cert = cert.to_str().unwrap();
        let err = load_certified_key(cert, "/nonexistent/key.pem").unwrap_err();
        assert_eq!(err.file, TlsFile::Cert);
        assert!(err.message.contains("no certificate"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
