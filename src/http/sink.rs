//! [`HttpSink`]: one POST per batch, its answer mapped onto the engine's
//! outcomes.
//!
//! Invariants: one `reqwest::Client` per sink, so connections are pooled
//! and kept alive across batches and slots; a `Retry-After` on a 429 or a
//! 503 pauses the whole sink (every slot answers push-limited without
//! sending) until its instant has passed, capped by `max_retry_after`; a
//! 413 halves the batch until each part is taken, so only a message too
//! large alone is refused for its size; no
//! redirect is followed (a POST must not silently turn into a GET
//! elsewhere); every reason names the URL only as shown (password and
//! query hidden) and never a header value.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use parking_lot::Mutex;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::{Response, StatusCode, Url};
use serde::Deserialize;

use super::config::{BodyFormat, HttpSinkConfig, ResultMode, header_error};
use crate::knob::KnobError;
use crate::message::write_delivery_envelope;
use crate::sink::{BatchError, Delivery, DeliveryError, Sink, SinkAdapter};

/// How much of an error answer's body a reason quotes.
const REASON_BODY_BYTES: usize = 200;

/// The longest per-message results body read; past it the batch is retried.
const MAX_RESULTS_BYTES: usize = 16 * 1024 * 1024;

/// How much of a body not otherwise needed is read to its end, so that
/// the connection goes back to the pool; past it the connection is closed.
const DRAIN_BYTES: usize = 64 * 1024;

/// How long an idle pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// Delivers batches by POSTing them to a service (see the module docs of
/// `laneway::http` for the body and the status mapping).
pub struct HttpSink {
    client: reqwest::Client,
    url: Url,
    shown: String,
    headers: HeaderMap,
    format: BodyFormat,
    results: ResultMode,
    timeout: Duration,
    max_retry_after: Duration,
    /// Until when a `Retry-After` asked the sink to send nothing.
    paused_until: Mutex<Option<Instant>>,
}

impl fmt::Debug for HttpSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpSink")
            .field("url", &self.shown)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("format", &self.format)
            .field("results", &self.results)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// One entry of a per-message results body.
#[derive(Deserialize)]
struct MessageResult {
    ok: bool,
    #[serde(default)]
    permanent: bool,
    #[serde(default)]
    reason: Option<String>,
}

