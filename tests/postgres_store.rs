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

use common::{Harness, ring, unique};
use http::StatusCode;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
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

fn rotating() -> SessionConfig {
    SessionConfig::builder()
        .access_ttl(Some(Duration::from_secs(900)))
        .rotation_grace(Duration::from_secs(60))
        .build()
        .unwrap()
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
    let secret = a.login("alice").await;
    assert_eq!(b.call("GET", "/me", Some(&secret)).await.body, "alice");
    let res = b.call("POST", "/logout", Some(&secret)).await;
    assert!(res.clears_cookie());
    assert_eq!(
        a.call("GET", "/me", Some(&secret)).await.status,
        StatusCode::UNAUTHORIZED
    );
    drop_schema(&pool, &schema).await;
}

#[tokio::test]
async fn a_rotation_through_one_instance_is_seen_by_the_other() {
    let Some((a, b, pool, schema)) = two_instances(rotating()).await else {
        return;
    };
    let old = a.login("alice").await;
    a.advance(901);
    b.advance(901);
    let new = b
        .call("GET", "/me", Some(&old))
        .await
        .new_secret()
        .expect("rotated");
    assert_eq!(a.call("GET", "/me", Some(&new)).await.body, "alice");
    let in_grace = a.call("GET", "/me", Some(&old)).await;
    assert_eq!(in_grace.status, StatusCode::OK);
    assert!(in_grace.raw_set_cookies.is_empty());
    a.advance(61);
    b.advance(61);
    // A replay of the old secret through A revokes the session for B too.
    assert!(a.call("GET", "/maybe", Some(&old)).await.clears_cookie());
    assert_eq!(
        b.call("GET", "/me", Some(&new)).await.status,
        StatusCode::UNAUTHORIZED
    );
    drop_schema(&pool, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_rotation_through_both_instances_has_one_winner() {
    let Some((a, b, pool, schema)) = two_instances(rotating()).await else {
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

#[tokio::test]
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

    // The pool's dead connections fail once each, as 503s that change no
    // cookie; then fresh connections serve the same session again.
    let mut unavailable = 0;
    let mut recovered = false;
    for _ in 0..12 {
        let res = h.call("GET", "/me", Some(&secret)).await;
        assert!(res.raw_set_cookies.is_empty());
        match res.status {
            StatusCode::SERVICE_UNAVAILABLE => unavailable += 1,
            StatusCode::OK => {
                assert_eq!(res.body, "alice");
                recovered = true;
                break;
            }
            other => panic!("unexpected {other}: {}", res.body),
        }
    }
    assert!(unavailable >= 1, "the lost connection was not reported");
    assert!(recovered, "the store did not recover");
    drop_schema(&admin, &schema).await;
}
