//! Unit tests' certificate authority: a fresh directory holding a self-signed CA (`ca.pem`,
//! `ca.key`), for the tests that issue certificates (TLS options, OCSP fetching).

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// A new empty directory in the temp dir, named after `prefix`, `tag` and this process.
pub fn fresh_dir(prefix: &str, tag: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("{prefix}-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&path);
    std::fs::create_dir_all(&path).unwrap();
    path
}

/// A CA named `common_name`, written to `dir` as `ca.pem` and `ca.key`.
pub fn write_ca(dir: &Path, common_name: &str) -> (rcgen::Certificate, KeyPair) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    let key = KeyPair::generate().unwrap();
    let ca = params.self_signed(&key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("ca.key"), key.serialize_pem()).unwrap();
    (ca, key)
}
