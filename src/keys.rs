//! Versioned HMAC keys and lookup-key derivation: all of the crate's
//! cryptography is in this file.
//!
//! HMAC-SHA256 is computed from two precomputed SHA-256 states (the key's
//! inner and outer pads absorbed once, when the ring is built) and
//! `sha2::compress256`: the domain tag and the 32-byte secret fit one block,
//! so a lookup key costs two compressions and no key setup. The construction
//! is RFC 2104's; the tests check it against the `hmac` crate and RFC 4231.
//! We keep the states ourselves, rather than `hmac::Hmac` values, because
//! those cannot be wiped: ours are zeroized when a ring is dropped.
//!
//! A store never sees a cookie secret. It sees
//! `HMAC-SHA256(key[v], DOMAIN || secret)`, the *lookup key*, computed under
//! a versioned server key. A leaked store therefore yields nothing a client
//! can present, and rotating the server key needs no logout: every accepted
//! version yields a candidate, and a hit under an old version is re-keyed to
//! the current one.

use std::fmt;

use base64::Engine as _;
use zeroize::{Zeroize as _, Zeroizing};

use crate::secret::{SECRET_LEN, SessionSecret};

/// Domain tag for session lookup keys. Any other use of the same keys (a CSRF
/// token, say) must use its own tag of the same form (`ths/v1/<purpose>\0`),
/// so that one derivation can never stand in for another. At most 23 bytes,
/// so that tag and secret fit one SHA-256 block after the key's pad.
pub const LOOKUP_DOMAIN: &[u8] = b"ths/v1/lookup\0";

/// The most cookie values considered per request (a browser may send
/// several cookies of one name: other paths, or a sibling subdomain's).
pub const MAX_COOKIE_VALUES: usize = 4;

/// The SHA-256 initial state (FIPS 180-4, 5.3.3).
const SHA256_IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];
const BLOCK: usize = 64;
const _: () = assert!(LOOKUP_DOMAIN.len() + SECRET_LEN + 9 <= BLOCK);

/// The shortest server key accepted, in bytes.
pub const MIN_KEY_LEN: usize = 32;

/// The most key versions a ring accepts. Each accepted version costs one
/// HMAC on every request with a cookie; rotation needs two or three.
pub const MAX_KEY_VERSIONS: usize = 8;

/// The version number of a server key.
///
/// Versions are chosen by the operator; the number only identifies a key and
/// implies no order.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct KeyVersion(pub u32);

impl fmt::Display for KeyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

impl From<u32> for KeyVersion {
    fn from(v: u32) -> Self {
        Self(v)
    }
}

/// `HMAC-SHA256(key[v], DOMAIN || secret)`: how a store finds a session.
///
/// Not a credential on its own (it cannot be turned back into the secret,
/// and a client cannot present it), but it identifies a live session to
/// whoever holds the store, so `Debug` redacts it and it is never logged.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LookupKey([u8; 32]);

impl LookupKey {
    /// Wraps raw bytes read back from a store.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Wraps a byte slice read back from a store; `None` unless 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    /// The raw bytes, for writing to a store.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for LookupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LookupKey(<redacted>)")
    }
}

/// One lookup key a store should try, with the key version it was made under
/// and the cookie value it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The key version the lookup key was derived under.
    pub key_version: KeyVersion,
    /// The derived lookup key.
    pub lookup_key: LookupKey,
    /// Which of the request's cookie values (0-based) it was derived from.
    pub value_index: u8,
}

/// The candidates of a request's secrets: a slice of up to
/// [`MAX_COOKIE_VALUES`] × [`MAX_KEY_VERSIONS`] [`Candidate`]s, by value, and
/// for each value the current version first. On the stack.
#[derive(Clone, Copy, Debug)]
pub struct Candidates {
    items: [Candidate; MAX_COOKIE_VALUES * MAX_KEY_VERSIONS],
    len: usize,
}

impl std::ops::Deref for Candidates {
    type Target = [Candidate];

    fn deref(&self) -> &[Candidate] {
        &self.items[..self.len]
    }
}

