//! [`RedisStore`]: sessions in Redis, shared by many app instances.
//!
//! # Layout
//!
//! Under a configurable prefix `P` (default `ths:`):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P k:<lookup key hex>` | string | the record, as one value, under each lookup key it holds (current, previous, superseded) |
//! | `P s:<id hex>` | string | the record's current lookup key (hex): revocation by id, lists and "log out everywhere" find the value through it |
//! | `P u:<subject>` | sorted set | the subject's ids, scored by idle expiry: lists, "log out everywhere" and the per-subject cap without a scan |
//!
//! A record therefore takes its value's size (a few hundred bytes) once per
//! lookup key, one to three times, and 64 bytes under its id. The value is a short header line (id,
//! generation, expiries, revocation, lookup keys, subject) that the write
//! scripts parse, followed by a state line and the data's JSON that only Rust
//! reads, strictly (see `value.rs`): anything
//! but what the store wrote is
//! [`StoreError::Corrupt`](crate::StoreError::Corrupt).
//!
//! # Reads cost what a `GET` costs
//!
//! [`find_active`](crate::SessionStore::find_active) is one `GET` of the
//! candidate's `k:` key (one cookie value, one key version: the usual
//! lookup), or one `MGET` of the candidates' keys, decoded and filtered in
//! Rust (active at `now`, key
//! version of the matched slot). No script runs on a lookup.
//! [`get_active`](crate::SessionStore::get_active) (a lookup by id, which
//! the manager makes only after a refused write) is one small read-only
//! script: the `GET` of the id's key and of the value it points to. A value
//! under a lookup key it does not hold, an id's key that does not point to
//! its record's current lookup key, or a value that is not the id's, is
//! corruption.
//!
//! # Per-subject index
//!
//! A subject's sorted set scores each session by its idle expiry (`expires_at`
//! in whole seconds, rounded up to a step of a sixteenth of the idle timeout,
//! 1 to 60 seconds), which the `replace` script moves when the sliding
//! expiry passes it: most writes leave the entry as it is. A revocation
//! removes the entry. Every script on a subject
//! (an insert, [`insert_capped`](crate::SessionStore::insert_capped), a list,
//! "log out everywhere") first drops at most 1,000 entries whose expiry has
//! passed (one `ZREMRANGEBYRANK`), then reads at most 200 of the others
//! (two `GET`s each), dropping those it finds gone, revoked or ended. So one call
//! does a bounded amount of work however long the subject's history, and dead
//! entries leave the index as they are met.
//!
//! A subject never has more live sessions than `max_sessions_per_subject` (10
//! by default). With a cap of at most 200, every list, "log out everywhere"
//! and cap sees all of them in one atomic call. Above it (or with no cap):
//! a list holds the 200 sessions expiring last and logs a warning; "log out
//! everywhere" revokes 200 per call, each atomic, calling again until none is
//! left; and a login's cap revokes among the 200 expiring first, counting the
//! entries it did not read as live sessions.
//!
//! An expired session is dropped from the index, not stamped revoked:
//! [`revoke_all_for_subject`](crate::SessionStore::revoke_all_for_subject)
//! revokes and counts the live sessions, as every store does.
//!
//! # Writes are small scripts
//!
//! Every write is a Lua script (sent as `EVALSHA`, loaded on `NOSCRIPT`),
//! atomic on the server and conditional: `replace` is a compare-and-swap on
//! the header line of the value under the caller's current lookup key (the
//! generation, expiries, revocation and keys) that also requires the record
//! to be unrevoked and unexpired at the `now` it is given, and rewrites the
//! value under every lookup key of the new record, deleting keys only the
//! old one held. The compare reads only the stored header (`GETRANGE`);
//! the value is read only when the headers differ, to tell why. A data
//! write (keys unchanged, index entry left as it is) is a smaller script:
//! one `GETRANGE` and a `SET … KEEPTTL` per lookup key that still exists;
//! when it finds the record changed, the full script follows and says why
//! (a lost race, a record gone, a damaged value), within the same timeout.
//! The id's key changes only with the current lookup key, and the index
//! entry only in steps. A revocation rewrites every copy, so no lookup key
//! resolves to a live session afterwards. Scripts read only the header (and,
//! to order a subject's sessions by use, the first two fields of the state
//! line), never walk a hash.
//!
//! # Expiry follows the application's clock
//!
//! Keys expire by themselves at the session's absolute expiry, but the
//! expiry is set as a *relative* time-to-live, `absolute_expires_at − now`
//! with `now` the application's clock (for a plain insert, the new record's
//! `last_seen_at`), never as an absolute `PEXPIREAT`: Redis's clock and the
//! application's may disagree (a test clock years away, a skewed host), and
//! an absolute expiry in Redis's past would delete a fresh session at once.
//! A data write keeps the time-to-live its keys have (the absolute expiry
//! never changes); the id's key lives an hour longer than the lookup keys.
//! A record that is already dead when written keeps its keys for
//! a few minutes; whether a record is active is always decided in Rust from
//! its timestamps, so keys that outlive their record change nothing.
//! [`purge_expired`](crate::SessionStore::purge_expired) deletes dead records
//! before their keys expire, in bounded batches.
//!
//! # Eviction
//!
//! Run the server with `maxmemory-policy noeviction`. Every key the store
//! writes has a time-to-live, so any other policy may evict them when memory
//! runs short, one key at a time. An evicted `s:` key leaves the record's
//! lookup keys resolving while revocation by id, lists, "log out
//! everywhere" and the per-subject cap no longer find it (the latter three
//! drop its index entry), until its next rotation writes the key and the
//! entry again. An evicted value under the current lookup key leaves the
//! copies under its other keys resolving, unfound by id, until its next
//! write, which ends it (a write that lost a race on it reports the
//! session ended). So the store reads the policy
//! when it connects and refuses any other
//! ([`allow_eviction`](RedisStoreBuilder::allow_eviction) connects anyway,
//! with a warning). When the policy cannot be read (`CONFIG` is an admin
//! command, often unavailable on managed Redis), it logs a warning
//! (`tracing`) and connects.
//!
//! A lookup stays one `GET` or `MGET` of lookup keys, so it cannot see that a
//! record's keys are partly gone. A write that finds the value under the
//! record's current lookup key gone, with the record no longer reachable
//! by its id, deletes the copies under the lookup keys it was read with,
//! and from then on they resolve to nothing.
//!
//! # Connections
//!
//! A few multiplexed connections (default
//! [`DEFAULT_CONNECTIONS`]); each reconnects by itself after a failure
//! (redis-rs's `ConnectionManager`). Commands fill one connection before the
//! next (up to 64 in flight), so concurrent commands share its system calls;
//! see [`RedisStoreBuilder::connections`]. Connections speak RESP3 (unless
//! the URL sets `protocol=`), so a connection the server closes (`CLIENT
//! KILL`, an idle timeout, a restart) is replaced in the background as soon
//! as it closes: the commands in flight on it fail, and one sent in the
//! instant before the replacement. A server down for longer than the
//! reconnection attempts (about a second) fails the first command on each
//! connection after it is back, which reconnects it.
//! Needs Redis 6.0 or later
//! (`SET … KEEPTTL`; tested with 7.0) and a single node: scripts derive key
//! names from the prefix, which Redis Cluster does not allow.

mod builder;
mod scripts;
mod store;

#[doc(inline)]
pub use builder::{DEFAULT_CONNECTIONS, RedisStoreBuilder};
#[doc(inline)]
pub use store::RedisStore;
