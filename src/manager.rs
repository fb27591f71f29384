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
use crate::record::{
    ActiveSessionRecord, Attributes, Credential, Revocation, RevokeOutcome, SessionId,
    SessionRecord, validate_attributes, validate_subject,
};
use crate::secret::SessionSecret;
use crate::store::{SessionStore, StoreError};

/// Why a session operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The store failed; nothing was changed by this call.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The operation needs an active session and the request has none.
    #[error("no active session")]
    NotLoggedIn,
    /// The subject is empty, too long, or has control characters.
    #[error("invalid subject: {0}")]
    InvalidSubject(&'static str),
    /// The attributes are too large or not serializable.
    #[error("invalid attributes: {0}")]
    InvalidAttributes(&'static str),
    /// An attribute value could not be converted to or from JSON.
    #[error("attribute `{key}` could not be converted")]
    Serde {
        /// The attribute's key.
        key: String,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
}

impl IntoResponse for SessionError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotLoggedIn => StatusCode::UNAUTHORIZED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        tracing::warn!(error = %self, "session operation failed");
        (status, self.to_string()).into_response()
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
    keys: ArcSwap<KeyRing>,
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
                keys: ArcSwap::from_pointee(keys),
                config,
                clock,
            }),
        }
    }

    /// The same manager reading time from `clock` (a
    /// [`MockClock`](crate::MockClock) in tests).
    pub fn with_clock(self, clock: impl Clock) -> Self {
        Self::from_parts(
            self.inner.store.clone(),
            (**self.inner.keys.load()).clone(),
            self.inner.config.clone(),
            Arc::new(clock),
        )
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
        tracing::info!(current = %keys.current(), versions = ?keys.versions().collect::<Vec<_>>(), "session key ring replaced");
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

    /// The idle expiry of a session used at `now`: `now + idle_timeout`,
    /// never past `absolute_expires_at`.
    pub(crate) fn sliding_expiry(
        &self,
        now: OffsetDateTime,
        absolute_expires_at: OffsetDateTime,
    ) -> OffsetDateTime {
        saturating_add(now, self.inner.config.idle_timeout).min(absolute_expires_at)
    }

    /// When a secret issued at `now` is due for rotation.
    pub(crate) fn access_expiry(
        &self,
        now: OffsetDateTime,
        absolute_expires_at: OffsetDateTime,
    ) -> OffsetDateTime {
        match self.inner.config.access_ttl {
            Some(ttl) => saturating_add(now, ttl).min(absolute_expires_at),
            None => absolute_expires_at,
        }
    }

    /// Builds a new record and its secret, under the current key version.
    pub(crate) fn new_record(
        &self,
        subject: String,
        attributes: Attributes,
        now: OffsetDateTime,
    ) -> Result<(SessionRecord, SessionSecret), SessionError> {
        validate_subject(&subject).map_err(SessionError::InvalidSubject)?;
        validate_attributes(&attributes).map_err(SessionError::InvalidAttributes)?;
        let secret = SessionSecret::generate();
        let candidate = self.keys().current_candidate(&secret);
        let absolute_expires_at = saturating_add(now, self.inner.config.absolute_lifetime);
        let record = SessionRecord {
            id: SessionId::generate(),
            subject,
            created_at: now,
            last_seen_at: now,
            expires_at: self.sliding_expiry(now, absolute_expires_at),
            absolute_expires_at,
            access_expires_at: self.access_expiry(now, absolute_expires_at),
            current: Credential {
                lookup_key: candidate.lookup_key,
                key_version: candidate.key_version,
            },
            previous: None,
            revoked: None,
            attributes,
        };
        Ok((record, secret))
    }

    /// Creates a session for `subject` outside a request (a login over
    /// another transport, a test, an impersonation tool). Inside a handler,
    /// use [`Session::login`](crate::Session::login), which also sets the
    /// cookie.
    ///
    /// # Errors
    ///
    /// An invalid subject or attributes, or a store failure.
    pub async fn create_session(
        &self,
        subject: impl Into<String>,
        attributes: Attributes,
    ) -> Result<IssuedSession, SessionError> {
        let now = self.now();
        let (record, secret) = self.new_record(subject.into(), attributes, now)?;
        self.call("insert", self.inner.store.insert(&record))
            .await?;
        tracing::info!(session.id = %record.id, "session created");
        Ok(IssuedSession {
            record: record.to_active(record.current.key_version),
            secret,
        })
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
        let outcome = self
            .call(
                "revoke",
                self.inner.store.revoke(id, self.now(), &revocation),
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

    /// How many live records use each key version. A version whose count is
    /// zero (or whose sessions have all passed their absolute lifetime) can
    /// be removed from the ring.
    ///
    /// # Errors
    ///
    /// A store failure.
    pub async fn count_by_key_version(&self) -> Result<BTreeMap<KeyVersion, u64>, StoreError> {
        self.call(
            "count_by_key_version",
            self.inner.store.count_by_key_version(self.now()),
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
    /// (failures are logged, and the task carries on). Abort the returned
    /// handle to stop it.
    pub fn spawn_purge_task(&self, period: Duration) -> JoinHandle<()> {
        let manager = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                if let Err(error) = manager.purge_expired().await {
                    tracing::warn!(%error, "purging expired sessions failed");
                }
            }
        })
    }

    /// The `Set-Cookie` value that gives a client `secret`, expiring with
    /// the session at `expires_at`.
    pub fn set_cookie_header(
        &self,
        secret: &SessionSecret,
        expires_at: OffsetDateTime,
    ) -> HeaderValue {
        self.set_cookie_header_at(secret, expires_at, self.now())
    }

    /// [`set_cookie_header`](Self::set_cookie_header) with `Max-Age` counted
    /// from the request's time `now`.
    pub(crate) fn set_cookie_header_at(
        &self,
        secret: &SessionSecret,
        expires_at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> HeaderValue {
        let max_age = (expires_at - now).max(time::Duration::ZERO);
        let value = Zeroizing::new(secret.encode());
        self.cookie_header(&value, max_age)
    }

    /// The `Set-Cookie` value that removes the session cookie.
    pub fn clear_cookie_header(&self) -> HeaderValue {
        self.cookie_header("", time::Duration::ZERO)
    }

    fn cookie_header(&self, value: &str, max_age: time::Duration) -> HeaderValue {
        let cookie = &self.inner.config.cookie;
        let rendered = if value.is_empty() {
            cookie.removal()
        } else {
            cookie.set_cookie(value, max_age.whole_seconds())
        };
        // Config validation keeps names, paths and domains to visible ASCII
        // and secrets are base64url, so the value is always valid; the
        // header takes the buffer without a copy. It holds the secret and
        // leaves with the response: there is no copy of ours to wipe.
        HeaderValue::from_maybe_shared(bytes::Bytes::from(rendered))
            .unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// The response for a store failure: the configured one, or a plain 503.
    pub(crate) fn store_error_response(&self, error: &StoreError) -> Response {
        match &self.inner.config.store_error_response {
            Some(make) => make(error),
            None => (
                StatusCode::SERVICE_UNAVAILABLE,
                [(http::header::RETRY_AFTER, "1")],
                "session store unavailable",
            )
                .into_response(),
        }
    }
}
