//! [`SessionLayer`] and [`SessionService`]: the request path, top to bottom.
//!
//! 1. Read the session cookie; only a strictly well-formed secret goes on.
//! 2. Derive one lookup key per accepted key version (no per-request key setup).
//! 3. One store call: `find_active`.
//! 4. Put the [`Session`] handle into the request extensions; run the inner service.
//! 5. On the way out: write changed attributes (once), apply the cookie the
//!    handler staged, or maintain the session (rotate, re-key, slide).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum_core::body::Body;
use axum_core::response::Response;
use bytes::Bytes;
use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderMap, Request};
use time::OffsetDateTime;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument as _;

use crate::config::StoreErrorPolicy;
use crate::extract::{CookieChange, Current, Session, State};
use crate::manager::SessionManager;
use crate::record::{Credential, Revocation, RevocationReason, RotationTimestamps, Slot};
use crate::secret::SessionSecret;
use crate::store::{BoxError, StoreError};

/// Applies sessions to every request; see the [crate docs](crate) for a
/// complete example.
///
/// ```
/// use axum::{Router, routing::get};
/// use tower_hmac_session::{ActiveSession, KeyRing, MemoryStore, SessionConfig, SessionLayer, SessionManager};
///
/// let keys = KeyRing::builder().key(1, [7u8; 32]).build().unwrap();
/// let sessions = SessionManager::new(MemoryStore::new(), keys, SessionConfig::default());
/// let app: Router = Router::new()
///     .route("/me", get(|s: ActiveSession| async move { s.subject().to_owned() }))
///     .layer(SessionLayer::new(sessions));
/// ```
#[derive(Clone, Debug)]
pub struct SessionLayer {
    manager: SessionManager,
}

impl SessionLayer {
    /// A layer backed by `manager`.
    pub fn new(manager: SessionManager) -> Self {
        Self { manager }
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionService {
            inner,
            manager: self.manager.clone(),
        }
    }
}

/// The service [`SessionLayer`] wraps around an inner service.
///
/// Infallible on its own: store failures become responses (503 by default),
/// so it works under axum without `HandleErrorLayer`.
#[derive(Clone, Debug)]
pub struct SessionService<S> {
    inner: S,
    manager: SessionManager,
}

/// The response future of [`SessionService`].
pub struct ResponseFuture<E> {
    inner: Pin<Box<dyn Future<Output = Result<Response, E>> + Send>>,
}

impl<E> fmt::Debug for ResponseFuture<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<E> Future for ResponseFuture<E> {
    type Output = Result<Response, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SessionService<S>
where
    S: Service<Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        // The ready service goes into the future; a fresh clone stays behind
        // and is driven to readiness by the next `poll_ready`.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let manager = self.manager.clone();
        let secret = find_secret(req.headers(), manager.config().cookie().name());
        let span = tracing::debug_span!("session", session.id = tracing::field::Empty);
        let future = async move {
            let now = manager.now();
            let (state, secret) = match resolve(&manager, secret, now).await {
                Ok(resolved) => resolved,
                Err(error) => match manager.config().store_error_policy() {
                    StoreErrorPolicy::FailClosed => {
                        tracing::error!(%error, "session store failed: answering with the store-error response");
                        return Ok(manager.store_error_response(&error));
                    }
                    StoreErrorPolicy::ContinueAnonymous => {
                        tracing::error!(%error, "session store failed: serving the request as anonymous");
                        (State::default(), None)
                    }
                },
            };
            if let Some(current) = &state.current {
                tracing::Span::current()
                    .record("session.id", tracing::field::display(current.record.id));
            }
            let session = Session::new(manager, now, state);
            req.extensions_mut().insert(session.clone());
            let response = inner.call(req).await?.map(Body::new);
            Ok(finish(&session, secret, response).await)
        };
        ResponseFuture {
            inner: Box::pin(future.instrument(span)),
        }
    }
}

