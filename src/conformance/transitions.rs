//! The lifecycle written through `replace`: for each transition the crate
//! makes (built here by hand: field edits and generation + 1), the lookup
//! keys that must resolve afterwards, in which slot and under which
//! version, and those that must not.

use serde_json::json;

use super::support::{
    Store, assert_resolves, assert_stored, assert_unknown, credential, insert, previous, replaced,
    session, successor, t, tu,
};
use crate::keys::KeyVersion;
use crate::record::{Credential, Data, Slot};

pub(super) async fn replace_confirms_a_rotation(store: Store) {
    let check = "replace_confirms_a_rotation";
    let mut r = session("alice", 0);
    let old = r.current;
    r.current = credential(2);
    r.previous = Some(previous(old, 100, None));
    insert(check, &store, &r).await;

    // The first request with the new secret: the previous secret's grace
    // starts, the access ttl restarts, the expiry slides.
    let mut confirmed = successor(&r);
    if let Some(p) = &mut confirmed.previous {
        p.valid_until = Some(t(230));
    }
    confirmed.access_expires_at = t(300);
    confirmed.last_seen_at = t(200);
    confirmed.expires_at = t(1200);
    replaced(check, &store, &r, &confirmed, t(200), "confirm").await;
    // Past the grace the previous secret still resolves: the crate, not the
    // store, calls it reuse.
    assert_resolves(check, &store, &old, Slot::Previous, &r.id, t(240)).await;

    // Confirming with an old key version re-keys the current secret in the
    // same write.
    let mut r = session("bob", 0);
    let (old, v1_current) = (r.current, credential(1));
    r.current = v1_current;
    r.previous = Some(previous(old, 100, None));
    insert(check, &store, &r).await;
    let mut confirmed = successor(&r);
    if let Some(p) = &mut confirmed.previous {
        p.valid_until = Some(t(230));
    }
    confirmed.current = credential(2);
    confirmed.access_expires_at = t(300);
    replaced(check, &store, &r, &confirmed, t(200), "confirm and re-key").await;
    assert_unknown(
        check,
        &store,
        &v1_current,
        t(200),
        "the re-keyed-away current key",
    )
    .await;
}

pub(super) async fn replace_rotates_current_to_previous(store: Store) {
    let check = "replace_rotates_current_to_previous";
    let r = session("alice", 0);
    insert(check, &store, &r).await;

    let rotate = |from: &crate::record::SessionRecord, now: i64, version: u32| {
        let mut next = successor(from);
        next.previous = Some(previous(from.current, now, None));
        next.current = credential(version);
        next.access_expires_at = t(now + 100);
        next.last_seen_at = t(now);
        next.expires_at = t(now + 1000);
        next
    };
    let first = rotate(&r, 150, 2);
    replaced(check, &store, &r, &first, t(150), "rotate").await;
    assert_resolves(check, &store, &r.current, Slot::Previous, &r.id, t(150)).await;
    assert_resolves(check, &store, &first.current, Slot::Current, &r.id, t(150)).await;

    // Confirmed, then rotated again: only one previous secret is kept.
    let mut confirmed = successor(&first);
    if let Some(p) = &mut confirmed.previous {
        p.valid_until = Some(t(190));
    }
    replaced(check, &store, &first, &confirmed, t(160), "confirm").await;
    let second = rotate(&confirmed, 300, 2);
    replaced(check, &store, &confirmed, &second, t(300), "rotate again").await;
    assert_unknown(
        check,
        &store,
        &r.current,
        t(300),
        "a secret two rotations old",
    )
    .await;
    assert_resolves(check, &store, &first.current, Slot::Previous, &r.id, t(300)).await;
}

pub(super) async fn replace_re_rotates_an_unconfirmed_successor(store: Store) {
    let check = "replace_re_rotates_an_unconfirmed_successor";
    let mut r = session("alice", 0);
    let kept = r.current;
    r.current = credential(1);
    r.previous = Some(previous(kept, 100, None));
    insert(check, &store, &r).await;

    // The successor was lost: it becomes superseded, a fresh secret current,
    // and the previous slot gets a new in-flight window.
    let re_rotate = |from: &crate::record::SessionRecord, now: i64| {
        let mut next = successor(from);
        next.superseded = Some(from.current);
        next.current = credential(1);
        if let Some(p) = &mut next.previous {
            p.rotated_at = t(now);
        }
        next
    };
    let first = re_rotate(&r, 200);
    replaced(check, &store, &r, &first, t(200), "re-rotate").await;
    assert_resolves(check, &store, &r.current, Slot::Superseded, &r.id, t(200)).await;
    assert_resolves(check, &store, &kept, Slot::Previous, &r.id, t(200)).await;

    // That successor was lost too: a second re-rotation replaces the
    // superseded secret (only one is kept) and keeps the previous one.
    let second = re_rotate(&first, 400);
    replaced(check, &store, &first, &second, t(400), "re-rotate again").await;
    assert_unknown(
        check,
        &store,
        &r.current,
        t(400),
        "a secret superseded twice over",
    )
    .await;
    assert_resolves(
        check,
        &store,
        &first.current,
        Slot::Superseded,
        &r.id,
        t(400),
    )
    .await;
    assert_resolves(check, &store, &kept, Slot::Previous, &r.id, t(400)).await;

    // Confirming the latest successor keeps the superseded secret.
    let mut confirmed = successor(&second);
    if let Some(p) = &mut confirmed.previous {
        p.valid_until = Some(t(460));
    }
    confirmed.access_expires_at = t(530);
    replaced(check, &store, &second, &confirmed, t(430), "confirm").await;
}

