//! A consumer group's filter: which products and kinds it takes.
//!
//! Invariant: matching reads only the message's header-derived fields
//! (product key and kind), never its payload.

use std::collections::HashSet;

use crate::message::{Kind, Message, UnknownKind};

/// Why a filter cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FilterError {
    /// `kinds` names a kind laneway does not know.
    #[error("kinds: {0}")]
    UnknownKind(#[from] UnknownKind),
}

impl FilterError {
    /// The group knob the error is about.
    pub fn knob(&self) -> &'static str {
        match self {
            FilterError::UnknownKind(_) => "kinds",
        }
    }
}

/// Which messages a group takes.
#[derive(Debug, Clone)]
pub struct Filter {
    /// `None` takes every product.
    products: Option<HashSet<String>>,
    /// One bit per [`Kind::index`].
    kinds: u8,
}

impl Filter {
    /// Builds a filter from product keys and kind names; `"*"` (or an empty
    /// list) in either means "all". Errors name the unknown kind.
    pub fn new(products: &[String], kinds: &[String]) -> Result<Filter, FilterError> {
        let products = if products.is_empty() || products.iter().any(|p| p == "*") {
            None
        } else {
            Some(products.iter().cloned().collect())
        };
        let kinds = if kinds.is_empty() || kinds.iter().any(|k| k == "*") {
            u8::MAX
        } else {
            let mut bits = 0u8;
            for k in kinds {
                let kind: Kind = k.parse()?;
                bits |= 1 << kind.index();
            }
            bits
        };
        Ok(Filter { products, kinds })
    }

    /// A filter that takes everything.
    pub fn all() -> Filter {
        Filter {
            products: None,
            kinds: u8::MAX,
        }
    }

    /// Whether the group takes this message.
    pub fn matches(&self, message: &Message) -> bool {
        if self.kinds & (1 << message.kind().index()) == 0 {
            return false;
        }
        match &self.products {
            None => true,
            Some(set) => message.product_key().is_some_and(|p| set.contains(p)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str) -> Message {
        Message::new(topic, "1", 0, &b"{}"[..]).unwrap()
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn filters_by_kind_and_product() {
        let alarms = Filter::new(&strings(&["*"]), &strings(&["event", "status"])).unwrap();
        assert!(alarms.matches(&msg("/p/d/thing/event/alarm/post")));
        assert!(alarms.matches(&msg("/as/mqtt/status/p/d")));
        assert!(!alarms.matches(&msg("/p/d/thing/event/property/post")));

        let p1 = Filter::new(&strings(&["p1"]), &[]).unwrap();
        assert!(p1.matches(&msg("/as/mqtt/status/p1/d")));
        assert!(!p1.matches(&msg("/as/mqtt/status/p2/d")));
        assert!(!p1.matches(&msg("/weird")), "no product, no match");
        assert!(Filter::all().matches(&msg("/weird")));
    }

    #[test]
    fn unknown_kinds_are_errors() {
        let e = Filter::new(&[], &strings(&["alarm"])).unwrap_err();
        assert_eq!(e, FilterError::UnknownKind(UnknownKind("alarm".into())));
        assert!(e.to_string().contains("alarm"), "{e}");
    }
}
