//! The reference model (issue #10): random sequences of requests, logins,
//! logouts, data changes, revocations, key-ring changes and clock steps, run
//! through a real Router under `SessionLayer` and, side by side, through a
//! small model of DESIGN.md's rules (`model/spec.rs`), compared step by step
//! on every backend. After every step the store must hold exactly the
//! model's live sessions, field by field.
//!
//! Invariants, each checked on every step (`model/driver.rs`): no revoked
//! or expired session serves a request again; the absolute lifetime is never
//! extended; a client that follows every `Set-Cookie` is never logged out by
//! rotation (retiring its key version is the documented exception); two
//! clients using one session's cookies through a rotation end it (a previous
//! secret after its confirmed successor's grace, or a superseded secret);
//! data changes are never lost or resurrected.
//!
//! The generator mixes single operations with rotation stories (a login,
//! a rotation, confirmation or re-rotation, an old or copied cookie), and a
//! run at the default size must apply each important rule a minimum number
//! of times (`REACHED_PER_100_CASES`), so the sequences cannot drift into
//! easy ones unnoticed.
//!
//! Cases per backend: `MODEL_CASES` (or `PROPTEST_CASES`) overrides the
//! defaults (128 on memory, 64 on SQLite, 24 on PostgreSQL, 32 on Redis);
//! `MODEL_OPS` the longest sequence (40). Failures are not persisted: a
//! shrunk failing sequence goes into this file as a plain `#[test]`.
//! PostgreSQL (`TOWER_HMAC_SESSION_POSTGRES_URL`) and Redis
//! (`TOWER_HMAC_SESSION_REDIS_URL`) are used as the other backend tests use
//! them: a schema or key prefix per case, skipped when unreachable unless
//! `CI=true`.

mod common;
#[path = "model/driver.rs"]
mod driver;
#[path = "model/ops.rs"]
mod ops;
#[path = "model/spec.rs"]
mod spec;

use std::future::Future;

use proptest::test_runner::{Config, TestCaseError, TestRunner};

use common::Harness;
use ops::Op;

fn env_number(names: &[&str]) -> Option<u32> {
    names
        .iter()
        .find_map(|name| std::env::var(name).ok()?.parse().ok())
}

/// Runs `cases` random sequences (unless overridden), each on a fresh
/// harness from `setup`, which also returns a cleanup to run after it.
fn check<S, F, C, CF>(backend: &str, cases: u32, setup: S)
where
    S: Fn() -> F,
    F: Future<Output = (Harness, C)>,
    C: FnOnce() -> CF,
    CF: Future<Output = ()>,
{
    let default_cases = cases;
    let cases = env_number(&["MODEL_CASES", "PROPTEST_CASES"]).unwrap_or(cases);
    let max_ops = env_number(&["MODEL_OPS"]).unwrap_or(40) as usize;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let started = std::time::Instant::now();
    let mut runner = TestRunner::new(config);
    let result = runner.run(&ops::ops(max_ops), |ops: Vec<Op>| {
        runtime.block_on(async {
            let (h, cleanup) = setup().await;
            let result = driver::run(&h, &ops).await;
            cleanup().await;
            result.map_err(TestCaseError::fail)
        })
    });
    let stats = spec::take_stats();
    eprintln!(
        "model on {backend}: {cases} cases of up to {max_ops} ops in {:.1?}; rules applied (shrinking included): {stats:?}",
        started.elapsed(),
    );
    if let Err(error) = result {
        panic!("model on {backend}: {error}");
    }
    // A passing run has not shrunk: the counts are of the random sequences
    // alone. Shorter or fewer sequences than the defaults are quick local
    // runs, and reach less.
    if cases >= default_cases && max_ops >= 40 {
        assert_reached(backend, cases, &stats);
    }
}

/// The least each important rule must be applied per 100 cases (summed
/// over the names listed), so that a change to the generator that stops
/// reaching a rule fails the run instead of passing on easy sequences.
/// Measured over eight runs of the default case counts, the lowest rate
/// seen per 100 cases on any backend was: rotate 218, confirm 106,
/// re-rotate 37, reuse 16, re-key 21, pairs 115, faithful-client checks
/// 525, touch 16, sessions before login 131. Each minimum is about a
/// quarter to a half of that (at PostgreSQL's 24 cases: 24, 10, 3, 1, 2,
/// 10, 48, 2, 12 against lows of 56, 26, 13, 4, 5, 30, 126, 6, 35). "Two
/// sessions" (values of two records in one request) is reached in most
/// runs but not all, so it has no minimum.
const REACHED_PER_100_CASES: &[(&str, &[&str], u64)] = &[
    ("rotation", &["rotate"], 100),
    ("confirmation", &["confirm", "confirm+rekey"], 40),
    ("re-rotation", &["re-rotate"], 12),
    ("reuse", &["reuse"], 4),
    ("re-key", &["rekey", "confirm+rekey"], 6),
    (
        "concurrent pairs",
        &["pair, a wrote first", "pair, b wrote first"],
        40,
    ),
    ("faithful-client checks", &["faithful client checked"], 200),
    ("touch", &["touch"], 5),
    ("sessions before login", &["session before login"], 50),
];

fn assert_reached(backend: &str, cases: u32, stats: &std::collections::BTreeMap<&str, u64>) {
    for (rule, names, per_100) in REACHED_PER_100_CASES {
        let reached: u64 = names
            .iter()
            .map(|n| stats.get(n).copied().unwrap_or(0))
            .sum();
        let least = (per_100 * u64::from(cases)).div_ceil(100);
        assert!(
            reached >= least,
            "model on {backend}: {rule} applied {reached} times in {cases} cases, \
             fewer than {least}: the generator no longer reaches it ({stats:?})"
        );
    }
}

