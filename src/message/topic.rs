//! Topic classification: kind, product key, device name and event identifier
//! from the topic string alone, without touching the body.
//!
//! Invariant: [`classify`] never fails and never allocates; the parts it
//! returns are byte ranges into the topic it was given.

use std::ops::Range;

use super::Kind;

/// What a topic says about its message. Ranges index into the topic string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TopicParts {
    /// The kind the topic pattern names.
    pub kind: Kind,
    /// Where the product key sits in the topic, when the pattern has one.
    pub product_key: Option<Range<usize>>,
    /// Where the device name sits in the topic, when the pattern has one.
    pub device_name: Option<Range<usize>>,
    /// Where an event's identifier sits (only for [`Kind::Event`]).
    pub event_identifier: Option<Range<usize>>,
}

/// Classifies a topic into its kind and parts.
///
/// Patterns (pk = product key, dn = device name):
/// `/{pk}/{dn}/thing/event/property/post`, `/{pk}/{dn}/thing/event/{id}/post`,
/// `/as/mqtt/status/{pk}/{dn}`, `/{pk}/{dn}/thing/lifecycle`,
/// `/{pk}/{dn}/thing/topo/lifecycle`, `/{pk}/{dn}/thing/list/found`.
/// Anything else, including empty segments, is [`Kind::Other`]; an `other`
/// topic of the form `/{pk}/{dn}/...` still reports its product and device so
/// that product filters work on it.
///
/// Devices publish to the same topics with a `/sys` prefix
/// (`/sys/{pk}/{dn}/thing/event/property/post`); such a topic classifies
/// like the one without it, with its ranges still indexing the full topic.
/// A product key that is itself named `sys` keeps working: the prefix is
/// only taken off when that gives a known pattern, or a device-shaped topic
/// where keeping it would not.
pub fn classify(topic: &str) -> TopicParts {
    const PREFIX: &str = "/sys";
    let Some(rest) = topic.strip_prefix(PREFIX).filter(|r| r.starts_with('/')) else {
        return classify_plain(topic);
    };
    // A known pattern after the prefix wins whatever the whole topic says,
    // so the whole topic is only looked at when the inner one is `other`.
    let inner = classify_plain(rest);
    if inner.kind == Kind::Other {
        let plain = classify_plain(topic);
        if plain.kind != Kind::Other || inner.product_key.is_none() {
            return plain;
        }
    }
    let shift = |r: Option<Range<usize>>| r.map(|r| r.start + PREFIX.len()..r.end + PREFIX.len());
    TopicParts {
        kind: inner.kind,
        product_key: shift(inner.product_key),
        device_name: shift(inner.device_name),
        event_identifier: shift(inner.event_identifier),
    }
}

/// The most segments a topic of a known pattern (or a device's `other`
/// topic) may have; a topic with more is `other` without parts.
const MAX_SEGMENTS: usize = 8;

/// The high bit of each byte of `word` that is a slash, and no other bit:
/// a byte's high bit after the sum is set exactly when it is not zero, as
/// no byte's sum carries into the next.
fn slashes(word: u64) -> u64 {
    const LOW_SEVEN: u64 = 0x7F7F_7F7F_7F7F_7F7F;
    let x = word ^ 0x2F2F_2F2F_2F2F_2F2F;
    !(((x & LOW_SEVEN) + LOW_SEVEN) | x) & !LOW_SEVEN
}

