//! The public conformance suite, run on `MemoryStore`; and the suite itself
//! checked against stores with one bug each, so that no check goes vacuous.
#![cfg(all(feature = "conformance", feature = "memory"))]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;
use tower_hmac_session::conformance::{CHECKS, run};
use tower_hmac_session::{
    ActiveSessionRecord, Candidate, KeyVersion, MemoryStore, Revocation, RevokeOutcome, SessionId,
    SessionMatch, SessionRecord, SessionStore, Slot, StoreError, SubjectCap, VersionCount,
    check_successor,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_passes_the_conformance_suite() {
    run(|| async { MemoryStore::new() }).await;
}

/// A store behind a pointer passes as well: `Box` and `Arc` hand their
/// calls to the store inside (the manager calls its store through an `Arc`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_behind_box_and_arc_passes_the_conformance_suite() {
    run(|| async { Box::new(Arc::new(MemoryStore::new())) }).await;
}

/// One bug a store could have; each must fail the suite in the named check.
#[derive(Clone, Copy, Debug)]
enum Bug {
    /// `find_active` reports every match as cookie value 0.
    ValueIndexLost,
    /// `find_active` matches a lookup key under any key version.
    KeyVersionIgnored,
    /// `find_active` returns one match at most (the v1 contract).
    OneMatchOnly,
    /// Reads treat a record as live at its expiry instant.
    ExpiryInclusive,
    /// `replace` checks the record at the time it was read, not at `now`.
    ReadTimeCondition,
    /// `replace` overwrites whatever generation is stored.
    GenerationIgnored,
    /// `replace` checks the generation, then writes in a second step.
    CheckThenWrite,
    /// `revoke` reports `Revoked` for a session revoked before.
    AlreadyRevokedHidden,
    /// `revoke` ignores its subject filter.
    SubjectFilterIgnored,
    /// `revoke_all_for_subject` ignores `except`.
    ExceptionIgnored,
    /// `list_for_subject` breaks ties by descending id.
    TiesDescending,
    /// `count_by_key_version` still counts a grace that ends at `now`.
    GraceInclusive,
    /// `purge_expired` keeps a record that expires at `now`.
    PurgeExclusive,
    /// `insert_capped` counts the session the login replaces.
    CapCountsTheReplaced,
    /// `insert_capped` evicts the most recently created, not the least
    /// recently used.
    CapEvictsNewest,
}

/// Not `Debug`: a store need not be (nothing here requires it).
struct Broken {
    inner: MemoryStore,
    bug: Bug,
}

const MICROSECOND: time::Duration = time::Duration::microseconds(1);

#[async_trait]
impl SessionStore for Broken {
    async fn find_active(
        &self,
        candidates: &[Candidate],
        now: OffsetDateTime,
    ) -> Result<Vec<SessionMatch>, StoreError> {
        let now = match self.bug {
            Bug::ExpiryInclusive => now - MICROSECOND,
            _ => now,
        };
        let mut matches = match self.bug {
            Bug::KeyVersionIgnored => {
                let mut matches = Vec::new();
                for candidate in candidates {
                    for version in (0..16).chain([u32::MAX]) {
                        let any = Candidate {
                            key_version: KeyVersion(version),
                            ..*candidate
                        };
                        for mut m in self.inner.find_active(&[any], now).await? {
                            m.key_version = candidate.key_version;
                            matches.push(m);
                        }
                    }
                }
                matches
            }
            _ => self.inner.find_active(candidates, now).await?,
        };
        match self.bug {
            Bug::ValueIndexLost => matches.iter_mut().for_each(|m| m.value_index = 0),
            Bug::OneMatchOnly => {
                matches.sort_by_key(|m| m.slot != Slot::Current);
                matches.truncate(1);
            }
            _ => {}
        }
        Ok(matches)
    }

