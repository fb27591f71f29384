//! `replace` as a compare-and-swap: the generation, the write-time
//! condition, successors it refuses, and racing writers.

use serde_json::json;

use super::support::{
    MICROSECOND, Store, anonymous, assert_stored, assert_unknown, credential, get, insert, ok,
    previous, replaced, revocation, session, successor, t,
};
use crate::record::{RevokeOutcome, SessionId, SessionRecord};
use crate::store::StoreError;

/// `r` rotated at `t(now)` to a fresh current credential (key version 1).
fn rotated(r: &SessionRecord, now: i64) -> SessionRecord {
    let mut next = successor(r);
    next.previous = Some(previous(r.current, now, None));
    next.current = credential(1);
    next.access_expires_at = t(now + 100);
    next
}

pub(super) async fn replace_applies_only_on_the_expected_generation(store: Store) {
    let check = "replace_applies_only_on_the_expected_generation";
    let r = session("alice", 0);
    insert(check, &store, &r).await;
    let mut first = successor(&r);
    first.data.insert("step".into(), json!(1));
    replaced(check, &store, &r, &first, t(10), "generation 0 to 1").await;

    // A writer that read generation 0 lost: nothing it writes applies.
    let stale = rotated(&r, 20);
    assert!(
        !ok(check, store.replace(&r, &stale, t(20)).await),
        "`{check}`: a replace from a stale generation applied"
    );
    assert_stored(check, &store, &first, t(20)).await;
    assert_unknown(
        check,
        &store,
        &stale.current,
        t(20),
        "the stale writer's new key",
    )
    .await;

    // A writer that claims a generation the store never reached.
    let mut ahead = first.clone();
    ahead.generation = 5;
    let from_ahead = successor(&ahead);
    assert!(
        !ok(check, store.replace(&ahead, &from_ahead, t(20)).await),
        "`{check}`: a replace from a generation ahead of the store applied"
    );
    assert_stored(check, &store, &first, t(20)).await;

    // An unknown id.
    let mut unknown = session("alice", 0);
    unknown.id = SessionId::generate();
    assert!(
        !ok(
            check,
            store.replace(&unknown, &successor(&unknown), t(20)).await
        ),
        "`{check}`: a replace of an unknown id applied"
    );
    assert!(
        get(check, &store, &unknown.id, t(20)).await.is_none(),
        "`{check}`: a replace of an unknown id created it"
    );

    // The winner's successor applies, and so on.
    let mut second = rotated(&first, 30);
    second.data.insert("step".into(), json!(2));
    replaced(check, &store, &first, &second, t(30), "generation 1 to 2").await;
    assert_eq!(second.generation, 2, "`{check}`: the test's own arithmetic");
}

