//! Store outages, a missing layer, and what clients see.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::routing::get;
use axum_core::response::IntoResponse;
use common::{Counts, Harness, TestResponse, request, ring};
use http::StatusCode;
use tower::ServiceExt as _;
use tower_hmac_session::{ActiveSession, Session, SessionConfig, StoreErrorPolicy};

#[tokio::test]
async fn a_failing_store_answers_503_and_changes_no_cookie() {
    let h = Harness::new();
    let secret = h.login("alice").await;
    h.store.fail_reads.store(true, Ordering::SeqCst);
    let res = h.call("GET", "/maybe", Some(&secret)).await;
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.raw_set_cookies.is_empty());
    assert!(res.body.contains("unavailable"), "{}", res.body);
    // No cookie, no store: anonymous requests are unaffected.
    assert_eq!(h.call("GET", "/maybe", None).await.status, StatusCode::OK);
    // Nothing was lost.
    h.store.fail_reads.store(false, Ordering::SeqCst);
    assert_eq!(h.call("GET", "/me", Some(&secret)).await.body, "alice");
}

#[tokio::test]
async fn the_anonymous_policy_serves_without_touching_the_cookie() {
    let config = SessionConfig::builder()
        .store_error_policy(StoreErrorPolicy::ContinueAnonymous)
        .build()
        .unwrap();
    let h = Harness::with(config, ring(1, &[1]));
    let secret = h.login("alice").await;
    h.store.fail_reads.store(true, Ordering::SeqCst);
    let res = h.call("GET", "/maybe", Some(&secret)).await;
    assert_eq!(
        (res.status, res.body.as_str()),
        (StatusCode::OK, "anonymous")
    );
    assert!(
        res.raw_set_cookies.is_empty(),
        "the cookie is neither cleared nor replaced"
    );
    h.store.fail_reads.store(false, Ordering::SeqCst);
    assert_eq!(h.call("GET", "/me", Some(&secret)).await.body, "alice");
}

#[tokio::test]
async fn the_store_error_response_can_be_customised() {
    let config = SessionConfig::builder()
        .store_error_response(|err| {
            (StatusCode::BAD_GATEWAY, format!("custom: {err}")).into_response()
        })
        .build()
        .unwrap();
    let h = Harness::with(config, ring(1, &[1]));
    let secret = h.login("alice").await;
    h.store.fail_reads.store(true, Ordering::SeqCst);
    let res = h.call("GET", "/me", Some(&secret)).await;
    assert_eq!(res.status, StatusCode::BAD_GATEWAY);
    assert!(
        res.body
            .starts_with("custom: session store backend failed during `find_active`"),
        "{}",
        res.body
    );
}

#[tokio::test(start_paused = true)]
async fn a_hung_store_times_out_into_a_503() {
    let config = SessionConfig::builder()
        .store_timeout(Some(Duration::from_millis(250)))
        .build()
        .unwrap();
    let h = Harness::with(config, ring(1, &[1]));
    let secret = h.login("alice").await;
    h.store.hang.store(true, Ordering::SeqCst);
    // Tokio's paused clock jumps over the timeout: the test does not wait.
    let res = h.call("GET", "/me", Some(&secret)).await;
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.raw_set_cookies.is_empty());
}

#[tokio::test]
async fn a_failing_maintenance_write_still_serves_and_the_old_cookie_keeps_working() {
    let config = SessionConfig::builder()
        .access_ttl(Some(Duration::from_secs(900)))
        .build()
        .unwrap();
    let h = Harness::with(config, ring(1, &[1]));
    let secret = h.login("alice").await;
    h.store.fail_writes.store(true, Ordering::SeqCst);
    h.advance(901);
    for _ in 0..2 {
        let res = h.call("GET", "/me", Some(&secret)).await;
        assert_eq!((res.status, res.body.as_str()), (StatusCode::OK, "alice"));
        assert!(
            res.raw_set_cookies.is_empty(),
            "no cookie for a rotation that failed"
        );
    }
    assert_eq!(Counts::get(&h.store.counts.replace), 2);
    assert_eq!(Counts::get(&h.store.counts.replace_applied), 0);
    // The store recovers: the same cookie rotates now.
    h.store.fail_writes.store(false, Ordering::SeqCst);
    let res = h.call("GET", "/me", Some(&secret)).await;
    assert_eq!(res.status, StatusCode::OK);
    assert!(res.new_secret().is_some_and(|s| s != secret));
}

#[tokio::test]
async fn a_failed_data_write_turns_the_response_into_a_503() {
    let h = Harness::new();
    let secret = h.login("alice").await;
    h.store.fail_writes.store(true, Ordering::SeqCst);
    let res = h
        .call("POST", "/attr?key=theme&value=dark", Some(&secret))
        .await;
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE, "{}", res.body);
    h.store.fail_writes.store(false, Ordering::SeqCst);
    assert_eq!(
        h.call("GET", "/attr?key=theme", Some(&secret)).await.body,
        "<none>"
    );
}

