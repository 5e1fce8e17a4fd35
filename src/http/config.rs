//! The knobs of the HTTP sink, as `sink = { type = "http", ... }` takes
//! them, and the checks a config passes before anything is opened.
//!
//! Invariant: the `Debug` of a config shows the URL with its password,
//! its query and a user name without a password (which may be an API key)
//! hidden, and no header value at all; no error quotes any of them,
//! whether the URL parses or not.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::Url;
use reqwest::header::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use crate::knob::KnobError;
use crate::secret::Secret;

/// How a batch is laid out in the request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyFormat {
    /// One JSON array of envelopes (`Content-Type: application/json`):
    /// what most web frameworks parse without help.
    #[default]
    Json,
    /// One envelope a line, each ending in `\n` (`Content-Type:
    /// application/x-ndjson`): a service can stream it, and each line is
    /// a line of the JSONL sink's file.
    Ndjson,
}

impl BodyFormat {
    /// The `Content-Type` the body is sent with.
    pub fn content_type(self) -> &'static str {
        match self {
            BodyFormat::Json => "application/json",
            BodyFormat::Ndjson => "application/x-ndjson",
        }
    }
}

/// What a 2xx answer says about the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultMode {
    /// A 2xx answer delivers the whole batch; its body is not read.
    #[default]
    Batch,
    /// A 2xx body may be a JSON array with one entry per message, in the
    /// batch's order: `{"ok": true}`, or `{"ok": false, "permanent": bool,
    /// "reason": "..."}` (a dead letter when `permanent`, else retried), so
    /// one bad message does not fail its batch. An empty body delivers the
    /// whole batch; any other body (not such an array, or another length)
    /// retries the whole batch, since what was done cannot be told.
    PerMessage,
}

/// Where a header's value comes from: the config itself, or (for a
/// secret, which should not sit in a config file) an environment variable
/// or a file, with an optional literal `prefix` such as `"Bearer "`.
#[derive(Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum HeaderSource {
    /// The value as written (still never printed: it may be a token).
    Value(Secret),
    /// `{ env = "VAR" }` or `{ file = "/path" }`, optionally with `prefix`.
    From {
        /// The environment variable holding the value.
        env: Option<String>,
        /// The file holding the value (trailing whitespace dropped).
        file: Option<PathBuf>,
        /// Text put before the value (`"Bearer "`); not a secret.
        prefix: Option<String>,
    },
}

/// The table form of a header value, its keys checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderTable {
    #[serde(default)]
    env: Option<String>,
    #[serde(default)]
    file: Option<PathBuf>,
    #[serde(default)]
    prefix: Option<String>,
}

impl<'de> Deserialize<'de> for HeaderSource {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = HeaderSource;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a header value: text, or { env = \"VAR\" } or { file = \"/path\" } with an optional prefix")
            }

            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<HeaderSource, E> {
                Ok(HeaderSource::Value(Secret::new(value)))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<HeaderSource, A::Error> {
                let table =
                    HeaderTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(HeaderSource::From {
                    env: table.env,
                    file: table.file,
                    prefix: table.prefix,
                })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl fmt::Debug for HeaderSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderSource::Value(_) => f.write_str("***"),
            HeaderSource::From { env, file, prefix } => f
                .debug_struct("From")
                .field("env", env)
                .field("file", file)
                .field("prefix", prefix)
                .finish(),
        }
    }
}

impl HeaderSource {
    /// Whether the value is read from the environment or a file: the
    /// config says it is a secret.
    pub fn is_external(&self) -> bool {
        matches!(self, HeaderSource::From { .. })
    }

    /// The value, read from where it comes from; `name` (the header's)
    /// names it in errors, which never hold the value.
    pub fn resolve(&self, name: &str) -> Result<Secret, KnobError> {
        let failed = |message: String| header_error(name, message);
        match self {
            HeaderSource::Value(value) => Ok(value.clone()),
            HeaderSource::From { env, file, prefix } => {
                let what = format!("value of header {name}");
                let var = match (env, file) {
                    (Some(var), None) => var.as_str(),
                    (None, Some(_)) => "",
                    _ => return Err(failed("give exactly one of env and file".into())),
                };
                let value = crate::env::read_secret(file.as_deref(), var, &what).map_err(failed)?;
                Ok(match prefix {
                    Some(prefix) => Secret::new(format!("{prefix}{}", value.expose())),
                    None => value,
                })
            }
        }
    }
}

