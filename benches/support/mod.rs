//! Shared by the benches: requests, key rings, and the tower-sessions router
//! every comparison uses.
#![allow(dead_code, unreachable_pub)]

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{Request, header};
use tower_hmac_session::KeyRing;

/// `GET path`, with a `Cookie` header when given.
pub fn get_req(path: &str, cookie: Option<&str>) -> Request<Body> {
    let mut req = Request::builder().uri(path);
    if let Some(cookie) = cookie {
        req = req.header(header::COOKIE, cookie);
    }
    req.body(Body::empty()).unwrap()
}

/// Keys `1..=versions`, the last current.
pub fn ring(versions: u32) -> KeyRing {
    (1..=versions)
        .fold(KeyRing::builder(), |b, v| b.key(v, [v as u8; 32]))
        .current(versions)
        .build()
        .unwrap()
}

/// `name=value` of the `Set-Cookie` for cookie `name`, if the response sets one.
pub fn set_cookie(res: &http::Response<Body>, name: &str) -> Option<String> {
    res.headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap().to_owned())
}

/// tower-sessions 0.15 on its memory store: `/` (no session use), `/read`
/// (reads value `k`), `/write` (writes it).
pub fn tower_sessions() -> Router {
    Router::new()
        .route("/", get(|| async { "ok" }))
        .route(
            "/read",
            get(|s: tower_sessions::Session| async move {
                s.get::<String>("k").await.unwrap().unwrap_or_default()
            }),
        )
        .route(
            "/write",
            get(|s: tower_sessions::Session| async move {
                s.insert("k", "v").await.unwrap();
                "ok"
            }),
        )
        .layer(
            tower_sessions::SessionManagerLayer::new(tower_sessions::MemoryStore::default())
                .with_secure(false),
        )
}

/// A live session record for `user-{i:07}` (a 12-byte subject) at 2030-01-01,
/// with a random lookup key under version 1, as real HMAC outputs are, and
/// no attributes: what the store-size benches fill stores with.
pub fn filler_record(i: u64) -> tower_hmac_session::SessionRecord {
    use std::time::Duration;
    use tower_hmac_session::{
        Credential, Data, KeyVersion, LookupKey, SessionId, SessionRecord, SessionSecret,
    };
    let now = time::macros::datetime!(2030-01-01 00:00 UTC);
    SessionRecord {
        id: SessionId::generate(),
        generation: 0,
        subject: Some(format!("user-{i:07}")),
        created_at: now,
        authenticated_at: Some(now),
        last_seen_at: now,
        expires_at: now + Duration::from_secs(7 * 24 * 3600),
        absolute_expires_at: now + Duration::from_secs(30 * 24 * 3600),
        idle_timeout: Duration::from_secs(7 * 24 * 3600),
        persistent: true,
        access_expires_at: now + Duration::from_secs(900),
        current: Credential {
            lookup_key: LookupKey::from_bytes(*SessionSecret::generate().expose_bytes()),
            key_version: KeyVersion(1),
        },
        previous: None,
        superseded: None,
        revoked: None,
        user_agent: None,
        client_ip: None,
        data: Data::new(),
    }
}
