//! Faults, snapshots and leak checks shared by the fault, limit and log
//! tests: a store wrapper that fails, slows, hangs, or applies a write and
//! then reports a failure, per operation and switchable while requests run;
//! a snapshot of every stored record, to prove no session was lost or
//! revived; a router with the few routes the shared app lacks; and a ledger
//! of every secret, lookup key and key byte a test handled, to search logs
//! for.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::extract::Query;
use axum::routing::post;
use base64::Engine as _;
use time::OffsetDateTime;
use tower_hmac_session::{
    ActiveSessionRecord, Candidate, KeyRing, KeyVersion, LoginOptions, MemoryStore, MockClock,
    Revocation, RevokeOutcome, Session, SessionConfig, SessionError, SessionId, SessionLayer,
    SessionManager, SessionMatch, SessionRecord, SessionSecret, SessionStore, StoreError,
    SubjectCap, VersionCount,
};

use super::{Harness, TestResponse, TestStore};

/// A store operation, by trait method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    FindActive,
    GetActive,
    Insert,
    Replace,
    Revoke,
    RevokeAll,
    List,
    Count,
    Purge,
}

impl Op {
    pub const ALL: [Op; 9] = [
        Op::FindActive,
        Op::GetActive,
        Op::Insert,
        Op::Replace,
        Op::Revoke,
        Op::RevokeAll,
        Op::List,
        Op::Count,
        Op::Purge,
    ];
    pub const READS: [Op; 4] = [Op::FindActive, Op::GetActive, Op::List, Op::Count];
    pub const WRITES: [Op; 5] = [
        Op::Insert,
        Op::Replace,
        Op::Revoke,
        Op::RevokeAll,
        Op::Purge,
    ];

    fn name(self) -> &'static str {
        match self {
            Op::FindActive => "find_active",
            Op::GetActive => "get_active",
            Op::Insert => "insert",
            Op::Replace => "replace",
            Op::Revoke => "revoke",
            Op::RevokeAll => "revoke_all_for_subject",
            Op::List => "list_for_subject",
            Op::Count => "count_by_key_version",
            Op::Purge => "purge_expired",
        }
    }
}

/// What an operation does instead of (or besides) its work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Works.
    None,
    /// Fails at once, without doing its work (a refused connection).
    Error,
    /// Does its work after this delay (tokio time: paused tests skip it).
    Latency(Duration),
    /// Never answers, never does its work.
    Hang,
    /// Does its work, then reports a timeout (the answer was lost).
    ApplyThenFail,
    /// Does its work, then never answers.
    ApplyThenHang,
    /// Reports the record it would have read as undecodable.
    Corrupt,
}

/// Wraps any store and injects [`Fault`]s per operation; the faults can be
/// changed from any task while requests run.
pub struct FaultyStore {
    inner: Arc<dyn SessionStore>,
    faults: Mutex<BTreeMap<Op, Fault>>,
    calls: [AtomicU64; 9],
    injected: AtomicU64,
    /// The most candidates one `find_active` carried.
    max_candidates: AtomicU64,
}

impl std::fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyStore")
            .field("faults", &self.faults.lock().unwrap())
            .finish_non_exhaustive()
    }
}

impl FaultyStore {
    pub fn new(inner: impl SessionStore) -> Self {
        Self::wrap_arc(Arc::new(inner))
    }

    pub fn wrap_arc(inner: Arc<dyn SessionStore>) -> Self {
        Self {
            inner,
            faults: Mutex::new(BTreeMap::new()),
            calls: Default::default(),
            injected: AtomicU64::new(0),
            max_candidates: AtomicU64::new(0),
        }
    }

    pub fn set(&self, op: Op, fault: Fault) {
        self.faults.lock().unwrap().insert(op, fault);
    }

    pub fn set_each(&self, ops: &[Op], fault: Fault) {
        for &op in ops {
            self.set(op, fault);
        }
    }

    pub fn set_all(&self, fault: Fault) {
        self.set_each(&Op::ALL, fault);
    }

