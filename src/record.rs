//! Session records: what stores keep and what handlers see.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use time::OffsetDateTime;

use crate::keys::{KeyVersion, LookupKey};
use crate::secret::fill_random;

/// The longest subject accepted, in bytes.
pub const MAX_SUBJECT_LEN: usize = 256;

/// The largest attribute map accepted, in bytes of compact JSON.
pub const MAX_ATTRIBUTES_LEN: usize = 4096;

/// A session's attributes: a small JSON object (device label, tenant, …).
pub type Attributes = serde_json::Map<String, serde_json::Value>;

/// The opaque, random identifier of a session.
///
/// Not a credential: knowing an id lets nobody use the session. Ids appear in
/// lists, logs and revocation calls. Displayed as 32 lowercase hex digits.
///
/// ```
/// use tower_hmac_session::SessionId;
///
/// let id = SessionId::generate();
/// let text = id.to_string();
/// assert_eq!(text.len(), 32);
/// assert_eq!(text.parse::<SessionId>().unwrap(), id);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId([u8; 16]);

impl SessionId {
    /// A new random id: 128 bits from the OS-seeded CSPRNG.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 16];
        fill_random(&mut bytes);
        Self(bytes)
    }

    /// Wraps raw bytes read back from a store.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 32];
        // Cannot fail: the buffer is exactly twice the input.
        hex::encode_to_slice(self.0, &mut buf).map_err(|_| fmt::Error)?;
        f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

/// A string is not a session id (32 lowercase hex digits).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a session id: expected 32 lowercase hex digits")]
pub struct ParseSessionIdError;

impl FromStr for SessionId {
    type Err = ParseSessionIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Canonical form only, so that one id has one spelling in every store.
        if s.len() != 32 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ParseSessionIdError);
        }
        let mut bytes = [0u8; 16];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| ParseSessionIdError)?;
        Ok(Self(bytes))
    }
}

/// Why a session was revoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RevocationReason {
    /// The user logged out of this session.
    Logout,
    /// The user logged out of every session.
    LogoutEverywhere,
    /// The user signed out their other devices from this one.
    LogoutOtherDevices,
    /// A new login on the same client replaced the session.
    ReplacedByLogin,
    /// An administrator or the application revoked it.
    Admin,
    /// A rotated-away secret was presented after its grace window: the
    /// session's credential is presumed stolen.
    ReuseDetected,
}

impl RevocationReason {
    /// The canonical name stores write.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Logout => "logout",
            Self::LogoutEverywhere => "logout_everywhere",
            Self::LogoutOtherDevices => "logout_other_devices",
            Self::ReplacedByLogin => "replaced_by_login",
            Self::Admin => "admin",
            Self::ReuseDetected => "reuse_detected",
        }
    }

    /// Every reason, for stores that validate what they read.
    pub const ALL: [Self; 6] = [
        Self::Logout,
        Self::LogoutEverywhere,
        Self::LogoutOtherDevices,
        Self::ReplacedByLogin,
        Self::Admin,
        Self::ReuseDetected,
    ];
}

impl fmt::Display for RevocationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown revocation reason was read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown revocation reason")]
pub struct ParseRevocationReasonError;

impl FromStr for RevocationReason {
    type Err = ParseRevocationReasonError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or(ParseRevocationReasonError)
    }
}

/// A revocation request: why, and who asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    /// Why.
    pub reason: RevocationReason,
    /// Who asked (an admin's id, say), if anyone in particular.
    pub actor: Option<String>,
}

impl Revocation {
    /// A revocation with no particular actor.
    pub fn new(reason: RevocationReason) -> Self {
        Self {
            reason,
            actor: None,
        }
    }

    /// Names who asked.
    pub fn by(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(actor.into());
        self
    }
}

impl From<RevocationReason> for Revocation {
    fn from(reason: RevocationReason) -> Self {
        Self::new(reason)
    }
}

/// The revocation stamped on a stored record. Monotonic: never removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revoked {
    /// When.
    pub at: OffsetDateTime,
    /// Why and by whom.
    pub revocation: Revocation,
}

/// Which credential slot of a record a lookup key is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Slot {
    /// The secret the client should be using now.
    Current,
    /// The secret that was current before the last rotation, accepted until
    /// its `valid_until`.
    Previous,
}

