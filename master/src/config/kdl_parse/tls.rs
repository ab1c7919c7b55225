//! The `tls` block of an http listener, in Zentinel's vocabulary:
//!
//! ```kdl
//! tls {
//!     cert-file "/etc/zentinel/certs/default.crt"
//!     key-file "/etc/zentinel/certs/default.key"
//!     min-version "1.2"
//!     session-resumption #true
//!     ocsp-stapling #true
//!     ocsp-response "/etc/zentinel/certs/default.ocsp.der"
//!     sni {
//!         hostnames "example.com" "*.example.com"
//!         cert-file "/etc/zentinel/certs/example.crt"
//!         key-file "/etc/zentinel/certs/example.key"
//!         ocsp-response "/etc/zentinel/certs/example.ocsp.der"
//!     }
//! }
//! ```
//!
//! Every certificate, key and OCSP response is loaded here, so `--check`, start and reload all
//! fail on a file that is missing, unreadable, not PEM (DER for OCSP), whose key does not
//! match its certificate or whose OCSP response is about another certificate, with the line of
//! the offending node. Relative paths are taken from the directory of the configuration file
//! and travel absolute, so workers never depend on a working directory. Versions and cipher
//! suites are in `tls_options`.

use std::path::Path;

use kdl::KdlNode;
use kdl::KdlValue;
use rustls::sign::CertifiedKey;
use zentinel_protocol::config::{ClientAuth, SniCertificate, TlsConfig, TlsVersion};
use zentinel_worker::client_cert;
use zentinel_worker::tls::{load_certified_key, TlsFile};

use super::tls_options::{check_ocsp, version, Suites};
use super::{
    args, block, describe, did_you_mean, leaf_bool, leaf_string, name, name_at, no_children, props,
    single_arg, string_value, unknown_property, Diagnostics, Seen,
};

const TLS_KEYS: &[&str] = &[
    "cert-file",
    "key-file",
    "min-version",
    "max-version",
    "sni",
    "ca-file",
    "client-auth",
    "cipher-suites",
    "cipher-suite",
    "session-resumption",
    "ocsp-stapling",
    "ocsp-response",
];
/// Keys that may be repeated: one `sni` per certificate, one `cipher-suite` per suite
/// (upstream's form).
const TLS_REPEATABLE: &[&str] = &["sni", "cipher-suite"];
/// Zentinel's TLS settings this build does not implement yet.
const TLS_UNSUPPORTED: &[&str] = &["acme"];
const SNI_KEYS: &[&str] = &["hostnames", "cert-file", "key-file", "ocsp-response"];

/// A `cert-file`/`key-file` pair (and its `ocsp-response`) as written: absolute paths and
/// where each was written.
struct FilePair {
    cert: Option<(String, usize)>,
    key: Option<(String, usize)>,
    ocsp: Option<(String, usize)>,
}

/// A certificate loaded by [`FilePair::check`].
struct Loaded {
    cert: String,
    key: String,
    ocsp: Option<(String, usize)>,
    certified: CertifiedKey,
    cert_at: usize,
}

impl Loaded {
    /// Checks the OCSP response (when stapling is on); returns its path for the model.
    fn ocsp_path(
        &self,
        stapling: bool,
        ok: &mut bool,
        diags: &mut Diagnostics<'_>,
    ) -> Option<String> {
        let (path, at) = self.ocsp.as_ref()?;
        if !stapling {
            diags.warn(
                *at,
                "ocsp-response",
                "`ocsp-response` has no effect: `ocsp-stapling #false` staples nothing",
            );
        } else if !check_ocsp(path, *at, &self.certified, diags) {
            *ok = false;
        }
        Some(path.clone())
    }
}

impl FilePair {
    fn new() -> Self {
        FilePair {
            cert: None,
            key: None,
            ocsp: None,
        }
    }

    /// Handles `cert-file`/`key-file`/`ocsp-response`; false for any other node.
    fn take(&mut self, child: &KdlNode, diags: &mut Diagnostics<'_>) -> bool {
        let slot = match name(child) {
            "cert-file" => &mut self.cert,
            "key-file" => &mut self.key,
            "ocsp-response" => &mut self.ocsp,
            _ => return false,
        };
        if let Some((path, at)) = leaf_string(child, diags) {
            if path.is_empty() {
                diags.error(at, name(child), "path must not be empty");
            } else {
                *slot = Some((resolve_config_path(&path, diags.file_at(at)), at));
            }
        }
        true
    }