/// Why a [`KeyRing`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyRingError {
    /// No key was given.
    #[error("the key ring is empty: add at least one key")]
    Empty,
    /// A key is shorter than [`MIN_KEY_LEN`].
    #[error("key {version} is {len} bytes long; at least {MIN_KEY_LEN} are required")]
    KeyTooShort {
        /// The offending version.
        version: KeyVersion,
        /// Its length in bytes.
        len: usize,
    },
    /// Two keys share a version.
    #[error("key version {0} appears more than once")]
    DuplicateVersion(KeyVersion),
    /// The same key bytes appear under two versions: sessions under one
    /// could never be re-keyed to the other.
    #[error("key versions {first} and {second} have the same key bytes")]
    DuplicateKey {
        /// The version given first.
        first: KeyVersion,
        /// The version given second.
        second: KeyVersion,
    },
    /// The current version names no key in the ring.
    #[error("the current version {0} is not in the key ring")]
    CurrentNotInRing(KeyVersion),
    /// More than [`MAX_KEY_VERSIONS`] keys.
    #[error("the key ring has {0} keys; at most {MAX_KEY_VERSIONS} are accepted: retire old ones")]
    TooManyKeys(usize),
    /// No current version was chosen and the ring has more than one key.
    #[error("the key ring has several keys: choose the current one with `current(version)`")]
    NoCurrent,
    /// A key was not valid hex or base64.
    #[error("key {version} is not valid {encoding}")]
    BadEncoding {
        /// The offending version.
        version: KeyVersion,
        /// The encoding that was expected.
        encoding: &'static str,
    },
    /// A `version:key` list is malformed.
    #[error("malformed key list: {0}")]
    Malformed(&'static str),
    /// [`KeyRing::without`] was asked to remove the current version.
    #[error("key version {0} is current: promote another one before retiring it")]
    RetireCurrent(KeyVersion),
    /// [`KeyRing::without`] was asked to remove a version the ring lacks.
    #[error("key version {0} is not in the key ring")]
    NotInRing(KeyVersion),
    /// The environment variable is missing or malformed.
    #[error("environment variable `{name}`: {reason}")]
    Env {
        /// The variable's name.
        name: String,
        /// What is wrong with it (never its value).
        reason: &'static str,
    },
}

/// One server key: the version and its precomputed HMAC states.
///
/// It holds the SHA-256 states after the key's inner and outer pads, not the
/// raw key (wiped after setup). They are as sensitive as the key (they let
/// anyone compute lookup keys), so they live in one heap allocation that is
/// zeroized on drop, in every clone; moving a `VersionedKey` moves only the
/// pointer. (Transient copies in registers and on the stack while a key is
/// set up or used are beyond what safe Rust can wipe.)
#[derive(Clone)]
struct VersionedKey {
    version: KeyVersion,
    /// `[inner, outer]`.
    states: Box<[[u32; 8]; 2]>,
}

impl Drop for VersionedKey {
    fn drop(&mut self) {
        self.states.zeroize();
    }
}

