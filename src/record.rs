//! Session records: what stores keep and what handlers see.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use crate::keys::{KeyVersion, LookupKey};
use crate::secret::fill_random;

/// The longest subject accepted, in bytes.
pub const MAX_SUBJECT_LEN: usize = 256;

/// The largest session data accepted, in bytes of compact JSON.
pub const MAX_DATA_LEN: usize = 4096;

/// The longest user agent recorded, in bytes.
pub const MAX_USER_AGENT_LEN: usize = 256;

/// A session's data: a small JSON object (a CSRF token, a flash message, a
/// theme, …).
pub type Data = serde_json::Map<String, serde_json::Value>;

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

impl serde::Serialize for SessionId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SessionId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
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

/// Why a session was revoked. Serialized as its canonical name
/// (`"reuse_detected"`, …).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
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
    /// An old secret was presented again (after the grace of a confirmed
    /// successor, or a superseded one): two parties hold the session.
    ReuseDetected,
    /// A new login of the same subject went past
    /// `max_sessions_per_subject`: the least recently used session ended.
    SessionLimit,
    /// Its user ended it from another of their sessions (a "your devices"
    /// page).
    RevokedByUser,
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
            Self::SessionLimit => "session_limit",
            Self::RevokedByUser => "revoked_by_user",
        }
    }

    /// Every reason, for stores that validate what they read.
    pub const ALL: [Self; 8] = [
        Self::Logout,
        Self::LogoutEverywhere,
        Self::LogoutOtherDevices,
        Self::ReplacedByLogin,
        Self::Admin,
        Self::ReuseDetected,
        Self::SessionLimit,
        Self::RevokedByUser,
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
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

    /// Names who asked (at most [`MAX_SUBJECT_LEN`] bytes, no control
    /// characters: checked by [`validate`](Self::validate) before it is stored).
    pub fn by(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(actor.into());
        self
    }

    /// Checks the actor like a subject, so every backend stores the same
    /// values.
    pub fn validate(&self) -> Result<(), &'static str> {
        match &self.actor {
            Some(actor) => validate_subject(actor).map_err(|_| {
                "the revocation actor is empty, longer than 256 bytes, or has control characters"
            }),
            None => Ok(()),
        }
    }
}

impl From<RevocationReason> for Revocation {
    fn from(reason: RevocationReason) -> Self {
        Self::new(reason)
    }
}

/// The revocation stamped on a stored record. Monotonic: never removed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Revoked {
    /// When (RFC 3339 in serialized form).
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Why and by whom.
    pub revocation: Revocation,
}

/// Which credential slot of a record a lookup key is in.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Slot {
    /// The secret the client should be using now.
    Current,
    /// The secret that was current before the last rotation: valid while the
    /// current one is unconfirmed, then for a grace window.
    Previous,
    /// A successor that a re-rotation replaced before anyone presented it.
    /// Presenting it means two parties hold the session's cookies.
    Superseded,
}

/// A credential slot: the lookup key of one secret, and its key version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Credential {
    /// `HMAC(key[key_version], DOMAIN || secret)`.
    pub lookup_key: LookupKey,
    /// The version of the server key it was derived under.
    pub key_version: KeyVersion,
}

/// The previous credential slot: the secret that was current before the
/// last rotation.
///
/// While the current secret is unconfirmed (`valid_until` is `None`) the
/// client may never have received it (a lost response), so the previous
/// secret stays valid; once a request presents the current secret, the
/// previous one is valid until `valid_until`, for requests in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PreviousCredential {
    /// The rotated-away credential.
    pub credential: Credential,
    /// When the last rotation (or re-rotation) issued the current secret:
    /// a previous secret presented within the grace after it is a request
    /// in flight.
    pub rotated_at: OffsetDateTime,
    /// The end of its grace window; `None` while the current secret is
    /// unconfirmed.
    pub valid_until: Option<OffsetDateTime>,
}

