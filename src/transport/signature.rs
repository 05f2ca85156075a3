//! Standard Webhooks signing (<https://www.standardwebhooks.com/>).
//!
//! We sign in the Standard Webhooks format rather than a home-grown one so that
//! a receiver can verify with the library it already has for Svix-style
//! senders: `webhook-signature: v1,<base64(HMAC-SHA256(key, "{id}.{ts}.{body}"))>`.

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

/// A signing key with the HMAC already keyed, so each delivery only clones a
/// small state instead of re-deriving the inner/outer pads.
#[derive(Clone)]
pub struct Signer {
    mac: HmacSha256,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(***)")
    }
}

impl Signer {
    pub fn new(key: &[u8]) -> Self {
        // HMAC accepts keys of any length, so this cannot fail.
        let mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
        Self { mac }
    }

    pub fn from_secret(secret: &SecretString) -> Result<Self, SecretError> {
        Ok(Self::new(&decode_secret(secret)?))
    }

    /// The full `webhook-signature` header value (`v1,<base64>`).
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = self.mac.clone();
        feed(&mut mac, msg_id, &timestamp.to_string(), body);
        let mut out = String::with_capacity(48);
        out.push_str("v1,");
        B64.encode_string(mac.finalize().into_bytes(), &mut out);
        out
    }
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
}
