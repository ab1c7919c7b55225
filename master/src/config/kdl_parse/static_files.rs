//! `static-files { root "/var/www"; index "index.html"; ... }`: a route answered from a
//! directory by the worker.
//!
//! Differences from upstream Zentinel, all on the side of what the operator wrote:
//! - `index` is honoured (upstream always tries index.html then index.htm); several names may
//!   be given and are tried in order.
//! - unknown keys and wrongly typed values are errors (upstream ignores them silently).
//! - `compress` (default on, as upstream) compresses as the file is sent, so it also applies
//!   to files upstream would have read whole into memory (see the worker's `http::files`).
//! - `mime-types` is refused: upstream cannot parse it either (it is always empty there).

use std::path::Path;

use zentinel_protocol::config::StaticFiles;

use super::*;

const KEYS: &[&str] = &[
    "root",
    "index",
    "directory-listing",
    "cache-control",
    "compress",
    "fallback",
];
const UNSUPPORTED: &[&str] = &["mime-types"];
/// Upstream's default `Cache-Control`.
const DEFAULT_CACHE_CONTROL: &str = "public, max-age=3600";

pub(super) fn parse_static_files(
    node: &KdlNode,
    diags: &mut Diagnostics<'_>,
) -> Option<StaticFiles> {
    let children = keyed_block(node, KEYS, diags);
    let errors_before = diags.error_count();
    let mut root = None;
    let mut index = Vec::new();
    let mut directory_listing = false;
    let mut cache_control = DEFAULT_CACHE_CONTROL.to_owned();
    let mut fallback = None;
    let mut compress = true;
    for child in children {
        match name(child) {
            "root" => {
                if let Some((dir, at)) = leaf_string(child, diags) {
                    root = check_root(&dir, at, diags);
                }
            }
            "index" => index = parse_index(child, diags),
            "directory-listing" => {
                if let Some(b) = leaf_bool(child, diags) {
                    directory_listing = b;
                }
            }
            "cache-control" => {
                if let Some((v, at)) = leaf_string(child, diags) {
                    if v.trim().is_empty() || v.contains(['\r', '\n']) {
                        diags.error(
                            at,
                            "cache-control",
                            "`cache-control` must be a non-empty single-line header value",
                        );
                    } else {
                        cache_control = v;
                    }
                }
            }
            "compress" => {
                if let Some(b) = leaf_bool(child, diags) {
                    compress = b;
                }
            }
            "fallback" => {
                if let Some((file, at)) = leaf_string(child, diags) {
                    if relative_file(&file) {
                        fallback = Some(file.trim_start_matches('/').to_owned());
                    } else {
                        diags.error(
                            at,
                            "fallback",
                            format!(
                                "`fallback` {file:?} must name a file inside `root`, e.g. \
                                 \"index.html\" (no `..`)"
                            ),
                        );
                    }
                }
            }
            _ => unknown_listing(child, "static-files", KEYS, UNSUPPORTED, diags),
        }
    }
    if root.is_none() && !children.iter().any(|c| name(c) == "root") {
        diags.error(
            name_at(node),
            "static-files",
            "`static-files` needs a `root` directory, e.g. root \"/var/www/html\"",
        );
    }
    if index.is_empty() {
        index.push("index.html".to_owned());
    }
    if diags.error_count() != errors_before {
        return None;
    }
    Some(StaticFiles {
        root: root?,
        index,
        directory_listing,
        cache_control,
        compress,
        fallback,
    })
}

/// `index "index.html" "index.htm"`: plain file names, tried in order.
fn parse_index(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Vec<String> {
    no_children(node, diags);
    let mut names = Vec::new();
    for entry in node.entries() {
        if entry.name().is_some() {
            unknown_property(node, entry, &[], diags);
            continue;
        }
        let Some(file) = string_value(node, entry, diags) else {
            continue;
        };
        if file.is_empty() || file.contains('/') || file == "." || file == ".." {
            diags.error(
                entry.span().offset(),
                "index",
                format!("`index` {file:?} must be a file name such as \"index.html\""),
            );
        } else {
            names.push(file);
        }
    }
    if node.entries().is_empty() {
        diags.error(
            name_at(node),
            "index",
            "`index` needs a file name, e.g. index \"index.html\"",
        );
    }
    names
}

/// The root must be an absolute, existing directory (checked now, as upstream's validation
/// does, so a typo fails the reload instead of every request). Kept as written: the worker
/// resolves symlinks itself when it checks that a file stays inside.
fn check_root(dir: &str, at: usize, diags: &mut Diagnostics<'_>) -> Option<String> {
    let path = Path::new(dir);
    if !path.is_absolute() {
        diags.error(
            at,
            "root",
            format!("`root` {dir:?} must be an absolute path, e.g. \"/var/www/html\""),
        );
        return None;
    }
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Some(dir.to_owned()),
        Ok(_) => {
            diags.error(at, "root", format!("`root` {dir:?} is not a directory"));
            None
        }
        Err(e) => {
            diags.error(at, "root", format!("`root` {dir:?}: {e}"));
            None
        }
    }
}

/// A path that cannot leave the directory it is joined to.
fn relative_file(file: &str) -> bool {
    let rel = file.trim_start_matches('/');
    !rel.is_empty()
        && !rel.contains('\0')
        && rel.split('/').all(|seg| !seg.is_empty() && seg != "..")
}