/// A session as a store keeps it.
///
/// Stores treat it as a whole: every write but `insert` and the revocations
/// is a compare-and-swap on [`generation`](Self::generation)
/// ([`SessionStore::replace`](crate::SessionStore::replace)). The rules that
/// produce the next record live in one place in the crate, not in stores.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionRecord {
    /// Opaque, random, store-wide unique.
    pub id: SessionId,
    /// Incremented by every replacement: the compare-and-swap token.
    pub generation: u64,
    /// Whom the session belongs to: `None` for a session before login;
    /// otherwise non-empty, at most [`MAX_SUBJECT_LEN`] bytes.
    pub subject: Option<String>,
    /// When the session was created.
    pub created_at: OffsetDateTime,
    /// When the subject last proved who they are (login, re-authentication);
    /// `None` before login.
    pub authenticated_at: Option<OffsetDateTime>,
    /// When the session was last used (updated at most once per touch interval).
    pub last_seen_at: OffsetDateTime,
    /// Idle expiry: slides on use, never past `absolute_expires_at`.
    pub expires_at: OffsetDateTime,
    /// Hard cap on the session's life; never extended.
    pub absolute_expires_at: OffsetDateTime,
    /// This session's idle timeout (whole seconds).
    pub idle_timeout: Duration,
    /// Whether the cookie carries `Max-Age` (runs to `absolute_expires_at`)
    /// or lasts for the browser session.
    pub persistent: bool,
    /// When the current secret is due for rotation.
    pub access_expires_at: OffsetDateTime,
    /// The current secret's credential.
    pub current: Credential,
    /// The previous secret's credential.
    pub previous: Option<PreviousCredential>,
    /// A successor replaced by a re-rotation before anyone presented it.
    pub superseded: Option<Credential>,
    /// Set once, never cleared.
    pub revoked: Option<Revoked>,
    /// The client's `User-Agent` at login (at most [`MAX_USER_AGENT_LEN`] bytes).
    pub user_agent: Option<String>,
    /// The client's address at login.
    pub client_ip: Option<IpAddr>,
    /// Small typed data handlers keep in the session.
    pub data: Data,
}

impl SessionRecord {
    /// Whether the record is live at `now`: not revoked and past neither expiry.
    pub fn is_active(&self, now: OffsetDateTime) -> bool {
        self.revoked.is_none() && now < self.expires_at && now < self.absolute_expires_at
    }

    /// The view handlers and lists get, with the key version of the matched
    /// credential.
    pub fn to_active(&self, key_version: KeyVersion) -> ActiveSessionRecord {
        ActiveSessionRecord {
            id: self.id,
            subject: self.subject.clone(),
            created_at: self.created_at,
            authenticated_at: self.authenticated_at,
            last_seen_at: self.last_seen_at,
            expires_at: self.expires_at,
            absolute_expires_at: self.absolute_expires_at,
            persistent: self.persistent,
            user_agent: self.user_agent.clone(),
            client_ip: self.client_ip,
            data: self.data.clone(),
            key_version,
        }
    }

    /// The credential in `slot`, if any.
    pub fn credential(&self, slot: Slot) -> Option<Credential> {
        match slot {
            Slot::Current => Some(self.current),
            Slot::Previous => self.previous.map(|p| p.credential),
            Slot::Superseded => self.superseded,
        }
    }

