//! [`SessionManager`]: the store, the key ring and the config, and every
//! operation an application or an admin performs outside a request.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum_core::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};
use time::{OffsetDateTime, PrimitiveDateTime};
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

use crate::clock::{Clock, SystemClock};
use crate::config::SessionConfig;
use crate::keys::{KeyRing, KeyVersion};
use crate::lifecycle;
use crate::record::{
    ActiveSessionRecord, Data, Revocation, RevokeOutcome, SessionId, SessionRecord, VersionCount,
    validate_data, validate_subject,
};
use crate::secret::SessionSecret;
use crate::store::{SessionStore, StoreError};

/// Why a session operation failed.
///
/// As a response (`IntoResponse`) it names the kind of failure only
/// ("session store unavailable"): never an id, an operation or a driver's
/// message. Those go to the log, with the whole source chain.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The store failed; nothing was changed by this call.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The operation needs an active session and the request has none.
    #[error("no active session")]
    NotLoggedIn,
    /// The session ended (logged out, revoked or expired) while the request
    /// ran, so the write was refused: the session is gone, the store is fine.
    #[error("the session ended while the request ran")]
    SessionEnded,
    /// So many other requests changed the session at the same moment that
    /// this write lost every compare-and-swap; nothing was written. Retry.
    #[error("the session was changed by too many concurrent requests")]
    Busy,
    /// The action needs a recent proof of identity; see
    /// [`Session::require_authenticated_within`](crate::Session::require_authenticated_within).
    #[error("the last authentication is not recent enough")]
    ReauthenticationRequired,
    /// The subject is empty, too long, or has control characters.
    #[error("invalid subject: {0}")]
    InvalidSubject(&'static str),
    /// A login's lifetimes contradict each other.
    #[error("invalid session lifetime: {0}")]
    InvalidLifetime(&'static str),
    /// The session data is too large, too deeply nested, or holds a NUL character.
    #[error("invalid session data: {0}")]
    InvalidData(&'static str),
    /// A data value could not be converted to or from JSON.
    #[error("session data value `{key}` could not be converted")]
    Serde {
        /// The data key.
        key: String,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
}

impl SessionError {
    /// The response status: 503 for a store failure, 401 without a session
    /// (or when it ended meanwhile), 500 for what the application asked wrong.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Store(_) | Self::Busy => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotLoggedIn | Self::SessionEnded => StatusCode::UNAUTHORIZED,
            Self::ReauthenticationRequired => StatusCode::FORBIDDEN,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The response body: the kind of failure, nothing more.
    pub fn body_text(&self) -> &'static str {
        match self {
            Self::Store(_) => "session store unavailable",
            Self::NotLoggedIn => "not signed in",
            Self::SessionEnded => "session ended",
            Self::Busy => "session busy",
            Self::ReauthenticationRequired => "reauthentication required",
            Self::InvalidSubject(_) => "invalid session subject",
            Self::InvalidLifetime(_) => "invalid session lifetime",
            Self::InvalidData(_) | Self::Serde { .. } => "invalid session data",
        }
    }
}

impl IntoResponse for SessionError {
    fn into_response(self) -> Response {
        tracing::warn!(error = %ErrorChain(&self), "session operation failed");
        let mut response = (self.status(), self.body_text()).into_response();
        if matches!(self, Self::Store(_) | Self::Busy) {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// Displays an error with its whole source chain (`a: b: c`), for logs:
/// `%error` alone shows only the outermost message.
pub(crate) struct ErrorChain<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}

/// A session created outside a request by [`SessionManager::create_session`].
#[derive(Debug)]
pub struct IssuedSession {
    /// The new session.
    pub record: ActiveSessionRecord,
    /// Its secret: put it in the client's cookie (see
    /// [`SessionManager::set_cookie_header`]) and nowhere else.
    pub secret: SessionSecret,
}

/// The store, the key ring and the config: everything an application or an
/// admin does outside a request. Cheap to clone (one `Arc`).
///
/// ```
/// use tower_hmac_session::{KeyRing, MemoryStore, SessionConfig, SessionManager};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let keys = KeyRing::builder().key(1, [7u8; 32]).build().unwrap();
/// let sessions = SessionManager::new(MemoryStore::new(), keys, SessionConfig::default());
///
/// let issued = sessions.create_session("user-42", Default::default()).await.unwrap();
/// let listed = sessions.list_for_subject("user-42").await.unwrap();
/// assert_eq!(listed[0].id, issued.record.id);
///
/// // "Sign out everywhere" from an admin console:
/// assert_eq!(sessions.revoke_all_for_subject("user-42", None).await.unwrap(), 1);
/// assert!(sessions.list_for_subject("user-42").await.unwrap().is_empty());
/// # });
/// ```
#[derive(Clone)]
pub struct SessionManager {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn SessionStore>,
    /// Shared by every manager made from this one (`with_clock` included),
    /// so `set_key_ring` reaches them all.
    keys: Arc<ArcSwap<KeyRing>>,
    config: SessionConfig,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for SessionManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionManager")
            .field("store", &self.inner.store)
            .field("keys", &**self.inner.keys.load())
            .field("config", &self.inner.config)
            .field("clock", &self.inner.clock)
            .finish()
    }
}

/// `at + by`, saturating at the largest representable time.
pub(crate) fn saturating_add(at: OffsetDateTime, by: Duration) -> OffsetDateTime {
    time::Duration::try_from(by)
        .ok()
        .and_then(|by| at.checked_add(by))
        .unwrap_or_else(|| PrimitiveDateTime::MAX.assume_utc())
}

impl SessionManager {
    /// A manager over `store` with `keys` and `config`, on the system clock.
    pub fn new(store: impl SessionStore, keys: KeyRing, config: SessionConfig) -> Self {
        Self::from_parts(Arc::new(store), keys, config, Arc::new(SystemClock))
    }

    /// Like [`new`](Self::new), for a store already behind an `Arc`.
    pub fn from_arc(store: Arc<dyn SessionStore>, keys: KeyRing, config: SessionConfig) -> Self {
        Self::from_parts(store, keys, config, Arc::new(SystemClock))
    }

    fn from_parts(
        store: Arc<dyn SessionStore>,
        keys: KeyRing,
        config: SessionConfig,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                keys: Arc::new(ArcSwap::from_pointee(keys)),
                config,
                clock,
            }),
        }
    }

    /// The same manager reading time from `clock` (a
    /// [`MockClock`](crate::MockClock) in tests). It shares the store and
    /// the key ring with this one: `set_key_ring` on either reaches both.
    pub fn with_clock(self, clock: impl Clock) -> Self {
        Self {
            inner: Arc::new(Inner {
                store: self.inner.store.clone(),
                keys: self.inner.keys.clone(),
                config: self.inner.config.clone(),
                clock: Arc::new(clock),
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.inner.config
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.inner.store
    }

    /// The key ring in force.
    pub fn key_ring(&self) -> Arc<KeyRing> {
        self.inner.keys.load_full()
    }

    /// The key ring in force, borrowed for one request: no reference-count
    /// traffic on the hot path.
    pub(crate) fn keys(&self) -> arc_swap::Guard<Arc<KeyRing>> {
        self.inner.keys.load()
    }

    /// Replaces the key ring while the server runs: every clone of this
    /// manager, and every layer built from one, uses `keys` from the next
    /// request on. Add a key and make it current to rotate without logging
    /// anyone out; remove an old key once
    /// [`count_by_key_version`](Self::count_by_key_version) shows it unused.
    pub fn set_key_ring(&self, keys: KeyRing) {
        let versions = keys
            .versions()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(",");
        tracing::info!(current = %keys.current(), versions = %versions, "session key ring replaced");
        self.inner.keys.store(Arc::new(keys));
    }

    /// The current time from the manager's clock, in UTC, truncated to whole
    /// microseconds (the finest precision every store keeps).
    pub fn now(&self) -> OffsetDateTime {
        let now = self.inner.clock.now().to_offset(time::UtcOffset::UTC);
        now.replace_nanosecond(now.nanosecond() / 1_000 * 1_000)
            .unwrap_or(now)
    }

    /// Runs one store operation under the configured timeout.
    pub(crate) async fn call<T>(
        &self,
        operation: &'static str,
        op: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let Some(timeout) = self.inner.config.store_timeout else {
            return op.await;
        };
        let mut op = std::pin::pin!(op);
        // A store that answers on the first poll (the memory store) needs no
        // timer: arming one costs more than the lookup.
        let first = std::future::poll_fn(|cx| std::task::Poll::Ready(op.as_mut().poll(cx))).await;
        if let std::task::Poll::Ready(result) = first {
            return result;
        }
        // Boxed: the timer is large, and the per-request future that awaits
        // this call should not carry it inline.
        Box::pin(tokio::time::timeout(timeout, op))
            .await
            .unwrap_or(Err(StoreError::Timeout { operation, timeout }))
    }

    /// Builds a new logged-in record and its secret, under the current key
    /// version, with `options`' lifetimes and cookie kind.
    pub(crate) fn new_record(
        &self,
        subject: String,
        data: Data,
        now: OffsetDateTime,
        options: &crate::LoginOptions,
    ) -> Result<(SessionRecord, SessionSecret), SessionError> {
        validate_subject(&subject).map_err(SessionError::InvalidSubject)?;
        validate_data(&data).map_err(SessionError::InvalidData)?;
        let (idle_timeout, absolute_lifetime) = options
            .lifetimes(&self.inner.config)
            .map_err(SessionError::InvalidLifetime)?;
        let secret = SessionSecret::generate();
        let mut record = self.blank_record(&secret, now, idle_timeout, absolute_lifetime);
        record.subject = Some(subject);
        record.authenticated_at = Some(now);
        record.persistent = options.remember_me;
        record.access_expires_at =
            lifecycle::access_expiry(&self.inner.config, now, record.absolute_expires_at);
        record.data = data;
        Ok((record, secret))
    }

    /// A session before login: no subject, the pre-login lifetimes, a
    /// browser-session cookie, never rotated (its access expiry is its
    /// absolute one).
    pub(crate) fn new_pre_login_record(
        &self,
        now: OffsetDateTime,
    ) -> (SessionRecord, SessionSecret) {
        let config = &self.inner.config;
        let secret = SessionSecret::generate();
        let record = self.blank_record(
            &secret,
            now,
            whole_seconds(config.pre_login_idle_timeout),
            config.pre_login_absolute_lifetime,
        );
        (record, secret)
    }

    fn blank_record(
        &self,
        secret: &SessionSecret,
        now: OffsetDateTime,
        idle_timeout: Duration,
        absolute_lifetime: Duration,
    ) -> SessionRecord {
        let absolute_expires_at = saturating_add(now, absolute_lifetime);
        SessionRecord {
            id: SessionId::generate(),
            generation: 0,
            subject: None,
            created_at: now,
            authenticated_at: None,
            last_seen_at: now,
            expires_at: saturating_add(now, idle_timeout).min(absolute_expires_at),
            absolute_expires_at,
            idle_timeout,
            persistent: false,
            access_expires_at: absolute_expires_at,
            current: self.keys().current_credential(secret),
            previous: None,
            superseded: None,
            revoked: None,
            user_agent: None,
            client_ip: None,
            data: Data::new(),
        }
    }

    /// Creates a session for `subject` outside a request (a login over
    /// another transport, a test, an impersonation tool). Inside a handler,
    /// use [`Session::login`](crate::Session::login), which also sets the
    /// cookie.
    ///
    /// # Errors
    ///
    /// An invalid subject or data, or a store failure.
    pub async fn create_session(
        &self,
        subject: impl Into<String>,
        data: Data,
    ) -> Result<IssuedSession, SessionError> {
        let now = self.now();
        let options = crate::LoginOptions::default();
        let (record, secret) = self.new_record(subject.into(), data, now, &options)?;
        self.insert_new(&record, None, now).await?;
        tracing::info!(session.id = %record.id, "session created");
        Ok(IssuedSession {
            record: record.to_active(record.current.key_version),
            secret,
        })
    }

    /// Inserts a new record, applying `max_sessions_per_subject` in the same
    /// store operation; `replaces` is the session a login ends itself.
    pub(crate) async fn insert_new(
        &self,
        record: &SessionRecord,
        replaces: Option<SessionId>,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let store = self.store();
        match (self.inner.config.max_sessions_per_subject, &record.subject) {
            (Some(max_sessions), Some(_)) => {
                let cap = crate::store::SubjectCap {
                    max_sessions,
                    except: replaces,
                    revocation: Revocation::new(crate::RevocationReason::SessionLimit),
                };
                let evicted = self
                    .call("insert_capped", store.insert_capped(record, now, &cap))
                    .await?;
                for id in evicted {
                    tracing::info!(session.id = %id, "session ended: the subject reached max_sessions_per_subject");
                }
                Ok(())
            }
            _ => self.call("insert", store.insert(record)).await,
        }
    }

    /// Writes a handler-requested change to `record`: `change` builds the
    /// next record from the one stored (a [`lifecycle::successor`]); the
    /// write is a compare-and-swap at the time it happens. When another
    /// request changed the record meanwhile, the record is read again and
    /// `change` applied to it, so concurrent changes compose instead of
    /// overwriting each other.
    ///
    /// # Errors
    ///
    /// [`SessionError::SessionEnded`] when the session is no longer active
    /// at the write's time; a store failure; whatever `change` returns.
    pub(crate) async fn update(
        &self,
        record: Arc<SessionRecord>,
        mut change: impl FnMut(&SessionRecord, OffsetDateTime) -> Result<SessionRecord, SessionError>,
    ) -> Result<Arc<SessionRecord>, SessionError> {
        /// Each lost race means another write landed; far more than
        /// concurrent requests on one session ever make.
        const ATTEMPTS: usize = 64;
        let mut current = record;
        for _ in 0..ATTEMPTS {
            // The clock is read for each attempt: the store checks the
            // session is active at the time of the write, not of the request.
            let now = self.now();
            if !current.is_active(now) {
                return Err(SessionError::SessionEnded);
            }
            let next = change(&current, now)?;
            let store = self.store();
            let applied = match self
                .call("replace", store.replace(&current, &next, now))
                .await
            {
                Ok(applied) => applied,
                Err(error) => {
                    // A write can apply and still fail to answer (a timeout,
                    // a dropped connection). Read it back: if the store holds
                    // exactly what we wrote, it applied, and the caller must
                    // not act as if it had not (a renewed secret that is
                    // never sent would log the user out).
                    let stored = self
                        .call("get_active", store.get_active(&current.id, self.now()))
                        .await;
                    match stored {
                        Ok(Some(stored)) if *stored == next => {
                            tracing::info!(session.id = %next.id, error = %ErrorChain(&error), "a session write failed to answer but applied");
                            return Ok(stored);
                        }
                        _ => return Err(error.into()),
                    }
                }
            };
            if applied {
                return Ok(Arc::new(next));
            }
            // Read at a fresh clock: a store may have checked the write at a
            // later time than `now` (PostgreSQL runs a deadlock victim
            // again), and a session that ended meanwhile must read as ended.
            let stored = self
                .call("get_active", store.get_active(&current.id, self.now()))
                .await?
                .ok_or(SessionError::SessionEnded)?;
            if stored == current {
                // Not a lost race: the store refuses a write from the very
                // record it returns, still active (a damaged row whose
                // columns disagree with its record, say). Trying again would
                // fail the same way, so this is corruption, reported at once.
                return Err(StoreError::corrupt(
                    Some(current.id),
                    "the store refuses a write from the record it returns",
                )
                .into());
            }
            current = stored;
        }
        Err(SessionError::Busy)
    }

    /// Revokes one session by id.
    ///
    /// # Errors
    ///
    /// A store failure.
    pub async fn revoke(
        &self,
        id: &SessionId,
        revocation: impl Into<Revocation>,
    ) -> Result<RevokeOutcome, StoreError> {
        let revocation = revocation.into();
        revocation.validate().map_err(StoreError::Invalid)?;
        let outcome = self
            .call(
                "revoke",
                self.inner.store.revoke(id, None, self.now(), &revocation),
            )
            .await?;
        tracing::info!(session.id = %id, reason = %revocation.reason, ?outcome, "session revoked");
        Ok(outcome)
    }

    /// Revokes every session of `subject` (reason
    /// [`Admin`](crate::RevocationReason::Admin)) except `except`, atomically.
    /// Returns how many were revoked.
    ///
    /// # Errors
    ///
    /// A store failure.
    pub async fn revoke_all_for_subject(
        &self,
        subject: &str,
        except: Option<&SessionId>,
    ) -> Result<u64, StoreError> {
        self.revoke_all_for_subject_with(
            subject,
            &Revocation::new(crate::RevocationReason::Admin),
            except,
        )
        .await
    }

    /// Like [`revoke_all_for_subject`](Self::revoke_all_for_subject), with
    /// a reason and an actor of your choice.
    ///
    /// # Errors
    ///
    /// A store failure.
    pub async fn revoke_all_for_subject_with(
        &self,
        subject: &str,
        revocation: &Revocation,
        except: Option<&SessionId>,
    ) -> Result<u64, StoreError> {
        revocation.validate().map_err(StoreError::Invalid)?;
        let count = self
            .call(
                "revoke_all_for_subject",
                self.inner
                    .store
                    .revoke_all_for_subject(subject, self.now(), revocation, except),
            )
            .await?;
        tracing::info!(count, reason = %revocation.reason, "sessions of a subject revoked");
        Ok(count)
    }

    /// The active sessions of `subject`, newest first.
    ///
    /// # Errors
    ///
    /// A store failure.
    pub async fn list_for_subject(
        &self,
        subject: &str,
    ) -> Result<Vec<ActiveSessionRecord>, StoreError> {
        self.call(
            "list_for_subject",
            self.inner.store.list_for_subject(subject, self.now()),
        )
        .await
    }

    /// How many live sessions use each key version, split into those seen
    /// within `recent` (their clients are active: each is re-keyed to the
    /// current version on its next request) and dormant ones.
    ///
    /// A dormant session's secret is only ever presented by its own client,
    /// so it cannot be re-keyed ahead of time: removing a version from the
    /// ring ends its dormant sessions. Wait until `recent` is zero (a window
    /// of a day or two is usual), and read `dormant` as the number of
    /// sessions that retiring it now would end.
    ///
    /// # Errors
    ///
    /// A store failure.
    pub async fn count_by_key_version(
        &self,
        recent: Duration,
    ) -> Result<BTreeMap<KeyVersion, VersionCount>, StoreError> {
        let now = self.now();
        let seen_since = now
            .checked_sub(time::Duration::try_from(recent).unwrap_or(time::Duration::MAX))
            .unwrap_or(PrimitiveDateTime::MIN.assume_utc());
        self.call(
            "count_by_key_version",
            self.inner.store.count_by_key_version(now, seen_since),
        )
        .await
    }

    /// Deletes revoked and expired records. Returns how many.
    ///
    /// # Errors
    ///
    /// A store failure.
    pub async fn purge_expired(&self) -> Result<u64, StoreError> {
        let purged = self
            .call("purge_expired", self.inner.store.purge_expired(self.now()))
            .await?;
        tracing::debug!(purged, "expired sessions purged");
        Ok(purged)
    }

    /// Spawns a tokio task that purges expired records every `period`
    /// (failures are logged, and the task carries on; a zero period is
    /// taken as one second). Abort the returned handle to stop it.
    pub fn spawn_purge_task(&self, period: Duration) -> JoinHandle<()> {
        let manager = self.clone();
        // tokio's interval panics on a zero period.
        let period = if period.is_zero() {
            Duration::from_secs(1)
        } else {
            period
        };
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                if let Err(error) = manager.purge_expired().await {
                    tracing::warn!(error = %ErrorChain(&error), "purging expired sessions failed");
                }
            }
        })
    }

    /// The `Set-Cookie` value that gives a client `secret` for `max_age`, or
    /// for the browser session when `None`. Marked sensitive: never indexed
    /// by HTTP/2 header compression, redacted by `Debug`.
    pub fn set_cookie_header(
        &self,
        secret: &SessionSecret,
        max_age: Option<Duration>,
    ) -> HeaderValue {
        let value = Zeroizing::new(secret.encode());
        let max_age = max_age.map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        self.cookie_header(self.inner.config.cookie.set_cookie(&value, max_age))
    }

    /// The `Set-Cookie` value that gives a client `secret` for `record`:
    /// `Max-Age` to the absolute expiry for a persistent session.
    pub(crate) fn set_cookie_for(
        &self,
        secret: &SessionSecret,
        record: &SessionRecord,
        now: OffsetDateTime,
    ) -> HeaderValue {
        self.set_cookie_header(secret, lifecycle::cookie_max_age(record, now))
    }

    /// The `Set-Cookie` value that removes the session cookie.
    pub fn clear_cookie_header(&self) -> HeaderValue {
        self.cookie_header(self.inner.config.cookie.removal())
    }

    fn cookie_header(&self, rendered: String) -> HeaderValue {
        // Config validation keeps names, paths and domains to visible ASCII
        // and secrets are base64url, so the value is always valid; the
        // header takes the buffer without a copy. It holds the secret and
        // leaves with the response: there is no copy of ours to wipe.
        let mut value = HeaderValue::from_maybe_shared(bytes::Bytes::from(rendered))
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        value.set_sensitive(true);
        value
    }

    /// The response for a store failure: the configured one, or a plain 503.
    pub(crate) fn store_error_response(&self, error: &StoreError) -> Response {
        match &self.inner.config.store_error_response {
            Some(make) => make(error),
            // The kind of failure only: the details are in the log.
            None => (
                StatusCode::SERVICE_UNAVAILABLE,
                [(http::header::RETRY_AFTER, "1")],
                "session store unavailable",
            )
                .into_response(),
        }
    }
}

/// `d` truncated to whole seconds, at least one: how records keep an idle timeout.
pub(crate) fn whole_seconds(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs().max(1))
}
