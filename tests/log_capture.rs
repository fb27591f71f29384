//! Logs at TRACE level, every target (the crate's and its drivers'), across
//! every flow the crate has: logins, data, touch, rotation, confirmation,
//! re-rotation, re-key after a key-ring change, reuse of a stale and of a
//! superseded secret, logout, device revocation, logging out elsewhere and
//! everywhere, renewal, sessions before login, store outages (errors, hangs
//! cut off by the timeout, writes whose answer was lost) and corrupt
//! records. Sessions are named by id only: no secret issued in any
//! `Set-Cookie`, no lookup key under any key version, no HMAC key byte
//! appears, in any encoding (see `common::faults::Ledger`).
//!
//! The capture is a global subscriber, so it sees every thread (SQLite's
//! worker thread logs sqlx's statements).
//!
//! After every step the test also reads every record the store holds
//! (straight from the backend: the memory store's records, the SQL tables,
//! Redis's values and lookup-key index) and forbids every lookup key in any
//! slot: current, previous, superseded. That covers secrets the test never
//! sees, such as a successor written by a rotation whose response was lost
//! or a login whose answer never came.
//!
//! The flows run on every backend: memory, SQLite (whose driver logs its
//! statements), PostgreSQL and Redis (real servers: a schema or key prefix
//! per test; skipped when unreachable unless `CI=true`, as in
//! `postgres_store.rs` and `redis_store.rs`).
//!
//! `no_secret_leaks.rs` checks stored records and a shorter flow; this file
//! covers the whole set of flows and also lookup keys under every version
//! and the HMAC keys themselves.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::faults::{Fault, FaultyStore, Ledger, Op, contains, global_log, harness_on};
use common::{Harness, TestStore};
use http::StatusCode;
use tower_hmac_session::{MemoryStore, SessionConfig, SessionStore};

fn config() -> SessionConfig {
    SessionConfig::builder()
        .access_ttl(Some(Duration::from_secs(900)))
        .rotation_grace(Duration::from_secs(60))
        .touch_interval(Duration::from_secs(60))
        // Cuts the injected hangs short, with room for a real server's
        // login (three round trips) on a loaded CI machine: 100 ms was not.
        .store_timeout(Some(Duration::from_secs(1)))
        .build()
        .unwrap()
}

/// A harness over `FaultyStore(store)`, keys from `ledger`.
fn harness(store: impl SessionStore, ledger: &Ledger) -> (Harness, Arc<FaultyStore>) {
    let faults = Arc::new(FaultyStore::new(store));
    let h = harness_on(
        Arc::new(TestStore::wrap_arc(faults.clone())),
        config(),
        ledger.ring(1, &[1]),
    );
    (h, faults)
}

/// The records of the flow's store, read straight from its backend.
enum Records {
    Memory(MemoryStore),
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::SqlitePool),
    #[cfg(feature = "postgres")]
    Postgres {
        pool: sqlx::PgPool,
        schema: String,
    },
    #[cfg(feature = "redis")]
    Redis {
        admin: redis::aio::MultiplexedConnection,
        prefix: String,
    },
}

/// A SQL row's lookup-key columns: current, previous, superseded.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
type SlotRow = (Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>);

/// `bytes` as a lookup key; a stored value of another length is no key.
fn key_of(bytes: &[u8]) -> Option<[u8; 32]> {
    bytes.try_into().ok()
}