    /// Every credential the record holds, with its slot.
    pub fn credentials(&self) -> impl Iterator<Item = (Slot, Credential)> + '_ {
        [Slot::Current, Slot::Previous, Slot::Superseded]
            .into_iter()
            .filter_map(|slot| self.credential(slot).map(|c| (slot, c)))
    }

    /// The slot holding `candidate` (same lookup key and key version), if any.
    pub fn slot_of(&self, lookup_key: &LookupKey, key_version: KeyVersion) -> Option<Slot> {
        self.credentials()
            .find(|(_, c)| c.lookup_key == *lookup_key && c.key_version == key_version)
            .map(|(slot, _)| slot)
    }

    /// Checks the invariants every store relies on; a record read back from a
    /// store that fails them is corrupt, and one given to a store is refused.
    pub fn validate(&self) -> Result<(), &'static str> {
        if let Some(subject) = &self.subject {
            validate_subject(subject)?;
        }
        if self.expires_at > self.absolute_expires_at {
            return Err("expires_at is past absolute_expires_at");
        }
        if self.last_seen_at < self.created_at {
            return Err("last_seen_at is before created_at");
        }
        if self.idle_timeout.subsec_nanos() != 0 || self.idle_timeout.is_zero() {
            return Err("the idle timeout is not a positive whole number of seconds");
        }
        if self.idle_timeout.as_secs() > i64::MAX as u64 {
            return Err("the idle timeout is out of range");
        }
        if self.subject.is_none() && self.authenticated_at.is_some() {
            return Err("a session without a subject has an authentication time");
        }
        let mut keys = [None; 3];
        for (i, (_, credential)) in self.credentials().enumerate() {
            if keys.contains(&Some(credential.lookup_key)) {
                return Err("two slots hold the same lookup key");
            }
            keys[i] = Some(credential.lookup_key);
        }
        if let Some(user_agent) = &self.user_agent {
            validate_user_agent(user_agent)?;
        }
        // The persistent stores check the actor when they read a record
        // back: one they would call corrupt must not be written.
        if let Some(revoked) = &self.revoked {
            revoked.revocation.validate()?;
        }
        validate_data(&self.data)
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

/// Checks a user agent: at most [`MAX_USER_AGENT_LEN`] bytes, no control characters.
pub(crate) fn validate_user_agent(user_agent: &str) -> Result<(), &'static str> {
    if user_agent.len() > MAX_USER_AGENT_LEN {
        return Err("the user agent is longer than 256 bytes");
    }
    if user_agent.chars().any(char::is_control) {
        return Err("the user agent contains control characters");
    }
    Ok(())
}

/// How deep a value in session data may nest arrays and objects. The stores
/// read data back with serde_json, which refuses more than 128 levels (the
/// data map itself is one): deeper data would be written and then read as
/// corrupt. 64 leaves room below that limit.
pub(crate) const MAX_DATA_DEPTH: usize = 64;

/// Checks session data: at most [`MAX_DATA_LEN`] bytes of compact JSON, no
/// NUL character in any key or string (so every backend stores the same
/// values: PostgreSQL's `jsonb` cannot hold one), and values nested at most
/// [`MAX_DATA_DEPTH`] levels (so every backend can read them back).
pub(crate) fn validate_data(data: &Data) -> Result<(), &'static str> {
    if data.is_empty() {
        return Ok(());
    }
    /// Recursion stops at the depth limit, however deep the value.
    fn check(value: &serde_json::Value, depth: usize) -> Result<(), &'static str> {
        let deeper = || {
            if depth < MAX_DATA_DEPTH {
                Ok(depth + 1)
            } else {
                Err("session data is nested more than 64 levels deep")
            }
        };
        match value {
            serde_json::Value::String(s) if s.contains('\0') => Err(NUL),
            serde_json::Value::Array(items) => {
                let depth = deeper()?;
                items.iter().try_for_each(|v| check(v, depth))
            }
            serde_json::Value::Object(map) => {
                let depth = deeper()?;
                map.iter().try_for_each(|(k, v)| {
                    if k.contains('\0') {
                        Err(NUL)
                    } else {
                        check(v, depth)
                    }
                })
            }
            _ => Ok(()),
        }
    }
    const NUL: &str = "session data holds a NUL character";
    for (key, value) in data {
        if key.contains('\0') {
            return Err(NUL);
        }
        check(value, 0)?;
    }
    /// Counts the bytes of compact JSON without keeping them.
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    match serde_json::to_writer(&mut counter, data) {
        Ok(()) if counter.0 <= MAX_DATA_LEN => Ok(()),
        Ok(()) => Err("the session data is larger than 4096 bytes of JSON"),
        Err(_) => Err("the session data cannot be serialized"),
    }
}

/// A change to session data: keys set and keys removed, applied by
/// [`DataPatch::apply`] on whatever the record holds when it is written, so
/// two requests changing different keys both persist and a key one request
/// removed is never written back by another.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DataPatch {
    set: Data,
    removed: BTreeSet<String>,
}

