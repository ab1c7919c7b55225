//! One pass over a serialized head for all the field edits of a phase: the head is split into
//! fields once (ranges into it, no copy), every filter of the phase edits that list in the
//! route's order (with `header_policy::apply`'s semantics: rename, set, add, remove), and the
//! head is written back once. A route with a `headers` filter and a `cors` filter thus parses
//! and rewrites the response head once, not once per filter, and allocates nothing per field.

use std::cell::RefCell;
use std::ops::Range;

use zentinel_protocol::config::HeaderModifications;

/// A field name or value: bytes of the head, or text of the configuration or the request.
#[derive(Clone, Copy)]
enum Piece<'a> {
    Head(usize, usize),
    Text(&'a str),
}

impl<'a> Piece<'a> {
    fn bytes<'h>(&'h self, head: &'h [u8]) -> &'h [u8] {
        match *self {
            Piece::Head(from, to) => &head[from..to],
            Piece::Text(t) => t.as_bytes(),
        }
    }
}

thread_local! {
    /// The rewritten fields, reused from head to head (a worker is one thread).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The fields of the head at `head[start..]`, being edited.
pub(super) struct HeadEdit<'a> {
    /// Where the fields begin (after the start line) and end (before the blank line).
    fields_at: Range<usize>,
    fields: Vec<(Piece<'a>, Piece<'a>)>,
    changed: bool,
}

impl<'a> HeadEdit<'a> {
    /// Split the head serialized at `head[start..]` (start line, `Name: value` lines, blank
    /// line, CRLF line ends: the codec wrote it). `None` when it is not such a head.
    pub(super) fn new(head: &[u8], start: usize) -> Option<HeadEdit<'a>> {
        let first = start + line_len(head.get(start..)?)? + 2;
        let mut at = first;
        let mut fields = Vec::with_capacity(24);
        loop {
            let end = at + line_len(head.get(at..)?)?;
            if end == at {
                break;
            }
            let line = &head[at..end];
            if let Some(colon) = line.iter().position(|&b| b == b':') {
                let value = line[colon + 1..].trim_ascii_start();
                let value_at = end - value.len();
                fields.push((Piece::Head(at, at + colon), Piece::Head(value_at, end)));
            }
            at = end + 2;
        }
        Some(HeadEdit {
            fields_at: first..at,
            fields,
            changed: false,
        })
    }

    /// `mods`, in `header_policy::apply`'s order: rename, set, add, remove.
    pub(super) fn apply(&mut self, head: &[u8], mods: &'a HeaderModifications) {
        for (old, new) in &mods.rename {
            self.rename(head, old, new);
        }
        for (name, value) in &mods.set {
            self.set(head, name, value);
        }
        for (name, value) in &mods.add {
            self.add(name, value);
        }
        for name in &mods.remove {
            self.remove(head, name);
        }
    }

    /// Every field named `old` is named `new`.
    pub(super) fn rename(&mut self, head: &[u8], old: &str, new: &'a str) {
        for (name, _) in &mut self.fields {
            if name.bytes(head).eq_ignore_ascii_case(old.as_bytes()) {
                *name = Piece::Text(new);
                self.changed = true;
            }
        }
    }

    /// The first field named `name` gets `value`, the others go; appended when there is none.
    pub(super) fn set(&mut self, head: &[u8], name: &'a str, value: &'a str) {
        let mut seen = false;
        self.fields.retain_mut(|(n, v)| {
            if !n.bytes(head).eq_ignore_ascii_case(name.as_bytes()) {
                return true;
            }
            if seen {
                return false;
            }
            seen = true;
            *n = Piece::Text(name);
            *v = Piece::Text(value);
            true
        });
        if !seen {
            self.fields.push((Piece::Text(name), Piece::Text(value)));
        }
        self.changed = true;
    }

    /// A field appended.
    pub(super) fn add(&mut self, name: &'a str, value: &'a str) {
        self.fields.push((Piece::Text(name), Piece::Text(value)));
        self.changed = true;
    }

    /// Every field named `name` removed.
    pub(super) fn remove(&mut self, head: &[u8], name: &str) {
        let before = self.fields.len();
        self.fields
            .retain(|(n, _)| !n.bytes(head).eq_ignore_ascii_case(name.as_bytes()));
        self.changed |= self.fields.len() != before;
    }

    /// Whether some field's value, split at commas, has a token equal to one of `tokens`
    /// (ASCII case-insensitive), e.g. `Vary: Accept-Encoding, Origin`.
    pub(super) fn has_token(&self, head: &[u8], name: &str, tokens: &[&str]) -> bool {
        self.fields
            .iter()
            .filter(|(n, _)| n.bytes(head).eq_ignore_ascii_case(name.as_bytes()))
            .flat_map(|(_, v)| v.bytes(head).split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .any(|t| {
                tokens
                    .iter()
                    .any(|want| t.eq_ignore_ascii_case(want.as_bytes()))
            })
    }

    /// Write the edited fields back into `head` (nothing to do when nothing changed).
    pub(super) fn finish(self, head: &mut Vec<u8>) {
        if !self.changed {
            return;
        }
        SCRATCH.with_borrow_mut(|out| {
            out.clear();
            for (name, value) in &self.fields {
                out.extend_from_slice(name.bytes(head));
                out.extend_from_slice(b": ");
                out.extend_from_slice(value.bytes(head));
                out.extend_from_slice(b"\r\n");
            }
            // What follows the fields (the blank line, a local answer's body) stays as it is.
            out.extend_from_slice(&head[self.fields_at.end..]);
            head.truncate(self.fields_at.start);
            head.extend_from_slice(out);
            if out.capacity() > 64 * 1024 {
                // An unusually large head: do not keep its buffer for the worker's lifetime.
                *out = Vec::new();
            }
        });
    }
}

/// The length of the CRLF-terminated line `text` starts with (`None` without a CRLF).
fn line_len(text: &[u8]) -> Option<usize> {
    let lf = find_lf(text)?;
    (lf > 0 && text[lf - 1] == b'\r').then(|| lf - 1)
}

/// The first `\n` in `text`, eight bytes at a time: a byte-by-byte scan of the field values
/// was the largest cost of a route's filters (a `u64` has a zero byte exactly when
/// `(x - 0x01..01) & !x & 0x80..80` is not zero).
pub(super) fn find_lf(text: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    const LFS: u64 = ONES * b'\n' as u64;
    let mut chunks = text.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let Ok(bytes) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        let x = u64::from_le_bytes(bytes) ^ LFS;
        if x.wrapping_sub(ONES) & !x & HIGHS != 0 {
            return chunk.iter().position(|&b| b == b'\n').map(|i| at + i);
        }
        at += 8;
    }
    text[at..].iter().position(|&b| b == b'\n').map(|i| at + i)
}