#[tokio::test]
async fn a_data_write_on_a_session_revoked_meanwhile_says_the_session_ended() {
    use tower_hmac_session::SessionLayer;
    let h = Harness::new();
    let secret = h.login("alice").await;
    let manager = h.manager.clone();
    let app = axum::Router::new()
        .route(
            "/",
            get(|session: Session| async move {
                // Another device logs everyone out while this request runs.
                let id = session.id().unwrap();
                session
                    .manager()
                    .revoke(&id, tower_hmac_session::RevocationReason::Admin)
                    .await
                    .unwrap();
                session.insert("theme", "dark").map(|_| "saved")
            }),
        )
        .layer(SessionLayer::new(manager));
    let res = TestResponse::from(
        app.oneshot(request("GET", "/", Some(&secret)))
            .await
            .unwrap(),
    )
    .await;
    // Its own kind, not a store outage: the session is gone.
    assert_eq!(
        (res.status, res.body.as_str()),
        (StatusCode::UNAUTHORIZED, "session ended")
    );
    assert!(res.raw_set_cookies.is_empty());
}

#[tokio::test]
async fn a_failing_login_stages_no_cookie() {
    let h = Harness::new();
    h.store.fail_writes.store(true, Ordering::SeqCst);
    let res = h.call("POST", "/login?user=alice", None).await;
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.raw_set_cookies.is_empty());
    assert!(h.records().is_empty());
}

#[tokio::test]
async fn a_login_that_fails_to_store_the_new_session_keeps_the_old_one() {
    let h = Harness::new();
    let alice = h.login("alice").await;
    *h.store.fail_only.lock().unwrap() = Some("insert");
    let res = h.call("POST", "/login?user=bob", Some(&alice)).await;
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.raw_set_cookies.is_empty(), "no cookie change");
    *h.store.fail_only.lock().unwrap() = None;
    // Nothing was lost: the old session still works.
    assert_eq!(h.call("GET", "/me", Some(&alice)).await.body, "alice");
}

#[tokio::test]
async fn extractors_without_the_layer_answer_500_naming_session_layer() {
    let app = axum::Router::new()
        .route("/session", get(|_s: Session| async { "unreachable" }))
        .route("/active", get(|_s: ActiveSession| async { "unreachable" }))
        .route(
            "/optional",
            get(|_s: Option<ActiveSession>| async { "unreachable" }),
        );
    for path in ["/session", "/active", "/optional"] {
        let res = TestResponse::from(
            app.clone()
                .oneshot(request("GET", path, None))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(res.status, StatusCode::INTERNAL_SERVER_ERROR, "{path}");
        assert!(res.body.contains("SessionLayer"), "{path}: {}", res.body);
    }
}

#[tokio::test]
async fn failing_rekey_and_touch_writes_still_serve_and_change_nothing() {
    let config = SessionConfig::builder().access_ttl(None).build().unwrap();
    let h = Harness::with(config, ring(1, &[1]));
    let secret = h.login("alice").await;
    let before = h.records()[0].clone();
    h.manager.set_key_ring(ring(2, &[1, 2]));
    h.advance(600); // a touch is due too
    h.store.fail_writes.store(true, Ordering::SeqCst);
    h.store.reset_counts();
    let res = h.call("GET", "/me", Some(&secret)).await;
    assert_eq!((res.status, res.body.as_str()), (StatusCode::OK, "alice"));
    assert!(res.raw_set_cookies.is_empty());
    assert_eq!(
        Counts::get(&h.store.counts.replace),
        1,
        "one re-key-and-touch write, failed"
    );
    assert_eq!(h.records()[0], before, "nothing changed");
    h.store.fail_writes.store(false, Ordering::SeqCst);
    let res = h.call("GET", "/me", Some(&secret)).await;
    assert!(res.raw_set_cookies.is_empty());
    let after = &h.records()[0];
    assert_eq!(after.current.key_version, tower_hmac_session::KeyVersion(2));
    assert!(after.last_seen_at > before.last_seen_at);
}

#[tokio::test]
async fn store_failures_are_logged_with_their_source_and_answered_by_kind_only() {
    let capture = common::LogCapture::install();
    let h = Harness::new();
    let secret = h.login("alice").await;
    h.store.fail_reads.store(true, Ordering::SeqCst);
    let res = h.call("GET", "/me", Some(&secret)).await;
    assert_eq!(
        (res.status, res.body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "session store unavailable")
    );
    h.store.fail_reads.store(false, Ordering::SeqCst);
    h.store.fail_writes.store(true, Ordering::SeqCst);
    let res = h.call("POST", "/attr?key=k&value=v", Some(&secret)).await;
    assert_eq!(
        (res.status, res.body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "session store unavailable")
    );
    let res = h.call("POST", "/logout", Some(&secret)).await;
    assert_eq!(
        (res.status, res.body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "session store unavailable")
    );
    for body in [&res.body] {
        for internal in ["find_active", "replace", "revoke", "test outage", "backend"] {
            assert!(!body.contains(internal), "{body}");
        }
    }
    let logs = capture.text();
    // The log keeps the whole chain: the operation and the driver's message.
    assert!(logs.contains("`find_active`: test outage"), "{logs}");
    assert!(logs.contains("`replace`: test outage"), "{logs}");
    assert!(logs.contains("`revoke`: test outage"), "{logs}");
    assert!(!logs.contains(&secret));
}

#[tokio::test]
async fn a_renew_whose_write_applies_but_times_out_still_sends_the_new_secret() {
    let h = Harness::new();
    let old = h.login("alice").await;
    h.store.apply_then_fail.store(true, Ordering::SeqCst);
    let res = h.call("POST", "/renew", Some(&old)).await;
    h.store.apply_then_fail.store(false, Ordering::SeqCst);
    assert_eq!((res.status, res.body.as_str()), (StatusCode::OK, "renewed"));
    let new = res
        .new_secret()
        .expect("the renewed secret reaches the client");
    assert_eq!(h.call("GET", "/me", Some(&new)).await.body, "alice");
}