impl VersionedKey {
    fn new(version: KeyVersion, key: &[u8]) -> Self {
        // RFC 2104: a key longer than a block is hashed first; then zero-padded.
        let mut block = Zeroizing::new([0u8; BLOCK]);
        if key.len() > BLOCK {
            let mut digest = Zeroizing::new(sha256(key));
            for (chunk, word) in block[..32].chunks_exact_mut(4).zip(digest.iter()) {
                chunk.copy_from_slice(&word.to_be_bytes());
            }
            digest.zeroize();
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        let mut states = Box::new([SHA256_IV; 2]);
        let mut pad = Zeroizing::new([0u8; BLOCK]);
        for (state, byte) in states.iter_mut().zip([0x36u8, 0x5c]) {
            for (p, k) in pad.iter_mut().zip(block.iter()) {
                *p = k ^ byte;
            }
            compress(state, &pad);
        }
        Self { version, states }
    }

    fn inner(&self) -> &[u32; 8] {
        &self.states[0]
    }

    fn outer(&self) -> &[u32; 8] {
        &self.states[1]
    }

    /// `HMAC-SHA256(key, LOOKUP_DOMAIN || secret)`: one compression for the
    /// inner hash (tag, secret and padding fill one block), one for the outer.
    fn lookup_key(&self, secret: &SessionSecret) -> LookupKey {
        let message = LOOKUP_DOMAIN.len() + SECRET_LEN;
        // The block holds the secret: wiped when it goes out of scope.
        let mut block = Zeroizing::new([0u8; BLOCK]);
        block[..LOOKUP_DOMAIN.len()].copy_from_slice(LOOKUP_DOMAIN);
        block[LOOKUP_DOMAIN.len()..message].copy_from_slice(secret.expose_bytes());
        block[message] = 0x80;
        block[BLOCK - 8..].copy_from_slice(&(((BLOCK + message) * 8) as u64).to_be_bytes());
        let mut inner = Zeroizing::new(*self.inner());
        compress(&mut inner, &block);

        let mut outer_block = [0u8; BLOCK];
        for (chunk, word) in outer_block[..32].chunks_exact_mut(4).zip(inner.iter()) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        outer_block[32] = 0x80;
        outer_block[BLOCK - 8..].copy_from_slice(&(((BLOCK + 32) * 8) as u64).to_be_bytes());
        let mut outer = *self.outer();
        compress(&mut outer, &outer_block);
        let mut out = [0u8; 32];
        for (chunk, word) in out.chunks_exact_mut(4).zip(outer.iter()) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        outer.zeroize();
        LookupKey(out)
    }
}

fn compress(state: &mut [u32; 8], block: &[u8; BLOCK]) {
    sha2::compress256(state, std::slice::from_ref(block.into()));
}

/// SHA-256 of `message` as state words, with every buffer that held key
/// bytes wiped (`sha2::Sha256` would leave its last block in memory).
fn sha256(message: &[u8]) -> [u32; 8] {
    let bits = (message.len() as u64).wrapping_mul(8);
    let padded_len = (message.len() + 9).div_ceil(BLOCK) * BLOCK;
    let mut padded = Zeroizing::new(vec![0u8; padded_len]);
    padded[..message.len()].copy_from_slice(message);
    padded[message.len()] = 0x80;
    padded[padded_len - 8..].copy_from_slice(&bits.to_be_bytes());
    let mut state = SHA256_IV;
    for block in padded.chunks_exact(BLOCK) {
        let block: &[u8; BLOCK] = block.try_into().expect("chunks are one block long");
        compress(&mut state, block);
    }
    state
}

/// The server's versioned HMAC keys: exactly one current version for every
/// new or re-keyed lookup key, the others accepted for lookup only.
///
/// `Debug` shows versions, never key bytes.
///
/// ```
/// use tower_hmac_session::{KeyRing, KeyVersion};
///
/// let ring = KeyRing::builder()
///     .key(2, [2u8; 32])
///     .key(1, [1u8; 32])
///     .current(2)
///     .build()
///     .unwrap();
/// assert_eq!(ring.current(), KeyVersion(2));
/// assert_eq!(
///     format!("{ring:?}"),
///     "KeyRing { current: KeyVersion(2), versions: [KeyVersion(2), KeyVersion(1)] }"
/// );
/// ```
#[derive(Clone)]
pub struct KeyRing {
    /// Current key first, then the others in the order given.
    keys: Vec<VersionedKey>,
}

impl KeyRing {
    /// Starts building a key ring.
    pub fn builder() -> KeyRingBuilder {
        KeyRingBuilder::default()
    }

    /// Reads a key ring from an environment variable holding comma-separated
    /// `version:key` entries, keys in base64 (standard or URL-safe alphabet,
    /// padding optional), the **first entry current**:
    /// `SESSION_KEYS="2:q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=,1:…"`.
    ///
    /// # Errors
    ///
    /// A missing variable, a malformed entry, or any [`KeyRingError`] of
    /// [`KeyRingBuilder::build`]. Errors name the variable, never its value.
    pub fn from_env(name: &str) -> Result<Self, KeyRingError> {
        let env_err = |reason| KeyRingError::Env {
            name: name.to_owned(),
            reason,
        };
        let value = Zeroizing::new(std::env::var(name).map_err(|e| match e {
            std::env::VarError::NotPresent => env_err("not set"),
            std::env::VarError::NotUnicode(_) => env_err("not valid UTF-8"),
        })?);
        Self::parse_list(&value).map_err(|e| match e {
            KeyRingError::Malformed(reason) => env_err(reason),
            other => other,
        })
    }

