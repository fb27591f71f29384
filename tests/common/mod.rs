//! Shared by the integration tests: a store wrapper that counts calls and
//! fails on demand, and a real axum `Router` with login / me / logout
//! handlers under `SessionLayer`, on a `MockClock`.
#![allow(dead_code, unreachable_pub)]

pub mod faults;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::Query;
use axum::routing::{get, post};
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::BodyExt as _;
use time::OffsetDateTime;
use time::macros::datetime;
use tower::ServiceExt as _;
use tower_hmac_session::{
    ActiveSession, ActiveSessionRecord, Candidate, Data, KeyRing, KeyVersion, MemoryStore,
    MockClock, Revocation, RevokeOutcome, Session, SessionConfig, SessionError, SessionId,
    SessionLayer, SessionManager, SessionMatch, SessionRecord, SessionSecret, SessionStore,
    StoreError, SubjectCap, VersionCount,
};

pub const COOKIE: &str = "__Host-session";
pub const T0: OffsetDateTime = datetime!(2030-01-01 00:00 UTC);

/// Per-method call counters.
#[derive(Debug, Default)]
pub struct Counts {
    pub find_active: AtomicU64,
    pub get_active: AtomicU64,
    pub insert: AtomicU64,
    pub replace: AtomicU64,
    pub replace_applied: AtomicU64,
    /// Applied replacements that rotated (current moved to previous).
    pub rotate_applied: AtomicU64,
    /// Applied replacements that re-rotated (current moved to superseded).
    pub rerotate_applied: AtomicU64,
    /// Applied replacements that slid the idle expiry.
    pub touch_applied: AtomicU64,
    pub revoke: AtomicU64,
    pub revoke_all: AtomicU64,
    pub other: AtomicU64,
}

fn n(c: &AtomicU64) -> u64 {
    c.load(Ordering::SeqCst)
}

impl Counts {
    /// Every call of any kind.
    pub fn total(&self) -> u64 {
        n(&self.find_active) + n(&self.get_active) + self.writes() + n(&self.other)
    }

    /// Every write call, applied or not.
    pub fn writes(&self) -> u64 {
        n(&self.insert) + n(&self.replace) + n(&self.revoke) + n(&self.revoke_all)
    }

    pub fn get(c: &AtomicU64) -> u64 {
        n(c)
    }

    fn all(&self) -> [&AtomicU64; 11] {
        [
            &self.find_active,
            &self.get_active,
            &self.insert,
            &self.replace,
            &self.replace_applied,
            &self.rotate_applied,
            &self.rerotate_applied,
            &self.touch_applied,
            &self.revoke,
            &self.revoke_all,
            &self.other,
        ]
    }
}

/// Wraps a store (a `MemoryStore` by default): counts calls, and fails,
/// hangs, or applies a write and then reports a failure, when told to.
#[derive(Debug)]
pub struct TestStore {
    pub inner: Arc<dyn SessionStore>,
    /// The wrapped store when it is a `MemoryStore`, for inspection.
    pub memory: Option<MemoryStore>,
    pub counts: Counts,
    pub fail_reads: AtomicBool,
    pub fail_writes: AtomicBool,
    /// Fails only this one operation (by trait method name).
    pub fail_only: std::sync::Mutex<Option<&'static str>>,
    /// `replace` applies its write, then reports a timeout (a write that
    /// applied but whose answer was lost).
    pub apply_then_fail: AtomicBool,
    pub hang: AtomicBool,
}

impl Default for TestStore {
    fn default() -> Self {
        let memory = MemoryStore::new();
        Self {
            memory: Some(memory.clone()),
            ..Self::wrap(memory)
        }
    }
}

impl TestStore {
    pub fn wrap(store: impl SessionStore) -> Self {
        Self::wrap_arc(Arc::new(store))
    }

