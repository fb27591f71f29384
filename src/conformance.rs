//! The public conformance suite: every rule of [`SessionStore`], checked
//! against any implementation (feature `conformance`).
//!
//! Run it from a test with a factory that returns a fresh, empty store for
//! each check (a new schema or key prefix, say):
//!
//! ```
//! use tower_hmac_session::MemoryStore;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! tower_hmac_session::conformance::run(|| async { MemoryStore::new() }).await;
//! # });
//! ```
//!
//! A failed rule panics with the check's name and what went wrong, the way
//! `assert!` does in any test. Checks that race writers against each other
//! spawn tokio tasks, so run the suite in a (preferably multi-threaded) tokio
//! runtime.

use std::future::Future;
use std::sync::Arc;

use serde_json::json;
use time::OffsetDateTime;

use crate::keys::{Candidate, KeyVersion, LookupKey};
use crate::record::{
    Attributes, Credential, PreviousCredential, Revocation, RevocationReason, RevokeOutcome,
    RotationTimestamps, SessionId, SessionRecord, Slot,
};
use crate::store::{SessionStore, StoreError};

/// The names of every check, in the order [`run`] runs them.
pub const CHECKS: &[&str] = &[
    "insert_then_find_round_trips_the_record",
    "find_tries_every_candidate_and_reports_the_version",
    "find_requires_the_candidate_key_version",
    "find_ignores_idle_and_absolutely_expired_records",
    "find_ignores_revoked_records",
    "insert_rejects_duplicate_ids_and_lookup_keys",
    "insert_rejects_invalid_records",
    "rotate_moves_current_to_previous",
    "rotate_is_compare_and_swap",
    "rotate_forgets_the_older_previous",
    "stale_previous_match_is_reported",
    "rotate_refuses_revoked_and_expired_records",
    "touch_is_monotonic_and_capped",
    "rekey_replaces_one_slot_conditionally",
    "update_attributes_only_on_active_records",
    "revoke_reports_outcomes_and_is_final",
    "revoke_all_for_subject_keeps_the_exception",
    "list_for_subject_is_newest_first_and_active_only",
    "count_by_key_version_counts_live_slots",
    "purge_expired_removes_dead_records_only",
    "concurrent_rotations_have_one_winner",
    "concurrent_touches_apply_once",
];

/// Runs every check in [`CHECKS`], each on a fresh store from `make_store`.
///
/// # Panics
///
/// When the store breaks a rule (or fails with an error): the message names
/// the check.
pub async fn run<S, F, Fut>(mut make_store: F)
where
    S: SessionStore,
    F: FnMut() -> Fut,
    Fut: Future<Output = S>,
{
    macro_rules! run_checks {
        ($($check:ident),* $(,)?) => {{
            let names: &[&str] = &[$(stringify!($check)),*];
            assert_eq!(names, CHECKS, "CHECKS lists every check in order");
            $(
                let store: Arc<dyn SessionStore> = Arc::new(make_store().await);
                tracing::debug!(check = stringify!($check), "conformance check");
                $check(store).await;
            )*
        }};
    }
    run_checks!(
        insert_then_find_round_trips_the_record,
        find_tries_every_candidate_and_reports_the_version,
        find_requires_the_candidate_key_version,
        find_ignores_idle_and_absolutely_expired_records,
        find_ignores_revoked_records,
        insert_rejects_duplicate_ids_and_lookup_keys,
        insert_rejects_invalid_records,
        rotate_moves_current_to_previous,
        rotate_is_compare_and_swap,
        rotate_forgets_the_older_previous,
        stale_previous_match_is_reported,
        rotate_refuses_revoked_and_expired_records,
        touch_is_monotonic_and_capped,
        rekey_replaces_one_slot_conditionally,
        update_attributes_only_on_active_records,
        revoke_reports_outcomes_and_is_final,
        revoke_all_for_subject_keeps_the_exception,
        list_for_subject_is_newest_first_and_active_only,
        count_by_key_version_counts_live_slots,
        purge_expired_removes_dead_records_only,
        concurrent_rotations_have_one_winner,
        concurrent_touches_apply_once,
    );
}

