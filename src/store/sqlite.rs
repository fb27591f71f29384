//! [`SqliteStore`]: sessions in an embedded SQLite database.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use time::OffsetDateTime;

use super::raw::{RawRecord, from_micros, to_micros};
use super::sql::{Dialect, Queries, raw_from_row, sql_store_impl, sqlx_error};
use crate::keys::Candidate;
use crate::record::{Revocation, RevokeOutcome, SessionId};
use crate::store::StoreError;

const TABLE: &str = "tower_hmac_sessions";
const MIGRATIONS: &str = "tower_hmac_session_migrations";

/// A [`SessionStore`](crate::SessionStore) in an embedded SQLite database
/// (feature `sqlite`): persistent, so sessions survive a restart, with no
/// server to run. For one app instance; use Postgres or Redis to share
/// sessions between several.
///
/// Timestamps are stored as integer microseconds since the Unix epoch; every
/// write is one conditional statement. The schema is created and migrated by
/// [`open`](Self::open) / [`connect`](Self::connect) (idempotent).
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
        )
        .await
    }

    /// Opens a database by URL (`sqlite://sessions.db?mode=rwc`,
    /// `sqlite::memory:`) and migrates it.
    ///
    /// # Errors
    ///
    /// A malformed URL, or the database cannot be opened or migrated.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options =
            SqliteConnectOptions::from_str(url).map_err(|e| StoreError::backend("connect", e))?;
        Self::with_options(options).await
    }

    async fn with_options(options: SqliteConnectOptions) -> Result<Self, StoreError> {
        let options = options
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
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
            pool,
            queries: Arc::new(Queries::new(Dialect::Sqlite, TABLE, MIGRATIONS)),
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
        let mut conn = self.pool.acquire().await.map_err(err)?;
        sqlx::raw_sql("BEGIN IMMEDIATE")
            .execute(&mut *conn)
            .await
            .map_err(err)?;
        let migrations = &self.queries.migrations_table;
        let applied = async {
            sqlx::raw_sql(&format!(
                "CREATE TABLE IF NOT EXISTS {migrations} \
                 (version INTEGER NOT NULL PRIMARY KEY, applied_at INTEGER NOT NULL) STRICT"
            ))
            .execute(&mut *conn)
            .await?;
            let done: Vec<i64> = sqlx::query_scalar(&format!("SELECT version FROM {migrations}"))
                .fetch_all(&mut *conn)
                .await?;
            for (version, sql) in &self.queries.migrations {
                if done.contains(version) {
                    continue;
                }
                sqlx::raw_sql(sql).execute(&mut *conn).await?;
                sqlx::query(&format!(
                    "INSERT INTO {migrations} (version, applied_at) VALUES (?1, ?2)"
                ))
                .bind(version)
                .bind(to_micros(OffsetDateTime::now_utc()))
                .execute(&mut *conn)
                .await?;
                tracing::info!(version, "session store schema migrated (sqlite)");
            }
            Ok::<_, sqlx::Error>(())
        }
        .await;
        let end = if applied.is_ok() {
            "COMMIT"
        } else {
            "ROLLBACK"
        };
        let ended = sqlx::raw_sql(end).execute(&mut *conn).await;
        applied.map_err(err)?;
        ended.map_err(err)?;
        Ok(())
    }

    async fn find_active_sql(
        &self,
        candidates: &[Candidate],
        now: OffsetDateTime,
    ) -> Result<Option<SqliteRow>, StoreError> {
        let sql = self.queries.find_active(candidates.len());
        let mut query = sqlx::query(&sql);
        for candidate in candidates {
            query = query.bind(&candidate.lookup_key.as_bytes()[..]);
        }
        query
            .bind(to_micros(now))
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| sqlx_error("find_active", e))
    }

    async fn revoke_sql(
        &self,
        id: &SessionId,
        now: OffsetDateTime,
        revocation: &Revocation,
    ) -> Result<RevokeOutcome, StoreError> {
        let done = sqlx::query(&self.queries.revoke)
            .bind(&id.as_bytes()[..])
            .bind(to_micros(now))
            .bind(revocation.reason.as_str())
            .bind(revocation.actor.as_deref())
            .execute(&self.pool)
            .await
            .map_err(|e| sqlx_error("revoke", e))?;
        if done.rows_affected() == 1 {
            return Ok(RevokeOutcome::Revoked);
        }
        // Not applied: the record was revoked before, or is not there.
        // Revocation is monotonic, so this follow-up read cannot race into
        // a wrong answer other than `NotFound` for a record purged meanwhile.
        let exists: bool = sqlx::query_scalar(&self.queries.exists)
            .bind(&id.as_bytes()[..])
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

fn raw_from_sqlite(row: &SqliteRow) -> Result<RawRecord, StoreError> {
    raw_from_row!(row, Option<i64>, from_micros)
}

sql_store_impl!(SqliteStore, ts = to_micros, row = raw_from_sqlite);