    pub fn wrap_arc(inner: Arc<dyn SessionStore>) -> Self {
        Self {
            inner,
            memory: None,
            counts: Counts::default(),
            fail_reads: AtomicBool::new(false),
            fail_writes: AtomicBool::new(false),
            fail_only: std::sync::Mutex::new(None),
            apply_then_fail: AtomicBool::new(false),
            hang: AtomicBool::new(false),
        }
    }

    async fn gate(&self, operation: &'static str, write: bool) -> Result<(), StoreError> {
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let fail = if write {
            &self.fail_writes
        } else {
            &self.fail_reads
        };
        let only = *self.fail_only.lock().unwrap() == Some(operation);
        if only || fail.load(Ordering::SeqCst) {
            return Err(StoreError::backend(
                operation,
                std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "test outage"),
            ));
        }
        Ok(())
    }

    pub fn reset_counts(&self) {
        for c in self.counts.all() {
            c.store(0, Ordering::SeqCst);
        }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::SeqCst);
}

#[async_trait]
impl SessionStore for TestStore {
    async fn find_active(
        &self,
        candidates: &[Candidate],
        now: OffsetDateTime,
    ) -> Result<Vec<SessionMatch>, StoreError> {
        bump(&self.counts.find_active);
        self.gate("find_active", false).await?;
        self.inner.find_active(candidates, now).await
    }
    async fn get_active(
        &self,
        id: &SessionId,
        now: OffsetDateTime,
    ) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        bump(&self.counts.get_active);
        self.gate("get_active", false).await?;
        self.inner.get_active(id, now).await
    }
    async fn insert(&self, record: &SessionRecord) -> Result<(), StoreError> {
        bump(&self.counts.insert);
        self.gate("insert", true).await?;
        self.inner.insert(record).await
    }
    async fn insert_capped(
        &self,
        record: &SessionRecord,
        now: OffsetDateTime,
        cap: &SubjectCap,
    ) -> Result<Vec<SessionId>, StoreError> {
        bump(&self.counts.insert);
        self.gate("insert", true).await?;
        self.inner.insert_capped(record, now, cap).await
    }
    async fn replace(
        &self,
        current: &SessionRecord,
        next: &SessionRecord,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        bump(&self.counts.replace);
        self.gate("replace", true).await?;
        let applied = self.inner.replace(current, next, now).await?;
        if applied {
            bump(&self.counts.replace_applied);
            if next
                .previous
                .is_some_and(|p| p.credential == current.current)
            {
                bump(&self.counts.rotate_applied);
            }
            if next.superseded == Some(current.current) {
                bump(&self.counts.rerotate_applied);
            }
            if next.last_seen_at > current.last_seen_at {
                bump(&self.counts.touch_applied);
            }
        }
        if self.apply_then_fail.load(Ordering::SeqCst) {
            return Err(StoreError::Timeout {
                operation: "replace",
                timeout: Duration::from_secs(5),
            });
        }
        Ok(applied)
    }
    async fn revoke(
        &self,
        id: &SessionId,
        subject: Option<&str>,
        now: OffsetDateTime,
        revocation: &Revocation,
    ) -> Result<RevokeOutcome, StoreError> {
        bump(&self.counts.revoke);
        self.gate("revoke", true).await?;
        self.inner.revoke(id, subject, now, revocation).await
    }
    async fn revoke_all_for_subject(
        &self,
        subject: &str,
        now: OffsetDateTime,
        revocation: &Revocation,
        except: Option<&SessionId>,
    ) -> Result<u64, StoreError> {
        bump(&self.counts.revoke_all);
        self.gate("revoke_all_for_subject", true).await?;
        self.inner
            .revoke_all_for_subject(subject, now, revocation, except)
            .await
    }
    async fn list_for_subject(
        &self,
        subject: &str,
        now: OffsetDateTime,
    ) -> Result<Vec<ActiveSessionRecord>, StoreError> {
        bump(&self.counts.other);
        self.gate("list_for_subject", false).await?;
        self.inner.list_for_subject(subject, now).await
    }
    async fn count_by_key_version(
        &self,
        now: OffsetDateTime,
        seen_since: OffsetDateTime,
    ) -> Result<BTreeMap<KeyVersion, VersionCount>, StoreError> {
        bump(&self.counts.other);
        self.gate("count_by_key_version", false).await?;
        self.inner.count_by_key_version(now, seen_since).await
    }
    async fn purge_expired(&self, now: OffsetDateTime) -> Result<u64, StoreError> {
        bump(&self.counts.other);
        self.gate("purge_expired", true).await?;
        self.inner.purge_expired(now).await
    }
}