/// Replays one sequence on the memory store (the shrunk failures below).
fn replay(ops: &[Op]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let h = driver::harness_on(std::sync::Arc::new(common::TestStore::default()));
        if let Err(error) = driver::run(&h, ops).await {
            panic!("{error}");
        }
    });
}

#[test]
fn model_on_memory() {
    check("memory", 128, || async {
        let h = driver::harness_on(std::sync::Arc::new(common::TestStore::default()));
        (h, || async {})
    });
}

#[cfg(feature = "sqlite")]
#[test]
fn model_on_sqlite() {
    use tower_hmac_session::store::SqliteStore;
    check("sqlite", 64, || async {
        let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
        (driver::harness_on(driver::wrap(store)), || async {})
    });
}

#[cfg(feature = "postgres")]
#[test]
fn model_on_postgres() {
    use std::time::Duration;
    use tower_hmac_session::store::PostgresStore;

    let url = std::env::var("TOWER_HMAC_SESSION_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let reachable = runtime.block_on(async {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&url)
            .await
            .map(|pool| async move { pool.close().await })
    });
    match reachable {
        Ok(close) => runtime.block_on(close),
        Err(error) => return common::unreachable("PostgreSQL", &url, &error),
    }
    drop(runtime);
    check("postgres", 24, || {
        let url = url.clone();
        async move {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(4)
                .connect(&url)
                .await
                .unwrap();
            let schema = common::unique("ths_model");
            let store = PostgresStore::in_schema(pool.clone(), &schema).unwrap();
            store.migrate().await.unwrap();
            let cleanup = move || async move {
                sqlx::raw_sql(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
                    .execute(&pool)
                    .await
                    .unwrap();
                pool.close().await;
            };
            (driver::harness_on(driver::wrap(store)), cleanup)
        }
    });
}

#[cfg(feature = "redis")]
#[test]
fn model_on_redis() {
    use std::time::Duration;
    use tower_hmac_session::store::RedisStore;

    let url = std::env::var("TOWER_HMAC_SESSION_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let reachable = runtime.block_on(async {
        let connect = async {
            redis::Client::open(url.as_str())?
                .get_multiplexed_async_connection()
                .await
        };
        match tokio::time::timeout(Duration::from_secs(5), connect).await {
            Ok(result) => result.map(drop).map_err(|e| e.to_string()),
            Err(elapsed) => Err(elapsed.to_string()),
        }
    });
    if let Err(error) = reachable {
        return common::unreachable("Redis", &url, &error);
    }
    drop(runtime);
    check("redis", 32, || {
        let url = url.clone();
        async move {
            let prefix = common::unique("ths-model") + ":";
            let store = RedisStore::builder(url.clone())
                .prefix(&prefix)
                .connect()
                .await
                .unwrap();
            let cleanup = move || async move {
                let mut admin = redis::Client::open(url.as_str())
                    .unwrap()
                    .get_multiplexed_async_connection()
                    .await
                    .unwrap();
                common::redis_delete_prefix(&mut admin, &prefix).await;
            };
            (driver::harness_on(driver::wrap(store)), cleanup)
        }
    });
}

/// Keeps `replay` in use while no shrunk failure is recorded here.
#[test]
fn a_followed_rotation_keeps_the_session() {
    use ops::{Call, Cookie, Data};
    let read = |client| Op::Request {
        call: Call {
            client,
            cookie: Cookie::Jar,
            data: Data::Read,
        },
        lost: false,
        slow: 0,
    };
    replay(&[
        Op::Login {
            client: 0,
            user: 0,
            lost: false,
        },
        Op::Advance(901),
        read(0),
        Op::Advance(61),
        read(0),
    ]);
}

/// Found by the model on Redis against the other stores: a session that
/// expired (idle) without being revoked is counted by
/// `revoke_all_for_subject` on the memory, SQLite and PostgreSQL stores, and
/// not on Redis (its script drops index entries past their idle expiry
/// before counting; `revoke` by id answers `Revoked` for it on all four). The
/// trait now says only live sessions count (what "signed out of N devices"
/// means); the conformance suite checks it on every store, and this pins it
/// through the manager on the memory store.
#[test]
fn revoking_a_subject_counts_only_live_sessions() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let h = driver::harness_on(std::sync::Arc::new(common::TestStore::default()));
        h.login("user0").await;
        // The idle timeout passes: the session is over, never revoked.
        h.advance(spec::IDLE.unsigned_abs());
        let revoked = h
            .manager
            .revoke_all_for_subject("user0", None)
            .await
            .unwrap();
        assert_eq!(revoked, 0, "an expired session counted as revoked");
    });
}

/// Found by the model once rotation stories reached it: logging out other
/// devices revokes the subject's live sessions only; one that had already
/// expired stays unrevoked in every store, so revoking it by id later still
/// answers `Revoked` (the model once took it for ended by the logout).
#[test]
fn logging_out_other_devices_leaves_an_expired_session_unrevoked() {
    use ops::{Call, Cookie, Data};
    let req = |client, cookie, data| Op::Request {
        call: Call {
            client,
            cookie,
            data,
        },
        lost: false,
        slow: 0,
    };
    replay(&[
        req(2, Cookie::Jar, Data::Set(0, 0)),
        Op::Advance(3599),
        Op::Login {
            client: 0,
            user: 1,
            lost: false,
        },
        Op::Advance(901),
        req(0, Cookie::Jar, Data::Read),
        Op::Advance(30),
        req(0, Cookie::Jar, Data::Read),
        Op::Advance(30),
        req(0, Cookie::Old(7), Data::Read),
        Op::LogoutOthers { client: 0 },
        Op::RevokeDevice {
            client: 0,
            target: 101,
        },
    ]);
}
