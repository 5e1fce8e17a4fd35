//! Broker URLs: where they come from (the config, an environment variable,
//! the default) and how they are shown. Shared by the AMQP 0-9-1 source,
//! sink and backlog store (`amqp`, which re-exports this module as
//! `amqp::url`), the AMQP 1.0 source (`amqp1`) and, for [`redact`], the
//! Pulsar source: a leaf that needs none of them.
//!
//! [`redact`] is always there; `BrokerUrl`, which parses with the AMQP URI
//! grammar (`amq-protocol-uri`), comes with the `amqp` or `amqp1` feature.
//!
//! Invariant: a password never leaves this module in text meant for people.
//! `BrokerUrl` keeps the full URL private and its `Display` and `Debug`
//! show the redacted form (`amqp://user:***@host:5672/%2f`), so a log line
//! or an error that formats a `BrokerUrl` cannot leak a credential.
//!
//! The redaction rule ([`redact`]): the password is always replaced by
//! `***` and the user name is kept (it says which login failed), unless the
//! user info cannot be split into user and password (an unescaped `@` in
//! it): then all of it is hidden. Text that is no URL at all (no `://`) is
//! shown as `<unparseable URL>`, since it may be a password pasted into
//! the wrong knob. A URL whose user info holds an unescaped `@`, or names
//! an empty user, is refused: the first would send part of the password as
//! the user name, the second would log in as the default account.

#[cfg(any(feature = "amqp", feature = "amqp1"))]
use std::fmt;
#[cfg(any(feature = "amqp", feature = "amqp1"))]
use std::str::FromStr;

#[cfg(any(feature = "amqp", feature = "amqp1"))]
use amq_protocol_uri::{AMQPScheme, AMQPUri};

#[cfg(any(feature = "amqp", feature = "amqp1"))]
/// The environment variable consulted when no URL is configured.
pub const DEFAULT_URL_ENV: &str = "AMQP_URL";

#[cfg(any(feature = "amqp", feature = "amqp1"))]
/// The URL used when neither the config nor the environment names one: a
/// local RabbitMQ with its default account.
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

#[cfg(any(feature = "amqp", feature = "amqp1"))]
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
    /// The URL would send its password in clear to another machine.
    #[error(
        "{redacted}: a plain connection (not TLS) would send the password in clear to a host that is not this machine; use amqps://, or set allow_plaintext = true"
    )]
    Plaintext {
        /// The URL, password redacted.
        redacted: String,
    },
}

#[cfg(any(feature = "amqp", feature = "amqp1"))]
impl From<UrlError> for crate::knob::KnobError {
    /// A URL error is placed at the `url` knob; its text says the rest.
    fn from(e: UrlError) -> Self {
        crate::knob::KnobError::said("url", e.to_string())
    }
}

#[cfg(any(feature = "amqp", feature = "amqp1"))]
/// A parsed broker URL whose password is never displayed.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    raw: String,
    redacted: String,
    tls: bool,
    user: String,
    password: String,
    host: String,
    port: u16,
    vhost: String,
}

#[cfg(any(feature = "amqp", feature = "amqp1"))]
impl BrokerUrl {
    /// Parses and checks a URL (`amqp://` or `amqps://`).
    ///
    /// A password must be percent-encoded: one holding an unescaped `/`,
    /// `?` or `#` would end the URL's authority early and be read as a host,
    /// port or path, so such a URL is refused (and shown with everything up
    /// to its last `@` redacted).
    pub fn parse(raw: &str) -> Result<BrokerUrl, UrlError> {
        let raw = raw.trim();
        let redacted = redact(raw);
        if !raw.contains("://") {
            return Err(UrlError::Invalid {
                redacted,
                reason: "not a URL (expected amqp://user:password@host:port/vhost)".into(),
            });
        }
        if let Some(userinfo) = userinfo(raw) {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            if user.contains('@') {
                return Err(UrlError::Invalid {
                    redacted,
                    reason: "the user info holds an unescaped '@': percent-encode '@' in the user \
                             name and password (%40), and separate them with ':'"
                        .into(),
                });
            }
            if user.is_empty() {
                return Err(UrlError::Invalid {
                    redacted,
                    reason: "the URL names no user before its '@': give the user name (an empty \
                             one would log in as the default account)"
                        .into(),
                });
            }
        }
        if ambiguous_userinfo(raw) {
            return Err(UrlError::Invalid {
                redacted,
                reason: "an '@' follows the host part: percent-encode '/', '?', '#' and '@' \
                         in the user name and password (%2F, %3F, %23, %40), and '@' in the \
                         virtual host"
                    .into(),
            });
        }
        let uri = AMQPUri::from_str(raw).map_err(|reason| UrlError::Invalid {
            redacted: redacted.clone(),
            // The parser's message may quote the URL; keep only what is safe.
            reason: scrub(&reason, raw, &redacted),
        })?;
        Ok(BrokerUrl {
            raw: raw.to_string(),
            redacted,
            tls: uri.scheme == AMQPScheme::AMQPS,
            user: uri.authority.userinfo.username,
            password: uri.authority.userinfo.password,
            host: uri.authority.host,
            port: uri.authority.port,
            vhost: uri.vhost,
        })
    }

