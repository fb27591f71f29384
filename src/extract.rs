//! The axum extractors [`Session`] and [`ActiveSession`], and their rejections.

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::StatusCode;
use http::request::Parts;
use serde::Serialize;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;

use crate::keys::KeyVersion;
use crate::lifecycle;
use crate::login::{CarryData, LoginOptions, RequestInfo};
use crate::manager::{SessionError, SessionManager};
use crate::record::{
    ActiveSessionRecord, Data, DataPatch, Revocation, RevocationReason, RevokeOutcome, SessionId,
    SessionRecord, Slot, validate_data,
};
use crate::secret::SessionSecret;

/// The request's session handle, present under [`SessionLayer`](crate::SessionLayer)
/// whether or not the request carries a live session.
///
/// Operations that change the store (`login`, `logout`, `renew`, …) write at
/// once and return `Result`; they only *stage* the cookie change, which the
/// layer applies to the response. Data changes (`insert`, `remove`) are
/// written once, on the way out, as a patch merged into whatever the store
/// holds then (two requests changing different keys both persist); if that
/// write fails the response becomes an error.
///
/// ```
/// use axum::{Json, response::IntoResponse};
/// use tower_hmac_session::{Session, SessionError};
///
/// async fn login(session: Session) -> Result<impl IntoResponse, SessionError> {
///     // … check the password …
///     session.login("user-42").await?;
///     session.insert("theme", "dark")?;
///     Ok("welcome")
/// }
///
/// async fn theme(session: Session) -> Result<Json<Option<String>>, SessionError> {
///     Ok(Json(session.get("theme")?))
/// }
/// # let _ = axum::Router::<()>::new()
/// #     .route("/login", axum::routing::post(login))
/// #     .route("/theme", axum::routing::get(theme));
/// ```
#[derive(Clone, Debug)]
pub struct Session {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    manager: SessionManager,
    /// The request's time: read when the request arrived with a cookie, or
    /// on first use for an anonymous one (most never need it).
    now: OnceLock<OffsetDateTime>,
    /// Whether an extractor handed the session to a handler: the response
    /// then depends on the cookie (`Vary: Cookie`).
    extracted: AtomicBool,
    /// The request's device metadata, for a login.
    request: RequestInfo,
    state: Mutex<State>,
}

/// What the request found and what the handler decided. Shared between the
/// handler's [`Session`] clones and the layer.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) current: Option<Current>,
    pub(crate) cookie: CookieChange,
    /// Data changes not yet written.
    pub(crate) patch: DataPatch,
    /// Whether a cookie value of the request matched a session (even one
    /// not served: reuse, two sessions). Such a request never creates a
    /// session before login.
    pub(crate) resolved_any: bool,
}

/// The live session of the request.
#[derive(Debug)]
pub(crate) struct Current {
    /// The record as the store holds it (shared with a memory store's copy).
    pub(crate) record: Arc<SessionRecord>,
    pub(crate) slot: Slot,
    pub(crate) key_version: KeyVersion,
    /// Which cookie value matched (its secret is kept for re-keying).
    pub(crate) value_index: u8,
    /// Whether the layer maintains it on the way out (confirm, rotate,
    /// re-key, slide): true for a session the request's cookie resolved,
    /// false for one a handler just created or renewed.
    pub(crate) maintain: bool,
    /// The secret of a session before login that a handler's `insert`
    /// started: the record is inserted, and this cookie set, on the way
    /// out. `None` for a stored record.
    pub(crate) pending: Option<SessionSecret>,
}

impl Current {
    fn stored(record: Arc<SessionRecord>) -> Self {
        Self {
            key_version: record.current.key_version,
            record,
            slot: Slot::Current,
            value_index: 0,
            maintain: false,
            pending: None,
        }
    }
}

/// The cookie change the handler staged.
#[derive(Debug, Default)]
pub(crate) enum CookieChange {
    /// No change (the layer may still rotate).
    #[default]
    Keep,
    /// Give the client a new secret for this record.
    Set {
        secret: SessionSecret,
        max_age: Option<std::time::Duration>,
    },
    /// Remove the cookie.
    Clear,
}