    /// Parses the `version:base64key,…` list format of [`from_env`](Self::from_env).
    ///
    /// # Errors
    ///
    /// As [`from_env`](Self::from_env).
    pub fn parse_list(list: &str) -> Result<Self, KeyRingError> {
        let malformed = KeyRingError::Malformed;
        let mut builder = Self::builder();
        let mut first = None;
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (version, key) = entry
                .split_once(':')
                .ok_or_else(|| malformed("an entry is not of the form `version:key`"))?;
            let version: u32 = version
                .trim()
                .parse()
                .map_err(|_| malformed("a version is not a whole number"))?;
            first.get_or_insert(version);
            builder = builder.key_base64(version, key.trim());
        }
        match first {
            Some(current) => builder.current(current).build(),
            None => Err(KeyRingError::Empty),
        }
    }

    /// The current version: every new or re-keyed lookup key uses it.
    pub fn current(&self) -> KeyVersion {
        self.keys[0].version
    }

    /// Every accepted version, current first.
    pub fn versions(&self) -> impl ExactSizeIterator<Item = KeyVersion> + '_ {
        self.keys.iter().map(|k| k.version)
    }

    /// This ring with `key` added under `version` and made current: the
    /// run-time step of a key rotation for
    /// [`SessionManager::set_key_ring`](crate::SessionManager::set_key_ring),
    /// without the older keys' bytes (a ring keeps only their HMAC states).
    /// Sessions under older versions keep working and are re-keyed to the
    /// new one as they are used.
    ///
    /// ```
    /// use tower_hmac_session::{KeyRing, KeyVersion};
    ///
    /// let ring = KeyRing::builder().key(1, [1u8; 32]).build().unwrap();
    /// let rotated = ring.with_current_key(2, [2u8; 32]).unwrap();
    /// assert_eq!(rotated.current(), KeyVersion(2));
    /// assert!(rotated.contains(KeyVersion(1)));
    /// // Later, once `count_by_key_version` shows v1 unused:
    /// let retired = rotated.without(KeyVersion(1)).unwrap();
    /// assert_eq!(retired.versions().collect::<Vec<_>>(), [KeyVersion(2)]);
    /// ```
    ///
    /// # Errors
    ///
    /// A key under [`MIN_KEY_LEN`] bytes, a version already in the ring, the
    /// same key as another version (compared as HMAC keys), or a ring that
    /// would exceed [`MAX_KEY_VERSIONS`].
    pub fn with_current_key(
        &self,
        version: u32,
        key: impl AsRef<[u8]>,
    ) -> Result<KeyRing, KeyRingError> {
        let (version, key) = (KeyVersion(version), key.as_ref());
        if key.len() < MIN_KEY_LEN {
            return Err(KeyRingError::KeyTooShort {
                version,
                len: key.len(),
            });
        }
        if self.contains(version) {
            return Err(KeyRingError::DuplicateVersion(version));
        }
        if self.keys.len() >= MAX_KEY_VERSIONS {
            return Err(KeyRingError::TooManyKeys(self.keys.len() + 1));
        }
        let added = VersionedKey::new(version, key);
        // As in `build`: compared by HMAC states, once, off the request path.
        if let Some(first) = self.keys.iter().find(|k| k.states == added.states) {
            return Err(KeyRingError::DuplicateKey {
                first: first.version,
                second: version,
            });
        }
        // Current first; the clones share nothing with `self` but are wiped
        // on drop like every `VersionedKey`.
        let mut keys = Vec::with_capacity(self.keys.len() + 1);
        keys.push(added);
        keys.extend(self.keys.iter().cloned());
        Ok(KeyRing { keys })
    }

    /// This ring without `version`: the last step of a key rotation. Every
    /// session still under that version ends (its cookie no longer matches);
    /// [`SessionManager::count_by_key_version`](crate::SessionManager::count_by_key_version)
    /// says how many that is. Never add a retired key back after a restore
    /// from backup: see SECURITY.md.
    ///
    /// # Errors
    ///
    /// The current version ([`KeyRingError::RetireCurrent`]), or a version the
    /// ring does not hold ([`KeyRingError::NotInRing`]).
    pub fn without(&self, version: KeyVersion) -> Result<KeyRing, KeyRingError> {
        if self.current() == version {
            return Err(KeyRingError::RetireCurrent(version));
        }
        if !self.contains(version) {
            return Err(KeyRingError::NotInRing(version));
        }
        let keys = self
            .keys
            .iter()
            .filter(|k| k.version != version)
            .cloned()
            .collect();
        Ok(KeyRing { keys })
    }

    /// Whether `version` is in the ring.
    pub fn contains(&self, version: KeyVersion) -> bool {
        self.keys.iter().any(|k| k.version == version)
    }

    /// One lookup key per secret (at most [`MAX_COOKIE_VALUES`]) and accepted
    /// version: secret by secret, each current version first. On the stack:
    /// no allocation per request.
    pub fn candidates<'a>(
        &self,
        secrets: impl IntoIterator<Item = &'a SessionSecret>,
    ) -> Candidates {
        let mut candidates = Candidates {
            items: [Candidate {
                key_version: KeyVersion(0),
                lookup_key: LookupKey([0; 32]),
                value_index: 0,
            }; MAX_COOKIE_VALUES * MAX_KEY_VERSIONS],
            len: 0,
        };
        for (index, secret) in secrets.into_iter().take(MAX_COOKIE_VALUES).enumerate() {
            for key in &self.keys {
                candidates.items[candidates.len] = Candidate {
                    key_version: key.version,
                    lookup_key: key.lookup_key(secret),
                    value_index: index as u8,
                };
                candidates.len += 1;
            }
        }
        candidates
    }

    /// The credential of `secret` under the current version: what new and
    /// re-keyed records store.
    pub fn current_credential(&self, secret: &SessionSecret) -> crate::Credential {
        crate::Credential {
            lookup_key: self.keys[0].lookup_key(secret),
            key_version: self.keys[0].version,
        }
    }

    /// The lookup key of `secret` under `version`, if the ring has it.
    pub fn lookup_key(&self, version: KeyVersion, secret: &SessionSecret) -> Option<LookupKey> {
        self.keys
            .iter()
            .find(|k| k.version == version)
            .map(|k| k.lookup_key(secret))
    }
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("current", &self.current())
            .field("versions", &self.versions().collect::<Vec<_>>())
            .finish()
    }
}

