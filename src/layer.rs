//! [`SessionLayer`] and [`SessionService`]: the request path, top to bottom.
//!
//! 1. Read the session cookie: up to four strictly well-formed values of its
//!    name (a browser may hold several); none means anonymous, with no HMAC
//!    and no store call.
//! 2. Derive one lookup key per value and accepted key version (no
//!    per-request key setup).
//! 3. One store call: `find_active`. One record matched: its best slot
//!    wins, unless any match is reuse. Two records: anonymous, no cookie
//!    change.
//! 4. Decide with [`lifecycle::decide`](crate::lifecycle): serve, or treat
//!    as reuse (revoke, serve anonymously, clear the cookie). Put the
//!    [`Session`] handle into the request extensions; run the inner service.
//! 5. On the way out, with the clock read again: write the handler's data
//!    patch and the maintenance the lifecycle decides now (confirm, rotate,
//!    re-rotate, re-key, touch) in one compare-and-swap, or apply the cookie
//!    the handler staged.
//! 6. Response headers: `Set-Cookie` (appended, sensitive) with
//!    `Cache-Control: no-store`; `Vary: Cookie` when a handler read the session.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum_core::body::Body;
use axum_core::response::{IntoResponse as _, Response};
use bytes::Bytes;
use http::header::{CACHE_CONTROL, COOKIE, EXPIRES, SET_COOKIE, VARY};
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use pin_project_lite::pin_project;
use time::OffsetDateTime;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument as _;

use crate::config::StoreErrorPolicy;
use crate::extract::{CookieChange, Current, Session, State};
use crate::keys::{KeyRing, MAX_COOKIE_VALUES};
use crate::lifecycle::{self, Credentials, Decision, Input, Maintenance};
use crate::login::RequestInfo;
use crate::manager::{ErrorChain, SessionError, SessionManager};
use crate::record::{DataPatch, Revocation, RevocationReason, SessionMatch};
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
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E> {
        // No session cookie: the inner future, polled in place. Finishing is
        // synchronous unless the handler logged in and then changed data
        // (a store write).
        Anonymous {
            #[pin]
            future: F,
            session: Option<Session>,
        },
        // A session cookie: resolve, call, maintain. The store calls must be
        // awaited, so this is boxed, once per request.
        Boxed {
            future: BoxFuture<Result<http::Response<ResponseBody<B>>, E>>,
        },
    }
}

impl<F, B, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, E, ResBody> Future for ResponseFuture<F, ResBody, E>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
    E: Send + 'static,
    ResBody: Send + 'static,
{
    type Output = Result<http::Response<ResponseBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut kind = self.project().kind;
        loop {
            let (session, response) = match kind.as_mut().project() {
                KindProj::Boxed { future } => return future.as_mut().poll(cx),
                KindProj::Anonymous { future, session } => {
                    let response = match future.poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                        Poll::Ready(Ok(response)) => response.map(ResponseBody::inner),
                    };
                    let session = session
                        .take()
                        .expect("ResponseFuture polled after completion");
                    (session, response)
                }
            };
            if !session.lock().patch.is_empty() {
                // The handler logged in and stored data: a store write.
                kind.set(Kind::Boxed {
                    future: Box::pin(async move {
                        Ok(finish(&session, &Secrets::default(), response).await)
                    }),
                });
                continue;
            }
            let cookie = std::mem::take(&mut session.lock().cookie);
            let set_cookie = staged_cookie(&session, cookie);
            return Poll::Ready(Ok(headers_out(&session, set_cookie, response)));
        }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SessionService<S>
