//! [`RedisStore`]: sessions in Redis, shared by many app instances.
//!
//! Layout, under a configurable prefix `P` (default `ths:`):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P s:<id>` | hash | the record, one field per column; expires at the absolute expiry |
//! | `P k:<lookup key hex>` | string | the id, for the current and the previous credential; same expiry |
//! | `P u:<subject>` | sorted set | the subject's ids by `created_at`: lists without a scan |
//! | `P x` | sorted set | ids by effective expiry (or revocation time): what `purge_expired` removes |
//! | `P v:<version>`, `P p:<version>` | sorted sets | ids by current / in-grace previous key version: `count_by_key_version` |
//! | `P versions` | set | the key versions in use |
//!
//! Every operation is one Lua script (one round trip, atomic on the server),
//! so every write is conditional and indexes never drift from records.
//! Timestamps are decimal microseconds since the Unix epoch, lookup keys and
//! ids lowercase hex; anything else read back is corruption. Needs Redis 7.0
//! or later (`PEXPIRETIME`), and a single node (keys are derived inside the
//! scripts, so Redis Cluster is not supported).

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, Script};
use time::OffsetDateTime;

use super::raw::{RawRecord, attributes_json, from_micros, match_candidate, to_micros};
use super::{SessionStore, StoreError};
use crate::keys::{Candidate, KeyVersion, LookupKey};
use crate::record::{
    ActiveSessionRecord, Attributes, Credential, Revocation, RevokeOutcome, RotationTimestamps,
    SessionId, SessionMatch, SessionRecord, Slot, validate_attributes,
};

/// Helpers every script starts with. `ARGV[1]` is always the key prefix.
const PRELUDE: &str = r#"
local P = ARGV[1]
local function skey(id) return P .. 's:' .. id end
local function kkey(k) return P .. 'k:' .. k end
local function num(s) return tonumber(s) end
-- The smaller of two decimal strings, as the original string (Lua's
-- tostring would round 16-digit numbers).
local function minstr(a, b) if num(a) <= num(b) then return a else return b end end
local function is_active(revoked, expires, absolute, now)
  return (not revoked) and expires and num(expires) > num(now) and num(absolute) > num(now)
end
local function unindex(id, current_version, previous_version)
  if current_version then redis.call('ZREM', P .. 'v:' .. current_version, id) end
  if previous_version then redis.call('ZREM', P .. 'p:' .. previous_version, id) end
end
-- Indexes a record from its hash: by expiry (or revocation) for purging,
-- and by key version for counting.
local function index(id)
  local f = redis.call('HMGET', skey(id), 'revoked_at', 'expires_at', 'absolute_expires_at',
    'current_key_version', 'previous_key_version', 'previous_valid_until')
  if f[1] then redis.call('ZADD', P .. 'x', f[1], id) return end
  local effective = minstr(f[2], f[3])
  redis.call('ZADD', P .. 'x', effective, id)
  redis.call('ZADD', P .. 'v:' .. f[4], effective, id)
  redis.call('SADD', P .. 'versions', f[4])
  if f[5] and f[5] ~= f[4] then
    redis.call('ZADD', P .. 'p:' .. f[5], minstr(f[6], effective), id)
    redis.call('SADD', P .. 'versions', f[5])
  end
end
-- Points a lookup key at a record, expiring with the record.
local function point(key, id)
  local at = redis.call('PEXPIRETIME', skey(id))
  if at > 0 then redis.call('SET', kkey(key), id, 'PXAT', at) else redis.call('SET', kkey(key), id) end
end
local function revoke_one(id, now, reason, has_actor, actor)
  local f = redis.call('HMGET', skey(id), 'revoked_at', 'current_key_version', 'previous_key_version')
  if f[1] then return false end
  redis.call('HSET', skey(id), 'revoked_at', now, 'revoked_reason', reason)
  if has_actor == '1' then redis.call('HSET', skey(id), 'revoked_actor', actor) end
  unindex(id, f[2], f[3])
  index(id)
  return true
end
"#;