impl DataPatch {
    /// Whether the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.removed.is_empty()
    }

    /// Sets `key` to `value` (and forgets an earlier removal of it).
    pub fn set(&mut self, key: String, value: serde_json::Value) {
        self.removed.remove(&key);
        self.set.insert(key, value);
    }

    /// Removes `key` (and forgets an earlier set of it).
    pub fn remove(&mut self, key: String) {
        self.set.remove(&key);
        self.removed.insert(key);
    }

    /// What the patch does to `key`: `Some(Some(value))` sets it,
    /// `Some(None)` removes it, `None` leaves it alone.
    pub fn get(&self, key: &str) -> Option<Option<&serde_json::Value>> {
        match self.set.get(key) {
            Some(value) => Some(Some(value)),
            None => self.removed.contains(key).then_some(None),
        }
    }

    /// Applies the patch to `data`.
    pub fn apply(&self, data: &mut Data) {
        for key in &self.removed {
            data.remove(key);
        }
        for (key, value) in &self.set {
            data.insert(key.clone(), value.clone());
        }
    }
}

/// A live session, as handlers and session lists see it. Holds no secret and
/// no lookup key, and its serialized form leaves out the session's data, so
/// it can be sent to the client as it is (`Json(session.devices().await?)`);
/// timestamps serialize as RFC 3339.
///
/// ```
/// use tower_hmac_session::{Data, KeyRing, MemoryStore, SessionConfig, SessionManager};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let keys = KeyRing::builder().key(1, [7u8; 32]).build().unwrap();
/// let sessions = SessionManager::new(MemoryStore::new(), keys, SessionConfig::default());
/// let issued = sessions.create_session("user-42", Data::new()).await.unwrap();
/// let json = serde_json::to_value(&issued.record).unwrap();
/// assert_eq!(json["id"], issued.record.id.to_string());
/// assert_eq!(json["subject"], "user-42");
/// # });
/// ```
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ActiveSessionRecord {
    /// The session's id.
    pub id: SessionId,
    /// Whom it belongs to; `None` before login.
    pub subject: Option<String>,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When the subject last proved who they are; `None` before login.
    #[serde(with = "time::serde::rfc3339::option")]
    pub authenticated_at: Option<OffsetDateTime>,
    /// When it was last used (precise to the touch interval).
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen_at: OffsetDateTime,
    /// Idle expiry.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Hard expiry.
    #[serde(with = "time::serde::rfc3339")]
    pub absolute_expires_at: OffsetDateTime,
    /// Whether the cookie outlives the browser session.
    pub persistent: bool,
    /// The client's `User-Agent` at login.
    pub user_agent: Option<String>,
    /// The client's address at login.
    pub client_ip: Option<IpAddr>,
    /// The session's data. Server-side state (OAuth state, CSRF tokens, …):
    /// never serialized, so a device list sent to a browser cannot leak
    /// another session's data.
    #[serde(skip)]
    pub data: Data,
    /// The key version of the credential that matched (for lists: of the
    /// current credential).
    pub key_version: KeyVersion,
}

impl ActiveSessionRecord {
    /// Whom the session belongs to; `None` before login.
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    /// The session's id.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// Reads one data value as `T`; `None` if absent or of another shape.
    pub fn get<T: serde::de::DeserializeOwned>(&self, key: &str) -> Option<T> {
        self.data.get(key).and_then(|v| T::deserialize(v).ok())
    }
}

/// One record [`SessionStore::find_active`](crate::SessionStore::find_active) matched.
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
    /// Which cookie value the matching candidate came from.
    pub value_index: u8,
}

impl SessionMatch {
    /// The matched lookup key.
    pub fn lookup_key(&self) -> Option<LookupKey> {
        self.record.credential(self.slot).map(|c| c.lookup_key)
    }
}

/// How many live sessions use one key version; see
/// [`SessionStore::count_by_key_version`](crate::SessionStore::count_by_key_version).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VersionCount {
    /// Seen within the recent window: their clients are active, and each is
    /// re-keyed to the current version on its next request.
    pub recent: u64,
    /// Not seen within the window. A dormant session's secret is only ever
    /// presented by its own client, so it cannot be re-keyed ahead of time:
    /// retiring the version ends these sessions.
    pub dormant: u64,
}

impl VersionCount {
    /// Every live session under the version.
    pub fn total(&self) -> u64 {
        self.recent + self.dormant
    }
}