    /// Every operation works again.
    pub fn heal(&self) {
        self.faults.lock().unwrap().clear();
    }

    pub fn fault(&self, op: Op) -> Fault {
        self.faults
            .lock()
            .unwrap()
            .get(&op)
            .copied()
            .unwrap_or(Fault::None)
    }

    pub fn calls(&self, op: Op) -> u64 {
        self.calls[op as usize].load(Ordering::SeqCst)
    }

    /// The most candidates (lookup keys) one `find_active` carried.
    pub fn max_candidates(&self) -> u64 {
        self.max_candidates.load(Ordering::SeqCst)
    }

    /// How many calls met a fault other than [`Fault::None`].
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    async fn run<T>(
        &self,
        op: Op,
        corrupt_id: Option<SessionId>,
        work: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.calls[op as usize].fetch_add(1, Ordering::SeqCst);
        let fault = self.fault(op);
        if fault != Fault::None {
            self.injected.fetch_add(1, Ordering::SeqCst);
        }
        match fault {
            Fault::None => work.await,
            Fault::Error => Err(StoreError::backend(
                op.name(),
                std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "injected outage"),
            )),
            Fault::Latency(delay) => {
                tokio::time::sleep(delay).await;
                work.await
            }
            Fault::Hang => std::future::pending().await,
            Fault::ApplyThenFail => {
                let _ = work.await;
                Err(StoreError::Timeout {
                    operation: op.name(),
                    timeout: Duration::from_secs(1),
                })
            }
            Fault::ApplyThenHang => {
                let _ = work.await;
                std::future::pending().await
            }
            Fault::Corrupt => Err(StoreError::corrupt(
                corrupt_id,
                "injected: the stored record does not decode",
            )),
        }
    }
}

#[async_trait]
impl SessionStore for FaultyStore {
    async fn find_active(
        &self,
        candidates: &[Candidate],
        now: OffsetDateTime,
    ) -> Result<Vec<SessionMatch>, StoreError> {
        self.max_candidates
            .fetch_max(candidates.len() as u64, Ordering::SeqCst);
        let work = self.inner.find_active(candidates, now);
        if self.fault(Op::FindActive) == Fault::Corrupt {
            // Name the record the lookup would have found, as a real
            // store's decoder does.
            let id = work.await?.first().map(|m| m.record.id);
            return self.run(Op::FindActive, id, async { Ok(Vec::new()) }).await;
        }
        self.run(Op::FindActive, None, work).await
    }
    async fn get_active(
        &self,
        id: &SessionId,
        now: OffsetDateTime,
    ) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        self.run(Op::GetActive, Some(*id), self.inner.get_active(id, now))
            .await
    }
    async fn insert(&self, record: &SessionRecord) -> Result<(), StoreError> {
        self.run(Op::Insert, Some(record.id), self.inner.insert(record))
            .await
    }
    async fn insert_capped(
        &self,
        record: &SessionRecord,
        now: OffsetDateTime,
        cap: &SubjectCap,
    ) -> Result<Vec<SessionId>, StoreError> {
        self.run(
            Op::Insert,
            Some(record.id),
            self.inner.insert_capped(record, now, cap),
        )
        .await
    }
    async fn replace(
        &self,
        current: &SessionRecord,
        next: &SessionRecord,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        self.run(
            Op::Replace,
            Some(current.id),
            self.inner.replace(current, next, now),
        )
        .await
    }
    async fn revoke(
        &self,
        id: &SessionId,
        subject: Option<&str>,
        now: OffsetDateTime,
        revocation: &Revocation,
    ) -> Result<RevokeOutcome, StoreError> {
        self.run(
            Op::Revoke,
            Some(*id),
            self.inner.revoke(id, subject, now, revocation),
        )
        .await
    }
    async fn revoke_all_for_subject(
        &self,
        subject: &str,
        now: OffsetDateTime,
        revocation: &Revocation,
        except: Option<&SessionId>,
    ) -> Result<u64, StoreError> {
        self.run(
            Op::RevokeAll,
            None,
            self.inner
                .revoke_all_for_subject(subject, now, revocation, except),
        )
        .await
    }
    async fn list_for_subject(
        &self,
        subject: &str,
        now: OffsetDateTime,
    ) -> Result<Vec<ActiveSessionRecord>, StoreError> {
        self.run(Op::List, None, self.inner.list_for_subject(subject, now))
            .await
    }
    async fn count_by_key_version(
        &self,
        now: OffsetDateTime,
        seen_since: OffsetDateTime,
    ) -> Result<BTreeMap<KeyVersion, VersionCount>, StoreError> {
        self.run(
            Op::Count,
            None,
            self.inner.count_by_key_version(now, seen_since),
        )
        .await
    }
    async fn purge_expired(&self, now: OffsetDateTime) -> Result<u64, StoreError> {
        self.run(Op::Purge, None, self.inner.purge_expired(now))
            .await
    }
}

