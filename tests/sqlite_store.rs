//! `SqliteStore`: the conformance suite, persistence across a restart, the
//! rotation scenarios through a real Router, and corrupt rows.
#![cfg(all(feature = "sqlite", feature = "conformance"))]

mod common;

use std::path::PathBuf;

use common::Harness;
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

/// A harness on a fresh database file (kept alive by the returned guard).
async fn harness(config: SessionConfig) -> (Harness, SqliteStore, TempDb) {
    let db = TempDb::new();
    let store = SqliteStore::open(&db.0).await.unwrap();
    let h = Harness::with_store(store.clone(), config, common::ring(1, &[1]));
    (h, store, db)
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
        sqlx::query_scalar("SELECT version FROM tower_hmac_session_records_migrations")
            .fetch_all(again.pool())
            .await
            .unwrap();
    assert_eq!(versions, [1]);
    let unique: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND sql LIKE 'CREATE UNIQUE%' \
         ORDER BY name",
    )
    .fetch_all(again.pool())
    .await
    .unwrap();
    assert_eq!(
        unique,
        [
            "tower_hmac_session_records_current_lookup_key",
            "tower_hmac_session_records_previous_lookup_key",
            "tower_hmac_session_records_superseded_lookup_key",
        ]
    );
}

#[tokio::test]
async fn a_session_survives_closing_and_reopening_the_database() {
    let db = TempDb::new();
    let secret = {
        let store = SqliteStore::open(&db.0).await.unwrap();
        let h = Harness::with_store(
            store.clone(),
            SessionConfig::default(),
            common::ring(1, &[1]),
        );
        let secret = h.login("alice").await;
        store.pool().close().await;
        secret
    };
    let store = SqliteStore::open(&db.0).await.unwrap();
    let h = Harness::with_store(store, SessionConfig::default(), common::ring(1, &[1]));
    let res = h.call("GET", "/me", Some(&secret)).await;
    assert_eq!((res.status, res.body.as_str()), (StatusCode::OK, "alice"));
}

#[tokio::test]
async fn a_lost_rotation_response_keeps_the_session() {
    let (h, _store, _db) = harness(common::rotating()).await;
    common::lost_rotation_response_keeps_the_session(&h).await;
}

#[tokio::test]
async fn a_rotation_write_that_times_out_converges() {
    let (h, _store, _db) = harness(common::rotating()).await;
    common::rotation_write_that_times_out_converges(&h).await;
}

#[tokio::test]
async fn a_copied_cookie_after_a_confirmed_rotation_is_reuse() {
    let (h, _store, _db) = harness(common::rotating()).await;
    common::copied_cookie_after_confirmed_rotation_is_reuse(&h).await;
}

#[tokio::test]
async fn a_superseded_secret_is_reuse() {
    let (h, _store, _db) = harness(common::rotating()).await;
    common::superseded_secret_is_reuse(&h).await;
}

