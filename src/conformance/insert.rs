//! Inserting: conflicts, invalid records, and racing inserts.

use serde_json::json;

use super::support::{
    Store, anonymous, assert_stored, assert_unknown, candidate, credential, find, get, insert, ok,
    previous, session, t,
};
use crate::record::{Data, MAX_DATA_LEN, SessionRecord};
use crate::store::StoreError;

/// Asserts that no lookup key of the refused `rejected` resolves to it.
async fn assert_not_stored(check: &str, store: &Store, rejected: &SessionRecord, what: &str) {
    for (slot, c) in rejected.credentials() {
        let resolves = find(check, store, &[candidate(&c, 0)], t(1))
            .await
            .iter()
            .any(|m| m.record.id == rejected.id);
        assert!(
            !resolves,
            "`{check}`: {what}: its {slot:?} lookup key resolves to it"
        );
    }
}

pub(super) async fn insert_conflicts_on_a_duplicate_id_or_lookup_key(store: Store) {
    let check = "insert_conflicts_on_a_duplicate_id_or_lookup_key";
    let mut existing = session("alice", 0);
    existing.previous = Some(previous(credential(1), 0, Some(60)));
    existing.superseded = Some(credential(1));
    insert(check, &store, &existing).await;
    let their_current = existing.current;
    let their_previous = existing.previous.unwrap().credential;
    let their_superseded = existing.superseded.unwrap();

    let fresh = || {
        let mut r = session("bob", 0);
        r.previous = Some(previous(credential(1), 0, None));
        r.superseded = Some(credential(1));
        r
    };
    let mut same_id = fresh();
    same_id.id = existing.id;
    let mut cases = vec![("the same id".to_owned(), same_id)];
    for (theirs, c) in [
        ("current", their_current),
        ("previous", their_previous),
        ("superseded", their_superseded),
    ] {
        let mut in_current = fresh();
        in_current.current = c;
        let mut in_previous = fresh();
        in_previous.previous = Some(previous(c, 0, None));
        let mut in_superseded = anonymous(0);
        in_superseded.superseded = Some(c);
        cases.push((
            format!("a current lookup key in their {theirs} slot"),
            in_current,
        ));
        cases.push((
            format!("a previous lookup key in their {theirs} slot"),
            in_previous,
        ));
        cases.push((
            format!("a superseded lookup key in their {theirs} slot"),
            in_superseded,
        ));
    }
    // Another version does not make it another key: lookup keys are unique
    // whatever their version.
    let mut other_version = fresh();
    other_version.current = their_current;
    other_version.current.key_version.0 += 1;
    cases.push((
        "their current lookup key under another version".to_owned(),
        other_version,
    ));

    for (what, duplicate) in &cases {
        let result = store.insert(duplicate).await;
        assert!(
            matches!(result, Err(StoreError::Conflict)),
            "`{check}`: {what} gave {result:?}, not Conflict"
        );
        if duplicate.id != existing.id {
            assert!(
                get(check, &store, &duplicate.id, t(1)).await.is_none(),
                "`{check}`: {what}: the refused record was stored"
            );
            assert_not_stored(check, &store, duplicate, what).await;
        }
        assert_stored(check, &store, &existing, t(1)).await;
    }
}

