//! `static-files` routes: answer a request from a directory.
//!
//! The head is built here, from the file opened once; the body is sent by the session from a
//! [`FileBody`] (see `body`): sendfile(2) on plain connections, bounded buffered reads over
//! TLS, or compressed on the fly (see `encoding`), a bounded piece per turn of the event loop,
//! so a large file neither blocks the worker nor sits in memory.
//!
//! Path mapping: the route's matched `path-prefix` is removed and the rest is looked up under
//! `root` (`/assets/app.js` on `path-prefix "/assets"` is `<root>/app.js`). Upstream
//! Zentinel appends the full request path to the root instead.

mod body;
mod cond;
mod encoding;

pub(crate) use cond::{civil_from_days, days_from_civil};
mod mime;
mod path;

pub use body::FileBody;

use std::fs::File;
use std::io;
use std::path::Path;

use tracing::debug;
use zentinel_protocol::config::StaticFiles;

use crate::filters::compress::{StreamSlot, MAX_STREAMS};
use crate::http::codec::{self, HttpVersion, RequestHead};
use crate::routing::FilesRoute;

use cond::RangeAsk;

/// Most entries a directory listing shows.
const LISTING_CAP: usize = 10_000;

/// A response head (and small body) to queue, and maybe a file body to stream after it.
pub struct Answer {
    pub status: u16,
    pub bytes: Vec<u8>,
    pub body: Option<FileBody>,
}

fn header(req: &RequestHead, name: &str) -> Option<String> {
    req.headers()
        .find(|h| h.name.eq_ignore_ascii_case(name.as_bytes()))
        .map(|h| String::from_utf8_lossy(h.value).into_owned())
}

fn small(status: u16, extra: &[(&str, &str)], close: bool, head_only: bool) -> Answer {
    let reason = codec::reason_phrase(status);
    let body = format!("{status} {reason}\n");
    Answer {
        status,
        bytes: codec::local_response_with(
            status,
            Some("text/plain; charset=utf-8"),
            extra,
            body.as_bytes(),
            close,
            head_only,
        ),
        body: None,
    }
}

pub fn answer(route: &FilesRoute, req: &RequestHead, close: bool) -> Answer {
    let head_only = req.is_head();
    if !matches!(req.method.as_str(), "GET" | "HEAD") {
        return small(405, &[("Allow", "GET, HEAD")], close, head_only);
    }
    let cfg = &route.files;
    // Canonical each time: an operator may swap the root (a symlink to a release directory)
    // without a reload.
    let Ok(root) = std::fs::canonicalize(&cfg.root) else {
        debug!(root = %cfg.root, "static-files root is gone");
        return small(404, &[], close, head_only);
    };
    let request_path = req.path();
    let rel = route.relative(request_path);
    let Ok(wanted) = path::join(&root, rel) else {
        debug!(path = request_path, "static-files path refused");
        return small(404, &[], close, head_only);
    };
    let found = match path::contained(&root, &wanted) {
        Ok(found) => found,
        Err(_) => {
            debug!(path = request_path, "static-files path leaves the root");
            return small(404, &[], close, head_only);
        }
    };
    let file = match found {
        Some(p) if p.is_dir() => {
            if !request_path.ends_with('/') {
                // Relative links in an index page resolve against the directory only with
                // the trailing slash.
                let location = format!("{request_path}/");
                return redirect(&location, close, head_only);
            }
            match cfg
                .index
                .iter()
                .map(|name| p.join(name))
                .find_map(|f| path::contained(&root, &f).ok().flatten())
                .filter(|f| f.is_file())
            {
                Some(f) => f,
                None if cfg.directory_listing => {
                    return listing(&p, request_path, close, head_only)
                }
                None => return small(403, &[], close, head_only),
            }
        }
        Some(p) => p,
        None => match cfg.fallback.as_deref().and_then(|f| {
            path::join(&root, f)
                .ok()
                .and_then(|p| path::contained(&root, &p).ok().flatten())
        }) {
            Some(f) => f,
            None => return small(404, &[], close, head_only),
        },
    };
    serve(&file, cfg, req, close)
}

fn redirect(location: &str, close: bool, head_only: bool) -> Answer {
    let mut a = small(301, &[("Location", location)], close, head_only);
    if location.bytes().any(|b| b < 0x20 || b == 0x7f) {
        a = small(404, &[], close, head_only);
    }
    a
}

