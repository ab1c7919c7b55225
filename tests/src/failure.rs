//! Failure kinds shared by the in-process load client ([`crate::load`]) and the standalone
//! load generator ([`crate::loadgen`], binary `zentinel-load`), so both count the same things
//! under the same names.

use std::fmt;
use std::time::Duration;

/// What went wrong with one request (or connection attempt).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailureKind {
    /// `connect` got ECONNREFUSED.
    ConnectRefused,
    /// `connect` did not complete within the I/O timeout.
    ConnectTimeout,
    /// `connect` failed otherwise.
    ConnectError,
    /// The TLS handshake failed or did not complete in time (an alert, a certificate that does
    /// not verify, the connection closed or reset during it).
    TlsHandshake,
    /// ECONNRESET while sending a request or reading its response.
    Reset,
    /// The server closed the connection (clean EOF) after the request was sent and before any
    /// byte of a response head.
    ClosedBeforeResponse,
    /// Sending the request failed (other than a reset), e.g. EPIPE.
    WriteError,
    /// Reading the response failed (other than a reset or EOF).
    ReadError,
    /// No progress within the I/O timeout.
    Timeout,
    /// The response head could not be parsed.
    BadResponse,
    /// A response other than 2xx.
    Non2xx,
    /// The connection ended inside a response (head or body).
    Truncated,
    /// A complete response with a body that does not match what the backend sent / received.
    Corrupt,
}

impl FailureKind {
    pub const ALL: [FailureKind; 13] = [
        FailureKind::ConnectRefused,
        FailureKind::ConnectTimeout,
        FailureKind::ConnectError,
        FailureKind::TlsHandshake,
        FailureKind::Reset,
        FailureKind::ClosedBeforeResponse,
        FailureKind::WriteError,
        FailureKind::ReadError,
        FailureKind::Timeout,
        FailureKind::BadResponse,
        FailureKind::Non2xx,
        FailureKind::Truncated,
        FailureKind::Corrupt,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::ConnectRefused => "connect-refused",
            FailureKind::ConnectTimeout => "connect-timeout",
            FailureKind::ConnectError => "connect-error",
            FailureKind::TlsHandshake => "tls-handshake",
            FailureKind::Reset => "reset",
            FailureKind::ClosedBeforeResponse => "closed-before-response",
            FailureKind::WriteError => "write-error",
            FailureKind::ReadError => "read-error",
            FailureKind::Timeout => "timeout",
            FailureKind::BadResponse => "bad-response",
            FailureKind::Non2xx => "non-2xx",
            FailureKind::Truncated => "truncated",
            FailureKind::Corrupt => "corrupt",
        }
    }

    /// Position in [`FailureKind::ALL`], for per-kind counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One failure, with enough detail to debug it.
#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: FailureKind,
    /// Time since the load started.
    pub at: Duration,
    /// Which client (`keep-alive-0`, `one-shot-1`, `t0/c3`...).
    pub client: String,
    /// The request (`GET /bytes/1000`...).
    pub request: String,
    pub detail: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{:.3}s] {} {} on {}: {}",
            self.at.as_secs_f64(),
            self.kind,
            self.request,
            self.client,
            self.detail
        )
    }
}
