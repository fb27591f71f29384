//! Every public future can be handed to `tokio::spawn`: a compile-time
//! check (a future that is not `Send` fails to build this file), run once
//! against the real servers so the futures are not just named but driven.
#![cfg(feature = "memory")]

mod common;

#[cfg(all(feature = "sqlite", feature = "postgres", feature = "redis"))]
use tower_hmac_session::store::{PostgresStore, RedisStore, SqliteStore};
use tower_hmac_session::{Data, MemoryStore, Session, SessionConfig, SessionManager, SessionStore};

fn spawnable<F: std::future::Future + Send + 'static>(future: F) -> F {
    future
}

#[cfg(all(feature = "sqlite", feature = "postgres", feature = "redis"))]
#[cfg(all(feature = "sqlite", feature = "postgres", feature = "redis"))]
#[tokio::test]
async fn store_constructors_and_migrations_are_spawnable() {
    let dir = std::env::temp_dir().join(common::unique("ths-send"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sessions.db");
    let sqlite = tokio::spawn(spawnable(SqliteStore::open(path.clone())))
        .await
        .unwrap()
        .unwrap();
    tokio::spawn(spawnable(async move { sqlite.migrate().await }))
        .await
        .unwrap()
        .unwrap();
    let url = format!("sqlite://{}", path.display());
    tokio::spawn(spawnable(async move {
        SqliteStore::connect(&url).await.map(drop)
    }))
    .await
    .unwrap()
    .unwrap();

    let pg_url = std::env::var("TOWER_HMAC_SESSION_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    match tokio::spawn(spawnable(
        async move { PostgresStore::connect(&pg_url).await },
    ))
    .await
    .unwrap()
    {
        Ok(pg) => tokio::spawn(spawnable(async move { pg.migrate().await }))
            .await
            .unwrap()
            .unwrap(),
        Err(error) => common::unreachable("PostgreSQL", "the default URL", &error),
    }

    let redis_url = std::env::var("TOWER_HMAC_SESSION_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = common::unique("ths-send") + ":";
    let builder = RedisStore::builder(redis_url).prefix(prefix);
    match tokio::spawn(spawnable(builder.connect())).await.unwrap() {
        Ok(redis) => tokio::spawn(spawnable(async move { redis.ping().await }))
            .await
            .unwrap()
            .unwrap(),
        Err(error) => common::unreachable("Redis", "the default URL", &error),
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn manager_operations_are_spawnable() {
    let manager = SessionManager::new(
        MemoryStore::new(),
        common::ring(1, &[1]),
        SessionConfig::default(),
    );
    let m = manager.clone();
    let issued = tokio::spawn(spawnable(async move {
        m.create_session("alice", Data::new()).await
    }))
    .await
    .unwrap()
    .unwrap();
    let m = manager.clone();
    let listed = tokio::spawn(spawnable(async move { m.list_for_subject("alice").await }))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(listed[0].id, issued.record.id);
    let store = manager.store().clone();
    tokio::spawn(spawnable(
        async move { store.purge_expired(common::T0).await },
    ))
    .await
    .unwrap()
    .unwrap();
}

/// Compile-time only: the futures a handler awaits on `Session` are `Send`.
#[allow(dead_code)]
fn session_futures_are_send(session: Session, id: tower_hmac_session::SessionId) {
    fn send<F: std::future::Future + Send>(_: F) {}
    send(session.login("alice"));
    send(session.login_with("alice", tower_hmac_session::LoginOptions::new()));
    send(session.logout());
    send(session.renew());
    send(session.reauthenticate());
    send(session.revoke_device(&id));
    send(session.logout_other_devices());
    send(session.logout_everywhere());
    send(session.devices());
}

/// `PostgresStore::in_schema` takes a `PgPool`: re-exported, so no sqlx
/// dependency of the application's own is needed (compile-time check).
#[cfg(feature = "postgres")]
#[allow(dead_code)]
fn a_pool_can_be_built_with_the_reexported_sqlx(
    pool: tower_hmac_session::store::sqlx::PgPool,
) -> Result<tower_hmac_session::store::PostgresStore, tower_hmac_session::StoreError> {
    tower_hmac_session::store::PostgresStore::in_schema(pool, "auth")
}
