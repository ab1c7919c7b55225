//! A real OCSP responder for the end-to-end tests: `openssl ocsp -port`, signing as a test CA
//! ([`crate::tls_support::Ca`]), answering from an index of the certificates it issued; and
//! the Authority Information Access extension that names it in a certificate.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::wait_until;

/// The Authority Information Access extension naming `url` as the OCSP responder.
pub fn aia_extension(url: &str) -> rcgen::CustomExtension {
    /// id-ad-ocsp, 1.3.6.1.5.5.7.48.1.
    const OCSP: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01];
    let description = tlv(0x30, &[tlv(0x06, OCSP), tlv(0x86, url.as_bytes())].concat());
    rcgen::CustomExtension::from_oid_content(&[1, 3, 6, 1, 5, 5, 7, 1, 1], tlv(0x30, &description))
}

/// One DER element (contents shorter than 64 KiB).
fn tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match u8::try_from(contents.len()) {
        Ok(len) if len < 0x80 => out.push(len),
        _ => {
            let len = u16::try_from(contents.len()).expect("a short DER element");
            out.push(0x82);
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
    out.extend_from_slice(contents);
    out
}

/// The line of `openssl ca`'s index for `dir/stem.crt`: status, expiry, revocation date,
/// serial, file, subject. `None` when openssl is missing.
pub fn index_entry(dir: &Path, stem: &str, revoked: bool) -> Option<String> {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in", &format!("{stem}.crt")])
        .current_dir(dir)
        .output()
        .ok()?;
    assert!(out.status.success(), "openssl x509 -serial: {out:?}");
    let serial = String::from_utf8_lossy(&out.stdout);
    let serial = serial.trim().trim_start_matches("serial=");
    Some(if revoked {
        format!("R\t300101000000Z\t250101000000Z\t{serial}\tunknown\t/CN={stem}\n")
    } else {
        format!("V\t300101000000Z\t\t{serial}\tunknown\t/CN={stem}\n")
    })
}

/// Responders started, for file names of their own.
static STARTED: AtomicU64 = AtomicU64::new(0);

/// `openssl ocsp` answering on a loopback port; killed when dropped.
pub struct OcspResponder {
    child: Child,
    log: PathBuf,
}

impl OcspResponder {
    /// `http://127.0.0.1:PORT/`, as a certificate names it.
    pub fn url(port: u16) -> String {
        format!("http://127.0.0.1:{port}/")
    }

    /// Answers on `port` for the CA whose `ca.pem`/`ca.key` are in `dir` (`Ca::write_files`)
    /// about `certs` (`stem` of `dir/stem.crt`, and whether it is revoked), with responses
    /// valid `minutes`; returns once it listens. `None` when openssl is missing.
    pub fn start(
        dir: &Path,
        port: u16,
        certs: &[(&str, bool)],
        minutes: u32,
    ) -> Option<OcspResponder> {
        let mut index = String::new();
        for (stem, revoked) in certs {
            index.push_str(&index_entry(dir, stem, *revoked)?);
        }
        // A new index file each time: the responder reads it once, when it starts.
        let name = format!(
            "responder-{port}-{}",
            STARTED.fetch_add(1, Ordering::Relaxed)
        );
        let index_file = dir.join(format!("{name}.index"));
        fs::write(&index_file, index).unwrap();
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).unwrap();
        let child = Command::new("openssl")
            .args(["ocsp", "-index"])
            .arg(&index_file)
            .args([
                "-port",
                &port.to_string(),
                "-rsigner",
                "ca.pem",
                "-rkey",
                "ca.key",
            ])
            .args(["-CA", "ca.pem", "-nmin", &minutes.to_string()])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .ok()?;
        let responder = OcspResponder { child, log };
        let listening = wait_until(Duration::from_secs(10), || {
            responder
                .output()
                .contains("waiting for OCSP client connections")
        });
        assert!(
            listening,
            "openssl ocsp did not listen:\n{}",
            responder.output()
        );
        Some(responder)
    }

    /// What it printed so far (one `Received request` line per request).
    pub fn output(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many requests it received.
    pub fn requests(&self) -> usize {
        self.output().matches("Received request").count()
    }
}

impl Drop for OcspResponder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