impl HttpSink {
    /// Makes the sink: checks the config, reads header values from the
    /// environment and files, loads `ca_file`, builds the pooled client.
    pub fn new(config: &HttpSinkConfig) -> Result<HttpSink, KnobError> {
        let target = config.target()?;
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static(config.format.content_type()),
        );
        if let Some(auth) = &target.basic_auth {
            let mut value = HeaderValue::from_str(auth.expose()).map_err(|_| {
                KnobError::new(
                    "url",
                    format!("{}: the user info cannot be sent", target.shown),
                )
            })?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        for (name, source) in &config.headers {
            let bad = |message: &str| header_error(name, message);
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| bad("not a valid header name"))?;
            let secret = source.resolve(name)?;
            let mut value = HeaderValue::from_str(secret.expose()).map_err(|_| {
                bad("the value holds a character a header cannot carry (a control character or a line break)")
            })?;
            value.set_sensitive(true);
            headers.insert(header, value);
        }
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .pool_idle_timeout(POOL_IDLE)
            .tcp_nodelay(true)
            .http1_only()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = &config.ca_file {
            let failed = |message: String| {
                KnobError::said("ca_file", format!("ca_file {}: {message}", path.display()))
            };
            let pem = std::fs::read(path).map_err(|e| failed(e.to_string()))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| failed(format!("not a PEM bundle: {e}")))?;
            if certificates.is_empty() {
                return Err(failed("holds no PEM certificate".into()));
            }
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let client = builder.build().map_err(|e| {
            KnobError::said(
                "url",
                format!("the HTTP client could not be made: {}", describe(e)),
            )
        })?;
        if target.plaintext_credentials {
            tracing::warn!(url = %target.shown, "allow_plaintext is set: the HTTP sink's credentials cross the network in clear");
        }
        Ok(HttpSink {
            client,
            url: target.url,
            shown: target.shown,
            headers,
            format: config.format,
            results: config.results,
            timeout: config.timeout,
            max_retry_after: config.max_retry_after,
            paused_until: Mutex::new(None),
        })
    }

    /// The URL as logs show it (password and query hidden).
    pub fn shown_url(&self) -> &str {
        &self.shown
    }

    /// The batch as the request body.
    fn body(&self, batch: &[Delivery]) -> Vec<u8> {
        let mut out = Vec::with_capacity(batch.len() * 256 + 2);
        match self.format {
            BodyFormat::Ndjson => {
                for d in batch {
                    write_delivery_envelope(&mut out, &d.message, d.superseded);
                }
            }
            BodyFormat::Json => {
                out.push(b'[');
                for (i, d) in batch.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_delivery_envelope(&mut out, &d.message, d.superseded);
                    // The line's newline is not needed inside the array.
                    if out.last() == Some(&b'\n') {
                        out.pop();
                    }
                }
                out.push(b']');
            }
        }
        out
    }

    /// How long the sink must still hold back, if a `Retry-After` asked it to.
    fn pause_left(&self) -> Option<Duration> {
        let mut paused = self.paused_until.lock();
        let until = (*paused)?;
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            *paused = None;
            return None;
        }
        Some(left)
    }

    /// Holds the sink back for `wait` (at most `max_retry_after`), unless
    /// it already waits longer.
    fn pause(&self, wait: Duration) {
        let now = Instant::now();
        // A `max_retry_after` past what the clock can add is as good as
        // forever: the pause then ends where the clock does.
        let until = now
            .checked_add(wait.min(self.max_retry_after))
            .unwrap_or_else(|| far_future(now));
        let mut paused = self.paused_until.lock();
        if paused.is_none_or(|p| p < until) {
            *paused = Some(until);
        }
    }

    /// The error for an answer that is not 2xx.
    async fn refusal(&self, status: StatusCode, response: Response) -> DeliveryError {
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let body = body_start(response).await;
        let mut reason = format!("POST {}: {status}", self.shown);
        if let Some(wait) = retry_after {
            reason.push_str(&format!(" (Retry-After {} ms)", wait.as_millis()));
        }
        if !body.is_empty() {
            reason.push_str(": ");
            reason.push_str(&body);
        }
        match status.as_u16() {
            429 | 503 => {
                if let Some(wait) = retry_after {
                    self.pause(wait);
                }
                DeliveryError::PushLimited(reason)
            }
            408 => DeliveryError::RetryLater(reason),
            400..=499 => DeliveryError::Permanent(reason),
            300..=399 => {
                reason.push_str(" (redirects are not followed: point url at the new place)");
                DeliveryError::RetryLater(reason)
            }
            _ => DeliveryError::RetryLater(reason),
        }
    }

    /// The outcome a 2xx answer's per-message results give.
    async fn per_message(&self, response: Response, len: usize) -> Result<(), BatchError> {
        let retry = |what: String| -> BatchError {
            DeliveryError::RetryLater(format!("POST {}: {what}", self.shown)).into()
        };
        let (mut body, complete) =
            match read_body(response, MAX_RESULTS_BYTES + 1, MAX_RESULTS_BYTES + 1).await {
                Ok(read) => read,
                Err(e) => return Err(retry(format!("reading the results: {}", describe(e)))),
            };
        if !complete || body.len() > MAX_RESULTS_BYTES {
            return Err(retry(format!(
                "the results body is longer than {MAX_RESULTS_BYTES} bytes"
            )));
        }
        if body.trim_ascii().is_empty() {
            return Ok(());
        }
        let results: Vec<MessageResult> = simd_json::serde::from_slice(&mut body).map_err(|e| {
            retry(format!(
                "the 2xx body is not a JSON array of results ({e}); the batch is sent again"
            ))
        })?;
        if results.len() != len {
            return Err(retry(format!(
                "the 2xx body holds {} results for {len} messages; the batch is sent again",
                results.len()
            )));
        }
        let failed: Vec<(usize, DeliveryError)> = results
            .into_iter()
            .enumerate()
            .filter(|(_, r)| !r.ok)
            .map(|(i, r)| {
                let said = r.reason.as_deref().map_or("no reason given", cut);
                let reason = format!(
                    "POST {}: the service refused the message: {said}",
                    self.shown
                );
                let error = if r.permanent {
                    DeliveryError::Permanent(reason)
                } else {
                    DeliveryError::RetryLater(reason)
                };
                (i, error)
            })
            .collect();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(BatchError::Some(failed))
        }
    }
}