pub fn ring(current: u32, versions: &[u32]) -> KeyRing {
    versions
        .iter()
        .fold(KeyRing::builder(), |b, &v| b.key(v, [v as u8; 32]))
        .current(current)
        .build()
        .unwrap()
}

/// The handlers a session-using application has. `clock` lets `/slow`
/// stand for a request that runs for a while.
pub fn app(clock: MockClock) -> Router {
    #[derive(serde::Deserialize)]
    struct User {
        user: String,
    }
    #[derive(serde::Deserialize)]
    struct Slow {
        secs: u64,
        key: Option<String>,
        value: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Attr {
        key: String,
        value: Option<String>,
    }
    Router::new()
        .route(
            "/login",
            post(|session: Session, Query(q): Query<User>| async move {
                session.login(q.user).await.map(|r| r.id.to_string())
            }),
        )
        .route(
            "/me",
            get(|session: ActiveSession| async move { session.subject().to_owned() }),
        )
        .route(
            "/maybe",
            get(|session: Option<ActiveSession>| async move {
                session.map_or_else(|| "anonymous".to_owned(), |s| s.subject().to_owned())
            }),
        )
        .route(
            "/logout",
            post(|session: Session| async move { session.logout().await.map(|r| r.to_string()) }),
        )
        .route(
            "/logout-everywhere",
            post(|session: Session| async move {
                session.logout_everywhere().await.map(|n| n.to_string())
            }),
        )
        .route(
            "/logout-others",
            post(|session: Session| async move {
                session.logout_other_devices().await.map(|n| n.to_string())
            }),
        )
        .route(
            "/devices",
            get(|session: Session| async move {
                let devices = session.devices().await?;
                Ok::<_, SessionError>(Json(
                    devices.iter().map(|d| d.id.to_string()).collect::<Vec<_>>(),
                ))
            }),
        )
        .route(
            "/renew",
            post(|session: Session| async move { session.renew().await.map(|()| "renewed") }),
        )
        .route(
            "/cacheable",
            get(|session: ActiveSession| async move {
                (
                    [(header::CACHE_CONTROL, "public, max-age=600")],
                    session.subject().to_owned(),
                )
            }),
        )
        .route(
            "/uncached-public",
            get(|| async { ([(header::CACHE_CONTROL, "public, max-age=600")], "static") }),
        )
        .route(
            "/slow",
            post(move |session: Session, Query(q): Query<Slow>| {
                let clock = clock.clone();
                async move {
                    if let Some(key) = &q.key {
                        session.insert(key, &q.value)?;
                    }
                    // The request runs for `secs` seconds.
                    clock.advance(Duration::from_secs(q.secs));
                    Ok::<_, SessionError>("done")
                }
            }),
        )
        .route(
            "/attr-remove",
            post(|session: Session, Query(q): Query<Attr>| async move {
                session
                    .remove::<serde_json::Value>(&q.key)
                    .map(|_| "removed")
            }),
        )
        .route(
            "/attr",
            post(|session: Session, Query(q): Query<Attr>| async move {
                session.insert(&q.key, q.value).map(|_| "saved")
            })
            .get(|session: Session, Query(q): Query<Attr>| async move {
                session
                    .get::<String>(&q.key)
                    .map(|v| v.unwrap_or_else(|| "<none>".into()))
            }),
        )
}

/// A router under `SessionLayer`, on a `TestStore` and a `MockClock` at `T0`.
pub struct Harness {
    pub store: Arc<TestStore>,
    pub manager: SessionManager,
    pub clock: MockClock,
    pub router: Router,
}

impl Harness {
    pub fn new() -> Self {
        Self::with(SessionConfig::default(), ring(1, &[1]))
    }

    pub fn with(config: SessionConfig, keys: KeyRing) -> Self {
        Self::on(Arc::new(TestStore::default()), config, keys)
    }

    pub fn with_store(store: impl SessionStore, config: SessionConfig, keys: KeyRing) -> Self {
        Self::on(Arc::new(TestStore::wrap(store)), config, keys)
    }

    pub fn on(store: Arc<TestStore>, config: SessionConfig, keys: KeyRing) -> Self {
        let clock = MockClock::new(T0);
        let manager = SessionManager::new(store.clone(), keys, config).with_clock(clock.clone());
        let router = app(clock.clone()).layer(SessionLayer::new(manager.clone()));
        Self {
            store,
            manager,
            clock,
            router,
        }
    }

    pub fn advance(&self, secs: u64) {
        self.clock.advance(Duration::from_secs(secs));
    }

    /// The test app with one more route, behind the same layer.
    pub fn add_route(&mut self, path: &str, route: axum::routing::MethodRouter) {
        self.router = app(self.clock.clone())
            .route(path, route)
            .layer(SessionLayer::new(self.manager.clone()));
    }

    pub async fn send(&self, req: Request<Body>) -> TestResponse {
        TestResponse::from(self.router.clone().oneshot(req).await.unwrap()).await
    }

    pub async fn call(&self, method: &str, uri: &str, cookie: Option<&str>) -> TestResponse {
        self.send(request(method, uri, cookie)).await
    }

    /// Logs `user` in and returns the cookie secret.
    pub async fn login(&self, user: &str) -> String {
        let res = self
            .call("POST", &format!("/login?user={user}"), None)
            .await;
        assert_eq!(res.status, StatusCode::OK, "{}", res.body);
        res.new_secret().expect("login sets the session cookie")
    }

    /// Every stored record (of a `MemoryStore`-backed harness).
    pub fn records(&self) -> Vec<SessionRecord> {
        self.store
            .memory
            .as_ref()
            .expect("records() needs the memory store")
            .records()
    }
}

pub fn request(method: &str, uri: &str, secret: Option<&str>) -> Request<Body> {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(secret) = secret {
        req = req.header(header::COOKIE, format!("{COOKIE}={secret}"));
    }
    req.body(Body::empty()).unwrap()
}

/// A request carrying several values of the session cookie in one header.
pub fn request_with_secrets(uri: &str, secrets: &[&str]) -> Request<Body> {
    let cookie = secrets
        .iter()
        .map(|s| format!("{COOKIE}={s}"))
        .collect::<Vec<_>>()
        .join("; ");
    Request::builder()
        .uri(uri)
        .header(header::COOKIE, cookie)
        .body(Body::empty())
        .unwrap()
}

pub fn request_with_cookies(values: Vec<HeaderValue>) -> Request<Body> {
    let mut req = Request::builder()
        .uri("/maybe")
        .body(Body::empty())
        .unwrap();
    for v in values {
        req.headers_mut().append(header::COOKIE, v);
    }
    req
}

#[derive(Debug)]
pub struct TestResponse {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub set_cookies: Vec<cookie::Cookie<'static>>,
    pub raw_set_cookies: Vec<String>,
    pub body: String,
}

impl TestResponse {
    pub async fn from(res: http::Response<Body>) -> Self {
        let status = res.status();
        let headers = res.headers().clone();
        let raw_set_cookies: Vec<String> = res
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        let set_cookies = raw_set_cookies
            .iter()
            .map(|v| cookie::Cookie::parse(v.clone()).unwrap())
            .collect();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        Self {
            status,
            headers,
            set_cookies,
            raw_set_cookies,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    /// The session cookie this response sets, if any.
    pub fn session_cookie(&self) -> Option<&cookie::Cookie<'static>> {
        let mut found = self.set_cookies.iter().filter(|c| c.name() == COOKIE);
        let first = found.next();
        assert!(found.next().is_none(), "at most one session Set-Cookie");
        first
    }

    /// The new secret this response gives the client, if any.
    pub fn new_secret(&self) -> Option<String> {
        self.session_cookie()
            .filter(|c| !c.value().is_empty())
            .map(|c| c.value().to_owned())
    }

    /// The response's header `name`, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// Whether this response removes the session cookie.
    pub fn clears_cookie(&self) -> bool {
        self.session_cookie().is_some_and(|c| {
            c.value().is_empty() && c.max_age() == Some(cookie::time::Duration::ZERO)
        })
    }
}

/// Whether the tests run under CI, where an unreachable server fails the run.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Reports an unreachable server: a failure under CI, else a skip.
pub fn unreachable(what: &str, url: &str, error: &dyn std::fmt::Display) {
    if ci() {
        panic!("{what} at {url} is unreachable under CI=true: {error}");
    }
    eprintln!("skipping: {what} at {url} is unreachable ({error}); set CI=true to fail instead");
}

/// A name no other test uses: for schemas, key prefixes, client names.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", SessionId::generate())
}

/// Two app instances on one shared store: 40 concurrent requests, split
/// between them, carry the same secret, which is due for rotation.
/// Asserts that all are served as `alice` and exactly one rotates; returns
/// the new secret.
pub async fn race_rotation(a: &Harness, b: &Harness, secret: &str) -> String {
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let router = [&a.router, &b.router][i % 2].clone();
            let req = request("GET", "/me", Some(secret));
            tokio::spawn(async move { router.oneshot(req).await.unwrap() })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        let res = TestResponse::from(task.await.unwrap()).await;
        assert_eq!((res.status, res.body.as_str()), (StatusCode::OK, "alice"));
        winners.extend(res.new_secret());
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one response carries a new secret"
    );
    let applied =
        Counts::get(&a.store.counts.rotate_applied) + Counts::get(&b.store.counts.rotate_applied);
    assert_eq!(applied, 1, "exactly one rotation applied");
    winners.remove(0)
}

