//! Collected diagnostics: errors and warnings, each located by file, line and column.

use super::*;

/// Collects diagnostics and turns parser byte offsets into 1-based line and column.
pub(in crate::config) struct Diagnostics<'a> {
    file: &'a str,
    source: &'a str,
    line_starts: Vec<usize>,
    /// Byte offsets in the parsed text where a `#` was inserted by `rewrite_v1_keywords`; the
    /// parser's spans are shifted by them relative to the file the operator wrote.
    inserted: Vec<usize>,
    list: Vec<ConfigDiagnostic>,
    /// Accepted, but worth telling the operator (a setting that has no effect here).
    warnings: Vec<ConfigDiagnostic>,
}

impl<'a> Diagnostics<'a> {
    pub(in crate::config) fn new(source: &'a str, file: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(source.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Diagnostics {
            file,
            source,
            line_starts,
            inserted: Vec::new(),
            list: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// The file the diagnostics name (relative paths inside it resolve against it).
    pub(in crate::config) fn file(&self) -> &'a str {
        self.file
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
        self.list.sort_by_key(|d| (d.line, d.column));
        self.list
    }

    /// The warnings, in file order.
    pub(in crate::config) fn take_warnings(&mut self) -> Vec<ConfigDiagnostic> {
        let mut warnings = std::mem::take(&mut self.warnings);
        warnings.sort_by_key(|d| (d.line, d.column));
        warnings
    }

    /// Maps a parser offset back to an offset in the original source.
    fn original_offset(&self, parsed_offset: usize) -> usize {
        let shift = self.inserted.partition_point(|&p| p < parsed_offset);
        parsed_offset.saturating_sub(shift).min(self.source.len())
    }

    /// 1-based line and column (in characters) of a parser offset.
    pub(in crate::config) fn position(&self, parsed_offset: usize) -> (usize, usize) {
        let offset = self.original_offset(parsed_offset);
        let line_index = self.line_starts.partition_point(|&s| s <= offset).max(1) - 1;
        let line_start = self.line_starts[line_index];
        let column = match self.source.get(line_start..offset) {
            Some(prefix) => prefix.chars().count(),
            None => offset - line_start,
        };
        (line_index + 1, column + 1)
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
        let (line, column) = self.position(parsed_offset);
        ConfigDiagnostic {
            file: self.file.to_owned(),
            line,
            column,
            node: node.to_owned(),
            message,
        }
    }
}
