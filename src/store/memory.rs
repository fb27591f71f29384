//! [`MemoryStore`]: sessions in a process-local map.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use time::OffsetDateTime;

use super::{SessionStore, StoreError};
use crate::keys::{Candidate, KeyVersion, LookupKey};
use crate::record::{
    ActiveSessionRecord, Attributes, Credential, PreviousCredential, Revocation, RevokeOutcome,
    Revoked, RotationTimestamps, SessionId, SessionMatch, SessionRecord, Slot, validate_attributes,
};

/// An in-memory [`SessionStore`]: embedded, for tests and single-process apps.
///
/// Lookup by lookup key is one hash probe per candidate; a per-subject index
/// serves lists and "log out everywhere" without a scan. Every operation
/// takes one lock, so each is atomic. Sessions do not survive a restart: use
/// the SQLite store for that. Cloning shares the same sessions.
///
/// ```
/// use tower_hmac_session::{KeyRing, MemoryStore, SessionConfig, SessionManager};
///
/// let keys = KeyRing::builder().key(1, [7u8; 32]).build().unwrap();
/// let sessions = SessionManager::new(MemoryStore::new(), keys, SessionConfig::default());
/// # let _ = sessions;
/// ```
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<RwLock<Inner>>,
}

#[derive(Default)]
struct Inner {
    /// Shared with the requests that found them: a hit is a reference count,
    /// not a copy; writes copy only a record a request still holds.
    records: HashMap<SessionId, Arc<SessionRecord>, RandomKeyHash>,
    /// Both slots of every record, so a previous secret is found too.
    by_lookup: HashMap<LookupKey, SessionId, RandomKeyHash>,
    /// Most subjects have one or two sessions: a list beats a hash set.
    by_subject: HashMap<String, Vec<SessionId>>,
}

/// Hashes keys that are already uniformly random by their first 8 bytes.
///
/// Safe against hash flooding because no client chooses these keys: a
/// lookup key is an HMAC under a server key, and an id is 128 bits from the
/// CSPRNG. Subjects, which applications choose, keep std's SipHash.
#[derive(Clone, Copy, Default)]
struct RandomKeyHash;

impl std::hash::BuildHasher for RandomKeyHash {
    type Hasher = PrefixHasher;

    fn build_hasher(&self) -> PrefixHasher {
        PrefixHasher(0)
    }
}

/// See [`RandomKeyHash`].
#[derive(Default)]
struct PrefixHasher(u64);

impl std::hash::Hasher for PrefixHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // `[u8; N]` hashes as its length, then its bytes: keep the first
        // 8 bytes of the longest write, the key itself.
        if bytes.len() >= 8 {
            let mut prefix = [0u8; 8];
            prefix.copy_from_slice(&bytes[..8]);
            self.0 = u64::from_le_bytes(prefix);
        }
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("records", &self.read().records.len())
            .finish()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many records the store holds, live or not (until purged).
    pub fn len(&self) -> usize {
        self.read().records.len()
    }

    /// Whether the store holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of every stored record, for inspection and tests.
    pub fn records(&self) -> Vec<SessionRecord> {
        self.read()
            .records
            .values()
            .map(|r| (**r).clone())
            .collect()
    }

    // No code panics while holding the lock, so a poisoned lock still guards
    // consistent data.
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }
}

fn cap(expires_at: OffsetDateTime, record: &SessionRecord) -> OffsetDateTime {
    expires_at.min(record.absolute_expires_at)
}

