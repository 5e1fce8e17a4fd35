//! The topic classifier on arbitrary text: it never panics, is
//! deterministic, and every part it names is a range of the topic on
//! character boundaries, one path segment long.

#![no_main]

use laneway::fuzzing::classify;
use laneway::message::{Kind, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let topic = String::from_utf8_lossy(data);
    let parts = classify(&topic);
    assert_eq!(classify(&topic), parts, "classification is deterministic");
    for range in [
        &parts.product_key,
        &parts.device_name,
        &parts.event_identifier,
    ]
    .into_iter()
    .flatten()
    {
        let part = topic
            .get(range.clone())
            .unwrap_or_else(|| panic!("part {range:?} is not a slice of {topic:?}"));
        assert!(
            !part.contains('/'),
            "part {part:?} of {topic:?} spans segments"
        );
    }
    assert_eq!(
        parts.event_identifier.is_some(),
        parts.kind == Kind::Event,
        "{topic:?}: an event identifier exactly for events"
    );
    if let Ok(m) = Message::new(topic.as_ref(), "id", 0, Vec::new()) {
        assert_eq!(m.kind(), parts.kind);
        let _ = (m.product_key(), m.device_name(), m.event_identifier());
    }
});
