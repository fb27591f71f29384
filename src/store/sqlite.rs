//! [`SqliteStore`]: sessions in an embedded SQLite database.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Row as _;
use sqlx::sqlite::{
    Sqlite, SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool,
    SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use time::OffsetDateTime;

use super::raw::session_id;
use super::raw::{RawRecord, to_micros};
use super::sql::{
    Dialect, DialectRow, Queries, Value, lookup_keys, mutable_values, sql_store_impl, sqlx_error,
};
use crate::record::{Revocation, RevokeOutcome, SessionId, SessionRecord};
use crate::store::{StoreError, SubjectCap};

type SqliteQuery<'q> = sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>>;

/// A [`SessionStore`](crate::SessionStore) in an embedded SQLite database
/// (feature `sqlite`): persistent, so sessions survive a restart, with no
/// server to run. For one app instance; use Postgres or Redis to share
/// sessions between several.
///
/// Sessions live in the table `tower_hmac_session_records`. Timestamps are
/// stored as integer microseconds since the Unix epoch; every write is one
/// conditional statement, except a capped login, which is one `BEGIN
/// IMMEDIATE` transaction. The schema is created and migrated by
/// [`open`](Self::open) / [`connect`](Self::connect) (idempotent).
///
/// Durability: the database runs in WAL mode with `synchronous = FULL`, so
/// every committed write, a logout or a revocation included, is on disk
/// before the call returns and survives a power failure or an OS crash (a
/// revoked session never comes back). That costs an fsync per write; with
/// your own pool ([`new`](Self::new)) the choice is yours, but `NORMAL`
/// can lose the last writes, revocations included, on power loss.
///
/// ```no_run
/// use tower_hmac_session::{KeyRing, SessionConfig, SessionManager, store::SqliteStore};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = SqliteStore::open("sessions.db").await?;
/// let keys = KeyRing::from_env("SESSION_KEYS")?;
/// let sessions = SessionManager::new(store, keys, SessionConfig::default());
/// # let _ = sessions; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    queries: Arc<Queries>,
    /// Keeps no connection: every statement takes one from the pool.
    kept: Arc<super::kept::Kept<sqlx::Sqlite>>,
}