impl Records {
    /// Adds every lookup key the store holds, in every record's every slot
    /// (and in the lookup-key index where the backend keeps one), to the
    /// ledger.
    async fn add_to(&self, ledger: &Ledger) {
        match self {
            Records::Memory(memory) => ledger.stored_records(&memory.records()),
            #[cfg(feature = "sqlite")]
            Records::Sqlite(pool) => {
                let rows: Vec<SlotRow> = sqlx::query_as(
                    "SELECT current_lookup_key, previous_lookup_key, superseded_lookup_key \
                     FROM tower_hmac_session_records",
                )
                .fetch_all(pool)
                .await
                .unwrap();
                for (current, previous, superseded) in rows {
                    let slots = [Some(current), previous, superseded];
                    for key in slots.iter().flatten().filter_map(|k| key_of(k)) {
                        ledger.stored_lookup_key(key);
                    }
                }
            }
            #[cfg(feature = "postgres")]
            Records::Postgres { pool, schema } => {
                // Each row's own key (its slot's, or a placeholder): every
                // key a record holds has its row.
                let index: Vec<Vec<u8>> = sqlx::query_scalar(&format!(
                    "SELECT lookup_key FROM \"{schema}\".tower_hmac_session_records"
                ))
                .fetch_all(pool)
                .await
                .unwrap();
                for key in index.iter().filter_map(|k| key_of(k)) {
                    ledger.stored_lookup_key(key);
                }
            }
            #[cfg(feature = "redis")]
            Records::Redis { admin, prefix } => {
                let mut admin = admin.clone();
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{prefix}*"))
                    .query_async(&mut admin)
                    .await
                    .unwrap();
                let hex_key = |hex: &str| key_of(&hex::decode(hex).ok()?);
                for name in keys {
                    let rest = &name[prefix.len()..];
                    // (`u:` keys are the subjects' indexes: ids only.)
                    if !rest.starts_with("k:") && !rest.starts_with("s:") {
                        continue;
                    }
                    let value: Option<Vec<u8>> = redis::cmd("GET")
                        .arg(&name)
                        .query_async(&mut admin)
                        .await
                        .unwrap();
                    let Some(value) = value else { continue };
                    let value = String::from_utf8(value).unwrap();
                    if let Some(hex) = rest.strip_prefix("k:") {
                        // A copy of the record under each of its lookup
                        // keys: the key is in the name, and the header is
                        // `ths3|id|generation|expires|absolute|revocation|
                        // current|previous|superseded|subject`.
                        ledger.stored_lookup_key(hex_key(hex).expect("a lookup key"));
                        let header = value.lines().next().unwrap_or_default();
                        let fields: Vec<&str> = header.split('|').collect();
                        assert_eq!(fields.len(), 10, "a record header: {header:?}");
                        for slot in &fields[6..9] {
                            if *slot != "-" {
                                ledger.stored_lookup_key(hex_key(slot).expect("a lookup key"));
                            }
                        }
                    } else if rest.starts_with("s:") {
                        // The id's key: the record's current lookup key.
                        ledger.stored_lookup_key(hex_key(&value).expect("a lookup key"));
                    }
                }
            }
        }
    }
}

struct Flow<'a> {
    h: &'a Harness,
    ledger: &'a Ledger,
    records: &'a Records,
    /// Every session id a response named.
    ids: Vec<String>,
}

impl Flow<'_> {
    async fn call(
        &mut self,
        method: &str,
        uri: &str,
        secret: Option<&str>,
    ) -> common::TestResponse {
        if let Some(secret) = secret {
            self.ledger.secret(secret);
        }
        let res = self.ledger.saw(self.h.call(method, uri, secret).await);
        self.stored().await;
        res
    }

    /// Forbids every lookup key the store holds now.
    async fn stored(&self) {
        self.records.add_to(self.ledger).await;
    }

    /// Logs `user` in; returns the secret and the session id.
    async fn login(&mut self, user: &str, from: Option<&str>) -> (String, String) {
        let res = self
            .call("POST", &format!("/login?user={user}"), from)
            .await;
        assert_eq!(res.status, StatusCode::OK, "{}", res.body);
        self.ids.push(res.body.clone());
        (res.new_secret().unwrap(), res.body)
    }

    fn advance(&self, secs: u64) {
        self.h.advance(secs);
    }
}

