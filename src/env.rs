//! Values a config names rather than holds: a URL read from an environment
//! variable, a secret read from a variable or a file.
//!
//! Invariants: an explicitly named variable that is unset is an error
//! naming the variable, never a silent fall-back to a default; a secret's
//! value never appears in an error (only where it was looked for).

use std::path::Path;

use crate::secret::Secret;

/// `url` when given; else the variable `url_env` (or `default_env` when
/// none is named) when it is set and not blank; else `default_url`, unless
/// `url_env` named the variable explicitly: then the error is its name.
/// (Only the broker adapters name URLs.)
#[cfg_attr(
    not(any(feature = "amqp", feature = "amqp1", feature = "pulsar")),
    allow(dead_code)
)]
pub(crate) fn url_text(
    url: Option<&str>,
    url_env: Option<&str>,
    default_env: &str,
    default_url: &str,
) -> Result<String, String> {
    if let Some(url) = url {
        return Ok(url.to_string());
    }
    let var = url_env.unwrap_or(default_env);
    match std::env::var(var) {
        Ok(value) if !value.trim().is_empty() => Ok(value),
        _ if url_env.is_some() => Err(var.to_string()),
        _ => Ok(default_url.to_string()),
    }
}

/// A secret from `file` (its trailing whitespace dropped), or else from the
/// variable `var`; `what` (such as "AccessKey secret") names it in errors.
/// An empty secret is an error too.
/// (Only the `amqp1` and `pulsar` presets and the HTTP sink's headers
/// read secrets.)
#[cfg_attr(
    not(any(feature = "amqp1", feature = "pulsar", feature = "http")),
    allow(dead_code)
)]
pub(crate) fn read_secret(file: Option<&Path>, var: &str, what: &str) -> Result<Secret, String> {
    let secret = match file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("reading the {what} file {}: {e}", path.display()))?
            .trim_end()
            .to_string(),
        None => std::env::var(var).map_err(|_| {
            format!("environment variable {var} is not set (it should hold the {what})")
        })?,
    };
    if secret.is_empty() {
        return Err(format!("the {what} is empty"));
    }
    Ok(Secret::new(secret))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn a_named_variable_must_be_set_and_a_default_one_falls_back() {
        let unset = "LANEWAY_TEST_SURELY_UNSET_URL_VAR";
        assert_eq!(
            url_text(Some("x://a"), Some(unset), unset, "d"),
            Ok("x://a".into())
        );
        assert_eq!(url_text(None, Some(unset), "OTHER", "d"), Err(unset.into()));
        assert_eq!(url_text(None, None, unset, "x://d"), Ok("x://d".into()));
    }

    #[test]
    fn a_secret_comes_from_its_file_and_never_shows_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "s3cret\n").unwrap();
        assert_eq!(
            read_secret(Some(&file), "UNUSED", "key"),
            Ok(Secret::new("s3cret"))
        );
        std::fs::write(&file, "\n").unwrap();
        assert_eq!(
            read_secret(Some(&file), "UNUSED", "key"),
            Err("the key is empty".into())
        );
        let e = read_secret(None, "LANEWAY_TEST_SURELY_UNSET_SECRET", "key").unwrap_err();
        assert!(e.contains("LANEWAY_TEST_SURELY_UNSET_SECRET"), "{e}");
    }
}