    /// Reports what is missing, then loads the pair. `None` when anything is wrong.
    fn check(self, node: &KdlNode, what: &str, diags: &mut Diagnostics<'_>) -> Option<Loaded> {
        for (slot, key) in [(&self.cert, "cert-file"), (&self.key, "key-file")] {
            if slot.is_none() {
                diags.error(
                    name_at(node),
                    name(node),
                    format!("{what} has no `{key}` (required)"),
                );
            }
        }
        let ((cert, cert_at), (key, key_at)) = (self.cert?, self.key?);
        match load_certified_key(&cert, &key) {
            Ok(certified) => Some(Loaded {
                cert,
                key,
                ocsp: self.ocsp,
                certified,
                cert_at,
            }),
            Err(e) => {
                let (at, node_name) = match e.file {
                    TlsFile::Cert | TlsFile::Ca | TlsFile::Ocsp => (cert_at, "cert-file"),
                    TlsFile::Key => (key_at, "key-file"),
                };
                diags.error(at, node_name, e.message);
                None
            }
        }
    }
}

/// Relative to the configuration file's directory, made absolute.
pub(super) fn resolve_config_path(path: &str, config_file: &str) -> String {
    let p = Path::new(path);
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        Path::new(config_file)
            .parent()
            .map_or_else(|| p.to_path_buf(), |dir| dir.join(p))
    };
    std::path::absolute(&joined)
        .unwrap_or(joined)
        .display()
        .to_string()
}

/// Parses a listener's `tls { ... }`. `None` when it has errors (all reported).
pub(super) fn parse_tls(
    node: &KdlNode,
    label: &str,
    diags: &mut Diagnostics<'_>,
) -> Option<TlsConfig> {
    let mut ok = true;
    let mut files = FilePair::new();
    let mut min_version = TlsVersion::Tls12;
    let mut max_version = None;
    let mut max_at = None;
    let mut sni = Vec::new();
    let mut ca_file: Option<String> = None;
    let mut client_auth: Option<(ClientAuth, usize)> = None;
    let mut suites = Suites::default();
    let mut session_resumption = true;
    let mut ocsp_stapling = true;
    let mut seen = Seen::default();
    for child in block(node, diags) {
        if TLS_KEYS.contains(&name(child))
            && !TLS_REPEATABLE.contains(&name(child))
            && !seen.check(child, diags)
        {
            ok = false;
            continue;
        }
        if files.take(child, diags) {
            continue;
        }
        match name(child) {
            "min-version" => match version(child, diags) {
                Some(v) => min_version = v,
                None => ok = false,
            },
            "max-version" => match version(child, diags) {
                Some(v) => {
                    max_version = Some(v);
                    max_at = Some(name_at(child));
                }
                None => ok = false,
            },
            "sni" => match parse_sni(child, diags) {
                Some(s) => sni.push(s),
                None => ok = false,
            },
            "ca-file" => match parse_ca_file(child, diags) {
                Some(path) => ca_file = Some(path),
                None => ok = false,
            },
            "client-auth" => match parse_client_auth(child, diags) {
                Some(mode) => client_auth = Some((mode, name_at(child))),
                None => ok = false,
            },
            "cipher-suite" | "cipher-suites" => ok &= suites.parse(child, diags),
            "session-resumption" => match leaf_bool(child, diags) {
                Some(on) => session_resumption = on,
                None => ok = false,
            },
            "ocsp-stapling" => match leaf_bool(child, diags) {
                Some(on) => ocsp_stapling = on,
                None => ok = false,
            },
            n => {
                ok = false;
                let message = if TLS_UNSUPPORTED.contains(&n) {
                    format!("`{n}` is not supported yet")
                } else {
                    format!(
                        "unknown node `{n}` in `tls`{}",
                        did_you_mean(n, TLS_KEYS.iter().copied())
                    )
                };
                diags.error(name_at(child), n, message);
            }
        }
    }
    if let (Some(max), Some(at)) = (max_version, max_at) {
        if max < min_version {
            ok = false;
            diags.error(at, "max-version", "max-version is older than min-version");
        }
    }
    let client_auth = match (client_auth, &ca_file) {
        (Some((ClientAuth::Off, _)) | None, Some(_)) => {
            let at = node
                .children()
                .and_then(|c| c.nodes().iter().find(|n| name(n) == "ca-file"))
                .map_or(name_at(node), name_at);
            diags.warn(
                at,
                "ca-file",
                "`ca-file` has no effect without `client-auth #true`: clients are not asked \
                 for a certificate (as upstream)",
            );
            ClientAuth::Off
        }
        (Some((mode, at)), None) if mode != ClientAuth::Off => {
            ok = false;
            diags.error(
                at,
                "client-auth",
                "`client-auth` needs `ca-file`, the CA certificates client certificates must \
                 chain to (upstream turns client authentication off instead)",
            );
            ClientAuth::Off
        }
        (Some((mode, _)), _) => mode,
        (None, None) => ClientAuth::Off,
    };
    let default = files.check(node, &format!("`tls` of {label}"), diags)?;
    let mut keys = vec![(&default.certified, default.cert_at)];
    keys.extend(sni.iter().map(|(_, l)| (&l.certified, l.cert_at)));
    ok &= suites.check(min_version, max_version, &keys, diags);
    let ocsp_response = default.ocsp_path(ocsp_stapling, &mut ok, diags);
    let mut additional_certs = Vec::with_capacity(sni.len());
    for (mut cert, loaded) in sni {
        cert.ocsp_response = loaded.ocsp_path(ocsp_stapling, &mut ok, diags);
        additional_certs.push(cert);
    }
    ok.then_some(TlsConfig {
        cert_file: default.cert,
        key_file: default.key,
        additional_certs,
        min_version,
        max_version,
        client_auth,
        ca_file,
        cipher_suites: suites.names(),
        session_resumption,
        ocsp_stapling,
        ocsp_response,
    })
}

