//! What a message may carry beyond the platform's four fields: the record
//! key and the headers of a Kafka record (every header but `topic`,
//! `messageId` and `generateTime`), kept so that a message goes out with
//! them as it came in.
//!
//! Invariants: names are text and values bytes, kept in their order,
//! duplicates included; a header without a value stays without one (not
//! an empty value); [`Extras::decode`] of what [`Extras::encode`] wrote
//! gives back equal extras, and never panics on any input bytes.

use bytes::Bytes;

/// One header beyond the platform's three: a name and, when it has one, a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The header's name.
    pub name: Box<str>,
    /// The header's value, byte for byte; `None` for a header that has none
    /// (Kafka allows it, and it is not the same as an empty value).
    pub value: Option<Bytes>,
}

impl Header {
    /// A header with a value.
    pub fn new(name: impl Into<Box<str>>, value: impl Into<Bytes>) -> Header {
        Header {
            name: name.into(),
            value: Some(value.into()),
        }
    }
}

/// The key and extra headers of a message. Most messages have none, and
/// empty extras allocate nothing: a [`super::Message`] keeps these in its shared
/// part, so a keyed record costs the key's bytes and no box around them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Extras {
    /// The record key, byte for byte (`None`: the record had none).
    pub key: Option<Bytes>,
    /// The headers beyond the platform's three, in their order.
    pub headers: Vec<Header>,
}

/// Why bytes are not encoded extras.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtrasError {
    /// The bytes end inside a field.
    #[error("extras are truncated")]
    Truncated,
    /// A header name is not UTF-8.
    #[error("a header name is not UTF-8")]
    NameNotText,
    /// Bytes are left after the last header, or a flag is unknown.
    #[error("extras are malformed: {0}")]
    Malformed(&'static str),
}

/// The length written for a header without a value.
const NO_VALUE: u32 = u32::MAX;
/// The flag saying a key follows.
const HAS_KEY: u8 = 1;

impl Extras {
    /// Whether there is nothing to carry (no key, no header).
    pub fn is_empty(&self) -> bool {
        self.key.is_none() && self.headers.is_empty()
    }

    /// Bytes these extras take in memory and in [`Extras::encode`]'s form, roughly.
    pub fn size_bytes(&self) -> usize {
        5 + self.key.as_ref().map_or(0, |k| 4 + k.len())
            + self
                .headers
                .iter()
                .map(|h| 8 + h.name.len() + h.value.as_ref().map_or(0, Bytes::len))
                .sum::<usize>()
    }

    /// Appends the binary form (the backlog stores keep it): a flags byte
    /// (bit 0: a key follows), the key as `u32` length and bytes, the
    /// header count as `u32`, then each header as `u32` name length, name,
    /// `u32` value length (`u32::MAX`: no value) and value; integers
    /// little-endian. A field longer than `u32::MAX - 1` bytes cannot be
    /// written: callers bound messages far below that.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let len = |n: usize| u32::try_from(n).unwrap_or(NO_VALUE - 1).to_le_bytes();
        match &self.key {
            Some(key) => {
                out.push(HAS_KEY);
                out.extend_from_slice(&len(key.len()));
                out.extend_from_slice(key);
            }
            None => out.push(0),
        }
        out.extend_from_slice(&len(self.headers.len()));
        for h in &self.headers {
            out.extend_from_slice(&len(h.name.len()));
            out.extend_from_slice(h.name.as_bytes());
            match &h.value {
                Some(v) => {
                    out.extend_from_slice(&len(v.len()));
                    out.extend_from_slice(v);
                }
                None => out.extend_from_slice(&NO_VALUE.to_le_bytes()),
            }
        }
    }

    /// Reads what [`Extras::encode`] wrote; all of `bytes` must be used.
    pub fn decode(bytes: &[u8]) -> Result<Extras, ExtrasError> {
        let mut r = Cursor { bytes, at: 0 };
        let flags = r.take(1)?[0];
        if flags & !HAS_KEY != 0 {
            return Err(ExtrasError::Malformed("unknown flags"));
        }
        let key = if flags & HAS_KEY != 0 {
            let n = r.u32()? as usize;
            Some(Bytes::copy_from_slice(r.take(n)?))
        } else {
            None
        };
        let count = r.u32()? as usize;
        // Each header takes at least 8 bytes: a count beyond what is left
        // is damage, and must not size an allocation.
        if count > r.left() / 8 {
            return Err(ExtrasError::Truncated);
        }
        let mut headers = Vec::with_capacity(count);
        for _ in 0..count {
            let n = r.u32()? as usize;
            let name = std::str::from_utf8(r.take(n)?).map_err(|_| ExtrasError::NameNotText)?;
            let value = match r.u32()? {
                NO_VALUE => None,
                n => Some(Bytes::copy_from_slice(r.take(n as usize)?)),
            };
            headers.push(Header {
                name: name.into(),
                value,
            });
        }
        if r.left() != 0 {
            return Err(ExtrasError::Malformed("bytes after the last header"));
        }
        Ok(Extras { key, headers })
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ExtrasError> {
        let end = self.at.checked_add(n).ok_or(ExtrasError::Truncated)?;
        let got = self.bytes.get(self.at..end).ok_or(ExtrasError::Truncated)?;
        self.at = end;
        Ok(got)
    }

    fn u32(&mut self) -> Result<u32, ExtrasError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }

    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extras_round_trip_byte_for_byte_and_damage_is_an_error() {
        let cases = [
            Extras::default(),
            Extras {
                key: Some(Bytes::from_static(b"\0\xff key")),
                headers: vec![],
            },
            Extras {
                key: Some(Bytes::new()),
                headers: vec![
                    Header::new("trace", &b"\x00\x01\xfe"[..]),
                    Header {
                        name: "null".into(),
                        value: None,
                    },
                    Header::new("trace", Bytes::new()),
                    Header::new("", &b"x"[..]),
                ],
            },
        ];
        for extras in cases {
            let mut buf = Vec::new();
            extras.encode(&mut buf);
            assert_eq!(Extras::decode(&buf), Ok(extras.clone()));
            for cut in 0..buf.len() {
                assert!(Extras::decode(&buf[..cut]).is_err(), "cut at {cut}");
            }
            let mut longer = buf.clone();
            longer.push(0);
            assert!(Extras::decode(&longer).is_err());
        }
        // A header count far beyond the bytes is damage, not an allocation.
        assert_eq!(
            Extras::decode(&[0, 0xff, 0xff, 0xff, 0x7f]),
            Err(ExtrasError::Truncated)
        );
    }
}
