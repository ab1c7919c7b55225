//! The standalone load generator behind the `zentinel-load` binary.
//!
//! A few threads (`-t`), each running a mio event loop over its share of the connections with
//! non-blocking sockets and a per-connection state machine (connect, TLS handshake with
//! `--tls`, write the request, read the head, read the body by Content-Length / chunked /
//! close, verify, next request). The
//! request bytes are built once; every connection reuses one read buffer, so the steady state
//! allocates nothing per request.
//!
//! Accounting is exact: every request that was started ends either as a verified success or
//! as one failure of a [`FailureKind`]. A keep-alive connection the server ends after a
//! response carrying `Connection: close` is not a failure (the next request reconnects); a
//! connection that ends after a request was sent and before its complete response is one.

mod cli;
mod conn;
mod engine;
mod report;
mod response;
mod stream;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::failure::{Failure, FailureKind};
pub use cli::{parse_args, parse_duration, usage, CliError};
pub use engine::run;
pub use report::Report;
pub use tls::{TlsSetup, TlsVerify};

/// Reuse an idle connection for the next request, or open one per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    KeepAlive,
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

/// How much of a response is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// zentinel-backend's answers: `GET /bytes/N` pattern body + `X-Body-Checksum`, or the
    /// `len=N checksum=HEX` answer to an upload.
    Checksum,
    /// 2xx and complete framing only.
    Status,
}

/// A parsed command line.
#[derive(Debug, Clone)]
pub struct Config {
    pub addr: SocketAddr,
    /// `--addr` as given (for the default Host header and the summary).
    pub addr_text: String,
    pub host: String,
    pub connections: usize,
    pub threads: usize,
    /// None: no time limit (only with `-n`).
    pub duration: Option<Duration>,
    pub requests: Option<u64>,
    /// Open loop at this many requests per second in total.
    pub rate: Option<f64>,
    pub mode: Mode,
    pub method: Method,
    pub body: u64,
    pub path: Option<String>,
    pub verify: Verify,
    pub timeout: Duration,
    /// Print every 100 ms bucket instead of one line per second.
    pub timeline_full: bool,
    pub timeline_csv: Option<PathBuf>,
    pub json: Option<PathBuf>,
    /// `--tls`: every connection is TLS.
    pub tls: Option<TlsSetup>,
}

impl Config {
    /// `GET /bytes/1024`, `POST /upload (1024 bytes)`...
    pub fn describe_request(&self) -> String {
        let path = self.request_path();
        match self.method {
            Method::Get => format!("GET {path}"),
            Method::Post => format!("POST {path} ({} bytes)", self.body),
        }
    }

    pub fn request_path(&self) -> String {
        match (&self.path, self.method) {
            (Some(p), _) => p.clone(),
            (None, Method::Get) => format!("/bytes/{}", self.body),
            (None, Method::Post) => "/upload".to_owned(),
        }
    }
}