/// `ca-file "/etc/zentinel/clients-ca.pem"`: loaded now, so a bad file fails `-t` at its line.
fn parse_ca_file(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Option<String> {
    let (path, at) = leaf_string(node, diags)?;
    let path = resolve_config_path(&path, diags.file_at(at));
    match client_cert::load_roots(&path) {
        Ok(_) => Some(path),
        Err(message) => {
            diags.error(at, "ca-file", message);
            None
        }
    }
}

/// Upstream's `client-auth #true` (certificates required) / `#false`; also `"required"`,
/// `"optional"` (asked for, not required) and `"off"`.
fn parse_client_auth(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Option<ClientAuth> {
    let entry = single_arg(node, diags)?;
    let mode = match entry.value() {
        KdlValue::Bool(true) => Some(ClientAuth::Required),
        KdlValue::Bool(false) => Some(ClientAuth::Off),
        KdlValue::String(s) => match s.to_ascii_lowercase().as_str() {
            "required" | "require" | "on" => Some(ClientAuth::Required),
            "optional" | "request" => Some(ClientAuth::Optional),
            "off" | "none" => Some(ClientAuth::Off),
            _ => None,
        },
        _ => None,
    };
    if mode.is_none() {
        diags.error(
            entry.span().offset(),
            "client-auth",
            format!(
                "`client-auth` takes #true (certificates required), #false, \"required\", \
                 \"optional\" or \"off\", found {}",
                describe(entry.value())
            ),
        );
    }
    mode
}

/// One `sni { ... }`: the model's entry (its `ocsp_response` set by the caller, which knows
/// whether stapling is on) and the certificate loaded.
fn parse_sni(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Option<(SniCertificate, Loaded)> {
    for entry in node.entries() {
        diags.error(
            entry.span().offset(),
            "sni",
            "`sni` takes no arguments or properties, only a `{ ... }` block",
        );
    }
    let mut ok = true;
    let mut files = FilePair::new();
    let mut hostnames: Vec<String> = Vec::new();
    let mut seen = Seen::default();
    for child in node.children().map_or(&[][..], |c| c.nodes()) {
        if SNI_KEYS.contains(&name(child)) && !seen.check(child, diags) {
            ok = false;
            continue;
        }
        if files.take(child, diags) {
            continue;
        }
        match name(child) {
            "hostnames" => {
                no_children(child, diags);
                for entry in props(child) {
                    unknown_property(child, entry, &[], diags);
                }
                for entry in args(child) {
                    let Some(host) = string_value(child, entry, diags) else {
                        ok = false;
                        continue;
                    };
                    match sni_name_problem(&host) {
                        Some(problem) => {
                            ok = false;
                            diags.error(
                                entry.span().offset(),
                                "hostnames",
                                format!("invalid server name {host:?}: {problem}"),
                            );
                        }
                        None => hostnames.push(host.to_ascii_lowercase()),
                    }
                }
            }
            n => {
                ok = false;
                diags.error(
                    name_at(child),
                    n,
                    format!(
                        "unknown node `{n}` in `sni`{}",
                        did_you_mean(n, SNI_KEYS.iter().copied())
                    ),
                );
            }
        }
    }
    if hostnames.is_empty() && ok {
        // Zentinel can take them from the certificate; this build needs them written.
        ok = false;
        diags.error(
            name_at(node),
            "sni",
            "`sni` has no `hostnames` (required, e.g. hostnames \"example.com\" \"*.example.com\")",
        );
    }
    let loaded = files.check(node, "`sni`", diags)?;
    ok.then(|| {
        let cert = SniCertificate {
            hostnames,
            cert_file: loaded.cert.clone(),
            key_file: loaded.key.clone(),
            ocsp_response: None,
        };
        (cert, loaded)
    })
}

fn sni_name_problem(host: &str) -> Option<&'static str> {
    let bare = host.strip_prefix("*.").unwrap_or(host);
    if bare.is_empty() {
        return Some("empty name");
    }
    if bare.contains('*') {
        return Some("a wildcard may only be the whole first label (`*.example.com`)");
    }
    if bare.ends_with('.') || bare.starts_with('.') || bare.contains("..") {
        return Some("empty label");
    }
    if !bare
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Some("expected letters, digits, `-` and `.` (IDNs in their xn-- form)");
    }
    None
}