/// The shared app plus `/login-short` (a login with a 5-minute idle
/// timeout: sessions that expire while others live) and `/revoke-device`.
pub fn app_with_extras(clock: MockClock) -> Router {
    #[derive(serde::Deserialize)]
    struct User {
        user: String,
    }
    #[derive(serde::Deserialize)]
    struct Device {
        id: String,
    }
    super::app(clock)
        .route(
            "/login-short",
            post(|session: Session, Query(q): Query<User>| async move {
                let options = LoginOptions::new().idle_timeout(Duration::from_secs(300));
                session
                    .login_with(q.user, options)
                    .await
                    .map(|r| r.id.to_string())
            }),
        )
        .route(
            "/revoke-device",
            post(|session: Session, Query(q): Query<Device>| async move {
                let id: SessionId = q.id.parse().map_err(|_| SessionError::NotLoggedIn)?;
                session
                    .revoke_device(&id)
                    .await
                    .map(|outcome| format!("{outcome:?}"))
            }),
        )
}

/// A [`Harness`] over `FaultyStore(MemoryStore)`, counted by the
/// `TestStore` around it, with [`app_with_extras`].
pub fn faulty_harness(config: SessionConfig, keys: KeyRing) -> (Harness, Arc<FaultyStore>) {
    let memory = MemoryStore::new();
    let faulty = Arc::new(FaultyStore::new(memory.clone()));
    let store = TestStore {
        memory: Some(memory),
        ..TestStore::wrap_arc(faulty.clone())
    };
    (harness_on(Arc::new(store), config, keys), faulty)
}

/// A [`Harness`] over `store`, with [`app_with_extras`].
pub fn harness_on(store: Arc<TestStore>, config: SessionConfig, keys: KeyRing) -> Harness {
    let clock = MockClock::new(super::T0);
    let manager = SessionManager::new(store.clone(), keys, config).with_clock(clock.clone());
    let router = app_with_extras(clock.clone()).layer(SessionLayer::new(manager.clone()));
    Harness {
        store,
        manager,
        clock,
        router,
    }
}

/// Every stored record by id, with the time it was taken at.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub at: OffsetDateTime,
    pub records: BTreeMap<SessionId, SessionRecord>,
}

impl Snapshot {
    pub fn of(h: &Harness) -> Self {
        Self {
            at: h.manager.now(),
            records: h.records().into_iter().map(|r| (r.id, r)).collect(),
        }
    }

    pub fn live(&self) -> usize {
        self.records
            .values()
            .filter(|r| r.is_active(self.at))
            .count()
    }

