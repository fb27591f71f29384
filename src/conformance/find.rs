//! Reading: the round trip of every field, `find_active` and `get_active`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use serde_json::json;

use super::support::{
    MICROSECOND, Store, anonymous, assert_resolves, assert_stored, assert_unknown, candidate,
    credential, find, get, insert, ok, previous, random_key, revocation, session, t, tu,
};
use crate::keys::{Candidate, KeyVersion};
use crate::record::{Data, PreviousCredential, SessionId, Slot};

fn data(value: serde_json::Value) -> Data {
    match value {
        serde_json::Value::Object(map) => map,
        other => panic!("not a JSON object: {other}"),
    }
}

pub(super) async fn insert_then_find_round_trips_every_field(store: Store) {
    let check = "insert_then_find_round_trips_every_field";
    // Every field set, every timestamp with microseconds.
    let mut full = session("user-ü-42 ✓", 0);
    full.created_at = tu(0, 123_456);
    full.authenticated_at = Some(tu(5, 1));
    full.last_seen_at = tu(30, 999_999);
    full.expires_at = tu(1030, 999_999);
    full.absolute_expires_at = tu(86_400, 654_321);
    full.idle_timeout = Duration::from_secs(1000);
    full.persistent = true;
    full.access_expires_at = tu(130, 500_000);
    full.current = credential(u32::MAX);
    full.previous = Some(PreviousCredential {
        credential: credential(0),
        rotated_at: tu(20, 250_000),
        valid_until: Some(tu(80, 750_001)),
    });
    full.superseded = Some(credential(5));
    full.user_agent =
        Some("Mozilla/5.0 (X11; Linux x86_64; rv:135.0) Gecko/20100101 Firefox/135.0 ünï".into());
    full.client_ip = Some(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)));
    full.data = data(json!({
        "unicode": "ünïcødé ✓ 🦀 日本語 \u{202e}",
        "escapes": "quote \" backslash \\ slash / tab \t newline \n",
        "ключ 🔑": "a value under a unicode key",
        "nested": {"tenant": {"id": 7, "tags": ["a", "b"]}, "ok": true, "none": null},
        "array": [1, "two", [3.5], {"four": 4}, null, false],
        "u64_max": u64::MAX,
        "i64_min": i64::MIN,
        "floats": [0.1, -2.5, 1e-7, 1.0],
        "empty": {"object": {}, "array": [], "string": ""},
    }));

    // Before login: no subject, no authentication time, IPv6, an unconfirmed
    // successor (the previous slot has no `valid_until`).
    let mut before_login = anonymous(0);
    before_login.created_at = tu(1, 1);
    before_login.last_seen_at = tu(2, 2);
    before_login.expires_at = tu(602, 2);
    before_login.absolute_expires_at = tu(3601, 1);
    before_login.idle_timeout = Duration::from_secs(600);
    before_login.access_expires_at = tu(101, 1);
    before_login.current = credential(2);
    before_login.previous = Some(PreviousCredential {
        credential: credential(1),
        rotated_at: tu(2, 2),
        valid_until: None,
    });
    before_login.client_ip = Some(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)));
    before_login.data = data(json!({"csrf": "token", "cart": [{"sku": "A-1", "qty": 2}]}));

    // Bare: a subject but no authentication time, no optional slot, an
    // empty (not absent) user agent, an IPv4-mapped IPv6 address (stays
    // IPv6), a long idle timeout, no data.
    let mut bare = session("bare", 0);
    bare.authenticated_at = None;
    bare.idle_timeout = Duration::from_secs(400 * 86_400);
    bare.user_agent = Some(String::new());
    bare.client_ip = Some(IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped()));

    for r in [&full, &before_login, &bare] {
        insert(check, &store, r).await;
    }
    for r in [&full, &before_login, &bare] {
        assert_stored(check, &store, r, t(40)).await;
    }
    assert_unknown(
        check,
        &store,
        &credential(1),
        t(40),
        "an unknown lookup key",
    )
    .await;
}