fn serve(file: &Path, cfg: &StaticFiles, req: &RequestHead, close: bool) -> Answer {
    let head_only = req.is_head();
    // Opened now and kept: the body sent is the version whose size and dates the head gives.
    let opened = File::open(file).and_then(|f| f.metadata().map(|m| (f, m)));
    let (f, meta) = match opened {
        Ok((f, m)) if m.is_file() => (f, m),
        Ok(_) => return small(403, &[], close, head_only),
        Err(e) => {
            debug!(file = %file.display(), error = %e, "static file cannot be opened");
            let status = if e.kind() == io::ErrorKind::PermissionDenied {
                403
            } else {
                404
            };
            return small(status, &[], close, head_only);
        }
    };
    let size = meta.len();
    let mtime = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let ctype = mime::content_type(&name);
    // Whether the answer depends on Accept-Encoding (then caches are told so with `Vary`).
    let varies = cfg.compress
        && encoding::compressible(ctype)
        && (encoding::MIN_SIZE..=encoding::MAX_SIZE).contains(&size);
    // Never for a Range (its offsets are the file's), nor for HTTP/1.0, which has no chunked
    // framing for a body whose length is known only at its end.
    let mut coding =
        if varies && header(req, "range").is_none() && req.version == HttpVersion::Http11 {
            encoding::negotiate(&all_headers(req, "accept-encoding"))
        } else {
            None
        };
    // A compressed body holds one of the worker's stream places; with none free the file goes
    // out as it is (a HEAD sends no body and takes none).
    let encoder = match coding {
        Some(c) if !head_only => {
            let encoder = match StreamSlot::take() {
                Some(slot) => encoding::Encoder::new(c, size, slot)
                    .map_err(|e| {
                        debug!(file = %file.display(), error = %e,
                            "cannot start an encoder: sending the file as it is");
                    })
                    .ok(),
                None => {
                    debug!(file = %file.display(), max = MAX_STREAMS,
                        "every compressed stream place is taken: sending the file as it is");
                    None
                }
            };
            if encoder.is_none() {
                coding = None;
            }
            encoder
        }
        _ => None,
    };
    let file_tag = cond::etag(size, mtime);
    let tag = match coding {
        Some(c) => format!("{}{}\"", file_tag.trim_end_matches('"'), c.etag_suffix()),
        None => file_tag.clone(),
    };
    let last_modified = cond::http_date(mtime);
    let not_modified = match header(req, "if-none-match") {
        Some(inm) => cond::none_match(&inm, &tag),
        None => {
            header(req, "if-modified-since").is_some_and(|s| cond::not_modified_since(&s, mtime))
        }
    };
    let mut validators = vec![
        ("ETag", tag.as_str()),
        ("Last-Modified", last_modified.as_str()),
    ];
    if varies {
        validators.push(("Vary", "Accept-Encoding"));
    }
    if not_modified {
        return Answer {
            status: 304,
            bytes: codec::local_response_with(304, None, &validators, b"", close, true),
            body: None,
        };
    }
    // `If-Range` naming another version: the whole (new) file rather than a piece of it.
    let range_header = header(req, "range").filter(|_| {
        header(req, "if-range").is_none_or(|ir| ir.trim() == tag || ir.trim() == last_modified)
    });
    let (status, start, len, content_range) = match cond::range(range_header.as_deref(), size) {
        RangeAsk::Whole => (200, 0, size, None),
        RangeAsk::Part { start, end } => (
            206,
            start,
            end - start + 1,
            Some(format!("bytes {start}-{end}/{size}")),
        ),
        RangeAsk::Unsatisfiable => {
            let cr = format!("bytes */{size}");
            return small(416, &[("Content-Range", &cr)], close, head_only);
        }
    };
    let mut bytes = Vec::with_capacity(320);
    head(
        &mut bytes,
        status,
        ctype,
        coding.is_none().then_some(len),
        close,
    );
    for (n, v) in validators {
        push(&mut bytes, n, v);
    }
    if let Some(c) = coding {
        push(&mut bytes, "Content-Encoding", c.token());
    }
    push(&mut bytes, "Accept-Ranges", "bytes");
    push(&mut bytes, "Cache-Control", &cfg.cache_control);
    if let Some(cr) = &content_range {
        push(&mut bytes, "Content-Range", cr);
    }
    bytes.extend_from_slice(b"\r\n");
    let body = match encoder {
        _ if head_only => None,
        Some(e) => Some(FileBody::compressed(f, file, size, e)),
        _ if len == 0 => None,
        _ => Some(FileBody::identity(f, file, start, len)),
    };
    Answer {
        status,
        bytes,
        body,
    }
}

/// Every line of a header, joined as one list.
fn all_headers(req: &RequestHead, name: &str) -> String {
    let mut joined = String::new();
    for h in req
        .headers()
        .filter(|h| h.name.eq_ignore_ascii_case(name.as_bytes()))
    {
        if !joined.is_empty() {
            joined.push(',');
        }
        joined.push_str(&String::from_utf8_lossy(h.value));
    }
    joined
}

/// Status line and framing: `Content-Length` when `len` is known, else chunked.
fn head(out: &mut Vec<u8>, status: u16, ctype: &str, len: Option<u64>, close: bool) {
    out.extend_from_slice(
        format!("HTTP/1.1 {status} {}\r\n", codec::reason_phrase(status)).as_bytes(),
    );
    push(out, "Content-Type", ctype);
    match len {
        Some(len) => push(out, "Content-Length", &len.to_string()),
        None => push(out, "Transfer-Encoding", "chunked"),
    }
    push(
        out,
        "Connection",
        if close { "close" } else { "keep-alive" },
    );
}

/// One header line. Values come from this module (dates, numbers, the table) or from the
/// config's `cache-control`, which the master checked is a single line.
fn push(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// An HTML "Index of" page: directories first, then files, each by name.
fn listing(dir: &Path, request_path: &str, close: bool, head_only: bool) -> Answer {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return small(403, &[], close, head_only);
    };
    let mut items: Vec<(bool, String)> = entries
        .filter_map(Result::ok)
        .take(LISTING_CAP)
        .map(|e| {
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            (!is_dir, e.file_name().to_string_lossy().into_owned())
        })
        .collect();
    items.sort();
    let title = escape(request_path);
    let mut html = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Index of {title}</title>\
         </head>\n<body><h1>Index of {title}</h1>\n<ul>\n<li><a href=\"../\">../</a></li>\n"
    );
    for (is_file, name) in &items {
        let slash = if *is_file { "" } else { "/" };
        html.push_str(&format!(
            "<li><a href=\"{}{slash}\">{}{slash}</a></li>\n",
            href(name),
            escape(name)
        ));
    }
    html.push_str("</ul></body></html>\n");
    Answer {
        status: 200,
        bytes: codec::local_response(
            200,
            Some("text/html; charset=utf-8"),
            html.as_bytes(),
            close,
            head_only,
        ),
        body: None,
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A file name as a relative URL path segment.
fn href(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
