//! [`MemoryStore`]: sessions in a process-local map.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use time::OffsetDateTime;

use super::{SessionStore, StoreError, SubjectCap, check_successor};
use crate::keys::{Candidate, KeyVersion, LookupKey};
use crate::record::{
    ActiveSessionRecord, Revocation, RevokeOutcome, Revoked, SessionId, SessionMatch,
    SessionRecord, VersionCount,
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

impl Inner {
    /// Whether the record's id or one of its lookup keys is taken.
    fn conflicts(&self, record: &SessionRecord) -> bool {
        self.records.contains_key(&record.id)
            || record
                .credentials()
                .any(|(_, c)| self.by_lookup.contains_key(&c.lookup_key))
    }

    fn insert(&mut self, record: &SessionRecord) -> Result<(), StoreError> {
        if self.conflicts(record) {
            return Err(StoreError::Conflict);
        }
        for (_, credential) in record.credentials() {
            self.by_lookup.insert(credential.lookup_key, record.id);
        }
        if let Some(subject) = &record.subject {
            self.by_subject
                .entry(subject.clone())
                .or_insert_with(|| Vec::with_capacity(1))
                .push(record.id);
        }
        self.records.insert(record.id, Arc::new(record.clone()));
        Ok(())
    }

    fn remove(&mut self, id: &SessionId) {
        let Some(record) = self.records.remove(id) else {
            return;
        };
        for (_, credential) in record.credentials() {
            self.by_lookup.remove(&credential.lookup_key);
        }
        if let Some(subject) = &record.subject
            && let Some(ids) = self.by_subject.get_mut(subject.as_str())
        {
            ids.retain(|other| other != id);
            if ids.is_empty() {
                self.by_subject.remove(subject.as_str());
            }
        }
    }

    fn revoke(&mut self, id: &SessionId, now: OffsetDateTime, revocation: &Revocation) -> bool {
        match self.records.get_mut(id) {
            Some(record) if record.revoked.is_none() => {
                Arc::make_mut(record).revoked = Some(Revoked {
                    at: now,
                    revocation: revocation.clone(),
                });
                true
            }
            _ => false,
        }
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn find_active(
        &self,
        candidates: &[Candidate],
        now: OffsetDateTime,
    ) -> Result<Vec<SessionMatch>, StoreError> {
        let inner = self.read();
        let mut matches = Vec::new();
        for candidate in candidates {
            let Some(record) = inner
                .by_lookup
                .get(&candidate.lookup_key)
                .and_then(|id| inner.records.get(id))
            else {
                continue;
            };
            if !record.is_active(now) {
                continue;
            }
            if let Some(slot) = record.slot_of(&candidate.lookup_key, candidate.key_version) {
                matches.push(SessionMatch {
                    record: record.clone(),
                    slot,
                    key_version: candidate.key_version,
                    value_index: candidate.value_index,
                });
            }
        }
        Ok(matches)
    }

    async fn get_active(
        &self,
        id: &SessionId,
        now: OffsetDateTime,
    ) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        Ok(self
            .read()
            .records
            .get(id)
            .filter(|r| r.is_active(now))
            .cloned())
    }

    async fn insert(&self, record: &SessionRecord) -> Result<(), StoreError> {
        record.validate().map_err(StoreError::Invalid)?;
        self.write().insert(record)
    }

    async fn insert_capped(
        &self,
        record: &SessionRecord,
        now: OffsetDateTime,
        cap: &SubjectCap,
    ) -> Result<Vec<SessionId>, StoreError> {
        record.validate().map_err(StoreError::Invalid)?;
        cap.revocation.validate().map_err(StoreError::Invalid)?;
        // One lock for the conflict check, the evictions and the insert.
        let mut inner = self.write();
        if inner.conflicts(record) {
            return Err(StoreError::Conflict);
        }
        let mut evicted = Vec::new();
        if let Some(subject) = &record.subject {
            let mut live: Vec<(OffsetDateTime, OffsetDateTime, SessionId)> = inner
                .by_subject
                .get(subject.as_str())
                .into_iter()
                .flatten()
                .filter(|id| Some(**id) != cap.except)
                .filter_map(|id| inner.records.get(id))
                .filter(|r| r.is_active(now))
                .map(|r| (r.last_seen_at, r.created_at, r.id))
                .collect();
            live.sort();
            let keep = cap.max_sessions.saturating_sub(1) as usize;
            let excess = live.len().saturating_sub(keep);
            for (_, _, id) in live.into_iter().take(excess) {
                if inner.revoke(&id, now, &cap.revocation) {
                    evicted.push(id);
                }
            }
        }
        inner.insert(record)?;
        Ok(evicted)
    }

    async fn replace(
        &self,
        current: &SessionRecord,
        next: &SessionRecord,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        check_successor(current, next)?;
        let mut inner = self.write();
        let inner = &mut *inner;
        let Some(stored) = inner.records.get_mut(&current.id) else {
            return Ok(false);
        };
        // The condition is checked now, under the lock: the generation says
        // nothing changed since `current` was read, and the time is the
        // write's, so a request that outlived the session cannot revive it.
        if stored.generation != current.generation || !stored.is_active(now) {
            return Ok(false);
        }
        let taken = next.credentials().any(|(_, c)| {
            inner
                .by_lookup
                .get(&c.lookup_key)
                .is_some_and(|owner| *owner != current.id)
        });
        if taken {
            return Err(StoreError::Conflict);
        }
        for (_, old) in stored.credentials() {
            inner.by_lookup.remove(&old.lookup_key);
        }
        for (_, new) in next.credentials() {
            inner.by_lookup.insert(new.lookup_key, current.id);
        }
        // A new shared record: requests still holding the old one keep it.
        *stored = Arc::new(next.clone());
        Ok(true)
    }

    async fn revoke(
        &self,
        id: &SessionId,
        subject: Option<&str>,
        now: OffsetDateTime,
        revocation: &Revocation,
    ) -> Result<RevokeOutcome, StoreError> {
        // As every store does, so all of them keep the same values.
        revocation.validate().map_err(StoreError::Invalid)?;
        let mut inner = self.write();
        let Some(record) = inner.records.get(id) else {
            return Ok(RevokeOutcome::NotFound);
        };
        if subject.is_some() && record.subject.as_deref() != subject {
            return Ok(RevokeOutcome::NotFound);
        }
        Ok(match inner.revoke(id, now, revocation) {
            true => RevokeOutcome::Revoked,
            false => RevokeOutcome::AlreadyRevoked,
        })
    }

    async fn revoke_all_for_subject(
        &self,
        subject: &str,
        now: OffsetDateTime,
        revocation: &Revocation,
        except: Option<&SessionId>,
    ) -> Result<u64, StoreError> {
        revocation.validate().map_err(StoreError::Invalid)?;
        let mut inner = self.write();
        let Some(ids) = inner.by_subject.get(subject).cloned() else {
            return Ok(0);
        };
        // Only live sessions: an expired one is over already.
        let live: Vec<SessionId> = ids
            .iter()
            .filter(|id| Some(*id) != except)
            .filter(|id| inner.records.get(id).is_some_and(|r| r.is_active(now)))
            .copied()
            .collect();
        let revoked = live
            .iter()
            .filter(|id| inner.revoke(id, now, revocation))
            .count();
        Ok(revoked as u64)
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
        seen_since: OffsetDateTime,
    ) -> Result<BTreeMap<KeyVersion, VersionCount>, StoreError> {
        let inner = self.read();
        let mut counts: BTreeMap<KeyVersion, VersionCount> = BTreeMap::new();
        for record in inner.records.values().filter(|r| r.is_active(now)) {
            let recent = record.last_seen_at >= seen_since;
            let mut count = |version| {
                let entry = counts.entry(version).or_default();
                match recent {
                    true => entry.recent += 1,
                    false => entry.dormant += 1,
                }
            };
            count(record.current.key_version);
            if let Some(previous) = &record.previous
                && previous.valid_until.is_none_or(|until| until > now)
                && previous.credential.key_version != record.current.key_version
            {
                count(previous.credential.key_version);
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