/// The id a hash was found under, then the hash's field/value pairs: the
/// decoder checks that the hash's own `id` field agrees.
const PRELUDE_WITH_ID: &str = r#"
local function with_id(id, h)
  local out = {id}
  for _, v in ipairs(h) do out[#out + 1] = v end
  return out
end
"#;

/// ARGV: P, candidate lookup keys… Returns the first matching record as
/// `{id, field, value, …}`, or `{}`.
const FIND: &str = r#"
for i = 2, #ARGV do
  local id = redis.call('GET', kkey(ARGV[i]))
  if id then
    local h = redis.call('HGETALL', skey(id))
    if #h > 0 then return with_id(id, h) end
  end
end
return {}
"#;

/// ARGV: P, id, absolute expiry (ms), subject, created_at, current key,
/// previous key or '', then the hash's field/value pairs. 1, or 0 on conflict.
const INSERT: &str = r#"
local id, at, subject, created, current, previous = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
if redis.call('EXISTS', skey(id)) == 1 or redis.call('EXISTS', kkey(current)) == 1
  or (previous ~= '' and redis.call('EXISTS', kkey(previous)) == 1) then return 0 end
redis.call('HSET', skey(id), unpack(ARGV, 8))
redis.call('PEXPIREAT', skey(id), at)
point(current, id)
if previous ~= '' then point(previous, id) end
local u = P .. 'u:' .. subject
redis.call('ZADD', u, created, id)
local u_at = redis.call('PEXPIRETIME', u)
if u_at == -1 or u_at < num(at) then redis.call('PEXPIREAT', u, at) end
index(id)
return 1
"#;

/// ARGV: P, id, expected, new key, new version, previous valid until,
/// last seen, expires, access expires. 1 applied, 0 not, -1 conflict.
const ROTATE: &str = r#"
local id, expected, new, version = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local valid_until, seen, expires, access = ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local f = redis.call('HMGET', skey(id), 'revoked_at', 'expires_at', 'absolute_expires_at',
  'current_lookup_key', 'current_key_version', 'previous_lookup_key', 'previous_key_version')
if not is_active(f[1], f[2], f[3], seen) or f[4] ~= expected then return 0 end
if redis.call('EXISTS', kkey(new)) == 1 then return -1 end
unindex(id, f[5], f[7])
if f[6] then redis.call('DEL', kkey(f[6])) end
point(new, id)
redis.call('HSET', skey(id), 'previous_lookup_key', f[4], 'previous_key_version', f[5],
  'previous_valid_until', valid_until, 'current_lookup_key', new, 'current_key_version', version,
  'last_seen_at', seen, 'expires_at', minstr(expires, f[3]), 'access_expires_at', access)
index(id)
return 1
"#;

/// ARGV: P, id, last seen, expires. 1 applied, 0 not.
const TOUCH: &str = r#"
local id, seen, expires = ARGV[2], ARGV[3], ARGV[4]
local f = redis.call('HMGET', skey(id), 'revoked_at', 'expires_at', 'absolute_expires_at',
  'last_seen_at', 'current_key_version', 'previous_key_version')
if not is_active(f[1], f[2], f[3], seen) or num(f[4]) >= num(seen) then return 0 end
redis.call('HSET', skey(id), 'last_seen_at', seen, 'expires_at', minstr(expires, f[3]))
unindex(id, f[5], f[6])
index(id)
return 1
"#;

/// ARGV: P, id, slot ('current' | 'previous'), expected, new key, new
/// version. 1 applied, 0 not, -1 conflict.
const REKEY: &str = r#"
local id, slot, expected, new, version = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local f = redis.call('HMGET', skey(id), 'revoked_at', slot .. '_lookup_key',
  'current_key_version', 'previous_key_version')
if f[1] or f[2] ~= expected then return 0 end
if redis.call('EXISTS', kkey(new)) == 1 then return -1 end
unindex(id, f[3], f[4])
redis.call('DEL', kkey(expected))
point(new, id)
redis.call('HSET', skey(id), slot .. '_lookup_key', new, slot .. '_key_version', version)
index(id)
return 1
"#;

/// ARGV: P, id, attributes JSON, now. 1 applied, 0 not.
const UPDATE_ATTRIBUTES: &str = r#"
local id, json, now = ARGV[2], ARGV[3], ARGV[4]
local f = redis.call('HMGET', skey(id), 'revoked_at', 'expires_at', 'absolute_expires_at')
if not is_active(f[1], f[2], f[3], now) then return 0 end
redis.call('HSET', skey(id), 'attributes', json)
return 1
"#;

/// ARGV: P, id, now, reason, has actor ('1' | '0'), actor. 1 revoked,
/// 2 already revoked, 0 not found.
const REVOKE: &str = r#"
local id = ARGV[2]
if redis.call('EXISTS', skey(id)) == 0 then return 0 end
if revoke_one(id, ARGV[3], ARGV[4], ARGV[5], ARGV[6]) then return 1 end
return 2
"#;

/// ARGV: P, subject, now, reason, has actor, actor, except id or ''.
/// Returns how many were revoked.
const REVOKE_ALL: &str = r#"
local n = 0
for _, id in ipairs(redis.call('ZRANGE', P .. 'u:' .. ARGV[2], 0, -1)) do
  if id ~= ARGV[7] and redis.call('EXISTS', skey(id)) == 1
    and revoke_one(id, ARGV[3], ARGV[4], ARGV[5], ARGV[6]) then n = n + 1 end
end
return n
"#;

/// ARGV: P, subject. Every stored record of the subject, newest first,
/// each as `{id, field, value, …}`.
const LIST: &str = r#"
local out = {}
for _, id in ipairs(redis.call('ZREVRANGE', P .. 'u:' .. ARGV[2], 0, -1)) do
  local h = redis.call('HGETALL', skey(id))
  if #h > 0 then out[#out + 1] = with_id(id, h) end
end
return out
"#;

/// ARGV: P, now. Flat `version, count` pairs.
const COUNT: &str = r#"
local out = {}
for _, v in ipairs(redis.call('SMEMBERS', P .. 'versions')) do
  local c = redis.call('ZCOUNT', P .. 'v:' .. v, '(' .. ARGV[2], '+inf')
    + redis.call('ZCOUNT', P .. 'p:' .. v, '(' .. ARGV[2], '+inf')
  if c > 0 then out[#out + 1] = v; out[#out + 1] = tostring(c) end
end
return out
"#;

/// ARGV: P, now, batch size. Deletes up to a batch of dead records; returns
/// how many.
const PURGE: &str = r#"
local now, limit = ARGV[2], tonumber(ARGV[3])
local ids = redis.call('ZRANGEBYSCORE', P .. 'x', '-inf', now, 'LIMIT', 0, limit)
for _, id in ipairs(ids) do
  local f = redis.call('HMGET', skey(id), 'subject', 'current_lookup_key', 'previous_lookup_key',
    'current_key_version', 'previous_key_version')
  if f[1] then redis.call('ZREM', P .. 'u:' .. f[1], id) end
  if f[2] then redis.call('DEL', kkey(f[2])) end
  if f[3] then redis.call('DEL', kkey(f[3])) end
  unindex(id, f[4], f[5])
  redis.call('DEL', skey(id))
  redis.call('ZREM', P .. 'x', id)
end
if #ids < limit then
  for _, v in ipairs(redis.call('SMEMBERS', P .. 'versions')) do
    redis.call('ZREMRANGEBYSCORE', P .. 'v:' .. v, '-inf', now)
    redis.call('ZREMRANGEBYSCORE', P .. 'p:' .. v, '-inf', now)
    if redis.call('EXISTS', P .. 'v:' .. v) == 0 and redis.call('EXISTS', P .. 'p:' .. v) == 0 then
      redis.call('SREM', P .. 'versions', v)
    end
  end
end
return #ids
"#;

const PURGE_BATCH: usize = 1000;

struct Scripts {
    find: Script,
    insert: Script,
    rotate: Script,
    touch: Script,
    rekey: Script,
    update_attributes: Script,
    revoke: Script,
    revoke_all: Script,
    list: Script,
    count: Script,
    purge: Script,
}

impl Scripts {
    fn new() -> Self {
        let s = |body: &str| Script::new(&format!("{PRELUDE}{PRELUDE_WITH_ID}{body}"));
        Self {
            find: s(FIND),
            insert: s(INSERT),
            rotate: s(ROTATE),
            touch: s(TOUCH),
            rekey: s(REKEY),
            update_attributes: s(UPDATE_ATTRIBUTES),
            revoke: s(REVOKE),
            revoke_all: s(REVOKE_ALL),
            list: s(LIST),
            count: s(COUNT),
            purge: s(PURGE),
        }
    }
}

/// A [`SessionStore`] in Redis (feature `redis`): every
/// app instance on the same Redis sees every login and revocation on its
/// next request.
///
/// One multiplexed connection that reconnects by itself after a failure
/// (redis-rs's `ConnectionManager`); each operation is one Lua script. Keys
/// live under a prefix and expire by themselves at the session's absolute
/// expiry; [`purge_expired`](crate::SessionStore::purge_expired) also tidies
/// the indexes. `rediss://` URLs need the `redis-tls` feature. See the
/// [module docs](self) for the key layout.
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
///     .connect()
///     .await?;
/// store.ping().await?; // a health check for readiness probes
/// let keys = KeyRing::from_env("SESSION_KEYS")?;
/// let sessions = SessionManager::new(store, keys, SessionConfig::default());
/// # let _ = sessions; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    prefix: Arc<str>,
    timeout: Duration,
    scripts: Arc<Scripts>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Builds a [`RedisStore`]; see [`RedisStore::builder`].
#[derive(Clone)]
pub struct RedisStoreBuilder {
    url: String,
    prefix: String,
    username: Option<String>,
    password: Option<String>,
    timeout: Duration,
    connect_timeout: Duration,
    root_certificate: Option<Vec<u8>>,
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("prefix", &self.prefix)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("root_certificate", &self.root_certificate.is_some())
            .finish_non_exhaustive()
    }
}

impl RedisStoreBuilder {
    /// Trusts the certificate authority in `pem` (and only it) for a
    /// `rediss://` URL: for a server whose certificate a private CA signed.
    /// Without it, the system's and the webpki roots are trusted.
    #[cfg(feature = "redis-tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-tls")))]
    pub fn root_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_certificate = Some(pem.into());
        self
    }

    /// The prefix of every key (default `ths:`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The ACL user name (overrides one in the URL).
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// The password (overrides one in the URL).
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// The limit on each operation (default 2 s): past it the operation
    /// fails with [`StoreError::Timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The limit on each (re)connection attempt (default 2 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Connects.
    ///
    /// # Errors
    ///
    /// A malformed URL, `rediss://` without the `redis-tls` feature, or a
    /// server that cannot be reached or refuses the credentials. Errors never
    /// include the password.
    pub async fn connect(self) -> Result<RedisStore, StoreError> {
        let err = |e| StoreError::backend("connect", e);
        let mut info = self.url.as_str().into_connection_info().map_err(err)?;
        let mut settings = info.redis_settings().clone();
        if let Some(username) = &self.username {
            settings = settings.set_username(username);
        }
        if let Some(password) = &self.password {
            settings = settings.set_password(password);
        }
        info = info.set_redis_settings(settings);
        let client = match self.root_certificate {
            #[cfg(feature = "redis-tls")]
            Some(pem) => {
                // rustls needs a process-wide crypto provider; keep one the
                // application installed, else install ring (ours).
                let _ = rustls::crypto::ring::default_provider().install_default();
                let certificates = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                };
                redis::Client::build_with_tls(info, certificates).map_err(err)?
            }
            _ => {
                #[cfg(feature = "redis-tls")]
                let _ = rustls::crypto::ring::default_provider().install_default();
                redis::Client::open(info).map_err(err)?
            }
        };
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(self.timeout))
            .set_connection_timeout(Some(self.connect_timeout))
            .set_number_of_retries(3)
            .set_max_delay(Duration::from_secs(1));
        let connection = tokio::time::timeout(
            self.connect_timeout,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| StoreError::Timeout {
            operation: "connect",
            timeout: self.connect_timeout,
        })?
        .map_err(err)?;
        Ok(RedisStore {
            connection,
            prefix: self.prefix.into(),
            timeout: self.timeout,
            scripts: Arc::new(Scripts::new()),
        })
    }
}