/// Builds a [`KeyRing`]; see [`KeyRing::builder`].
///
/// Errors are collected and reported by [`build`](Self::build), so calls chain.
#[derive(Default)]
pub struct KeyRingBuilder {
    keys: Vec<(KeyVersion, Zeroizing<Vec<u8>>)>,
    current: Option<KeyVersion>,
    error: Option<KeyRingError>,
}

impl fmt::Debug for KeyRingBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRingBuilder")
            .field(
                "versions",
                &self.keys.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
            )
            .field("current", &self.current)
            .finish()
    }
}

impl KeyRingBuilder {
    /// Adds a raw key (at least 32 bytes; 32 random bytes is right).
    pub fn key(mut self, version: u32, key: impl AsRef<[u8]>) -> Self {
        self.keys
            .push((KeyVersion(version), Zeroizing::new(key.as_ref().to_vec())));
        self
    }

    /// Adds a key given as hex.
    pub fn key_hex(self, version: u32, key: &str) -> Self {
        match hex::decode(key.trim()) {
            Ok(bytes) => self.key(version, Zeroizing::new(bytes)),
            Err(_) => self.fail(KeyRingError::BadEncoding {
                version: KeyVersion(version),
                encoding: "hex",
            }),
        }
    }

    /// Adds a key given as base64 (standard or URL-safe alphabet, with or
    /// without padding).
    pub fn key_base64(self, version: u32, key: &str) -> Self {
        use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
        let trimmed = key.trim().trim_end_matches('=');
        let decoded = STANDARD_NO_PAD
            .decode(trimmed)
            .or_else(|_| URL_SAFE_NO_PAD.decode(trimmed));
        match decoded {
            Ok(bytes) => self.key(version, Zeroizing::new(bytes)),
            Err(_) => self.fail(KeyRingError::BadEncoding {
                version: KeyVersion(version),
                encoding: "base64",
            }),
        }
    }

    /// Chooses the current version. Optional when the ring has one key.
    pub fn current(mut self, version: u32) -> Self {
        self.current = Some(KeyVersion(version));
        self
    }

    fn fail(mut self, error: KeyRingError) -> Self {
        self.error.get_or_insert(error);
        self
    }

