//! The [`SessionStore`] trait, its error type, and the backends.
//!
//! A store is a small async trait. Every method is one atomic operation on
//! the backend, and every write is conditional: a revoked record is never
//! written back to life, a rotated-away credential never becomes current
//! again, and a lost compare-and-swap reports `false` rather than
//! overwriting. The rules are checked by the public
//! [`conformance`](crate::conformance) suite (feature `conformance`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::keys::{Candidate, KeyVersion};
use crate::record::{
    ActiveSessionRecord, Revocation, RevokeOutcome, SessionId, SessionMatch, SessionRecord,
    VersionCount,
};

#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod kept;
#[cfg(feature = "memory")]
mod memory;
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "fuzzing"))]
pub(crate) mod raw;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) mod sql;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(any(feature = "postgres", feature = "redis"))]
pub(crate) mod value;

/// Microseconds since the Unix epoch, rounded down: the stored form of an
/// instant in every persistent store (sub-microsecond digits are dropped).
#[cfg(any(
    feature = "sqlite",
    feature = "postgres",
    feature = "redis",
    feature = "fuzzing"
))]
pub(crate) fn to_micros(t: OffsetDateTime) -> i64 {
    // Every `OffsetDateTime` (years ±9999) fits: ±3.2e17 µs < i64::MAX;
    // with time's `large-dates` (enabled by some other crate) one might
    // not, and saturates, which no instant decodes from: corruption on
    // read, never a panic. Whole seconds are rounded down and the
    // nanoseconds within the second are never negative, so this is the
    // floor (in 64 bits, not 128).
    t.unix_timestamp()
        .saturating_mul(1_000_000)
        .saturating_add(i64::from(t.nanosecond() / 1_000))
}

/// The inverse of [`to_micros`]; `None` outside the representable years.
#[cfg(any(
    feature = "sqlite",
    feature = "postgres",
    feature = "redis",
    feature = "fuzzing"
))]
pub(crate) fn from_micros(micros: i64) -> Option<OffsetDateTime> {
    // Whole seconds (rounded down) and the microseconds past them, in 64
    // bits: the same instant as `from_unix_timestamp_nanos(micros × 1000)`.
    let nanos = u32::try_from(micros.rem_euclid(1_000_000) * 1_000).ok()?;
    OffsetDateTime::from_unix_timestamp(micros.div_euclid(1_000_000))
        .ok()?
        .replace_nanosecond(nanos)
        .ok()
}
#[cfg(feature = "sqlite")]
#[doc(inline)]
pub use sqlite::SqliteStore;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "memory")]
#[doc(inline)]
pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
#[doc(inline)]
pub use postgres::PostgresStore;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "redis")]
#[doc(inline)]
pub use self::redis::{RedisStore, RedisStoreBuilder};

/// The sqlx the SQL stores are built on, re-exported so that the pool
/// `PostgresStore::in_schema` takes can be built without a sqlx dependency
/// of your own (or with the same version as ours).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "sqlite", feature = "postgres"))))]
pub use sqlx;

/// A boxed error from a store's client library.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a store operation failed.
///
/// Errors carry their source (the driver's error) and never a secret or a
/// lookup key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An insert collided with an existing id or lookup key.
    #[error("a session with this id or lookup key already exists")]
    Conflict,
    /// The backend could not be reached or failed.
    #[error("session store backend failed during `{operation}`")]
    Backend {
        /// The trait method that failed.
        operation: &'static str,
        /// The driver's error.
        #[source]
        source: BoxError,
    },
    /// The operation did not finish within the configured store timeout.
    #[error("session store operation `{operation}` timed out after {timeout:?}")]
    Timeout {
        /// The trait method that timed out.
        operation: &'static str,
        /// The configured limit.
        timeout: Duration,
    },
    /// A stored record failed to decode or broke an invariant.
    #[error("corrupt session record{}: {reason}", .id.map(|id| format!(" {id}")).unwrap_or_default())]
    Corrupt {
        /// The record's id, when it could be read.
        id: Option<SessionId>,
        /// What is wrong (never the offending bytes).
        reason: String,
    },
    /// A record given to the store breaks an invariant (an empty subject,
    /// oversized data, …).
    #[error("invalid session record: {0}")]
    Invalid(&'static str),
    /// The store did not apply a write the request depends on: the session
    /// stopped being active in the meantime.
    #[error("the store did not apply `{operation}`: the session is no longer active")]
    NotApplied {
        /// The trait method whose condition failed.
        operation: &'static str,
    },
}