pub(super) async fn replace_refuses_revoked_and_expired_records(store: Store) {
    let check = "replace_refuses_revoked_and_expired_records";
    let revoked = session("alice", 0);
    let idle = session("alice", 0);
    let mut absolute = anonymous(0);
    absolute.expires_at = t(800);
    absolute.absolute_expires_at = t(800);
    for r in [&revoked, &idle, &absolute] {
        insert(check, &store, r).await;
    }

    ok(
        check,
        store.revoke(&revoked.id, None, t(5), &revocation()).await,
    );
    // A data write from the record as read before the revocation: the
    // smallest write there is (same keys, same expiry).
    let mut written = successor(&revoked);
    written.data.insert("cart".into(), json!(1));
    assert!(
        !ok(check, store.replace(&revoked, &written, t(10)).await),
        "`{check}`: a data write undid a revocation"
    );
    let mut revived = rotated(&revoked, 10);
    revived.expires_at = t(1010);
    assert!(
        !ok(check, store.replace(&revoked, &revived, t(10)).await),
        "`{check}`: a revoked record was replaced"
    );
    assert!(
        get(check, &store, &revoked.id, t(10)).await.is_none(),
        "`{check}`: a revoked record came back"
    );
    assert_unknown(
        check,
        &store,
        &revived.current,
        t(10),
        "a revoked record's new key",
    )
    .await;
    assert_unknown(
        check,
        &store,
        &revoked.current,
        t(10),
        "a revoked record's key",
    )
    .await;

    // Read while active (at t(900)), written when the idle expiry has come:
    // a long request cannot revive an expired session.
    let read = get(check, &store, &idle.id, t(900)).await;
    assert_eq!(
        read.as_ref(),
        Some(&idle),
        "`{check}`: the record before its expiry"
    );
    let mut slid = successor(&idle);
    slid.last_seen_at = t(900);
    slid.expires_at = t(1900);
    for now in [t(1000), t(1000) + MICROSECOND] {
        assert!(
            !ok(check, store.replace(&idle, &slid, now).await),
            "`{check}`: a record was slid at or after its idle expiry"
        );
    }
    assert!(
        get(check, &store, &idle.id, t(1500)).await.is_none(),
        "`{check}`: an idle-expired record was revived"
    );
    assert_unknown(
        check,
        &store,
        &idle.current,
        t(1500),
        "an idle-expired record's key",
    )
    .await;

    let mut late = rotated(&absolute, 700);
    late.last_seen_at = t(700);
    assert!(
        !ok(check, store.replace(&absolute, &late, t(800)).await),
        "`{check}`: a record was replaced at its absolute expiry"
    );
    assert_eq!(
        get(check, &store, &absolute.id, t(800) - MICROSECOND)
            .await
            .as_ref(),
        Some(&absolute),
        "`{check}`: a refused replace changed the record"
    );
    assert_unknown(
        check,
        &store,
        &late.current,
        t(700),
        "a refused replace's new key",
    )
    .await;

    // The same write a microsecond earlier applies.
    replaced(
        check,
        &store,
        &absolute,
        &late,
        t(800) - MICROSECOND,
        "just in time",
    )
    .await;
}

pub(super) async fn replace_refuses_invalid_successors(store: Store) {
    let check = "replace_refuses_invalid_successors";
    let r = session("alice", 0);
    insert(check, &store, &r).await;
    let edit = |change: fn(&mut SessionRecord)| {
        let mut next = successor(&r);
        change(&mut next);
        next
    };
    let cases = [
        ("the same generation", edit(|n| n.generation -= 1)),
        ("a generation two ahead", edit(|n| n.generation += 1)),
        ("another id", edit(|n| n.id = SessionId::generate())),
        (
            "another subject",
            edit(|n| n.subject = Some("mallory".into())),
        ),
        (
            "no subject",
            edit(|n| {
                n.subject = None;
                n.authenticated_at = None;
            }),
        ),
        (
            "another creation time",
            edit(|n| n.created_at -= MICROSECOND),
        ),
        (
            "an extended absolute expiry",
            edit(|n| n.absolute_expires_at += time::Duration::SECOND),
        ),
        (
            "an idle expiry past the absolute one",
            edit(|n| n.expires_at = n.absolute_expires_at + MICROSECOND),
        ),
        (
            "a NUL character in data",
            edit(|n| {
                n.data.insert("k".into(), json!("a\u{0}b"));
            }),
        ),
        (
            "one lookup key in current and previous",
            edit(|n| n.previous = Some(previous(n.current, 1, None))),
        ),
        (
            "a revocation (revocations go through `revoke`)",
            edit(|n| {
                n.revoked = Some(crate::record::Revoked {
                    at: t(5),
                    revocation: crate::record::Revocation::new(
                        crate::record::RevocationReason::Admin,
                    ),
                })
            }),
        ),
    ];
    for (what, next) in &cases {
        let result = store.replace(&r, next, t(10)).await;
        assert!(
            matches!(result, Err(StoreError::Invalid(_))),
            "`{check}`: a successor with {what} gave {result:?}, not Invalid"
        );
        assert_stored(check, &store, &r, t(10)).await;
    }
    // Still generation 0: the valid successor applies.
    replaced(check, &store, &r, &successor(&r), t(10), "after refusals").await;
}