#[tokio::test]
async fn corrupt_rows_are_reported_as_corruption() {
    let (h, store, _db) = harness(SessionConfig::default()).await;
    let cases = [
        "data = 'not json'",
        "data = '[1, 2]'",
        r#"data = '{"a": "\u0000"}'"#,
        "subject = ''",
        "subject = NULL",
        "revoked_reason = 'bogus'",
        "previous_key_version = 3",
        "superseded_key_version = 1",
        "current_key_version = -5",
        "generation = -1",
        "idle_timeout_secs = 0",
        "persistent = 2",
        "client_ip = 'localhost'",
        "expires_at = absolute_expires_at + 1",
        "id = x'0102'",
        "created_at = 9223372036854775807",
        "last_seen_at = -9223372036854775808",
        "previous_lookup_key = x'0102', previous_key_version = 1, previous_rotated_at = 0",
    ];
    common::assert_damage_is_corruption(&h, &cases, |user, _id, set| {
        let pool = store.pool().clone();
        async move {
            sqlx::query(&format!(
                "UPDATE tower_hmac_session_records SET {set} WHERE subject = ?1"
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

#[tokio::test]
async fn corruption_names_the_record_but_never_its_lookup_key() {
    let (h, store, _db) = harness(SessionConfig::default()).await;
    let issued = h
        .manager
        .create_session("mallory", Default::default())
        .await
        .unwrap();
    sqlx::query("UPDATE tower_hmac_session_records SET persistent = 7")
        .execute(store.pool())
        .await
        .unwrap();
    let candidates = h.manager.key_ring().candidates([&issued.secret]);
    let error = store
        .find_active(&candidates, common::T0)
        .await
        .unwrap_err();
    let StoreError::Corrupt { id, .. } = &error else {
        panic!("{error:?}");
    };
    assert_eq!(*id, Some(issued.record.id));
    let text = format!("{error} {error:?}");
    let key = h
        .manager
        .key_ring()
        .current_credential(&issued.secret)
        .lookup_key;
    let key = hex_of(key.as_bytes());
    assert!(!text.to_lowercase().contains(&key), "{text}");
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_lookup_key() -> tower_hmac_session::LookupKey {
    let mut bytes = [0; 32];
    bytes[..16].copy_from_slice(SessionId::generate().as_bytes());
    bytes[16..].copy_from_slice(SessionId::generate().as_bytes());
    tower_hmac_session::LookupKey::from_bytes(bytes)
}

/// A live session of `subject` at `T0` with a fresh lookup key.
fn record(subject: &str) -> tower_hmac_session::SessionRecord {
    let t0 = common::T0;
    tower_hmac_session::SessionRecord {
        id: SessionId::generate(),
        generation: 0,
        subject: Some(subject.into()),
        created_at: t0,
        authenticated_at: Some(t0),
        last_seen_at: t0,
        expires_at: t0 + time::Duration::hours(1),
        absolute_expires_at: t0 + time::Duration::days(1),
        idle_timeout: std::time::Duration::from_secs(3600),
        persistent: false,
        access_expires_at: t0 + time::Duration::minutes(15),
        current: tower_hmac_session::Credential {
            lookup_key: random_lookup_key(),
            key_version: tower_hmac_session::KeyVersion(1),
        },
        previous: None,
        superseded: None,
        revoked: None,
        user_agent: None,
        client_ip: None,
        data: Default::default(),
    }
}

#[tokio::test]
async fn a_stale_replace_is_not_applied_even_when_its_new_key_is_taken() {
    let db = TempDb::new();
    let store = SqliteStore::open(&db.0).await.unwrap();
    let (mine, theirs) = (record("alice"), record("bob"));
    store.insert(&mine).await.unwrap();
    store.insert(&theirs).await.unwrap();
    let successor = |r: &tower_hmac_session::SessionRecord| tower_hmac_session::SessionRecord {
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
}

/// The uniqueness check of a replace covers every key of the replacement,
/// not only those the caller's `current` lacks: a `current` that claims to
/// hold another record's key cannot smuggle it into a second record.
#[tokio::test]
async fn a_replace_checks_every_key_whatever_current_claims() {
    let db = TempDb::new();
    let store = SqliteStore::open(&db.0).await.unwrap();
    let (mine, theirs) = (record("alice"), record("bob"));
    store.insert(&mine).await.unwrap();
    store.insert(&theirs).await.unwrap();
    let previous = tower_hmac_session::PreviousCredential {
        credential: theirs.current,
        rotated_at: common::T0,
        valid_until: None,
    };
    let mut claimed = mine.clone();
    claimed.previous = Some(previous);
    let mut next = tower_hmac_session::SessionRecord {
        generation: mine.generation + 1,
        ..mine.clone()
    };
    next.previous = Some(previous);
    let result = store.replace(&claimed, &next, common::T0).await;
    assert!(matches!(result, Err(StoreError::Conflict)), "{result:?}");
    let candidates = [tower_hmac_session::Candidate {
        key_version: theirs.current.key_version,
        lookup_key: theirs.current.lookup_key,
        value_index: 0,
    }];
    let found = store.find_active(&candidates, common::T0).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].record.id, theirs.id);
}

/// Purging more than one batch (1000) deletes every expired and every
/// revoked record, and nothing live.
#[tokio::test]
async fn purge_removes_more_than_one_batch() {
    let db = TempDb::new();
    let store = SqliteStore::open(&db.0).await.unwrap();
    let t0 = common::T0;
    let micros = (t0.unix_timestamp_nanos() / 1000) as i64;
    let hour = 3_600_000_000_i64;
    // 1500 expired at T0 + 1 hour, 1200 revoked but not expired.
    let inserted = sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2700) \
         INSERT INTO tower_hmac_session_records (id, generation, subject, created_at, \
         authenticated_at, last_seen_at, expires_at, absolute_expires_at, idle_timeout_secs, \
         persistent, access_expires_at, current_lookup_key, current_key_version, revoked_at, \
         revoked_reason, data) \
         SELECT randomblob(16), 0, 'user' || (i % 50), ?1, ?1, ?1, ?1 + ?2, ?1 + 24 * ?2, \
         3600, 0, ?1, randomblob(32), 1, CASE WHEN i > 1500 THEN ?1 END, \
         CASE WHEN i > 1500 THEN 'admin' END, '{}' FROM n",
    )
    .bind(micros)
    .bind(hour)
    .execute(store.pool())
    .await
    .unwrap();
    assert_eq!(inserted.rows_affected(), 2700);
    let live = [record("alice"), record("bob")].map(|mut r| {
        r.expires_at = t0 + time::Duration::hours(3);
        r
    });
    for r in &live {
        store.insert(r).await.unwrap();
    }
    let later = t0 + time::Duration::hours(2);
    assert_eq!(store.purge_expired(later).await.unwrap(), 2700);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM tower_hmac_session_records")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(left, 2);
    assert_eq!(store.purge_expired(later).await.unwrap(), 0);
}

/// A revocation whose actor breaks the rules is refused before it is
/// written.
#[tokio::test]
async fn an_invalid_revocation_actor_is_refused() {
    let db = TempDb::new();
    let store = SqliteStore::open(&db.0).await.unwrap();
    let r = record("alice");
    store.insert(&r).await.unwrap();
    let bad =
        tower_hmac_session::Revocation::new(tower_hmac_session::RevocationReason::Admin).by("");
    let one = store.revoke(&r.id, None, common::T0, &bad).await;
    assert!(matches!(one, Err(StoreError::Invalid(_))), "{one:?}");
    let all = store
        .revoke_all_for_subject("alice", common::T0, &bad, None)
        .await;
    assert!(matches!(all, Err(StoreError::Invalid(_))), "{all:?}");
    assert!(store.get_active(&r.id, common::T0).await.unwrap().is_some());
}

/// Every commit is synced (`synchronous = FULL`): a logout is on disk
/// before it returns.
#[tokio::test]
async fn commits_are_fully_synchronous() {
    let db = TempDb::new();
    let store = SqliteStore::open(&db.0).await.unwrap();
    let mut conn = store.pool().acquire().await.unwrap();
    let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!((journal.as_str(), synchronous), ("wal", 2));
}

/// An in-memory database lives as long as a connection to it: the pool
/// holds exactly one, for good, so sessions do not vanish when connections
/// idle out, whichever way the URL asks for memory.
#[tokio::test]
async fn an_in_memory_database_keeps_a_connection() {
    for url in [
        "sqlite::memory:",
        "sqlite://:memory:",
        "sqlite://x?mode=memory",
    ] {
        let store = SqliteStore::connect(url).await.unwrap();
        let options = store.pool().options();
        assert_eq!(options.get_min_connections(), 1, "{url}");
        assert_eq!(options.get_max_connections(), 1, "{url}");
        assert_eq!(options.get_idle_timeout(), None, "{url}");
        assert_eq!(options.get_max_lifetime(), None, "{url}");
        let r = record("alice");
        store.insert(&r).await.expect(url);
        assert!(store.get_active(&r.id, common::T0).await.unwrap().is_some());
    }
    let db = TempDb::new();
    let file = SqliteStore::connect(&format!("sqlite://{}?mode=rwc", db.0.display()))
        .await
        .unwrap();
    assert!(file.pool().options().get_idle_timeout().is_some());
}

/// A capped login through the router on SQLite: the oldest session goes,
/// revoked as `session_limit`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_logins_of_one_user_stay_within_the_cap() {
    let config = SessionConfig::builder()
        .max_sessions_per_subject(Some(3))
        .build()
        .unwrap();
    let (h, store, _db) = harness(config).await;
    let logins: Vec<_> = (0..12)
        .map(|_| {
            let router = h.router.clone();
            tokio::spawn(async move {
                use tower::ServiceExt as _;
                let res = router
                    .oneshot(common::request("POST", "/login?user=alice", None))
                    .await
                    .unwrap();
                common::TestResponse::from(res).await
            })
        })
        .collect();
    for login in logins {
        let res = login.await.unwrap();
        assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    }
    assert_eq!(h.manager.list_for_subject("alice").await.unwrap().len(), 3);
    let reasons: Vec<(Option<String>, i64)> = sqlx::query_as(
        "SELECT revoked_reason, count(*) FROM tower_hmac_session_records \
         GROUP BY revoked_reason ORDER BY revoked_reason NULLS FIRST",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(reasons, [(None, 3), (Some("session_limit".to_owned()), 9)]);
}

/// The constructors and the migration can be spawned (their futures are
/// `Send`).
#[tokio::test]
async fn the_store_futures_are_send() {
    let db = TempDb::new();
    let store = tokio::spawn(SqliteStore::open(db.0.clone()))
        .await
        .unwrap()
        .unwrap();
    let again = store.clone();
    tokio::spawn(async move { again.migrate().await })
        .await
        .unwrap()
        .unwrap();
    tokio::spawn(async { SqliteStore::connect("sqlite::memory:").await.map(drop) })
        .await
        .unwrap()
        .unwrap();
}
