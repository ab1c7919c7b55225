//! The proxy's own error responses (no route, upstream unreachable, timeout, body too large…)
//! in the route's style: its `error-pages` block if it has one, else its service type's
//! default (upstream's JSON shape on api, builtin and inference routes, plain text elsewhere).
//!
//! A route's page for a status also replaces an upstream response with that status (see
//! [`ErrorStyle::replaces`]), as nginx's `proxy_intercept_errors` with `error_page` does.

use std::fmt::Write as _;
use std::sync::Arc;

use serde_json::json;
use zentinel_protocol::config::{ErrorFormat, ErrorPage, ErrorPages, ServiceType};

use super::builtin::{new_request_id, request_id, unix_secs};
use super::codec::{self, RequestHead};

/// How a route's errors look; cheap to clone (the pages are shared by the route's requests).
#[derive(Debug, Clone, Default)]
pub struct ErrorStyle {
    pub service: ServiceType,
    pub pages: Option<Arc<ErrorPages>>,
}

impl ErrorStyle {
    /// Whether an upstream response with `status` is replaced by the route's own page.
    pub fn replaces(&self, status: u16) -> bool {
        status >= 400 && self.page(status).is_some()
    }

    fn page(&self, status: u16) -> Option<&ErrorPage> {
        let pages = &self.pages.as_ref()?.pages;
        pages
            .binary_search_by_key(&status, |p| p.status)
            .ok()
            .and_then(|i| pages.get(i))
    }

    fn format(&self, page: Option<&ErrorPage>) -> Option<ErrorFormat> {
        page.and_then(|p| p.format)
            .or_else(|| self.pages.as_ref().and_then(|p| p.default_format))
            .or_else(|| self.service.json_errors().then_some(ErrorFormat::Json))
    }

    /// The complete response for `status`.
    pub fn response(
        &self,
        status: u16,
        close: bool,
        head_only: bool,
        req: Option<&RequestHead>,
    ) -> Vec<u8> {
        let page = self.page(status);
        let Some(format) = self.format(page) else {
            // No page, no format asked for: the proxy's terse plain-text answer.
            return codec::error_response(status, close, head_only);
        };
        let id = req.map_or_else(new_request_id, request_id);
        let fields = Fields {
            status,
            title: codec::reason_phrase(status),
            message: page
                .and_then(|p| p.message.as_deref())
                .unwrap_or_else(|| standard_message(status)),
            request_id: &id,
            timestamp: unix_secs(),
        };
        let body = match page.and_then(|p| p.template.as_deref()) {
            Some(template) => fields.fill(template, format),
            None => fields.render(format),
        };
        let mut headers: Vec<(&str, &str)> = vec![("X-Request-Id", &id)];
        for (name, value) in page.map_or(&[][..], |p| &p.headers) {
            headers.push((name, value));
        }
        codec::local_response_with(
            status,
            Some(content_type(format)),
            &headers,
            body.as_bytes(),
            close,
            head_only,
        )
    }
}

fn content_type(format: ErrorFormat) -> &'static str {
    match format {
        ErrorFormat::Html => "text/html; charset=utf-8",
        ErrorFormat::Json => "application/json; charset=utf-8",
        ErrorFormat::Text => "text/plain; charset=utf-8",
        ErrorFormat::Xml => "application/xml; charset=utf-8",
    }
}

fn standard_message(status: u16) -> &'static str {
    match status {
        400 => "The request could not be understood.",
        403 => "The request is not allowed.",
        404 => "The requested resource could not be found.",
        408 => "The request took too long to arrive.",
        413 => "The request body is too large.",
        414 => "The request target is too long.",
        429 => "Too many requests.",
        431 => "The request headers are too large.",
        500 => "The server encountered an internal error.",
        501 => "The request uses a feature this server does not support.",
        502 => "The upstream server could not be reached or sent an invalid response.",
        503 => "The service is temporarily unavailable.",
        504 => "The upstream server did not respond in time.",
        _ => "The request could not be completed.",
    }
}

/// What an error page says (upstream's error fields).
struct Fields<'a> {
    status: u16,
    title: &'a str,
    message: &'a str,
    request_id: &'a str,
    timestamp: u64,
}

