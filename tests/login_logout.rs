//! Login, the cookie, logout, and the per-user session list, through a real
//! axum `Router`.

mod common;

use common::{COOKIE, Harness, T0};
use http::StatusCode;
use tower_hmac_session::{RevocationReason, RevokeOutcome, Session, SessionSecret};

#[tokio::test]
async fn login_sets_a_cookie_with_the_secure_defaults() {
    let h = Harness::new();
    let res = h.call("POST", "/login?user=alice", None).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.raw_set_cookies.len(), 1);
    let raw = &res.raw_set_cookies[0];
    let cookie = res.session_cookie().unwrap();
    assert_eq!(cookie.name(), "__Host-session");
    assert_eq!(cookie.value().len(), 43);
    assert!(SessionSecret::parse(cookie.value()).is_some());
    assert_eq!(cookie.secure(), Some(true));
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(cookie.same_site(), Some(cookie::SameSite::Lax));
    assert_eq!(cookie.path(), Some("/"));
    assert_eq!(cookie.domain(), None);
    assert!(!raw.contains("Domain"), "{raw}");
    // Max-Age runs to the session's absolute expiry (30 days by default):
    // the server decides when the session ends, so a slide sends no cookie.
    assert_eq!(
        cookie.max_age(),
        Some(cookie::time::Duration::days(30)),
        "{raw}"
    );
    assert_eq!(res.header("cache-control"), Some("no-store"));
    // The body is the new session's id; the record is stored under it.
    let records = h.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].id.to_string(), res.body);
    assert_eq!(records[0].subject.as_deref(), Some("alice"));
    assert_eq!(records[0].created_at, T0);
}

