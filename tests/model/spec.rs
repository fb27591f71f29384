//! The reference model: DESIGN.md's session rules over plain data, no I/O.
//!
//! Times are whole seconds from `T0`. Each request is three steps, kept apart
//! so that two concurrent requests can be modelled in any order: `resolve`
//! (the one store lookup, and a revocation on reuse), `handle` (what the
//! handler sees and changes) and `finish` (the write on the way out, with
//! the clock read again, and the `Set-Cookie`). `finish` compares the real
//! response with what the model expects, and takes each fresh secret from
//! it: a new secret is random, so the model only knows *that* one is due.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

thread_local! {
    /// How often each rule applied in this thread's runs (a run's driver
    /// runs on its test's thread): shows what the random sequences reach.
    static STATS: RefCell<BTreeMap<&'static str, u64>> = const { RefCell::new(BTreeMap::new()) };
}

/// Counts one use of a rule.
pub(crate) fn note(what: &'static str) {
    STATS.with(|s| *s.borrow_mut().entry(what).or_default() += 1);
}

/// The counts so far, and a reset.
pub(crate) fn take_stats() -> BTreeMap<&'static str, u64> {
    STATS.with(|s| std::mem::take(&mut *s.borrow_mut()))
}

/// The config every run uses (see `driver::config`).
pub(crate) const IDLE: i64 = 3_600;
pub(crate) const ABSOLUTE: i64 = 14_400;
pub(crate) const ACCESS_TTL: i64 = 900;
pub(crate) const GRACE: i64 = 60;
pub(crate) const TOUCH: i64 = 300;
pub(crate) const PRE_LOGIN_IDLE: i64 = 1_800;
pub(crate) const PRE_LOGIN_ABSOLUTE: i64 = 7_200;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cred {
    pub(crate) secret: String,
    pub(crate) version: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Prev {
    pub(crate) cred: Cred,
    pub(crate) rotated_at: i64,
    /// `None` while the current secret is unconfirmed.
    pub(crate) valid_until: Option<i64>,
}

/// Why a session ended before its expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    Logout,
    ReplacedByLogin,
    RevokedByUser,
    LogoutEverywhere,
    LogoutOthers,
    Admin,
    Reuse,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Sess {
    pub(crate) id: String,
    pub(crate) subject: Option<String>,
    pub(crate) persistent: bool,
    pub(crate) idle: i64,
    pub(crate) created: i64,
    pub(crate) last_seen: i64,
    pub(crate) expires: i64,
    pub(crate) absolute: i64,
    pub(crate) access_expires: i64,
    pub(crate) current: Cred,
    pub(crate) previous: Option<Prev>,
    pub(crate) superseded: Option<Cred>,
    pub(crate) ended: Option<End>,
    pub(crate) data: BTreeMap<String, String>,
    /// Bumped by every applied write: a compare-and-swap needs it unchanged.
    pub(crate) generation: u64,
    /// Some secret of it was presented by a client that did not hold it as
    /// its cookie (a copy, an old secret): the "follows every Set-Cookie"
    /// promise no longer applies.
    pub(crate) tainted: bool,
}

impl Sess {
    pub(crate) fn active(&self, now: i64) -> bool {
        self.ended.is_none() && now < self.expires && now < self.absolute
    }

    /// The slot holding `secret`, with its key version.
    fn slot_of(&self, secret: &str) -> Option<(Slot, u32)> {
        if self.current.secret == secret {
            return Some((Slot::Current, self.current.version));
        }
        if let Some(p) = self.previous.as_ref().filter(|p| p.cred.secret == secret) {
            return Some((Slot::Previous, p.cred.version));
        }
        self.superseded
            .as_ref()
            .filter(|s| s.secret == secret)
            .map(|s| (Slot::Superseded, s.version))
    }

    fn touch_due(&self, now: i64) -> bool {
        now - self.last_seen >= TOUCH.min(self.idle / 2) && self.idle_expiry(now) > self.expires
    }

    fn idle_expiry(&self, now: i64) -> i64 {
        (now + self.idle).min(self.absolute)
    }

    fn touch(&mut self, now: i64) {
        self.expires = self.idle_expiry(now).max(self.expires);
        self.last_seen = now.max(self.last_seen);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Slot {
    Current,
    Previous,
    Superseded,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    Serve,
    Reuse,
    Confirm { rekey: bool },
    Rotate,
    ReRotate,
    Rekey { touch: bool },
    Touch,
}

impl Decision {
    fn issues_secret(self) -> bool {
        matches!(self, Self::Rotate | Self::ReRotate)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Client {
    pub(crate) jar: Option<String>,
    /// Every secret this client ever received, oldest first.
    pub(crate) history: Vec<String>,
}

/// What the store lookup gave the request.
#[derive(Clone, Debug)]
pub(crate) enum Resolved {
    /// No value resolved: anonymous, and a data write starts a session.
    Nothing,
    /// Values of two sessions: anonymous, and nothing may start.
    Unusable,
    /// A stale or superseded secret: the session was revoked.
    Reuse(usize),
    /// Served from this session as the request found it.
    Served {
        index: usize,
        slot: Slot,
        version: u32,
        found: Box<Sess>,
    },
}

/// The cookie a response sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SetCookie {
    None,
    Clear,
    Set {
        secret: String,
        max_age: Option<i64>,
    },
}

/// A real response, as the model compares it.
#[derive(Clone, Debug)]
pub(crate) struct Observed {
    pub(crate) status: u16,
    pub(crate) body: String,
    pub(crate) cookie: SetCookie,
}

impl Observed {
    /// The session a `/model` response reports serving, if any.
    pub(crate) fn served_id(&self) -> Option<String> {
        let value: serde_json::Value = serde_json::from_str(&self.body).ok()?;
        value["id"].as_str().map(str::to_owned)
    }

    fn new_secret(&self, max_age: Option<i64>) -> Result<String, String> {
        match &self.cookie {
            SetCookie::Set {
                secret,
                max_age: seen,
            } if *seen == max_age => Ok(secret.clone()),
            other => Err(format!(
                "expected a new secret with Max-Age {max_age:?}, got {other:?}"
            )),
        }
    }

    fn expect_cookie(&self, expected: &SetCookie) -> Result<(), String> {
        match (expected, &self.cookie) {
            (SetCookie::Set { .. }, _) => unreachable!("fresh secrets are taken, not compared"),
            (e, o) if e == o => Ok(()),
            (e, o) => Err(format!("expected cookie {e:?}, got {o:?}")),
        }
    }

    fn expect(&self, status: u16, body: &str) -> Result<(), String> {
        if (self.status, self.body.as_str()) == (status, body) {
            return Ok(());
        }
        Err(format!(
            "expected {status} {body:?}, got {} {:?}",
            self.status, self.body
        ))
    }
}

/// The data change a `/model` request makes.
pub(crate) type Change = Option<(String, Option<String>)>;

/// A request between its handler and its way out.
#[derive(Clone, Debug)]
pub(crate) struct Handled {
    pub(crate) resolved: Resolved,
    /// When the request arrived.
    pub(crate) arrived: i64,
    /// Whether it carried a cookie value: without one the layer reads the
    /// clock only when something needs the time (here: the handler's
    /// `insert`, after the request's `slow` seconds).
    pub(crate) with_cookie: bool,
    /// The data patch (empty: `None`).
    pub(crate) patch: Change,
    /// The handler's answer.
    pub(crate) status: u16,
    /// The `/model` report, or an error text.
    pub(crate) body: Expected,
    /// A cookie staged by the handler (a logout, a reuse).
    pub(crate) clear: bool,
    /// Whether the way out maintains the session (no staged cookie change).
    pub(crate) maintain: bool,
}

#[derive(Clone, Debug)]
pub(crate) enum Expected {
    Anonymous,
    Text(String),
    /// Served: the session's id (`None`: a session this request starts),
    /// subject and data as the handler leaves it.
    Report {
        id: Option<String>,
        subject: Option<String>,
        data: BTreeMap<String, String>,
    },
}

#[derive(Clone, Debug)]
pub(crate) struct Model {
    pub(crate) now: i64,
    pub(crate) sessions: Vec<Sess>,
    pub(crate) clients: Vec<Client>,
    pub(crate) versions: BTreeSet<u32>,
    pub(crate) current_version: u32,
}

impl Model {
    pub(crate) fn new(clients: usize) -> Self {
        Self {
            now: 0,
            sessions: Vec::new(),
            clients: vec![Client::default(); clients],
            versions: BTreeSet::from([1]),
            current_version: 1,
        }
    }

    /// The session holding `secret` in any slot, live or not.
    pub(crate) fn owner(&self, secret: &str) -> Option<usize> {
        self.sessions
            .iter()
            .position(|s| s.slot_of(secret).is_some())
    }

    /// What the store finds for `secret` now: a live session's slot under
    /// an accepted key version.
    fn find(&self, secret: &str) -> Option<(usize, Slot, u32)> {
        self.sessions.iter().enumerate().find_map(|(i, s)| {
            let (slot, version) = s.slot_of(secret)?;
            (s.active(self.now) && self.versions.contains(&version)).then_some((i, slot, version))
        })
    }

    /// DESIGN.md, "Sliding expiry and rotation": what a request presenting
    /// `slot` does, decided at `now` for a request that arrived at `arrived`.
    pub(crate) fn decide(
        &self,
        s: &Sess,
        slot: Slot,
        version: u32,
        now: i64,
        arrived: i64,
    ) -> Decision {
        let touch_only = || match s.touch_due(now) {
            true => Decision::Touch,
            false => Decision::Serve,
        };
        match slot {
            // A successor a re-rotation replaced: two parties.
            Slot::Superseded => Decision::Reuse,
            Slot::Previous => match s.previous.as_ref().and_then(|p| p.valid_until) {
                // Confirmed successor: in flight within its grace, then reuse.
                Some(until) if arrived < until => Decision::Serve,
                Some(_) => Decision::Reuse,
                // Unconfirmed successor: in flight within the grace of the
                // rotation (it slides), after it the successor was lost.
                None if arrived < s.previous.as_ref().map_or(0, |p| p.rotated_at) + GRACE => {
                    touch_only()
                }
                None => Decision::ReRotate,
            },
            Slot::Current => {
                let rekey = version != self.current_version;
                if s.previous.as_ref().is_some_and(|p| p.valid_until.is_none()) {
                    return Decision::Confirm { rekey };
                }
                // Sessions before login never rotate.
                if s.subject.is_some() && now >= s.access_expires {
                    return Decision::Rotate;
                }
                match (rekey, s.touch_due(now)) {
                    (true, touch) => Decision::Rekey { touch },
                    (false, true) => Decision::Touch,
                    (false, false) => Decision::Serve,
                }
            }
        }
    }

    /// Carries out `decision` on `s` at `now`; `fresh` is the new secret of
    /// a rotation.
    fn apply(&self, s: &mut Sess, decision: Decision, now: i64, fresh: Option<String>) {
        let fresh = || Cred {
            secret: fresh.clone().expect("a rotation has a fresh secret"),
            version: self.current_version,
        };
        note(match decision {
            Decision::Serve | Decision::Reuse => "serve",
            Decision::Confirm { rekey: false } => "confirm",
            Decision::Confirm { rekey: true } => "confirm+rekey",
            Decision::Rotate => "rotate",
            Decision::ReRotate => "re-rotate",
            Decision::Rekey { .. } => "rekey",
            Decision::Touch => "touch",
        });
        match decision {
            Decision::Serve | Decision::Reuse => return,
            Decision::Confirm { rekey } => {
                if let Some(p) = &mut s.previous {
                    p.valid_until = Some(now + GRACE);
                }
                s.access_expires = (now + ACCESS_TTL).min(s.absolute);
                if rekey {
                    s.current.version = self.current_version;
                }
            }
            Decision::Rotate => {
                s.previous = Some(Prev {
                    cred: s.current.clone(),
                    rotated_at: now,
                    valid_until: None,
                });
                s.current = fresh();
                s.access_expires = (now + ACCESS_TTL).min(s.absolute);
            }
            Decision::ReRotate => {
                if let Some(p) = &mut s.previous {
                    p.rotated_at = now;
                }
                s.superseded = Some(s.current.clone());
                s.current = fresh();
            }
            Decision::Rekey { touch } => {
                s.current.version = self.current_version;
                if !touch {
                    s.generation += 1;
                    return;
                }
            }
            Decision::Touch => {}
        }
        s.touch(now);
        s.generation += 1;
    }

    /// The values a request of `client` carries for `cookie`.
    pub(crate) fn presented(&self, client: usize, cookie: crate::ops::Cookie) -> Vec<String> {
        use crate::ops::Cookie;
        let c = &self.clients[client];
        let old = |i: u8| {
            (!c.history.is_empty()).then(|| c.history[usize::from(i) % c.history.len()].clone())
        };
        let mut values: Vec<String> = match cookie {
            Cookie::Jar => c.jar.iter().cloned().collect(),
            Cookie::None => Vec::new(),
            Cookie::Old(i) => old(i).into_iter().collect(),
            Cookie::JarAndOld(i) => c.jar.iter().cloned().chain(old(i)).collect(),
        };
        values.dedup();
        values
    }

    /// Marks the sessions of values a client presented that are not
    /// exactly its cookie.
    pub(crate) fn taint(&mut self, client: usize, presented: &[String]) {
        if presented.is_empty() || presented == self.clients[client].jar.as_slice() {
            return;
        }
        for value in presented {
            if let Some(i) = self.owner(value) {
                self.sessions[i].tainted = true;
            }
        }
    }

    /// Step 1: the one lookup. Every match, from one session only; reuse if
    /// any match is reuse (the session is revoked then); else the best slot.
    pub(crate) fn resolve(&mut self, presented: &[String]) -> Resolved {
        let matches: Vec<_> = presented.iter().filter_map(|v| self.find(v)).collect();
        let Some(&(index, _, _)) = matches.first() else {
            return Resolved::Nothing;
        };
        if matches.iter().any(|m| m.0 != index) {
            note("two sessions");
            return Resolved::Unusable;
        }
        let s = &self.sessions[index];
        let reuse = matches
            .iter()
            .any(|&(_, slot, v)| self.decide(s, slot, v, self.now, self.now) == Decision::Reuse);
        if reuse {
            note("reuse");
            self.sessions[index].ended = Some(End::Reuse);
            return Resolved::Reuse(index);
        }
        let &(_, slot, version) = matches.iter().min_by_key(|m| m.1).expect("one match");
        Resolved::Served {
            index,
            slot,
            version,
            found: Box::new(s.clone()),
        }
    }

    /// Step 2 for `/model`: the handler reads, and sets or removes a key.
    pub(crate) fn handle(
        &self,
        resolved: Resolved,
        with_cookie: bool,
        data: crate::ops::Data,
    ) -> Handled {
        use crate::ops::Data;
        let found = match &resolved {
            Resolved::Served { found, .. } => Some(found),
            _ => None,
        };
        let mut handled = Handled {
            clear: matches!(resolved, Resolved::Reuse(_)),
            maintain: found.is_some(),
            resolved: resolved.clone(),
            arrived: self.now,
            with_cookie,
            patch: None,
            status: 200,
            body: Expected::Anonymous,
        };
        let mut current = found.map(|f| f.data.clone()).unwrap_or_default();
        match data {
            Data::Read => {}
            Data::Set(k, v) => {
                let (k, v) = (key(k), value(v));
                if found.is_none() && !matches!(resolved, Resolved::Nothing) {
                    // A cookie that resolved to a session it cannot use
                    // never starts a new one.
                    handled.status = 401;
                    handled.body = Expected::Text("not signed in".into());
                    return handled;
                }
                if current.get(&k) != Some(&v) {
                    current.insert(k.clone(), v.clone());
                    handled.patch = Some((k, Some(v)));
                }
            }
            Data::Remove(k) => {
                let k = key(k);
                if current.remove(&k).is_some() {
                    handled.patch = Some((k, None));
                }
            }
        }
        handled.body = match found {
            Some(f) => Expected::Report {
                id: Some(f.id.clone()),
                subject: f.subject.clone(),
                data: current,
            },
            None if handled.patch.is_some() => Expected::Report {
                id: None,
                subject: None,
                data: current,
            },
            None => Expected::Anonymous,
        };
        handled
    }

    /// Step 3: the way out at the model's `now`: the data patch and the
    /// maintenance due now, in one compare-and-swap; the response compared.
    pub(crate) fn finish(&mut self, h: Handled, seen: &Observed) -> Result<(), String> {
        let now = self.now;
        let mut status = h.status;
        let mut body = h.body.clone();
        let mut cookie = if h.clear {
            SetCookie::Clear
        } else {
            SetCookie::None
        };
        let mut fresh_wanted: Option<Option<i64>> = None;
        let mut created: Option<Sess> = None;
        match (&h.resolved, &h.patch) {
            (
                Resolved::Served {
                    index,
                    slot,
                    version,
                    found,
                },
                patch,
            ) if h.maintain => {
                let index = *index;
                let decision = match found.active(now) {
                    true => self.decide(found, *slot, *version, now, h.arrived),
                    false => Decision::Serve,
                };
                let decision = match decision {
                    Decision::Reuse => Decision::Serve,
                    d => d,
                };
                let unchanged = |m: &Self| {
                    m.sessions[index].generation == found.generation
                        && m.sessions[index].active(now)
                };
                match patch {
                    None if decision == Decision::Serve => {}
                    None => {
                        if unchanged(self) {
                            let fresh = match decision.issues_secret() {
                                true => {
                                    let max_age = found.persistent.then_some(found.absolute - now);
                                    Some(seen.new_secret(max_age)?)
                                }
                                false => None,
                            };
                            let mut next = (**found).clone();
                            self.apply(&mut next, decision, now, fresh);
                            self.sessions[index] = next;
                            if decision.issues_secret() {
                                fresh_wanted = Some(None);
                            }
                        }
                    }
                    Some((k, v)) => {
                        if !found.active(now) {
                            note("write after expiry refused");
                            status = 401;
                            body = Expected::Text("session ended".into());
                        } else if unchanged(self) {
                            // First attempt: the patch and the maintenance.
                            let fresh = match decision.issues_secret() {
                                true => {
                                    let max_age = found.persistent.then_some(found.absolute - now);
                                    Some(seen.new_secret(max_age)?)
                                }
                                false => None,
                            };
                            let mut next = (**found).clone();
                            patch_data(&mut next.data, k, v);
                            if decision == Decision::Serve {
                                next.generation += 1;
                            } else {
                                self.apply(&mut next, decision, now, fresh);
                            }
                            self.sessions[index] = next;
                            if decision.issues_secret() {
                                fresh_wanted = Some(None);
                            }
                        } else if self.sessions[index].active(now) {
                            // Lost the race: the patch alone, on the record
                            // as stored now.
                            note("lost race, patch retried");
                            let s = &mut self.sessions[index];
                            patch_data(&mut s.data, k, v);
                            s.generation += 1;
                        } else {
                            status = 401;
                            body = Expected::Text("session ended".into());
                        }
                    }
                }
            }
            (Resolved::Nothing, Some(_)) => {
                // A session before login, started on the way out.
                let Expected::Report { data, .. } = &h.body else {
                    unreachable!("a started session is reported")
                };
                let at = if h.with_cookie { h.arrived } else { now };
                let id = seen
                    .served_id()
                    .ok_or_else(|| format!("a started session must be reported: {seen:?}"))?;
                let secret = seen.new_secret(None)?;
                note("session before login");
                created = Some(Sess {
                    id: id.clone(),
                    subject: None,
                    persistent: false,
                    idle: PRE_LOGIN_IDLE,
                    created: at,
                    last_seen: at,
                    expires: (at + PRE_LOGIN_IDLE).min(at + PRE_LOGIN_ABSOLUTE),
                    absolute: at + PRE_LOGIN_ABSOLUTE,
                    access_expires: at + PRE_LOGIN_ABSOLUTE,
                    current: Cred {
                        secret,
                        version: self.current_version,
                    },
                    previous: None,
                    superseded: None,
                    ended: None,
                    data: data.clone(),
                    generation: 0,
                    tainted: false,
                });
                body = Expected::Report {
                    id: Some(id),
                    subject: None,
                    data: data.clone(),
                };
                fresh_wanted = Some(None);
            }
            _ => {}
        }
        if fresh_wanted.is_none() {
            seen.expect_cookie(&cookie)?;
        } else {
            cookie = seen.cookie.clone();
        }
        let _ = cookie;
        check_body(seen, status, &body)?;
        if let Some(s) = created {
            self.sessions.push(s);
        }
        Ok(())
    }

    /// A new logged-in session with the secret `seen` set.
    pub(crate) fn login(
        &mut self,
        resolved: &Resolved,
        subject: String,
        seen: &Observed,
    ) -> Result<usize, String> {
        let now = self.now;
        let (old, data) = match resolved {
            Resolved::Served { index, found, .. } => (
                Some(*index),
                match found.subject {
                    None => found.data.clone(),
                    Some(_) => BTreeMap::new(),
                },
            ),
            _ => (None, BTreeMap::new()),
        };
        if seen.status != 200 {
            return Err(format!("login failed: {seen:?}"));
        }
        let secret = seen.new_secret(Some(ABSOLUTE))?;
        let absolute = now + ABSOLUTE;
        self.sessions.push(Sess {
            id: seen.body.clone(),
            subject: Some(subject),
            persistent: true,
            idle: IDLE,
            created: now,
            last_seen: now,
            expires: (now + IDLE).min(absolute),
            absolute,
            access_expires: (now + ACCESS_TTL).min(absolute),
            current: Cred {
                secret,
                version: self.current_version,
            },
            previous: None,
            superseded: None,
            ended: None,
            data,
            generation: 0,
            tainted: false,
        });
        if let Some(old) = old {
            self.end(old, End::ReplacedByLogin);
        }
        Ok(self.sessions.len() - 1)
    }

    /// `Session::renew`: a fresh secret now, older ones forgotten.
    pub(crate) fn renew(&mut self, index: usize, secret: String) {
        let now = self.now;
        let version = self.current_version;
        let s = &mut self.sessions[index];
        s.current = Cred { secret, version };
        s.previous = None;
        s.superseded = None;
        if s.subject.is_some() {
            s.access_expires = (now + ACCESS_TTL).min(s.absolute);
        }
        s.touch(now);
        s.generation += 1;
    }

    pub(crate) fn end(&mut self, index: usize, why: End) {
        let now = self.now;
        let s = &mut self.sessions[index];
        if s.active(now) {
            s.ended = Some(why);
        }
    }

    /// Ends every session of `subject` but `except`; how many the store
    /// reports: the live ones only (a session that expired without being
    /// revoked is over already, and the trait says it is not counted).
    pub(crate) fn end_subject(
        &mut self,
        subject: &str,
        except: Option<usize>,
        why: End,
    ) -> std::ops::RangeInclusive<u64> {
        let now = self.now;
        let mut live = 0;
        // Only live sessions are revoked: one that already expired is left
        // as it is (never revoked), as every store leaves it.
        for (i, s) in self.sessions.iter_mut().enumerate() {
            if Some(i) != except && s.subject.as_deref() == Some(subject) && s.active(now) {
                live += 1;
                s.ended = Some(why);
            }
        }
        live..=live
    }

    /// A client follows the `Set-Cookie` it received.
    pub(crate) fn follow(&mut self, client: usize, cookie: &SetCookie) {
        let c = &mut self.clients[client];
        match cookie {
            SetCookie::None => {}
            SetCookie::Clear => c.jar = None,
            SetCookie::Set { secret, .. } => {
                c.jar = Some(secret.clone());
                c.history.push(secret.clone());
            }
        }
    }
}

fn patch_data(data: &mut BTreeMap<String, String>, k: &str, v: &Option<String>) {
    match v {
        Some(v) => data.insert(k.to_owned(), v.clone()),
        None => data.remove(k),
    };
}

fn check_body(seen: &Observed, status: u16, body: &Expected) -> Result<(), String> {
    match body {
        Expected::Anonymous => seen.expect(status, "anonymous"),
        Expected::Text(text) => seen.expect(status, text),
        Expected::Report { id, subject, data } => {
            let expected = serde_json::json!({
                "id": id.clone().or_else(|| seen.served_id()),
                "subject": subject,
                "data": data,
            });
            let got: Option<serde_json::Value> = serde_json::from_str(&seen.body).ok();
            if seen.status == status && got.as_ref() == Some(&expected) {
                return Ok(());
            }
            Err(format!(
                "expected {status} {expected}, got {} {:?}",
                seen.status, seen.body
            ))
        }
    }
}

pub(crate) fn key(k: u8) -> String {
    format!("k{k}")
}

pub(crate) fn value(v: u8) -> String {
    format!("v{v}")
}
