//! The SQL shared by [`SqliteStore`](super::SqliteStore) and
//! [`PostgresStore`](super::PostgresStore): one text per operation, written
//! once with `$n` parameters and rendered for each dialect.
//!
//! Every write is a single conditional statement, so it is atomic on both
//! databases and a lost race changes nothing: `UPDATE … WHERE id = $1 AND
//! current_lookup_key = $2 AND revoked_at IS NULL …` is the compare-and-swap.

use crate::store::StoreError;

/// The SQL dialect to render.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    Sqlite,
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    Postgres,
}

/// The columns of a record, in the order every `SELECT` returns them.
const COLUMNS: [&str; 16] = [
    "id",
    "subject",
    "created_at",
    "last_seen_at",
    "expires_at",
    "absolute_expires_at",
    "access_expires_at",
    "current_lookup_key",
    "current_key_version",
    "previous_lookup_key",
    "previous_key_version",
    "previous_valid_until",
    "revoked_at",
    "revoked_reason",
    "revoked_actor",
    "attributes",
];

/// The rendered statements of one store.
#[derive(Debug)]
pub(crate) struct Queries {
    pub(crate) dialect: Dialect,
    pub(crate) migrations_table: String,
    /// `(version, statements)`, applied in order, each once.
    pub(crate) migrations: Vec<(i64, String)>,
    select: String,
    /// `$1` … `$16`: the columns in [`COLUMNS`] order.
    pub(crate) insert: String,
    /// `$1` id, `$2` expected, `$3` new key, `$4` new version,
    /// `$5` previous valid until, `$6` last seen, `$7` expires, `$8` access expires.
    pub(crate) rotate: String,
    /// `$1` id, `$2` last seen, `$3` expires.
    pub(crate) touch: String,
    /// `$1` id, `$2` expected, `$3` new key, `$4` new version.
    pub(crate) rekey_current: String,
    /// As `rekey_current`.
    pub(crate) rekey_previous: String,
    /// `$1` id, `$2` attributes JSON, `$3` now.
    pub(crate) update_attributes: String,
    /// `$1` id, `$2` now, `$3` reason, `$4` actor. Postgres: returns
    /// `(found, revoked)`; SQLite: a plain update, then `exists`.
    pub(crate) revoke: String,
    /// `$1` id.
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) exists: String,
    /// `$1` subject, `$2` now, `$3` reason, `$4` actor, `$5` except.
    pub(crate) revoke_all: String,
    /// `$1` subject, `$2` now.
    pub(crate) list: String,
    /// `$1` now: `(key_version, count)` rows.
    pub(crate) count: String,
    /// `$1` now.
    pub(crate) purge: String,
}