fn classify_plain(topic: &str) -> TopicParts {
    let bytes = topic.as_bytes();
    if bytes.first() != Some(&b'/') {
        return TopicParts::default();
    }
    // One pass over the bytes records where each segment ends; segment
    // `i` runs from `ends[i] + 1` to `ends[i + 1]`. The pass reads eight
    // bytes at a time: a word's slashes are the high bits of a mask, taken
    // lowest first (the first byte, the leading slash, left out).
    let mut ends = [0usize; MAX_SEGMENTS + 1];
    let mut count = 0;
    let mut words = bytes.chunks_exact(8);
    let mut start = 0;
    let mut leading = 0x80u64;
    for word in &mut words {
        let word = u64::from_le_bytes(word.try_into().unwrap_or_default());
        let mut found = slashes(word) & !leading;
        leading = 0;
        while found != 0 {
            count += 1;
            if count == MAX_SEGMENTS {
                return TopicParts::default();
            }
            ends[count] = start + (found.trailing_zeros() / 8) as usize;
            found &= found - 1;
        }
        start += 8;
    }
    for (i, &b) in words.remainder().iter().enumerate() {
        if b == b'/' && start + i > 0 {
            count += 1;
            if count == MAX_SEGMENTS {
                return TopicParts::default();
            }
            ends[count] = start + i;
        }
    }
    count += 1;
    ends[count] = bytes.len();
    let range = |i: usize| ends[i] + 1..ends[i + 1];
    let mut texts: [&[u8]; MAX_SEGMENTS] = [&[]; MAX_SEGMENTS];
    for (i, text) in texts.iter_mut().enumerate().take(count) {
        *text = bytes.get(range(i)).unwrap_or_default();
        if text.is_empty() {
            return TopicParts::default();
        }
    }
    let segment = |i: usize| Some(range(i));
    let device = |kind, event_identifier| TopicParts {
        kind,
        product_key: segment(0),
        device_name: segment(1),
        event_identifier,
    };
    match &texts[..count] {
        [b"as", b"mqtt", b"status", _, _] => TopicParts {
            kind: Kind::Status,
            product_key: segment(3),
            device_name: segment(4),
            event_identifier: None,
        },
        [_, _, b"thing", b"event", b"property", b"post"] => device(Kind::Property, None),
        [_, _, b"thing", b"event", _, b"post"] => device(Kind::Event, segment(4)),
        [_, _, b"thing", b"lifecycle"] => device(Kind::Lifecycle, None),
        [_, _, b"thing", b"topo", b"lifecycle"] => device(Kind::Topology, None),
        [_, _, b"thing", b"list", b"found"] => device(Kind::Found, None),
        [_, _, _, ..] => device(Kind::Other, None),
        _ => TopicParts::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::near_miss::near_miss;

    fn parts(topic: &str) -> (Kind, Option<&str>, Option<&str>, Option<&str>) {
        let p = classify(topic);
        let get = |r: Option<Range<usize>>| r.map(|r| &topic[r]);
        (
            p.kind,
            get(p.product_key),
            get(p.device_name),
            get(p.event_identifier),
        )
    }

    #[test]
    fn slashes_marks_the_slashes_of_a_word_and_nothing_else() {
        // Every byte value at every place, among neighbours that are
        // slashes, zeros, near misses of a slash and bytes with the high bit.
        for fill in [b'/', 0x00, 0x2E, 0x30, 0xAF, 0xFF, 0x7F, 0x80] {
            for at in 0..8 {
                for byte in 0..=255u8 {
                    let mut bytes = [fill; 8];
                    bytes[at] = byte;
                    let want = bytes
                        .iter()
                        .enumerate()
                        .filter(|(_, b)| **b == b'/')
                        .fold(0u64, |mask, (i, _)| mask | 0x80 << (8 * i));
                    assert_eq!(slashes(u64::from_le_bytes(bytes)), want, "{bytes:?}");
                }
            }
        }
    }

    #[test]
    fn a_topic_ending_at_thing_is_other_not_a_panic() {
        // Found by the `topic` fuzz target: indexing the fourth segment of
        // a three-segment topic panicked.
        assert_eq!(
            parts("/pk/dn/thing"),
            (Kind::Other, Some("pk"), Some("dn"), None)
        );
    }

    #[test]
    fn every_pattern_classifies_with_its_parts() {
        assert_eq!(
            parts("/pk1/dev1/thing/event/property/post"),
            (Kind::Property, Some("pk1"), Some("dev1"), None)
        );
        assert_eq!(
            parts("/pk1/dev1/thing/event/overload_alarm/post"),
            (
                Kind::Event,
                Some("pk1"),
                Some("dev1"),
                Some("overload_alarm")
            )
        );
        assert_eq!(
            parts("/as/mqtt/status/pk1/dev1"),
            (Kind::Status, Some("pk1"), Some("dev1"), None)
        );
        assert_eq!(
            parts("/pk1/dev1/thing/lifecycle"),
            (Kind::Lifecycle, Some("pk1"), Some("dev1"), None)
        );
        assert_eq!(
            parts("/pk1/dev1/thing/topo/lifecycle"),
            (Kind::Topology, Some("pk1"), Some("dev1"), None)
        );
        assert_eq!(
            parts("/pk1/dev1/thing/list/found"),
            (Kind::Found, Some("pk1"), Some("dev1"), None)
        );
    }

    #[test]
    fn odd_topics_are_other_and_never_panic() {
        for topic in [
            "",
            "/",
            "//",
            "no-leading-slash/thing/lifecycle",
            "/pk//thing/lifecycle",
            "/pk/dn/thing/event/property/post/",
            "/pk/dn/thing/event//post",
            "/as/mqtt/status/pk",
            "/as/mqtt/status/pk/dn/extra",
            "/a/b/c/d/e/f/g/h/i/j/k",
            "/pk/dn",
            "/pk/dn/thing/event/x/get",
            "/pk/dn/thing/topo/change",
            "/ü/ñ/thing/lifecycle/ü",
        ] {
            assert_eq!(classify(topic).kind, Kind::Other, "{topic:?}");
        }
    }

    #[test]
    fn other_topics_keep_product_and_device_when_shaped_like_a_device_topic() {
        assert_eq!(
            parts("/pk1/dev1/thing/service/reboot"),
            (Kind::Other, Some("pk1"), Some("dev1"), None)
        );
        assert_eq!(parts("/sys/x").1, None);
    }

    /// The reading `classify_plain` replaced, a segment at a time with
    /// string comparisons (plainer, and 14 % more instructions): both must
    /// agree on any topic.
    fn classify_segment_by_segment(topic: &str) -> TopicParts {
        let Some(rest) = topic.strip_prefix('/') else {
            return TopicParts::default();
        };
        let mut segments: [Range<usize>; 8] = Default::default();
        let mut count = 0;
        let mut start = 1;
        for (i, b) in rest.bytes().enumerate() {
            if b == b'/' {
                if count == segments.len() {
                    return TopicParts::default();
                }
                segments[count] = start..i + 1;
                count += 1;
                start = i + 2;
            }
        }
        if count == segments.len() {
            return TopicParts::default();
        }
        segments[count] = start..topic.len();
        count += 1;
        let segs = &segments[..count];
        if segs.iter().any(|r| r.is_empty()) {
            return TopicParts::default();
        }
        let text = |i: usize| &topic[segs[i].clone()];
        let with = |kind, event_identifier| TopicParts {
            kind,
            product_key: Some(segs[0].clone()),
            device_name: Some(segs[1].clone()),
            event_identifier,
        };

        if count == 5 && text(0) == "as" && text(1) == "mqtt" && text(2) == "status" {
            return TopicParts {
                kind: Kind::Status,
                product_key: Some(segs[3].clone()),
                device_name: Some(segs[4].clone()),
                event_identifier: None,
            };
        }
        if count < 3 || text(2) != "thing" {
            return if count >= 3 {
                with(Kind::Other, None)
            } else {
                TopicParts::default()
            };
        }
        if count == 3 {
            // `/{pk}/{dn}/thing` alone: no fourth segment to look at.
            return with(Kind::Other, None);
        }
        match (count, text(3)) {
            (6, "event") if text(5) == "post" => {
                if text(4) == "property" {
                    with(Kind::Property, None)
                } else {
                    with(Kind::Event, Some(segs[4].clone()))
                }
            }
            (4, "lifecycle") => with(Kind::Lifecycle, None),
            (5, "topo") if text(4) == "lifecycle" => with(Kind::Topology, None),
            (5, "list") if text(4) == "found" => with(Kind::Found, None),
            _ => with(Kind::Other, None),
        }
    }

    proptest::proptest! {
        // Each case is a few hundred nanoseconds; many are needed for the
        // near misses to hit every pattern's every segment.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(8192))]
        #[test]
        fn classify_plain_agrees_with_the_segment_by_segment_reading(
            segments in proptest::collection::vec(
                proptest::sample::select(vec![
                    "sys", "pk", "dn", "thing", "event", "property", "post", "lifecycle",
                    "topo", "list", "found", "as", "mqtt", "status", "", "x", "ü",
                ]),
                0..11,
            ),
            lead in proptest::sample::select(vec!["/", "", "x/", "//"]),
            any in "[/a-z]{0,40}",
            pattern in 0..7usize,
            at in 0..8usize,
            word in proptest::sample::select(vec![
                "thing", "event", "property", "post", "lifecycle", "topo", "list",
                "found", "as", "mqtt", "status", "", "x",
            ]),
            change in 0..3u8,
        ) {
            let topic = format!("{lead}{}", segments.join("/"));
            proptest::prop_assert_eq!(classify_plain(&topic), classify_segment_by_segment(&topic), "{}", topic);
            proptest::prop_assert_eq!(classify_plain(&any), classify_segment_by_segment(&any), "{}", any);
            // Near misses: a pattern with one segment replaced, added or
            // taken away.
            let patterns: [&[&str]; 7] = [
                &["pk", "dn", "thing", "event", "property", "post"],
                &["pk", "dn", "thing", "event", "alarm", "post"],
                &["as", "mqtt", "status", "pk", "dn"],
                &["pk", "dn", "thing", "lifecycle"],
                &["pk", "dn", "thing", "topo", "lifecycle"],
                &["pk", "dn", "thing", "list", "found"],
                &["pk", "dn", "thing", "service", "reboot"],
            ];
            let mut near = patterns[pattern].to_vec();
            near_miss(&mut near, at, change, word);
            let near = format!("/{}", near.join("/"));
            proptest::prop_assert_eq!(classify_plain(&near), classify_segment_by_segment(&near), "{}", near);
        }
    }

    /// The rule `classify` keeps for a `/sys` topic, stated plainly:
    /// classify both ways, and take the inner reading when it is a known
    /// pattern, or device-shaped where the whole topic is not known either.
    fn classify_both_ways(topic: &str) -> TopicParts {
        let plain = classify_plain(topic);
        let Some(rest) = topic.strip_prefix("/sys").filter(|r| r.starts_with('/')) else {
            return plain;
        };
        let inner = classify_plain(rest);
        if inner.kind != Kind::Other || (plain.kind == Kind::Other && inner.product_key.is_some()) {
            let shift = |r: Option<Range<usize>>| r.map(|r| r.start + 4..r.end + 4);
            return TopicParts {
                kind: inner.kind,
                product_key: shift(inner.product_key),
                device_name: shift(inner.device_name),
                event_identifier: shift(inner.event_identifier),
            };
        }
        plain
    }

    proptest::proptest! {
        /// `classify` looks at the whole topic only when the inner one is
        /// `other`; it answers as classifying both ways would.
        #[test]
        fn classify_answers_as_classifying_both_ways(
            prefixed in proptest::bool::ANY,
            segments in proptest::collection::vec(
                proptest::sample::select(vec![
                    "sys", "pk", "dn", "thing", "event", "property", "post", "lifecycle",
                    "topo", "list", "found", "as", "mqtt", "status", "", "x",
                ]),
                0..9,
            )
        ) {
            let prefix = if prefixed { "/sys" } else { "" };
            let topic = format!("{prefix}/{}", segments.join("/"));
            proptest::prop_assert_eq!(classify(&topic), classify_both_ways(&topic), "{}", topic);
        }
    }

    #[test]
    fn the_sys_prefix_classifies_like_the_topic_without_it() {
        for (topic, expected) in [
            (
                "/sys/pk1/dev1/thing/event/property/post",
                (Kind::Property, Some("pk1"), Some("dev1"), None),
            ),
            (
                "/sys/pk1/dev1/thing/event/alarm/post",
                (Kind::Event, Some("pk1"), Some("dev1"), Some("alarm")),
            ),
            (
                "/sys/pk1/dev1/thing/lifecycle",
                (Kind::Lifecycle, Some("pk1"), Some("dev1"), None),
            ),
            (
                "/sys/pk1/dev1/thing/topo/lifecycle",
                (Kind::Topology, Some("pk1"), Some("dev1"), None),
            ),
            (
                "/sys/pk1/dev1/thing/list/found",
                (Kind::Found, Some("pk1"), Some("dev1"), None),
            ),
            (
                "/sys/pk1/dev1/thing/service/reboot",
                (Kind::Other, Some("pk1"), Some("dev1"), None),
            ),
            // A product named "sys" is still a product.
            (
                "/sys/dev1/thing/lifecycle",
                (Kind::Lifecycle, Some("sys"), Some("dev1"), None),
            ),
        ] {
            assert_eq!(parts(topic), expected, "{topic}");
        }
        assert_eq!(classify("/sys").kind, Kind::Other);
        assert_eq!(classify("/sys/").kind, Kind::Other);
        assert_eq!(
            classify("/system/dev1/thing/lifecycle").kind,
            Kind::Lifecycle
        );
    }

    #[test]
    fn unicode_device_names_are_sliced_on_char_boundaries() {
        assert_eq!(
            parts("/产品/设备/thing/lifecycle"),
            (Kind::Lifecycle, Some("产品"), Some("设备"), None)
        );
    }
}
