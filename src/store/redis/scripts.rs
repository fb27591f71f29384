//! The Lua scripts behind every write, and behind the reads that go through
//! an id (`FETCH`): each is one atomic, conditional operation on the
//! server, and reads only the header line of the values it touches (see
//! [`value`](crate::store::value); the compare-and-swap of a write reads it
//! alone, with `GETRANGE`), and for the per-subject cap the first
//! two fields of the state line after it (`created_at`, `last_seen_at`). A lookup by lookup key
//! uses no script. Scripts on a subject's index read and drop a bounded
//! number of entries (see the [module docs](super#per-subject-index)).
//!
//! `ARGV[1]` is the key prefix, and the keys a script touches are derived
//! from it (but for [`TOUCH`], which is given their full names), so the
//! store needs a single Redis node (not Redis Cluster).

use redis::Script;

use super::store::{POINTER_MARGIN_MS, SUBJECT_DROP_LIMIT, SUBJECT_READ_LIMIT};

/// The key names, which every script starts with.
const KEYS: &str = r#"
local P = ARGV[1]
local function skey(id) return P .. 's:' .. id end
local function kkey(k) return P .. 'k:' .. k end
local function ukey(subject) return P .. 'u:' .. subject end
"#;

/// Helpers for reading stored headers and the subject index: every script
/// but [`REPLACE`]'s fast path, [`TOUCH`] and [`FETCH`] defines them before
/// its body.
const PRELUDE: &str = r#"
-- a < b for canonical decimal integers, exactly (Lua numbers are doubles,
-- which round microseconds past the year 2255).
local function lt(a, b)
  local an, bn = string.sub(a, 1, 1) == '-', string.sub(b, 1, 1) == '-'
  if an ~= bn then return an end
  if #a ~= #b then return (#a < #b) ~= an end
  if an then return a > b end
  return a < b
end
local function unhex(h)
  return (string.gsub(h, '%x%x', function(c) return string.char(tonumber(c, 16)) end))
end
-- One pattern over the header, capturing where the state line starts rather
-- than copying it: a script reads the header only.
local HEADER = '^ths3|(%x+)|(%d+)|(%-?%d+)|(%-?%d+)|([^|]*)|(%x+)|([^|]*)|([^|]*)|([^|\n]*)\n()'
local function tohex(s)
  return (string.gsub(s, '.', function(c) return string.format('%02x', string.byte(c)) end))