/// Lowercase hex, the only spelling of ids and lookup keys in Redis.
fn hex_of(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

impl RedisStore {
    /// Starts building a store for `url` (`redis://[user:password@]host:port/db`,
    /// or `rediss://…` for TLS with the `redis-tls` feature).
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.into(),
            prefix: "ths:".to_owned(),
            username: None,
            password: None,
            timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            root_certificate: None,
        }
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

    /// A health check: one `PING` round trip.
    ///
    /// # Errors
    ///
    /// The server did not answer `PONG` in time.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let pong: String = self
            .run("ping", async {
                redis::cmd("PING").query_async(&mut connection).await
            })
            .await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(StoreError::backend(
                "ping",
                format!("unexpected reply {pong:?}"),
            ))
        }
    }

    async fn run<T>(
        &self,
        operation: &'static str,
        op: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, op).await {
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
        args: &[&str],
    ) -> Result<T, StoreError> {
        let mut invocation = script.arg(&*self.prefix);
        for arg in args {
            invocation.arg(*arg);
        }
        let mut connection = self.connection.clone();
        self.run(operation, invocation.invoke_async(&mut connection))
            .await
    }

    /// 1 applied, 0 not, -1 conflict.
    async fn conditional(
        &self,
        operation: &'static str,
        script: &Script,
        args: &[&str],
    ) -> Result<bool, StoreError> {
        match self.script::<i64>(operation, script, args).await? {
            1 => Ok(true),
            0 => Ok(false),
            -1 => Err(StoreError::Conflict),
            other => Err(StoreError::backend(
                operation,
                format!("unexpected reply {other}"),
            )),
        }
    }
}