/// An HTTP sink: every batch POSTed to one URL.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSinkConfig {
    /// Where batches are POSTed (`http://` or `https://`). A user and
    /// password in it (`https://user:pass@host/`) are sent as HTTP basic
    /// authentication; the password is never shown, nor a user name
    /// given without one (it may be an API key).
    pub url: String,
    /// How long one request may take, connecting and reading the answer
    /// included; past it the batch is retried. Default 10s (keep it below
    /// the group's `delivery_timeout`).
    #[serde(with = "crate::knob::duration", default = "default_timeout")]
    pub timeout: Duration,
    /// Headers sent with every request. A value is text, or
    /// `{ env = "VAR" }` / `{ file = "/path" }` with an optional `prefix`;
    /// no value is ever logged.
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderSource>,
    /// How the batch is laid out: `json` (an array) or `ndjson`. Default `json`.
    #[serde(default)]
    pub format: BodyFormat,
    /// A PEM file of certificate authorities trusted besides the system's
    /// (a private CA), for `https://`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// What a 2xx answer says: `batch` (the whole batch is delivered) or
    /// `per_message` (see [`ResultMode::PerMessage`]). Default `batch`.
    #[serde(default)]
    pub results: ResultMode,
    /// The longest pause a `Retry-After` can impose; a longer one is cut
    /// to this. Default 5m.
    #[serde(with = "crate::knob::duration", default = "default_max_retry_after")]
    pub max_retry_after: Duration,
    /// Allow sending a credential (a password in the URL, an
    /// `Authorization` header, a header read from the environment or a
    /// file) over plain `http://` to a host other than this machine (a
    /// WARN at start). Default false: such a config is refused.
    #[serde(default)]
    pub allow_plaintext: bool,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_max_retry_after() -> Duration {
    Duration::from_secs(300)
}

impl fmt::Debug for HttpSinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpSinkConfig")
            .field("url", &shown_text(&self.url))
            .field("timeout", &self.timeout)
            .field("headers", &self.headers)
            .field("format", &self.format)
            .field("ca_file", &self.ca_file)
            .field("results", &self.results)
            .field("max_retry_after", &self.max_retry_after)
            .field("allow_plaintext", &self.allow_plaintext)
            .finish()
    }
}

/// A header named in `headers` is unusable, or its value could not be
/// read: shown as `headers.NAME: …`, never with the value.
pub(super) fn header_error(name: &str, message: impl std::fmt::Display) -> KnobError {
    KnobError::said("headers", format!("headers.{name}: {message}"))
}

/// A checked URL: where requests go (without user info) and the basic
/// authentication its user info asked for.
pub(super) struct Target {
    /// The URL requests are sent to, its user and password removed.
    pub url: Url,
    /// How the URL is shown: password and query hidden.
    pub shown: String,
    /// `Basic ...` for the URL's user and password, if it had any.
    pub basic_auth: Option<Secret>,
    /// Whether a credential crosses a plain connection to another machine
    /// (allowed, or the config would have been refused).
    pub plaintext_credentials: bool,
}

/// Headers the sink and its HTTP client set from the body and the URL:
/// one given in `headers` would contradict them (a `Content-Length` cuts
/// the body short on the wire; a `Content-Type` mislabels the format), so
/// they are refused.
const SINKS_OWN_HEADERS: [&str; 11] = [
    "content-length",
    "transfer-encoding",
    "content-type",
    "content-encoding",
    "host",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "expect",
];

impl HttpSinkConfig {
    /// A config posting to `url`, every other knob at its default.
    pub fn new(url: impl Into<String>) -> HttpSinkConfig {
        HttpSinkConfig {
            url: url.into(),
            timeout: default_timeout(),
            headers: BTreeMap::new(),
            format: BodyFormat::default(),
            ca_file: None,
            results: ResultMode::default(),
            max_retry_after: default_max_retry_after(),
            allow_plaintext: false,
        }
    }

    /// Checks the knobs without reading anything (header values from the
    /// environment or files are read when the sink is made).
    pub fn validate(&self) -> Result<(), KnobError> {
        self.target().map(|_| ())
    }

