//! Sliding idle expiry, the absolute cap, rotation with confirmation,
//! re-rotation after a lost response, and reuse detection, through a real
//! Router. Time moves on a `MockClock`: nothing sleeps.

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
async fn sliding_expiry_writes_at_most_once_per_touch_interval_and_sends_no_cookie() {
    let h = Harness::with(touch_only(), ring(1, &[1]));
    let secret = h.login("alice").await;
    h.store.reset_counts();
    // Requests every 30 s for 30 minutes: six touch intervals.
    for _ in 0..60 {
        h.advance(30);
        let res = h.call("GET", "/me", Some(&secret)).await;
        assert_eq!(res.status, StatusCode::OK);
        // A slide needs no cookie: the cookie's Max-Age runs to the
        // absolute expiry, and the server decides when the session ends.
        assert!(res.raw_set_cookies.is_empty(), "{:?}", res.raw_set_cookies);
    }
    assert_eq!(
        Counts::get(&h.store.counts.touch_applied),
        6,
        "one write per 5-minute interval over 30 minutes"
    );
    assert_eq!(h.store.counts.writes(), 6, "no other writes");
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
async fn a_persistent_login_cookie_lasts_to_the_absolute_expiry() {
    let h = Harness::with(touch_only(), ring(1, &[1]));
    let res = h.call("POST", "/login?user=alice", None).await;
    let cookie = res.session_cookie().unwrap();
    assert_eq!(cookie.max_age(), Some(cookie::time::Duration::minutes(180)));
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
        assert!(h.records()[0].expires_at <= absolute);
    }
    h.advance(20 * MIN);
    let res = h.call("GET", "/me", Some(&secret)).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(h.records()[0].expires_at, absolute);
    assert!(res.raw_set_cookies.is_empty(), "{:?}", res.raw_set_cookies);
    // At the absolute lifetime the session ends, however active it was. The
    // cookie is left alone: only logout and reuse clear it.
    h.advance(10 * MIN);
    let res = h.call("GET", "/me", Some(&secret)).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert!(res.raw_set_cookies.is_empty());
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
    let res = h.call("GET", "/me", Some(&secret)).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert!(res.raw_set_cookies.is_empty());
}

