//! [`RedisStore`] and its [`SessionStore`] implementation.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;
use redis::aio::ConnectionManager;
use time::OffsetDateTime;
use tokio::time::Instant;

use super::builder::RedisStoreBuilder;
use super::scripts::Scripts;
use crate::keys::{Candidate, KeyVersion, LookupKey};
use crate::record::{
    ActiveSessionRecord, Revocation, RevokeOutcome, SessionId, SessionMatch, SessionRecord,
    VersionCount,
};
use crate::store::value::{
    decode, encode, header, hex_of, lookup_key_of_hex, push_hex, revocation_field, to_micros,
};
use crate::store::{SessionStore, StoreError, SubjectCap, check_successor};

/// How many keys one step of an admin scan (`count_by_key_version`,
/// `purge_expired`) reads or deletes: each step is short, so Redis serves
/// other clients in between.
const SCAN_BATCH: usize = 500;

/// How many records one purge script examines (two `GET`s and at most a
/// `DEL` and a `ZREM` each): a few milliseconds of the server's time at most.
const PURGE_BATCH: usize = 100;

/// The shortest time-to-live a write sets: a record already dead when it is
/// written (a test, a clock far ahead) keeps its keys this long rather than
/// none. Harmless: whether a record is active is decided from its
/// timestamps, not from its keys' existence.
const MIN_TTL_MS: i128 = 5 * 60 * 1000;

/// How much longer than the record's lookup keys its id's key (the pointer
/// to the current one) lives: the lookup keys' time-to-live is set again,
/// relative to the writer's clock, by every write that changes the keys or
/// moves the index score, the pointer's only at an insert or rotation, so
/// hosts whose clocks disagree by up to this much never leave a record
/// without it. A pointer that outlives the value it
/// points to reads as the record gone, and a purge deletes it.
pub(super) const POINTER_MARGIN_MS: i128 = 60 * 60 * 1000;

/// The most entries of a subject's index one script reads (two `GET`s each:
/// the id's key, then the value, and a revocation or a `ZREM` for some): lists, "log out everywhere" and
/// the per-subject cap of a login. A subject never has more live sessions
/// than `max_sessions_per_subject` (10 by default), so with a cap at or below
/// this every such operation sees all of them in one call; see the
/// [module docs](super#per-subject-index) for what happens above it.
pub(super) const SUBJECT_READ_LIMIT: usize = 200;

/// The most dead entries (idle expiry passed) one script drops from a
/// subject's index, with one `ZREMRANGEBYRANK`: a subject with a long
/// history is cleaned over several calls, each short.
pub(super) const SUBJECT_DROP_LIMIT: usize = 1000;

/// How many commands may be in flight on one connection before the next
/// connection takes new ones (see [`RedisStore::connection`]).
const FILL: usize = 64;

/// After how many commands the connection tried first moves on to the next.
const TURN: usize = 256;

/// How long a connection whose command timed out is passed over.
const STALL_MS: u64 = 5_000;

/// Which connection takes the next command, given each one's commands in
/// flight and whether it is sound (not passed over), in the order they are
/// tried: the first sound one with room; else the least busy sound one;
/// else (none sound) the first with room; else the least busy. One pass over
/// one reading of each, so it always names a connection.
fn choose(connections: impl Iterator<Item = (usize, bool)>) -> usize {
    let (mut sound_least, mut any_room, mut any_least) = (None, None, None);
    for (i, (in_flight, sound)) in connections.enumerate() {
        if sound && in_flight < FILL {
            return i;
        }
        if sound && sound_least.is_none_or(|(_, least)| in_flight < least) {
            sound_least = Some((i, in_flight));
        }
        if in_flight < FILL && any_room.is_none() {
            any_room = Some(i);
        }
        if any_least.is_none_or(|(_, least)| in_flight < least) {
            any_least = Some((i, in_flight));
        }
    }
    sound_least
        .map(|(i, _)| i)
        .or(any_room)
        .or(any_least.map(|(i, _)| i))
        .unwrap_or(0)
}

/// One of the store's connections, with the number of its commands in
/// flight and whether it is to be passed over.
pub(super) struct Connection {
    pub(super) manager: ConnectionManager,
    pub(super) in_flight: AtomicUsize,
    /// Until when (milliseconds on the store's [`RedisStore::epoch`]) the
    /// connection is passed over while another is sound: set by a timeout,
    /// cleared by any other outcome. A hung connection (which the server
    /// never closes, so it is never reconnected) then does not take a
    /// turn's commands; after [`STALL_MS`] it gets one again, as a probe.
    pub(super) stalled_until: AtomicU64,
}

/// A connection taken for one command: counted in flight until dropped.
struct Lease<'a> {
    slot: &'a Connection,
}

