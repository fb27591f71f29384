//! `PostgresStore` against a real server: the conformance suite, two app
//! instances on one database, the rotation scenarios through a Router,
//! corrupt rows, a lost connection, and the query plans at 10^5 sessions.
//!
//! `TOWER_HMAC_SESSION_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`) names the server. Each test
//! works in a schema of its own, so tests run in parallel.
#![cfg(all(feature = "postgres", feature = "conformance"))]

mod common;

use std::str::FromStr;
use std::time::Duration;

use common::{Harness, TestResponse, ring, unique};
use http::StatusCode;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use tower::ServiceExt as _;
use tower_hmac_session::store::PostgresStore;
use tower_hmac_session::{
    Candidate, Credential, Data, KeyVersion, LookupKey, SessionConfig, SessionId, SessionRecord,
    SessionStore, StoreError,
};

const TABLE: &str = "tower_hmac_session_records";

fn url() -> String {
    std::env::var("TOWER_HMAC_SESSION_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A pool whose connections carry `application_name`, or `None` (a skip)
/// when the server is unreachable outside CI.
async fn pool(application_name: &str) -> Option<PgPool> {
    pool_of(application_name, 5).await
}

/// As [`pool`], with at most `max_connections`.
async fn pool_of(application_name: &str, max_connections: u32) -> Option<PgPool> {
    let options = PgConnectOptions::from_str(&url())
        .unwrap()
        .application_name(application_name);
    match PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .test_before_acquire(false)
        .connect_with(options)
        .await
    {
        Ok(pool) => Some(pool),
        Err(error) => {
            common::unreachable("PostgreSQL", &url(), &error);
            None
        }
    }
}

/// A migrated store in a fresh schema.
async fn store_in(pool: &PgPool, schema: &str) -> PostgresStore {
    let store = PostgresStore::in_schema(pool.clone(), schema).unwrap();
    store.migrate().await.unwrap();
    store
}

/// As [`store_in`], keeping 3 of the pool's 5 connections between
/// statements, as an app's store on a pool of its own does (`connect`): the
/// app-instance tests run so, and the test's own statements on the pool
/// still find a connection.
async fn store_kept(pool: &PgPool, schema: &str) -> PostgresStore {
    store_in(pool, schema)
        .await
        .keep_connections(3, PostgresStore::DEFAULT_HOLD)
}

/// The storage options of the session table in `schema` (`reloptions`).
async fn table_options(pool: &PgPool, schema: &str) -> Vec<String> {
    let options: Option<Vec<String>> = sqlx::query_scalar(
        "SELECT c.reloptions FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relname = $2",
    )
    .bind(schema)
    .bind(TABLE)
    .fetch_one(pool)
    .await
    .unwrap();
    options.unwrap_or_default()
}

async fn drop_schema(pool: &PgPool, schema: &str) {
    sqlx::raw_sql(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .execute(pool)
        .await
        .unwrap();
}

/// The conformance suite on stores in fresh schemas of `pool`, each keeping
/// up to `keep` connections.
async fn conformance(pool: PgPool, keep: usize) {
    let mut schemas = Vec::new();
    tower_hmac_session::conformance::run(|| {
        let schema = unique("ths_conformance");
        schemas.push(schema.clone());
        let pool = pool.clone();
        async move {
            store_in(&pool, &schema)
                .await
                .keep_connections(keep, PostgresStore::DEFAULT_HOLD)
        }
    })
    .await;
    for schema in schemas {
        drop_schema(&pool, &schema).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_passes_the_conformance_suite() {
    if let Some(pool) = pool("ths-conformance").await {
        conformance(pool, 0).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_keeping_its_connections_passes_the_conformance_suite() {
    // Room for every store the suite has open at once to keep its 4.
    if let Some(pool) = pool_of("ths-conformance-kept", 24).await {
        conformance(pool, 4).await;
    }
}

/// Polls `done` every 10 ms for up to 5 s: the server's and the pool's own
/// state, which no injected clock drives.
async fn eventually(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..500 {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done()
}

/// Locks the session table in `schema` (in a transaction of `admin`'s) so
/// that every statement on it waits.
async fn lock_table(admin: &PgPool, schema: &str) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut lock = admin.begin().await.unwrap();
    sqlx::raw_sql(&format!(
        "LOCK TABLE \"{schema}\".{TABLE} IN ACCESS EXCLUSIVE MODE"
    ))
    .execute(&mut *lock)
    .await
    .unwrap();
    lock
}

/// Whether `n` connections named `application_name` come to wait on a lock.
async fn waiting_on_lock(admin: &PgPool, application_name: &str, n: i64) -> bool {
    for _ in 0..500 {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name = $1 AND wait_event_type = 'Lock'",
        )
        .bind(application_name)
        .fetch_one(admin)
        .await
        .unwrap();
        if waiting >= n {
            return true;
        }
        // Polling the server's own state: there is no clock to inject here.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// A store in a fresh schema, on a pool of its own whose connections carry
/// the schema's name, keeping some of them; and a pool for the test's own
/// statements.
struct KeptStore {
    admin: PgPool,
    /// The schema, and the `application_name` of `pool`'s connections.
    name: String,
    pool: PgPool,
    store: PostgresStore,
}

/// A [`KeptStore`] on a pool of `size`, keeping up to `keep` connections for
/// `hold`; `None` (a skip) when the server is unreachable outside CI.
async fn kept_store(prefix: &str, size: u32, keep: usize, hold: Duration) -> Option<KeptStore> {
    let admin = pool("ths-admin").await?;
    let name = unique(prefix);
    let pool = pool_of(&name, size).await?;
    let store = store_in(&pool, &name).await.keep_connections(keep, hold);
    Some(KeptStore {
        admin,
        name,
        pool,
        store,
    })
}

/// `n` lookups of `id` at once, queued behind a lock on the table until
/// `waiting` of them wait on it (so that many run at once), then released.
async fn behind_a_lock(
    k: &KeptStore,
    n: usize,
    waiting: i64,
    id: SessionId,
    now: time::OffsetDateTime,
) -> Vec<Result<Option<std::sync::Arc<SessionRecord>>, StoreError>> {
    let lock = lock_table(&k.admin, &k.name).await;
    let release = async {
        assert!(waiting_on_lock(&k.admin, &k.name, waiting).await);
        lock.rollback().await.unwrap();
    };
    let (found, ()) = tokio::join!(concurrently(&k.store, n, id, now), release);
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_connections_stay_out_of_the_pool_until_their_hold_ends() {
    let Some(k) = kept_store("ths_kept", 3, 2, Duration::from_secs(3)).await else {
        return;
    };
    let (pool, store) = (&k.pool, &k.store);
    let id = SessionId::generate();
    let now = time::OffsetDateTime::now_utc();
    assert_eq!(store.kept_connections(), 0);
    assert!(store.get_active(&id, now).await.unwrap().is_none());
    assert_eq!(store.kept_connections(), 1);
    // (The migration's connection may still be on its way back.)
    assert!(
        eventually(|| pool.num_idle() == pool.size() as usize - 1).await,
        "kept, not idle"
    );
    // The next statements take the kept connection back: still one.
    for _ in 0..5 {
        assert!(store.get_active(&id, now).await.unwrap().is_none());
    }
    assert_eq!(store.kept_connections(), 1);
    // Two at once (both waiting on a lock, so neither can end before the
    // other starts) need two, and both are kept.
    let found = behind_a_lock(&k, 2, 2, id, now).await;
    assert!(found.into_iter().all(|f| f.unwrap().is_none()));
    assert_eq!(store.kept_connections(), 2);
    // Idle, the store gives them back within their hold.
    assert!(
        eventually(|| store.kept_connections() == 0 && pool.num_idle() == pool.size() as usize)
            .await,
        "kept {} idle {} of {}",
        store.kept_connections(),
        pool.num_idle(),
        pool.size()
    );
    drop_schema(&k.admin, &k.name).await;
}

/// `n` lookups of `id` at once, each in a task of its own.
async fn concurrently(
    store: &PostgresStore,
    n: usize,
    id: SessionId,
    now: time::OffsetDateTime,
) -> Vec<Result<Option<std::sync::Arc<SessionRecord>>, StoreError>> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.get_active(&id, now).await })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_keeping_all_of_a_pools_connections_serves_more_callers_than_connections() {
    // More than the pool holds: the store keeps at most the pool's 2.
    let Some(k) = kept_store("ths_kept_all", 2, 8, PostgresStore::DEFAULT_HOLD).await else {
        return;
    };
    let id = SessionId::generate();
    let now = time::OffsetDateTime::now_utc();
    // Sixteen callers on two connections, all queued behind a lock: two
    // statements wait on it, fourteen for a lease to end. Released, each
    // takes a connection another left, never waiting for the pool while
    // the store keeps one idle (which would end in the pool's 5 s acquire
    // timeout).
    for found in behind_a_lock(&k, 16, 2, id, now).await {
        assert!(found.unwrap().is_none());
    }
    assert_eq!(k.store.kept_connections(), 2);
    // The store gone, the pool has its connections back.
    let KeptStore {
        admin,
        name,
        pool,
        store,
    } = k;
    drop(store);
    assert!(eventually(|| pool.num_idle() == pool.size() as usize).await);
    drop_schema(&admin, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_connection_that_was_terminated_fails_once_and_the_store_recovers() {
    let Some(k) = kept_store("ths_kept_terminate", 4, 4, PostgresStore::DEFAULT_HOLD).await else {
        return;
    };
    let id = SessionId::generate();
    let now = time::OffsetDateTime::now_utc();
    // Four at once, so four are kept.
    for found in behind_a_lock(&k, 4, 4, id, now).await {
        assert!(found.unwrap().is_none());
    }
    let KeptStore {
        admin, name, store, ..
    } = k;
    assert_eq!(store.kept_connections(), 4);
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(&name)
    .fetch_all(&admin)
    .await
    .unwrap();
    assert!(!killed.is_empty() && killed.iter().all(|k| *k));
    // Every kept connection is dead now: the first statement fails on one
    // and gives back the others, so the next runs on a fresh connection.
    let first = store.get_active(&id, now).await;
    assert!(
        matches!(first, Err(StoreError::Backend { .. })),
        "{first:?}"
    );
    assert_eq!(store.kept_connections(), 0);
    let mut recovered = false;
    // The pool's own idle connections died too; it hands each out once
    // untested (`test_before_acquire(false)`), as without kept connections.
    for _ in 0..6 {
        if store.get_active(&id, now).await.is_ok() {
            recovered = true;
            break;
        }
    }
    assert!(recovered, "the store did not recover");
    drop_schema(&admin, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_statement_does_not_keep_its_connection() {
    let Some(KeptStore {
        admin, name, store, ..
    }) = kept_store("ths_kept_cancel", 4, 4, PostgresStore::DEFAULT_HOLD).await
    else {
        return;
    };
    let id = SessionId::generate();
    let now = time::OffsetDateTime::now_utc();
    assert!(store.get_active(&id, now).await.unwrap().is_none());
    assert_eq!(store.kept_connections(), 1);
    // The table locked, the lookup (on the kept connection) waits on the
    // server; the caller gives up on it (a dropped request).
    let lock = lock_table(&admin, &name).await;
    let cancelled =
        tokio::time::timeout(Duration::from_millis(200), store.get_active(&id, now)).await;
    assert!(
        cancelled.is_err(),
        "the lookup should still wait on the lock"
    );
    assert_eq!(
        store.kept_connections(),
        0,
        "a cancelled statement's connection is not kept"
    );
    lock.rollback().await.unwrap();
    // The pool tested and took back that connection; the store goes on.
    assert!(store.get_active(&id, now).await.unwrap().is_none());
    assert_eq!(store.kept_connections(), 1);
    drop_schema(&admin, &name).await;
}

/// A write whose caller gives up while it waits on the server (a request
/// dropped, or the store's timeout) still applies once the server runs it;
/// its connection is not kept meanwhile, and the store goes on from what
/// was stored: a write from the record it replaced is refused, one from
/// the record as it now is applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_given_up_on_that_applies_later_leaves_the_store_consistent() {
    let Some(KeptStore {
        admin, name, store, ..
    }) = kept_store("ths_kept_late", 4, 4, PostgresStore::DEFAULT_HOLD).await
    else {
        return;
    };
    let inserted = planner_record();
    store.insert(&inserted).await.unwrap();
    // A first write, so the statement is prepared on the kept connection:
    // the one given up on is then sent whole before it waits (given up on
    // while still being prepared, it would never be sent, nor apply).
    let stored = SessionRecord {
        generation: 1,
        ..inserted.clone()
    };
    assert!(store.replace(&inserted, &stored, common::T0).await.unwrap());
    assert_eq!(store.kept_connections(), 1);
    let mut written = SessionRecord {
        generation: 2,
        ..stored.clone()
    };
    written.data.insert("n".into(), serde_json::json!(1));

    let lock = lock_table(&admin, &name).await;
    let given_up = tokio::time::timeout(
        Duration::from_millis(200),
        store.replace(&stored, &written, common::T0),
    )
    .await;
    assert!(given_up.is_err(), "the write should still wait on the lock");
    assert_eq!(store.kept_connections(), 0);
    lock.rollback().await.unwrap();

    // The server ran it: the record as written is the one stored.
    let mut applied = false;
    for _ in 0..500 {
        let now = store.get_active(&stored.id, common::T0).await.unwrap();
        if now.as_deref() == Some(&written) {
            applied = true;
            break;
        }
        assert_eq!(now.as_deref(), Some(&stored), "neither before nor after");
        // The server's own progress: no clock to inject.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(applied, "the write given up on never applied");
    let from_old = SessionRecord {
        generation: 2,
        ..stored.clone()
    };
    assert!(!store.replace(&stored, &from_old, common::T0).await.unwrap());
    let next = SessionRecord {
        generation: 3,
        ..written.clone()
    };
    assert!(store.replace(&written, &next, common::T0).await.unwrap());
    assert_eq!(
        store
            .get_active(&stored.id, common::T0)
            .await
            .unwrap()
            .as_deref(),
        Some(&next)
    );
    drop(store);
    drop_schema(&admin, &name).await;
}

/// Writes `r` into a version-1 table, as version-1 stores did (its trigger
/// fills the lookup-keys table).
async fn insert_v1(pool: &PgPool, table: &str, r: &SessionRecord) {
    let previous = r.previous.as_ref();
    sqlx::query(&format!(
        "INSERT INTO {table} (id, generation, subject, created_at, authenticated_at, \
         last_seen_at, expires_at, absolute_expires_at, idle_timeout_secs, persistent, \
         access_expires_at, current_lookup_key, current_key_version, previous_lookup_key, \
         previous_key_version, previous_rotated_at, previous_valid_until, \
         superseded_lookup_key, superseded_key_version, revoked_at, revoked_reason, \
         revoked_actor, data) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
         $14, $15, $16, $17, $18, $19, $20, $21, $22, '{{}}'::jsonb)"
    ))
    .bind(&r.id.as_bytes()[..])
    .bind(r.generation as i64)
    .bind(r.subject.as_deref())
    .bind(r.created_at)
    .bind(r.authenticated_at)
    .bind(r.last_seen_at)
    .bind(r.expires_at)
    .bind(r.absolute_expires_at)
    .bind(r.idle_timeout.as_secs() as i64)
    .bind(r.persistent)
    .bind(r.access_expires_at)
    .bind(&r.current.lookup_key.as_bytes()[..])
    .bind(i64::from(r.current.key_version.0))
    .bind(previous.map(|p| p.credential.lookup_key.as_bytes().to_vec()))
    .bind(previous.map(|p| i64::from(p.credential.key_version.0)))
    .bind(previous.map(|p| p.rotated_at))
    .bind(previous.and_then(|p| p.valid_until))
    .bind(r.superseded.map(|c| c.lookup_key.as_bytes().to_vec()))
    .bind(r.superseded.map(|c| i64::from(c.key_version.0)))
    .bind(r.revoked.as_ref().map(|v| v.at))
    .bind(r.revoked.as_ref().map(|v| v.revocation.reason.as_str()))
    .bind(r.revoked.as_ref().and_then(|v| v.revocation.actor.clone()))
    .execute(pool)
    .await
    .unwrap();
}

/// A database at schema version 1 (`tests/fixtures/postgres_schema_v1.sql`:
/// a row per record keyed by id, and a lookup-keys table a trigger keeps)
/// is converted in place by version 2 to a row per slot, and by version 3
/// to the whole record in one `record` column (filled in batches): every
/// record is kept and found by each of its keys, a damaged one stays
/// corrupt, revoked and expired ones stay out of reach and are purged, the
/// table's grants stay, and the records can be written.
#[tokio::test]
async fn versions_2_and_3_convert_version_1_records() {
    let Some(pool) = pool("ths-migrate-v1").await else {
        return;
    };
    let v1 = unique("ths_v1");
    let table = format!("\"{v1}\".{TABLE}");
    let schema_v1 = include_str!("fixtures/postgres_schema_v1.sql").replace("ths_schema_v1", &v1);
    sqlx::raw_sql(&format!(
        "CREATE SCHEMA \"{v1}\"; {schema_v1} \
         CREATE TABLE {table}_migrations (version BIGINT NOT NULL PRIMARY KEY, \
         applied_at TIMESTAMPTZ NOT NULL DEFAULT now()); \
         INSERT INTO {table}_migrations (version) VALUES (1); \
         GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO PUBLIC;"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let credential = || Credential {
        lookup_key: random_lookup_key(),
        key_version: KeyVersion(1),
    };
    let plain = planner_record();
    let rotated = SessionRecord {
        previous: Some(tower_hmac_session::PreviousCredential {
            credential: credential(),
            rotated_at: common::T0,
            valid_until: Some(common::T0 + time::Duration::minutes(1)),
        }),
        superseded: Some(credential()),
        ..planner_record()
    };
    let revoked = SessionRecord {
        revoked: Some(tower_hmac_session::Revoked {
            at: common::T0,
            revocation: tower_hmac_session::RevocationReason::Logout.into(),
        }),
        ..planner_record()
    };
    let expired = SessionRecord {
        created_at: common::T0 - time::Duration::hours(2),
        authenticated_at: Some(common::T0 - time::Duration::hours(2)),
        last_seen_at: common::T0 - time::Duration::hours(2),
        access_expires_at: common::T0 - time::Duration::hours(2),
        expires_at: common::T0 - time::Duration::hours(1),
        ..planner_record()
    };
    let damaged = SessionRecord {
        subject: Some("damaged".into()),
        ..planner_record()
    };
    // An empty id sorts before every id the upgrade's batches start after.
    let no_id = SessionRecord {
        subject: Some("no id".into()),
        ..planner_record()
    };
    for r in [&plain, &rotated, &revoked, &expired, &damaged, &no_id] {
        insert_v1(&pool, &table, r).await;
    }
    sqlx::raw_sql(&format!(
        "UPDATE {table} SET idle_timeout_secs = -3 WHERE subject = 'damaged'; \
         UPDATE {table} SET id = '' WHERE subject = 'no id';"
    ))
    .execute(&pool)
    .await
    .unwrap();
    // More records than one batch of the upgrade.
    const BULK: i64 = 2500;
    sqlx::query(&format!(
        "INSERT INTO {table} (id, generation, subject, created_at, authenticated_at, \
         last_seen_at, expires_at, absolute_expires_at, idle_timeout_secs, persistent, \
         access_expires_at, current_lookup_key, current_key_version, data) \
         SELECT substring(sha256(('bulk' || i)::bytea) FROM 1 FOR 16), 0, 'bulk', \
         t, t, t, t + interval '1 hour', t + interval '1 day', 3600, false, \
         t + interval '15 minutes', sha256(('bulk key' || i)::bytea), 1, \
         jsonb_build_object('n', i) \
         FROM generate_series(1, $2) AS i, (SELECT $1::timestamptz AS t) AS t0"
    ))
    .bind(common::T0)
    .bind(BULK)
    .execute(&pool)
    .await
    .unwrap();
    let index: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{v1}\".tower_hmac_session_lookup_keys"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(index, 8 + BULK, "version 1's trigger keeps every key");

    let store = store_in(&pool, &v1).await;
    let versions: Vec<i64> = sqlx::query_scalar(&format!(
        "SELECT version FROM {table}_migrations ORDER BY version"
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(versions, [1, 2, 3, 4]);
    // Version 4 replaced version 1's fillfactor of 70.
    assert_eq!(table_options(&pool, &v1).await, ["fillfactor=90"]);
    let (rows, leftovers, empty): (i64, i64, i64) = sqlx::query_as(&format!(
        "SELECT (SELECT count(*) FROM {table}), \
         (SELECT count(*) FROM pg_class WHERE relname = 'tower_hmac_session_lookup_keys' \
         AND relnamespace = '\"{v1}\"'::regnamespace), \
         (SELECT count(*) FROM {table} WHERE record = '')"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (rows, leftovers, empty),
        (3 * (6 + BULK), 0, 3 * 2),
        "a row per slot, no lookup-keys table, a record in every row but the damaged one's"
    );
    // Version 3 keeps only the columns its statements select by.
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns \
         WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
    )
    .bind(&v1)
    .bind(TABLE)
    .fetch_all(&pool)
    .await
    .unwrap();
    for gone in [
        "data",
        "user_agent",
        "current_lookup_key",
        "idle_timeout_secs",
    ] {
        assert!(!columns.iter().any(|c| c == gone), "{gone}: {columns:?}");
    }
    for kept in [
        "lookup_key",
        "slot",
        "id",
        "expires_at",
        "revoked_at",
        "record",
    ] {
        assert!(columns.iter().any(|c| c == kept), "{kept}: {columns:?}");
    }
    // Converted in place: the grants of the table stay.
    let granted: bool = sqlx::query_scalar(&format!(
        "SELECT has_table_privilege('public', '{table}', 'UPDATE')"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(granted, "the table's grants were lost");

    let find = |credential: Credential| {
        let store = store.clone();
        async move {
            let candidates = [Candidate {
                key_version: credential.key_version,
                lookup_key: credential.lookup_key,
                value_index: 0,
            }];
            store.find_active(&candidates, common::T0).await.unwrap()
        }
    };
    use tower_hmac_session::Slot;
    for (r, credential, slot) in [
        (&plain, plain.current, Slot::Current),
        (&rotated, rotated.current, Slot::Current),
        (
            &rotated,
            rotated.previous.unwrap().credential,
            Slot::Previous,
        ),
        (&rotated, rotated.superseded.unwrap(), Slot::Superseded),
    ] {
        let found = find(credential).await;
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].record.as_ref(), r);
        assert_eq!(found[0].slot, slot);
    }
    for gone in [&revoked, &expired] {
        assert!(find(gone.current).await.is_empty());
    }
    for r in [&damaged, &no_id] {
        let candidates = [Candidate {
            key_version: KeyVersion(1),
            lookup_key: r.current.lookup_key,
            value_index: 0,
        }];
        let error = store
            .find_active(&candidates, common::T0)
            .await
            .unwrap_err();
        assert!(matches!(error, StoreError::Corrupt { .. }), "{error:?}");
    }
    let listed = store.list_for_subject("planner", common::T0).await.unwrap();
    assert_eq!(listed.len(), 2);
    // Every record of every batch, with its data.
    let mut bulk = store.list_for_subject("bulk", common::T0).await.unwrap();
    assert_eq!(bulk.len() as i64, BULK);
    bulk.sort_by_key(|r| r.get::<i64>("n"));
    for (i, r) in (1..).zip(&bulk) {
        assert_eq!(r.get::<i64>("n"), Some(i));
    }
    let counts = store
        .count_by_key_version(common::T0, common::T0)
        .await
        .unwrap();
    assert_eq!(counts[&KeyVersion(1)].recent, 4 + BULK as u64, "{counts:?}");
    // A rotation moves every key of the converted record.
    let next = SessionRecord {
        generation: 1,
        previous: Some(tower_hmac_session::PreviousCredential {
            credential: rotated.current,
            rotated_at: common::T0,
            valid_until: None,
        }),
        current: credential(),
        superseded: rotated.previous.map(|p| p.credential),
        ..rotated.clone()
    };
    assert!(store.replace(&rotated, &next, common::T0).await.unwrap());
    assert_eq!(find(next.current).await[0].slot, Slot::Current);
    assert_eq!(find(rotated.current).await[0].slot, Slot::Previous);
    assert!(find(rotated.superseded.unwrap()).await.is_empty());
    assert_eq!(store.purge_expired(common::T0).await.unwrap(), 2);
    let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 3 * (4 + BULK));
    drop_schema(&pool, &v1).await;
}

#[tokio::test]
async fn migrations_are_idempotent_and_concurrent_safe() {
    let Some(pool) = pool("ths-migrate").await else {
        return;
    };
    let schema = unique("ths_migrate");
    let store = PostgresStore::in_schema(pool.clone(), &schema).unwrap();
    let (a, b) = tokio::join!(store.migrate(), store.migrate());
    a.unwrap();
    b.unwrap();
    store.migrate().await.unwrap();
    let versions: Vec<i64> = sqlx::query_scalar(&format!(
        "SELECT version FROM \"{schema}\".{TABLE}_migrations"
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(versions, [1, 2, 3, 4]);
    // Version 4: pages kept 10% free (see `FILLFACTOR` in src/store/sql.rs).
    assert_eq!(table_options(&pool, &schema).await, ["fillfactor=90"]);
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "SELECT indexname::text, indexdef FROM pg_indexes WHERE schemaname = $1 \
         ORDER BY indexname",
    )
    .bind(&schema)
    .fetch_all(&pool)
    .await
    .unwrap();
    // Version 2: a row per slot, keyed by the slot's lookup key.
    for (wanted, unique) in [
        ("records_pkey", true),
        ("id_slot", true),
        ("subject", false),
        ("expires_at", false),
    ] {
        assert!(
            indexes
                .iter()
                .any(|(name, def)| name.ends_with(wanted) && def.contains("UNIQUE") == unique),
            "no index on {wanted}: {indexes:?}"
        );
    }
    assert_eq!(indexes.len(), 6, "{indexes:?}");
    assert!(PostgresStore::in_schema(pool.clone(), "Robert'); DROP TABLE x;--").is_err());
    drop_schema(&pool, &schema).await;
}

/// Two app instances: separate pools and managers on one schema.
async fn two_instances(config: SessionConfig) -> Option<(Harness, Harness, PgPool, String)> {
    let pool_a = pool("ths-instance-a").await?;
    let pool_b = pool("ths-instance-b").await?;
    let schema = unique("ths_instances");
    let a = Harness::with_store(
        store_kept(&pool_a, &schema).await,
        config.clone(),
        ring(1, &[1]),
    );
    let b = Harness::with_store(store_kept(&pool_b, &schema).await, config, ring(1, &[1]));
    Some((a, b, pool_a, schema))
}

#[tokio::test]
async fn a_revocation_through_one_instance_is_seen_by_the_other() {
    let Some((a, b, pool, schema)) = two_instances(SessionConfig::default()).await else {
        return;
    };
    common::revocation_is_shared(&a, &b).await;
    drop_schema(&pool, &schema).await;
}

#[tokio::test]
async fn a_rotation_through_one_instance_is_seen_by_the_other() {
    let Some((a, b, pool, schema)) = two_instances(common::rotating()).await else {
        return;
    };
    common::rotation_is_shared(&a, &b).await;
    drop_schema(&pool, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_rotation_through_both_instances_has_one_winner() {
    let Some((a, b, pool, schema)) = two_instances(common::rotating()).await else {
        return;
    };
    let secret = a.login("alice").await;
    a.advance(901);
    b.advance(901);
    let new = common::race_rotation(&a, &b, &secret).await;
    assert_eq!(b.call("GET", "/me", Some(&new)).await.body, "alice");
    drop_schema(&pool, &schema).await;
}

#[tokio::test]
async fn corrupt_rows_are_reported_as_corruption() {
    let Some(pool) = pool("ths-corrupt").await else {
        return;
    };
    let schema = unique("ths_corrupt");
    let h = Harness::with_store(
        store_in(&pool, &schema).await,
        SessionConfig::default(),
        ring(1, &[1]),
    );
    // The record is the `record` column: damage to it, whole or in part
    // (a header field, a state field, the data), and a record that disagrees with
    // the row's own columns.
    let edits = [
        ("^ths3", "ths2"),
        ("^ths3\\|[0-9a-f]+", "ths3|0102"),
        // The generation, then the expiry, out of any range.
        ("^(ths3\\|[^|]*\\|)[0-9]+", "\\1-1"),
        ("^((?:[^|]*\\|){3})[0-9]+", "\\1+1"),
        ("^((?:[^|]*\\|){3})[0-9]+", "\\19999999999999999999"),
        // Revoked, in a row that is not.
        ("^((?:[^|]*\\|){5})-", "\\11,logout"),
        ("^((?:[^|]*\\|){5})-", "\\11,bogus"),
        // The row's lookup key is not the record's.
        (
            "^((?:[^|]*\\|){6})[0-9a-f]+",
            "\\1ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        ),
        ("^((?:[^|]*\\|){9})[0-9a-f]+", "\\1zz"),
        // The state line: `created_at` with a leading zero, then after
        // `last_seen_at`; a field more.
        ("\n([0-9])", "\n0\\1"),
        ("\n([0-9])", "\n9\\1"),
        ("\n\\{", "|x\n{"),
        // Data that is no JSON object.
        ("\n\\{", "\n["),
    ];
    let edited = edits.map(|(pattern, replacement)| {
        format!(
            "record = convert_to(regexp_replace(convert_from(record, 'UTF8'), \
             '{pattern}', '{replacement}'), 'UTF8')"
        )
    });
    let mut cases = vec![
        "record = ''".to_owned(),
        "record = 'garbage'".to_owned(),
        "record = substring(record FROM 1 FOR length(record) - 1)".to_owned(),
        "record = convert_to(E'ths3|x\\n{}', 'UTF8')".to_owned(),
    ];
    cases.extend(edited);
    let cases: Vec<&str> = cases.iter().map(String::as_str).collect();
    common::assert_damage_is_corruption(&h, &cases, |user, _id, set| {
        let (pool, schema) = (pool.clone(), schema.clone());
        async move {
            let changed = sqlx::query(&format!(
                "UPDATE \"{schema}\".{TABLE} SET {set} WHERE subject = $1 AND record <> ''"
            ))
            .bind(user)
            .execute(&pool)
            .await
            .unwrap();
            // The session holds one key: one row holds the record.
            assert_eq!(changed.rows_affected(), 1, "{set}");
        }
    })
    .await;
    drop_schema(&pool, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_connection_gives_503s_and_the_store_recovers() {
    let name = unique("ths-terminate");
    let Some(store_pool) = pool(&name).await else {
        return;
    };
    let Some(admin) = pool("ths-admin").await else {
        return;
    };
    let schema = unique("ths_terminate");
    let h = Harness::with_store(
        store_in(&store_pool, &schema).await,
        SessionConfig::default(),
        ring(1, &[1]),
    );
    let secret = h.login("alice").await;
    assert_eq!(
        h.call("GET", "/me", Some(&secret)).await.status,
        StatusCode::OK
    );

    // Hold the table so the next lookup is provably in flight on the
    // store's connection, then terminate that backend under it.
    let lock = lock_table(&admin, &schema).await;
    let in_flight = tokio::spawn(h.router.clone().oneshot(common::request(
        "GET",
        "/me",
        Some(&secret),
    )));
    assert!(
        waiting_on_lock(&admin, &name, 1).await,
        "the lookup never reached the server"
    );
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(&name)
    .fetch_all(&admin)
    .await
    .unwrap();
    assert!(
        !killed.is_empty() && killed.iter().all(|k| *k),
        "{killed:?}"
    );
    let res = TestResponse::from(in_flight.await.unwrap().unwrap()).await;
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE, "{}", res.body);
    assert!(
        res.raw_set_cookies.is_empty(),
        "no cookie change on a store error"
    );
    lock.rollback().await.unwrap();

    // Fresh connections serve the same session again: nothing was lost.
    // Any idle connection that died with the others fails once, as a 503.
    let mut recovered = false;
    for _ in 0..12 {
        let res = h.call("GET", "/me", Some(&secret)).await;
        assert!(res.raw_set_cookies.is_empty());
        match res.status {
            StatusCode::SERVICE_UNAVAILABLE => continue,
            StatusCode::OK => {
                assert_eq!(res.body, "alice");
                recovered = true;
                break;
            }
            other => panic!("unexpected {other}: {}", res.body),
        }
    }
    assert!(recovered, "the store did not recover");
    drop_schema(&admin, &schema).await;
}

/// One app instance on a fresh schema.
async fn one_instance(config: SessionConfig) -> Option<(Harness, PgPool, String)> {
    let pool = pool("ths-instance").await?;
    let schema = unique("ths_instance");
    let h = Harness::with_store(store_kept(&pool, &schema).await, config, ring(1, &[1]));
    Some((h, pool, schema))
}

/// A row whose subject column disagrees with its record: the record reads
/// fine, but every write from it is refused (the compare-and-swap requires
/// the stored subject). The layer reports corruption after one refused
/// write and one read back, rather than trying again and again, and the
/// record is left as it was.
#[tokio::test]
async fn a_write_the_store_always_refuses_is_corruption_at_once() {
    let Some((h, pool, schema)) = one_instance(SessionConfig::default()).await else {
        return;
    };
    let secret = h.login("dora").await;
    let record = format!("SELECT record FROM \"{schema}\".{TABLE} WHERE slot = 0");
    let stored = || sqlx::query_scalar::<_, Vec<u8>>(&record).fetch_one(&pool);
    let before = stored().await.unwrap();
    sqlx::query(&format!(
        "UPDATE \"{schema}\".{TABLE} SET subject = 'mallory' WHERE subject = 'dora'"
    ))
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(h.call("GET", "/me", Some(&secret)).await.body, "dora");
    h.store.reset_counts();
    let log = common::LogCapture::install();
    let res = h.call("POST", "/attr?key=k&value=v", Some(&secret)).await;
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.raw_set_cookies.is_empty());
    let counts = &h.store.counts;
    assert_eq!(common::Counts::get(&counts.replace), 1);
    assert_eq!(common::Counts::get(&counts.get_active), 1);
    assert!(
        log.text()
            .contains("refuses a write from the record it returns"),
        "{}",
        log.text()
    );
    assert_eq!(stored().await.unwrap(), before);
    drop_schema(&pool, &schema).await;
}

#[tokio::test]
async fn a_lost_rotation_response_keeps_the_session() {
    let Some((h, pool, schema)) = one_instance(common::rotating()).await else {
        return;
    };
    common::lost_rotation_response_keeps_the_session(&h).await;
    drop_schema(&pool, &schema).await;
}

#[tokio::test]
async fn a_rotation_write_that_times_out_converges() {
    let Some((h, pool, schema)) = one_instance(common::rotating()).await else {
        return;
    };
    common::rotation_write_that_times_out_converges(&h).await;
    drop_schema(&pool, &schema).await;
}

#[tokio::test]
async fn copied_and_superseded_secrets_are_reuse() {
    let Some((h, pool, schema)) = one_instance(common::rotating()).await else {
        return;
    };
    common::copied_cookie_after_confirmed_rotation_is_reuse(&h).await;
    common::superseded_secret_is_reuse(&h).await;
    drop_schema(&pool, &schema).await;
}

#[tokio::test]
async fn corruption_names_the_record_but_never_its_lookup_key() {
    let Some((h, pool, schema)) = one_instance(SessionConfig::default()).await else {
        return;
    };
    let issued = h
        .manager
        .create_session("mallory", Data::new())
        .await
        .unwrap();
    // The generation out of range: the header's id still names the record.
    sqlx::raw_sql(&format!(
        "UPDATE \"{schema}\".{TABLE} SET record = convert_to(regexp_replace(\
         convert_from(record, 'UTF8'), '^(ths3\\|[^|]*\\|)[0-9]+', '\\1-1'), 'UTF8')"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let candidates = h.manager.key_ring().candidates([&issued.secret]);
    let error = h
        .store
        .inner
        .find_active(&candidates, common::T0)
        .await
        .unwrap_err();
    let StoreError::Corrupt { id, .. } = &error else {
        panic!("{error:?}");
    };
    assert_eq!(*id, Some(issued.record.id));
    let key = h
        .manager
        .key_ring()
        .current_credential(&issued.secret)
        .lookup_key;
    let key: String = key.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    let text = format!("{error} {error:?}");
    assert!(!text.to_lowercase().contains(&key), "{text}");
    drop_schema(&pool, &schema).await;
}

fn random_lookup_key() -> LookupKey {
    let mut bytes = [0; 32];
    bytes[..16].copy_from_slice(SessionId::generate().as_bytes());
    bytes[16..].copy_from_slice(SessionId::generate().as_bytes());
    LookupKey::from_bytes(bytes)
}

/// A live session of `planner` at `T0` with a fresh lookup key.
fn planner_record() -> SessionRecord {
    let t0 = common::T0;
    SessionRecord {
        id: SessionId::generate(),
        generation: 0,
        subject: Some("planner".into()),
        created_at: t0,
        authenticated_at: Some(t0),
        last_seen_at: t0,
        expires_at: t0 + time::Duration::hours(1),
        absolute_expires_at: t0 + time::Duration::days(1),
        idle_timeout: Duration::from_secs(3600),
        persistent: false,
        access_expires_at: t0 + time::Duration::minutes(15),
        current: Credential {
            lookup_key: random_lookup_key(),
            key_version: KeyVersion(1),
        },
        previous: None,
        superseded: None,
        revoked: None,
        user_agent: None,
        client_ip: None,
        data: Data::new(),
    }
}

/// The plan counts of the statement this connection's sqlx cache prepared
/// with text starting `prefix`, and the generic plan PostgreSQL builds for
/// it: a copy prepared with the same parameter types and explained under
/// `plan_cache_mode = force_generic_plan`.
async fn generic_plan(conn: &mut PgConnection, prefix: &str, name: &str) -> (i64, i64, String) {
    let (statement, types, generic, custom): (String, Vec<String>, i64, i64) = sqlx::query_as(
        "SELECT statement, parameter_types::text[], generic_plans, custom_plans \
         FROM pg_prepared_statements WHERE starts_with(statement, $1) AND NOT from_sql",
    )
    .bind(prefix)
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    sqlx::raw_sql(&format!(
        "PREPARE {name} ({}) AS {statement}",
        types.join(", ")
    ))
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::raw_sql("SET plan_cache_mode = force_generic_plan")
        .execute(&mut *conn)
        .await
        .unwrap();
    let nulls = vec!["NULL"; types.len()].join(", ");
    let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN EXECUTE {name} ({nulls})"))
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    sqlx::raw_sql(&format!("RESET plan_cache_mode; DEALLOCATE {name}"))
        .execute(&mut *conn)
        .await
        .unwrap();
    (generic, custom, plan.join("\n"))
}

/// An `INSERT` of the records `select` returns as the store keeps them: a
/// row per slot, keyed by the slot's lookup key, or for a slot without one
/// by the store's placeholder (the id and the slot number). `select`
/// returns the table's `columns` (`id` first), then the current, previous
/// and superseded lookup keys. The rows' `record` is left empty: the tests
/// that bulk-load rows never read these records back (an empty `record`
/// reads as corruption).
fn insert_rows_per_slot(table: &str, columns: &str, select: &str) -> String {
    let values = columns
        .split(',')
        .map(|c| format!("v.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "INSERT INTO {table} (lookup_key, slot, {columns}, record) \
         SELECT k.lookup_key, k.slot, {values}, ''::bytea \
         FROM ({select}) AS v ({columns}, k0, k1, k2) CROSS JOIN LATERAL (VALUES \
         (v.k0, 0), (coalesce(v.k1, v.id || '\\x01'::bytea), 1), \
         (coalesce(v.k2, v.id || '\\x02'::bytea), 2)) AS k (lookup_key, slot)"
    )
}

/// Sequential and index scans so far of each table in `schema`, by name
/// (this backend's own counts included).
async fn scans(conn: &mut PgConnection, schema: &str) -> Vec<(String, i64, i64)> {
    sqlx::raw_sql("SELECT pg_stat_force_next_flush(); SELECT pg_stat_clear_snapshot()")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query_as(
        "SELECT relname::text, seq_scan, coalesce(idx_scan, 0) FROM pg_stat_user_tables \
         WHERE schemaname = $1 ORDER BY relname",
    )
    .bind(schema)
    .fetch_all(&mut *conn)
    .await
    .unwrap()
}

/// At 10^5 sessions, the lookup runs from a cached generic plan (re-planning
/// on every call, as an `OR` across lookup-key columns or an array parameter
/// made PostgreSQL do, costs more than the lookup itself) that probes the
/// primary key (the lookup key) once, with no join: no sequential scan, no
/// scan of the expiry index. Insert and replace are reused generic plans
/// too, and no statement of the store scans the table sequentially.
#[tokio::test]
async fn lookups_and_writes_reuse_generic_index_plans_at_100k_sessions() {
    // One connection: `pg_prepared_statements` shows the session's own.
    let Some(pool) = pool_of("ths-plans", 1).await else {
        return;
    };
    let schema = unique("ths_plans");
    let store = store_in(&pool, &schema).await;
    let table = format!("\"{schema}\".{TABLE}");
    // A third hold a previous secret, a tenth a superseded one.
    let insert = insert_rows_per_slot(
        &table,
        "id, generation, subject, created_at, last_seen_at, expires_at, \
         absolute_expires_at, current_key_version, previous_key_version",
        "SELECT substring(sha256(('id' || i)::bytea) FROM 1 FOR 16), 0, 'user' || (i % 5000), \
         t, t, t + interval '1 hour', t + interval '1 day', 1, \
         CASE WHEN i % 3 = 0 THEN 1 END, sha256(('c' || i)::bytea), \
         CASE WHEN i % 3 = 0 THEN sha256(('p' || i)::bytea) END, \
         CASE WHEN i % 10 = 0 THEN sha256(('s' || i)::bytea) END \
         FROM generate_series(1, 100000) AS i, \
         (SELECT '2030-01-01 00:00+00'::timestamptz AS t) AS t0",
    );
    sqlx::raw_sql(&format!("{insert}; ANALYZE {table};"))
        .execute(&pool)
        .await
        .unwrap();
    let before = scans(&mut pool.acquire().await.unwrap(), &schema).await;

    let mut current = planner_record();
    store.insert(&current).await.unwrap();
    for _ in 0..10 {
        let inserted = planner_record();
        store.insert(&inserted).await.unwrap();
        let candidates = [Candidate {
            key_version: KeyVersion(1),
            lookup_key: inserted.current.lookup_key,
            value_index: 0,
        }];
        let found = store.find_active(&candidates, common::T0).await.unwrap();
        assert_eq!(found.len(), 1);
        // A data write to a record holding one key: its current slot's row.
        let mut written = SessionRecord {
            generation: 1,
            ..inserted.clone()
        };
        written.data.insert("n".into(), serde_json::json!(1));
        assert!(
            store
                .replace(&inserted, &written, common::T0)
                .await
                .unwrap()
        );
        // A rotation: one key moves to slot 1, a new one takes slot 0.
        let mut next = SessionRecord {
            generation: current.generation + 1,
            ..current.clone()
        };
        next.previous = Some(tower_hmac_session::PreviousCredential {
            credential: current.current,
            rotated_at: common::T0,
            valid_until: None,
        });
        next.current.lookup_key = random_lookup_key();
        assert!(store.replace(&current, &next, common::T0).await.unwrap());
        current = next;
    }
    // A capped login of a subject with 20 sessions, and purges (of what it
    // revoked, then of nothing): index ranges, never a scan of the table.
    let cap = tower_hmac_session::SubjectCap {
        max_sessions: 3,
        except: None,
        revocation: tower_hmac_session::RevocationReason::SessionLimit.into(),
    };
    let capped = SessionRecord {
        subject: Some("user7".into()),
        ..planner_record()
    };
    let evicted = store
        .insert_capped(&capped, common::T0, &cap)
        .await
        .unwrap();
    assert_eq!(evicted.len(), 18);
    assert_eq!(store.purge_expired(common::T0).await.unwrap(), 18);
    for _ in 0..5 {
        assert_eq!(store.purge_expired(common::T0).await.unwrap(), 0);
    }
    // Signing a subject out everywhere: its records by the subject index,
    // then each record's rows by id.
    let revocation = tower_hmac_session::RevocationReason::Logout.into();
    let revoked = store
        .revoke_all_for_subject("user8", common::T0, &revocation, None)
        .await
        .unwrap();
    assert_eq!(revoked, 20, "records, not rows");

    let mut conn = pool.acquire().await.unwrap();
    let after = scans(&mut conn, &schema).await;
    assert_eq!(after.len(), 2, "{after:?}");
    for ((table, seq_before, idx_before), (_, seq_after, idx_after)) in before.iter().zip(&after) {
        assert_eq!(seq_before, seq_after, "sequential scans of {table}");
        if !table.ends_with("migrations") {
            assert!(idx_after > idx_before, "no index scan of {table}");
        }
    }
    for (prefix, name) in [
        ("WITH evicted", "ths_capped"),
        ("WITH purged", "ths_purge"),
        ("WITH revoked", "ths_revoke_all"),
    ] {
        let (_, _, plan) = generic_plan(&mut conn, prefix, name).await;
        assert!(!plan.contains("Seq Scan"), "{name}:\n{plan}");
    }
    // (The migrations' own statements ran on this connection too.)
    let insert = format!("INSERT INTO {table} (lookup_key");
    let replace = format!("UPDATE {table} SET lookup_key");
    for (prefix, name) in [
        ("SELECT slot,", "ths_lookup"),
        (insert.as_str(), "ths_insert"),
        (replace.as_str(), "ths_replace"),
        ("WITH head AS", "ths_replace_rows"),
    ] {
        let (generic, custom, plan) = generic_plan(&mut conn, prefix, name).await;
        assert!(
            generic > 0,
            "{name}: re-planned on every call ({custom} custom plans)"
        );
        assert!(!plan.contains("Seq Scan"), "{name}:\n{plan}");
        assert!(!plan.contains("records_expires_at"), "{name}:\n{plan}");
        if name == "ths_lookup" {
            // One probe of the primary key, and nothing joined.
            assert!(plan.contains("records_pkey on"), "{name}:\n{plan}");
            assert!(
                !plan.contains("Join") && !plan.contains("Nested Loop"),
                "{name}:\n{plan}"
            );
        }
    }
    drop(conn);
    drop_schema(&pool, &schema).await;
}

#[tokio::test]
async fn a_stale_replace_is_not_applied_even_when_its_new_key_is_taken() {
    let Some(pool) = pool("ths-stale").await else {
        return;
    };
    let schema = unique("ths_stale");
    let store = store_in(&pool, &schema).await;
    let (mine, theirs) = (planner_record(), planner_record());
    store.insert(&mine).await.unwrap();
    store.insert(&theirs).await.unwrap();
    let successor = |r: &SessionRecord| SessionRecord {
        generation: r.generation + 1,
        ..r.clone()
    };
    let touched = successor(&mine);
    assert!(store.replace(&mine, &touched, common::T0).await.unwrap());
    // From the stale generation, with their key: the compare-and-swap
    // fails first, so it is "not applied", not a conflict.
    let mut stale = successor(&mine);
    stale.current = theirs.current;
    assert!(!store.replace(&mine, &stale, common::T0).await.unwrap());
    // From the stored generation, the same key is a conflict.
    let mut fresh = successor(&touched);
    fresh.current = theirs.current;
    let result = store.replace(&touched, &fresh, common::T0).await;
    assert!(matches!(result, Err(StoreError::Conflict)), "{result:?}");
    drop_schema(&pool, &schema).await;
}

/// A replace whose `current` is not the stored record in what never changes
/// (subject, creation, absolute expiry), though its id and generation are,
/// is not applied: the row's `record` is written whole and must never
/// disagree with the columns revoke-all, lists and counts select by.
#[tokio::test]
async fn a_replace_from_a_record_that_is_not_the_stored_one_is_not_applied() {
    let Some(pool) = pool("ths-other").await else {
        return;
    };
    let schema = unique("ths_other");
    let store = store_in(&pool, &schema).await;
    let stored = planner_record();
    store.insert(&stored).await.unwrap();
    let others = [
        SessionRecord {
            subject: Some("someone else".into()),
            ..stored.clone()
        },
        SessionRecord {
            subject: None,
            authenticated_at: None,
            ..stored.clone()
        },
        SessionRecord {
            created_at: stored.created_at - time::Duration::seconds(1),
            ..stored.clone()
        },
        SessionRecord {
            absolute_expires_at: stored.absolute_expires_at + time::Duration::seconds(1),
            ..stored.clone()
        },
        // The idle expiry (in the header, not compared as a column).
        SessionRecord {
            expires_at: stored.expires_at - time::Duration::seconds(1),
            ..stored.clone()
        },
    ];
    for other in &others {
        let next = SessionRecord {
            generation: other.generation + 1,
            ..other.clone()
        };
        assert!(
            !store.replace(other, &next, common::T0).await.unwrap(),
            "{other:?}"
        );
    }
    let found = store.get_active(&stored.id, common::T0).await.unwrap();
    assert_eq!(found.as_deref(), Some(&stored));
    let listed = store.list_for_subject("planner", common::T0).await.unwrap();
    assert_eq!(listed.len(), 1);

    // A caller that does not know of the stored previous key: its renew
    // would leave that key's row (which only writes naming it change)
    // resolving. Not applied, and the key still reads the stored record.
    let rotation = rotated(&stored);
    assert!(store.replace(&stored, &rotation, common::T0).await.unwrap());
    let unaware = SessionRecord {
        previous: None,
        ..rotation.clone()
    };
    let renew = SessionRecord {
        generation: unaware.generation + 1,
        current: Credential {
            lookup_key: random_lookup_key(),
            key_version: KeyVersion(1),
        },
        ..unaware.clone()
    };
    assert!(!store.replace(&unaware, &renew, common::T0).await.unwrap());
    assert_eq!(
        resolved(&store, &rotation).await,
        vec![Some(rotation.clone()); 2]
    );
    drop_schema(&pool, &schema).await;
}

/// Each row of `id`, by slot: the row version (`xmin`, which changes when
/// a statement writes the row), the length of its key (32 for a lookup key,
/// 17 for the placeholder of an empty slot) and of its `record`.
async fn rows_of(pool: &PgPool, table: &str, id: &SessionId) -> Vec<(String, i32, i32)> {
    sqlx::query_as(&format!(
        "SELECT xmin::text, length(lookup_key), length(record) FROM {table} \
         WHERE id = $1 ORDER BY slot"
    ))
    .bind(&id.as_bytes()[..])
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The successor of `r`: the next generation with `n` in its data.
fn written(r: &SessionRecord, n: u64) -> SessionRecord {
    let mut next = SessionRecord {
        generation: r.generation + 1,
        ..r.clone()
    };
    next.data.insert("n".into(), serde_json::json!(n));
    next
}

/// `r` rotated: its current key moves to the previous slot, a new one
/// takes its place.
fn rotated(r: &SessionRecord) -> SessionRecord {
    SessionRecord {
        generation: r.generation + 1,
        previous: Some(tower_hmac_session::PreviousCredential {
            credential: r.current,
            rotated_at: common::T0,
            valid_until: None,
        }),
        current: Credential {
            lookup_key: random_lookup_key(),
            key_version: KeyVersion(1),
        },
        ..r.clone()
    }
}

/// What each of `r`'s lookup keys resolves to at `T0`, in slot order.
async fn resolved(store: &PostgresStore, r: &SessionRecord) -> Vec<Option<SessionRecord>> {
    let mut keys = vec![r.current.lookup_key];
    keys.extend(r.previous.map(|p| p.credential.lookup_key));
    keys.extend(r.superseded.map(|c| c.lookup_key));
    let mut out = Vec::new();
    for lookup_key in keys {
        let candidates = [Candidate {
            key_version: KeyVersion(1),
            lookup_key,
            value_index: 0,
        }];
        let found = store.find_active(&candidates, common::T0).await.unwrap();
        assert!(found.len() <= 1, "{found:?}");
        out.push(found.into_iter().next().map(|m| (*m.record).clone()));
    }
    out
}

/// A write changes the rows that hold a key, before or after, and no
/// other: a data write to a session holding one key is one row. A row
/// holds the record exactly while it holds a key, and every key reads the
/// record as last written.
#[tokio::test]
async fn a_write_changes_only_the_rows_that_hold_a_key() {
    let Some(pool) = pool("ths-rows").await else {
        return;
    };
    let schema = unique("ths_rows");
    let store = store_in(&pool, &schema).await;
    let table = format!("\"{schema}\".{TABLE}");
    let inserted = planner_record();
    store.insert(&inserted).await.unwrap();
    let rows = rows_of(&pool, &table, &inserted.id).await;
    let lengths: Vec<_> = rows.iter().map(|r| (r.1, r.2 > 0)).collect();
    assert_eq!(lengths, [(32, true), (17, false), (17, false)], "{rows:?}");
    // The capped insert likewise (another subject's).
    let capped = SessionRecord {
        subject: Some("capper".into()),
        ..planner_record()
    };
    let cap = tower_hmac_session::SubjectCap {
        max_sessions: 10,
        except: None,
        revocation: tower_hmac_session::RevocationReason::SessionLimit.into(),
    };
    let evicted = store
        .insert_capped(&capped, common::T0, &cap)
        .await
        .unwrap();
    assert!(evicted.is_empty());
    let capped_rows = rows_of(&pool, &table, &capped.id).await;
    let lengths: Vec<_> = capped_rows.iter().map(|r| (r.1, r.2 > 0)).collect();
    assert_eq!(
        lengths,
        [(32, true), (17, false), (17, false)],
        "{capped_rows:?}"
    );

    // A data write: slot 0's row only.
    let data = written(&inserted, 1);
    assert!(store.replace(&inserted, &data, common::T0).await.unwrap());
    let after = rows_of(&pool, &table, &data.id).await;
    assert_ne!(after[0].0, rows[0].0, "slot 0's row was not written");
    assert_eq!(after[1..], rows[1..], "rows without a key were written");
    assert_eq!(resolved(&store, &data).await, [Some(data.clone())]);

    // A rotation: the old key's row (slot 1) joins in.
    let rotation = rotated(&data);
    assert!(store.replace(&data, &rotation, common::T0).await.unwrap());
    let rows = rows_of(&pool, &table, &data.id).await;
    assert_ne!(rows[0].0, after[0].0);
    assert_ne!(rows[1].0, after[1].0);
    assert_eq!((rows[1].1, rows[1].2 > 0), (32, true), "{rows:?}");
    assert_eq!(rows[2], after[2], "slot 2's row was written");
    let both = vec![Some(rotation.clone()); 2];
    assert_eq!(resolved(&store, &rotation).await, both);

    // A data write with a previous key: both rows holding one.
    let data = written(&rotation, 2);
    assert!(store.replace(&rotation, &data, common::T0).await.unwrap());
    let after = rows_of(&pool, &table, &data.id).await;
    assert_ne!(after[0].0, rows[0].0);
    assert_ne!(after[1].0, rows[1].0);
    assert_eq!(after[2], rows[2]);
    assert_eq!(resolved(&store, &data).await, vec![Some(data.clone()); 2]);

    // A re-rotation: the unconfirmed current key moves to slot 2, a new
    // one takes slot 0; all three rows.
    let rerotated = SessionRecord {
        generation: data.generation + 1,
        superseded: Some(data.current),
        current: Credential {
            lookup_key: random_lookup_key(),
            key_version: KeyVersion(1),
        },
        ..data.clone()
    };
    assert!(store.replace(&data, &rerotated, common::T0).await.unwrap());
    let rows = rows_of(&pool, &table, &data.id).await;
    for (slot, (before, now)) in after.iter().zip(&rows).enumerate() {
        assert_ne!(before.0, now.0, "slot {slot}'s row was not written");
        assert_eq!((now.1, now.2 > 0), (32, true), "{rows:?}");
    }
    assert_eq!(
        resolved(&store, &rerotated).await,
        vec![Some(rerotated.clone()); 3]
    );

    // A renew: the other keys' rows are emptied; their keys resolve nothing.
    let renewed = SessionRecord {
        generation: rerotated.generation + 1,
        previous: None,
        superseded: None,
        current: Credential {
            lookup_key: random_lookup_key(),
            key_version: KeyVersion(1),
        },
        ..rerotated.clone()
    };
    assert!(
        store
            .replace(&rerotated, &renewed, common::T0)
            .await
            .unwrap()
    );
    let rows = rows_of(&pool, &table, &data.id).await;
    let lengths: Vec<_> = rows.iter().map(|r| (r.1, r.2)).collect();
    assert_eq!(lengths[1..], [(17, 0), (17, 0)], "{rows:?}");
    assert_eq!(resolved(&store, &rerotated).await, [None, None, None]);
    assert_eq!(resolved(&store, &renewed).await, [Some(renewed.clone())]);
    let listed = store.list_for_subject("planner", common::T0).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].id, &listed[0].data), (renewed.id, &renewed.data));
    drop_schema(&pool, &schema).await;
}

/// A rotation (two rows) and a data write (one row) from the same stored
/// record, at once: exactly one applies, and it applies whole. Every key of
/// the stored record resolves to it, and the losing rotation's keys stay
/// where they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_racing_a_data_write_applies_whole_or_not_at_all() {
    let Some(pool) = pool("ths-race-rows").await else {
        return;
    };
    let schema = unique("ths_race_rows");
    let store = store_in(&pool, &schema).await;
    let mut current = planner_record();
    store.insert(&current).await.unwrap();
    let (mut rotations, mut writes) = (0, 0);
    for n in 0..40 {
        let (rotation, data) = (rotated(&current), written(&current, n));
        let (a, b) = tokio::join!(
            tokio::spawn({
                let (store, current, rotation) = (store.clone(), current.clone(), rotation.clone());
                async move { store.replace(&current, &rotation, common::T0).await }
            }),
            tokio::spawn({
                let (store, current, data) = (store.clone(), current.clone(), data.clone());
                async move { store.replace(&current, &data, common::T0).await }
            }),
        );
        let (a, b) = (a.unwrap().unwrap(), b.unwrap().unwrap());
        assert!(a != b, "round {n}: both or neither applied ({a}, {b})");
        let winner = if a { rotation.clone() } else { data };
        rotations += usize::from(a);
        writes += usize::from(b);
        let stored = store.get_active(&current.id, common::T0).await.unwrap();
        assert_eq!(stored.as_deref(), Some(&winner), "round {n}");
        let every = resolved(&store, &winner).await;
        assert!(
            every.iter().all(|r| r.as_ref() == Some(&winner)),
            "round {n}: {every:?}"
        );
        if !a {
            // The rotation's new key was never written.
            assert_eq!(resolved(&store, &rotation).await[0], None, "round {n}");
        }
        current = winner;
        // Start each round from one key, so that both kinds of write stay
        // possible: a renew drops the previous key.
        if current.previous.is_some() {
            let renewed = SessionRecord {
                generation: current.generation + 1,
                previous: None,
                ..current.clone()
            };
            assert!(store.replace(&current, &renewed, common::T0).await.unwrap());
            current = renewed;
        }
    }
    assert_eq!(rotations + writes, 40);
    drop_schema(&pool, &schema).await;
}

/// 20 concurrent logins of one user through the router, with a cap of 3:
/// never more than 3 live sessions, and each of the others revoked as
/// `session_limit`, not deleted and not left live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_logins_of_one_user_stay_within_the_cap() {
    let config = SessionConfig::builder()
        .max_sessions_per_subject(Some(3))
        .build()
        .unwrap();
    let Some((h, pool, schema)) = one_instance(config).await else {
        return;
    };
    let logins: Vec<_> = (0..20)
        .map(|_| {
            let router = h.router.clone();
            tokio::spawn(async move {
                let res = router
                    .oneshot(common::request("POST", "/login?user=alice", None))
                    .await
                    .unwrap();
                TestResponse::from(res).await
            })
        })
        .collect();
    let mut secrets = Vec::new();
    for login in logins {
        let res = login.await.unwrap();
        assert_eq!(res.status, StatusCode::OK, "{}", res.body);
        secrets.push(res.new_secret().expect("a login sets the cookie"));
    }
    let live = h.manager.list_for_subject("alice").await.unwrap();
    assert_eq!(live.len(), 3, "{live:?}");
    let reasons: Vec<(Option<String>, i64)> = sqlx::query_as(&format!(
        "SELECT revoked_reason, count(*) FROM \"{schema}\".{TABLE} WHERE subject = 'alice' \
         AND slot = 0 GROUP BY revoked_reason ORDER BY revoked_reason NULLS FIRST"
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        reasons,
        [(None, 3), (Some("session_limit".to_owned()), 17)],
        "live and evicted sessions"
    );
    // The live ones answer; the evicted ones are anonymous.
    let mut served = 0;
    for secret in &secrets {
        let res = h.call("GET", "/maybe", Some(secret)).await;
        assert_eq!(res.status, StatusCode::OK);
        if res.body == "alice" {
            served += 1;
        }
    }
    assert_eq!(served, 3);
    drop_schema(&pool, &schema).await;
}

/// A role with no `CREATE` privilege anywhere connects to a schema migrated
/// before (PostgreSQL checks the privilege even for `IF NOT EXISTS`), and
/// its sessions work.
#[tokio::test]
async fn a_role_without_create_privilege_uses_a_migrated_schema() {
    let Some(admin) = pool("ths-privilege-admin").await else {
        return;
    };
    let schema = unique("ths_privilege");
    store_in(&admin, &schema).await;
    let role = unique("ths_app");
    sqlx::raw_sql(&format!(
        "CREATE ROLE \"{role}\" LOGIN; \
         GRANT USAGE ON SCHEMA \"{schema}\" TO \"{role}\"; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA \"{schema}\" \
         TO \"{role}\";"
    ))
    .execute(&admin)
    .await
    .unwrap();
    let (on_schema, on_database): (bool, bool) = sqlx::query_as(
        "SELECT has_schema_privilege($1, $2, 'CREATE'), \
         has_database_privilege($1, current_database(), 'CREATE')",
    )
    .bind(&role)
    .bind(&schema)
    .fetch_one(&admin)
    .await
    .unwrap();
    assert!(!on_schema && !on_database, "the role can create");

    let options = PgConnectOptions::from_str(&url())
        .unwrap()
        .username(&role)
        .application_name("ths-privilege");
    let app_pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .unwrap();
    let store = PostgresStore::in_schema(app_pool.clone(), &schema).unwrap();
    store.migrate().await.unwrap();
    // Spawned, too: the migration's future is `Send`.
    let again = store.clone();
    tokio::spawn(async move { again.migrate().await })
        .await
        .unwrap()
        .unwrap();
    let config = SessionConfig::builder()
        .max_sessions_per_subject(Some(1))
        .build()
        .unwrap();
    let h = Harness::with_store(store, config, ring(1, &[1]));
    let first = h.login("alice").await;
    let second = h.login("alice").await;
    assert_eq!(h.call("GET", "/me", Some(&second)).await.body, "alice");
    assert_eq!(
        h.call("GET", "/me", Some(&first)).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        h.call("POST", "/logout", Some(&second)).await.status,
        StatusCode::OK
    );
    app_pool.close().await;

    // A schema the role may not create is refused, not half made.
    let options = PgConnectOptions::from_str(&url()).unwrap().username(&role);
    let app_pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap();
    let missing = unique("ths_privilege_missing");
    let refused = PostgresStore::in_schema(app_pool.clone(), &missing)
        .unwrap()
        .migrate()
        .await;
    assert!(
        matches!(refused, Err(StoreError::Backend { .. })),
        "{refused:?}"
    );
    app_pool.close().await;

    drop_schema(&admin, &schema).await;
    sqlx::raw_sql(&format!("DROP OWNED BY \"{role}\"; DROP ROLE \"{role}\""))
        .execute(&admin)
        .await
        .unwrap();
}

/// Purging more than one batch (1000) deletes every expired and every
/// revoked record, and nothing live.
#[tokio::test]
async fn purge_removes_more_than_one_batch() {
    let Some(pool) = pool("ths-purge").await else {
        return;
    };
    let schema = unique("ths_purge");
    let store = store_in(&pool, &schema).await;
    let table = format!("\"{schema}\".{TABLE}");
    // 1500 expired at T0 + 1 hour, 1200 revoked but not expired, 2 live.
    let t0 = common::T0
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let insert = insert_rows_per_slot(
        &table,
        "id, generation, subject, created_at, last_seen_at, expires_at, \
         absolute_expires_at, current_key_version, revoked_at, revoked_reason",
        &format!(
            "SELECT substring(sha256(('id' || i)::bytea) FROM 1 FOR 16), 0, 'user' || (i % 50), \
         t, t, t + interval '1 hour', t + interval '1 day', 1, \
         CASE WHEN i > 1500 THEN t END, CASE WHEN i > 1500 THEN 'admin' END, \
         sha256(('c' || i)::bytea), NULL::bytea, NULL::bytea \
         FROM generate_series(1, 2700) AS i, (SELECT '{t0}'::timestamptz AS t) AS t0"
        ),
    );
    let inserted = sqlx::query(&insert).execute(&pool).await.unwrap();
    assert_eq!(inserted.rows_affected(), 3 * 2700);
    let live = [planner_record(), planner_record()].map(|mut r| {
        r.expires_at = common::T0 + time::Duration::hours(3);
        r
    });
    for r in &live {
        store.insert(r).await.unwrap();
    }
    let later = common::T0 + time::Duration::hours(2);
    assert_eq!(store.purge_expired(later).await.unwrap(), 2700);
    let left: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 3 * 2);
    assert_eq!(store.purge_expired(later).await.unwrap(), 0);
    drop_schema(&pool, &schema).await;
}

/// A revocation whose actor breaks the rules is refused before it is
/// written.
#[tokio::test]
async fn an_invalid_revocation_actor_is_refused() {
    let Some(pool) = pool("ths-actor").await else {
        return;
    };
    let schema = unique("ths_actor");
    let store = store_in(&pool, &schema).await;
    let r = planner_record();
    store.insert(&r).await.unwrap();
    let bad = tower_hmac_session::Revocation::new(tower_hmac_session::RevocationReason::Admin)
        .by("ops\n");
    let one = store.revoke(&r.id, None, common::T0, &bad).await;
    assert!(matches!(one, Err(StoreError::Invalid(_))), "{one:?}");
    let all = store
        .revoke_all_for_subject("planner", common::T0, &bad, None)
        .await;
    assert!(matches!(all, Err(StoreError::Invalid(_))), "{all:?}");
    assert!(store.get_active(&r.id, common::T0).await.unwrap().is_some());
    drop_schema(&pool, &schema).await;
}

/// Compiled, never run (it would migrate `public`): `connect`'s future is
/// `Send` for a `'static` spawn.
#[allow(dead_code)]
fn connect_is_spawnable(url: String) -> tokio::task::JoinHandle<Result<PostgresStore, StoreError>> {
    tokio::spawn(async move { PostgresStore::connect(&url).await })
}

/// A replace of a record expiring `expires_in` after `T0`, at `T0`, that
/// PostgreSQL rolls back as a deadlock victim. Another transaction holds
/// slot 2's row of the record while the store's replace, having locked slot
/// 0's, waits for it; that transaction then asks for slot 0's row: a
/// deadlock. The store's connections (application `app`) check for one
/// after 2 s, the other transaction's after 60 s, so the store's statement
/// is the one rolled back; the store runs it again, which waits for the
/// other transaction. Setting `deadlock_timeout` needs a superuser, as the
/// default URL's `postgres` is. The store, its pool and schema, the record
/// and its successor, and what the replace returned; `None` (a skip) when
/// the server is unreachable outside CI.
async fn deadlocked_replace(
    app: &str,
    expires_in: time::Duration,
) -> Option<(
    PostgresStore,
    PgPool,
    String,
    SessionRecord,
    SessionRecord,
    Result<bool, StoreError>,
)> {
    const STORE_CHECKS_AFTER: Duration = Duration::from_secs(2);
    let options = PgConnectOptions::from_str(&url())
        .unwrap()
        .application_name(app)
        .options([("deadlock_timeout", "2s")]);
    let pool = match PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
    {
        Ok(pool) => pool,
        Err(error) => {
            common::unreachable("PostgreSQL", &url(), &error);
            return None;
        }
    };
    let holder = pool_of(&format!("{app}-holder"), 1).await?;
    let schema = unique("ths_deadlock");
    let store = store_in(&pool, &schema).await;
    let table = format!("\"{schema}\".{TABLE}");
    // A superseded key: the replace writes slot 2's row as well.
    let current = SessionRecord {
        expires_at: common::T0 + expires_in,
        superseded: Some(Credential {
            lookup_key: random_lookup_key(),
            key_version: KeyVersion(1),
        }),
        ..planner_record()
    };
    store.insert(&current).await.unwrap();
    let next = SessionRecord {
        generation: 1,
        ..current.clone()
    };
    let id = current.id.as_bytes().to_vec();

    let mut tx = holder.begin().await.unwrap();
    sqlx::raw_sql("SET LOCAL deadlock_timeout = '60s'")
        .execute(&mut *tx)
        .await
        .unwrap();
    let lock_sql = format!("SELECT 1 FROM {table} WHERE id = $1 AND slot = $2 FOR UPDATE");
    let lock = |slot: i32| sqlx::query(&lock_sql).bind(id.clone()).bind(slot);
    lock(2).execute(&mut *tx).await.unwrap();
    let write = tokio::spawn({
        let (store, current, next) = (store.clone(), current.clone(), next.clone());
        async move { store.replace(&current, &next, common::T0).await }
    });
    // The replace waits for slot 2's row.
    assert!(
        waiting_on_lock(&pool, app, 1).await,
        "the replace never waited for the held row"
    );
    // Slot 0's row, which the replace holds: granted once PostgreSQL rolls
    // the replace's statement back, not before its deadlock check.
    let asked = std::time::Instant::now();
    lock(0).execute(&mut *tx).await.unwrap();
    let waited = asked.elapsed();
    tx.commit().await.unwrap();
    assert!(
        waited >= STORE_CHECKS_AFTER - Duration::from_millis(500),
        "slot 0's row was free after {waited:?}: no deadlock to resolve"
    );
    let applied = tokio::time::timeout(Duration::from_secs(30), write)
        .await
        .expect("the replace finished")
        .unwrap();
    Some((store, pool, schema, current, next, applied))
}

/// A write PostgreSQL rolls back as a deadlock victim runs again and
/// applies.
#[tokio::test]
async fn a_write_chosen_as_a_deadlock_victim_runs_again() {
    let Some((store, pool, schema, current, next, applied)) =
        deadlocked_replace("ths-deadlock", time::Duration::hours(1)).await
    else {
        return;
    };
    assert!(matches!(applied, Ok(true)), "{applied:?}");
    assert_eq!(
        store
            .get_active(&current.id, common::T0)
            .await
            .unwrap()
            .as_deref(),
        Some(&next)
    );
    drop_schema(&pool, &schema).await;
}

/// The run again checks the record at its own time: a session that ended
/// while the write waited out the deadlock (1 s after the write's time; the
/// deadlock takes 2) is not written.
#[tokio::test]
async fn a_write_run_again_after_a_deadlock_does_not_revive_an_ended_session() {
    let Some((store, pool, schema, current, _, applied)) =
        deadlocked_replace("ths-deadlock-ended", time::Duration::seconds(1)).await
    else {
        return;
    };
    assert!(matches!(applied, Ok(false)), "{applied:?}");
    assert_eq!(
        store
            .get_active(&current.id, common::T0)
            .await
            .unwrap()
            .as_deref(),
        Some(&current),
        "unchanged"
    );
    drop_schema(&pool, &schema).await;
}
