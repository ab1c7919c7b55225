//! Which content coding a client gets: `Accept-Encoding` (RFC 9110 12.5.3) with its q-values
//! against the codings the server offers, in the server's order of preference.
//!
//! - A coding's weight is its own entry's q, else that of `*` ("any coding not named"), else
//!   it is not acceptable. `q=0` refuses it.
//! - `identity` is always a possible answer. It competes with the codings only when the client
//!   weighs it (by naming it, or through `*`): weighed above every offered coding, it wins; at
//!   equal weights the server compresses. Unweighed, any acceptable coding beats it (`br;q=0.3`
//!   alone asks for br, with no preference stated for identity).
//! - The highest weight wins; a tie goes to the server's preference.
//! - A malformed q-value makes its entry not count, as if absent: the safe reading, since
//!   identity is always a possible answer (this proxy never answers 406).
//! - `x-gzip` is gzip (RFC 9110 8.4.1.3).

use zentinel_protocol::config::CompressionAlgorithm;

/// Weights are in thousandths: `q=1` is 1000.
const FULL: u16 = 1000;

/// The coding to use for `accept_encoding` (all of the request's field lines, joined with
/// commas) among `offered` (the server's order of preference), or None for identity.
pub fn negotiate(
    accept_encoding: &str,
    offered: &[CompressionAlgorithm],
) -> Option<CompressionAlgorithm> {
    let mut any = None;
    let mut identity = None;
    let mut named: Vec<(CompressionAlgorithm, u16)> = Vec::new();
    for (coding, q) in entries(accept_encoding) {
        match coding {
            "*" => any = Some(q),
            "identity" => identity = Some(q),
            _ => {
                if let Some(alg) = algorithm(coding) {
                    // A coding named twice: the last entry counts.
                    named.retain(|(a, _)| *a != alg);
                    named.push((alg, q));
                }
            }
        }
    }
    let weight = |alg: CompressionAlgorithm| {
        named
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, q)| *q)
            .or(any)
            .unwrap_or(0)
    };
    let mut best: Option<(CompressionAlgorithm, u16)> = None;
    for &alg in offered {
        let q = weight(alg);
        if q > 0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((alg, q));
        }
    }
    let (alg, q) = best?;
    let identity = identity.or(any).unwrap_or(0);
    (q >= identity).then_some(alg)
}

/// The content coding a token names (`x-gzip` is gzip); None for codings this build does not
/// produce.
fn algorithm(token: &str) -> Option<CompressionAlgorithm> {
    match token {
        "gzip" | "x-gzip" => Some(CompressionAlgorithm::Gzip),
        "br" => Some(CompressionAlgorithm::Brotli),
        "zstd" => Some(CompressionAlgorithm::Zstd),
        "deflate" => Some(CompressionAlgorithm::Deflate),
        _ => None,
    }
}

/// The entries of an `Accept-Encoding` value: coding (lowercased) and weight; entries with a
/// malformed weight are left out.
fn entries(value: &str) -> impl Iterator<Item = (&'static str, u16)> + '_ {
    value.split(',').filter_map(|item| {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim();
        let coding = known(coding)?;
        let mut q = Some(FULL);
        for param in parts {
            if let Some((k, v)) = param.split_once('=') {
                if k.trim().eq_ignore_ascii_case("q") {
                    q = qvalue(v.trim());
                }
            }
        }
        Some((coding, q?))
    })
}

/// The codings negotiation looks at, as static lowercase names (others are skipped).
fn known(coding: &str) -> Option<&'static str> {
    ["*", "identity", "gzip", "x-gzip", "br", "zstd", "deflate"]
        .into_iter()
        .find(|k| k.eq_ignore_ascii_case(coding))
}

