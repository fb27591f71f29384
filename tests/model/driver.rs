//! Runs a sequence of operations against a real Router under `SessionLayer`
//! and the model side by side, and checks the invariants after every step.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Query;
use axum::routing::post;
use http::{Request, header};
use tokio::sync::Barrier;
use tower::ServiceExt as _;
use tower_hmac_session::{
    KeyRing, KeyVersion, MockClock, Session, SessionConfig, SessionError, SessionId, SessionLayer,
    SessionRecord, SessionSecret, SessionStore,
};

use crate::common::{self, COOKIE, Harness, T0, TestResponse};
use crate::ops::{Call, Cookie, Data, Op};
use crate::spec::{self, End, Model, Observed, Resolved, SetCookie};

/// Key versions a run may reach.
const MAX_VERSION: u32 = 32;

/// The config of every run: short lifetimes, so that random clock steps
/// cross every boundary; no per-subject cap.
pub(crate) fn config() -> SessionConfig {
    let secs = |s: i64| Duration::from_secs(s.unsigned_abs());
    SessionConfig::builder()
        .idle_timeout(secs(spec::IDLE))
        .absolute_lifetime(secs(spec::ABSOLUTE))
        .access_ttl(Some(secs(spec::ACCESS_TTL)))
        .rotation_grace(secs(spec::GRACE))
        .touch_interval(secs(spec::TOUCH))
        .pre_login_idle_timeout(secs(spec::PRE_LOGIN_IDLE))
        .pre_login_absolute_lifetime(secs(spec::PRE_LOGIN_ABSOLUTE))
        .max_sessions_per_subject(None)
        .build()
        .unwrap()
}

/// The ring of `versions`, `current` first; each version's key is its own.
fn ring(current: u32, versions: &BTreeSet<u32>) -> KeyRing {
    let versions: Vec<u32> = versions.iter().copied().collect();
    common::ring(current, &versions)
}

#[derive(serde::Deserialize)]
struct ModelQuery {
    set: Option<String>,
    value: Option<String>,
    remove: Option<String>,
    #[serde(default)]
    slow: u64,
    #[serde(default)]
    pair: bool,
}

#[derive(serde::Deserialize)]
struct Target {
    id: SessionId,
}

/// The shared test app plus `/model` (reports the session the handler sees
/// and changes its data; `pair` waits for the other request of a pair, so
/// both resolve before either writes) and `/revoke-device`.
fn router(h: &Harness) -> Router {
    let clock: MockClock = h.clock.clone();
    let barrier = Arc::new(Barrier::new(2));
    let model = post(move |session: Session, Query(q): Query<ModelQuery>| {
        let (clock, barrier) = (clock.clone(), barrier.clone());
        async move {
            if q.pair {
                barrier.wait().await;
            }
            // The request runs this long.
            clock.advance(Duration::from_secs(q.slow));
            if let Some(key) = &q.set {
                session.insert(key, q.value.clone().unwrap_or_default())?;
            }
            if let Some(key) = &q.remove {
                session.remove::<serde_json::Value>(key)?;
            }
            Ok::<_, SessionError>(match session.active() {
                Some(a) => serde_json::json!({
                    "id": a.id.to_string(),
                    "subject": a.subject,
                    "data": a.data,
                })
                .to_string(),
                None => "anonymous".to_owned(),
            })
        }
    });
    let revoke_device = post(|session: Session, Query(q): Query<Target>| async move {
        session
            .revoke_device(&q.id)
            .await
            .map(|outcome| format!("{outcome:?}"))
    });
    common::app(h.clock.clone())
        .route("/model", model)
        .route("/revoke-device", revoke_device)
        .layer(SessionLayer::new(h.manager.clone()))
}

pub(crate) fn harness_on(store: Arc<common::TestStore>) -> Harness {
    let mut h = Harness::on(store, config(), common::ring(1, &[1]));
    h.router = router(&h);
    h
}