impl Queries {
    /// Renders every statement for `table` (already quoted and qualified as
    /// needed) and `migrations_table`.
    pub(crate) fn new(dialect: Dialect, table: &str, migrations_table: &str) -> Self {
        let (least, json, attributes) = match dialect {
            Dialect::Sqlite => ("MIN", "$2", "attributes"),
            Dialect::Postgres => ("LEAST", "$2::jsonb", "attributes::text AS attributes"),
        };
        let select_list = COLUMNS
            .map(|c| if c == "attributes" { attributes } else { c })
            .join(", ");
        let active = |now: &str| {
            format!("revoked_at IS NULL AND expires_at > {now} AND absolute_expires_at > {now}")
        };
        let params: Vec<String> = (1..=COLUMNS.len())
            .map(|i| match (dialect, i) {
                (Dialect::Postgres, 16) => "$16::jsonb".to_owned(),
                _ => format!("${i}"),
            })
            .collect();
        let revoke_set = "revoked_at = $2, revoked_reason = $3, revoked_actor = $4";
        let revoke_update =
            format!("UPDATE {table} SET {revoke_set} WHERE id = $1 AND revoked_at IS NULL");
        let render = |sql: String| match dialect {
            // SQLite numbers its parameters `?NNN`.
            Dialect::Sqlite => sql.replace('$', "?"),
            Dialect::Postgres => sql,
        };
        Self {
            dialect,
            migrations_table: migrations_table.to_owned(),
            migrations: migrations(dialect, table)
                .into_iter()
                .map(|(v, sql)| (v, render(sql)))
                .collect(),
            select: format!("SELECT {select_list} FROM {table}"),
            insert: render(format!(
                "INSERT INTO {table} ({columns}) SELECT {values} WHERE NOT EXISTS \
                 (SELECT 1 FROM {table} WHERE id = $1 \
                 OR current_lookup_key IN ($8, $10) OR previous_lookup_key IN ($8, $10))",
                columns = COLUMNS.join(", "),
                values = params.join(", "),
            )),
            rotate: render(format!(
                "UPDATE {table} SET previous_lookup_key = current_lookup_key, \
                 previous_key_version = current_key_version, previous_valid_until = $5, \
                 current_lookup_key = $3, current_key_version = $4, last_seen_at = $6, \
                 expires_at = {least}($7, absolute_expires_at), access_expires_at = $8 \
                 WHERE id = $1 AND current_lookup_key = $2 AND {}",
                active("$6")
            )),
            touch: render(format!(
                "UPDATE {table} SET last_seen_at = $2, expires_at = {least}($3, absolute_expires_at) \
                 WHERE id = $1 AND last_seen_at < $2 AND {}",
                active("$2")
            )),
            rekey_current: render(format!(
                "UPDATE {table} SET current_lookup_key = $3, current_key_version = $4 \
                 WHERE id = $1 AND current_lookup_key = $2 AND revoked_at IS NULL"
            )),
            rekey_previous: render(format!(
                "UPDATE {table} SET previous_lookup_key = $3, previous_key_version = $4 \
                 WHERE id = $1 AND previous_lookup_key = $2 AND revoked_at IS NULL"
            )),
            update_attributes: render(format!(
                "UPDATE {table} SET attributes = {json} WHERE id = $1 AND {}",
                active("$3")
            )),
            revoke: render(match dialect {
                Dialect::Sqlite => revoke_update,
                Dialect::Postgres => format!(
                    "WITH updated AS ({revoke_update} RETURNING 1) \
                     SELECT EXISTS (SELECT 1 FROM {table} WHERE id = $1), \
                     EXISTS (SELECT 1 FROM updated)"
                ),
            }),
            exists: render(format!(
                "SELECT EXISTS (SELECT 1 FROM {table} WHERE id = $1)"
            )),
            revoke_all: render(format!(
                "UPDATE {table} SET {revoke_set} WHERE subject = $1 AND revoked_at IS NULL \
                 AND ($5 IS NULL OR id <> $5)"
            )),
            list: render(format!(
                "SELECT {select_list} FROM {table} WHERE subject = $1 AND {} \
                 ORDER BY created_at DESC, id ASC",
                active("$2")
            )),
            count: render(format!(
                "SELECT key_version, COUNT(*) FROM (\
                 SELECT current_key_version AS key_version FROM {table} WHERE {active} \
                 UNION ALL \
                 SELECT previous_key_version FROM {table} WHERE {active} \
                 AND previous_valid_until > $1 AND previous_key_version <> current_key_version\
                 ) AS versions GROUP BY key_version ORDER BY key_version",
                active = active("$1")
            )),
            purge: render(format!(
                "DELETE FROM {table} WHERE expires_at <= $1 OR absolute_expires_at <= $1 \
                 OR revoked_at IS NOT NULL"
            )),
        }
    }

    /// The one-statement lookup for `n` candidates: `$1` is the candidate
    /// array on Postgres; on SQLite `?1` … `?n` are the candidates. The time
    /// follows them.
    pub(crate) fn find_active(&self, n: usize) -> String {
        let (keys, now) = match self.dialect {
            Dialect::Postgres => ("ANY($1)".to_owned(), "$2".to_owned()),
            Dialect::Sqlite => {
                let list: Vec<String> = (1..=n).map(|i| format!("?{i}")).collect();
                (format!("IN ({})", list.join(", ")), format!("?{}", n + 1))
            }
        };
        let keys = match self.dialect {
            Dialect::Postgres => format!("= {keys}"),
            Dialect::Sqlite => keys,
        };
        format!(
            "{} WHERE (current_lookup_key {keys} OR previous_lookup_key {keys}) \
             AND revoked_at IS NULL AND expires_at > {now} AND absolute_expires_at > {now} LIMIT 1",
            self.select
        )
    }
}