/// Damages, through `damage`, the stored record of a fresh session per case
/// and asserts that the store reports corruption and the layer answers 503
/// without touching the cookie.
pub async fn assert_damage_is_corruption<F, Fut>(h: &Harness, cases: &[&str], mut damage: F)
where
    F: FnMut(String, SessionId, String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for (i, case) in cases.iter().enumerate() {
        let user = format!("user{i}");
        let issued = h
            .manager
            .create_session(user.clone(), Data::new())
            .await
            .unwrap();
        let secret = issued.secret.encode();
        assert_eq!(
            h.call("GET", "/me", Some(&secret)).await.status,
            StatusCode::OK
        );
        damage(user, issued.record.id, case.to_string()).await;
        let candidates = h.manager.key_ring().candidates([&issued.secret]);
        let found = h.store.inner.find_active(&candidates, T0).await;
        assert!(
            matches!(found, Err(StoreError::Corrupt { .. })),
            "{case}: {found:?}"
        );
        let res = h.call("GET", "/me", Some(&secret)).await;
        assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE, "{case}");
        assert!(res.raw_set_cookies.is_empty(), "{case}");
    }
}

/// Access ttl 900 s, grace 60 s: what the two-instance rotation checks use.
pub fn rotating() -> SessionConfig {
    SessionConfig::builder()
        .access_ttl(Some(Duration::from_secs(900)))
        .rotation_grace(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Two app instances on one shared store: a logout through `b` is seen by
/// `a` on its next request.
pub async fn revocation_is_shared(a: &Harness, b: &Harness) {
    let secret = a.login("alice").await;
    assert_eq!(b.call("GET", "/me", Some(&secret)).await.body, "alice");
    assert!(
        b.call("POST", "/logout", Some(&secret))
            .await
            .clears_cookie()
    );
    let after = a.call("GET", "/me", Some(&secret)).await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);
}

/// Two app instances on one shared store (configured with [`rotating`]): a
/// rotation through `b` is seen by `a`; the new secret is confirmed through
/// `a`; the old secret works through `a` in the grace after confirmation; a
/// replay after it through `a` ends the session for `b`.
pub async fn rotation_is_shared(a: &Harness, b: &Harness) {
    let old = a.login("bob").await;
    a.advance(901);
    b.advance(901);
    let new = b
        .call("GET", "/me", Some(&old))
        .await
        .new_secret()
        .expect("rotated");
    assert_eq!(a.call("GET", "/me", Some(&new)).await.body, "bob");
    let in_grace = a.call("GET", "/me", Some(&old)).await;
    assert_eq!(in_grace.status, StatusCode::OK);
    assert!(in_grace.raw_set_cookies.is_empty());
    a.advance(61);
    b.advance(61);
    assert!(
        a.call("GET", "/maybe", Some(&old)).await.clears_cookie(),
        "replay"
    );
    let after = b.call("GET", "/me", Some(&new)).await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);
}

