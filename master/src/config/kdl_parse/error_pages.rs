//! A route's `error-pages` block: how the proxy's own error responses on the route look, and
//! which upstream error statuses are replaced by the proxy's page.
//!
//! ```kdl
//! error-pages {
//!     default-format "json"            // html | json | text | xml
//!     template-dir "/etc/zentinel/errors"
//!     pages {
//!         "404" { format "html"; template "404.html"; message "Nothing here"; }
//!         "503" { message "Back soon"; headers { "Retry-After" "30"; } }
//!     }
//!     "502" "/etc/zentinel/errors/502.html"   // shorthand: an HTML template
//! }
//! ```
//!
//! Upstream Zentinel has these settings in its route model but no KDL syntax for them (its own
//! example files spell them several ways); this is the model's shape in upstream's kebab-case.
//! Differences, on the operator's side: a template is read when the configuration loads, so a
//! missing file fails `-t` and the reload with its line (upstream logs a warning and serves its
//! built-in page); a relative template without `template-dir` is taken from the configuration
//! file's directory (upstream ignores it); a page configured for a status also replaces an
//! upstream response with that status (upstream rewrites only its headers).

use std::path::Path;

use zentinel_protocol::config::{ErrorFormat, ErrorPage, ErrorPages};

use super::tls::resolve_config_path;
use super::*;

const KEYS: &[&str] = &[
    "default-format",
    "template-dir",
    "include-stack-trace",
    "pages",
];
const PAGE_KEYS: &[&str] = &["format", "template", "message", "headers"];
const FORMATS: &[(&str, ErrorFormat)] = &[
    ("html", ErrorFormat::Html),
    ("json", ErrorFormat::Json),
    ("text", ErrorFormat::Text),
    ("xml", ErrorFormat::Xml),
];
/// A template is one response body, kept in every worker's memory.
const MAX_TEMPLATE_BYTES: u64 = 1 << 20;