/// The versioned schema. Each entry is applied once, in order, inside the
/// migration transaction; `IF NOT EXISTS` keeps a half-applied history safe.
fn migrations(dialect: Dialect, table: &str) -> Vec<(i64, String)> {
    let (bytes, time, int, json, suffix) = match dialect {
        Dialect::Sqlite => (
            "BLOB",
            "INTEGER",
            "INTEGER",
            "TEXT",
            " STRICT, WITHOUT ROWID",
        ),
        Dialect::Postgres => ("BYTEA", "TIMESTAMPTZ", "BIGINT", "JSONB", ""),
    };
    // Index names are local to a schema (Postgres) or a database (SQLite).
    let index = |name: &str| format!("tower_hmac_sessions_{name}");
    vec![(
        1,
        format!(
            "CREATE TABLE IF NOT EXISTS {table} (\
             id {bytes} NOT NULL PRIMARY KEY, \
             subject TEXT NOT NULL, \
             created_at {time} NOT NULL, \
             last_seen_at {time} NOT NULL, \
             expires_at {time} NOT NULL, \
             absolute_expires_at {time} NOT NULL, \
             access_expires_at {time} NOT NULL, \
             current_lookup_key {bytes} NOT NULL, \
             current_key_version {int} NOT NULL, \
             previous_lookup_key {bytes}, \
             previous_key_version {int}, \
             previous_valid_until {time}, \
             revoked_at {time}, \
             revoked_reason TEXT, \
             revoked_actor TEXT, \
             attributes {json} NOT NULL\
             ){suffix};\n\
             CREATE UNIQUE INDEX IF NOT EXISTS {current} ON {table} (current_lookup_key);\n\
             CREATE UNIQUE INDEX IF NOT EXISTS {previous} ON {table} (previous_lookup_key);\n\
             CREATE INDEX IF NOT EXISTS {subject} ON {table} (subject, created_at DESC);\n\
             CREATE INDEX IF NOT EXISTS {expires} ON {table} (expires_at);\n\
             CREATE INDEX IF NOT EXISTS {revoked} ON {table} (revoked_at) WHERE revoked_at IS NOT NULL;",
            current = index("current_lookup_key"),
            previous = index("previous_lookup_key"),
            subject = index("subject"),
            expires = index("expires_at"),
            revoked = index("revoked_at"),
        ),
    )]
}

/// Maps a driver error: a unique violation is a [`StoreError::Conflict`], a
/// value that does not decode is corruption, anything else a backend error.
pub(crate) fn sqlx_error(operation: &'static str, error: sqlx::Error) -> StoreError {
    match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict,
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => StoreError::corrupt(
            None,
            format!("a stored value does not decode during `{operation}`: {error}"),
        ),
        _ => StoreError::backend(operation, error),
    }
}

