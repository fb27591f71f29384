//! The whole service: an axum `Router` under `SessionLayer` on a
//! `MemoryStore` (wrapped to inject failures), a `MockClock`, and a
//! sequence of requests from up to three browser-like clients, each with a
//! cookie jar that follows `Set-Cookie` (unless the response is "lost").
//!
//! Every step is chosen by the fuzzer: the method, the `Cookie` headers
//! (the client's jar, any secret issued earlier, garbage, other names,
//! several headers), other headers (`User-Agent`, `X-Forwarded-For`), the
//! handler's action (login with options, logout, logout everywhere / other
//! devices, renew, reauthenticate, data insert / remove, revoke a device,
//! list devices, read, `ActiveSession`), the response's own caching headers,
//! clock steps (forward, backward, to the end of time), key rotations,
//! admin revocations, purges, a planted arbitrary stored record, and store
//! failures.
//!
//! Invariants checked on every response:
//! - no panic; status in {200, 401, 403, 500, 503};
//! - 503 only while a store failure is injected, with the documented body;
//!   500 only for what the handler asked wrong (invalid subject, lifetime,
//!   data), with the documented body;
//! - our `Set-Cookie`: at most one; a well-formed secret or a clear; always
//!   with exactly `Cache-Control: no-store` and no `Expires`,
//!   `CDN-Cache-Control`, `Surrogate-Control`; other cookies kept;
//! - no secret cookie on a read-only request whose response shared caches
//!   may store; no cookie change on a 503 of a read-only request;
//! - `Vary: Cookie` on every response (every route extracts the session);
//! - no secret ever issued appears in a body or another header;
//! - the store is asked about at most 4 cookie values per request;
//! - a cookie just set resolves, on the same instant, to an active session
//!   of the same subject (when the step asks to verify).
#![no_main]

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arbitrary::Arbitrary;
use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::extract::Extension;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use http::header::{CACHE_CONTROL, COOKIE, EXPIRES, SET_COOKIE, VARY};
use http::{HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::BodyExt as _;
use libfuzzer_sys::fuzz_target;
use time::OffsetDateTime;
use tower::ServiceExt as _;
use tower_hmac_session::{
    ActiveSession, ActiveSessionRecord, Candidate, CarryData, Clock, KeyRing, KeyVersion,
    LoginOptions, MAX_COOKIE_VALUES, MemoryStore, MockClock, Revocation, RevokeOutcome, Session,
    SessionConfig, SessionError, SessionId, SessionLayer, SessionManager, SessionMatch,
    SessionRecord, SessionSecret, SessionStore, StoreError, StoreErrorPolicy, SubjectCap,
    VersionCount,
};
use tower_hmac_session_fuzz::{ArbJson, ArbRecord, MAX_MICROS, T0_MICROS};

const CLIENTS: usize = 3;
const KEY_VERSIONS: u32 = 3;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

// ---------------------------------------------------------------- store

/// Failure modes, set per request.
const OK: u8 = 0;
const FAIL_ALL: u8 = 1;
const FAIL_WRITES: u8 = 2;
const APPLY_THEN_FAIL: u8 = 3;

/// A `MemoryStore` that fails on demand and checks what it is asked.
#[derive(Debug)]
struct FlakyStore {
    inner: MemoryStore,
    mode: AtomicU8,
    /// Key versions in the ring (for the candidate bound).
    versions: AtomicU8,
}

impl FlakyStore {
    fn read(&self, operation: &'static str) -> Result<(), StoreError> {
        match self.mode.load(Ordering::Relaxed) {
            FAIL_ALL => Err(StoreError::backend(operation, "injected failure")),
            _ => Ok(()),
        }
    }

    fn write(&self, operation: &'static str) -> Result<(), StoreError> {
        match self.mode.load(Ordering::Relaxed) {
            FAIL_ALL | FAIL_WRITES => Err(StoreError::backend(operation, "injected failure")),
            _ => Ok(()),
        }
    }

    fn after<T>(
        &self,
        operation: &'static str,
        result: Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match (self.mode.load(Ordering::Relaxed), result) {
            (APPLY_THEN_FAIL, Ok(_)) => Err(StoreError::Timeout {
                operation,
                timeout: Duration::from_secs(1),
            }),
            (_, result) => result,
        }
    }
}

#[async_trait]
impl SessionStore for FlakyStore {
    async fn find_active(
        &self,
        candidates: &[Candidate],
        now: OffsetDateTime,
    ) -> Result<Vec<SessionMatch>, StoreError> {
        let versions = usize::from(self.versions.load(Ordering::Relaxed));
        assert!(
            !candidates.is_empty(),
            "a store call without a cookie value"
        );
        assert!(
            candidates.len() <= MAX_COOKIE_VALUES * versions,
            "{} candidates for {versions} key versions",
            candidates.len()
        );
        assert!(
            candidates
                .iter()
                .all(|c| usize::from(c.value_index) < MAX_COOKIE_VALUES)
        );
        self.read("find_active")?;
        self.inner.find_active(candidates, now).await
    }

    async fn get_active(
        &self,
        id: &SessionId,
        now: OffsetDateTime,
    ) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        self.read("get_active")?;
        self.inner.get_active(id, now).await
    }

    async fn insert(&self, record: &SessionRecord) -> Result<(), StoreError> {
        self.write("insert")?;
        let result = self.inner.insert(record).await;
        self.after("insert", result)
    }

    async fn insert_capped(
        &self,
        record: &SessionRecord,
        now: OffsetDateTime,
        cap: &SubjectCap,
    ) -> Result<Vec<SessionId>, StoreError> {
        self.write("insert_capped")?;
        let result = self.inner.insert_capped(record, now, cap).await;
        self.after("insert_capped", result)
    }

    async fn replace(
        &self,
        current: &SessionRecord,
        next: &SessionRecord,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        self.write("replace")?;
        let result = self.inner.replace(current, next, now).await;
        self.after("replace", result)
    }

    async fn revoke(
        &self,
        id: &SessionId,
        subject: Option<&str>,
        now: OffsetDateTime,
        revocation: &Revocation,
    ) -> Result<RevokeOutcome, StoreError> {
        self.write("revoke")?;
        let result = self.inner.revoke(id, subject, now, revocation).await;
        self.after("revoke", result)
    }

    async fn revoke_all_for_subject(
        &self,
        subject: &str,
        now: OffsetDateTime,
        revocation: &Revocation,
        except: Option<&SessionId>,
    ) -> Result<u64, StoreError> {
        self.write("revoke_all_for_subject")?;
        let result = self
            .inner
            .revoke_all_for_subject(subject, now, revocation, except)
            .await;
        self.after("revoke_all_for_subject", result)
    }

    async fn list_for_subject(
        &self,
        subject: &str,
        now: OffsetDateTime,
    ) -> Result<Vec<ActiveSessionRecord>, StoreError> {
        self.read("list_for_subject")?;
        self.inner.list_for_subject(subject, now).await
    }

    async fn count_by_key_version(
        &self,
        now: OffsetDateTime,
        seen_since: OffsetDateTime,
    ) -> Result<std::collections::BTreeMap<KeyVersion, VersionCount>, StoreError> {
        self.read("count_by_key_version")?;
        self.inner.count_by_key_version(now, seen_since).await
    }

    async fn purge_expired(&self, now: OffsetDateTime) -> Result<u64, StoreError> {
        self.write("purge_expired")?;
        self.inner.purge_expired(now).await
    }
}