/// A credential slot: the lookup key of one secret, and its key version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Credential {
    /// `HMAC(key[key_version], DOMAIN || secret)`.
    pub lookup_key: LookupKey,
    /// The version of the server key it was derived under.
    pub key_version: KeyVersion,
}

/// The previous credential slot: a rotated-away secret, still accepted until
/// `valid_until` so that requests already in flight are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PreviousCredential {
    /// The rotated-away credential.
    pub credential: Credential,
    /// The end of its grace window.
    pub valid_until: OffsetDateTime,
}

/// A session as a store keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionRecord {
    /// Opaque, random, store-wide unique.
    pub id: SessionId,
    /// Whom the session belongs to: non-empty, at most [`MAX_SUBJECT_LEN`] bytes.
    pub subject: String,
    /// When the session was created.
    pub created_at: OffsetDateTime,
    /// When the session was last used (updated at most once per touch interval).
    pub last_seen_at: OffsetDateTime,
    /// Idle expiry: slides on use, never past `absolute_expires_at`.
    pub expires_at: OffsetDateTime,
    /// Hard cap on the session's life; never extended.
    pub absolute_expires_at: OffsetDateTime,
    /// When the current secret is due for rotation.
    pub access_expires_at: OffsetDateTime,
    /// The current secret's credential.
    pub current: Credential,
    /// The previous secret's credential, within or past its grace window.
    pub previous: Option<PreviousCredential>,
    /// Set once, never cleared.
    pub revoked: Option<Revoked>,
    /// A small JSON map: device label, tenant, user agent, application data.
    pub attributes: Attributes,
}

impl SessionRecord {
    /// Whether the record is live at `now`: not revoked and past neither expiry.
    pub fn is_active(&self, now: OffsetDateTime) -> bool {
        self.revoked.is_none() && now < self.expires_at && now < self.absolute_expires_at
    }

    /// The view handlers and lists get, with the key version of `slot`.
    pub fn to_active(&self, key_version: KeyVersion) -> ActiveSessionRecord {
        ActiveSessionRecord {
            id: self.id,
            subject: self.subject.clone(),
            created_at: self.created_at,
            last_seen_at: self.last_seen_at,
            expires_at: self.expires_at,
            absolute_expires_at: self.absolute_expires_at,
            attributes: self.attributes.clone(),
            key_version,
        }
    }

    /// The credential in `slot`, if any.
    pub fn credential(&self, slot: Slot) -> Option<Credential> {
        match slot {
            Slot::Current => Some(self.current),
            Slot::Previous => self.previous.map(|p| p.credential),
        }
    }

    /// Checks the invariants every store relies on; a record read back from a
    /// store that fails them is corrupt.
    pub fn validate(&self) -> Result<(), &'static str> {
        validate_subject(&self.subject)?;
        if self.expires_at > self.absolute_expires_at {
            return Err("expires_at is past absolute_expires_at");
        }
        if self.last_seen_at < self.created_at {
            return Err("last_seen_at is before created_at");
        }
        if let Some(previous) = &self.previous
            && previous.credential.lookup_key == self.current.lookup_key
        {
            return Err("current and previous slots hold the same lookup key");
        }
        validate_attributes(&self.attributes)
    }
}

/// Checks a subject: non-empty, at most [`MAX_SUBJECT_LEN`] bytes, no control characters.
pub(crate) fn validate_subject(subject: &str) -> Result<(), &'static str> {
    if subject.is_empty() {
        return Err("the subject is empty");
    }
    if subject.len() > MAX_SUBJECT_LEN {
        return Err("the subject is longer than 256 bytes");
    }
    if subject.chars().any(char::is_control) {
        return Err("the subject contains control characters");
    }
    Ok(())
}

/// Checks an attribute map's size: at most [`MAX_ATTRIBUTES_LEN`] bytes of compact JSON.
pub(crate) fn validate_attributes(attributes: &Attributes) -> Result<(), &'static str> {
    if attributes.is_empty() {
        return Ok(());
    }
    match serde_json::to_vec(attributes) {
        Ok(json) if json.len() <= MAX_ATTRIBUTES_LEN => Ok(()),
        Ok(_) => Err("the attributes are larger than 4096 bytes of JSON"),
        Err(_) => Err("the attributes cannot be serialized"),
    }
}