type Store = Arc<dyn SessionStore>;

/// 2030-01-01T00:00:00Z plus `secs` seconds.
fn t(secs: i64) -> OffsetDateTime {
    OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(1_893_456_000 + secs)
}

fn random_key() -> LookupKey {
    let mut bytes = [0u8; 32];
    crate::secret::fill_random(&mut bytes);
    LookupKey::from_bytes(bytes)
}

fn credential(version: u32) -> Credential {
    Credential {
        lookup_key: random_key(),
        key_version: KeyVersion(version),
    }
}

fn candidate(c: &Credential) -> Candidate {
    Candidate {
        key_version: c.key_version,
        lookup_key: c.lookup_key,
    }
}

/// A live record of `subject` created at `t(created)`: idle expiry at
/// +1000 s, absolute at +5000 s, access expiry at +100 s, key version 1.
fn record(subject: &str, created: i64) -> SessionRecord {
    SessionRecord {
        id: SessionId::generate(),
        subject: subject.to_owned(),
        created_at: t(created),
        last_seen_at: t(created),
        expires_at: t(created + 1000),
        absolute_expires_at: t(created + 5000),
        access_expires_at: t(created + 100),
        current: credential(1),
        previous: None,
        revoked: None,
        attributes: Attributes::new(),
    }
}

fn ok<T>(check: &str, result: Result<T, StoreError>) -> T {
    match result {
        Ok(value) => value,
        Err(error) => panic!("conformance check `{check}`: the store failed: {error:?}"),
    }
}

async fn insert(check: &str, store: &Store, record: &SessionRecord) {
    ok(check, store.insert(record).await);
}

async fn find(
    check: &str,
    store: &Store,
    c: &Credential,
    now: OffsetDateTime,
) -> Option<crate::record::SessionMatch> {
    ok(check, store.find_active(&[candidate(c)], now).await)
}

fn revocation() -> Revocation {
    Revocation::new(RevocationReason::Admin).by("conformance")
}

async fn insert_then_find_round_trips_the_record(store: Store) {
    let check = "insert_then_find_round_trips_the_record";
    let mut r = record("user-ü-42", 0);
    // Sub-second precision (microseconds) survives the round trip.
    r.created_at = t(0) + time::Duration::microseconds(123_456);
    r.last_seen_at = t(10) + time::Duration::microseconds(654_321);
    let mut attributes = Attributes::new();
    attributes.insert("device".into(), json!("laptop"));
    attributes.insert(
        "nested".into(),
        json!({"tenant": 7, "tags": ["a", "b"], "ok": true}),
    );
    r.attributes = attributes;
    insert(check, &store, &r).await;
    let found = find(check, &store, &r.current, t(20))
        .await
        .unwrap_or_else(|| panic!("`{check}`: the inserted record was not found"));
    assert_eq!(found.slot, Slot::Current, "`{check}`: slot");
    assert_eq!(found.key_version, KeyVersion(1), "`{check}`: key version");
    assert_eq!(*found.record, r, "`{check}`: the record read back differs");
    assert!(
        find(check, &store, &credential(1), t(20)).await.is_none(),
        "`{check}`: an unknown lookup key matched"
    );
}

async fn find_tries_every_candidate_and_reports_the_version(store: Store) {
    let check = "find_tries_every_candidate_and_reports_the_version";
    let mut r = record("alice", 0);
    r.current.key_version = KeyVersion(7);
    insert(check, &store, &r).await;
    let candidates = [
        Candidate {
            key_version: KeyVersion(9),
            lookup_key: random_key(),
        },
        candidate(&r.current),
    ];
    let found = ok(check, store.find_active(&candidates, t(1)).await)
        .unwrap_or_else(|| panic!("`{check}`: the second candidate was not tried"));
    assert_eq!(found.key_version, KeyVersion(7), "`{check}`: key version");
    assert_eq!(found.record.id, r.id, "`{check}`: another record matched");
    assert!(
        ok(check, store.find_active(&[], t(1)).await).is_none(),
        "`{check}`: no candidates matched something"
    );
}

