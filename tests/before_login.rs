//! Sessions before login, login options, recent authentication and
//! per-device revocation, through a real Router.

mod common;

use std::time::Duration;

use axum::routing::{get, post};
use common::{Counts, Harness, request, ring, stranger};
use http::{StatusCode, header};
use tower::ServiceExt as _;
use tower_hmac_session::{
    CarryData, LoginOptions, RevocationReason, RevokeOutcome, Session, SessionConfig, SessionError,
    SessionId, SessionLayer,
};

fn app(h: &Harness) -> axum::Router {
    #[derive(serde::Deserialize)]
    struct Callback {
        state: String,
    }
    #[derive(serde::Deserialize)]
    struct Login {
        user: String,
        remember: Option<bool>,
        carry: Option<String>,
    }
    axum::Router::new()
        // The OAuth flow: store `state` before sending the user away…
        .route(
            "/oauth/start",
            get(|session: Session| async move {
                session.insert("oauth_state", "s3cr3t-state")?;
                session.insert("cart", vec![1, 2])?;
                Ok::<_, SessionError>("redirecting")
            }),
        )
        // …check it when the provider sends the user back, then log in.
        .route(
            "/oauth/callback",
            get(
                |session: Session, axum::extract::Query(q): axum::extract::Query<Callback>| async move {
                    let expected: Option<String> = session.get("oauth_state")?;
                    if expected.as_deref() != Some(q.state.as_str()) {
                        return Ok::<_, SessionError>((StatusCode::FORBIDDEN, "bad state".to_owned()));
                    }
                    let _: Option<String> = session.remove("oauth_state")?;
                    let record = session.login("alice").await?;
                    Ok((StatusCode::OK, record.id.to_string()))
                },
            ),
        )
        .route(
            "/login",
            post(|session: Session, axum::extract::Query(q): axum::extract::Query<Login>| async move {
                let mut options = LoginOptions::new().remember_me(q.remember.unwrap_or(true));
                if q.carry.as_deref() == Some("none") {
                    options = options.carry_data(CarryData::None);
                }
                session.login_with(q.user, options).await.map(|r| r.id.to_string())
            }),
        )
        .route(
            "/cart",
            get(|session: Session| async move {
                Ok::<_, SessionError>(format!("{:?}", session.get::<Vec<u32>>("cart")?))
            }),
        )
        .route(
            "/sensitive",
            post(|session: Session| async move {
                session.require_authenticated_within(Duration::from_secs(300))?;
                Ok::<_, SessionError>("done")
            }),
        )
        .route(
            "/reauth",
            post(|session: Session| async move { session.reauthenticate().await.map(|()| "ok") }),
        )
        .route(
            "/revoke",
            post(|session: Session, body: String| async move {
                let id: SessionId = body.parse().unwrap();
                session.revoke_device(&id).await.map(|o| format!("{o:?}"))
            }),
        )
        .route("/nothing", get(|_s: Session| async { "nothing stored" }))
        .layer(SessionLayer::new(h.manager.clone()))
}

async fn send(h: &Harness, req: http::Request<axum::body::Body>) -> common::TestResponse {
    common::TestResponse::from(app(h).oneshot(req).await.unwrap()).await
}

#[tokio::test]
async fn an_oauth_flow_keeps_its_state_before_login_and_carries_data_over() {
    let h = Harness::new();
    let start = send(&h, request("GET", "/oauth/start", None)).await;
    assert_eq!(start.status, StatusCode::OK);
    let anonymous = start.new_secret().expect("a session before login");
    let cookie = start.session_cookie().unwrap();
    assert_eq!(cookie.max_age(), None, "a browser-session cookie");
    assert_eq!(start.header("cache-control"), Some("no-store"));
    let record = h.records().into_iter().next().unwrap();
    assert_eq!(record.subject, None);
    assert_eq!(
        record.expires_at - record.created_at,
        time::Duration::minutes(30)
    );
    assert_eq!(Counts::get(&h.store.counts.insert), 1, "one insert");

    // A forged callback is refused; the real one logs in with a new secret.
    let forged = send(
        &h,
        request("GET", "/oauth/callback?state=guess", Some(&anonymous)),
    )
    .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    let callback = send(
        &h,
        request(
            "GET",
            "/oauth/callback?state=s3cr3t-state",
            Some(&anonymous),
        ),
    )
    .await;
    assert_eq!(callback.status, StatusCode::OK, "{}", callback.body);
    let logged_in = callback.new_secret().unwrap();
    assert_ne!(logged_in, anonymous);
    // The data came along (the state was consumed), the anonymous secret is dead.
    assert_eq!(
        send(&h, request("GET", "/cart", Some(&logged_in)))
            .await
            .body,
        "Some([1, 2])"
    );
    assert_eq!(h.call("GET", "/me", Some(&logged_in)).await.body, "alice");
    let new = h
        .records()
        .into_iter()
        .find(|r| r.subject.is_some())
        .unwrap();
    assert!(new.data.get("oauth_state").is_none());
    let old = h
        .records()
        .into_iter()
        .find(|r| r.subject.is_none())
        .unwrap();
    assert_eq!(
        old.revoked.unwrap().revocation.reason,
        RevocationReason::ReplacedByLogin
    );
    assert_eq!(
        send(&h, request("GET", "/cart", Some(&anonymous)))
            .await
            .body,
        "None"
    );
}

