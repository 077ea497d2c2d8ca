//! A string that must never be printed: cloud keys, tokens, passwords, webhook URLs with keys in them.
//!
//! Owns masking: the [`Secret`] wrapper, and [`Redactor`], which scrubs known secrets out of text that
//! came from outside (an error body, a library's error message). It does not decide where secrets come
//! from (see `credentials`).

use std::fmt;

use serde::Deserialize;

/// A secret value. `Debug` and `Display` print `***`; only [`Secret::expose`] gives the value.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself. Call this only where the value leaves the process on purpose
    /// (an HMAC key, an `AUTH` command, a request header).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

/// Scrubs known secret strings out of text before it goes into an error or a log line: a webhook that
/// echoes its key in an error body, a client error that quotes the URL. `Debug` shows only how many
/// strings it knows.
#[derive(Clone, Default)]
pub struct Redactor {
    // Longest first, so a secret inside another does not leave the rest of the longer one behind.
    needles: Vec<String>,
}

/// Parts shorter than this are not treated as secrets on their own (`?v=1`, `/send`): replacing them
/// would mangle the text without protecting anything.
const MIN_SECRET_LEN: usize = 6;

impl Redactor {
    /// Knows `secret` itself and, when it is a URL, each part that can hold a key: the password, every
    /// query value, and path segments of 16 characters or more (Slack-style `/services/T../B../<key>`),
    /// each both as written and percent-decoded.
    pub fn for_url(secret: &Secret) -> Redactor {
        let mut r = Redactor::default().with(secret.expose());
        if let Ok(url) = reqwest::Url::parse(secret.expose()) {
            if let Some(p) = url.password() {
                r = r.with(p);
            }
            if let Some(q) = url.query() {
                for pair in q.split('&') {
                    if let Some((_, v)) = pair.split_once('=') {
                        r = r.with(v);
                    }
                }
            }
            for (_, v) in url.query_pairs() {
                r = r.with(&v);
            }
            for seg in url.path().split('/').filter(|s| s.len() >= 16) {
                r = r.with(seg);
            }
        }
        r
    }

    /// Also scrubs `secret` (ignored when shorter than 6 characters).
    pub fn with(mut self, secret: &str) -> Redactor {
        if secret.len() >= MIN_SECRET_LEN && !self.needles.iter().any(|n| n == secret) {
            self.needles.push(secret.to_owned());
            self.needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
        }
        self
    }

    /// `text` with every known secret replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for n in &self.needles {
            if out.contains(n.as_str()) {
                out = out.replace(n.as_str(), "***");
            }
        }
        out
    }
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor({} secrets)", self.needles.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("hunter2-very-secret");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some(Secret(***))");
        assert_eq!(s.expose(), "hunter2-very-secret");
    }

    #[test]
    fn a_url_redactor_scrubs_the_url_its_key_and_long_path_segments() {
        let url = Secret::new(
            "https://u:pa55word@hooks.example/services/T0000/B0000/XXXXXXXXXXXXXXXXXXXXXXXX?key=693a91f6-7xxx&v=1",
        );
        let r = Redactor::for_url(&url);
        let text = format!(
            "bad url {}: key 693a91f6-7xxx, hint XXXXXXXXXXXXXXXXXXXXXXXX, user pa55word, v=1",
            url.expose()
        );
        assert_eq!(
            r.redact(&text),
            "bad url ***: key ***, hint ***, user ***, v=1"
        );
        assert_eq!(format!("{r:?}"), "Redactor(4 secrets)");
    }

    #[test]
    fn a_percent_encoded_key_is_scrubbed_in_both_forms() {
        let r = Redactor::for_url(&Secret::new("https://h.example/send?key=ab%2Bcd%2Fef"));
        assert_eq!(r.redact("ab%2Bcd%2Fef and ab+cd/ef"), "*** and ***");
    }
}