impl Lease<'_> {
    /// Records how the command went (see [`Connection::stalled_until`]);
    /// the clock is read only after a timeout.
    fn settle<T>(&self, result: &Result<T, StoreError>, now_ms: impl FnOnce() -> u64) {
        let until = match result {
            Err(StoreError::Timeout { .. }) => now_ms().saturating_add(STALL_MS),
            _ => 0,
        };
        self.slot.stalled_until.store(until, Ordering::Relaxed);
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.slot.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A [`SessionStore`] in Redis (feature `redis`): every app instance on the
/// same Redis and prefix sees every login and revocation on its next
/// request.
///
/// A lookup is one `GET` (or `MGET`, for several candidates), with no
/// script; every write is a small Lua script (a data write whose script
/// finds the record changed sends a second one, which says why). Keys
/// expire by themselves, relative to the application's clock.
/// `rediss://` URLs need the `redis-tls` feature. See the
/// [module docs](super) for the key layout, the expiry rule and the
/// connections.
///
/// ```no_run
/// use std::time::Duration;
/// use tower_hmac_session::{KeyRing, SessionConfig, SessionManager, store::RedisStore};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisStore::builder("redis://cache.internal:6379/0")
///     .prefix("myapp:sessions:")
///     .username("myapp")
///     .password(std::env::var("REDIS_PASSWORD")?)
///     .timeout(Duration::from_millis(500))
///     .connections(4)
///     .connect()
///     .await?;
/// store.ping().await?; // a health check for readiness probes
/// let keys = KeyRing::from_env("SESSION_KEYS")?;
/// let sessions = SessionManager::new(store, keys, SessionConfig::default());
/// # let _ = sessions; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    pub(super) connections: Arc<[Connection]>,
    pub(super) next: Arc<AtomicUsize>,
    /// What [`Connection::stalled_until`] counts from.
    pub(super) epoch: std::time::Instant,
    pub(super) prefix: Arc<str>,
    pub(super) timeout: Duration,
    pub(super) scripts: Arc<Scripts>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("connections", &self.connections.len())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Starts building a store for `url` (`redis://[user:password@]host:port/db`,
    /// or `rediss://…` for TLS with the `redis-tls` feature).
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder::new(url.into())
    }

    /// Connects to `url` with the defaults.
    ///
    /// # Errors
    ///
    /// As [`RedisStoreBuilder::connect`].
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::builder(url).connect().await
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A health check: one `PING` round trip (on the connection a command
    /// would take now).
    ///
    /// # Errors
    ///
    /// The server did not answer `PONG` in time.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let pong: String = self.query("ping", &redis::cmd("PING")).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(StoreError::backend("ping", "unexpected reply to PING"))
        }
    }

    /// The connection for the next command, counted in flight while the
    /// lease lives.
    fn connection(&self) -> Lease<'_> {
        // Fill first: one connection takes the commands while it has room,
        // so that concurrent commands share its writes (one system call on
        // each side for several commands) rather than each going alone down
        // a connection of its own; the next ones take what a busy one cannot.
        // Which connection comes first moves on every `TURN` commands, so
        // every sound connection keeps being used. A connection whose last
        // command timed out is passed over for `STALL_MS` while another is
        // sound. The counts are read without a lock, so a burst can put a
        // few more than `FILL` on one connection: harmless.
        let count = self.connections.len();
        let first = self.next.fetch_add(1, Ordering::Relaxed) / TURN % count;
        // The clock is read only when some connection is passed over.
        let mut now = None;
        let order = (0..count).map(|i| &self.connections[(first + i) % count]);
        let pick = choose(order.map(|c| {
            let until = c.stalled_until.load(Ordering::Relaxed);
            let stalled = until != 0 && until > *now.get_or_insert_with(|| self.now_ms());
            (c.in_flight.load(Ordering::Relaxed), !stalled)
        }));
        let slot = &self.connections[(first + pick) % count];
        slot.in_flight.fetch_add(1, Ordering::Relaxed);
        Lease { slot }
    }

    /// Milliseconds since the store was built (monotonic).
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Runs `op` on the connection for the next command (see
    /// [`connection`](Self::connection)), under the store's timeout.
    async fn leased<T, F>(
        &self,
        operation: &'static str,
        op: impl FnOnce(ConnectionManager) -> F,
    ) -> Result<T, StoreError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        self.leased_until(operation, self.deadline(), op).await
    }

    /// When an operation starting now is out of time.
    fn deadline(&self) -> Instant {
        let now = Instant::now();
        // A timeout too long to add (`Duration::MAX`) is none: 30 years.
        now.checked_add(self.timeout)
            .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 86_400))
    }

    /// [`leased`](Self::leased), for an operation that is out of time at
    /// `deadline` (one of several commands).
    async fn leased_until<T, F>(
        &self,
        operation: &'static str,
        deadline: Instant,
        op: impl FnOnce(ConnectionManager) -> F,
    ) -> Result<T, StoreError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        let lease = self.connection();
        let result = self
            .run(operation, deadline, op(lease.slot.manager.clone()))
            .await;
        lease.settle(&result, || self.now_ms());
        result
    }

    /// Runs `command` (see [`leased`](Self::leased)).
    async fn query<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        command: &redis::Cmd,
    ) -> Result<T, StoreError> {
        self.leased(operation, |mut connection| async move {
            command.query_async(&mut connection).await
        })
        .await
    }

    /// The name of lookup key `key`'s Redis key, `<prefix>k:<hex>`.
    fn lookup_key(&self, key: &LookupKey) -> String {
        // One allocation per name: every request names its lookup key.
        let mut name = Vec::with_capacity(self.prefix.len() + 2 + 64);
        name.extend_from_slice(self.prefix.as_bytes());
        name.extend_from_slice(b"k:");
        push_hex(&mut name, key.as_bytes());
        // The prefix is text and hex digits are ASCII: never the default.
        String::from_utf8(name).unwrap_or_default()
    }

    async fn run<T>(
        &self,
        operation: &'static str,
        deadline: Instant,
        op: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout_at(deadline, op).await {
            Err(_) => Err(StoreError::Timeout {
                operation,
                timeout: self.timeout,
            }),
            Ok(Err(e)) if e.is_timeout() => Err(StoreError::Timeout {
                operation,
                timeout: self.timeout,
            }),
            Ok(Err(e)) => Err(StoreError::backend(operation, e)),
            Ok(Ok(value)) => Ok(value),
        }
    }

    /// Runs `script` with the prefix and then `args` as `ARGV`.
    async fn script<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        script: &Script,
        args: &[&[u8]],
    ) -> Result<T, StoreError> {
        self.script_until(operation, script, args, true, self.deadline())
            .await
    }

    /// Runs `script` with `args` as `ARGV`, after the prefix if `prefixed`,
    /// out of time at `deadline`.
    async fn script_until<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        script: &Script,
        args: &[&[u8]],
        prefixed: bool,
        deadline: Instant,
    ) -> Result<T, StoreError> {
        let mut invocation = script.prepare_invoke();
        if prefixed {
            invocation.arg(self.prefix.as_bytes());
        }
        for arg in args {
            invocation.arg(*arg);
        }
        self.leased_until(operation, deadline, |mut connection| async move {
            invocation.invoke_async(&mut connection).await
        })
        .await
    }

    /// One step of a scan over the `s:` keys: the next cursor and the ids
    /// found. The pattern matches exactly 32 lowercase hex digits after
    /// `s:`, so another prefix that happens to start with this one is not
    /// read.
    async fn scan_ids(
        &self,
        operation: &'static str,
        cursor: u64,
    ) -> Result<(u64, Vec<SessionId>), StoreError> {
        let pattern = format!("{}s:{}", glob_escape(&self.prefix), "[0-9a-f]".repeat(32));
        let (cursor, keys): (u64, Vec<String>) = self
            .query(
                operation,
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(SCAN_BATCH),
            )
            .await?;
        let start = self.prefix.len() + 2;
        let ids = keys
            .iter()
            .map(|key| {
                key.get(start..)
                    .and_then(|hex| hex.parse::<SessionId>().ok())
                    .ok_or_else(|| {
                        StoreError::corrupt(None, "a key under `s:` is not a session id")
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok((cursor, ids))
    }

    /// The insert script: `record` with its keys living until its absolute
    /// expiry from `now`, and, with a `cap`, the subject's least recently
    /// used sessions revoked first. Returns the ids revoked.
    async fn insert_with(
        &self,
        operation: &'static str,
        record: &SessionRecord,
        now: OffsetDateTime,
        cap: Option<&SubjectCap>,
    ) -> Result<Vec<SessionId>, StoreError> {
        record.validate().map_err(StoreError::Invalid)?;
        let id = hex_of(record.id.as_bytes());
        let ttl = ttl_ms(record.absolute_expires_at, now);
        let value = encode(record);
        let subject = record.subject.as_deref().unwrap_or_default();
        let score = index_score(record).to_string();
        let (now_micros, now_secs) = (micros(now), floor_secs(now));
        let (keep, except, revocation) = match cap {
            Some(cap) => (
                cap.max_sessions.saturating_sub(1).to_string(),
                cap.except
                    .map(|id| hex_of(id.as_bytes()))
                    .unwrap_or_default(),
                revocation_field(to_micros(now), &cap.revocation),
            ),
            None => Default::default(),
        };
        let keys: Vec<String> = record
            .credentials()
            .map(|(_, c)| hex_of(c.lookup_key.as_bytes()))
            .collect();
        let mut args: Vec<&[u8]> = vec![
            id.as_bytes(),
            ttl.as_bytes(),
            &value,
            subject.as_bytes(),
            score.as_bytes(),
            now_micros.as_bytes(),
            now_secs.as_bytes(),
            keep.as_bytes(),
            except.as_bytes(),
            revocation.as_bytes(),
        ];
        args.extend(keys.iter().map(|k| k.as_bytes()));
        let reply: Vec<String> = self.script(operation, &self.scripts.insert, &args).await?;
        match reply.split_first() {
            Some((tag, evicted)) if tag == "ok" => evicted
                .iter()
                .map(|id| id.parse().map_err(|_| unexpected(operation)))
                .collect(),
            Some((tag, [])) if tag == "conflict" => Err(StoreError::Conflict),
            Some((tag, [id])) if tag == "corrupt" => Err(StoreError::corrupt(
                id.parse().ok(),
                "a record in the subject's index is damaged or not the subject's",
            )),
            _ => Err(unexpected(operation)),
        }
    }
}

/// Escapes `*`, `?`, `[`, `]` and `\` for a `SCAN … MATCH` pattern.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// The time-to-live of a record's keys written at `now`: until its absolute
/// expiry by the application's clock, at least [`MIN_TTL_MS`]. At most
/// about 6.3e14 ms (20,000 years, the span of `OffsetDateTime`), far inside
/// what Redis accepts.
fn ttl_ms(absolute_expires_at: OffsetDateTime, now: OffsetDateTime) -> String {
    let nanos = (absolute_expires_at - now).whole_nanoseconds();
    // Rounded up, so a key never expires before the record does.
    let ms = nanos.div_euclid(1_000_000) + i128::from(nanos.rem_euclid(1_000_000) != 0);
    ms.max(MIN_TTL_MS).to_string()
}

fn micros(t: OffsetDateTime) -> String {
    to_micros(t).to_string()
}

/// A record's score in its subject's index: its idle expiry in whole
/// seconds, rounded up to a multiple of a step of 1 to 60 seconds (a
/// sixteenth of its idle timeout, in whole seconds). Whole
/// seconds are exact in the double Redis keeps a score in, for every
/// representable year; rounding up means an entry whose score is at or
/// before [`floor_secs`]`(now)` has surely ended.
///
/// The step spares most writes the `ZADD`: a write whose new score is no
/// higher than its record's leaves the entry as it is, since the stored
/// score is at least the record's (every write either sets it or finds it
/// high enough already). The entry of a session that ended stays up to a
/// step longer, which changes nothing: scripts check each record they read.
/// An entry that a script on a host whose clock runs ahead removed early
/// (the session ended by that clock) comes back at the next write that sets
/// the score; a write that skips it has an idle expiry (now plus the idle
/// timeout) less than a step past the record's, so the session had ended
/// by that host's clock only if it ran ahead by nearly the idle timeout.
fn index_score(record: &SessionRecord) -> i128 {
    score_at(record.expires_at, record.idle_timeout)
}

/// [`index_score`] of an idle expiry and idle timeout.
fn score_at(expires_at: OffsetDateTime, idle: Duration) -> i128 {
    let step = i128::from((idle.as_secs() / 16).clamp(1, 60));
    let micros = i128::from(to_micros(expires_at));
    let step_micros = step * 1_000_000;
    // Rounded up: the score is never before the expiry.
    let steps = micros.div_euclid(step_micros) + i128::from(micros.rem_euclid(step_micros) != 0);
    steps * step
}

/// `now` in whole seconds, rounded down: see [`index_score`].
fn floor_secs(now: OffsetDateTime) -> String {
    to_micros(now).div_euclid(1_000_000).to_string()
}

/// The record of `id` from what [`FETCH`](super::scripts) read: what its
/// key holds (`pointer`) and the value under that lookup key. `None` when
/// either is gone; corruption when the pointer is not a lookup key, or the
/// value is not the id's record with that current lookup key.
fn fetched(
    id: &SessionId,
    pointer: &[u8],
    value: &[u8],
) -> Result<Option<SessionRecord>, StoreError> {
    if pointer.is_empty() {
        return Ok(None);
    }
    let Some(pointer) = lookup_key_of_hex(pointer) else {
        return Err(StoreError::corrupt(
            Some(*id),
            "the id's key does not hold a lookup key",
        ));
    };
    // No value is empty.
    if value.is_empty() {
        return Ok(None);
    }
    let record = decode(value, Some(*id))?;
    if record.id != *id {
        return Err(StoreError::corrupt(
            Some(*id),
            "the value the id's key points to is another session's",
        ));
    }
    if record.current.lookup_key != pointer {
        return Err(StoreError::corrupt(
            Some(*id),
            "the id's key does not point to the record's current lookup key",
        ));
    }
    Ok(Some(record))
}

fn unexpected(operation: &'static str) -> StoreError {
    StoreError::backend(operation, "unexpected reply from a script")
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn find_active(
        &self,
        candidates: &[Candidate],
        now: OffsetDateTime,
    ) -> Result<Vec<SessionMatch>, StoreError> {
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = candidates
            .iter()
            .map(|c| self.lookup_key(&c.lookup_key))
            .collect();
        // One candidate (one cookie value, one key version: the usual
        // lookup) is a `GET`, which costs the server less than an `MGET`.
        let values: Vec<Option<Vec<u8>>> = match keys.as_slice() {
            [key] => vec![
                self.query("find_active", redis::cmd("GET").arg(key))
                    .await?,
            ],
            keys => {
                self.query("find_active", redis::cmd("MGET").arg(keys))
                    .await?
            }
        };
        if values.len() != candidates.len() {
            return Err(StoreError::backend(
                "find_active",
                "MGET answered a different number of values",
            ));
        }
        // The copies under one record's keys are the same bytes: decode once.
        let mut decoded: Vec<(&[u8], Arc<SessionRecord>)> = Vec::new();
        let mut matches = Vec::new();
        for (candidate, value) in candidates.iter().zip(&values) {
            let Some(value) = value.as_deref() else {
                continue;
            };
            let record = match decoded.iter().find(|(bytes, _)| *bytes == value) {
                Some((_, record)) => record.clone(),
                None => {
                    let record = Arc::new(decode(value, None)?);
                    decoded.push((value, record.clone()));
                    record
                }
            };
            // Under a lookup key must be the record that holds it.
            if !record
                .credentials()
                .any(|(_, c)| c.lookup_key == candidate.lookup_key)
            {
                return Err(StoreError::corrupt(
                    Some(record.id),
                    "a lookup key holds a record that does not hold it",
                ));
            }
            if !record.is_active(now) {
                continue;
            }
            if let Some(slot) = record.slot_of(&candidate.lookup_key, candidate.key_version) {
                matches.push(SessionMatch {
                    record,
                    slot,
                    key_version: candidate.key_version,
                    value_index: candidate.value_index,
                });
            }
        }
        Ok(matches)
    }

    async fn get_active(
        &self,
        id: &SessionId,
        now: OffsetDateTime,
    ) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        let hex = hex_of(id.as_bytes());
        let reply: Vec<Vec<u8>> = self
            .script("get_active", &self.scripts.fetch, &[hex.as_bytes()])
            .await?;
        let [pointer, value] = reply.as_slice() else {
            return Err(unexpected("get_active"));
        };
        Ok(fetched(id, pointer, value)?
            .filter(|record| record.is_active(now))
            .map(Arc::new))
    }

    async fn insert(&self, record: &SessionRecord) -> Result<(), StoreError> {
        // A new record's `last_seen_at` is the application's "now".
        self.insert_with("insert", record, record.last_seen_at, None)
            .await
            .map(drop)
    }

    async fn insert_capped(
        &self,
        record: &SessionRecord,
        now: OffsetDateTime,
        cap: &SubjectCap,
    ) -> Result<Vec<SessionId>, StoreError> {
        cap.revocation.validate().map_err(StoreError::Invalid)?;
        self.insert_with("insert_capped", record, now, Some(cap))
            .await
    }

    async fn replace(
        &self,
        current: &SessionRecord,
        next: &SessionRecord,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        check_successor(current, next)?;
        // The script compares headers only: the conditions the header holds
        // (not revoked, active at `now`) are checked here, in the stored
        // precision (whole microseconds), as the slow path would.
        let now_micros = to_micros(now);
        if current.revoked.is_some()
            || now_micros >= to_micros(current.expires_at)
            || now_micros >= to_micros(current.absolute_expires_at)
        {
            return Ok(false);
        }
        let expected = header(current);
        let value = encode(next);
        // The subject's index entry moves when the idle expiry passes its
        // score, and at every rotation whatever the score; re-adding it
        // also takes back an entry that a clock ahead of this one dropped
        // (see `index_score`).
        let rotation = next.current.lookup_key != current.current.lookup_key;
        let score = match index_score(next) {
            score if rotation || score > index_score(current) => score.to_string(),
            _ => String::new(),
        };
        fn lookup_keys(record: &SessionRecord) -> impl Iterator<Item = LookupKey> + '_ {
            record.credentials().map(|(_, c)| c.lookup_key)
        }
        let same_keys = lookup_keys(next).eq(lookup_keys(current));
        // Both scripts together within the store's timeout.
        let deadline = self.deadline();
        // A data write (same keys, index entry left as it is): the small
        // script, which only compares and sets. When it does not apply, the
        // full one below tells why (it cannot apply either: the stored
        // header never returns to one a write replaced, since every replace
        // bumps the generation and a revocation is never undone).
        if score.is_empty() && same_keys {
            let names: Vec<String> = lookup_keys(next).map(|k| self.lookup_key(&k)).collect();
            // `GETRANGE`'s end (a header is never empty), on the stack.
            let mut end = itoa::Buffer::new();
            let end = end.format(expected.len().saturating_sub(1));
            let mut args: Vec<&[u8]> = vec![names[0].as_bytes(), &expected, end.as_bytes(), &value];
            args.extend(names[1..].iter().map(|n| n.as_bytes()));
            let touch = &self.scripts.touch;
            if self
                .script_until::<i64>("replace", touch, &args, false, deadline)
                .await?
                == 1
            {
                return Ok(true);
            }
        }
        let id = hex_of(current.id.as_bytes());
        let ttl = ttl_ms(next.absolute_expires_at, now);
        let subject = next.subject.as_deref().unwrap_or_default();
        let hex_keys = |record: &SessionRecord| -> Vec<String> {
            lookup_keys(record).map(|k| hex_of(k.as_bytes())).collect()
        };
        let (keys, read_keys) = (hex_keys(next), hex_keys(current));
        let count = keys.len().to_string();
        let mut args: Vec<&[u8]> = vec![
            id.as_bytes(),
            &expected,
            ttl.as_bytes(),
            &value,
            score.as_bytes(),
            subject.as_bytes(),
            count.as_bytes(),
        ];
        args.extend(keys.iter().map(|k| k.as_bytes()));
        // The keys the caller read, when they differ: the stored ones when
        // the headers match, and with the record gone, its copies under
        // these are deleted.
        if !same_keys {
            args.extend(read_keys.iter().map(|k| k.as_bytes()));
        }
        // Out of time already (the first script took it all): say so
        // rather than send a command bound to time out, which would mark a
        // sound connection stalled.
        if Instant::now() >= deadline {
            return Err(StoreError::Timeout {
                operation: "replace",
                timeout: self.timeout,
            });
        }
        match self
            .script_until::<i64>("replace", &self.scripts.replace, &args, true, deadline)
            .await?
        {
            1 => Ok(true),
            0 => Ok(false),
            -1 => Err(StoreError::Conflict),
            -2 => Err(StoreError::corrupt(
                Some(current.id),
                "the stored value's header does not parse",
            )),
            _ => Err(unexpected("replace")),
        }
    }

    async fn revoke(
        &self,
        id: &SessionId,
        subject: Option<&str>,
        now: OffsetDateTime,
        revocation: &Revocation,
    ) -> Result<RevokeOutcome, StoreError> {
        revocation.validate().map_err(StoreError::Invalid)?;
        let hex_id = hex_of(id.as_bytes());
        let (check, subject) = match subject {
            Some(subject) => ("1", hex_of(subject.as_bytes())),
            None => ("0", String::new()),
        };
        let field = revocation_field(to_micros(now), revocation);
        let args: [&[u8]; 4] = [
            hex_id.as_bytes(),
            check.as_bytes(),
            subject.as_bytes(),
            field.as_bytes(),
        ];
        match self
            .script::<i64>("revoke", &self.scripts.revoke, &args)
            .await?
        {
            1 => Ok(RevokeOutcome::Revoked),
            2 => Ok(RevokeOutcome::AlreadyRevoked),
            0 => Ok(RevokeOutcome::NotFound),
            -2 => Err(StoreError::corrupt(
                Some(*id),
                "the stored value's header does not parse",
            )),
            _ => Err(unexpected("revoke")),
        }
    }

    async fn revoke_all_for_subject(
        &self,
        subject: &str,
        now: OffsetDateTime,
        revocation: &Revocation,
        except: Option<&SessionId>,
    ) -> Result<u64, StoreError> {
        const OPERATION: &str = "revoke_all_for_subject";
        revocation.validate().map_err(StoreError::Invalid)?;
        let hex_subject = hex_of(subject.as_bytes());
        let field = revocation_field(to_micros(now), revocation);
        let except = except.map(|id| hex_of(id.as_bytes())).unwrap_or_default();
        let (now_micros, now_secs) = (micros(now), floor_secs(now));
        let args: [&[u8]; 6] = [
            subject.as_bytes(),
            hex_subject.as_bytes(),
            field.as_bytes(),
            except.as_bytes(),
            now_micros.as_bytes(),
            now_secs.as_bytes(),
        ];
        // One call when the subject has at most `SUBJECT_READ_LIMIT`
        // sessions (the cap sees to it); more are revoked a call at a time,
        // each atomic, until none is left.
        let mut total = 0;
        loop {
            let reply: Vec<String> = self
                .script(OPERATION, &self.scripts.revoke_all, &args)
                .await?;
            match reply.as_slice() {
                [count, more] if more == "0" || more == "1" => {
                    total += count.parse::<u64>().map_err(|_| unexpected(OPERATION))?;
                    if more == "0" {
                        return Ok(total);
                    }
                }
                [tag, id] if tag == "corrupt" => {
                    return Err(StoreError::corrupt(
                        id.parse().ok(),
                        "a record in the subject's index is damaged or not the subject's",
                    ));
                }
                _ => return Err(unexpected(OPERATION)),
            }
        }
    }

    async fn list_for_subject(
        &self,
        subject: &str,
        now: OffsetDateTime,
    ) -> Result<Vec<ActiveSessionRecord>, StoreError> {
        const OPERATION: &str = "list_for_subject";
        let (now_micros, now_secs) = (micros(now), floor_secs(now));
        let reply: Vec<Vec<u8>> = self
            .script(
                OPERATION,
                &self.scripts.list,
                &[
                    subject.as_bytes(),
                    now_micros.as_bytes(),
                    now_secs.as_bytes(),
                ],
            )
            .await?;
        let Some((more, flat)) = reply.split_first() else {
            return Err(unexpected(OPERATION));
        };
        if !flat.len().is_multiple_of(2) {
            return Err(unexpected(OPERATION));
        }
        match more.as_slice() {
            b"0" => {}
            b"1" => tracing::warn!(
                limit = SUBJECT_READ_LIMIT,
                "a subject has more sessions than one Redis script reads; \
                 the list holds those expiring last (keep max_sessions_per_subject \
                 at or below the limit)"
            ),
            _ => return Err(unexpected(OPERATION)),
        }
        let mut list = Vec::with_capacity(flat.len() / 2);
        for pair in flat.chunks_exact(2) {
            let id = std::str::from_utf8(&pair[0])
                .ok()
                .and_then(|hex| hex.parse::<SessionId>().ok())
                .ok_or_else(|| {
                    StoreError::corrupt(None, "the subject's index holds something not an id")
                })?;
            let record = decode(&pair[1], Some(id))?;
            if record.id != id || record.subject.as_deref() != Some(subject) {
                return Err(StoreError::corrupt(
                    Some(id),
                    "the subject's index names a record that is not the subject's",
                ));
            }
            if record.is_active(now) {
                list.push(record.to_active(record.current.key_version));
            }
        }
        list.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        Ok(list)
    }

    async fn count_by_key_version(
        &self,
        now: OffsetDateTime,
        seen_since: OffsetDateTime,
    ) -> Result<BTreeMap<KeyVersion, VersionCount>, StoreError> {
        const OPERATION: &str = "count_by_key_version";
        let mut counts: BTreeMap<KeyVersion, VersionCount> = BTreeMap::new();
        // SCAN may return a key twice: count each record once.
        let mut seen = HashSet::new();
        let mut cursor = 0;
        loop {
            let (next, ids) = self.scan_ids(OPERATION, cursor).await?;
            let ids: Vec<SessionId> = ids.into_iter().filter(|id| seen.insert(*id)).collect();
            // A short batch per script, as for purges.
            for ids in ids.chunks(PURGE_BATCH) {
                let hex: Vec<String> = ids.iter().map(|id| hex_of(id.as_bytes())).collect();
                let args: Vec<&[u8]> = hex.iter().map(|h| h.as_bytes()).collect();
                let reply: Vec<Vec<u8>> =
                    self.script(OPERATION, &self.scripts.fetch, &args).await?;
                if reply.len() != 2 * ids.len() {
                    return Err(unexpected(OPERATION));
                }
                for (id, pair) in ids.iter().zip(reply.chunks_exact(2)) {
                    // Gone since the scan saw it.
                    let Some(record) = fetched(id, &pair[0], &pair[1])? else {
                        continue;
                    };
                    if !record.is_active(now) {
                        continue;
                    }
                    let recent = record.last_seen_at >= seen_since;
                    let mut count = |version| {
                        let entry: &mut VersionCount = counts.entry(version).or_default();
                        match recent {
                            true => entry.recent += 1,
                            false => entry.dormant += 1,
                        }
                    };
                    count(record.current.key_version);
                    if let Some(previous) = &record.previous
                        && previous.valid_until.is_none_or(|until| until > now)
                        && previous.credential.key_version != record.current.key_version
                    {
                        count(previous.credential.key_version);
                    }
                }
            }
            if next == 0 {
                return Ok(counts);
            }
            cursor = next;
        }
    }

    async fn purge_expired(&self, now: OffsetDateTime) -> Result<u64, StoreError> {
        const OPERATION: &str = "purge_expired";
        let now = micros(now);
        let mut total = 0;
        let mut corrupt = None;
        let mut cursor = 0;
        loop {
            let (next, ids) = self.scan_ids(OPERATION, cursor).await?;
            // A short batch per script: Redis runs nothing else meanwhile.
            for batch in ids.chunks(PURGE_BATCH) {
                let hex: Vec<String> = batch.iter().map(|id| hex_of(id.as_bytes())).collect();
                let mut args: Vec<&[u8]> = vec![now.as_bytes()];
                args.extend(hex.iter().map(|h| h.as_bytes()));
                let reply: Vec<String> = self.script(OPERATION, &self.scripts.purge, &args).await?;
                let (count, damaged) = reply.split_first().ok_or_else(|| unexpected(OPERATION))?;
                total += count.parse::<u64>().map_err(|_| unexpected(OPERATION))?;
                // Damaged records are left alone, and reported once the
                // rest is purged.
                if let Some(id) = damaged.first() {
                    corrupt.get_or_insert(id.parse::<SessionId>().ok());
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        match corrupt {
            None => Ok(total),
            Some(id) => Err(StoreError::corrupt(
                id,
                "a stored value's header does not parse; it was not purged",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_choice_fills_sound_connections_first_and_always_names_one() {
        let full = FILL;
        // The first sound one with room, in order.
        assert_eq!(choose([(3, true), (0, true)].into_iter()), 0);
        assert_eq!(choose([(full, true), (5, true)].into_iter()), 1);
        // Stalled ones are passed over while another is sound, even full.
        assert_eq!(choose([(0, false), (2, true)].into_iter()), 1);
        assert_eq!(
            choose([(0, false), (full + 3, true), (full + 1, true)].into_iter()),
            2
        );
        // None sound: the first with room, else the least busy.
        assert_eq!(
            choose([(full, false), (7, false), (1, false)].into_iter()),
            1
        );
        assert_eq!(choose([(full + 2, false), (full, false)].into_iter()), 1);
        // All full and sound: the least busy.
        assert_eq!(choose([(full + 5, true), (full + 1, true)].into_iter()), 1);
        assert_eq!(choose([(0, false)].into_iter()), 0);
    }

    #[test]
    fn ttls_are_relative_rounded_up_and_bounded() {
        let now = OffsetDateTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let at = |secs: i64, nanos: i64| {
            now + time::Duration::seconds(secs) + time::Duration::nanoseconds(nanos)
        };
        assert_eq!(ttl_ms(at(86_400, 0), now), "86400000");
        assert_eq!(ttl_ms(at(86_400, 1), now), "86400001");
        assert_eq!(ttl_ms(at(86_400, -1), now), "86400000");
        assert_eq!(ttl_ms(at(1, 0), now), MIN_TTL_MS.to_string());
        assert_eq!(ttl_ms(at(-86_400, 0), now), MIN_TTL_MS.to_string());
        let far = OffsetDateTime::new_utc(
            time::Date::from_calendar_date(9999, time::Month::December, 31).unwrap(),
            time::Time::MIDNIGHT,
        );
        let past = OffsetDateTime::new_utc(
            time::Date::from_calendar_date(-9999, time::Month::January, 1).unwrap(),
            time::Time::MIDNIGHT,
        );
        assert_eq!(ttl_ms(far, past), "631107331200000");
    }

    #[test]
    fn the_subject_bounds_are_the_documented_ones() {
        // The module docs and tests/redis_store.rs name these numbers.
        assert_eq!((SUBJECT_READ_LIMIT, SUBJECT_DROP_LIMIT), (200, 1000));
    }

    #[test]
    fn index_scores_round_up_and_now_rounds_down() {
        let at = |secs: i64, micros: i64| {
            OffsetDateTime::UNIX_EPOCH
                + time::Duration::seconds(secs)
                + time::Duration::microseconds(micros)
        };
        let secs = Duration::from_secs;
        // Steps of one second below a 32 s idle timeout.
        assert_eq!(score_at(at(100, 0), secs(16)), 100);
        assert_eq!(score_at(at(100, 1), secs(31)), 101);
        assert_eq!(score_at(at(-100, -1), secs(1)), -100);
        assert_eq!(score_at(at(100, 0), secs(0)), 100);
        // A sixteenth of the idle timeout, in whole seconds, at most 60.
        assert_eq!(score_at(at(100, 0), secs(160)), 100);
        assert_eq!(score_at(at(101, 0), secs(160)), 110);
        assert_eq!(score_at(at(100, 0), secs(175)), 100);
        assert_eq!(score_at(at(100, 1), secs(3600)), 120);
        assert_eq!(score_at(at(120, 0), secs(3600)), 120);
        assert_eq!(score_at(at(-61, 0), secs(86_400)), -60);
        // Never before the expiry, never a step after it.
        for idle in [1, 20, 100, 999, 3600, 86_400] {
            for t in [-3601, -1, 0, 1, 59, 61, 1_000_000_007] {
                for micros in [0, 1, 999_999] {
                    let score = score_at(at(t, micros), secs(idle));
                    let expiry = i128::from(t) * 1_000_000 + i128::from(micros);
                    assert!(score * 1_000_000 >= expiry, "{idle} {t} {micros}");
                    assert!((score - 60) * 1_000_000 < expiry, "{idle} {t} {micros}");
                }
            }
        }
        assert_eq!(floor_secs(at(100, 999_999)), "100");
        assert_eq!(floor_secs(at(-100, -1)), "-101");
        // An entry is dropped when its score is at or before `floor_secs`:
        // then its expiry is at or before now.
        assert_eq!(
            score_at(at(100, 0), secs(1)).to_string(),
            floor_secs(at(100, 0))
        );
    }

    #[test]
    fn scan_patterns_match_the_prefix_literally() {
        assert_eq!(glob_escape("app:*?[x]\\:"), "app:\\*\\?\\[x\\]\\\\:");
    }
}
