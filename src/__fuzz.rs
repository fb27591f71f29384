//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`): not
//! public API, no stability promise, hidden from the docs.
//!
//! Each function is a thin wrapper over the crate's own code, so the fuzzer
//! exercises exactly what a request or a store read runs.
#![allow(missing_docs, missing_debug_implementations)]

use http::HeaderMap;

use crate::record::SessionRecord;
use crate::secret::SessionSecret;
use crate::store::StoreError;

/// The session cookie values the layer would look up for `headers`, in
/// order (at most [`MAX_COOKIE_VALUES`](crate::MAX_COOKIE_VALUES)).
pub fn find_secrets(headers: &HeaderMap, cookie_name: &str) -> Vec<SessionSecret> {
    let found = crate::layer::find_secrets(headers, cookie_name);
    found
        .iter()
        .map(|s| SessionSecret::from_bytes(*s.expose_bytes()))
        .collect()
}

/// A SQL row (SQLite or PostgreSQL) as the plain values the SQL stores read
/// from it, before validation: timestamps in microseconds since the Unix
/// epoch, `None` for SQL `NULL`.
#[derive(Default, Clone)]
pub struct SqlRow {
    pub id: Vec<u8>,
    pub generation: i64,
    pub subject: Option<String>,
    pub created_at: Option<i64>,
    pub authenticated_at: Option<i64>,
    pub last_seen_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub absolute_expires_at: Option<i64>,
    pub idle_timeout_secs: i64,
    pub persistent: i64,
    pub access_expires_at: Option<i64>,
    pub current_lookup_key: Vec<u8>,
    pub current_key_version: i64,
    pub previous_lookup_key: Option<Vec<u8>>,
    pub previous_key_version: Option<i64>,
    pub previous_rotated_at: Option<i64>,
    pub previous_valid_until: Option<i64>,
    pub superseded_lookup_key: Option<Vec<u8>>,
    pub superseded_key_version: Option<i64>,
    pub revoked_at: Option<i64>,
    pub revoked_reason: Option<String>,
    pub revoked_actor: Option<String>,
    pub user_agent: Option<String>,
    pub client_ip: Option<String>,
    pub data: String,
}

/// Decodes a row as the SQL stores do (`RawRecord::decode`).
pub fn sql_decode(row: SqlRow) -> Result<SessionRecord, StoreError> {
    use crate::store::raw::RawRecord;
    RawRecord {
        id: row.id,
        generation: row.generation,
        subject: row.subject,
        created_at: row.created_at,
        authenticated_at: row.authenticated_at,
        last_seen_at: row.last_seen_at,
        expires_at: row.expires_at,
        absolute_expires_at: row.absolute_expires_at,
        idle_timeout_secs: row.idle_timeout_secs,
        persistent: row.persistent,
        access_expires_at: row.access_expires_at,
        current_lookup_key: row.current_lookup_key,
        current_key_version: row.current_key_version,
        previous_lookup_key: row.previous_lookup_key,
        previous_key_version: row.previous_key_version,
        previous_rotated_at: row.previous_rotated_at,
        previous_valid_until: row.previous_valid_until,
        superseded_lookup_key: row.superseded_lookup_key,
        superseded_key_version: row.superseded_key_version,
        revoked_at: row.revoked_at,
        revoked_reason: row.revoked_reason,
        revoked_actor: row.revoked_actor,
        user_agent: row.user_agent,
        client_ip: row.client_ip,
        data: row.data,
    }
    .decode()
}

/// Encodes a record as the SQL stores write it (`RawRecord::encode`).
pub fn sql_encode(record: &SessionRecord) -> Result<SqlRow, StoreError> {
    let raw = crate::store::raw::RawRecord::encode(record)?;
    Ok(SqlRow {
        id: raw.id,
        generation: raw.generation,
        subject: raw.subject,
        created_at: raw.created_at,
        authenticated_at: raw.authenticated_at,
        last_seen_at: raw.last_seen_at,
        expires_at: raw.expires_at,
        absolute_expires_at: raw.absolute_expires_at,
        idle_timeout_secs: raw.idle_timeout_secs,
        persistent: raw.persistent,
        access_expires_at: raw.access_expires_at,
        current_lookup_key: raw.current_lookup_key,
        current_key_version: raw.current_key_version,
        previous_lookup_key: raw.previous_lookup_key,
        previous_key_version: raw.previous_key_version,
        previous_rotated_at: raw.previous_rotated_at,
        previous_valid_until: raw.previous_valid_until,
        superseded_lookup_key: raw.superseded_lookup_key,
        superseded_key_version: raw.superseded_key_version,
        revoked_at: raw.revoked_at,
        revoked_reason: raw.revoked_reason,
        revoked_actor: raw.revoked_actor,
        user_agent: raw.user_agent,
        client_ip: raw.client_ip,
        data: raw.data,
    })
}

/// Decodes a stored Redis value as `RedisStore` does.
#[cfg(feature = "redis")]
pub fn redis_decode(value: &[u8]) -> Result<SessionRecord, StoreError> {
    crate::store::value::decode(value, None)
}

/// Encodes a record as `RedisStore` stores it.
#[cfg(feature = "redis")]
pub fn redis_encode(record: &SessionRecord) -> Vec<u8> {
    crate::store::value::encode(record)
}