pub(super) fn parse_error_pages(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Option<ErrorPages> {
    let children = block(node, diags);
    let errors_before = diags.error_count();
    let mut seen = Seen::default();
    let mut out = ErrorPages::default();
    let mut template_dir: Option<String> = None;
    // Templates are resolved once the block's `template-dir` (wherever it is written) is known.
    let mut templates: Vec<(usize, String, usize)> = Vec::new();
    for child in children {
        let n = name(child);
        if let Some(status) = status_name(n) {
            // The shorthand `"502" "/path/502.html"`: an HTML page from a template.
            if let Some((file, at)) = leaf_string(child, diags) {
                templates.push((out.pages.len(), file, at));
                push_page(
                    &mut out,
                    child,
                    page(status, Some(ErrorFormat::Html)),
                    diags,
                );
            }
            continue;
        }
        if KEYS.contains(&n) && !seen.check(child, diags) {
            continue;
        }
        match n {
            "default-format" => out.default_format = parse_format(child, diags),
            "template-dir" => {
                if let Some((dir, _)) = leaf_string(child, diags) {
                    template_dir = Some(dir);
                }
            }
            "include-stack-trace" => {
                if leaf_bool(child, diags) == Some(true) {
                    diags.warn(
                        name_at(child),
                        n,
                        "`include-stack-trace` has no effect: the proxy's error pages never \
                         carry a stack trace (upstream's do not either)",
                    );
                }
            }
            "pages" => {
                for p in block(child, diags) {
                    let Some(status) = status_name(name(p)) else {
                        diags.error(
                            name_at(p),
                            name(p),
                            format!(
                                "`pages` holds one block per status code from 400 to 599, e.g. \
                                 \"404\" {{ format \"html\"; }}, found `{}`",
                                name(p)
                            ),
                        );
                        continue;
                    };
                    if let Some((parsed, template)) = parse_page(p, status, diags) {
                        if let Some((file, at)) = template {
                            templates.push((out.pages.len(), file, at));
                        }
                        push_page(&mut out, p, parsed, diags);
                    }
                }
            }
            _ => unknown_listing(child, "error-pages", KEYS, &[], diags),
        }
    }
    for (idx, file, at) in templates {
        let text = read_template(&file, template_dir.as_deref(), at, diags);
        if let (Some(page), Some(text)) = (out.pages.get_mut(idx), text) {
            page.template = Some(text);
        }
    }
    out.pages.sort_by_key(|p| p.status);
    (diags.error_count() == errors_before).then_some(out)
}

fn page(status: u16, format: Option<ErrorFormat>) -> ErrorPage {
    ErrorPage {
        status,
        format,
        message: None,
        template: None,
        headers: Vec::new(),
    }
}

fn push_page(out: &mut ErrorPages, node: &KdlNode, page: ErrorPage, diags: &mut Diagnostics<'_>) {
    if out.pages.iter().any(|p| p.status == page.status) {
        diags.error(
            name_at(node),
            name(node),
            format!(
                "a second page for status {}: one page per status",
                page.status
            ),
        );
        return;
    }
    out.pages.push(page);
}

/// A node named by an error status (`"404"`).
fn status_name(n: &str) -> Option<u16> {
    n.parse::<u16>().ok().filter(|s| (400..=599).contains(s))
}

type TemplateAt = Option<(String, usize)>;

fn parse_page(
    node: &KdlNode,
    status: u16,
    diags: &mut Diagnostics<'_>,
) -> Option<(ErrorPage, TemplateAt)> {
    let children = keyed_block(node, PAGE_KEYS, diags);
    let mut out = page(status, None);
    let mut template = None;
    for child in children {
        match name(child) {
            "format" => out.format = parse_format(child, diags),
            "template" => template = leaf_string(child, diags),
            "message" => out.message = leaf_string(child, diags).map(|(m, _)| m),
            "headers" => out.headers = parse_headers(child, diags),
            _ => unknown_listing(child, "error page", PAGE_KEYS, &[], diags),
        }
    }
    Some((out, template))
}

fn parse_format(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Option<ErrorFormat> {
    let (value, at) = leaf_string(node, diags)?;
    let found = FORMATS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(&value))
        .map(|(_, f)| *f);
    if found.is_none() {
        diags.error(
            at,
            name(node),
            format!(
                "unknown error format {value:?}; accepted: \"html\", \"json\", \"text\", \"xml\""
            ),
        );
    }
    found
}

/// `headers { "X-Error-Code" "INVALID"; }`: one node per header, its name and value.
fn parse_headers(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for h in block(node, diags) {
        no_children(h, diags);
        let header = name(h);
        let values: Vec<&KdlEntry> = args(h).collect();
        let value = match values.as_slice() {
            [v] => string_value(h, v, diags),
            _ => {
                diags.error(
                    name_at(h),
                    header,
                    format!("header `{header}` takes one value, e.g. \"{header}\" \"value\""),
                );
                None
            }
        };
        let valid_name = !header.is_empty()
            && header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !valid_name {
            diags.error(
                name_at(h),
                header,
                format!("{header:?} is not a valid header name"),
            );
            continue;
        }
        if let Some(v) = value {
            if v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                diags.error(
                    name_at(h),
                    header,
                    "a header value cannot hold a line break",
                );
                continue;
            }
            out.push((header.to_owned(), v));
        }
    }
    out
}

fn read_template(
    file: &str,
    template_dir: Option<&str>,
    at: usize,
    diags: &mut Diagnostics<'_>,
) -> Option<String> {
    let path = match template_dir {
        Some(dir) if !Path::new(file).is_absolute() => resolve_config_path(
            &Path::new(dir).join(file).display().to_string(),
            diags.file_at(at),
        ),
        _ => resolve_config_path(file, diags.file_at(at)),
    };
    let read = std::fs::metadata(&path).and_then(|m| {
        if m.len() > MAX_TEMPLATE_BYTES {
            return Err(std::io::Error::other(format!(
                "{} bytes, more than the {MAX_TEMPLATE_BYTES} an error page may have",
                m.len()
            )));
        }
        std::fs::read_to_string(&path)
    });
    match read {
        Ok(text) => Some(text),
        Err(e) => {
            diags.error(at, "template", format!("error page template {path:?}: {e}"));
            None
        }
    }
}