async fn find_requires_the_candidate_key_version(store: Store) {
    let check = "find_requires_the_candidate_key_version";
    let r = record("alice", 0);
    insert(check, &store, &r).await;
    let wrong_version = Candidate {
        key_version: KeyVersion(2),
        lookup_key: r.current.lookup_key,
    };
    assert!(
        ok(check, store.find_active(&[wrong_version], t(1)).await).is_none(),
        "`{check}`: a lookup key matched under another key version"
    );
}

async fn find_ignores_idle_and_absolutely_expired_records(store: Store) {
    let check = "find_ignores_idle_and_absolutely_expired_records";
    let idle = record("alice", 0);
    let mut absolute = record("alice", 0);
    absolute.expires_at = absolute.absolute_expires_at;
    insert(check, &store, &idle).await;
    insert(check, &store, &absolute).await;
    assert!(
        find(check, &store, &idle.current, t(999)).await.is_some(),
        "`{check}`: live before idle expiry"
    );
    assert!(
        find(check, &store, &idle.current, t(1000)).await.is_none(),
        "`{check}`: found at its idle expiry"
    );
    assert!(
        find(check, &store, &absolute.current, t(4999))
            .await
            .is_some(),
        "`{check}`: live before absolute expiry"
    );
    assert!(
        find(check, &store, &absolute.current, t(5000))
            .await
            .is_none(),
        "`{check}`: found at its absolute expiry"
    );
}

async fn find_ignores_revoked_records(store: Store) {
    let check = "find_ignores_revoked_records";
    let r = record("alice", 0);
    insert(check, &store, &r).await;
    ok(check, store.revoke(&r.id, t(1), &revocation()).await);
    assert!(
        find(check, &store, &r.current, t(2)).await.is_none(),
        "`{check}`: a revoked record was found"
    );
}

async fn insert_rejects_duplicate_ids_and_lookup_keys(store: Store) {
    let check = "insert_rejects_duplicate_ids_and_lookup_keys";
    let mut r = record("alice", 0);
    r.previous = Some(PreviousCredential {
        credential: credential(1),
        valid_until: t(10),
    });
    insert(check, &store, &r).await;

    let mut same_id = record("bob", 0);
    same_id.id = r.id;
    let mut same_current = record("bob", 0);
    same_current.current = r.current;
    let mut current_is_their_previous = record("bob", 0);
    current_is_their_previous.current = r.previous.unwrap().credential;
    for (what, dup) in [
        ("id", same_id),
        ("current lookup key", same_current),
        (
            "lookup key of another's previous slot",
            current_is_their_previous,
        ),
    ] {
        let result = store.insert(&dup).await;
        assert!(
            matches!(result, Err(StoreError::Conflict)),
            "`{check}`: a duplicate {what} gave {result:?}, not Conflict"
        );
    }
    let found = find(check, &store, &r.current, t(1)).await;
    assert_eq!(
        found.map(|m| m.record.subject.clone()),
        Some("alice".to_owned()),
        "`{check}`: a rejected insert changed the original"
    );
}

async fn insert_rejects_invalid_records(store: Store) {
    let check = "insert_rejects_invalid_records";
    let empty_subject = record("", 0);
    let mut past_absolute = record("alice", 0);
    past_absolute.expires_at = past_absolute.absolute_expires_at + time::Duration::SECOND;
    let mut huge = record("alice", 0);
    huge.attributes
        .insert("blob".into(), json!("x".repeat(5000)));
    for (what, bad) in [
        ("an empty subject", empty_subject),
        ("an idle expiry past the absolute one", past_absolute),
        ("attributes over the size limit", huge),
    ] {
        let result = store.insert(&bad).await;
        assert!(
            matches!(result, Err(StoreError::Invalid(_))),
            "`{check}`: {what} gave {result:?}, not Invalid"
        );
        assert!(
            find(check, &store, &bad.current, t(1)).await.is_none(),
            "`{check}`: {what} was stored"
        );
    }
}

