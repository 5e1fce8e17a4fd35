//! `simulate --binary-every N`: every Nth message published carries a
//! payload of random bytes instead of the fleet's JSON, so that a run (the
//! kill campaign's, say) carries bytes that are not JSON, not UTF-8 and
//! hold NULs through a source, the lanes and the disk backlog, and can
//! compare them byte for byte with what `--record` wrote.
//!
//! Invariants: such a payload is never JSON (its first byte, 0xFF, is never
//! UTF-8) and holds a NUL (in its middle); its length is 2..=600; the
//! topic, message id and generate time are the fleet's, so only the payload
//! differs; the bytes follow from `--seed` alone.

use bytes::Bytes;
use laneway::message::Message;
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};

/// The longest payload made (a few hundred bytes, like a device report).
const MAX_LEN: usize = 600;

/// Replaces every Nth message's payload with random bytes.
pub struct BinaryPayloads {
    every: u64,
    seen: u64,
    rng: SmallRng,
}

impl BinaryPayloads {
    /// With `every` of `None` or 0, no payload is replaced.
    pub fn new(every: Option<u64>, seed: u64) -> BinaryPayloads {
        BinaryPayloads {
            every: every.unwrap_or(0),
            seen: 0,
            // Its own stream, so the fleet's mix does not shift with it.
            rng: SmallRng::seed_from_u64(seed ^ 0xb1_4a_e7),
        }
    }

    /// `m`, or, when it is an Nth message, `m` with a payload that is not
    /// JSON.
    pub fn apply(&mut self, m: Message) -> Message {
        self.seen += 1;
        if self.every == 0 || !self.seen.is_multiple_of(self.every) {
            return m;
        }
        let mut bytes = vec![0u8; self.rng.random_range(2..=MAX_LEN)];
        self.rng.fill(&mut bytes[..]);
        bytes[0] = 0xFF;
        let middle = bytes.len() / 2;
        bytes[middle] = 0;
        // The topic and id were valid in `m`, so they are here.
        match Message::new(
            m.topic(),
            m.message_id(),
            m.generate_time_ms(),
            Bytes::from(bytes),
        ) {
            Ok(binary) => binary,
            Err(_) => m,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet_message(i: u64) -> Message {
        Message::new(
            "/pk/dev/thing/event/property/post",
            format!("id-{i}"),
            1_700_000_000_000,
            &b"{\"n\":1}"[..],
        )
        .unwrap()
    }

    fn run(every: Option<u64>, seed: u64, n: u64) -> Vec<Message> {
        let mut binary = BinaryPayloads::new(every, seed);
        (1..=n).map(|i| binary.apply(fleet_message(i))).collect()
    }

    #[test]
    fn every_nth_payload_is_bytes_that_are_not_json_and_only_the_payload_changes() {
        let out = run(Some(3), 9, 300);
        for (i, m) in (1..).zip(&out) {
            assert_eq!(m.topic(), "/pk/dev/thing/event/property/post");
            assert_eq!(m.message_id(), format!("id-{i}"));
            assert_eq!(m.generate_time_ms(), 1_700_000_000_000);
            if i % 3 == 0 {
                let p = m.payload();
                assert!(!m.payload_is_json(), "message {i}: {p:?}");
                assert!(std::str::from_utf8(p).is_err(), "message {i}");
                assert!((2..=MAX_LEN).contains(&p.len()));
                assert!(p.contains(&0), "message {i}: no NUL");
            } else {
                assert_eq!(&m.payload()[..], b"{\"n\":1}");
            }
        }
    }

    #[test]
    fn the_bytes_follow_from_the_seed() {
        let payloads = |seed| -> Vec<Vec<u8>> {
            run(Some(2), seed, 40)
                .iter()
                .map(|m| m.payload().to_vec())
                .collect()
        };
        assert_eq!(payloads(5), payloads(5));
        assert_ne!(payloads(5), payloads(6));
    }

    #[test]
    fn without_n_nothing_changes() {
        for every in [None, Some(0)] {
            assert!(run(every, 1, 50).iter().all(|m| m.payload_is_json()));
        }
    }
}
