//! `curl` as a test client (the client the issues name for CORS and HTTP/2): the status line,
//! every header field and the body of one exchange, parsed from `curl -i`.

use std::process::Command;

/// One response as curl received it.
#[derive(Debug, Clone)]
pub struct CurlResponse {
    /// `1.1` or `2`.
    pub version: String,
    pub status: u16,
    /// Field names lowercased, in order (HTTP/2 sends them lowercased anyway).
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl CurlResponse {
    /// The first value of `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The names of the fields starting with `prefix` (lowercase).
    pub fn names_starting_with(&self, prefix: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(n, _)| n.as_str())
            .collect()
    }
}

/// Runs `curl -sS -i ARGS` (30 s at most) and parses what it printed; panics when curl fails.
pub fn curl(args: &[&str]) -> CurlResponse {
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "30"])
        .args(args)
        .output()
        .expect("curl runs (scripts/test-deps.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("curl {args:?}: no header block in {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let version = parts
        .next()
        .and_then(|v| v.strip_prefix("HTTP/"))
        .unwrap_or_else(|| panic!("curl {args:?}: status line {status_line:?}"))
        .to_owned();
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("curl {args:?}: status line {status_line:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    CurlResponse {
        version,
        status,
        headers,
        body: body.to_owned(),
    }
}