impl Fields<'_> {
    fn render(&self, format: ErrorFormat) -> String {
        let (status, ts) = (self.status, self.timestamp);
        match format {
            ErrorFormat::Json => {
                let body = json!({
                    "status": status,
                    "title": self.title,
                    "message": self.message,
                    "request_id": self.request_id,
                    "timestamp": ts,
                });
                serde_json::to_string_pretty(&body).unwrap_or_default()
            }
            ErrorFormat::Text => format!(
                "{status} {}\n\n{}\n\nRequest ID: {}\n",
                self.title, self.message, self.request_id
            ),
            ErrorFormat::Xml => {
                let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<error>\n");
                let _ = write!(
                    out,
                    "  <status>{status}</status>\n  <title>{}</title>\n  <message>{}</message>\n  \
                     <requestId>{}</requestId>\n  <timestamp>{ts}</timestamp>\n</error>\n",
                    escape(self.title),
                    escape(self.message),
                    escape(self.request_id)
                );
                out
            }
            ErrorFormat::Html => format!(
                "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\">\
                 <title>{status} {title}</title></head>\n<body>\n<h1>{status} {title}</h1>\n\
                 <p>{message}</p>\n<p><small>Request ID: {id}</small></p>\n</body>\n</html>\n",
                title = escape(self.title),
                message = escape(self.message),
                id = escape(self.request_id),
            ),
        }
    }

    /// A template with upstream's placeholders filled in; values are escaped for HTML and XML
    /// (a request id comes from the client).
    fn fill(&self, template: &str, format: ErrorFormat) -> String {
        let markup = matches!(format, ErrorFormat::Html | ErrorFormat::Xml);
        let value = |v: &str| {
            if markup {
                escape(v)
            } else {
                v.to_owned()
            }
        };
        template
            .replace("{{status}}", &self.status.to_string())
            .replace("{{title}}", &value(self.title))
            .replace("{{message}}", &value(self.message))
            .replace("{{request_id}}", &value(self.request_id))
            .replace("{{timestamp}}", &self.timestamp.to_string())
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(bytes: Vec<u8>) -> (String, String) {
        let text = String::from_utf8(bytes).expect("utf-8 response");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        (head.to_owned(), body.to_owned())
    }

    fn style(pages: ErrorPages) -> ErrorStyle {
        ErrorStyle {
            service: ServiceType::Web,
            pages: Some(Arc::new(pages)),
        }
    }

    #[test]
    fn api_routes_answer_upstreams_json_shape() {
        let api = ErrorStyle {
            service: ServiceType::Api,
            pages: None,
        };
        let (head, body) = split(api.response(502, true, false, None));
        assert!(head.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{head}");
        assert!(head.contains("Content-Type: application/json; charset=utf-8"));
        let v: serde_json::Value = serde_json::from_str(&body).expect("json body");
        assert_eq!(v["status"], 502);
        assert_eq!(v["title"], "Bad Gateway");
        assert!(
            v["request_id"].is_string() && v["timestamp"].is_u64(),
            "{v}"
        );
    }

    #[test]
    fn web_routes_without_pages_keep_the_plain_answer() {
        let plain = ErrorStyle::default().response(404, false, false, None);
        assert_eq!(plain, codec::error_response(404, false, false));
        assert!(!ErrorStyle::default().replaces(404));
    }

    #[test]
    fn a_page_sets_format_message_headers_and_replaces_that_status_only() {
        let s = style(ErrorPages {
            default_format: Some(ErrorFormat::Text),
            pages: vec![ErrorPage {
                status: 503,
                format: Some(ErrorFormat::Xml),
                message: Some("Back <soon>".into()),
                template: None,
                headers: vec![("Retry-After".into(), "30".into())],
            }],
        });
        assert!(s.replaces(503) && !s.replaces(502));
        let (head, body) = split(s.response(503, true, false, None));
        assert!(head.contains("Content-Type: application/xml"), "{head}");
        assert!(head.contains("\r\nRetry-After: 30"), "{head}");
        assert!(
            body.contains("<message>Back &lt;soon&gt;</message>"),
            "{body}"
        );
        // Other statuses take the default format.
        let (head, body) = split(s.response(502, true, false, None));
        assert!(head.contains("Content-Type: text/plain"), "{head}");
        assert!(body.starts_with("502 Bad Gateway\n"), "{body}");
    }

    #[test]
    fn templates_get_placeholders_filled_and_escaped() {
        let s = style(ErrorPages {
            default_format: None,
            pages: vec![ErrorPage {
                status: 404,
                format: Some(ErrorFormat::Html),
                message: Some("Gone & away".into()),
                template: Some("<p>{{status}} {{title}}: {{message}}</p>".into()),
                headers: Vec::new(),
            }],
        });
        let (head, body) = split(s.response(404, false, true, None));
        assert!(head.contains("Content-Type: text/html"), "{head}");
        assert!(body.is_empty(), "HEAD gets no body: {body}");
        let (_, body) = split(s.response(404, false, false, None));
        assert_eq!(body, "<p>404 Not Found: Gone &amp; away</p>");
    }
}
