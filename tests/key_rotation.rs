//! Rotating the server's HMAC keys without logging anyone out.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{Harness, TestStore, ring};
use http::StatusCode;
use std::time::Duration;
use tower_hmac_session::{
    ConfigError, KeyRing, KeyRingError, KeyVersion, MemoryStore, MockClock, SessionConfig,
    SessionManager, VersionCount,
};

const DAY: Duration = Duration::from_secs(86_400);

/// `(version, recent, dormant)` triples.
fn counts(triples: &[(u32, u64, u64)]) -> BTreeMap<KeyVersion, VersionCount> {
    triples
        .iter()
        .map(|&(v, recent, dormant)| (KeyVersion(v), VersionCount { recent, dormant }))
        .collect()
}

#[tokio::test]
async fn a_session_survives_adding_promoting_and_retiring_keys() {
    let h = Harness::with(SessionConfig::default(), ring(1, &[1]));
    let secret = h.login("alice").await;
    assert_eq!(
        h.manager.count_by_key_version(DAY).await.unwrap(),
        counts(&[(1, 1, 0)])
    );

    // Add key 2 and make it current, at run time: the router is not rebuilt.
    h.manager.set_key_ring(ring(2, &[1, 2]));
    let res = h.call("GET", "/me", Some(&secret)).await;
    assert_eq!((res.status, res.body.as_str()), (StatusCode::OK, "alice"));
    // Re-keying keeps the secret: no new cookie is needed.
    assert!(res.raw_set_cookies.is_empty(), "{:?}", res.raw_set_cookies);
    assert_eq!(
        h.manager.count_by_key_version(DAY).await.unwrap(),
        counts(&[(2, 1, 0)])
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
    assert_eq!(common::Counts::get(&h.store.counts.replace_applied), 1);
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
    assert!(res.raw_set_cookies.is_empty());
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
        .rotation_grace(std::time::Duration::from_secs(30))
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
        h.manager.count_by_key_version(DAY).await.unwrap(),
        counts(&[(2, 3, 0)])
    );
}

#[tokio::test]
async fn counts_tell_recent_sessions_from_dormant_ones_that_retiring_would_end() {
    // Without rotation: a rotated session would also count under its
    // previous secret's version until the new secret is confirmed.
    let config = SessionConfig::builder().access_ttl(None).build().unwrap();
    let h = Harness::with(config, ring(1, &[1]));
    let dormant = h.login("alice").await;
    h.advance(3 * 86_400);
    let active = h.login("bob").await;
    h.manager.set_key_ring(ring(2, &[1, 2]));
    h.advance(3_600);
    // Bob's client comes back and is re-keyed; Alice's never does.
    assert_eq!(h.call("GET", "/me", Some(&active)).await.body, "bob");
    assert_eq!(
        h.manager.count_by_key_version(DAY).await.unwrap(),
        counts(&[(1, 0, 1), (2, 1, 0)])
    );
    // Retiring version 1 now ends exactly that one dormant session.
    h.manager.set_key_ring(ring(2, &[2]));
    assert_eq!(
        h.call("GET", "/me", Some(&dormant)).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(h.call("GET", "/me", Some(&active)).await.body, "bob");
}

#[test]
fn the_same_key_bytes_under_two_versions_fail_at_build() {
    let err = KeyRing::builder()
        .key(1, [9u8; 32])
        .key(2, [9u8; 32])
        .current(2)
        .build()
        .unwrap_err();
    assert_eq!(
        err,
        KeyRingError::DuplicateKey {
            first: KeyVersion(1),
            second: KeyVersion(2)
        }
    );
    // The error names versions, never key bytes.
    assert!(!format!("{err} {err:?}").contains("9, 9"));
}

#[test]
fn a_grace_not_shorter_than_the_access_ttl_fails_at_build() {
    for grace in [900, 901, 3_600] {
        let built = SessionConfig::builder()
            .access_ttl(Some(Duration::from_secs(900)))
            .rotation_grace(Duration::from_secs(grace))
            .build();
        assert!(
            matches!(built, Err(ConfigError::Lifetime(_))),
            "grace {grace}"
        );
    }
}

#[tokio::test]
async fn a_manager_with_a_test_clock_sees_key_rings_set_on_the_original() {
    let original = SessionManager::new(MemoryStore::new(), ring(1, &[1]), SessionConfig::default());
    let clocked = original.clone().with_clock(MockClock::new(common::T0));
    original.set_key_ring(ring(2, &[1, 2]));
    assert_eq!(clocked.key_ring().current(), KeyVersion(2));
    clocked.set_key_ring(ring(3, &[3]));
    assert_eq!(original.key_ring().current(), KeyVersion(3));
}