    /// Builds the ring.
    ///
    /// # Errors
    ///
    /// An empty ring, a key under 32 bytes, a duplicate version, a current
    /// version not in the ring (or none chosen among several keys), or the
    /// first bad hex/base64 key given.
    pub fn build(self) -> Result<KeyRing, KeyRingError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        if self.keys.is_empty() {
            return Err(KeyRingError::Empty);
        }
        if self.keys.len() > MAX_KEY_VERSIONS {
            return Err(KeyRingError::TooManyKeys(self.keys.len()));
        }
        let current = match self.current {
            Some(v) => v,
            None if self.keys.len() == 1 => self.keys[0].0,
            None => return Err(KeyRingError::NoCurrent),
        };
        let mut keys: Vec<VersionedKey> = Vec::with_capacity(self.keys.len());
        for (version, bytes) in &self.keys {
            if bytes.len() < MIN_KEY_LEN {
                return Err(KeyRingError::KeyTooShort {
                    version: *version,
                    len: bytes.len(),
                });
            }
            if keys.iter().any(|k| k.version == *version) {
                return Err(KeyRingError::DuplicateVersion(*version));
            }
            let key = VersionedKey::new(*version, bytes);
            // Compared by their HMAC states, not their bytes: keys that HMAC
            // treats as one (K and K followed by zeros, a long key and its
            // SHA-256) are one key. Done once at build time: it leaks
            // nothing a request can observe.
            if let Some(first) = keys.iter().find(|k| k.states == key.states) {
                return Err(KeyRingError::DuplicateKey {
                    first: first.version,
                    second: *version,
                });
            }
            keys.push(key);
        }
        let position = keys
            .iter()
            .position(|k| k.version == current)
            .ok_or(KeyRingError::CurrentNotInRing(current))?;
        let current_key = keys.remove(position);
        keys.insert(0, current_key);
        // `self.keys` drops here: `Zeroizing` wipes the raw key bytes.
        Ok(KeyRing { keys })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(current: u32, versions: &[u32]) -> KeyRing {
        versions
            .iter()
            .fold(KeyRing::builder(), |b, &v| b.key(v, [v as u8; 32]))
            .current(current)
            .build()
            .unwrap()
    }

    use hmac::{Hmac, Mac};