fn timestamps(now: i64) -> RotationTimestamps {
    RotationTimestamps {
        last_seen_at: t(now),
        expires_at: t(now + 1000),
        access_expires_at: t(now + 100),
    }
}

async fn rotate_moves_current_to_previous(store: Store) {
    let check = "rotate_moves_current_to_previous";
    let r = record("alice", 0);
    insert(check, &store, &r).await;
    let new = credential(2);
    // expires_at asks past the absolute expiry: the store caps it.
    let ts = RotationTimestamps {
        last_seen_at: t(150),
        expires_at: t(9000),
        access_expires_at: t(250),
    };
    let applied = ok(
        check,
        store
            .rotate(&r.id, &r.current.lookup_key, &new, t(210), &ts)
            .await,
    );
    assert!(applied, "`{check}`: the rotation did not apply");
    let by_new = find(check, &store, &new, t(160))
        .await
        .unwrap_or_else(|| panic!("`{check}`: the new secret does not resolve"));
    assert_eq!(by_new.slot, Slot::Current, "`{check}`: new secret slot");
    assert_eq!(
        by_new.key_version,
        KeyVersion(2),
        "`{check}`: new secret version"
    );
    let rec = &by_new.record;
    assert_eq!(rec.current, new, "`{check}`: current credential");
    assert_eq!(
        rec.previous,
        Some(PreviousCredential {
            credential: r.current,
            valid_until: t(210)
        }),
        "`{check}`: previous slot"
    );
    assert_eq!(rec.last_seen_at, t(150), "`{check}`: last_seen_at");
    assert_eq!(
        rec.expires_at, r.absolute_expires_at,
        "`{check}`: expires_at not capped"
    );
    assert_eq!(
        rec.access_expires_at,
        t(250),
        "`{check}`: access_expires_at"
    );
    assert_eq!(
        rec.created_at, r.created_at,
        "`{check}`: created_at changed"
    );
    let by_old = find(check, &store, &r.current, t(160))
        .await
        .unwrap_or_else(|| panic!("`{check}`: the previous secret does not resolve in grace"));
    assert_eq!(by_old.slot, Slot::Previous, "`{check}`: old secret slot");
    assert!(!by_old.is_stale_previous(t(160)), "`{check}`: in grace");
}

async fn rotate_is_compare_and_swap(store: Store) {
    let check = "rotate_is_compare_and_swap";
    let r = record("alice", 0);
    insert(check, &store, &r).await;
    let wrong = ok(
        check,
        store
            .rotate(
                &r.id,
                &random_key(),
                &credential(1),
                t(200),
                &timestamps(150),
            )
            .await,
    );
    assert!(!wrong, "`{check}`: applied with a wrong expected key");
    let first = credential(1);
    assert!(ok(
        check,
        store
            .rotate(
                &r.id,
                &r.current.lookup_key,
                &first,
                t(200),
                &timestamps(150)
            )
            .await
    ));
    let loser = credential(1);
    let again = ok(
        check,
        store
            .rotate(
                &r.id,
                &r.current.lookup_key,
                &loser,
                t(200),
                &timestamps(151),
            )
            .await,
    );
    assert!(
        !again,
        "`{check}`: a second rotation from the same secret applied"
    );
    assert!(
        find(check, &store, &loser, t(152)).await.is_none(),
        "`{check}`: the losing credential was stored"
    );
    let unknown = ok(
        check,
        store
            .rotate(
                &SessionId::generate(),
                &r.current.lookup_key,
                &credential(1),
                t(200),
                &timestamps(150),
            )
            .await,
    );
    assert!(!unknown, "`{check}`: an unknown id rotated");
}

