//! A small, strict JSON scanner (RFC 8259) that checks syntax and reports
//! where each value sits in the input, without building a tree.
//!
//! Why not a full parser: the payload must leave laneway byte for byte as it
//! came in, so the envelope reader takes the payload's exact bytes from the
//! line instead of re-encoding a parsed value; and JSON has no limit on
//! number size, so a 30-digit integer is valid here (a parser that converts
//! numbers to machine integers would reject it).
//!
//! Invariants: the scanner never panics and never recurses (the first 64
//! levels of nesting are bits of one word; each deeper level costs one
//! byte of heap, bounded by the input's length); every error names what
//! was expected and the byte offset where it went wrong; input that is not
//! UTF-8 is reported as such before any other error, as if checked first,
//! though the check runs only over strings holding bytes that are not
//! ASCII (the scanner accepts no other such byte), and over the whole
//! input only when a scan fails.
//!
//! A valid payload is answered by the acceptor (`json/accept.rs`), which
//! carries no error and so costs fewer instructions; the scanner runs for
//! every payload the acceptor refuses, and gives the error.

use std::fmt;
use std::ops::Range;

mod accept;

/// Why some bytes are not JSON, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{problem} at byte {offset}")]
pub struct JsonError {
    /// The 0-based byte offset where the problem was found.
    pub offset: usize,
    /// What is wrong there.
    pub problem: JsonProblem,
}

/// What is wrong with a JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JsonProblem {
    /// The bytes are not UTF-8 (JSON text must be).
    NotUtf8,
    /// The input ended where `expected` was needed.
    UnexpectedEnd {
        /// What was needed.
        expected: &'static str,
    },
    /// Another byte was found where `expected` was needed.
    Unexpected {
        /// What was needed.
        expected: &'static str,
        /// The character found, as written in the input.
        found: char,
    },
    /// A control character (below U+0020) inside a string: it must be escaped.
    ControlInString {
        /// The character's code.
        code: u8,
    },
    /// A backslash followed by something that is not a JSON escape.
    BadEscape {
        /// The character after the backslash.
        found: char,
    },
    /// A `\u` escape that names half of a surrogate pair without the other
    /// half (valid JSON syntax, but no Unicode text: only reported when a
    /// string is decoded, never by [`validate`]).
    LoneSurrogate {
        /// The escaped code unit.
        unit: u16,
    },
    /// More bytes after a complete value.
    TrailingCharacters {
        /// The first character after the value.
        found: char,
    },
}

impl fmt::Display for JsonProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JsonProblem::NotUtf8 => f.write_str("invalid UTF-8"),
            JsonProblem::UnexpectedEnd { expected } => {
                write!(f, "the input ends where {expected} was expected")
            }
            JsonProblem::Unexpected { expected, found } => {
                write!(f, "expected {expected} but found {found:?}")
            }
            JsonProblem::ControlInString { code } => write!(
                f,
                "unescaped control character U+{code:04X} inside a string"
            ),
            JsonProblem::BadEscape { found } => {
                write!(f, "invalid escape sequence \\{found} inside a string")
            }
            JsonProblem::LoneSurrogate { unit } => write!(
                f,
                "\\u{unit:04X} is half of a UTF-16 surrogate pair without its other half"
            ),
            JsonProblem::TrailingCharacters { found } => {
                write!(f, "unexpected {found:?} after the end of the JSON value")
            }
        }
    }
}

/// Checks that `bytes` hold exactly one JSON value (surrounding whitespace
/// allowed), of any size and depth.
pub fn validate(bytes: &[u8]) -> Result<(), JsonError> {
    depth_of_valid(bytes).map(|_| ())
}

/// [`validate`] and [`nesting_depth`] in one pass: the deepest nesting of
/// arrays and objects in `bytes` when they hold exactly one JSON value.
pub fn depth_of_valid(bytes: &[u8]) -> Result<usize, JsonError> {
    // Nearly every payload is valid: the acceptor answers those, and the
    // scanner runs to say why the others are not.
    match accept::depth(bytes) {
        Some(depth) => Ok(depth),
        None => scanned_depth(bytes),
    }
}

