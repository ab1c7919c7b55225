//! Collected diagnostics: errors and warnings, each located by file, line and column.
//!
//! The parsed text may be several files spliced together (`include`): a [`SourceMap`] says
//! which file each stretch of it came from, so every diagnostic names the file and the line
//! the operator wrote.

use super::*;

/// One file of the parsed text.
pub(in crate::config) struct MappedFile<'a> {
    /// The file's name in diagnostics (and the base of relative paths inside it).
    pub label: &'a str,
    pub text: &'a str,
}

/// A stretch of the parsed text copied from one file: `start..end` in the parsed text comes
/// from `file` at `file_offset`.
#[derive(Debug, Clone, Copy)]
pub(in crate::config) struct Segment {
    pub start: usize,
    pub end: usize,
    pub file: usize,
    pub file_offset: usize,
}

/// Where each part of the parsed text came from.
pub(in crate::config) struct SourceMap<'a> {
    pub files: Vec<MappedFile<'a>>,
    /// Sorted by `start`, covering the parsed text without gaps.
    pub segments: Vec<Segment>,
}

/// Collects diagnostics and turns parser byte offsets into file, 1-based line and column.
pub(in crate::config) struct Diagnostics<'a> {
    map: SourceMap<'a>,
    /// Line starts of each mapped file.
    line_starts: Vec<Vec<usize>>,
    source_len: usize,
    /// Byte offsets in the parsed text where a `#` was inserted by `rewrite_v1_keywords`; the
    /// parser's spans are shifted by them relative to the file the operator wrote.
    inserted: Vec<usize>,
    list: Vec<ConfigDiagnostic>,
    /// Accepted, but worth telling the operator (a setting that has no effect here).
    warnings: Vec<ConfigDiagnostic>,
}

impl<'a> Diagnostics<'a> {
    /// Diagnostics for one file's text.
    pub(in crate::config) fn new(source: &'a str, file: &'a str) -> Self {
        let map = SourceMap {
            files: vec![MappedFile {
                label: file,
                text: source,
            }],
            segments: vec![Segment {
                start: 0,
                end: source.len(),
                file: 0,
                file_offset: 0,
            }],
        };
        Self::with_map(source.len(), map)
    }

    /// Diagnostics for a text of `source_len` bytes spliced from the files of `map`.
    pub(in crate::config) fn with_map(source_len: usize, map: SourceMap<'a>) -> Self {
        let line_starts = map
            .files
            .iter()
            .map(|f| {
                std::iter::once(0)
                    .chain(f.text.match_indices('\n').map(|(i, _)| i + 1))
                    .collect()
            })
            .collect();
        Diagnostics {
            map,
            line_starts,
            source_len,
            inserted: Vec::new(),
            list: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// The file a parser offset lies in (relative paths written there resolve against it).
    pub(in crate::config) fn file_at(&self, parsed_offset: usize) -> &'a str {
        let (file, _) = self.locate(self.original_offset(parsed_offset));
        self.map.files[file].label
    }

    /// Errors recorded so far (to tell whether a sub-parser added any).
    pub(in crate::config) fn error_count(&self) -> usize {
        self.list.len()
    }

    /// Where `rewrite_v1_keywords` inserted bytes into the parsed text.
    pub(in crate::config) fn set_inserted(&mut self, inserted: Vec<usize>) {
        self.inserted = inserted;
    }

    pub(in crate::config) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub(in crate::config) fn into_sorted(mut self) -> Vec<ConfigDiagnostic> {
        let mut list = std::mem::take(&mut self.list);
        self.sort(&mut list);
        list
    }

    /// In file order (the order the files were read), then by position.
    fn sort(&self, list: &mut [ConfigDiagnostic]) {
        let order = |file: &str| {
            self.map
                .files
                .iter()
                .position(|f| f.label == file)
                .unwrap_or(usize::MAX)
        };
        list.sort_by_key(|d| (order(&d.file), d.line, d.column));
    }

    /// The warnings, in file order.
    pub(in crate::config) fn take_warnings(&mut self) -> Vec<ConfigDiagnostic> {
        let mut warnings = std::mem::take(&mut self.warnings);
        self.sort(&mut warnings);
        warnings
    }

    /// The offset in the source text of a parser offset (they differ where a KDL v1 keyword
    /// was rewritten for the parser).
    pub(in crate::config) fn source_offset(&self, parsed_offset: usize) -> usize {
        self.original_offset(parsed_offset)
    }

    /// Maps a parser offset back to an offset in the spliced source.
    fn original_offset(&self, parsed_offset: usize) -> usize {
        let shift = self.inserted.partition_point(|&p| p < parsed_offset);
        parsed_offset.saturating_sub(shift).min(self.source_len)
    }

    /// The file and the offset in it of an offset in the spliced source.
    fn locate(&self, offset: usize) -> (usize, usize) {
        let segments = &self.map.segments;
        let index = segments.partition_point(|s| s.start <= offset).max(1) - 1;
        match segments.get(index) {
            Some(s) => (
                s.file,
                s.file_offset + offset.min(s.end).saturating_sub(s.start),
            ),
            None => (0, offset),
        }
    }

    /// The file label, 1-based line and column (in characters) of a parser offset.
    fn place(&self, parsed_offset: usize) -> (&'a str, usize, usize) {
        let (file, offset) = self.locate(self.original_offset(parsed_offset));
        let text = self.map.files[file].text;
        let line_starts = &self.line_starts[file];
        let offset = offset.min(text.len());
        let line_index = line_starts.partition_point(|&s| s <= offset).max(1) - 1;
        let line_start = line_starts[line_index];
        let column = match text.get(line_start..offset) {
            Some(prefix) => prefix.chars().count(),
            None => offset - line_start,
        };
        (self.map.files[file].label, line_index + 1, column + 1)
    }

    /// 1-based line and column (in characters) of a parser offset, in its own file.
    pub(in crate::config) fn position(&self, parsed_offset: usize) -> (usize, usize) {
        let (_, line, column) = self.place(parsed_offset);
        (line, column)
    }

    pub(in crate::config) fn line_of(&self, parsed_offset: usize) -> usize {
        self.position(parsed_offset).0
    }

    pub(in crate::config) fn error(
        &mut self,
        parsed_offset: usize,
        node: &str,
        message: impl Into<String>,
    ) {
        let diagnostic = self.located(parsed_offset, node, message.into());
        self.list.push(diagnostic);
    }

    /// Something accepted that the operator should know about; not an error.
    pub(in crate::config) fn warn(
        &mut self,
        parsed_offset: usize,
        node: &str,
        message: impl Into<String>,
    ) {
        let diagnostic = self.located(parsed_offset, node, message.into());
        self.warnings.push(diagnostic);
    }

    fn located(&self, parsed_offset: usize, node: &str, message: String) -> ConfigDiagnostic {
        let (file, line, column) = self.place(parsed_offset);
        ConfigDiagnostic {
            file: file.to_owned(),
            line,
            column,
            node: node.to_owned(),
            message,
        }
    }
}