async fn rotate_forgets_the_older_previous(store: Store) {
    let check = "rotate_forgets_the_older_previous";
    let r = record("alice", 0);
    insert(check, &store, &r).await;
    let second = credential(1);
    let third = credential(1);
    assert!(ok(
        check,
        store
            .rotate(
                &r.id,
                &r.current.lookup_key,
                &second,
                t(400),
                &timestamps(150)
            )
            .await
    ));
    assert!(ok(
        check,
        store
            .rotate(&r.id, &second.lookup_key, &third, t(400), &timestamps(300))
            .await
    ));
    assert!(
        find(check, &store, &r.current, t(301)).await.is_none(),
        "`{check}`: a secret two rotations old still resolves"
    );
    let m = find(check, &store, &second, t(301)).await;
    assert_eq!(
        m.map(|m| m.slot),
        Some(Slot::Previous),
        "`{check}`: the last previous"
    );
}

async fn stale_previous_match_is_reported(store: Store) {
    let check = "stale_previous_match_is_reported";
    let r = record("alice", 0);
    insert(check, &store, &r).await;
    assert!(ok(
        check,
        store
            .rotate(
                &r.id,
                &r.current.lookup_key,
                &credential(1),
                t(160),
                &timestamps(150)
            )
            .await
    ));
    let m = find(check, &store, &r.current, t(161))
        .await
        .unwrap_or_else(|| panic!("`{check}`: a previous secret past its grace was hidden"));
    assert_eq!(m.slot, Slot::Previous, "`{check}`: slot");
    assert!(
        m.is_stale_previous(t(161)),
        "`{check}`: not reported as stale"
    );
}

async fn rotate_refuses_revoked_and_expired_records(store: Store) {
    let check = "rotate_refuses_revoked_and_expired_records";
    let revoked = record("alice", 0);
    let expired = record("alice", 0);
    insert(check, &store, &revoked).await;
    insert(check, &store, &expired).await;
    ok(check, store.revoke(&revoked.id, t(1), &revocation()).await);
    let new = credential(1);
    assert!(
        !ok(
            check,
            store
                .rotate(
                    &revoked.id,
                    &revoked.current.lookup_key,
                    &new,
                    t(200),
                    &timestamps(150)
                )
                .await
        ),
        "`{check}`: a revoked record rotated"
    );
    assert!(
        find(check, &store, &new, t(151)).await.is_none(),
        "`{check}`: revived"
    );
    assert!(
        !ok(
            check,
            store
                .rotate(
                    &expired.id,
                    &expired.current.lookup_key,
                    &new,
                    t(2000),
                    &timestamps(1000)
                )
                .await
        ),
        "`{check}`: an idle-expired record rotated"
    );
    assert!(
        find(check, &store, &new, t(1001)).await.is_none(),
        "`{check}`: revived"
    );
}

async fn touch_is_monotonic_and_capped(store: Store) {
    let check = "touch_is_monotonic_and_capped";
    let r = record("alice", 0);
    insert(check, &store, &r).await;
    assert!(
        ok(check, store.touch(&r.id, t(500), t(1500)).await),
        "`{check}`: first touch"
    );
    assert!(
        !ok(check, store.touch(&r.id, t(500), t(1500)).await),
        "`{check}`: same instant twice"
    );
    assert!(
        !ok(check, store.touch(&r.id, t(400), t(1400)).await),
        "`{check}`: went back in time"
    );
    let m = find(check, &store, &r.current, t(1200)).await;
    let rec = m
        .map(|m| m.record)
        .unwrap_or_else(|| panic!("`{check}`: touch did not slide the expiry"));
    assert_eq!(
        (rec.last_seen_at, rec.expires_at),
        (t(500), t(1500)),
        "`{check}`: timestamps"
    );
    assert!(ok(check, store.touch(&r.id, t(1400), t(99_999)).await));
    let m = find(check, &store, &r.current, t(1401)).await.unwrap();
    assert_eq!(
        m.record.expires_at, r.absolute_expires_at,
        "`{check}`: not capped"
    );
    // Expired at `last_seen_at`: no revival.
    let dead = record("alice", 0);
    insert(check, &store, &dead).await;
    assert!(
        !ok(check, store.touch(&dead.id, t(1000), t(2000)).await),
        "`{check}`: an expired record slid"
    );
    ok(check, store.revoke(&r.id, t(1500), &revocation()).await);
    assert!(
        !ok(check, store.touch(&r.id, t(1600), t(2600)).await),
        "`{check}`: a revoked record slid"
    );
    assert!(
        !ok(check, store.touch(&SessionId::generate(), t(1), t(2)).await),
        "`{check}`: unknown id"
    );
}

