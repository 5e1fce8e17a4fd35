//! Names no other test (or run) uses, so that tests sharing one broker or
//! one machine never see each other's queues, topics or files.

/// A name no other test (or run) uses, for a queue, exchange, stream,
/// topic, user or vhost: the tag, this process and the current time.
pub fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("laneway-test.{tag}.{}.{nanos}", std::process::id())
}
