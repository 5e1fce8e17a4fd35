//! The `Host` check: a request reaches the endpoints only when it names
//! the listener by a loopback name, by its listen address, or by a name
//! the operator allowed.
//!
//! Why: a web page on another site can make a browser resolve its own name
//! to 127.0.0.1 (DNS rebinding) and then read `/status` as same-origin.
//! The browser still sends that foreign name as `Host`, so refusing
//! unknown names closes the hole. A request without a `Host` (HTTP/1.1
//! requires one) is refused too.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderValue;
use axum::http::uri::Authority;

/// Which `Host` values the listener answers.
#[derive(Debug, Clone)]
pub(crate) struct HostPolicy {
    listen: IpAddr,
    /// Lower-case names without port; `"*"` allows any.
    allowed: Vec<String>,
}

impl HostPolicy {
    /// The policy of a listener bound to `listen` with `allowed_hosts`.
    pub(crate) fn new(listen: SocketAddr, allowed_hosts: &[String]) -> HostPolicy {
        HostPolicy {
            listen: listen.ip(),
            allowed: allowed_hosts
                .iter()
                .map(|h| normalize(h).unwrap_or_else(|| h.to_ascii_lowercase()))
                .collect(),
        }
    }

    /// Whether a request with this `Host` header is answered.
    pub(crate) fn allows(&self, host: Option<&HeaderValue>) -> bool {
        let Some(name) = host.and_then(|h| h.to_str().ok()).and_then(normalize) else {
            return false;
        };
        if self.allowed.iter().any(|a| a == "*" || *a == name) {
            return true;
        }
        match name.parse::<IpAddr>() {
            Ok(ip) => ip.is_loopback() || (ip == self.listen && !ip.is_unspecified()),
            Err(_) => name == "localhost" || name.ends_with(".localhost"),
        }
    }
}

/// The host part of a `Host` value: lower case, without port, brackets or
/// a trailing dot; `None` when it is no host (empty, or with user info).
fn normalize(value: &str) -> Option<String> {
    if value.contains('@') {
        return None;
    }
    let authority: Authority = value.trim().parse().ok()?;
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let host = host.strip_suffix('.').unwrap_or(host);
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(policy: &HostPolicy, host: &str) -> bool {
        policy.allows(Some(&HeaderValue::from_str(host).unwrap()))
    }

    #[test]
    fn loopback_names_and_the_listen_address_pass_others_do_not() {
        let p = HostPolicy::new("127.0.0.1:9464".parse().unwrap(), &[]);
        for ok in [
            "127.0.0.1:9464",
            "127.0.0.1",
            "localhost:9464",
            "LOCALHOST",
            "localhost.",
            "[::1]:9464",
            "127.0.0.2",
            "app.localhost:1",
        ] {
            assert!(allows(&p, ok), "{ok}");
        }
        for refused in [
            "evil.example",
            "evil.example:9464",
            "127.0.0.1.nip.io",
            "10.0.0.1:9464",
            "user@127.0.0.1",
            "",
        ] {
            assert!(!allows(&p, refused), "{refused}");
        }
        assert!(!p.allows(None));
    }

    #[test]
    fn the_listen_address_and_allowed_names_pass() {
        let p = HostPolicy::new(
            "10.1.2.3:9464".parse().unwrap(),
            &["Dash.Example".to_string()],
        );
        assert!(allows(&p, "10.1.2.3:9464"));
        assert!(allows(&p, "dash.example:80"));
        assert!(!allows(&p, "10.1.2.4"));
        let any = HostPolicy::new("0.0.0.0:9464".parse().unwrap(), &["*".to_string()]);
        assert!(allows(&any, "whatever.example"));
        let unspecified = HostPolicy::new("0.0.0.0:9464".parse().unwrap(), &[]);
        assert!(!allows(&unspecified, "0.0.0.0:9464"));
    }
}