impl Session {
    pub(crate) fn new(
        manager: SessionManager,
        now: OffsetDateTime,
        request: RequestInfo,
        state: State,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                manager,
                now: OnceLock::from(now),
                extracted: AtomicBool::new(false),
                request,
                state: Mutex::new(state),
            }),
        }
    }

    /// The handle of a request without a session cookie.
    pub(crate) fn anonymous(manager: SessionManager, request: RequestInfo) -> Self {
        Self {
            shared: Arc::new(Shared {
                manager,
                now: OnceLock::new(),
                extracted: AtomicBool::new(false),
                request,
                state: Mutex::new(State::default()),
            }),
        }
    }

    // No code panics while holding the lock, so the data behind a poisoned
    // lock is consistent.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The time the layer read for this request.
    pub(crate) fn now(&self) -> OffsetDateTime {
        *self.shared.now.get_or_init(|| self.shared.manager.now())
    }

    /// Whether an extractor handed this session to a handler.
    pub(crate) fn was_extracted(&self) -> bool {
        self.shared.extracted.load(Ordering::Relaxed)
    }

    fn mark_extracted(&self) {
        self.shared.extracted.store(true, Ordering::Relaxed);
    }

    /// The manager behind the layer, for admin operations.
    pub fn manager(&self) -> &SessionManager {
        &self.shared.manager
    }

    /// The live session, if the request has one, with the data as this
    /// request changed it. A session before login that this request's
    /// `insert` started counts (it is stored when the response leaves).
    pub fn active(&self) -> Option<ActiveSessionRecord> {
        let state = self.lock();
        let current = state.current.as_ref()?;
        let mut active = current.record.to_active(current.key_version);
        state.patch.apply(&mut active.data);
        Some(active)
    }

    /// Whether the request has a live session.
    pub fn is_active(&self) -> bool {
        self.lock().current.is_some()
    }

    /// The live session's id.
    pub fn id(&self) -> Option<SessionId> {
        self.lock().current.as_ref().map(|c| c.record.id)
    }

    /// The live session's subject (`None` without a session, or before login).
    pub fn subject(&self) -> Option<String> {
        self.lock()
            .current
            .as_ref()
            .and_then(|c| c.record.subject.clone())
    }

    /// The stored, logged-in record of the request.
    fn logged_in(&self) -> Result<Arc<SessionRecord>, SessionError> {
        self.lock()
            .current
            .as_ref()
            .filter(|c| c.pending.is_none() && c.record.subject.is_some())
            .map(|c| c.record.clone())
            .ok_or(SessionError::NotLoggedIn)
    }

    /// The id of the request's stored session, if any.
    fn stored_id(&self) -> Option<SessionId> {
        self.lock()
            .current
            .as_ref()
            .filter(|c| c.pending.is_none())
            .map(|c| c.record.id)
    }

    /// When the subject last proved who they are; `None` without a
    /// logged-in session.
    pub fn authenticated_at(&self) -> Option<OffsetDateTime> {
        self.lock().current.as_ref()?.record.authenticated_at
    }

    /// Whether the subject proved who they are (login or
    /// [`reauthenticate`](Self::reauthenticate)) within `window`: ask before
    /// a sensitive action.
    pub fn authenticated_within(&self, window: std::time::Duration) -> bool {
        let Some(at) = self.authenticated_at() else {
            return false;
        };
        crate::manager::saturating_add(at, window) > self.now()
    }

    /// [`authenticated_within`](Self::authenticated_within) as a guard, in
    /// one line of a handler:
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_hmac_session::{Session, SessionError};
    ///
    /// async fn change_password(session: Session) -> Result<&'static str, SessionError> {
    ///     session.require_authenticated_within(Duration::from_secs(300))?;
    ///     // … change it …
    ///     Ok("changed")
    /// }
    /// # let _ = axum::Router::<()>::new().route("/password", axum::routing::post(change_password));
    /// ```
    ///
    /// # Errors
    ///
    /// [`SessionError::NotLoggedIn`] without a logged-in session;
    /// [`SessionError::ReauthenticationRequired`] (403) when the last
    /// authentication is older than `window`.
    pub fn require_authenticated_within(
        &self,
        window: std::time::Duration,
    ) -> Result<(), SessionError> {
        self.logged_in()?;
        match self.authenticated_within(window) {
            true => Ok(()),
            false => Err(SessionError::ReauthenticationRequired),
        }
    }

    /// Logs `subject` in with the default [`LoginOptions`]: creates a new
    /// session with a new secret (a persistent cookie), ends the request's
    /// current session if any (reason `replaced_by_login`, so a planted
    /// cookie cannot fixate the session), carries a pre-login session's data
    /// over, and stages the new cookie.
    ///
    /// # Errors
    ///
    /// An invalid subject, or a store failure (nothing is staged then).
    pub async fn login(
        &self,
        subject: impl Into<String>,
    ) -> Result<ActiveSessionRecord, SessionError> {
        self.login_with(subject, LoginOptions::default()).await
    }

    /// Logs `subject` in with `options`: remember-me or a browser-session
    /// cookie, this login's lifetimes, initial data, which pre-login data to
    /// carry over, device metadata (by default the request's `User-Agent`
    /// and the address the config finds).
    ///
    /// ```
    /// use tower_hmac_session::{LoginOptions, Session, SessionError};
    ///
    /// async fn login(session: Session) -> Result<&'static str, SessionError> {
    ///     // … check the password; the form's "remember me" box was not ticked …
    ///     session.login_with("user-42", LoginOptions::new().remember_me(false)).await?;
    ///     Ok("welcome")
    /// }
    /// # let _ = axum::Router::<()>::new().route("/login", axum::routing::post(login));
    /// ```
    ///
    /// # Errors
    ///
    /// An invalid subject, lifetimes or data (over 4 KiB of JSON, nested
    /// over 64 levels, or a NUL character), or a store failure (nothing is
    /// staged then).
    pub async fn login_with(
        &self,
        subject: impl Into<String>,
        options: LoginOptions,
    ) -> Result<ActiveSessionRecord, SessionError> {
        let manager = self.manager();
        let now = self.now();
        let (old, carried) = {
            let state = self.lock();
            match &state.current {
                // A session before login hands its data on; a logged-in one
                // (another user, or the same one again) does not.
                Some(current) if current.record.subject.is_none() => {
                    let mut data = current.record.data.clone();
                    state.patch.apply(&mut data);
                    (current.pending.is_none().then_some(current.record.id), data)
                }
                Some(current) => (
                    current.pending.is_none().then_some(current.record.id),
                    Data::new(),
                ),
                None => (None, Data::new()),
            }
        };
        let mut data = match &options.carry {
            CarryData::All => carried,
            CarryData::Keys(keys) => carried
                .into_iter()
                .filter(|(k, _)| keys.contains(k))
                .collect(),
            CarryData::None => Data::new(),
        };
        data.extend(options.data.clone());
        let (mut record, secret) = manager.new_record(subject.into(), data, now, &options)?;
        record.user_agent = options
            .user_agent
            .as_deref()
            .map(crate::login::clean_user_agent)
            .or_else(|| self.shared.request.user_agent());
        record.client_ip = options.client_ip.or(self.shared.request.client_ip);
        // Insert first, then end the old session: if either fails, the old
        // session is still there (nothing lost). A new record whose login
        // failed is unreachable (its secret was never sent) and expires.
        manager.insert_new(&record, old, now).await?;
        tracing::info!(session.id = %record.id, "session created by login");
        if let Some(old) = old {
            let revocation = Revocation::new(RevocationReason::ReplacedByLogin);
            let revoked = manager
                .call(
                    "revoke",
                    manager.store().revoke(&old, None, now, &revocation),
                )
                .await;
            match revoked {
                Ok(_) => tracing::info!(session.id = %old, "session replaced by a new login"),
                // The login stands: the new session is stored and its secret
                // is fresh, so the old cookie cannot reach it. Failing here
                // would leave an orphan counted against the cap, and a retry
                // would evict another device.
                Err(error) => tracing::error!(
                    session.id = %old,
                    error = %crate::manager::ErrorChain(&error),
                    "the session a login replaced could not be revoked; it ends at its expiry"
                ),
            }
        }
        let active = record.to_active(record.current.key_version);
        let mut state = self.lock();
        state.cookie = CookieChange::Set {
            max_age: lifecycle::cookie_max_age(&record, now),
            secret,
        };
        state.patch = DataPatch::default();
        state.current = Some(Current::stored(Arc::new(record)));
        Ok(active)
    }

    /// Gives the session a fresh random secret now and stages its cookie.
    /// The previous and superseded secrets become unknown (not "reuse": the
    /// browser's own requests in flight must not end the session). Use it
    /// after a privilege change.
    ///
    /// # Errors
    ///
    /// [`SessionError::NotLoggedIn`] without a session;
    /// [`SessionError::SessionEnded`] if it ended meanwhile; a store failure.
    pub async fn renew(&self) -> Result<(), SessionError> {
        self.renew_with(false).await
    }

    /// Records a fresh proof of identity (a password or second-factor check
    /// just passed): moves `authenticated_at` to now and
    /// [renews](Self::renew) the secret.
    ///
    /// # Errors
    ///
    /// [`SessionError::NotLoggedIn`] without a logged-in session;
    /// [`SessionError::SessionEnded`] if it ended meanwhile; a store failure.
    pub async fn reauthenticate(&self) -> Result<(), SessionError> {
        self.logged_in()?;
        self.renew_with(true).await
    }

    async fn renew_with(&self, authenticated: bool) -> Result<(), SessionError> {
        let record = {
            let state = self.lock();
            let current = state.current.as_ref().ok_or(SessionError::NotLoggedIn)?;
            if current.pending.is_some() {
                // Not stored yet: it gets a fresh secret when it is.
                return Ok(());
            }
            current.record.clone()
        };
        let manager = self.manager();
        let secret = SessionSecret::generate();
        let fresh = manager.key_ring().current_credential(&secret);
        let renewed = manager
            .update(record, |stored, now| {
                let mut next = lifecycle::successor(stored);
                lifecycle::renew(&mut next, fresh, manager.config(), now);
                if authenticated {
                    next.authenticated_at = Some(now);
                }
                Ok(next)
            })
            .await?;
        tracing::info!(session.id = %renewed.id, authenticated, "session secret renewed");
        let mut state = self.lock();
        state.cookie = CookieChange::Set {
            max_age: lifecycle::cookie_max_age(&renewed, self.now()),
            secret,
        };
        state.current = Some(Current::stored(renewed));
        Ok(())
    }

    /// Revokes one of the subject's own sessions by id (a "your devices"
    /// page's button), reason `revoked_by_user`. The store checks the
    /// session belongs to this subject, so an id from a form cannot end
    /// someone else's session ([`RevokeOutcome::NotFound`] then). Revoking
    /// this very session also stages the removal of its cookie.
    ///
    /// # Errors
    ///
    /// [`SessionError::NotLoggedIn`] without a logged-in session; a store failure.
    pub async fn revoke_device(&self, id: &SessionId) -> Result<RevokeOutcome, SessionError> {
        let record = self.logged_in()?;
        let manager = self.manager();
        let revocation = Revocation::new(RevocationReason::RevokedByUser);
        let outcome = manager
            .call(
                "revoke",
                manager
                    .store()
                    .revoke(id, record.subject.as_deref(), self.now(), &revocation),
            )
            .await?;
        tracing::info!(session.id = %id, by = %record.id, ?outcome, "device revoked by its user");
        if *id == record.id && outcome != RevokeOutcome::NotFound {
            self.end();
        }
        Ok(outcome)
    }

    /// Logs out: revokes the request's session (reason `logout`) and stages
    /// the removal of the cookie. Returns whether this call revoked a
    /// session: `false` too when another request (or an admin) revoked it,
    /// or a purge removed it, while this one ran; its cookie is removed all
    /// the same.
    /// Without a session nothing is revoked and the cookie is left alone:
    /// a stale tab's logout must not erase a cookie a login just set.
    ///
    /// # Errors
    ///
    /// A store failure (the session stays live and the cookie unchanged).
    pub async fn logout(&self) -> Result<bool, SessionError> {
        let manager = self.manager();
        if self
            .lock()
            .current
            .as_ref()
            .is_some_and(|c| c.pending.is_some())
        {
            // A session before login that was never stored: just forget it.
            let mut state = self.lock();
            state.current = None;
            state.patch = DataPatch::default();
            return Ok(false);
        }
        let revoked = match self.stored_id() {
            Some(id) => {
                let revocation = Revocation::new(RevocationReason::Logout);
                let outcome = manager
                    .call(
                        "revoke",
                        manager.store().revoke(&id, None, self.now(), &revocation),
                    )
                    .await?;
                tracing::info!(session.id = %id, ?outcome, "session logged out");
                self.end();
                outcome == RevokeOutcome::Revoked
            }
            None => false,
        };
        Ok(revoked)
    }

    /// Revokes every session of the request's subject, this one included
    /// (reason `logout_everywhere`), and stages the removal of the cookie.
    /// Returns how many sessions were revoked.
    ///
    /// # Errors
    ///
    /// [`SessionError::NotLoggedIn`] without a logged-in session; a store failure.
    pub async fn logout_everywhere(&self) -> Result<u64, SessionError> {
        let count = self
            .revoke_subject(RevocationReason::LogoutEverywhere, false)
            .await?;
        self.end();
        Ok(count)
    }

    /// Signs out the subject's other devices: renews this session's secret
    /// first (a copy of this cookie elsewhere stops working too), then
    /// revokes every other session of the subject (reason
    /// `logout_other_devices`). Returns how many were revoked. If the renew
    /// fails, nothing is revoked and the call fails.
    ///
    /// # Errors
    ///
    /// [`SessionError::NotLoggedIn`] without a logged-in session; a store failure.
    pub async fn logout_other_devices(&self) -> Result<u64, SessionError> {
        self.logged_in()?;
        self.renew().await?;
        self.revoke_subject(RevocationReason::LogoutOtherDevices, true)
            .await
    }

    async fn revoke_subject(
        &self,
        reason: RevocationReason,
        keep_own: bool,
    ) -> Result<u64, SessionError> {
        let record = self.logged_in()?;
        let id = record.id;
        let subject = record.subject.clone().ok_or(SessionError::NotLoggedIn)?;
        let manager = self.manager();
        let except = keep_own.then_some(&id);
        let count = manager
            .call(
                "revoke_all_for_subject",
                manager.store().revoke_all_for_subject(
                    &subject,
                    self.now(),
                    &Revocation::new(reason),
                    except,
                ),
            )
            .await?;
        tracing::info!(session.id = %id, count, %reason, "sessions of the subject revoked");
        Ok(count)
    }

    /// The subject's active sessions (its devices), newest first; compare
    /// their ids with [`id`](Self::id) to mark this one.
    ///
    /// # Errors
    ///
    /// [`SessionError::NotLoggedIn`] without a logged-in session; a store failure.
    pub async fn devices(&self) -> Result<Vec<ActiveSessionRecord>, SessionError> {
        let subject = self
            .logged_in()?
            .subject
            .clone()
            .ok_or(SessionError::NotLoggedIn)?;
        Ok(self.manager().list_for_subject(&subject).await?)
    }

    fn end(&self) {
        let mut state = self.lock();
        state.current = None;
        state.patch = DataPatch::default();
        state.cookie = CookieChange::Clear;
    }

    /// Reads data `key` as `T`; `Ok(None)` if absent or without a session.
    ///
    /// # Errors
    ///
    /// The stored value does not deserialize as `T`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SessionError> {
        let state = self.lock();
        let Some(current) = &state.current else {
            return Ok(None);
        };
        let value = match state.patch.get(key) {
            Some(changed) => changed,
            None => current.record.data.get(key),
        };
        let Some(value) = value else {
            return Ok(None);
        };
        T::deserialize(value)
            .map(Some)
            .map_err(|source| SessionError::Serde {
                key: key.to_owned(),
                source,
            })
    }

    /// Sets data `key` to `value` (any `Serialize`); written to the store
    /// when the response leaves the layer.
    ///
    /// Without a session this starts a **session before login** (for OAuth
    /// `state`, a CSRF token, a flash message, a cart): one insert on the
    /// way out, a new secret in a browser-session cookie, no subject, its
    /// own short lifetimes (`pre_login_idle_timeout`), no rotation. A later
    /// [`login`](Self::login) carries its data over.
    ///
    /// # Errors
    ///
    /// A value that does not serialize; data over 4 KiB of JSON, nested over
    /// 64 levels, or holding a NUL character (nothing changes then); [`SessionError::NotLoggedIn`]
    /// when the request carried a cookie of a session it could not use (an
    /// ended or contested session never turns into a new one).
    pub fn insert<T: Serialize>(&self, key: &str, value: T) -> Result<(), SessionError> {
        let value = serde_json::to_value(value).map_err(|source| SessionError::Serde {
            key: key.to_owned(),
            source,
        })?;
        self.change_data(key, |patch| patch.set(key.to_owned(), value))
            .map(drop)
    }

    /// Removes data `key` and returns its value as `T` (like
    /// [`get`](Self::get)); written to the store when the response leaves
    /// the layer. `Ok(None)` if absent or without a session.
    ///
    /// # Errors
    ///
    /// The removed value does not deserialize as `T` (it is removed all
    /// the same).
    pub fn remove<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SessionError> {
        if !self.is_active() {
            return Ok(None);
        }
        let removed = self.change_data(key, |patch| patch.remove(key.to_owned()))?;
        removed
            .map(|value| {
                T::deserialize(value).map_err(|source| SessionError::Serde {
                    key: key.to_owned(),
                    source,
                })
            })
            .transpose()
    }

    fn change_data(
        &self,
        key: &str,
        change: impl FnOnce(&mut DataPatch),
    ) -> Result<Option<serde_json::Value>, SessionError> {
        let mut state = self.lock();
        let state = &mut *state;
        if state.current.is_none() && state.resolved_any {
            return Err(SessionError::NotLoggedIn);
        }
        let base = state.current.as_ref().map(|c| &c.record.data);
        let mut data = base.cloned().unwrap_or_default();
        state.patch.apply(&mut data);
        let old = data.get(key).cloned();
        let mut patch = state.patch.clone();
        change(&mut patch);
        let mut merged = base.cloned().unwrap_or_default();
        patch.apply(&mut merged);
        if merged == data {
            // Nothing changes (a removed key that was not there, a value set
            // to what it is): nothing to write.
            return Ok(old);
        }
        validate_data(&merged).map_err(SessionError::InvalidData)?;
        if state.current.is_none() {
            let (record, secret) = self.manager().new_pre_login_record(self.now());
            state.current = Some(Current {
                pending: Some(secret),
                ..Current::stored(Arc::new(record))
            });
        }
        state.patch = patch;
        Ok(old)
    }
}