impl StoreError {
    /// Wraps a driver error.
    pub fn backend(operation: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Backend {
            operation,
            source: source.into(),
        }
    }

    /// A corruption error for record `id`.
    pub fn corrupt(id: Option<SessionId>, reason: impl Into<String>) -> Self {
        Self::Corrupt {
            id,
            reason: reason.into(),
        }
    }
}

/// Where sessions live. Object safe: the manager holds an
/// `Arc<dyn SessionStore>`.
///
/// Each method is one atomic operation on the backend (one round trip where
/// the backend allows), and each write applies only under its stated
/// condition, checked when the write happens, returning whether it did.
/// Timestamps are passed in, never read from the store's clock, so a test
/// clock governs every rule.
///
/// The session's lifecycle (confirm, rotate, re-rotate, renew, touch,
/// re-key, data patches) is decided by the crate, which hands the store the
/// next version of the record; the store only has to apply it atomically
/// with [`replace`](Self::replace), a compare-and-swap on
/// [`SessionRecord::generation`]. So no backend can get a rule subtly
/// different from another.
///
/// Implement it for your own backend and run the
/// [`conformance`](crate::conformance) suite against it. A store need not
/// be `Debug`; `dyn SessionStore` is (it prints as `dyn SessionStore`), so a
/// type holding an `Arc<dyn SessionStore>` can derive `Debug`.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Every record active at `now` (not revoked, and expiring neither idly
    /// nor absolutely at or before `now`) that holds one of `candidates` in
    /// any slot (current, previous or superseded) with the candidate's key
    /// version. One [`SessionMatch`] per matching candidate, carrying the
    /// slot, the key version and the candidate's `value_index`; the order is
    /// unspecified.
    ///
    /// A previous secret past its grace and a superseded secret are
    /// returned like any other match: the caller decides that they are reuse.
    async fn find_active(
        &self,
        candidates: &[Candidate],
        now: OffsetDateTime,
    ) -> Result<Vec<SessionMatch>, StoreError>;

    /// The record `id` if it is active at `now`.
    async fn get_active(
        &self,
        id: &SessionId,
        now: OffsetDateTime,
    ) -> Result<Option<Arc<SessionRecord>>, StoreError>;

    /// Inserts a new record.
    ///
    /// # Errors
    ///
    /// [`StoreError::Conflict`] if the id or a lookup key already exists;
    /// [`StoreError::Invalid`] if the record fails
    /// [`SessionRecord::validate`].
    async fn insert(&self, record: &SessionRecord) -> Result<(), StoreError>;

    /// Inserts a new record like [`insert`](Self::insert) and, in the same
    /// atomic operation, keeps its subject within `cap`: the subject's
    /// sessions active at `now`, other than `cap.except` (the session a login
    /// replaces, which it revokes itself), are revoked with `cap.revocation`,
    /// least recently used first (`last_seen_at`, then `created_at`, then
    /// id, ascending), until fewer than `cap.max_sessions` remain; then the
    /// record is inserted. Returns the ids it revoked. A record without a
    /// subject is inserted without any of this. On a conflict nothing is
    /// revoked.
    ///
    /// # Errors
    ///
    /// As [`insert`](Self::insert).
    async fn insert_capped(
        &self,
        record: &SessionRecord,
        now: OffsetDateTime,
        cap: &SubjectCap,
    ) -> Result<Vec<SessionId>, StoreError>;

    /// Compare-and-swap of a whole record: if the stored record `current.id`
    /// still has generation `current.generation` and is active at `now`, it
    /// becomes `next`, and the lookup keys follow `next`'s slots (a key only
    /// `current` held stops resolving; a key only `next` holds resolves).
    /// Returns whether it applied.
    ///
    /// `next.generation` is `current.generation + 1`; `id`, `subject`,
    /// `created_at` and `absolute_expires_at` never change. Call
    /// [`check_successor`] first: it refuses a `next` that breaks either
    /// rule or fails [`SessionRecord::validate`]. A revoked or expired record
    /// is never replaced, so nothing written here can revive a session.
    ///
    /// Lookup keys are unique store-wide by their bytes, whatever the key
    /// version and the slot.
    ///
    /// A store may also refuse (`Ok(false)`) a `current` that differs from
    /// the stored record in more than the generation (the PostgreSQL and
    /// Redis stores compare the whole header: keys, expiries, subject). It
    /// must not refuse a `current` equal to the record
    /// [`get_active`](Self::get_active) returns for the same id and a time
    /// at or after `now`: the layer takes such a refusal for corruption.
    ///
    /// # Errors
    ///
    /// [`StoreError::Invalid`] if `next` fails [`SessionRecord::validate`]
    /// or is not `current`'s successor; [`StoreError::Conflict`] if a new
    /// lookup key belongs to another record.
    async fn replace(
        &self,
        current: &SessionRecord,
        next: &SessionRecord,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    /// Revokes one session, only if it belongs to `subject` when one is
    /// given (a session without a subject never matches). Idempotent; a
    /// revocation is never replaced.
    async fn revoke(
        &self,
        id: &SessionId,
        subject: Option<&str>,
        now: OffsetDateTime,
        revocation: &Revocation,
    ) -> Result<RevokeOutcome, StoreError>;

    /// Revokes, atomically, every session of `subject` active at `now`
    /// except `except`. Returns how many it revoked: an expired session is
    /// over already, and is neither revoked nor counted.
    async fn revoke_all_for_subject(
        &self,
        subject: &str,
        now: OffsetDateTime,
        revocation: &Revocation,
        except: Option<&SessionId>,
    ) -> Result<u64, StoreError>;

    /// The active sessions of `subject`, newest (`created_at`) first; ties
    /// broken by ascending id. Each carries its current key version.
    async fn list_for_subject(
        &self,
        subject: &str,
        now: OffsetDateTime,
    ) -> Result<Vec<ActiveSessionRecord>, StoreError>;

    /// How many active records use each key version, split into those seen
    /// at or after `seen_since` (recent) and the others (dormant). A record
    /// counts under its current credential's version and, while its previous
    /// secret is still accepted (unconfirmed successor, or within its
    /// grace), under the previous credential's version if that differs.
    /// Sessions before login count too (retiring a version ends them as
    /// well). Versions with no session may be left out.
    async fn count_by_key_version(
        &self,
        now: OffsetDateTime,
        seen_since: OffsetDateTime,
    ) -> Result<BTreeMap<KeyVersion, VersionCount>, StoreError>;

    /// Deletes every record that is revoked or expired at `now`. Returns how
    /// many.
    async fn purge_expired(&self, now: OffsetDateTime) -> Result<u64, StoreError>;
}