pub(super) async fn find_reports_the_slot_version_and_value_index_of_each_match(store: Store) {
    let check = "find_reports_the_slot_version_and_value_index_of_each_match";
    let mut r = session("alice", 0);
    r.current = credential(3);
    r.previous = Some(previous(credential(2), 50, Some(500)));
    r.superseded = Some(credential(1));
    insert(check, &store, &r).await;
    let current = r.current;
    let previous = r.previous.unwrap().credential;
    let superseded = r.superseded.unwrap();
    for (slot, c) in [
        (Slot::Current, current),
        (Slot::Previous, previous),
        (Slot::Superseded, superseded),
    ] {
        assert_resolves(check, &store, &c, slot, &r.id, t(60)).await;
    }

    // A request with three cookie values under a ring of versions 3, 2, 1:
    // one candidate per value and version, as `KeyRing::candidates` makes.
    let other = |version: u32, value_index| Candidate {
        key_version: KeyVersion(version),
        lookup_key: random_key(),
        value_index,
    };
    let candidates = [
        other(3, 0),
        other(2, 0),
        candidate(&superseded, 0),
        candidate(&current, 1),
        other(2, 1),
        other(1, 1),
        other(3, 2),
        candidate(&previous, 2),
        other(1, 2),
    ];
    let matches = find(check, &store, &candidates, t(60)).await;
    let seen: Vec<_> = matches
        .iter()
        .map(|m| (m.value_index, m.slot, m.key_version, m.record.id))
        .collect();
    assert_eq!(
        seen,
        [
            (0, Slot::Superseded, KeyVersion(1), r.id),
            (1, Slot::Current, KeyVersion(3), r.id),
            (2, Slot::Previous, KeyVersion(2), r.id),
        ],
        "`{check}`: one match per matching candidate, with its value index, slot and version"
    );
    for m in &matches {
        assert_eq!(*m.record, r, "`{check}`: the matched record");
    }

    // The key version is part of the match: a lookup key presented under
    // another version than its slot's is no match.
    for (what, c) in [
        ("the current lookup key under another version", current),
        ("the previous lookup key under another version", previous),
        (
            "the superseded lookup key under another version",
            superseded,
        ),
    ] {
        let wrong = Candidate {
            key_version: KeyVersion(c.key_version.0 + 10),
            ..candidate(&c, 0)
        };
        let matches = find(check, &store, &[wrong], t(60)).await;
        assert!(matches.is_empty(), "`{check}`: {what} matched");
    }
    let value_index = find(check, &store, &[candidate(&current, 3)], t(60)).await;
    assert_eq!(
        value_index
            .iter()
            .map(|m| m.value_index)
            .collect::<Vec<_>>(),
        [3],
        "`{check}`: the value index is the candidate's"
    );
}

pub(super) async fn find_returns_every_matched_record(store: Store) {
    let check = "find_returns_every_matched_record";
    let alice = session("alice", 0);
    let mut tossed = anonymous(10);
    tossed.previous = Some(previous(credential(1), 10, None));
    insert(check, &store, &alice).await;
    insert(check, &store, &tossed).await;
    let tossed_previous = tossed.previous.unwrap().credential;

    // Two records (cookie tossing, a restored backup): both are reported.
    let matches = find(
        check,
        &store,
        &[candidate(&alice.current, 0), candidate(&tossed_previous, 1)],
        t(20),
    )
    .await;
    let seen: Vec<_> = matches
        .iter()
        .map(|m| (m.value_index, m.slot, m.record.id))
        .collect();
    assert_eq!(
        seen,
        [(0, Slot::Current, alice.id), (1, Slot::Previous, tossed.id)],
        "`{check}`: two records matched"
    );

    // Two slots of one record: one match per candidate.
    let matches = find(
        check,
        &store,
        &[
            candidate(&tossed_previous, 0),
            candidate(&tossed.current, 1),
        ],
        t(20),
    )
    .await;
    let seen: Vec<_> = matches
        .iter()
        .map(|m| (m.value_index, m.slot, m.record.id))
        .collect();
    assert_eq!(
        seen,
        [
            (0, Slot::Previous, tossed.id),
            (1, Slot::Current, tossed.id)
        ],
        "`{check}`: two slots of one record matched"
    );

    let none = ok(check, store.find_active(&[], t(20)).await);
    assert!(
        none.is_empty(),
        "`{check}`: no candidates matched something"
    );
}

