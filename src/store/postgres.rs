//! [`PostgresStore`]: sessions in PostgreSQL, shared by many app instances.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use time::OffsetDateTime;

use super::raw::RawRecord;
use super::sql::{Dialect, Queries, raw_from_row, sql_store_impl, sqlx_error};
use crate::keys::Candidate;
use crate::record::{Revocation, RevokeOutcome, SessionId};
use crate::store::StoreError;

/// A [`SessionStore`](crate::SessionStore) in PostgreSQL (feature
/// `postgres`): every app instance on the same database sees every login
/// and revocation on its next request.
///
/// The table `tower_hmac_sessions` lives in a schema of your choice
/// (default `public`). [`connect`](Self::connect) creates and migrates it;
/// migrations take a transaction-scoped advisory lock, so instances starting
/// together migrate once. The read path is one statement; every write is one
/// conditional statement (the compare-and-swap is its `WHERE` clause, which
/// Postgres re-checks after taking the row lock).
///
/// ```no_run
/// use tower_hmac_session::{KeyRing, SessionConfig, SessionManager, store::PostgresStore};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = PostgresStore::connect("postgres://app@db.internal/app").await?;
/// let keys = KeyRing::from_env("SESSION_KEYS")?;
/// let sessions = SessionManager::new(store, keys, SessionConfig::default());
/// # let _ = sessions; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct PostgresStore {
    pool: PgPool,
    schema: String,
    queries: Arc<Queries>,
}

impl PostgresStore {
    /// Connects to `url` (a pool of up to 10 connections) and migrates the
    /// `public` schema.
    ///
    /// # Errors
    ///
    /// The server cannot be reached, or the migration failed.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(5))
            // A ping per acquire would double the round trips of the read path.
            .test_before_acquire(false)
            .connect(url)
            .await
            .map_err(|e| StoreError::backend("connect", e))?;
        let store = Self::new(pool);
        store.migrate().await?;
        Ok(store)
    }

    /// A store on an existing pool, in the `public` schema. Call
    /// [`migrate`](Self::migrate) once before use.
    pub fn new(pool: PgPool) -> Self {
        Self::in_schema(pool, "public").expect("`public` is a valid schema name")
    }

    /// A store on an existing pool, in `schema` (created by
    /// [`migrate`](Self::migrate) if missing).
    ///
    /// # Errors
    ///
    /// [`StoreError::Invalid`] unless `schema` is 1–63 characters of
    /// lowercase ASCII letters, digits and `_`, not starting with a digit.
    pub fn in_schema(pool: PgPool, schema: &str) -> Result<Self, StoreError> {
        let valid = !schema.is_empty()
            && schema.len() <= 63
            && !schema.starts_with(|c: char| c.is_ascii_digit())
            && schema
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err(StoreError::Invalid(
                "a schema name is 1-63 lowercase ASCII letters, digits and `_`",
            ));
        }
        let table = format!("\"{schema}\".tower_hmac_sessions");
        let migrations = format!("\"{schema}\".tower_hmac_session_migrations");
        Ok(Self {
            pool,
            schema: schema.to_owned(),
            queries: Arc::new(Queries::new(Dialect::Postgres, &table, &migrations)),
        })
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The schema the tables live in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Creates or upgrades the schema: each versioned migration runs once,
    /// in one transaction under an advisory lock. Idempotent, and safe to
    /// call from several instances at once.
    ///
    /// # Errors
    ///
    /// The database failed; nothing was applied then.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let err = |e| StoreError::backend("migrate", e);
        let mut tx = self.pool.begin().await.map_err(err)?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(format!("tower-hmac-session migrate {}", self.schema))
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        let migrations = &self.queries.migrations_table;
        sqlx::raw_sql(&format!(
            "CREATE SCHEMA IF NOT EXISTS \"{schema}\";\n\
             CREATE TABLE IF NOT EXISTS {migrations} \
             (version BIGINT NOT NULL PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
            schema = self.schema
        ))
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
            sqlx::raw_sql(sql).execute(&mut *tx).await.map_err(err)?;
            sqlx::query(&format!("INSERT INTO {migrations} (version) VALUES ($1)"))
                .bind(version)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
            tracing::info!(version, schema = %self.schema, "session store schema migrated (postgres)");
        }
        tx.commit().await.map_err(err)
    }

    async fn find_active_sql(
        &self,
        candidates: &[Candidate],
        now: OffsetDateTime,
    ) -> Result<Option<PgRow>, StoreError> {
        let keys: Vec<&[u8]> = candidates
            .iter()
            .map(|c| &c.lookup_key.as_bytes()[..])
            .collect();
        sqlx::query(&self.queries.find_active(candidates.len()))
            .bind(keys)
            .bind(now)
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
        // One statement: the update and, from the same snapshot, whether the
        // record exists at all.
        let (found, revoked): (bool, bool) = sqlx::query_as(&self.queries.revoke)
            .bind(&id.as_bytes()[..])
            .bind(now)
            .bind(revocation.reason.as_str())
            .bind(revocation.actor.as_deref())
            .fetch_one(&self.pool)
            .await
            .map_err(|e| sqlx_error("revoke", e))?;
        Ok(match (found, revoked) {
            (_, true) => RevokeOutcome::Revoked,
            (true, false) => RevokeOutcome::AlreadyRevoked,
            (false, false) => RevokeOutcome::NotFound,
        })
    }
}

fn raw_from_pg(row: &PgRow) -> Result<RawRecord, StoreError> {
    raw_from_row!(row, Option<OffsetDateTime>, Some)
}

/// Postgres binds timestamps as `TIMESTAMPTZ` directly.
fn timestamptz(t: OffsetDateTime) -> OffsetDateTime {
    t
}

sql_store_impl!(PostgresStore, ts = timestamptz, row = raw_from_pg);
