//! Node helpers shared by every section: names, arguments, typed leaf values, duplicate and
//! unknown-node reporting with suggestions.

use super::*;

pub(in crate::config) fn name(node: &KdlNode) -> &str {
    node.name().value()
}

pub(in crate::config) fn name_at(node: &KdlNode) -> usize {
    node.name().span().offset()
}

pub(in crate::config) fn args(node: &KdlNode) -> impl Iterator<Item = &KdlEntry> {
    node.entries().iter().filter(|e| e.name().is_none())
}

pub(in crate::config) fn props(node: &KdlNode) -> impl Iterator<Item = &KdlEntry> {
    node.entries().iter().filter(|e| e.name().is_some())
}

pub(in crate::config) fn describe(value: &KdlValue) -> String {
    match value {
        KdlValue::String(s) => format!("the string {s:?}"),
        KdlValue::Integer(i) => format!("the integer {i}"),
        KdlValue::Float(f) => format!("the number {f}"),
        KdlValue::Bool(b) => format!("the boolean #{b}"),
        KdlValue::Null => "#null".to_owned(),
    }
}

/// Tracks nodes that may appear once in a block.
#[derive(Default)]
pub(in crate::config) struct Seen {
    first: HashMap<String, usize>,
}

impl Seen {
    /// Whether a node named `key` was seen.
    pub(in crate::config) fn contains(&self, key: &str) -> bool {
        self.first.contains_key(key)
    }

    /// Reports a repeated node; returns whether this is the first occurrence.
    pub(in crate::config) fn check(&mut self, node: &KdlNode, diags: &mut Diagnostics<'_>) -> bool {
        self.check_as(node, name(node), diags)
    }

    /// Like [`Seen::check`], counting `node` as `key` (a node and its alias are one setting).
    pub(in crate::config) fn check_as(
        &mut self,
        node: &KdlNode,
        key: &str,
        diags: &mut Diagnostics<'_>,
    ) -> bool {
        if let Some(&first) = self.first.get(key) {
            let line = diags.line_of(first);
            diags.error(
                name_at(node),
                name(node),
                format!("duplicate `{key}` (first set at line {line})"),
            );
            false
        } else {
            self.first.insert(key.to_owned(), name_at(node));
            true
        }
    }
}

/// Closest candidate for a misspelled name, when it is plausibly a typo.
pub(in crate::config) fn suggestion<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (levenshtein(word, c), c))
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

pub(in crate::config) fn did_you_mean<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> String {
    suggestion(word, candidates)
        .map(|s| format!(" (did you mean `{s}`?)"))
        .unwrap_or_default()
}

pub(in crate::config) fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Reports a node that is not part of the vocabulary at this place. `parent` is empty at the
/// top level.
pub(in crate::config) fn unknown(
    node: &KdlNode,
    parent: &str,
    known: &[&str],
    unsupported: &[&str],
    diags: &mut Diagnostics<'_>,
) {
    let n = name(node);
    let message = if unsupported.contains(&n) {
        format!("`{n}` is not supported yet")
    } else if parent.is_empty() {
        format!(
            "unknown node `{n}` at the top level{}",
            did_you_mean(n, known.iter().copied())
        )
    } else {
        format!(
            "unknown node `{n}` in `{parent}`{}",
            did_you_mean(n, known.iter().copied())
        )
    };
    diags.error(name_at(node), n, message);
}

/// Like [`unknown`] for a block whose vocabulary is small: the message lists every accepted
/// key.
pub(in crate::config) fn unknown_listing(
    node: &KdlNode,
    parent: &str,
    known: &[&str],
    unsupported: &[&str],
    diags: &mut Diagnostics<'_>,
) {
    let n = name(node);
    let accepted = known
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let message = if unsupported.contains(&n) {
        format!("`{n}` is not supported yet (`{parent}` accepts {accepted})")
    } else {
        format!(
            "unknown node `{n}` in `{parent}`{}; accepted: {accepted}",
            did_you_mean(n, known.iter().copied())
        )
    };
    diags.error(name_at(node), n, message);
}

