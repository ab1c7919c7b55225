//! `include "pattern"` at the top level of a configuration file, as upstream Zentinel resolves
//! it: the pattern is relative to the including file's directory (or absolute), may be a glob
//! (`routes/*.kdl`, matches taken in sorted order), may nest, and every matched file is spliced
//! in place of the `include` node, so an include behaves exactly like pasting its blocks there.
//! A file reached twice (a cycle, or two files including the same third one) is an error, as
//! upstream; a pattern that matches nothing is a warning, as upstream (it logs one).
//!
//! The same expansion runs on two kinds of file store: the disk, at start and reload, which
//! records every file read ([`Disk`]); and the source a running master hands to its successor
//! ([`Snapshot`]), so the new master parses exactly the text the old one ran, never the disk.

use std::collections::BTreeSet;
use std::path::Path;

use super::kdl_parse::{self, MappedFile, Segment, SourceMap};
use super::{ConfigDiagnostic, ConfigSource, ConfigSourceFile};

/// Why an included file could not be read.
pub(super) enum ReadError {
    /// No such file: a warning, as upstream (a pattern that matches nothing).
    Missing,
    Other(String),
}

/// Where included files are read from.
pub(super) trait FileStore {
    /// The text of the file at `path` (absolute).
    fn read(&mut self, path: &str) -> Result<String, ReadError>;
    /// The files a glob `pattern` (absolute) matches, sorted.
    fn matching(&self, pattern: &str) -> Result<Vec<String>, String>;
}

/// The disk, recording every file read (the configuration's source).
#[derive(Default)]
pub(super) struct Disk {
    pub read: Vec<ConfigSourceFile>,
}

impl FileStore for Disk {
    fn read(&mut self, path: &str) -> Result<String, ReadError> {
        let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ReadError::Missing,
            _ => ReadError::Other(e.to_string()),
        })?;
        self.read.push(ConfigSourceFile {
            path: path.to_owned(),
            text: text.clone(),
        });
        Ok(text)
    }

    fn matching(&self, pattern: &str) -> Result<Vec<String>, String> {
        let paths = glob::glob(pattern).map_err(|e| e.to_string())?;
        let mut out: Vec<String> = paths
            .filter_map(Result::ok)
            .filter(|p| !p.is_dir())
            .map(|p| p.display().to_string())
            .collect();
        out.sort();
        Ok(out)
    }
}

/// The files of a configuration source (what a master runs), never the disk.
pub(super) struct Snapshot<'s>(pub &'s ConfigSource);

impl FileStore for Snapshot<'_> {
    fn read(&mut self, path: &str) -> Result<String, ReadError> {
        // What the disk pass did not find is not in the source either.
        self.0
            .text_of(path)
            .map(str::to_owned)
            .ok_or(ReadError::Missing)
    }

    fn matching(&self, pattern: &str) -> Result<Vec<String>, String> {
        let pattern = glob::Pattern::new(pattern).map_err(|e| e.to_string())?;
        let mut out: Vec<String> = self
            .0
            .files
            .iter()
            .skip(1)
            .map(|f| f.path.clone())
            .filter(|p| pattern.matches(p))
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }
}

/// A configuration with its includes spliced in.
pub(super) struct Expanded {
    pub text: String,
    /// (label, text) of every file, the main one first.
    pub files: Vec<(String, String)>,
    pub segments: Vec<Segment>,
    pub errors: Vec<ConfigDiagnostic>,
    pub warnings: Vec<ConfigDiagnostic>,
}

impl Expanded {
    /// The source map for the spliced text's diagnostics.
    pub fn source_map(&self) -> SourceMap<'_> {
        SourceMap {
            files: self
                .files
                .iter()
                .map(|(label, text)| MappedFile { label, text })
                .collect(),
            segments: self.segments.clone(),
        }
    }
}