    /// No session lost, none revived, none created: every record of
    /// `self` is still stored with its subject; a revoked one keeps its
    /// revocation; one that had ended is still ended; one that was live is
    /// live, unrevoked, at `after.at`; `after` holds no other record.
    pub fn assert_nothing_lost_or_revived(&self, after: &Snapshot) {
        let ids = |s: &Snapshot| s.records.keys().copied().collect::<Vec<_>>();
        assert_eq!(ids(self), ids(after), "the set of stored sessions changed");
        for (id, before) in &self.records {
            let now = &after.records[id];
            assert_eq!(before.subject, now.subject, "{id}: subject changed");
            assert_eq!(before.created_at, now.created_at, "{id}");
            assert_eq!(
                before.absolute_expires_at, now.absolute_expires_at,
                "{id}: the hard cap moved"
            );
            if before.revoked.is_some() {
                assert_eq!(before.revoked, now.revoked, "{id}: revocation changed");
            }
            if !before.is_active(self.at) {
                assert!(!now.is_active(after.at), "{id}: an ended session revived");
                assert_eq!(before, now, "{id}: an ended session was written to");
            } else {
                assert!(now.revoked.is_none(), "{id}: a live session was revoked");
                assert!(now.is_active(after.at), "{id}: a live session was lost");
            }
        }
    }
}

/// Everything no log line may hold: every secret a test saw issued or
/// presented, every lookup key those secrets have under every key version
/// the test used, every lookup key a stored record held (the only trace of
/// a secret the test never saw: a successor whose response was lost, a
/// login whose answer never came), and every HMAC key's bytes.
#[derive(Default)]
pub struct Ledger {
    secrets: Mutex<Vec<[u8; 32]>>,
    /// Lookup keys read from the store's records (current, previous and
    /// superseded slots).
    stored: Mutex<std::collections::BTreeSet<[u8; 32]>>,
    rings: Mutex<Vec<KeyRing>>,
    /// Key bytes by version: a version keeps its key across rings.
    keys: Mutex<BTreeMap<u32, Vec<u8>>>,
}

impl Ledger {
    /// A key ring of random keys (so a match in a log is no accident),
    /// registered with the ledger; a version the ledger made before keeps
    /// its key, as in a real key rotation.
    pub fn ring(&self, current: u32, versions: &[u32]) -> KeyRing {
        let mut keys = self.keys.lock().unwrap();
        let ring = versions
            .iter()
            .fold(KeyRing::builder(), |b, &v| {
                let key = keys.entry(v).or_insert_with(|| {
                    [
                        *SessionSecret::generate().expose_bytes(),
                        *SessionSecret::generate().expose_bytes(),
                    ]
                    .concat()
                });
                b.key(v, key.clone())
            })
            .current(current)
            .build()
            .unwrap();
        self.rings.lock().unwrap().push(ring.clone());
        ring
    }

    pub fn secret(&self, secret: &str) {
        let bytes = *SessionSecret::parse(secret)
            .expect("a well-formed secret")
            .expose_bytes();
        self.secrets.lock().unwrap().push(bytes);
    }

    /// Records every secret `res` issues; returns `res`.
    pub fn saw(&self, res: TestResponse) -> TestResponse {
        if let Some(secret) = res.new_secret() {
            self.secret(&secret);
        }
        res
    }

    pub fn secret_count(&self) -> usize {
        self.secrets.lock().unwrap().len()
    }

    /// Records a lookup key read from the store.
    pub fn stored_lookup_key(&self, key: [u8; 32]) {
        self.stored.lock().unwrap().insert(key);
    }