    /// The checked URL and what goes with it.
    pub(super) fn target(&self) -> Result<Target, KnobError> {
        if self.timeout.is_zero() {
            return Err(KnobError::new("timeout", "must be longer than zero"));
        }
        if self.max_retry_after.is_zero() {
            return Err(KnobError::new(
                "max_retry_after",
                "must be longer than zero",
            ));
        }
        for (name, source) in &self.headers {
            let bad = |message: &str| header_error(name, message);
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad("not a valid header name"))?;
            if SINKS_OWN_HEADERS
                .iter()
                .any(|own| own.eq_ignore_ascii_case(name))
            {
                return Err(bad(
                    "the sink sets this header itself (the body's framing, type and destination); giving it would change what is sent",
                ));
            }
            match source {
                HeaderSource::Value(value) => {
                    HeaderValue::from_str(value.expose()).map_err(|_| {
                        bad("the value holds a character a header cannot carry (a control character or a line break)")
                    })?;
                }
                HeaderSource::From { env, file, .. } => {
                    if env.is_some() == file.is_some() {
                        return Err(bad("give exactly one of env and file"));
                    }
                    if env.as_deref().is_some_and(|v| v.trim().is_empty()) {
                        return Err(bad("env names no variable"));
                    }
                }
            }
        }
        let raw = self.url.trim();
        let mut url = Url::parse(raw)
            .map_err(|e| KnobError::new("url", format!("{} is not a URL: {e}", shown_text(raw))))?;
        let shown = shown_url(&url);
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(KnobError::new(
                "url",
                format!("{shown}: use http://host/... or https://host/..."),
            ));
        }
        let has_user_info = !url.username().is_empty() || url.password().is_some();
        let basic_auth = has_user_info.then(|| {
            let user = crate::broker_url::percent_decode(url.username());
            let password = crate::broker_url::percent_decode(url.password().unwrap_or(""));
            let mut pair = user;
            pair.push(b':');
            pair.extend_from_slice(&password);
            use base64::Engine as _;
            let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
            Secret::new(format!("Basic {encoded}"))
        });
        // Removing user info from an http(s) URL with a host cannot fail.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        let credential_header = self.headers.iter().any(|(name, source)| {
            name.eq_ignore_ascii_case("authorization")
                || name.eq_ignore_ascii_case("proxy-authorization")
                || source.is_external()
        });
        let credential = if has_user_info {
            Some("the URL's user and password")
        } else if credential_header {
            Some("a credential header")
        } else {
            None
        };
        let plaintext = url.scheme() == "http" && !is_loopback(&url);
        if let Some(what) = credential
            && plaintext
            && !self.allow_plaintext
        {
            return Err(KnobError::new(
                "url",
                format!(
                    "{shown}: a plain http:// connection would send {what} in clear to a host that is not this machine; use https://, or set allow_plaintext = true"
                ),
            ));
        }
        Ok(Target {
            url,
            shown,
            basic_auth,
            plaintext_credentials: credential.is_some() && plaintext,
        })
    }
}

/// Whether the URL's host is this machine (`localhost` or a loopback
/// address).
fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// The URL as logs and errors show it: the password replaced by `***`,
/// and a user name without a password (an API key, as many services take
/// one) too; the path after its first segment by `/***` (a webhook's token
/// is there: `/services/T…/B…/<token>`); the query (which may carry a
/// token) by `?***`; no fragment.
pub(super) fn shown_url(url: &Url) -> String {
    let mut out = format!("{}://", url.scheme());
    if url.password().is_some() {
        out.push_str(url.username());
        out.push_str(":***@");
    } else if !url.username().is_empty() {
        out.push_str("***@");
    }
    out.push_str(url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        out.push_str(&format!(":{port}"));
    }
    out.push_str(&shown_path(url.path()));
    if url.query().is_some() {
        out.push_str("?***");
    }
    out
}

/// A URL's path as shown: its first segment, and `/***` for any after it.
fn shown_path(path: &str) -> String {
    let rest = path.strip_prefix('/').unwrap_or(path);
    match rest.split_once('/') {
        Some((first, after)) if !after.is_empty() => format!("/{first}/***"),
        _ => path.to_string(),
    }
}

