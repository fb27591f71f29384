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
use pin_project_lite::pin_project;
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

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type BoxFutureRef<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pin_project! {
    /// The response future of [`SessionService`].
    pub struct ResponseFuture<F, E> {
        #[pin]
        kind: Kind<F, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, E> {
        // No session cookie: the inner future, polled in place. Finishing is
        // synchronous unless the handler logged in and then changed
        // attributes (a store write).
        Anonymous {
            #[pin]
            future: F,
            session: Option<Session>,
        },
        // A session cookie: resolve, call, maintain. The store calls must be
        // awaited, so this is boxed, once per request.
        Boxed {
            future: BoxFuture<Result<Response, E>>,
        },
    }
}

impl<F, E> fmt::Debug for ResponseFuture<F, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, E, ResBody> Future for ResponseFuture<F, E>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
    E: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut kind = self.project().kind;
        loop {
            let (session, response) = match kind.as_mut().project() {
                KindProj::Boxed { future } => return future.as_mut().poll(cx),
                KindProj::Anonymous { future, session } => {
                    let response = match future.poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                        Poll::Ready(Ok(response)) => response.map(Body::new),
                    };
                    let session = session
                        .take()
                        .expect("ResponseFuture polled after completion");
                    (session, response)
                }
            };
            match finish_without_store(&session, response) {
                Anonymous::Finished(response) => return Poll::Ready(Ok(response)),
                Anonymous::NeedsStore(response) => kind.set(Kind::Boxed {
                    future: Box::pin(async move { Ok(finish(&session, None, response).await) }),
                }),
            }
        }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SessionService<S>
where
    S: Service<Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let manager = self.manager.clone();
        let Some(secret) = find_secret(req.headers(), manager.config().cookie().name()) else {
            // No well-formed secret: anonymous. No HMAC, no store call, and
            // the inner service is called right away, so nothing is cloned
            // or boxed.
            let session = Session::anonymous(manager);
            req.extensions_mut().insert(session.clone());
            return ResponseFuture {
                kind: Kind::Anonymous {
                    future: self.inner.call(req),
                    session: Some(session),
                },
            };
        };
        // The store must be awaited before the inner service is called: the
        // ready service goes into the future, and a fresh clone stays behind
        // to be driven to readiness by the next `poll_ready`.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
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
            kind: Kind::Boxed {
                future: Box::pin(future.instrument(span)),
            },
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
    secret: SessionSecret,
    now: OffsetDateTime,
) -> Result<(State, Option<SessionSecret>), StoreError> {
    let candidates = manager.keys().candidates(&secret);
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

/// How an anonymous request finishes.
enum Anonymous {
    /// Done: the staged cookie, if any, is applied.
    Finished(Response),
    /// The handler logged in and changed attributes: `finish` must write them.
    NeedsStore(Response),
}

/// Step 5 for an anonymous request, when no store write is needed: applies
/// the cookie the handler staged.
fn finish_without_store(session: &Session, response: Response) -> Anonymous {
    let cookie = {
        let mut state = session.lock();
        if state.attributes_dirty {
            return Anonymous::NeedsStore(response);
        }
        std::mem::take(&mut state.cookie)
    };
    Anonymous::Finished(apply_cookie(session, cookie, response))
}

fn apply_cookie(session: &Session, cookie: CookieChange, mut response: Response) -> Response {
    let manager = session.manager();
    let value = match cookie {
        CookieChange::Set { secret, expires_at } => {
            manager.set_cookie_header_at(&secret, expires_at, session.now())
        }
        CookieChange::Clear => manager.clear_cookie_header(),
        CookieChange::Keep => return response,
    };
    // Appended: cookies set by other code stay.
    response.headers_mut().append(SET_COOKIE, value);
    response
}

/// Step 5: attributes, the staged cookie, or maintenance.
///
/// The store writes are rare (a changed attribute, a due touch, rotation or
/// re-key), so each is boxed only when it happens: the per-request future
/// stays small.
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
        let written: BoxFutureRef<'_, _> = Box::pin(write_attributes(manager, current, now));
        if let Err(error) = written.await {
            // The handler's answer would claim a change that was not saved.
            tracing::error!(session.id = %current.record.id, %error, "session attributes not saved");
            response = manager.store_error_response(&error);
        }
    }

    if !matches!(cookie, CookieChange::Keep) {
        return apply_cookie(session, cookie, response);
    }
    let (Some(current), Some(secret)) = (current, secret) else {
        return response;
    };
    let plan = match current.maintain {
        true => Maintenance::plan(manager, &current, now),
        false => None,
    };
    let (Some(plan), Some(target)) = (plan, Target::of(&current)) else {
        return response;
    };
    // Release the request's share of the record before writing, so a store
    // that keeps records in memory updates it in place instead of copying.
    drop(current);
    let maintained: BoxFutureRef<'_, _> = Box::pin(maintain(manager, &target, &secret, plan, now));
    if let Some(value) = maintained.await {
        response.headers_mut().append(SET_COOKIE, value);
    }
    response
}

async fn write_attributes(
    manager: &SessionManager,
    current: &Current,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    let id = current.record.id;
    let applied = manager
        .call(
            "update_attributes",
            manager
                .store()
                .update_attributes(&id, &current.record.attributes, now),
        )
        .await?;
    applied.then_some(()).ok_or(StoreError::NotApplied {
        operation: "update_attributes",
    })
}

