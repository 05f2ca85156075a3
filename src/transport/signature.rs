//! Standard Webhooks signing (<https://www.standardwebhooks.com/>).
//!
//! We sign in the Standard Webhooks format rather than a home-grown one so that
//! a receiver can verify with the library it already has for Svix-style
//! senders: `webhook-signature: v1,<base64(HMAC-SHA256(key, "{id}.{ts}.{body}"))>`.
//!
//! Several secrets at once is how a secret is rotated without a moment of
//! failed verification: the sender signs with the old and the new secret
//! (one space-separated `v1,` signature each, as the standard allows), the
//! receivers switch to the new secret one by one, then the old one is
//! dropped from the sender.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::secret::SecretString;

type HmacSha256 = Hmac<Sha256>;

/// The prefix Standard Webhooks puts in front of base64-encoded keys.
pub const SECRET_PREFIX: &str = "whsec_";

/// Why a configured secret cannot be used. Never contains the secret itself.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("the secret is empty")]
    Empty,
    #[error("the part after \"whsec_\" is not valid base64")]
    BadBase64,
    /// One of several secrets; `index` counts from 1.
    #[error("secret {index}: {reason}")]
    Nth {
        index: usize,
        reason: Box<SecretError>,
    },
}

/// Turns the configured secret into key bytes: `whsec_` + base64 is decoded as
/// the standard prescribes; anything else is used as raw bytes, because many
/// receivers are configured with a plain shared password.
pub fn decode_secret(secret: &SecretString) -> Result<Vec<u8>, SecretError> {
    let raw = secret.expose();
    let key = match raw.strip_prefix(SECRET_PREFIX) {
        Some(b64) => B64.decode(b64.trim()).map_err(|_| SecretError::BadBase64)?,
        None => raw.as_bytes().to_vec(),
    };
    if key.is_empty() {
        return Err(SecretError::Empty);
    }
    Ok(key)
}

/// One or more signing keys, each with its HMAC already keyed, so each
/// delivery only clones a small state instead of re-deriving the
/// inner/outer pads.
#[derive(Clone)]
pub struct Signer {
    macs: Vec<HmacSha256>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(***)")
    }
}

impl Signer {
    pub fn new(key: &[u8]) -> Self {
        Self {
            macs: vec![mac(key)],
        }
    }

    /// `HERALD_WEBHOOK_SECRET`: one secret, or several separated by spaces
    /// or commas (neither occurs in `whsec_` + base64), each signing every
    /// delivery.
    pub fn from_secret(secret: &SecretString) -> Result<Self, SecretError> {
        let parts: Vec<SecretString> = secret
            .expose()
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|p| !p.is_empty())
            .map(|p| SecretString::new(p.to_owned()))
            .collect();
        if parts.is_empty() {
            return Err(SecretError::Empty);
        }
        Self::from_secrets(&parts)
    }

    /// Each element is one secret, taken whole (a config file's
    /// `secrets = [...]`). Errors name the element when there are several.
    pub fn from_secrets(secrets: &[SecretString]) -> Result<Self, SecretError> {
        if secrets.is_empty() {
            return Err(SecretError::Empty);
        }
        let mut macs = Vec::with_capacity(secrets.len());
        for (i, s) in secrets.iter().enumerate() {
            let key = decode_secret(s).map_err(|e| match secrets.len() {
                1 => e,
                _ => SecretError::Nth {
                    index: i + 1,
                    reason: Box::new(e),
                },
            })?;
            macs.push(mac(&key));
        }
        Ok(Self { macs })
    }

    /// How many secrets sign each delivery.
    pub fn key_count(&self) -> usize {
        self.macs.len()
    }

    /// The full `webhook-signature` header value: `v1,<base64>`, one per
    /// secret, space-separated.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let ts = timestamp.to_string();
        let mut out = String::with_capacity(48 * self.macs.len());
        for base in &self.macs {
            let mut mac = base.clone();
            feed(&mut mac, msg_id, &ts, body);
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str("v1,");
            B64.encode_string(mac.finalize().into_bytes(), &mut out);
        }
        out
    }
}

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    HmacSha256::new_from_slice(key).expect("HMAC takes any key length")
}

fn feed(mac: &mut HmacSha256, msg_id: &str, timestamp: &str, body: &[u8]) {
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
}

/// Checks a `webhook-signature` header the way a receiver should: the header
/// may list several space-separated signatures (key rotation), any `v1` one
/// that matches is enough, and the comparison is constant-time.
///
/// Timestamp freshness is the receiver's policy and is not checked here.
pub fn verify_signature(
    secret: &[u8],
    msg_id: &str,
    timestamp: &str,
    body: &[u8],
    header: &str,
) -> bool {
    let Ok(mut base) = HmacSha256::new_from_slice(secret) else {
        return false;
    };
    feed(&mut base, msg_id, timestamp, body);
    header.split_whitespace().any(|sig| {
        let Some(b64) = sig.strip_prefix("v1,") else {
            return false;
        };
        let Ok(expected) = B64.decode(b64) else {
            return false;
        };
        base.clone().verify_slice(&expected).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn reproduces_the_published_test_vector() {
        let signer = Signer::from_secret(&SecretString::new(SECRET.into())).unwrap();
        assert_eq!(signer.sign(ID, 1614265330, BODY), SIG);
    }

    #[test]
    fn verifies_any_listed_signature_and_rejects_tampering() {
        let key = decode_secret(&SecretString::new(SECRET.into())).unwrap();
        let header = format!("v1,bm9wZQ== {SIG}");
        assert!(verify_signature(&key, ID, "1614265330", BODY, &header));
        assert!(!verify_signature(&key, ID, "1614265331", BODY, SIG));
        assert!(!verify_signature(&key, ID, "1614265330", b"{}", SIG));
        assert!(!verify_signature(b"other", ID, "1614265330", BODY, SIG));
        assert!(!verify_signature(&key, ID, "1614265330", BODY, "v2,abc"));
    }

    #[test]
    fn raw_secrets_and_bad_secrets() {
        assert_eq!(
            decode_secret(&SecretString::new("hunter2".into())).unwrap(),
            b"hunter2"
        );
        assert_eq!(
            decode_secret(&SecretString::new("whsec_!!!".into())),
            Err(SecretError::BadBase64)
        );
        assert_eq!(
            decode_secret(&SecretString::new(String::new())),
            Err(SecretError::Empty)
        );
        assert!(!format!("{:?}", Signer::new(b"k")).contains('k'));
    }

    #[test]
    fn several_secrets_sign_once_each() {
        let old = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let signer = Signer::from_secret(&SecretString::new(format!(" {old}, hunter2 "))).unwrap();
        assert_eq!(signer.key_count(), 2);
        let header = signer.sign(ID, 1614265330, BODY);
        let sigs: Vec<&str> = header.split(' ').collect();
        assert_eq!(sigs.len(), 2);
        assert_eq!(sigs[0], SIG);
        let old_key = decode_secret(&SecretString::new(old.into())).unwrap();
        assert!(verify_signature(&old_key, ID, "1614265330", BODY, &header));
        assert!(verify_signature(
            b"hunter2",
            ID,
            "1614265330",
            BODY,
            &header
        ));
        assert!(!verify_signature(b"other", ID, "1614265330", BODY, &header));
        let e = Signer::from_secret(&SecretString::new("hunter2 whsec_!!!".into())).unwrap_err();
        assert_eq!(
            e.to_string(),
            "secret 2: the part after \"whsec_\" is not valid base64"
        );
        assert_eq!(
            Signer::from_secret(&SecretString::new(" , ".into())).unwrap_err(),
            SecretError::Empty
        );
    }
}