/// The first value of cookie `name`, in any `Cookie` header, that parses as
/// a secret. Works on raw bytes (a header need not be UTF-8) and allocates
/// nothing; malformed values are skipped, never an error.
pub(crate) fn find_secret(headers: &HeaderMap, name: &str) -> Option<SessionSecret> {
    let name = name.as_bytes();
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b';'))
        .filter_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (pair[..eq].trim_ascii() == name).then(|| pair[eq + 1..].trim_ascii())
        })
        .find_map(SessionSecret::parse_bytes)
}

/// Step 2–3: derive the candidates and make the one store call.
///
/// Returns the request's initial state and, when a live session matched,
/// the secret (kept for maintenance on the way out).
async fn resolve(
    manager: &SessionManager,
    secret: Option<SessionSecret>,
    now: OffsetDateTime,
) -> Result<(State, Option<SessionSecret>), StoreError> {
    let Some(secret) = secret else {
        // No well-formed secret: anonymous, no HMAC, no store call.
        return Ok((State::default(), None));
    };
    let candidates = manager.key_ring().candidates(&secret);
    let found = manager
        .call("find_active", manager.store().find_active(&candidates, now))
        .await?;
    let unknown = State {
        cookie: CookieChange::Clear,
        ..State::default()
    };
    let Some(found) = found else {
        // Well-formed but unknown, expired or revoked: clear the cookie.
        return Ok((unknown, None));
    };
    if found.is_stale_previous(now) {
        let id = found.record.id;
        if manager.config().revoke_on_reuse() {
            // A rotated-away secret after its grace: someone holds a copy of
            // an old cookie. End the whole session, so the copy and the
            // current secret both stop working. If this write fails, the
            // request fails closed like any other store failure.
            let revocation = Revocation::new(RevocationReason::ReuseDetected);
            manager
                .call("revoke", manager.store().revoke(&id, now, &revocation))
                .await?;
            tracing::warn!(session.id = %id, "rotated session secret replayed after its grace window: session revoked");
        } else {
            tracing::info!(session.id = %id, "rotated session secret presented after its grace window");
        }
        return Ok((unknown, None));
    }
    let state = State {
        current: Some(Current {
            slot: found.slot,
            key_version: found.key_version,
            record: found.record,
            maintain: true,
        }),
        ..State::default()
    };
    Ok((state, Some(secret)))
}

/// Step 5: attributes, the staged cookie, or maintenance.
async fn finish(session: &Session, secret: Option<SessionSecret>, response: Response) -> Response {
    let manager = session.manager();
    let now = session.now();
    let (current, cookie, attributes_dirty) = {
        let mut state = session.lock();
        (
            state.current.take(),
            std::mem::take(&mut state.cookie),
            std::mem::take(&mut state.attributes_dirty),
        )
    };

    let mut response = response;
    if let (Some(current), true) = (&current, attributes_dirty) {
        let id = current.record.id;
        let written = manager
            .call(
                "update_attributes",
                manager
                    .store()
                    .update_attributes(&id, &current.record.attributes, now),
            )
            .await
            .and_then(|applied| {
                applied.then_some(()).ok_or(StoreError::NotApplied {
                    operation: "update_attributes",
                })
            });
        if let Err(error) = written {
            // The handler's answer would claim a change that was not saved.
            tracing::error!(session.id = %id, %error, "session attributes not saved");
            response = manager.store_error_response(&error);
        }
    }

    let set_cookie = match cookie {
        CookieChange::Set { secret, expires_at } => {
            Some(manager.set_cookie_header_at(&secret, expires_at, now))
        }
        CookieChange::Clear => Some(manager.clear_cookie_header()),
        CookieChange::Keep => match (current, secret) {
            (Some(current), Some(secret)) if current.maintain => {
                maintain(manager, &current, &secret, now).await
            }
            _ => None,
        },
    };
    if let Some(value) = set_cookie {
        // Appended: cookies set by other code stay.
        response.headers_mut().append(SET_COOKIE, value);
    }
    response
}

