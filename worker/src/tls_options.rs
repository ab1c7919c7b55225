//! A listener's TLS choices beyond its certificates: the cipher suites it offers, named as
//! upstream's examples (IANA), rustls and OpenSSL spell them, and session resumption.
//!
//! The master resolves the names when it parses the configuration (an unknown one is an error
//! at its line); the model carries the rustls names, which the worker resolves again here.

use std::sync::Arc;

use rustls::crypto::ring::cipher_suite as ring_suites;
use rustls::crypto::CryptoProvider;
use rustls::server::{NoServerSessionStorage, ServerConfig};
use rustls::{SignatureAlgorithm, SupportedCipherSuite};
use zentinel_protocol::config::TlsVersion;

/// Every suite this build has (the ring provider's: AEAD with forward secrecy, nothing else),
/// with its rustls name first, then the other spellings accepted. Names are compared after
/// [`normalise`], so `-` and `_` and case do not matter.
fn table() -> [(SupportedCipherSuite, &'static [&'static str]); 9] {
    [
        (
            ring_suites::TLS13_AES_128_GCM_SHA256,
            &["TLS13_AES_128_GCM_SHA256", "TLS_AES_128_GCM_SHA256"],
        ),
        (
            ring_suites::TLS13_AES_256_GCM_SHA384,
            &["TLS13_AES_256_GCM_SHA384", "TLS_AES_256_GCM_SHA384"],
        ),
        (
            ring_suites::TLS13_CHACHA20_POLY1305_SHA256,
            &[
                "TLS13_CHACHA20_POLY1305_SHA256",
                "TLS_CHACHA20_POLY1305_SHA256",
            ],
        ),
        (
            ring_suites::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            &[
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                "ECDHE_ECDSA_AES128_GCM_SHA256",
            ],
        ),
        (
            ring_suites::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            &[
                "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
                "ECDHE_ECDSA_AES256_GCM_SHA384",
            ],
        ),
        (
            ring_suites::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            &[
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
                "ECDHE_ECDSA_CHACHA20_POLY1305",
            ],
        ),
        (
            ring_suites::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            &[
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                "ECDHE_RSA_AES128_GCM_SHA256",
            ],
        ),
        (
            ring_suites::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            &[
                "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
                "ECDHE_RSA_AES256_GCM_SHA384",
            ],
        ),
        (
            ring_suites::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
            &[
                "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
                "ECDHE_RSA_CHACHA20_POLY1305",
            ],
        ),
    ]
}

/// Upstream's normalisation (upper case, `-` as `_`), which also turns OpenSSL's
/// `ECDHE-RSA-AES128-GCM-SHA256` into a name of the table.
fn normalise(name: &str) -> String {
    name.trim().to_ascii_uppercase().replace('-', "_")
}

/// A suite by any accepted spelling; its rustls name with it.
pub fn cipher_suite(name: &str) -> Option<(SupportedCipherSuite, &'static str)> {
    let wanted = normalise(name);
    table()
        .into_iter()
        .find(|(_, names)| names.iter().any(|n| normalise(n) == wanted))
        .map(|(suite, names)| (suite, names[0]))
}

/// Every spelling accepted (for "did you mean").
pub fn accepted_names() -> Vec<&'static str> {
    table()
        .iter()
        .flat_map(|(_, names)| names.iter().copied())
        .collect()
}

/// The accepted names, for an error message: the IANA names upstream's examples use, and what
/// else is understood.
pub fn accepted_list() -> String {
    let iana: Vec<&str> = table()
        .iter()
        .map(|(_, names)| names.iter().find(|n| !n.starts_with("TLS13_")).copied())
        .map(|n| n.unwrap_or_default())
        .collect();
    format!(
        "accepted: {} (the TLS 1.3 ones also as rustls writes them, TLS13_AES_128_GCM_SHA256; \
         the TLS 1.2 ones also by their OpenSSL names, ECDHE-RSA-AES128-GCM-SHA256; case and \
         `-`/`_` do not matter)",
        iana.join(", ")
    )
}

/// The protocol version a suite belongs to.
pub fn suite_version(suite: SupportedCipherSuite) -> TlsVersion {
    match suite {
        SupportedCipherSuite::Tls12(_) => TlsVersion::Tls12,
        SupportedCipherSuite::Tls13(_) => TlsVersion::Tls13,
    }
}