#[tokio::test]
async fn anonymous_requests_that_store_nothing_write_nothing_and_set_no_cookie() {
    let h = Harness::new();
    for _ in 0..3 {
        let res = send(&h, request("GET", "/nothing", None)).await;
        assert!(res.raw_set_cookies.is_empty());
        let res = send(&h, request("GET", "/cart", None)).await;
        assert_eq!(res.body, "None");
        assert!(res.raw_set_cookies.is_empty());
    }
    assert_eq!(h.store.counts.total(), 0);
}

#[tokio::test]
async fn a_cookie_of_an_unusable_session_never_starts_a_new_one() {
    let h = Harness::new();
    let secret = h.login("alice").await;
    h.call("POST", "/logout", Some(&secret)).await;
    // Revoked: resolves to nothing, so a new session before login may start.
    let res = send(&h, request("GET", "/oauth/start", Some(&stranger()))).await;
    assert!(res.new_secret().is_some());
    // Two sessions' cookies: resolved, but unusable: no new session.
    let a = h.login("a").await;
    let b = h.login("b").await;
    let res = send(&h, common::request_with_secrets("/oauth/start", &[&a, &b])).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert!(res.raw_set_cookies.is_empty());
}

#[tokio::test]
async fn pre_login_data_can_be_left_behind_and_sessions_before_login_are_never_listed() {
    let h = Harness::new();
    let anonymous = send(&h, request("GET", "/oauth/start", None))
        .await
        .new_secret()
        .unwrap();
    let res = send(
        &h,
        request("POST", "/login?user=alice&carry=none", Some(&anonymous)),
    )
    .await;
    let secret = res.new_secret().unwrap();
    assert_eq!(
        send(&h, request("GET", "/cart", Some(&secret))).await.body,
        "None"
    );
    assert_eq!(h.manager.list_for_subject("alice").await.unwrap().len(), 1);
}

#[tokio::test]
async fn remember_me_is_a_persistent_cookie_and_otherwise_a_browser_session_one() {
    let h = Harness::new();
    let remembered = send(&h, request("POST", "/login?user=alice&remember=true", None)).await;
    assert_eq!(
        remembered.session_cookie().unwrap().max_age(),
        Some(cookie::time::Duration::days(30))
    );
    let session_only = send(&h, request("POST", "/login?user=bob&remember=false", None)).await;
    let secret = session_only.new_secret().unwrap();
    assert_eq!(session_only.session_cookie().unwrap().max_age(), None);
    // Rotation keeps the kind.
    h.advance(16 * 60);
    let rotated = h.call("GET", "/me", Some(&secret)).await;
    assert_eq!(rotated.session_cookie().unwrap().max_age(), None);
}