/// The request's live, logged-in session; rejects with 401 when there is none.
///
/// Dereferences to [`ActiveSessionRecord`]. Use `Option<ActiveSession>` for
/// pages that work either way, and [`Session`] to log in or out.
///
/// ```
/// use tower_hmac_session::ActiveSession;
///
/// async fn me(session: ActiveSession) -> String {
///     session.subject().to_string()
/// }
///
/// async fn greeting(session: Option<ActiveSession>) -> String {
///     match session {
///         Some(s) => format!("hello, {}", s.subject()),
///         None => "hello, stranger".into(),
///     }
/// }
/// # let _ = axum::Router::<()>::new()
/// #     .route("/me", axum::routing::get(me))
/// #     .route("/", axum::routing::get(greeting));
/// ```
#[derive(Clone, Debug)]
pub struct ActiveSession {
    record: ActiveSessionRecord,
    session: Session,
}

impl ActiveSession {
    /// The session handle, to log out or change data.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Whom the session belongs to (an `ActiveSession` is always logged in).
    pub fn subject(&self) -> &str {
        self.record.subject.as_deref().unwrap_or_default()
    }

    /// The record.
    pub fn record(&self) -> &ActiveSessionRecord {
        &self.record
    }
}

impl Deref for ActiveSession {
    type Target = ActiveSessionRecord;