async fn rekey_replaces_one_slot_conditionally(store: Store) {
    let check = "rekey_replaces_one_slot_conditionally";
    let r = record("alice", 0);
    insert(check, &store, &r).await;
    let rekeyed = credential(2);
    assert!(
        !ok(
            check,
            store
                .rekey(
                    &r.id,
                    Slot::Current,
                    &random_key(),
                    &rekeyed.lookup_key,
                    KeyVersion(2)
                )
                .await
        ),
        "`{check}`: applied with a wrong expected key"
    );
    assert!(ok(
        check,
        store
            .rekey(
                &r.id,
                Slot::Current,
                &r.current.lookup_key,
                &rekeyed.lookup_key,
                KeyVersion(2)
            )
            .await
    ));
    assert!(
        find(check, &store, &r.current, t(1)).await.is_none(),
        "`{check}`: the old key still resolves"
    );
    let m = find(check, &store, &rekeyed, t(1))
        .await
        .unwrap_or_else(|| panic!("`{check}`: the new key does not resolve"));
    assert_eq!(
        (m.slot, m.key_version),
        (Slot::Current, KeyVersion(2)),
        "`{check}`: slot and version"
    );
    assert!(
        !ok(
            check,
            store
                .rekey(
                    &r.id,
                    Slot::Previous,
                    &r.current.lookup_key,
                    &random_key(),
                    KeyVersion(2)
                )
                .await
        ),
        "`{check}`: re-keyed an empty previous slot"
    );

    // The previous slot.
    let next = credential(2);
    assert!(ok(
        check,
        store
            .rotate(&r.id, &rekeyed.lookup_key, &next, t(300), &timestamps(150))
            .await
    ));
    let prev_new = credential(3);
    assert!(ok(
        check,
        store
            .rekey(
                &r.id,
                Slot::Previous,
                &rekeyed.lookup_key,
                &prev_new.lookup_key,
                KeyVersion(3)
            )
            .await
    ));
    let m = find(check, &store, &prev_new, t(151))
        .await
        .unwrap_or_else(|| panic!("`{check}`: re-keyed previous not found"));
    assert_eq!(
        (m.slot, m.key_version),
        (Slot::Previous, KeyVersion(3)),
        "`{check}`: previous slot and version"
    );
    assert_eq!(
        m.record.previous.map(|p| p.valid_until),
        Some(t(300)),
        "`{check}`: valid_until changed"
    );

    ok(check, store.revoke(&r.id, t(200), &revocation()).await);
    assert!(
        !ok(
            check,
            store
                .rekey(
                    &r.id,
                    Slot::Current,
                    &next.lookup_key,
                    &random_key(),
                    KeyVersion(3)
                )
                .await
        ),
        "`{check}`: a revoked record was re-keyed"
    );
}

async fn update_attributes_only_on_active_records(store: Store) {
    let check = "update_attributes_only_on_active_records";
    let r = record("alice", 0);
    insert(check, &store, &r).await;
    let mut attributes = Attributes::new();
    attributes.insert("tenant".into(), json!("acme"));
    assert!(ok(
        check,
        store.update_attributes(&r.id, &attributes, t(1)).await
    ));
    let m = find(check, &store, &r.current, t(2)).await.unwrap();
    assert_eq!(
        m.record.attributes, attributes,
        "`{check}`: attributes not replaced"
    );
    assert!(
        !ok(
            check,
            store
                .update_attributes(&r.id, &Attributes::new(), t(1000))
                .await
        ),
        "`{check}`: written on an expired record"
    );
    ok(check, store.revoke(&r.id, t(3), &revocation()).await);
    assert!(
        !ok(
            check,
            store
                .update_attributes(&r.id, &Attributes::new(), t(4))
                .await
        ),
        "`{check}`: written on a revoked record"
    );
    assert!(
        !ok(
            check,
            store
                .update_attributes(&SessionId::generate(), &attributes, t(4))
                .await
        ),
        "`{check}`: unknown id"
    );
    let mut huge = Attributes::new();
    huge.insert("blob".into(), json!("x".repeat(5000)));
    let live = record("alice", 0);
    insert(check, &store, &live).await;
    let result = store.update_attributes(&live.id, &huge, t(1)).await;
    assert!(
        matches!(result, Err(StoreError::Invalid(_))),
        "`{check}`: oversized attributes gave {result:?}"
    );
}

