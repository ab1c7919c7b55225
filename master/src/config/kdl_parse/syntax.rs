//! KDL text to a document: v2, v1, or a file mixing both.

use super::*;

/// Parses KDL v2, falling back to v1, and finally to a file mixing both (v1 bare `true`
/// alongside v2 `#true`), which neither parser accepts alone.
pub(in crate::config) fn parse_document(
    source: &str,
    diags: &mut Diagnostics<'_>,
) -> Option<KdlDocument> {
    let err = match KdlDocument::parse(source) {
        Ok(doc) => return Some(doc),
        Err(err) => err,
    };
    if let Some((rewritten, inserted)) = rewrite_v1_keywords(source) {
        if let Ok(doc) = KdlDocument::parse_v2(&rewritten) {
            diags.set_inserted(inserted);
            return Some(doc);
        }
    }
    if err.diagnostics.is_empty() {
        diags.error(0, "", "invalid KDL document");
    }
    for d in &err.diagnostics {
        let offset = d.span.offset();
        let mut message = format!(
            "syntax error: {}",
            d.message.as_deref().unwrap_or("invalid KDL")
        );
        if let Some(label) = &d.label {
            message.push_str(&format!(" ({label})"));
        }
        if let Some(help) = &d.help {
            message.push_str(&format!("; help: {}", help.replace('\n', " ")));
        }
        let node = node_on_line(source, offset);
        diags.error(offset, &node, message);
    }
    None
}

/// The first word of the line holding `offset`: for syntax errors, where no parsed node exists,
/// it usually names the node being written.
fn node_on_line(source: &str, offset: usize) -> String {
    let offset = offset.min(source.len());
    let start = source
        .get(..offset)
        .and_then(|s| s.rfind('\n'))
        .map_or(0, |i| i + 1);
    let line = source[start..].lines().next().unwrap_or("");
    line.trim_start()
        .split(|c: char| c.is_whitespace() || "{};\"=()/".contains(c))
        .next()
        .unwrap_or("")
        .to_owned()
}

/// Rewrites KDL v1 bare keywords (`true`, `false`, `null`) to their v2 spelling (`#true`...),
/// skipping strings and comments. Returns the new text and the offsets (in the new text) of the
/// inserted `#`s, or `None` when there is nothing to rewrite.
pub(in crate::config) fn rewrite_v1_keywords(source: &str) -> Option<(String, Vec<usize>)> {
    fn is_delimiter(c: u8) -> bool {
        c.is_ascii_whitespace() || b"(){}[];=/\\\"#,<>".contains(&c)
    }
    /// Skips a raw string whose opening quote is at `quote` and which closes with `"` followed
    /// by `hashes` `#`s. Returns the offset after it.
    fn skip_raw(b: &[u8], quote: usize, hashes: usize) -> usize {
        let mut j = quote + 1;
        while j < b.len() {
            if b[j] == b'"'
                && b[j + 1..]
                    .iter()
                    .take(hashes)
                    .filter(|&&c| c == b'#')
                    .count()
                    == hashes
            {
                return j + 1 + hashes;
            }
            j += 1;
        }
        b.len()
    }
    fn skip_quoted(b: &[u8], quote: usize) -> usize {
        let multi = b[quote..].starts_with(b"\"\"\"");
        let mut j = quote + if multi { 3 } else { 1 };
        while j < b.len() {
            match b[j] {
                b'\\' => j += 2,
                b'"' if !multi => return j + 1,
                b'"' if b[j..].starts_with(b"\"\"\"") => return j + 3,
                _ => j += 1,
            }
        }
        b.len()
    }

    let b = source.as_bytes();
    let mut out = String::with_capacity(source.len() + 16);
    let mut inserted = Vec::new();
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if b[i..].starts_with(b"//") {
            i = b[i..]
                .iter()
                .position(|&c| c == b'\n')
                .map_or(b.len(), |p| i + p);
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0usize;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == b'"' {
            i = skip_quoted(b, i);
        } else if c == b'#' {
            let hashes = b[i..].iter().take_while(|&&c| c == b'#').count();
            if b.get(i + hashes) == Some(&b'"') {
                i = skip_raw(b, i + hashes, hashes);
            } else {
                // A v2 keyword such as `#true`: already in the target spelling.
                i += hashes;
                while i < b.len() && !is_delimiter(b[i]) {
                    i += 1;
                }
            }
        } else if c == b'r' && matches!(b.get(i + 1), Some(b'"') | Some(b'#')) && {
            let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
            b.get(i + 1 + hashes) == Some(&b'"')
        } {
            let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
            i = skip_raw(b, i + 1 + hashes, hashes);
        } else if is_delimiter(c) {
            i += 1;
        } else {
            let start = i;
            while i < b.len() && !is_delimiter(b[i]) {
                i += 1;
            }
            if matches!(&source[start..i], "true" | "false" | "null") {
                out.push_str(&source[copied..start]);
                inserted.push(out.len());
                out.push('#');
                copied = start;
            }
        }
    }
    if inserted.is_empty() {
        return None;
    }
    out.push_str(&source[copied..]);
    Some((out, inserted))
}
