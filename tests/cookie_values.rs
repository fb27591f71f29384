//! Several values of the session cookie, unknown values, and a login racing
//! a request that still carries the old secret.

mod common;

use common::{Counts, Harness, request, request_with_secrets, stranger};
use http::StatusCode;
use tower::ServiceExt as _;

#[tokio::test]
async fn cookies_of_two_sessions_give_an_anonymous_request_and_no_set_cookie() {
    let h = Harness::new();
    let alice = h.login("alice").await;
    let bob = h.login("bob").await;
    let res = h
        .send(request_with_secrets("/maybe", &[&alice, &bob]))
        .await;
    assert_eq!(res.body, "anonymous");
    assert!(res.raw_set_cookies.is_empty());
    // Neither session was harmed.
    assert_eq!(h.call("GET", "/me", Some(&alice)).await.body, "alice");
    assert_eq!(h.call("GET", "/me", Some(&bob)).await.body, "bob");
}

#[tokio::test]
async fn every_well_formed_value_is_looked_up_in_one_store_call() {
    let h = Harness::new();
    let alice = h.login("alice").await;
    h.store.reset_counts();
    // A stale tossed cookie first, the real one second.
    let res = h
        .send(request_with_secrets(
            "/me",
            &[&stranger(), "not-a-secret", &alice],
        ))
        .await;
    assert_eq!((res.status, res.body.as_str()), (StatusCode::OK, "alice"));
    assert_eq!(Counts::get(&h.store.counts.find_active), 1);
}

#[tokio::test]
async fn a_stale_secret_beside_the_current_one_is_still_reuse() {
    let h = Harness::with(common::rotating(), common::ring(1, &[1]));
    let old = h.login("alice").await;
    h.advance(16 * 60);
    let new = h.call("GET", "/me", Some(&old)).await.new_secret().unwrap();
    assert_eq!(h.call("GET", "/me", Some(&new)).await.body, "alice");
    h.advance(2 * 60);
    let res = h.send(request_with_secrets("/maybe", &[&new, &old])).await;
    assert_eq!(res.body, "anonymous");
    assert!(res.clears_cookie());
    assert_eq!(
        h.call("GET", "/me", Some(&new)).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_secret_that_resolves_to_nothing_leaves_the_cookie_alone() {
    let h = Harness::new();
    let res = h.call("GET", "/maybe", Some(&stranger())).await;
    assert_eq!(res.body, "anonymous");
    assert!(res.raw_set_cookies.is_empty());
    assert_eq!(h.store.counts.writes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_racing_a_request_with_the_old_secret_stays_logged_in() {
    let h = Harness::new();
    let old = h.login("alice").await;
    // Logout of the old session, then a new login; a parallel request with
    // the old secret arrives after both and must not erase the new cookie.
    assert!(h.call("POST", "/logout", Some(&old)).await.clears_cookie());
    let new = h.login("alice").await;
    let (parallel, me) = tokio::join!(
        h.router
            .clone()
            .oneshot(request("GET", "/maybe", Some(&old))),
        h.router.clone().oneshot(request("GET", "/me", Some(&new))),
    );
    let parallel = common::TestResponse::from(parallel.unwrap()).await;
    assert_eq!(parallel.body, "anonymous");
    assert!(
        parallel.raw_set_cookies.is_empty(),
        "the new cookie must survive"
    );
    assert_eq!(common::TestResponse::from(me.unwrap()).await.body, "alice");
}