    fn deref(&self) -> &ActiveSessionRecord {
        &self.record
    }
}

/// Rejection of [`Session`] and `Option<ActiveSession>`: the
/// [`SessionLayer`](crate::SessionLayer) is missing. A programmer error:
/// answered with a 500 that says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "missing request extension: the session extractors need `SessionLayer`; \
     add `.layer(SessionLayer::new(manager))` to the router"
)]
pub struct MissingSessionLayer;

impl MissingSessionLayer {
    /// 500: a programmer error.
    pub fn status(&self) -> StatusCode {
        StatusCode::INTERNAL_SERVER_ERROR
    }

    /// The response body, naming `SessionLayer`.
    pub fn body_text(&self) -> String {
        self.to_string()
    }
}

impl IntoResponse for MissingSessionLayer {
    fn into_response(self) -> Response {
        tracing::error!("{self}");
        (self.status(), self.body_text()).into_response()
    }
}

/// Rejection of [`ActiveSession`]: no logged-in session (401, or the
/// application's own response, see
/// [`SessionConfigBuilder::unauthenticated_response`](crate::SessionConfigBuilder::unauthenticated_response)),
/// or the layer is missing (500).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ActiveSessionRejection {
    /// The request has no logged-in session.
    #[error("no active session")]
    Unauthenticated(Unauthenticated),
    /// The layer is missing: 500.
    #[error(transparent)]
    MissingLayer(#[from] MissingSessionLayer),
}