/// The acceptor's answer and the scanner's alone, for the `json` fuzz
/// target, which holds them to each other.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub fn acceptor_and_scanner(bytes: &[u8]) -> (Option<usize>, Result<usize, JsonError>) {
    (accept::depth(bytes), scanned_depth(bytes))
}

/// [`depth_of_valid`] by the scanner alone, with its error when invalid.
fn scanned_depth(bytes: &[u8]) -> Result<usize, JsonError> {
    let mut s = Scanner::new(bytes);
    let scanned = s.value().and_then(|depth| s.end().map(|()| depth));
    utf8_first(bytes, scanned)
}

/// What the scanner found, with a UTF-8 error in `bytes` taking precedence
/// over any other (as when the input was checked before it was scanned).
/// Only a failed scan needs the check: a scan that succeeds has read every
/// byte outside strings as ASCII and checked every string that is not.
fn utf8_first<T>(bytes: &[u8], scanned: Result<T, JsonError>) -> Result<T, JsonError> {
    scanned.map_err(|e| check_utf8(bytes).err().unwrap_or(e))
}

/// The deepest nesting of arrays and objects in `bytes`, which must be
/// valid JSON (`[[1]]` is 2, a scalar 0): the measure `max_json_depth`
/// limits, since recursive parsers downstream fail on deep nesting. One
/// pass, no recursion; brackets inside strings do not count.
pub fn nesting_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// The members of a top-level JSON object: each key's raw bytes (between
/// its quotes, escapes undecoded) and the byte range of its value.
pub(crate) struct Member {
    /// The key as written, without its quotes.
    pub key: Range<usize>,
    /// Whether the key holds an escape (and must be decoded to compare it).
    pub key_escaped: bool,
    /// The value's bytes, exactly as in the input.
    pub value: Range<usize>,
}

/// What a top-level value turned out to be.
pub(crate) enum TopLevel {
    /// An object, with its members in input order.
    Object(Vec<Member>),
    /// Valid JSON, but not an object.
    Other,
}

/// Validates `bytes` as one JSON value and, when it is an object, returns
/// where each of its members sits.
pub(crate) fn scan_object(bytes: &[u8]) -> Result<TopLevel, JsonError> {
    utf8_first(bytes, scan_object_unchecked(bytes))
}

fn scan_object_unchecked(bytes: &[u8]) -> Result<TopLevel, JsonError> {
    let mut s = Scanner::new(bytes);
    s.ws();
    if s.peek() != Some(b'{') {
        s.value()?;
        s.end()?;
        return Ok(TopLevel::Other);
    }
    s.pos += 1;
    let mut members = Vec::new();
    s.ws();
    if s.peek() == Some(b'}') {
        s.pos += 1;
    } else {
        loop {
            s.ws();
            let (key, key_escaped) = s.key()?;
            s.ws();
            let start = s.pos;
            s.value()?;
            members.push(Member {
                key,
                key_escaped,
                value: start..s.pos,
            });
            s.ws();
            match s.next_byte("',' or '}'")? {
                b',' => continue,
                b'}' => break,
                other => return Err(s.unexpected_at(s.pos - 1, "',' or '}'", other)),
            }
        }
    }
    s.end()?;
    Ok(TopLevel::Object(members))
}