/// A rotation whose response never reaches the client: the client keeps the
/// old secret and is still signed in long after the grace (it gets a fresh
/// secret by re-rotation), and following that cookie it stays signed in.
pub async fn lost_rotation_response_keeps_the_session(h: &Harness) {
    let old = h.login("carol").await;
    h.advance(901);
    // The rotation happens; its response is dropped on the way to the client.
    let lost = h.call("GET", "/me", Some(&old)).await;
    assert_eq!(lost.status, StatusCode::OK);
    assert!(
        lost.new_secret().is_some(),
        "the lost response carried a rotation"
    );
    h.advance(3_600);
    let again = h.call("GET", "/me", Some(&old)).await;
    assert_eq!(
        (again.status, again.body.as_str()),
        (StatusCode::OK, "carol")
    );
    let fresh = again.new_secret().expect("re-rotated: a fresh secret");
    let confirmed = h.call("GET", "/me", Some(&fresh)).await;
    assert_eq!(confirmed.body, "carol");
    assert!(confirmed.raw_set_cookies.is_empty());
    h.advance(61);
    assert_eq!(h.call("GET", "/me", Some(&fresh)).await.body, "carol");
}

/// A rotation write that applies but whose answer is lost (reported as a
/// timeout): the request is served without a cookie, the client keeps the
/// old secret, is served in the grace and re-rotated after it, and stays
/// signed in with the fresh secret.
pub async fn rotation_write_that_times_out_converges(h: &Harness) {
    let old = h.login("alice").await;
    h.advance(16 * 60);
    h.store.apply_then_fail.store(true, Ordering::SeqCst);
    let res = h.call("GET", "/me", Some(&old)).await;
    h.store.apply_then_fail.store(false, Ordering::SeqCst);
    // Served, and no cookie: the layer cannot know the write applied.
    assert_eq!((res.status, res.body.as_str()), (StatusCode::OK, "alice"));
    assert!(res.raw_set_cookies.is_empty());
    assert_eq!(
        Counts::get(&h.store.counts.rotate_applied),
        1,
        "it did apply"
    );
    assert_eq!(h.call("GET", "/me", Some(&old)).await.body, "alice");
    h.advance(2 * 60);
    let res = h.call("GET", "/me", Some(&old)).await;
    assert_eq!(res.body, "alice");
    let fresh = res.new_secret().expect("re-rotated");
    assert_eq!(h.call("GET", "/me", Some(&fresh)).await.body, "alice");
    h.advance(10 * 60);
    assert_eq!(h.call("GET", "/me", Some(&fresh)).await.body, "alice");
}

