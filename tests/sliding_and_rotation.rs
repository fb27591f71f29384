//! Sliding idle expiry, the absolute cap, secret rotation with a grace
//! window, and reuse detection. Time moves on a `MockClock`: nothing sleeps.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Counts, Harness, request, ring};
use http::StatusCode;
use tower::ServiceExt as _;
use tower_hmac_session::{RevocationReason, SessionConfig};

const MIN: u64 = 60;

fn touch_only() -> SessionConfig {
    SessionConfig::builder()
        .idle_timeout(Duration::from_secs(60 * MIN))
        .absolute_lifetime(Duration::from_secs(180 * MIN))
        .touch_interval(Duration::from_secs(5 * MIN))
        .access_ttl(None)
        .build()
        .unwrap()
}

#[tokio::test]
async fn sliding_expiry_writes_at_most_once_per_touch_interval() {
    let h = Harness::with(touch_only(), ring(1, &[1]));
    let secret = h.login("alice").await;
    h.store.reset_counts();
    // Requests every 30 s for 30 minutes: six touch intervals.
    let mut refreshed = 0;
    for _ in 0..60 {
        h.advance(30);
        let res = h.call("GET", "/me", Some(&secret)).await;
        assert_eq!(res.status, StatusCode::OK);
        if let Some(cookie) = res.session_cookie() {
            // A touch refreshes the cookie's Max-Age with the same secret.
            assert_eq!(cookie.value(), secret);
            assert_eq!(cookie.max_age(), Some(cookie::time::Duration::minutes(60)));
            refreshed += 1;
        }
    }
    let touches = Counts::get(&h.store.counts.touch);
    assert_eq!(
        touches, 6,
        "one write per 5-minute interval over 30 minutes"
    );
    assert_eq!(Counts::get(&h.store.counts.touch_applied), 6);
    assert_eq!(refreshed, 6);
    assert_eq!(h.store.counts.writes(), touches, "no other writes");
    let record = &h.records()[0];
    assert_eq!(
        record.last_seen_at,
        common::T0 + Duration::from_secs(30 * MIN)
    );
    assert_eq!(
        record.expires_at,
        record.last_seen_at + Duration::from_secs(60 * MIN)
    );
}

#[tokio::test]
async fn idle_expiry_slides_but_never_past_the_absolute_lifetime() {
    let h = Harness::with(touch_only(), ring(1, &[1]));
    let secret = h.login("alice").await;
    let absolute = h.records()[0].absolute_expires_at;
    // Active every 50 minutes: the idle timeout (60 min) never hits.
    for _ in 0..3 {
        h.advance(50 * MIN);
        assert_eq!(
            h.call("GET", "/me", Some(&secret)).await.status,
            StatusCode::OK
        );
        let record = &h.records()[0];
        assert!(record.expires_at <= absolute);
    }
    // The touch at 150 min reached the cap; at 170 min the expiry is the
    // absolute one.
    h.advance(20 * MIN);
    let res = h.call("GET", "/me", Some(&secret)).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(h.records()[0].expires_at, absolute);
    // Already at the cap: there is nothing to slide, so nothing is written
    // and the cookie is not re-sent.
    assert!(res.raw_set_cookies.is_empty(), "{:?}", res.raw_set_cookies);
    // At the absolute lifetime the session ends, however active it was.
    h.advance(10 * MIN);
    let res = h.call("GET", "/me", Some(&secret)).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert!(res.clears_cookie());
}

#[tokio::test]
async fn an_idle_session_expires() {
    let h = Harness::with(touch_only(), ring(1, &[1]));
    let secret = h.login("alice").await;
    h.advance(59 * MIN);
    assert_eq!(
        h.call("GET", "/me", Some(&secret)).await.status,
        StatusCode::OK
    );
    h.advance(61 * MIN);
    // Touched at 59 min: now at 120 min, 61 minutes idle.
    let res = h.call("GET", "/me", Some(&secret)).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert!(res.clears_cookie());
}

