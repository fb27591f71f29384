//! Revocation and per-subject operations.

use super::support::{
    Store, anonymous, assert_stored, assert_unknown, credential, get, insert, ok, previous,
    revocation, session, successor, t,
};
use crate::keys::KeyVersion;
use crate::record::{Revocation, RevocationReason, RevokeOutcome, SessionId, SessionRecord};
use crate::store::{StoreError, SubjectCap};

/// A record with all three slots filled.
fn with_every_slot(mut r: SessionRecord) -> SessionRecord {
    r.previous = Some(previous(credential(1), 0, None));
    r.superseded = Some(credential(1));
    r
}

/// Asserts that `r` is gone: not by id, and not by any of its keys.
async fn assert_revoked(check: &str, store: &Store, r: &SessionRecord, what: &str) {
    assert!(
        get(check, store, &r.id, t(20)).await.is_none(),
        "`{check}`: {what}: still active"
    );
    for (slot, c) in r.credentials() {
        let what = format!("the {slot:?} lookup key of {what}");
        assert_unknown(check, store, &c, t(20), &what).await;
    }
}

pub(super) async fn revoke_reports_each_outcome_and_is_final(store: Store) {
    let check = "revoke_reports_each_outcome_and_is_final";
    let r = with_every_slot(session("alice", 0));
    insert(check, &store, &r).await;
    // An actor no store may keep (control characters) is refused, by every
    // store alike, and revokes nothing.
    let invalid = Revocation::new(RevocationReason::Admin).by("a\nb");
    assert!(
        matches!(
            store.revoke(&r.id, None, t(9), &invalid).await,
            Err(StoreError::Invalid(_))
        ),
        "`{check}`: a revocation with a control character in its actor"
    );
    assert!(
        get(check, &store, &r.id, t(9)).await.is_some(),
        "`{check}`: a refused revocation revoked"
    );
    let first = Revocation::new(RevocationReason::ReuseDetected).by("layer ü");
    assert_eq!(
        ok(check, store.revoke(&r.id, None, t(10), &first).await),
        RevokeOutcome::Revoked,
        "`{check}`: revoking a live session"
    );
    assert_revoked(check, &store, &r, "a revoked session").await;

    // Final: a second revocation changes nothing, no write revives it.
    let again = Revocation::new(RevocationReason::Logout);
    for subject in [None, Some("alice")] {
        assert_eq!(
            ok(check, store.revoke(&r.id, subject, t(11), &again).await),
            RevokeOutcome::AlreadyRevoked,
            "`{check}`: revoking again (subject filter {subject:?})"
        );
    }
    let mut revived = successor(&r);
    revived.revoked = None;
    revived.expires_at = t(1011);
    assert!(
        !ok(check, store.replace(&r, &revived, t(12)).await),
        "`{check}`: a revoked session was replaced"
    );
    assert_revoked(check, &store, &r, "a revoked session after a replace").await;

    for subject in [None, Some("alice")] {
        assert_eq!(
            ok(
                check,
                store
                    .revoke(&SessionId::generate(), subject, t(13), &again)
                    .await
            ),
            RevokeOutcome::NotFound,
            "`{check}`: an unknown id (subject filter {subject:?})"
        );
    }
}

pub(super) async fn revoke_with_a_subject_matches_only_that_subject(store: Store) {
    let check = "revoke_with_a_subject_matches_only_that_subject";
    let alice = with_every_slot(session("alice", 0));
    let before_login = with_every_slot(anonymous(0));
    insert(check, &store, &alice).await;
    insert(check, &store, &before_login).await;

    // An id from a form cannot end someone else's session.
    for (what, r, subject) in [
        ("another subject's session", &alice, "mallory"),
        ("another subject's session, by prefix", &alice, "alic"),
        ("a session without a subject", &before_login, "alice"),
        (
            "a session without a subject, empty filter",
            &before_login,
            "",
        ),
    ] {
        assert_eq!(
            ok(
                check,
                store
                    .revoke(&r.id, Some(subject), t(10), &revocation())
                    .await
            ),
            RevokeOutcome::NotFound,
            "`{check}`: {what}"
        );
        assert_stored(check, &store, r, t(10)).await;
    }

    assert_eq!(
        ok(
            check,
            store
                .revoke(&alice.id, Some("alice"), t(10), &revocation())
                .await
        ),
        RevokeOutcome::Revoked,
        "`{check}`: the subject's own session"
    );
    assert_revoked(check, &store, &alice, "a session revoked by its subject").await;
    assert_eq!(
        ok(
            check,
            store
                .revoke(&alice.id, Some("mallory"), t(11), &revocation())
                .await
        ),
        RevokeOutcome::NotFound,
        "`{check}`: another subject's revoked session"
    );
    assert_eq!(
        ok(
            check,
            store
                .revoke(&before_login.id, None, t(10), &revocation())
                .await
        ),
        RevokeOutcome::Revoked,
        "`{check}`: a session without a subject, no filter"
    );
    assert_revoked(
        check,
        &store,
        &before_login,
        "a revoked session without a subject",
    )
    .await;
}