pub(in crate::config) fn unknown_property(
    node: &KdlNode,
    entry: &KdlEntry,
    allowed: &[&str],
    diags: &mut Diagnostics<'_>,
) {
    let key = entry.name().map_or("", |k| k.value());
    let message = if allowed.is_empty() {
        format!(
            "unknown property `{key}`: `{}` takes no properties",
            name(node)
        )
    } else {
        format!(
            "unknown property `{key}`{}",
            did_you_mean(key, allowed.iter().copied())
        )
    };
    diags.error(entry.span().offset(), name(node), message);
}

/// The children of a block node (`system { ... }`), after checking it has no arguments.
/// The children of `node`'s block, each of `keys` that is repeated reported as a duplicate (all
/// diagnostics are sorted by position in the end, so reporting these first is harmless).
pub(in crate::config) fn keyed_block<'n>(
    node: &'n KdlNode,
    keys: &[&str],
    diags: &mut Diagnostics<'_>,
) -> &'n [KdlNode] {
    let children = block(node, diags);
    let mut seen = Seen::default();
    for child in children {
        if keys.contains(&name(child)) {
            seen.check(child, diags);
        }
    }
    children
}

pub(in crate::config) fn block<'n>(
    node: &'n KdlNode,
    diags: &mut Diagnostics<'_>,
) -> &'n [KdlNode] {
    for entry in node.entries() {
        diags.error(
            entry.span().offset(),
            name(node),
            format!(
                "`{}` takes no arguments or properties, only a `{{ ... }}` block",
                name(node)
            ),
        );
    }
    node.children().map_or(&[], |c| c.nodes())
}

pub(in crate::config) fn no_children(node: &KdlNode, diags: &mut Diagnostics<'_>) {
    if let Some(children) = node.children() {
        diags.error(
            children.span().offset(),
            name(node),
            format!("`{}` does not take a `{{ ... }}` block", name(node)),
        );
    }
}

/// The single argument of a leaf node such as `backlog 1024`.
pub(in crate::config) fn single_arg<'n>(
    node: &'n KdlNode,
    diags: &mut Diagnostics<'_>,
) -> Option<&'n KdlEntry> {
    no_children(node, diags);
    for entry in props(node) {
        unknown_property(node, entry, &[], diags);
    }
    let mut args = args(node);
    let first = args.next();
    if let Some(extra) = args.next() {
        diags.error(
            extra.span().offset(),
            name(node),
            format!("expected exactly one value, found {}", 2 + args.count()),
        );
        return None;
    }
    if first.is_none() {
        diags.error(
            name_at(node),
            name(node),
            "missing value: expected one argument",
        );
    }
    first
}

pub(in crate::config) fn int_value(
    node: &KdlNode,
    entry: &KdlEntry,
    min: u64,
    max: u64,
    diags: &mut Diagnostics<'_>,
) -> Option<u64> {
    let at = entry.span().offset();
    let what = value_label(entry);
    match entry.value() {
        KdlValue::Integer(i) if *i < i128::from(min) => {
            diags.error(
                at,
                name(node),
                format!("{what}must be at least {min}, found {i}"),
            );
            None
        }
        KdlValue::Integer(i) if *i > i128::from(max) => {
            diags.error(
                at,
                name(node),
                format!("{what}must be at most {max}, found {i}"),
            );
            None
        }
        KdlValue::Integer(i) => u64::try_from(*i).ok(),
        other => {
            diags.error(
                at,
                name(node),
                format!("{what}expected an integer, found {}", describe(other)),
            );
            None
        }
    }
}

/// Message prefix naming a property; empty for an argument, which the node name already names.
pub(in crate::config) fn value_label(entry: &KdlEntry) -> String {
    entry
        .name()
        .map_or_else(String::new, |k| format!("property `{}` ", k.value()))
}