#[tokio::test]
async fn the_cookie_resolves_the_session() {
    let h = Harness::new();
    let secret = h.login("alice").await;
    let res = h.call("GET", "/me", Some(&secret)).await;
    assert_eq!((res.status, res.body.as_str()), (StatusCode::OK, "alice"));
    assert!(
        res.raw_set_cookies.is_empty(),
        "a fresh session needs no maintenance"
    );
    assert_eq!(h.call("GET", "/maybe", Some(&secret)).await.body, "alice");
    let anonymous = h.call("GET", "/me", None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert_eq!(h.call("GET", "/maybe", None).await.body, "anonymous");
}

#[tokio::test]
async fn a_logout_racing_another_revocation_says_it_revoked_nothing() {
    // An admin revokes the session while the logout request runs (after the
    // layer resolved it): the logout revokes nothing, and still clears the
    // cookie of a session that is over.
    let mut h = Harness::new();
    let manager = h.manager.clone();
    h.add_route(
        "/logout-after-admin",
        axum::routing::post(move |session: Session| {
            let manager = manager.clone();
            async move {
                let id = session.id().unwrap();
                let admin = manager.revoke(&id, RevocationReason::Admin).await.unwrap();
                assert_eq!(admin, RevokeOutcome::Revoked);
                session.logout().await.map(|r| r.to_string())
            }
        }),
    );
    let secret = h.login("alice").await;
    let res = h.call("POST", "/logout-after-admin", Some(&secret)).await;
    assert_eq!((res.status, res.body.as_str()), (StatusCode::OK, "false"));
    assert!(res.clears_cookie(), "{:?}", res.raw_set_cookies);
    // The admin's revocation stands.
    let record = &h.records()[0];
    assert_eq!(
        record.revoked.as_ref().unwrap().revocation.reason,
        RevocationReason::Admin
    );
}

#[tokio::test]
async fn a_logout_after_a_purge_removed_the_session_says_it_revoked_nothing() {
    let mut h = Harness::new();
    let manager = h.manager.clone();
    h.add_route(
        "/logout-after-purge",
        axum::routing::post(move |session: Session| {
            let manager = manager.clone();
            async move {
                let id = session.id().unwrap();
                manager.revoke(&id, RevocationReason::Admin).await.unwrap();
                assert_eq!(manager.purge_expired().await.unwrap(), 1);
                session.logout().await.map(|r| r.to_string())
            }
        }),
    );
    let secret = h.login("alice").await;
    let res = h.call("POST", "/logout-after-purge", Some(&secret)).await;
    assert_eq!((res.status, res.body.as_str()), (StatusCode::OK, "false"));
    assert!(res.clears_cookie(), "{:?}", res.raw_set_cookies);
    assert!(h.records().is_empty());
}

#[tokio::test]
async fn logout_revokes_the_session_and_clears_the_cookie() {
    let h = Harness::new();
    let secret = h.login("alice").await;
    let res = h.call("POST", "/logout", Some(&secret)).await;
    assert_eq!((res.status, res.body.as_str()), (StatusCode::OK, "true"));
    assert!(res.clears_cookie(), "{:?}", res.raw_set_cookies);
    let cleared = res.session_cookie().unwrap();
    assert_eq!(cleared.path(), Some("/"));
    assert_eq!(cleared.secure(), Some(true));

    let record = &h.records()[0];
    let revoked = record.revoked.as_ref().expect("revoked");
    assert_eq!(revoked.revocation.reason, RevocationReason::Logout);
    let after = h.call("GET", "/me", Some(&secret)).await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn revoked_and_unknown_well_formed_cookies_are_anonymous_and_left_alone() {
    let h = Harness::new();
    let secret = h.login("alice").await;
    h.call("POST", "/logout", Some(&secret)).await;
    let unknown = SessionSecret::generate().encode();
    for cookie in [&secret, &unknown] {
        let res = h.call("GET", "/maybe", Some(cookie)).await;
        assert_eq!(
            (res.status, res.body.as_str()),
            (StatusCode::OK, "anonymous")
        );
        // Only logout and reuse clear the cookie: a parallel request with
        // an old secret must never erase the cookie a login just set.
        assert!(res.raw_set_cookies.is_empty(), "{:?}", res.raw_set_cookies);
    }
}

#[tokio::test]
async fn login_while_logged_in_issues_a_new_secret_and_ends_the_old_session() {
    let h = Harness::new();
    let first = h.login("alice").await;
    let res = h.call("POST", "/login?user=bob", Some(&first)).await;
    assert_eq!(res.status, StatusCode::OK);
    let second = res.new_secret().unwrap();
    assert_ne!(first, second);
    assert_eq!(h.call("GET", "/me", Some(&second)).await.body, "bob");
    assert_eq!(
        h.call("GET", "/me", Some(&first)).await.status,
        StatusCode::UNAUTHORIZED
    );
    let old = h
        .records()
        .into_iter()
        .find(|r| r.subject.as_deref() == Some("alice"))
        .unwrap();
    assert_eq!(
        old.revoked.unwrap().revocation.reason,
        RevocationReason::ReplacedByLogin
    );
}

#[tokio::test]
async fn devices_are_listed_newest_first_and_revoked_per_user() {
    let h = Harness::new();
    let laptop = h.login("alice").await;
    h.advance(10);
    let phone = h.login("alice").await;
    h.advance(10);
    let tablet = h.login("alice").await;
    let bob = h.login("bob").await;

    let devices: Vec<String> =
        serde_json::from_str(&h.call("GET", "/devices", Some(&laptop)).await.body).unwrap();
    let mut alice: Vec<_> = h
        .records()
        .into_iter()
        .filter(|r| r.subject.as_deref() == Some("alice"))
        .collect();
    alice.sort_by_key(|r| std::cmp::Reverse(r.created_at));
    let expected: Vec<String> = alice.iter().map(|r| r.id.to_string()).collect();
    assert_eq!(devices, expected);

    // "Sign out other devices" from the phone keeps the phone, with a
    // renewed secret: a copy of the phone's old cookie stops working too.
    let res = h.call("POST", "/logout-others", Some(&phone)).await;
    assert_eq!(res.body, "2");
    assert_eq!(res.header("cache-control"), Some("no-store"));
    let old_phone = phone;
    let phone = res.new_secret().expect("the caller's secret is renewed");
    assert_ne!(phone, old_phone);
    assert_eq!(
        h.call("GET", "/me", Some(&phone)).await.status,
        StatusCode::OK
    );
    let copy = h.call("GET", "/maybe", Some(&old_phone)).await;
    assert_eq!(copy.body, "anonymous");
    assert!(
        copy.raw_set_cookies.is_empty(),
        "renewed away: unknown, not reuse"
    );
    assert_eq!(h.call("GET", "/me", Some(&phone)).await.body, "alice");
    for gone in [&laptop, &tablet] {
        assert_eq!(
            h.call("GET", "/me", Some(gone)).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        h.call("GET", "/me", Some(&bob)).await.status,
        StatusCode::OK
    );

    // Everywhere includes this one.
    let res = h.call("POST", "/logout-everywhere", Some(&phone)).await;
    assert_eq!(res.body, "1");
    assert!(res.clears_cookie());
    assert_eq!(
        h.call("GET", "/me", Some(&phone)).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        h.call("GET", "/me", Some(&bob)).await.status,
        StatusCode::OK
    );
    assert!(
        h.manager
            .list_for_subject("alice")
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn session_operations_without_a_session_say_so() {
    let h = Harness::new();
    let devices = h.call("GET", "/devices", None).await;
    assert_eq!(devices.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        h.call("POST", "/logout-others", None).await.status,
        StatusCode::UNAUTHORIZED
    );
    // Data without a session starts a session before login (see
    // tests/before_login.rs), but never for a cookie that resolved to a
    // session it cannot use.
    // Logging out without a session revokes nothing, and with a stale
    // cookie leaves it alone (a login in another tab may just have set one).
    assert_eq!(h.call("POST", "/logout", None).await.body, "false");
    let stale = h.call("POST", "/logout", Some(&common::stranger())).await;
    assert_eq!(stale.body, "false");
    assert!(stale.raw_set_cookies.is_empty());
    assert_eq!(
        h.store
            .counts
            .revoke
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[tokio::test]
async fn data_is_written_once_on_the_way_out_and_read_back() {
    let h = Harness::new();
    let secret = h.login("alice").await;
    h.store.reset_counts();
    let res = h
        .call("POST", "/attr?key=theme&value=dark", Some(&secret))
        .await;
    assert_eq!((res.status, res.body.as_str()), (StatusCode::OK, "saved"));
    assert_eq!(common::Counts::get(&h.store.counts.replace_applied), 1);
    assert_eq!(
        h.call("GET", "/attr?key=theme", Some(&secret)).await.body,
        "dark"
    );
    assert_eq!(
        h.call("GET", "/attr?key=none", Some(&secret)).await.body,
        "<none>"
    );
    // Reading writes nothing.
    assert_eq!(common::Counts::get(&h.store.counts.replace_applied), 1);
    // Oversized values are refused before anything is written.
    let big = "x".repeat(5000);
    let res = h
        .call(
            "POST",
            &format!("/attr?key=blob&value={big}"),
            Some(&secret),
        )
        .await;
    assert_eq!(res.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(res.body, "invalid session data");
    assert_eq!(
        h.call("GET", "/attr?key=blob", Some(&secret)).await.body,
        "<none>"
    );
}

#[tokio::test]
async fn the_session_cookie_is_appended_next_to_cookies_other_code_set() {
    use axum::routing::get;
    use tower_hmac_session::{Session, SessionLayer};
    let h = Harness::new();
    let app = axum::Router::new()
        .route(
            "/login",
            get(|session: Session| async move {
                session.login("alice").await?;
                Ok::<_, tower_hmac_session::SessionError>((
                    [("set-cookie", "theme=dark; Path=/")],
                    "ok",
                ))
            }),
        )
        .layer(SessionLayer::new(h.manager.clone()));
    let res = common::TestResponse::from(
        tower::ServiceExt::oneshot(app, common::request("GET", "/login", None))
            .await
            .unwrap(),
    )
    .await;
    let names: Vec<_> = res
        .set_cookies
        .iter()
        .map(|c| c.name().to_owned())
        .collect();
    assert_eq!(names, ["theme", COOKIE]);
}

#[tokio::test]
async fn data_set_right_after_login_are_written_once() {
    use axum::routing::post;
    use tower_hmac_session::{Session, SessionLayer};
    let h = Harness::new();
    let app = axum::Router::new()
        .route(
            "/login",
            post(|session: Session| async move {
                session.login("alice").await?;
                session.insert("theme", "dark")?;
                Ok::<_, tower_hmac_session::SessionError>("ok")
            }),
        )
        .layer(SessionLayer::new(h.manager.clone()));
    let res = common::TestResponse::from(
        tower::ServiceExt::oneshot(app, common::request("POST", "/login", None))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
    let secret = res.new_secret().expect("login cookie");
    assert_eq!(common::Counts::get(&h.store.counts.insert), 1);
    assert_eq!(common::Counts::get(&h.store.counts.replace_applied), 1);
    assert_eq!(
        h.call("GET", "/attr?key=theme", Some(&secret)).await.body,
        "dark"
    );
}