/// Decodes a JSON string literal (with its quotes, already validated by the
/// scanner) into text.
pub(crate) fn decode_string(literal: &[u8], offset: usize) -> Result<String, JsonError> {
    let inner = literal
        .get(1..literal.len().saturating_sub(1))
        .unwrap_or_default();
    let mut out = Vec::with_capacity(inner.len());
    let mut i = 0;
    let err = |at: usize, problem| JsonError {
        offset: offset + 1 + at,
        problem,
    };
    while i < inner.len() {
        let b = inner[i];
        if b != b'\\' {
            out.push(b);
            i += 1;
            continue;
        }
        let Some(&e) = inner.get(i + 1) else {
            return Err(err(
                i,
                JsonProblem::UnexpectedEnd {
                    expected: "an escape",
                },
            ));
        };
        let simple = match e {
            b'"' => Some(b'"'),
            b'\\' => Some(b'\\'),
            b'/' => Some(b'/'),
            b'b' => Some(0x08),
            b'f' => Some(0x0c),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            _ => None,
        };
        if let Some(c) = simple {
            out.push(c);
            i += 2;
            continue;
        }
        if e != b'u' {
            return Err(err(
                i,
                JsonProblem::BadEscape {
                    found: char::from(e),
                },
            ));
        }
        let unit = hex4(inner.get(i + 2..i + 6)).ok_or_else(|| {
            err(
                i,
                JsonProblem::BadEscape {
                    found: char::from(e),
                },
            )
        })?;
        i += 6;
        let code = if (0xD800..0xDC00).contains(&unit) {
            let low = (inner.get(i) == Some(&b'\\') && inner.get(i + 1) == Some(&b'u'))
                .then(|| hex4(inner.get(i + 2..i + 6)))
                .flatten()
                .filter(|low| (0xDC00..0xE000).contains(low));
            match low {
                Some(low) => {
                    i += 6;
                    0x10000 + ((u32::from(unit) - 0xD800) << 10) + (u32::from(low) - 0xDC00)
                }
                None => return Err(err(i - 6, JsonProblem::LoneSurrogate { unit })),
            }
        } else if (0xDC00..0xE000).contains(&unit) {
            return Err(err(i - 6, JsonProblem::LoneSurrogate { unit }));
        } else {
            u32::from(unit)
        };
        let c = char::from_u32(code).ok_or(err(i, JsonProblem::LoneSurrogate { unit }))?;
        let mut buf = [0u8; 4];
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
    }
    // The input was checked to be UTF-8 and escapes add only whole characters.
    String::from_utf8(out).map_err(|e| err(e.utf8_error().valid_up_to(), JsonProblem::NotUtf8))
}

fn hex4(digits: Option<&[u8]>) -> Option<u16> {
    let digits = digits?;
    if digits.len() != 4 {
        return None;
    }
    digits.iter().try_fold(0u16, |acc, &d| {
        let v = char::from(d).to_digit(16)?;
        Some(acc << 4 | v as u16)
    })
}

fn check_utf8(bytes: &[u8]) -> Result<(), JsonError> {
    std::str::from_utf8(bytes)
        .map(|_| ())
        .map_err(|e| JsonError {
            offset: e.valid_up_to(),
            problem: JsonProblem::NotUtf8,
        })
}

/// Which container the scanner is inside.
#[derive(Clone, Copy)]
enum Container {
    Object,
    Array,
}

/// The containers the scanner is inside, innermost last. The first 64
/// levels are bits of one word, so a payload of ordinary depth is checked
/// without an allocation (this runs for every message of a group that
/// validates JSON); deeper levels go to a vector.
#[derive(Default)]
struct Containers {
    /// Bit `i` set: level `i` (from 0) is an object, else an array.
    objects: u64,
    depth: usize,
    deeper: Vec<Container>,
}

impl Containers {
    const IN_WORD: usize = u64::BITS as usize;

    fn push(&mut self, c: Container) {
        if self.depth < Self::IN_WORD {
            let bit = 1u64 << self.depth;
            match c {
                Container::Object => self.objects |= bit,
                Container::Array => self.objects &= !bit,
            }
        } else {
            self.deeper.push(c);
        }
        self.depth += 1;
    }

    fn last(&self) -> Option<Container> {
        match self.depth {
            0 => None,
            d if d <= Self::IN_WORD => Some(if self.objects >> (d - 1) & 1 == 1 {
                Container::Object
            } else {
                Container::Array
            }),
            _ => self.deeper.last().copied(),
        }
    }

    fn pop(&mut self) {
        if self.depth > Self::IN_WORD {
            self.deeper.pop();
        }
        self.depth = self.depth.saturating_sub(1);
    }
}

/// The bytes a string's scan must stop at: its closing quote, an escape,
/// and the control characters that must have been escaped.
const LOOK_AT: [bool; 256] = look_at(false);
/// [`LOOK_AT`] and every byte that is not ASCII, until one is found: the
/// string's UTF-8 is checked then.
const LOOK_AT_ASCII: [bool; 256] = look_at(true);