    /// Records every lookup key `records` hold, in every slot.
    pub fn stored_records<'a>(&self, records: impl IntoIterator<Item = &'a SessionRecord>) {
        for r in records {
            let slots = std::iter::once(r.current.lookup_key)
                .chain(r.previous.as_ref().map(|p| p.credential.lookup_key))
                .chain(r.superseded.map(|c| c.lookup_key));
            for key in slots {
                self.stored_lookup_key(*key.as_bytes());
            }
        }
    }

    /// How many distinct lookup keys the store was seen to hold.
    pub fn stored_count(&self) -> usize {
        self.stored.lock().unwrap().len()
    }

    /// Every lookup key the store was seen to hold.
    pub fn stored_lookup_keys(&self) -> std::collections::BTreeSet<[u8; 32]> {
        self.stored.lock().unwrap().clone()
    }

    /// The lookup keys of every secret the ledger saw, under every version.
    pub fn derived_lookup_keys(&self) -> std::collections::BTreeSet<[u8; 32]> {
        let mut out = std::collections::BTreeSet::new();
        for bytes in self.secrets.lock().unwrap().iter() {
            let secret = SessionSecret::from_bytes(*bytes);
            for ring in self.rings.lock().unwrap().iter() {
                for version in ring.versions() {
                    out.insert(*ring.lookup_key(version, &secret).unwrap().as_bytes());
                }
            }
        }
        out
    }

    /// Every forbidden byte string, labelled.
    pub fn forbidden(&self) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        let secrets = self.secrets.lock().unwrap().clone();
        for (i, bytes) in secrets.iter().enumerate() {
            out.extend(forms(&format!("secret {i}"), bytes));
            let secret = SessionSecret::from_bytes(*bytes);
            for ring in self.rings.lock().unwrap().iter() {
                for version in ring.versions() {
                    let key = ring.lookup_key(version, &secret).unwrap();
                    out.extend(forms(
                        &format!("lookup key of secret {i} under v{}", version.0),
                        key.as_bytes(),
                    ));
                }
            }
        }
        for (i, key) in self.stored.lock().unwrap().iter().enumerate() {
            out.extend(forms(&format!("stored lookup key {i}"), key));
        }
        for (v, key) in self.keys.lock().unwrap().iter() {
            out.extend(forms(&format!("HMAC key v{v}"), key));
            // Half a key is as bad as all of it.
            out.extend(forms(&format!("first half of HMAC key v{v}"), &key[..32]));
            out.extend(forms(&format!("second half of HMAC key v{v}"), &key[32..]));
        }
        out
    }

    /// Asserts that `haystack` holds none of [`Ledger::forbidden`].
    pub fn assert_absent_from(&self, haystack: &[u8]) {
        let forbidden = self.forbidden();
        assert!(!forbidden.is_empty());
        for (what, needle) in forbidden {
            assert!(
                !contains(haystack, &needle),
                "{what} appears in the log as {:?}",
                String::from_utf8_lossy(&needle)
            );
        }
    }
}

/// `bytes` raw, hex (both cases), base64 (URL-safe and standard, padded
/// and not) and as Rust's `Debug` of a byte array or slice.
pub fn forms(label: &str, bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let debug = format!("{bytes:?}");
    [
        ("raw", bytes.to_vec()),
        ("hex", hex::encode(bytes).into_bytes()),
        ("HEX", hex::encode_upper(bytes).into_bytes()),
        ("base64url", URL_SAFE_NO_PAD.encode(bytes).into_bytes()),
        ("base64url padded", URL_SAFE.encode(bytes).into_bytes()),
        ("base64", STANDARD_NO_PAD.encode(bytes).into_bytes()),
        ("base64 padded", STANDARD.encode(bytes).into_bytes()),
        ("Debug", debug.clone().into_bytes()),
        // Debug without its brackets: a prefix of a longer array.
        ("Debug inner", debug.as_bytes()[1..debug.len() - 1].to_vec()),
    ]
    .into_iter()
    .map(|(form, needle)| (format!("{label} ({form})"), needle))
    .collect()
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// A small deterministic generator (xorshift): reproducible load.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Captured `tracing` output of every thread of this test binary (a
/// global subscriber, TRACE level, every target): unlike [`super::LogCapture`],
/// it also sees drivers' worker threads and multi-threaded runtimes. One
/// per process: every test in the binary writes to the same buffer.
pub fn global_log() -> GlobalLog {
    static BUFFER: std::sync::OnceLock<Arc<Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    let buffer = BUFFER.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = GlobalWriter(buffer.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global subscriber in this test binary");
        buffer
    });
    GlobalLog(buffer.clone())
}

#[derive(Clone)]
struct GlobalWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for GlobalWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub struct GlobalLog(Arc<Mutex<Vec<u8>>>);

impl GlobalLog {
    /// Everything captured so far, by every test of the binary.
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
}
