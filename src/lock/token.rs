//! Lock tokens: the random value stored under a lock key.
//!
//! Ownership checks compare this value, so it must be unguessable and unique
//! across every process that could ever touch the key; 128 bits from the OS
//! generator make a collision practically impossible. The worker also writes
//! it into MySQL as the claim fence, which is why it is exposed as hex.

use std::fmt;

/// 128 random bits identifying one lock owner. `Debug` never shows the value,
/// so a token cannot leak into logs through a derived `Debug` of a caller's
/// struct.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token([u8; 16]);

impl Token {
    /// Draws a fresh token from the operating system's generator.
    pub fn random() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes)?;
        Ok(Self(bytes))
    }

    /// Rebuilds a token stored elsewhere (for example a claim token read back
    /// from the database).
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// Lower-case hex, 32 characters; the form the worker stores as `claim_token`.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses the form produced by [`Token::to_hex`].
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut bytes = [0u8; 16];
        hex::decode_to_slice(s, &mut bytes).ok()?;
        Some(Self(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_distinct_and_hidden() {
        let a = Token::random().unwrap();
        let b = Token::random().unwrap();
        assert_ne!(a, b);
        assert_eq!(format!("{a:?}"), "Token(..)");
        assert_eq!(a.to_hex().len(), 32);
        assert_eq!(Token::from_hex(&a.to_hex()), Some(a));
        assert_eq!(Token::from_hex("zz"), None);
    }
}