pub(in crate::config) fn string_value(
    node: &KdlNode,
    entry: &KdlEntry,
    diags: &mut Diagnostics<'_>,
) -> Option<String> {
    match entry.value() {
        KdlValue::String(s) => Some(s.clone()),
        other => {
            let what = value_label(entry);
            diags.error(
                entry.span().offset(),
                name(node),
                format!("{what}expected a string, found {}", describe(other)),
            );
            None
        }
    }
}

pub(in crate::config) fn leaf_int(
    node: &KdlNode,
    min: u64,
    max: u64,
    diags: &mut Diagnostics<'_>,
) -> Option<u64> {
    let entry = single_arg(node, diags)?;
    int_value(node, entry, min, max, diags)
}

pub(in crate::config) fn leaf_u32(
    node: &KdlNode,
    min: u32,
    max: u32,
    diags: &mut Diagnostics<'_>,
) -> Option<u32> {
    leaf_int(node, u64::from(min), u64::from(max), diags).and_then(|v| u32::try_from(v).ok())
}

/// A leaf boolean (`#true` / `#false`).
pub(in crate::config) fn leaf_bool(node: &KdlNode, diags: &mut Diagnostics<'_>) -> Option<bool> {
    let entry = single_arg(node, diags)?;
    match entry.value() {
        KdlValue::Bool(b) => Some(*b),
        _ => {
            diags.error(
                entry.span().offset(),
                name(node),
                "expected a boolean (#true or #false)",
            );
            None
        }
    }
}

/// A leaf string with its offset.
pub(in crate::config) fn leaf_string(
    node: &KdlNode,
    diags: &mut Diagnostics<'_>,
) -> Option<(String, usize)> {
    let entry = single_arg(node, diags)?;
    string_value(node, entry, diags).map(|s| (s, entry.span().offset()))
}

pub(in crate::config) fn socket_addr(
    node: &KdlNode,
    text: &str,
    at: usize,
    diags: &mut Diagnostics<'_>,
) -> Option<SocketAddr> {
    match text.parse::<SocketAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => {
            diags.error(
                at,
                name(node),
                format!(
                    "invalid socket address {text:?}: expected IP:port such as \
                     \"127.0.0.1:8080\" or \"[::1]:8080\""
                ),
            );
            None
        }
    }
}

/// The first argument of `node`, and whether more followed. A missing one is reported with
/// `missing`, the first extra one with `extra`; the caller decides whether to go on.
pub(in crate::config) fn only_arg<'n>(
    node: &'n KdlNode,
    missing: &str,
    extra: &str,
    diags: &mut Diagnostics<'_>,
) -> Option<(&'n KdlEntry, bool)> {
    let mut args = args(node);
    let Some(first) = args.next() else {
        diags.error(name_at(node), name(node), missing);
        return None;
    };
    let more = args.next();
    if let Some(more) = more {
        diags.error(more.span().offset(), name(node), extra);
    }
    Some((first, more.is_some()))
}

/// The name of `listener "x" { }`, `route "x" { }`, `upstream "x" { }`.
pub(in crate::config) fn block_name(
    node: &KdlNode,
    diags: &mut Diagnostics<'_>,
) -> Option<(String, usize)> {
    for entry in props(node) {
        unknown_property(node, entry, &[], diags);
    }
    // With extra names, the first one still names the block (fewer follow-on errors).
    let (first, _) = only_arg(
        node,
        &format!("missing name: write `{} \"name\" {{ ... }}`", name(node)),
        &format!("`{}` takes exactly one name", name(node)),
        diags,
    )?;
    let text = string_value(node, first, diags)?;
    if text.is_empty() {
        diags.error(first.span().offset(), name(node), "name must not be empty");
        return None;
    }
    Some((text, first.span().offset()))
}