pub(super) async fn revoke_all_for_subject_keeps_the_exception(store: Store) {
    let check = "revoke_all_for_subject_keeps_the_exception";
    let alice: Vec<_> = (0..3)
        .map(|i| with_every_slot(session("alice", i)))
        .collect();
    let bob = session("bob", 0);
    let before_login = anonymous(0);
    // Idle-expired at t(5), never revoked: over already, so neither revoked
    // nor counted ("signed out of N devices" counts live sessions only).
    let ended = session("alice", -995);
    for r in alice.iter().chain([&bob, &before_login, &ended]) {
        insert(check, &store, r).await;
    }
    let revoked = ok(
        check,
        store
            .revoke_all_for_subject("alice", t(10), &revocation(), Some(&alice[1].id))
            .await,
    );
    assert_eq!(
        revoked, 2,
        "`{check}`: how many were revoked (live sessions only, not an expired one)"
    );
    for r in [&alice[0], &alice[2]] {
        assert_revoked(check, &store, r, "a revoked session").await;
    }
    assert_stored(check, &store, &alice[1], t(20)).await;
    assert_stored(check, &store, &bob, t(20)).await;
    assert_stored(check, &store, &before_login, t(20)).await;

    // An exception naming another subject's session protects nothing.
    let again = ok(
        check,
        store
            .revoke_all_for_subject("alice", t(12), &revocation(), Some(&bob.id))
            .await,
    );
    assert_eq!(again, 1, "`{check}`: revoked ones are not counted twice");
    assert_revoked(check, &store, &alice[1], "the former exception").await;
    assert_stored(check, &store, &bob, t(20)).await;
    for subject in ["nobody", ""] {
        assert_eq!(
            ok(
                check,
                store
                    .revoke_all_for_subject(subject, t(12), &revocation(), None)
                    .await
            ),
            0,
            "`{check}`: the subject {subject:?} has no session"
        );
    }
    assert_stored(check, &store, &before_login, t(20)).await;
}

pub(super) async fn list_for_subject_is_newest_first_and_active_only(store: Store) {
    let check = "list_for_subject_is_newest_first_and_active_only";
    let old = session("alice", 0);
    let mid = session("alice", 50);
    let mut twin_a = session("alice", 70);
    let mut twin_b = session("alice", 70);
    if twin_b.id < twin_a.id {
        std::mem::swap(&mut twin_a, &mut twin_b);
    }
    // The newest, rotated from key version 1 to 4: listed under 4.
    let mut new = session("alice", 100);
    new.current = credential(4);
    new.previous = Some(previous(credential(1), 150, None));
    let revoked = session("alice", 90);
    let expired = session("alice", -2000);
    let other = session("bob", 80);
    let before_login = anonymous(95);
    for r in [
        &old,
        &mid,
        &twin_a,
        &twin_b,
        &new,
        &revoked,
        &expired,
        &other,
        &before_login,
    ] {
        insert(check, &store, r).await;
    }
    ok(
        check,
        store.revoke(&revoked.id, None, t(101), &revocation()).await,
    );
    let listed = ok(check, store.list_for_subject("alice", t(200)).await);
    let ids: Vec<_> = listed.iter().map(|s| s.id).collect();
    assert_eq!(
        ids,
        [new.id, twin_a.id, twin_b.id, mid.id, old.id],
        "`{check}`: order (newest first, equal times by id) or membership"
    );
    for (listed, r) in listed.iter().zip([&new, &twin_a, &twin_b, &mid, &old]) {
        assert_eq!(
            *listed,
            r.to_active(r.current.key_version),
            "`{check}`: the listed view"
        );
    }
    assert_eq!(
        listed[0].key_version,
        KeyVersion(4),
        "`{check}`: the current key version"
    );
    for subject in ["nobody", "", "Alice"] {
        assert!(
            ok(check, store.list_for_subject(subject, t(200)).await).is_empty(),
            "`{check}`: the subject {subject:?} has no session"
        );
    }
}