/// Rotation when the access ttl has passed, else re-key to the current key
/// version and slide the idle expiry when the touch interval has passed.
///
/// Every write is a compare-and-swap, so concurrent requests apply it once.
/// A failure is logged and the request still served: the old cookie keeps
/// working. Returns the `Set-Cookie` value to send, if any.
async fn maintain(
    manager: &SessionManager,
    current: &Current,
    secret: &SessionSecret,
    now: OffsetDateTime,
) -> Option<http::HeaderValue> {
    let record = &current.record;
    let id = record.id;
    let keys = manager.key_ring();
    let config = manager.config();

    let matched = record.credential(current.slot)?;
    if current.slot == Slot::Previous {
        // In-grace request with the old secret: the client has (or will
        // get) the new one. Only move it off a retired key version.
        if current.key_version != keys.current() {
            let new = keys.current_candidate(secret);
            log_write(
                "rekey",
                id,
                manager
                    .call(
                        "rekey",
                        manager.store().rekey(
                            &id,
                            Slot::Previous,
                            &matched.lookup_key,
                            &new.lookup_key,
                            new.key_version,
                        ),
                    )
                    .await,
            );
        }
        return None;
    }

    let expires_at = manager.sliding_expiry(now, record.absolute_expires_at);
    if config.access_ttl().is_some() && now >= record.access_expires_at {
        let new_secret = match SessionSecret::generate() {
            Ok(s) => s,
            Err(error) => {
                tracing::warn!(session.id = %id, %error, "session secret rotation skipped");
                return None;
            }
        };
        // The new secret's lookup key is always under the current version,
        // so rotation re-keys too.
        let new = keys.current_candidate(&new_secret);
        let timestamps = RotationTimestamps {
            last_seen_at: now,
            expires_at,
            access_expires_at: manager.access_expiry(now, record.absolute_expires_at),
        };
        let previous_valid_until = crate::manager::saturating_add(now, config.rotation_grace());
        let applied = manager
            .call(
                "rotate",
                manager.store().rotate(
                    &id,
                    &matched.lookup_key,
                    &Credential {
                        lookup_key: new.lookup_key,
                        key_version: new.key_version,
                    },
                    previous_valid_until,
                    &timestamps,
                ),
            )
            .await;
        // A lost race issues no cookie: this request's secret is now the
        // previous one, valid through the grace window.
        return log_write("rotate", id, applied)
            .then(|| manager.set_cookie_header_at(&new_secret, expires_at, now));
    }

    if current.key_version != keys.current() {
        let new = keys.current_candidate(secret);
        let applied = manager
            .call(
                "rekey",
                manager.store().rekey(
                    &id,
                    Slot::Current,
                    &matched.lookup_key,
                    &new.lookup_key,
                    new.key_version,
                ),
            )
            .await;
        log_write("rekey", id, applied);
    }

    let touch_due = now - record.last_seen_at >= config.touch_interval();
    if touch_due && expires_at > record.expires_at {
        let applied = manager
            .call("touch", manager.store().touch(&id, now, expires_at))
            .await;
        // The cookie's Max-Age follows the session's new expiry.
        return log_write("touch", id, applied)
            .then(|| manager.set_cookie_header_at(secret, expires_at, now));
    }
    None
}

fn log_write(
    operation: &'static str,
    id: crate::SessionId,
    result: Result<bool, StoreError>,
) -> bool {
    match result {
        Ok(applied) => {
            tracing::debug!(session.id = %id, applied, "session {operation}");
            applied
        }
        Err(error) => {
            tracing::warn!(session.id = %id, %error, "session {operation} failed; the old cookie keeps working");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(COOKIE, HeaderValue::from_bytes(v).unwrap());
        }
        map
    }

    #[test]
    fn finds_the_first_well_formed_value_of_the_name() {
        let good = SessionSecret::from_bytes([1; 32]).encode();
        let other = SessionSecret::from_bytes([2; 32]).encode();
        let h = headers(&[
            b"a=1; sid=short",
            format!("sid={good}; sid={other}").as_bytes(),
        ]);
        let found = find_secret(&h, "sid").unwrap();
        assert_eq!(found.expose_bytes(), &[1; 32]);
        assert!(find_secret(&h, "other").is_none());
        assert!(find_secret(&headers(&[format!("xsid={good}").as_bytes()]), "sid").is_none());
        assert!(find_secret(&headers(&[b"sid=\xff\xfe; \x80"]), "sid").is_none());
    }
}
