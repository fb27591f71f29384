//! Login, "who am I", devices and logout.
//!
//! ```sh
//! cargo run --example basic
//! # then open http://127.0.0.1:3000 (any user name, password "demo")
//!
//! # Sessions that survive a restart: SQLite and a fixed key.
//! SESSION_KEYS="1:$(openssl rand -base64 32)" cargo run --example basic --features sqlite
//! ```
//!
//! The store is SQLite (`basic-example.db`) when built with the `sqlite`
//! feature, the in-memory store otherwise. Keys come from `SESSION_KEYS`
//! (`version:base64key,…`, first current) when set; otherwise a random key
//! is made at start-up, and no session outlives the process.

use std::time::Duration;

use axum::extract::Form;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::StatusCode;
use tower_hmac_session::{
    ActiveSession, KeyRing, Session, SessionConfig, SessionError, SessionLayer, SessionManager,
};

#[derive(serde::Deserialize)]
struct Login {
    user: String,
    password: String,
}

async fn home(session: Option<ActiveSession>) -> Html<String> {
    Html(match session {
        Some(s) => format!(
            "<p>Signed in as <b>{}</b> (session {}).</p>\
             <p><a href=\"/me\">/me</a> · <a href=\"/devices\">/devices</a></p>\
             <form method=post action=/logout><button>Log out</button></form>",
            html_escape(s.subject()),
            s.id
        ),
        None => "<form method=post action=/login>\
                 <input name=user placeholder=user> \
                 <input name=password type=password placeholder='password: demo'> \
                 <button>Log in</button></form>"
            .to_owned(),
    })
}

async fn login(session: Session, Form(form): Form<Login>) -> Response {
    // A real application checks a password hash here.
    if form.password != "demo" || form.user.trim().is_empty() {
        return (StatusCode::UNAUTHORIZED, "wrong user name or password").into_response();
    }
    match session.login(form.user.trim()).await {
        Ok(_) => Redirect::to("/").into_response(),
        Err(error) => error.into_response(),
    }
}

async fn me(session: ActiveSession) -> String {
    format!(
        "{} (session {}, expires {})\n",
        session.subject(),
        session.id,
        session.expires_at
    )
}

async fn devices(session: Session) -> Result<Json<Vec<String>>, SessionError> {
    let devices = session.devices().await?;
    Ok(Json(
        devices
            .iter()
            .map(|d| format!("{} created {}", d.id, d.created_at))
            .collect(),
    ))
}

async fn logout(session: Session) -> Result<Redirect, SessionError> {
    session.logout().await?;
    Ok(Redirect::to("/"))
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn key_ring() -> KeyRing {
    match KeyRing::from_env("SESSION_KEYS") {
        Ok(keys) => keys,
        Err(_) => {
            // A fresh secret is 32 random bytes: just what a key needs.
            let key = *tower_hmac_session::SessionSecret::generate().expose_bytes();
            eprintln!("SESSION_KEYS is not set: using a random key for this run");
            KeyRing::builder()
                .key(1, key)
                .build()
                .expect("a 32-byte key")
        }
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .init();
    // Plain HTTP on 127.0.0.1 for the demo: a cookie without the `__Host-`
    // prefix and without `Secure`. In production keep the defaults (HTTPS).
    let config = SessionConfig::builder()
        .cookie_name("session")
        .cookie_secure(false)
        .build()
        .expect("a valid config");
    #[cfg(feature = "sqlite")]
    let store = tower_hmac_session::store::SqliteStore::open("basic-example.db")
        .await
        .expect("basic-example.db opens");
    #[cfg(not(feature = "sqlite"))]
    let store = tower_hmac_session::MemoryStore::new();
    let sessions = SessionManager::new(store, key_ring(), config);
    let _purge = sessions.spawn_purge_task(Duration::from_secs(600));

    let app = Router::new()
        .route("/", get(home))
        .route("/login", post(login))
        .route("/me", get(me))
        .route("/devices", get(devices))
        .route("/logout", post(logout))
        .layer(SessionLayer::new(sessions));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000")
        .await
        .expect("port 3000 is free");
    println!("listening on http://127.0.0.1:3000");
    axum::serve(listener, app).await.expect("server");
}