/// The future every [`SessionStore`] method returns once `#[async_trait]`
/// has expanded it.
type StoreFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A store need not be `Debug`; behind `dyn` it prints as its kind, so a
/// type holding an `Arc<dyn SessionStore>` can derive `Debug`.
impl std::fmt::Debug for dyn SessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dyn SessionStore")
    }
}

/// `SessionStore` for a pointer to a store, handing out the store's own
/// future: an `async fn` here would box a second future around it on every
/// call, and a manager calls its store through an `Arc`. (The signatures
/// are the ones `#[async_trait]` gives the trait's methods.)
macro_rules! forward_store {
    ($ty:ty) => {
        impl<S: SessionStore + ?Sized> SessionStore for $ty {
            fn find_active<'life0, 'life1, 'async_trait>(
                &'life0 self,
                candidates: &'life1 [Candidate],
                now: OffsetDateTime,
            ) -> StoreFuture<'async_trait, Vec<SessionMatch>>
            where
                'life0: 'async_trait,
                'life1: 'async_trait,
                Self: 'async_trait,
            {
                (**self).find_active(candidates, now)
            }
            fn get_active<'life0, 'life1, 'async_trait>(
                &'life0 self,
                id: &'life1 SessionId,
                now: OffsetDateTime,
            ) -> StoreFuture<'async_trait, Option<Arc<SessionRecord>>>
            where
                'life0: 'async_trait,
                'life1: 'async_trait,
                Self: 'async_trait,
            {
                (**self).get_active(id, now)
            }
            fn insert<'life0, 'life1, 'async_trait>(
                &'life0 self,
                record: &'life1 SessionRecord,
            ) -> StoreFuture<'async_trait, ()>
            where
                'life0: 'async_trait,
                'life1: 'async_trait,
                Self: 'async_trait,
            {
                (**self).insert(record)
            }
            fn insert_capped<'life0, 'life1, 'life2, 'async_trait>(
                &'life0 self,
                record: &'life1 SessionRecord,
                now: OffsetDateTime,
                cap: &'life2 SubjectCap,
            ) -> StoreFuture<'async_trait, Vec<SessionId>>
            where
                'life0: 'async_trait,
                'life1: 'async_trait,
                'life2: 'async_trait,
                Self: 'async_trait,
            {
                (**self).insert_capped(record, now, cap)
            }
            fn replace<'life0, 'life1, 'life2, 'async_trait>(
                &'life0 self,
                current: &'life1 SessionRecord,
                next: &'life2 SessionRecord,
                now: OffsetDateTime,
            ) -> StoreFuture<'async_trait, bool>
            where
                'life0: 'async_trait,
                'life1: 'async_trait,
                'life2: 'async_trait,
                Self: 'async_trait,
            {
                (**self).replace(current, next, now)
            }
            fn revoke<'life0, 'life1, 'life2, 'life3, 'async_trait>(
                &'life0 self,
                id: &'life1 SessionId,
                subject: Option<&'life2 str>,
                now: OffsetDateTime,
                revocation: &'life3 Revocation,
            ) -> StoreFuture<'async_trait, RevokeOutcome>
            where
                'life0: 'async_trait,
                'life1: 'async_trait,
                'life2: 'async_trait,
                'life3: 'async_trait,
                Self: 'async_trait,
            {
                (**self).revoke(id, subject, now, revocation)
            }
            fn revoke_all_for_subject<'life0, 'life1, 'life2, 'life3, 'async_trait>(
                &'life0 self,
                subject: &'life1 str,
                now: OffsetDateTime,
                revocation: &'life2 Revocation,
                except: Option<&'life3 SessionId>,
            ) -> StoreFuture<'async_trait, u64>
            where
                'life0: 'async_trait,
                'life1: 'async_trait,
                'life2: 'async_trait,
                'life3: 'async_trait,
                Self: 'async_trait,
            {
                (**self).revoke_all_for_subject(subject, now, revocation, except)
            }
            fn list_for_subject<'life0, 'life1, 'async_trait>(
                &'life0 self,
                subject: &'life1 str,
                now: OffsetDateTime,
            ) -> StoreFuture<'async_trait, Vec<ActiveSessionRecord>>
            where
                'life0: 'async_trait,
                'life1: 'async_trait,
                Self: 'async_trait,
            {
                (**self).list_for_subject(subject, now)
            }
            fn count_by_key_version<'life0, 'async_trait>(
                &'life0 self,
                now: OffsetDateTime,
                seen_since: OffsetDateTime,
            ) -> StoreFuture<'async_trait, BTreeMap<KeyVersion, VersionCount>>
            where
                'life0: 'async_trait,
                Self: 'async_trait,
            {
                (**self).count_by_key_version(now, seen_since)
            }
            fn purge_expired<'life0, 'async_trait>(
                &'life0 self,
                now: OffsetDateTime,
            ) -> StoreFuture<'async_trait, u64>
            where
                'life0: 'async_trait,
                Self: 'async_trait,
            {
                (**self).purge_expired(now)
            }
        }
    };
}

