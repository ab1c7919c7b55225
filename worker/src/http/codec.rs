//! HTTP/1.x message heads and body framing: parsing (httparse), validation against request
//! smuggling and size limits, and the rewriting of heads as they cross the proxy.
//!
//! Pure functions over byte buffers, no I/O: the event loop feeds them what it read.
//! Bodies are forwarded byte-for-byte (chunked stays chunked); [`BodyTracker`] finds where a
//! body ends and rejects malformed framing. The one exception is a chunked response to an
//! HTTP/1.0 client, which cannot decode chunked: [`BodyTracker::feed_decoded`] strips the
//! framing and the response is delimited by the connection close instead
//! ([`ResponseHead::dechunks_for`]).
//!
//! One job per file:
//! - [`request`]: what a client's request head must look like to be forwarded at all, the
//!   rules that refuse request smuggling (read this one to review them);
//! - [`body`]: where a body ends, and the chunked framing checks;
//! - [`response`]: an upstream's response head;
//! - [`head`]: how a parsed head keeps its bytes;
//! - [`connection`]: hop-by-hop fields and what `Connection` names;
//! - [`upstream_request`] and [`client_response`]: heads rewritten as they cross the proxy;
//! - [`local`]: responses the proxy writes itself.

mod body;
mod client_response;
mod connection;
mod head;
mod local;
mod request;
mod response;
#[cfg(test)]
mod tests;
mod upstream_request;

pub use body::{BodyError, BodyProgress, BodyTracker};
pub use client_response::{write_client_response, write_client_response_with};
pub use head::{HeadStore, Header, Headers, RequestHead, ResponseHead, SmallStr};
pub use local::{
    error_response, local_response, local_response_with, reason_phrase, static_response,
    CONTINUE_100,
};
pub use request::{merged_content_length, normalize_authority, parse_request, RequestError};
pub use response::{parse_response, ResponseError};
pub use upstream_request::{write_upstream_request, ForwardContext};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVersion {
    Http10,
    Http11,
}

/// How the length of a message body is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body (requests without CL/TE, HEAD responses, 1xx/204/304 responses).
    Empty,
    ContentLength(u64),
    Chunked,
    /// Response body delimited by the upstream closing its connection.
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed<T> {
    Complete(T),
    /// More bytes are needed.
    Partial,
}

/// Room for this many header fields on the stack; more (rare) take a heap allocation.
const STACK_HEADERS: usize = 48;

/// `Name: n\r\n`, keeping the field name as the client or upstream spelled it.
fn push_length_field(out: &mut Vec<u8>, name: &[u8], n: u64) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    push_decimal(out, n);
    out.extend_from_slice(b"\r\n");
}

/// Append the decimal form of `n` (no formatting machinery, no allocation).
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}