where
    S: Service<Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = http::Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let manager = self.manager.clone();
        let secrets = find_secrets(req.headers(), manager.config().cookie().name());
        if secrets.is_empty() {
            // No well-formed secret: anonymous. No HMAC, no store call, and
            // the inner service is called right away, so nothing is cloned
            // or boxed.
            let info = RequestInfo::of(&req, manager.config());
            let session = Session::anonymous(manager, info);
            req.extensions_mut().insert(session.clone());
            return ResponseFuture {
                kind: Kind::Anonymous {
                    future: self.inner.call(req),
                    session: Some(session),
                },
            };
        }
        // The store must be awaited before the inner service is called: the
        // ready service goes into the future, and a fresh clone stays behind
        // to be driven to readiness by the next `poll_ready`.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let span = tracing::debug_span!("session", session.id = tracing::field::Empty);
        let info = RequestInfo::of(&req, manager.config());
        let future = async move {
            let now = manager.now();
            let state = match resolve(&manager, &secrets, now).await {
                Ok(state) => state,
                Err(error) => match manager.config().store_error_policy() {
                    StoreErrorPolicy::FailClosed => {
                        tracing::error!(error = %ErrorChain(&error), "session store failed: answering with the store-error response");
                        let mut response = own(manager.store_error_response(&error));
                        vary_cookie(response.headers_mut());
                        return Ok(response);
                    }
                    StoreErrorPolicy::ContinueAnonymous => {
                        tracing::error!(error = %ErrorChain(&error), "session store failed: serving the request as anonymous");
                        // The cookie could not be checked: it may be a live
                        // session's, so no new session may replace it.
                        State {
                            resolved_any: true,
                            ..State::default()
                        }
                    }
                },
            };
            if let Some(current) = &state.current {
                tracing::Span::current()
                    .record("session.id", tracing::field::display(current.record.id));
            }
            let session = Session::new(manager, now, info, state);
            req.extensions_mut().insert(session.clone());
            let response = inner.call(req).await?.map(ResponseBody::inner);
            Ok(finish(&session, &secrets, response).await)
        };
        ResponseFuture {
            kind: Kind::Boxed {
                future: Box::pin(future.instrument(span)),
            },
        }
    }
}

/// The well-formed values of the session cookie, at most
/// [`MAX_COOKIE_VALUES`], without repeats. On the stack.
#[derive(Default)]
pub(crate) struct Secrets {
    items: [Option<SessionSecret>; MAX_COOKIE_VALUES],
}

impl Secrets {
    pub(crate) fn is_empty(&self) -> bool {
        self.items[0].is_none()
    }

    pub(crate) fn get(&self, index: u8) -> Option<&SessionSecret> {
        self.items.get(usize::from(index))?.as_ref()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &SessionSecret> {
        self.items.iter().map_while(Option::as_ref)
    }

    fn push(&mut self, secret: SessionSecret) -> bool {
        // Comparing the request's own secrets with each other reveals
        // nothing to the client that sent them.
        if self
            .iter()
            .any(|s| s.expose_bytes() == secret.expose_bytes())
        {
            return true;
        }
        match self.items.iter_mut().find(|s| s.is_none()) {
            Some(free) => {
                *free = Some(secret);
                true
            }
            None => false,
        }
    }
}

/// The values of cookie `name`, in every `Cookie` header, that parse as a
/// secret: at most [`MAX_COOKIE_VALUES`]. Works on raw bytes (a header need
/// not be UTF-8) and allocates nothing; malformed values are skipped, never
/// an error, and scanning is linear in the header's length.
pub(crate) fn find_secrets(headers: &HeaderMap, name: &str) -> Secrets {
    let name = name.as_bytes();
    let mut secrets = Secrets::default();
    let values = headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b';'))
        .filter_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (pair[..eq].trim_ascii() == name).then(|| pair[eq + 1..].trim_ascii())
        })
        .filter_map(SessionSecret::parse_bytes);
    for secret in values {
        if !secrets.push(secret) {
            break;
        }
    }
    secrets
}

