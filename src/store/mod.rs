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

use crate::keys::{Candidate, KeyVersion, LookupKey};
use crate::record::{
    ActiveSessionRecord, Attributes, Credential, Revocation, RevokeOutcome, RotationTimestamps,
    SessionId, SessionMatch, SessionRecord, Slot,
};

#[cfg(feature = "memory")]
mod memory;
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "redis"))]
pub(crate) mod raw;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) mod sql;
#[cfg(feature = "sqlite")]
mod sqlite;
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
    /// oversized attributes, …).
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
/// condition, returning whether it did. Timestamps are passed in, never read
/// from the store's clock, so a test clock governs every rule.
///
/// Implement it for your own backend and run the
/// [`conformance`](crate::conformance) suite against it.
#[async_trait]
pub trait SessionStore: Send + Sync + std::fmt::Debug + 'static {
    /// Finds the record whose current or previous slot holds one of
    /// `candidates` (with the same key version), and which is not revoked
    /// and expires neither idly nor absolutely at or before `now`.
    ///
    /// A previous-slot match past its `valid_until` is still returned (the
    /// caller detects the replay with [`SessionMatch::is_stale_previous`]).
    async fn find_active(
        &self,
        candidates: &[Candidate],
        now: OffsetDateTime,
    ) -> Result<Option<SessionMatch>, StoreError>;

    /// Inserts a new record.
    ///
    /// # Errors
    ///
    /// [`StoreError::Conflict`] if the id or a lookup key already exists.
    async fn insert(&self, record: &SessionRecord) -> Result<(), StoreError>;

    /// Rotates the secret: if the record is active at
    /// `timestamps.last_seen_at` and its current lookup key is
    /// `expected_current`, the current credential moves to the previous slot
    /// (valid until `previous_valid_until`; an older previous is forgotten),
    /// `new_current` becomes current, and the timestamps are written
    /// (`expires_at` capped at `absolute_expires_at`). Returns whether it
    /// applied.
    async fn rotate(
        &self,
        id: &SessionId,
        expected_current: &LookupKey,
        new_current: &Credential,
        previous_valid_until: OffsetDateTime,
        timestamps: &RotationTimestamps,
    ) -> Result<bool, StoreError>;

    /// Slides the idle expiry: if the record is active at `last_seen_at` and
    /// its stored `last_seen_at` is earlier, writes both (`expires_at` capped
    /// at `absolute_expires_at`). Returns whether it applied.
    async fn touch(
        &self,
        id: &SessionId,
        last_seen_at: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    /// Re-keys one slot: if the record is not revoked and `slot` holds
    /// `expected`, replaces it with `new` under `new_version`. Returns
    /// whether it applied.
    async fn rekey(
        &self,
        id: &SessionId,
        slot: Slot,
        expected: &LookupKey,
        new: &LookupKey,
        new_version: KeyVersion,
    ) -> Result<bool, StoreError>;

    /// Replaces the attribute map of a record active at `now`. Returns
    /// whether it applied (never on a revoked or expired record).
    async fn update_attributes(
        &self,
        id: &SessionId,
        attributes: &Attributes,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    /// Revokes one session. Idempotent; a revocation is never replaced.
    async fn revoke(
        &self,
        id: &SessionId,
        now: OffsetDateTime,
        revocation: &Revocation,
    ) -> Result<RevokeOutcome, StoreError>;

    /// Revokes, atomically, every unrevoked session of `subject` except
    /// `except`. Returns how many it revoked.
    async fn revoke_all_for_subject(
        &self,
        subject: &str,
        now: OffsetDateTime,
        revocation: &Revocation,
        except: Option<&SessionId>,
    ) -> Result<u64, StoreError>;

    /// The active sessions of `subject`, newest (`created_at`) first; ties
    /// broken by id. Each carries its current key version.
    async fn list_for_subject(
        &self,
        subject: &str,
        now: OffsetDateTime,
    ) -> Result<Vec<ActiveSessionRecord>, StoreError>;

    /// How many active records use each key version: a record counts under
    /// its current credential's version and, while its grace window lasts,
    /// under its previous credential's (so it may count twice). A version
    /// whose count is zero can be removed from the ring.
    async fn count_by_key_version(
        &self,
        now: OffsetDateTime,
    ) -> Result<BTreeMap<KeyVersion, u64>, StoreError>;

    /// Deletes every record that is revoked or expired at `now`. Returns how
    /// many.
    async fn purge_expired(&self, now: OffsetDateTime) -> Result<u64, StoreError>;
}

macro_rules! forward_store {
    ($ty:ty) => {
        #[async_trait]
        impl<S: SessionStore + ?Sized> SessionStore for $ty {
            async fn find_active(
                &self,
                candidates: &[Candidate],
                now: OffsetDateTime,
            ) -> Result<Option<SessionMatch>, StoreError> {
                (**self).find_active(candidates, now).await
            }
            async fn insert(&self, record: &SessionRecord) -> Result<(), StoreError> {
                (**self).insert(record).await
            }
            async fn rotate(
                &self,
                id: &SessionId,
                expected_current: &LookupKey,
                new_current: &Credential,
                previous_valid_until: OffsetDateTime,
                timestamps: &RotationTimestamps,
            ) -> Result<bool, StoreError> {
                (**self)
                    .rotate(
                        id,
                        expected_current,
                        new_current,
                        previous_valid_until,
                        timestamps,
                    )
                    .await
            }
            async fn touch(
                &self,
                id: &SessionId,
                last_seen_at: OffsetDateTime,
                expires_at: OffsetDateTime,
            ) -> Result<bool, StoreError> {
                (**self).touch(id, last_seen_at, expires_at).await
            }
            async fn rekey(
                &self,
                id: &SessionId,
                slot: Slot,
                expected: &LookupKey,
                new: &LookupKey,
                new_version: KeyVersion,
            ) -> Result<bool, StoreError> {
                (**self).rekey(id, slot, expected, new, new_version).await
            }
            async fn update_attributes(
                &self,
                id: &SessionId,
                attributes: &Attributes,
                now: OffsetDateTime,
            ) -> Result<bool, StoreError> {
                (**self).update_attributes(id, attributes, now).await
            }
            async fn revoke(
                &self,
                id: &SessionId,
                now: OffsetDateTime,
                revocation: &Revocation,
            ) -> Result<RevokeOutcome, StoreError> {
                (**self).revoke(id, now, revocation).await
            }
            async fn revoke_all_for_subject(
                &self,
                subject: &str,
                now: OffsetDateTime,
                revocation: &Revocation,
                except: Option<&SessionId>,
            ) -> Result<u64, StoreError> {
                (**self)
                    .revoke_all_for_subject(subject, now, revocation, except)
                    .await
            }
            async fn list_for_subject(
                &self,
                subject: &str,
                now: OffsetDateTime,
            ) -> Result<Vec<ActiveSessionRecord>, StoreError> {
                (**self).list_for_subject(subject, now).await
            }
            async fn count_by_key_version(
                &self,
                now: OffsetDateTime,
            ) -> Result<BTreeMap<KeyVersion, u64>, StoreError> {
                (**self).count_by_key_version(now).await
            }
            async fn purge_expired(&self, now: OffsetDateTime) -> Result<u64, StoreError> {
                (**self).purge_expired(now).await
            }
        }
    };
}

forward_store!(Arc<S>);
forward_store!(Box<S>);
