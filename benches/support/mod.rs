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