pub(super) async fn find_returns_previous_secrets_past_their_grace(store: Store) {
    let check = "find_returns_previous_secrets_past_their_grace";
    // Confirmed successor, grace over: the store reports the match, the
    // crate decides it is reuse.
    let mut confirmed = session("alice", 0);
    confirmed.current = credential(2);
    confirmed.previous = Some(previous(credential(1), 50, Some(80)));
    // Unconfirmed successor, rotated long ago.
    let mut unconfirmed = session("alice", 0);
    unconfirmed.previous = Some(previous(credential(1), 1, None));
    unconfirmed.superseded = Some(credential(1));
    insert(check, &store, &confirmed).await;
    insert(check, &store, &unconfirmed).await;
    for r in [&confirmed, &unconfirmed] {
        let previous = r.previous.unwrap().credential;
        let found = assert_resolves(check, &store, &previous, Slot::Previous, &r.id, t(900)).await;
        assert_eq!(
            &found, r,
            "`{check}`: the record matched by its previous secret"
        );
    }
    let superseded = unconfirmed.superseded.unwrap();
    assert_resolves(
        check,
        &store,
        &superseded,
        Slot::Superseded,
        &unconfirmed.id,
        t(900),
    )
    .await;
}

pub(super) async fn find_ignores_inactive_records(store: Store) {
    let check = "find_ignores_inactive_records";
    let full_slots = |mut r: crate::record::SessionRecord| {
        r.previous = Some(previous(credential(1), 10, None));
        r.superseded = Some(credential(1));
        r
    };
    // Idle expiry at t(1000), absolute at t(5000).
    let idle = full_slots(session("alice", 0));
    // Idle and absolute expiry at t(800).
    let mut absolute = full_slots(anonymous(0));
    absolute.expires_at = t(800);
    absolute.absolute_expires_at = t(800);
    let revoked = full_slots(session("alice", 0));
    for r in [&idle, &absolute, &revoked] {
        insert(check, &store, r).await;
    }
    ok(
        check,
        store.revoke(&revoked.id, None, t(1), &revocation()).await,
    );

    for (what, r, end) in [
        ("an idle-expired record", &idle, t(1000)),
        ("an absolutely expired record", &absolute, t(800)),
    ] {
        // Live until the last microsecond, gone at the expiry itself.
        assert_stored(check, &store, r, end - MICROSECOND).await;
        for (slot, c) in r.credentials() {
            let what = format!("the {slot:?} lookup key of {what}");
            assert_unknown(check, &store, &c, end, &what).await;
            assert_unknown(check, &store, &c, end + MICROSECOND, &what).await;
        }
    }
    for (slot, c) in revoked.credentials() {
        let what = format!("the {slot:?} lookup key of a revoked record");
        assert_unknown(check, &store, &c, t(2), &what).await;
    }
    let all: Vec<Candidate> = [&idle, &absolute, &revoked]
        .into_iter()
        .flat_map(|r| r.credentials().map(|(_, c)| candidate(&c, 0)))
        .collect();
    assert!(
        find(check, &store, &all, t(1000)).await.is_empty(),
        "`{check}`: inactive records matched"
    );
}

pub(super) async fn get_active_returns_active_records_only(store: Store) {
    let check = "get_active_returns_active_records_only";
    let live = session("alice", 0);
    let mut absolute = anonymous(0);
    absolute.expires_at = t(800);
    absolute.absolute_expires_at = t(800);
    let revoked = session("alice", 0);
    for r in [&live, &absolute, &revoked] {
        insert(check, &store, r).await;
    }
    ok(
        check,
        store.revoke(&revoked.id, None, t(1), &revocation()).await,
    );
    assert_eq!(
        get(check, &store, &live.id, t(1000) - MICROSECOND)
            .await
            .as_ref(),
        Some(&live),
        "`{check}`: a live record"
    );
    assert_eq!(
        get(check, &store, &absolute.id, t(800) - MICROSECOND)
            .await
            .as_ref(),
        Some(&absolute),
        "`{check}`: a record before its absolute expiry"
    );
    for (what, id, now) in [
        ("an idle-expired record", live.id, t(1000)),
        ("an absolutely expired record", absolute.id, t(800)),
        ("a revoked record", revoked.id, t(2)),
        ("an unknown id", SessionId::generate(), t(2)),
    ] {
        assert!(
            get(check, &store, &id, now).await.is_none(),
            "`{check}`: {what} was returned"
        );
    }
}