    /// The user name the URL logs in with (not a secret: shown in errors).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The password, decoded, for a login that sends it apart from the
    /// URL (SASL PLAIN over AMQP 1.0): never log or print it.
    #[cfg_attr(not(feature = "amqp1"), allow(dead_code))]
    pub(crate) fn password(&self) -> &str {
        &self.password
    }

    /// The broker's host name or address.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The broker's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The virtual host, decoded (`/` for `%2f`).
    pub fn vhost(&self) -> &str {
        &self.vhost
    }

    /// Resolves the URL of a source or sink: `url` when given, else the
    /// variable `url_env` (default [`DEFAULT_URL_ENV`]), else [`DEFAULT_URL`]
    /// when no variable was named explicitly.
    pub fn resolve(url: Option<&str>, url_env: Option<&str>) -> Result<BrokerUrl, UrlError> {
        BrokerUrl::resolve_or(url, url_env, DEFAULT_URL_ENV, DEFAULT_URL)
    }

    /// [`BrokerUrl::resolve`] with another default variable and URL (the
    /// AMQP 1.0 source's, whose URLs carry no virtual host).
    pub fn resolve_or(
        url: Option<&str>,
        url_env: Option<&str>,
        default_env: &str,
        default_url: &str,
    ) -> Result<BrokerUrl, UrlError> {
        let url = crate::env::url_text(url, url_env, default_env, default_url)
            .map_err(UrlError::MissingEnv)?;
        BrokerUrl::parse(&url)
    }

    /// The full URL, for the connection only (AMQP 0-9-1 connects with
    /// it): never log or print it.
    #[cfg_attr(not(feature = "amqp"), allow(dead_code))]
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

    /// Whether logging in sends a password the URL gives in clear across a
    /// network: no TLS, a password in the URL, and a host that is not this
    /// machine (a loopback address or `localhost`).
    pub fn sends_password_in_clear(&self) -> bool {
        let has_password = userinfo(&self.raw).is_some_and(|u| u.contains(':'));
        !self.tls && has_password && !is_loopback(&self.host)
    }

    /// Refuses a URL that [sends its password in
    /// clear](BrokerUrl::sends_password_in_clear) unless `allowed` (the
    /// `allow_plaintext` knob; [`BrokerUrl::warn_if_plaintext`] then says
    /// so when the client is made).
    pub fn check_plaintext(&self, allowed: bool) -> Result<(), UrlError> {
        if allowed || !self.sends_password_in_clear() {
            return Ok(());
        }
        Err(UrlError::Plaintext {
            redacted: self.redacted.clone(),
        })
    }

    /// Logs a WARN when this URL's password crosses the network in clear
    /// (allowed by `allow_plaintext`): called once when a client is made.
    pub fn warn_if_plaintext(&self) {
        if self.sends_password_in_clear() {
            tracing::warn!(url = %self.redacted, "allow_plaintext is set: the password crosses the network in clear");
        }
    }
}

/// Whether `host` names this machine.
#[cfg(any(feature = "amqp", feature = "amqp1"))]
fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(any(feature = "amqp", feature = "amqp1"))]
impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

#[cfg(any(feature = "amqp", feature = "amqp1"))]
impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BrokerUrl({})", self.redacted)
    }
}

/// The URL with the password of its user-info part replaced by `***`,
/// the user name kept; user info that cannot be split into user and
/// password (an unescaped `@` without a `:` before it) is hidden whole;
/// text that is no URL (no `://`) is `<unparseable URL>`. A URL without
/// user info is returned as is.
///
/// When an `@` appears after the host part (a password holding an
/// unescaped `/`, `?` or `#` looks like that), everything from the first
/// `:` of the user info up to the last `@` is taken as the password: when
/// in doubt, too much is hidden rather than too little.
pub fn redact(raw: &str) -> String {
    let Some(scheme_end) = raw.find("://") else {
        return UNPARSEABLE.to_string();
    };
    if let Some((scheme, user, _password, after)) = split_userinfo(raw) {
        if user.contains('@') {
            return format!("{scheme}://***@{after}");
        }
        return format!("{scheme}://{user}:***@{after}");
    }
    match userinfo(raw) {
        Some(info) if info.contains('@') => {
            let rest = &raw[scheme_end + 3..];
            let after = rest.rfind('@').map_or("", |at| &rest[at + 1..]);
            format!("{}://***@{after}", &raw[..scheme_end])
        }
        _ => raw.to_string(),
    }
}

