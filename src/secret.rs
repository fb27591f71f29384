//! The cookie secret: generate, parse, encode, redact, zeroize.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use zeroize::Zeroize;

/// Length of a secret in bytes.
pub const SECRET_LEN: usize = 32;

/// Length of a secret in the cookie: 32 bytes as unpadded base64url.
pub const ENCODED_SECRET_LEN: usize = 43;

/// The session secret carried in the cookie: 32 random bytes.
///
/// The secret is a short-lived bearer credential. It exists only in the
/// user's cookie and, while a request is handled, in memory: stores keep an
/// HMAC of it (see [`KeyRing`](crate::KeyRing)), never the secret itself.
///
/// `Debug` prints `SessionSecret(<redacted>)` and the bytes are zeroed when
/// the value is dropped. The type is deliberately not `Clone`, so a copy
/// cannot outlive the request by accident.
///
/// ```
/// use tower_hmac_session::SessionSecret;
///
/// let secret = SessionSecret::generate();
/// let cookie_value = secret.encode();
/// assert_eq!(cookie_value.len(), 43);
/// assert!(SessionSecret::parse(&cookie_value).is_some());
/// assert_eq!(format!("{secret:?}"), "SessionSecret(<redacted>)");
/// ```
pub struct SessionSecret([u8; SECRET_LEN]);

impl Drop for SessionSecret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// Fills `buf` from the operating system's CSPRNG (`getrandom`).
///
/// Safe for credentials, and safe across `fork()`: every call asks the
/// kernel, so two processes never share generator state (a user-space
/// generator copied by a fork would hand both processes the same secrets).
/// One system call per secret or id is nothing beside the store write that
/// every login and rotation makes anyway.
///
/// # Panics
///
/// Only if the operating system has no randomness to give: a server without
/// it cannot issue credentials at all.
pub(crate) fn fill_random(buf: &mut [u8]) {
    use rand::TryRngCore as _;
    rand::rngs::OsRng
        .try_fill_bytes(buf)
        .expect("the operating system's random source is available");
}

impl SessionSecret {
    /// Generates a fresh secret from the OS-seeded CSPRNG.
    pub fn generate() -> Self {
        let mut bytes = [0u8; SECRET_LEN];
        fill_random(&mut bytes);
        Self(bytes)
    }

    /// Parses a cookie value strictly: exactly 43 characters of unpadded
    /// base64url that decode to 32 bytes, in canonical form (the two unused
    /// trailing bits are zero, so one secret has exactly one encoding).
    ///
    /// Returns `None` for anything else. Does not allocate.
    pub fn parse(value: &str) -> Option<Self> {
        Self::parse_bytes(value.as_bytes())
    }

    /// Like [`parse`](Self::parse), on raw header bytes (which need not be UTF-8).
    pub fn parse_bytes(value: &[u8]) -> Option<Self> {
        if value.len() != ENCODED_SECRET_LEN {
            return None;
        }
        // 43 base64 characters carry 258 bits: 32 bytes need at most 33 bytes
        // of output room while decoding.
        let mut buf = [0u8; SECRET_LEN + 1];
        let decoded = URL_SAFE_NO_PAD.decode_slice(value, &mut buf);
        let secret = match decoded {
            Ok(SECRET_LEN) => {
                let mut bytes = [0u8; SECRET_LEN];
                bytes.copy_from_slice(&buf[..SECRET_LEN]);
                Some(Self(bytes))
            }
            _ => None,
        };
        buf.zeroize();
        secret
    }

    /// Builds a secret from raw bytes (for tests and custom transports).
    pub fn from_bytes(bytes: [u8; SECRET_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw bytes, for computing lookup keys.
    pub fn expose_bytes(&self) -> &[u8; SECRET_LEN] {
        &self.0
    }

    /// Encodes the secret for the cookie: unpadded base64url, 43 characters.
    ///
    /// The returned string is the credential: put it in the cookie and
    /// nowhere else.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }
}

impl fmt::Debug for SessionSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionSecret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_cookie_encoding() {
        let secret = SessionSecret::generate();
        let encoded = secret.encode();
        assert_eq!(encoded.len(), ENCODED_SECRET_LEN);
        let parsed = SessionSecret::parse(&encoded).unwrap();
        assert_eq!(parsed.expose_bytes(), secret.expose_bytes());
    }

    #[test]
    fn two_generated_secrets_differ() {
        let a = SessionSecret::generate();
        let b = SessionSecret::generate();
        assert_ne!(a.expose_bytes(), b.expose_bytes());
    }

    #[test]
    fn rejects_wrong_lengths_alphabets_and_padding() {
        let good = SessionSecret::from_bytes([7; 32]).encode();
        assert!(SessionSecret::parse(&good).is_some());
        assert!(SessionSecret::parse("").is_none());
        assert!(SessionSecret::parse(&good[..42]).is_none());
        assert!(SessionSecret::parse(&format!("{good}A")).is_none());
        assert!(SessionSecret::parse(&format!("{}=", &good[..42])).is_none());
        // Standard-alphabet characters are not base64url.
        assert!(SessionSecret::parse(&format!("{}+", &good[..42])).is_none());
        assert!(SessionSecret::parse(&format!("{}/", &good[..42])).is_none());
        assert!(SessionSecret::parse_bytes(&[0xff; 43]).is_none());
    }

    #[test]
    fn rejects_non_canonical_trailing_bits() {
        let good = SessionSecret::from_bytes([0; 32]).encode();
        assert!(good.ends_with('A'));
        // 'B' sets one of the two unused trailing bits.
        let non_canonical = format!("{}B", &good[..42]);
        assert!(SessionSecret::parse(&non_canonical).is_none());
    }

    #[test]
    fn debug_is_redacted() {
        let secret = SessionSecret::from_bytes([0xab; 32]);
        let debug = format!("{secret:?}");
        assert!(!debug.contains("171"));
        assert!(!debug.contains(&secret.encode()));
        assert_eq!(debug, "SessionSecret(<redacted>)");
    }
}