async fn revoke_reports_outcomes_and_is_final(store: Store) {
    let check = "revoke_reports_outcomes_and_is_final";
    let r = record("alice", 0);
    insert(check, &store, &r).await;
    assert_eq!(
        ok(check, store.revoke(&r.id, t(1), &revocation()).await),
        RevokeOutcome::Revoked,
        "`{check}`: first"
    );
    let again = Revocation::new(RevocationReason::Logout);
    assert_eq!(
        ok(check, store.revoke(&r.id, t(2), &again).await),
        RevokeOutcome::AlreadyRevoked,
        "`{check}`: second"
    );
    assert_eq!(
        ok(
            check,
            store.revoke(&SessionId::generate(), t(2), &again).await
        ),
        RevokeOutcome::NotFound,
        "`{check}`: unknown id"
    );
    // No write brings it back.
    assert!(
        !ok(check, store.touch(&r.id, t(3), t(900)).await),
        "`{check}`: touched back"
    );
    assert!(
        find(check, &store, &r.current, t(4)).await.is_none(),
        "`{check}`: revived"
    );
}

async fn revoke_all_for_subject_keeps_the_exception(store: Store) {
    let check = "revoke_all_for_subject_keeps_the_exception";
    let alice: Vec<_> = (0..3).map(|i| record("alice", i)).collect();
    let bob = record("bob", 0);
    for r in alice.iter().chain([&bob]) {
        insert(check, &store, r).await;
    }
    let revoked = ok(
        check,
        store
            .revoke_all_for_subject("alice", t(10), &revocation(), Some(&alice[1].id))
            .await,
    );
    assert_eq!(revoked, 2, "`{check}`: count");
    let listed: Vec<_> = ok(check, store.list_for_subject("alice", t(11)).await)
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(
        listed,
        [alice[1].id],
        "`{check}`: the exception must be the only survivor"
    );
    assert!(
        find(check, &store, &bob.current, t(11)).await.is_some(),
        "`{check}`: another subject was revoked"
    );
    assert_eq!(
        ok(
            check,
            store
                .revoke_all_for_subject("alice", t(12), &revocation(), None)
                .await
        ),
        1,
        "`{check}`: already revoked ones are not counted"
    );
    assert_eq!(
        ok(
            check,
            store
                .revoke_all_for_subject("nobody", t(12), &revocation(), None)
                .await
        ),
        0,
        "`{check}`: unknown subject"
    );
}

async fn list_for_subject_is_newest_first_and_active_only(store: Store) {
    let check = "list_for_subject_is_newest_first_and_active_only";
    let old = record("alice", 0);
    let mid = record("alice", 50);
    let mut new = record("alice", 100);
    new.current.key_version = KeyVersion(4);
    let revoked = record("alice", 70);
    let expired = record("alice", -2000);
    let other = record("bob", 80);
    for r in [&old, &mid, &new, &revoked, &expired, &other] {
        insert(check, &store, r).await;
    }
    ok(
        check,
        store.revoke(&revoked.id, t(101), &revocation()).await,
    );
    let listed = ok(check, store.list_for_subject("alice", t(200)).await);
    let ids: Vec<_> = listed.iter().map(|s| s.id).collect();
    assert_eq!(
        ids,
        [new.id, mid.id, old.id],
        "`{check}`: order or membership"
    );
    assert_eq!(
        listed[0].key_version,
        KeyVersion(4),
        "`{check}`: key version"
    );
    assert_eq!(
        listed[0],
        new.to_active(KeyVersion(4)),
        "`{check}`: record view"
    );
    assert!(ok(check, store.list_for_subject("nobody", t(200)).await).is_empty());
}