fn micros(t: OffsetDateTime) -> String {
    to_micros(t).to_string()
}

/// Decodes `{id, field, value, …}` strictly: every field known, every value
/// in its one canonical spelling, and the hash's own `id` the id it is
/// stored under, so a damaged hash can never pass for another session.
fn decode_hash(reply: Vec<Vec<u8>>) -> Result<SessionRecord, StoreError> {
    let corrupt = |reason: String| StoreError::corrupt(None, reason);
    let mut reply = reply.into_iter();
    let stored_under = reply
        .next()
        .ok_or_else(|| corrupt("an empty record reply".into()))?;
    let fields: Vec<Vec<u8>> = reply.collect();
    if !fields.len().is_multiple_of(2) {
        return Err(corrupt("a hash reply has an odd length".into()));
    }
    let mut raw = RawRecord::default();
    let (mut id, mut version, mut key) = (false, false, false);
    let mut pairs = fields.into_iter();
    while let (Some(name), Some(value)) = (pairs.next(), pairs.next()) {
        let name =
            String::from_utf8(name).map_err(|_| corrupt("a field name is not UTF-8".into()))?;
        let text = String::from_utf8(value)
            .map_err(|_| corrupt(format!("field `{name}` is not UTF-8")))?;
        let hex = |len: usize| -> Result<Vec<u8>, StoreError> {
            let canonical = text.len() == len * 2
                && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
            canonical
                .then(|| hex::decode(&text).ok())
                .flatten()
                .ok_or_else(|| {
                    corrupt(format!(
                        "field `{name}` is not {len} bytes of lowercase hex"
                    ))
                })
        };
        let integer = || -> Result<i64, StoreError> {
            text.parse::<i64>()
                .ok()
                .filter(|n| n.to_string() == text)
                .ok_or_else(|| corrupt(format!("field `{name}` is not a canonical integer")))
        };
        let instant = || -> Result<Option<OffsetDateTime>, StoreError> {
            from_micros(integer()?)
                .map(Some)
                .ok_or_else(|| corrupt(format!("field `{name}` is out of range")))
        };
        match name.as_str() {
            "id" => (raw.id, id) = (hex(16)?, true),
            "subject" => raw.subject = text,
            "created_at" => raw.created_at = instant()?,
            "last_seen_at" => raw.last_seen_at = instant()?,
            "expires_at" => raw.expires_at = instant()?,
            "absolute_expires_at" => raw.absolute_expires_at = instant()?,
            "access_expires_at" => raw.access_expires_at = instant()?,
            "current_lookup_key" => (raw.current_lookup_key, key) = (hex(32)?, true),
            "current_key_version" => (raw.current_key_version, version) = (integer()?, true),
            "previous_lookup_key" => raw.previous_lookup_key = Some(hex(32)?),
            "previous_key_version" => raw.previous_key_version = Some(integer()?),
            "previous_valid_until" => raw.previous_valid_until = instant()?,
            "revoked_at" => raw.revoked_at = instant()?,
            "revoked_reason" => raw.revoked_reason = Some(text),
            "revoked_actor" => raw.revoked_actor = Some(text),
            "attributes" => raw.attributes = text,
            _ => return Err(corrupt(format!("unknown field `{name}`"))),
        }
    }
    if !(id && key && version) {
        return Err(corrupt(
            "the id, lookup key or key version is missing".into(),
        ));
    }
    let record = raw.decode()?;
    if hex_of(record.id.as_bytes()).as_bytes() != stored_under.as_slice() {
        return Err(StoreError::corrupt(
            Some(record.id),
            "the hash's id is not the id it is stored under",
        ));
    }
    Ok(record)
}