pub(super) async fn insert_refuses_invalid_records(store: Store) {
    let check = "insert_refuses_invalid_records";
    let with_data = |key: &str, value: serde_json::Value| {
        let mut r = session("alice", 0);
        r.data.insert(key.to_owned(), value);
        r
    };
    // `{"blob":"xx…"}`: 11 bytes of JSON around the string.
    let blob = |len: usize| with_data("blob", json!("x".repeat(len - 11)));

    let empty_subject = session("", 0);
    let mut past_absolute = session("alice", 0);
    past_absolute.expires_at = past_absolute.absolute_expires_at + time::Duration::SECOND;
    let mut same_key_current_previous = session("alice", 0);
    same_key_current_previous.previous = Some(previous(same_key_current_previous.current, 0, None));
    let mut same_key_current_superseded = anonymous(0);
    same_key_current_superseded.superseded = Some(same_key_current_superseded.current);
    let mut same_key_previous_superseded = session("alice", 0);
    let shared = credential(1);
    same_key_previous_superseded.previous = Some(previous(shared, 0, None));
    same_key_previous_superseded.superseded = Some(shared);
    let mut nul_nested_key = Data::new();
    nul_nested_key.insert("outer".into(), json!({"in\u{0}ner": 1}));
    let mut nul_in_key = session("alice", 0);
    nul_in_key.data.insert("k\u{0}".into(), json!(1));

    let cases = [
        ("an empty subject", empty_subject),
        ("an idle expiry past the absolute one", past_absolute),
        ("data over MAX_DATA_LEN", blob(MAX_DATA_LEN + 1)),
        (
            "a NUL character in a data string",
            with_data("k", json!("a\u{0}b")),
        ),
        (
            "a NUL character in a string in a data array",
            with_data("k", json!(["ok", ["n\u{0}"]])),
        ),
        ("a NUL character in a data key", nul_in_key),
        (
            "a NUL character in a nested data key",
            with_data("k", serde_json::Value::Object(nul_nested_key)),
        ),
        (
            "one lookup key in current and previous",
            same_key_current_previous,
        ),
        (
            "one lookup key in current and superseded",
            same_key_current_superseded,
        ),
        (
            "one lookup key in previous and superseded",
            same_key_previous_superseded,
        ),
    ];
    for (what, bad) in &cases {
        let result = store.insert(bad).await;
        assert!(
            matches!(result, Err(StoreError::Invalid(_))),
            "`{check}`: {what} gave {result:?}, not Invalid"
        );
        assert!(
            get(check, &store, &bad.id, t(1)).await.is_none(),
            "`{check}`: {what} was stored"
        );
        for (slot, c) in bad.credentials() {
            let what = format!("the {slot:?} lookup key of a record with {what}");
            assert_unknown(check, &store, &c, t(1), &what).await;
        }
    }

    // The bound is inclusive: exactly MAX_DATA_LEN bytes of JSON is fine.
    let largest = blob(MAX_DATA_LEN);
    assert_eq!(
        serde_json::to_vec(&largest.data)
            .map(|json| json.len())
            .ok(),
        Some(MAX_DATA_LEN),
        "`{check}`: the test's own arithmetic"
    );
    ok(check, store.insert(&largest).await);
    assert_stored(check, &store, &largest, t(1)).await;
}

pub(super) async fn concurrent_inserts_of_one_lookup_key_have_one_winner(store: Store) {
    let check = "concurrent_inserts_of_one_lookup_key_have_one_winner";
    let shared = credential(1);
    let records: Vec<SessionRecord> = (0..16)
        .map(|i| {
            let mut r = session("alice", 0);
            // Half hold the key as their current secret, half as previous.
            if i % 2 == 0 {
                r.current = shared;
            } else {
                r.previous = Some(previous(shared, 0, None));
            }
            r
        })
        .collect();
    let tasks: Vec<_> = records
        .iter()
        .cloned()
        .map(|r| {
            let store = store.clone();
            tokio::spawn(async move { store.insert(&r).await })
        })
        .collect();
    let mut winners = Vec::new();
    for (task, record) in tasks.into_iter().zip(&records) {
        match task.await.expect("an insert task panicked") {
            Ok(()) => winners.push(record),
            Err(StoreError::Conflict) => {}
            Err(error) => panic!("`{check}`: an insert gave {error:?}, not Ok or Conflict"),
        }
    }
    assert_eq!(winners.len(), 1, "`{check}`: inserts that succeeded");
    assert_stored(check, &store, winners[0], t(1)).await;
    for loser in records.iter().filter(|r| r.id != winners[0].id) {
        assert!(
            get(check, &store, &loser.id, t(1)).await.is_none(),
            "`{check}`: a losing insert was stored"
        );
        assert_not_stored(check, &store, loser, "a losing insert").await;
    }
}
