//! What every check shares: a fixed clock, record builders, and assertions
//! on what a lookup key resolves to.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use crate::keys::{Candidate, KeyVersion, LookupKey};
use crate::record::{
    Credential, Data, PreviousCredential, Revocation, RevocationReason, SessionId, SessionMatch,
    SessionRecord, Slot,
};
use crate::store::{SessionStore, StoreError};

/// The store under test, shared with spawned tasks.
pub(super) type Store = Arc<dyn SessionStore>;

/// 2030-01-01T00:00:00Z plus `secs` seconds. Fixed, so that a store that
/// reads its own clock instead of the `now` it is given fails.
pub(super) fn t(secs: i64) -> OffsetDateTime {
    OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(1_893_456_000 + secs)
}

/// [`t`] plus `micros` microseconds: stores keep microsecond precision.
pub(super) fn tu(secs: i64, micros: i64) -> OffsetDateTime {
    t(secs) + time::Duration::microseconds(micros)
}

/// One microsecond, the precision every store keeps.
pub(super) const MICROSECOND: time::Duration = time::Duration::microseconds(1);

pub(super) fn random_key() -> LookupKey {
    let mut bytes = [0u8; 32];
    crate::secret::fill_random(&mut bytes);
    LookupKey::from_bytes(bytes)
}

/// A fresh random credential under key `version`.
pub(super) fn credential(version: u32) -> Credential {
    Credential {
        lookup_key: random_key(),
        key_version: KeyVersion(version),
    }
}

/// The candidate a request presenting `c`'s secret as its cookie value
/// number `value_index` yields under `c`'s key version.
pub(super) fn candidate(c: &Credential, value_index: u8) -> Candidate {
    Candidate {
        key_version: c.key_version,
        lookup_key: c.lookup_key,
        value_index,
    }
}

/// A previous slot holding `credential`, rotated away at `t(rotated_at)`,
/// valid until `valid_until` (`None`: its successor is unconfirmed).
pub(super) fn previous(
    credential: Credential,
    rotated_at: i64,
    valid_until: Option<i64>,
) -> PreviousCredential {
    PreviousCredential {
        credential,
        rotated_at: t(rotated_at),
        valid_until: valid_until.map(t),
    }
}

/// A live record created at `t(created)`, generation 0: idle expiry at
/// +1000 s, absolute at +5000 s, access expiry at +100 s, one credential
/// under key version 1, no data. With a subject, it logged in when created.
pub(super) fn record(subject: Option<&str>, created: i64) -> SessionRecord {
    SessionRecord {
        id: SessionId::generate(),
        generation: 0,
        subject: subject.map(str::to_owned),
        created_at: t(created),
        authenticated_at: subject.map(|_| t(created)),
        last_seen_at: t(created),
        expires_at: t(created + 1000),
        absolute_expires_at: t(created + 5000),
        idle_timeout: Duration::from_secs(1000),
        persistent: false,
        access_expires_at: t(created + 100),
        current: credential(1),
        previous: None,
        superseded: None,
        revoked: None,
        user_agent: None,
        client_ip: None,
        data: Data::new(),
    }
}

/// A logged-in session of `subject`; see [`record`].
pub(super) fn session(subject: &str, created: i64) -> SessionRecord {
    record(Some(subject), created)
}

/// A session before login; see [`record`].
pub(super) fn anonymous(created: i64) -> SessionRecord {
    record(None, created)
}

/// The record a write replaces `record` with: the same, one generation on.
/// Each transition check edits its fields by hand, as the crate would.
pub(super) fn successor(record: &SessionRecord) -> SessionRecord {
    let mut next = record.clone();
    next.generation = record.generation + 1;
    next
}

pub(super) fn revocation() -> Revocation {
    Revocation::new(RevocationReason::Admin).by("conformance")
}

/// Unwraps a store result; an error fails the check.
pub(super) fn ok<T>(check: &str, result: Result<T, StoreError>) -> T {
    match result {
        Ok(value) => value,
        Err(error) => panic!("conformance check `{check}`: the store failed: {error:?}"),
    }
}

pub(super) async fn insert(check: &str, store: &Store, record: &SessionRecord) {
    ok(check, store.insert(record).await);
}

/// Every match of `candidates` at `now`, sorted by value index then slot
/// (the store's order is unspecified).
pub(super) async fn find(
    check: &str,
    store: &Store,
    candidates: &[Candidate],
    now: OffsetDateTime,
) -> Vec<SessionMatch> {
    let mut matches = ok(check, store.find_active(candidates, now).await);
    matches.sort_by_key(|m| (m.value_index, m.slot));
    matches
}

/// The record `id` if active at `now`.
pub(super) async fn get(
    check: &str,
    store: &Store,
    id: &SessionId,
    now: OffsetDateTime,
) -> Option<SessionRecord> {
    ok(check, store.get_active(id, now).await).map(|r| (*r).clone())
}

/// Asserts that `credential` resolves at `now` to exactly one match: record
/// `id`, in `slot`, under the credential's key version, with the
/// candidate's value index. Returns the matched record.
pub(super) async fn assert_resolves(
    check: &str,
    store: &Store,
    credential: &Credential,
    slot: Slot,
    id: &SessionId,
    now: OffsetDateTime,
) -> SessionRecord {
    let matches = find(check, store, &[candidate(credential, 1)], now).await;
    let [m] = matches.as_slice() else {
        panic!(
            "`{check}`: a {slot:?} lookup key gave {} matches, not 1",
            matches.len()
        );
    };
    assert_eq!(
        m.record.id, *id,
        "`{check}`: a {slot:?} lookup key resolved to another record"
    );
    assert_eq!(m.slot, slot, "`{check}`: the slot of a {slot:?} lookup key");
    assert_eq!(
        m.key_version, credential.key_version,
        "`{check}`: the key version of a {slot:?} lookup key"
    );
    assert_eq!(
        m.value_index, 1,
        "`{check}`: the value index of a {slot:?} lookup key"
    );
    (*m.record).clone()
}

/// Asserts that `credential` resolves to nothing at `now`; `what` names it.
pub(super) async fn assert_unknown(
    check: &str,
    store: &Store,
    credential: &Credential,
    now: OffsetDateTime,
    what: &str,
) {
    let matches = find(check, store, &[candidate(credential, 0)], now).await;
    assert!(
        matches.is_empty(),
        "`{check}`: {what} resolved to {} match(es), expected none",
        matches.len()
    );
}

/// Asserts that the stored record `expected.id` is `expected`, whole, at
/// `now`: by id, and through each of its lookup keys in its slot.
pub(super) async fn assert_stored(
    check: &str,
    store: &Store,
    expected: &SessionRecord,
    now: OffsetDateTime,
) {
    let by_id = get(check, store, &expected.id, now).await;
    assert_eq!(
        by_id.as_ref(),
        Some(expected),
        "`{check}`: get_active does not return the record as written"
    );
    for (slot, credential) in expected.credentials() {
        let found = assert_resolves(check, store, &credential, slot, &expected.id, now).await;
        assert_eq!(
            &found, expected,
            "`{check}`: find_active by the {slot:?} lookup key does not \
             return the record as written"
        );
    }
}

/// Asserts that a replace applied, and that the store now holds `next`.
pub(super) async fn replaced(
    check: &str,
    store: &Store,
    current: &SessionRecord,
    next: &SessionRecord,
    now: OffsetDateTime,
    what: &str,
) {
    let applied = ok(check, store.replace(current, next, now).await);
    assert!(applied, "`{check}`: {what}: the replace did not apply");
    assert_stored(check, store, next, now).await;
}
