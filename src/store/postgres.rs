//! [`PostgresStore`]: sessions in PostgreSQL, shared by many app instances.

use std::sync::Arc;
use std::time::Duration;

use sqlx::Row as _;
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{
    PgArgumentBuffer, PgArguments, PgPool, PgPoolOptions, PgRow, PgTypeInfo, PgValueFormat,
    PgValueRef, Postgres,
};
use time::OffsetDateTime;

use super::kept::{Kept, leased};
use super::raw::{RawRecord, session_id, to_micros};
use super::sql::{
    Dialect, DialectRow, Queries, RECORD_COLUMN, Value, insert_values, mutable_values,
    raw_from_row, sql_store_impl, sqlx_error,
};
use crate::record::{Revocation, RevokeOutcome, SessionId, SessionRecord};
use crate::store::{StoreError, SubjectCap};

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

/// A [`SessionStore`](crate::SessionStore) in PostgreSQL (feature
/// `postgres`): every app instance on the same database sees every login
/// and revocation on its next request.
///
/// The table `tower_hmac_session_records` has three rows per record, a
/// row per credential slot keyed by that slot's lookup key (so a lookup is
/// one probe of the primary key, and no key can have two holders even
/// across slots and concurrent transactions). Each row that holds a key
/// holds the record in its `record` column (the encoding the Redis store
/// uses), and as columns only what the statements select, order, count or
/// revoke by; a write changes only those rows (a data write to a session
/// with one key, one row); the
/// `revoked_*` columns keep a revocation (no read returns a revoked
/// record). The table lives in a schema of your choice (default `public`). [`connect`](Self::connect)
/// creates and migrates it; migrations take a transaction-scoped advisory
/// lock, so instances starting together migrate once; a role without the
/// `CREATE` privilege can use a schema migrated before. The read path is one
/// statement, planned once per connection and reused; every write is one
/// conditional statement (the compare-and-swap is its `WHERE` clause, which
/// Postgres re-checks after taking the row lock), except a capped login: a
/// transaction holding an advisory lock on the subject, so concurrent logins
/// of one subject never exceed the cap.
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
    kept: Arc<Kept<Postgres>>,
}

