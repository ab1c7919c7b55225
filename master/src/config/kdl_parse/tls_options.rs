//! The parts of a listener's `tls` block beyond its certificates: `min-version`/`max-version`,
//! `cipher-suite(s)`, and the checks of an `ocsp-response` file.
//!
//! ```kdl
//! tls {
//!     min-version "TLS1.2"
//!     cipher-suite "TLS_AES_128_GCM_SHA256"          // upstream's form, one per line
//!     cipher-suites {                                // upstream's example file's form
//!         - "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"
//!     }
//!     cipher-suites "TLS_AES_256_GCM_SHA384" "ECDHE-RSA-AES128-GCM-SHA256"
//! }
//! ```

use std::time::SystemTime;

use kdl::{KdlEntry, KdlNode, KdlValue};
use rustls::sign::CertifiedKey;
use rustls::SupportedCipherSuite;
use zentinel_protocol::config::TlsVersion;
use zentinel_worker::ocsp::{self, CertStatus};
use zentinel_worker::tls_options::{
    accepted_list, accepted_names, cipher_suite, suite_version, tls12_usable_with,
};

use super::{
    args, describe, did_you_mean, leaf_string, name, name_at, props, unknown_property, Diagnostics,
};

/// `min-version`/`max-version`: "1.2", "1.3", with or without `TLS`, `TLSv`, `TLS ` in front
/// (upstream takes "1.3", "tls1.3" and "tlsv1.3" in any case, and anything else as 1.2).
pub(super) fn version(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Option<TlsVersion> {
    let (text, at) = leaf_string(node, diags)?;
    let lower = text.trim().to_ascii_lowercase();
    let (prefixed, rest) = match lower.strip_prefix("tls") {
        Some(rest) => (true, rest.strip_prefix('v').unwrap_or(rest)),
        None => (false, lower.as_str()),
    };
    let number = rest.trim_start_matches([' ', '_', '-']).replace('_', ".");
    match number.as_str() {
        "1.2" => Some(TlsVersion::Tls12),
        "1.3" => Some(TlsVersion::Tls13),
        "12" if prefixed => Some(TlsVersion::Tls12),
        "13" if prefixed => Some(TlsVersion::Tls13),
        "1.0" | "1" | "1.1" => {
            diags.error(
                at,
                name(node),
                format!("TLS {number} is not supported (insecure): use \"1.2\" or \"1.3\""),
            );
            None
        }
        _ => {
            diags.error(
                at,
                name(node),
                format!(
                    "unknown TLS version {text:?}: expected \"1.2\" or \"1.3\" (also written \
                     \"TLS1.2\", \"TLSv1.3\", \"tls1.3\")"
                ),
            );
            None
        }
    }
}

/// The suites of every `cipher-suite`/`cipher-suites` node, in the order written.
#[derive(Default)]
pub(super) struct Suites {
    /// Each suite once: the suite, its rustls name, where it was written.
    list: Vec<(SupportedCipherSuite, &'static str, usize)>,
    /// The first such node and its name (where errors about the whole list point).
    first_at: Option<(usize, &'static str)>,
}

impl Suites {
    /// The rustls names, for the configuration model.
    pub(super) fn names(&self) -> Vec<String> {
        self.list.iter().map(|(_, n, _)| (*n).to_owned()).collect()
    }

    /// Adds the suites of one node: its arguments (an OpenSSL-style `A:B` list is split), and
    /// the children of its block, each `- "NAME"` or a bare `NAME`. False when any is wrong.
    pub(super) fn parse(&mut self, node: &KdlNode, diags: &mut Diagnostics<'_>) -> bool {
        let node_name = if name(node) == "cipher-suite" {
            "cipher-suite"
        } else {
            "cipher-suites"
        };
        self.first_at.get_or_insert((name_at(node), node_name));
        let mut ok = true;
        let mut any = false;
        for entry in props(node) {
            unknown_property(node, entry, &[], diags);
            ok = false;
        }
        for entry in args(node) {
            any = true;
            ok &= self.entry(node_name, entry, diags);
        }
        for child in node.children().map_or(&[][..], |c| c.nodes()) {
            any = true;
            if name(child) == "-" && child.children().is_none() {
                for entry in child.entries() {
                    ok &= if entry.name().is_some() {
                        unknown_property(child, entry, &[], diags);
                        false
                    } else {
                        self.entry(node_name, entry, diags)
                    };
                }
            } else if child.entries().is_empty() && child.children().is_none() {
                ok &= self.add(name(child), name_at(child), node_name, diags);
            } else {
                ok = false;
                diags.error(
                    name_at(child),
                    node_name,
                    format!(
                        "expected one suite per line, `- \"TLS_AES_128_GCM_SHA256\"`, in \
                         `{node_name}`"
                    ),
                );
            }
        }
        if !any {
            diags.error(
                name_at(node),
                node_name,
                format!(
                    "`{node_name}` names no suite: write `{node_name} \"TLS_AES_128_GCM_SHA256\"`, \
                     several arguments, or a block of `- \"NAME\"` lines"
                ),
            );
            ok = false;
        }
        ok
    }

    fn entry(&mut self, node: &str, entry: &KdlEntry, diags: &mut Diagnostics<'_>) -> bool {
        let at = entry.span().offset();
        let KdlValue::String(text) = entry.value() else {
            diags.error(
                at,
                node,
                format!(
                    "expected a cipher suite name (a string), found {}",
                    describe(entry.value())
                ),
            );
            return false;
        };
        let mut ok = true;
        for part in text.split(':').filter(|p| !p.trim().is_empty()) {
            ok &= self.add(part, at, node, diags);
        }
        ok
    }

    fn add(&mut self, text: &str, at: usize, node: &str, diags: &mut Diagnostics<'_>) -> bool {
        match cipher_suite(text) {
            Some((suite, rustls_name)) => {
                if !self.list.iter().any(|(_, n, _)| *n == rustls_name) {
                    self.list.push((suite, rustls_name, at));
                }
                true
            }
            None => {
                let typed = text.trim().to_ascii_uppercase().replace('-', "_");
                let names = accepted_names();
                let hint = did_you_mean(&typed, names.iter().copied());
                diags.error(
                    at,
                    node,
                    format!(
                        "unknown or unsupported cipher suite {text:?}{hint}: this build offers \
                         only AEAD suites with forward secrecy; {}",
                        accepted_list()
                    ),
                );
                false
            }
        }
    }

    /// Checks the list against the versions allowed and the certificates' keys (each with
    /// the offset of its `cert-file`). An error when no suite listed can ever be used; a
    /// warning for each part that cannot.
    pub(super) fn check(
        &self,
        min: TlsVersion,
        max: Option<TlsVersion>,
        certs: &[(&CertifiedKey, usize)],
        diags: &mut Diagnostics<'_>,
    ) -> bool {
        let Some((at, node)) = self.first_at.filter(|_| !self.list.is_empty()) else {
            return true;
        };
        let allowed = |v: TlsVersion| v >= min && max.is_none_or(|m| v <= m);
        let listed = |v: TlsVersion| self.list.iter().any(|(s, _, _)| suite_version(*s) == v);
        let range = match (min, max) {
            (TlsVersion::Tls13, _) => "min-version is 1.3",
            (_, Some(TlsVersion::Tls12)) => "max-version is 1.2",
            _ => "TLS 1.2 and 1.3 are allowed",
        };
        let usable = |v: TlsVersion| allowed(v) && listed(v);
        if !usable(TlsVersion::Tls12) && !usable(TlsVersion::Tls13) {
            let (listed_v, need) = if listed(TlsVersion::Tls12) {
                (
                    "TLS 1.2",
                    "TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384 or \
                     TLS_CHACHA20_POLY1305_SHA256",
                )
            } else {
                (
                    "TLS 1.3",
                    "a TLS 1.2 suite such as TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 or \
                     TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                )
            };
            diags.error(
                at,
                node,
                format!(
                    "no cipher suite listed can be used: they are all {listed_v} suites and \
                     {range}; list {need}, or change the versions allowed"
                ),
            );
            return false;
        }
        for (version, label, advice) in [
            (
                TlsVersion::Tls12,
                "TLS 1.2",
                "TLS 1.2 clients are refused (add a TLS 1.2 suite, or set min-version \"1.3\")",
            ),
            (
                TlsVersion::Tls13,
                "TLS 1.3",
                "TLS 1.3 is not offered (add TLS_AES_128_GCM_SHA256, or set max-version \"1.2\")",
            ),
        ] {
            if allowed(version) && !listed(version) {
                diags.warn(
                    at,
                    node,
                    format!("no {label} cipher suite is listed: {advice}"),
                );
            }
        }
        for (suite, rustls_name, suite_at) in &self.list {
            if !allowed(suite_version(*suite)) {
                diags.warn(
                    *suite_at,
                    node,
                    format!("`{rustls_name}` is never used: {range}"),
                );
            }
        }
        let suites: Vec<SupportedCipherSuite> = self.list.iter().map(|(s, _, _)| *s).collect();
        if allowed(TlsVersion::Tls12) && listed(TlsVersion::Tls12) {
            for (key, cert_at) in certs {
                let alg = key.key.algorithm();
                if !tls12_usable_with(&suites, alg) {
                    diags.warn(
                        *cert_at,
                        "cert-file",
                        format!(
                            "no TLS 1.2 cipher suite listed works with this certificate's \
                             {alg:?} key (ECDHE_ECDSA suites need an ECDSA or Ed25519 key, \
                             ECDHE_RSA ones an RSA key): TLS 1.2 clients are refused with it"
                        ),
                    );
                }
            }
        }
        true
    }
}

/// Checks an `ocsp-response` file (at `at`) against the certificate it is stapled with.
/// False when it is unusable; warnings for a response that is usable but says something the
/// operator should hear about.
pub(super) fn check_ocsp(
    path: &str,
    at: usize,
    key: &CertifiedKey,
    diags: &mut Diagnostics<'_>,
) -> bool {
    let Ok(leaf) = key.end_entity_cert() else {
        return true;
    };
    let response = match ocsp::load(path, leaf) {
        Ok(r) => r,
        Err(message) => {
            diags.error(at, "ocsp-response", message);
            return false;
        }
    };
    if let Some(until) = response
        .next_update
        .filter(|_| response.expired_at(SystemTime::now()))
    {
        diags.warn(
            at,
            "ocsp-response",
            format!(
                "the OCSP response in {path} expired at {} (its nextUpdate): it is not stapled \
                 (clients refuse a stale one); fetch a new one and reload",
                ocsp::format_time(until)
            ),
        );
    }
    match response.status {
        CertStatus::Good => {}
        CertStatus::Revoked => diags.warn(
            at,
            "ocsp-response",
            format!(
                "the OCSP response in {path} says the certificate is revoked: it is stapled, \
                 and clients that read it refuse the connection"
            ),
        ),
        CertStatus::Unknown => diags.warn(
            at,
            "ocsp-response",
            format!(
                "the OCSP response in {path} says the responder does not know the certificate \
                 (status unknown): clients that read it may refuse the connection"
            ),
        ),
    }
    true
}