// ---------------------------------------------------------------- input

#[derive(Arbitrary, Debug, Clone)]
enum Text {
    Known(u8),
    Raw(String),
}

impl Text {
    fn text(&self, prefix: &str) -> String {
        match self {
            Self::Known(n) => format!("{prefix}-{}", n % 4),
            Self::Raw(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
enum IdRef {
    /// An id the run has seen (logins, device lists, planted records).
    Seen(u8),
    Raw([u8; 16]),
}

#[derive(Arbitrary, Debug, Clone)]
enum Action {
    Read,
    Active,
    Login {
        subject: Text,
        remember_me: Option<bool>,
        idle_secs: Option<u32>,
        absolute_secs: Option<u32>,
        carry: u8,
        carry_keys: Vec<Text>,
        data: Vec<(Text, ArbJson)>,
        user_agent: Option<String>,
    },
    Logout,
    LogoutEverywhere,
    LogoutOtherDevices,
    Renew,
    Reauthenticate,
    RequireRecent(u32),
    Insert(Text, ArbJson),
    Remove(Text),
    RevokeDevice(IdRef),
    Devices,
}

impl Action {
    /// Whether the handler asks for no change at all.
    fn read_only(&self) -> bool {
        matches!(
            self,
            Self::Read | Self::Active | Self::Devices | Self::RequireRecent(_)
        )
    }

    /// Whether the handler may stage a cookie change itself.
    fn stages_cookie(&self) -> bool {
        matches!(
            self,
            Self::Login { .. }
                | Self::Logout
                | Self::LogoutEverywhere
                | Self::LogoutOtherDevices
                | Self::Renew
                | Self::Reauthenticate
                | Self::Insert(..)
        )
    }
}

/// Headers the handler puts on its own response.
#[derive(Arbitrary, Debug, Clone, Copy)]
struct Decoration {
    cache: u8,
    expires: bool,
    other_cookie: bool,
    vary: u8,
}

impl Decoration {
    fn shared_cacheable(self) -> bool {
        matches!(self.cache % 6, 1 | 2 | 3 | 4)
    }
}

#[derive(Arbitrary, Debug, Clone)]
enum CookieSource {
    Jar,
    /// Any secret issued earlier in the run.
    History(u8),
    /// Another client's current cookie.
    OtherJar(u8),
    Fresh([u8; 32]),
    Garbage(Vec<u8>),
    /// A history secret under another cookie name.
    OtherName(u8),
    /// Start a new `Cookie` header.
    NewHeader,
}

#[derive(Arbitrary, Debug, Clone)]
struct Req {
    client: u8,
    method: u8,
    cookies: Vec<CookieSource>,
    headers: Vec<(u8, Vec<u8>)>,
    action: Action,
    decoration: Decoration,
    /// The client never sees the response (its jar stays as it was).
    lost: bool,
    verify: bool,
    failure: u8,
}

#[derive(Arbitrary, Debug, Clone)]
enum Step {
    Request(Req),
    Advance(u16),
    AdvanceFar(u32),
    Back(u16),
    NearEndOfTime(u32),
    /// Make another version current (all three stay accepted).
    RotateKeys(u8),
    /// Only this version and the current are accepted.
    RetireKeys(u8),
    RevokeAll(Text),
    Purge,
    /// A stored record the fuzzer chose, holding a known secret in a slot.
    Plant {
        record: ArbRecord,
        slot: u8,
        client: u8,
    },
    /// One client's cookie copied to another (a stolen cookie).
    CopyJar(u8, u8),
}

#[derive(Arbitrary, Debug)]
struct ConfigInput {
    idle_secs: u32,
    absolute_secs: u32,
    access_ttl_secs: Option<u32>,
    grace_secs: u32,
    touch_secs: u32,
    revoke_on_reuse: bool,
    cap: Option<u8>,
    continue_anonymous: bool,
    pre_login_idle_secs: u32,
    pre_login_absolute_secs: u32,
    proxy_hops: Option<u8>,
}

impl ConfigInput {
    fn config(&self) -> SessionConfig {
        let secs = |s: u32, max: u32| Duration::from_secs(u64::from(s % max) + 1);
        let mut builder = SessionConfig::builder()
            .idle_timeout(secs(self.idle_secs, 100_000))
            .absolute_lifetime(secs(self.absolute_secs, 1_000_000))
            .access_ttl(self.access_ttl_secs.map(|s| secs(s, 10_000)))
            .rotation_grace(secs(self.grace_secs, 1_000))
            .touch_interval(secs(self.touch_secs, 10_000))
            .revoke_on_reuse(self.revoke_on_reuse)
            .max_sessions_per_subject(self.cap.map(|c| u32::from(c % 8) + 1))
            .pre_login_idle_timeout(secs(self.pre_login_idle_secs, 10_000))
            .pre_login_absolute_lifetime(secs(self.pre_login_absolute_secs, 100_000));
        if self.continue_anonymous {
            builder = builder.store_error_policy(StoreErrorPolicy::ContinueAnonymous);
        }
        if let Some(hops) = self.proxy_hops {
            builder = builder.trusted_proxy_header(
                HeaderName::from_static("x-forwarded-for"),
                usize::from(hops % 3) + 1,
            );
        }
        // Contradictory lifetimes are refused at build: fall back to a
        // short-lived valid config so the run still exercises the layer.
        builder.build().unwrap_or_else(|_| {
            SessionConfig::builder()
                .idle_timeout(Duration::from_secs(600))
                .absolute_lifetime(Duration::from_secs(3_600))
                .access_ttl(Some(Duration::from_secs(120)))
                .rotation_grace(Duration::from_secs(10))
                .touch_interval(Duration::from_secs(60))
                .max_sessions_per_subject(Some(2))
                .build()
                .expect("a valid config")
        })
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    config: ConfigInput,
    steps: Vec<Step>,
}

// ---------------------------------------------------------------- app

/// What one request's handler does, and what it saw.
#[derive(Debug)]
struct Job {
    action: Action,
    decoration: Decoration,
    seen_ids: Vec<SessionId>,
    /// Ids the handler learnt (to be added to the run's list).
    learnt: Mutex<Vec<SessionId>>,
}

async fn handler(session: Session, Extension(job): Extension<Arc<Job>>) -> Response {
    let response = match act(&session, &job).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(error) => error.into_response(),
    };
    finish(&session, &job, response)
}

async fn active_handler(
    active: Result<ActiveSession, tower_hmac_session::ActiveSessionRejection>,
    Extension(job): Extension<Arc<Job>>,
) -> Response {
    match active {
        Ok(active) => {
            assert!(active.subject().len() <= tower_hmac_session::MAX_SUBJECT_LEN);
            let session = active.session().clone();
            finish(&session, &job, StatusCode::OK.into_response())
        }
        Err(rejection) => {
            assert_eq!(rejection.status(), StatusCode::UNAUTHORIZED);
            let mut response = rejection.into_response();
            decorate(&job, &mut response);
            response
        }
    }
}

fn record_ids(job: &Job, records: &[ActiveSessionRecord]) {
    job.learnt
        .lock()
        .unwrap()
        .extend(records.iter().map(|r| r.id));
}

async fn act(session: &Session, job: &Job) -> Result<(), SessionError> {
    match &job.action {
        Action::Read | Action::Active => {
            let _: Option<serde_json::Value> = session.get("k-0").ok().flatten();
        }
        Action::Login {
            subject,
            remember_me,
            idle_secs,
            absolute_secs,
            carry,
            carry_keys,
            data,
            user_agent,
        } => {
            let mut options = LoginOptions::new();
            if let Some(r) = remember_me {
                options = options.remember_me(*r);
            }
            if let Some(s) = idle_secs {
                options = options.idle_timeout(Duration::from_secs(u64::from(*s)));
            }
            if let Some(s) = absolute_secs {
                options = options.absolute_lifetime(Duration::from_secs(u64::from(*s)));
            }
            options = options.carry_data(match carry % 3 {
                0 => CarryData::All,
                1 => CarryData::None,
                _ => CarryData::Keys(carry_keys.iter().map(|k| k.text("k")).collect()),
            });
            for (key, value) in data {
                options = options
                    .insert(key.text("k"), value.value())
                    .expect("a JSON value");
            }
            if let Some(ua) = user_agent {
                options = options.user_agent(ua.clone());
            }
            let record = session.login_with(subject.text("user"), options).await?;
            job.learnt.lock().unwrap().push(record.id);
        }
        Action::Logout => {
            session.logout().await?;
        }
        Action::LogoutEverywhere => {
            session.logout_everywhere().await?;
        }
        Action::LogoutOtherDevices => {
            session.logout_other_devices().await?;
        }
        Action::Renew => session.renew().await?,
        Action::Reauthenticate => session.reauthenticate().await?,
        Action::RequireRecent(secs) => {
            session.require_authenticated_within(Duration::from_secs(u64::from(*secs)))?
        }
        Action::Insert(key, value) => session.insert(&key.text("k"), value.value())?,
        Action::Remove(key) => {
            let _ = session.remove::<serde_json::Value>(&key.text("k"));
        }
        Action::RevokeDevice(id) => {
            let id = match id {
                IdRef::Seen(n) if !job.seen_ids.is_empty() => {
                    job.seen_ids[usize::from(*n) % job.seen_ids.len()]
                }
                IdRef::Seen(n) => SessionId::from_bytes([*n; 16]),
                IdRef::Raw(bytes) => SessionId::from_bytes(*bytes),
            };
            session.revoke_device(&id).await?;
        }
        Action::Devices => {
            let devices = session.devices().await?;
            record_ids(job, &devices);
        }
    }
    Ok(())
}

fn decorate(job: &Job, response: &mut Response) {
    let d = job.decoration;
    let headers = response.headers_mut();
    let cache = match d.cache % 6 {
        0 => None,
        1 => Some("public, max-age=600"),
        2 => Some("max-age=60, s-maxage=600"),
        3 | 4 => {
            let name = if d.cache % 6 == 3 {
                "cdn-cache-control"
            } else {
                "surrogate-control"
            };
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static("max-age=60"),
            );
            None
        }
        _ => Some("private, max-age=60"),
    };
    if let Some(cache) = cache {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static(cache));
    }
    if d.expires {
        headers.insert(
            EXPIRES,
            HeaderValue::from_static("Thu, 01 Jan 2099 00:00:00 GMT"),
        );
    }
    if d.other_cookie {
        headers.append(SET_COOKIE, HeaderValue::from_static("theme=dark; Path=/"));
    }
    match d.vary % 3 {
        1 => {
            headers.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
        }
        2 => {
            headers.insert(VARY, HeaderValue::from_static("*"));
        }
        _ => {}
    }
}

fn finish(session: &Session, job: &Job, mut response: Response) -> Response {
    decorate(job, &mut response);
    let subject = session.subject().unwrap_or_default();
    let headers = response.headers_mut();
    headers.insert(
        "x-active",
        HeaderValue::from_static(if session.is_active() { "1" } else { "0" }),
    );
    // Subjects may be any text: hex keeps the header valid.
    let hex: String = subject.bytes().map(|b| format!("{b:02x}")).collect();
    headers.insert("x-subject", HeaderValue::from_str(&hex).expect("hex"));
    response
}

// ---------------------------------------------------------------- run

struct Run {
    clock: MockClock,
    manager: SessionManager,
    store: Arc<FlakyStore>,
    app: Router,
    cookie_name: String,
    jars: [Option<String>; CLIENTS],
    /// Every secret issued, in order (bounded).
    history: Vec<String>,
    seen_ids: Vec<SessionId>,
    keys: [[u8; 32]; KEY_VERSIONS as usize],
}

fn key_ring(keys: &[[u8; 32]], current: u32, accepted: &[u32]) -> KeyRing {
    let mut builder = KeyRing::builder().current(current);
    for &v in accepted {
        builder = builder.key(v, keys[(v - 1) as usize]);
    }
    builder.build().expect("a valid key ring")
}

#[derive(Debug)]
struct Outcome {
    status: StatusCode,
    /// Our cookie: `Some(Some(secret))` set, `Some(None)` cleared.
    cookie: Option<Option<String>>,
    active: Option<bool>,
    subject: Option<String>,
}

impl Run {
    fn new(config: SessionConfig) -> Self {
        let clock = MockClock::new(
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(T0_MICROS) * 1000).unwrap(),
        );
        let keys = [[1u8; 32], [2u8; 32], [3u8; 32]];
        let store = Arc::new(FlakyStore {
            inner: MemoryStore::new(),
            mode: AtomicU8::new(OK),
            versions: AtomicU8::new(1),
        });
        let cookie_name = config.cookie().name().to_owned();
        let manager = SessionManager::from_arc(store.clone(), key_ring(&keys, 1, &[1]), config)
            .with_clock(clock.clone());
        let app = Router::new()
            .route("/", any(handler))
            .route("/active", any(active_handler))
            .layer(SessionLayer::new(manager.clone()));
        Self {
            clock,
            manager,
            store,
            app,
            cookie_name,
            jars: Default::default(),
            history: Vec::new(),
            seen_ids: Vec::new(),
            keys,
        }
    }

    fn remember(&mut self, secret: String) {
        if self.history.len() < 64 && !self.history.contains(&secret) {
            self.history.push(secret);
        }
    }

    fn history(&self, n: u8) -> Option<&String> {
        (!self.history.is_empty()).then(|| &self.history[usize::from(n) % self.history.len()])
    }

    fn step(&mut self, step: &Step) {
        match step {
            Step::Request(req) => self.request(req),
            Step::Advance(secs) => self.clock.advance(Duration::from_secs(u64::from(*secs))),
            Step::AdvanceFar(secs) => self
                .clock
                .advance(Duration::from_secs(u64::from(*secs) * 97)),
            Step::Back(secs) => {
                let now = self.clock.now();
                if let Some(t) = now.checked_sub(time::Duration::seconds(i64::from(*secs))) {
                    self.clock.set(t);
                }
            }
            Step::NearEndOfTime(secs) => {
                let t = MAX_MICROS - i64::from(*secs) * 1_000_000;
                self.clock
                    .set(OffsetDateTime::from_unix_timestamp_nanos(i128::from(t) * 1000).unwrap());
            }
            Step::RotateKeys(v) => {
                let current = u32::from(*v) % KEY_VERSIONS + 1;
                self.manager
                    .set_key_ring(key_ring(&self.keys, current, &[1, 2, 3]));
                self.store.versions.store(3, Ordering::Relaxed);
            }
            Step::RetireKeys(v) => {
                let keep = u32::from(*v) % KEY_VERSIONS + 1;
                let current = self.manager.key_ring().current().0;
                let mut accepted = vec![current];
                if keep != current {
                    accepted.push(keep);
                }
                self.store
                    .versions
                    .store(accepted.len() as u8, Ordering::Relaxed);
                self.manager
                    .set_key_ring(key_ring(&self.keys, current, &accepted));
            }
            Step::RevokeAll(subject) => {
                let subject = subject.text("user");
                let _ = runtime().block_on(self.manager.revoke_all_for_subject(&subject, None));
            }
            Step::Purge => {
                runtime()
                    .block_on(self.manager.purge_expired())
                    .expect("purge on a healthy store");
            }
            Step::Plant {
                record,
                slot,
                client,
            } => self.plant(record, *slot, *client),
            Step::CopyJar(from, to) => {
                let from = usize::from(*from) % CLIENTS;
                let to = usize::from(*to) % CLIENTS;
                self.jars[to] = self.jars[from].clone();
            }
        }
    }

    /// Stores an arbitrary (valid) record with a fresh secret's lookup key in
    /// one of its slots, and hands that secret to a client.
    fn plant(&mut self, record: &ArbRecord, slot: u8, client: u8) {
        let mut record = record.record();
        let secret = SessionSecret::generate();
        let keys = self.manager.key_ring();
        let version = keys
            .versions()
            .nth(usize::from(slot / 3) % keys.versions().len())
            .unwrap();
        let lookup_key = keys.lookup_key(version, &secret).unwrap();
        let credential = tower_hmac_session::Credential {
            lookup_key,
            key_version: version,
        };
        match slot % 3 {
            0 => record.current = credential,
            1 => match &mut record.previous {
                Some(previous) => previous.credential = credential,
                None => record.current = credential,
            },
            _ => match &mut record.superseded {
                Some(superseded) => *superseded = credential,
                None => record.current = credential,
            },
        }
        if record.validate().is_err() {
            return;
        }
        if runtime().block_on(self.store.inner.insert(&record)).is_ok() {
            self.seen_ids.push(record.id);
            let encoded = secret.encode();
            self.jars[usize::from(client) % CLIENTS] = Some(encoded.clone());
            self.remember(encoded);
        }
    }

    fn request(&mut self, req: &Req) {
        let client = usize::from(req.client) % CLIENTS;
        let failure = req.failure % 8;
        let failure = if failure < 4 { failure } else { OK };
        let outcome = self.send(client, req, failure, req.lost);
        // A cookie just set resolves at once to a live session of the same
        // subject (a client that follows every Set-Cookie stays signed in).
        let near_end = self.clock.now().year() > 9000;
        if let (true, StatusCode::OK, Some(Some(secret)), false) =
            (req.verify, outcome.status, &outcome.cookie, near_end)
        {
            if req.lost {
                return;
            }
            let check = Req {
                client: req.client,
                method: 0,
                cookies: vec![CookieSource::Jar],
                headers: Vec::new(),
                action: Action::Read,
                decoration: Decoration {
                    cache: 0,
                    expires: false,
                    other_cookie: false,
                    vary: 0,
                },
                lost: false,
                verify: false,
                failure: OK,
            };
            assert_eq!(self.jars[client].as_deref(), Some(secret.as_str()));
            let after = self.send(client, &check, OK, false);
            assert_eq!(after.status, StatusCode::OK);
            assert_eq!(
                after.active,
                Some(true),
                "a cookie just set does not resolve: {outcome:?}"
            );
            // A pre-login session's cookie stays subject-less; otherwise the
            // subject is the one the response was made for.
            if outcome.active == Some(true) {
                assert_eq!(after.subject, outcome.subject, "the subject changed");
            }
        }
    }

    fn send(&mut self, client: usize, req: &Req, failure: u8, lost: bool) -> Outcome {
        let method = match req.method % 7 {
            0 => Method::GET,
            1 => Method::POST,
            2 => Method::HEAD,
            3 => Method::PUT,
            4 => Method::DELETE,
            5 => Method::OPTIONS,
            _ => Method::PATCH,
        };
        let path = if matches!(req.action, Action::Active) {
            "/active"
        } else {
            "/"
        };
        let mut builder = Request::builder().method(method.clone()).uri(path);
        let mut header = Vec::new();
        let mut cookie_headers = Vec::new();
        for source in req.cookies.iter().take(12) {
            let pair = match source {
                CookieSource::Jar => self.jars[client]
                    .as_ref()
                    .map(|s| format!("{}={s}", self.cookie_name)),
                CookieSource::History(n) => self
                    .history(*n)
                    .map(|s| format!("{}={s}", self.cookie_name)),
                CookieSource::OtherJar(n) => self.jars[usize::from(*n) % CLIENTS]
                    .as_ref()
                    .map(|s| format!("{}={s}", self.cookie_name)),
                CookieSource::Fresh(bytes) => Some(format!(
                    "{}={}",
                    self.cookie_name,
                    SessionSecret::from_bytes(*bytes).encode()
                )),
                CookieSource::Garbage(bytes) => {
                    header.extend_from_slice(bytes);
                    None
                }
                CookieSource::OtherName(n) => self.history(*n).map(|s| format!("other={s}")),
                CookieSource::NewHeader => {
                    cookie_headers.push(std::mem::take(&mut header));
                    None
                }
            };
            if let Some(pair) = pair {
                if !header.is_empty() {
                    header.extend_from_slice(b"; ");
                }
                header.extend_from_slice(pair.as_bytes());
            }
        }
        cookie_headers.push(header);
        for value in cookie_headers {
            if let Ok(value) = HeaderValue::from_bytes(&value) {
                builder = builder.header(COOKIE, value);
            }
        }
        for (name, value) in req.headers.iter().take(4) {
            let name = match name % 4 {
                0 => "user-agent",
                1 => "x-forwarded-for",
                2 => "cache-control",
                _ => "cookie",
            };
            if let Ok(value) = HeaderValue::from_bytes(value) {
                builder = builder.header(name, value);
            }
        }
        let job = Arc::new(Job {
            action: req.action.clone(),
            decoration: req.decoration,
            seen_ids: self.seen_ids.clone(),
            learnt: Mutex::new(Vec::new()),
        });
        let request = builder
            .extension(job.clone())
            .body(Body::empty())
            .expect("a request");

        self.store.mode.store(failure, Ordering::Relaxed);
        let app = self.app.clone();
        let (response, body) = runtime().block_on(async move {
            let response = app.oneshot(request).await.expect("infallible");
            let (parts, body) = response.into_parts();
            let body = body.collect().await.expect("a body").to_bytes();
            (parts, body)
        });
        self.store.mode.store(OK, Ordering::Relaxed);
        let learnt = std::mem::take(&mut *job.learnt.lock().unwrap());
        for id in learnt {
            if self.seen_ids.len() < 64 && !self.seen_ids.contains(&id) {
                self.seen_ids.push(id);
            }
        }

        let status = response.status;
        let headers = &response.headers;
        let body_text = String::from_utf8_lossy(&body);
        assert!(
            matches!(status.as_u16(), 200 | 401 | 403 | 500 | 503),
            "unexpected status {status}: {body_text}"
        );
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert_ne!(failure, OK, "503 without a store failure: {body_text}");
            assert!(
                method == Method::HEAD || body_text == "session store unavailable",
                "503 body: {body_text}"
            );
        }
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            assert!(
                method == Method::HEAD
                    || matches!(
                        &*body_text,
                        "invalid session subject"
                            | "invalid session lifetime"
                            | "invalid session data"
                    ),
                "500 body: {body_text}"
            );
        }