#[async_trait]
impl Sink for HttpSink {
    async fn deliver(&self, batch: &[Delivery]) -> Result<(), BatchError> {
        if batch.is_empty() {
            return Ok(());
        }
        if let Some(left) = self.pause_left() {
            return Err(DeliveryError::PushLimited(format!(
                "POST {}: held back {} ms more, as the service's Retry-After asked",
                self.shown,
                left.as_millis()
            ))
            .into());
        }
        let mut parts = Vec::with_capacity(8);
        parts.push(0..batch.len());
        let mut failed = Vec::new();
        while let Some(part) = parts.pop() {
            let whole = part.len() == batch.len();
            match self.post(&batch[part.clone()]).await {
                Ok(()) => {}
                Err(Posted::TooLarge(_)) if part.len() > 1 => {
                    // Halves, the first sent first (a stack: pushed last).
                    let middle = part.start + part.len() / 2;
                    parts.push(middle..part.end);
                    parts.push(part.start..middle);
                }
                Err(Posted::TooLarge(e)) => failed.push((part.start, e)),
                Err(Posted::Refused(e)) if whole => return Err(e),
                Err(Posted::Refused(e)) => {
                    // This part fails as it was answered. Refused for its
                    // own messages (a 4xx, or per-message results), the
                    // parts after it are still sent; refused for the
                    // service's trouble (a 5xx, a 429, no answer), they are
                    // not sent now, and fail push limited: never tried,
                    // they use up no attempt.
                    let service_trouble = matches!(&e, BatchError::All(error) if !matches!(error, DeliveryError::Permanent(_)));
                    failed.extend(
                        e.per_message(part.len())
                            .into_iter()
                            .enumerate()
                            .filter_map(|(i, e)| Some((part.start + i, e?))),
                    );
                    if service_trouble {
                        let unsent = DeliveryError::PushLimited(format!(
                            "POST {}: not sent, an earlier part of its batch failed",
                            self.shown
                        ));
                        for rest in parts.drain(..) {
                            failed.extend(rest.map(|i| (i, unsent.clone())));
                        }
                    }
                }
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            failed.sort_by_key(|(i, _)| *i);
            Err(BatchError::Some(failed))
        }
    }
}

/// Why a POST failed: the body too large for the service (413), which a
/// smaller batch may fix, or any other refusal.
enum Posted {
    TooLarge(DeliveryError),
    Refused(BatchError),
}

impl HttpSink {
    /// POSTs `batch` as one body and reads the answer.
    async fn post(&self, batch: &[Delivery]) -> Result<(), Posted> {
        let body = self.body(batch);
        let response = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .body(body)
            .send()
            .await
            .map_err(|e| {
                let what = if e.is_timeout() {
                    format!("no answer within {:?}", self.timeout)
                } else {
                    describe(e)
                };
                Posted::Refused(
                    DeliveryError::RetryLater(format!("POST {}: {what}", self.shown)).into(),
                )
            })?;
        let status = response.status();
        if !status.is_success() {
            let refusal = self.refusal(status, response).await;
            return Err(if status == StatusCode::PAYLOAD_TOO_LARGE {
                Posted::TooLarge(refusal)
            } else {
                Posted::Refused(refusal.into())
            });
        }
        match self.results {
            ResultMode::Batch => {
                // Read to its end, the connection is kept alive for the next batch.
                let _ = read_body(response, 0, DRAIN_BYTES).await;
                Ok(())
            }
            ResultMode::PerMessage => self
                .per_message(response, batch.len())
                .await
                .map_err(Posted::Refused),
        }
    }
}

/// A client error with its causes, without the URL (the caller names the
/// URL as shown).
fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Reads a body: keeps its first `keep` bytes, and reads on to its end
/// only while at most `limit` bytes have come (a body read to its end lets
/// the connection be kept alive). Also says whether the end was reached.
async fn read_body(
    mut response: Response,
    keep: usize,
    limit: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let (mut kept, mut read) = (Vec::new(), 0usize);
    while read <= limit {
        let Some(chunk) = response.chunk().await? else {
            return Ok((kept, true));
        };
        read += chunk.len();
        let room = keep.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
    Ok((kept, false))
}

/// The first bytes of a body, as one line of text (lossy: it is only
/// shown).
async fn body_start(response: Response) -> String {
    let start = read_body(response, REASON_BODY_BYTES, DRAIN_BYTES)
        .await
        .map_or_else(|_| Vec::new(), |(kept, _)| kept);
    String::from_utf8_lossy(&start)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

/// At most the first [`REASON_BODY_BYTES`] of `text`, cut at a character.
fn cut(text: &str) -> &str {
    let mut end = text.len().min(REASON_BODY_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A `Retry-After` value: delay seconds, or an HTTP date (a date past
/// gives no wait).
/// The latest instant after `now` the clock can hold, a century at most.
fn far_future(now: Instant) -> Instant {
    let mut wait = Duration::from_secs(100 * 365 * 24 * 3600);
    loop {
        if let Some(at) = now.checked_add(wait) {
            return at;
        }
        wait /= 2;
    }
}

fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

impl SinkAdapter for HttpSinkConfig {
    fn check(&self) -> Result<(), KnobError> {
        self.validate()
    }

    fn build(&self) -> Result<Arc<dyn Sink>, KnobError> {
        Ok(Arc::new(HttpSink::new(self)?))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        let later = SystemTime::now() + Duration::from_secs(120);
        let wait = parse_retry_after(&httpdate::fmt_http_date(later)).unwrap();
        assert!(wait > Duration::from_secs(100) && wait <= Duration::from_secs(120));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }

    #[test]
    fn a_pause_holds_back_and_is_capped() {
        let mut config = HttpSinkConfig::new("http://127.0.0.1:9/");
        config.max_retry_after = Duration::from_secs(60);
        let sink = HttpSink::new(&config).unwrap();
        assert_eq!(sink.pause_left(), None);
        sink.pause(Duration::from_secs(3600));
        let left = sink.pause_left().unwrap();
        assert!(left <= Duration::from_secs(60) && left > Duration::from_secs(50));
        // A shorter pause does not cut a longer one.
        sink.pause(Duration::from_secs(1));
        assert!(sink.pause_left().unwrap() > Duration::from_secs(50));
    }

    /// A `Retry-After` of the largest number, under a `max_retry_after`
    /// the clock cannot add, pauses for as long as it can: no overflow.
    #[test]
    fn a_pause_past_what_the_clock_holds_does_not_overflow() {
        let mut config = HttpSinkConfig::new("http://127.0.0.1:9/");
        config.max_retry_after = Duration::MAX;
        let sink = HttpSink::new(&config).unwrap();
        sink.pause(parse_retry_after("18446744073709551615").unwrap());
        assert!(sink.pause_left().unwrap() > Duration::from_secs(365 * 24 * 3600));
    }
}