/// Implements [`SessionStore`](crate::SessionStore) for a SQL store with
/// fields `pool` and `queries`. Every method but `find_active` and `revoke`
/// (which differ per dialect: inherent `find_active_sql` / `revoke_sql`) is
/// the same statement on both databases; `$ts` encodes a timestamp for the
/// driver and `$row` decodes a row into a [`RawRecord`](super::raw::RawRecord).
macro_rules! sql_store_impl {
    ($store:ty, ts = $ts:path, row = $row:path) => {
        #[async_trait::async_trait]
        impl $crate::store::SessionStore for $store {
            async fn find_active(
                &self,
                candidates: &[$crate::Candidate],
                now: time::OffsetDateTime,
            ) -> Result<Option<$crate::SessionMatch>, $crate::StoreError> {
                if candidates.is_empty() {
                    return Ok(None);
                }
                let Some(row) = self.find_active_sql(candidates, now).await? else {
                    return Ok(None);
                };
                let record = $row(&row)?.decode()?;
                Ok(
                    $crate::store::raw::match_candidate(&record, candidates).map(
                        |(slot, key_version)| $crate::SessionMatch {
                            record: std::sync::Arc::new(record),
                            slot,
                            key_version,
                        },
                    ),
                )
            }

            async fn insert(
                &self,
                record: &$crate::SessionRecord,
            ) -> Result<(), $crate::StoreError> {
                record.validate().map_err($crate::StoreError::Invalid)?;
                let previous = record.previous.as_ref();
                let revoked = record.revoked.as_ref();
                let done = sqlx::query(&self.queries.insert)
                    .bind(&record.id.as_bytes()[..])
                    .bind(&record.subject)
                    .bind($ts(record.created_at))
                    .bind($ts(record.last_seen_at))
                    .bind($ts(record.expires_at))
                    .bind($ts(record.absolute_expires_at))
                    .bind($ts(record.access_expires_at))
                    .bind(&record.current.lookup_key.as_bytes()[..])
                    .bind(i64::from(record.current.key_version.0))
                    .bind(previous.map(|p| &p.credential.lookup_key.as_bytes()[..]))
                    .bind(previous.map(|p| i64::from(p.credential.key_version.0)))
                    .bind(previous.map(|p| $ts(p.valid_until)))
                    .bind(revoked.map(|r| $ts(r.at)))
                    .bind(revoked.map(|r| r.revocation.reason.as_str()))
                    .bind(revoked.and_then(|r| r.revocation.actor.as_deref()))
                    .bind($crate::store::raw::attributes_json(&record.attributes))
                    .execute(&self.pool)
                    .await
                    .map_err(|e| $crate::store::sql::sqlx_error("insert", e))?;
                match done.rows_affected() {
                    1 => Ok(()),
                    _ => Err($crate::StoreError::Conflict),
                }
            }

            async fn rotate(
                &self,
                id: &$crate::SessionId,
                expected_current: &$crate::LookupKey,
                new_current: &$crate::Credential,
                previous_valid_until: time::OffsetDateTime,
                timestamps: &$crate::RotationTimestamps,
            ) -> Result<bool, $crate::StoreError> {
                let done = sqlx::query(&self.queries.rotate)
                    .bind(&id.as_bytes()[..])
                    .bind(&expected_current.as_bytes()[..])
                    .bind(&new_current.lookup_key.as_bytes()[..])
                    .bind(i64::from(new_current.key_version.0))
                    .bind($ts(previous_valid_until))
                    .bind($ts(timestamps.last_seen_at))
                    .bind($ts(timestamps.expires_at))
                    .bind($ts(timestamps.access_expires_at))
                    .execute(&self.pool)
                    .await
                    .map_err(|e| $crate::store::sql::sqlx_error("rotate", e))?;
                Ok(done.rows_affected() == 1)
            }

            async fn touch(
                &self,
                id: &$crate::SessionId,
                last_seen_at: time::OffsetDateTime,
                expires_at: time::OffsetDateTime,
            ) -> Result<bool, $crate::StoreError> {
                let done = sqlx::query(&self.queries.touch)
                    .bind(&id.as_bytes()[..])
                    .bind($ts(last_seen_at))
                    .bind($ts(expires_at))
                    .execute(&self.pool)
                    .await
                    .map_err(|e| $crate::store::sql::sqlx_error("touch", e))?;
                Ok(done.rows_affected() == 1)
            }

            async fn rekey(
                &self,
                id: &$crate::SessionId,
                slot: $crate::Slot,
                expected: &$crate::LookupKey,
                new: &$crate::LookupKey,
                new_version: $crate::KeyVersion,
            ) -> Result<bool, $crate::StoreError> {
                let sql = match slot {
                    $crate::Slot::Current => &self.queries.rekey_current,
                    $crate::Slot::Previous => &self.queries.rekey_previous,
                };
                let done = sqlx::query(sql)
                    .bind(&id.as_bytes()[..])
                    .bind(&expected.as_bytes()[..])
                    .bind(&new.as_bytes()[..])
                    .bind(i64::from(new_version.0))
                    .execute(&self.pool)
                    .await
                    .map_err(|e| $crate::store::sql::sqlx_error("rekey", e))?;
                Ok(done.rows_affected() == 1)
            }

            async fn update_attributes(
                &self,
                id: &$crate::SessionId,
                attributes: &$crate::Attributes,
                now: time::OffsetDateTime,
            ) -> Result<bool, $crate::StoreError> {
                $crate::record::validate_attributes(attributes)
                    .map_err($crate::StoreError::Invalid)?;
                let done = sqlx::query(&self.queries.update_attributes)
                    .bind(&id.as_bytes()[..])
                    .bind($crate::store::raw::attributes_json(attributes))
                    .bind($ts(now))
                    .execute(&self.pool)
                    .await
                    .map_err(|e| $crate::store::sql::sqlx_error("update_attributes", e))?;
                Ok(done.rows_affected() == 1)
            }

            async fn revoke(
                &self,
                id: &$crate::SessionId,
                now: time::OffsetDateTime,
                revocation: &$crate::Revocation,
            ) -> Result<$crate::RevokeOutcome, $crate::StoreError> {
                self.revoke_sql(id, now, revocation).await
            }

            async fn revoke_all_for_subject(
                &self,
                subject: &str,
                now: time::OffsetDateTime,
                revocation: &$crate::Revocation,
                except: Option<&$crate::SessionId>,
            ) -> Result<u64, $crate::StoreError> {
                let done = sqlx::query(&self.queries.revoke_all)
                    .bind(subject)
                    .bind($ts(now))
                    .bind(revocation.reason.as_str())
                    .bind(revocation.actor.as_deref())
                    .bind(except.map(|id| &id.as_bytes()[..]))
                    .execute(&self.pool)
                    .await
                    .map_err(|e| $crate::store::sql::sqlx_error("revoke_all_for_subject", e))?;
                Ok(done.rows_affected())
            }

            async fn list_for_subject(
                &self,
                subject: &str,
                now: time::OffsetDateTime,
            ) -> Result<Vec<$crate::ActiveSessionRecord>, $crate::StoreError> {
                let rows = sqlx::query(&self.queries.list)
                    .bind(subject)
                    .bind($ts(now))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(|e| $crate::store::sql::sqlx_error("list_for_subject", e))?;
                rows.iter()
                    .map(|row| {
                        let record = $row(row)?.decode()?;
                        Ok(record.to_active(record.current.key_version))
                    })
                    .collect()
            }

            async fn count_by_key_version(
                &self,
                now: time::OffsetDateTime,
            ) -> Result<std::collections::BTreeMap<$crate::KeyVersion, u64>, $crate::StoreError>
            {
                let rows: Vec<(i64, i64)> = sqlx::query_as(&self.queries.count)
                    .bind($ts(now))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(|e| $crate::store::sql::sqlx_error("count_by_key_version", e))?;
                rows.into_iter()
                    .map(|(version, count)| {
                        let version = u32::try_from(version).map_err(|_| {
                            $crate::StoreError::corrupt(None, "a key version is out of range")
                        })?;
                        Ok(($crate::KeyVersion(version), count.max(0) as u64))
                    })
                    .collect()
            }

            async fn purge_expired(
                &self,
                now: time::OffsetDateTime,
            ) -> Result<u64, $crate::StoreError> {
                let done = sqlx::query(&self.queries.purge)
                    .bind($ts(now))
                    .execute(&self.pool)
                    .await
                    .map_err(|e| $crate::store::sql::sqlx_error("purge_expired", e))?;
                Ok(done.rows_affected())
            }
        }
    };
}
pub(crate) use sql_store_impl;

