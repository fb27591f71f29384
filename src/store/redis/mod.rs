//! [`RedisStore`]: sessions in Redis, shared by many app instances.
//!
//! # Layout
//!
//! Under a configurable prefix `P` (default `ths:`):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P s:<id hex>` | string | the record, as one value |
//! | `P k:<lookup key hex>` | string | a copy of the same value, for each lookup key the record holds (current, previous, superseded) |
//! | `P u:<subject>` | sorted set | the subject's ids by `created_at`: lists and "log out everywhere" without a scan |
//!
//! A record therefore takes its value's size (a few hundred bytes) once per
//! key: two to four times. The value is a short header line (id,
//! generation, expiries, revocation, lookup keys, subject) that the write
//! scripts parse, followed by JSON that only Rust reads, strictly: anything
//! but what the store wrote is
//! [`StoreError::Corrupt`](crate::StoreError::Corrupt).
//!
//! # Reads cost what a `GET` costs
//!
//! [`find_active`](crate::SessionStore::find_active) is one `MGET` of the
//! candidates' `k:` keys, decoded and filtered in Rust (active at `now`, key
//! version of the matched slot); [`get_active`](crate::SessionStore::get_active)
//! is one `GET`. No script runs on a read. A value under a lookup key it does
//! not hold, or under an id that is not its own, is corruption.
//!
//! # Writes are small scripts
//!
//! Every write is one Lua script (sent as `EVALSHA`, loaded on `NOSCRIPT`),
//! atomic on the server and conditional: `replace` is a compare-and-swap on
//! the stored generation that also requires the record to be unrevoked and
//! unexpired at the `now` it is given, and rewrites the value under the id
//! and every lookup key of the new record, deleting keys only the old one
//! held. A revocation rewrites every copy, so no lookup key resolves to a
//! live session afterwards. Scripts read only the header, never walk a hash.
//!
//! # Expiry follows the application's clock
//!
//! Keys expire by themselves at the session's absolute expiry, but the
//! expiry is set as a *relative* time-to-live, `absolute_expires_at − now`
//! with `now` the application's clock (for an insert, the new record's
//! `last_seen_at`), never as an absolute `PEXPIREAT`: Redis's clock and the
//! application's may disagree (a test clock years away, a skewed host), and
//! an absolute expiry in Redis's past would delete a fresh session at once.
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
//! runs short, one key at a time: an evicted `s:` key leaves the record's
//! lookup keys resolving while revocation by id no longer finds it. The
//! store checks the policy when it connects and logs a warning
//! (`tracing`) if it is another one.
//!
//! # Connections
//!
//! A few multiplexed connections (default
//! [`DEFAULT_CONNECTIONS`]), taken in turn; each reconnects by itself after a
//! failure (redis-rs's `ConnectionManager`). Needs Redis 6.0 or later
//! (`SET … KEEPTTL`; tested with 7.0) and a single node: scripts derive key
//! names from the prefix, which Redis Cluster does not allow.

mod builder;
mod scripts;
mod store;
mod value;

#[doc(inline)]
pub use builder::{DEFAULT_CONNECTIONS, RedisStoreBuilder};
#[doc(inline)]
pub use store::RedisStore;