const fn look_at(non_ascii: bool) -> [bool; 256] {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] =
            b == b'"' as usize || b == b'\\' as usize || b < 0x20 || (non_ascii && b >= 0x80);
        b += 1;
    }
    table
}

struct Scanner<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn new(b: &'a [u8]) -> Scanner<'a> {
        Scanner { b, pos: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    /// The character starting at `at` (the input is UTF-8).
    fn char_at(&self, at: usize) -> char {
        self.b
            .get(at..)
            .and_then(|rest| {
                let len = rest.len().min(4);
                (1..=len).find_map(|n| std::str::from_utf8(&rest[..n]).ok())
            })
            .and_then(|s| s.chars().next())
            .unwrap_or(char::REPLACEMENT_CHARACTER)
    }

    fn unexpected_at(&self, at: usize, expected: &'static str, _byte: u8) -> JsonError {
        JsonError {
            offset: at,
            problem: JsonProblem::Unexpected {
                expected,
                found: self.char_at(at),
            },
        }
    }

    fn end_error(&self, expected: &'static str) -> JsonError {
        JsonError {
            offset: self.pos,
            problem: JsonProblem::UnexpectedEnd { expected },
        }
    }

    /// The next byte, consumed; an error naming `expected` at the end of input.
    fn next_byte(&mut self, expected: &'static str) -> Result<u8, JsonError> {
        let b = self.peek().ok_or_else(|| self.end_error(expected))?;
        self.pos += 1;
        Ok(b)
    }

    /// Only whitespace may follow.
    fn end(&mut self) -> Result<(), JsonError> {
        self.ws();
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(JsonError {
                offset: self.pos,
                problem: JsonProblem::TrailingCharacters {
                    found: self.char_at(self.pos),
                },
            }),
        }
    }

    /// An object key and its colon; returns the key's raw range (without
    /// quotes) and whether it holds escapes.
    fn key(&mut self) -> Result<(Range<usize>, bool), JsonError> {
        match self.peek() {
            Some(b'"') => {}
            Some(other) => return Err(self.unexpected_at(self.pos, "a string key", other)),
            None => return Err(self.end_error("a string key")),
        }
        let start = self.pos;
        let escaped = self.string()?;
        let key = start + 1..self.pos - 1;
        self.ws();
        match self.next_byte("':'")? {
            b':' => Ok((key, escaped)),
            other => Err(self.unexpected_at(self.pos - 1, "':'", other)),
        }
    }

    /// One complete value, however deeply nested, without recursion;
    /// returns how deeply it nests arrays and objects (as
    /// [`nesting_depth`] counts: an empty container is one level).
    fn value(&mut self) -> Result<usize, JsonError> {
        let mut stack = Containers::default();
        let mut deepest = 0;
        loop {
            self.ws();
            let Some(b) = self.peek() else {
                return Err(self.end_error("a value"));
            };
            if matches!(b, b'{' | b'[') {
                deepest = deepest.max(stack.depth + 1);
            }
            match b {
                b'{' => {
                    self.pos += 1;
                    self.ws();
                    if self.peek() == Some(b'}') {
                        self.pos += 1;
                    } else {
                        stack.push(Container::Object);
                        self.ws();
                        self.key()?;
                        continue;
                    }
                }
                b'[' => {
                    self.pos += 1;
                    self.ws();
                    if self.peek() == Some(b']') {
                        self.pos += 1;
                    } else {
                        stack.push(Container::Array);
                        continue;
                    }
                }
                b'"' => {
                    self.string()?;
                }
                b'-' | b'0'..=b'9' => self.number()?,
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                other => return Err(self.unexpected_at(self.pos, "a value", other)),
            }
            // A value is complete: close what it completes.
            loop {
                let Some(top) = stack.last() else {
                    return Ok(deepest);
                };
                self.ws();
                let (close, expected) = match top {
                    Container::Object => (b'}', "',' or '}'"),
                    Container::Array => (b']', "',' or ']'"),
                };
                let b = self.next_byte(expected)?;
                if b == b',' {
                    if let Container::Object = top {
                        self.ws();
                        self.key()?;
                    }
                    break;
                } else if b == close {
                    stack.pop();
                } else {
                    return Err(self.unexpected_at(self.pos - 1, expected, b));
                }
            }
        }
    }

    /// A string starting at the opening quote; returns whether it has
    /// escapes. Checks the string's UTF-8 when it holds a byte that is not
    /// ASCII (the scanner reads no other byte that could be).
    fn string(&mut self) -> Result<bool, JsonError> {
        let open = self.pos;
        self.pos += 1;
        let mut escaped = false;
        let mut ascii = true;
        loop {
            // Most of a string is bytes that need no second look: skip
            // them in one tight loop (after the first byte that is not
            // ASCII, the rest need not be looked at for it).
            let rest = self.b.get(self.pos..).unwrap_or_default();
            let look = if ascii { &LOOK_AT_ASCII } else { &LOOK_AT };
            self.pos += rest
                .iter()
                .position(|&b| look[usize::from(b)])
                .unwrap_or(rest.len());
            let b = self.next_byte("'\"' closing the string")?;
            match b {
                b'"' => {
                    if !ascii {
                        let inside = self.b.get(open + 1..self.pos - 1).unwrap_or_default();
                        std::str::from_utf8(inside).map_err(|e| JsonError {
                            offset: open + 1 + e.valid_up_to(),
                            problem: JsonProblem::NotUtf8,
                        })?;
                    }
                    return Ok(escaped);
                }
                b'\\' => {
                    escaped = true;
                    let e = self.next_byte("an escape")?;
                    match e {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                        b'u' => {
                            if hex4(self.b.get(self.pos..self.pos + 4)).is_none() {
                                return Err(JsonError {
                                    offset: self.pos - 2,
                                    problem: JsonProblem::BadEscape { found: 'u' },
                                });
                            }
                            self.pos += 4;
                        }
                        _ => {
                            return Err(JsonError {
                                offset: self.pos - 2,
                                problem: JsonProblem::BadEscape {
                                    found: self.char_at(self.pos - 1),
                                },
                            });
                        }
                    }
                }
                0..0x20 => {
                    return Err(JsonError {
                        offset: self.pos - 1,
                        problem: JsonProblem::ControlInString { code: b },
                    });
                }
                _ => ascii = false,
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        self.pos - start
    }

    /// A number of any length: `-? (0 | [1-9][0-9]*) (.[0-9]+)? ([eE][+-]?[0-9]+)?`.
    fn number(&mut self) -> Result<(), JsonError> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            Some(other) => return Err(self.unexpected_at(self.pos, "a digit", other)),
            None => return Err(self.end_error("a digit")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(self.digit_error("a digit after the decimal point"));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.digit_error("a digit in the exponent"));
            }
        }
        Ok(())
    }

    fn digit_error(&self, expected: &'static str) -> JsonError {
        match self.peek() {
            Some(other) => self.unexpected_at(self.pos, expected, other),
            None => self.end_error(expected),
        }
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<(), JsonError> {
        for &w in word {
            match self.peek() {
                Some(b) if b == w => self.pos += 1,
                Some(other) => {
                    return Err(self.unexpected_at(self.pos, literal_name(word), other));
                }
                None => return Err(self.end_error(literal_name(word))),
            }
        }
        Ok(())
    }
}

fn literal_name(word: &[u8]) -> &'static str {
    match word {
        b"true" => "'true'",
        b"false" => "'false'",
        _ => "'null'",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy as _;

    #[test]
    fn nesting_depth_counts_brackets_outside_strings() {
        for (text, depth) in [
            ("1", 0),
            ("\"[[[\"", 0),
            ("[]", 1),
            ("[[1]]", 2),
            ("{\"a\":[{\"b\":\"]\\\"[\"}]}", 3),
            ("[1,[2],[[3]],4]", 3),
        ] {
            assert_eq!(nesting_depth(text.as_bytes()), depth, "{text}");
        }
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(nesting_depth(deep.as_bytes()), 100_000);
    }

    /// Objects and arrays nested `depth` deep, alternating (an object at
    /// every `object_every`-th level), with a string beside each level.
    fn nested(depth: usize, object_every: usize) -> String {
        let (mut open, mut close) = (String::new(), String::new());
        for level in 0..depth {
            if level % object_every == 0 {
                open.push_str(r#"{"k\"}":"]\"}","v":"#);
                close.insert(0, '}');
            } else {
                open.push_str(r#"["[\"{",1,"#);
                close.insert(0, ']');
            }
        }
        format!("{open}0{close}")
    }

    #[test]
    fn nesting_beyond_the_levels_held_in_a_word_closes_in_order() {
        // 64 levels are bits of a word, deeper ones a vector: each
        // crossing, and a closer of the wrong kind on either side of it.
        for depth in [1, 2, 63, 64, 65, 66, 129, 1_000] {
            for object_every in [1, 2, 3, 1_000_000] {
                let text = nested(depth, object_every);
                assert_eq!(
                    depth_of_valid(text.as_bytes()),
                    Ok(depth),
                    "{depth}/{object_every}"
                );
                for wrong_at in [depth - 1, depth.saturating_sub(2), depth / 2, 0] {
                    // The closer of level `wrong_at` (from the outside),
                    // swapped for the other kind.
                    let mut bytes = text.clone().into_bytes();
                    let at = bytes.len() - 1 - wrong_at;
                    bytes[at] = if bytes[at] == b'}' { b']' } else { b'}' };
                    let e = depth_of_valid(&bytes).unwrap_err();
                    assert_eq!(e.offset, at, "{depth}/{object_every}, level {wrong_at}");
                }
            }
        }
    }

    #[test]
    fn the_checking_pass_measures_the_depth_nesting_depth_measures() {
        for text in [
            "1",
            "\"[[[\"",
            "[]",
            "{}",
            "[[1]]",
            "[[],[[]]]",
            " { \"a\" : [ { \"b\" : \"]\\\"[\" } , [ ] ] } ",
            "[1,[2],[[3]],4]",
            r#"{"a":[1,{"b":null},true,false,"\u00e9"],"":{"c":[[{}]]}}"#,
        ] {
            assert_eq!(
                depth_of_valid(text.as_bytes()),
                Ok(nesting_depth(text.as_bytes())),
                "{text}"
            );
        }
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(depth_of_valid(deep.as_bytes()), Ok(100_000));
        assert!(depth_of_valid(b"[1,]").is_err());
    }

    #[test]
    fn valid_json_of_every_shape_passes() {
        for text in [
            "{}",
            "[]",
            " 0 ",
            "-0.5e+10",
            "123456789012345678901234567890",
            "-123456789012345678901234567890.000000000000000000001E-999",
            r#"{"a":[1,{"b":null},true,false,"\u00e9\ud83d\ude00\n"],"":{}}"#,
            "\"\u{1F600} ü\"",
            &format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000)),
        ] {
            assert_eq!(validate(text.as_bytes()), Ok(()), "{text:.60}");
        }
    }

    #[test]
    fn invalid_json_says_what_and_where() {
        let cases: [(&[u8], usize, &str); 12] = [
            (b"", 0, "ends where a value"),
            (b"{\"a\":1,}", 7, "expected a string key but found '}'"),
            (b"{\"a\" 1}", 5, "expected ':'"),
            (b"[1 2]", 3, "expected ',' or ']' but found '2'"),
            (b"01", 1, "after the end"),
            (b"1.", 2, "a digit after the decimal point"),
            (b"1e+", 3, "a digit in the exponent"),
            (b"\"a\tb\"", 2, "U+0009"),
            (b"\"\\x\"", 1, "\\x"),
            (b"tru", 3, "'true'"),
            (b"{\"a\":1} x", 8, "'x' after the end"),
            (b"\"\xff\"", 1, "invalid UTF-8"),
        ];
        for (input, offset, what) in cases {
            let err = validate(input).unwrap_err();
            assert_eq!(err.offset, offset, "{input:?}: {err}");
            assert!(err.to_string().contains(what), "{input:?}: {err}");
        }
    }

    /// The scan checks UTF-8 only inside strings that are not ASCII, and
    /// only when a scan fails does it check the whole input: the answer
    /// must be the one checking first gave, for any bytes.
    fn checked_first(bytes: &[u8]) -> Result<usize, JsonError> {
        check_utf8(bytes)?;
        let mut s = Scanner::new(bytes);
        let depth = s.value()?;
        s.end()?;
        Ok(depth)
    }

    proptest::proptest! {
        #[test]
        fn utf8_is_checked_as_if_first_whatever_the_bytes(
            parts in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::sample::select(vec![
                        "{", "}", "[", "]", ",", ":", "\"", "\\", "\\u00e9", "1", "-2.5e3",
                        "true", "null", " ", "\"k\":", "é", "漢", "\t",
                    ]).prop_map(|t| t.as_bytes().to_vec()),
                    proptest::collection::vec(proptest::num::u8::ANY, 1..4),
                ],
                0..24,
            )
        ) {
            let bytes = parts.concat();
            proptest::prop_assert_eq!(depth_of_valid(&bytes), checked_first(&bytes));
            if let Err(e) = std::str::from_utf8(&bytes) {
                proptest::prop_assert_eq!(
                    depth_of_valid(&bytes).map_err(|e| (e.offset, e.problem)),
                    Err((e.valid_up_to(), JsonProblem::NotUtf8))
                );
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn a_string_of_any_bytes_passes_exactly_when_it_is_utf8(
            inside in proptest::collection::vec(
                proptest::num::u8::ANY.prop_filter("needs no escape", |b| *b >= 0x20 && *b != b'"' && *b != b'\\'),
                0..40,
            )
        ) {
            let text = [&b"[1, \""[..], &inside, &b"\"]"[..]].concat();
            let want = match std::str::from_utf8(&inside) {
                Ok(_) => Ok(1),
                Err(e) => Err(JsonError { offset: 5 + e.valid_up_to(), problem: JsonProblem::NotUtf8 }),
            };
            proptest::prop_assert_eq!(depth_of_valid(&text), want);
        }
    }

    #[test]
    fn a_string_that_is_not_utf8_is_found_wherever_it_is() {
        for (input, offset) in [
            (&b"\"\xff\""[..], 1),
            (b"{\"k\":\"\xc3\xa9\xc3\"}", 8),
            (b"[\"\xe6\xbc\xa2\", \"ok\xed\xa0\x80\"]", 11),
            (b"{\"\xf0\x9f\x98\":1}", 2),
            (b"[1, 2 \xff]", 6),
        ] {
            let err = validate(input).unwrap_err();
            assert_eq!(
                (err.offset, err.problem),
                (offset, JsonProblem::NotUtf8),
                "{input:?}"
            );
            assert!(matches!(
                scan_object(input),
                Err(JsonError {
                    problem: JsonProblem::NotUtf8,
                    ..
                })
            ));
        }
        assert_eq!(
            depth_of_valid("[\"é漢\", {\"ü\": \"😀\"}]".as_bytes()),
            Ok(2)
        );
    }

    #[test]
    fn object_members_keep_their_exact_bytes() {
        let text =
            br#" { "k" : [ 1 ,2 ] , "\u0074opic":"x" , "n": 123456789012345678901234567890 } "#;
        let TopLevel::Object(members) = scan_object(text).unwrap() else {
            panic!("not an object")
        };
        let raw = |r: &Range<usize>| std::str::from_utf8(&text[r.clone()]).unwrap();
        assert_eq!(members.len(), 3);
        assert_eq!(raw(&members[0].key), "k");
        assert_eq!(raw(&members[0].value), "[ 1 ,2 ]");
        assert!(members[1].key_escaped);
        assert_eq!(raw(&members[2].value), "123456789012345678901234567890");
        assert!(matches!(scan_object(b"[1]"), Ok(TopLevel::Other)));
    }

    #[test]
    fn strings_decode_with_surrogate_pairs_and_reject_lone_halves() {
        assert_eq!(
            decode_string(br#""a\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00""#, 0).unwrap(),
            "a\"\\/\u{8}\u{c}\n\r\té\u{1F600}"
        );
        let err = decode_string(br#""x\ud83d""#, 10).unwrap_err();
        assert_eq!(err.problem, JsonProblem::LoneSurrogate { unit: 0xD83D });
        assert_eq!(err.offset, 12);
        assert!(decode_string(br#""\ude00""#, 0).is_err());
    }
}