/// What the way out must write for a resolved session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Maintenance {
    /// The access ttl has passed: a new secret (which also re-keys and touches).
    rotate: bool,
    /// The matched credential is under an old key version.
    rekey: bool,
    /// The touch interval has passed and the idle expiry can still move.
    touch: bool,
}

impl Maintenance {
    /// Decided without the store, so requests with nothing due box nothing.
    fn plan(manager: &SessionManager, current: &Current, now: OffsetDateTime) -> Option<Self> {
        let record = &current.record;
        let config = manager.config();
        let rekey = current.key_version != manager.keys().current();
        let plan = match current.slot {
            // In-grace request with the old secret: the client has (or will
            // get) the new one. Only move it off a retired key version.
            Slot::Previous => Self {
                rotate: false,
                rekey,
                touch: false,
            },
            Slot::Current => Self {
                rotate: config.access_ttl().is_some() && now >= record.access_expires_at,
                rekey,
                touch: now - record.last_seen_at >= config.touch_interval()
                    && manager.sliding_expiry(now, record.absolute_expires_at) > record.expires_at,
            },
        };
        (plan.rotate || plan.rekey || plan.touch).then_some(plan)
    }
}

/// What maintenance needs of the resolved record: a few words, so the
/// record itself can be released before the writes.
struct Target {
    id: crate::SessionId,
    slot: Slot,
    matched: Credential,
    absolute_expires_at: OffsetDateTime,
}

impl Target {
    fn of(current: &Current) -> Option<Self> {
        Some(Self {
            id: current.record.id,
            slot: current.slot,
            matched: current.record.credential(current.slot)?,
            absolute_expires_at: current.record.absolute_expires_at,
        })
    }
}

/// Rotation when the access ttl has passed, else re-key to the current key
/// version and slide the idle expiry when the touch interval has passed.
///
/// Every write is a compare-and-swap, so concurrent requests apply it once.
/// A failure is logged and the request still served: the old cookie keeps
/// working. Returns the `Set-Cookie` value to send, if any.
async fn maintain(
    manager: &SessionManager,
    target: &Target,
    secret: &SessionSecret,
    plan: Maintenance,
    now: OffsetDateTime,
) -> Option<http::HeaderValue> {
    let id = target.id;
    // Owned, not a guard: it lives across the store writes.
    let keys = manager.key_ring();
    let matched = target.matched;
    let expires_at = manager.sliding_expiry(now, target.absolute_expires_at);

    if plan.rotate {
        let new_secret = SessionSecret::generate();
        // The new secret's lookup key is always under the current version,
        // so rotation re-keys too.
        let new = keys.current_candidate(&new_secret);
        let timestamps = RotationTimestamps {
            last_seen_at: now,
            expires_at,
            access_expires_at: manager.access_expiry(now, target.absolute_expires_at),
        };
        let previous_valid_until =
            crate::manager::saturating_add(now, manager.config().rotation_grace());
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

    if plan.rekey {
        // Same secret, current key: the cookie does not change.
        let new = keys.current_candidate(secret);
        let applied = manager
            .call(
                "rekey",
                manager.store().rekey(
                    &id,
                    target.slot,
                    &matched.lookup_key,
                    &new.lookup_key,
                    new.key_version,
                ),
            )
            .await;
        log_write("rekey", id, applied);
    }

    if plan.touch {
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

    #[test]
    fn arbitrary_header_bytes_never_panic_and_only_real_secrets_parse() {
        use rand::{Rng as _, RngCore as _};
        let mut rng = rand::rng();
        let alphabet = b"sid=; \t\"AZaz09-_+/\xff\x80";
        for _ in 0..20_000 {
            let len = rng.random_range(0..120);
            let mut bytes = vec![0u8; len];
            if rng.random_bool(0.5) {
                rng.fill_bytes(&mut bytes);
            } else {
                for b in &mut bytes {
                    *b = alphabet[rng.random_range(0..alphabet.len())];
                }
            }
            // Header values cannot hold control bytes other than tab.
            bytes.retain(|&b| b == b'\t' || !b.is_ascii_control());
            // A third of the time, a real secret hides among the junk.
            let planted = rng.random_bool(0.33).then(SessionSecret::generate);
            if let Some(secret) = &planted {
                let at = rng.random_range(0..=bytes.len());
                let cookie = format!("; sid={}; ", secret.encode());
                bytes.splice(at..at, cookie.bytes());
            }
            let Ok(value) = HeaderValue::from_bytes(&bytes) else {
                continue;
            };
            let mut map = HeaderMap::new();
            map.append(COOKIE, value);
            let found = find_secret(&map, "sid");
            if let Some(secret) = &found {
                // Whatever parsed is canonical: it re-encodes to a value
                // that was in the header.
                let encoded = secret.encode();
                assert!(bytes.windows(43).any(|w| w == encoded.as_bytes()));
            }
            if planted.is_some() {
                // Junk before it may hold an earlier well-formed value; the
                // planted one is found unless one comes first.
                assert!(found.is_some(), "a planted secret was missed");
            }
        }
    }
}
