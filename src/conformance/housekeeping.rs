//! What operators run: counts per key version, and the purge.

use std::collections::BTreeMap;

use super::support::{
    Store, anonymous, assert_stored, assert_unknown, credential, get, insert, ok, previous,
    revocation, session, t,
};
use crate::keys::KeyVersion;
use crate::record::{RevokeOutcome, SessionRecord, VersionCount};

/// `counts` without versions that count nothing (a store may list them or not).
fn nonzero(counts: BTreeMap<KeyVersion, VersionCount>) -> BTreeMap<KeyVersion, VersionCount> {
    counts.into_iter().filter(|(_, c)| c.total() > 0).collect()
}

fn count(version: u32, recent: u64, dormant: u64) -> (KeyVersion, VersionCount) {
    (KeyVersion(version), VersionCount { recent, dormant })
}

pub(super) async fn count_by_key_version_splits_recent_and_dormant(store: Store) {
    let check = "count_by_key_version_splits_recent_and_dormant";
    // Counted at t(200), recent meaning seen at or after t(100).
    let seen = |mut r: SessionRecord, at: i64| {
        r.last_seen_at = t(at);
        r
    };
    let with = |mut r: SessionRecord, current: u32, prev: Option<(u32, Option<i64>)>| {
        r.current = credential(current);
        r.previous = prev.map(|(v, until)| previous(credential(v), 50, until));
        r
    };
    let records = [
        // Version 1 only: one recent (exactly at the boundary), one dormant.
        seen(session("a", 0), 100),
        seen(session("b", 0), 99),
        // Sessions before login count like any other.
        seen(anonymous(0), 150),
        // Rotated to 2, successor unconfirmed: counts under 2 and 1.
        with(seen(session("c", 0), 150), 2, Some((1, None))),
        // Rotated to 2, previous within its grace: counts under 2 and 1.
        with(seen(session("d", 0), 50), 2, Some((1, Some(201)))),
        // Rotated to 2, grace over (at the count's instant): only 2.
        with(seen(session("e", 0), 150), 2, Some((1, Some(200)))),
        // Rotated within version 2: counted once.
        with(seen(session("f", 0), 150), 2, Some((2, None))),
        // A superseded secret is never counted.
        {
            let mut r = with(seen(session("g", 0), 150), 2, None);
            r.superseded = Some(credential(3));
            r
        },
    ];
    let revoked = with(session("h", 0), 5, None);
    let expired = with(session("i", -1000), 6, None);
    let mut at_expiry = with(session("j", 0), 7, None);
    at_expiry.expires_at = t(200);
    for r in records.iter().chain([&revoked, &expired, &at_expiry]) {
        insert(check, &store, r).await;
    }
    ok(
        check,
        store.revoke(&revoked.id, None, t(10), &revocation()).await,
    );
    let counts = ok(check, store.count_by_key_version(t(200), t(100)).await);
    let expected: BTreeMap<_, _> = [count(1, 3, 2), count(2, 4, 1)].into_iter().collect();
    assert_eq!(
        nonzero(counts),
        expected,
        "`{check}`: counts at t(200), recent since t(100)"
    );

    // Everything dormant when the window starts later; nothing live later on.
    let counts = ok(check, store.count_by_key_version(t(200), t(160)).await);
    let expected: BTreeMap<_, _> = [count(1, 0, 5), count(2, 0, 5)].into_iter().collect();
    assert_eq!(
        nonzero(counts),
        expected,
        "`{check}`: counts at t(200), recent since t(160)"
    );
    let counts = ok(check, store.count_by_key_version(t(1000), t(100)).await);
    assert_eq!(
        nonzero(counts),
        BTreeMap::new(),
        "`{check}`: counts once every record expired"
    );
}

pub(super) async fn purge_expired_removes_dead_records_only(store: Store) {
    let check = "purge_expired_removes_dead_records_only";
    let mut live = session("alice", 0);
    live.previous = Some(previous(credential(1), 0, Some(5)));
    let revoked = session("alice", 0);
    let idle = anonymous(-2000);
    let mut at_expiry = session("alice", 0);
    at_expiry.expires_at = t(10);
    let mut absolute = session("alice", -4000);
    absolute.expires_at = t(900);
    absolute.absolute_expires_at = t(900);
    for r in [&live, &revoked, &idle, &at_expiry, &absolute] {
        insert(check, &store, r).await;
    }
    ok(
        check,
        store.revoke(&revoked.id, None, t(1), &revocation()).await,
    );
    assert_eq!(
        ok(check, store.purge_expired(t(10)).await),
        3,
        "`{check}`: how many were purged at t(10)"
    );
    assert_stored(check, &store, &live, t(10)).await;
    assert_stored(check, &store, &absolute, t(10)).await;
    for (what, r) in [
        ("a revoked record", &revoked),
        ("an idle-expired record", &idle),
        ("a record purged at its expiry", &at_expiry),
    ] {
        assert_eq!(
            ok(check, store.revoke(&r.id, None, t(11), &revocation()).await),
            RevokeOutcome::NotFound,
            "`{check}`: {what} was kept"
        );
    }
    assert_eq!(
        ok(check, store.purge_expired(t(10)).await),
        0,
        "`{check}`: a second purge"
    );
    assert_eq!(
        ok(check, store.purge_expired(t(900)).await),
        1,
        "`{check}`: a purge at the absolute expiry"
    );

    // The purged records' keys are gone, not merely hidden: a new record may
    // hold them.
    let mut heir = session("bob", 1000);
    heir.current = revoked.current;
    heir.previous = Some(previous(idle.current, 1000, None));
    heir.superseded = Some(absolute.current);
    insert(check, &store, &heir).await;
    assert_stored(check, &store, &heir, t(1001)).await;
    assert!(
        get(check, &store, &live.id, t(999)).await.is_some(),
        "`{check}`: a live record was purged"
    );
    assert_unknown(check, &store, &at_expiry.current, t(1001), "a purged key").await;
}