#[tokio::test]
async fn rotation_is_confirmed_by_the_new_secret_and_the_grace_starts_then() {
    let h = Harness::with(common::rotating(), ring(1, &[1]));
    let old = h.login("alice").await;
    h.advance(10 * MIN);
    let res = h.call("GET", "/me", Some(&old)).await;
    assert!(res.new_secret().is_none(), "not yet due");
    assert_eq!(Counts::get(&h.store.counts.rotate_applied), 0);

    h.advance(5 * MIN);
    let res = h.call("GET", "/me", Some(&old)).await;
    assert_eq!(res.status, StatusCode::OK);
    let new = res
        .new_secret()
        .expect("past the access ttl a new secret is issued");
    assert_ne!(new, old);
    assert_eq!(Counts::get(&h.store.counts.rotate_applied), 1);
    assert_eq!(
        h.records()[0].previous.unwrap().valid_until,
        None,
        "unconfirmed"
    );

    // Long after the rotation, the new secret arrives: it confirms, and the
    // grace of the old one starts now.
    h.advance(10 * MIN);
    let res = h.call("GET", "/me", Some(&new)).await;
    assert_eq!((res.status, res.body.as_str()), (StatusCode::OK, "alice"));
    assert!(res.raw_set_cookies.is_empty());
    let confirmed_at = h.manager.now();
    assert_eq!(
        h.records()[0].previous.unwrap().valid_until,
        Some(confirmed_at + Duration::from_secs(60))
    );

    // In grace: a request in flight with the old secret is served.
    h.advance(30);
    let res = h.call("GET", "/me", Some(&old)).await;
    assert_eq!((res.status, res.body.as_str()), (StatusCode::OK, "alice"));
    assert!(res.raw_set_cookies.is_empty());

    // After grace: two parties. The whole session is revoked.
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
async fn a_dropped_rotation_response_does_not_log_the_user_out() {
    let h = Harness::with(common::rotating(), ring(1, &[1]));
    common::lost_rotation_response_keeps_the_session(&h).await;
    let record = &h.records()[0];
    assert!(record.revoked.is_none());
    assert!(
        record.superseded.is_some(),
        "the lost successor is superseded"
    );
    assert_eq!(Counts::get(&h.store.counts.rerotate_applied), 1);
}

#[tokio::test]
async fn a_rotation_write_that_applies_but_times_out_converges() {
    let h = Harness::with(common::rotating(), ring(1, &[1]));
    common::rotation_write_that_times_out_converges(&h).await;
    assert_eq!(Counts::get(&h.store.counts.rerotate_applied), 1);
    assert!(h.records()[0].revoked.is_none());
}

#[tokio::test]
async fn copies_of_one_cookie_through_a_rotation_are_detected() {
    let h = Harness::with(common::rotating(), ring(1, &[1]));
    common::copied_cookie_after_confirmed_rotation_is_reuse(&h).await;
    let h = Harness::with(common::rotating(), ring(1, &[1]));
    common::superseded_secret_is_reuse(&h).await;
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
    assert_eq!(h.call("GET", "/me", Some(&new)).await.body, "alice");
    h.advance(2 * MIN);
    let res = h.call("GET", "/maybe", Some(&old)).await;
    assert_eq!(res.body, "anonymous");
    assert!(res.raw_set_cookies.is_empty());
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
    assert_eq!(h.call("GET", "/me", Some(&second)).await.body, "alice");
    h.advance(15 * MIN);
    let third = h
        .call("GET", "/me", Some(&second))
        .await
        .new_secret()
        .unwrap();
    let res = h.call("GET", "/maybe", Some(&first)).await;
    assert_eq!(res.body, "anonymous");
    // Unknown, not a detected replay: the session lives on.
    assert!(res.raw_set_cookies.is_empty());
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
        let res = h.call("GET", "/me", Some(&secret)).await;
        secret = res.new_secret().unwrap();
        let cookie = res.session_cookie().unwrap();
        let record = &h.records()[0];
        assert!(record.expires_at <= record.absolute_expires_at);
        assert!(record.access_expires_at <= record.absolute_expires_at);
        let left = record.absolute_expires_at - h.manager.now();
        assert_eq!(
            cookie.max_age().unwrap().whole_seconds(),
            left.whole_seconds()
        );
        assert_eq!(h.call("GET", "/me", Some(&secret)).await.body, "alice");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_requests_with_the_old_secret_after_a_rotation_are_served_and_re_rotate_at_most_once()
 {
    let h = Harness::with(common::rotating(), ring(1, &[1]));
    let old = h.login("alice").await;
    h.advance(16 * MIN);
    let new = h.call("GET", "/me", Some(&old)).await.new_secret().unwrap();
    for (wait, rerotations) in [(1, 0), (5 * MIN, 1)] {
        // Right after the rotation (in flight), then long after it (the
        // successor looks lost): 200 parallel requests with the old secret.
        h.advance(wait);
        h.store.reset_counts();
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let router = h.router.clone();
                let req = request("GET", "/me", Some(&old));
                tokio::spawn(async move { router.oneshot(req).await.unwrap() })
            })
            .collect();
        let mut fresh = Vec::new();
        for task in tasks {
            let res = common::TestResponse::from(task.await.unwrap()).await;
            assert_eq!((res.status, res.body.as_str()), (StatusCode::OK, "alice"));
            assert!(!res.clears_cookie());
            fresh.extend(res.new_secret());
        }
        assert_eq!(Counts::get(&h.store.counts.rerotate_applied), rerotations);
        assert_eq!(fresh.len() as u64, rerotations);
    }
    // The old secret, in a new in-flight window, still works; the session lives.
    assert_eq!(h.call("GET", "/me", Some(&old)).await.body, "alice");
    assert!(h.records()[0].revoked.is_none());
    // The first successor was superseded by the re-rotation: presenting it
    // now means two parties.
    let res = h.call("GET", "/maybe", Some(&new)).await;
    assert_eq!(res.body, "anonymous");
    assert!(res.clears_cookie());
    assert_eq!(res.header("cache-control"), Some("no-store"));
    let revoked = h.records()[0].revoked.clone().expect("revoked");
    assert_eq!(revoked.revocation.reason, RevocationReason::ReuseDetected);
}

