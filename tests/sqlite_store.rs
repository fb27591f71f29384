//! `SqliteStore`: the conformance suite, persistence across a restart, and
//! corrupt rows.
#![cfg(all(feature = "sqlite", feature = "conformance"))]

mod common;

use std::path::PathBuf;

use http::StatusCode;
use tower_hmac_session::store::SqliteStore;
use tower_hmac_session::{SessionConfig, SessionId, SessionStore, StoreError};

/// A fresh database file under the system temp dir, removed on drop.
struct TempDb(PathBuf);

impl TempDb {
    fn new() -> Self {
        let id = SessionId::generate();
        Self(std::env::temp_dir().join(format!("tower-hmac-session-test-{id}.db")))
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut path = self.0.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_passes_the_conformance_suite() {
    let mut dbs = Vec::new();
    tower_hmac_session::conformance::run(|| {
        let db = TempDb::new();
        let path = db.0.clone();
        dbs.push(db);
        async move { SqliteStore::open(path).await.unwrap() }
    })
    .await;
}

#[tokio::test]
async fn migrations_are_idempotent() {
    let db = TempDb::new();
    let store = SqliteStore::open(&db.0).await.unwrap();
    store.migrate().await.unwrap();
    drop(store);
    let again = SqliteStore::open(&db.0).await.unwrap();
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM tower_hmac_session_migrations")
            .fetch_all(again.pool())
            .await
            .unwrap();
    assert_eq!(versions, [1]);
}

#[tokio::test]
async fn a_session_survives_closing_and_reopening_the_database() {
    let db = TempDb::new();
    let secret = {
        let store = SqliteStore::open(&db.0).await.unwrap();
        let h = common::Harness::with_store(
            store.clone(),
            SessionConfig::default(),
            common::ring(1, &[1]),
        );
        let secret = h.login("alice").await;
        store.pool().close().await;
        secret
    };
    let store = SqliteStore::open(&db.0).await.unwrap();
    let h = common::Harness::with_store(store, SessionConfig::default(), common::ring(1, &[1]));
    let res = h.call("GET", "/me", Some(&secret)).await;
    assert_eq!((res.status, res.body.as_str()), (StatusCode::OK, "alice"));
}

#[tokio::test]
async fn corrupt_rows_are_reported_as_corruption() {
    let db = TempDb::new();
    let store = SqliteStore::open(&db.0).await.unwrap();
    let h = common::Harness::with_store(
        store.clone(),
        SessionConfig::default(),
        common::ring(1, &[1]),
    );
    let cases = [
        "attributes = 'not json'",
        "attributes = '[1, 2]'",
        "subject = ''",
        "revoked_reason = 'bogus'",
        "previous_key_version = 3",
        "current_key_version = -5",
        "expires_at = absolute_expires_at + 1",
        "id = x'0102'",
        "created_at = 9223372036854775807",
        "previous_lookup_key = x'0102', previous_key_version = 1, previous_valid_until = 0",
    ];
    common::assert_damage_is_corruption(&h, &cases, |user, _id, set| {
        let pool = store.pool().clone();
        async move {
            sqlx::query(&format!(
                "UPDATE tower_hmac_sessions SET {set} WHERE subject = ?1"
            ))
            .bind(user)
            .execute(&pool)
            .await
            .unwrap();
        }
    })
    .await;
    let listed = store.list_for_subject("user0", common::T0).await;
    assert!(
        matches!(listed, Err(StoreError::Corrupt { .. })),
        "{listed:?}"
    );
}
