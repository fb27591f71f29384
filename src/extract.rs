//! The axum extractors [`Session`] and [`ActiveSession`], and their rejections.

use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::StatusCode;
use http::request::Parts;
use serde::Serialize;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;

use crate::keys::KeyVersion;
use crate::manager::{SessionError, SessionManager};
use crate::record::{
    ActiveSessionRecord, Attributes, Revocation, RevocationReason, SessionId, SessionRecord, Slot,
    validate_attributes,
};
use crate::secret::SessionSecret;

/// The request's session handle, present under [`SessionLayer`](crate::SessionLayer)
/// whether or not the request carries a live session.
///
/// Operations that change the store (`login`, `logout`, …) write at once and
/// return `Result`; they only *stage* the cookie change, which the layer
/// applies to the response. Attribute changes (`insert`, `remove`) are
/// written once, on the way out, with a single `update_attributes` call;
/// if that write fails the response becomes a 503.
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
    state: Mutex<State>,
}

/// What the request found and what the handler decided. Shared between the
/// handler's [`Session`] clones and the layer.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) current: Option<Current>,
    pub(crate) cookie: CookieChange,
    pub(crate) attributes_dirty: bool,
}

/// The live session of the request.
#[derive(Debug)]
pub(crate) struct Current {
    /// Shared with the store's copy until the handler changes attributes.
    pub(crate) record: Arc<SessionRecord>,
    pub(crate) slot: Slot,
    pub(crate) key_version: KeyVersion,
    /// Whether the layer should slide, rotate and re-key it on the way out:
    /// true for a session the request's cookie resolved, false for one the
    /// handler just created.
    pub(crate) maintain: bool,
}

/// The cookie change the handler staged.
#[derive(Debug, Default)]
pub(crate) enum CookieChange {
    /// No change (the layer may still refresh the cookie).
    #[default]
    Keep,
    /// Give the client a new secret.
    Set {
        secret: SessionSecret,
        expires_at: OffsetDateTime,
    },
    /// Remove the cookie.
    Clear,
}

impl Session {
    pub(crate) fn new(manager: SessionManager, now: OffsetDateTime, state: State) -> Self {
        Self {
            shared: Arc::new(Shared {
                manager,
                now: OnceLock::from(now),
                state: Mutex::new(state),
            }),
        }
    }

