//! An upstream's `tls { ... }` block, spelled as upstream Zentinel spells it:
//!
//! ```kdl
//! tls {
//!     sni "api.example.com"
//!     ca-cert "/etc/zentinel/certs/backend-ca.crt"
//!     client-cert "/etc/zentinel/certs/client.crt"
//!     client-key "/etc/zentinel/certs/client.key"
//!     insecure-skip-verify #false
//! }
//! ```
//!
//! Every file is loaded here, as the workers will load it, so `-t`, start and reload fail on
//! a file that is missing, unreadable, not PEM, or a key that does not match its certificate,
//! with the line of the key that names it. Relative paths are taken from the directory of the
//! configuration file. Upstream reads these keys without checking them (a duplicate or
//! misspelt key, a client certificate without its key are silently ignored there); here they
//! are located errors.

use kdl::KdlNode;
use zentinel_protocol::config::{parse_target_address, TargetAddress, UpstreamTarget, UpstreamTls};
use zentinel_worker::upstream_tls;

use super::tls::resolve_config_path;
use super::{block, did_you_mean, leaf_bool, leaf_string, name, name_at, Diagnostics, Seen};

const KEYS: &[&str] = &[
    "sni",
    "ca-cert",
    "client-cert",
    "client-key",
    "insecure-skip-verify",
];

/// Where each key was written, to point an error at it.
#[derive(Default)]
struct Places {
    sni: Option<usize>,
    ca_cert: Option<usize>,
    client_cert: Option<usize>,
    client_key: Option<usize>,
}

/// Parses an upstream's `tls` block and loads its files. `None` when it has errors (all
/// reported). `targets` are the upstream's, to check that each can be verified by name.
pub(super) fn parse_upstream_tls(
    node: &KdlNode,
    upstream: &str,
    targets: &[UpstreamTarget],
    diags: &mut Diagnostics<'_>,
) -> Option<UpstreamTls> {
    let mut ok = true;
    let mut tls = UpstreamTls::default();
    let mut at = Places::default();
    let mut insecure_at = None;
    let mut seen = Seen::default();
    for child in block(node, diags) {
        let key = name(child);
        if !KEYS.contains(&key) {
            ok = false;
            diags.error(
                name_at(child),
                key,
                format!(
                    "unknown node `{key}` in an upstream's `tls`{} (accepted: {})",
                    did_you_mean(key, KEYS.iter().copied()),
                    KEYS.join(", ")
                ),
            );
            continue;
        }
        if !seen.check(child, diags) {
            ok = false;
            continue;
        }
        if key == "insecure-skip-verify" {
            match leaf_bool(child, diags) {
                Some(v) => {
                    tls.insecure_skip_verify = v;
                    insecure_at = Some(name_at(child));
                }
                None => ok = false,
            }
            continue;
        }
        let Some((text, text_at)) = leaf_string(child, diags) else {
            ok = false;
            continue;
        };
        if text.is_empty() {
            ok = false;
            diags.error(text_at, key, "must not be empty");
            continue;
        }
        if key == "sni" {
            tls.sni = Some(text);
            at.sni = Some(text_at);
            continue;
        }
        let path = resolve_config_path(&text, diags.file_at(text_at));
        match key {
            "ca-cert" => (tls.ca_cert, at.ca_cert) = (Some(path), Some(text_at)),
            "client-cert" => (tls.client_cert, at.client_cert) = (Some(path), Some(text_at)),
            _ => (tls.client_key, at.client_key) = (Some(path), Some(text_at)),
        }
    }
    if !ok {
        return None;
    }
    if tls.sni.is_none() {
        ok &= targets_have_names(node, targets, diags);
    }
    if let Err(e) = upstream_tls::check(&tls) {
        let place = match e.key {
            "sni" => at.sni,
            "ca-cert" => at.ca_cert,
            "client-cert" => at.client_cert.or(at.client_key),
            "client-key" => at.client_key.or(at.client_cert),
            _ => None,
        };
        let key = if place.is_some() { e.key } else { "tls" };
        diags.error(place.unwrap_or_else(|| name_at(node)), key, e.message);
        return None;
    }
    if let Some(insecure) = insecure_at.filter(|_| tls.insecure_skip_verify) {
        diags.warn(
            insecure,
            "insecure-skip-verify",
            format!(
                "TLS certificate verification is DISABLED for upstream `{upstream}`: anyone \
                 on the network path can impersonate its targets and read the traffic (for \
                 testing only; trust a private CA with `ca-cert` instead)"
            ),
        );
        if let Some(ca) = at.ca_cert {
            diags.warn(
                ca,
                "ca-cert",
                "`ca-cert` has no effect while `insecure-skip-verify` is on",
            );
        }
    }
    ok.then_some(tls)
}

/// Without `sni`, a host name target is verified (and sent as SNI) by its own name: it must
/// be one a certificate can carry. IP targets are verified by address.
fn targets_have_names(
    node: &KdlNode,
    targets: &[UpstreamTarget],
    diags: &mut Diagnostics<'_>,
) -> bool {
    let mut ok = true;
    for t in targets {
        let Ok(TargetAddress::Name(host, _)) = parse_target_address(&t.address) else {
            continue;
        };
        if let Err(e) = upstream_tls::server_name(None, Some(host), None) {
            ok = false;
            diags.error(
                name_at(node),
                "tls",
                format!(
                    "target {:?} cannot be verified by its name ({}): set `sni` to the name \
                     its certificate carries",
                    t.address, e.message
                ),
            );
        }
    }
    ok
}