/// Every flow, in an order that leaves each session in the state the next
/// step needs. Returns the ids of the sessions involved.
async fn every_flow(
    h: &Harness,
    faults: &FaultyStore,
    ledger: &Ledger,
    records: &Records,
) -> Vec<String> {
    let mut f = Flow {
        h,
        ledger,
        records,
        ids: Vec::new(),
    };
    let ok = StatusCode::OK;

    // Before login: data starts a session; a login replaces it.
    let pre = f.call("POST", "/attr?key=cart&value=3", None).await;
    let pre = pre.new_secret().expect("a session before login");
    let (a, _) = f.login("alice", Some(&pre)).await;
    let (b, _) = f.login("alice", None).await;
    let (mut c, _) = f.login("alice", None).await;
    let (mut d, d_id) = f.login("alice", None).await;
    let (bob, _) = f.login("bob", None).await;

    // Data, touch.
    assert_eq!(
        f.call("POST", "/attr?key=theme&value=dark", Some(&a))
            .await
            .status,
        ok
    );
    f.advance(120);
    assert_eq!(f.call("GET", "/me", Some(&a)).await.status, ok);

    // Rotation and confirmation (a); a rotation whose response is lost,
    // then re-rotation and confirmation (b).
    f.advance(901);
    let a1 = f
        .call("GET", "/me", Some(&a))
        .await
        .new_secret()
        .expect("rotated");
    let b1 = f
        .call("GET", "/me", Some(&b))
        .await
        .new_secret()
        .expect("rotated");
    assert_eq!(f.call("GET", "/me", Some(&a1)).await.status, ok);
    f.advance(120);
    let b2 = f
        .call("GET", "/me", Some(&b))
        .await
        .new_secret()
        .expect("re-rotated");
    assert_eq!(f.call("GET", "/me", Some(&b2)).await.status, ok);

    // A new current key: the next request re-keys, the old key still works.
    h.manager.set_key_ring(ledger.ring(2, &[1, 2]));
    assert_eq!(f.call("GET", "/me", Some(&a1)).await.status, ok);
    assert_eq!(f.call("GET", "/me", Some(&c)).await.status, ok);

    // Reuse: a's stale secret after the grace; b's superseded successor.
    f.advance(61);
    assert!(f.call("GET", "/maybe", Some(&a)).await.clears_cookie());
    assert!(f.call("GET", "/maybe", Some(&b1)).await.clears_cookie());

    // Store outages, with a session due for rotation and one for a touch.
    f.advance(901);
    for (ops, fault) in [
        (&Op::READS[..], Fault::Error),
        (&Op::ALL[..], Fault::Hang),
        (&[Op::FindActive][..], Fault::Corrupt),
    ] {
        faults.set_each(ops, fault);
        let res = f.call("GET", "/me", Some(&c)).await;
        assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE, "{fault:?}");
        faults.heal();
    }
    for fault in [
        Fault::Error,
        Fault::Hang,
        Fault::ApplyThenFail,
        Fault::ApplyThenHang,
    ] {
        faults.set_each(&Op::WRITES, fault);
        // A client follows every Set-Cookie it gets.
        for (method, uri, on_d) in [
            ("GET", "/me", false),
            ("POST", "/attr?key=k&value=v", false),
            ("POST", "/renew", true),
        ] {
            let secret = if on_d { &mut d } else { &mut c };
            let res = f.call(method, uri, Some(secret.as_str())).await;
            if let Some(new) = res.new_secret() {
                *secret = new;
            }
        }
        f.call("POST", "/login?user=carol", None).await;
        faults.heal();
    }
    // A data write whose answer is lost and whose read-back says corrupt.
    faults.set(Op::Replace, Fault::ApplyThenFail);
    faults.set(Op::GetActive, Fault::Corrupt);
    f.call("POST", "/attr?key=k2&value=v", Some(&c)).await;
    faults.heal();
    // c converges: re-rotated past the grace if its rotation was lost.
    f.advance(120);
    for _ in 0..3 {
        let res = f.call("GET", "/me", Some(&c)).await;
        assert_eq!(res.status, ok);
        if let Some(new) = res.new_secret() {
            c = new;
        }
    }

    // Renew, log out other devices, revoke a device, log out, everywhere.
    if let Some(new) = f.call("POST", "/renew", Some(&d)).await.new_secret() {
        d = new;
    }
    assert_eq!(f.call("GET", "/devices", Some(&d)).await.status, ok);
    let (e, e_id) = f.login("alice", None).await;
    let res = f
        .call("POST", &format!("/revoke-device?id={e_id}"), Some(&d))
        .await;
    assert_eq!((res.status, res.body.as_str()), (ok, "Revoked"));
    let _ = e;
    let res = f.call("POST", "/logout-others", Some(&d)).await;
    assert_eq!(res.status, ok, "{}", res.body);
    let d = res.new_secret().unwrap_or(d);
    assert_eq!(f.call("POST", "/logout", Some(&bob)).await.status, ok);
    let (_, _) = f.login("alice", None).await;
    let res = f.call("POST", "/logout-everywhere", Some(&d)).await;
    assert_eq!(res.status, ok, "{}", res.body);
    assert!(res.clears_cookie());
    let _ = d_id;

    // The operator's calls.
    let m = &h.manager;
    m.count_by_key_version(Duration::from_secs(3600))
        .await
        .unwrap();
    m.list_for_subject("alice").await.unwrap();
    m.revoke_all_for_subject("bob", None).await.unwrap();
    f.stored().await;
    h.advance(40 * 24 * 3600);
    m.purge_expired().await.unwrap();
    f.stored().await;
    f.ids
}

fn assert_clean(logs: &[u8], ids: &[String], ledger: &Ledger) {
    ledger.assert_absent_from(logs);
    let logs = String::from_utf8_lossy(logs);
    // The capture holds what it should: sessions by id, and the events of
    // the flows above.
    for id in ids {
        assert!(logs.contains(id.as_str()), "session {id} not in the log");
    }
    for event in [
        "revoked as reuse",
        "session store failed",
        "timed out",
        "corrupt session record",
        "session maintenance failed",
        "session data not saved",
        "failed to answer but applied",
    ] {
        assert!(logs.contains(event), "no {event:?} in the log:\n{logs}");
    }
    assert!(ledger.secret_count() >= 20, "{}", ledger.secret_count());
    // The store was read after every step: every lookup key it held is
    // forbidden, among them keys of secrets no request or response
    // carried (successors whose answer was lost, logins that failed to
    // answer): the ledger would not have known them otherwise.
    let derived = ledger.derived_lookup_keys();
    let stored = ledger.stored_lookup_keys();
    let unseen = stored.difference(&derived).count();
    eprintln!(
        "{} stored lookup keys, {unseen} of secrets never seen",
        stored.len()
    );
    assert!(stored.len() >= 15, "{}", stored.len());
    assert!(unseen > 0, "no stored lookup key beyond the seen secrets'");
}

