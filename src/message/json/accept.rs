//! The common case of JSON checking, apart: valid payloads.
//!
//! Nearly every payload a group checks is valid, and a valid one needs no
//! error: this acceptor answers only "valid, nested this deep" or "ask the
//! scanner". Carrying no error through its steps, all of them inlined into
//! one loop, it checks a small device payload in about two thirds of the
//! scanner's instructions (the Kafka benchmark's payloads: 680 → 460). It
//! keeps its open containers as the scanner does ([`Containers`]: a word's
//! bits, then a vector). The scanner in the parent module still runs for
//! every payload this refuses, and says what is wrong and where.
//!
//! Invariant: [`depth`] answers `Some(d)` exactly when the scanner answers
//! `Ok(d)`, and `None` exactly when the scanner answers an error. Its
//! property tests hold it to the scanner on valid, mutated and arbitrary
//! input.

use super::{Container, Containers, LOOK_AT, LOOK_AT_ASCII, hex4};

/// The deepest nesting of arrays and objects in `b` when `b` holds exactly
/// one JSON value (surrounding whitespace allowed); `None` for anything
/// else.
pub(super) fn depth(b: &[u8]) -> Option<usize> {
    let mut i = 0;
    let mut stack = Containers::default();
    let mut deepest = 0usize;
    loop {
        i = skip_ws(b, i);
        match *b.get(i)? {
            bracket @ (b'{' | b'[') => {
                deepest = deepest.max(stack.depth + 1);
                let object = bracket == b'{';
                let close = if object { b'}' } else { b']' };
                i = skip_ws(b, i + 1);
                if b.get(i) == Some(&close) {
                    i += 1;
                } else {
                    if object {
                        stack.push(Container::Object);
                        i = key(b, i)?;
                    } else {
                        stack.push(Container::Array);
                    }
                    continue;
                }
            }
            b'"' => i = string(b, i + 1)?,
            b'-' | b'0'..=b'9' => i = number(b, i)?,
            b't' => i = literal(b, i, b"true")?,
            b'f' => i = literal(b, i, b"false")?,
            b'n' => i = literal(b, i, b"null")?,
            _ => return None,
        }
        // A value is complete: close what it completes, up to a comma.
        loop {
            let Some(top) = stack.last() else {
                return (skip_ws(b, i) == b.len()).then_some(deepest);
            };
            i = skip_ws(b, i);
            match (*b.get(i)?, top) {
                (b',', Container::Object) => {
                    i = key(b, skip_ws(b, i + 1))?;
                    break;
                }
                (b',', Container::Array) => {
                    i += 1;
                    break;
                }
                (b'}', Container::Object) | (b']', Container::Array) => {
                    i += 1;
                    stack.pop();
                }
                _ => return None,
            }
        }
    }
}

#[inline(always)]
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

/// A key starting at `i` (its opening quote) and its colon: where its
/// value may start.
#[inline(always)]
fn key(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let i = skip_ws(b, string(b, i + 1)?);
    (b.get(i) == Some(&b':')).then_some(i + 1)
}

/// The rest of a string from `i`, just after its opening quote: where it
/// ends. Its bytes are checked as UTF-8 only when one is not ASCII.
#[inline(always)]
fn string(b: &[u8], mut i: usize) -> Option<usize> {
    let inside = i;
    let mut ascii = true;
    loop {
        let look = if ascii { &LOOK_AT_ASCII } else { &LOOK_AT };
        i += b.get(i..)?.iter().position(|&c| look[usize::from(c)])?;
        match *b.get(i)? {
            b'"' => {
                if !ascii {
                    std::str::from_utf8(b.get(inside..i)?).ok()?;
                }
                return Some(i + 1);
            }
            b'\\' => match *b.get(i + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                b'u' => {
                    hex4(b.get(i + 2..i + 6))?;
                    i += 6;
                }
                _ => return None,
            },
            0..0x20 => return None,
            // Not ASCII: from here on the scan looks past such bytes.
            _ => ascii = false,
        }
    }
}