    /// The handle of a request without a session cookie.
    pub(crate) fn anonymous(manager: SessionManager) -> Self {
        Self {
            shared: Arc::new(Shared {
                manager,
                now: OnceLock::new(),
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

    /// The manager behind the layer, for admin operations.
    pub fn manager(&self) -> &SessionManager {
        &self.shared.manager
    }

    /// The live session, if the request has one.
    pub fn active(&self) -> Option<ActiveSessionRecord> {
        self.lock()
            .current
            .as_ref()
            .map(|c| c.record.to_active(c.key_version))
    }

    /// Whether the request has a live session.
    pub fn is_active(&self) -> bool {
        self.lock().current.is_some()
    }

    /// The live session's id.
    pub fn id(&self) -> Option<SessionId> {
        self.lock().current.as_ref().map(|c| c.record.id)
    }

    /// The live session's subject.
    pub fn subject(&self) -> Option<String> {
        self.lock()
            .current
            .as_ref()
            .map(|c| c.record.subject.clone())
    }

    /// Logs `subject` in: creates a new session with a new secret, ends the
    /// request's current session if any (reason `replaced_by_login`, so a
    /// planted cookie cannot fixate the session), and stages the new cookie.
    ///
    /// # Errors
    ///
    /// An invalid subject, or a store failure (nothing is staged then).
    pub async fn login(
        &self,
        subject: impl Into<String>,
    ) -> Result<ActiveSessionRecord, SessionError> {
        self.login_with(subject, Attributes::new()).await
    }

    /// Like [`login`](Self::login), with initial attributes (device label,
    /// tenant, user agent, …).
    ///
    /// # Errors
    ///
    /// As [`login`](Self::login), and attributes over 4 KiB of JSON.
    pub async fn login_with(
        &self,
        subject: impl Into<String>,
        attributes: Attributes,
    ) -> Result<ActiveSessionRecord, SessionError> {
        let manager = self.manager();
        let now = self.now();
        let (record, secret) = manager.new_record(subject.into(), attributes, now)?;
        // Insert first, then end the old session: if either fails, the old
        // session is still there (nothing lost). A new record whose login
        // failed is unreachable (its secret was never sent) and expires.
        manager
            .call("insert", manager.store().insert(&record))
            .await?;
        tracing::info!(session.id = %record.id, "session created by login");
        if let Some(old) = self.id() {
            let revocation = Revocation::new(RevocationReason::ReplacedByLogin);
            manager
                .call("revoke", manager.store().revoke(&old, now, &revocation))
                .await?;
            tracing::info!(session.id = %old, "session replaced by a new login");
        }
        let active = record.to_active(record.current.key_version);
        let mut state = self.lock();
        state.cookie = CookieChange::Set {
            secret,
            expires_at: record.expires_at,
        };
        state.attributes_dirty = false;
        state.current = Some(Current {
            key_version: record.current.key_version,
            record: Arc::new(record),
            slot: Slot::Current,
            maintain: false,
        });
        Ok(active)
    }

    /// Logs out: revokes the request's session (reason `logout`) and stages
    /// the removal of the cookie. Returns whether a session was revoked.
    ///
    /// # Errors
    ///
    /// A store failure (the session stays live and the cookie unchanged).
    pub async fn logout(&self) -> Result<bool, SessionError> {
        let manager = self.manager();
        let revoked = match self.id() {
            Some(id) => {
                let revocation = Revocation::new(RevocationReason::Logout);
                manager
                    .call(
                        "revoke",
                        manager.store().revoke(&id, self.now(), &revocation),
                    )
                    .await?;
                tracing::info!(session.id = %id, "session logged out");
                true
            }
            None => false,
        };
        self.end();
        Ok(revoked)
    }

    /// Revokes every session of the request's subject, this one included
    /// (reason `logout_everywhere`), and stages the removal of the cookie.
    /// Returns how many sessions were revoked.
    ///
    /// # Errors
    ///
    /// [`SessionError::NotLoggedIn`] without a session; a store failure.
    pub async fn logout_everywhere(&self) -> Result<u64, SessionError> {
        let count = self
            .revoke_subject(RevocationReason::LogoutEverywhere, false)
            .await?;
        self.end();
        Ok(count)
    }

    /// Revokes every other session of the request's subject (reason
    /// `logout_other_devices`), keeping this one. Returns how many.
    ///
    /// # Errors
    ///
    /// [`SessionError::NotLoggedIn`] without a session; a store failure.
    pub async fn logout_other_devices(&self) -> Result<u64, SessionError> {
        self.revoke_subject(RevocationReason::LogoutOtherDevices, true)
            .await
    }

    async fn revoke_subject(
        &self,
        reason: RevocationReason,
        keep_own: bool,
    ) -> Result<u64, SessionError> {
        let (id, subject) = {
            let state = self.lock();
            let current = state.current.as_ref().ok_or(SessionError::NotLoggedIn)?;
            (current.record.id, current.record.subject.clone())
        };
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
    /// [`SessionError::NotLoggedIn`] without a session; a store failure.
    pub async fn devices(&self) -> Result<Vec<ActiveSessionRecord>, SessionError> {
        let subject = self.subject().ok_or(SessionError::NotLoggedIn)?;
        Ok(self.manager().list_for_subject(&subject).await?)
    }

    fn end(&self) {
        let mut state = self.lock();
        state.current = None;
        state.attributes_dirty = false;
        state.cookie = CookieChange::Clear;
    }

    /// Reads attribute `key` as `T`; `Ok(None)` if absent or without a session.
    ///
    /// # Errors
    ///
    /// The stored value does not deserialize as `T`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SessionError> {
        let state = self.lock();
        let Some(value) = state
            .current
            .as_ref()
            .and_then(|c| c.record.attributes.get(key))
        else {
            return Ok(None);
        };
        T::deserialize(value)
            .map(Some)
            .map_err(|source| SessionError::Serde {
                key: key.to_owned(),
                source,
            })
    }

    /// Sets attribute `key`; written to the store when the response leaves
    /// the layer. Returns the previous value.
    ///
    /// # Errors
    ///
    /// [`SessionError::NotLoggedIn`] without a session (attributes belong to
    /// a logged-in session); a value that does not serialize; attributes
    /// over 4 KiB of JSON (nothing changes then).
    pub fn insert<T: Serialize>(
        &self,
        key: &str,
        value: T,
    ) -> Result<Option<serde_json::Value>, SessionError> {
        let value = serde_json::to_value(value).map_err(|source| SessionError::Serde {
            key: key.to_owned(),
            source,
        })?;
        self.change_attributes(|attributes| attributes.insert(key.to_owned(), value))
    }

    /// Removes attribute `key`; written to the store when the response
    /// leaves the layer. Returns the removed value.
    ///
    /// # Errors
    ///
    /// [`SessionError::NotLoggedIn`] without a session.
    pub fn remove(&self, key: &str) -> Result<Option<serde_json::Value>, SessionError> {
        self.change_attributes(|attributes| attributes.remove(key))
    }

    fn change_attributes(
        &self,
        change: impl FnOnce(&mut Attributes) -> Option<serde_json::Value>,
    ) -> Result<Option<serde_json::Value>, SessionError> {
        let mut state = self.lock();
        let current = state.current.as_mut().ok_or(SessionError::NotLoggedIn)?;
        let record = Arc::make_mut(&mut current.record);
        let before = record.attributes.clone();
        let old = change(&mut record.attributes);
        if let Err(reason) = validate_attributes(&record.attributes) {
            record.attributes = before;
            return Err(SessionError::InvalidAttributes(reason));
        }
        if record.attributes != before {
            state.attributes_dirty = true;
        }
        Ok(old)
    }
}

/// The request's live session; rejects with 401 when there is none.
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
    /// The session handle, to log out or change attributes.
    pub fn session(&self) -> &Session {
        &self.session
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

impl IntoResponse for MissingSessionLayer {
    fn into_response(self) -> Response {
        tracing::error!("{self}");
        (StatusCode::INTERNAL_SERVER_ERROR, self.to_string()).into_response()
    }
}

/// Rejection of [`ActiveSession`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ActiveSessionRejection {
    /// The request has no live session: 401.
    #[error("no active session")]
    Unauthenticated,
    /// The layer is missing: 500.
    #[error(transparent)]
    MissingLayer(#[from] MissingSessionLayer),
}

impl IntoResponse for ActiveSessionRejection {
    fn into_response(self) -> Response {
        match self {
            Self::Unauthenticated => (StatusCode::UNAUTHORIZED, self.to_string()).into_response(),
            Self::MissingLayer(missing) => missing.into_response(),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = MissingSessionLayer;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Session>()
            .cloned()
            .ok_or(MissingSessionLayer)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ActiveSession {
    type Rejection = ActiveSessionRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let session = Session::from_request_parts(parts, state).await?;
        let record = session
            .active()
            .ok_or(ActiveSessionRejection::Unauthenticated)?;
        Ok(Self { record, session })
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for ActiveSession {
    type Rejection = MissingSessionLayer;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        let session = <Session as FromRequestParts<S>>::from_request_parts(parts, state).await?;
        Ok(session.active().map(|record| Self { record, session }))
    }
}