forward_store!(Arc<S>);
forward_store!(Box<S>);

/// The per-subject session limit [`SessionStore::insert_capped`] applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubjectCap {
    /// The most active sessions a subject may have, the new one included
    /// (at least 1).
    pub max_sessions: u32,
    /// A session neither counted nor revoked: the one the login replaces.
    pub except: Option<SessionId>,
    /// What the revoked sessions are stamped with.
    pub revocation: Revocation,
}

/// Checks what [`SessionStore::replace`] requires of `next` before a store
/// writes it: valid, `current`'s successor (same id, subject, creation time
/// and absolute expiry; generation one more), and not revoked (revocations
/// go through [`SessionStore::revoke`]).
pub fn check_successor(current: &SessionRecord, next: &SessionRecord) -> Result<(), StoreError> {
    next.validate().map_err(StoreError::Invalid)?;
    if next.id != current.id
        || next.subject != current.subject
        || next.created_at != current.created_at
        || next.absolute_expires_at != current.absolute_expires_at
    {
        return Err(StoreError::Invalid(
            "a replacement changes the id, subject, creation time or absolute expiry",
        ));
    }
    if next.revoked.is_some() {
        // Revocations go through `revoke`, which keeps them monotonic.
        return Err(StoreError::Invalid(
            "a replacement may not revoke the session",
        ));
    }
    if Some(next.generation) != current.generation.checked_add(1) {
        return Err(StoreError::Invalid(
            "a replacement's generation is not the current one plus one",
        ));
    }
    Ok(())
}
