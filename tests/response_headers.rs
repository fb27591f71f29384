//! Response headers around session cookies: `no-store` with every session
//! `Set-Cookie`, no automatic secret on shared-cacheable responses,
//! `Vary: Cookie` when a handler read the session, sensitive values.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::routing::get;
use common::{Counts, Harness, request, ring};
use http::{HeaderValue, Request, StatusCode, header};
use tower::ServiceExt as _;
use tower_hmac_session::{
    KeyRing, MemoryStore, Session, SessionConfig, SessionLayer, SessionManager,
};

#[tokio::test]
async fn login_and_logout_responses_are_not_stored_by_any_cache() {
    let h = Harness::new();
    let res = h.call("POST", "/login?user=alice", None).await;
    assert!(res.new_secret().is_some());
    assert_eq!(res.header("cache-control"), Some("no-store"));
    let secret = res.new_secret().unwrap();
    let res = h.call("POST", "/logout", Some(&secret)).await;
    assert!(res.clears_cookie());
    assert_eq!(res.header("cache-control"), Some("no-store"));
}

#[tokio::test]
async fn a_session_cookie_replaces_the_handlers_caching_headers() {
    let keys = KeyRing::builder().key(1, [1; 32]).build().unwrap();
    let manager = SessionManager::new(MemoryStore::new(), keys, SessionConfig::default());
    let app = axum::Router::new()
        .route(
            "/login",
            get(|session: tower_hmac_session::Session| async move {
                session.login("alice").await.unwrap();
                (
                    [
                        (header::CACHE_CONTROL, "public, max-age=600"),
                        (header::EXPIRES, "Thu, 01 Jan 2099 00:00:00 GMT"),
                        (
                            header::HeaderName::from_static("cdn-cache-control"),
                            "max-age=600",
                        ),
                        (
                            header::HeaderName::from_static("surrogate-control"),
                            "max-age=600",
                        ),
                        (header::SET_COOKIE, "theme=dark; Path=/"),
                    ],
                    "ok",
                )
            }),
        )
        .layer(SessionLayer::new(manager));
    let res = app
        .oneshot(Request::get("/login").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let headers = res.headers();
    let cache: Vec<_> = headers.get_all(header::CACHE_CONTROL).iter().collect();
    assert_eq!(cache, [HeaderValue::from_static("no-store")]);
    assert!(headers.get(header::EXPIRES).is_none());
    assert!(headers.get("cdn-cache-control").is_none());
    assert!(headers.get("surrogate-control").is_none());
    let cookies: Vec<_> = headers.get_all(header::SET_COOKIE).iter().collect();
    assert_eq!(cookies.len(), 2, "the handler's own cookie stays");
    let session_cookie = cookies
        .iter()
        .find(|v| v.to_str().unwrap().starts_with("__Host-session="))
        .unwrap();
    assert!(
        session_cookie.is_sensitive(),
        "never indexed by HPACK, redacted by Debug"
    );
    assert!(!format!("{session_cookie:?}").contains("__Host-session="));
}

#[tokio::test]
async fn no_rotation_on_a_shared_cacheable_response() {
    let h = Harness::with(common::rotating(), ring(1, &[1]));
    let secret = h.login("alice").await;
    h.advance(16 * 60);
    h.store.reset_counts();
    let res = h.call("GET", "/cacheable", Some(&secret)).await;
    assert_eq!((res.status, res.body.as_str()), (StatusCode::OK, "alice"));
    assert!(res.raw_set_cookies.is_empty(), "{:?}", res.raw_set_cookies);
    assert_eq!(res.header("cache-control"), Some("public, max-age=600"));
    assert_eq!(
        Counts::get(&h.store.counts.rotate_applied),
        0,
        "no write either"
    );
    // The next ordinary request rotates.
    let res = h.call("GET", "/me", Some(&secret)).await;
    assert!(res.new_secret().is_some());
    assert_eq!(res.header("cache-control"), Some("no-store"));
}

#[tokio::test]
async fn a_re_rotation_waits_for_a_response_that_caches_cannot_share() {
    let h = Harness::with(common::rotating(), ring(1, &[1]));
    let old = h.login("alice").await;
    h.advance(16 * 60);
    assert!(
        h.call("GET", "/me", Some(&old))
            .await
            .new_secret()
            .is_some()
    );
    h.advance(5 * 60);
    let res = h.call("GET", "/cacheable", Some(&old)).await;
    assert_eq!(res.body, "alice");
    assert!(res.raw_set_cookies.is_empty());
    assert_eq!(Counts::get(&h.store.counts.rerotate_applied), 0);
    let res = h.call("GET", "/me", Some(&old)).await;
    assert!(res.new_secret().is_some());
    assert_eq!(Counts::get(&h.store.counts.rerotate_applied), 1);
}

#[tokio::test]
async fn vary_cookie_when_a_handler_read_the_session() {
    let h = Harness::new();
    // With and without a cookie, and on the 401 of `ActiveSession`.
    let res = h.call("GET", "/maybe", None).await;
    assert_eq!(res.header("vary"), Some("Cookie"));
    let res = h.call("GET", "/me", None).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert_eq!(res.header("vary"), Some("Cookie"));
    let secret = h.login("alice").await;
    assert_eq!(
        h.call("GET", "/me", Some(&secret)).await.header("vary"),
        Some("Cookie")
    );
    // A handler that never looked at the session: no Vary.
    let res = h.call("GET", "/uncached-public", Some(&secret)).await;
    assert_eq!(res.header("vary"), None);
    assert_eq!(res.header("cache-control"), Some("public, max-age=600"));
}

#[tokio::test]
async fn vary_cookie_on_the_layers_own_503() {
    let h = Harness::new();
    let secret = h.login("alice").await;
    h.store
        .fail_reads
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let res = h.call("GET", "/uncached-public", Some(&secret)).await;
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.header("vary"), Some("Cookie"));
    assert_eq!(res.body, "session store unavailable");
}

#[tokio::test]
async fn vary_cookie_on_the_layers_own_503_when_no_extractor_ran() {
    // A handler that takes the session from the request's extensions (as a
    // plain tower service would), not through the extractor, and writes to
    // it; the write fails: the layer's 503 depends on the cookie all the
    // same.
    let mut h = Harness::new();
    h.add_route(
        "/raw-write",
        get(|req: Request<Body>| async move {
            let session = req.extensions().get::<Session>().unwrap().clone();
            session.insert("theme", "dark").unwrap();
            "written"
        }),
    );
    let secret = h.login("alice").await;
    h.store
        .fail_writes
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let res = h.call("GET", "/raw-write", Some(&secret)).await;
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.header("vary"), Some("Cookie"));
    assert!(res.raw_set_cookies.is_empty());
}

#[tokio::test]
async fn vary_is_merged_into_the_handlers_own() {
    let keys = KeyRing::builder().key(1, [1; 32]).build().unwrap();
    let manager = SessionManager::new(MemoryStore::new(), keys, SessionConfig::default());
    let app = axum::Router::new()
        .route(
            "/",
            get(|_s: tower_hmac_session::Session| async {
                ([(header::VARY, "Accept-Encoding")], "x")
            }),
        )
        .layer(SessionLayer::new(manager));
    let res = app.oneshot(request("GET", "/", None)).await.unwrap();
    let vary: Vec<_> = res.headers().get_all(header::VARY).iter().collect();
    assert_eq!(vary, [HeaderValue::from_static("Accept-Encoding, Cookie")]);
    let _ = Duration::ZERO;
}
