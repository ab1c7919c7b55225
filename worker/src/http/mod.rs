//! HTTP/1.x: the codec (message heads, body framing) and the client session state machine.

pub(crate) mod builtin;
pub mod codec;
pub(crate) mod error_pages;
mod fallback;
pub(crate) mod files;
mod header_policy;
// The filters edit heads in one pass of their own (`filters::head_edit`); their unit tests
// check it against the policies' `apply`.
#[cfg(test)]
pub(crate) use header_policy::apply as apply_header_mods;
pub(crate) use header_policy::{refusal as rate_refusal, with_rate_key};
mod retry;
pub(crate) mod session;
mod shadow;
pub use retry::RetryRule;
mod sticky;
mod websocket;

use crate::routing::RouteRequest;

/// A request as routing sees it: the client's head, with `X-Client-Cert-Subject` being the
/// proxy's (the verified client certificate's subject, or absent), never the client's.
pub(crate) struct Routed<'a> {
    pub head: &'a codec::RequestHead,
    pub client_cert_subject: Option<&'a str>,
}

impl RouteRequest for Routed<'_> {
    fn host(&self) -> Option<&str> {
        self.head.host()
    }

    fn path(&self) -> &str {
        RouteRequest::path(self.head)
    }

    fn method(&self) -> &str {
        RouteRequest::method(self.head)
    }

    fn query(&self) -> Option<&str> {
        self.head.query()
    }

    fn has_header(&self, name: &str, want: &dyn Fn(&[u8]) -> bool) -> bool {
        if name.eq_ignore_ascii_case(crate::client_cert::SUBJECT_HEADER) {
            return self.client_cert_subject.is_some_and(|s| want(s.as_bytes()));
        }
        self.head.has_header(name, want)
    }
}

/// Routing reads the parsed head directly: no copy of the request per route decision.
impl RouteRequest for codec::RequestHead {
    fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    fn path(&self) -> &str {
        codec::RequestHead::path(self)
    }

    fn method(&self) -> &str {
        &self.method
    }

    fn query(&self) -> Option<&str> {
        let target = self.target();
        let start = target.find('?')? + 1;
        let rest = &target[start..];
        Some(&rest[..rest.find('#').unwrap_or(rest.len())])
    }

    fn has_header(&self, name: &str, want: &dyn Fn(&[u8]) -> bool) -> bool {
        self.headers()
            .any(|h| h.name.eq_ignore_ascii_case(name.as_bytes()) && want(h.value.trim_ascii()))
    }
}