/// The outcome of [`SessionStore::revoke`](crate::SessionStore::revoke).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokeOutcome {
    /// The session was not revoked before and now is. A session that
    /// expired but is still stored (not yet purged) is stamped too.
    Revoked,
    /// The session was revoked before; nothing changed.
    AlreadyRevoked,
    /// No such session (never existed, purged, or not the given subject's).
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
    fn public_data_types_serialize_as_users_expect() {
        let id = SessionId::from_bytes([0xab; 16]);
        assert_eq!(
            serde_json::to_value(id).unwrap(),
            serde_json::json!("ab".repeat(16))
        );
        assert_eq!(
            serde_json::from_value::<SessionId>(serde_json::json!("ab".repeat(16))).unwrap(),
            id
        );
        assert!(serde_json::from_value::<SessionId>(serde_json::json!("AB".repeat(16))).is_err());
        assert_eq!(
            serde_json::to_value(RevocationReason::ReuseDetected).unwrap(),
            serde_json::json!("reuse_detected")
        );
        for reason in RevocationReason::ALL {
            assert_eq!(
                serde_json::to_value(reason).unwrap(),
                serde_json::json!(reason.as_str())
            );
        }
        let at = OffsetDateTime::from_unix_timestamp(1_893_456_000).unwrap();
        let record = ActiveSessionRecord {
            id,
            subject: Some("alice".into()),
            created_at: at,
            authenticated_at: None,
            last_seen_at: at,
            expires_at: at,
            absolute_expires_at: at,
            persistent: true,
            user_agent: Some("curl".into()),
            client_ip: Some("192.0.2.1".parse().unwrap()),
            data: Data::new(),
            key_version: KeyVersion(2),
        };
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["created_at"], "2030-01-01T00:00:00Z");
        assert_eq!(json["authenticated_at"], serde_json::Value::Null);
        assert_eq!(json["client_ip"], "192.0.2.1");
        assert_eq!(json["key_version"], 2);
        assert_eq!(
            serde_json::from_value::<ActiveSessionRecord>(json).unwrap(),
            record
        );
    }

    #[test]
    fn revocation_reasons_round_trip() {
        for reason in RevocationReason::ALL {
            assert_eq!(reason.as_str().parse(), Ok(reason));
        }
        assert!("revived".parse::<RevocationReason>().is_err());
    }

    #[test]
    fn subjects_and_data_are_bounded() {
        assert!(validate_subject("").is_err());
        assert!(validate_subject(&"a".repeat(257)).is_err());
        assert!(validate_subject("a\nb").is_err());
        assert!(validate_subject("user-42").is_ok());
        let mut big = Data::new();
        big.insert("x".into(), "y".repeat(5000).into());
        assert!(validate_data(&big).is_err());
        let mut small = Data::new();
        small.insert("device".into(), "laptop".into());
        assert!(validate_data(&small).is_ok());
    }

    #[test]
    fn nul_characters_are_refused_anywhere_in_data() {
        for value in [
            serde_json::json!("a\u{0}b"),
            serde_json::json!(["ok", "n\u{0}"]),
            serde_json::json!({"in\u{0}key": 1}),
        ] {
            let mut data = Data::new();
            data.insert("k".into(), value);
            assert!(validate_data(&data).is_err());
        }
        let mut key = Data::new();
        key.insert("k\u{0}".into(), 1.into());
        assert!(validate_data(&key).is_err());
    }

    #[test]
    fn patches_set_and_remove_on_the_data_they_are_applied_to() {
        let mut patch = DataPatch::default();
        patch.set("a".into(), 1.into());
        patch.remove("b".into());
        patch.set("c".into(), 3.into());
        patch.remove("c".into());
        let mut data = Data::new();
        data.insert("b".into(), 2.into());
        data.insert("c".into(), 0.into());
        data.insert("d".into(), 4.into());
        patch.apply(&mut data);
        assert_eq!(
            serde_json::Value::Object(data),
            serde_json::json!({"a": 1, "d": 4})
        );
        assert!(DataPatch::default().is_empty());
        assert!(!patch.is_empty());
    }
}
