//! TLS for the end-to-end tests: a test CA issuing certificates (rcgen), a blocking rustls
//! client speaking HTTP/1.1, optionally presenting a client certificate, and `openssl
//! s_client` runs read back ([`s_client`]).

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

const DEADLINE: Duration = Duration::from_secs(10);
/// Each CA gets its own name: a certificate from another CA then fails as UnknownIssuer, not
/// as a bad signature under a CA of the same name.
static CA_SEQ: AtomicU64 = AtomicU64::new(0);

// ---------------------------------------------------------------------------------------------
// Certificates.
// ---------------------------------------------------------------------------------------------

pub struct Ca {
    pub cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    #[allow(clippy::new_without_default)] // Each call makes a new CA: not a default value.
    pub fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(
            DnType::CommonName,
            format!(
                "Zentinel test CA {}",
                CA_SEQ.fetch_add(1, Ordering::Relaxed)
            ),
        );
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// A leaf for `names` written to `dir/stem.crt` and `dir/stem.key`; returns its DER.
    pub fn issue(&self, dir: &Path, stem: &str, names: &[&str]) -> CertificateDer<'static> {
        self.issue_with(dir, stem, names, None)
    }

    /// Like [`Ca::issue`], naming `responder` as the leaf's OCSP responder (its Authority
    /// Information Access), with this CA after the leaf in `stem.crt`: the issuer a responder
    /// is asked about.
    pub fn issue_with_responder(
        &self,
        dir: &Path,
        stem: &str,
        names: &[&str],
        responder: &str,
    ) -> CertificateDer<'static> {
        self.issue_with(dir, stem, names, Some(responder))
    }

    fn issue_with(
        &self,
        dir: &Path,
        stem: &str,
        names: &[&str],
        responder: Option<&str>,
    ) -> CertificateDer<'static> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .custom_extensions
            .extend(responder.map(crate::ocsp_responder::aia_extension));
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let mut chain = cert.pem();
        if responder.is_some() {
            chain.push_str(&self.cert.pem());
        }
        // Written next to the final name, then renamed: a reload never reads half a file.
        for (ext, text) in [("crt", chain), ("key", key.serialize_pem())] {
            let tmp = dir.join(format!(".{stem}.{ext}.tmp"));
            fs::write(&tmp, text).unwrap();
            fs::rename(&tmp, dir.join(format!("{stem}.{ext}"))).unwrap();
        }
        cert.der().clone()
    }

    /// `ca.pem` and `ca.key` in `dir`, for tools that sign as this CA (`openssl ocsp`).
    pub fn write_files(&self, dir: &Path) {
        fs::write(dir.join("ca.pem"), self.cert.pem()).unwrap();
        fs::write(dir.join("ca.key"), self.key.serialize_pem()).unwrap();
    }

    /// An OCSP response about `dir/stem.crt` (issued by this CA), signed by the CA itself as
    /// its responder with `openssl ocsp`, valid `days` days (its nextUpdate), saying "good",
    /// or "revoked" when `revoked`; written to `dir/out` through a rename, so a reload never
    /// reads half a file. Needs [`Ca::write_files`] first. `None` when openssl is missing.
    pub fn ocsp_response(
        &self,
        dir: &Path,
        stem: &str,
        out: &str,
        days: u32,
        revoked: bool,
    ) -> Option<PathBuf> {
        let openssl = |args: &[&str]| {
            std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
        };
        let crt = format!("{stem}.crt");
        let entry = crate::ocsp_responder::index_entry(dir, stem, revoked)?;
        let index = format!(".{out}.index");
        let request = format!(".{out}.req");
        let tmp = format!(".{out}.tmp");
        fs::write(dir.join(&index), entry).unwrap();
        let days = days.to_string();
        for args in [
            &[
                "ocsp",
                "-issuer",
                "ca.pem",
                "-cert",
                &crt,
                "-no_nonce",
                "-reqout",
                &request,
            ][..],
            &[
                "ocsp", "-index", &index, "-rsigner", "ca.pem", "-rkey", "ca.key", "-CA", "ca.pem",
                "-reqin", &request, "-respout", &tmp, "-ndays", &days,
            ],
        ] {
            let o = openssl(args).unwrap();
            assert!(o.status.success(), "openssl {args:?}: {o:?}");
        }
        fs::rename(dir.join(&tmp), dir.join(out)).unwrap();
        Some(dir.join(out))
    }

    /// A client certificate whose subject is `CN=common_name,O=org`, for mutual TLS.
    pub fn issue_client(
        &self,
        common_name: &str,
        org: &str,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, org);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let key = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        (vec![cert.der().clone()], key)
    }
}

