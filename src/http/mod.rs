//! The HTTP sink: a group's batches POSTed to the user's service
//! (`sink = { type = "http", url = ..., ... }`), on one pooled keep-alive
//! client per sink (reqwest on rustls with the ring provider).
//!
//! A batch is one request: a JSON array of envelopes (`format = "json"`,
//! the default) or one envelope a line (`format = "ndjson"`), each envelope
//! exactly what the JSONL sink writes ([`write_envelope`](crate::message::write_envelope)),
//! so a payload that is not JSON travels as `payloadBase64` and comes back
//! byte for byte. The answer decides what the group does (docs/http.md
//! has the table): 2xx delivered; 429 and 503 push-limited
//! (a `Retry-After` pauses the sink until it has passed); 408, other 5xx,
//! 3xx, connection errors and timeouts retried; any other 4xx a dead letter
//! with the status and the first bytes of the body. With
//! `results = "per_message"` a 2xx body may answer for each message.
//!
//! Invariants: no header value and no password of the URL ever appears in
//! a `Debug` of the config or the sink, in a log line or in an error (header
//! values are [`Secret`](crate::secret::Secret)s, the URL is shown with its
//! password and query hidden); a credential (a URL password, an
//! `Authorization` header, a header read from the environment or a file) is
//! never sent over plain `http://` to a host other than this machine unless
//! `allow_plaintext = true`; a batch is reported delivered only on a 2xx
//! answer, so whatever the service did not acknowledge is sent again.

mod config;
mod sink;

pub use config::{BodyFormat, HeaderSource, HttpSinkConfig, ResultMode};
pub use sink::HttpSink;