impl SqliteStore {
    /// Opens (creating if missing) the database file at `path`, in WAL mode,
    /// and migrates it.
    ///
    /// # Errors
    ///
    /// The file cannot be opened or migrated.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::with_options(
            SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true),
            SqlitePoolOptions::new().max_connections(8),
        )
        .await
    }

    /// Opens a database by URL (`sqlite://sessions.db?mode=rwc`,
    /// `sqlite::memory:`) and migrates it.
    ///
    /// An in-memory database (`sqlite::memory:`, `mode=memory`) lives as
    /// long as a connection to it is open: the store's pool then holds
    /// exactly one connection, opened at once and never closed for idling or
    /// age, so its sessions last until the pool is closed or dropped (and
    /// requests take turns on it).
    ///
    /// # Errors
    ///
    /// A malformed URL, or the database cannot be opened or migrated.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options =
            SqliteConnectOptions::from_str(url).map_err(|e| StoreError::backend("connect", e))?;
        let mut pool = SqlitePoolOptions::new().max_connections(8);
        if is_in_memory(url) {
            // One connection, opened at once and never closed: every
            // in-memory spelling is then one database, for the pool's life.
            pool = pool
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        }
        Self::with_options(options, pool).await
    }

    async fn with_options(
        options: SqliteConnectOptions,
        pool: SqlitePoolOptions,
    ) -> Result<Self, StoreError> {
        let options = options
            .journal_mode(SqliteJournalMode::Wal)
            // A committed revocation must survive a power failure.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5));
        let pool = pool
            // A ping per acquire would double the round trips of the read path.
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(|e| StoreError::backend("connect", e))?;
        let store = Self::new(pool);
        store.migrate().await?;
        Ok(store)
    }

    /// A store on an existing pool. Call [`migrate`](Self::migrate) once
    /// before use.
    pub fn new(pool: SqlitePool) -> Self {
        Self {
            kept: super::kept::Kept::new(pool.clone(), 0, Duration::ZERO),
            pool,
            queries: Arc::new(Queries::new(Dialect::Sqlite, None)),
        }
    }

    /// The connection pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Creates or upgrades the schema: each versioned migration runs once,
    /// in one `BEGIN IMMEDIATE` transaction, so concurrent callers wait for
    /// each other. Idempotent.
    ///
    /// # Errors
    ///
    /// The database failed; nothing was applied then.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let err = |e| StoreError::backend("migrate", e);
        // A transaction object, not a raw `BEGIN`: dropped unfinished (a
        // cancelled future), it rolls back rather than leaving a pooled
        // connection holding the write lock.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(err)?;
        let migrations = &self.queries.migrations_table;
        // `query`, not `raw_sql(…).execute(conn)`, whose future is not
        // `Send` for a `'static` spawn (nor then would `migrate`'s be).
        // SQLite runs every statement of the text.
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {migrations} \
             (version INTEGER NOT NULL PRIMARY KEY, applied_at INTEGER NOT NULL) STRICT"
        ))
        .persistent(false)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        let done: Vec<i64> = sqlx::query_scalar(&format!("SELECT version FROM {migrations}"))
            .fetch_all(&mut *tx)
            .await
            .map_err(err)?;
        for (version, sql) in &self.queries.migrations {
            if done.contains(version) {
                continue;
            }
            sqlx::query(sql)
                .persistent(false)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
            sqlx::query(&format!(
                "INSERT INTO {migrations} (version, applied_at) VALUES (?1, ?2)"
            ))
            .bind(*version)
            .bind(to_micros(OffsetDateTime::now_utc()))
            .execute(&mut *tx)
            .await
            .map_err(err)?;
            tracing::info!(version, "session store schema migrated (sqlite)");
        }
        tx.commit().await.map_err(err)
    }

    /// Every column's value.
    fn raw(record: &SessionRecord) -> Result<RawRecord, StoreError> {
        RawRecord::encode(record)
    }

    /// SQLite keeps a record in its columns alone: no `record` column.
    fn encode_record(_: &SessionRecord) -> Vec<u8> {
        Vec::new()
    }

    fn record_from_row(row: &SqliteRow) -> Result<SessionRecord, StoreError> {
        super::sql::raw_from_row(row)?.decode()
    }

    fn bind<'q>(query: SqliteQuery<'q>, value: Value<'q>) -> SqliteQuery<'q> {
        match value {
            Value::Bytes(bytes) => query.bind(bytes),
            Value::Int(int) | Value::Time(int) => query.bind(int),
            Value::Text(text) => query.bind(text),
            Value::Json(json) => query.bind(json),
            Value::Bool(flag) => query.bind(i64::from(flag)),
        }
    }

    /// The rows a plain `UPDATE` or `DELETE` changed: SQLite holds a record
    /// in one row.
    async fn changes<'q>(
        &self,
        query: impl FnOnce() -> SqliteQuery<'q>,
    ) -> Result<u64, sqlx::Error> {
        Ok(query().execute(&self.pool).await?.rows_affected())
    }

    async fn replace_sql(
        &self,
        current: &SessionRecord,
        expected: i64,
        next: &RawRecord,
        _record: &[u8],
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        // Every key of `next`, not only those `current` lacks: `current` is
        // the caller's view, and the check must not trust it.
        let new_keys = lookup_keys(next);
        let mut query = sqlx::query(&self.queries.replace)
            .bind(&current.id.as_bytes()[..])
            .bind(expected)
            .bind(to_micros(now));
        for key in new_keys {
            query = query.bind(key);
        }
        for value in mutable_values(Dialect::Sqlite, next, &[]) {
            query = Self::bind(query, value);
        }
        let done = query
            .execute(&self.pool)
            .await
            .map_err(|e| sqlx_error("replace", e))?;
        if done.rows_affected() == 1 {
            return Ok(true);
        }
        // Not applied: tell a key another record holds (the statement
        // refused it) from a failed compare-and-swap, which takes
        // precedence. Writes are serialized and keys are random, so this
        // follow-up read can only be wrong about which of the two refusals
        // it was, never about whether the write applied.
        let mut clash = sqlx::query_scalar(&self.queries.clash)
            .bind(&current.id.as_bytes()[..])
            .bind(expected)
            .bind(to_micros(now));
        for key in new_keys {
            clash = clash.bind(key);
        }
        let clash: bool = clash
            .fetch_one(&self.pool)
            .await
            .map_err(|e| sqlx_error("replace", e))?;
        if clash {
            Err(StoreError::Conflict)
        } else {
            Ok(false)
        }
    }

    async fn insert_capped_sql(
        &self,
        subject: &str,
        raw: &RawRecord,
        _record: &[u8],
        now: OffsetDateTime,
        cap: &SubjectCap,
        keep: i64,
    ) -> Result<Vec<SessionId>, StoreError> {
        let err = |e| sqlx_error("insert_capped", e);
        // The write lock from the start, so no other login of the subject
        // counts between our count and our insert. Dropped unfinished, or
        // left on an error, the transaction rolls back: nothing revoked.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(err)?;
        let rows = sqlx::query(&self.queries.evict)
            .bind(subject)
            .bind(to_micros(now))
            .bind(cap.revocation.reason.as_str())
            .bind(cap.revocation.actor.as_deref())
            .bind(cap.except.as_ref().map(|id| &id.as_bytes()[..]))
            .bind(keep)
            .fetch_all(&mut *tx)
            .await
            .map_err(err)?;
        let mut evicted = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: Vec<u8> = row
                .try_get("id")
                .map_err(|_| StoreError::corrupt(None, "`id` does not decode"))?;
            let id = session_id(&id)?;
            let last_seen_at: i64 = row
                .try_get("last_seen_at")
                .map_err(|_| StoreError::corrupt(Some(id), "`last_seen_at` does not decode"))?;
            let created_at: i64 = row
                .try_get("created_at")
                .map_err(|_| StoreError::corrupt(Some(id), "`created_at` does not decode"))?;
            evicted.push((last_seen_at, created_at, id));
        }
        let mut query = sqlx::query(&self.queries.insert);
        for value in super::sql::insert_values(Dialect::Sqlite, raw, &[]) {
            query = Self::bind(query, value);
        }
        let done = query.execute(&mut *tx).await.map_err(err)?;
        if done.rows_affected() != 1 {
            // A lookup key of the record is already held.
            tx.rollback().await.map_err(err)?;
            return Err(StoreError::Conflict);
        }
        tx.commit().await.map_err(err)?;
        evicted.sort();
        Ok(evicted.into_iter().map(|(_, _, id)| id).collect())
    }

    async fn revoke_sql(
        &self,
        id: &SessionId,
        subject: Option<&str>,
        now: OffsetDateTime,
        revocation: &Revocation,
    ) -> Result<RevokeOutcome, StoreError> {
        let done = sqlx::query(&self.queries.revoke)
            .bind(&id.as_bytes()[..])
            .bind(to_micros(now))
            .bind(revocation.reason.as_str())
            .bind(revocation.actor.as_deref())
            .bind(subject)
            .execute(&self.pool)
            .await
            .map_err(|e| sqlx_error("revoke", e))?;
        if done.rows_affected() == 1 {
            return Ok(RevokeOutcome::Revoked);
        }
        // Not applied: the record was revoked before, is not the subject's,
        // or is not there. Revocation is monotonic and the subject never
        // changes, so this follow-up read cannot race into a wrong answer
        // other than `NotFound` for a record purged meanwhile.
        let exists: bool = sqlx::query_scalar(&self.queries.exists)
            .bind(&id.as_bytes()[..])
            .bind(subject)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| sqlx_error("revoke", e))?;
        Ok(if exists {
            RevokeOutcome::AlreadyRevoked
        } else {
            RevokeOutcome::NotFound
        })
    }
}