#[tokio::test]
async fn per_login_lifetimes_and_device_metadata_are_recorded() {
    let config = SessionConfig::builder()
        .trusted_proxy_header(header::HeaderName::from_static("x-forwarded-for"), 1)
        .build()
        .unwrap();
    let h = Harness::with(config, ring(1, &[1]));
    let app = axum::Router::new()
        .route(
            "/login",
            post(|session: Session| async move {
                let options = LoginOptions::new()
                    .idle_timeout(Duration::from_secs(600))
                    .absolute_lifetime(Duration::from_secs(3600));
                session
                    .login_with("alice", options)
                    .await
                    .map(|r| r.id.to_string())
            }),
        )
        .layer(SessionLayer::new(h.manager.clone()));
    let req = http::Request::post("/login")
        .header(
            header::USER_AGENT,
            format!("Browser/1.0 {}", "x".repeat(400)),
        )
        .header("x-forwarded-for", "6.6.6.6, 203.0.113.9")
        .body(axum::body::Body::empty())
        .unwrap();
    let res = common::TestResponse::from(app.oneshot(req).await.unwrap()).await;
    assert_eq!(res.status, StatusCode::OK);
    let record = &h.records()[0];
    assert_eq!(record.idle_timeout, Duration::from_secs(600));
    assert_eq!(
        record.absolute_expires_at - record.created_at,
        time::Duration::hours(1)
    );
    assert_eq!(
        record.expires_at - record.created_at,
        time::Duration::minutes(10)
    );
    let ua = record.user_agent.as_deref().unwrap();
    assert!(ua.starts_with("Browser/1.0 ") && ua.len() == 256, "{ua}");
    assert_eq!(
        record.client_ip,
        Some("203.0.113.9".parse().unwrap()),
        "never the leftmost"
    );
    let listed = h.manager.list_for_subject("alice").await.unwrap();
    assert_eq!(listed[0].client_ip, record.client_ip);
    // Per-login lifetimes are honoured: idle after 10 minutes.
    let secret = res.new_secret().unwrap();
    h.advance(601);
    assert_eq!(
        h.call("GET", "/me", Some(&secret)).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_sensitive_action_asks_for_recent_authentication() {
    let h = Harness::new();
    let secret = h.login("alice").await;
    assert_eq!(
        send(&h, request("POST", "/sensitive", Some(&secret)))
            .await
            .body,
        "done"
    );
    h.advance(301);
    let res = send(&h, request("POST", "/sensitive", Some(&secret))).await;
    assert_eq!(
        (res.status, res.body.as_str()),
        (StatusCode::FORBIDDEN, "reauthentication required")
    );
    let res = send(&h, request("POST", "/reauth", Some(&secret))).await;
    let renewed = res
        .new_secret()
        .expect("re-authentication renews the secret");
    assert_eq!(
        send(&h, request("POST", "/sensitive", Some(&renewed)))
            .await
            .body,
        "done"
    );
    assert_eq!(
        send(&h, request("POST", "/sensitive", None)).await.status,
        StatusCode::UNAUTHORIZED
    );
}

/// SECURITY.md 7.2.4: re-authentication terminates the token from before
/// it. The old secret resolves to nothing (anonymous, its cookie left
/// alone, not taken for reuse), the store keeps no lookup key of it in any
/// slot, and the session goes on under the new secret.
#[tokio::test]
async fn reauthentication_ends_the_secret_from_before_it() {
    let h = Harness::new();
    let old = h.login("alice").await;
    h.advance(301);
    let res = send(&h, request("POST", "/reauth", Some(&old))).await;
    assert_eq!((res.status, res.body.as_str()), (StatusCode::OK, "ok"));
    let renewed = res
        .new_secret()
        .expect("re-authentication renews the secret");
    assert_ne!(renewed, old);

    // Through the router: the old secret is anonymous everywhere.
    let res = h.call("GET", "/maybe", Some(&old)).await;
    assert_eq!(
        (res.status, res.body.as_str()),
        (StatusCode::OK, "anonymous")
    );
    assert!(res.raw_set_cookies.is_empty(), "{:?}", res.raw_set_cookies);
    let res = send(&h, request("POST", "/sensitive", Some(&old))).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        h.call("GET", "/me", Some(&old)).await.status,
        StatusCode::UNAUTHORIZED
    );

    // In the store: no slot holds the old secret's lookup key, and one
    // live record holds the new one as current.
    let keys = ring(1, &[1]);
    let lookup = |secret: &str| {
        let secret = tower_hmac_session::SessionSecret::parse(secret).unwrap();
        keys.lookup_key(keys.current(), &secret).unwrap()
    };
    let (old_key, new_key) = (lookup(&old), lookup(&renewed));
    let records = h.records();
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert!(r.revoked.is_none());
    assert_eq!(r.current.lookup_key, new_key);
    let slots = std::iter::once(r.current.lookup_key)
        .chain(r.previous.as_ref().map(|p| p.credential.lookup_key))
        .chain(r.superseded.map(|c| c.lookup_key));
    for slot in slots {
        assert_ne!(slot, old_key, "the old secret still resolves");
    }

    // The old secret was unknown, not reuse: the session lives on.
    let res = send(&h, request("POST", "/sensitive", Some(&renewed))).await;
    assert_eq!((res.status, res.body.as_str()), (StatusCode::OK, "done"));
    assert_eq!(h.call("GET", "/me", Some(&renewed)).await.body, "alice");
}

#[tokio::test]
async fn revoke_device_ends_only_the_callers_own_sessions() {
    let h = Harness::new();
    let laptop = h.login("alice").await;
    let phone_id = h.call("POST", "/login?user=alice", None).await.body;
    let bobs_id = h.call("POST", "/login?user=bob", None).await.body;
    // Someone else's id: refused by the store, nothing happens.
    let res = send(
        &h,
        http::Request::post("/revoke")
            .header(header::COOKIE, format!("{}={laptop}", common::COOKIE))
            .body(axum::body::Body::from(bobs_id.clone()))
            .unwrap(),
    )
    .await;
    assert_eq!(res.body, format!("{:?}", RevokeOutcome::NotFound));
    assert!(h.records().iter().all(|r| r.revoked.is_none()));
    // One's own phone: revoked.
    let res = send(
        &h,
        http::Request::post("/revoke")
            .header(header::COOKIE, format!("{}={laptop}", common::COOKIE))
            .body(axum::body::Body::from(phone_id.clone()))
            .unwrap(),
    )
    .await;
    assert_eq!(res.body, format!("{:?}", RevokeOutcome::Revoked));
    let phone = h
        .records()
        .into_iter()
        .find(|r| r.id.to_string() == phone_id)
        .unwrap();
    assert_eq!(
        phone.revoked.unwrap().revocation.reason,
        RevocationReason::RevokedByUser
    );
    assert_eq!(h.call("GET", "/me", Some(&laptop)).await.body, "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_cap_evicts_the_least_recently_used_under_concurrent_logins() {
    let config = SessionConfig::builder()
        .max_sessions_per_subject(Some(3))
        .build()
        .unwrap();
    let h = Harness::with(config, ring(1, &[1]));
    let first = h.login("alice").await;
    h.advance(10);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let router = h.router.clone();
            tokio::spawn(async move {
                router
                    .oneshot(request("POST", "/login?user=alice", None))
                    .await
                    .unwrap()
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(h.manager.list_for_subject("alice").await.unwrap().len(), 3);
    assert_eq!(
        h.call("GET", "/me", Some(&first)).await.status,
        StatusCode::UNAUTHORIZED
    );
    let evicted = h
        .records()
        .into_iter()
        .filter(|r| r.revoked.is_some())
        .count();
    assert_eq!(evicted, 18);
    assert!(
        h.records()
            .iter()
            .filter_map(|r| r.revoked.as_ref())
            .all(|r| r.revocation.reason == RevocationReason::SessionLimit)
    );
}

fn edge_app(h: &Harness) -> axum::Router {
    axum::Router::new()
        .route(
            "/start-then-login",
            post(|session: Session| async move {
                session.insert("csrf", "t0k3n")?;
                session.login("alice").await?;
                Ok::<_, SessionError>(format!("{:?}", session.get::<String>("csrf")?))
            }),
        )
        .route(
            "/start-then-logout",
            post(|session: Session| async move {
                session.insert("csrf", "t0k3n")?;
                session.renew().await?;
                session.logout().await.map(|r| r.to_string())
            }),
        )
        .route(
            "/start",
            post(|session: Session| async move { session.insert("csrf", "t0k3n").map(|()| "ok") }),
        )
        .route(
            "/flash",
            get(|session: Session| async move {
                let flash: Option<String> = session.remove("flash")?;
                Ok::<_, SessionError>(format!("{flash:?}"))
            }),
        )
        .route(
            "/revoke-own",
            post(|session: Session| async move {
                let id = session.id().unwrap();
                session.revoke_device(&id).await.map(|o| format!("{o:?}"))
            }),
        )
        .layer(SessionLayer::new(h.manager.clone()))
}

async fn edge(h: &Harness, req: http::Request<axum::body::Body>) -> common::TestResponse {
    common::TestResponse::from(edge_app(h).oneshot(req).await.unwrap()).await
}

#[tokio::test]
async fn a_login_in_the_request_that_started_a_pre_login_session_carries_its_data() {
    let h = Harness::new();
    let res = edge(&h, request("POST", "/start-then-login", None)).await;
    assert_eq!(res.body, "Some(\"t0k3n\")");
    let secret = res.new_secret().unwrap();
    assert_eq!(
        h.records().len(),
        1,
        "the pre-login session was never stored"
    );
    assert_eq!(h.records()[0].data["csrf"], "t0k3n");
    assert_eq!(h.call("GET", "/me", Some(&secret)).await.body, "alice");
}

#[tokio::test]
async fn renew_and_logout_of_a_session_not_yet_stored_store_nothing() {
    let h = Harness::new();
    let res = edge(&h, request("POST", "/start-then-logout", None)).await;
    assert_eq!(res.body, "false");
    assert!(res.raw_set_cookies.is_empty());
    assert_eq!(h.store.counts.total(), 0);
}

#[tokio::test]
async fn a_failed_pre_login_insert_sends_no_cookie() {
    let h = Harness::new();
    h.store
        .fail_writes
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let res = edge(&h, request("POST", "/start", None)).await;
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.raw_set_cookies.is_empty());
}

#[tokio::test]
async fn a_store_outage_never_turns_a_cookie_into_a_new_session() {
    let config = SessionConfig::builder()
        .store_error_policy(tower_hmac_session::StoreErrorPolicy::ContinueAnonymous)
        .build()
        .unwrap();
    let h = Harness::with(config, ring(1, &[1]));
    let secret = h.login("alice").await;
    h.store
        .fail_reads
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let res = edge(&h, request("POST", "/start", Some(&secret))).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert!(
        res.raw_set_cookies.is_empty(),
        "the logged-in cookie must survive"
    );
    h.store
        .fail_reads
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(h.call("GET", "/me", Some(&secret)).await.body, "alice");
}

#[tokio::test]
async fn pre_login_sessions_expire_on_their_own_short_clock_and_never_rotate() {
    let h = Harness::new();
    let secret = edge(&h, request("POST", "/start", None))
        .await
        .new_secret()
        .unwrap();
    for _ in 0..3 {
        h.advance(20 * 60); // past the access ttl each time: no rotation
        let res = edge(&h, request("GET", "/flash", Some(&secret))).await;
        assert_eq!(res.body, "None");
        assert!(res.raw_set_cookies.is_empty());
    }
    assert_eq!(Counts::get(&h.store.counts.rotate_applied), 0);
    h.advance(31 * 60);
    assert_eq!(
        h.manager
            .store()
            .get_active(&h.records()[0].id, h.manager.now())
            .await
            .unwrap(),
        None,
        "idle for 31 minutes: ended"
    );
}

#[tokio::test]
async fn reading_a_flash_that_is_not_there_writes_nothing() {
    let h = Harness::new();
    let secret = h.login("alice").await;
    h.store.reset_counts();
    let res = edge(&h, request("GET", "/flash", Some(&secret))).await;
    assert_eq!(res.body, "None");
    assert_eq!(h.store.counts.writes(), 0);
    // Without a session, nothing is started either.
    let res = edge(&h, request("GET", "/flash", None)).await;
    assert!(res.raw_set_cookies.is_empty());
    assert_eq!(h.store.counts.writes(), 0);
}

#[tokio::test]
async fn revoking_ones_own_device_clears_its_cookie() {
    let h = Harness::new();
    let secret = h.login("alice").await;
    let res = edge(&h, request("POST", "/revoke-own", Some(&secret))).await;
    assert_eq!(res.body, format!("{:?}", RevokeOutcome::Revoked));
    assert!(res.clears_cookie());
    assert_eq!(
        h.call("GET", "/me", Some(&secret)).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn logging_in_again_at_the_cap_replaces_without_evicting_another_device() {
    let config = SessionConfig::builder()
        .max_sessions_per_subject(Some(2))
        .build()
        .unwrap();
    let h = Harness::with(config, ring(1, &[1]));
    let laptop = h.login("alice").await;
    h.advance(10);
    let phone = h.login("alice").await;
    h.advance(10);
    // The phone logs in again: it replaces itself; the laptop stays.
    let res = h.call("POST", "/login?user=alice", Some(&phone)).await;
    let phone_again = res.new_secret().unwrap();
    assert_eq!(h.call("GET", "/me", Some(&laptop)).await.body, "alice");
    assert_eq!(h.call("GET", "/me", Some(&phone_again)).await.body, "alice");
    assert_eq!(h.manager.list_for_subject("alice").await.unwrap().len(), 2);
}

#[tokio::test]
async fn the_client_address_can_come_from_the_connection() {
    #[derive(Clone)]
    struct Peer(std::net::SocketAddr);
    let config = SessionConfig::builder()
        .client_ip_from(|extensions| extensions.get::<Peer>().map(|p| p.0.ip()))
        .build()
        .unwrap();
    let h = Harness::with(config, ring(1, &[1]));
    let mut req = request("POST", "/login?user=alice", None);
    req.extensions_mut()
        .insert(Peer("198.51.100.4:50000".parse().unwrap()));
    // A client-written forwarding header is ignored without a trusted proxy.
    req.headers_mut()
        .insert("x-forwarded-for", http::HeaderValue::from_static("6.6.6.6"));
    assert_eq!(h.send(req).await.status, StatusCode::OK);
    assert_eq!(
        h.records()[0].client_ip,
        Some("198.51.100.4".parse().unwrap())
    );
}