/// The hash's field/value pairs for a new record.
fn encode_fields(record: &SessionRecord) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("id", hex_of(record.id.as_bytes())),
        ("subject", record.subject.clone()),
        ("created_at", micros(record.created_at)),
        ("last_seen_at", micros(record.last_seen_at)),
        ("expires_at", micros(record.expires_at)),
        ("absolute_expires_at", micros(record.absolute_expires_at)),
        ("access_expires_at", micros(record.access_expires_at)),
        (
            "current_lookup_key",
            hex_of(record.current.lookup_key.as_bytes()),
        ),
        (
            "current_key_version",
            record.current.key_version.0.to_string(),
        ),
        ("attributes", attributes_json(&record.attributes)),
    ];
    if let Some(previous) = &record.previous {
        fields.extend([
            (
                "previous_lookup_key",
                hex_of(previous.credential.lookup_key.as_bytes()),
            ),
            (
                "previous_key_version",
                previous.credential.key_version.0.to_string(),
            ),
            ("previous_valid_until", micros(previous.valid_until)),
        ]);
    }
    if let Some(revoked) = &record.revoked {
        fields.push(("revoked_at", micros(revoked.at)));
        fields.push((
            "revoked_reason",
            revoked.revocation.reason.as_str().to_owned(),
        ));
        if let Some(actor) = &revoked.revocation.actor {
            fields.push(("revoked_actor", actor.clone()));
        }
    }
    fields
}

