//! Mutual TLS on listeners: the CA file client certificates are verified against, the
//! rustls verifier for `client-auth`, and the verified certificate's subject as the proxy
//! passes it on (`X-Client-Cert-Subject`, routing, the access log).

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use x509_parser::prelude::{FromDer, X509Certificate};
use zentinel_protocol::config::ClientAuth;

/// The request header carrying the verified client certificate's subject upstream. A client
/// never sets it: the proxy removes it from every request it forwards.
pub const SUBJECT_HEADER: &str = "X-Client-Cert-Subject";

/// Reads the CA certificates of `ca_file`: at least one, all parseable.
pub fn load_roots(ca_file: &str) -> Result<RootCertStore, String> {
    let pem = std::fs::read(ca_file).map_err(|e| format!("cannot read CA file {ca_file}: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("invalid PEM in CA file {ca_file}: {e}"))?;
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| format!("unusable CA certificate in {ca_file}: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "no certificate (-----BEGIN CERTIFICATE-----) in CA file {ca_file}"
        ));
    }
    Ok(roots)
}

/// The verifier for a listener's `client-auth` (`None`: no client certificates asked for).
pub fn verifier(
    mode: ClientAuth,
    ca_file: Option<&str>,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Option<Arc<dyn ClientCertVerifier>>, String> {
    let (ClientAuth::Optional | ClientAuth::Required, Some(ca_file)) = (mode, ca_file) else {
        return Ok(None);
    };
    let roots = load_roots(ca_file)?;
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = if mode == ClientAuth::Optional {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    builder
        .build()
        .map(Some)
        .map_err(|e| format!("client certificate verifier from {ca_file}: {e}"))
}

/// The subject of a (verified) certificate as an RFC 4514 string, most specific part first
/// (`CN=client,O=Example`), as nginx's `$ssl_client_s_dn` and Envoy's XFCC write it.
pub fn subject(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let registry = x509_parser::objects::oid_registry();
    let mut out = String::new();
    let rdns: Vec<_> = parsed.subject().iter().collect();
    for rdn in rdns.into_iter().rev() {
        if !out.is_empty() {
            out.push(',');
        }
        for (i, attr) in rdn.iter().enumerate() {
            if i > 0 {
                out.push('+');
            }
            let oid = attr.attr_type();
            match x509_parser::objects::oid2abbrev(oid, registry) {
                Ok(short) => out.push_str(short),
                Err(_) => out.push_str(&oid.to_id_string()),
            }
            out.push('=');
            match attr.as_str() {
                Ok(v) => escape_value(v, &mut out),
                // Not a string type: RFC 4514's `#` hex form of the value's encoding.
                Err(_) => {
                    out.push('#');
                    for b in attr.attr_value().data.iter() {
                        out.push_str(&format!("{b:02x}"));
                    }
                }
            }
        }
    }
    // The value goes into a header: nothing that could break the head (RFC 9110 5.5).
    let clean = out
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    Some(clean)
}

/// RFC 4514 2.4 escaping of an attribute value.
fn escape_value(v: &str, out: &mut String) {
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_rfc4514_most_specific_first_and_escaped() {
        let mut params = rcgen::CertificateParams::new(vec!["c.test".to_owned()]).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Acme, Inc");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "client one");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        assert_eq!(
            subject(cert.der()).as_deref(),
            Some("CN=client one,O=Acme\\, Inc")
        );
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = std::env::temp_dir().join(format!("zentinel-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("empty.pem");
        std::fs::write(&path, "not a certificate\n").expect("write");
        let err = load_roots(&path.display().to_string()).expect_err("no certificate");
        assert!(err.contains("no certificate"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
