//! HTTP/2 with the `h2` crate, driven from the mio loop without a runtime (`driver`), on both
//! sides of the proxy: to clients (ALPN `h2` on TLS listeners, prior knowledge on plain ones)
//! and to upstreams (`http-version "2"` or `"auto"`).
//!
//! Either way an HTTP/2 stream is bridged to an ordinary HTTP/1 session through an in-memory
//! pipe (`sock::pipe`), so routing, limits, retries, upstream pools and the access log are the
//! HTTP/1 ones: a client stream is served by a session whose client is a pipe; a session's
//! exchange to an HTTP/2 upstream has a pipe as its upstream connection, the other end a
//! stream of a connection shared by many exchanges.
//!
//! Client side: `conn` drives one client connection, `stream` bridges each stream, `translate`
//! writes HTTP/2 request heads as HTTP/1.1 and reads HTTP/1.1 response heads back. Upstream
//! side: `up_conn` drives one connection to a target, `up_stream` bridges each stream,
//! `up_translate` reads HTTP/1.1 request heads as HTTP/2 and writes HTTP/2 response heads as
//! HTTP/1.1. Shared: `body` moves bodies between streams and pipes both ways, `chunked` the
//! chunked coding, `io` is the socket as the `tokio::io` traits h2 reads and writes through,
//! `guard` counts the frames h2 does not (floods) on the client side.

mod body;
mod chunked;
mod conn;
mod driver;
mod guard;
mod io;
mod stream;
mod translate;
mod up_conn;
mod up_stream;
mod up_translate;

pub use conn::{H2Conn, Origin};
pub use up_conn::{H2Upstream, UpRun, UpstreamSide};

/// The client connection preface (RFC 9113 3.4) a prior-knowledge HTTP/2 client starts with.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