    fn reference_hmac(key: &[u8], message: &[&[u8]]) -> [u8; 32] {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
        for part in message {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    #[test]
    fn a_ring_grows_and_shrinks_at_run_time_with_the_same_lookup_keys() {
        let secret = SessionSecret::from_bytes([5; 32]);
        let one = ring(1, &[1]);
        let two = one.with_current_key(2, [2u8; 32]).unwrap();
        assert_eq!(two.current(), KeyVersion(2));
        assert_eq!(
            two.versions().collect::<Vec<_>>(),
            [KeyVersion(2), KeyVersion(1)]
        );
        // The same HMAC as a ring built from the bytes.
        let built = ring(2, &[1, 2]);
        for v in [KeyVersion(1), KeyVersion(2)] {
            assert_eq!(
                two.lookup_key(v, &secret),
                built.lookup_key(v, &secret),
                "{v}"
            );
        }
        assert_eq!(
            two.lookup_key(KeyVersion(1), &secret),
            one.lookup_key(KeyVersion(1), &secret)
        );
        let retired = two.without(KeyVersion(1)).unwrap();
        assert_eq!(retired.versions().collect::<Vec<_>>(), [KeyVersion(2)]);
        assert!(retired.lookup_key(KeyVersion(1), &secret).is_none());
        assert_eq!(
            retired.lookup_key(KeyVersion(2), &secret),
            built.lookup_key(KeyVersion(2), &secret)
        );
    }

    #[test]
    fn growing_or_shrinking_a_ring_refuses_what_build_refuses() {
        let two = ring(2, &[1, 2]);
        assert!(matches!(
            two.with_current_key(3, [3u8; 31]),
            Err(KeyRingError::KeyTooShort { len: 31, .. })
        ));
        assert!(matches!(
            two.with_current_key(1, [9u8; 32]),
            Err(KeyRingError::DuplicateVersion(KeyVersion(1)))
        ));
        // The same HMAC key: v1's bytes followed by zeros.
        let mut padded = [0u8; 40];
        padded[..32].copy_from_slice(&[1u8; 32]);
        assert!(matches!(
            two.with_current_key(3, padded),
            Err(KeyRingError::DuplicateKey {
                first: KeyVersion(1),
                second: KeyVersion(3)
            })
        ));
        let full = ring(8, &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(matches!(
            full.with_current_key(9, [9u8; 32]),
            Err(KeyRingError::TooManyKeys(9))
        ));
        assert!(matches!(
            two.without(KeyVersion(2)),
            Err(KeyRingError::RetireCurrent(KeyVersion(2)))
        ));
        assert!(matches!(
            two.without(KeyVersion(7)),
            Err(KeyRingError::NotInRing(KeyVersion(7)))
        ));
    }

    #[test]
    fn lookup_key_is_domain_separated_hmac_sha256() {
        for key in [vec![1u8; 32], vec![0xab; 64], vec![7u8; 65], vec![3u8; 200]] {
            let ring = KeyRing::builder().key(1, &key).build().unwrap();
            let secret = SessionSecret::from_bytes([9; 32]);
            let expected = reference_hmac(&key, &[b"ths/v1/lookup\0", &[9; 32]]);
            assert_eq!(
                ring.current_credential(&secret).lookup_key.as_bytes(),
                &expected
            );
            let plain = reference_hmac(&key, &[&[9; 32]]);
            assert_ne!(
                ring.current_credential(&secret).lookup_key.as_bytes(),
                &plain
            );
        }
    }

    #[test]
    fn derivation_matches_rfc_4231_where_the_message_fits() {
        // RFC 4231 test case 2 has a 28-byte message; ours always fits one
        // block after the pad, as does this: check the pad states against
        // the reference on the standard key instead.
        let key = b"Jefe";
        let versioned = VersionedKey::new(KeyVersion(1), key);
        let mut iv = SHA256_IV;
        let mut pad = [0x36u8; 64];
        for (p, k) in pad.iter_mut().zip(key) {
            *p ^= k;
        }
        compress(&mut iv, &pad);
        assert_eq!(versioned.inner(), &iv);
        let secret = SessionSecret::from_bytes([0x42; 32]);
        assert_eq!(
            versioned.lookup_key(&secret).as_bytes(),
            &reference_hmac(key, &[LOOKUP_DOMAIN, &[0x42; 32]])
        );
    }

    #[test]
    fn candidates_cover_every_value_and_version_current_first() {
        let ring = ring(2, &[1, 2, 3]);
        let secrets = [
            SessionSecret::from_bytes([5; 32]),
            SessionSecret::from_bytes([6; 32]),
        ];
        let candidates = ring.candidates(&secrets);
        let seen: Vec<_> = candidates
            .iter()
            .map(|c| (c.value_index, c.key_version.0))
            .collect();
        assert_eq!(seen, [(0, 2), (0, 1), (0, 3), (1, 2), (1, 1), (1, 3)]);
        for c in candidates.iter() {
            let secret = &secrets[c.value_index as usize];
            assert_eq!(ring.lookup_key(c.key_version, secret), Some(c.lookup_key));
        }
        assert_ne!(candidates[0].lookup_key, candidates[1].lookup_key);
        assert_eq!(ring.lookup_key(KeyVersion(9), &secrets[0]), None);
        let many: Vec<_> = (0..6).map(|i| SessionSecret::from_bytes([i; 32])).collect();
        assert_eq!(ring.candidates(&many).len(), MAX_COOKIE_VALUES * 3);
    }

    #[test]
    fn long_keys_are_hashed_like_sha2_does() {
        use sha2::Digest as _;
        for len in [0, 1, 55, 56, 63, 64, 65, 119, 120, 200] {
            let message = vec![0x5au8; len];
            let mut expected = [0u8; 32];
            for (chunk, word) in expected.chunks_exact_mut(4).zip(sha256(&message)) {
                chunk.copy_from_slice(&word.to_be_bytes());
            }
            assert_eq!(
                expected,
                <[u8; 32]>::from(sha2::Sha256::digest(&message)),
                "{len}"
            );
        }
    }

    #[test]
    fn keys_that_hmac_treats_as_one_are_refused() {
        use sha2::Digest as _;
        let mut padded = vec![4u8; 32];
        padded.push(0);
        let long = vec![8u8; 100];
        let digest = sha2::Sha256::digest(&long).to_vec();
        for (a, b) in [(vec![4u8; 32], padded), (long, digest)] {
            assert!(matches!(
                KeyRing::builder().key(1, a).key(2, b).current(2).build(),
                Err(KeyRingError::DuplicateKey { .. })
            ));
        }
    }

    #[test]
    fn the_same_key_under_two_versions_is_refused() {
        assert_eq!(
            KeyRing::builder()
                .key(1, [4; 32])
                .key(2, [4; 32])
                .current(2)
                .build()
                .unwrap_err(),
            KeyRingError::DuplicateKey {
                first: KeyVersion(1),
                second: KeyVersion(2)
            }
        );
    }

    #[test]
    fn builder_rejects_bad_rings() {
        assert_eq!(KeyRing::builder().build().unwrap_err(), KeyRingError::Empty);
        assert_eq!(
            KeyRing::builder().key(1, [0; 31]).build().unwrap_err(),
            KeyRingError::KeyTooShort {
                version: KeyVersion(1),
                len: 31
            }
        );
        assert_eq!(
            KeyRing::builder()
                .key(1, [0; 32])
                .key(1, [1; 32])
                .current(1)
                .build()
                .unwrap_err(),
            KeyRingError::DuplicateVersion(KeyVersion(1))
        );
        assert_eq!(
            KeyRing::builder()
                .key(1, [0; 32])
                .current(2)
                .build()
                .unwrap_err(),
            KeyRingError::CurrentNotInRing(KeyVersion(2))
        );
        assert_eq!(
            KeyRing::builder()
                .key(1, [0; 32])
                .key(2, [0; 32])
                .build()
                .unwrap_err(),
            KeyRingError::NoCurrent
        );
        assert!(matches!(
            KeyRing::builder().key_hex(1, "zz").build(),
            Err(KeyRingError::BadEncoding { .. })
        ));
        let nine = (1..=9).fold(KeyRing::builder(), |b, v| b.key(v, [v as u8; 32]));
        assert_eq!(
            nine.current(1).build().unwrap_err(),
            KeyRingError::TooManyKeys(9)
        );
    }

    #[test]
    fn loads_hex_base64_and_lists() {
        let key = [0x5a_u8; 32];
        let from_hex = KeyRing::builder()
            .key_hex(1, &hex::encode(key))
            .build()
            .unwrap();
        let from_b64 = KeyRing::builder()
            .key_base64(1, &base64::engine::general_purpose::STANDARD.encode(key))
            .build()
            .unwrap();
        let from_list = KeyRing::parse_list(&format!(
            "7:{}, 1:{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0x11; 32]),
            base64::engine::general_purpose::STANDARD.encode(key)
        ))
        .unwrap();
        let secret = SessionSecret::from_bytes([3; 32]);
        let a = from_hex.current_credential(&secret);
        assert_eq!(a, from_b64.current_credential(&secret));
        assert_eq!(from_list.current(), KeyVersion(7));
        assert_eq!(
            from_list.lookup_key(KeyVersion(1), &secret),
            Some(a.lookup_key)
        );
        assert!(matches!(
            KeyRing::parse_list("1"),
            Err(KeyRingError::Malformed(_))
        ));
        assert!(matches!(
            KeyRing::parse_list("x:AAAA"),
            Err(KeyRingError::Malformed(_))
        ));
        assert_eq!(KeyRing::parse_list(" ").unwrap_err(), KeyRingError::Empty);
    }

    #[test]
    fn env_errors_name_the_variable_not_the_value() {
        let err = KeyRing::from_env("TOWER_HMAC_SESSION_SURELY_UNSET").unwrap_err();
        assert!(err.to_string().contains("TOWER_HMAC_SESSION_SURELY_UNSET"));
    }

    #[test]
    fn debug_never_shows_key_bytes() {
        let ring = KeyRing::builder().key(1, [0xcd; 32]).build().unwrap();
        let debug = format!("{ring:?} {:?}", KeyRing::builder().key(1, [0xcd; 32]));
        assert!(!debug.contains("205") && !debug.to_lowercase().contains("cd"));
        let secret = SessionSecret::from_bytes([1; 32]);
        let candidate = format!("{:?}", ring.current_credential(&secret));
        assert!(candidate.contains("<redacted>"));
    }
}
