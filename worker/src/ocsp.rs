//! OCSP stapling from a file (`ocsp-response "path"`): the DER response an operator fetched
//! (`openssl ocsp -respout`, a cron job, a certificate manager) is read with its certificate,
//! checked to be a successful response about that certificate, and stapled by rustls for
//! clients that ask (status_request). The response's signature is not checked here: the client
//! checks it, against the CA it trusts.
//!
//! The master checks the responses it fetches from a certificate's responder with the same
//! [`check`] before it writes them to the file it names in the configuration.
//!
//! A response past its `nextUpdate` is not stapled (browsers refuse a stale staple outright,
//! where they tolerate none): [`Stapled`] serves the certificate without it from that moment,
//! until a reload brings a new file.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::sign::CertifiedKey;
use x509_parser::prelude::{FromDer, X509Certificate};

/// What the responder says about the certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertStatus {
    Good,
    Revoked,
    Unknown,
}

impl CertStatus {
    /// As `openssl ocsp` prints it.
    pub fn name(self) -> &'static str {
        match self {
            CertStatus::Good => "good",
            CertStatus::Revoked => "revoked",
            CertStatus::Unknown => "unknown",
        }
    }
}

/// A response read from a file, checked against its certificate.
#[derive(Debug, Clone)]
pub struct OcspResponse {
    /// The file's bytes, stapled as they are.
    pub der: Vec<u8>,
    pub status: CertStatus,
    /// When the responder vouches for `status` from.
    pub this_update: SystemTime,
    /// `None`: the responder promises no date (newer information is always available).
    pub next_update: Option<SystemTime>,
}

impl OcspResponse {
    /// True once `next_update` has passed.
    pub fn expired_at(&self, now: SystemTime) -> bool {
        self.next_update.is_some_and(|until| now >= until)
    }
}

/// Reads `path` and checks it answers for `leaf` (the certificate's DER): see [`check`].
pub fn load(path: &str, leaf: &[u8]) -> Result<OcspResponse, String> {
    let der = std::fs::read(path).map_err(|e| format!("cannot read OCSP response {path}: {e}"))?;
    check(der, leaf, path)
}

/// Checks that `der` answers for `leaf` (the certificate's DER): a successful basic OCSP
/// response with an entry for the certificate's serial number (and issuer name, when the
/// entry's hash is SHA-1 or SHA-256). `what` names the response in messages: its file, or
/// where it came from.
pub fn check(der: Vec<u8>, leaf: &[u8], what: &str) -> Result<OcspResponse, String> {
    let parsed = parse(&der).map_err(|e| format!("{what} is not a DER OCSP response ({e})"))?;
    let (_, cert) = X509Certificate::from_der(leaf)
        .map_err(|e| format!("cannot parse the certificate {what} is for: {e}"))?;
    let serial = cert.tbs_certificate.raw_serial();
    let issuer = cert.tbs_certificate.issuer.as_raw();
    let entry = parsed
        .entries
        .iter()
        .find(|e| e.serial == serial && e.issuer_matches(issuer))
        .ok_or_else(|| {
            let found: Vec<String> = parsed.entries.iter().map(|e| hex(e.serial)).collect();
            format!(
                "{what} is not about this certificate (serial {}): it answers for serial {} \
                 (a response for a previous certificate?)",
                hex(serial),
                if found.is_empty() {
                    "none".to_owned()
                } else {
                    found.join(", ")
                }
            )
        })?;
    let (status, this_update, next_update) = (entry.status, entry.this_update, entry.next_update);
    Ok(OcspResponse {
        der,
        status,
        this_update,
        next_update,
    })
}

/// A certificate as served: with its OCSP response while that is current, without it after.
#[derive(Debug, Clone)]
pub struct Stapled {
    pub key: Arc<CertifiedKey>,
    /// When the stapled response expires, and the same certificate without it.
    expiry: Option<(SystemTime, Arc<CertifiedKey>)>,
}

impl Stapled {
    /// `key` with `response` stapled (unless it has expired already).
    pub fn new(key: CertifiedKey, response: Option<&OcspResponse>, now: SystemTime) -> Self {
        let Some(response) = response.filter(|r| !r.expired_at(now)) else {
            return Stapled {
                key: Arc::new(key),
                expiry: None,
            };
        };
        let bare = Arc::new(key.clone());
        let mut key = key;
        key.ocsp = Some(response.der.clone());
        Stapled {
            key: Arc::new(key),
            expiry: response.next_update.map(|until| (until, bare)),
        }
    }

    /// What to serve at `now`.
    pub fn at(&self, now: SystemTime) -> Arc<CertifiedKey> {
        match &self.expiry {
            Some((until, bare)) if now >= *until => Arc::clone(bare),
            _ => Arc::clone(&self.key),
        }
    }
}

/// RFC 3339 for a log line or a diagnostic.
pub fn format_time(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX);
    let (y, m, d) = crate::http::files::civil_from_days(days);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

