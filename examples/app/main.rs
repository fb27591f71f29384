//! The showcase: a small web app on `SqliteStore` with sign-in (CSRF token
//! before login, remember me), "your devices", a password change behind
//! recent authentication, and an admin page that rotates the HMAC keys at
//! run time.
//!
//! ```sh
//! cargo run --example app
//! # then open http://127.0.0.1:3000 (the demo users are listed on the page)
//! ```
//!
//! Environment (all optional):
//!
//! | variable | default | |
//! |---|---|---|
//! | `APP_ADDR` | `127.0.0.1:3000` | where to listen (`PORT` alone changes only the port) |
//! | `APP_DB` | `app-sessions.db` | the SQLite file |
//! | `SESSION_KEYS` | — | `version:base64key,…`, the first current |
//! | `APP_KEY_FILE` | `app-keys.txt` | read when `SESSION_KEYS` is not set; created with a development key if missing |
//! | `APP_REAUTH_SECS` | `300` | how recent a sign-in the password change needs |
//! | `APP_RECENT_SECS` | `3600` | the admin page's "recently used" window |
//! | `APP_TEST_CLOCK` | — | `1` only in the browser test: a clock it moves with `POST /__test/advance?secs=N` (see `test_clock.rs`; never in production) |

mod admin;
mod csrf;
mod events;
mod html;
mod keys;
mod pages;
mod test_clock;
mod users;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use http::StatusCode;
use tower_hmac_session::store::SqliteStore;
use tower_hmac_session::{SessionConfig, SessionError, SessionLayer, SessionManager};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{Layer as _, filter::LevelFilter};

use crate::html::{Flash, page};

/// What every handler shares.
#[derive(Clone, Debug)]
pub(crate) struct App {
    pub(crate) manager: SessionManager,
    pub(crate) users: Arc<users::Users>,
    pub(crate) keys: Arc<keys::AppKeys>,
    pub(crate) events: events::EventLog,
    pub(crate) settings: Arc<Settings>,
}

#[derive(Debug)]
pub(crate) struct Settings {
    /// How recent the last sign-in must be for the password change.
    pub(crate) reauth_window: Duration,
    /// The admin page's "recently used" window for sessions per key version.
    pub(crate) recent_window: Duration,
}

/// What a handler can fail with, rendered as a page.
#[derive(Debug)]
pub(crate) enum AppError {
    Session(SessionError),
    Forbidden(&'static str),
    Internal(String),
}

impl From<SessionError> for AppError {
    fn from(error: SessionError) -> Self {
        Self::Session(error)
    }
}

impl From<tower_hmac_session::StoreError> for AppError {
    fn from(error: tower_hmac_session::StoreError) -> Self {
        Self::Session(error.into())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, text) = match &self {
            // Signed out meanwhile (revoked from another device, say): back
            // to the login page rather than an error.
            Self::Session(SessionError::NotLoggedIn | SessionError::SessionEnded) => {
                return Redirect::to("/login?m=ended").into_response();
            }
            Self::Session(error) => {
                // The error's own response logs the details; the page shows
                // only the kind of failure.
                tracing::warn!(error = %error, "request failed");
                (error.status(), error.body_text().to_owned())
            }
            Self::Forbidden(text) => (StatusCode::FORBIDDEN, (*text).to_owned()),
            Self::Internal(text) => {
                tracing::error!(error = %text, "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something went wrong; the server log has the details.".to_owned(),
                )
            }
        };
        let body = format!(
            "<div class=card><h1>{}</h1><p class=lead>{}</p>\
             <a class=btn href=\"/\">Back to the app</a></div>",
            status.as_u16(),
            html::esc(&text)
        );
        (status, page("Error", None, Flash::None, &body.to_string())).into_response()
    }
}

fn env_secs(name: &str, default: u64) -> Duration {
    let secs = std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default);
    Duration::from_secs(secs)
}