end
local function is_key(k) return #k == 64 and string.match(k, '^[0-9a-f]+$') ~= nil end
-- A stored value's header: nil for no value, false for one that does not
-- parse (the caller reports corruption).
local function parse(v)
  if not v then return nil end
  local id, gen, exp, abs, rev, cur, prev, sup, subject, body = string.match(v, HEADER)
  if not id or #cur ~= 64 then return false end
  local keys = {cur}
  for _, k in ipairs({prev, sup}) do
    if k ~= '-' then
      if not is_key(k) then return false end
      keys[#keys + 1] = k
    end
  end
  return {id = id, gen = gen, exp = exp, abs = abs, rev = rev, keys = keys,
    subject = subject, v = v, body = body, prev = prev, sup = sup}
end
local function active(r, now) return lt(now, r.exp) and lt(now, r.abs) end
-- The record of `id`: `s:<id>` holds its current lookup key, and the value
-- is under that key. nil when either key is gone; false when the pointer is
-- not a lookup key, or the value there does not parse or is not a record
-- whose current key it is (the caller reports corruption).
local function load(id)
  local p = redis.call('GET', skey(id))
  if not p then return nil end
  if not is_key(p) then return false end
  local r = parse(redis.call('GET', kkey(p)))
  if r and r.keys[1] ~= p then return false end
  return r
end
-- `last_seen_at` and `created_at` of a parsed value: the first two fields of
-- its state line, the line after the header. nil if it does not start so.
local function usage(r)
  local created, seen = string.match(r.v, '^(%-?%d+)|(%-?%d+)|', r.body)
  if not created then return nil end
  return seen, created
end
-- Drops at most DROP index entries whose score (the idle expiry in whole
-- seconds, rounded up) is at or before now: their sessions have ended.
local function drop_dead(u, nowsecs)
  local n = redis.call('ZCOUNT', u, '-inf', nowsecs)
  if n > 0 then redis.call('ZREMRANGEBYRANK', u, 0, math.min(n, DROP) - 1) end
end
-- The parsed records of at most READ index entries that may be live, those
-- expiring first, other than `except`: unrevoked and active at `now`.
-- Entries met that are gone, revoked or ended leave the index. `live.seen`
-- is how many entries were read.
-- Returns nil and an id when a value does not parse, is another record's, or
-- (with `hex` given) is not the subject's.
local function read_live(u, nowsecs, now, hex, except)
  local ids = redis.call('ZRANGEBYSCORE', u, '(' .. nowsecs, '+inf', 'LIMIT', 0, READ)
  local live = {seen = #ids}
  for _, id in ipairs(ids) do
    local r = load(id)
    if r == nil then redis.call('ZREM', u, id)
    elseif r == false or r.id ~= id or (hex and r.subject ~= hex) then return nil, id
    elseif r.rev ~= '-' then redis.call('ZREM', u, id)
    elseif id == except then
    elseif active(r, now) then live[#live + 1] = r
    else redis.call('ZREM', u, id) end
  end
  return live
end
-- Stamps a revocation on the value under every lookup key (the keys keep
-- their expiry) and drops the id from its subject's index.
local function revoke_one(r, revocation)
  local v = table.concat({'ths3', r.id, r.gen, r.exp, r.abs, revocation, r.keys[1], r.prev, r.sup,
    r.subject}, '|') .. '\n' .. string.sub(r.v, r.body)
  for _, k in ipairs(r.keys) do redis.call('SET', kkey(k), v, 'XX', 'KEEPTTL') end
  if r.subject ~= '-' then redis.call('ZREM', ukey(unhex(r.subject)), r.id) end
end
"#;

/// ARGV: P, id, ttl (ms), value, subject or '' (none), score (the
/// index's: see `index_score`), now (µs), now (whole
/// seconds, rounded down), sessions to keep besides the new one or '' (no
/// cap), except id or '', the revocation field, lookup keys… (the current
/// one first: `s:<id>` points to it).
/// `{'ok', evicted ids…}`, `{'conflict'}` (nothing changed), or
/// `{'corrupt', id}` (nothing revoked or inserted).
const INSERT: &str = r#"
local id, ttl, value, subject, score = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local now, nowsecs, keep, except, revocation = ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11]
local keys = {skey(id)}
for i = 12, #ARGV do keys[#keys + 1] = kkey(ARGV[i]) end
if redis.call('EXISTS', unpack(keys)) > 0 then return {'conflict'} end
local out = {'ok'}
if subject ~= '' then
  local u = ukey(subject)
  drop_dead(u, nowsecs)
  if keep ~= '' then
    local indexed = redis.call('ZCOUNT', u, '(' .. nowsecs, '+inf')
    local live, corrupt = read_live(u, nowsecs, now, tohex(subject), except)
    if corrupt then return {'corrupt', corrupt} end
    -- Index entries past what one call reads count as live sessions.
    local unread = math.max(0, indexed - live.seen)
    local excess = #live + unread - tonumber(keep)
    if excess > 0 then
      for _, r in ipairs(live) do
        local seen, created = usage(r)
        if not seen then return {'corrupt', r.id} end
        r.seen, r.created = seen, created
      end
      table.sort(live, function(a, b)
        if a.seen ~= b.seen then return lt(a.seen, b.seen) end
        if a.created ~= b.created then return lt(a.created, b.created) end
        return a.id < b.id
      end)
      for i = 1, math.min(excess, #live) do
        revoke_one(live[i], revocation)
        out[#out + 1] = live[i].id
      end
    end
  end
end
redis.call('SET', keys[1], ARGV[12], 'PX', ttl + MARGIN)
for i = 2, #keys do redis.call('SET', keys[i], value, 'PX', ttl) end
if subject ~= '' then
  local u = ukey(subject)
  redis.call('ZADD', u, score, id)
  if redis.call('PTTL', u) < tonumber(ttl) then redis.call('PEXPIRE', u, ttl) end
end
return out
"#;

/// ARGV: P, id, the header of the record the caller read (see
/// [`header`](crate::store::value::header)), ttl (ms), value, the index
/// score of the new record or '' (its entry's score is high enough already:
/// see `index_score`), the subject or '' (none), how many lookup keys the
/// new record holds (n), its n lookup keys (the current one first), then the
/// lookup keys of the record the caller read when they differ (none given
/// when they are the same). 1 applied, 0 not, -1 a new key is another
/// record's, -2 the stored value is corrupt.
///
/// The compare-and-swap is on the whole header line of the value under the
/// caller's current lookup key: it holds the id, the generation (every
/// write bumps it), the expiries, the revocation and the lookup keys. Only
/// the header is read (`GETRANGE`, its length), not the value. When the
/// stored header is byte for byte the one the caller read, the caller's own
/// checks of that record (active at the write's time, its keys) are the
/// store's, and the script only writes: `s:<id>` only when the current key
/// changes, and the index entry only when given a score. (A data write that
/// keeps the keys and the entry is [`TOUCH`], and this script only when
/// that does not apply.) Anything else takes the slow path, which parses
/// the stored header to tell a lost race (0) from corruption (-2).
///
/// With the record gone, the caller's lookup keys that still hold a copy of
/// it are deleted, so they stop resolving.
const REPLACE: &str = r#"
local id, expected, ttl, value, score, subject = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local n = tonumber(ARGV[8])
-- The caller's keys: after the new ones, or the new ones themselves.
local o = #ARGV > 8 + n and 9 + n or 9
local name = kkey(ARGV[o])
if redis.call('GETRANGE', name, '0', tostring(#expected - 1)) == expected then
  if o == 9 then
    for i = 9, 8 + n do redis.call('SET', kkey(ARGV[i]), value, 'PX', ttl) end
  else
    local old, new, fresh = {}, {}, {}
    for i = o, #ARGV do old[ARGV[i]] = true end
    for i = 9, 8 + n do
      new[ARGV[i]] = true
      if not old[ARGV[i]] then fresh[#fresh + 1] = kkey(ARGV[i]) end
    end
    if #fresh > 0 and redis.call('EXISTS', unpack(fresh)) > 0 then return -1 end
    for i = 9, 8 + n do redis.call('SET', kkey(ARGV[i]), value, 'PX', ttl) end
    local gone = {}
    for i = o, #ARGV do if not new[ARGV[i]] then gone[#gone + 1] = kkey(ARGV[i]) end end
    if #gone > 0 then redis.call('DEL', unpack(gone)) end
    if ARGV[9] ~= ARGV[o] then redis.call('SET', skey(id), ARGV[9], 'PX', ttl + MARGIN) end
  end
  -- The index follows the sliding expiry (and takes back an entry a clock
  -- ahead of this one dropped).
  if score ~= '' and subject ~= '' then
    local u = ukey(subject)
    if redis.call('ZADD', u, score, id) == 1 and redis.call('PTTL', u) < tonumber(ttl) then
      redis.call('PEXPIRE', u, ttl)
    end
  end
  return 1
end
"#;

/// A data write's [`REPLACE`], with only what it needs. ARGV: the full name
/// of the caller's current lookup key, the header of the record the caller
/// read (see [`header`](crate::store::value::header)), its length less one
/// (`GETRANGE`'s end, in decimal: Lua would format a number with `printf`),
/// the value, then the full names of the record's other lookup keys. 1
/// applied, 0 not (the caller then sends [`REPLACE`], which tells a lost race
/// from a record gone or damaged).
///
/// Only for a write that keeps the record's lookup keys and leaves its
/// index entry as it is (see `index_score`), so the keys keep their
/// time-to-live too: the absolute expiry, as set by the insert or the full
/// replace that last wrote them (`XX` for the other keys: a copy that is
/// gone is not written back without one). The current key exists, since its
/// `GETRANGE` just read it in the same script (a key that does not exist
/// reads as the empty string, never a header).
///
/// Two commands and no value read into Lua: Redis spends most of a write's
/// time on a script's fixed cost and on each `redis.call`, and Lua hashes
/// every string it is handed.
const TOUCH: &str = r#"
if redis.call('GETRANGE', ARGV[1], '0', ARGV[3]) == ARGV[2] then
  redis.call('SET', ARGV[1], ARGV[4], 'KEEPTTL')
  for i = 5, #ARGV do redis.call('SET', ARGV[i], ARGV[4], 'XX', 'KEEPTTL') end
  return 1
end
return 0
"#;

/// [`REPLACE`] when the headers differ: the [`PRELUDE`] is defined only on
/// this path, so the usual write does not pay for it.
const REPLACE_SLOW: &str = r#"
local r = parse(redis.call('GET', name))
if r == false then return -2 end
if r == nil or r.id ~= id then
  -- The caller's current key no longer holds the record: the record is
  -- gone, or only that key is (a later rotation dropped it).
  r = load(id)
  if r == nil then
    for i = o, #ARGV do
      local k = kkey(ARGV[i])
      local orphan = parse(redis.call('GET', k))
      if orphan and orphan.id == id then redis.call('DEL', k) end
    end
    redis.call('DEL', skey(id))
    return 0
  end
end
if r == false or r.id ~= id then return -2 end
return 0
"#;

/// ARGV: P, id, '1' to check the subject (else '0'), subject hex, the
/// revocation field. 1 revoked, 2 already revoked, 0 not found, -2 corrupt.
const REVOKE: &str = r#"
local id, check, subject, revocation = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local r = load(id)
if r == nil then return 0 end
if r == false or r.id ~= id then return -2 end
if check == '1' and r.subject ~= subject then return 0 end
if r.rev ~= '-' then return 2 end
revoke_one(r, revocation)
return 1
"#;

/// ARGV: P, subject, subject hex, the revocation field, except id or '',
/// now (µs), now (whole seconds, rounded down). `{count, more}` with `more`
/// '1' when the call read as many entries as one call may (call again), or
/// `{'corrupt', id}` (and nothing revoked).
const REVOKE_ALL: &str = r#"
local subject, hex, revocation, except, now, nowsecs = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local u = ukey(subject)
drop_dead(u, nowsecs)
-- Live sessions only: one that ended (its idle expiry inside the current
-- second survives `drop_dead`) is over already, and is not counted.
local live, corrupt = read_live(u, nowsecs, now, hex, except)
if corrupt then return {'corrupt', corrupt} end
for _, r in ipairs(live) do revoke_one(r, revocation) end
return {tostring(#live), live.seen == READ and '1' or '0'}
"#;

/// ARGV: P, subject, now (µs), now (whole seconds, rounded down). `more`
/// ('1' when the call read as many entries as one call may), then the
/// subject's records active at `now`, as flat `id, value` pairs (a value
/// that is not the subject's is returned as it is, and one that does not
/// parse as `-`, for the caller to report). Dead entries leave the index.
const LIST: &str = r#"
local u, now, nowsecs = ukey(ARGV[2]), ARGV[3], ARGV[4]
drop_dead(u, nowsecs)
local ids = redis.call('ZREVRANGEBYSCORE', u, '+inf', '(' .. nowsecs, 'LIMIT', 0, READ)
local out = {#ids == READ and '1' or '0'}
for _, id in ipairs(ids) do
  local r = load(id)
  if r == nil or (r and r.id == id and (r.rev ~= '-' or not active(r, now))) then
    redis.call('ZREM', u, id)
  else
    out[#out + 1] = id; out[#out + 1] = r and r.v or '-'
  end
end
return out
"#;

/// ARGV: P, now, ids… Deletes those revoked or expired at `now`, with
/// their lookup keys and index entries. `{count, corrupt ids…}`.
const PURGE: &str = r#"
local now = ARGV[2]
local out = {'0'}
local n = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local r = load(id)
  -- An id's key whose value is gone (evicted) points nowhere: drop it.
  if r == nil then redis.call('DEL', skey(id))
  elseif r == false or r.id ~= id then out[#out + 1] = id
  elseif r.rev ~= '-' or not lt(now, r.exp) or not lt(now, r.abs) then
    local keys = {skey(id)}
    for _, k in ipairs(r.keys) do keys[#keys + 1] = kkey(k) end
    redis.call('DEL', unpack(keys))
    if r.subject ~= '-' then redis.call('ZREM', ukey(unhex(r.subject)), id) end
    n = n + 1
  end
end
out[1] = tostring(n)
return out
"#;

/// ARGV: P, ids… For each id in order, what its key holds (its record's
/// current lookup key, or empty when it is gone) and the value under that
/// key (empty when gone, or when what the id's key holds is not 64
/// characters long). The caller checks both (see `fetched`): not here,
/// since a Lua pattern over them costs the server more than the two `GET`s
/// (measured: about 6 µs against 8). Reads only; defines none of the
/// [`PRELUDE`]'s helpers. (Empty, not nil: a RESP3 client would get a
/// boolean for `false`.)
const FETCH: &str = r#"
local out = {}
for i = 2, #ARGV do
  local p = redis.call('GET', skey(ARGV[i])) or ''
  local v = ''
  if #p == 64 then v = redis.call('GET', kkey(p)) or '' end
  out[#out + 1] = p
  out[#out + 1] = v
end
return out
"#;

/// The scripts, each with its SHA-1 computed once: sent as `EVALSHA`, and
/// loaded on `NOSCRIPT` (after a server restart or `SCRIPT FLUSH`).
pub(super) struct Scripts {
    pub(super) insert: Script,
    pub(super) replace: Script,
    pub(super) touch: Script,
    pub(super) revoke: Script,
    pub(super) revoke_all: Script,
    pub(super) list: Script,
    pub(super) purge: Script,
    pub(super) fetch: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        let limits = format!(
            "local READ, DROP, MARGIN = {SUBJECT_READ_LIMIT}, {SUBJECT_DROP_LIMIT}, {POINTER_MARGIN_MS}\n"
        );
        let script = |body: &str| Script::new(&format!("{limits}{KEYS}{PRELUDE}{body}"));
        Self {
            insert: script(INSERT),
            replace: Script::new(&format!("{limits}{KEYS}{REPLACE}{PRELUDE}{REPLACE_SLOW}")),
            touch: Script::new(TOUCH),
            revoke: script(REVOKE),
            revoke_all: script(REVOKE_ALL),
            list: script(LIST),
            purge: script(PURGE),
            fetch: Script::new(&format!("{KEYS}{FETCH}")),
        }
    }
}
