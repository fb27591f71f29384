//! `PostgresStore` against a real server: the conformance suite, two app
//! instances on one database, corrupt rows, and a lost connection.
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
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use tower::ServiceExt as _;
use tower_hmac_session::SessionConfig;
use tower_hmac_session::store::PostgresStore;

fn url() -> String {
    std::env::var("TOWER_HMAC_SESSION_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A pool whose connections carry `application_name`, or `None` (a skip)
/// when the server is unreachable outside CI.
async fn pool(application_name: &str) -> Option<PgPool> {
    let options = PgConnectOptions::from_str(&url())
        .unwrap()
        .application_name(application_name);
    match PgPoolOptions::new()
        .max_connections(5)
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

async fn drop_schema(pool: &PgPool, schema: &str) {
    sqlx::raw_sql(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .execute(pool)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_passes_the_conformance_suite() {
    let Some(pool) = pool("ths-conformance").await else {
        return;
    };
    let mut schemas = Vec::new();
    tower_hmac_session::conformance::run(|| {
        let schema = unique("ths_conformance");
        schemas.push(schema.clone());
        let pool = pool.clone();
        async move { store_in(&pool, &schema).await }
    })
    .await;
    for schema in schemas {
        drop_schema(&pool, &schema).await;
    }
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
        "SELECT version FROM \"{schema}\".tower_hmac_session_migrations"
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(versions, [1]);
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes WHERE schemaname = $1 ORDER BY indexname",
    )
    .bind(&schema)
    .fetch_all(&pool)
    .await
    .unwrap();
    for wanted in [
        "current_lookup_key",
        "previous_lookup_key",
        "subject",
        "expires_at",
    ] {
        assert!(
            indexes.iter().any(|i| i.ends_with(wanted)),
            "no index on {wanted}: {indexes:?}"
        );
    }
    assert!(PostgresStore::in_schema(pool.clone(), "Robert'); DROP TABLE x;--").is_err());
    drop_schema(&pool, &schema).await;
}

/// Two app instances: separate pools and managers on one schema.
async fn two_instances(config: SessionConfig) -> Option<(Harness, Harness, PgPool, String)> {
    let pool_a = pool("ths-instance-a").await?;
    let pool_b = pool("ths-instance-b").await?;
    let schema = unique("ths_instances");
    let a = Harness::with_store(
        store_in(&pool_a, &schema).await,
        config.clone(),
        ring(1, &[1]),
    );
    let b = Harness::with_store(store_in(&pool_b, &schema).await, config, ring(1, &[1]));
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
    let cases = [
        "attributes = '[1, 2]'::jsonb",
        "attributes = '\"text\"'::jsonb",
        "subject = ''",
        "revoked_reason = 'bogus'",
        "previous_key_version = 3",
        "current_key_version = -5",
        "current_key_version = 5000000000",
        "expires_at = absolute_expires_at + interval '1 second'",
        "id = '\\x0102'::bytea",
        "previous_lookup_key = '\\x0102'::bytea, previous_key_version = 1, previous_valid_until = now()",
    ];
    common::assert_damage_is_corruption(&h, &cases, |user, _id, set| {
        let (pool, schema) = (pool.clone(), schema.clone());
        async move {
            sqlx::query(&format!(
                "UPDATE \"{schema}\".tower_hmac_sessions SET {set} WHERE subject = $1"
            ))
            .bind(user)
            .execute(&pool)
            .await
            .unwrap();
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
    let mut lock = admin.begin().await.unwrap();
    sqlx::raw_sql(&format!(
        "LOCK TABLE \"{schema}\".tower_hmac_sessions IN ACCESS EXCLUSIVE MODE"
    ))
    .execute(&mut *lock)
    .await
    .unwrap();
    let in_flight = tokio::spawn(h.router.clone().oneshot(common::request(
        "GET",
        "/me",
        Some(&secret),
    )));
    let mut waiting = false;
    for _ in 0..500 {
        waiting = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity \
             WHERE application_name = $1 AND wait_event_type = 'Lock')",
        )
        .bind(&name)
        .fetch_one(&admin)
        .await
        .unwrap();
        if waiting {
            break;
        }
        // Polling the server's own state: there is no clock to inject here.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(waiting, "the lookup never reached the server");
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