#[tokio::test(start_paused = true)]
async fn no_secret_lookup_key_or_key_byte_reaches_the_log_in_any_flow() {
    let log = global_log();
    let ledger = Ledger::default();
    let memory = MemoryStore::new();
    let (h, faults) = harness(memory.clone(), &ledger);
    let records = Records::Memory(memory);
    let ids = every_flow(&h, &faults, &ledger, &records).await;
    let logs = log.bytes();
    assert!(contains(&logs, b"DEBUG"));
    assert_clean(&logs, &ids, &ledger);
}

/// The same over SQLite, where the driver logs its statements too, and with
/// a row damaged in the database itself.
#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "current_thread")]
async fn no_secret_reaches_the_log_over_sqlite_with_its_driver_logging() {
    use tower_hmac_session::store::SqliteStore;
    let log = global_log();
    let ledger = Ledger::default();
    let path = std::env::temp_dir().join(common::unique("ths-logs") + ".db");
    let store = SqliteStore::open(&path).await.unwrap();
    let (h, faults) = harness(store.clone(), &ledger);
    let records = Records::Sqlite(store.pool().clone());
    let ids = every_flow(&h, &faults, &ledger, &records).await;

    // A row damaged in the database: the lookup names the record's id.
    let mut flow_ids = ids;
    let res = ledger.saw(h.call("POST", "/login?user=mallory", None).await);
    records.add_to(&ledger).await;
    flow_ids.push(res.body.clone());
    let secret = res.new_secret().unwrap();
    sqlx::query("UPDATE tower_hmac_session_records SET persistent = 7 WHERE subject = 'mallory'")
        .execute(store.pool())
        .await
        .unwrap();
    let res = h.call("GET", "/me", Some(&secret)).await;
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);

    let logs = log.bytes();
    assert!(
        contains(&logs, b"sqlx::query"),
        "the driver's own events are captured"
    );
    assert_clean(&logs, &flow_ids, &ledger);
    drop(h);
    store.pool().close().await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

/// The same over PostgreSQL, in a schema of its own, with the driver's
/// statements logged.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_log_over_postgres() {
    use tower_hmac_session::store::PostgresStore;
    let url = std::env::var("TOWER_HMAC_SESSION_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let log = global_log();
    let pool = match sqlx::postgres::PgPoolOptions::new()
        .max_connections(5)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&url)
        .await
    {
        Ok(pool) => pool,
        Err(error) => return common::unreachable("PostgreSQL", &url, &error),
    };
    let schema = common::unique("ths_logs");
    let store = PostgresStore::in_schema(pool.clone(), &schema).unwrap();
    store.migrate().await.unwrap();
    let ledger = Ledger::default();
    let (h, faults) = harness(store, &ledger);
    let records = Records::Postgres {
        pool: pool.clone(),
        schema: schema.clone(),
    };
    let ids = every_flow(&h, &faults, &ledger, &records).await;
    let logs = log.bytes();
    assert!(
        contains(&logs, b"sqlx::query"),
        "the driver's own events are captured"
    );
    assert_clean(&logs, &ids, &ledger);
    drop(h);
    sqlx::raw_sql(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

/// The same over Redis, under a key prefix of its own.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_log_over_redis() {
    use tower_hmac_session::store::RedisStore;
    let url = std::env::var("TOWER_HMAC_SESSION_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let log = global_log();
    let connect = async {
        redis::Client::open(url.as_str())?
            .get_multiplexed_async_connection()
            .await
    };
    let admin = match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok(admin)) => admin,
        Ok(Err(error)) => return common::unreachable("Redis", &url, &error),
        Err(error) => return common::unreachable("Redis", &url, &error),
    };
    let prefix = common::unique("ths-logs") + ":";
    let store = RedisStore::builder(url.clone())
        .prefix(&prefix)
        .connect()
        .await
        .unwrap();
    let ledger = Ledger::default();
    let (h, faults) = harness(store, &ledger);
    let records = Records::Redis {
        admin: admin.clone(),
        prefix: prefix.clone(),
    };
    let ids = every_flow(&h, &faults, &ledger, &records).await;
    let logs = log.bytes();
    assert_clean(&logs, &ids, &ledger);
    drop(h);
    let mut admin = admin;
    common::redis_delete_prefix(&mut admin, &prefix).await;
}