impl PostgresStore {
    /// Connects to `url` (a pool of up to 10 connections, the store's own,
    /// all of which it may [keep](Self::keep_connections) for
    /// [`DEFAULT_HOLD`](Self::DEFAULT_HOLD)) and migrates the `public`
    /// schema.
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
        let store = Self::new(pool).keep_connections(10, Self::DEFAULT_HOLD);
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
        Ok(Self {
            kept: Kept::new(pool.clone(), 0, Self::DEFAULT_HOLD),
            pool,
            schema: schema.to_owned(),
            queries: Arc::new(Queries::new(Dialect::Postgres, Some(schema))),
        })
    }

    /// A hold for [`keep_connections`](Self::keep_connections), the one
    /// [`connect`](Self::connect) uses: 10 seconds.
    pub const DEFAULT_HOLD: Duration = Duration::from_secs(10);

    /// Keeps up to `max` of the pool's connections checked out between the
    /// store's statements, each for at most `hold` after the pool handed it
    /// out; `max` 0 (the default of [`new`](Self::new) and
    /// [`in_schema`](Self::in_schema)) keeps none.
    ///
    /// sqlx's pool tests every connection that goes back to it with a round
    /// trip to the server, and by default every one it hands out: a
    /// statement costs two or three round trips rather than one. A store
    /// that keeps its connections skips them: in the loopback benchmark
    /// (`BENCHMARKS.md`) reads went from 0.96× to 1.58× tower-sessions'
    /// throughput and writes from 0.87× to 1.42×. A connection is kept only
    /// when its statement finished with the connection in step; a
    /// cancelled statement's connection goes back to the pool, which tests
    /// it, and a kept connection that then fails on its socket (or with a
    /// connection or shutdown error) makes the store give back every
    /// connection it keeps. A task gives back the connections not used
    /// within their hold, so an idle store holds none after `hold`; the
    /// pool's lifetime and idle limits, its `test_before_acquire` and its
    /// `after_release` hook apply when they come back, not in between.
    ///
    /// `max` is at most the pool's `max_connections`, and bounds the
    /// store's connections, kept and in use: with `max` above 0 at most
    /// `max` of its statements run at once (the others wait, at most the
    /// pool's acquire timeout, then fail as the pool would). Kept
    /// connections are not available to others sharing the pool, and
    /// `PgPool::close` waits up to a hold for them, so give the store a
    /// pool of its own, or a `max` that leaves the rest of the pool
    /// enough. [`connect`](Self::connect) keeps all 10 of its own.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use tower_hmac_session::store::PostgresStore;
    /// use tower_hmac_session::store::sqlx::postgres::PgPoolOptions;
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = PgPoolOptions::new()
    ///     .max_connections(16)
    ///     .connect("postgres://app@db.internal/app")
    ///     .await?;
    /// let store = PostgresStore::new(pool).keep_connections(16, PostgresStore::DEFAULT_HOLD);
    /// store.migrate().await?;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn keep_connections(mut self, max: usize, hold: Duration) -> Self {
        self.kept = Kept::new(self.pool.clone(), max, hold);
        self
    }

    /// How many connections the store keeps checked out of the pool now
    /// (see [`keep_connections`](Self::keep_connections)).
    pub fn kept_connections(&self) -> usize {
        self.kept.len()
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
    /// Only what is missing is created (PostgreSQL checks the `CREATE`
    /// privilege even for `CREATE … IF NOT EXISTS`): on a database already
    /// migrated, the role needs no `CREATE` privilege, only `USAGE` on the
    /// schema and `SELECT`, `INSERT`, `UPDATE` and `DELETE` on its tables.
    /// Upgrading an older schema (version 1, 2 or 3) alters the table in
    /// place, so it needs the table's owner; from version 1 or 2 it also
    /// rewrites every record (version 3 moves it into one `record` column):
    /// run `VACUUM ANALYZE` on the table afterwards. (Version 4 only sets the
    /// table's fillfactor.)
    ///
    /// # Errors
    ///
    /// The database failed; nothing was applied then.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let err = |e| sqlx_error("migrate", e);
        // On a kept connection if there is one, so that it never waits for
        // one the store keeps.
        let mut lease = self.kept.lease().await.map_err(err)?;
        let mut tx = sqlx::Connection::begin(&mut *lease).await.map_err(err)?;
        let migrations = &self.queries.migrations_table;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(format!("tower-hmac-session migrate {}", self.schema))
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        // Then, in a statement of its own (so after the lock, seeing what a
        // concurrent migration committed), what exists: the schema and the
        // migrations table.
        let (schema_exists, table_exists): (bool, bool) =
            sqlx::query_as("SELECT to_regnamespace($1) IS NOT NULL, to_regclass($2) IS NOT NULL")
                .bind(format!("\"{}\"", self.schema))
                .bind(migrations)
                .fetch_one(&mut *tx)
                .await
                .map_err(err)?;
        if !schema_exists {
            // `Executor::execute` on the connection rather than
            // `raw_sql(…).execute(conn)`, whose future is not `Send` for a
            // `'static` spawn (nor then would `migrate`'s be).
            sqlx::Executor::execute(
                &mut *tx,
                sqlx::raw_sql(&format!(
                    "CREATE SCHEMA IF NOT EXISTS \"{schema}\"",
                    schema = self.schema
                )),
            )
            .await
            .map_err(err)?;
        }
        let done: Vec<i64> = if table_exists {
            sqlx::query_scalar(&format!("SELECT version FROM {migrations}"))
                .fetch_all(&mut *tx)
                .await
                .map_err(err)?
        } else {
            sqlx::Executor::execute(
                &mut *tx,
                sqlx::raw_sql(&format!(
                    "CREATE TABLE IF NOT EXISTS {migrations} \
                 (version BIGINT NOT NULL PRIMARY KEY, \
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
                )),
            )
            .await
            .map_err(err)?;
            Vec::new()
        };
        if self
            .queries
            .migrations
            .iter()
            .all(|(v, _)| done.contains(v))
        {
            // Up to date: nothing written, so nothing to commit.
            let done = tx.rollback().await;
            lease.done(&done);
            return done.map_err(err);
        }
        for (version, sql) in &self.queries.migrations {
            if done.contains(version) {
                continue;
            }
            sqlx::Executor::execute(&mut *tx, sqlx::raw_sql(sql))
                .await
                .map_err(err)?;
            if *version == RECORD_COLUMN {
                self.fill_records(&mut tx).await.map_err(err)?;
            }
            sqlx::query(&format!("INSERT INTO {migrations} (version) VALUES ($1)"))
                .bind(*version)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
            tracing::info!(version, schema = %self.schema, "session store schema migrated (postgres)");
        }
        let done = tx.commit().await;
        lease.done(&done);
        done.map_err(err)
    }

    /// Upgrading to schema version 3: sets each record's new `record` column
    /// from its other columns, in batches in the migration's transaction,
    /// then drops the columns `record` replaces. A record whose columns do
    /// not decode gets an empty `record`, which reads as corruption, as the
    /// record did before: nothing is lost and nothing revived.
    async fn fill_records(&self, tx: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
        const BATCH: i64 = 1000;
        let mut after: Vec<u8> = Vec::new();
        loop {
            let rows = sqlx::query(&self.queries.fill_select)
                .bind(&after)
                .bind(BATCH)
                .fetch_all(&mut *tx)
                .await?;
            let mut ids = Vec::with_capacity(rows.len());
            let mut records = Vec::with_capacity(rows.len());
            for row in &rows {
                let id: Vec<u8> = row.try_get(0)?;
                let record = match raw_from_row(row).and_then(RawRecord::decode) {
                    Ok(record) => super::value::encode(&record),
                    Err(error) => {
                        // The error names the record (an id is no
                        // credential), never a value of it.
                        tracing::warn!(%error, "a corrupt session record stays corrupt (schema upgrade)");
                        Vec::new()
                    }
                };
                ids.push(id);
                records.push(record);
            }
            sqlx::query(&self.queries.fill_update)
                .bind(&ids)
                .bind(&records)
                .execute(&mut *tx)
                .await?;
            match ids.pop() {
                Some(last) if rows.len() as i64 == BATCH => after = last,
                _ => break,
            }
        }
        // Rows no batch reached (an empty id, or no slot-0 row: damage).
        let rest = sqlx::Executor::execute(&mut *tx, sqlx::raw_sql(&self.queries.fill_rest))
            .await?
            .rows_affected();
        if rest > 0 {
            tracing::warn!(
                rows = rest,
                "rows of no readable record stay corrupt (schema upgrade)"
            );
        }
        sqlx::Executor::execute(&mut *tx, sqlx::raw_sql(&self.queries.fill_finish)).await?;
        Ok(())
    }

    /// The values of the columns beside `record`.
    fn raw(record: &SessionRecord) -> Result<RawRecord, StoreError> {
        RawRecord::encode_indexed(record)
    }

    /// The `record` column's value: the whole record, in the encoding
    /// Redis stores too ([`value`](super::value)).
    fn encode_record(record: &SessionRecord) -> Vec<u8> {
        super::value::encode(record)
    }

    /// The record a row's last column, `record`, holds. The decoding is
    /// strict and checks the record's invariants; the lookup then checks
    /// the record holds the key that found it, so a damaged row is
    /// corruption, never another session.
    fn record_from_row(row: &PgRow) -> Result<SessionRecord, StoreError> {
        let last = row.len().saturating_sub(1);
        let record: &[u8] = row
            .try_get(last)
            .map_err(|_| StoreError::corrupt(None, "`record` does not decode"))?;
        super::value::decode(record, None)
    }

    fn bind<'q>(query: PgQuery<'q>, value: Value<'q>) -> PgQuery<'q> {
        match value {
            Value::Bytes(bytes) => query.bind(bytes),
            Value::Int(int) => query.bind(int),
            Value::Time(micros) => query.bind(micros.map(Timestamp)),
            // JSON is bound as text and cast to `jsonb` in the statement.
            Value::Text(text) => query.bind(text),
            Value::Json(json) => query.bind(json),
            Value::Bool(flag) => query.bind(flag),
        }
    }

    /// The number a statement of [`Queries`] that counts records returns
    /// (`revoke_all`, `purge`): a record has a row per slot, so the rows a
    /// statement changed are not the records.
    async fn changes<'q>(&self, query: impl Fn() -> PgQuery<'q>) -> Result<u64, sqlx::Error> {
        let count: i64 = retrying(|_| async {
            leased!(self.kept, |conn| query().fetch_one(conn).await)?.try_get(0)
        })
        .await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn replace_sql(
        &self,
        current: &SessionRecord,
        expected: i64,
        next: &RawRecord,
        record: &[u8],
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        // The rows besides slot 0's that hold a key, in the stored record
        // (whose header the compare-and-swap requires to be `current`'s) or
        // in the replacement: those must be written. The others hold no key and no
        // record, and stay as they are.
        let slot = |n: i32, held: bool| held.then_some(n);
        let others = [
            slot(
                1,
                current.previous.is_some() || next.previous_lookup_key.is_some(),
            ),
            slot(
                2,
                current.superseded.is_some() || next.superseded_lookup_key.is_some(),
            ),
        ];
        let rows = others != [None, None];
        let sql = if rows {
            self.queries.replace_rows.as_str()
        } else {
            self.queries.replace.as_str()
        };
        // The header line of the record the caller read, which the stored
        // one must be: it names every key, so `others` are the rows that
        // hold one, whatever the caller claims.
        let header = super::value::header(current);
        // A retry checks the record is still active at its own time, not
        // the first attempt's: a write never applies to a session that
        // ended while it waited.
        let query = |waited: Duration| {
            let mut query = sqlx::query(sql)
                .bind(&current.id.as_bytes()[..])
                .bind(expected)
                .bind(timestamp(now + waited));
            for value in mutable_values(Dialect::Postgres, next, record) {
                query = Self::bind(query, value);
            }
            query.bind(&header[..])
        };
        // A new lookup key another record holds is a unique violation of
        // the primary key (checked at the end of the statement): `Conflict`,
        // and nothing applied.
        let (head, rest) = if !rows {
            let done = retrying(|waited| async move {
                leased!(self.kept, |conn| query(waited).execute(conn).await)
            })
            .await
            .map_err(|e| sqlx_error("replace", e))?;
            (done.rows_affected(), 0)
        } else {
            let counts: (i64, i64) = retrying(|waited| async move {
                let row = leased!(self.kept, |conn| {
                    query(waited)
                        .bind(others[0])
                        .bind(others[1])
                        .fetch_one(conn)
                        .await
                })?;
                Ok((row.try_get(0)?, row.try_get(1)?))
            })
            .await
            .map_err(|e| sqlx_error("replace", e))?;
            (
                u64::try_from(counts.0).unwrap_or(u64::MAX),
                u64::try_from(counts.1).unwrap_or(u64::MAX),
            )
        };
        let wanted = others.iter().flatten().count() as u64;
        match (head, rest) {
            (0, _) => Ok(false),
            (1, n) if n == wanted => Ok(true),
            (_, n) => Err(StoreError::corrupt(
                Some(current.id),
                format!("the record has {n} of its {wanted} rows with a key besides slot 0's"),
            )),
        }
    }

    async fn insert_capped_sql(
        &self,
        subject: &str,
        raw: &RawRecord,
        record: &[u8],
        now: OffsetDateTime,
        cap: &SubjectCap,
        keep: i64,
    ) -> Result<Vec<SessionId>, StoreError> {
        let err = |e| sqlx_error("insert_capped", e);
        // Three round trips. The first begins a read-committed transaction
        // and takes the subject's advisory lock, so its logins run one at a
        // time; the second, a statement whose snapshot is taken after the
        // lock (and so sees every login committed before), revokes the
        // least recently used and inserts; the third commits. A single
        // statement cannot do it: its snapshot would predate the lock. On a
        // conflict the statement fails and the transaction rolls back, with
        // nothing revoked; a dropped future rolls back too.
        let begin = format!(
            "BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_xact_lock({})",
            self.subject_lock(subject)
        );
        let rows = retrying(|_| async {
            // The transaction on a kept connection too, so that it never
            // waits for one the store keeps. Dropped before it commits (by a
            // `?` below too, deliberately), the lease hands the connection
            // back to the pool, whose test sends the rollback at once: kept,
            // it would hold the subject's lock until its next statement.
            let mut lease = self.kept.lease().await?;
            let mut tx = sqlx::Connection::begin_with(&mut *lease, begin.clone()).await?;
            let mut query = sqlx::query(&self.queries.insert_capped);
            for value in insert_values(Dialect::Postgres, raw, record) {
                query = Self::bind(query, value);
            }
            let rows = query
                .bind(timestamp(now))
                .bind(cap.revocation.reason.as_str())
                .bind(cap.revocation.actor.as_deref())
                .bind(cap.except.as_ref().map(|id| &id.as_bytes()[..]))
                .bind(keep)
                .fetch_all(&mut *tx)
                .await?;
            let committed = tx.commit().await;
            lease.done(&committed);
            committed.map(|()| rows)
        })
        .await
        .map_err(err)?;
        rows.iter()
            .map(|row| {
                let id: Vec<u8> = row
                    .try_get(0)
                    .map_err(|_| StoreError::corrupt(None, "`id` does not decode"))?;
                session_id(&id)
            })
            .collect()
    }

    /// The advisory lock key of `subject`'s logins in this schema: 64 bits
    /// of SHA-256, the same in every instance. A collision only makes two
    /// subjects' logins wait for each other.
    fn subject_lock(&self, subject: &str) -> i64 {
        use sha2::Digest as _;
        let digest = sha2::Sha256::new()
            .chain_update(b"ths/v1/subject-cap\0")
            .chain_update(self.schema.as_bytes())
            .chain_update(b"\0")
            .chain_update(subject.as_bytes())
            .finalize();
        let mut bytes = [0; 8];
        bytes.copy_from_slice(&digest[..8]);
        i64::from_be_bytes(bytes)
    }

    async fn revoke_sql(
        &self,
        id: &SessionId,
        subject: Option<&str>,
        now: OffsetDateTime,
        revocation: &Revocation,
    ) -> Result<RevokeOutcome, StoreError> {
        // One statement: the update and, from the same snapshot, whether the
        // record exists at all (as the subject's, when one is given).
        let (found, revoked): (bool, bool) = retrying(|_| async {
            leased!(self.kept, |conn| {
                sqlx::query_as(&self.queries.revoke)
                    .bind(&id.as_bytes()[..])
                    .bind(timestamp(now))
                    .bind(revocation.reason.as_str())
                    .bind(revocation.actor.as_deref())
                    .bind(subject)
                    .fetch_one(conn)
                    .await
            })
        })
        .await
        .map_err(|e| sqlx_error("revoke", e))?;
        Ok(match (found, revoked) {
            (_, true) => RevokeOutcome::Revoked,
            (true, false) => RevokeOutcome::AlreadyRevoked,
            (false, false) => RevokeOutcome::NotFound,
        })
    }
}

