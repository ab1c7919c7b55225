//! HTTP/2 to clients: ALPN `h2` on TLS listeners, prior knowledge (h2c) on plain ones.
//!
//! `conn` drives one connection with the `h2` crate from the mio loop; `stream` bridges each
//! stream to the HTTP/1 session that serves it through an in-memory pipe (`sock::pipe`), so
//! routing, limits, retries, upstream pools and the access log are the HTTP/1 ones;
//! `translate` writes HTTP/2 request heads as HTTP/1.1 and reads HTTP/1.1 response heads
//! back; `chunked` decodes chunked bodies into DATA and trailers; `io` is the socket as the
//! `tokio::io` traits h2 reads and writes through.

mod chunked;
mod conn;
mod io;
mod stream;
mod translate;

pub use conn::{H2Conn, Origin};

/// The client connection preface (RFC 9113 3.4) a prior-knowledge HTTP/2 client starts with.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