/// Two parties use copies of one cookie through a rotation: once the owner
/// confirmed the new secret and the grace passed, the copy's old secret ends
/// the session for both.
pub async fn copied_cookie_after_confirmed_rotation_is_reuse(h: &Harness) {
    let old = h.login("dave").await;
    h.advance(901);
    let new = h.call("GET", "/me", Some(&old)).await.new_secret().unwrap();
    assert_eq!(h.call("GET", "/me", Some(&new)).await.body, "dave");
    h.advance(61);
    let thief = h.call("GET", "/maybe", Some(&old)).await;
    assert_eq!(thief.body, "anonymous");
    assert!(thief.clears_cookie());
    assert_eq!(
        h.call("GET", "/me", Some(&new)).await.status,
        StatusCode::UNAUTHORIZED
    );
}

/// Two parties: the thief's request re-rotates (the owner's successor looked
/// lost), then the owner presents the successor that was replaced: it is
/// superseded, and the session ends for both.
pub async fn superseded_secret_is_reuse(h: &Harness) {
    let old = h.login("erin").await;
    h.advance(901);
    // The owner's request rotates; the owner has the successor.
    let owners = h.call("GET", "/me", Some(&old)).await.new_secret().unwrap();
    h.advance(120);
    // The thief, with a copy of the old cookie, gets a re-rotated secret.
    let thiefs = h.call("GET", "/me", Some(&old)).await.new_secret().unwrap();
    // The owner's successor was superseded: two parties hold the session.
    let owner = h.call("GET", "/maybe", Some(&owners)).await;
    assert_eq!(owner.body, "anonymous");
    assert!(owner.clears_cookie());
    assert_eq!(
        h.call("GET", "/me", Some(&thiefs)).await.status,
        StatusCode::UNAUTHORIZED
    );
}

