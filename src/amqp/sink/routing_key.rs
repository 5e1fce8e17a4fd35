//! The sink's routing key: a template such as `{kind}.{product}.{device}`,
//! parsed once from the config and rendered for each message.
//!
//! Invariants: a template parses only when every placeholder is known
//! (`kind`, `product`, `device`) and every `{` is closed; a rendered key
//! holds no dot from inside a value (dots become `_`), so a value never
//! adds a level to the key, and a missing or empty value renders as `_`.

use std::fmt::Write as _;

use crate::knob::KnobError;
use crate::message::Message;

/// One piece of a routing-key template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyPart {
    Text(String),
    Kind,
    Product,
    Device,
}

/// A parsed routing-key template such as `{kind}.{product}.{device}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingKey(Vec<KeyPart>);

impl RoutingKey {
    /// Parses a template; unknown placeholders are an error naming them.
    pub fn parse(template: &str) -> Result<RoutingKey, KnobError> {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(KeyPart::Text(rest[..open].to_string()));
            }
            let Some(close) = rest[open..].find('}') else {
                return Err(KnobError::new(
                    "routing_key",
                    format!("{template:?}: unclosed '{{'"),
                ));
            };
            let name = &rest[open + 1..open + close];
            parts.push(match name {
                "kind" => KeyPart::Kind,
                "product" => KeyPart::Product,
                "device" => KeyPart::Device,
                other => {
                    return Err(KnobError::new(
                        "routing_key",
                        format!(
                            "{template:?}: unknown placeholder {{{other}}} (use kind, product, device)"
                        ),
                    ));
                }
            });
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(KeyPart::Text(rest.to_string()));
        }
        Ok(RoutingKey(parts))
    }

    /// The key for `message`.
    pub fn render(&self, message: &Message) -> String {
        let mut key = String::with_capacity(64);
        let push = |key: &mut String, value: Option<&str>| match value {
            Some(v) if !v.is_empty() => {
                key.extend(v.chars().map(|c| if c == '.' { '_' } else { c }))
            }
            _ => key.push('_'),
        };
        for part in &self.0 {
            match part {
                KeyPart::Text(t) => key.push_str(t),
                KeyPart::Kind => {
                    let _ = write!(key, "{}", message.kind());
                }
                KeyPart::Product => push(&mut key, message.product_key()),
                KeyPart::Device => push(&mut key, message.device_name()),
            }
        }
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn routing_keys_are_built_from_the_message() {
        let key = RoutingKey::parse("{kind}.{product}.{device}").unwrap();
        let m = Message::new(
            "/a1pk/dev.1/thing/event/property/post",
            "1",
            0,
            Bytes::new(),
        )
        .unwrap();
        assert_eq!(key.render(&m), "property.a1pk.dev_1");
        let key = RoutingKey::parse("iot.{kind}").unwrap();
        assert_eq!(key.render(&m), "iot.property");
        assert!(RoutingKey::parse("{colour}").is_err());
        assert!(RoutingKey::parse("{kind").is_err());
    }
}