pub(super) async fn replace_renews_and_forgets_older_secrets(store: Store) {
    let check = "replace_renews_and_forgets_older_secrets";
    let mut r = session("alice", 0);
    r.previous = Some(previous(credential(1), 50, Some(120)));
    r.superseded = Some(credential(1));
    insert(check, &store, &r).await;
    let old: Vec<(Slot, Credential)> = r.credentials().collect();

    let mut renewed = successor(&r);
    renewed.current = credential(2);
    renewed.previous = None;
    renewed.superseded = None;
    renewed.authenticated_at = Some(t(100));
    renewed.access_expires_at = t(200);
    renewed.last_seen_at = t(100);
    renewed.expires_at = t(1100);
    replaced(check, &store, &r, &renewed, t(100), "renew").await;
    for (slot, c) in &old {
        let what = format!("the {slot:?} secret before a renew");
        assert_unknown(check, &store, c, t(100), &what).await;
    }
    // Unknown, not merely hidden: the keys are free for another record.
    let mut reuse = session("bob", 0);
    reuse.current = old[0].1;
    reuse.previous = Some(previous(old[1].1, 0, None));
    reuse.superseded = Some(old[2].1);
    insert(check, &store, &reuse).await;
    assert_stored(check, &store, &reuse, t(100)).await;
    assert_stored(check, &store, &renewed, t(100)).await;
}

pub(super) async fn replace_rekeys_a_slot_in_place(store: Store) {
    let check = "replace_rekeys_a_slot_in_place";
    let mut r = session("alice", 0);
    r.previous = Some(previous(credential(1), 50, Some(500)));
    r.superseded = Some(credential(1));
    insert(check, &store, &r).await;

    // The current secret, presented under key version 1, is re-keyed to 2.
    let mut rekeyed = successor(&r);
    rekeyed.current = credential(2);
    replaced(check, &store, &r, &rekeyed, t(60), "re-key current").await;
    assert_unknown(
        check,
        &store,
        &r.current,
        t(60),
        "the re-keyed-away current key",
    )
    .await;
    let new_under_old_version = Credential {
        key_version: KeyVersion(1),
        ..rekeyed.current
    };
    assert_unknown(
        check,
        &store,
        &new_under_old_version,
        t(60),
        "the re-keyed current key under its old version",
    )
    .await;

    // The previous slot: new key and version, same rotation times.
    let old_previous = r.previous.unwrap();
    let mut again = successor(&rekeyed);
    let new_previous = credential(2);
    if let Some(p) = &mut again.previous {
        p.credential = new_previous;
    }
    replaced(check, &store, &rekeyed, &again, t(70), "re-key previous").await;
    assert_unknown(
        check,
        &store,
        &old_previous.credential,
        t(70),
        "the re-keyed-away previous key",
    )
    .await;
    let found = assert_resolves(check, &store, &new_previous, Slot::Previous, &r.id, t(70)).await;
    assert_eq!(
        found.previous.map(|p| (p.rotated_at, p.valid_until)),
        Some((old_previous.rotated_at, old_previous.valid_until)),
        "`{check}`: a re-key moved the previous slot's times"
    );
}

pub(super) async fn replace_touches_and_slides_the_expiry(store: Store) {
    let check = "replace_touches_and_slides_the_expiry";
    let r = session("alice", 0);
    insert(check, &store, &r).await;

    let mut touched = successor(&r);
    touched.last_seen_at = tu(600, 250);
    touched.expires_at = tu(1600, 250);
    replaced(check, &store, &r, &touched, tu(600, 250), "touch").await;
    // Past the old idle expiry, before the new one.
    assert_stored(check, &store, &touched, t(1300)).await;

    // Slid up to the absolute expiry, and not past it.
    let mut capped = successor(&touched);
    capped.last_seen_at = t(1400);
    capped.expires_at = r.absolute_expires_at;
    replaced(
        check,
        &store,
        &touched,
        &capped,
        t(1400),
        "touch to the cap",
    )
    .await;
    assert_stored(check, &store, &capped, t(4999)).await;
    assert_unknown(
        check,
        &store,
        &r.current,
        t(5000),
        "a key at its absolute expiry",
    )
    .await;
}

pub(super) async fn replace_writes_data_changes(store: Store) {
    let check = "replace_writes_data_changes";
    let mut r = session("alice", 0);
    r.data.insert("theme".into(), json!("dark"));
    r.data.insert("flash".into(), json!("saved"));
    insert(check, &store, &r).await;

    // Keys set and removed (a patch merged by the crate onto the record).
    let mut patched = successor(&r);
    patched.data.remove("flash");
    patched.data.insert(
        "cart".into(),
        json!([{"sku": "A-1", "qty": 2}, {"sku": "ü", "qty": 1}]),
    );
    patched
        .data
        .insert("theme".into(), json!({"name": "dark", "contrast": 1.5}));
    replaced(check, &store, &r, &patched, t(10), "data patch").await;

    let mut cleared = successor(&patched);
    cleared.data = Data::new();
    replaced(check, &store, &patched, &cleared, t(20), "data cleared").await;
}