/// The request an [`ActiveSession`] was refused to: what an application's
/// unauthenticated response needs (the original path, for a login redirect).
#[derive(Clone)]
pub struct Unauthenticated {
    uri: http::Uri,
    render: Option<crate::config::UnauthenticatedResponse>,
}

impl Unauthenticated {
    /// The refused request's URI.
    pub fn uri(&self) -> &http::Uri {
        &self.uri
    }
}

impl std::fmt::Debug for Unauthenticated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unauthenticated")
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

impl ActiveSessionRejection {
    /// The status of the default response: 401 or 500.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::MissingLayer(missing) => missing.status(),
        }
    }

    /// The body of the default response.
    pub fn body_text(&self) -> String {
        match self {
            Self::Unauthenticated(_) => "not signed in".to_owned(),
            Self::MissingLayer(missing) => missing.body_text(),
        }
    }
}

impl IntoResponse for ActiveSessionRejection {
    fn into_response(self) -> Response {
        match self {
            Self::Unauthenticated(Unauthenticated {
                uri,
                render: Some(render),
            }) => render(&uri),
            Self::Unauthenticated(_) => (self.status(), self.body_text()).into_response(),
            Self::MissingLayer(missing) => missing.into_response(),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = MissingSessionLayer;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let session = parts
            .extensions
            .get::<Session>()
            .cloned()
            .ok_or(MissingSessionLayer)?;
        session.mark_extracted();
        Ok(session)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ActiveSession {
    type Rejection = ActiveSessionRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let session = Session::from_request_parts(parts, state).await?;
        let record = session.active().filter(|r| r.subject.is_some());
        match record {
            Some(record) => Ok(Self { record, session }),
            None => Err(ActiveSessionRejection::Unauthenticated(Unauthenticated {
                uri: parts.uri.clone(),
                render: session.manager().config().unauthenticated_response.clone(),
            })),
        }
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for ActiveSession {
    type Rejection = MissingSessionLayer;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        let session = <Session as FromRequestParts<S>>::from_request_parts(parts, state).await?;
        Ok(session
            .active()
            .filter(|r| r.subject.is_some())
            .map(|record| Self { record, session }))
    }
}
