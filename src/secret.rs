//! Values that must never reach a log line, an error message or `Debug` output.
//!
//! Operators paste `HERALD_DATABASE_URL=mysql://app:hunter2@db/herald` into their
//! deployment; that string flows into `Debug` prints of the configuration, into
//! connection errors and into tracing fields. Wrapping it once at parse time is
//! the only way to be sure every one of those paths shows `***` instead.

use std::fmt;
use std::str::FromStr;

/// A string secret (a webhook signing key, a password). `Debug` and `Display`
/// print `***`; the value is only reachable through [`SecretString::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The raw value, for the one place that needs it (signing, connecting).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString(***)")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl FromStr for SecretString {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// A URL that may carry a password (`scheme://user:password@host/...`).
///
/// `Display` and `Debug` show the URL with the password replaced by `***`, so
/// the redacted form can be used freely in logs and errors.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl {
    url: url::Url,
}

impl SecretUrl {
    /// Parses `raw`; the error message never repeats the input, because a URL
    /// that fails to parse may still contain a password.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let url = url::Url::parse(raw.trim()).map_err(|e| format!("not a valid URL ({e})"))?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err("the URL has no host".into());
        }
        Ok(Self { url })
    }

    /// The full URL including the password, for connecting.
    pub fn expose(&self) -> &str {
        self.url.as_str()
    }

    pub fn url(&self) -> &url::Url {
        &self.url
    }

    pub fn scheme(&self) -> &str {
        self.url.scheme()
    }

    /// The URL with the password (if any) replaced by `***`.
    pub fn redacted(&self) -> String {
        redact_url(&self.url)
    }
}

/// A parsed URL with its password (if any) and the value of each query
/// parameter replaced by `***`: the one redaction every typed URL in Herald
/// goes through. Query values go too because webhook receivers commonly
/// take their token there (`?token=…`); the names stay, for debugging.
pub fn redact_url(url: &url::Url) -> String {
    if url.password().is_none() && url.query().is_none() {
        return url.to_string();
    }
    let mut shown = url.clone();
    if url.password().is_some() {
        // set_password only fails for URLs that cannot have credentials,
        // and those cannot have a password to hide either.
        let _ = shown.set_password(Some("***"));
    }
    if let Some(query) = url.query() {
        let masked: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) => format!("{name}=***"),
                None => "***".to_owned(),
            })
            .collect();
        shown.set_query(Some(&masked.join("&")));
    }
    shown.to_string()
}

/// Byte ranges of `raw` that may be URL credentials, for echoing raw setting
/// text that may not parse as a URL at all.
///
/// Raw input cannot be trusted to follow URL syntax: a password may hold
/// `/`, `#` or `,` (which ends a list entry), so the authority cannot be
/// found the way a URL parser would. Instead, everything between a `://`
/// and the last `@` before the next `://` counts as user info
/// and is hidden whole (user names too: a bare token has no `:`). This
/// over-redacts a path holding an `@`, which is the safe way to be wrong.
/// Likewise everything after a `?` up to the next `://` counts as a query
/// that may carry a token (it may also swallow the next list entries).
pub fn secret_spans(raw: &str) -> Vec<std::ops::Range<usize>> {
    let starts: Vec<usize> = raw.match_indices("://").map(|(i, _)| i + 3).collect();
    let mut spans = Vec::new();
    for (n, &start) in starts.iter().enumerate() {
        let end = starts.get(n + 1).map_or(raw.len(), |&next| next - 3);
        let mut rest = start;
        if let Some(at) = raw[start..end].rfind('@') {
            if at > 0 {
                spans.push(start..start + at);
            }
            rest = start + at;
        }
        if let Some(q) = raw[rest..end].find('?') {
            if rest + q + 1 < end {
                spans.push(rest + q + 1..end);
            }
        }
    }
    spans
}

/// `text` (which starts at byte `offset` of the raw value the spans were
/// computed on) with every byte inside `spans` shown as `***`.
pub fn mask(text: &str, offset: usize, spans: &[std::ops::Range<usize>]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut masked = false;
    for (i, c) in text.char_indices() {
        if spans.iter().any(|s| s.contains(&(offset + i))) {
            if !masked {
                out.push_str("***");
            }
            masked = true;
        } else {
            out.push(c);
            masked = false;
        }
    }
    out
}

/// Raw setting text with anything that may be a URL credential replaced by
/// `***`; see [`secret_spans`].
pub fn redact_text(raw: &str) -> String {
    mask(raw, 0, &secret_spans(raw))
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({})", self.redacted())
    }
}

impl FromStr for SecretUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_hidden_everywhere() {
        let u = SecretUrl::parse("mysql://app:hunter2@db:3306/herald").unwrap();
        assert!(!format!("{u}").contains("hunter2"));
        assert!(!format!("{u:?}").contains("hunter2"));
        assert!(u.expose().contains("hunter2"));
        let u = SecretUrl::parse("https://h/in?token=T0k3n&flag").unwrap();
        assert_eq!(u.to_string(), "https://h/in?token=***&***");
        let s = SecretString::new("whsec_abc".into());
        assert!(!format!("{s}{s:?}").contains("abc"));
    }

    #[test]
    fn raw_text_hides_credentials_of_any_shape() {
        for (raw, secret) in [
            ("x=webhook:http://u:S3cr3t/pw@127.0.0.1/h", "S3cr3t"),
            ("x=webhook:http://u:S3#cr3t@127.0.0.1/h", "cr3t"),
            ("redis://:hunter2@a:6379,redis://b", "hunter2"),
            ("https://tok3n@h/x", "tok3n"),
            ("mysql://u:p@ssw0rd@h/db", "ssw0rd"),
            ("x=webhook:https://h/in?token=T0k3n", "T0k3n"),
            ("x=webhook:https://u:p@h/in?a=1&token=T0k3n,y=log", "T0k3n"),
        ] {
            let shown = redact_text(raw);
            assert!(!shown.contains(secret), "{raw} -> {shown}");
            assert!(shown.contains("***"), "{raw} -> {shown}");
        }
        assert_eq!(redact_text("a=log,b=file:/tmp/x"), "a=log,b=file:/tmp/x");
        // A password with a comma: the first entry's share is masked too.
        let raw = "x=webhook:http://u:S3c,r3t@h/";
        let spans = secret_spans(raw);
        assert_eq!(
            mask("x=webhook:http://u:S3c", 0, &spans),
            "x=webhook:http://***"
        );
    }

    #[test]
    fn parse_error_does_not_echo_input() {
        let e = SecretUrl::parse("mysql//app:hunter2@").unwrap_err();
        assert!(!e.contains("hunter2"));
    }
}
