//! Every sample message of every kind classifies correctly, from its topic
//! alone, and its envelope parses.

use std::path::Path;

use laneway::message::{Kind, parse_envelope};

fn expected_kind(file: &str) -> Kind {
    match file {
        "property.json" => Kind::Property,
        "event.json" => Kind::Event,
        "status.json" => Kind::Status,
        "lifecycle.json" => Kind::Lifecycle,
        "topology.json" => Kind::Topology,
        "found.json" => Kind::Found,
        other => panic!("unexpected sample {other}"),
    }
}

fn check_samples(dir: &Path) -> usize {
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let text = std::fs::read(&path).unwrap();
        let m = parse_envelope(text.trim_ascii()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(m.kind(), expected_kind(&name), "{name}");
        assert!(m.payload_is_json(), "{name}");
        assert!(m.product_key().is_some(), "{name}");
        assert!(m.device_name().is_some(), "{name}");
        if m.kind() == Kind::Event {
            assert_eq!(m.event_identifier(), Some("overload_alarm"));
        }
        checked += 1;
    }
    checked
}

#[test]
fn every_sample_classifies_to_its_kind() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert_eq!(check_samples(&here.join("tests/data/messages")), 6);
    // The shared originals, when they sit beside the checkout.
    let shared = here.join("../shared/messages");
    if shared.is_dir() {
        assert_eq!(check_samples(&shared), 6);
    }
}

#[test]
fn sample_parts_come_from_the_topic() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let status = std::fs::read(here.join("tests/data/messages/status.json")).unwrap();
    let m = parse_envelope(status.trim_ascii()).unwrap();
    assert_eq!(m.product_key(), Some("a1Hn3LK0SLk"));
    assert_eq!(m.device_name(), Some("meter-0042"));
    assert_eq!(m.message_id(), "1729800000000000003");
    assert_eq!(m.generate_time_ms(), 1729800001000);
}