fn cap(max_sessions: u32, except: Option<SessionId>) -> SubjectCap {
    SubjectCap {
        max_sessions,
        except,
        revocation: Revocation::new(RevocationReason::SessionLimit),
    }
}

pub(super) async fn insert_capped_evicts_the_least_recently_used(store: Store) {
    let check = "insert_capped_evicts_the_least_recently_used";
    // Three sessions of alice; the one created first was used last.
    let mut a = session("alice", 0);
    a.last_seen_at = t(50);
    let b = session("alice", 10);
    let c = session("alice", 20);
    let expired = {
        let mut r = session("alice", 0);
        r.expires_at = t(30);
        r
    };
    let bob = session("bob", 0);
    let before_login = anonymous(0);
    for r in [&a, &b, &c, &expired, &bob, &before_login] {
        insert(check, &store, r).await;
    }
    // A fourth with a cap of 3: one must go, the least recently used live
    // one (b); the expired one counts for nothing.
    let d = session("alice", 60);
    let evicted = ok(check, store.insert_capped(&d, t(60), &cap(3, None)).await);
    assert_eq!(evicted, [b.id], "`{check}`: evicted");
    assert!(
        get(check, &store, &b.id, t(60)).await.is_none(),
        "`{check}`: b still live"
    );
    assert_eq!(
        ok(check, store.revoke(&b.id, None, t(61), &revocation()).await),
        RevokeOutcome::AlreadyRevoked,
        "`{check}`: b is revoked, not deleted"
    );
    for r in [&a, &c, &d, &bob, &before_login] {
        assert!(
            get(check, &store, &r.id, t(60)).await.is_some(),
            "`{check}`: a live session went"
        );
    }
    // The session a login replaces is neither counted nor evicted.
    let e = session("alice", 70);
    let evicted = ok(
        check,
        store.insert_capped(&e, t(70), &cap(2, Some(a.id))).await,
    );
    assert_eq!(evicted, [c.id], "`{check}`: evicted with an exception");
    assert!(
        get(check, &store, &a.id, t(70)).await.is_some(),
        "`{check}`: the replaced session went"
    );
    // A cap of 1 leaves only the new session.
    let f = session("alice", 80);
    let mut evicted = ok(check, store.insert_capped(&f, t(80), &cap(1, None)).await);
    evicted.sort();
    let mut expected = vec![a.id, d.id, e.id];
    expected.sort();
    assert_eq!(evicted, expected, "`{check}`: a cap of one");
    let listed: Vec<SessionId> = ok(check, store.list_for_subject("alice", t(80)).await)
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(listed, [f.id], "`{check}`: what is left");
    // No subject: nothing evicted. A conflict: nothing evicted either.
    assert!(
        ok(
            check,
            store
                .insert_capped(&anonymous(90), t(90), &cap(1, None))
                .await
        )
        .is_empty()
    );
    let mut clash = session("alice", 95);
    clash.current = f.current;
    let result = store.insert_capped(&clash, t(95), &cap(1, None)).await;
    assert!(
        matches!(result, Err(StoreError::Conflict)),
        "`{check}`: {result:?}"
    );
    assert!(
        get(check, &store, &f.id, t(95)).await.is_some(),
        "`{check}`: evicted on a conflict"
    );
    assert!(get(check, &store, &bob.id, t(95)).await.is_some());
}

pub(super) async fn insert_capped_is_atomic_under_concurrent_logins(store: Store) {
    let check = "insert_capped_is_atomic_under_concurrent_logins";
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            let r = session("carol", i);
            tokio::spawn(async move { store.insert_capped(&r, t(100), &cap(3, None)).await })
        })
        .collect();
    for task in tasks {
        ok(check, task.await.expect("the task panicked"));
    }
    let live = ok(check, store.list_for_subject("carol", t(100)).await);
    assert_eq!(live.len(), 3, "`{check}`: never more than the cap");
}