/// Steps 2–4: derive the candidates, make the one store call, decide.
async fn resolve(
    manager: &SessionManager,
    secrets: &Secrets,
    now: OffsetDateTime,
) -> Result<State, StoreError> {
    let keys = manager.keys();
    // Copied out, sized to what the request presented (usually one
    // candidate): `Candidates` has room for every value under every key
    // version (1.3 KB), and held across the store call it would sit in every
    // request's boxed future (2.4 KB with it, 1.8 KB without, in the
    // loopback benchmark's router: less to allocate and to move).
    let candidates = keys.candidates(secrets.iter()).to_vec();
    let current_version = keys.current();
    drop(keys);
    let matches = manager
        .call("find_active", manager.store().find_active(&candidates, now))
        .await?;
    let Some(first) = matches.first() else {
        // Unknown, expired or revoked: anonymous, and the cookie is left
        // alone (a parallel request's login may just have replaced it).
        return Ok(State::default());
    };
    // From here on the request presented a session it may not get: it must
    // never start a new one before login either.
    let unusable = State {
        resolved_any: true,
        ..State::default()
    };
    let id = first.record.id;
    if matches.iter().any(|m| m.record.id != id) {
        // Cookies of two sessions (cookie tossing, a restored backup):
        // trust neither, change nothing.
        tracing::error!(
            session.id = %id,
            "the request's cookies resolve to two different sessions: serving it anonymously"
        );
        return Ok(unusable);
    }
    let decide = |m: &SessionMatch| {
        lifecycle::decide(Input {
            record: &m.record,
            slot: m.slot,
            key_version: m.key_version,
            current_version,
            config: manager.config(),
            now,
            arrived_at: now,
            shared_cacheable: false,
        })
    };
    // A stale or superseded secret is reuse even when another value is the
    // current secret: both parties' cookies reached us.
    if matches.iter().any(|m| decide(m) == Decision::Reuse) {
        if manager.config().revoke_on_reuse() {
            // End the whole session, so the copy and the current secret both
            // stop working. If this write fails, the request fails closed
            // like any other store failure.
            let revocation = Revocation::new(RevocationReason::ReuseDetected);
            manager
                .call(
                    "revoke",
                    manager.store().revoke(&id, None, now, &revocation),
                )
                .await?;
            tracing::warn!(session.id = %id, "an old session secret was presented again: session revoked as reuse");
            return Ok(State {
                cookie: CookieChange::Clear,
                ..unusable
            });
        }
        tracing::info!(session.id = %id, "an old session secret was presented again");
        return Ok(unusable);
    }
    let Some(best) = matches.into_iter().min_by_key(|m| m.slot) else {
        return Ok(unusable);
    };
    Ok(State {
        current: Some(Current {
            record: best.record,
            slot: best.slot,
            key_version: best.key_version,
            value_index: best.value_index,
            maintain: true,
            pending: None,
        }),
        resolved_any: true,
        ..State::default()
    })
}

/// Steps 5–6: the data patch and maintenance (one write), or the staged
/// cookie; then the response headers.
///
/// The store writes are rare (changed data, a due touch, confirmation,
/// rotation or re-key), so the write is boxed only when it happens: the
/// per-request future stays small.
async fn finish<B: Send>(
    session: &Session,
    secrets: &Secrets,
    response: http::Response<ResponseBody<B>>,
) -> http::Response<ResponseBody<B>> {
    let (current, cookie, patch) = {
        let mut state = session.lock();
        (
            state.current.take(),
            std::mem::take(&mut state.cookie),
            std::mem::take(&mut state.patch),
        )
    };
    let mut response = response;
    let mut set_cookie = None;
    if let Some(current) = current {
        let staged = !matches!(cookie, CookieChange::Keep);
        let cacheable = shared_cacheable(response.headers());
        // Read again: conditions hold at the time of the write, not of the
        // request, so a request that outlived its session cannot revive it.
        let now = session.manager().now();
        // One key ring for the decision and the credentials it mints,
        // borrowed (no reference count) unless a write needs it held.
        let keys = session.manager().keys();
        let maintenance = maintenance_due(session, &keys, &current, !staged, cacheable, now);
        // Most requests write nothing: no write future is built for them.
        if current.pending.is_some() || !patch.is_empty() || maintenance.is_some() {
            let keys = arc_swap::Guard::into_inner(keys);
            let written: BoxFutureRef<'_, _> = Box::pin(write(
                session,
                secrets,
                &keys,
                current,
                patch,
                maintenance,
                now,
            ));
            match written.await {
                Ok(cookie) => set_cookie = cookie,
                Err(error) => {
                    // The layer's own answer: it depends on the cookie
                    // whether or not a handler looked at the session.
                    response = own(write_error_response(session.manager(), error));
                    vary_cookie(response.headers_mut());
                }
            }
        }
    }
    if let Some(staged) = staged_cookie(session, cookie) {
        set_cookie = Some(staged);
    }
    headers_out(session, set_cookie, response)
}