async fn count_by_key_version_counts_live_slots(store: Store) {
    let check = "count_by_key_version_counts_live_slots";
    let v1 = record("alice", 0);
    let rotated = record("alice", 0);
    let mut v2 = record("bob", 0);
    v2.current.key_version = KeyVersion(2);
    let revoked = record("carol", 0);
    let expired = record("dave", -2000);
    for r in [&v1, &rotated, &v2, &revoked, &expired] {
        insert(check, &store, r).await;
    }
    ok(check, store.revoke(&revoked.id, t(1), &revocation()).await);
    assert!(ok(
        check,
        store
            .rotate(
                &rotated.id,
                &rotated.current.lookup_key,
                &credential(2),
                t(160),
                &timestamps(150)
            )
            .await
    ));
    let counts = ok(check, store.count_by_key_version(t(155)).await);
    let expected = [(KeyVersion(1), 2), (KeyVersion(2), 2)]
        .into_iter()
        .collect();
    assert_eq!(
        counts, expected,
        "`{check}`: in grace, the previous slot counts"
    );
    let counts = ok(check, store.count_by_key_version(t(160)).await);
    let expected = [(KeyVersion(1), 1), (KeyVersion(2), 2)]
        .into_iter()
        .collect();
    assert_eq!(counts, expected, "`{check}`: after grace");
}

async fn purge_expired_removes_dead_records_only(store: Store) {
    let check = "purge_expired_removes_dead_records_only";
    let live = record("alice", 0);
    let revoked = record("alice", 0);
    let expired = record("alice", -2000);
    for r in [&live, &revoked, &expired] {
        insert(check, &store, r).await;
    }
    ok(check, store.revoke(&revoked.id, t(1), &revocation()).await);
    assert_eq!(
        ok(check, store.purge_expired(t(10)).await),
        2,
        "`{check}`: count"
    );
    assert_eq!(
        ok(check, store.revoke(&revoked.id, t(11), &revocation()).await),
        RevokeOutcome::NotFound,
        "`{check}`: revoked record kept"
    );
    assert_eq!(
        ok(check, store.revoke(&expired.id, t(11), &revocation()).await),
        RevokeOutcome::NotFound,
        "`{check}`: expired record kept"
    );
    assert!(
        find(check, &store, &live.current, t(11)).await.is_some(),
        "`{check}`: a live record was purged"
    );
    assert_eq!(
        ok(check, store.purge_expired(t(10)).await),
        0,
        "`{check}`: second purge"
    );
}

async fn concurrent_rotations_have_one_winner(store: Store) {
    let check = "concurrent_rotations_have_one_winner";
    let r = record("alice", 0);
    insert(check, &store, &r).await;
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let store = store.clone();
            let expected = r.current.lookup_key;
            tokio::spawn(async move {
                let new = credential(1);
                let applied = store
                    .rotate(&r.id, &expected, &new, t(200), &timestamps(150))
                    .await;
                (applied, new)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        let (applied, new) = task.await.expect("task");
        if ok(check, applied) {
            winners.push(new);
        }
    }
    assert_eq!(winners.len(), 1, "`{check}`: winners");
    let m = find(check, &store, &winners[0], t(151)).await;
    assert_eq!(
        m.map(|m| m.slot),
        Some(Slot::Current),
        "`{check}`: the winner is current"
    );
}

async fn concurrent_touches_apply_once(store: Store) {
    let check = "concurrent_touches_apply_once";
    let r = record("alice", 0);
    insert(check, &store, &r).await;
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.touch(&r.id, t(300), t(1300)).await })
        })
        .collect();
    let mut applied = 0;
    for task in tasks {
        applied += usize::from(ok(check, task.await.expect("task")));
    }
    assert_eq!(applied, 1, "`{check}`: touches applied");
}