#[tokio::test]
async fn rotated_cookie_works_in_grace_and_revokes_the_session_after() {
    let h = Harness::with(common::rotating(), ring(1, &[1]));
    let old = h.login("alice").await;
    h.advance(10 * MIN);
    let res = h.call("GET", "/me", Some(&old)).await;
    // Due for a touch, not a rotation: at most the same secret, refreshed.
    assert!(res.new_secret().is_none_or(|s| s == old), "not yet due");
    assert_eq!(Counts::get(&h.store.counts.rotate), 0);

    h.advance(5 * MIN);
    let res = h.call("GET", "/me", Some(&old)).await;
    assert_eq!(res.status, StatusCode::OK);
    let new = res
        .new_secret()
        .expect("past the access ttl a new cookie is issued");
    assert_ne!(new, old);
    assert_eq!(Counts::get(&h.store.counts.rotate_applied), 1);

    // In grace: the old secret is served, with no new cookie.
    h.advance(30);
    let res = h.call("GET", "/me", Some(&old)).await;
    assert_eq!((res.status, res.body.as_str()), (StatusCode::OK, "alice"));
    assert!(res.raw_set_cookies.is_empty());
    assert_eq!(
        h.call("GET", "/me", Some(&new)).await.status,
        StatusCode::OK
    );

    // After grace: a replay. The whole session is revoked.
    h.advance(30);
    let res = h.call("GET", "/maybe", Some(&old)).await;
    assert_eq!(res.body, "anonymous");
    assert!(res.clears_cookie());
    assert_eq!(
        h.call("GET", "/me", Some(&new)).await.status,
        StatusCode::UNAUTHORIZED
    );
    let revoked = h.records()[0].revoked.clone().unwrap();
    assert_eq!(revoked.revocation.reason, RevocationReason::ReuseDetected);
}

#[tokio::test]
async fn reuse_detection_can_be_turned_off() {
    let config = SessionConfig::builder()
        .access_ttl(Some(Duration::from_secs(15 * MIN)))
        .rotation_grace(Duration::from_secs(60))
        .revoke_on_reuse(false)
        .build()
        .unwrap();
    let h = Harness::with(config, ring(1, &[1]));
    let old = h.login("alice").await;
    h.advance(15 * MIN);
    let new = h.call("GET", "/me", Some(&old)).await.new_secret().unwrap();
    h.advance(2 * MIN);
    let res = h.call("GET", "/maybe", Some(&old)).await;
    assert_eq!(res.body, "anonymous");
    assert!(res.clears_cookie());
    assert_eq!(
        h.call("GET", "/me", Some(&new)).await.status,
        StatusCode::OK
    );
    assert!(h.records()[0].revoked.is_none());
}

#[tokio::test]
async fn a_secret_two_rotations_old_is_unknown() {
    let h = Harness::with(common::rotating(), ring(1, &[1]));
    let first = h.login("alice").await;
    h.advance(15 * MIN);
    let second = h
        .call("GET", "/me", Some(&first))
        .await
        .new_secret()
        .unwrap();
    h.advance(15 * MIN);
    let third = h
        .call("GET", "/me", Some(&second))
        .await
        .new_secret()
        .unwrap();
    let res = h.call("GET", "/maybe", Some(&first)).await;
    assert_eq!(res.body, "anonymous");
    // Unknown, not a detected replay: the session lives on.
    assert_eq!(
        h.call("GET", "/me", Some(&third)).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn rotation_does_not_extend_past_the_absolute_lifetime() {
    let config = SessionConfig::builder()
        .idle_timeout(Duration::from_secs(60 * MIN))
        .absolute_lifetime(Duration::from_secs(60 * MIN))
        .access_ttl(Some(Duration::from_secs(15 * MIN)))
        .build()
        .unwrap();
    let h = Harness::with(config, ring(1, &[1]));
    let mut secret = h.login("alice").await;
    for _ in 0..3 {
        h.advance(15 * MIN);
        secret = h
            .call("GET", "/me", Some(&secret))
            .await
            .new_secret()
            .unwrap();
        let record = &h.records()[0];
        assert!(record.expires_at <= record.absolute_expires_at);
        assert!(record.access_expires_at <= record.absolute_expires_at);
    }
    h.advance(15 * MIN);
    assert_eq!(
        h.call("GET", "/me", Some(&secret)).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_due_for_rotation_rotate_exactly_once() {
    let h = Harness::with(common::rotating(), ring(1, &[1]));
    let secret = h.login("alice").await;
    h.advance(16 * MIN);
    h.store.reset_counts();
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let router = h.router.clone();
            let req = request("GET", "/me", Some(&secret));
            tokio::spawn(async move { router.oneshot(req).await.unwrap() })
        })
        .collect();
    let mut new_cookies = Vec::new();
    for task in tasks {
        let res = common::TestResponse::from(task.await.unwrap()).await;
        assert_eq!(
            (res.status, res.body.as_str()),
            (StatusCode::OK, "alice"),
            "none anonymous"
        );
        assert!(!res.clears_cookie());
        new_cookies.extend(res.new_secret());
    }
    assert_eq!(h.store.counts.rotate_applied.load(Ordering::SeqCst), 1);
    assert_eq!(
        new_cookies.len(),
        1,
        "exactly one response carries the new secret"
    );
    assert_eq!(
        h.call("GET", "/me", Some(&new_cookies[0])).await.status,
        StatusCode::OK
    );
    assert_eq!(
        h.call("GET", "/me", Some(&secret)).await.status,
        StatusCode::OK,
        "old in grace"
    );
}