/// How text that is no URL at all is shown.
const UNPARSEABLE: &str = "<unparseable URL>";

/// The user info of `scheme://userinfo@rest` (up to the last `@`), if any.
fn userinfo(raw: &str) -> Option<&str> {
    let scheme_end = raw.find("://")?;
    let rest = &raw[scheme_end + 3..];
    rest.rfind('@').map(|at| &rest[..at])
}

/// Splits `scheme://user:password@rest` at the user info:
/// `(scheme, user, password, rest)`.
fn split_userinfo(raw: &str) -> Option<(&str, &str, &str, &str)> {
    let scheme_end = raw.find("://")?;
    let rest = &raw[scheme_end + 3..];
    // The user info ends at the last '@' (a password may hold '@', '/', '?'
    // or '#' unescaped; an '@' in the path is rare and then over-redacted).
    let at = rest.rfind('@')?;
    let userinfo = &rest[..at];
    let colon = userinfo.find(':')?;
    Some((
        &raw[..scheme_end],
        &userinfo[..colon],
        &userinfo[colon + 1..],
        &rest[at + 1..],
    ))
}

#[cfg(any(feature = "amqp", feature = "amqp1"))]
/// Whether the user info cannot be told from the rest: an `@` after the
/// first `/`, `?` or `#` that follows the scheme, with a `:` before it.
fn ambiguous_userinfo(raw: &str) -> bool {
    let Some(scheme_end) = raw.find("://") else {
        return false;
    };
    let rest = &raw[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    rest[authority_end..].contains('@') && split_userinfo(raw).is_some()
}

#[cfg(any(feature = "amqp", feature = "amqp1"))]
/// Replaces the raw URL and its password (as written and percent-decoded)
/// in a message by their redacted forms.
fn scrub(message: &str, raw: &str, redacted: &str) -> String {
    let mut out = message.replace(raw, redacted);
    if !raw.contains("://") && !raw.is_empty() {
        return out;
    }
    if let Some(info) = userinfo(raw)
        && info.contains('@')
        && !info.is_empty()
    {
        // Which part is the password cannot be told: none of it shows.
        for piece in info.split([':', '@']).filter(|p| p.len() >= 3) {
            out = out.replace(piece, "***");
        }
    }
    if let Some((_, _, password, _)) = split_userinfo(raw)
        && !password.is_empty()
    {
        out = out.replace(password, "***");
        let decoded = String::from_utf8_lossy(&percent_decode(password)).into_owned();
        if !decoded.is_empty() {
            out = out.replace(&decoded, "***");
        }
    }
    out
}

#[cfg(any(feature = "amqp", feature = "amqp1", feature = "http"))]
/// `%XX` sequences decoded, the rest kept as it is: a URL's user info
/// is percent-encoded (the HTTP sink's basic authentication, and finding
/// a password's decoded form in text to hide it).
pub(crate) fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(any(feature = "amqp", feature = "amqp1"))]
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
        assert_eq!(redact("not a url"), "<unparseable URL>");
    }

    #[cfg(any(feature = "amqp", feature = "amqp1"))]
    #[test]
    fn a_password_in_clear_to_another_machine_is_refused_unless_allowed() {
        let remote = BrokerUrl::parse("amqp://app:s3cret@rabbit.example:5672/%2f").unwrap();
        let e = remote.check_plaintext(false).unwrap_err().to_string();
        assert!(e.contains("in clear") && !e.contains("s3cret"), "{e}");
        assert!(remote.check_plaintext(true).is_ok());
        for fine in [
            "amqps://app:s3cret@rabbit.example:5671/%2f",
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            "amqp://guest:guest@localhost/%2f",
            "amqp://guest:guest@[::1]:5672/%2f",
            "amqp://app@rabbit.example/%2f",
            "amqp://rabbit.example/%2f",
        ] {
            let url = BrokerUrl::parse(fine).unwrap();
            assert!(url.check_plaintext(false).is_ok(), "{fine}");
        }
    }

    #[cfg(any(feature = "amqp", feature = "amqp1"))]
    #[test]
    fn amqps_is_tls() {
        let url = BrokerUrl::parse("amqps://u:p@broker:5671/vh").unwrap();
        assert!(url.is_tls());
        assert_eq!(url.to_string(), "amqps://u:***@broker:5671/vh");
    }

    #[cfg(any(feature = "amqp", feature = "amqp1"))]
    #[test]
    fn parse_errors_do_not_leak_the_password() {
        let err = BrokerUrl::parse("http://u:hunter2@host/")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains("u:***@host"), "{err}");
    }

    #[cfg(any(feature = "amqp", feature = "amqp1"))]
    #[test]
    fn passwords_with_unescaped_delimiters_never_show() {
        for (url, password) in [
            ("amqp://app:Qx7/Zk9@rabbit:5672/%2f", "Qx7/Zk9"),
            ("amqp://app:Qx7?Zk9@rabbit:5672/%2f", "Qx7?Zk9"),
            ("amqp://app:Qx7#Zk9@rabbit:5672/%2f", "Qx7#Zk9"),
            ("amqp://app:123#456@rabbit:5672/%2f", "123#456"),
            ("amqp://app:123?456@rabbit/", "123?456"),
            ("amqp://app:Qx7/Zk9?Wm4#Jv2@rabbit/vh", "Qx7/Zk9?Wm4#Jv2"),
            ("amqps://app:Qx7@Zk9/Wm4#Jv2@rabbit/", "Qx7@Zk9/Wm4#Jv2"),
            ("amqp://app:%2FQx7%40Zk9@rabbit/", "%2FQx7%40Zk9"),
        ] {
            let pieces: Vec<&str> = password
                .split(['/', '?', '#', '@', '%'])
                .filter(|p| p.len() >= 3)
                .collect();
            assert!(!pieces.is_empty());
            let shown = match BrokerUrl::parse(url) {
                Ok(u) => format!("{u} {u:?} {}", u.scrub(&format!("x {url} {password}"))),
                Err(e) => format!("{e} {e:?}"),
            };
            for piece in &pieces {
                assert!(!shown.contains(piece), "{url}: {shown}");
            }
            assert!(shown.contains("app:***@"), "{url}: {shown}");
            assert!(!redact(url).contains(password), "{url}");
        }
        let err = BrokerUrl::parse("amqp://app:Qx7/Zk9@rabbit/")
            .unwrap_err()
            .to_string();
        assert!(err.contains("percent-encode"), "{err}");
        let ok = BrokerUrl::parse("amqp://app:pa%2Fss@rabbit:5673/v").unwrap();
        assert_eq!(
            (ok.user(), ok.host(), ok.port(), ok.vhost()),
            ("app", "rabbit", 5673, "v")
        );
        let scrubbed = ok.scrub("the password pa/ss leaked");
        assert!(!scrubbed.contains("pa/ss"), "{scrubbed}");
    }

    #[cfg(any(feature = "amqp", feature = "amqp1"))]
    #[test]
    fn user_info_that_cannot_be_split_and_text_that_is_no_url_never_show() {
        for (url, shown) in [
            (
                "amqp://user@Zq9-SECRET@127.0.0.1:5672/vh",
                "amqp://***@127.0.0.1:5672/vh",
            ),
            ("Zq9-SECRET", "<unparseable URL>"),
            ("amqp:/u:Zq9-SECRET@h/", "<unparseable URL>"),
            (
                "amqp://us@er:Zq9-SECRET@127.0.0.1/",
                "amqp://***@127.0.0.1/",
            ),
        ] {
            let err = BrokerUrl::parse(url).unwrap_err();
            let text = format!("{err} {err:?}");
            assert!(!text.contains("Zq9"), "{url}: {text}");
            assert!(!text.contains("SECRET"), "{url}: {text}");
            assert!(text.contains(shown), "{url}: {text}");
            assert_eq!(redact(url), shown);
        }
    }

    #[cfg(any(feature = "amqp", feature = "amqp1"))]
    #[test]
    fn an_empty_user_is_an_error_not_the_default_account() {
        for url in [
            "amqp://:Zq9-SECRET@127.0.0.1:5672/%2f",
            "amqp://@127.0.0.1/",
        ] {
            let err = BrokerUrl::parse(url).unwrap_err().to_string();
            assert!(err.contains("names no user"), "{url}: {err}");
            assert!(!err.contains("Zq9"), "{err}");
        }
        // No user info at all is the documented default account.
        assert!(BrokerUrl::parse("amqp://127.0.0.1/").is_ok());
    }

    #[cfg(any(feature = "amqp", feature = "amqp1"))]
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