/// A live session, as handlers and session lists see it. Holds no secret and
/// no lookup key.
#[derive(Clone, Debug, PartialEq)]
pub struct ActiveSessionRecord {
    /// The session's id.
    pub id: SessionId,
    /// Whom it belongs to.
    pub subject: String,
    /// When it was created.
    pub created_at: OffsetDateTime,
    /// When it was last used (precise to the touch interval).
    pub last_seen_at: OffsetDateTime,
    /// Idle expiry.
    pub expires_at: OffsetDateTime,
    /// Hard expiry.
    pub absolute_expires_at: OffsetDateTime,
    /// The session's attributes.
    pub attributes: Attributes,
    /// The key version of the credential that matched (for lists: of the
    /// current credential).
    pub key_version: KeyVersion,
}

impl ActiveSessionRecord {
    /// Whom the session belongs to.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The session's id.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// Reads one attribute as `T`; `None` if absent or of another shape.
    pub fn attribute<T: serde::de::DeserializeOwned>(&self, key: &str) -> Option<T> {
        self.attributes
            .get(key)
            .and_then(|v| T::deserialize(v).ok())
    }
}

/// What [`SessionStore::find_active`](crate::SessionStore::find_active) found.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionMatch {
    /// The matching record. It is active (not revoked, not expired). Shared,
    /// so a store that keeps records in memory hands out a reference count
    /// rather than a copy.
    pub record: Arc<SessionRecord>,
    /// The slot whose lookup key matched.
    pub slot: Slot,
    /// The key version of the matching candidate.
    pub key_version: KeyVersion,
}

impl SessionMatch {
    /// The matched lookup key.
    pub fn lookup_key(&self) -> Option<LookupKey> {
        self.record.credential(self.slot).map(|c| c.lookup_key)
    }

    /// Whether the match is a previous secret presented after its grace
    /// window: a replay of a rotated token.
    pub fn is_stale_previous(&self, now: OffsetDateTime) -> bool {
        match (self.slot, &self.record.previous) {
            (Slot::Previous, Some(previous)) => now >= previous.valid_until,
            _ => false,
        }
    }
}

/// The new timestamps a rotation writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RotationTimestamps {
    /// The request's time.
    pub last_seen_at: OffsetDateTime,
    /// The new idle expiry (stores cap it at `absolute_expires_at`).
    pub expires_at: OffsetDateTime,
    /// When the new secret is due for rotation.
    pub access_expires_at: OffsetDateTime,
}

/// The outcome of [`SessionStore::revoke`](crate::SessionStore::revoke).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevokeOutcome {
    /// The session was live and is now revoked.
    Revoked,
    /// The session was revoked before; nothing changed.
    AlreadyRevoked,
    /// No such session (never existed, or purged).
    NotFound,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_parse_only_in_canonical_form() {
        let id = SessionId::from_bytes([0xab; 16]);
        assert_eq!(id.to_string(), "ab".repeat(16));
        assert_eq!("ab".repeat(16).parse::<SessionId>(), Ok(id));
        assert!("AB".repeat(16).parse::<SessionId>().is_err());
        assert!("ab".repeat(15).parse::<SessionId>().is_err());
        assert!("zz".repeat(16).parse::<SessionId>().is_err());
    }

    #[test]
    fn revocation_reasons_round_trip() {
        for reason in RevocationReason::ALL {
            assert_eq!(reason.as_str().parse(), Ok(reason));
        }
        assert!("revived".parse::<RevocationReason>().is_err());
    }

    #[test]
    fn subjects_and_attributes_are_bounded() {
        assert!(validate_subject("").is_err());
        assert!(validate_subject(&"a".repeat(257)).is_err());
        assert!(validate_subject("a\nb").is_err());
        assert!(validate_subject("user-42").is_ok());
        let mut big = Attributes::new();
        big.insert("x".into(), "y".repeat(5000).into());
        assert!(validate_attributes(&big).is_err());
        let mut small = Attributes::new();
        small.insert("device".into(), "laptop".into());
        assert!(validate_attributes(&small).is_ok());
    }
}