/// RFC 9110 12.4.2 qvalue in thousandths: `0`, `0.5`, `1`, `1.000`; anything else is None.
fn qvalue(v: &str) -> Option<u16> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_value = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    match int {
        "0" => Some(frac_value),
        "1" if frac_value == 0 => Some(FULL),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CompressionAlgorithm::{Brotli, Deflate, Gzip, Zstd};

    const ALL: &[CompressionAlgorithm] = &[Gzip, Brotli, Zstd, Deflate];

    #[test]
    fn q_values_then_the_servers_order() {
        let cases: &[(&str, Option<CompressionAlgorithm>)] = &[
            ("", None),
            ("identity", None),
            ("gzip", Some(Gzip)),
            ("x-gzip", Some(Gzip)),
            ("GZIP, Deflate", Some(Gzip)),
            // Equal weights: the server's order (gzip first here), not the client's.
            ("br, gzip", Some(Gzip)),
            ("zstd, br", Some(Brotli)),
            ("br;q=0.9, zstd", Some(Zstd)),
            ("br;q=0.5, gzip;q=0.4", Some(Brotli)),
            ("br;q=0.3", Some(Brotli)),
            ("deflate", Some(Deflate)),
            ("gzip;q=0", None),
            ("gzip;q=0, br;q=0.001", Some(Brotli)),
            ("gzip ; q=0 , br ; Q=0", None),
            ("gzip;q=1.000, br;q=0.999", Some(Gzip)),
            // A coding named twice: the last entry counts.
            ("gzip, gzip;q=0", None),
            // Malformed weights do not count: here gzip is not accepted at all.
            ("gzip;q=2, br;q=0.3", Some(Brotli)),
            ("gzip;q=0.1234", None),
            ("gzip;q=abc", None),
            ("gzip;q=", None),
            ("compress, exi", None),
        ];
        for (header, want) in cases {
            assert_eq!(negotiate(header, ALL), *want, "{header:?}");
        }
    }

    #[test]
    fn star_stands_for_the_codings_not_named() {
        assert_eq!(negotiate("*", ALL), Some(Gzip));
        assert_eq!(negotiate("*", &[Zstd, Gzip]), Some(Zstd));
        assert_eq!(negotiate("*, gzip;q=0", ALL), Some(Brotli));
        assert_eq!(negotiate("*;q=0.1, zstd", ALL), Some(Zstd));
        assert_eq!(negotiate("*;q=0", ALL), None);
        assert_eq!(negotiate("*;q=0, br", ALL), Some(Brotli));
    }

    #[test]
    fn identity_competes_with_the_codings() {
        // The client prefers identity: it gets identity.
        assert_eq!(negotiate("gzip;q=0.5, identity", ALL), None);
        assert_eq!(negotiate("gzip;q=0.5, *", &[Gzip]), None);
        assert_eq!(
            negotiate("gzip;q=0.5, *", ALL),
            Some(Brotli),
            "`*` weighs br too"
        );
        // At equal weights the server compresses.
        assert_eq!(negotiate("gzip, identity", ALL), Some(Gzip));
        assert_eq!(negotiate("gzip;q=0.5, identity;q=0.5", ALL), Some(Gzip));
        // Identity refused: any acceptable coding.
        assert_eq!(negotiate("identity;q=0, br;q=0.1", ALL), Some(Brotli));
        assert_eq!(negotiate("br;q=0.2, *;q=0", ALL), Some(Brotli));
        // Identity refused and nothing offered is acceptable: identity all the same (the
        // proxy never answers 406), i.e. None.
        assert_eq!(negotiate("identity;q=0", ALL), None);
        assert_eq!(negotiate("identity;q=0, compress", ALL), None);
    }

    #[test]
    fn only_what_the_filter_offers() {
        assert_eq!(negotiate("zstd, br", &[Gzip]), None);
        assert_eq!(
            negotiate("zstd;q=0.9, gzip;q=0.1", &[Gzip, Zstd]),
            Some(Zstd)
        );
        assert_eq!(negotiate("gzip", &[]), None);
    }

    #[test]
    fn qvalues() {
        for (text, want) in [
            ("0", Some(0)),
            ("0.", Some(0)),
            ("0.5", Some(500)),
            ("0.05", Some(50)),
            ("0.123", Some(123)),
            ("1", Some(1000)),
            ("1.0", Some(1000)),
            ("1.000", Some(1000)),
            ("1.001", None),
            ("0.1234", None),
            ("2", None),
            ("-1", None),
            (".5", None),
            ("0.5x", None),
            ("", None),
        ] {
            assert_eq!(qvalue(text), want, "{text:?}");
        }
    }
}