#[inline(always)]
fn digits(b: &[u8], mut i: usize) -> usize {
    while let Some(b'0'..=b'9') = b.get(i) {
        i += 1;
    }
    i
}

/// A number starting at `i`: where it ends.
#[inline(always)]
fn number(b: &[u8], mut i: usize) -> Option<usize> {
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match *b.get(i)? {
        b'0' => i += 1,
        b'1'..=b'9' => i = digits(b, i + 1),
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        let end = digits(b, i + 1);
        if end == i + 1 {
            return None;
        }
        i = end;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        let end = digits(b, i);
        if end == i {
            return None;
        }
        i = end;
    }
    Some(i)
}

#[inline(always)]
fn literal(b: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    (b.get(i..i + word.len())? == word).then_some(i + word.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::near_miss::near_miss;
    use proptest::prelude::*;

    /// The scanner's answer, without this acceptor in front of it.
    fn scanner(b: &[u8]) -> Option<usize> {
        super::super::scanned_depth(b).ok()
    }

    /// JSON values of every kind, nested, with whitespace, escapes and
    /// text that is not ASCII.
    fn json_value() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            Just("false".to_string()),
            "-?(0|[1-9][0-9]{0,20})(\\.[0-9]{1,3})?([eE][+-]?[0-9]{1,3})?",
            "\"([a-z é漢]|\\\\[\"\\\\/bfnrt]|\\\\u[0-9a-fA-F]{4}){0,8}\"",
        ];
        leaf.prop_recursive(6, 48, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5)
                    .prop_map(|items| format!("[{}]", items.join(" , "))),
                prop::collection::vec(("[a-z\"\\\\]{0,4}", inner), 0..5).prop_map(|members| {
                    let members: Vec<String> = members
                        .into_iter()
                        .map(|(k, v)| format!("{}:\t{v}", quoted(&k)))
                        .collect();
                    format!("{{{}}}", members.join(","))
                }),
            ]
        })
    }

    /// `k` as a JSON string literal.
    fn quoted(k: &str) -> String {
        format!("\"{}\"", k.replace('\\', "\\\\").replace('"', "\\\""))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]
        /// Valid JSON, and the same with one byte replaced, inserted or
        /// taken away: the acceptor answers as the scanner does.
        #[test]
        fn the_acceptor_answers_as_the_scanner_on_json_and_its_near_misses(
            value in json_value(),
            padding in " {0,2}",
            at in any::<usize>(),
            byte in prop::sample::select(b"{}[]\",:\\ \t\n0123456789-+.eEtrufalsn\x00\x1f\x7f\x80\xc3\xe6\xff".to_vec()),
            change in 0..4u8,
        ) {
            let text = format!("{padding}{value}{padding}").into_bytes();
            prop_assert_eq!(depth(&text), scanner(&text));
            prop_assert!(depth(&text).is_some(), "{}", String::from_utf8_lossy(&text));
            let mut near = text.clone();
            near_miss(&mut near, at, change, byte);
            prop_assert_eq!(depth(&near), scanner(&near), "{}", String::from_utf8_lossy(&near));
        }

        /// Any bytes at all.
        #[test]
        fn the_acceptor_answers_as_the_scanner_on_any_bytes(
            bytes in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            prop_assert_eq!(depth(&bytes), scanner(&bytes));
        }
    }

    #[test]
    fn nesting_beyond_a_word_is_accepted_as_the_scanner_accepts_it() {
        // 64 levels are bits of a word, deeper ones a vector: each
        // crossing, closed right and with the innermost closer swapped.
        for n in [63, 64, 65, 66, 129, 1_000] {
            let mut text = format!("{}{}", "[{\"k\":".repeat(n), "}]".repeat(n)).into_bytes();
            text.splice(n * 6..n * 6, *b"0");
            assert_eq!(depth(&text), Some(2 * n), "{n}");
            assert_eq!(depth(&text), scanner(&text), "{n}");
            let closer = n * 6 + 1;
            text[closer] = b']';
            assert_eq!(depth(&text), None, "{n}");
            assert_eq!(depth(&text), scanner(&text), "{n}");
        }
    }
}