fn request(method: &str, uri: &str, values: &[String]) -> Request<Body> {
    let mut req = Request::builder().method(method).uri(uri);
    if !values.is_empty() {
        let cookie = values
            .iter()
            .map(|v| format!("{COOKIE}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        req = req.header(header::COOKIE, cookie);
    }
    req.body(Body::empty()).unwrap()
}

fn observe(res: &TestResponse) -> Observed {
    let cookie = match res.session_cookie() {
        None => SetCookie::None,
        Some(_) if res.clears_cookie() => SetCookie::Clear,
        Some(c) => SetCookie::Set {
            secret: c.value().to_owned(),
            max_age: c.max_age().map(|d| d.whole_seconds()),
        },
    };
    Observed {
        status: res.status.as_u16(),
        body: res.body.clone(),
        cookie,
    }
}

fn model_uri(call: &Call, slow: u32, pair: bool) -> String {
    let mut uri = format!("/model?slow={slow}&pair={pair}");
    match call.data {
        Data::Read => {}
        Data::Set(k, v) => {
            uri += &format!("&set={}&value={}", spec::key(k), spec::value(v));
        }
        Data::Remove(k) => uri += &format!("&remove={}", spec::key(k)),
    }
    uri
}

/// Sends one request and returns what the model compares.
async fn send(h: &Harness, method: &str, uri: &str, values: &[String]) -> Observed {
    let res = TestResponse::from(
        h.router
            .clone()
            .oneshot(request(method, uri, values))
            .await
            .unwrap(),
    )
    .await;
    observe(&res)
}

/// One run: every op against the app and the model, the invariants after
/// each. The error names the step, the op and what differed.
pub(crate) async fn run(h: &Harness, ops: &[Op]) -> Result<(), String> {
    let mut m = Model::new(usize::from(crate::ops::CLIENTS));
    // A ring per key version there ever was, to derive the lookup keys the
    // store must hold (a ring holds at most 8).
    let all_keys: Vec<KeyRing> = (1..=MAX_VERSION).map(|v| common::ring(v, &[v])).collect();
    // Every run starts with two clients logged in (as different subjects),
    // so that most runs reach rotation.
    let prelude = [
        Op::Login {
            client: 0,
            user: 0,
            lost: false,
        },
        Op::Login {
            client: 1,
            user: 1,
            lost: false,
        },
    ];
    for op in &prelude {
        step_op(h, &mut m, op, &all_keys).await?;
    }
    for (step, op) in ops.iter().enumerate() {
        let before = m.clone();
        let result = match step_op(h, &mut m, op, &all_keys).await {
            Ok(()) => check_store(h, &m, &all_keys).await,
            Err(e) => Err(e),
        };
        result.map_err(|e| {
            format!(
                "step {step}: {op:?} at t={}s: {e}\nclients: {:?}\nsessions: {:#?}",
                before.now, before.clients, before.sessions
            )
        })?;
    }
    Ok(())
}

async fn step_op(h: &Harness, m: &mut Model, op: &Op, all_keys: &[KeyRing]) -> Result<(), String> {
    let user = |u: u8| format!("user{u}");
    match *op {
        Op::Request { call, lost, slow } => {
            let client = usize::from(call.client);
            let values = m.presented(client, call.cookie);
            let dead = dead_ids(m);
            let faithful = faithful(m, client, &values);
            m.taint(client, &values);
            let seen = send(h, "POST", &model_uri(&call, slow, false), &values).await;
            let resolved = m.resolve(&values);
            check_reuse(h, m, &resolved, &seen).await?;
            let handled = m.handle(resolved, !values.is_empty(), call.data);
            m.now += i64::from(slow);
            m.finish(handled, &seen)?;
            check_served(&seen, &dead, faithful.map(|i| (i, &*m)))?;
            if !lost {
                m.follow(client, &seen.cookie);
            }
        }
        Op::Pair(a, b) => pair(h, m, a, b, all_keys).await?,
        Op::Login {
            client,
            user: u,
            lost,
        } => {
            let c = usize::from(client);
            let values = m.presented(c, Cookie::Jar);
            let seen = send(h, "POST", &format!("/login?user={}", user(u)), &values).await;
            let resolved = m.resolve(&values);
            m.login(&resolved, user(u), &seen)?;
            if !lost {
                m.follow(c, &seen.cookie);
            }
        }
        Op::Logout { client } => {
            let c = usize::from(client);
            let values = m.presented(c, Cookie::Jar);
            let seen = send(h, "POST", "/logout", &values).await;
            let resolved = m.resolve(&values);
            check_reuse(h, m, &resolved, &seen).await?;
            match resolved {
                Resolved::Served { index, .. } => {
                    m.end(index, End::Logout);
                    seen_is(&seen, 200, "true", &SetCookie::Clear)?;
                }
                Resolved::Reuse(_) => seen_is(&seen, 200, "false", &SetCookie::Clear)?,
                _ => seen_is(&seen, 200, "false", &SetCookie::None)?,
            }
            m.follow(c, &seen.cookie);
        }
        Op::LogoutEverywhere { client } | Op::LogoutOthers { client } | Op::Renew { client } => {
            let c = usize::from(client);
            let values = m.presented(c, Cookie::Jar);
            let uri = match op {
                Op::LogoutEverywhere { .. } => "/logout-everywhere",
                Op::LogoutOthers { .. } => "/logout-others",
                _ => "/renew",
            };
            let seen = send(h, "POST", uri, &values).await;
            let resolved = m.resolve(&values);
            check_reuse(h, m, &resolved, &seen).await?;
            subject_op(m, op, resolved, &seen)?;
            m.follow(c, &seen.cookie);
        }
        Op::RevokeDevice { client, target } => {
            if m.sessions.is_empty() {
                return Ok(());
            }
            let c = usize::from(client);
            let target = usize::from(target) % m.sessions.len();
            let values = m.presented(c, Cookie::Jar);
            let uri = format!("/revoke-device?id={}", m.sessions[target].id);
            let seen = send(h, "POST", &uri, &values).await;
            let resolved = m.resolve(&values);
            check_reuse(h, m, &resolved, &seen).await?;
            revoke_device(m, resolved, target, &seen)?;
            m.follow(c, &seen.cookie);
        }
        Op::RevokeAll { user: u } => {
            let count = h
                .manager
                .revoke_all_for_subject(&user(u), None)
                .await
                .map_err(|e| format!("revoke_all_for_subject: {e}"))?;
            let expected = m.end_subject(&user(u), None, End::Admin);
            if !expected.contains(&count) {
                return Err(format!("revoked {count} sessions, expected {expected:?}"));
            }
        }
        Op::Share { from, to } => {
            let jar = m.clients[usize::from(from)].jar.clone();
            if let Some(i) = jar.as_deref().and_then(|j| m.owner(j)) {
                m.sessions[i].tainted = true;
            }
            let to = &mut m.clients[usize::from(to)];
            to.jar = jar.clone();
            to.history.extend(jar);
        }
        Op::AddKey => {
            let next = m.versions.last().copied().unwrap_or(0) + 1;
            // A ring holds at most 8 versions.
            if next > MAX_VERSION || m.versions.len() == 8 {
                return Ok(());
            }
            m.versions.insert(next);
            m.current_version = next;
            h.manager.set_key_ring(ring(next, &m.versions));
        }
        Op::RetireKey => {
            let Some(&oldest) = m.versions.iter().find(|&&v| v != m.current_version) else {
                return Ok(());
            };
            m.versions.remove(&oldest);
            h.manager.set_key_ring(ring(m.current_version, &m.versions));
        }
        Op::Advance(secs) => {
            h.advance(u64::from(secs));
            m.now += i64::from(secs);
        }
    }
    Ok(())
}

/// Two `/model` requests resolved together (both look the session up before
/// either handler goes on), then finished in whatever order the runtime
/// and the store give. The model tries each order of the two lookups (or
/// both lookups before either's revocation on reuse, so that both see the
/// reuse) and of the two writes, and keeps the first that explains both
/// responses and what the store holds after them.
async fn pair(
    h: &Harness,
    m: &mut Model,
    a: Call,
    b: Call,
    all_keys: &[KeyRing],
) -> Result<(), String> {
    let (ca, cb) = (usize::from(a.client), usize::from(b.client));
    let (va, vb) = (m.presented(ca, a.cookie), m.presented(cb, b.cookie));
    let dead = dead_ids(m);
    // Either request may be the one that presents an old secret.
    m.taint(ca, &va);
    m.taint(cb, &vb);
    let (fa, fb) = (faithful(m, ca, &va), faithful(m, cb, &vb));
    let (ua, ub) = (model_uri(&a, 0, true), model_uri(&b, 0, true));
    let (ra, rb) = tokio::join!(
        h.router.clone().oneshot(request("POST", &ua, &va)),
        h.router.clone().oneshot(request("POST", &ub, &vb)),
    );
    let sa = observe(&TestResponse::from(ra.unwrap()).await);
    let sb = observe(&TestResponse::from(rb.unwrap()).await);
    let mut errors = Vec::new();
    for (lookups, a_writes_first) in [
        ("a, b", false),
        ("a, b", true),
        ("b, a", true),
        ("b, a", false),
        ("together", true),
        ("together", false),
    ] {
        let mut t = m.clone();
        let (resolved_a, resolved_b) = match lookups {
            "a, b" => {
                let x = t.resolve(&va);
                (x, t.resolve(&vb))
            }
            "b, a" => {
                let y = t.resolve(&vb);
                (t.resolve(&va), y)
            }
            _ => {
                // Both read the record before either revoked it.
                let mut before = t.clone();
                let y = before.resolve(&vb);
                let x = t.resolve(&va);
                if let spec::Resolved::Reuse(i) = y {
                    t.sessions[i].ended.get_or_insert(spec::End::Reuse);
                }
                (x, y)
            }
        };
        let ha = t.handle(resolved_a, !va.is_empty(), a.data);
        let hb = t.handle(resolved_b, !vb.is_empty(), b.data);
        let result = if a_writes_first {
            t.finish(ha, &sa).and_then(|()| t.finish(hb, &sb))
        } else {
            t.finish(hb, &sb).and_then(|()| t.finish(ha, &sa))
        };
        // Both orders may answer alike and leave different data (a remove
        // and a set of one key): the store says which happened.
        let result = match result {
            Ok(()) => check_store(h, &t, all_keys).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                spec::note(if a_writes_first {
                    "pair, a wrote first"
                } else {
                    "pair, b wrote first"
                });
                *m = t;
                check_served(&sa, &dead, fa.map(|i| (i, &*m)))?;
                check_served(&sb, &dead, fb.map(|i| (i, &*m)))?;
                m.follow(ca, &sa.cookie);
                m.follow(cb, &sb.cookie);
                return Ok(());
            }
            Err(e) => errors.push(format!(
                "lookups {lookups}, writes {}: {e}",
                if a_writes_first { "a, b" } else { "b, a" },
            )),
        }
    }
    Err(format!(
        "no order explains the pair: a {sa:?}, b {sb:?}\n{}",
        errors.join("\n")
    ))
}

fn seen_is(seen: &Observed, status: u16, body: &str, cookie: &SetCookie) -> Result<(), String> {
    if (seen.status, seen.body.as_str(), &seen.cookie) == (status, body, cookie) {
        return Ok(());
    }
    Err(format!(
        "expected {status} {body:?} with cookie {cookie:?}, got {seen:?}"
    ))
}

/// A handler that fails with 401 before touching the session: the way out
/// still maintains a served session (a session before login, here).
fn refused(m: &mut Model, resolved: Resolved, seen: &Observed) -> Result<(), String> {
    let mut handled = m.handle(resolved, true, Data::Read);
    handled.status = 401;
    handled.body = spec::Expected::Text("not signed in".into());
    m.finish(handled, seen)
}

fn subject_op(m: &mut Model, op: &Op, resolved: Resolved, seen: &Observed) -> Result<(), String> {
    let (index, subject, persistent, absolute) = match &resolved {
        Resolved::Served { index, found, .. } => (
            *index,
            found.subject.clone(),
            found.persistent,
            found.absolute,
        ),
        _ => return refused(m, resolved, seen),
    };
    let max_age = persistent.then_some(absolute - m.now);
    match (op, subject) {
        (Op::Renew { .. }, _) => {
            let secret = new_secret(seen, 200, "renewed", max_age)?;
            m.renew(index, secret);
            Ok(())
        }
        (_, None) => refused(m, resolved, seen),
        (Op::LogoutEverywhere { .. }, Some(subject)) => {
            let count = m.end_subject(&subject, None, End::LogoutEverywhere);
            let body = seen
                .body
                .parse()
                .map_err(|_| format!("a count: {seen:?}"))?;
            if !count.contains(&body) {
                return Err(format!("expected {count:?} revoked: {seen:?}"));
            }
            seen_is(seen, 200, &seen.body, &SetCookie::Clear)
        }
        (_, Some(subject)) => {
            let secret = match &seen.cookie {
                SetCookie::Set { secret, .. } => secret.clone(),
                _ => return Err(format!("logout-others renews the secret: {seen:?}")),
            };
            m.renew(index, secret);
            let count = m.end_subject(&subject, Some(index), End::LogoutOthers);
            let body = seen
                .body
                .parse()
                .map_err(|_| format!("a count: {seen:?}"))?;
            if !count.contains(&body) {
                return Err(format!("expected {count:?} revoked: {seen:?}"));
            }
            new_secret(seen, 200, &seen.body, max_age).map(drop)
        }
    }
}

fn new_secret(
    seen: &Observed,
    status: u16,
    body: &str,
    max_age: Option<i64>,
) -> Result<String, String> {
    match &seen.cookie {
        SetCookie::Set {
            secret,
            max_age: seen_age,
        } if (seen.status, seen.body.as_str(), *seen_age) == (status, body, max_age) => {
            Ok(secret.clone())
        }
        _ => Err(format!(
            "expected {status} {body:?} with a new secret, Max-Age {max_age:?}; got {seen:?}"
        )),
    }
}

/// `Session::revoke_device`: only a session of the caller's own subject.
fn revoke_device(
    m: &mut Model,
    resolved: Resolved,
    target: usize,
    seen: &Observed,
) -> Result<(), String> {
    let (index, subject) = match &resolved {
        Resolved::Served { index, found, .. } if found.subject.is_some() => {
            (*index, found.subject.clone())
        }
        _ => return refused(m, resolved, seen),
    };
    let t = &m.sessions[target];
    // A session that expired but was never revoked: every store answers
    // `Revoked` today; the model leaves that open, as it does for counts.
    let revoked = t.active(m.now) && t.subject == subject;
    let either = !revoked && t.ended.is_none() && t.subject == subject;
    if revoked || either {
        m.sessions[target].ended = Some(End::RevokedByUser);
    }
    if revoked && target == index {
        return seen_is(seen, 200, "Revoked", &SetCookie::Clear);
    }
    if !either && revoked != (seen.body == "Revoked") {
        return Err(format!("expected revoked: {revoked}, got {seen:?}"));
    }
    // The caller's own session is maintained on the way out as usual.
    let mut handled = m.handle(resolved, true, Data::Read);
    handled.body = spec::Expected::Text(seen.body.clone());
    m.finish(handled, seen)
}

/// The ids of sessions that must never serve again: revoked or expired.
fn dead_ids(m: &Model) -> Vec<String> {
    m.sessions
        .iter()
        .filter(|s| !s.active(m.now))
        .map(|s| s.id.clone())
        .collect()
}

/// The session a request of `client` must be served from whatever the
/// rotations did: it presents exactly its cookie (having followed every
/// `Set-Cookie` it received), nobody else ever presented one of the
/// session's secrets, and nothing the docs name ended it (a logout, a
/// revocation, a login replacing it, expiry, or its key version retired).
fn faithful(m: &Model, client: usize, values: &[String]) -> Option<usize> {
    let jar = m.clients[client].jar.as_ref()?;
    if values != std::slice::from_ref(jar) {
        return None;
    }
    let index = m.owner(jar)?;
    let s = &m.sessions[index];
    let documented_end = matches!(s.ended, Some(e) if e != End::Reuse);
    let expired = m.now >= s.expires || m.now >= s.absolute;
    let version = [
        Some(&s.current),
        s.previous.as_ref().map(|p| &p.cred),
        s.superseded.as_ref(),
    ]
    .into_iter()
    .flatten()
    .find(|c| &c.secret == jar)
    .map(|c| c.version)?;
    let retired = !m.versions.contains(&version);
    (!s.tainted && !documented_end && !expired && !retired).then_some(index)
}

/// Invariants on one response: a dead session never serves; a client that
/// follows its cookies is served by its session (rotation never logs it out).
fn check_served(
    seen: &Observed,
    dead: &[String],
    faithful: Option<(usize, &Model)>,
) -> Result<(), String> {
    if let Some(id) = seen.served_id()
        && dead.contains(&id)
    {
        return Err(format!(
            "INVARIANT: a revoked or expired session served: {seen:?}"
        ));
    }
    if let Some((index, m)) = faithful {
        spec::note("faithful client checked");
        let s = &m.sessions[index];
        // A request that outlives its session's expiry is refused its write.
        let expired_meanwhile = s.ended.is_none() && !s.active(m.now);
        if s.ended == Some(End::Reuse)
            || (!expired_meanwhile
                && (seen.status != 200 || seen.served_id() != Some(s.id.clone())))
        {
            return Err(format!(
                "INVARIANT: a client that follows every Set-Cookie lost its session {}: {seen:?}",
                s.id
            ));
        }
    }
    Ok(())
}

/// Reuse (a previous secret after its confirmed successor's grace, or a
/// superseded one) ends the session: anonymous, the cookie cleared, and the
/// store no longer has it.
async fn check_reuse(
    h: &Harness,
    m: &Model,
    resolved: &Resolved,
    seen: &Observed,
) -> Result<(), String> {
    let Resolved::Reuse(index) = resolved else {
        return Ok(());
    };
    let s = &m.sessions[index.to_owned()];
    let id: SessionId = s.id.parse().unwrap();
    let stored = h.store.inner.get_active(&id, h.manager.now()).await;
    if seen.cookie != SetCookie::Clear || seen.served_id().is_some() || !matches!(stored, Ok(None))
    {
        return Err(format!(
            "INVARIANT: reuse must end session {}: {seen:?}, stored {stored:?}",
            s.id
        ));
    }
    Ok(())
}

/// After every step: the store holds exactly the live sessions of the model,
/// each as the model says (times, slots, key versions, lookup keys, data);
/// no absolute expiry ever moves.
async fn check_store(h: &Harness, m: &Model, all_keys: &[KeyRing]) -> Result<(), String> {
    let now = h.manager.now();
    if now != T0 + Duration::from_secs(m.now.unsigned_abs()) {
        return Err(format!("clock: {now} vs model t={}", m.now));
    }
    for s in &m.sessions {
        let id: SessionId = s.id.parse().map_err(|e| format!("id {}: {e:?}", s.id))?;
        let stored = h
            .store
            .inner
            .get_active(&id, now)
            .await
            .map_err(|e| format!("get_active: {e}"))?;
        match (s.active(m.now), stored) {
            (false, None) => {}
            (false, Some(r)) => {
                return Err(format!(
                    "INVARIANT: session {} must be over ({:?}, expires t={}, absolute t={}) but is stored active: {r:?}",
                    s.id, s.ended, s.expires, s.absolute
                ));
            }
            (true, None) => {
                return Err(format!(
                    "session {} is live in the model, not in the store",
                    s.id
                ));
            }
            (true, Some(r)) => compare(s, &r, all_keys)?,
        }
    }
    Ok(())
}

fn at(secs: i64) -> time::OffsetDateTime {
    T0 + Duration::from_secs(secs.unsigned_abs())
}

fn compare(s: &spec::Sess, r: &SessionRecord, all_keys: &[KeyRing]) -> Result<(), String> {
    let lifetime = match s.subject {
        Some(_) => spec::ABSOLUTE,
        None => spec::PRE_LOGIN_ABSOLUTE,
    };
    // The absolute expiry is the creation time plus the lifetime, forever.
    if r.absolute_expires_at != at(s.created + lifetime) || r.expires_at > r.absolute_expires_at {
        return Err(format!(
            "INVARIANT: absolute lifetime of {} extended: created t={}, record {r:?}",
            s.id, s.created
        ));
    }
    let lookup = |c: &spec::Cred| {
        let secret = SessionSecret::parse(&c.secret).unwrap();
        tower_hmac_session::Credential {
            lookup_key: all_keys[c.version as usize - 1]
                .lookup_key(KeyVersion(c.version), &secret)
                .unwrap(),
            key_version: KeyVersion(c.version),
        }
    };
    let data: serde_json::Map<String, serde_json::Value> = s
        .data
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    let fields = [
        ("subject", r.subject == s.subject),
        ("persistent", r.persistent == s.persistent),
        ("created_at", r.created_at == at(s.created)),
        ("last_seen_at", r.last_seen_at == at(s.last_seen)),
        ("expires_at", r.expires_at == at(s.expires)),
        (
            "access_expires_at",
            r.access_expires_at == at(s.access_expires),
        ),
        ("current", r.current == lookup(&s.current)),
        (
            "previous",
            r.previous
                .map(|p| (p.credential, p.rotated_at, p.valid_until))
                == s.previous
                    .as_ref()
                    .map(|p| (lookup(&p.cred), at(p.rotated_at), p.valid_until.map(at))),
        ),
        (
            "superseded",
            r.superseded == s.superseded.as_ref().map(lookup),
        ),
        ("data", r.data == data),
    ];
    let wrong: Vec<&str> = fields.iter().filter(|f| !f.1).map(|f| f.0).collect();
    if !wrong.is_empty() {
        return Err(format!(
            "session {} differs from the model in {wrong:?}:\nmodel {s:#?}\nstore {r:#?}",
            s.id
        ));
    }
    Ok(())
}

/// A store for `SessionStore` backends, wrapped for the harness.
pub(crate) fn wrap(store: impl SessionStore) -> Arc<common::TestStore> {
    Arc::new(common::TestStore::wrap(store))
}