    async fn get_active(
        &self,
        id: &SessionId,
        now: OffsetDateTime,
    ) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        let now = match self.bug {
            Bug::ExpiryInclusive => now - MICROSECOND,
            _ => now,
        };
        self.inner.get_active(id, now).await
    }

    async fn insert_capped(
        &self,
        record: &SessionRecord,
        now: OffsetDateTime,
        cap: &SubjectCap,
    ) -> Result<Vec<SessionId>, StoreError> {
        match self.bug {
            Bug::CapCountsTheReplaced => {
                let cap = SubjectCap {
                    except: None,
                    ..cap.clone()
                };
                self.inner.insert_capped(record, now, &cap).await
            }
            Bug::CapEvictsNewest => {
                // Evicts by creation time, newest first.
                let subject = record.subject.clone().unwrap_or_default();
                let mut live = self.inner.list_for_subject(&subject, now).await?;
                live.retain(|r| Some(r.id) != cap.except);
                let excess = (live.len() + 1).saturating_sub(cap.max_sessions as usize);
                let mut evicted = Vec::new();
                for r in live.iter().take(excess) {
                    self.inner.revoke(&r.id, None, now, &cap.revocation).await?;
                    evicted.push(r.id);
                }
                self.inner.insert(record).await?;
                Ok(evicted)
            }
            _ => self.inner.insert_capped(record, now, cap).await,
        }
    }

    async fn insert(&self, record: &SessionRecord) -> Result<(), StoreError> {
        self.inner.insert(record).await
    }

    async fn replace(
        &self,
        current: &SessionRecord,
        next: &SessionRecord,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        match self.bug {
            Bug::ReadTimeCondition => {
                self.inner
                    .replace(current, next, current.last_seen_at)
                    .await
            }
            Bug::GenerationIgnored | Bug::CheckThenWrite => {
                check_successor(current, next)?;
                let Some(stored) = self.inner.get_active(&current.id, now).await? else {
                    return Ok(false);
                };
                if let Bug::CheckThenWrite = self.bug {
                    if stored.generation != current.generation {
                        return Ok(false);
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let Some(stored) = self.inner.get_active(&current.id, now).await? else {
                    return Ok(false);
                };
                let mut next = next.clone();
                next.generation = stored.generation + 1;
                self.inner.replace(&stored, &next, now).await
            }
            _ => self.inner.replace(current, next, now).await,
        }
    }

    async fn revoke(
        &self,
        id: &SessionId,
        subject: Option<&str>,
        now: OffsetDateTime,
        revocation: &Revocation,
    ) -> Result<RevokeOutcome, StoreError> {
        match self.bug {
            Bug::SubjectFilterIgnored => self.inner.revoke(id, None, now, revocation).await,
            Bug::AlreadyRevokedHidden => Ok(
                match self.inner.revoke(id, subject, now, revocation).await? {
                    RevokeOutcome::AlreadyRevoked => RevokeOutcome::Revoked,
                    outcome => outcome,
                },
            ),
            _ => self.inner.revoke(id, subject, now, revocation).await,
        }
    }

    async fn revoke_all_for_subject(
        &self,
        subject: &str,
        now: OffsetDateTime,
        revocation: &Revocation,
        except: Option<&SessionId>,
    ) -> Result<u64, StoreError> {
        let except = match self.bug {
            Bug::ExceptionIgnored => None,
            _ => except,
        };
        self.inner
            .revoke_all_for_subject(subject, now, revocation, except)
            .await
    }

    async fn list_for_subject(
        &self,
        subject: &str,
        now: OffsetDateTime,
    ) -> Result<Vec<ActiveSessionRecord>, StoreError> {
        let mut list = self.inner.list_for_subject(subject, now).await?;
        if let Bug::TiesDescending = self.bug {
            list.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        }
        Ok(list)
    }

    async fn count_by_key_version(
        &self,
        now: OffsetDateTime,
        seen_since: OffsetDateTime,
    ) -> Result<BTreeMap<KeyVersion, VersionCount>, StoreError> {
        let now = match self.bug {
            Bug::GraceInclusive => now - MICROSECOND,
            _ => now,
        };
        self.inner.count_by_key_version(now, seen_since).await
    }

    async fn purge_expired(&self, now: OffsetDateTime) -> Result<u64, StoreError> {
        let now = match self.bug {
            Bug::PurgeExclusive => now - MICROSECOND,
            _ => now,
        };
        self.inner.purge_expired(now).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_fails_a_store_with_any_of_these_bugs() {
    let cases = [
        (
            Bug::ValueIndexLost,
            "insert_then_find_round_trips_every_field",
        ),
        (
            Bug::KeyVersionIgnored,
            "find_reports_the_slot_version_and_value_index_of_each_match",
        ),
        (
            Bug::OneMatchOnly,
            "find_reports_the_slot_version_and_value_index_of_each_match",
        ),
        (Bug::ExpiryInclusive, "find_ignores_inactive_records"),
        (
            Bug::CapCountsTheReplaced,
            "insert_capped_evicts_the_least_recently_used",
        ),
        (
            Bug::CapEvictsNewest,
            "insert_capped_evicts_the_least_recently_used",
        ),
        (
            Bug::ReadTimeCondition,
            "replace_refuses_revoked_and_expired_records",
        ),
        (
            Bug::GenerationIgnored,
            "replace_applies_only_on_the_expected_generation",
        ),
        (
            Bug::CheckThenWrite,
            "concurrent_replaces_from_one_generation_have_one_winner",
        ),
        (
            Bug::AlreadyRevokedHidden,
            "revoke_reports_each_outcome_and_is_final",
        ),
        (
            Bug::SubjectFilterIgnored,
            "revoke_with_a_subject_matches_only_that_subject",
        ),
        (
            Bug::ExceptionIgnored,
            "revoke_all_for_subject_keeps_the_exception",
        ),
        (
            Bug::TiesDescending,
            "list_for_subject_is_newest_first_and_active_only",
        ),
        (
            Bug::GraceInclusive,
            "count_by_key_version_splits_recent_and_dormant",
        ),
        (
            Bug::PurgeExclusive,
            "purge_expired_removes_dead_records_only",
        ),
    ];
    for (bug, check) in cases {
        assert!(CHECKS.contains(&check), "{check} is not a check");
        let suite = tokio::spawn(run(move || async move {
            Broken {
                inner: MemoryStore::new(),
                bug,
            }
        }));
        let Err(error) = suite.await else {
            panic!("the suite passed a store with {bug:?}");
        };
        let payload = error.into_panic();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        assert!(
            message.contains(&format!("`{check}`")),
            "{bug:?} should fail `{check}`, but: {message}"
        );
    }
}

#[test]
fn a_store_that_is_not_debug_serves_a_manager_that_is() {
    let store = Broken {
        inner: MemoryStore::new(),
        bug: Bug::PurgeExclusive,
    };
    let keys = tower_hmac_session::KeyRing::builder()
        .key(1, [7; 32])
        .build()
        .unwrap();
    let manager = tower_hmac_session::SessionManager::new(
        store,
        keys,
        tower_hmac_session::SessionConfig::default(),
    );
    let printed = format!("{manager:?}");
    assert!(printed.contains("store: dyn SessionStore"), "{printed}");
    assert!(!printed.contains(&"07".repeat(32)), "{printed}");
}