/// What the lifecycle decides for `current` at `now` (the time of the
/// write), when `maintain` (no handler-staged cookie change) and the
/// request may maintain it: `None` for a session that ended meanwhile.
fn maintenance_due(
    session: &Session,
    keys: &KeyRing,
    current: &Current,
    maintain: bool,
    shared_cacheable: bool,
    now: OffsetDateTime,
) -> Option<Maintenance> {
    let manager = session.manager();
    let maintainable = maintain && current.maintain && current.pending.is_none();
    if !(maintainable && current.record.is_active(now)) {
        return None;
    }
    match lifecycle::decide(Input {
        record: &current.record,
        slot: current.slot,
        key_version: current.key_version,
        current_version: keys.current(),
        config: manager.config(),
        now,
        arrived_at: session.now(),
        shared_cacheable,
    }) {
        Decision::Maintain(maintenance) => Some(maintenance),
        Decision::Serve | Decision::Reuse => None,
    }
}

/// The data patch and `maintenance` (see [`maintenance_due`]), at least
/// one of them, in one compare-and-swap at `now`; or the insert of a
/// session before login. Returns the `Set-Cookie` of a rotation.
///
/// A failed maintenance write is logged and the request still served: the
/// old cookie keeps working and the rules converge on a later request. A
/// failed data write is an error: the handler's answer would claim a
/// change that was not saved.
async fn write(
    session: &Session,
    secrets: &Secrets,
    keys: &KeyRing,
    current: Current,
    patch: DataPatch,
    maintenance: Option<Maintenance>,
    now: OffsetDateTime,
) -> Result<Option<HeaderValue>, SessionError> {
    let manager = session.manager();
    if let Some(secret) = current.pending {
        return insert_pre_login(manager, &current.record, &patch, secret).await;
    }
    let fresh_secret = maintenance
        .filter(|m| m.issues_secret())
        .map(|_| SessionSecret::generate());
    let needs_rekey = matches!(
        maintenance,
        Some(Maintenance::Rekey { .. } | Maintenance::Confirm { rekey: true })
    );
    let credentials = Credentials {
        fresh: fresh_secret.as_ref().map(|s| keys.current_credential(s)),
        rekeyed: secrets
            .get(current.value_index)
            .filter(|_| needs_rekey)
            .map(|s| keys.current_credential(s)),
    };
    let id = current.record.id;
    let config = manager.config();

    if patch.is_empty() {
        // Nothing to write (the caller builds no write for that).
        let Some(maintenance) = maintenance else {
            return Ok(None);
        };
        let mut next = lifecycle::successor(&current.record);
        lifecycle::apply(&mut next, maintenance, config, now, credentials);
        let applied = manager
            .call(
                "replace",
                manager.store().replace(&current.record, &next, now),
            )
            .await;
        let applied = log_maintenance(maintenance, id, applied);
        return Ok(match (applied, fresh_secret) {
            (true, Some(secret)) => Some(manager.set_cookie_for(&secret, &next, now)),
            _ => None,
        });
    }

    // Data changed: the patch is merged into the record as stored at the
    // time of the write. The first attempt carries the maintenance too; if
    // another request changed the record meanwhile, the retry carries only
    // the patch (maintenance is best effort: the next request does it).
    let mut first = true;
    let mut with_maintenance = false;
    let written = manager
        .update(current.record, |stored, now| {
            let mut next = lifecycle::successor(stored);
            patch.apply(&mut next.data);
            crate::record::validate_data(&next.data).map_err(SessionError::InvalidData)?;
            with_maintenance = std::mem::take(&mut first) && maintenance.is_some();
            if let (true, Some(maintenance)) = (with_maintenance, maintenance) {
                lifecycle::apply(&mut next, maintenance, config, now, credentials);
            }
            Ok(next)
        })
        .await?;
    tracing::debug!(session.id = %id, with_maintenance, "session data written");
    Ok(match (with_maintenance, fresh_secret) {
        (true, Some(secret)) => {
            Some(manager.set_cookie_for(&secret, &written, written.last_seen_at))
        }
        _ => None,
    })
}

/// A session before login that a handler's `insert` started: one insert,
/// with the data, then its cookie (a browser-session cookie, so a
/// handler-requested cookie change: `no-store` like a login).
async fn insert_pre_login(
    manager: &SessionManager,
    record: &crate::SessionRecord,
    patch: &DataPatch,
    secret: SessionSecret,
) -> Result<Option<HeaderValue>, SessionError> {
    let mut record = record.clone();
    patch.apply(&mut record.data);
    if record.data.is_empty() {
        // Set and removed again: nothing to keep, so no session.
        return Ok(None);
    }
    crate::record::validate_data(&record.data).map_err(SessionError::InvalidData)?;
    manager
        .call("insert", manager.store().insert(&record))
        .await?;
    tracing::info!(session.id = %record.id, "session before login created");
    Ok(Some(manager.set_cookie_header(&secret, None)))
}

