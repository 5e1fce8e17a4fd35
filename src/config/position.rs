//! Where in a config file's text a key or a value sits, so that every
//! error names `file:line:column` of what is wrong.

use toml::de::{DeTable, DeValue};

/// 1-based line and column of a byte offset.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// 1-based line and column of the most deeply nested line: the most dots
/// in keys plus the deepest bracket or brace nesting, outside strings and
/// comments (first such line on a tie, at its first non-blank character).
/// For parser errors that carry no position, such as its nesting limit.
pub(super) fn deepest_line(text: &str) -> (usize, usize) {
    let mut best = (0usize, 1usize, 1usize);
    let mut depth = 0usize;
    for (i, line) in text.lines().enumerate() {
        let mut score_depth = depth;
        let mut dots = 0usize;
        let mut quote: Option<char> = None;
        let mut escaped = false;
        for c in line.chars() {
            match quote {
                Some(q) => {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' && q == '"' {
                        escaped = true;
                    } else if c == q {
                        quote = None;
                    }
                }
                None => match c {
                    '"' | '\'' => quote = Some(c),
                    '#' => break,
                    '.' => dots += 1,
                    '[' | '{' => {
                        depth += 1;
                        score_depth = score_depth.max(depth);
                    }
                    ']' | '}' => depth = depth.saturating_sub(1),
                    _ => {}
                },
            }
        }
        let score = dots + score_depth;
        if score > best.0 {
            let column = line.len() - line.trim_start().len() + 1;
            best = (score, i + 1, column);
        }
    }
    (best.1, best.2)
}

/// One step of a path into the document: a key, or an index into an array
/// (of tables).
#[derive(Clone, Copy)]
pub(super) enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// `path` as text, for a message with no line to point at:
/// `groups[0].sink.type`.
pub(super) fn path_text(path: &[Step<'_>]) -> String {
    let mut text = String::new();
    for step in path {
        match step {
            Step::Key(key) => {
                if !text.is_empty() {
                    text.push('.');
                }
                text.push_str(key);
            }
            Step::Index(i) => text.push_str(&format!("[{i}]")),
        }
    }
    text
}

/// 1-based line and column of the value at `path`, or, when the document
/// stops short of it, of the deepest step it has (a missing key falls
/// back to its table's position); `None` when not even the first step is
/// there. A value that is a table opened by a `[header]` is found at its
/// first key.
pub(super) fn value_position(text: &str, path: &[Step<'_>]) -> Option<(usize, usize)> {
    let doc = DeTable::parse(text).ok()?;
    let mut table: Option<&DeTable<'_>> = Some(doc.get_ref());
    let mut current: Option<&toml::Spanned<DeValue<'_>>> = None;
    let mut found = None;
    for step in path {
        match *step {
            Step::Key(key) => {
                let Some(t) = table else { break };
                let Some((k, v)) = t.iter().find(|(k, _)| k.get_ref().as_ref() == key) else {
                    break;
                };
                // A table's own span may be empty (a `[header]` table):
                // then its key's position is the better answer.
                found = Some(if v.span().is_empty() {
                    k.span()
                } else {
                    v.span()
                });
                current = Some(v);
            }
            Step::Index(i) => {
                let Some(DeValue::Array(items)) = current.map(|v| v.get_ref()) else {
                    break;
                };
                let Some(item) = items.get(i) else { break };
                found = Some(item.span());
                current = Some(item);
            }
        }
        table = match current.map(|v| v.get_ref()) {
            Some(DeValue::Table(t)) => Some(t),
            _ => None,
        };
    }
    found.map(|span| line_col(text, span.start))
}