// ---------------------------------------------------------------------------------------------
// A blocking rustls client speaking HTTP/1.1.
// ---------------------------------------------------------------------------------------------

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn client_config(
    ca: &CertificateDer<'static>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A client trusting `ca` that presents `chain` (mutual TLS).
pub fn client_with_cert(
    ca: &CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

pub fn default_client(ca: &CertificateDer<'static>) -> Arc<ClientConfig> {
    client_config(ca, rustls::DEFAULT_VERSIONS)
}

pub struct TlsResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl TlsResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub struct TlsClient {
    host: String,
    pub io: BufReader<StreamOwned<ClientConnection, TcpStream>>,
}

impl TlsClient {
    /// Connects and completes the handshake, sending `server_name` as SNI.
    pub fn try_connect(
        addr: SocketAddr,
        server_name: &str,
        config: Arc<ClientConfig>,
    ) -> Result<TlsClient, String> {
        let sock = TcpStream::connect_timeout(&addr, DEADLINE).map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(DEADLINE)).unwrap();
        sock.set_write_timeout(Some(DEADLINE)).unwrap();
        let name = ServerName::try_from(server_name.to_owned()).unwrap();
        let conn = ClientConnection::new(config, name).map_err(|e| e.to_string())?;
        let mut stream = StreamOwned::new(conn, sock);
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .map_err(|e| format!("handshake: {e}"))?;
        }
        Ok(TlsClient {
            host: server_name.to_owned(),
            io: BufReader::new(stream),
        })
    }

    pub fn connect(addr: SocketAddr, server_name: &str, config: Arc<ClientConfig>) -> TlsClient {
        Self::try_connect(addr, server_name, config)
            .unwrap_or_else(|e| panic!("TLS connect to {addr} as {server_name}: {e}"))
    }

    pub fn conn(&self) -> &ClientConnection {
        &self.io.get_ref().conn
    }

    pub fn leaf(&self) -> CertificateDer<'static> {
        self.conn()
            .peer_certificates()
            .and_then(|c| c.first())
            .expect("server sent no certificate")
            .clone()
            .into_owned()
    }

    pub fn try_get(&mut self, path: &str) -> Result<TlsResponse, String> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.host);
        let s = self.io.get_mut();
        s.write_all(req.as_bytes())
            .and_then(|()| s.flush())
            .map_err(|e| format!("send {path}: {e}"))?;
        self.read_response().map_err(|e| format!("GET {path}: {e}"))
    }

    pub fn get(&mut self, path: &str) -> TlsResponse {
        self.try_get(path).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn read_response(&mut self) -> Result<TlsResponse, String> {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let n = self
                .io
                .read_until(b'\n', &mut head)
                .map_err(|e| format!("head: {e}"))?;
            if n == 0 {
                return Err(format!(
                    "EOF in the response head after {:?}",
                    String::from_utf8_lossy(&head)
                ));
            }
        }
        let (parsed, _) = crate::parse_response_head(&head)?
            .ok_or_else(|| format!("incomplete head {:?}", String::from_utf8_lossy(&head)))?;
        let len = parsed
            .content_length()
            .and_then(|len| usize::try_from(len).ok())
            .ok_or_else(|| format!("no Content-Length in {:?}", parsed.headers))?;
        let mut body = vec![0; len];
        self.io
            .read_exact(&mut body)
            .map_err(|e| format!("body of {len} bytes: {e}"))?;
        Ok(TlsResponse {
            status: parsed.status,
            headers: parsed.headers,
            body,
        })
    }

    /// After a `Connection: close` response: the server must end the TLS session with
    /// close_notify (rustls reports that as a clean EOF, `Ok(0)`; a bare TCP FIN would be
    /// `UnexpectedEof`).
    pub fn expect_close_notify(&mut self) {
        let mut rest = Vec::new();
        match self.io.read_to_end(&mut rest) {
            Ok(_) => assert!(rest.is_empty(), "bytes after the last response: {rest:?}"),
            Err(e) => panic!("no clean close_notify at the end: {e} ({:?})", e.kind()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// openssl s_client.
// ---------------------------------------------------------------------------------------------

/// How long one `openssl s_client` run may take.
const S_CLIENT_DEADLINE: Duration = Duration::from_secs(20);

/// True (and said) when `openssl` is not installed: the tests that need it skip.
pub fn openssl_missing() -> bool {
    let missing = Command::new("openssl").arg("version").output().is_err();
    if missing {
        eprintln!("openssl not installed: skipping");
    }
    missing
}

/// What one `openssl s_client` run printed, and how it ended.
pub struct SClient {
    pub ok: bool,
    pub out: String,
}

impl SClient {
    /// The `New, TLSv1.3, Cipher is X` line: (`New` or `Reused`, protocol, cipher).
    pub fn session(&self) -> Option<(String, String, String)> {
        let line = self
            .out
            .lines()
            .find(|l| l.starts_with("New, ") || l.starts_with("Reused, "))?;
        let (kind, rest) = line.split_once(", ")?;
        let (proto, cipher) = rest.split_once(", Cipher is ")?;
        Some((kind.to_owned(), proto.to_owned(), cipher.trim().to_owned()))
    }

    pub fn cipher(&self) -> Option<String> {
        self.session().map(|(_, _, c)| c).filter(|c| c != "(NONE)")
    }

    /// `Reused` or `New` (`None`: no handshake completed).
    pub fn kind(&self) -> Option<String> {
        self.session().map(|(k, _, _)| k)
    }

    /// The `Next Update:` of the stapled OCSP response, if one was stapled.
    pub fn staple_next_update(&self) -> Option<String> {
        if !self.out.contains("OCSP Response Status: successful") {
            return None;
        }
        self.out
            .lines()
            .find_map(|l| l.trim().strip_prefix("Next Update: "))
            .map(str::to_owned)
    }

    /// The stapled OCSP response as printed (between its `=====` lines, signature included:
    /// two responses signed apart differ even within one second), if one was stapled.
    pub fn staple(&self) -> Option<String> {
        if !self.out.contains("OCSP Response Status: successful") {
            return None;
        }
        let mut blocks = self.out.split("======================================");
        blocks.next();
        blocks.next().map(|block| block.trim().to_owned())
    }

    /// Every session ticket printed (the TLS 1.2 one in the handshake's session, the TLS 1.3
    /// ones as they arrive): its lifetime hint in seconds and its first 16 bytes in hex (the
    /// name of the key that sealed it, with Zentinel's ticketer).
    pub fn tickets(&self) -> Vec<(u32, String)> {
        let mut tickets = Vec::new();
        let mut lines = self.out.lines().map(str::trim).peekable();
        let mut hint = None;
        while let Some(line) = lines.next() {
            if let Some(rest) = line.strip_prefix("TLS session ticket lifetime hint: ") {
                hint = rest.split_whitespace().next().and_then(|n| n.parse().ok());
            } else if line == "TLS session ticket:" {
                // `0000 - 6f 2e 71 f1 a6 8d 3a 40-a2 b3 94 ac 7e 2a 8b 7c   o.q...:@....~*.|`
                let first = lines.next().unwrap_or_default();
                let bytes: String = first
                    .strip_prefix("0000 - ")
                    .unwrap_or_default()
                    .chars()
                    .take(47)
                    .filter(char::is_ascii_hexdigit)
                    .collect();
                if let Some(hint) = hint.take() {
                    tickets.push((hint, bytes));
                }
            }
        }
        tickets
    }

    /// The `"pid":N` of a `builtin-handler "status"` answer: which worker served.
    pub fn served_by(&self) -> Option<u32> {
        let at = self.out.find("\"pid\":")? + "\"pid\":".len();
        let digits: String = self.out[at..]
            .trim_start()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    }
}

/// `openssl s_client` to `addr` as `a.test`, verifying against `dir/ca.pem`: one `GET /s` with
/// `Connection: close`, then it waits for the server to close (`-ign_eof`), so TLS 1.3
/// tickets sent after the handshake are read too. Killed at the deadline.
pub fn s_client(addr: SocketAddr, dir: &Path, args: &[&str]) -> SClient {
    s_client_get(addr, dir, "/s", args)
}

/// [`s_client`] asking for `path`.
pub fn s_client_get(addr: SocketAddr, dir: &Path, path: &str, args: &[&str]) -> SClient {
    s_client_named(addr, dir, "a.test", path, args)
}

/// [`s_client`] as `server_name` (SNI and `Host`), asking for `path`.
pub fn s_client_named(
    addr: SocketAddr,
    dir: &Path,
    server_name: &str,
    path: &str,
    args: &[&str],
) -> SClient {
    let mut child = Command::new("openssl")
        .arg("s_client")
        .args(["-connect", &addr.to_string(), "-servername", server_name])
        .arg("-CAfile")
        .arg(dir.join("ca.pem"))
        .arg("-ign_eof")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client");
    if let Some(mut stdin) = child.stdin.take() {
        // A refused handshake closes the pipe early: the write may fail, which is fine.
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n");
        let _ = stdin.write_all(request.as_bytes());
    }
    let started = Instant::now();
    while child.try_wait().ok().flatten().is_none() {
        if started.elapsed() > S_CLIENT_DEADLINE {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = child.wait_with_output().expect("openssl s_client output");
    SClient {
        ok: o.status.success(),
        out: format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    }
}