fn log_maintenance(
    maintenance: Maintenance,
    id: crate::SessionId,
    result: Result<bool, StoreError>,
) -> bool {
    match result {
        Ok(applied) => {
            tracing::debug!(session.id = %id, applied, ?maintenance, "session maintained");
            applied
        }
        Err(error) => {
            tracing::warn!(session.id = %id, ?maintenance, error = %ErrorChain(&error), "session maintenance failed; the old cookie keeps working");
            false
        }
    }
}

/// The response when the data write failed: the configured store-error
/// response for a store failure, else the error's own (kind only).
fn write_error_response(manager: &SessionManager, error: SessionError) -> Response {
    tracing::error!(error = %ErrorChain(&error), "session data not saved");
    match error {
        SessionError::Store(error) => manager.store_error_response(&error),
        other => (other.status(), other.body_text()).into_response(),
    }
}

/// The `Set-Cookie` value of the cookie change the handler staged.
fn staged_cookie(session: &Session, cookie: CookieChange) -> Option<HeaderValue> {
    let manager = session.manager();
    match cookie {
        CookieChange::Set { secret, max_age } => Some(manager.set_cookie_header(&secret, max_age)),
        CookieChange::Clear => Some(manager.clear_cookie_header()),
        CookieChange::Keep => None,
    }
}

/// Step 6: the session's `Set-Cookie`, appended (cookies other code set
/// stay), with `Cache-Control: no-store`; `Vary: Cookie` when a handler read
/// the session.
fn headers_out<B>(
    session: &Session,
    set_cookie: Option<HeaderValue>,
    mut response: http::Response<B>,
) -> http::Response<B> {
    let headers = response.headers_mut();
    if let Some(value) = set_cookie {
        headers.append(SET_COOKIE, value);
        // A secret must never be stored by a cache, shared or private.
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.remove(EXPIRES);
        headers.remove(CDN_CACHE_CONTROL);
        headers.remove(SURROGATE_CONTROL);
    }
    if session.was_extracted() {
        vary_cookie(headers);
    }
    response
}

/// The layer's own response (a store error, a refused write) as a
/// [`ResponseBody`].
fn own<B>(response: Response) -> http::Response<ResponseBody<B>> {
    response.map(|body| ResponseBody {
        kind: BodyKind::Own { body },
    })
}

pin_project! {
    /// The response body of [`SessionService`]: the inner service's own
    /// body, passed through untouched (no boxing, whatever its type), or the
    /// layer's own response (a store error, a refused data write).
    pub struct ResponseBody<B> {
        #[pin]
        kind: BodyKind<B>,
    }
}

pin_project! {
    #[project = BodyKindProj]
    enum BodyKind<B> {
        Inner { #[pin] body: B },
        Own { #[pin] body: Body },
    }
}

impl<B> ResponseBody<B> {
    fn inner(body: B) -> Self {
        Self {
            kind: BodyKind::Inner { body },
        }
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            BodyKind::Inner { .. } => f.write_str("ResponseBody::Inner"),
            BodyKind::Own { .. } => f.write_str("ResponseBody::Own"),
        }
    }
}

impl<B> http_body::Body for ResponseBody<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            BodyKindProj::Inner { body } => body
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(Into::into))),
            BodyKindProj::Own { body } => body
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Inner { body } => body.is_end_stream(),
            BodyKind::Own { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.kind {
            BodyKind::Inner { body } => body.size_hint(),
            BodyKind::Own { body } => body.size_hint(),
        }
    }
}

const CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");
const SURROGATE_CONTROL: HeaderName = HeaderName::from_static("surrogate-control");