/// Runs a statement again, at most twice more, when PostgreSQL chose it as
/// the victim of a deadlock (SQLSTATE `40P01`), which rolled it back whole,
/// so running it again is safe: its compare-and-swap is checked afresh.
/// A write locks slot 0's row, then the others it changes; a revocation
/// locks every row of the record, in the order it finds them, so the two can
/// lock rows in different orders. `run` is given how long ago the first attempt started
/// (zero for it), as PostgreSQL detects a deadlock only after a wait.
async fn retrying<T, F, Fut>(mut run: F) -> Result<T, sqlx::Error>
where
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let started = std::time::Instant::now();
    let mut retries = 0;
    loop {
        let waited = match retries {
            0 => Duration::ZERO,
            _ => started.elapsed(),
        };
        match run(waited).await {
            Err(sqlx::Error::Database(e))
                if e.code().as_deref() == Some("40P01") && retries < 2 =>
            {
                retries += 1;
                tracing::debug!(retries, "session store statement retried after a deadlock");
            }
            done => return done,
        }
    }
}

/// Microseconds from the Unix epoch to PostgreSQL's, 2000-01-01 UTC.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// A `TIMESTAMPTZ` as microseconds since the Unix epoch.
///
/// Decoded by hand: sqlx's `OffsetDateTime` decoding panics on a stored
/// value past the year 9999 (`infinity`, say), and a damaged row must be
/// reported as corruption, never crash the request.
#[derive(Clone, Copy, Debug)]
struct Timestamp(i64);

