//! Broker URLs: where they come from (the config, an environment variable,
//! the default) and how they are shown.
//!
//! Invariant: a password never leaves this module in text meant for people.
//! [`BrokerUrl`] keeps the full URL private and its `Display` and `Debug`
//! show the redacted form (`amqp://user:***@host:5672/%2f`), so a log line
//! or an error that formats a `BrokerUrl` cannot leak a credential.

use std::fmt;
use std::str::FromStr;

use lapin::uri::{AMQPScheme, AMQPUri};

/// The environment variable consulted when no URL is configured.
pub const DEFAULT_URL_ENV: &str = "AMQP_URL";

/// The URL used when neither the config nor the environment names one: a
/// local RabbitMQ with its default account.
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Why a broker URL cannot be used. The text never contains the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// The URL does not parse as `amqp://` or `amqps://`.
    #[error("invalid broker URL {redacted}: {reason}")]
    Invalid {
        /// The URL as given, password redacted.
        redacted: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The configured environment variable is not set.
    #[error("environment variable {0} is not set (it should hold the broker URL)")]
    MissingEnv(String),
}

/// A parsed broker URL whose password is never displayed.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    raw: String,
    redacted: String,
    tls: bool,
}

impl BrokerUrl {
    /// Parses and checks a URL (`amqp://` or `amqps://`).
    pub fn parse(raw: &str) -> Result<BrokerUrl, UrlError> {
        let raw = raw.trim();
        let redacted = redact(raw);
        let uri = AMQPUri::from_str(raw).map_err(|reason| UrlError::Invalid {
            redacted: redacted.clone(),
            // The parser's message may quote the URL; keep only what is safe.
            reason: scrub(&reason, raw, &redacted),
        })?;
        Ok(BrokerUrl {
            raw: raw.to_string(),
            redacted,
            tls: uri.scheme == AMQPScheme::AMQPS,
        })
    }

    /// Resolves the URL of a source or sink: `url` when given, else the
    /// variable `url_env` (default [`DEFAULT_URL_ENV`]), else [`DEFAULT_URL`]
    /// when no variable was named explicitly.
    pub fn resolve(url: Option<&str>, url_env: Option<&str>) -> Result<BrokerUrl, UrlError> {
        if let Some(url) = url {
            return BrokerUrl::parse(url);
        }
        let var = url_env.unwrap_or(DEFAULT_URL_ENV);
        match std::env::var(var) {
            Ok(value) if !value.trim().is_empty() => BrokerUrl::parse(&value),
            _ if url_env.is_some() => Err(UrlError::MissingEnv(var.to_string())),
            _ => BrokerUrl::parse(DEFAULT_URL),
        }
    }

    /// The full URL, for the connection only: never log or print it.
    pub(crate) fn secret(&self) -> &str {
        &self.raw
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// `text` (an error from the client library, say) with this URL and its
    /// password replaced by their redacted forms, in case the text quotes them.
    pub fn scrub(&self, text: &str) -> String {
        scrub(text, &self.raw, &self.redacted)
    }

    /// Whether the connection uses TLS (`amqps://`).
    pub fn is_tls(&self) -> bool {
        self.tls
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BrokerUrl({})", self.redacted)
    }
}

/// The URL with the password of its user-info part replaced by `***`;
/// anything that does not look like a URL with credentials is returned as is.
pub fn redact(raw: &str) -> String {
    let Some(scheme_end) = raw.find("://") else {
        return raw.to_string();
    };
    let rest = &raw[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    // The user-info ends at the last '@' of the authority (a password may hold '@' unescaped).
    let Some(at) = authority.rfind('@') else {
        return raw.to_string();
    };
    let userinfo = &authority[..at];
    let user = match userinfo.find(':') {
        Some(colon) => &userinfo[..colon],
        None => return raw.to_string(),
    };
    format!(
        "{}://{}:***@{}{}",
        &raw[..scheme_end],
        user,
        &authority[at + 1..],
        &rest[authority_end..]
    )
}

/// Replaces the raw URL and its password in a message by the redacted URL.
fn scrub(message: &str, raw: &str, redacted: &str) -> String {
    let mut out = message.replace(raw, redacted);
    if let Some(password) = password_of(raw)
        && !password.is_empty()
    {
        out = out.replace(password, "***");
    }
    out
}

fn password_of(raw: &str) -> Option<&str> {
    let rest = &raw[raw.find("://")? + 3..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let userinfo = &authority[..authority.rfind('@')?];
    Some(&userinfo[userinfo.find(':')? + 1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_everywhere_they_show() {
        let url = BrokerUrl::parse("amqp://app:s3cr%40t@rabbit.example:5672/%2f").unwrap();
        assert_eq!(url.redacted(), "amqp://app:***@rabbit.example:5672/%2f");
        assert!(!format!("{url} {url:?}").contains("s3cr"));
        assert_eq!(url.secret(), "amqp://app:s3cr%40t@rabbit.example:5672/%2f");
        assert!(!url.is_tls());
    }

    #[test]
    fn urls_without_credentials_are_left_alone() {
        assert_eq!(redact("amqp://host:5672/%2f"), "amqp://host:5672/%2f");
        assert_eq!(redact("amqp://user@host/"), "amqp://user@host/");
        assert_eq!(redact("not a url"), "not a url");
    }

    #[test]
    fn amqps_is_tls() {
        let url = BrokerUrl::parse("amqps://u:p@broker:5671/vh").unwrap();
        assert!(url.is_tls());
        assert_eq!(url.to_string(), "amqps://u:***@broker:5671/vh");
    }

    #[test]
    fn parse_errors_do_not_leak_the_password() {
        let err = BrokerUrl::parse("http://u:hunter2@host/")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains("u:***@host"), "{err}");
    }

    #[test]
    fn a_named_variable_that_is_missing_is_an_error() {
        let err = BrokerUrl::resolve(None, Some("LANEWAY_TEST_SURELY_UNSET_VAR")).unwrap_err();
        assert_eq!(
            err,
            UrlError::MissingEnv("LANEWAY_TEST_SURELY_UNSET_VAR".into())
        );
        assert!(BrokerUrl::resolve(Some("amqp://h/"), None).is_ok());
    }
}