/// Whether shared caches may store the response: `public` or `s-maxage` in
/// `Cache-Control`, or any `CDN-Cache-Control` / `Surrogate-Control`. A value
/// that is not ASCII counts as cacheable: when in doubt, issue no secret.
pub(crate) fn shared_cacheable(headers: &HeaderMap) -> bool {
    if headers.contains_key(CDN_CACHE_CONTROL) || headers.contains_key(SURROGATE_CONTROL) {
        return true;
    }
    headers.get_all(CACHE_CONTROL).iter().any(|value| {
        let Ok(value) = value.to_str() else {
            return true;
        };
        value.split(',').any(|directive| {
            let name = directive.split('=').next().unwrap_or_default().trim();
            name.eq_ignore_ascii_case("public") || name.eq_ignore_ascii_case("s-maxage")
        })
    })
}

/// Adds `Cookie` to `Vary`, merged into one value with what is there, once.
pub(crate) fn vary_cookie(headers: &mut HeaderMap) {
    let mut merged = String::new();
    for value in headers.get_all(VARY) {
        let Ok(value) = value.to_str() else {
            // Not ASCII: leave it, and add ours beside it.
            headers.append(VARY, HeaderValue::from_static("Cookie"));
            return;
        };
        let already = value
            .split(',')
            .map(str::trim)
            .any(|token| token == "*" || token.eq_ignore_ascii_case("cookie"));
        if already {
            return;
        }
        if !value.trim().is_empty() {
            if !merged.is_empty() {
                merged.push_str(", ");
            }
            merged.push_str(value.trim());
        }
    }
    if merged.is_empty() {
        headers.insert(VARY, HeaderValue::from_static("Cookie"));
        return;
    }
    merged.push_str(", Cookie");
    if let Ok(value) = HeaderValue::from_str(&merged) {
        headers.insert(VARY, value);
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

    fn find_secret(headers: &HeaderMap, name: &str) -> Option<SessionSecret> {
        let mut secrets = find_secrets(headers, name);
        secrets.items[0].take()
    }

    #[test]
    fn finds_every_well_formed_value_of_the_name_up_to_four() {
        let value = |b: u8| SessionSecret::from_bytes([b; 32]).encode();
        let h = headers(&[
            b"a=1; sid=short",
            format!("sid={}; sid={}; sid={}", value(1), value(2), value(1)).as_bytes(),
        ]);
        let found: Vec<_> = find_secrets(&h, "sid")
            .iter()
            .map(|s| s.expose_bytes()[0])
            .collect();
        assert_eq!(found, [1, 2]);
        assert!(find_secrets(&h, "other").is_empty());
        assert!(find_secret(&headers(&[format!("xsid={}", value(1)).as_bytes()]), "sid").is_none());
        assert!(find_secret(&headers(&[b"sid=\xff\xfe; \x80"]), "sid").is_none());
        let six: String = (1..=6).map(|b| format!("sid={}; ", value(b))).collect();
        let found: Vec<_> = find_secrets(&headers(&[six.as_bytes()]), "sid")
            .iter()
            .map(|s| s.expose_bytes()[0])
            .collect();
        assert_eq!(found, [1, 2, 3, 4]);
    }

    #[test]
    fn shared_cacheable_responses_are_recognised() {
        let with = |name: &str, value: &str| {
            let mut map = HeaderMap::new();
            map.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
            shared_cacheable(&map)
        };
        assert!(with("cache-control", "public, max-age=600"));
        assert!(with("cache-control", "max-age=60, S-MaxAge=600"));
        assert!(with("cdn-cache-control", "max-age=60"));
        assert!(with("surrogate-control", "max-age=60"));
        assert!(!with("cache-control", "private, max-age=600"));
        assert!(!with("cache-control", "no-store"));
        assert!(!shared_cacheable(&HeaderMap::new()));
    }

    #[test]
    fn vary_cookie_is_merged_once() {
        let vary = |values: &[&str]| {
            let mut map = HeaderMap::new();
            for v in values {
                map.append(VARY, HeaderValue::from_str(v).unwrap());
            }
            vary_cookie(&mut map);
            map.get_all(VARY)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(vary(&[]), ["Cookie"]);
        assert_eq!(vary(&["Accept-Encoding"]), ["Accept-Encoding, Cookie"]);
        assert_eq!(
            vary(&["Accept-Encoding", "Origin"]),
            ["Accept-Encoding, Origin, Cookie"]
        );
        assert_eq!(vary(&["accept, cookie"]), ["accept, cookie"]);
        assert_eq!(vary(&["*"]), ["*"]);
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