pub(super) async fn replace_conflicts_on_another_records_lookup_key(store: Store) {
    let check = "replace_conflicts_on_another_records_lookup_key";
    let mut other = session("bob", 0);
    other.previous = Some(previous(credential(1), 0, Some(50)));
    other.superseded = Some(credential(1));
    let r = session("alice", 0);
    insert(check, &store, &other).await;
    insert(check, &store, &r).await;
    for (theirs, c) in other.credentials() {
        // A rotation whose new secret is theirs.
        let mut next = rotated(&r, 10);
        next.current = c;
        // And one that only re-keys the previous slot onto theirs.
        let mut into_previous = rotated(&r, 10);
        into_previous.previous = Some(previous(c, 10, None));
        for (what, next) in [("current", next), ("previous", into_previous)] {
            let result = store.replace(&r, &next, t(10)).await;
            assert!(
                matches!(result, Err(StoreError::Conflict)),
                "`{check}`: a new {what} lookup key in another record's {theirs:?} slot \
                 gave {result:?}, not Conflict"
            );
            assert_stored(check, &store, &r, t(10)).await;
            assert_stored(check, &store, &other, t(10)).await;
            for (slot, c) in next.credentials() {
                if r.slot_of(&c.lookup_key, c.key_version).is_none()
                    && other.slot_of(&c.lookup_key, c.key_version).is_none()
                {
                    let what = format!("the {slot:?} lookup key of a refused replace");
                    assert_unknown(check, &store, &c, t(10), &what).await;
                }
            }
        }
    }
    // Nothing changed: generation 0 still applies.
    replaced(
        check,
        &store,
        &r,
        &rotated(&r, 10),
        t(10),
        "after conflicts",
    )
    .await;
}

pub(super) async fn concurrent_replaces_from_one_generation_have_one_winner(store: Store) {
    let check = "concurrent_replaces_from_one_generation_have_one_winner";
    let r = session("alice", 0);
    insert(check, &store, &r).await;
    let nexts: Vec<SessionRecord> = (0..16).map(|_| rotated(&r, 150)).collect();
    let tasks: Vec<_> = nexts
        .iter()
        .cloned()
        .map(|next| {
            let store = store.clone();
            let current = r.clone();
            tokio::spawn(async move { store.replace(&current, &next, t(150)).await })
        })
        .collect();
    let mut winners = Vec::new();
    for (task, next) in tasks.into_iter().zip(&nexts) {
        if ok(check, task.await.expect("a replace task panicked")) {
            winners.push(next);
        }
    }
    assert_eq!(winners.len(), 1, "`{check}`: replaces that applied");
    // The winner's record, whole: its key current, the old one previous.
    let winner = winners[0];
    assert_stored(check, &store, winner, t(150)).await;
    for loser in nexts.iter().filter(|n| n.current != winner.current) {
        assert_unknown(
            check,
            &store,
            &loser.current,
            t(150),
            "a losing writer's new key",
        )
        .await;
    }
}

pub(super) async fn revocation_racing_a_replace_is_never_undone(store: Store) {
    let check = "revocation_racing_a_replace_is_never_undone";
    let records: Vec<SessionRecord> = (0..8).map(|i| session("alice", i)).collect();
    for r in &records {
        insert(check, &store, r).await;
    }
    let mut tasks = Vec::new();
    for r in &records {
        let next = rotated(r, 150);
        let (writer, revoker) = (store.clone(), store.clone());
        let (current, id) = (r.clone(), r.id);
        let write = tokio::spawn({
            let next = next.clone();
            async move { writer.replace(&current, &next, t(150)).await }
        });
        let revoke =
            tokio::spawn(async move { revoker.revoke(&id, None, t(150), &revocation()).await });
        tasks.push((r, next, write, revoke));
    }
    for (r, next, write, revoke) in tasks {
        ok(check, write.await.expect("a replace task panicked"));
        let outcome = ok(check, revoke.await.expect("a revoke task panicked"));
        assert_eq!(
            outcome,
            RevokeOutcome::Revoked,
            "`{check}`: revoking a live record"
        );
        assert!(
            get(check, &store, &r.id, t(151)).await.is_none(),
            "`{check}`: a replace undid a revocation"
        );
        for c in [r.current, next.current] {
            assert_unknown(check, &store, &c, t(151), "a revoked record's key").await;
        }
    }
}