/// How the text of a `url` knob is shown, parsed or not: text that does
/// not parse hides what [`shown_url`] hides, read as well as it can be
/// (the password by [`redact`](crate::broker_url::redact), then user info
/// up to the last `@` that is not `user:***`, and everything from the
/// first `?` or `#`).
fn shown_text(raw: &str) -> String {
    let raw = raw.trim();
    if let Ok(url) = Url::parse(raw) {
        return shown_url(&url);
    }
    let redacted = crate::broker_url::redact(raw);
    let (head, query) = match redacted.find(['?', '#']) {
        Some(at) if redacted[at..].starts_with('?') => (&redacted[..at], "?***"),
        Some(at) => (&redacted[..at], ""),
        None => (redacted.as_str(), ""),
    };
    let (scheme, rest) = match head.find("://") {
        Some(end) => (&head[..end + 3], &head[end + 3..]),
        None => ("", head),
    };
    // The host starts after the last `@` (a password may hold a `/`), the
    // path at the first `/` after it.
    let host = rest.rfind('@').map_or(0, |at| at + 1);
    let (rest, path) = match rest[host..].find('/') {
        Some(slash) => rest.split_at(host + slash),
        None => (rest, ""),
    };
    let path = shown_path(path);
    match rest.rfind('@') {
        Some(at) if !scheme.is_empty() => {
            let info = &rest[..at];
            let info = if info.ends_with(":***") { info } else { "***" };
            format!("{scheme}{info}@{}{path}{query}", &rest[at + 1..])
        }
        _ => format!("{scheme}{rest}{path}{query}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn parse(text: &str) -> HttpSinkConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn defaults_and_knobs_parse() {
        let c = parse("url = \"http://127.0.0.1:8080/in\"\n");
        assert_eq!(c, HttpSinkConfig::new("http://127.0.0.1:8080/in"));
        assert_eq!(c.timeout, Duration::from_secs(10));
        let c = parse(
            "url = \"https://h/\"\nformat = \"ndjson\"\nresults = \"per_message\"\ntimeout = \"2s\"\n\
             [headers]\nX-Plain = \"v\"\nAuthorization = { env = \"TOKEN\", prefix = \"Bearer \" }\n",
        );
        assert_eq!(
            (c.format, c.results, c.timeout),
            (
                BodyFormat::Ndjson,
                ResultMode::PerMessage,
                Duration::from_secs(2)
            )
        );
        assert!(c.headers["Authorization"].is_external());
        assert!(c.validate().is_ok());
    }

    #[test]
    fn no_printing_shows_a_header_value_or_the_password() {
        let c = parse(
            "url = \"https://app:Zq9-PASS@h:8443/in?token=Zq9-QUERY\"\n[headers]\nX-Key = \"Zq9-HEADER\"\n",
        );
        let shown = format!("{c:?}");
        assert!(!shown.contains("Zq9"), "{shown}");
        assert!(shown.contains("https://app:***@h:8443/in?***"), "{shown}");
        let t = c.target().unwrap();
        assert_eq!(t.url.as_str(), "https://h:8443/in?token=Zq9-QUERY");
        assert_eq!(t.basic_auth.unwrap().expose(), "Basic YXBwOlpxOS1QQVNT");
    }

    /// A user name without a password may be an API key, and a query may
    /// carry a token: no error or `Debug` quotes either, whether the URL
    /// parses or not (an out-of-range port, a space in the host).
    #[test]
    fn no_error_shows_the_user_or_the_query_of_a_url_parsed_or_not() {
        for url in [
            "https://sk-Zq9USER@api.example.com/in",
            "https://app:Zq9PASS@api.example.com/in?token=Zq9QUERY",
            "https://hooks.example.com:99999/in?token=Zq9QUERY",
            "https://sk-Zq9USER@hooks.example.com:99999/in#Zq9FRAG",
            "https://app:Zq9?PASS@bad host/in?token=Zq9QUERY",
            "https://sk-Zq9USER@bad host/in",
            "ftp://sk-Zq9USER@example.com/in?token=Zq9QUERY",
            // A webhook's token in its path (Slack's, Discord's form).
            "https://hooks.example.com/services/T0/B0/Zq9PATH",
            "https://hooks.example.com:99999/api/webhooks/1/Zq9PATH",
            "https://user:Zq9?PASS@bad host/services/Zq9PATH?token=Zq9QUERY",
        ] {
            let c = HttpSinkConfig::new(url);
            let debug = format!("{c:?}");
            assert!(!debug.contains("Zq9"), "{debug}");
            let error = match c.target() {
                Ok(t) => t.shown,
                Err(e) => e.to_string(),
            };
            assert!(!error.contains("Zq9"), "{url}: {error}");
        }
        let Err(e) = HttpSinkConfig::new("https://hooks.example.com:99999/in?token=Zq9").target()
        else {
            panic!("port 99999 parsed");
        };
        let e = e.to_string();
        assert!(e.contains("https://hooks.example.com:99999/in?***"), "{e}");
        let shown = HttpSinkConfig::new("https://hooks.example.com/services/T0/B0/Zq9")
            .target()
            .unwrap()
            .shown;
        assert_eq!(shown, "https://hooks.example.com/services/***");
    }

    #[test]
    fn credentials_over_plain_http_to_another_host_are_refused() {
        for text in [
            "url = \"http://u:Zq9-PASS@example.com/\"\n",
            "url = \"http://example.com/\"\n[headers]\nauthorization = \"Zq9-TOKEN\"\n",
            "url = \"http://example.com/\"\n[headers]\nX-Key = { env = \"K\" }\n",
        ] {
            let mut c = parse(text);
            let e = c.validate().unwrap_err();
            let shown = e.to_string();
            assert!(shown.contains("allow_plaintext"), "{shown}");
            assert!(!shown.contains("Zq9"), "{shown}");
            assert_eq!(e.knob(), "url");
            c.allow_plaintext = true;
            assert!(c.validate().is_ok(), "{text}");
        }
        for fine in [
            "url = \"https://u:p@example.com/\"\n",
            "url = \"http://u:p@127.0.0.1:1/\"\n",
            "url = \"http://u:p@localhost/\"\n",
            "url = \"http://u:p@[::1]/\"\n",
            "url = \"http://example.com/\"\n[headers]\nX-Plain = \"v\"\n",
        ] {
            assert!(parse(fine).validate().is_ok(), "{fine}");
        }
    }

    #[test]
    fn bad_knobs_name_themselves() {
        for (text, knob) in [
            ("url = \"ftp://h/\"\n", "url"),
            ("url = \"not a url\"\n", "url"),
            ("url = \"http://h/\"\ntimeout = \"0s\"\n", "timeout"),
            (
                "url = \"http://h/\"\n[headers]\n\"bad name\" = \"v\"\n",
                "headers",
            ),
            (
                "url = \"http://h/\"\n[headers]\nX = { prefix = \"p\" }\n",
                "headers",
            ),
            (
                "url = \"http://h/\"\n[headers]\nX = { env = \"A\", file = \"/f\" }\n",
                "headers",
            ),
            // The sink's own framing: a Content-Length of 10 cut each body
            // to 10 bytes on the wire.
            (
                "url = \"http://h/\"\n[headers]\nContent-Length = \"10\"\n",
                "headers",
            ),
            (
                "url = \"http://h/\"\n[headers]\ntransfer-encoding = \"chunked\"\n",
                "headers",
            ),
            (
                "url = \"http://h/\"\n[headers]\nHOST = \"other\"\n",
                "headers",
            ),
            (
                "url = \"http://h/\"\n[headers]\nContent-Type = \"text/plain\"\n",
                "headers",
            ),
        ] {
            let e = parse(text).validate().unwrap_err();
            assert_eq!(e.knob(), knob, "{text}: {e}");
        }
        for bad in ["X = 5", "X = { env = \"A\", colour = 1 }"] {
            let text = format!("url = \"http://h/\"\n[headers]\n{bad}\n");
            let e = toml::from_str::<HttpSinkConfig>(&text)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("header value") || e.contains("colour"),
                "{bad}: {e}"
            );
        }
        let e = parse("url = \"http://h/\"\n[headers]\nX = \"a\\nb\"\n")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("headers.X: "), "{e}");
    }

    #[test]
    fn a_header_from_a_file_or_the_environment_is_read_and_prefixed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "Zq9-FILE\n").unwrap();
        let source = HeaderSource::From {
            env: None,
            file: Some(file),
            prefix: Some("Bearer ".into()),
        };
        assert_eq!(source.resolve("A").unwrap().expose(), "Bearer Zq9-FILE");
        let source = HeaderSource::From {
            env: Some("LANEWAY_TEST_SURELY_UNSET_HEADER".into()),
            file: None,
            prefix: None,
        };
        let e = source.resolve("A").unwrap_err().to_string();
        assert!(e.contains("LANEWAY_TEST_SURELY_UNSET_HEADER"), "{e}");
    }
}
