//! The Lua scripts behind every write: each is one atomic, conditional
//! operation on the server, and reads only the header line of the values
//! it touches (see [`value`](super::value)). Reads use no script.
//!
//! `ARGV[1]` is always the key prefix; the keys a script touches are derived
//! from it, so the store needs a single Redis node (not Redis Cluster).

use redis::Script;

/// Helpers every script starts with.
const PRELUDE: &str = r#"
local P = ARGV[1]
local function skey(id) return P .. 's:' .. id end
local function kkey(k) return P .. 'k:' .. k end
local function ukey(subject) return P .. 'u:' .. subject end
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
-- One pattern over the header, capturing where the JSON starts rather than
-- copying it: a script reads the header only.
local HEADER = '^ths2|(%x+)|(%d+)|(%-?%d+)|(%-?%d+)|([^|]*)|(%x+)|([^|]*)|([^|]*)|([^|\n]*)\n()'
local function is_key(k) return #k == 64 and string.match(k, '^%x+$') ~= nil end
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
-- Stamps a revocation on the value under the id and every lookup key (the
-- keys keep their expiry) and drops the id from its subject's index.
local function revoke_one(r, revocation)
  local v = table.concat({'ths2', r.id, r.gen, r.exp, r.abs, revocation, r.keys[1], r.prev, r.sup,
    r.subject}, '|') .. '\n' .. string.sub(r.v, r.body)
  redis.call('SET', skey(r.id), v, 'XX', 'KEEPTTL')
  for _, k in ipairs(r.keys) do redis.call('SET', kkey(k), v, 'XX', 'KEEPTTL') end
  if r.subject ~= '-' then redis.call('ZREM', ukey(unhex(r.subject)), r.id) end
end
"#;

/// ARGV: P, id, ttl (ms), value, subject or '' (none), score (created_at),
/// lookup keys… 1 inserted, 0 conflict.
const INSERT: &str = r#"
local id, ttl, value, subject, score = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local keys = {skey(id)}
for i = 7, #ARGV do keys[#keys + 1] = kkey(ARGV[i]) end
if redis.call('EXISTS', unpack(keys)) > 0 then return 0 end
for _, k in ipairs(keys) do redis.call('SET', k, value, 'PX', ttl) end
if subject ~= '' then
  local u = ukey(subject)
  redis.call('ZADD', u, score, id)
  if redis.call('PTTL', u) < tonumber(ttl) then redis.call('PEXPIRE', u, ttl) end
end
return 1
"#;

/// ARGV: P, id, expected generation, now, ttl (ms), value, the new record's
/// lookup keys… 1 applied, 0 not, -1 a new key is another record's, -2
/// the stored value is corrupt.
const REPLACE: &str = r#"
local id, expected, now, ttl, value = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local r = parse(redis.call('GET', skey(id)))
if r == nil then return 0 end
if r == false or r.id ~= id then return -2 end
if r.gen ~= expected or r.rev ~= '-' or not lt(now, r.exp) or not lt(now, r.abs) then return 0 end
local old, new, fresh = {}, {}, {}
for _, k in ipairs(r.keys) do old[k] = true end
for i = 7, #ARGV do
  new[ARGV[i]] = true
  if not old[ARGV[i]] then fresh[#fresh + 1] = kkey(ARGV[i]) end
end
if #fresh > 0 and redis.call('EXISTS', unpack(fresh)) > 0 then return -1 end
redis.call('SET', skey(id), value, 'PX', ttl)
for i = 7, #ARGV do redis.call('SET', kkey(ARGV[i]), value, 'PX', ttl) end
local gone = {}
for _, k in ipairs(r.keys) do if not new[k] then gone[#gone + 1] = kkey(k) end end
if #gone > 0 then redis.call('DEL', unpack(gone)) end
return 1
"#;

/// ARGV: P, id, '1' to check the subject (else '0'), subject hex, the
/// revocation field. 1 revoked, 2 already revoked, 0 not found, -2 corrupt.
const REVOKE: &str = r#"
local id, check, subject, revocation = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local r = parse(redis.call('GET', skey(id)))
if r == nil then return 0 end
if r == false or r.id ~= id then return -2 end
if check == '1' and r.subject ~= subject then return 0 end
if r.rev ~= '-' then return 2 end
revoke_one(r, revocation)
return 1
"#;

/// ARGV: P, subject, subject hex, the revocation field, except id or ''.
/// `{count}`, or `{'corrupt', id}` (and nothing revoked).
const REVOKE_ALL: &str = r#"
local subject, hex, revocation, except = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local u = ukey(subject)
local live = {}
for _, id in ipairs(redis.call('ZRANGE', u, 0, -1)) do
  local r = parse(redis.call('GET', skey(id)))
  if r == nil then redis.call('ZREM', u, id)
  elseif r == false or r.id ~= id or r.subject ~= hex then return {'corrupt', id}
  elseif r.rev ~= '-' then redis.call('ZREM', u, id)
  elseif id ~= except then live[#live + 1] = r end
end
for _, r in ipairs(live) do revoke_one(r, revocation) end
return {tostring(#live)}
"#;

/// ARGV: P, subject. The subject's unrevoked records, newest first, as flat
/// `id, value` pairs; ids whose record is gone or revoked leave the index.
const LIST: &str = r#"
local u = ukey(ARGV[2])
local out = {}
for _, id in ipairs(redis.call('ZREVRANGE', u, 0, -1)) do
  local v = redis.call('GET', skey(id))
  local r = parse(v)
  if r == nil or (r and r.id == id and r.rev ~= '-') then redis.call('ZREM', u, id)
  else out[#out + 1] = id; out[#out + 1] = v end
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
  local r = parse(redis.call('GET', skey(id)))
  if r == false or (r and r.id ~= id) then out[#out + 1] = id
  elseif r and (r.rev ~= '-' or not lt(now, r.exp) or not lt(now, r.abs)) then
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

/// The scripts, each with its SHA-1 computed once: sent as `EVALSHA`, and
/// loaded on `NOSCRIPT` (after a server restart or `SCRIPT FLUSH`).
pub(super) struct Scripts {
    pub(super) insert: Script,
    pub(super) replace: Script,
    pub(super) revoke: Script,
    pub(super) revoke_all: Script,
    pub(super) list: Script,
    pub(super) purge: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        let script = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
        Self {
            insert: script(INSERT),
            replace: script(REPLACE),
            revoke: script(REVOKE),
            revoke_all: script(REVOKE_ALL),
            list: script(LIST),
            purge: script(PURGE),
        }
    }
}