fn listen_addr() -> SocketAddr {
    if let Ok(addr) = std::env::var("APP_ADDR") {
        return addr
            .parse()
            .expect("APP_ADDR is an address like 127.0.0.1:3000");
    }
    let port = std::env::var("PORT")
        .ok()
        .map(|p| p.parse().expect("PORT is a port number"))
        .unwrap_or(3000);
    SocketAddr::from(([127, 0, 0, 1], port))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[tokio::main]
async fn main() {
    // Logs go to stderr (stdout is the "listening" line the browser test
    // waits for); the crate's events also go to memory, for the admin page.
    let events = events::EventLog::default();
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(LevelFilter::INFO),
        )
        .with(events.layer())
        .init();

    let db = PathBuf::from(std::env::var("APP_DB").unwrap_or_else(|_| "app-sessions.db".into()));
    let key_file =
        PathBuf::from(std::env::var("APP_KEY_FILE").unwrap_or_else(|_| "app-keys.txt".into()));
    let (keys, ring) = match keys::AppKeys::load(&key_file) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(2);
        }
    };

    // Plain HTTP on 127.0.0.1 needs a cookie without `Secure`, hence the
    // development preset; the page says so. The client's address comes from
    // the connection (no proxy in front of this demo).
    let config = SessionConfig::development_builder()
        .client_ip_from(|ext| ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()))
        .unauthenticated_response(|_| Redirect::to("/login").into_response())
        .build()
        .expect("a valid development config");
    let store = match SqliteStore::open(&db).await {
        Ok(store) => store,
        Err(error) => {
            eprintln!("error: cannot open {}: {error}", db.display());
            std::process::exit(2);
        }
    };
    let mut manager = SessionManager::new(store, ring, config);
    // The browser test's hook (only with APP_TEST_CLOCK=1): a clock it moves
    // forward instead of waiting out the re-authentication window.
    let test_clock = test_clock::enabled().then(test_clock::TestClock::default);
    if let Some(clock) = &test_clock {
        tracing::warn!(
            "{}=1: the session clock is a TEST CLOCK that anyone can move with \
             POST /__test/advance; never set it outside a test",
            test_clock::ENV_VAR
        );
        manager = manager.with_clock(clock.clone());
    }
    let _purge = manager.spawn_purge_task(Duration::from_secs(600));

    let app = App {
        manager: manager.clone(),
        users: Arc::new(users::Users::demo().await),
        keys: Arc::new(keys),
        events,
        settings: Arc::new(Settings {
            reauth_window: env_secs("APP_REAUTH_SECS", 300),
            recent_window: env_secs("APP_RECENT_SECS", 3600),
        }),
    };

    let mut router = Router::new()
        .route("/", get(pages::home))
        .route("/login", get(pages::login_page).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/devices", get(pages::devices))
        .route("/devices/revoke", post(pages::revoke_device))
        .route("/devices/revoke-others", post(pages::revoke_others))
        .route(
            "/password",
            get(pages::password_page).post(pages::change_password),
        )
        .route("/reauth", post(pages::reauthenticate))
        .route("/admin", get(admin::page))
        .route("/admin/keys/rotate", post(admin::rotate))
        .route("/admin/keys/retire", post(admin::retire))
        .fallback(pages::not_found)
        // Inside the session layer: the guard reads the session's token.
        .layer(axum::middleware::from_fn(csrf::guard))
        .layer(SessionLayer::new(manager));
    if let Some(clock) = test_clock {
        // Merged after the layers above: no session, no CSRF token.
        router = router.merge(test_clock::router(clock));
    }
    let router = router
        // Outermost: also on the session layer's own responses.
        .layer(axum::middleware::map_response(html::security_headers))
        .with_state(app);

    let addr = listen_addr();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("cannot listen on {addr}: {e}"));
    // The browser test waits for this line.
    println!(
        "listening on http://{}",
        listener.local_addr().expect("bound")
    );
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await
    .expect("server");
}
