//! What the master asks a certificate's OCSP responder (RFC 6960): the responder's URL, from
//! the certificate's Authority Information Access extension, and the request naming the
//! certificate by its CertID (hashes of its issuer's name and key, and its serial number).
//!
//! The request is the one `openssl ocsp -no_nonce` sends and RFC 5019 (the profile CAs run
//! their responders by) asks for: SHA-1 CertID, one certificate, no nonce, unsigned. Without a
//! nonce the responder (or a cache in front of it) can answer with the response it signed
//! already.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use x509_parser::oid_registry::OID_PKIX_ACCESS_DESCRIPTOR_OCSP;
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

/// A certificate whose status can be asked for: everything one fetch needs.
#[derive(Debug, Clone)]
pub struct Target {
    /// The certificate's DER (what a response is checked against).
    pub leaf: Vec<u8>,
    /// The responder as written in the certificate.
    pub url: String,
    pub responder: HttpUrl,
    /// The DER `OCSPRequest`.
    pub request: Vec<u8>,
}

/// Reads `cert_file` (a PEM chain, leaf first, as the configuration names it) and prepares
/// the question about its leaf. `Ok(None)`: the certificate names no OCSP responder (nothing
/// to ask). An error says why this certificate cannot be asked about.
pub fn prepare(cert_file: &str) -> Result<Option<Target>, String> {
    let pem = std::fs::read(cert_file).map_err(|e| format!("cannot read {cert_file}: {e}"))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("invalid PEM in {cert_file}: {e}"))?;
    let Some(leaf_der) = chain.first() else {
        return Err(format!("no certificate in {cert_file}"));
    };
    let (_, leaf) = X509Certificate::from_der(leaf_der)
        .map_err(|e| format!("cannot parse the certificate in {cert_file}: {e}"))?;
    let urls = ocsp_urls(&leaf);
    let Some(url) = urls.iter().find(|u| {
        u.get(..7)
            .is_some_and(|s| s.eq_ignore_ascii_case("http://"))
    }) else {
        return match urls.first() {
            None => Ok(None),
            Some(other) => Err(format!(
                "its OCSP responder {other} is not an http:// URL (only http:// responders are \
                 asked, as RFC 5019 has them)"
            )),
        };
    };
    let responder = HttpUrl::parse(url)?;
    // The issuer is the certificate after the leaf; a self-issued leaf may stand alone.
    let issuer = match chain.get(1) {
        Some(der) => {
            X509Certificate::from_der(der)
                .map_err(|e| {
                    format!("cannot parse the second certificate in {cert_file} (the issuer): {e}")
                })?
                .1
        }
        None if leaf.issuer().as_raw() == leaf.subject().as_raw() => leaf.clone(),
        None => {
            return Err(format!(
                "{cert_file} holds no issuer certificate after the leaf, and a responder is \
                 asked about a certificate by its issuer's name and key: append the issuing \
                 (intermediate) certificate to the file"
            ))
        }
    };
    if issuer.subject().as_raw() != leaf.issuer().as_raw() {
        return Err(format!(
            "the second certificate in {cert_file} ({}) did not issue the leaf (issued by {}): \
             put the issuing certificate right after the leaf",
            issuer.subject(),
            leaf.issuer()
        ));
    }
    Ok(Some(Target {
        leaf: leaf_der.to_vec(),
        url: url.clone(),
        responder,
        request: request(&leaf, &issuer),
    }))
}

/// Every OCSP responder URL in the certificate's Authority Information Access extension, in
/// order.
pub fn ocsp_urls(cert: &X509Certificate<'_>) -> Vec<String> {
    let mut urls = Vec::new();
    for ext in cert.extensions() {
        if let ParsedExtension::AuthorityInfoAccess(aia) = ext.parsed_extension() {
            for desc in aia.iter() {
                if desc.access_method == OID_PKIX_ACCESS_DESCRIPTOR_OCSP {
                    if let GeneralName::URI(uri) = desc.access_location {
                        urls.push(uri.to_owned());
                    }
                }
            }
        }
    }
    urls
}

/// The DER `OCSPRequest` about `leaf`, issued by `issuer`.
pub fn request(leaf: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> Vec<u8> {
    let sha1 = |data: &[u8]| {
        ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, data)
            .as_ref()
            .to_vec()
    };
    // The name as the issuer's certificate writes it (the same DER as the leaf's issuer
    // field, which `prepare` checks), and the key's bits without the BIT STRING's header.
    let name_hash = sha1(issuer.subject().as_raw());
    let key_hash = sha1(&issuer.public_key().subject_public_key.data);
    let algorithm = tlv(SEQUENCE, &[tlv(OID, SHA1_OID), vec![NULL, 0]].concat());
    let cert_id = tlv(
        SEQUENCE,
        &[
            algorithm,
            tlv(OCTET_STRING, &name_hash),
            tlv(OCTET_STRING, &key_hash),
            tlv(INTEGER, leaf.raw_serial()),
        ]
        .concat(),
    );
    // OCSPRequest { TBSRequest { requestList { Request { reqCert } } } }.
    let request = tlv(SEQUENCE, &cert_id);
    let request_list = tlv(SEQUENCE, &request);
    let tbs_request = tlv(SEQUENCE, &request_list);
    tlv(SEQUENCE, &tbs_request)
}

const SEQUENCE: u8 = 0x30;
const OID: u8 = 0x06;
const OCTET_STRING: u8 = 0x04;
const INTEGER: u8 = 0x02;
const NULL: u8 = 0x05;
/// id-sha1, 1.3.14.3.2.26.
const SHA1_OID: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1a];

/// One DER element: tag, definite length, contents.
pub(super) fn tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
    let len = contents.len();
    let mut out = vec![tag];
    if len < 0x80 {
        out.push(len as u8); // < 0x80: fits
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        let count = bytes.len() - skip;
        out.push(0x80 | count as u8); // at most 8 bytes of length
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(contents);
    out
}

/// An `http://host[:port][/path]` URL, as far as a POST to it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// The host to connect to: a name, or an address (without the brackets of IPv6).
    pub host: String,
    pub port: u16,
    /// The `Host` header: the authority as written.
    pub authority: String,
    /// Starts with `/`; the query string stays on it.
    pub path: String,
}

impl HttpUrl {
    pub fn parse(url: &str) -> Result<HttpUrl, String> {
        let bad = |why: &str| format!("bad OCSP responder URL {url:?}: {why}");
        let rest = match url.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case("http://") => &url[7..],
            _ => return Err(bad("not http://")),
        };
        let rest = rest.split('#').next().unwrap_or_default();
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        let path = match path.chars().next() {
            None => "/".to_owned(),
            Some('?') => format!("/{path}"),
            Some(_) => path.to_owned(),
        };
        if authority.contains('@') {
            return Err(bad("user information is not supported"));
        }
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
                match after {
                    "" => (host, None),
                    _ => (
                        host,
                        Some(after.strip_prefix(':').ok_or_else(|| bad("junk after ]"))?),
                    ),
                }
            }
            None => match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None | Some("") => 80,
            Some(p) => p.parse().map_err(|_| bad("bad port"))?,
        };
        Ok(HttpUrl {
            host: host.to_owned(),
            port,
            authority: authority.to_owned(),
            path,
        })
    }
}