/// Splices every `include` of `main` (and of the files it includes).
pub(super) fn expand(main_label: &str, main_text: String, store: &mut dyn FileStore) -> Expanded {
    let mut expanded = Expanded {
        text: String::with_capacity(main_text.len()),
        files: vec![(main_label.to_owned(), main_text)],
        segments: Vec::new(),
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let mut visited = BTreeSet::from([main_label.to_owned()]);
    splice(0, &mut expanded, store, &mut visited);
    expanded
}

/// A top-level `include` node of a file: its byte range and its pattern (if well formed).
struct IncludeNode {
    start: usize,
    end: usize,
    name_at: usize,
    pattern: Result<String, usize>,
}

/// The `include` nodes at the top level of `text`, in order. A file that is not valid KDL has
/// none here: the final parse reports its syntax errors, at their place.
fn include_nodes(label: &str, text: &str) -> Vec<IncludeNode> {
    let mut diags = kdl_parse::Diagnostics::new(text, label);
    let Some(doc) = kdl_parse::parse_document_for_includes(text, &mut diags) else {
        return Vec::new();
    };
    doc.nodes()
        .iter()
        .filter(|node| node.name().value() == "include")
        .map(|node| {
            let span = node.span();
            let first = node.entries().iter().find(|e| e.name().is_none());
            let pattern = match first.map(|e| e.value()) {
                Some(kdl::KdlValue::String(s)) => Ok(s.clone()),
                _ => Err(diags.source_offset(node.name().span().offset())),
            };
            IncludeNode {
                start: diags.source_offset(span.offset()),
                end: diags.source_offset(span.offset() + span.len()),
                name_at: diags.source_offset(node.name().span().offset()),
                pattern,
            }
        })
        .collect()
}

fn splice(
    file: usize,
    out: &mut Expanded,
    store: &mut dyn FileStore,
    visited: &mut BTreeSet<String>,
) {
    let (label, text) = out.files[file].clone();
    let mut copied = 0;
    for include in include_nodes(&label, &text) {
        if include.start < copied || include.end > text.len() {
            continue;
        }
        copy(out, file, &text, copied, include.start);
        copied = include.end;
        let pattern = match include.pattern {
            Ok(pattern) => pattern,
            Err(at) => {
                report(
                    out,
                    &label,
                    &text,
                    at,
                    true,
                    "`include` takes a file name or a glob, e.g. `include \"routes/*.kdl\"`"
                        .to_owned(),
                );
                continue;
            }
        };
        let resolved = resolve(&pattern, &label);
        let matches = if has_glob(&pattern) {
            match store.matching(&resolved) {
                Ok(matches) => matches,
                Err(e) => {
                    report(
                        out,
                        &label,
                        &text,
                        include.name_at,
                        true,
                        format!("invalid include pattern {pattern:?}: {e}"),
                    );
                    continue;
                }
            }
        } else {
            vec![resolved.clone()]
        };
        if matches.is_empty() {
            report(
                out,
                &label,
                &text,
                include.name_at,
                false,
                format!("include {pattern:?} matches no file ({resolved})"),
            );
            continue;
        }
        for path in matches {
            if !visited.insert(path.clone()) {
                report(
                    out,
                    &label,
                    &text,
                    include.name_at,
                    true,
                    format!("{path} is already included (each file may be included once)"),
                );
                continue;
            }
            let included = match store.read(&path) {
                Ok(text) => text,
                Err(ReadError::Missing) => {
                    report(
                        out,
                        &label,
                        &text,
                        include.name_at,
                        false,
                        format!("include {pattern:?} matches no file ({path})"),
                    );
                    continue;
                }
                Err(ReadError::Other(e)) => {
                    report(
                        out,
                        &label,
                        &text,
                        include.name_at,
                        true,
                        format!("cannot read included file {path}: {e}"),
                    );
                    continue;
                }
            };
            out.files.push((path, included));
            let index = out.files.len() - 1;
            // Line breaks around the included text keep its first and last nodes apart from
            // whatever surrounds the `include` node.
            push_separator(out);
            splice(index, out, store, visited);
            push_separator(out);
        }
    }
    copy(out, file, &text, copied, text.len());
}

/// Copies `text[from..to]` of `file` into the spliced text, with its segment.
fn copy(out: &mut Expanded, file: usize, text: &str, from: usize, to: usize) {
    if from >= to {
        return;
    }
    let start = out.text.len();
    out.text.push_str(&text[from..to]);
    out.segments.push(Segment {
        start,
        end: out.text.len(),
        file,
        file_offset: from,
    });
}

/// A line break that belongs to no file (mapped to the end of the main file's previous stretch
/// is harmless: no node starts on it).
fn push_separator(out: &mut Expanded) {
    out.text.push('\n');
}

fn report(out: &mut Expanded, label: &str, text: &str, at: usize, error: bool, message: String) {
    let mut diags = kdl_parse::Diagnostics::new(text, label);
    if error {
        diags.error(at, "include", message);
        out.errors.extend(diags.into_sorted());
    } else {
        diags.warn(at, "include", message);
        out.warnings.extend(diags.take_warnings());
    }
}

fn has_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '['])
}

/// `pattern` relative to the directory of the file that includes it (or absolute).
fn resolve(pattern: &str, including: &str) -> String {
    let path = Path::new(pattern);
    if path.is_absolute() {
        return pattern.to_owned();
    }
    Path::new(including)
        .parent()
        .map_or_else(|| path.to_path_buf(), |dir| dir.join(path))
        .display()
        .to_string()
}