/// Whether a TLS 1.2 handshake can use a certificate whose key signs with `key`: some TLS 1.2
/// suite of `suites` authenticates with it (ECDHE_ECDSA suites need an ECDSA or Ed25519 key,
/// ECDHE_RSA ones an RSA key). TLS 1.3 suites say nothing about the key.
pub fn tls12_usable_with(suites: &[SupportedCipherSuite], key: SignatureAlgorithm) -> bool {
    suites.iter().any(|s| {
        matches!(s, SupportedCipherSuite::Tls12(_)) && s.usable_for_signature_algorithm(key)
    })
}

/// The crypto provider of a listener: ring's, offering only `names` (rustls names, in that
/// order), or all its suites when `names` is empty.
pub fn provider(names: &[String]) -> Result<Arc<CryptoProvider>, String> {
    let mut provider = rustls::crypto::ring::default_provider();
    if !names.is_empty() {
        provider.cipher_suites = names
            .iter()
            .map(|name| {
                cipher_suite(name)
                    .map(|(suite, _)| suite)
                    .ok_or_else(|| format!("unknown cipher suite {name:?}: {}", accepted_list()))
            })
            .collect::<Result<_, _>>()?;
    }
    Ok(Arc::new(provider))
}

/// `session-resumption`: on keeps what the config has (a cache of 256 sessions per
/// `ServerConfig`, and the worker's ticketer sealing TLS 1.2 and 1.3 tickets with the master's
/// shared keys, installed before this). Off: no cache and no tickets of any kind, so every
/// connection pays a full handshake; the shared ticketer is replaced too.
pub fn apply_session_resumption(config: &mut ServerConfig, on: bool) {
    if !on {
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.ticketer = Arc::new(NeverTickets);
        config.send_tls13_tickets = 0;
    }
}

/// A ticketer that issues none (rustls's own is not public).
#[derive(Debug)]
struct NeverTickets;

impl rustls::server::ProducesTickets for NeverTickets {
    fn enabled(&self) -> bool {
        false
    }

    fn lifetime(&self) -> u32 {
        0
    }

    fn encrypt(&self, _plain: &[u8]) -> Option<Vec<u8>> {
        None
    }

    fn decrypt(&self, _cipher: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_names_one_suite() {
        for (spelling, rustls_name) in [
            ("TLS_AES_128_GCM_SHA256", "TLS13_AES_128_GCM_SHA256"),
            ("tls13-aes-256-gcm-sha384", "TLS13_AES_256_GCM_SHA384"),
            (
                "TLS_CHACHA20_POLY1305_SHA256",
                "TLS13_CHACHA20_POLY1305_SHA256",
            ),
            (
                "ECDHE-RSA-AES128-GCM-SHA256",
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            ),
            (
                "ECDHE-ECDSA-CHACHA20-POLY1305",
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
            ),
            (
                "tls_ecdhe_rsa_with_aes_256_gcm_sha384",
                "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
            ),
        ] {
            let (suite, name) = cipher_suite(spelling).expect(spelling);
            assert_eq!(name, rustls_name);
            // The rustls name is what rustls itself calls the suite.
            assert_eq!(format!("{:?}", suite.suite()), rustls_name);
        }
        assert!(cipher_suite("TLS_RSA_WITH_AES_128_CBC_SHA").is_none());
        assert!(cipher_suite("HIGH").is_none());
        // Every suite of the provider has a name here.
        for suite in rustls::crypto::ring::ALL_CIPHER_SUITES {
            let name = format!("{:?}", suite.suite());
            assert!(cipher_suite(&name).is_some(), "{name}");
        }
    }

    #[test]
    fn provider_offers_exactly_the_suites_named() {
        let names = vec![
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".to_owned(),
            "TLS13_AES_256_GCM_SHA384".to_owned(),
        ];
        let p = provider(&names).unwrap();
        let got: Vec<String> = p
            .cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        assert_eq!(got, names);
        assert_eq!(
            provider(&[]).unwrap().cipher_suites.len(),
            rustls::crypto::ring::ALL_CIPHER_SUITES.len()
        );
        let err = provider(&["RC4-MD5".to_owned()]).err().unwrap();
        assert!(err.contains("TLS_AES_128_GCM_SHA256"), "{err}");
        assert!(
            tls12_usable_with(&p.cipher_suites, SignatureAlgorithm::ECDSA)
                && !tls12_usable_with(&p.cipher_suites, SignatureAlgorithm::RSA)
        );
    }
}