fn timestamp(t: OffsetDateTime) -> Timestamp {
    Timestamp(to_micros(t))
}

impl sqlx::Type<Postgres> for Timestamp {
    fn type_info() -> PgTypeInfo {
        <OffsetDateTime as sqlx::Type<Postgres>>::type_info()
    }
}

impl sqlx::Encode<'_, Postgres> for Timestamp {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        let micros = self
            .0
            .checked_sub(PG_EPOCH_MICROS)
            .ok_or("a timestamp is out of range")?;
        <i64 as sqlx::Encode<'_, Postgres>>::encode_by_ref(&micros, buf)
    }

    fn size_hint(&self) -> usize {
        std::mem::size_of::<i64>()
    }
}

impl<'r> sqlx::Decode<'r, Postgres> for Timestamp {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        if value.format() != PgValueFormat::Binary {
            return Err("a timestamp was not sent in binary".into());
        }
        let bytes: [u8; 8] = value
            .as_bytes()?
            .try_into()
            .map_err(|_| "a timestamp is not 8 bytes")?;
        i64::from_be_bytes(bytes)
            .checked_add(PG_EPOCH_MICROS)
            .map(Self)
            .ok_or_else(|| "a timestamp is out of range".into())
    }
}

impl DialectRow for PgRow {
    fn micros(&self, index: usize) -> Result<Option<i64>, sqlx::Error> {
        Ok(self.try_get::<Option<Timestamp>, _>(index)?.map(|t| t.0))
    }

    fn persistent(&self, index: usize) -> Result<i64, sqlx::Error> {
        Ok(i64::from(self.try_get::<bool, _>(index)?))
    }
}

sql_store_impl!(PostgresStore, ts = timestamp);