// ---------------------------------------------------------------------------------------------
// The DER of RFC 6960, as far as the checks above need it.
// ---------------------------------------------------------------------------------------------

struct Parsed<'a> {
    entries: Vec<Entry<'a>>,
}

struct Entry<'a> {
    /// SHA-1 or SHA-256 (the only ones compared), or another algorithm.
    hash: Option<&'static ring::digest::Algorithm>,
    issuer_name_hash: &'a [u8],
    serial: &'a [u8],
    status: CertStatus,
    this_update: SystemTime,
    next_update: Option<SystemTime>,
}

impl Entry<'_> {
    fn issuer_matches(&self, issuer: &[u8]) -> bool {
        self.hash
            .is_none_or(|alg| ring::digest::digest(alg, issuer).as_ref() == self.issuer_name_hash)
    }
}

const SEQUENCE: u8 = 0x30;
const ENUMERATED: u8 = 0x0a;
const OID: u8 = 0x06;
const OCTET_STRING: u8 = 0x04;
const INTEGER: u8 = 0x02;
const GENERALIZED_TIME: u8 = 0x18;
/// id-pkix-ocsp-basic, 1.3.6.1.5.5.7.48.1.1.
const OCSP_BASIC: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01];
/// id-sha1, 1.3.14.3.2.26.
const SHA1: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1a];
/// id-sha256, 2.16.840.1.101.3.4.2.1.
const SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];

/// DER elements one after another.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn peek(&self) -> Option<u8> {
        self.0.first().copied()
    }

    /// The next element: its tag and contents.
    fn any(&mut self) -> Result<(u8, &'a [u8]), String> {
        let [tag, first, rest @ ..] = self.0 else {
            return Err("truncated".to_owned());
        };
        if tag & 0x1f == 0x1f {
            return Err("unexpected multi-byte tag".to_owned());
        }
        let (len, rest) = match *first {
            n if n < 0x80 => (usize::from(n), rest),
            n @ 0x81..=0x84 => {
                let count = usize::from(n & 0x7f);
                if rest.len() < count {
                    return Err("truncated length".to_owned());
                }
                let len = rest[..count]
                    .iter()
                    .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
                (len, &rest[count..])
            }
            _ => return Err("unsupported length encoding".to_owned()),
        };
        if rest.len() < len {
            return Err("truncated element".to_owned());
        }
        let (contents, after) = rest.split_at(len);
        self.0 = after;
        Ok((*tag, contents))
    }

    fn expect(&mut self, tag: u8, what: &str) -> Result<&'a [u8], String> {
        match self.any()? {
            (t, contents) if t == tag => Ok(contents),
            (t, _) => Err(format!("expected {what}, found tag {t:#04x}")),
        }
    }

    fn optional(&mut self, tag: u8) -> Result<Option<&'a [u8]>, String> {
        if self.peek() == Some(tag) {
            self.any().map(|(_, c)| Some(c))
        } else {
            Ok(None)
        }
    }
}

fn parse(der: &[u8]) -> Result<Parsed<'_>, String> {
    let mut top = Reader(der);
    let mut response = Reader(top.expect(SEQUENCE, "OCSPResponse")?);
    if !top.is_empty() {
        return Err("bytes after the response".to_owned());
    }
    let status = response.expect(ENUMERATED, "responseStatus")?;
    match status {
        [0] => {}
        [code] => {
            let name = match code {
                1 => "malformedRequest",
                2 => "internalError",
                3 => "tryLater",
                5 => "sigRequired",
                6 => "unauthorized",
                _ => "an unknown status",
            };
            return Err(format!(
                "the responder answered {name} ({code}), not a certificate status"
            ));
        }
        _ => return Err("bad responseStatus".to_owned()),
    }
    let mut bytes = Reader(response.expect(0xa0, "responseBytes")?);
    let mut bytes = Reader(bytes.expect(SEQUENCE, "ResponseBytes")?);
    if bytes.expect(OID, "responseType")? != OCSP_BASIC {
        return Err("not a basic OCSP response (id-pkix-ocsp-basic)".to_owned());
    }
    let mut basic = Reader(bytes.expect(OCTET_STRING, "response")?);
    let mut basic = Reader(basic.expect(SEQUENCE, "BasicOCSPResponse")?);
    let mut data = Reader(basic.expect(SEQUENCE, "ResponseData")?);
    data.optional(0xa0)?; // version
    match data.any()? {
        (0xa1 | 0xa2, _) => {}
        (t, _) => return Err(format!("expected responderID, found tag {t:#04x}")),
    }
    data.expect(GENERALIZED_TIME, "producedAt")?;
    let mut responses = Reader(data.expect(SEQUENCE, "responses")?);
    let mut entries = Vec::new();
    while !responses.is_empty() {
        entries.push(single_response(
            responses.expect(SEQUENCE, "SingleResponse")?,
        )?);
    }
    Ok(Parsed { entries })
}

