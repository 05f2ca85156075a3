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
        let mut shown = self.url.clone();
        if shown.password().is_some() {
            // set_password only fails for URLs that cannot have credentials,
            // and those cannot have a password to hide either.
            let _ = shown.set_password(Some("***"));
        }
        shown.to_string()
    }
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
        let s = SecretString::new("whsec_abc".into());
        assert!(!format!("{s}{s:?}").contains("abc"));
    }

    #[test]
    fn parse_error_does_not_echo_input() {
        let e = SecretUrl::parse("mysql//app:hunter2@").unwrap_err();
        assert!(!e.contains("hunter2"));
    }
}