/// Reads the [`RawRecord`](super::raw::RawRecord) columns of `row`, with
/// `$time` the driver type of a timestamp column and `$decode` turning it
/// into an `Option<OffsetDateTime>` (`None`: out of range, reported missing).
macro_rules! raw_from_row {
    ($row:expr, $time:ty, $decode:expr) => {{
        use sqlx::Row as _;
        let row = $row;
        let err = |e| $crate::store::sql::sqlx_error("decode", e);
        let at = |name: &str| -> Result<Option<time::OffsetDateTime>, $crate::StoreError> {
            Ok(row
                .try_get::<$time, _>(name)
                .map_err(err)?
                .and_then($decode))
        };
        Ok::<_, $crate::StoreError>($crate::store::raw::RawRecord {
            id: row.try_get("id").map_err(err)?,
            subject: row.try_get("subject").map_err(err)?,
            created_at: at("created_at")?,
            last_seen_at: at("last_seen_at")?,
            expires_at: at("expires_at")?,
            absolute_expires_at: at("absolute_expires_at")?,
            access_expires_at: at("access_expires_at")?,
            current_lookup_key: row.try_get("current_lookup_key").map_err(err)?,
            current_key_version: row.try_get("current_key_version").map_err(err)?,
            previous_lookup_key: row.try_get("previous_lookup_key").map_err(err)?,
            previous_key_version: row.try_get("previous_key_version").map_err(err)?,
            previous_valid_until: at("previous_valid_until")?,
            revoked_at: at("revoked_at")?,
            revoked_reason: row.try_get("revoked_reason").map_err(err)?,
            revoked_actor: row.try_get("revoked_actor").map_err(err)?,
            attributes: row.try_get("attributes").map_err(err)?,
        })
    }};
}
pub(crate) use raw_from_row;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_statements_use_numbered_parameters() {
        let q = Queries::new(Dialect::Sqlite, "t", "m");
        assert!(!q.rotate.contains('$'));
        assert!(q.rotate.contains("MIN(?7, absolute_expires_at)"));
        assert!(q.find_active(2).contains("IN (?1, ?2)"));
        assert!(q.find_active(2).contains("expires_at > ?3"));
    }

    #[test]
    fn postgres_statements_cast_json_and_use_arrays() {
        let q = Queries::new(Dialect::Postgres, "s.t", "s.m");
        assert!(q.insert.contains("$16::jsonb"));
        assert!(q.find_active(3).contains("= ANY($1)"));
        assert!(q.find_active(3).contains("attributes::text AS attributes"));
        assert!(q.revoke.starts_with("WITH updated AS"));
    }
}