fn single_response(der: &[u8]) -> Result<Entry<'_>, String> {
    let mut single = Reader(der);
    let mut cert_id = Reader(single.expect(SEQUENCE, "CertID")?);
    let mut alg = Reader(cert_id.expect(SEQUENCE, "hashAlgorithm")?);
    let hash = match alg.expect(OID, "hash algorithm")? {
        SHA1 => Some(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY),
        SHA256 => Some(&ring::digest::SHA256),
        _ => None,
    };
    let issuer_name_hash = cert_id.expect(OCTET_STRING, "issuerNameHash")?;
    cert_id.expect(OCTET_STRING, "issuerKeyHash")?;
    let serial = cert_id.expect(INTEGER, "serialNumber")?;
    let status = match single.any()? {
        (0x80, _) => CertStatus::Good,
        (0xa1, _) => CertStatus::Revoked,
        (0x82, _) => CertStatus::Unknown,
        (t, _) => return Err(format!("expected certStatus, found tag {t:#04x}")),
    };
    let this_update = generalized_time(single.expect(GENERALIZED_TIME, "thisUpdate")?)?;
    let next_update = match single.optional(0xa0)? {
        Some(explicit) => Some(generalized_time(
            Reader(explicit).expect(GENERALIZED_TIME, "nextUpdate")?,
        )?),
        None => None,
    };
    Ok(Entry {
        hash,
        issuer_name_hash,
        serial,
        status,
        this_update,
        next_update,
    })
}

/// `YYYYMMDDHHMMSS[.fff]Z`, as DER requires it.
fn generalized_time(text: &[u8]) -> Result<SystemTime, String> {
    let bad = || format!("bad time {:?}", String::from_utf8_lossy(text));
    if text.len() < 15 || text.last() != Some(&b'Z') {
        return Err(bad());
    }
    let num = |range: std::ops::Range<usize>| -> Result<u32, String> {
        std::str::from_utf8(&text[range])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)
    };
    let (year, month, day) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hour, minute, second) = (num(8..10)?, num(10..12)?, num(12..14)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return Err(bad());
    }
    let days = crate::http::files::days_from_civil(i64::from(year), month, day);
    let secs =
        days * 86_400 + i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second.min(60));
    let secs = u64::try_from(secs).map_err(|_| bad())?;
    Ok(UNIX_EPOCH + Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse() {
        let t = generalized_time(b"20260301123456Z").unwrap();
        assert_eq!(format_time(t), "2026-03-01T12:34:56Z");
        let t = generalized_time(b"19991231235959.5Z").unwrap();
        assert_eq!(format_time(t), "1999-12-31T23:59:59Z");
        assert!(generalized_time(b"2026030112345Z").is_err());
        assert!(generalized_time(b"20261301123456Z").is_err());
    }

    #[test]
    fn a_staple_is_served_until_its_next_update() {
        let pair = rcgen::KeyPair::generate().unwrap();
        let der = rustls::pki_types::PrivatePkcs8KeyDer::from(pair.serialize_der());
        let signer = rustls::crypto::ring::sign::any_supported_type(&der.into()).unwrap();
        let key = CertifiedKey::new(vec![], signer);
        let now = SystemTime::now();
        let hour = Duration::from_secs(3600);
        let response = |next_update| OcspResponse {
            der: vec![0x30, 0x00],
            status: CertStatus::Good,
            this_update: now,
            next_update,
        };
        let current = Stapled::new(key.clone(), Some(&response(Some(now + hour))), now);
        assert_eq!(current.at(now).ocsp.as_deref(), Some(&[0x30, 0x00][..]));
        assert_eq!(current.at(now + 2 * hour).ocsp, None);
        // No nextUpdate: stapled for as long as it is loaded.
        let open_ended = Stapled::new(key.clone(), Some(&response(None)), now);
        assert!(open_ended.at(now + 1000 * hour).ocsp.is_some());
        // Expired when loaded: never stapled.
        let stale = Stapled::new(key, Some(&response(Some(now - hour))), now);
        assert_eq!(stale.at(now).ocsp, None);
    }

    #[test]
    fn refusals_say_why() {
        // responseStatus tryLater, no responseBytes.
        let try_later = [0x30, 0x03, 0x0a, 0x01, 0x03];
        let err = parse(&try_later).err().unwrap();
        assert!(err.contains("tryLater"), "{err}");
        assert!(parse(b"-----BEGIN").is_err());
        assert!(parse(&[0x30, 0x05, 0x0a]).is_err());
        // A successful status whose responseBytes are not the basic type.
        let other = [
            0x30, 0x0c, 0x0a, 0x01, 0x00, 0xa0, 0x07, 0x30, 0x05, 0x06, 0x01, 0x2a, 0x04, 0x00,
        ];
        let err = parse(&other).err().unwrap();
        assert!(err.contains("basic"), "{err}");
    }
}
