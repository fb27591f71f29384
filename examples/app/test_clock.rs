//! A test hook: a clock the browser test moves forward instead of sleeping.
//!
//! Only with `APP_TEST_CLOCK=1` does the app read time from [`TestClock`]
//! and serve `POST /__test/advance?secs=N`. Never set it outside a test:
//! the endpoint takes no credentials and no CSRF token, so anyone who can
//! reach the app could age every session (end them, or skip the
//! re-authentication window's countdown).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::Query;
use axum::routing::post;
use serde::Deserialize;
use time::OffsetDateTime;
use tower_hmac_session::Clock;

/// The environment variable that turns the hook on (value `1`).
pub(crate) const ENV_VAR: &str = "APP_TEST_CLOCK";

/// Whether `APP_TEST_CLOCK=1`.
pub(crate) fn enabled() -> bool {
    std::env::var(ENV_VAR).is_ok_and(|v| v.trim() == "1")
}

/// The wall clock plus an offset that only grows. Not a frozen
/// `MockClock`: time still passes between requests, so "newest first" and
/// "last seen" behave as in production, and a step forward is just a jump.
#[derive(Debug, Clone, Default)]
pub(crate) struct TestClock {
    offset_secs: Arc<AtomicU64>,
}

impl Clock for TestClock {
    fn now(&self) -> OffsetDateTime {
        let offset = Duration::from_secs(self.offset_secs.load(Ordering::Relaxed));
        let now = OffsetDateTime::now_utc();
        now.checked_add(time::Duration::try_from(offset).unwrap_or(time::Duration::ZERO))
            .unwrap_or(now)
    }
}

#[derive(Deserialize)]
struct Advance {
    secs: u64,
}

/// `POST /__test/advance?secs=N`: moves the clock `N` seconds forward and
/// answers with the total offset. Mounted outside the session layer and the
/// CSRF guard: the test calls it from Node, not from a page.
pub(crate) fn router<S: Clone + Send + Sync + 'static>(clock: TestClock) -> Router<S> {
    Router::new().route(
        "/__test/advance",
        post(move |Query(Advance { secs }): Query<Advance>| async move {
            let total = clock.offset_secs.fetch_add(secs, Ordering::Relaxed) + secs;
            tracing::warn!(by = secs, total, "test clock moved forward");
            total.to_string()
        }),
    )
}