#[tokio::test]
async fn a_slow_request_that_arrived_in_flight_never_re_rotates() {
    let h = Harness::with(common::rotating(), ring(1, &[1]));
    let old = h.login("alice").await;
    h.advance(16 * MIN);
    let new = h.call("GET", "/me", Some(&old)).await.new_secret().unwrap();
    // A request sent with the old secret arrives just after the rotation and
    // runs past the grace; it must not re-rotate, or the new secret the
    // client already holds would become superseded.
    let res = h.call("POST", "/slow?secs=120", Some(&old)).await;
    assert_eq!(res.status, StatusCode::OK);
    assert!(res.raw_set_cookies.is_empty(), "{:?}", res.raw_set_cookies);
    assert_eq!(Counts::get(&h.store.counts.rerotate_applied), 0);
    let res = h.call("GET", "/me", Some(&new)).await;
    assert_eq!(res.body, "alice");
    assert!(h.records()[0].revoked.is_none());
}

#[tokio::test]
async fn the_current_secret_beside_a_lost_rotations_previous_one_confirms_it() {
    let h = Harness::with(common::rotating(), ring(1, &[1]));
    let old = h.login("alice").await;
    h.advance(16 * MIN);
    let new = h.call("GET", "/me", Some(&old)).await.new_secret().unwrap();
    h.advance(5 * MIN);
    // Both cookies reach us, after the grace of the unconfirmed rotation:
    // the best slot wins, the current one, and confirms.
    let res = h
        .send(common::request_with_secrets("/me", &[&old, &new]))
        .await;
    assert_eq!(res.body, "alice");
    assert!(res.raw_set_cookies.is_empty());
    assert_eq!(Counts::get(&h.store.counts.rerotate_applied), 0);
    assert!(
        h.records()[0].previous.unwrap().valid_until.is_some(),
        "confirmed"
    );
}

#[tokio::test]
async fn a_re_rotation_response_is_not_stored_by_caches() {
    let h = Harness::with(common::rotating(), ring(1, &[1]));
    let old = h.login("alice").await;
    h.advance(16 * MIN);
    let rotated = h.call("GET", "/me", Some(&old)).await;
    assert_eq!(rotated.header("cache-control"), Some("no-store"));
    h.advance(5 * MIN);
    let rerotated = h.call("GET", "/me", Some(&old)).await;
    assert!(rerotated.new_secret().is_some());
    assert_eq!(rerotated.header("cache-control"), Some("no-store"));
}

#[tokio::test]
async fn a_request_that_outlives_the_idle_expiry_does_not_revive_the_session() {
    let config = SessionConfig::builder()
        .idle_timeout(Duration::from_secs(10 * MIN))
        .touch_interval(Duration::from_secs(MIN))
        .access_ttl(Some(Duration::from_secs(5 * MIN)))
        .rotation_grace(Duration::from_secs(MIN))
        .build()
        .unwrap();
    let h = Harness::with(config, ring(1, &[1]));
    let secret = h.login("alice").await;
    h.advance(9 * MIN);
    // Due for a touch and a rotation when it starts; it runs 2 minutes, past
    // the idle expiry, and writes data at the end.
    let res = h
        .call("POST", "/slow?secs=120&key=flag&value=on", Some(&secret))
        .await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{}", res.body);
    assert_eq!(res.body, "session ended");
    assert!(res.new_secret().is_none());
    let record = &h.records()[0];
    assert_eq!(record.last_seen_at, common::T0, "not slid");
    assert!(record.data.is_empty(), "no data written");
    assert_eq!(
        h.call("GET", "/me", Some(&secret)).await.status,
        StatusCode::UNAUTHORIZED
    );
    // The same without data: no touch and no rotation either.
    let h = Harness::with(common::rotating(), ring(1, &[1]));
    let secret = h.login("bob").await;
    let idle = h.records()[0].expires_at - h.manager.now();
    h.advance(idle.whole_seconds() as u64 - 10);
    let res = h.call("POST", "/slow?secs=20", Some(&secret)).await;
    assert_eq!(res.status, StatusCode::OK);
    assert!(res.raw_set_cookies.is_empty());
    assert_eq!(Counts::get(&h.store.counts.replace_applied), 0);
    assert_eq!(
        h.call("GET", "/me", Some(&secret)).await.status,
        StatusCode::UNAUTHORIZED
    );
}
