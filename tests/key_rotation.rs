//! Rotating the server's HMAC keys without logging anyone out.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{Harness, TestStore, ring};
use http::StatusCode;
use tower_hmac_session::{KeyVersion, SessionConfig};

fn counts(pairs: &[(u32, u64)]) -> BTreeMap<KeyVersion, u64> {
    pairs.iter().map(|&(v, n)| (KeyVersion(v), n)).collect()
}

#[tokio::test]
async fn a_session_survives_adding_promoting_and_retiring_keys() {
    let h = Harness::with(SessionConfig::default(), ring(1, &[1]));
    let secret = h.login("alice").await;
    assert_eq!(
        h.manager.count_by_key_version().await.unwrap(),
        counts(&[(1, 1)])
    );

    // Add key 2 and make it current, at run time: the router is not rebuilt.
    h.manager.set_key_ring(ring(2, &[1, 2]));
    let res = h.call("GET", "/me", Some(&secret)).await;
    assert_eq!((res.status, res.body.as_str()), (StatusCode::OK, "alice"));
    // Re-keying keeps the secret: no new cookie is needed.
    assert!(res.raw_set_cookies.is_empty(), "{:?}", res.raw_set_cookies);
    assert_eq!(
        h.manager.count_by_key_version().await.unwrap(),
        counts(&[(2, 1)])
    );
    assert_eq!(h.records()[0].current.key_version, KeyVersion(2));

    // Key 1 now counts zero sessions: retire it.
    h.manager.set_key_ring(ring(2, &[2]));
    let res = h.call("GET", "/me", Some(&secret)).await;
    assert_eq!((res.status, res.body.as_str()), (StatusCode::OK, "alice"));
}

#[tokio::test]
async fn the_rekey_happens_once() {
    let h = Harness::with(SessionConfig::default(), ring(1, &[1]));
    let secret = h.login("alice").await;
    h.manager.set_key_ring(ring(2, &[1, 2]));
    h.store.reset_counts();
    for _ in 0..3 {
        assert_eq!(
            h.call("GET", "/me", Some(&secret)).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(common::Counts::get(&h.store.counts.rekey), 1);
    assert_eq!(common::Counts::get(&h.store.counts.find_active), 3);
}

#[tokio::test]
async fn a_ring_that_never_had_the_key_does_not_resolve_its_sessions() {
    let store = Arc::new(TestStore::default());
    let old = Harness::on(store.clone(), SessionConfig::default(), ring(1, &[1]));
    let secret = old.login("alice").await;
    // Another deployment on the same store, with keys 2 and 3 only.
    let other = Harness::on(store, SessionConfig::default(), ring(3, &[2, 3]));
    let res = other.call("GET", "/maybe", Some(&secret)).await;
    assert_eq!(res.body, "anonymous");
    assert!(res.clears_cookie());
    // The record is untouched and still resolves under its own key.
    assert_eq!(
        old.call("GET", "/me", Some(&secret)).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn removing_a_key_too_early_ends_only_the_sessions_still_on_it() {
    let h = Harness::with(SessionConfig::default(), ring(1, &[1]));
    let stale = h.login("alice").await;
    h.manager.set_key_ring(ring(2, &[1, 2]));
    let fresh = h.login("bob").await;
    h.manager.set_key_ring(ring(2, &[2]));
    assert_eq!(
        h.call("GET", "/me", Some(&stale)).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        h.call("GET", "/me", Some(&fresh)).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn new_records_are_never_written_under_a_non_current_version() {
    let config = SessionConfig::builder()
        .access_ttl(Some(std::time::Duration::from_secs(60)))
        .build()
        .unwrap();
    let h = Harness::with(config, ring(2, &[1, 2, 3]));
    let mut secrets = Vec::new();
    for user in ["alice", "bob", "carol"] {
        secrets.push(h.login(user).await);
    }
    // Rotations write new credentials: also under the current version.
    h.advance(61);
    for secret in &secrets {
        let res = h.call("GET", "/me", Some(secret)).await;
        assert!(res.new_secret().is_some());
    }
    let records = h.records();
    assert_eq!(records.len(), 3);
    for record in records {
        assert_eq!(record.current.key_version, KeyVersion(2));
        assert_eq!(
            record.previous.unwrap().credential.key_version,
            KeyVersion(2)
        );
    }
    assert_eq!(
        h.manager.count_by_key_version().await.unwrap(),
        counts(&[(2, 3)])
    );
}
