//! Credentials out of what the gateway prints. A Redis URL carries its password
//! (`redis://:pw@host`, or `?pass=pw` for a Unix socket), and the gateway names the Redis it
//! talks to in logs at every reconnection, in `/ready` and in errors; logs go to pipelines that
//! far more people read than may log in to Redis. So every URL is printed through [`url`], and
//! one that may carry a secret is held as a [`SecretUrl`], which cannot be printed whole.

use std::borrow::Cow;
use std::fmt;

/// What stands where a secret was: its presence says credentials are configured.
const MASK: &str = "***";

/// Query parameters whose value is a secret (redis-rs reads `pass` for a Unix socket).
const SECRET_PARAMS: [&str; 2] = ["pass", "password"];

/// `text`, a URL, without its secrets: the password of its user info (the user name before a
/// `:` is kept: it says which ACL user connects; user info without a `:` is masked whole, as it
/// may be a password written in the wrong place) and the values of `pass` and `password` query
/// parameters. Works on text that does not parse as a URL, which is when errors print it: the
/// user info runs to the last `@` before the query, so a password holding a raw `/` or `@` is
/// still masked whole.
pub(crate) fn url(text: &str) -> Cow<'_, str> {
    let authority = text.find("://").map_or(0, |i| i + 3);
    let query = text[authority..].find(['?', '#']).map_or(text.len(), |i| authority + i);
    // What is masked so far, and from where `text` is still to be copied.
    let mut out = String::new();
    let mut rest = 0;
    if let Some(at) = text[authority..query].rfind('@').map(|i| authority + i) {
        out.push_str(&text[..authority]);
        match text[authority..at].split_once(':') {
            Some((user, _)) => out.push_str(&format!("{user}:{MASK}")),
            None => out.push_str(MASK),
        }
        rest = at;
    }
    if text[query..].starts_with('?') {
        let end = text[query..].find('#').map_or(text.len(), |i| query + i);
        let params: Vec<Cow<'_, str>> = text[query + 1..end]
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((name, _)) if SECRET_PARAMS.iter().any(|s| name.eq_ignore_ascii_case(s)) => {
                    Cow::Owned(format!("{name}={MASK}"))
                }
                _ => Cow::Borrowed(param),
            })
            .collect();
        if params.iter().any(|p| matches!(p, Cow::Owned(_))) {
            out.push_str(&format!("{}?{}", &text[rest..query], params.join("&")));
            rest = end;
        }
    }
    if out.is_empty() {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(out + &text[rest..])
    }
}

/// A URL that may carry credentials (a Redis node's): given whole only to what connects with
/// it ([`SecretUrl::expose`]), and printed, by `{}` and `{:?}` alike, through [`url`], so no log
/// line or error can hold the secret by mistake.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct SecretUrl(String);

impl SecretUrl {
    /// Holds `url`.
    pub(crate) fn new(url: impl Into<String>) -> Self {
        SecretUrl(url.into())
    }

    /// The URL with its credentials, to connect with; never to print.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&url(&self.0))
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&url(&self.0), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked_and_the_rest_is_kept() {
        let cases = [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("redis://:pw@127.0.0.1:6379/2", "redis://:***@127.0.0.1:6379/2"),
            (
                "rediss://app:pw@redis.internal:6380",
                "rediss://app:***@redis.internal:6380",
            ),
            ("redis://pw@host", "redis://***@host"),
            ("redis://:p@ss/w:rd@host:1", "redis://:***@host:1"),
            (
                "redis+unix:///run/redis.sock?db=1&pass=pw&user=app",
                "redis+unix:///run/redis.sock?db=1&pass=***&user=app",
            ),
            (
                "unix:///run/redis.sock?PASSWORD=pw#x",
                "unix:///run/redis.sock?PASSWORD=***#x",
            ),
            ("redis://:pw@host?pass=pw", "redis://:***@host?pass=***"),
            (
                "http://ops:pw@gw:8080/experiments/e/results?by=day",
                "http://ops:***@gw:8080/experiments/e/results?by=day",
            ),
            ("not a url :pw@", "not a url :***@"),
            ("pw@", "***@"),
            ("", ""),
        ];
        for (given, printed) in cases {
            assert_eq!(url(given), printed, "{given}");
        }
        assert!(
            matches!(url("redis://host:1?db=2"), Cow::Borrowed(_)),
            "nothing to mask, nothing copied"
        );
    }

    #[test]
    fn a_secret_url_prints_masked_and_connects_whole() {
        let node = SecretUrl::new("redis://:pw@127.0.0.1:7000");
        assert_eq!(node.to_string(), "redis://:***@127.0.0.1:7000");
        assert_eq!(
            format!("{:?}", vec![node.clone()]),
            r#"["redis://:***@127.0.0.1:7000"]"#
        );
        assert_eq!(node.expose(), "redis://:pw@127.0.0.1:7000");
    }
}