fn actor_args(revocation: &Revocation) -> (&'static str, &str) {
    match &revocation.actor {
        Some(actor) => ("1", actor.as_str()),
        None => ("0", ""),
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn find_active(
        &self,
        candidates: &[Candidate],
        now: OffsetDateTime,
    ) -> Result<Option<SessionMatch>, StoreError> {
        if candidates.is_empty() {
            return Ok(None);
        }
        let keys: Vec<String> = candidates
            .iter()
            .map(|c| hex_of(c.lookup_key.as_bytes()))
            .collect();
        let args: Vec<&str> = keys.iter().map(String::as_str).collect();
        let fields: Vec<Vec<u8>> = self
            .script("find_active", &self.scripts.find, &args)
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let record = decode_hash(fields)?;
        if !record.is_active(now) {
            return Ok(None);
        }
        Ok(
            match_candidate(&record, candidates).map(|(slot, key_version)| SessionMatch {
                record: Arc::new(record),
                slot,
                key_version,
            }),
        )
    }

    async fn insert(&self, record: &SessionRecord) -> Result<(), StoreError> {
        record.validate().map_err(StoreError::Invalid)?;
        // Keys expire with the session; a date before 1970 expires at once.
        let at = (to_micros(record.absolute_expires_at) / 1000)
            .max(1)
            .to_string();
        let id = hex_of(record.id.as_bytes());
        let created = micros(record.created_at);
        let current = hex_of(record.current.lookup_key.as_bytes());
        let previous = record
            .previous
            .map(|p| hex_of(p.credential.lookup_key.as_bytes()))
            .unwrap_or_default();
        let fields = encode_fields(record);
        let mut args: Vec<&str> = vec![&id, &at, &record.subject, &created, &current, &previous];
        for (name, value) in &fields {
            args.push(name);
            args.push(value);
        }
        match self
            .conditional("insert", &self.scripts.insert, &args)
            .await?
        {
            true => Ok(()),
            false => Err(StoreError::Conflict),
        }
    }

    async fn rotate(
        &self,
        id: &SessionId,
        expected_current: &LookupKey,
        new_current: &Credential,
        previous_valid_until: OffsetDateTime,
        timestamps: &RotationTimestamps,
    ) -> Result<bool, StoreError> {
        let args = [
            hex_of(id.as_bytes()),
            hex_of(expected_current.as_bytes()),
            hex_of(new_current.lookup_key.as_bytes()),
            new_current.key_version.0.to_string(),
            micros(previous_valid_until),
            micros(timestamps.last_seen_at),
            micros(timestamps.expires_at),
            micros(timestamps.access_expires_at),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.conditional("rotate", &self.scripts.rotate, &args)
            .await
    }

    async fn touch(
        &self,
        id: &SessionId,
        last_seen_at: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let args = [
            hex_of(id.as_bytes()),
            micros(last_seen_at),
            micros(expires_at),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.conditional("touch", &self.scripts.touch, &args).await
    }

    async fn rekey(
        &self,
        id: &SessionId,
        slot: Slot,
        expected: &LookupKey,
        new: &LookupKey,
        new_version: KeyVersion,
    ) -> Result<bool, StoreError> {
        let slot = match slot {
            Slot::Current => "current",
            Slot::Previous => "previous",
        };
        let args = [
            hex_of(id.as_bytes()),
            slot.to_owned(),
            hex_of(expected.as_bytes()),
            hex_of(new.as_bytes()),
            new_version.0.to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.conditional("rekey", &self.scripts.rekey, &args).await
    }

    async fn update_attributes(
        &self,
        id: &SessionId,
        attributes: &Attributes,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        validate_attributes(attributes).map_err(StoreError::Invalid)?;
        let args = [
            hex_of(id.as_bytes()),
            attributes_json(attributes),
            micros(now),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.conditional("update_attributes", &self.scripts.update_attributes, &args)
            .await
    }

    async fn revoke(
        &self,
        id: &SessionId,
        now: OffsetDateTime,
        revocation: &Revocation,
    ) -> Result<RevokeOutcome, StoreError> {
        let (has_actor, actor) = actor_args(revocation);
        let (id, now) = (hex_of(id.as_bytes()), micros(now));
        let args = [
            id.as_str(),
            &now,
            revocation.reason.as_str(),
            has_actor,
            actor,
        ];
        match self
            .script::<i64>("revoke", &self.scripts.revoke, &args)
            .await?
        {
            1 => Ok(RevokeOutcome::Revoked),
            2 => Ok(RevokeOutcome::AlreadyRevoked),
            0 => Ok(RevokeOutcome::NotFound),
            other => Err(StoreError::backend(
                "revoke",
                format!("unexpected reply {other}"),
            )),
        }
    }

    async fn revoke_all_for_subject(
        &self,
        subject: &str,
        now: OffsetDateTime,
        revocation: &Revocation,
        except: Option<&SessionId>,
    ) -> Result<u64, StoreError> {
        let (has_actor, actor) = actor_args(revocation);
        let now = micros(now);
        let except = except.map(|id| hex_of(id.as_bytes())).unwrap_or_default();
        let args = [
            subject,
            &now,
            revocation.reason.as_str(),
            has_actor,
            actor,
            &except,
        ];
        self.script("revoke_all_for_subject", &self.scripts.revoke_all, &args)
            .await
    }

    async fn list_for_subject(
        &self,
        subject: &str,
        now: OffsetDateTime,
    ) -> Result<Vec<ActiveSessionRecord>, StoreError> {
        let hashes: Vec<Vec<Vec<u8>>> = self
            .script("list_for_subject", &self.scripts.list, &[subject])
            .await?;
        let mut list = Vec::with_capacity(hashes.len());
        for fields in hashes {
            let record = decode_hash(fields)?;
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
    ) -> Result<BTreeMap<KeyVersion, u64>, StoreError> {
        let flat: Vec<String> = self
            .script("count_by_key_version", &self.scripts.count, &[&micros(now)])
            .await?;
        flat.chunks(2)
            .map(|pair| match pair {
                [version, count] => match (version.parse::<u32>(), count.parse::<u64>()) {
                    (Ok(v), Ok(c)) => Ok((KeyVersion(v), c)),
                    _ => Err(StoreError::corrupt(
                        None,
                        "a key version index is malformed",
                    )),
                },
                _ => Err(StoreError::corrupt(
                    None,
                    "a key version index is malformed",
                )),
            })
            .collect()
    }

    async fn purge_expired(&self, now: OffsetDateTime) -> Result<u64, StoreError> {
        let now = micros(now);
        let batch = PURGE_BATCH.to_string();
        let mut total = 0;
        loop {
            // Batches keep each script short: Redis runs nothing else meanwhile.
            let n: u64 = self
                .script("purge_expired", &self.scripts.purge, &[&now, &batch])
                .await?;
            total += n;
            if n < PURGE_BATCH as u64 {
                return Ok(total);
            }
        }
    }
}