        // Our Set-Cookie.
        let prefix = format!("{}=", self.cookie_name);
        let ours: Vec<&str> = headers
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().expect("an ASCII Set-Cookie"))
            .filter(|v| v.starts_with(&prefix))
            .collect();
        assert!(ours.len() <= 1, "two session cookies: {ours:?}");
        let cookie = ours.first().map(|v| {
            let value = v[prefix.len()..].split(';').next().unwrap();
            if value.is_empty() {
                assert!(v.contains("Max-Age=0"), "a clear without Max-Age=0: {v}");
                None
            } else {
                assert!(
                    SessionSecret::parse(value).is_some(),
                    "a malformed secret set: {v}"
                );
                Some(value.to_owned())
            }
        });
        if cookie.is_some() {
            let cache: Vec<_> = headers.get_all(CACHE_CONTROL).iter().collect();
            assert_eq!(
                cache,
                [HeaderValue::from_static("no-store")],
                "Set-Cookie without no-store"
            );
            assert!(!headers.contains_key(EXPIRES));
            assert!(!headers.contains_key("cdn-cache-control"));
            assert!(!headers.contains_key("surrogate-control"));
            assert!(
                headers
                    .get_all(SET_COOKIE)
                    .iter()
                    .filter(|v| v.as_bytes().starts_with(prefix.as_bytes()))
                    .all(HeaderValue::is_sensitive),
                "the session cookie is not marked sensitive"
            );
        }
        if req.decoration.other_cookie && status == StatusCode::OK {
            assert!(
                headers
                    .get_all(SET_COOKIE)
                    .iter()
                    .any(|v| v == "theme=dark; Path=/"),
                "the handler's own cookie was dropped"
            );
        }
        if req.action.read_only() && req.decoration.shared_cacheable() && status == StatusCode::OK {
            assert!(
                !matches!(cookie, Some(Some(_))),
                "a secret on a shared-cacheable response to a read-only request"
            );
        }
        if status == StatusCode::SERVICE_UNAVAILABLE && !req.action.stages_cookie() {
            assert!(cookie.is_none(), "a cookie change on a 503");
        }
        let vary: Vec<String> = headers
            .get_all(VARY)
            .iter()
            .map(|v| v.to_str().unwrap().to_ascii_lowercase())
            .collect();
        assert!(
            vary.iter()
                .any(|v| v.split(',').any(|t| matches!(t.trim(), "cookie" | "*"))),
            "no Vary: Cookie ({status}, {vary:?})"
        );

        if let Some(Some(secret)) = &cookie {
            self.remember(secret.clone());
        }
        // No secret anywhere but in our Set-Cookie.
        for secret in &self.history {
            assert!(!body_text.contains(secret.as_str()), "a secret in the body");
            for (name, value) in headers {
                if name != SET_COOKIE {
                    assert!(
                        !value
                            .as_bytes()
                            .windows(secret.len())
                            .any(|w| w == secret.as_bytes()),
                        "a secret in {name}"
                    );
                }
            }
        }

        if let Some(change) = &cookie {
            if !lost {
                self.jars[client] = change.clone();
            }
        }
        let subject = headers
            .get("x-subject")
            .map(|v| v.to_str().unwrap().to_owned());
        let active = headers.get("x-active").map(|v| v == "1");
        Outcome {
            status,
            cookie,
            active,
            subject,
        }
    }
}

fuzz_target!(|input: Input| {
    let mut run = Run::new(input.config.config());
    for step in input.steps.iter().take(48) {
        run.step(step);
    }
});