impl Inner {
    fn remove(&mut self, id: &SessionId) {
        let Some(record) = self.records.remove(id) else {
            return;
        };
        self.by_lookup.remove(&record.current.lookup_key);
        if let Some(previous) = record.previous {
            self.by_lookup.remove(&previous.credential.lookup_key);
        }
        if let Some(ids) = self.by_subject.get_mut(record.subject.as_str()) {
            ids.retain(|other| other != id);
            if ids.is_empty() {
                self.by_subject.remove(record.subject.as_str());
            }
        }
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn find_active(
        &self,
        candidates: &[Candidate],
        now: OffsetDateTime,
    ) -> Result<Option<SessionMatch>, StoreError> {
        let inner = self.read();
        for candidate in candidates {
            let Some(record) = inner
                .by_lookup
                .get(&candidate.lookup_key)
                .and_then(|id| inner.records.get(id))
            else {
                continue;
            };
            let slot = [Slot::Current, Slot::Previous].into_iter().find(|&slot| {
                record.credential(slot)
                    == Some(Credential {
                        lookup_key: candidate.lookup_key,
                        key_version: candidate.key_version,
                    })
            });
            match slot {
                Some(slot) if record.is_active(now) => {
                    return Ok(Some(SessionMatch {
                        record: record.clone(),
                        slot,
                        key_version: candidate.key_version,
                    }));
                }
                // Lookup keys are unique store-wide: an inactive hit means
                // the secret is dead under every version.
                Some(_) => return Ok(None),
                None => continue,
            }
        }
        Ok(None)
    }

    async fn insert(&self, record: &SessionRecord) -> Result<(), StoreError> {
        record.validate().map_err(StoreError::Invalid)?;
        let mut inner = self.write();
        let previous_key = record.previous.map(|p| p.credential.lookup_key);
        if inner.records.contains_key(&record.id)
            || inner.by_lookup.contains_key(&record.current.lookup_key)
            || previous_key.is_some_and(|k| inner.by_lookup.contains_key(&k))
        {
            return Err(StoreError::Conflict);
        }
        inner.by_lookup.insert(record.current.lookup_key, record.id);
        if let Some(key) = previous_key {
            inner.by_lookup.insert(key, record.id);
        }
        inner
            .by_subject
            .entry(record.subject.clone())
            .or_insert_with(|| Vec::with_capacity(1))
            .push(record.id);
        inner.records.insert(record.id, Arc::new(record.clone()));
        Ok(())
    }

    async fn rotate(
        &self,
        id: &SessionId,
        expected_current: &LookupKey,
        new_current: &Credential,
        previous_valid_until: OffsetDateTime,
        timestamps: &RotationTimestamps,
    ) -> Result<bool, StoreError> {
        let mut inner = self.write();
        let inner = &mut *inner;
        let Some(record) = inner.records.get_mut(id) else {
            return Ok(false);
        };
        if !record.is_active(timestamps.last_seen_at)
            || record.current.lookup_key != *expected_current
        {
            return Ok(false);
        }
        if inner.by_lookup.contains_key(&new_current.lookup_key) {
            return Err(StoreError::Conflict);
        }
        let record = Arc::make_mut(record);
        if let Some(forgotten) = record.previous.take() {
            inner.by_lookup.remove(&forgotten.credential.lookup_key);
        }
        inner.by_lookup.insert(new_current.lookup_key, *id);
        record.previous = Some(PreviousCredential {
            credential: record.current,
            valid_until: previous_valid_until,
        });
        record.current = *new_current;
        record.last_seen_at = timestamps.last_seen_at;
        record.expires_at = cap(timestamps.expires_at, record);
        record.access_expires_at = timestamps.access_expires_at;
        Ok(true)
    }

    async fn touch(
        &self,
        id: &SessionId,
        last_seen_at: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let mut inner = self.write();
        match inner.records.get_mut(id) {
            Some(record)
                if record.is_active(last_seen_at) && record.last_seen_at < last_seen_at =>
            {
                let record = Arc::make_mut(record);
                record.last_seen_at = last_seen_at;
                record.expires_at = cap(expires_at, record);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn rekey(
        &self,
        id: &SessionId,
        slot: Slot,
        expected: &LookupKey,
        new: &LookupKey,
        new_version: KeyVersion,
    ) -> Result<bool, StoreError> {
        let mut inner = self.write();
        let inner = &mut *inner;
        let Some(record) = inner.records.get_mut(id) else {
            return Ok(false);
        };
        if record.revoked.is_some()
            || record.credential(slot).map(|c| c.lookup_key) != Some(*expected)
        {
            return Ok(false);
        }
        if inner.by_lookup.contains_key(new) {
            return Err(StoreError::Conflict);
        }
        let record = Arc::make_mut(record);
        let credential = match (slot, record.previous.as_mut()) {
            (Slot::Current, _) => &mut record.current,
            (Slot::Previous, Some(previous)) => &mut previous.credential,
            (Slot::Previous, None) => return Ok(false),
        };
        inner.by_lookup.remove(expected);
        inner.by_lookup.insert(*new, *id);
        *credential = Credential {
            lookup_key: *new,
            key_version: new_version,
        };
        Ok(true)
    }

    async fn update_attributes(
        &self,
        id: &SessionId,
        attributes: &Attributes,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        validate_attributes(attributes).map_err(StoreError::Invalid)?;
        let mut inner = self.write();
        match inner.records.get_mut(id) {
            Some(record) if record.is_active(now) => {
                Arc::make_mut(record).attributes = attributes.clone();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn revoke(
        &self,
        id: &SessionId,
        now: OffsetDateTime,
        revocation: &Revocation,
    ) -> Result<RevokeOutcome, StoreError> {
        let mut inner = self.write();
        Ok(match inner.records.get_mut(id) {
            None => RevokeOutcome::NotFound,
            Some(record) if record.revoked.is_some() => RevokeOutcome::AlreadyRevoked,
            Some(record) => {
                Arc::make_mut(record).revoked = Some(Revoked {
                    at: now,
                    revocation: revocation.clone(),
                });
                RevokeOutcome::Revoked
            }
        })
    }

    async fn revoke_all_for_subject(
        &self,
        subject: &str,
        now: OffsetDateTime,
        revocation: &Revocation,
        except: Option<&SessionId>,
    ) -> Result<u64, StoreError> {
        let mut inner = self.write();
        let inner = &mut *inner;
        let Some(ids) = inner.by_subject.get(subject) else {
            return Ok(0);
        };
        let mut count = 0;
        for id in ids.iter().filter(|id| Some(*id) != except) {
            if let Some(record) = inner.records.get_mut(id)
                && record.revoked.is_none()
            {
                Arc::make_mut(record).revoked = Some(Revoked {
                    at: now,
                    revocation: revocation.clone(),
                });
                count += 1;
            }
        }
        Ok(count)
    }

    async fn list_for_subject(
        &self,
        subject: &str,
        now: OffsetDateTime,
    ) -> Result<Vec<ActiveSessionRecord>, StoreError> {
        let inner = self.read();
        let mut list: Vec<ActiveSessionRecord> = inner
            .by_subject
            .get(subject)
            .into_iter()
            .flatten()
            .filter_map(|id| inner.records.get(id))
            .filter(|r| r.is_active(now))
            .map(|r| r.to_active(r.current.key_version))
            .collect();
        list.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        Ok(list)
    }

    async fn count_by_key_version(
        &self,
        now: OffsetDateTime,
    ) -> Result<BTreeMap<KeyVersion, u64>, StoreError> {
        let inner = self.read();
        let mut counts = BTreeMap::new();
        for record in inner.records.values().filter(|r| r.is_active(now)) {
            let current = record.current.key_version;
            *counts.entry(current).or_insert(0) += 1;
            if let Some(previous) = &record.previous
                && previous.valid_until > now
                && previous.credential.key_version != current
            {
                *counts.entry(previous.credential.key_version).or_insert(0) += 1;
            }
        }
        Ok(counts)
    }

    async fn purge_expired(&self, now: OffsetDateTime) -> Result<u64, StoreError> {
        let mut inner = self.write();
        let dead: Vec<SessionId> = inner
            .records
            .values()
            .filter(|r| !r.is_active(now))
            .map(|r| r.id)
            .collect();
        for id in &dead {
            inner.remove(id);
        }
        Ok(dead.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher as _;

    use super::*;

    #[test]
    fn random_keys_hash_by_their_first_eight_bytes() {
        let mut a = [0u8; 32];
        a[..8].copy_from_slice(&7u64.to_le_bytes());
        let mut b = a;
        b[..8].copy_from_slice(&9u64.to_le_bytes());
        let h = RandomKeyHash;
        assert_eq!(h.hash_one(LookupKey::from_bytes(a)), 7);
        assert_eq!(h.hash_one(LookupKey::from_bytes(b)), 9);
        let id = SessionId::from_bytes([1; 16]);
        assert_eq!(h.hash_one(id), u64::from_le_bytes([1; 8]));
    }
}