/// A secret not known to the store, for requests that must resolve nothing.
pub fn stranger() -> String {
    SessionSecret::generate().encode()
}

/// Captures `tracing` output (every level) for the current thread's tests.
pub struct LogCapture {
    buffer: Arc<std::sync::Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

#[derive(Clone)]
struct CaptureWriter(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    pub fn install() -> Self {
        // tracing caches each callsite's interest process-wide: a callsite
        // first hit on a test thread without a subscriber can be cached as
        // "never", and this thread's capture would then miss it. A global
        // subscriber interested in everything (writing nowhere) rules that out.
        static GLOBAL: std::sync::Once = std::sync::Once::new();
        GLOBAL.call_once(|| {
            let sink = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_writer(std::io::sink)
                .finish();
            let _ = tracing::subscriber::set_global_default(sink);
        });
        let buffer = Arc::new(std::sync::Mutex::new(Vec::new()));
        let writer = CaptureWriter(buffer.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        Self {
            buffer,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buffer.lock().unwrap()).into_owned()
    }
}

/// A Redis ACL user of a test's own, allowed every command on `prefix*`
/// keys only: its name and password. `CLIENT KILL USER` and `CLIENT LIST`
/// then reach the test's connections and nobody else's.
#[cfg(feature = "redis")]
pub async fn redis_acl_user(
    admin: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> (String, String) {
    redis_acl_user_with(admin, prefix, &[]).await
}

/// As [`redis_acl_user`], with further ACL rules (`"-config"`, say).
#[cfg(feature = "redis")]
pub async fn redis_acl_user_with(
    admin: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    rules: &[&str],
) -> (String, String) {
    let (user, password) = (unique("ths_user"), unique("pw"));
    let () = redis::cmd("ACL")
        .arg(
            &[
                "SETUSER",
                &user,
                "on",
                &format!(">{password}"),
                &format!("~{prefix}*"),
                "+@all",
            ][..],
        )
        .arg(rules)
        .query_async(admin)
        .await
        .unwrap();
    (user, password)
}

/// Deletes every Redis key under `prefix` (a test's own).
#[cfg(feature = "redis")]
pub async fn redis_delete_prefix(admin: &mut redis::aio::MultiplexedConnection, prefix: &str) {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(admin)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: i64 = redis::cmd("DEL")
            .arg(keys)
            .query_async(admin)
            .await
            .unwrap();
    }
}