/// Whether a SQLite URL names an in-memory database (`sqlite::memory:`,
/// `sqlite://:memory:`, `mode=memory`).
fn is_in_memory(url: &str) -> bool {
    let rest = url.trim_start_matches("sqlite:").trim_start_matches("//");
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    path == ":memory:" || query.split('&').any(|pair| pair == "mode=memory")
}

impl DialectRow for SqliteRow {
    fn micros(&self, index: usize) -> Result<Option<i64>, sqlx::Error> {
        self.try_get(index)
    }

    fn persistent(&self, index: usize) -> Result<i64, sqlx::Error> {
        self.try_get(index)
    }
}

sql_store_impl!(SqliteStore, ts = to_micros);

#[cfg(test)]
mod tests {
    use super::*;

    /// SQLite's plan for `sql`, its parameters bound to null.
    async fn plan(store: &SqliteStore, sql: &str) -> String {
        let params = sql
            .split('?')
            .skip(1)
            .filter_map(|rest| {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse::<usize>().ok()
            })
            .max()
            .unwrap_or(0);
        let explain = format!("EXPLAIN QUERY PLAN {sql}");
        let mut query = sqlx::query(&explain);
        for _ in 0..params {
            query = query.bind(None::<i64>);
        }
        let rows = query.fetch_all(store.pool()).await.unwrap();
        rows.iter()
            .map(|row| row.get::<String, _>("detail"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[tokio::test]
    async fn lookups_and_uniqueness_checks_search_indexes() {
        let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
        let q = &store.queries;
        for (name, sql) in [
            ("find_active(1)", &*q.find_active(1)),
            ("find_active(8)", &*q.find_active(8)),
            ("get_active", &q.get_active),
            ("insert", &q.insert),
            ("replace", &q.replace),
            ("clash", &q.clash),
            ("revoke", &q.revoke),
            ("exists", &q.exists),
            ("revoke_all", &q.revoke_all),
            ("list", &q.list),
            ("evict", &q.evict),
            ("purge", &q.purge),
        ] {
            let plan = plan(&store, sql).await;
            assert!(
                !plan.contains("SCAN tower_hmac_session_records"),
                "{name} scans the table:\n{plan}"
            );
        }
        // The capped insert's ranking reads the subject's range of the
        // subject index; the purge, two ranges (expiry, then revocation).
        let evict = plan(&store, &q.evict).await;
        assert!(
            evict.contains("USING INDEX tower_hmac_session_records_subject (subject=?)"),
            "{evict}"
        );
        let purge = plan(&store, &q.purge).await;
        for index in ["expires_at (expires_at<?)", "revoked_at"] {
            assert!(
                purge.contains(&format!("INDEX tower_hmac_session_records_{index}")),
                "{purge}"
            );
        }
        let lookup = plan(&store, &q.find_active(2)).await;
        for column in ["current", "previous", "superseded"] {
            assert!(
                lookup.contains(&format!(
                    "USING INDEX tower_hmac_session_records_{column}_lookup_key"
                )),
                "the lookup does not search the {column} index:\n{lookup}"
            );
        }
    }
}
